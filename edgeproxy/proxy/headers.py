"""Request validation and the heads edgeproxy writes upstream and downstream.

llhttp (via httptools) already rejects most smuggling shapes in strict mode:
CL+TE together, duplicate or non-numeric Content-Length, obs-fold, control
characters, bad chunk sizes, bare LF. What it lets through and we refuse here:
Transfer-Encoding other than exactly `chunked`, Transfer-Encoding on HTTP/1.0,
a missing or repeated Host, a Host that is not `host[:port]`, and request
targets that are neither origin-form nor absolute-form (whose authority then
replaces Host, upstream too: RFC 9112 §3.2.2).
"""

from __future__ import annotations

import mimetypes
import os
from pathlib import Path
from typing import TYPE_CHECKING, Final

from edgeproxy.errors import ClientProtocolError
from edgeproxy.proxy.framing import CHUNKED, LENGTH, NOBODY, RECHUNK, UNTIL_CLOSE
from edgeproxy.proxy.responses import build_response, http_date

if TYPE_CHECKING:
    from edgeproxy.policies import GzipEncoder, RoutePolicy
    from edgeproxy.routing.router import RouteEntry

ACME_PREFIX: Final = b"/.well-known/acme-challenge/"

# What response_head does with each upstream response header, by name; codes up
# to R_FORWARD_MAX are forwarded (like FORWARD_MAX for requests, below).
R_PASS: Final = 0
R_LENGTH: Final = 1
R_REQUEST_ID: Final = 2
R_FORWARD_MAX: Final = R_REQUEST_ID
R_DROP: Final = 3
"""Hop-by-hop, or set by edgeproxy (Server, Date)."""
R_TE: Final = 4
R_UPGRADE: Final = 5

RESPONSE_CODES: Final[dict[bytes, int]] = {
    b"connection": R_DROP,
    b"keep-alive": R_DROP,
    b"proxy-connection": R_DROP,
    b"trailer": R_DROP,
    b"server": R_DROP,
    b"date": R_DROP,
    b"x-edgeproxy-color": R_DROP,
    b"transfer-encoding": R_TE,
    b"upgrade": R_UPGRADE,
    b"content-length": R_LENGTH,
}

COMMON_RESPONSE_HEADERS: Final = (
    b"accept-ranges",
    b"access-control-allow-origin",
    b"age",
    b"cache-control",
    b"content-encoding",
    b"content-security-policy",
    b"content-type",
    b"etag",
    b"expires",
    b"last-modified",
    b"location",
    b"pragma",
    b"referrer-policy",
    b"set-cookie",
    b"strict-transport-security",
    b"vary",
    b"x-content-type-options",
    b"x-frame-options",
)
"""Passed through as they are: listed so that their usual spelling is found without lower()."""


class RequestHead:
    """A validated request head: what routing and forwarding need, read in one pass.

    Returned by `validate_request`; the exchange keeps it and never changes it.
    A plain class, not a dataclass: mypyc compiles this `__init__` natively,
    where a dataclass's generated one stays interpreted (4k instructions a request).
    """

    __slots__ = (
        "accept_encoding",
        "acr_method",
        "chunked",
        "connection_tokens",
        "content_length",
        "cookie",
        "expect_continue",
        "fwd",
        "host",
        "origin",
        "override",
        "path",
        "real_ip",
        "request_id",
        "secrets",
        "target",
        "upgrade_value",
        "websocket",
        "xf_proto",
        "xff",
    )

    def __init__(self, target: bytes) -> None:
        self.target = target
        """The request target, origin-form, dot-segments resolved."""
        self.path = b""
        """The target's path (no query): what routes match."""
        self.host = b""
        """The Host routed on (lowercase; an absolute-form target's authority)."""
        self.content_length: int | None = None
        self.chunked = False
        """Transfer-Encoding: chunked (re-framed chunk by chunk upstream)."""
        self.expect_continue = False
        self.fwd: list[bytes] = []
        """The request header lines to forward as they are: `name: value` CRLF each
        (one bytes per header: the upstream head joins a few pieces, not four per header)."""
        self.request_id: bytes | None = None
        self.websocket = False
        self.upgrade_value = b""
        self.xff: bytes | None = None
        self.real_ip: bytes | None = None
        self.xf_proto: bytes | None = None
        self.cookie: bytes | None = None
        self.override: bytes | None = None
        self.origin: bytes | None = None
        self.accept_encoding: bytes | None = None
        self.acr_method: bytes | None = None
        self.connection_tokens: frozenset[bytes] = frozenset()
        self.secrets: list[tuple[bytes, bytes]] | None = None
        """(lowercase name, value) of each rate-limit exemption header the request carried."""


