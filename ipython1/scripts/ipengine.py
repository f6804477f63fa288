"""ipengine: run an engine (console script and `twistd ipengine`).

Under the console script user code runs on the main thread and the reactor
on a second one, so that interrupt() can break even a blocking C call; under
`twistd ipengine` the reactor owns the main thread and user code runs on a
shell thread (interrupt then stops Python code, not a blocking C call).
"""

from __future__ import annotations

import gc
import importlib
import os
import sys
import threading
from pathlib import Path
from typing import Any

from twisted.python import usage

from ipython1.cluster.supervisor import RESTART_ENV, SUPERVISED_ENV
from ipython1.common.clusterdir import ENGINE_FURL, ClusterDir
from ipython1.common.errors import MPIUnavailable
from ipython1.common.processes import write_pid_file
from ipython1.engine import mpi
from ipython1.engine.restart import take_in_place_id
from ipython1.scripts import start_logging

# An engine started by a batch system or a container gets its FURL this way.
ENGINE_FURL_ENV = "IPYTHON1_ENGINE_FURL"


class Options(usage.Options):
    """Options of ipengine."""

    synopsis = "[options]"
    longdesc = ("Run an ipython1 engine: an IPython interpreter that registers with the "
                "controller found through its engine FURL file and runs its commands.")
    optParameters = [
        ["furl-file", "f", None, "Engine FURL file (default: the profile's "
         "security/ipcontroller-engine.furl)."],
        ["furl", None, None, "The engine FURL itself, pb://... (default: "
         f"${ENGINE_FURL_ENV}, else --furl-file)."],
        ["profile", "p", "default", "Cluster profile: $IPYTHON1_DIR/cluster_<profile>/."],
        ["connect-timeout", None, 60.0, "Seconds to keep retrying registration.", float],
        ["reconnect-timeout", None, 600.0, "Seconds to keep trying to rejoin a lost "
         "controller, keeping the namespace and the engine id (0: exit at once).", float],
        ["mpi", None, None, "Initialise MPI at start-up with this module (mpi4py)."],
        ["fork", None, 1, "Start this many engines, forked from one warmed-up process "
         "(start-up work and memory are shared; ipcluster uses it).", int],
        ["pid-file", None, None, "Write the pids of the engines started to this file."],
        ["engine-id", None, None, "Ask for this engine id, even if an engine had it before "
         "(the supervisor of ipcluster start --restart-engines uses it).", int],
    ]

    optFlags = [
        ["watch", None, "Stay a small parent process of the engine(s) (--fork K: all K) "
         "that tells the controller how each one ended: exit code or signal, and the "
         "last lines of its stderr (ipcluster uses it for engines on other hosts)."],
    ]

    def postOptions(self) -> None:
        if self["fork"] < 1:
            raise usage.UsageError("--fork must be at least 1")
        if self["fork"] > 1 and self["mpi"]:
            raise usage.UsageError("--fork cannot be combined with --mpi (mpiexec starts ranks)")
        if self["furl"] is None and self["furl-file"] is None:
            self["furl"] = os.environ.get(ENGINE_FURL_ENV, "").strip() or None
        if self["furl"] is not None and not self["furl"].startswith("pb://"):
            raise usage.UsageError(f"--furl or ${ENGINE_FURL_ENV} must be a FURL (pb://...), "
                                   f"not {self['furl'][:60]!r}; to name a file, use --furl-file")
        if self["furl-file"] is None:
            self["furl-file"] = str(ClusterDir(self["profile"]).furl_file(ENGINE_FURL))


def _engine_service(options: Any, own_shell_thread: bool) -> Any:
    # after the fork and the reactor's choice: each engine its own
    from ipython1.engine.runner import ShellRunner
    from ipython1.engine.service import EngineService
    from ipython1.engine.watcher import WATCHED_ENV

    info: dict[str, Any] = {}
    if options["engine-id"] is not None:
        info.update(requested_id=options["engine-id"], rejoin=True)
    if os.environ.get(SUPERVISED_ENV):
        info["supervised"] = True  # its supervisor reports how it ends
    if os.environ.get(WATCHED_ENV):
        info["watched"] = True  # its watcher (ipengine --watch) reports how it ends
    if os.environ.get(RESTART_ENV):
        info["restarted"] = os.environ[RESTART_ENV]
    if options["mpi"]:
        info.update(mpi.initialize(options["mpi"]))
        # Engine ids equal ranks when the controller can give them.
        info["requested_id"] = info["mpi_rank"]
        if os.environ.get(SUPERVISED_ENV):
            info["rejoin"] = True  # the whole job was restarted: ranks take their ids back
    return EngineService(options["furl-file"], ShellRunner(),
                         connect_timeout=options["connect-timeout"], info=info,
                         reconnect_timeout=options["reconnect-timeout"],
                         own_shell_thread=own_shell_thread, furl=options["furl"],
                         start_gate=START_GATE)


def makeService(options: Any) -> Any:
    """Build the engine service for twistd (user code on a shell thread)."""
    try:
        return _engine_service(options, own_shell_thread=True)
    except MPIUnavailable as e:
        raise SystemExit(f"ipengine: {e}") from None


