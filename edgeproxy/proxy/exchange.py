"""One request/response exchange: its state, and its relay to an upstream.

Created by the client connection when a request head is parsed; validated and
routed in `prepare()`; started when it reaches the head of the connection's
pipeline; finished when both the request and the response are complete. A
request keeps the color and upstream it started on, whatever the switch does
meanwhile.
"""

from __future__ import annotations

import errno
import logging
from time import monotonic
from typing import TYPE_CHECKING, Final

from edgeproxy.config import Timeouts
from edgeproxy.errors import ClientProtocolError
from edgeproxy.policies import GzipEncoder, RoutePolicy, retry_after
from edgeproxy.proxy import headers as h
from edgeproxy.proxy.framing import CHUNKED, LENGTH, NOBODY, RECHUNK, UNTIL_CLOSE
from edgeproxy.proxy.responses import build_response, redirect
from edgeproxy.proxy.upstream import UpstreamConnection, UpstreamPool
from edgeproxy.switching.decide import HOLD, REFUSE, Decision

if TYPE_CHECKING:
    from edgeproxy.proxy.client import ClientConnection
    from edgeproxy.routing.router import RouteEntry

log = logging.getLogger("edgeproxy.proxy")

IDEMPOTENT: Final = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"})
LOCAL_ERRNOS: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
"""Errors of this host, not of the upstream being connected to."""
ALLOWED_METHODS: Final = b"GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"
"""The Allow header of a 405 for TRACE (a route that allows it passes anything on)."""


