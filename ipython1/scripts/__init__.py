"""Command-line entry points: ipcontroller, ipengine, ipcluster."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from ipython1.common.clusterdir import open_private_log


def start_logging(log_file: Path) -> None:
    """Send Twisted's log to a file (appending)."""
    from twisted.logger import FilteringLogObserver, globalLogBeginner, textFileLogObserver

    # Twisted's logging: only for the processes that log
    from ipython1.common.listenguard import RepeatedLogLimiter

    stream = open_private_log(log_file)  # lives as long as the process; 0600: user output
    # A connection flood is reported, not copied line by line into the log.
    observer = FilteringLogObserver(textFileLogObserver(stream), [RepeatedLogLimiter()])
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)


def run_service(service: Any, log_file: Path) -> None:
    """Start a service under the reactor in this thread; stop it on shutdown."""
    from twisted.internet import reactor

    start_logging(log_file)

    failed: list[Exception] = []

    def start() -> None:
        try:
            service.startService()
        except Exception as e:
            failed.append(e)
            reactor.stop()

    reactor.callWhenRunning(start)
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    reactor.run()
    if failed:
        sys.stderr.write(f"{failed[0]}\n")
        sys.exit(1)
