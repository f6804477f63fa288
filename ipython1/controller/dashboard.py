"""The web dashboard: engines, the task farm, users and live events in a browser.

Served by the controller itself (twisted.web), on loopback unless told
otherwise. Every page and file comes from the package: no CDN. Access needs a
token in the URL; a token is derived from a capability (``dashboard_token``):
whoever holds a FURL file can compute its token, nobody else can. The owner's
tokens (admin or multi-engine FURL) and full users' tokens may act (interrupt
an engine); an observer's token sees everything an observer may see, read-only.
A user removed, or a FURL rotated, loses its token with it.

``ipcluster dashboard`` prints the URL with the token. The address is written
to ``security/dashboard.json`` (0600).

Cost an unauthenticated peer can cause: at most ``MAX_CONNECTIONS``
connections, each closed after ``IDLE_TIMEOUT`` seconds of silence; request
bodies above ``MAX_BODY`` bytes are refused. A live event stream has the
event bus's own bounded buffer: a browser that stops reading is dropped.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from pathlib import Path
from typing import Any

from twisted.internet import defer, reactor
from twisted.logger import Logger
from twisted.protocols import policies
from twisted.web import resource, server, static

from ipython1.common import clusterdir as cluster

log = Logger()

DASHBOARD_FILE = "dashboard.json"
STATIC = Path(__file__).resolve().parent / "static"
MAX_CONNECTIONS = 64
MAX_STREAMS = 32  # live event streams at once
IDLE_TIMEOUT = 60  # s; live streams send a comment every KEEPALIVE s
KEEPALIVE = 15.0
MAX_BODY = 4096
TIMELINE_SENT = 2000  # finished commands sent per status request at most


def dashboard_token(furl: str) -> str:
    """Return the dashboard token of a capability (a FURL)."""
    return hashlib.sha256(b"ipython1-dashboard\n" + furl.strip().encode()).hexdigest()[:40]


def read_dashboard_url(cluster_dir: cluster.ClusterDir) -> str | None:
    """Return the dashboard's base URL from the cluster directory, if it runs."""
    try:
        return str(json.loads((cluster_dir.security / DASHBOARD_FILE).read_text())["url"])
    except (OSError, ValueError, KeyError):
        return None


class _BoundedFactory(policies.WrappingFactory):
    """Refuse connections beyond a limit (an unauthenticated peer's cost is bounded)."""

    def __init__(self, wrapped: Any, limit: int) -> None:
        super().__init__(wrapped)
        self.limit = limit
        self.refused = 0

    def buildProtocol(self, addr: Any) -> Any:
        if len(self.protocols) >= self.limit:
            self.refused += 1
            if self.refused in (1, 10, 100, 1000) or self.refused % 10000 == 0:
                log.warn("dashboard: refused {n} connection(s) over the limit of {limit}",
                         n=self.refused, limit=self.limit)
            return None
        return super().buildProtocol(addr)


class Dashboard:
    """Serve the dashboard for one controller service."""

    def __init__(self, service: Any, monitor: Any, ip: str = "127.0.0.1", port: int = 0) -> None:
        self.service = service
        self.monitor = monitor
        self.ip = ip
        self.port = port
        self.streams: list[_EventStream] = []
        self.listener: Any = None
        self.url = ""

    # -- access --

    def _capabilities(self) -> list[tuple[str, str, str]]:
        """(furl, user, kind) of every capability whose token opens the dashboard."""
        service = self.service
        owner = service.controller.owner
        caps = [(furl, owner, "owner") for furl in service.furls.values()]
        directory = getattr(service, "users", None)
        if directory is not None:
            # Foolscap: `ipcluster dashboard` reads the URL without it
            from ipython1.controller.userdir import user_furl_file

            for record in directory.users.values():
                try:
                    furl = user_furl_file(service.cluster_dir, record.name).read_text()
                except OSError:
                    continue
                caps.append((furl, record.name, record.kind))
        return caps

    def access(self, token: str | None) -> tuple[str, str] | None:
        """Return (user, kind) for a valid token, else None."""
        if not token:
            return None
        found = None
        for furl, user, kind in self._capabilities():
            if hmac.compare_digest(dashboard_token(furl), token):
                found = (user, kind)
        return found

    # -- serving --

    def start(self) -> None:
        root = resource.Resource()
        root.putChild(b"", _Page(STATIC / "dashboard.html"))
        root.putChild(b"static", static.File(str(STATIC)))
        api = resource.Resource()
        api.putChild(b"status", _Status(self))
        api.putChild(b"events", _Events(self))
        api.putChild(b"interrupt", _Interrupt(self))
        root.putChild(b"api", api)
        site = server.Site(root, timeout=IDLE_TIMEOUT)
        site.displayTracebacks = False
        self.factory = _BoundedFactory(site, MAX_CONNECTIONS)
        self.listener = reactor.listenTCP(self.port, self.factory, interface=self.ip)
        self.port = self.listener.getHost().port
        host = f"[{self.ip}]" if ":" in self.ip else self.ip
        if self.ip in ("0.0.0.0", "::"):
            host = "127.0.0.1"
        self.url = f"http://{host}:{self.port}/"
        cluster.write_private(self.service.cluster_dir.security / DASHBOARD_FILE,
                              json.dumps({"url": self.url, "pid": os.getpid()}) + "\n")
        log.info("dashboard at {url} (ipcluster dashboard prints it with a token)", url=self.url)

    def stop(self) -> Any:
        for stream in list(self.streams):
            stream.close()
        (self.service.cluster_dir.security / DASHBOARD_FILE).unlink(missing_ok=True)
        if self.listener is not None:
            return self.listener.stopListening()
        return None