class Exchange:
    __slots__ = (
        "app",
        "body_buffer",
        "body_buffered",
        "body_sent",
        "chunked_req",
        "client",
        "client_ip",
        "client_ip_b",
        "color",
        "content_length",
        "done",
        "encoder",
        "error",
        "expect_continue",
        "finished_at",
        "fwd",
        "headers",
        "host",
        "info",
        "keep_alive",
        "last_upstream",
        "local",
        "loop",
        "method",
        "name_color",
        "override",
        "panic",
        "path",
        "paused",
        "policy",
        "pool",
        "reported",
        "req_done",
        "request_id",
        "resp_bytes",
        "resp_mode",
        "resp_started",
        "retried",
        "route",
        "set_cookie",
        "started_at",
        "status",
        "target",
        "tracked",
        "tunnel",
        "up_head",
        "up_keep",
        "up_until_close",
        "upgrade",
        "upstream",
        "version",
    )

    def __init__(self, client: ClientConnection) -> None:
        self.client = client
        self.loop = client.loop
        self.client_ip = client.peer_ip
        """The client's address, found once (prepare) and used everywhere: rate limit,
        override allow_from, canary key, X-Real-IP upstream, access log."""
        self.client_ip_b = client.peer_ip_b
        self.headers: list[tuple[bytes, bytes]] = []
        self.fwd: list[bytes] = []
        """Pieces of the request headers to forward as they are (built by validate_request)."""
        self.method = b""
        self.target = b""
        self.path = b""
        self.version = "1.1"
        self.keep_alive = True
        self.upgrade = False
        self.host = b""
        self.route: RouteEntry | None = None
        self.app: str | None = None
        self.color: str | None = None
        self.pool: UpstreamPool | None = None
        self.upstream: UpstreamConnection | None = None
        self.local: bytes | None = None
        """A response edgeproxy answers itself (error, redirect, ACME, preflight)."""
        self.up_head = b""
        self.content_length: int | None = None
        self.chunked_req = False
        self.expect_continue = False
        self.body_buffer: list[bytes] = []
        self.body_buffered = 0
        self.body_sent = 0
        self.req_done = False
        self.resp_started = False
        self.resp_mode = LENGTH
        self.resp_bytes = 0
        self.status = 0
        self.done = False
        self.error: str | None = None
        """Why edgeproxy ended this exchange itself (upstream failure, cut); None otherwise."""
        self.retried = False
        self.tunnel = False
        self.tracked: set[Exchange] | None = None
        """The Tracker set this exchange is counted in while in flight."""
        self.started_at = 0.0
        self.finished_at = 0.0
        self.last_upstream = 0.0
        self.request_id = b""
        self.up_keep = True
        self.up_until_close = False
        self.reported = False
        self.paused = False
        self.panic = False
        self.override: str | None = None
        self.name_color = False
        """The response names the color that served it (an honoured override, expose_color)."""
        """The color a tester asked for, when this client may override (set in prepare)."""
        """Routed to a color with no fit upstream (`when_all_down: route`)."""
        self.set_cookie: bytes | None = None
        self.info: h.RequestInfo | None = None
        self.policy: RoutePolicy | None = None
        self.encoder: GzipEncoder | None = None

    # -- set-up ---------------------------------------------------------
    def prepare(self) -> None:
        """Validate, route and build the upstream head; may set `local` instead."""
        client = self.client
        ctx = client.ctx
        if self.method == b"CONNECT":
            raise ClientProtocolError(405, "CONNECT is not supported")
        info = h.validate_request(self, ctx.limits)
        if client.peer_trusted:
            self._believe_forwarded(info)
        # time.monotonic(), not loop.time(): uvloop's clock moves in whole ms.
        self.started_at = monotonic()
        host = self.host
        site = ctx.router.site_for(host)
        if site is None:
            self.local = build_response(404, close=not self.keep_alive)
            return
        if client.tls and client.sni_site is not site and client.sni is not None:
            # Rare: Host names another site than the SNI name did, or a config
            # reload rebuilt the sites (compare with the SNI name's site now).
            sni_site = client.sni_site_now()
            if sni_site is not None and sni_site is not site:
                self.local = build_response(
                    421, headers=site.policy[True].response_headers, close=True
                )
                self.keep_alive = False
                return
        if not client.tls:
            if self.path.startswith(h.ACME_PREFIX) and ctx.webroot is not None:
                self.local = h.acme_response(ctx.webroot, self.path, self.method)
                return
            if site.https_redirect:
                location = (
                    b"https://" + h.host_without_port(host) + ctx.https_port_suffix + self.target
                )
                self.local = redirect(location, site.policy[False].response_headers)
                return
        route = site.route(self.path)
        tls = client.tls
        if route is None:
            self.policy = site.policy[tls]
            self.local = build_response(
                404, headers=self.policy.error_headers(info.origin), close=not self.keep_alive
            )
            return
        self.route = route
        self.policy = pol = route.policy[tls]
        if self.method == b"TRACE" and not route.config.allow_trace:
            headers = [(b"allow", ALLOWED_METHODS), *pol.error_headers(info.origin)]
            self.local = build_response(405, headers=headers, close=not self.keep_alive)
            return
        if (
            pol.max_body is not None
            and self.content_length is not None
            and self.content_length > pol.max_body
        ):
            raise ClientProtocolError(
                413, f"body of {self.content_length} bytes over {pol.max_body}"
            )
        if pol.cors is not None and self.method == b"OPTIONS":
            answer = pol.cors.preflight(self.method, info.origin, info.acr_method)
            if answer is not None:
                status, headers = answer
                headers.extend(pol.response_headers)
                self.local = build_response(status, b"", headers, close=not self.keep_alive)
                return
        decision: Decision | None = None
        if route.app is not None:
            decision = self._decide(route.app, info)
            self.override = decision.override
        limiter = pol.rate_limiter
        if (
            limiter is not None
            and self.override is None
            and (info.secrets is None or not limiter.exempt_secret(info.secrets))
        ):
            # Override traffic (smoke checks, testers from override.allow_from) is exempt,
            # and so is a request with the exemption secret (it takes no token either).
            wait = limiter.check(self.client_ip, self.loop.time())
            # An exempt network is asked about only once refused: the common request
            # pays nothing, and an exempt client only empties its own bucket.
            if wait is not None and not limiter.exempt_address(self.client_ip):
                headers = [(b"retry-after", retry_after(wait)), *pol.error_headers(info.origin)]
                self.local = build_response(429, headers=headers, close=not self.keep_alive)
                return
        if self.upgrade and not (info.websocket and pol.websocket):
            # Upgrade to something other than WebSocket (h2c), or not allowed
            # here: answer as a plain request, then close.
            self.keep_alive = False
            self.upgrade = False
        self.request_id = info.request_id or ctx.new_request_id()
        self.info = info
        if decision is not None:
            self.app = route.app
            if not self._follow(decision):
                return  # paused (start() waits) or refused (local 503)
        else:
            assert route.upstream is not None
            self.pool = ctx.pool_for(route.upstream)
        self.up_head = h.upstream_head(self, info, route)

    def _believe_forwarded(self, info: h.RequestInfo) -> None:
        """The peer is a trusted proxy: the client address is the one it forwards."""
        ctx = self.client.ctx
        chain = info.xff if ctx.real_ip_from_xff else info.real_ip
        if chain is not None:
            ip = ctx.forwarded_client(chain)
            if ip is not None:
                self.client_ip = ip
                self.client_ip_b = ip.encode()

    def _decide(self, app: str, info: h.RequestInfo) -> Decision:
        """Where this request goes: the switch's one decision (`switching/decide.py`)."""
        return self.client.ctx.picker.decide(
            app,
            info.override,
            info.cookie,
            self.client_ip,
            self.client_ip_b,
            self.headers,
            self.client.tls,
        )

    def _follow(self, d: Decision) -> bool:
        """Act on the switch's decision: take an upstream of its color; False when it
        holds the request (paused: start() waits) or refuses it (a local 503)."""
        if d.action == HOLD:
            self.paused = True
            return False
        self.color = d.color
        if d.action == REFUSE:
            headers = [(b"retry-after", d.retry_after), *self.error_headers()]
            body = b"503 Service Unavailable: %s\n" % d.why.encode()
            self.local = build_response(503, body, headers, close=not self.keep_alive)
            return False
        ctx = self.client.ctx
        app = self.app
        assert app is not None and d.color is not None
        targets = ctx.colors[(app, d.color)]
        pool = None if d.panic else targets.pick(ctx.health_ok)
        self.panic = pool is None
        self.pool = pool if pool is not None else targets.pick_anyway()
        self.set_cookie = d.set_cookie
        self.name_color = self.override is not None or app in ctx.color_exposed
        return True

    # -- running ----------------------------------------------------------
    def start(self) -> None:
        """Called when this exchange reaches the head of the pipeline."""
        client = self.client
        if self.local is not None:
            client.write(self.local)
            self.status = int(self.local[9:12])
            self.resp_started = True
            self.done = True
            if self.req_done:
                self._report(self.keep_alive)
            return
        if self.paused:
            client.spawn(self._wait_unpaused(), "pause-wait")
            return
        if self.expect_continue and self.version == "1.1":
            client.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        self.client.ctx.tracker.add(self)
        assert self.pool is not None
        conn = self.pool.take_idle()
        if conn is not None:
            self.attach(conn)
        else:
            client.spawn(self._connect(), "upstream-connect")

    async def _wait_unpaused(self) -> None:
        assert self.app is not None and self.info is not None and self.route is not None
        ok = await self.client.ctx.picker.wait_unpaused(self.app)
        if self.done:
            return
        if not ok:
            self.fail(503, "app paused for longer than pause_max_wait")
            return
        self.paused = False
        if self._follow(self._decide(self.app, self.info)):
            self.up_head = h.upstream_head(self, self.info, self.route)
        self.start()

    async def _connect(self) -> None:
        assert self.pool is not None
        try:
            conn = await self.pool.connect()
        except TimeoutError:
            self.pool.connect_errors += 1
            self.fail(504, "connect timeout")
            return
        except OSError as e:
            if e.errno in LOCAL_ERRNOS:
                # Our own shortage (descriptors, buffers, memory), not the upstream's
                # fault: 503, not counted against it (fail() sets `error`, and health's
                # passive ejection ignores an error answered 503).
                self.pool.local_errors += 1
                log.warning(
                    "cannot connect to %s: %s on this host (%s), not the upstream's fault; "
                    "answering 503 (raise LimitNOFILE or lower limits.max_connections)",
                    self.pool.upstream.url,
                    errno.errorcode.get(e.errno or 0, "?"),
                    e.strerror or e,
                )
                self.fail(503, f"local error connecting upstream: {e.strerror or e}")
                return
            self.pool.connect_errors += 1
            self.fail(502, f"connect failed: {e.strerror or e}")
            return
        if self.done:
            conn.close()
            return
        conn.reused = False
        self.attach(conn)

    def attach(self, conn: UpstreamConnection) -> None:
        self.upstream = conn
        conn.exchange = self
        self.last_upstream = self.loop.time()
        buf = self.body_buffer
        if buf:
            conn.write(self.up_head + b"".join(buf))
            self.body_sent += self.body_buffered
            self.body_buffer = []
            self.body_buffered = 0
            self.client.resume_reading_for_buffer()
        else:
            conn.write(self.up_head)

    def route_timeouts(self) -> Timeouts:
        policy = self.policy
        return policy.timeouts if policy is not None else self.client.ctx.timeouts

    def error_headers(self) -> list[tuple[bytes, bytes]]:
        """Security/CORS headers for a response edgeproxy writes itself."""
        if self.policy is None:
            return []
        info = self.info
        headers: list[tuple[bytes, bytes]] = self.policy.error_headers(
            info.origin if info is not None else None
        )
        return headers

    # -- request body -------------------------------------------------------
    def on_request_body(self, chunk: bytes) -> None:
        if self.chunked_req:
            chunk = b"%x\r\n%b\r\n" % (len(chunk), chunk)
        if self.upstream is not None:
            self.body_sent += len(chunk)
        elif self.body_buffered + len(chunk) > 262144 and not self.done:
            self.client.pause_reading_for_buffer()
        self._send_body(chunk)

    def on_request_complete(self) -> None:
        self.req_done = True
        self.last_upstream = self.loop.time()  # the read timeout starts when the request is sent
        if self.chunked_req:
            self._send_body(b"0\r\n\r\n")
        if self.done:
            self._report(self.keep_alive)

    def _report(self, keep_alive: bool) -> None:
        if not self.reported:
            self.reported = True
            self.client.exchange_finished(self, keep_alive=keep_alive)

    def _send_body(self, data: bytes) -> None:
        """Request body bytes to the upstream, or buffered until it is connected."""
        conn = self.upstream
        if conn is not None:
            conn.write(data)
        elif not self.done:
            self.body_buffer.append(data)
            self.body_buffered += len(data)

    # -- response -------------------------------------------------------------
    def on_response_head(
        self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]], up_keep_alive: bool
    ) -> None:
        if 100 <= status < 200 and status != 101:
            return  # informational: we answered 100-continue ourselves
        self.status = status
        head, mode = h.response_head(self, status, reason, headers)
        self.resp_mode = mode
        self.resp_started = True
        if not up_keep_alive and self.upstream is not None:
            self.up_keep = False
        self.client.write(head)
        if mode == NOBODY and status != 101:
            # HEAD: the upstream may still send a body length we won't read; drop the socket.
            if self.method == b"HEAD" and self.upstream is not None:
                self.upstream.close()
            self._response_done(reusable=False)

    def on_response_body(self, body: bytes) -> None:
        self.resp_bytes += len(body)
        if self.encoder is not None:
            body = self.encoder.feed(body)
            if not body:
                return
        if self.resp_mode == LENGTH or self.resp_mode == UNTIL_CLOSE:
            self.client.write(body)
        elif self.resp_mode != NOBODY:
            self.client.write(b"%x\r\n%b\r\n" % (len(body), body))

    def on_response_complete(self) -> None:
        if self.done or not self.resp_started or self.status == 101:
            return
        self._finish_body(reusable=True)

    def _finish_body(self, *, reusable: bool) -> None:
        if self.encoder is not None:
            tail = self.encoder.finish()
            self.encoder = None
            if tail:
                if self.resp_mode == UNTIL_CLOSE:
                    self.client.write(tail)
                else:
                    self.client.write(b"%x\r\n%b\r\n" % (len(tail), tail))
        if self.resp_mode in (CHUNKED, RECHUNK):
            self.client.write(b"0\r\n\r\n")
        self._response_done(reusable=reusable)

    def _response_done(self, *, reusable: bool) -> None:
        self.done = True
        conn, self.upstream = self.upstream, None
        if conn is not None:
            if (
                reusable
                and self.up_keep
                and self.req_done
                and conn.exchange is self
                and conn.parser is not None
            ):
                conn.pool.release(conn)
            else:
                conn.exchange = None
                conn.close()
        if self.resp_mode == UNTIL_CLOSE:
            self.keep_alive = False
        if not self.req_done:
            # The upstream answered before the request body ended (e.g. 401 on an
            # upload). Don't read the rest into the next request: close after.
            self.keep_alive = False
        self._report(self.keep_alive)

    def on_upstream_upgrade(self, tail: bytes) -> None:
        conn = self.upstream
        if self.status != 101 or conn is None or not self.upgrade:
            self.fail(502, "upstream switched protocols unasked")
            return
        self.tunnel = True
        self.client.start_tunnel(self, conn, tail)

    def on_upstream_failed(self, status: int, why: str) -> None:
        self.fail(status, why)

    def on_upstream_lost(self, conn: UpstreamConnection, exc: Exception | None) -> None:
        if self.done:
            return
        if self.upstream is not conn:
            return
        self.upstream = None
        if not self.resp_started:
            if (
                conn.reused
                and not self.retried
                and self.method in IDEMPOTENT
                and self.body_sent == 0
                and not (self.chunked_req and self.req_done)
            ):
                # A keep-alive socket the upstream closed just as we reused it:
                # safe to replay once on a fresh connection (nothing was processed),
                # a PUT too while none of its body went out: what arrives from now
                # on is buffered for the fresh connection. (A chunked body's last
                # chunk is not counted in body_sent: once it went, no retry.)
                self.retried = True
                self.client.spawn(self._connect(), "upstream-retry")
                return
            self.fail(502, f"upstream closed the connection: {exc or 'EOF'}")
            return
        if self.up_until_close:
            # No Content-Length, not chunked: the upstream's close ends the body.
            self._finish_body(reusable=False)
            return
        # Truncated response: the client must see the connection end, not a short body.
        self.error = f"upstream closed mid-response: {exc or 'EOF'}"
        self.done = True
        self.keep_alive = False
        self.client.abort(self)

    def abandon(self) -> None:
        """Mark this exchange done and drop its upstream connection (it can't be reused)."""
        self.done = True
        conn, self.upstream = self.upstream, None
        if conn is not None:
            conn.exchange = None
            conn.close()

    def fail(self, status: int, why: str) -> None:
        """End this exchange with an error status, or cut it if bytes already went out."""
        if self.done:
            return
        self.error = why
        self.abandon()
        if not self.resp_started:
            log.info(
                "%s %s %s -> %d: %s",
                self.app or "-",
                self.method.decode("latin-1"),
                self.path.decode("latin-1", "replace")[:200],
                status,
                why,
            )
            self.status = status
            self.resp_started = True
            close = not (self.req_done and self.keep_alive)
            extra = [(b"retry-after", b"5")] if status == 503 else []
            extra += self.error_headers()
            self.client.write(build_response(status, headers=extra, close=close))
            self._report(not close)
        else:
            self.keep_alive = False
            self.client.abort(self)

    def cut(self) -> None:
        """Drain deadline passed: 503 if nothing was sent yet, else close."""
        tunnel = self.client.tunnel
        if self.tunnel and tunnel is not None:
            tunnel.end()
        elif not self.tunnel:
            self.keep_alive = False
            self.fail(503, "drain deadline passed")