# What every engine imports, once in the process that forks them: imported in
# each child it cost ~40 ms CPU per engine (most of a forked engine's start-up
# CPU: 512 engines spent ~20 s of it on 2 cores). The engine's own modules, those
# its shell, certificate and sockets import on first use, and numpy.random
# (reseeded after the fork). tests/unit/test_engine_warm_up.py checks the list.
ENGINE_MODULES = (
    "IPython.core.interactiveshell", "IPython.core.application", "IPython.core.completer",
    "IPython.core.completerlib", "IPython.core.crashhandler", "IPython.core.magics",
    "IPython.core.oinspect", "IPython.utils.generics", "IPython.utils.wildcard", "sqlite3",
    "numpy", "numpy.random", "psutil", "msgpack", "encodings.idna", "resource",
    "cryptography.hazmat.backends.openssl.backend",
    "ipython1.engine.kernel",  # Foolscap, Twisted, TLS, cloudpickle
    "ipython1.engine.service", "ipython1.engine.runner", "ipython1.engine.watcher",
)


def _warm_up() -> None:
    """Import what every engine needs, once, before forking.

    The poll reactor keeps no kernel object (epoll would share one between
    the forked engines); each child gets its own waker pipe in _after_fork.
    """
    from twisted.internet import pollreactor

    pollreactor.install()
    for name in ENGINE_MODULES:
        importlib.import_module(name)
    _warm_up_tls()
    from ipython1.engine import shell

    shell.prebuild()  # each engine's kernel takes its copy

    # Keep the collector off what the engines share: a full collection in each
    # child would write to every object's header and copy the parent's pages.
    gc.freeze()


def _warm_up_tls() -> None:
    """Make a throwaway certificate, Tub and TLS contexts before forking.

    OpenSSL fills its caches (algorithm lookups, curve tables) on first use:
    filled here once, every engine shares them instead of filling its own
    copy (half of an engine's certificate and Tub: ~600 page faults, and on
    this VM a new page costs up to ~10 us once a few GiB are in use).
    """
    from foolscap.api import Tub

    from ipython1.common import wire
    from ipython1.transport import tcpchannel
    from ipython1.transport.data import stream

    certificate = wire.ec_certificate_pem()
    Tub(certData=certificate)
    stream.server_context(certificate)
    tcpchannel.engine_context()


def _after_fork() -> None:
    """Give a forked engine its own reactor waker and random state."""
    from twisted.internet import reactor

    old = reactor.waker
    reactor.removeReader(old)
    reactor._internalReaders.discard(old)
    old.connectionLost(None)
    reactor.waker = None
    reactor.installWaker()
    if "numpy" in sys.modules:
        sys.modules["numpy"].random.seed()  # fork copied the parent's state


START_GATE = None  # set by fork_engines: the siblings' StartGate


def fork_engines(n: int) -> list[int] | None:
    """Fork n - 1 more engines; return every pid in the parent, None in a child."""
    global START_GATE
    _warm_up()
    from ipython1.engine.startgate import StartGate

    START_GATE = StartGate()
    pids = [os.getpid()]
    for _ in range(n - 1):
        pid = os.fork()
        if pid == 0:
            _after_fork()
            return None
        pids.append(pid)
    for pid in pids[1:]:  # reap the children that exit before the parent does
        threading.Thread(target=os.waitpid, args=(pid, 0), daemon=True).start()
    return pids


def _watch(options: Any) -> bool:
    """Fork the engines under a watcher; return True in the watcher once they ended."""
    global START_GATE
    from ipython1.engine.startgate import StartGate
    from ipython1.engine.watcher import fork_watched, watch

    _warm_up()
    START_GATE = StartGate()  # the watched siblings register a few at a time too
    engines = fork_watched(options["fork"])
    if engines is None:
        _after_fork()
        return False
    if options["pid-file"]:
        from ipython1.common.processes import write_pid_file

        # The engines only: what ipcluster counts, --reuse finds and stop ends (the
        # watcher ends by itself with its last engine).
        write_pid_file(Path(options["pid-file"]), list(engines))

    def furl() -> str:
        from ipython1.common import wire

        return options["furl"] or wire.resolve_furl(options["furl-file"])

    watch(engines, furl)
    return True


def _say_registered(engine_id: int, service: Any) -> int:
    """Tell whoever started the engine by hand that it joined, and where."""
    import socket

    sys.__stderr__.write(f"ipengine: engine {engine_id} (host {socket.gethostname()}, pid "
                         f"{os.getpid()}) registered with the controller at "
                         f"{service.referenceable.controller_host}\n")
    sys.__stderr__.flush()
    return engine_id


def main(argv: list[str] | None = None) -> None:
    """Run an engine: user code on the main thread, the reactor beside it."""
    options = Options()
    try:
        options.parseOptions(sys.argv[1:] if argv is None else argv)
    except usage.UsageError as e:
        raise SystemExit(f"ipengine: {e}\n{options}") from None

    take_in_place_id(options)  # mec.restart exec'd this process afresh
    if options["watch"]:
        if _watch(options):
            return  # the watcher: its engines have ended
    elif options["fork"] > 1 or options["pid-file"]:
        pids = fork_engines(options["fork"])
        if pids is not None and options["pid-file"]:
            write_pid_file(Path(options["pid-file"]), pids)
    from twisted.internet import reactor

    cluster_dir = ClusterDir(options["profile"]).create()
    start_logging(cluster_dir.log_file(f"ipengine-{os.getpid()}"))
    try:
        service = _engine_service(options, own_shell_thread=False)
    except Exception as e:
        raise SystemExit(f"ipengine: {e}") from None
    service.registered.addCallback(_say_registered, service)
    reactor.callWhenRunning(service.startService)
    threading.Thread(target=reactor.run, kwargs={"installSignalHandlers": False},
                     name="reactor", daemon=True).start()
    service.runner.run_forever()


if __name__ == "__main__":
    main()