class ResponseHead:
    """The response head for the client, and how its body is framed (`response_head`)."""

    __slots__ = ("data", "encoder", "keep_alive", "mode", "until_close")

    def __init__(
        self,
        data: bytes,
        mode: int,
        encoder: GzipEncoder | None,
        *,
        until_close: bool,
        keep_alive: bool,
    ) -> None:
        self.data = data
        """The head as HTTP/1.1 bytes (status line, header lines, blank line)."""
        self.mode = mode
        """How the body is framed towards the client (proxy/framing.py)."""
        self.encoder = encoder
        """gzip for this response (a policy), or None."""
        self.until_close = until_close
        """The upstream sent no length: its close ends the body."""
        self.keep_alive = keep_alive
        """The client connection stays open after this response."""


REQUEST_ID_MAX: Final = 128
_REQUEST_ID_BYTES: Final = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:+/="
"""A client's request id is kept when made of these (UUIDs, hex, base64, trace ids)."""
_REQUEST_ID_CHECK: Final = bytes(
    c if c in _REQUEST_ID_BYTES else (1 if c == 0 else 0) for c in range(256)
)
"""A translate() table that keeps `_REQUEST_ID_BYTES` and changes every other byte:
an id is plain when translate() returns it unchanged (with a delete argument
instead, CPython builds a 256-entry table per call: 3x the cost, measured)."""

_DOT_PCT_MARK: Final = bytes(range(256)).replace(b".", b"\0").replace(b"%", b"\0")
"""A translate() table that changes `.` and `%` (to NUL, never in a target) and nothing else."""


def resolve_dot_segments(path: bytes) -> bytes:
    """`path` with `.` and `..` segments resolved (RFC 3986 §5.2.4); `path` itself if none.

    A segment that is `.` or `..` once `%2e`/`%2E` are decoded counts as one
    (nginx decodes them too); nothing else is decoded. A `..` above the root is
    a 400, as in nginx.
    """
    segments = path.split(b"/")
    out: list[bytes] = []
    last = len(segments) - 1
    changed = False
    for i in range(1, last + 1):
        seg = segments[i]
        plain = seg.replace(b"%2e", b".").replace(b"%2E", b".") if seg.find(b"%") != -1 else seg
        if plain == b".":
            changed = True
        elif plain == b"..":
            changed = True
            if not out:
                raise ClientProtocolError(400, "request path goes above the root (..)")
            out.pop()
        else:
            out.append(seg)
            continue
        if i == last:
            out.append(b"")  # `/a/b/..` is `/a/`, `/a/.` is `/a/`
    return b"/" + b"/".join(out) if changed else path


def host_without_port(host: bytes) -> bytes:
    if host.startswith(b"["):
        return host[: host.find(b"]") + 1]
    return host.partition(b":")[0]


# What validate_request does with each request header, by name (see
# spelled_both_ways): absent or PASS → forward as is; up to FORWARD_MAX →
# forward and note; the rest → don't forward (we set our own, or it is
# hop-by-hop). One dict lookup per header for the usual spellings.
HOST: Final = 0
CONTENT_LENGTH: Final = 1
COOKIE: Final = 2
ORIGIN: Final = 3
ACCEPT_ENCODING: Final = 4
ACR_METHOD: Final = 5
DROP: Final = 6
TRANSFER_ENCODING: Final = 7
CONNECTION: Final = 8
UPGRADE: Final = 9
EXPECT: Final = 10
XFF: Final = 11
REAL_IP: Final = 12
XF_PROTO: Final = 13
REQUEST_ID: Final = 14
OVERRIDE: Final = 15
SECRET: Final = 16
"""A rate-limit exemption secret (`rate_limit.exempt_header`): noted, never forwarded."""
PASS: Final = -1
"""Forwarded as is, nothing to note (also what a name missing from the table gets)."""
FORWARD_MAX: Final = ACR_METHOD  # codes up to this one are forwarded

