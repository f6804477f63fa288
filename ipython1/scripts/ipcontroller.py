"""ipcontroller: run the controller (console script and `twistd ipcontroller`)."""

from __future__ import annotations

import os
import sys
from typing import Any

from twisted.python import usage

from ipython1.common import addresses
from ipython1.common.clusterdir import ClusterDir
from ipython1.scripts import run_service


class Options(usage.Options):
    """Options of ipcontroller."""

    synopsis = "[options]"
    longdesc = ("Run the ipython1 controller: a registry of engines with one command queue "
                "per engine, published at FURLs written to the cluster directory's security/.")
    optParameters = [
        ["ip", None, None, "Address to listen on: 0.0.0.0 or :: for every interface "
         "(default: 127.0.0.1, or every interface when --location is given)."],
        ["location", None, None, "HOST[:PORT][,HOST2[:PORT2]...]: what every FURL "
         "advertises, the names or addresses engines and clients dial (default: the --ip "
         "address; for 0.0.0.0 or ::, every non-loopback address of this host)."],
        ["port", None, 0, "TCP port of the controller (default: any free port).", int],
        ["relay-port", None, 0, "TCP port of the data relay, which carries large values "
         "between clients and engines on other hosts (default: any free port).", int],
        ["command-port", None, 0, "TCP port of the command channel (TLS), which carries "
         "the commands of engines and clients on other hosts (default: any free port; "
         "blocked, they use the Foolscap port).", int],
        ["profile", "p", "default", "Cluster profile: $IPYTHON1_DIR/cluster_<profile>/."],
        ["reserve-ids", None, 0, "Give ids below this only to engines that ask for them "
         "(MPI ranks; ipcluster start --mpi sets it to -n).", int],
        ["dashboard-ip", None, "127.0.0.1", "Interface the web dashboard listens on."],
        ["dashboard-port", None, 0, "The web dashboard's TCP port (default: any free port).",
         int],
        ["data-encryption", None, "sealed", "How large values go between clients and "
         "engines on other hosts: sealed (default: a TLS handshake, then AES-128-GCM frames), "
         "tls (TLS records end to end) or off: UNENCRYPTED (still authenticated by an HMAC "
         "of the transfer's secret), only on a network where nobody may read or alter them "
         "(docs/security.md). on means sealed."],
        ["rejoin-wait", None, 60.0, "Seconds after start-up that engines may rejoin with "
         "what they were running (tasks, multi-engine results); then a task whose engine "
         "did not come back runs again (or fails, if not idempotent).", float],
    ]
    optFlags = [
        ["no-dashboard", None, "Serve no web dashboard."],
        ["reuse", "r", "Take over from the profile's last controller: its port (unless "
         "--port), certificate, FURLs and engine ids, so its engines and clients rejoin."],
    ]

    def postOptions(self) -> None:
        check_network_options(self)
        if self["rejoin-wait"] < 0:
            raise usage.UsageError("--rejoin-wait must be >= 0")
        from ipython1.transport.data.seal import encryption_mode

        try:
            self["data-encryption"] = encryption_mode(self["data-encryption"])
        except ValueError as e:
            raise usage.UsageError(str(e)) from None


def check_network_options(options: Any) -> None:
    """Validate --location and the ports; settle --ip (shared with ipcluster start)."""
    for name in ("port", "relay-port", "command-port"):
        if name in options and not 0 <= options[name] < 65536:
            raise usage.UsageError(f"--{name} must be from 0 (any free port) to 65535")
    if options["location"] is not None:
        try:
            addresses.parse_location(options["location"], 1)
        except ValueError as e:
            raise usage.UsageError(str(e)) from None
    options["ip"] = addresses.bind_address(options["ip"], options["location"])


def makeService(options: Any) -> Any:
    """Build the controller service tree from options."""
    # after the reactor is chosen (twistd or main())
    from ipython1.controller.service import ControllerService

    service = ControllerService(ClusterDir(options["profile"]), ip=options["ip"],
                                port=options["port"], reserve_ids=options["reserve-ids"],
                                location=options["location"],
                                relay_port=options["relay-port"],
                                command_port=options["command-port"],
                                dashboard=None if options["no-dashboard"] else
                                (options["dashboard-ip"], options["dashboard-port"]),
                                reuse=bool(options["reuse"]),
                                rejoin_wait=options["rejoin-wait"])
    service.controller.data_encryption = options.get("data-encryption", "sealed")
    return service


def main(argv: list[str] | None = None) -> None:
    """Run the controller in the foreground until SIGTERM/SIGINT."""
    options = Options()
    try:
        options.parseOptions(sys.argv[1:] if argv is None else argv)
    except usage.UsageError as e:
        raise SystemExit(f"ipcontroller: {e}\n{options}") from None
    os.umask(0o077)  # whatever the controller writes (logs, FURLs, transcript) is owner-only
    cluster_dir = ClusterDir(options["profile"]).create()
    run_service(makeService(options), cluster_dir.log_file("ipcontroller"))


if __name__ == "__main__":
    main()
