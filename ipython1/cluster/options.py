"""ipcluster's command line: its subcommands and their options (``usage.Options``)."""

from __future__ import annotations

import sys
from typing import Any

from twisted.python import usage

import ipython1
from ipython1.cluster import ENGINE_KINDS
from ipython1.cluster.remote import host_name
from ipython1.cluster.resize import parse_ids
from ipython1.scripts.ipcontroller import check_network_options


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
        ["command-port", None, 0, "TCP port of the command channel for engines and clients "
         "on other hosts (TLS; default: any free port).", int],
        ["data-encryption", None, "sealed", "sealed (default), tls or off: how large values "
         "go between hosts (see ipcontroller --help and docs/security.md)."],
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