HEADER_CODES: Final[dict[bytes, int]] = {
    b"host": HOST,
    b"content-length": CONTENT_LENGTH,
    b"cookie": COOKIE,
    b"origin": ORIGIN,
    b"accept-encoding": ACCEPT_ENCODING,
    b"access-control-request-method": ACR_METHOD,
    b"keep-alive": DROP,
    b"proxy-connection": DROP,
    b"te": DROP,
    b"trailer": DROP,
    b"x-forwarded-host": DROP,
    b"x-forwarded-port": DROP,
    b"x-edgeproxy-color": DROP,
    # Written by edgeproxy (X-Real-IP), or not at all (Forwarded, RFC 7239): a
    # client's own would override X-Forwarded-* in apps that prefer it.
    b"x-real-ip": DROP,
    b"forwarded": DROP,
    b"transfer-encoding": TRANSFER_ENCODING,
    b"connection": CONNECTION,
    b"upgrade": UPGRADE,
    b"expect": EXPECT,
    b"x-forwarded-for": XFF,
    b"x-forwarded-proto": XF_PROTO,
}


COMMON_REQUEST_HEADERS: Final = (
    b"accept",
    b"accept-language",
    b"authorization",
    b"cache-control",
    b"content-type",
    b"dnt",
    b"if-modified-since",
    b"if-none-match",
    b"pragma",
    b"priority",
    b"referer",
    b"sec-fetch-dest",
    b"sec-fetch-mode",
    b"sec-fetch-site",
    b"sec-fetch-user",
    b"upgrade-insecure-requests",
    b"user-agent",
)
"""Forwarded as they are: listed so that their usual spelling is found without lower()."""


_SPELLED_OTHERWISE: Final = {b"etag": b"ETag", b"dnt": b"DNT", b"te": b"TE"}


def canonical(name: bytes) -> bytes:
    """The usual spelling of a lowercase header name: b"user-agent" -> b"User-Agent"."""
    return _SPELLED_OTHERWISE.get(name) or b"-".join(w.capitalize() for w in name.split(b"-"))


def spelled_both_ways(codes: dict[bytes, int]) -> dict[bytes, int]:
    """`codes` (lowercase names) plus each name's usual spelling.

    Header names are case-insensitive: a lookup tries the name as received
    first and lower-cases it only when that misses, so the common spellings
    cost one dict lookup instead of a lower() and a lookup.
    """
    both = dict(codes)
    for name, code in codes.items():
        both.setdefault(canonical(name), code)
    return both


def header_codes(
    request_id_header: bytes,
    override_headers: set[bytes],
    real_ip_header: bytes = b"x-forwarded-for",
    secret_headers: frozenset[bytes] = frozenset(),
) -> dict[bytes, int]:
    """The per-config request table (request id, tester override, client address and
    rate-limit exemption header names are configurable)."""
    codes = dict.fromkeys(COMMON_REQUEST_HEADERS, PASS) | HEADER_CODES
    if real_ip_header != b"x-forwarded-for":
        codes[real_ip_header] = REAL_IP
    codes[request_id_header] = REQUEST_ID
    for name in override_headers:
        codes[name] = OVERRIDE
    for name in secret_headers:
        codes[name] = SECRET
    return spelled_both_ways(codes)


def response_codes(request_id_header: bytes) -> dict[bytes, int]:
    """The per-config response table (the request id header is configurable)."""
    codes = dict.fromkeys(COMMON_RESPONSE_HEADERS, R_PASS) | RESPONSE_CODES
    codes[request_id_header] = R_REQUEST_ID
    return spelled_both_ways(codes)


