"""ipcluster doctor: check a cluster for the setup mistakes users make, in plain words.

Each check gives findings: ``ok``, ``warn`` or ``fail``, each with what to do.
Checks that need no controller run first (FURL files and their modes, whether
each address a FURL advertises answers from here); then, if a controller
answers, its ports, every engine's versions, clock, MPI and PMI, and whether
each engine can reach the addresses the controller advertises. The command
exits non-zero when any check fails.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import stat
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from ipython1.cluster.launcher import load_state
from ipython1.common.clusterdir import ENGINE_FURL, MEC_FURL, TASK_FURL, ClusterDir
from ipython1.common.errors import KernelError
from ipython1.common.versions import compare, local_versions

CLOCK_SKEW_WARN = 1.0  # s: event times and timeouts get confusing beyond this
CONNECT_TIMEOUT = 3.0  # s per address tried


@dataclass
class Finding:
    """One thing the doctor found."""

    level: str  # "ok", "warn" or "fail"
    what: str
    advice: str = ""

    def render(self) -> str:
        mark = {"ok": "ok  ", "warn": "WARN", "fail": "FAIL"}[self.level]
        text = f"[{mark}] {self.what}"
        return text + (f"\n         -> {self.advice}" if self.advice else "")


def furl_addresses(furl: str) -> list[tuple[str, int]]:
    """Return the (host, port) addresses a FURL advertises."""
    try:
        hints = furl.strip().split("@", 1)[1].split("/", 1)[0]
    except IndexError:
        return []
    addresses = []
    for hint in hints.split(","):
        hint = hint.removeprefix("tcp:")
        host, _, port = hint.rpartition(":")
        host = host.strip("[]")
        if host and port.isdigit():
            addresses.append((host, int(port)))
    return addresses


def reachable(host: str, port: int, timeout: float = CONNECT_TIMEOUT) -> str | None:
    """Return None if a TCP connection to host:port opens, else why not."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as e:
        return e.strerror or str(e)


def check_files(cluster_dir: ClusterDir) -> list[Finding]:
    """FURL files exist, are private, and hold FURLs; the directories are private."""
    found: list[Finding] = []
    security = cluster_dir.security
    if not security.is_dir():
        return [Finding("fail", f"no security directory at {security}",
                        "start a cluster with `ipcluster start -n 4 --daemon`, or pass the "
                        "--profile it was started with")]
    # Logs and pid files there may show code and output; the FURLs are the keys.
    for directory, level in ((cluster_dir.path, "warn"), (security, "fail")):
        mode = stat.S_IMODE(directory.stat().st_mode)
        if mode & 0o077:
            found.append(Finding(level, f"{directory} is readable by others (mode {mode:o})",
                                 f"chmod 700 {directory}"))
    for name in (ENGINE_FURL, MEC_FURL, TASK_FURL):
        path = security / name
        if not path.exists():
            found.append(Finding("fail" if name != TASK_FURL else "warn", f"{path} is missing",
                                 "is a controller running for this profile? "
                                 "`ipcluster start` writes it"))
            continue
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            found.append(Finding("fail", f"{path} can be read by others (mode {mode:o}): "
                                 "whoever reads a FURL controls the cluster",
                                 f"chmod 600 {path}; then rotate it (restart the controller "
                                 "without --reuse)"))
        text = path.read_text().strip()
        if not text.startswith("pb://") or not furl_addresses(text):
            found.append(Finding("fail", f"{path} does not hold a FURL",
                                 "restart the controller to rewrite it"))
        elif mode & 0o077 == 0:
            found.append(Finding("ok", f"{name}: present, mode {mode:o}"))
    return found


