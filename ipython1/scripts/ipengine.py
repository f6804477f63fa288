"""ipengine: run an engine (console script and `twistd ipengine`).

Under the console script user code runs on the main thread and the reactor
on a second one, so that interrupt() can break even a blocking C call; under
`twistd ipengine` the reactor owns the main thread and user code runs on a
shell thread (interrupt then stops Python code, not a blocking C call).
"""

from __future__ import annotations

import os
import sys
import threading
from typing import Any

from twisted.python import usage

from ipython1.kernel.cluster import ENGINE_FURL, ClusterDir


class Options(usage.Options):
    """Options of ipengine."""

    synopsis = "[options]"
    longdesc = ("Run an ipython1 engine: an IPython interpreter that registers with the "
                "controller found through its engine FURL file and runs its commands.")
    optParameters = [
        ["furl-file", "f", None, "Engine FURL file (default: the profile's "
         "security/ipcontroller-engine.furl)."],
        ["profile", "p", "default", "Cluster profile: $IPYTHON1_DIR/cluster_<profile>/."],
        ["connect-timeout", None, 60.0, "Seconds to keep retrying registration.", float],
        ["mpi", None, None, "Initialise MPI at start-up with this module (mpi4py)."],
    ]

    def postOptions(self) -> None:
        if self["furl-file"] is None:
            self["furl-file"] = str(ClusterDir(self["profile"]).furl_file(ENGINE_FURL))


def _engine_service(options: Any, own_shell_thread: bool) -> Any:
    from ipython1.kernel.engine import EngineService, ShellRunner

    info: dict[str, Any] = {}
    if options["mpi"]:
        from ipython1.kernel import mpi

        info.update(mpi.initialize(options["mpi"]))
        # Engine ids equal ranks when the controller can give them.
        info["requested_id"] = info["mpi_rank"]
    return EngineService(options["furl-file"], ShellRunner(),
                         connect_timeout=options["connect-timeout"], info=info,
                         own_shell_thread=own_shell_thread)


def makeService(options: Any) -> Any:
    """Build the engine service for twistd (user code on a shell thread)."""
    from ipython1.kernel.errors import MPIUnavailable

    try:
        return _engine_service(options, own_shell_thread=True)
    except MPIUnavailable as e:
        raise SystemExit(f"ipengine: {e}") from None


def main(argv: list[str] | None = None) -> None:
    """Run an engine: user code on the main thread, the reactor beside it."""
    from twisted.internet import reactor

    from ipython1.scripts import start_logging

    options = Options()
    try:
        options.parseOptions(sys.argv[1:] if argv is None else argv)
    except usage.UsageError as e:
        raise SystemExit(f"ipengine: {e}\n{options}") from None
    cluster_dir = ClusterDir(options["profile"]).create()
    start_logging(cluster_dir.log_file(f"ipengine-{os.getpid()}"))
    try:
        service = _engine_service(options, own_shell_thread=False)
    except Exception as e:
        raise SystemExit(f"ipengine: {e}") from None
    reactor.callWhenRunning(service.startService)
    threading.Thread(target=reactor.run, kwargs={"installSignalHandlers": False},
                     name="reactor", daemon=True).start()
    service.runner.run_forever()


if __name__ == "__main__":
    main()
