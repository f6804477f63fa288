"""The controller's engine-ids files (for --reuse): appended to, not rewritten, per engine."""

from __future__ import annotations

from pathlib import Path

from ipython1.controller.service import EngineIds


def _registered(ids: EngineIds, engine_id: int) -> None:
    ids.on_controller("engine_registered", {"engine_id": engine_id, "info": {}})


def test_a_restarted_controller_reads_the_ids_given_and_the_engines_alive(
        tmp_path: Path) -> None:
    path = tmp_path / EngineIds.FILE_NAME
    path.with_name("engine-ids.live").write_text("7\n8\n")  # the controller before
    ids = EngineIds(path)
    ids.save(set())
    for engine_id in (0, 1, 2):
        _registered(ids, engine_id)
    ids.on_controller("engine_died", {"engine_id": 1})
    _registered(ids, 2)  # a rejoin: nothing new
    again = EngineIds(path)
    assert again.load() == {0, 1, 2}
    assert again.load_live() == {0, 2}  # the last controller's 7 and 8 replaced


def test_a_registration_appends_to_the_files_and_renames_nothing(tmp_path: Path) -> None:
    # Rewriting and renaming both files per engine cost ~3 ms each under load
    # (ext4 flushes a file renamed over another), on the reactor thread.
    ids = EngineIds(tmp_path / EngineIds.FILE_NAME)
    ids.save(set())
    _registered(ids, 0)
    files = {p: p.stat().st_ino for p in (ids.path, ids.live_path)}
    for engine_id in range(1, 50):
        _registered(ids, engine_id)
    ids.on_controller("engine_died", {"engine_id": 3})
    assert {p: p.stat().st_ino for p in files} == files
    assert ids.path.stat().st_mode & 0o777 == ids.live_path.stat().st_mode & 0o777 == 0o600
    assert EngineIds(ids.path).load_live() == set(range(50)) - {3}


def test_a_torn_last_line_is_skipped(tmp_path: Path) -> None:
    path = tmp_path / EngineIds.FILE_NAME
    path.write_text("0\n1\n2")
    path.with_name("engine-ids.live").write_text("0\n1\n-1\n2\n-")
    ids = EngineIds(path)
    assert ids.load() == {0, 1, 2} and ids.load_live() == {0, 2}
