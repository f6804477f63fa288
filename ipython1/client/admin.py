"""The owner's administrative calls from a client process (ipcluster adduser, deluser, users)."""

from __future__ import annotations

from typing import Any

from ipython1.client.reactor import ReactorThread, _wait
from ipython1.common import clusterdir as cluster
from ipython1.common import wire
from ipython1.common.clusterdir import ADMIN_FURL
from ipython1.common.errors import ControllerNotFound, error_from_wire
from ipython1.transport.foolscap import call as call_remote


def admin_call(cluster_dir: cluster.ClusterDir, method: str, *args: Any,
               timeout: float = 10.0) -> Any:
    """Call the running controller's admin capability (blocking); return the value."""
    furl = wire.resolve_furl(cluster_dir.furl_file(ADMIN_FURL), cluster_dir.profile,
                             ADMIN_FURL) if cluster_dir.furl_file(ADMIN_FURL).exists() else None
    if furl is None:
        raise ControllerNotFound(f"no admin FURL in {cluster_dir.security}: is a controller "
                                 f"running for profile {cluster_dir.profile!r}?")

    def call() -> Any:
        tub = wire.client_tub()
        d = wire.get_reference(tub, furl, timeout)
        d.addCallback(lambda ref: call_remote(ref, method, *args))

        def done(result: Any) -> Any:
            tub.stopService()
            return result

        return d.addBoth(done)

    answer = _wait(ReactorThread.get().submit(call), timeout + 5)
    if answer.get("status") != "ok":
        raise error_from_wire(answer["error"])
    return answer["value"]