def validate_request(
    headers: list[tuple[bytes, bytes]],
    target: bytes,
    *,
    version: str,
    upgrade: bool,
    codes: dict[bytes, int],
) -> RequestHead:
    """Read the headers once: framing checks, Host, what forwarding needs, what to forward.

    `codes` is the context's `header_codes`; raises ClientProtocolError for a head
    edgeproxy refuses.
    """
    info = RequestHead(target)
    host: bytes | None = None
    host_name = b"host"
    host_at = -1
    te: bytes | None = None
    fwd = info.fwd
    for name, value in headers:
        code = codes.get(name)
        if code is None:
            code = codes.get(name.lower(), PASS)
        if code == PASS:
            fwd.append(b"%s: %s\r\n" % (name, value))
            continue
        if code <= FORWARD_MAX:
            fwd.append(b"%s: %s\r\n" % (name, value))
            if code == HOST:
                if host is not None:
                    raise ClientProtocolError(400, "more than one Host header")
                host = value
                host_name = name
                host_at = len(fwd) - 1
            elif code == CONTENT_LENGTH:
                # llhttp has already refused duplicates and non-digits.
                info.content_length = int(value)
            elif code == COOKIE:
                info.cookie = value if info.cookie is None else info.cookie + b"; " + value
            elif code == ORIGIN:
                info.origin = value
            elif code == ACCEPT_ENCODING:
                info.accept_encoding = value
            else:
                info.acr_method = value
        elif code == DROP:
            continue
        elif code == TRANSFER_ENCODING:
            te = value
        elif code == CONNECTION:
            info.connection_tokens = frozenset(t.strip().lower() for t in value.split(b","))
        elif code == UPGRADE:
            info.upgrade_value = value
        elif code == EXPECT:
            if value.lower() != b"100-continue":
                raise ClientProtocolError(417, f"unsupported Expect: {value!r}")
            info.expect_continue = True
        elif code == XFF:
            info.xff = value if info.xff is None else info.xff + b", " + value
        elif code == REAL_IP:
            info.real_ip = value if info.real_ip is None else info.real_ip + b", " + value
        elif code == XF_PROTO:
            info.xf_proto = value
        elif code == REQUEST_ID:
            # Kept when short and plain (it reaches logs and the app); else replaced.
            if 0 < len(value) <= REQUEST_ID_MAX and value.translate(_REQUEST_ID_CHECK) == value:
                info.request_id = value
        elif code == OVERRIDE:
            info.override = value
        else:
            pair = (name.lower(), value)
            if info.secrets is None:
                info.secrets = [pair]
            else:
                info.secrets.append(pair)
    if te is not None:
        if version == "1.0":
            raise ClientProtocolError(400, "Transfer-Encoding is not allowed in HTTP/1.0")
        if te.strip().lower() != b"chunked":
            raise ClientProtocolError(
                501, f"Transfer-Encoding {te!r} is not supported (only chunked)"
            )
        info.chunked = True
    if host is None:
        if version == "1.1":
            raise ClientProtocolError(400, "missing Host header")
        host = b""
    sent_host = host
    if target.startswith(b"/"):
        pass
    elif target[:7].lower() == b"http://" or target[:8].lower() == b"https://":
        # absolute-form: the target's authority replaces Host (RFC 9112 §3.2.2).
        rest = target.split(b"://", 1)[1]
        authority, slash, path = rest.partition(b"/")
        if not authority:
            raise ClientProtocolError(400, "bad absolute-form request target")
        host = authority
        target = slash + path if slash else b"/"
        info.target = target
    else:
        raise ClientProtocolError(400, "request target must be an absolute path")
    # `name:` (RFC 3986 allows an empty port) is routed and forwarded as `name`;
    # the rest of the Host check is the router's (once per distinct Host, cached).
    # Indexing, not endswith(): a native operation once compiled.
    n = len(host)
    if n and host[n - 1] == 58:  # b":"
        host = host[: n - 1]
    if host is not sent_host:
        # The upstream gets the Host we routed on (absolute-form, or `name:` normalised).
        line = b"%s: %s\r\n" % (host_name, host)
        if host_at < 0:
            fwd.append(line)
        else:
            fwd[host_at] = line
    if target.find(b"#") != -1:  # faster than `b"#" in target` (which tries an int first)
        raise ClientProtocolError(400, "fragment in request target")
    info.host = host.lower()
    q = target.find(b"?")
    path = target if q < 0 else target[:q]
    # Routes match, and the upstream gets, the path with dot-segments resolved
    # (`/big/../x` is `/x`), like nginx. A dot-segment starts `/.` or `/%2e`:
    # one translate() tells a path with no `.` and no `%` (returned unchanged),
    # for half what a find() costs (measured); only the others pay a find().
    marked = path.translate(_DOT_PCT_MARK)
    if marked != path and marked.find(b"/\0") != -1:
        resolved = resolve_dot_segments(path)
        if resolved is not path:
            path = resolved
            info.target = resolved if q < 0 else resolved + target[q:]
    info.path = path
    if upgrade:
        info.websocket = (
            info.upgrade_value.lower() == b"websocket" and b"upgrade" in info.connection_tokens
        )
    return info


