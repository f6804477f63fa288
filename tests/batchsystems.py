"""Real batch systems for the launcher tests, on this machine, started and stopped by pid.

``SlurmTestCluster`` runs munged, slurmctld and slurmd (Debian slurm-wlm and
munge) from a private directory: its own munge key and socket, a slurm.conf
with proctrack/linuxproc and free ports, one node (``ip1node``, 127.0.0.1)
claiming 8 CPUs so several engine jobs fit on a 2-core machine. Commands
reach it through ``SLURM_CONF`` in ``env``. Nothing outside the directory is
touched, and every daemon is stopped by pid on exit, even after a failure.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Any

SLURM_NODE = "ip1node"
SLURM_CPUS = 8


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def slurm_unavailable() -> str | None:
    """Return why a Slurm test cluster cannot run here, or None."""
    if os.geteuid() != 0:
        return "slurmd must run as root"
    for tool in ("munged", "slurmctld", "slurmd", "sbatch", "srun", "salloc", "scontrol"):
        if shutil.which(tool) is None:
            return f"{tool} is missing (apt-get install slurm-wlm munge)"
    return None


class Daemons:
    """Processes started by a fixture: stopped by pid (TERM, then KILL) in reverse order."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        with open(self.directory / f"{name}.out", "ab") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=out, stdin=subprocess.DEVNULL,
                                    env=env, start_new_session=True)
        self.procs.append(proc)
        return proc

    def stop(self, grace: float = 10.0) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        self.procs.clear()

    def died(self) -> str | None:
        for proc in self.procs:
            if proc.poll() is not None:
                out = self.directory / f"{Path(str(proc.args[0])).name}.out"
                return f"{proc.args[0]} exited ({proc.returncode}): " + (
                    out.read_text(errors="replace")[-2000:] if out.exists() else "")
        return None


class Started:
    """A context manager over start() and stop(): stopped on the way out, even when
    start() failed half-way (whatever it had started is stopped)."""

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Any:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


