"""One request/response exchange: its state machine, and its relay to an upstream.

An `Exchange` sits between two sides that never name each other:

- the client side, a `Downstream` (below): `ClientConnection` for HTTP/1.1, a
  stream for HTTP/2. It creates the exchange, feeds it the request
  (`on_request_head`, `on_request_body`, `on_request_complete`), calls `start()`
  when it is this exchange's turn to answer, and is told what to send
  (`send_head`/`send_body`/`send_end`/`send_local`) and when the exchange is
  over (`exchange_finished`, or `abort` when the response cannot be completed);
- the upstream side, an `UpstreamConnection`, which delivers the response to
  the exchange as its `ResponseSink` (proxy/upstream.py).

Its state is two phases, and every change of either goes through the tables
below (h11's `_state.py` is the model): the request is `head` while the head
arrives, `body` once it is validated and routed, `done` when the whole request
was read; the response is `pending` until something is sent, `local` when
edgeproxy answers itself (an error, a redirect, ACME, a preflight), `streaming`
while the upstream's response is relayed, then `done`, `tunnel` (a WebSocket
took the connection over) or `cut` (the client saw the connection end). A step
the tables do not allow raises `IllegalTransition`.

A request keeps the color and upstream it started on, whatever the switch does
meanwhile.
"""

from __future__ import annotations

import asyncio
import errno
import logging
from collections.abc import Coroutine
from time import monotonic
from typing import TYPE_CHECKING, Any, Final

from mypy_extensions import mypyc_attr

from edgeproxy.config import Timeouts
from edgeproxy.errors import ClientProtocolError, IllegalTransition
from edgeproxy.policies import GzipEncoder, RoutePolicy, retry_after
from edgeproxy.proxy import headers as h
from edgeproxy.proxy.context import InFlight, ProxyContext
from edgeproxy.proxy.framing import LAST_CHUNK, LENGTH, NOBODY, UNTIL_CLOSE, chunk
from edgeproxy.proxy.responses import build_response, redirect
from edgeproxy.proxy.upstream import ResponseSink, UpstreamConnection, UpstreamPool
from edgeproxy.switching.decide import HOLD, REFUSE, Decision

if TYPE_CHECKING:
    from edgeproxy.routing.router import RouteEntry

log = logging.getLogger("edgeproxy.proxy")

IDEMPOTENT: Final = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"})
LOCAL_ERRNOS: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
"""Errors of this host, not of the upstream being connected to."""
ALLOWED_METHODS: Final = b"GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"
"""The Allow header of a 405 for TRACE (a route that allows it passes anything on)."""
BUFFER_LIMIT: Final = 262144
"""Request body bytes held while the upstream connection is being made (256 KiB);
past this, reading from the client pauses until the upstream takes them."""

# -- the state machine: phases and their legal steps, all in this one place ------------
# Ints, not an Enum: once compiled, a phase test is a C integer comparison.
REQ_HEAD: Final = 0
REQ_BODY: Final = 1
REQ_DONE: Final = 2
REQUEST_PHASES: Final = ("head", "body", "done")

RESP_PENDING: Final = 0
RESP_LOCAL: Final = 1
RESP_STREAMING: Final = 2
RESP_TUNNEL: Final = 3
RESP_DONE: Final = 4
RESP_CUT: Final = 5
RESPONSE_PHASES: Final = ("pending", "local", "streaming", "tunnel", "done", "cut")
"""Ordered so that `phase >= RESP_TUNNEL` means "this exchange writes nothing more"."""