def upstream_head(
    method: bytes,
    info: RequestHead,
    route: RouteEntry,
    *,
    client_ip_b: bytes,
    request_id: bytes,
    color: str | None,
    upgrade: bool,
    peer_b: bytes,
    peer_trusted: bool,
    scheme: bytes,
    local_port_b: bytes,
    request_id_header: bytes,
) -> bytes:
    """The request head sent upstream: one buffer.

    `peer_b` is the connection's peer address, `client_ip_b` the client's (the
    peer's, or the one a trusted proxy forwarded).
    """
    tokens = info.connection_tokens - _STANDARD_TOKENS if info.connection_tokens else None
    if tokens:
        # Rare: the client named extra hop-by-hop headers in Connection. `fwd`
        # holds one `name: value` CRLF line per header to forward (a name has no colon).
        fwd = b"".join(line for line in info.fwd if line[: line.find(b":")].lower() not in tokens)
    else:
        fwd = b"".join(info.fwd)
    if peer_trusted:
        xff = info.xff + b", " + peer_b if info.xff else peer_b
        proto = info.xf_proto or scheme
    else:
        xff = peer_b
        proto = scheme
    if upgrade:
        tail = b"connection: upgrade\r\nupgrade: %s\r\n\r\n" % info.upgrade_value
    elif info.chunked:
        tail = b"transfer-encoding: chunked\r\n\r\n"
    else:
        tail = b"\r\n"
    if color is not None:
        tail = b"x-edgeproxy-color: %s\r\n%s" % (color.encode(), tail)
    # One bytes % (...) of bytes only: compiled, it is one allocation and a copy each.
    return (
        b"%s %s HTTP/1.1\r\n%sx-forwarded-for: %s\r\nx-real-ip: %s\r\nx-forwarded-proto: %s"
        b"\r\nx-forwarded-host: %s\r\nx-forwarded-port: %s\r\n%s: %s\r\n%s"
        % (
            method,
            route.upstream_target(info.target),
            fwd,
            xff,
            client_ip_b,
            proto,
            info.host,
            local_port_b,
            request_id_header,
            request_id,
            tail,
        )
    )