def _token(request: Any) -> str | None:
    values = request.args.get(b"token")
    if not values:
        return None
    try:
        return str(values[0].decode("ascii"))
    except UnicodeDecodeError:
        return None


def _json(request: Any, value: Any, code: int = 200) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"application/json; charset=utf-8")
    request.setHeader(b"cache-control", b"no-store")
    return json.dumps(value, default=str).encode()


class _Page(resource.Resource):
    isLeaf = True

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path

    def render_GET(self, request: Any) -> bytes:
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        request.setHeader(b"content-security-policy",
                          b"default-src 'self'; img-src 'self' data:; style-src 'self'")
        request.setHeader(b"referrer-policy", b"no-referrer")
        return self.path.read_bytes()


class _Api(resource.Resource):
    isLeaf = True

    def __init__(self, dashboard: Dashboard) -> None:
        super().__init__()
        self.dashboard = dashboard

    def _who(self, request: Any) -> tuple[str, str] | None:
        who = self.dashboard.access(_token(request))
        if who is None:
            request.setResponseCode(403)
        return who


class _Status(_Api):
    def render_GET(self, request: Any) -> Any:
        who = self._who(request)
        if who is None:
            return _json(request, {"error": "a valid token is needed: run ipcluster dashboard"},
                         403)
        monitor = self.dashboard.monitor

        def answer(_: Any) -> None:
            if request.finished or request._disconnected:
                return
            snap = monitor.snapshot()
            snap["access"] = {"user": who[0], "kind": who[1]}
            snap["timeline"] = list(monitor.timeline)[-TIMELINE_SENT:]
            snap["load"] = list(monitor.load)
            request.write(_json(request, snap))
            request.finish()

        d = monitor.refresh()
        d.addBoth(answer)
        return server.NOT_DONE_YET


class _Interrupt(_Api):
    def render_POST(self, request: Any) -> Any:
        who = self._who(request)
        if who is None:
            return _json(request, {"error": "a valid token is needed"}, 403)
        if who[1] == "observer":
            return _json(request, {"error": f"user {who[0]!r} is an observer: read-only"}, 403)
        body = request.content.read(MAX_BODY + 1)
        try:
            engine = int(json.loads(body)["engine"]) if len(body) <= MAX_BODY else None
        except (ValueError, KeyError, TypeError):
            engine = None
        controller = self.dashboard.service.controller
        if engine is None or engine not in controller.engines:
            return _json(request, {"error": "give {\"engine\": ID} of a registered engine"}, 400)
        controller.events.publish("interrupt", who[0], engine, {"via": "dashboard"})
        d = controller.call_now(engine, "interrupt")

        def done(result: Any) -> None:
            ok = not hasattr(result, "getErrorMessage")
            if not request._disconnected:
                request.write(_json(request, {"ok": ok, "engine": engine}))
                request.finish()

        d.addBoth(done)
        return server.NOT_DONE_YET


class _Events(_Api):
    def render_GET(self, request: Any) -> Any:
        who = self._who(request)
        if who is None:
            return _json(request, {"error": "a valid token is needed"}, 403)
        if len(self.dashboard.streams) >= MAX_STREAMS:
            return _json(request, {"error": "too many live event streams"}, 503)
        request.setHeader(b"content-type", b"text/event-stream")
        request.setHeader(b"cache-control", b"no-store")
        _EventStream(self.dashboard, request, who)
        return server.NOT_DONE_YET


class _EventStream:
    """One browser's live events: server-sent events from the event bus."""

    def __init__(self, dashboard: Dashboard, request: Any, who: tuple[str, str]) -> None:
        self.dashboard = dashboard
        self.request = request
        self.paused: defer.Deferred[None] | None = None
        self.closed = False
        bus = dashboard.service.controller.events
        self.sub = bus.subscribe(self._deliver, name=f"dashboard:{who[0]}", history=100)
        dashboard.streams.append(self)
        request.registerProducer(self, True)
        request.write(b": ipython1 events\n\n")
        self._keepalive = reactor.callLater(KEEPALIVE, self._ping)
        request.notifyFinish().addBoth(lambda _: self.close())

    # IPushProducer: the transport tells us when the browser stops reading.
    def pauseProducing(self) -> None:
        if self.paused is None:
            self.paused = defer.Deferred()

    def resumeProducing(self) -> None:
        paused, self.paused = self.paused, None
        if paused is not None:
            paused.callback(None)

    def stopProducing(self) -> None:
        self.close()

    def _deliver(self, blob: bytes) -> Any:
        if self.closed:
            return None
        self.request.write(b"data: " + blob + b"\n\n")
        # While paused the bus keeps (bounded) events for us and drops us past the bound.
        return self.paused

    def _ping(self) -> None:
        if not self.closed:
            self.request.write(b": keepalive\n\n")
            self._keepalive = reactor.callLater(KEEPALIVE, self._ping)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._keepalive.active():
            self._keepalive.cancel()
        self.dashboard.service.controller.events.unsubscribe(self.sub)
        if self in self.dashboard.streams:
            self.dashboard.streams.remove(self)
        if not self.request.finished and not self.request._disconnected:
            self.request.unregisterProducer()
            self.request.finish()
