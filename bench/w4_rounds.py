"""W4 alone (the data phase), several systems in interleaved rounds; raw entries as JSON.

    python bench/w4_rounds.py SYSTEMS same|cross ROUNDS OUT.json

SYSTEMS is a comma-separated list of ``name[@REPO][+VAR=VALUE...]``: a system
of run.py (ipython1, ipyparallel, dask), optionally from another checkout of
the repository (its bench/ and ipython1/, e.g. an older commit's ``git
archive``), with environment variables for that run (e.g.
``ipython1+IPYTHON1_BENCH_CONTROLLER_ARGS=--data-encryption=off``). On a
shared machine, interleaving the systems round by round and taking medians
is fairer than one system after the other. ``cross`` runs across run.py's
grid of namespace hosts (root).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent))

import grid  # noqa: E402
import run  # noqa: E402


def main(argv: list[str]) -> int:
    systems, where, rounds, out = argv[0].split(","), argv[1], int(argv[2]), Path(argv[3])
    peers = str(run.ensure_peer_venv())
    mine = run.ipython1_python(None)
    logs = out.with_suffix(".logs")
    logs.mkdir(parents=True, exist_ok=True)
    run.install_term_handler()
    run.become_subreaper()
    entries: list[dict[str, object]] = []
    try:
        if where == "cross":
            run.GRID = grid.make_grid()
        for r in range(rounds):
            for spec in systems:
                name_repo, *envs = spec.split("+")
                name, _, repo = name_repo.partition("@")
                root = Path(repo) if repo else BENCH.parent
                run.REPO, run.BENCH = root, root / "bench"
                saved = dict(os.environ)
                os.environ.update(e.partition("=")[::2] for e in envs)
                try:
                    doc = run.run_child(mine if name == "ipython1" else peers, run.SYSTEMS[name],
                                        "data", [], run.PHASE_TIMEOUT_S,
                                        logs / f"{name}_{where}_{r}.log")
                finally:
                    os.environ.clear()
                    os.environ.update(saved)
                for entry in doc["entries"]:
                    entries.append(dict(entry, system=spec, where=where, run=r))
                    run.log(f"{spec} {where} {r} {entry.get('metric')} {entry.get('variant')} "
                            f"{entry.get('value', entry.get('error'))}")
    finally:
        run.stop_my_descendants()
        if run.GRID is not None:
            run.GRID.stop()
        out.write_text(json.dumps(entries, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