def response_head(
    status: int,
    reason: bytes,
    headers: list[tuple[bytes, bytes]],
    *,
    policy: RoutePolicy | None,
    info: RequestHead | None,
    method: bytes,
    version: str,
    keep_alive: bool,
    closing: bool,
    codes: dict[bytes, int],
    request_id_header: bytes,
    request_id: bytes,
    set_cookie: bytes | None,
    show_color: str | None,
) -> ResponseHead:
    """The response head for the client and how its body is framed.

    `codes` is the context's `response_codes`; `show_color` the color to name in
    X-Edgeproxy-Color (a tester's override, `expose_color`), else None;
    `closing`: the client connection ends after this response.
    """
    framed = None
    encoder: GzipEncoder | None = None
    if policy is not None and not policy.passthrough and status != 101:
        if policy.gzip is not None:
            # gzip drops Content-Length: note the upstream's own framing first.
            framed = any(n.lower() in (b"content-length", b"transfer-encoding") for n, _ in headers)
        headers, encoder = policy.response_head(
            status,
            headers,
            method=method,
            path=info.path if info is not None else b"",
            origin=info.origin if info is not None else None,
            accept_encoding=info.accept_encoding if info is not None else None,
        )
    lines: list[bytes] = []
    has_length = False
    chunked = False
    upgrade_value = b""
    rid_seen = False
    for name, value in headers:
        code = codes.get(name)
        if code is None:
            code = codes.get(name.lower(), R_PASS)
        if code <= R_FORWARD_MAX:
            lines.append(b"%s: %s\r\n" % (name, value))
            if code == R_LENGTH:
                has_length = True
            elif code == R_REQUEST_ID:
                rid_seen = True
        elif code == R_TE:
            chunked = value.strip().lower().endswith(b"chunked")
        elif code == R_UPGRADE:
            upgrade_value = value
    # After Date and Server: the request id, a sticky cookie, the color (in this order).
    ours = b"" if rid_seen else b"%s: %s\r\n" % (request_id_header, request_id)
    if set_cookie is not None:
        ours += b"set-cookie: %s\r\n" % set_cookie
    if show_color is not None:
        # Which color served a tester's request (smoke checks fail without it), or any
        # request of an app with expose_color (staging).
        ours += b"x-edgeproxy-color: %s\r\n" % show_color.encode()
    if status == 101:
        return ResponseHead(
            _head(
                status,
                reason,
                lines,
                ours,
                b"connection: upgrade\r\nupgrade: %s\r\n" % upgrade_value,
            ),
            NOBODY,
            encoder,
            until_close=False,
            keep_alive=keep_alive,
        )
    if method == b"HEAD" or status in (204, 304):
        mode = NOBODY
    elif chunked:
        mode = CHUNKED if version == "1.1" else UNTIL_CLOSE
    elif has_length:
        mode = LENGTH
    elif version == "1.1":
        mode = RECHUNK
    else:
        mode = UNTIL_CLOSE
    if framed is None:
        framed = has_length or chunked
    keep = keep_alive and mode != UNTIL_CLOSE and not closing
    if not keep:
        framing = b"connection: close\r\n"
    elif version == "1.0":
        framing = b"connection: keep-alive\r\n"
    else:
        framing = b""
    if mode in (CHUNKED, RECHUNK):
        framing = b"transfer-encoding: chunked\r\n" + framing
    return ResponseHead(
        _head(status, reason, lines, ours, framing),
        mode,
        encoder,
        until_close=not framed and mode != NOBODY,
        keep_alive=keep,
    )


def _head(status: int, reason: bytes, lines: list[bytes], ours: bytes, tail: bytes) -> bytes:
    """The response head: status line, the upstream's forwarded `lines`, Date and
    Server, `ours` (edgeproxy's own headers), `tail`, the blank line. One bytes %
    of bytes only: compiled, one allocation and a copy per piece."""
    return b"HTTP/1.1 %d %s\r\n%sdate: %s\r\nserver: edgeproxy\r\n%s%s\r\n" % (
        status,
        reason or b"-",
        b"".join(lines),
        http_date(),
        ours,
        tail,
    )


def acme_response(webroot: Path, path: bytes, method: bytes) -> bytes:
    """Serve an HTTP-01 token from the webroot; no traversal, no symlinks out."""
    if method not in (b"GET", b"HEAD"):
        return build_response(405, headers=[(b"allow", b"GET, HEAD")])
    token = path[len(ACME_PREFIX) :]
    # Tokens are base64url: anything else (/, .., %2e, NUL) is refused outright.
    if not token or not all(c in _TOKEN_CHARS for c in token):
        return build_response(404)
    base = webroot.resolve()
    file = base / ".well-known" / "acme-challenge" / token.decode("ascii")
    try:
        real = file.resolve(strict=True)
        if not real.is_relative_to(base) or not real.is_file():
            return build_response(404)
        fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW)
        try:
            body = os.read(fd, 65536)
        finally:
            os.close(fd)
    except OSError:
        return build_response(404)
    ctype = (mimetypes.guess_type(real.name)[0] or "text/plain").encode()
    return build_response(200, body, content_type=ctype, head_only=method == b"HEAD")


# Connection tokens that name nothing to strip beyond the usual (Host and framing never).
_STANDARD_TOKENS: Final = frozenset(
    {b"keep-alive", b"close", b"upgrade", b"host", b"content-length", b"te"}
)
_TOKEN_CHARS: Final = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