REQUEST_TRANSITIONS: Final[dict[int, tuple[int, ...]]] = {
    REQ_HEAD: (REQ_BODY,),  # the head is validated and routed
    REQ_BODY: (REQ_DONE,),  # the last body byte (or none) arrived
    REQ_DONE: (),
}
RESPONSE_TRANSITIONS: Final[dict[int, tuple[int, ...]]] = {
    RESP_PENDING: (
        RESP_LOCAL,  # edgeproxy answers itself (decided while routing, or after a pause)
        RESP_STREAMING,  # the upstream's head went to the client
        RESP_DONE,  # an error answered before any byte went out (502, 503, 504)
        RESP_CUT,  # the client left, or broke its request, before any answer
    ),
    RESP_LOCAL: (
        RESP_DONE,  # the answer went out and the request is complete
        RESP_CUT,  # the client left first
    ),
    RESP_STREAMING: (
        RESP_TUNNEL,  # 101: the connection is a WebSocket tunnel now
        RESP_DONE,  # the whole body went out
        RESP_CUT,  # truncated upstream, drain deadline, timeout, client gone
    ),
    RESP_TUNNEL: (),
    RESP_DONE: (),
    RESP_CUT: (),
}


def _legal_steps(table: dict[int, tuple[int, ...]]) -> int:
    """The table as one bit set: bit `old * 8 + new` is set when old → new is legal."""
    bits = 0
    for old, news in table.items():
        for new in news:
            bits |= 1 << (old * 8 + new)
    return bits


# Precomputed once: a transition check is a shift and a mask (fits a C long: 6 * 8 bits).
_REQUEST_LEGAL: Final = _legal_steps(REQUEST_TRANSITIONS)
_RESPONSE_LEGAL: Final = _legal_steps(RESPONSE_TRANSITIONS)


@mypyc_attr(allow_interpreted_subclasses=True)
class Downstream:
    """The client side of exchanges: what an `Exchange` asks of the connection (or
    HTTP/2 stream) it answers, and the connection's facts it reads.

    `ClientConnection` (proxy/client.py) is the HTTP/1.1 implementation. A native
    base class, not a `typing.Protocol`: calls through it stay native (vtable)
    calls once compiled (docs/architecture.md, hot-path notes). Subclasses set the
    peer fields when the connection is made.
    """

    __slots__ = (
        "closing",
        "ctx",
        "local_port_b",
        "loop",
        "peer_ip",
        "peer_ip_b",
        "peer_trusted",
        "scheme",
        "sni",
        "sni_router",
        "sni_site",
        "tls",
        "tls_version",
    )

    def __init__(
        self,
        ctx: ProxyContext,
        loop: asyncio.AbstractEventLoop,
        *,
        tls: bool,
        local_port: int,
    ) -> None:
        self.ctx = ctx
        """The context in force (a config reload replaces it)."""
        self.loop = loop
        self.tls = tls
        self.scheme = b"https" if tls else b"http"
        self.local_port_b = str(local_port).encode()
        self.peer_ip = ""
        self.peer_ip_b = b""
        self.peer_trusted = False
        """The peer is in `forwarding.trusted_proxies`: its X-Forwarded-* are believed."""
        self.sni: str | None = None
        self.sni_site: Any = None
        self.sni_router: Any = None
        """The router `sni_site` was resolved with (a config reload brings another)."""
        self.tls_version: str | None = None
        self.closing = False
        """The connection ends after the response being written."""

    def sni_site_now(self) -> Any:
        """The site of this connection's SNI name under the config in force.

        Resolved at the handshake; a config reload rebuilds every site, so the
        name is resolved again (once per reload) with the current router: a
        request on a connection opened before a reload is answered like one on
        a new connection with the same SNI name.
        """
        router = self.ctx.router
        if self.sni_router is not router:
            self.sni_site = router.site_for_sni(self.sni)
            self.sni_router = router
        return self.sni_site

    # -- the response, in order ----------------------------------------------------
    def send_continue(self) -> None:
        """`Expect: 100-continue` was asked: tell the client to send the body."""
        raise NotImplementedError

    def send_local(self, data: bytes) -> None:
        """A whole response edgeproxy wrote itself: HTTP/1.1 bytes from
        `responses.build_response` (status line, headers, blank line, body)."""
        raise NotImplementedError

    def send_head(self, head: h.ResponseHead) -> None:
        """The upstream's response head as the client gets it (`head.data` is its
        HTTP/1.1 form, `head.mode` how the body is framed, `head.keep_alive`)."""
        raise NotImplementedError

    def send_body(self, data: bytes) -> None:
        """Response body bytes (never empty), unframed: the downstream frames them."""
        raise NotImplementedError

    def send_end(self) -> None:
        """The response body is complete."""
        raise NotImplementedError

    def cork(self) -> None:
        """Hold what is sent until `uncork()` (one upstream read's worth leaves together)."""
        raise NotImplementedError

    def uncork(self) -> None:
        raise NotImplementedError

    # -- back-pressure on the request body --------------------------------------------
    def pause_reading_for_upstream(self) -> None:
        """The upstream's write buffer is full: stop reading the request body."""
        raise NotImplementedError

    def resume_reading_for_upstream(self) -> None:
        raise NotImplementedError

    def pause_reading_for_buffer(self) -> None:
        """`BUFFER_LIMIT` bytes of body wait for the upstream connection: stop reading."""
        raise NotImplementedError

    def resume_reading_for_buffer(self) -> None:
        raise NotImplementedError

    # -- the end -------------------------------------------------------------------------
    def spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        """Run a task tied to this downstream (cancelled when it goes away)."""
        raise NotImplementedError

    def exchange_finished(self, ex: Exchange, *, keep_alive: bool) -> None:
        """Once per exchange, its response complete (or answered with an error).
        `keep_alive` False: close after what was sent. Not called after `abort`."""
        raise NotImplementedError

    def abort(self, ex: Exchange) -> None:
        """The response cannot be completed (truncated upstream, drain cut): the
        client must see it end abnormally (HTTP/1.1: close; HTTP/2: RST_STREAM)."""
        raise NotImplementedError

    def start_tunnel(self, ex: Exchange, conn: UpstreamConnection, tail: bytes) -> None:
        """The upstream answered 101 to an upgrade: its connection is handed over."""
        raise NotImplementedError

    def end_tunnel(self) -> None:
        """Close the tunnel `start_tunnel` made (a drain's deadline passed)."""
        raise NotImplementedError

    def tunnel_write(self, data: bytes) -> None:
        """Bytes of a tunnel for the client (proxy/tunnel.py)."""
        raise NotImplementedError

    def tunnel_ended(self, ex: Exchange) -> None:
        """Called once by the tunnel when it ends: close the client side too."""
        raise NotImplementedError


