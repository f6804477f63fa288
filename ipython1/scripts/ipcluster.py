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
from typing import IO, Any

from twisted.python import usage

from ipython1 import cluster
from ipython1.cluster import doctor, resize
from ipython1.cluster.local import (
    ENGINES_PID_FILE,
    SUPERVISOR_PID_FILE,
    _kill_groups,
    _python_module,
    _spawn,
    _stale_pid_files,
    _tail,
    _wait_for,
    engine_pids,
    stop_pids,
)
from ipython1.cluster.options import Options
from ipython1.cluster.remote import FURLS, RemoteController
from ipython1.cluster.status import dashboard, logs, status
from ipython1.cluster.usercmds import adduser, deluser, transcript, users
from ipython1.common.clusterdir import ENGINE_FURL, ClusterDir, pid_alive, read_pid
from ipython1.common.errors import KernelError
from ipython1.common.processes import check, recorded, verified, write_pid_file
from ipython1.engine import mpi as mpi_mod

# -- processes ----------------------------------------------------------------


# -- commands -------------------------------------------------------------------


def start(cluster_dir: ClusterDir, n: int | None, ip: str = "127.0.0.1",
          timeout: float = 120.0, daemon: bool = True, mpi: bool = False,
          mpiexec: str | None = None, mpi_args: str = "", out: IO[str] = sys.stdout,
          on_start: Callable[[int], None] | None = None, location: str | None = None,
          port: int = 0, relay_port: int = 0, reuse: bool = False, command_port: int = 0,
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
                       "--relay-port", str(relay_port), "--command-port", str(command_port),
                       *(["--location", location] if location else []),
                       *(["--reuse"] if reuse else [])]
    if (launch_options or {}).get("rejoin-wait") is not None:
        controller_args += ["--rejoin-wait", str(launch_options["rejoin-wait"])]  # type: ignore[index]
    encryption = (launch_options or {}).get("data-encryption", "sealed")
    if encryption not in ("on", "sealed"):  # ipcontroller checks the value
        controller_args.append(f"--data-encryption={encryption}")
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
        # Foolscap and the reactor: only once the cluster runs
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
                    # Under a watcher, which tells the controller how an engine ended
                    # (exit code or signal, last lines of stderr: issue 15).
                    engines = [track(_spawn(
                        engine_argv + ["--watch", "--fork", str(n - rejoining), "--pid-file",
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
    remote = RemoteController.load(cluster_dir)
    error = remote.stop(grace) if remote is not None else None
    if error:
        out.write(f"ipcluster: {error}\n")


def _stop_launcher(cluster_dir: ClusterDir, grace: float, out: IO[str]) -> None:
    """Stop what a launcher of ipython1.cluster started (jobs, ssh), if any."""
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
    # Foolscap and the reactor: only once the cluster runs
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


# -- users (issue 8) ------------------------------------------------------------


def engines(cluster_dir: ClusterDir, options: usage.Options, out: IO[str] = sys.stdout) -> int:
    """Add or remove engines of the running cluster (see ipython1.cluster.resize)."""
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
                         command_port=sub["command-port"],
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
