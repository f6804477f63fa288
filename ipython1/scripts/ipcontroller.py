"""ipcontroller: run the controller (console script and `twistd ipcontroller`)."""

from __future__ import annotations

import sys
from typing import Any

from twisted.python import usage

from ipython1.kernel.cluster import ClusterDir


class Options(usage.Options):
    """Options of ipcontroller."""

    synopsis = "[options]"
    longdesc = ("Run the ipython1 controller: a registry of engines with one command queue "
                "per engine, published at FURLs written to the cluster directory's security/.")
    optParameters = [
        ["ip", None, "127.0.0.1", "Interface to listen on (default: loopback only)."],
        ["port", None, 0, "TCP port (default: any free port).", int],
        ["profile", "p", "default", "Cluster profile: $IPYTHON1_DIR/cluster_<profile>/."],
        ["reserve-ids", None, 0, "Give ids below this only to engines that ask for them "
         "(MPI ranks; ipcluster start --mpi sets it to -n).", int],
        ["dashboard-ip", None, "127.0.0.1", "Interface the web dashboard listens on."],
        ["dashboard-port", None, 0, "The web dashboard's TCP port (default: any free port).",
         int],
    ]
    optFlags = [
        ["no-dashboard", None, "Serve no web dashboard."],
        ["reuse", "r", "Take over from the profile's last controller: its port (unless "
         "--port), certificate, FURLs and engine ids, so its engines and clients rejoin."],
    ]


def makeService(options: Any) -> Any:
    """Build the controller service tree from options."""
    from ipython1.kernel.controller import ControllerService

    return ControllerService(ClusterDir(options["profile"]), ip=options["ip"],
                             port=options["port"], reserve_ids=options["reserve-ids"],
                             dashboard=None if options["no-dashboard"] else
                             (options["dashboard-ip"], options["dashboard-port"]),
                             reuse=bool(options["reuse"]))


def main(argv: list[str] | None = None) -> None:
    """Run the controller in the foreground until SIGTERM/SIGINT."""
    from ipython1.scripts import run_service

    options = Options()
    try:
        options.parseOptions(sys.argv[1:] if argv is None else argv)
    except usage.UsageError as e:
        raise SystemExit(f"ipcontroller: {e}\n{options}") from None
    cluster_dir = ClusterDir(options["profile"]).create()
    run_service(makeService(options), cluster_dir.log_file("ipcontroller"))


if __name__ == "__main__":
    main()