class Exchange(ResponseSink, InFlight):
    """One request and its response; see the module docstring for its phases."""

    __slots__ = (  # noqa: RUF023 - grouped by concern, as in __init__
        # -- connection: who asks, and the exchange's place in the data plane
        "client",
        "client_ip",
        "client_ip_b",
        "finished_at",
        "last_upstream",
        "started_at",
        "tracked",
        # -- request
        "req_phase",
        "body_buffer",
        "body_buffered",
        "body_sent",
        "headers",
        "host",
        "info",
        "keep_alive",
        "method",
        "path",
        "request_id",
        "target",
        "upgrade",
        "version",
        # -- routing: where it goes
        "app",
        "color",
        "name_color",
        "override",
        "panic",
        "policy",
        "pool",
        "route",
        "set_cookie",
        "up_head",
        # -- upstream
        "retried",
        "up_keep",
        "upstream",
        # -- response
        "resp_phase",
        "encoder",
        "error",
        "local",
        "resp_bytes",
        "resp_mode",
        "status",
        "up_until_close",
    )

    def __init__(self, client: Downstream) -> None:
        # -- connection
        self.client = client
        self.client_ip = client.peer_ip
        """The client's address, found once (prepare) and used everywhere: rate limit,
        override allow_from, canary key, X-Real-IP upstream, access log."""
        self.client_ip_b = client.peer_ip_b
        self.tracked: set[InFlight] | None = None
        """The Tracker set this exchange is counted in while in flight."""
        self.started_at = 0.0
        self.finished_at = 0.0
        self.last_upstream = 0.0
        # -- request
        self.req_phase = REQ_HEAD
        self.method = b""
        self.version = "1.1"
        self.target = b""
        self.path = b""
        self.host = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.info: h.RequestHead | None = None
        """The validated head, once the request is routed to an upstream."""
        self.keep_alive = True
        self.upgrade = False
        self.request_id = b""
        self.body_buffer: list[bytes] = []
        self.body_buffered = 0
        self.body_sent = 0
        # -- routing
        self.route: RouteEntry | None = None
        self.policy: RoutePolicy | None = None
        self.app: str | None = None
        self.color: str | None = None
        self.pool: UpstreamPool | None = None
        """None after routing to an app only while its switch state holds requests (paused)."""
        self.override: str | None = None
        """The color a tester asked for, when this client may override (set in prepare)."""
        self.name_color = False
        """The response names the color that served it (an honoured override, expose_color)."""
        self.panic = False
        """Routed to a color with no fit upstream (`when_all_down: route`)."""
        self.set_cookie: bytes | None = None
        self.up_head = b""
        # -- upstream
        self.upstream: UpstreamConnection | None = None
        self.up_keep = True
        self.retried = False
        # -- response
        self.resp_phase = RESP_PENDING
        self.local: bytes | None = None
        """A response edgeproxy answers itself (error, redirect, ACME, preflight)."""
        self.status = 0
        self.resp_mode = LENGTH
        self.resp_bytes = 0
        self.encoder: GzipEncoder | None = None
        self.up_until_close = False
        self.error: str | None = None
        """Why edgeproxy ended this exchange itself (upstream failure, cut); None otherwise."""

    # -- phases ---------------------------------------------------------------------
    def _request_to(self, new: int) -> None:
        if not (_REQUEST_LEGAL >> (self.req_phase * 8 + new)) & 1:
            raise IllegalTransition("request", REQUEST_PHASES[self.req_phase], REQUEST_PHASES[new])
        self.req_phase = new

    def _response_to(self, new: int) -> None:
        if not (_RESPONSE_LEGAL >> (self.resp_phase * 8 + new)) & 1:
            raise IllegalTransition(
                "response", RESPONSE_PHASES[self.resp_phase], RESPONSE_PHASES[new]
            )
        self.resp_phase = new

    def answered(self) -> bool:
        """Nothing more will be sent for this exchange: done, cut, tunnelled, or its
        local answer sent (it waits only for the request's end)."""
        phase = self.resp_phase
        return phase >= RESP_TUNNEL or (phase == RESP_LOCAL and self.status != 0)

    def response_begun(self) -> bool:
        """Bytes of a response went to the client (a head, a local answer, an error)."""
        return self.resp_phase >= RESP_STREAMING or self.status != 0

    # -- the request, from the downstream ----------------------------------------------
    def on_request_head(
        self,
        method: bytes,
        version: str,
        target: bytes,
        headers: list[tuple[bytes, bytes]],
        *,
        upgrade: bool,
        keep_alive: bool,
    ) -> None:
        """The request head arrived: validate and route it (raises ClientProtocolError
        for a request to refuse: the downstream answers its status and closes)."""
        self._request_to(REQ_BODY)
        self.method = method
        self.version = version
        self.target = target
        self.headers = headers
        self.upgrade = upgrade
        self.keep_alive = keep_alive
        self._prepare()

    def _answer_locally(self, response: bytes) -> None:
        self.local = response
        self._response_to(RESP_LOCAL)

    def _prepare(self) -> None:
        """Validate, route and build the upstream head; may answer locally instead."""
        client = self.client
        ctx = client.ctx
        if self.method == b"CONNECT":
            raise ClientProtocolError(405, "CONNECT is not supported")
        info = h.validate_request(
            self.headers,
            self.target,
            version=self.version,
            upgrade=self.upgrade,
            codes=ctx.header_codes,
        )
        self.target = info.target
        self.path = info.path
        self.host = host = info.host
        if client.peer_trusted:
            self._believe_forwarded(info)
        # time.monotonic(), not loop.time(): uvloop's clock moves in whole ms.
        self.started_at = monotonic()
        site = ctx.router.site_for(host)
        if site is None:
            self._answer_locally(build_response(404, close=not self.keep_alive))
            return
        if client.tls and client.sni_site is not site and client.sni is not None:
            # Rare: Host names another site than the SNI name did, or a config
            # reload rebuilt the sites (compare with the SNI name's site now).
            sni_site = client.sni_site_now()
            if sni_site is not None and sni_site is not site:
                self._answer_locally(
                    build_response(421, headers=site.policy[True].response_headers, close=True)
                )
                self.keep_alive = False
                return
        if not client.tls:
            if self.path.startswith(h.ACME_PREFIX) and ctx.webroot is not None:
                self._answer_locally(h.acme_response(ctx.webroot, self.path, self.method))
                return
            if site.https_redirect:
                location = (
                    b"https://" + h.host_without_port(host) + ctx.https_port_suffix + self.target
                )
                self._answer_locally(redirect(location, site.policy[False].response_headers))
                return
        route = site.route(self.path)
        tls = client.tls
        if route is None:
            self.policy = site.policy[tls]
            self._answer_locally(
                build_response(
                    404, headers=self.policy.error_headers(info.origin), close=not self.keep_alive
                )
            )
            return
        self.route = route
        self.policy = pol = route.policy[tls]
        if self.method == b"TRACE" and not route.config.allow_trace:
            headers = [(b"allow", ALLOWED_METHODS), *pol.error_headers(info.origin)]
            self._answer_locally(build_response(405, headers=headers, close=not self.keep_alive))
            return
        if (
            pol.max_body is not None
            and info.content_length is not None
            and info.content_length > pol.max_body
        ):
            raise ClientProtocolError(
                413, f"body of {info.content_length} bytes over {pol.max_body}"
            )
        if pol.cors is not None and self.method == b"OPTIONS":
            answer = pol.cors.preflight(self.method, info.origin, info.acr_method)
            if answer is not None:
                status, headers = answer
                headers.extend(pol.response_headers)
                self._answer_locally(
                    build_response(status, b"", headers, close=not self.keep_alive)
                )
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
            wait = limiter.check(self.client_ip, client.loop.time())
            # An exempt network is asked about only once refused: the common request
            # pays nothing, and an exempt client only empties its own bucket.
            if wait is not None and not limiter.exempt_address(self.client_ip):
                headers = [(b"retry-after", retry_after(wait)), *pol.error_headers(info.origin)]
                self._answer_locally(
                    build_response(429, headers=headers, close=not self.keep_alive)
                )
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
        self.up_head = self._upstream_head()

    def _upstream_head(self) -> bytes:
        client = self.client
        info = self.info
        route = self.route
        assert info is not None and route is not None
        return h.upstream_head(
            self.method,
            info,
            route,
            client_ip_b=self.client_ip_b,
            request_id=self.request_id,
            color=self.color,
            upgrade=self.upgrade,
            peer_b=client.peer_ip_b,
            peer_trusted=client.peer_trusted,
            scheme=client.scheme,
            local_port_b=client.local_port_b,
            request_id_header=client.ctx.request_id_header,
        )

    def _believe_forwarded(self, info: h.RequestHead) -> None:
        """The peer is a trusted proxy: the client address is the one it forwards."""
        ctx = self.client.ctx
        chain = info.xff if ctx.real_ip_from_xff else info.real_ip
        if chain is not None:
            ip = ctx.forwarded_client(chain)
            if ip is not None:
                self.client_ip = ip
                self.client_ip_b = ip.encode()

    def _decide(self, app: str, info: h.RequestHead) -> Decision:
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
            return False  # `pool` stays None: start() waits for the resume
        self.color = d.color
        if d.action == REFUSE:
            headers = [(b"retry-after", d.retry_after), *self.error_headers()]
            body = b"503 Service Unavailable: %s\n" % d.why.encode()
            self._answer_locally(build_response(503, body, headers, close=not self.keep_alive))
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
        """Called by the downstream when this exchange may answer (its turn in the pipeline)."""
        client = self.client
        if self.resp_phase == RESP_LOCAL:
            local = self.local
            assert local is not None
            client.send_local(local)
            self.status = int(local[9:12])
            if self.req_phase == REQ_DONE:
                self._response_to(RESP_DONE)
                self._finished(self.keep_alive)
            return  # else done when the request ends (on_request_complete)
        pool = self.pool
        if pool is None:
            client.spawn(self._wait_unpaused(), "pause-wait")
            return
        info = self.info
        if info is not None and info.expect_continue and self.version == "1.1":
            client.send_continue()
        self.track()
        conn = pool.take_idle()
        if conn is not None:
            self.attach(conn)
        else:
            client.spawn(self._connect(), "upstream-connect")

    async def _wait_unpaused(self) -> None:
        assert self.app is not None and self.info is not None and self.route is not None
        ok = await self.client.ctx.picker.wait_unpaused(self.app)
        if self.answered():
            return
        if not ok:
            self.fail(503, "app paused for longer than pause_max_wait")
            return
        if self._follow(self._decide(self.app, self.info)):
            self.up_head = self._upstream_head()
        self.start()

    async def _connect(self) -> None:
        pool = self.pool
        assert pool is not None
        try:
            conn = await pool.connect()
        except TimeoutError:
            pool.connect_errors += 1
            self.fail(504, "connect timeout")
            return
        except OSError as e:
            if e.errno in LOCAL_ERRNOS:
                # Our own shortage (descriptors, buffers, memory), not the upstream's
                # fault: 503, not counted against it (fail() sets `error`, and health's
                # passive ejection ignores an error answered 503).
                pool.local_errors += 1
                log.warning(
                    "cannot connect to %s: %s on this host (%s), not the upstream's fault; "
                    "answering 503 (raise LimitNOFILE or lower limits.max_connections)",
                    pool.upstream.url,
                    errno.errorcode.get(e.errno or 0, "?"),
                    e.strerror or e,
                )
                self.fail(503, f"local error connecting upstream: {e.strerror or e}")
                return
            pool.connect_errors += 1
            self.fail(502, f"connect failed: {e.strerror or e}")
            return
        if self.answered():
            conn.close()
            return
        conn.reused = False
        self.attach(conn)

    def attach(self, conn: UpstreamConnection) -> None:
        self.upstream = conn
        conn.exchange = self
        self.last_upstream = self.client.loop.time()
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

    # -- in flight (the context's Tracker) ---------------------------------------------
    def track(self) -> None:
        s = self.client.ctx.tracker.set_of(self.app or "", self.color or "")
        s.add(self)
        self.tracked = s  # untrack() needs no key or lookup (twice per request)

    def untrack(self) -> None:
        s = self.tracked
        if s is not None:
            s.discard(self)
            self.tracked = None

    def in_tunnel(self) -> bool:
        return self.resp_phase == RESP_TUNNEL

    def read_overdue(self, now: float) -> bool:
        return (
            self.upstream is not None
            and self.req_phase == REQ_DONE
            and not self.answered()
            and now - self.last_upstream >= self.route_timeouts().read
        )

    def time_out(self) -> None:
        self.fail(504, f"no upstream byte for {self.route_timeouts().read:g}s")

    def record(self) -> None:
        """Hand the finished exchange to the observers (metrics, health, access log), once."""
        if self.finished_at:
            return
        self.finished_at = monotonic()
        for observe in self.client.ctx.exchange_observers:
            observe(self)

    def _finished(self, keep_alive: bool) -> None:
        self.untrack()
        self.record()
        self.client.exchange_finished(self, keep_alive=keep_alive)

    # -- request body -------------------------------------------------------------------
    def on_request_body(self, data: bytes) -> None:
        if self.local is not None:
            return  # answered locally: the body is read and dropped
        info = self.info
        if info is not None and info.chunked:
            data = chunk(data)
        if self.upstream is not None:
            self.body_sent += len(data)
        elif self.body_buffered + len(data) > BUFFER_LIMIT and not self.answered():
            self.client.pause_reading_for_buffer()
        self._send_body(data)

    def on_request_complete(self) -> None:
        self._request_to(REQ_DONE)
        self.last_upstream = self.client.loop.time()  # the read timeout starts now
        info = self.info
        if self.local is None and info is not None and info.chunked:
            self._send_body(LAST_CHUNK)
        if self.resp_phase == RESP_LOCAL and self.status != 0:
            # The local answer went out while the body was still arriving.
            self._response_to(RESP_DONE)
            self._finished(self.keep_alive)

    def _send_body(self, data: bytes) -> None:
        """Request body bytes to the upstream, or buffered until it is connected."""
        conn = self.upstream
        if conn is not None:
            conn.write(data)
        elif not self.answered():
            self.body_buffer.append(data)
            self.body_buffered += len(data)

    # -- back-pressure from the downstream --------------------------------------------------
    def pause_response(self) -> None:
        """The downstream's write buffer is full: stop reading from the upstream."""
        conn = self.upstream
        if conn is not None:
            conn.pause_reading()

    def resume_response(self) -> None:
        conn = self.upstream
        if conn is not None:
            conn.resume_reading()

    # -- response (ResponseSink: called by the upstream connection) -------------------------
    def upstream_read_begins(self) -> None:
        client = self.client
        self.last_upstream = client.loop.time()
        client.cork()

    def upstream_read_ends(self) -> None:
        self.client.uncork()

    def upstream_write_paused(self) -> None:
        self.client.pause_reading_for_upstream()

    def upstream_write_resumed(self) -> None:
        self.client.resume_reading_for_upstream()

    def on_response_head(
        self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]], up_keep_alive: bool
    ) -> None:
        if 100 <= status < 200 and status != 101:
            return  # informational: we answered 100-continue ourselves
        client = self.client
        ctx = client.ctx
        self.status = status
        head = h.response_head(
            status,
            reason,
            headers,
            policy=self.policy,
            info=self.info,
            method=self.method,
            version=self.version,
            keep_alive=self.keep_alive,
            closing=client.closing,
            codes=ctx.response_codes,
            request_id_header=ctx.request_id_header,
            request_id=self.request_id,
            set_cookie=self.set_cookie,
            show_color=self.color if self.name_color else None,
        )
        self._response_to(RESP_STREAMING)
        mode = head.mode
        self.resp_mode = mode
        self.encoder = head.encoder
        self.up_until_close = head.until_close
        self.keep_alive = head.keep_alive
        if not up_keep_alive and self.upstream is not None:
            self.up_keep = False
        client.send_head(head)
        if mode == NOBODY and status != 101:
            # HEAD: the upstream may still send a body length we won't read; drop the socket.
            if self.method == b"HEAD" and self.upstream is not None:
                self.upstream.close()
            self._response_done(reusable=False)

    def on_response_body(self, body: bytes) -> None:
        self.resp_bytes += len(body)
        encoder = self.encoder
        if encoder is not None:
            body = encoder.feed(body)
            if not body:
                return
        self.client.send_body(body)

    def on_response_complete(self) -> None:
        if self.resp_phase != RESP_STREAMING or self.status == 101:
            return
        self._finish_body(reusable=True)

    def _finish_body(self, *, reusable: bool) -> None:
        encoder = self.encoder
        if encoder is not None:
            tail = encoder.finish()
            self.encoder = None
            if tail:
                self.client.send_body(tail)
        self.client.send_end()
        self._response_done(reusable=reusable)

    def _response_done(self, *, reusable: bool) -> None:
        conn, self.upstream = self.upstream, None
        if conn is not None:
            if (
                reusable
                and self.up_keep
                and self.req_phase == REQ_DONE
                and conn.exchange is self
                and conn.parser is not None
            ):
                conn.pool.release(conn)
            else:
                conn.exchange = None
                conn.close()
        if self.resp_mode == UNTIL_CLOSE:
            self.keep_alive = False
        if self.req_phase != REQ_DONE:
            # The upstream answered before the request body ended (e.g. 401 on an
            # upload). Don't read the rest into the next request: close after.
            self.keep_alive = False
        self._response_to(RESP_DONE)
        self._finished(self.keep_alive)

    def on_upstream_upgrade(self, tail: bytes) -> None:
        conn = self.upstream
        if self.status != 101 or conn is None or not self.upgrade:
            self.fail(502, "upstream switched protocols unasked")
            return
        self.upstream = None  # the tunnel owns it now
        conn.exchange = None
        self._response_to(RESP_TUNNEL)
        self.client.start_tunnel(self, conn, tail)

    def on_upstream_failed(self, status: int, why: str) -> None:
        self.fail(status, why)

    def on_upstream_lost(self, conn: UpstreamConnection, exc: Exception | None) -> None:
        if self.answered() or self.upstream is not conn:
            return
        self.upstream = None
        info = self.info
        if not self.response_begun():
            if (
                conn.reused
                and not self.retried
                and self.method in IDEMPOTENT
                and self.body_sent == 0
                and not (info is not None and info.chunked and self.req_phase == REQ_DONE)
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
        self.keep_alive = False
        self._cut()

    # -- ending early ----------------------------------------------------------------------
    def _drop_upstream(self) -> None:
        """Let go of the upstream connection (it can't be reused)."""
        conn, self.upstream = self.upstream, None
        if conn is not None:
            conn.exchange = None
            conn.close()

    def _cut(self) -> None:
        self._drop_upstream()
        self._response_to(RESP_CUT)
        self.untrack()
        self.record()
        self.client.abort(self)

    def fail(self, status: int, why: str) -> None:
        """End this exchange with an error status, or cut it if bytes already went out."""
        if self.answered():
            return
        self.error = why
        self._drop_upstream()
        if not self.response_begun():
            log.info(
                "%s %s %s -> %d: %s",
                self.app or "-",
                self.method.decode("latin-1"),
                self.path.decode("latin-1", "replace")[:200],
                status,
                why,
            )
            self.status = status
            close = not (self.req_phase == REQ_DONE and self.keep_alive)
            extra = [(b"retry-after", b"5")] if status == 503 else []
            extra += self.error_headers()
            self.client.send_local(build_response(status, headers=extra, close=close))
            self._response_to(RESP_DONE)
            self._finished(not close)
        else:
            self.keep_alive = False
            self._cut()

    def cut(self) -> None:
        """Drain deadline passed: 503 if nothing was sent yet, else close."""
        if self.resp_phase == RESP_TUNNEL:
            self.client.end_tunnel()
        else:
            self.keep_alive = False
            self.fail(503, "drain deadline passed")

    def cut_short(self) -> None:
        """The request broke after its response had begun: the client sees the end."""
        if self.resp_phase < RESP_TUNNEL:
            self._cut()

    def drop(self) -> None:
        """The request broke before any answer: forget it (the downstream answers the error)."""
        self._drop_upstream()
        self._response_to(RESP_CUT)
        self.untrack()

    def tunnel_over(self) -> None:
        """The tunnel this exchange became has ended (the downstream's `tunnel_ended`)."""
        self.untrack()
        self.record()

    def downstream_lost(self) -> None:
        """The client went away (connection closed, stream reset) before the end: 499."""
        if self.answered():
            return
        if not self.status:
            self.status = 499
        self._drop_upstream()
        self._response_to(RESP_CUT)
        self.untrack()
        self.record()