def check_addresses(cluster_dir: ClusterDir) -> list[Finding]:
    """Every address the FURLs advertise answers from here; none is a wildcard."""
    try:
        furl = (cluster_dir.security / MEC_FURL).read_text()
    except OSError:
        return []
    found = []
    for host, port in furl_addresses(furl):
        if host in ("0.0.0.0", "::"):
            found.append(Finding("fail", f"the FURLs advertise {host}:{port}, which no other "
                                 "host can dial", "restart the controller with --location "
                                 "HOST (an address engines can reach)"))
            continue
        why = reachable(host, port)
        if why is None:
            found.append(Finding("ok", f"controller address {host}:{port} answers from here"))
        else:
            found.append(Finding("fail", f"controller address {host}:{port} does not answer "
                                 f"from {socket.gethostname()}: {why}",
                                 "is the controller running? is a firewall in the way? does "
                                 "--location name an address of the controller's host?"))
    return found


def _port_answers(hosts: list[str], port: Any, name: str, the_name: str, level: str,
                  advice: str) -> Finding | None:
    """ok if port answers at any of hosts, else level with advice; None if there is no port."""
    if not port:
        return None
    answers = [h for h in hosts if reachable(h, int(port)) is None]
    if answers:
        return Finding("ok", f"{name} {port} answers at " + ", ".join(answers))
    return Finding(level, f"{the_name} {port} does not answer at " + ", ".join(hosts), advice)


def check_ports(cluster_dir: ClusterDir, ports: dict[str, Any]) -> list[Finding]:
    """The data relay's port answers at the controller's advertised hosts; the dashboard's
    is said (it listens on loopback unless told otherwise)."""
    try:
        hosts = [h for h, _ in furl_addresses((cluster_dir.security / MEC_FURL).read_text())]
    except OSError:
        return []
    found = [finding for finding in (
        _port_answers(hosts, ports.get("relay"), "data relay port", "the data relay's port",
                      "fail", "open it in the firewall, or fix it with --relay-port Q and "
                      "open that (push/pull of large values need it)"),
        _port_answers(hosts, ports.get("commands"), "command channel port",
                      "the command channel's port", "warn",
                      "engines and clients on other hosts fall back to the slower "
                      "Foolscap port; open it, or fix it with --command-port Q"),
    ) if finding is not None]
    if ports.get("dashboard"):
        found.append(Finding("ok", f"dashboard on port {ports['dashboard']} "
                             "(`ipcluster dashboard` prints its URL)"))
    return found


def engine_report() -> dict[str, Any]:
    """Run on an engine: what the doctor needs to know from there."""
    import importlib.util
    import os
    import shutil
    import socket
    import time


    pmi = sorted(k for k in os.environ if k.startswith(("PMI_", "PMIX_", "OMPI_", "SLURM_")))
    return {"time": time.time(), "host": socket.gethostname(), "versions": local_versions(),
            "mpi4py": importlib.util.find_spec("mpi4py") is not None,
            "mpiexec": shutil.which("mpiexec"), "pmi": pmi[:20]}


def engine_reaches(addresses: list[tuple[str, int]]) -> dict[str, str | None]:
    """Run on an engine: which controller addresses answer from there."""
    import socket

    out: dict[str, str | None] = {}
    for host, port in addresses:
        try:
            with socket.create_connection((host, port), timeout=3.0):
                out[f"{host}:{port}"] = None
        except OSError as e:
            out[f"{host}:{port}"] = e.strerror or str(e)
    return out