class SlurmTestCluster(Started):
    """munged + slurmctld + slurmd on 127.0.0.1 from a private directory; a context manager."""

    def __init__(self, directory: Path, timeout: float = 60.0) -> None:
        self.dir = directory
        self.timeout = timeout
        self.conf = directory / "slurm.conf"
        self.env = dict(os.environ, SLURM_CONF=str(self.conf))
        self.daemons = Daemons(directory)

    def write_config(self) -> None:
        d = self.dir
        os.chmod(d, 0o711)  # munged wants the socket's directory searchable
        for sub in ("state", "spool"):
            (d / sub).mkdir(exist_ok=True)
        key = d / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        host = socket.gethostname().split(".")[0]
        self.conf.write_text(f"""\
ClusterName=ip1test
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
AuthType=auth/munge
AuthInfo=socket={d}/munge.sock
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd.pid
SlurmctldLogFile={d}/slurmctld.log
SlurmdLogFile={d}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
SlurmdParameters=config_overrides
MinJobAge=600
NodeName={SLURM_NODE} NodeAddr=127.0.0.1 NodeHostname={host} CPUs={SLURM_CPUS} RealMemory=1000
PartitionName=debug Nodes={SLURM_NODE} Default=YES MaxTime=INFINITE State=UP
""")

    def start(self) -> None:
        self.write_config()
        d, env = self.dir, self.env
        self.daemons.start("munged", [
            "munged", "-F", "-f", f"--socket={d}/munge.sock", f"--key-file={d}/munge.key",
            f"--pid-file={d}/munged.pid", f"--seed-file={d}/munged.seed"], env)
        self._wait(lambda: (d / "munge.sock").exists(), "munged's socket")
        self.daemons.start("slurmctld", ["slurmctld", "-D", "-i", "-f", str(self.conf)], env)
        self.daemons.start("slurmd", ["slurmd", "-D", "-N", SLURM_NODE, "-f", str(self.conf)],
                           env)
        self._wait(lambda: "idle" in self.run("sinfo", "-h", "-o", "%t").stdout,
                   "the node to be idle")

    def _wait(self, condition: Any, what: str) -> None:
        deadline = time.monotonic() + self.timeout
        while not condition():
            died = self.daemons.died()
            if died:
                raise RuntimeError(f"slurm test cluster: {died}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"slurm test cluster: timed out waiting for {what}; "
                                   + self.logs())
            time.sleep(0.1)

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-1500:]}"
                         for p in sorted(self.dir.glob("*.log")) + sorted(self.dir.glob("*.out")))

    def run(self, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(list(argv), env=self.env, capture_output=True, text=True,
                              timeout=timeout)

    def job_state(self, job_id: str) -> str:
        out = self.run("scontrol", "-o", "show", "job", job_id).stdout
        return out.split("JobState=", 1)[1].split()[0] if "JobState=" in out else ""

    def jobs(self) -> list[str]:
        """Return the ids of the jobs Slurm still lists as pending or running."""
        return self.run("squeue", "-h", "-o", "%i").stdout.split()

    def stop(self) -> None:
        try:
            if self.daemons.procs and self.jobs():
                self.run("scancel", *self.jobs(), timeout=30)
                deadline = time.monotonic() + 30  # let slurmd end the jobs' processes
                while self.jobs() and time.monotonic() < deadline:
                    time.sleep(0.2)
        except Exception:
            pass
        self.daemons.stop()


# -- sshd ---------------------------------------------------------------------------

SSHD = "/usr/sbin/sshd"
SSH_PORT = 2222


def ssh_unavailable() -> str | None:
    """Return why sshd hosts cannot run here, or None."""
    if os.geteuid() != 0:
        return "sshd needs root"
    for tool, package in ((SSHD, "openssh-server"), ("ssh", "openssh-client"),
                          ("ssh-keygen", "openssh-client")):
        if shutil.which(tool) is None:
            return f"{tool} is missing (apt-get install {package})"
    return None


class SSHDs(Started):
    """A real sshd in each given grid host: its own host key, config and port, stopped by pid.

    The test's own client key (``key``) is the only one authorized; ``ssh_args``
    are what ipcluster's --ssh-args needs to use it. Each host's sessions get
    their own IPYTHON1_DIR (``home(host)``), as a host without a shared
    filesystem would.
    """

    def __init__(self, directory: Path, hosts: list[Any], port: int = SSH_PORT) -> None:
        self.dir = directory
        self.hosts = hosts
        self.port = port
        self.key = directory / "id_ed25519"
        self.daemons = Daemons(directory)

    def home(self, host: Any) -> Path:
        """The host's own IPYTHON1_DIR (sshd sets it), apart from the test cluster's."""
        return self.dir / f"home-{host.name}"

    @property
    def ssh_args(self) -> str:
        return (f"-p {self.port} -i {self.key} -o IdentitiesOnly=yes -o ConnectTimeout=10 "
                f"-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR")

    def start(self) -> None:
        d = self.dir
        for path, kind in ((self.key, "ed25519"), (d / "host_ed25519", "ed25519")):
            subprocess.run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-f", str(path)],
                           check=True, capture_output=True, timeout=30)
        (d / "authorized_keys").write_text(Path(f"{self.key}.pub").read_text())
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation
        for host in self.hosts:
            config = d / f"sshd_config-{host.name}"
            config.write_text(f"""\
Port {self.port}
HostKey {d}/host_ed25519
AuthorizedKeysFile {d}/authorized_keys
PidFile {d}/sshd-{host.name}.pid
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
SetEnv IPYTHON1_DIR={self.home(host)}
""")
            with open(d / f"sshd-{host.name}.out", "ab") as out:
                proc = host.popen([SSHD, "-D", "-e", "-f", str(config)], stdout=out,
                                  stderr=out, stdin=subprocess.DEVNULL)
            self.daemons.procs.append(proc)
        deadline = time.monotonic() + 30
        for host in self.hosts:
            while host.run(["ssh", *self.ssh_args.split(), "-o", "BatchMode=yes",
                            host.name, "true"], timeout=30).returncode != 0:
                died = self.daemons.died()
                if died or time.monotonic() > deadline:
                    raise RuntimeError(f"sshd on {host.name} did not come up: {died or ''}"
                                       + (d / f"sshd-{host.name}.out").read_text())
                time.sleep(0.2)

    def stop(self) -> None:
        self.daemons.stop()


