"""ipcluster: start, stop and inspect a local cluster (controller + engines).

``start`` returns only when all N engines have registered (or fails with a
clear message and cleans up); ``stop`` ends every process it started, by
pid, and waits until they are gone.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from twisted.python import usage

from ipython1.common.clusterdir import ClusterDir, pid_alive, read_pid
from ipython1.common.processes import check, recorded, verified, write_pid_file

ENGINES_PID_FILE = "ipengines"
SUPERVISOR_PID_FILE = "ipsupervisor"


def _number(value: Any, option: str, what: str, kind: type = int,
            minimum: float = 0) -> Any:
    """Read an option's number; a UsageError of one line says what it takes."""
    try:
        number = kind(value)
    except (TypeError, ValueError):
        number = None
    if number is None or number < minimum or (kind is float and number != number):
        at_least = f"at least {minimum:g}" if minimum else "not negative"
        raise usage.UsageError(f"{option} takes {what}, {at_least}; not {value!r}")
    return number


class _Options(usage.Options):
    """ipcluster's --version, and help without the module's docstring."""

    longdesc = ""

    def getSynopsis(self) -> str:
        if self.parent is None:
            return str(self.synopsis)
        command, node = [], self
        while node.parent is not None:  # e.g. ipcluster engines add
            command.insert(0, node.parent.subCommand)
            node = node.parent
        return (f"Usage: ipcluster [--profile NAME] {' '.join(command)} "
                f"{getattr(self, 'synopsis', '[options]')}")

    def opt_version(self) -> None:
        """Show ipython1's version and exit."""
        import ipython1

        print(f"ipcluster (ipython1) {ipython1.__version__}")
        sys.exit(0)


class _ProfileOption(_Options):
    """Subcommands accept --profile too: `ipcluster start -n 4 --profile lab`."""

    optParameters = [["profile", "p", None, "Cluster profile (overrides the global option)."]]


