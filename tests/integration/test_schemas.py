"""Malformed and oversized arguments over a real Foolscap connection (issue 13).

Each bad call is sent raw (``_useSchema=False``: no check on our side, as a
foreign or hostile peer would send it) on the client's own connection. It
must fail with a Violation that says what is wrong, and the same session, and
another user's, must keep working.
"""

from __future__ import annotations

from typing import Any

import pytest
from foolscap.api import DeadReferenceError

from tests.conftest import running_cluster


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Any:
    with running_cluster(tmp_path_factory.mktemp("schemas"), 1) as cluster:
        yield cluster


def raw_call(client: Any, reference: Any, method: str, *args: Any) -> str:
    """Send a call without our own schema check; return its error's text."""
    try:
        answer = client._call(lambda: reference.callRemote(method, *args, _useSchema=False))
    except DeadReferenceError:
        raise AssertionError(f"{method}{args!r:.80} dropped the connection") from None
    except Exception as e:
        return f"{type(e).__name__}: {e}"
    raise AssertionError(f"{method}{args!r:.80} was accepted: {answer!r:.200}")


BAD_CALLS = [
    # (method, args, what the error must say)
    ("execute", (42, "all", True), "Violation"),  # an int where text belongs
    ("execute", ("a = 1", "some", True), "targets must be"),  # text other than "all"
    ("execute", ("a = 1", {"engine": 0}, True), "Violation"),  # a dict as targets
    ("execute", ("a = 1", list(range(70_000)), True), "Violation"),  # too many targets
    ("execute", ("a = 1", [True], True), "Violation"),
    ("keys", ("all", 1), "Violation"),  # an int where a flag belongs
    ("pull", (list(range(3)), "all", True), "Violation"),  # ints as names
]


@pytest.mark.parametrize("method,args,says", BAD_CALLS,
                         ids=[f"{m}-{i}" for i, (m, _, _) in enumerate(BAD_CALLS)])
def test_a_malformed_call_is_a_violation_and_the_session_survives(
        cluster: Any, method: str, args: tuple[Any, ...], says: str) -> None:
    mec = cluster.client(timeout=30)
    other = cluster.client(timeout=30)
    session = mec._async._session
    assert says in raw_call(mec, session, method, *args)
    mec.execute("survived = 1")  # the same connection and session
    assert mec.pull("survived", targets=0) == 1
    assert other.execute("print('ok')", targets=0).stdout == "ok\n"


def test_a_list_or_none_argument_crosses_foolscap(cluster: Any) -> None:
    # get_properties(keys): its ChoiceOf(list, None) used to drop the connection.
    mec = cluster.client(timeout=30)
    session = mec._async._session
    for keys in (["color"], None):
        answer = mec._call(lambda k=keys: session.callRemote("get_properties", k, "all", True))
        assert isinstance(answer, bytes)
    assert mec.get_ids() == [0]


def test_registration_and_connect_check_their_info(cluster: Any) -> None:
    from ipython1.common import wire
    from ipython1.engine.service import EngineReferenceable

    mec = cluster.client(timeout=30)

    def reference(furl_file: str) -> Any:
        tub = wire.client_tub()
        return tub, mec._call(lambda: wire.get_reference(
            tub, wire.resolve_furl(furl_file), timeout=10))

    tub, registration = reference(str(cluster.dir.furl_file("ipcontroller-engine.furl")))
    try:
        engine = EngineReferenceable(lambda: None, None, {})  # type: ignore[arg-type]
        said = raw_call(mec, registration, "register_engine", engine, {"pid": "not a pid"})
        assert "Violation" in said and "pid" in said
        said = raw_call(mec, registration, "deliver_late", 0, {"tasks": [], "evil": True})
        assert "unknown key 'evil'" in said
        said = raw_call(mec, registration, "deliver_late", 0,
                        {"tasks": [[1, "ok", 0.0, b""]] * 100_001})
        assert "Violation" in said  # more late replies than an engine keeps
    finally:
        mec._call(tub.stopService)
    tub, root = reference(cluster.mec_furl)
    try:
        said = raw_call(mec, root, "connect", {"name": "me", "versions": {}, "x" * 5000: 1})
        assert "Violation" in said
    finally:
        mec._call(tub.stopService)
    assert mec.get_ids() == [0]  # the controller and its engine are unaffected


def test_the_task_farm_checks_its_calls(cluster: Any) -> None:
    from ipython1.client.blocking import StringTask, TaskClient

    tc = TaskClient(cluster.task_furl, timeout=30)
    session = tc._async._session
    assert "Violation" in raw_call(tc, session, "get_results_packed", ["1"], True)
    assert "Violation" in raw_call(tc, session, "clear", "all")
    assert "Violation" in raw_call(tc, session, "wait", [0], 1, None)
    tid = tc.run(StringTask("x = 6 * 7", pull="x"))
    assert tc.get_task_result(tid, block=True).ns.x == 42  # the session still works


def test_only_the_client_unpickles_a_task_result(cluster: Any, tmp_path: Any) -> None:
    from ipython1.client.blocking import MapTask, TaskClient

    where = str(tmp_path)

    def make() -> Any:
        class Marker:  # local: cloudpickle sends it by value
            def __setstate__(self, state: dict[str, Any]) -> None:
                import os

                open(os.path.join(state["where"], f"unpickled-by-{os.getpid()}"), "w").close()
                self.__dict__.update(state)

        marker = Marker()
        marker.where = where  # type: ignore[attr-defined]
        return marker

    tc = TaskClient(cluster.task_furl, timeout=30)
    result = tc.get_task_result(tc.run(MapTask(make)), block=True)
    assert result.result.where == where
    import os

    # The engine pickled it, the controller relayed the bytes: only we unpickled it.
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"unpickled-by-{os.getpid()}"]