def check_cluster(cluster_dir: ClusterDir, hosts: set[str] | None = None) -> list[Finding]:
    """Ask the running controller and every engine; compare versions, clocks, MPI, reach.

    The engines' host names are added to hosts, when given.
    """
    # Foolscap and the reactor: only for the checks that talk to a controller
    from ipython1.client.blocking import MultiEngineClient
    from ipython1.controller.userdir import admin_call

    found: list[Finding] = []
    try:
        snap = admin_call(cluster_dir, "status")
    except (KernelError, OSError) as e:
        return [Finding("fail", f"no controller answers for profile {cluster_dir.profile!r}: "
                        f"{e}", "start one with `ipcluster start -n 4 --daemon`")]
    mine = local_versions()
    controller = snap["controller"]
    cv = controller.get("versions") or {}
    found.append(Finding("ok", f"controller pid {controller['pid']} on {controller['host']}: "
                         f"Python {controller['python']}, ipython1 {controller['ipython1']}, "
                         f"cloudpickle {cv.get('cloudpickle', '?')}, numpy {cv.get('numpy', '?')}"))
    errors, _ = compare(mine, cv or None, "this client", "the controller")
    for error in errors:
        found.append(Finding("fail", error))
    found += check_ports(cluster_dir, controller.get("ports") or {})
    engines = snap["engines"]
    if not engines:
        found.append(Finding("warn", "no engines are registered",
                             "start some (`ipcluster engines add N`, `ipengine`), and see "
                             "`ipcluster logs` for why they did not register"))
        return found
    addresses = furl_addresses((cluster_dir.security / ENGINE_FURL).read_text())
    mec = MultiEngineClient(profile=cluster_dir.profile, timeout=30)
    try:
        ids = [e["id"] for e in engines]
        sent = time.time()
        reports = mec.apply(engine_report, targets=ids)
        back = time.time()
        reaches = mec.apply(engine_reaches, addresses, targets=ids)
        infos = {i["engine_id"]: i for i in mec.engine_info(ids)}
    finally:
        mec.close()
    versions_seen: dict[str, list[int]] = {}
    for engine_id, report, reach in zip(ids, reports, reaches, strict=True):
        where = f"engine {engine_id} on {report['host']}"
        if hosts is not None:
            hosts.add(str(report["host"]))
        _, warnings = compare(mine, infos.get(engine_id, {}).get("versions"), "this client",
                              where)
        for warning in warnings:
            found.append(Finding("warn", warning))
        v = report["versions"]
        key = (f"Python {v['python']}, ipython1 {v['ipython1']}, cloudpickle "
               f"{v['cloudpickle']}, numpy {v['numpy']}")
        versions_seen.setdefault(key, []).append(engine_id)
        # The engine's clock read between our sent and back: skew beyond that window.
        skew = 0.0 if sent <= report["time"] <= back else min(
            abs(report["time"] - sent), abs(report["time"] - back))
        if skew > CLOCK_SKEW_WARN:
            found.append(Finding("warn", f"{where}: its clock is {skew:.1f} s off this host's",
                                 "run an NTP client (chrony, systemd-timesyncd) on every host"))
        bad = {a: why for a, why in reach.items() if why is not None}
        if bad:
            found.append(Finding("warn", f"{where} cannot reach "
                                 + ", ".join(f"{a} ({why})" for a, why in bad.items()),
                                 "engines started later on that host may not register; use "
                                 "--location with an address every host can reach"))
    for key, members in versions_seen.items():
        found.append(Finding("ok", f"engine(s) {_ids(members)}: {key}"))
    if len(versions_seen) > 1:
        found.append(Finding("warn", "the engines do not all run the same versions",
                             "install the same environment on every host"))
    found.append(Finding("ok", f"this client: Python {mine['python']}, ipython1 "
                         f"{mine['ipython1']}, cloudpickle {mine['cloudpickle']}, numpy "
                         f"{mine['numpy']}"))
    mpi = [e["id"] for e in engines if e.get("mpi_rank") is not None]
    if mpi:
        lacking = [i for i, r in zip(ids, reports, strict=True) if i in mpi and not r["mpi4py"]]
        if lacking:
            found.append(Finding("fail", f"MPI engine(s) {_ids(lacking)} cannot import mpi4py",
                                 "pip install mpi4py (and an MPI) on those hosts"))
        else:
            found.append(Finding("ok", f"{len(mpi)} MPI engine(s); mpi4py on each"))
    return found


# Run on a configured host over ssh: which controller addresses answer from there.
_REACH_SCRIPT = (
    "import socket,sys\n"
    "for a in sys.argv[1:]:\n"
    "    h,_,p=a.rpartition(':')\n"
    "    try:\n"
    "        socket.create_connection((h.strip('[]'),int(p)),timeout=3).close();print(a,'ok')\n"
    "    except OSError as e:\n"
    "        print(a,e.strerror or e)\n")