# -- Grid Engine --------------------------------------------------------------------

SGE_BIN = Path("/var/lib/gridengine")  # Debian's SGE_ROOT: bin, lib, util, utilbin
SGE_QUEUE = """\
qname all.q
hostlist {host}
seq_no 0
load_thresholds NONE
suspend_thresholds NONE
nsuspend 1
suspend_interval 00:05:00
priority 0
min_cpu_interval 00:05:00
processors UNDEFINED
qtype BATCH INTERACTIVE
ckpt_list NONE
pe_list NONE
rerun FALSE
slots 8
tmpdir /tmp
shell /bin/sh
prolog NONE
epilog NONE
shell_start_mode posix_compliant
starter_method NONE
suspend_method NONE
resume_method NONE
terminate_method NONE
notify 00:00:60
owner_list NONE
user_lists NONE
xuser_lists NONE
subordinate_list NONE
complex_values NONE
projects NONE
xprojects NONE
calendar NONE
initial_state default
""" + "".join(f"{limit} INFINITY\n" for limit in (
    "s_rt", "h_rt", "s_cpu", "h_cpu", "s_fsize", "h_fsize", "s_data", "h_data", "s_stack",
    "h_stack", "s_core", "h_core", "s_rss", "h_rss", "s_vmem", "h_vmem"))


def sge_unavailable() -> str | None:
    """Return why a Grid Engine test cell cannot run here, or None."""
    if os.geteuid() != 0:
        return "sge_execd must run as root"
    for path in ("/usr/sbin/sge_qmaster", "/usr/sbin/sge_execd", "/usr/lib/gridengine/spoolinit",
                 str(SGE_BIN / "bin")):
        if not Path(path).exists():
            return f"{path} is missing (apt-get install gridengine-master gridengine-exec " \
                   "gridengine-client)"
    return None