class StartOptions(_ProfileOption):
    optFlags = [
        ["daemon", None, "Return once the cluster is up; leave it running."],
        ["mpi", None, "Start the engines with mpiexec; each initialises MPI (mpi4py)."],
        ["reuse", "r", "Restart what is missing: the controller (with ipcontroller --reuse: "
         "same port and FURLs) if it died, and only the engines that are not alive; "
         "live engines rejoin with their ids and namespaces."],
        ["restart-engines", None, "Run a supervisor that starts a dead engine again (fresh "
         "namespace, same id) and reports it as an event; with --mpi it restarts the "
         "whole MPI job, since a single rank cannot be replaced."],
    ]
    optParameters = [
        ["n", "n", None, "Number of engines (default 2; with --engines ssh, every host slot)."],
        ["ip", None, None, "Address the controller listens on: 0.0.0.0 or :: for every "
         "interface (default: 127.0.0.1, or every interface when --location is given)."],
        ["location", None, None, "HOST[:PORT][,HOST2...]: what the controller's FURLs "
         "advertise to engines and clients on other hosts (see ipcontroller --help)."],
        ["port", None, 0, "TCP port of the controller (default: any free port).", int],
        ["relay-port", None, 0, "TCP port of the data relay (default: any free port).", int],
        ["timeout", None, 120.0, "Seconds to wait for all engines to register."],
        ["rejoin-wait", None, None, "The controller's --rejoin-wait: seconds after a "
         "restart that engines may rejoin with what they were running (default 60).", float],
        ["mpiexec", None, None, "Path of mpiexec (default: the virtualenv's, then PATH)."],
        ["mpi-args", None, "", "Extra arguments for mpiexec."],
        # Where engines run (ipython1.cluster); see docs/deployment.md.
        ["engines", None, "local", "Where engines run: local, mpiexec, ssh, slurm, sge, pbs "
         "or lsf."],
        ["ipengine", None, None, "Command that starts an engine on a node (default: this "
         "Python with -m ipython1.scripts.ipengine)."],
        ["hosts", None, None, "ssh: hosts and engines per host, h1:4,h2:4."],
        ["hostfile", None, None, "ssh: a file of HOST[:N] lines."],
        ["ssh-args", None, "", "ssh: extra arguments for ssh (e.g. '-p 2222 -i KEY')."],
        ["queue", None, None, "Batch: the queue (Slurm: the partition)."],
        ["time", None, None, "Batch: wall time of each job, minutes or H:MM:SS."],
        ["template", None, None, "Batch: job script template (see docs/deployment.md)."],
        ["engines-per-job", None, None, "Batch: split the engines into jobs of K.", int],
        ["partition", None, None, "Slurm: partition."],
        ["account", None, None, "Slurm: account."],
        ["qos", None, None, "Slurm: quality of service."],
        ["srun-args", None, "", "Slurm: extra arguments for srun (e.g. --mpi=pmix)."],
        ["controller-host", None, None, "Run the controller on this host, over ssh "
         "(--ssh-args apply; its FURLs advertise the host unless --location says otherwise)."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["sbatch-arg"] = []
        self["batch-arg"] = []

    def opt_sbatch_arg(self, value: str) -> None:
        """Slurm: one more #SBATCH line, e.g. --sbatch-arg=--mem=4G (repeatable)."""
        self["sbatch-arg"].append(value)

    def opt_batch_arg(self, value: str) -> None:
        """SGE/PBS/LSF: one more directive line, e.g. --batch-arg='-l mem=4G' (repeatable)."""
        self["batch-arg"].append(value)

    def parseArgs(self, *args: str) -> None:
        if args:
            raise usage.UsageError(f"unexpected arguments: {' '.join(args)}")

    def postOptions(self) -> None:
        from ipython1.cluster import ENGINE_KINDS
        from ipython1.cluster.remote import host_name
        from ipython1.scripts.ipcontroller import check_network_options

        if self["n"] is not None:
            self["n"] = _number(self["n"], "-n", "a number of engines", int, 1)
        self["timeout"] = _number(self["timeout"], "--timeout", "seconds", float, 0.001)
        if self["controller-host"] and not self["location"]:
            self["location"] = host_name(self["controller-host"])
        check_network_options(self)

        if self["engines"] not in ENGINE_KINDS:
            raise usage.UsageError(f"--engines must be one of {', '.join(ENGINE_KINDS)}")
        if self["engines"] == "mpiexec":
            self["mpi"] = True
        elif self["mpi"] and self["engines"] not in ("local", "slurm"):
            raise usage.UsageError("--mpi starts engines with mpiexec (--engines mpiexec) "
                                   "or srun (--engines slurm)")


class StopOptions(_ProfileOption):
    optParameters = [["grace", None, 10.0, "Seconds before SIGKILL."]]

    def postOptions(self) -> None:
        self["grace"] = _number(self["grace"], "--grace", "seconds", float)


class StatusOptions(_ProfileOption):
    optFlags = [
        ["json", None, "Print the status as JSON (for scripts)."],
        ["watch", "w", "Refresh in place every --interval seconds until Ctrl-C."],
    ]
    optParameters = [["interval", None, 2.0, "Seconds between refreshes with --watch.", float]]


class LogsOptions(_ProfileOption):
    optFlags = [["follow", "f", "Keep printing new lines until Ctrl-C."]]
    optParameters = [
        ["engine", "e", None, "This engine's log (asked of the engine itself, on any host); "
         "default: the controller's log.", int],
        ["lines", "n", 50, "How many of the last lines to print first.", int],
    ]


class DoctorOptions(_ProfileOption):
    optFlags = [["json", None, "Print the findings as JSON."]]


class DashboardOptions(_ProfileOption):
    optParameters = [
        ["furl-file", None, None, "The capability whose token to use "
         "(default: the owner's admin FURL; a user passes their own FURL file)."],
    ]


class AddUserOptions(_Options):
    synopsis = "NAME [--observer]"
    optFlags = [["observer", None, "Watch-only: may subscribe, list and chat; runs nothing."]]

    def parseArgs(self, name: str, *rest: str) -> None:
        # `adduser carol --observer`: getopt stops at NAME, so look at the rest too.
        for arg in rest:
            if arg != "--observer":
                raise usage.UsageError(f"unexpected argument {arg!r}")
            self["observer"] = True
        self["name"] = name


class DelUserOptions(_Options):
    synopsis = "NAME"

    def parseArgs(self, name: str) -> None:
        self["name"] = name


class UsersOptions(_Options):
    pass


class TranscriptOptions(_Options):
    optFlags = [["follow", "f", "Keep printing events as they are appended."]]
    optParameters = [["user", "u", None, "Only this user's events."]]


class EnginesAddOptions(_Options):
    synopsis = "N [--timeout S]"
    optParameters = [["timeout", None, 120.0, "Seconds to wait for them to register.", float]]

    def parseArgs(self, n: str) -> None:
        if not n.isdigit() or int(n) < 1:
            raise usage.UsageError(f"the number of engines to add must be a positive int, "
                                   f"not {n!r}")
        self["n"] = int(n)


class EnginesRemoveOptions(_Options):
    synopsis = "IDS (e.g. 3 4, 3,4 or 2-5)"
    optParameters = [["grace", None, 10.0, "Seconds before SIGKILL.", float]]

    def parseArgs(self, *ids: str) -> None:
        from ipython1.cluster.resize import parse_ids

        try:
            self["ids"] = parse_ids(ids)
        except ValueError as e:
            raise usage.UsageError(str(e)) from None


class EnginesOptions(_ProfileOption):
    synopsis = "add N | remove IDS"
    subCommands = [
        ["add", None, EnginesAddOptions, "Start N more engines for the running cluster."],
        ["remove", None, EnginesRemoveOptions, "Stop the engines with these ids."],
    ]

    def postOptions(self) -> None:
        if self.subCommand is None:
            raise usage.UsageError("choose: engines add N, or engines remove IDS")


class Options(_Options):
    synopsis = "Usage: ipcluster [--profile NAME] COMMAND [options]"
    longdesc = ("COMMAND is one of start, stop, status, engines, dashboard, logs, doctor, "
                "adduser, deluser, users, transcript; 'ipcluster COMMAND --help' shows its "
                "options.")
    optParameters = [
        ["profile", "p", "default", "Cluster profile: $IPYTHON1_DIR/cluster_<profile>/."],
    ]
    subCommands = [
        ["start", None, StartOptions, "Start a controller and N engines."],
        ["stop", None, StopOptions, "Stop the cluster's engines and controller."],
        ["status", None, StatusOptions, "Show the controller, engines and queues."],
        ["engines", None, EnginesOptions, "Resize the running cluster: add N, remove IDS."],
        ["adduser", None, AddUserOptions, "Give a user their own FURL; print its path."],
        ["deluser", None, DelUserOptions, "Revoke a user's FURL and drop their connections."],
        ["users", None, UsersOptions, "List users: kind, connected, queued commands."],
        ["transcript", None, TranscriptOptions, "Print the shared transcript of events."],
        ["dashboard", None, DashboardOptions, "Print the web dashboard's URL (with its token)."],
        ["logs", None, LogsOptions, "Print the controller's or an engine's log (--follow)."],
        ["doctor", None, DoctorOptions, "Check the cluster for setup mistakes; say what to do."],
    ]

    def postOptions(self) -> None:
        if self.subCommand is None:
            raise usage.UsageError(
                "choose a command: start, stop, status, engines, dashboard, logs, doctor, "
                "adduser, deluser, users or transcript")


# -- processes ----------------------------------------------------------------


def _python_module(module: str, *args: str) -> list[str]:
    # Never import from the directory ipcluster runs in: anyone who can write
    # there (/tmp, a shared project) would run code as the owner.
    from ipython1.common.processes import python_module

    return python_module(module, *args)


def _spawn(argv: list[str], log_path: Path) -> subprocess.Popen[bytes]:
    """Start a process in its own session, output to log_path."""
    from ipython1.common.clusterdir import open_private_log
    from ipython1.common.processes import safe_environ

    with open_private_log(log_path) as log:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                start_new_session=True, env=safe_environ())


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _kill_groups(leaders: list[int]) -> None:
    """SIGKILL what is left of the process groups we started (each _spawn leads one).

    Engines outlive a lost controller (they wait to rejoin), so a launcher that
    did not pass its signal on (a wrong mpiexec, a shell) must not leave them behind.
    """
    for pid in leaders:
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def stop_pids(pids: list[int], grace: float,
              still_ours: Callable[[list[int]], list[int]] | None = None) -> list[int]:
    """SIGTERM pids, wait up to grace seconds, then SIGKILL; return the killed ones.

    still_ours, if given, filters pids down to those still the processes we
    mean, just before each signal (a pid may be reused meanwhile).
    """
    if still_ours is not None:
        pids = still_ours(pids)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(pid_alive(p) for p in pids):
        _reap()
        time.sleep(0.05)
    killed = [p for p in pids if pid_alive(p)]
    if still_ours is not None:
        killed = still_ours(killed)
    for pid in killed:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(pid_alive(p) for p in killed):
        _reap()
        time.sleep(0.05)
    return killed


def _reap() -> None:
    """Collect exited children of this process so they do not linger as zombies."""
    try:
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass
    except ChildProcessError:
        pass


def engine_pids(cluster_dir: ClusterDir) -> list[int]:
    """Return the engines' pids that are still the processes recorded (never a stranger's)."""
    return check(cluster_dir.pid_file(ENGINES_PID_FILE)).live


def _stale_pid_files(cluster_dir: ClusterDir, out: IO[str]) -> None:
    """Report and remove pid files that name no process of ours (after a crash)."""
    for name in ("ipcontroller", ENGINES_PID_FILE):
        status = check(cluster_dir.pid_file(name))
        if status.is_stale:
            out.write(f"ipcluster: removed stale pid file {status.path} "
                      f"({'; '.join(status.stale) or 'no pid'})\n")
            status.path.unlink(missing_ok=True)


# -- commands -------------------------------------------------------------------


def start(cluster_dir: ClusterDir, n: int | None, ip: str = "127.0.0.1",
          timeout: float = 120.0, daemon: bool = True, mpi: bool = False,
          mpiexec: str | None = None, mpi_args: str = "", out: IO[str] = sys.stdout,
          on_start: Callable[[int], None] | None = None, location: str | None = None,
          port: int = 0, relay_port: int = 0, reuse: bool = False,
          restart_engines: bool = False, engines_kind: str = "local",
          launch_options: dict[str, Any] | None = None) -> int:
    """Start a controller and n engines; return 0 once all have registered.

    With reuse, start only what is missing: the controller if it is not
    running, and engines for those of the last start that are not alive.
    engines_kind other than local/mpiexec names a launcher of ipython1.cluster
    (ssh, slurm, sge, pbs, lsf) configured from launch_options.
    """
    if n is None and engines_kind != "ssh":
        n = 2
    if n is not None and n < 1:
        raise usage.UsageError("-n must be at least 1")
    cluster_dir.create(tighten=True)
    running = cluster_dir.controller_running()
    if running and not reuse:
        pid = read_pid(cluster_dir.pid_file("ipcontroller"))
        out.write(f"ipcluster: a controller is already running for profile "
                  f"{cluster_dir.profile!r} (pid {pid}); run 'ipcluster stop' first "
                  "(or start with --reuse to add only missing engines)\n")
        return 1
    live = engine_pids(cluster_dir)
    if live and not reuse and not running:  # they would rejoin beside n new engines
        out.write(f"ipcluster: engines of the last cluster of profile "
                  f"{cluster_dir.profile!r} are still running (pids "
                  f"{', '.join(map(str, live))}) and would rejoin: run 'ipcluster "
                  "start --reuse' to take them back, or 'ipcluster stop' first\n")
        return 1
    # Live engines rejoin by themselves (an MPI job's pid file names mpiexec),
    # and a live supervisor starts again whatever of its engines died.
    supervised = reuse and bool(check(cluster_dir.pid_file(SUPERVISOR_PID_FILE)).live)
    rejoining = 0 if n is None else (
        n if supervised or (mpi and live) else 0 if mpi else min(len(live), n))
    profile = ["--profile", cluster_dir.profile]
    controller_args = [*profile, "--ip", ip, "--port", str(port),
                       "--relay-port", str(relay_port),
                       *(["--location", location] if location else []),
                       *(["--reuse"] if reuse else [])]
    if (launch_options or {}).get("rejoin-wait") is not None:
        controller_args += ["--rejoin-wait", str(launch_options["rejoin-wait"])]  # type: ignore[index]
    if mpi and engines_kind == "slurm":
        # srun starts the ranks; ids 0..n-1 wait for them.
        controller_args += ["--reserve-ids", str(n)]
    elif mpi:
        try:
            mpi_command = _mpi_preflight(n, mpiexec, mpi_args)
        except Exception as e:
            out.write(f"ipcluster: cannot start MPI engines: {e}\n")
            return 1
        # Ids 0..n-1 wait for the ranks that ask for them.
        controller_args += ["--reserve-ids", str(n)]
    started: list[int] = []

    def track(proc: subprocess.Popen[bytes]) -> subprocess.Popen[bytes]:
        started.append(proc.pid)
        if on_start:
            on_start(proc.pid)
        return proc

    t0 = time.monotonic()
    controller = None
    launcher = None
    engines: list[subprocess.Popen[bytes]] = []
    new_pids = cluster_dir.pid_file(ENGINES_PID_FILE + "-new")
    controller_host = (launch_options or {}).get("controller-host")
    try:
        if not running:
            if controller_host:
                controller = track(_start_remote_controller(
                    cluster_dir, controller_host, (launch_options or {}).get("ssh-args") or "",
                    controller_args, timeout))
            else:
                controller = track(_spawn(
                    _python_module("ipython1.scripts.ipcontroller", *controller_args),
                    cluster_dir.log_file("ipcontroller-console")))
            _wait_for(lambda: read_pid(cluster_dir.pid_file("ipcontroller")) == controller.pid,
                      timeout, lambda: controller.poll() is not None,
                      lambda: "the controller exited:\n"
                      + _tail(cluster_dir.log_file("ipcontroller-console")))
        engine_options = [*profile, "--connect-timeout", str(timeout)]
        engine_argv = _python_module("ipython1.scripts.ipengine", *engine_options)
        if engines_kind not in ("local", "mpiexec"):
            if ip in ("127.0.0.1", "::1", "localhost") and not location:
                # The usual mistake with nodes from ssh or a scheduler: say it before waiting.
                out.write(f"ipcluster: note: the controller listens on {ip} only, so engines "
                          "on other hosts cannot reach it: add --location NAME (this host "
                          "as they see it; docs/deployment.md)\n")
                out.flush()
            launcher, n = _start_launcher(cluster_dir, engines_kind, n, timeout,
                                          launch_options or {}, mpi)
        from ipython1.client.blocking import MultiEngineClient

        mec = MultiEngineClient(profile=cluster_dir.profile, connect_timeout=timeout)
        try:
            if launcher is not None:
                if not _wait_for_launcher(launcher, mec, n, timeout, out):
                    return 0  # jobs still queued: their engines join when they start
            else:
                if rejoining:
                    _wait_for(lambda: len(mec.get_ids()) >= rejoining, timeout,
                              lambda: not any(pid_alive(p) for p in live),
                              lambda: "the live engines died before they rejoined")
                if restart_engines and n > rejoining:
                    # The supervisor starts (and restarts) the engines, keeps the pid file.
                    commands = ([[None, mpi_command(engine_options)]] if mpi else
                                [[i, engine_argv + ["--engine-id", str(i)]]
                                 for i in range(rejoining, n)])
                    engines = [track(_spawn(
                        _python_module("ipython1.cluster.supervisor", cluster_dir.profile,
                                       json.dumps(commands)),
                        cluster_dir.log_file("ipsupervisor")))]
                elif mpi and not rejoining:
                    engines = [track(_spawn(mpi_command(engine_options),
                                            cluster_dir.log_file("mpiexec")))]
                    write_pid_file(cluster_dir.pid_file(ENGINES_PID_FILE), [engines[0].pid])
                elif n > rejoining:
                    # One warmed-up process forks the others: start-up and memory are shared.
                    engines = [track(_spawn(
                        engine_argv + ["--fork", str(n - rejoining), "--pid-file",
                                       str(new_pids)],
                        cluster_dir.log_file("ipengine-console")))]
                _wait_for(lambda: len(mec.get_ids()) >= n, timeout,
                          lambda: any(p.poll() is not None for p in engines),
                          lambda: _engine_failure(cluster_dir, engines))
                if not mpi and n > rejoining and not restart_engines:
                    _wait_for(lambda: len(check(new_pids).live) == n - rejoining, timeout,
                              lambda: False, lambda: "the engines wrote no pid file")
                    write_pid_file(cluster_dir.pid_file(ENGINES_PID_FILE),
                                   live + check(new_pids).live)
                    new_pids.unlink(missing_ok=True)
            if mpi:
                _check_mpi_job(mec.engine_info(), n)
        finally:
            mec.close()
    except Exception as e:
        out.write(f"ipcluster: could not start the cluster: {e}\n")
        if launcher is not None or not reuse:
            _stop_launcher(cluster_dir, grace=3, out=out)
        if controller_host and controller is not None:
            _stop_remote_controller(cluster_dir, grace=3, out=out)
        if reuse:  # leave alone what was running before
            stop_pids(check(new_pids).live + list(reversed(started)), grace=3)
        else:
            stop_pids(engine_pids(cluster_dir) + check(new_pids).live
                      + list(reversed(started)), grace=3)
            for name in ("ipcontroller", ENGINES_PID_FILE, ENGINES_PID_FILE + "-new"):
                cluster_dir.pid_file(name).unlink(missing_ok=True)
        _kill_groups(started)
        return 1
    if reuse:
        out.write(f"ipcluster: {'controller restarted' if controller else 'controller running'}"
                  f", {rejoining} engine(s) rejoined, {n - rejoining} started in "
                  f"{time.monotonic() - t0:.1f} s (profile {cluster_dir.profile!r}, "
                  f"{cluster_dir.path})\n")
    else:
        out.write(f"ipcluster: controller and {n} engines are up in "
                  f"{time.monotonic() - t0:.1f} s "
                  f"(profile {cluster_dir.profile!r}, {cluster_dir.path})\n")
    if ip not in ("127.0.0.1", "::1", "localhost") or location:
        out.write(_other_hosts_hint(cluster_dir))
    out.flush()
    if daemon:
        return 0
    if controller is None:
        out.write("ipcluster: the controller was running already; not waiting on it\n")
        return 0
    out.write("ipcluster: press Ctrl-C to stop the cluster\n")
    out.flush()
    try:
        signal.signal(signal.SIGTERM, lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
        while controller.poll() is None:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    return stop(cluster_dir, out=out)


def _start_launcher(cluster_dir: ClusterDir, kind: str, n: int | None, timeout: float,
                    options: dict[str, Any], mpi: bool = False) -> tuple[Any, int]:
    """Start engines with a launcher of ipython1.cluster; record it for stop and status."""
    from ipython1 import cluster

    engine = cluster.EngineCommand.for_cluster(
        cluster_dir, connect_timeout=timeout, ipengine=options.get("ipengine"),
        extra=["--mpi", "mpi4py"] if mpi else [])
    launcher = cluster.make_launcher(kind, cluster_dir, engine, options, os.environ)
    if kind == "ssh":
        n = sum(h.slots for h in launcher.plan(n))
    assert n is not None
    try:
        launcher.start(n)
    finally:
        cluster.save_state(cluster_dir, launcher)  # whatever started must be stoppable
    return launcher, n


def _wait_for_launcher(launcher: Any, mec: Any, n: int, timeout: float, out: IO[str]) -> bool:
    """Wait until n engines registered; False when time ran out with jobs still queued."""
    failure: list[str] = []

    def failed() -> bool:
        failure[:] = [launcher.failure() or ""]
        return bool(failure[0])

    try:
        _wait_for(lambda: len(mec.get_ids()) >= n, timeout, failed, lambda: failure[0])
        return True
    except RuntimeError as e:
        if not str(e).startswith("timed out"):
            raise
        waiting = launcher.waiting()
        if not waiting:
            raise RuntimeError(f"{e}; {len(mec.get_ids())} of {n} engines registered "
                               "(engines on other hosts need a controller they can reach: "
                               "--ip and --location; see docs/deployment.md)"
                               + "".join(f"\n  {line}" for line in launcher.status())) from None
    out.write(f"ipcluster: {len(mec.get_ids())} of {n} engines registered after "
              f"{timeout:g} s; still queued:\n"
              + "".join(f"  {line}\n" for line in waiting)
              + "ipcluster: their engines join when the jobs start ('ipcluster status'); "
              "the cluster stays up\n")
    return False


def _start_remote_controller(cluster_dir: ClusterDir, host: str, ssh_args: str,
                             controller_args: list[str],
                             timeout: float) -> subprocess.Popen[bytes]:
    """Start the controller on host over ssh; return the ssh client once its FURLs are here."""
    import shlex

    from ipython1.cluster.remote import FURLS, RemoteController

    for name in FURLS:
        cluster_dir.furl_file(name).unlink(missing_ok=True)  # never a stale one from here
    remote = RemoteController(cluster_dir, host, shlex.split(ssh_args))
    log = cluster_dir.log_file("ipcontroller-console")
    proc = _spawn(remote.argv(_python_module("ipython1.scripts.ipcontroller",
                                             *controller_args)), log)
    remote.save()
    _wait_for(remote.fetch, timeout, lambda: proc.poll() is not None,
              lambda: f"the controller on {host} exited (ssh status {proc.returncode}):\n"
              + _tail(log))
    # The local ssh client stands for the controller in this host's pid file.
    write_pid_file(cluster_dir.pid_file("ipcontroller"), [proc.pid])
    return proc


def _stop_remote_controller(cluster_dir: ClusterDir, grace: float, out: IO[str]) -> None:
    """Ask the controller's host to end it, when it runs on another host."""
    from ipython1.cluster.remote import RemoteController

    remote = RemoteController.load(cluster_dir)
    error = remote.stop(grace) if remote is not None else None
    if error:
        out.write(f"ipcluster: {error}\n")


def _stop_launcher(cluster_dir: ClusterDir, grace: float, out: IO[str]) -> None:
    """Stop what a launcher of ipython1.cluster started (jobs, ssh), if any."""
    from ipython1 import cluster

    try:
        launcher = cluster.launcher_from_state(cluster_dir)
        if launcher is not None:
            for line in launcher.stop(grace):
                out.write(f"ipcluster: {line}\n")
    except Exception as e:  # the controller must still be stopped
        out.write(f"ipcluster: could not stop the launched engines: {e}\n")
    cluster.clear_state(cluster_dir)


def _other_hosts_hint(cluster_dir: ClusterDir) -> str:
    """Say where the controller is reached from and how engines on other hosts join."""
    from ipython1.common.clusterdir import ENGINE_FURL
    from ipython1.common.wire import furl_location

    path = cluster_dir.furl_file(ENGINE_FURL)
    try:
        where = furl_location(path.read_text().strip())
    except OSError:
        return ""
    return (f"ipcluster: the controller's FURLs advertise {where}; on another host: "
            f"ipengine --furl-file {path}\n")


def _mpi_preflight(n: int, mpiexec: str | None,
                   mpi_args: str) -> Callable[[list[str]], list[str]]:
    """Check that mpiexec and mpi4py are there; return how to build the command.

    mpi4py is looked for, never imported: only engines load MPI.
    """
    import shlex

    from ipython1.engine import mpi as mpi_mod

    path = mpi_mod.find_mpiexec(mpiexec)
    if not mpi_mod.mpi4py_installed():
        raise mpi_mod.MPIUnavailable(f"mpi4py is not installed: {mpi_mod.INSTALL_HINT}")
    flavor = mpi_mod.mpiexec_flavor(path)
    args = shlex.split(mpi_args)
    return lambda engine_argv: mpi_mod.mpiexec_command(n, engine_argv, path, args,
                                                       flavor=flavor)


def _check_mpi_job(infos: list[dict[str, Any]], n: int) -> None:
    """Check that the engines form one MPI job of n ranks whose ids are their ranks."""
    sizes = sorted({i.get("mpi_size") for i in infos}, key=str)
    if sizes != [n]:
        raise RuntimeError(
            f"the engines report MPI job sizes {sizes}, not {n}: mpiexec and the MPI library "
            f"mpi4py loads ({infos[0].get('mpi_library')}) do not match; use the mpiexec "
            "of that MPI (--mpiexec PATH)")
    ranks = {i["engine_id"]: i.get("mpi_rank") for i in infos}
    if any(engine_id != rank for engine_id, rank in ranks.items()):
        raise RuntimeError(f"engine ids do not match MPI ranks: {ranks}")


def _engine_failure(cluster_dir: ClusterDir, engines: list[subprocess.Popen[bytes]]) -> str:
    for p in engines:
        if p.poll() is not None:
            name = "mpiexec" if "mpiexec" in str(p.args) else "ipengine-console"
            return (f"an engine exited with status {p.returncode} before registering:\n"
                    + _tail(cluster_dir.log_file(name)))
    return "an engine exited"


def _wait_for(condition: Callable[[], bool], timeout: float, failed: Callable[[], bool],
              why: Callable[[], str]) -> None:
    """Poll condition until true; raise early if failed() or at the deadline."""
    deadline = time.monotonic() + timeout
    delay = 0.02
    while True:
        try:
            if condition():
                return
        except Exception:
            pass
        if failed():
            raise RuntimeError(why())
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:g} s")
        time.sleep(delay)
        delay = min(delay * 1.5, 0.25)


def stop(cluster_dir: ClusterDir, grace: float = 10.0, out: IO[str] = sys.stdout) -> int:
    """Stop the engines, then the controller; wait until they are gone.

    Only processes whose start time and command line match their pid file
    are signalled; a stale pid file is reported and removed.
    """
    _stop_launcher(cluster_dir, grace, out)
    _stale_pid_files(cluster_dir, out)
    supervisor_file = cluster_dir.pid_file(SUPERVISOR_PID_FILE)
    supervised = check(supervisor_file).live
    if supervised:  # first, or it would start the engines again; it stops them too
        stop_pids(supervised, grace, lambda ps: verified(ps, recorded(supervisor_file)))
    records = [*recorded(cluster_dir.pid_file(ENGINES_PID_FILE)),
               *recorded(cluster_dir.pid_file("ipcontroller"))]
    engines = engine_pids(cluster_dir)
    controller = check(cluster_dir.pid_file("ipcontroller")).live
    _stop_remote_controller(cluster_dir, grace, out)  # its local ssh client is in controller
    pids = engines + controller
    if not pids and not supervised:
        out.write(f"ipcluster: no cluster is running for profile {cluster_dir.profile!r}\n")
    killed = stop_pids(pids, grace, lambda ps: verified(ps, records))
    for name in ("ipcontroller", ENGINES_PID_FILE, SUPERVISOR_PID_FILE):
        cluster_dir.pid_file(name).unlink(missing_ok=True)
    shutil.rmtree(cluster_dir.pid / "exits", ignore_errors=True)
    pids = supervised + pids
    if pids:
        out.write(f"ipcluster: stopped {len(pids)} process(es)"
                  + (f" ({len(killed)} needed SIGKILL)" if killed else "") + "\n")
    return 0


def status(cluster_dir: ClusterDir, out: IO[str] = sys.stdout, as_json: bool = False,
           watch: bool = False, interval: float = 2.0) -> int:
    """Print the controller, each engine (host, pid, CPU, memory, queue), tasks and users."""
    import json

    from ipython1 import cluster
    from ipython1.common.errors import KernelError
    from ipython1.controller.monitor import format_snapshot
    from ipython1.controller.userdir import admin_call

    launcher = cluster.launcher_from_state(cluster_dir)
    for line in launcher.status() if launcher is not None and not as_json else []:
        out.write(f"{line}\n")  # what the launcher started: jobs, ssh clients
    _stale_pid_files(cluster_dir, out)  # reported and removed; never a traceback
    if not check(cluster_dir.pid_file("ipcontroller")).live:
        out.write(f"ipcluster: no controller is running for profile {cluster_dir.profile!r}\n")
        return 1
    try:
        while True:
            try:
                snap = admin_call(cluster_dir, "status")
            except KernelError as e:
                out.write(f"ipcluster: {e}\n")
                return 1
            text = json.dumps(snap, indent=1) + "\n" if as_json else format_snapshot(snap)
            if watch:
                out.write("\x1b[H\x1b[2J")  # home, clear: refresh in place
            out.write(text)
            out.flush()
            if not watch:
                return 0
            time.sleep(interval)  # polling a display; nothing to wait on
    except KeyboardInterrupt:
        return 0


def logs(cluster_dir: ClusterDir, engine: int | None = None, lines: int = 50,
         follow: bool = False, out: IO[str] = sys.stdout) -> int:
    """Print the last lines of the controller's log, or of an engine's (asked over the wire)."""
    from ipython1.common.errors import KernelError

    if engine is None:
        path = cluster_dir.log_file("ipcontroller")
        if not path.exists():
            out.write(f"ipcluster: no controller log at {path}\n")
            return 1
        mec = None

        def fetch() -> list[str]:
            return path.read_text(errors="replace").splitlines()[-max(lines, 1000):]
    else:
        from ipython1.client.blocking import MultiEngineClient

        try:
            mec = MultiEngineClient(profile=cluster_dir.profile, timeout=10)
        except KernelError as e:
            out.write(f"ipcluster: {e}\n")
            return 1

        def fetch() -> list[str]:
            return list(mec.logs(engine, lines=max(lines, 1000)))
    try:
        shown: list[str] = []
        while True:
            try:
                current = fetch()
            except KernelError as e:
                out.write(f"ipcluster: {e}\n")
                return 1
            fresh = _after(shown, current) if shown else current[-lines:] if lines else []
            for line in fresh:
                out.write(line + "\n")
            out.flush()
            shown = current
            if not follow:
                return 0
            time.sleep(1.0)  # polling a log; nothing to wait on
    except KeyboardInterrupt:
        return 0
    finally:
        if mec is not None:
            mec.close()


def _after(shown: list[str], current: list[str]) -> list[str]:
    """Return the lines of current that come after what was shown (the logs overlap)."""
    if not shown:
        return current
    last = shown[-1]
    for i in range(len(current) - 1, -1, -1):
        if current[i] == last:
            return current[i + 1:]
    return current  # we fell behind the ring: show all we have


def dashboard(cluster_dir: ClusterDir, furl_file: str | None = None,
              out: IO[str] = sys.stdout) -> int:
    """Print the dashboard's URL with the token of a capability the caller holds."""
    from ipython1.controller.dashboard import dashboard_token, read_dashboard_url
    from ipython1.controller.userdir import ADMIN_FURL

    url = read_dashboard_url(cluster_dir)
    if url is None:
        out.write(f"ipcluster: no dashboard is running for profile {cluster_dir.profile!r} "
                  "(is the controller up? was it started with --no-dashboard?)\n")
        return 1
    path = Path(furl_file) if furl_file else cluster_dir.furl_file(ADMIN_FURL)
    try:
        furl = path.read_text()
    except OSError as e:
        out.write(f"ipcluster: cannot read the capability {path}: {e.strerror}\n")
        return 1
    out.write(f"{url}?token={dashboard_token(furl)}\n")
    return 0


# -- users (issue 8) ------------------------------------------------------------


def engines(cluster_dir: ClusterDir, options: usage.Options, out: IO[str] = sys.stdout) -> int:
    """Add or remove engines of the running cluster (see ipython1.cluster.resize)."""
    from ipython1.cluster import resize
    from ipython1.common.errors import KernelError

    sub = options.subOptions
    try:
        if options.subCommand == "add":
            ids = resize.add_engines(cluster_dir, sub["n"], sub["timeout"])
            out.write(f"ipcluster: added {len(ids)} engine(s): ids {_id_list(ids)}\n")
        else:
            ids = resize.remove_engines(cluster_dir, sub["ids"], sub["grace"])
            out.write(f"ipcluster: removed {len(ids)} engine(s): ids {_id_list(ids)}\n")
    except (KernelError, RuntimeError, ValueError, OSError) as e:
        out.write(f"ipcluster: could not {options.subCommand} engines: {e}\n")
        return 1
    return 0


def _id_list(ids: list[int]) -> str:
    return ", ".join(map(str, ids))


def adduser(cluster_dir: ClusterDir, name: str, observer: bool = False,
            out: IO[str] = sys.stdout) -> int:
    """Ask the running controller for a new user's capability; print its FURL file."""
    from ipython1.common.errors import KernelError
    from ipython1.controller.userdir import admin_call, validate_user_name

    try:
        validate_user_name(name)
        path = admin_call(cluster_dir, "add_user", name, observer)
    except KernelError as e:
        out.write(f"ipcluster: {e}\n")
        return 1
    out.write(f"{path}\n")
    return 0


def deluser(cluster_dir: ClusterDir, name: str, out: IO[str] = sys.stdout) -> int:
    """Revoke a user's capability at once."""
    from ipython1.common.errors import KernelError
    from ipython1.controller.userdir import admin_call, validate_user_name

    try:
        validate_user_name(name)
        done = admin_call(cluster_dir, "remove_user", name)
    except KernelError as e:
        out.write(f"ipcluster: {e}\n")
        return 1
    out.write(f"ipcluster: revoked {name}: {done['dropped']} connection(s) dropped, "
              f"{done['cleared']} queued command(s) cleared\n")
    if "rotated" in done:
        out.write(f"ipcluster: {len(done['rotated'])} FURL(s) rotated (engine code could "
                  "read them); the old ones no longer connect\n")
        _print_new_furls(done.get("new_furls") or {}, out)
    return 0


def _print_new_furls(new_furls: dict[str, str], out: IO[str]) -> None:
    for user, path in new_furls.items():
        out.write(f"ipcluster: give {user} their new FURL file: {path}\n")


def users(cluster_dir: ClusterDir, out: IO[str] = sys.stdout) -> int:
    """List the users of the running controller."""
    from ipython1.common.errors import KernelError
    from ipython1.controller.userdir import admin_call

    try:
        rows = admin_call(cluster_dir, "users")
    except KernelError as e:
        out.write(f"ipcluster: {e}\n")
        return 1
    out.write(f"{'user':<20} {'kind':<9} {'connected':>9} {'queued':>7}  new FURL\n")
    for row in rows:
        new = "needed" if row.get("needs_new_furl") else ""
        out.write(f"{row['name']:<20} {row['kind']:<9} {row['connected']:>9} "
                  f"{row['queued']:>7}  {new}\n")
    _print_new_furls({row["name"]: str(cluster_dir.security / "users" / f"{row['name']}.furl")
                      for row in rows if row.get("needs_new_furl")}, out)
    return 0


def transcript(cluster_dir: ClusterDir, user: str | None = None, follow: bool = False,
               out: IO[str] = sys.stdout) -> int:
    """Print the transcript, attributed and timestamped; with follow, keep going."""
    import json

    from ipython1.controller.events import format_event
    from ipython1.controller.userdir import transcript_path

    path = transcript_path(cluster_dir)
    if not path.exists() and not follow:
        out.write(f"ipcluster: no transcript yet at {path}\n")
        return 1
    position = 0
    try:
        while True:
            try:
                with open(path, "rb") as f:
                    f.seek(position)
                    for line in f:
                        if not line.endswith(b"\n"):
                            break  # still being written
                        position += len(line)
                        try:
                            event = json.loads(line)
                        except ValueError:
                            continue
                        if user is None or event.get("user") == user:
                            out.write(format_event(event) + "\n")
            except FileNotFoundError:
                pass
            out.flush()
            if not follow:
                return 0
            time.sleep(0.2)  # polling a file; nothing to wait on
    except KeyboardInterrupt:
        return 0


def main(argv: list[str] | None = None, out: IO[str] = sys.stdout) -> int:
    options = Options()
    try:
        options.parseOptions(sys.argv[1:] if argv is None else argv)
    except usage.UsageError as e:
        # One line: what is wrong, and where the options are listed.
        command = f"ipcluster {options.subCommand}" if options.subCommand else "ipcluster"
        out.write(f"{command}: {e} ('{command} --help' lists the options)\n")
        return 2
    sub = options.subOptions
    try:
        cluster_dir = ClusterDir(sub.get("profile") or options["profile"])
    except ValueError as e:
        out.write(f"ipcluster: {e}\n")
        return 2
    if options.subCommand == "start":
        if sub["restart-engines"] and sub["engines"] not in ("local", "mpiexec", "ssh"):
            out.write(f"ipcluster: --restart-engines supervises local and ssh engines; "
                      f"{sub['engines']} jobs belong to the scheduler (requeue them there)\n")
            return 2
        try:
            return start(cluster_dir, sub["n"], sub["ip"], sub["timeout"], bool(sub["daemon"]),
                         bool(sub["mpi"]), sub["mpiexec"], sub["mpi-args"], out=out,
                         location=sub["location"], port=sub["port"],
                         relay_port=sub["relay-port"], reuse=bool(sub["reuse"]),
                         restart_engines=bool(sub["restart-engines"]),
                         engines_kind=sub["engines"], launch_options=dict(sub))
        except usage.UsageError as e:
            out.write(f"ipcluster: {e}\n")
            return 2
    if options.subCommand == "stop":
        return stop(cluster_dir, sub["grace"], out=out)
    if options.subCommand == "engines":
        return engines(cluster_dir, sub, out=out)
    if options.subCommand == "adduser":
        return adduser(cluster_dir, sub["name"], bool(sub["observer"]), out=out)
    if options.subCommand == "deluser":
        return deluser(cluster_dir, sub["name"], out=out)
    if options.subCommand == "users":
        return users(cluster_dir, out=out)
    if options.subCommand == "transcript":
        return transcript(cluster_dir, sub["user"], bool(sub["follow"]), out=out)
    if options.subCommand == "doctor":
        from ipython1.cluster import doctor

        return doctor.run(cluster_dir, out=out, as_json=bool(sub["json"]))
    if options.subCommand == "logs":
        return logs(cluster_dir, sub["engine"], sub["lines"], bool(sub["follow"]), out=out)
    if options.subCommand == "dashboard":
        return dashboard(cluster_dir, sub["furl-file"], out=out)
    return status(cluster_dir, out=out, as_json=bool(sub["json"]), watch=bool(sub["watch"]),
                  interval=sub["interval"])


def console() -> None:
    sys.exit(main())


if __name__ == "__main__":
    console()