def check_configured_hosts(cluster_dir: ClusterDir, registered_hosts: set[str]) -> list[Finding]:
    """Hosts an ssh launcher was given: can each reach the controller's addresses?

    Engines that registered show their host can; this dials from the others
    (engines not started yet, or that never registered), over the same ssh.
    """
    state = load_state(cluster_dir) or {}
    if state.get("launcher") != "ssh":
        return []
    try:
        addresses = furl_addresses((cluster_dir.security / ENGINE_FURL).read_text())
    except OSError:
        return []
    targets = " ".join(f"{h}:{p}" if ":" not in h else f"[{h}]:{p}" for h, p in addresses)
    found = []
    for host, _slots in state.get("hosts", []):
        name = str(host).rsplit("@", 1)[-1]
        if name in registered_hosts:
            continue
        command = f"python3 -c {shlex.quote(_REACH_SCRIPT)} {targets}"
        try:
            # As the ssh launcher dials (BatchMode: never ask for a password).
            argv = ["ssh", "-o", "BatchMode=yes", *(state.get("ssh_args") or []), str(host),
                    command]
            proc = subprocess.run(argv,
                                  capture_output=True, text=True, timeout=30,
                                  stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            found.append(Finding("fail", f"configured host {host}: ssh did not answer in 30 s",
                                 "check that the host is up and ssh works in BatchMode"))
            continue
        if proc.returncode != 0:
            why = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            found.append(Finding("fail", f"configured host {host}: ssh failed: {why}",
                                 "check ssh keys (BatchMode: no passwords) and --ssh-args"))
            continue
        bad = [line for line in proc.stdout.splitlines() if not line.endswith(" ok")]
        if bad:
            found.append(Finding("fail", f"configured host {host} cannot reach the controller: "
                                 + "; ".join(bad),
                                 "start the controller with --location ADDRESS reachable from "
                                 "the engine hosts, and check firewalls"))
        else:
            found.append(Finding("ok", f"configured host {host} reaches the controller"))
    return found


def check_local_mpi() -> list[Finding]:
    """MPI and PMI on this host, for `ipcluster start --mpi`."""
    import importlib.util

    mpiexec = shutil.which("mpiexec") or (
        str(Path(sys.executable).parent / "mpiexec")
        if (Path(sys.executable).parent / "mpiexec").exists() else None)
    has_mpi4py = importlib.util.find_spec("mpi4py") is not None
    if mpiexec and has_mpi4py:
        return [Finding("ok", f"MPI here: {mpiexec}, mpi4py importable")]
    missing = [n for n, ok in (("mpiexec", mpiexec), ("mpi4py", has_mpi4py)) if not ok]
    return [Finding("warn", f"no {' or '.join(missing)} on this host: `ipcluster start --mpi` "
                    "will not work here", "pip install 'ipython1[mpi]' (mpich and mpi4py)")]


def _ids(ids: list[int]) -> str:
    return ", ".join(map(str, ids))


def run(cluster_dir: ClusterDir, out: IO[str] = sys.stdout, as_json: bool = False) -> int:
    """Run every check; print the findings; return 1 if any failed."""
    findings = check_files(cluster_dir)
    if findings and not any(f.level == "fail" and "security directory" in f.what
                            for f in findings):
        findings += check_addresses(cluster_dir)
        registered: set[str] = set()
        if not any(f.level == "fail" and "does not answer" in f.what for f in findings):
            findings += check_cluster(cluster_dir, registered)
        findings += check_configured_hosts(cluster_dir, registered)
    findings += check_local_mpi()
    failed = sum(f.level == "fail" for f in findings)
    warned = sum(f.level == "warn" for f in findings)
    if as_json:
        out.write(json.dumps([f.__dict__ for f in findings], indent=1) + "\n")
    else:
        out.write(f"ipcluster doctor: profile {cluster_dir.profile!r} ({cluster_dir.path}), "
                  f"from {socket.gethostname()} (pid {os.getpid()})\n")
        for f in findings:
            out.write(f.render() + "\n")
        out.write(f"{failed} problem(s), {warned} warning(s)\n" if failed or warned
                  else "everything looks right\n")
    return 1 if failed else 0