class SGETestCluster(Started):
    """A Grid Engine cell (qmaster + execd, classic spooling) in a private directory.

    The cell lives in its own SGE_ROOT (links to Debian's binaries) with free
    ports, one exec host (this machine, 8 slots in all.q) and a scheduler that
    runs every second. Commands reach it through ``env``; both daemons run in
    the foreground (SGE_ND) and are stopped by pid.
    """

    def __init__(self, directory: Path, timeout: float = 60.0) -> None:
        self.dir = directory
        self.timeout = timeout
        self.root = directory / "root"
        self.host = socket.gethostname()
        self.env = dict(os.environ, SGE_ROOT=str(self.root), SGE_CELL="ip1",
                        SGE_QMASTER_PORT=str(free_port()), SGE_EXECD_PORT=str(free_port()))
        self.daemons = Daemons(directory)

    def run(self, *argv: str, input: str | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(list(argv), env=self.env, input=input, capture_output=True,
                              text=True, timeout=timeout)

    def _qconf(self, flag: str, text: str) -> None:
        path = self.dir / f"qconf{flag}"
        path.write_text(text)
        proc = self.run("qconf", flag, str(path))
        if proc.returncode != 0:
            raise RuntimeError(f"qconf {flag}: {proc.stdout}{proc.stderr}")

    def start(self) -> None:
        d, common = self.dir, self.root / "ip1" / "common"
        common.mkdir(parents=True)
        (d / "qmaster").mkdir()
        (d / "execd").mkdir()
        for name in ("bin", "lib", "util", "utilbin"):
            (self.root / name).symlink_to(SGE_BIN / name)
        (common / "bootstrap").write_text(f"""\
admin_user none
default_domain none
ignore_fqdn true
spooling_method classic
spooling_lib libspoolc
spooling_params {common};{d}/qmaster
binary_path /usr/sbin
qmaster_spool_dir {d}/qmaster
security_mode none
listener_threads 2
worker_threads 2
scheduler_threads 1
""")
        (common / "act_qmaster").write_text(self.host + "\n")
        # 127.0.0.1 may resolve back to "localhost": one host under both names.
        (common / "host_aliases").write_text(f"{self.host} localhost\n")
        defaults = Path("/usr/share/gridengine/default-configuration").read_text()
        conf = []
        for line in defaults.splitlines():
            key = line.split()[0] if line.split() else ""
            conf.append({"execd_spool_dir": f"execd_spool_dir {d}/execd",
                         "min_uid": "min_uid 0", "min_gid": "min_gid 0",
                         "load_report_time": "load_report_time 00:00:05",
                         # qacct tells how a job ended only once accounting is flushed
                         "reporting_params": "reporting_params accounting=true reporting=false "
                         "flush_time=00:00:01 joblog=false sharelog=00:00:00 "
                         "accounting_flush_time=00:00:00"}.get(key, line))
        (common / "configuration").write_text("\n".join(conf) + "\n")
        init = self.run("/usr/lib/gridengine/spoolinit", "classic", "libspoolc",
                        f"{common};{d}/qmaster", "init")
        if init.returncode != 0:
            raise RuntimeError(f"spoolinit: {init.stdout}{init.stderr}")
        for kind, path in (("complexes", "centry"), ("usersets", "usersets")):
            self.run("/usr/lib/gridengine/spooldefaults", kind,
                     f"/usr/share/gridengine/util/resources/{path}")
        self.run("/usr/lib/gridengine/spooldefaults", "managers", "root")
        self.run("/usr/lib/gridengine/spooldefaults", "adminhosts", self.host)

        daemon_env = dict(self.env, SGE_ND="1")
        self.daemons.start("sge_qmaster", ["/usr/sbin/sge_qmaster"], daemon_env)
        self._wait(lambda: self.run("qconf", "-sh").returncode == 0, "sge_qmaster")
        sconf = self.run("qconf", "-ssconf").stdout
        self._qconf("-Msconf", "\n".join(
            {"schedule_interval": "schedule_interval 0:0:1",
             "flush_submit_sec": "flush_submit_sec 1",
             "flush_finish_sec": "flush_finish_sec 1"}.get(line.split()[0], line)
            for line in sconf.splitlines() if line.split()) + "\n")
        self.run("qconf", "-as", self.host)
        self._qconf("-Ae", f"hostname {self.host}\nload_scaling NONE\ncomplex_values NONE\n"
                    "user_lists NONE\nxuser_lists NONE\nprojects NONE\nxprojects NONE\n"
                    "usage_scaling NONE\nreport_variables NONE\n")
        self._qconf("-Aq", SGE_QUEUE.format(host=self.host))
        self.daemons.start("sge_execd", ["/usr/sbin/sge_execd"], daemon_env)
        self._wait(lambda: "lx-" in self.run("qstat", "-f").stdout, "the exec host to report")

    def _wait(self, condition: Any, what: str) -> None:
        deadline = time.monotonic() + self.timeout
        while not condition():
            died = self.daemons.died()
            if died or time.monotonic() > deadline:
                raise RuntimeError(f"SGE test cell: {died or 'timed out waiting for ' + what}; "
                                   + self.logs())
            time.sleep(0.2)

    def logs(self) -> str:
        paths = [*self.dir.glob("*.out"), self.dir / "qmaster" / "messages"]
        return "\n".join(f"--- {p}\n{p.read_text(errors='replace')[-1500:]}"
                         for p in paths if p.exists())

    def jobs(self) -> list[str]:
        lines = self.run("qstat").stdout.splitlines()
        return sorted({line.split()[0] for line in lines if line.split()[:1] != []
                       and line.split()[0].isdigit()})

    def stop(self) -> None:
        try:
            if self.daemons.procs and self.jobs():
                self.run("qdel", "-f", *self.jobs(), timeout=30)
                deadline = time.monotonic() + 30
                while self.jobs() and time.monotonic() < deadline:
                    time.sleep(0.2)
        except Exception:
            pass
        self.daemons.stop()
