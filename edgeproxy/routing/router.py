"""Host → site → route, compiled once from the config.

A site matches an exact host or a `*.domain` wildcard (one label deep, like a
certificate); a route matches the longest path prefix. A Host that is not
`host[:port]` is refused here, once per distinct value (a cache miss). Pure: no I/O.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any, Final

from edgeproxy.config import Config, Route, Site, Upstream
from edgeproxy.errors import ClientProtocolError

_NAME_BYTES: Final = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._"
"""What a host name or an IPv4 address is made of: RFC 3986's reg-name without
pct-encoding and sub-delims (a Host that builds links must not carry `@`, `/`,
`?`, `#`, `%`, `,` …), and `_`, unreserved and found in internal names."""


def host_name(host: bytes) -> bytes:
    """The name part of a Host value that is `host[:port]`, else ClientProtocolError(400).

    RFC 9112 §3.2: `host` is a name or IPv4 address (`_NAME_BYTES`) or an IPv6
    literal in brackets; the port is digits. (An empty port, which RFC 3986
    allows, is dropped before: the data plane forwards `name:` as `name`.) An
    empty Host is allowed (RFC 9112 §3.2: a target without an authority) and
    names no site.
    """
    if host.startswith(b"["):
        end = host.find(b"]")
        literal = host[1:end] if end > 0 else b""
        # ipaddress accepts a `%zone` suffix; a Host never carries one.
        if not literal or literal.translate(None, b"0123456789abcdefABCDEF:."):
            raise ClientProtocolError(400, f"bad IPv6 literal in Host: {host!r}")
        try:
            ipaddress.IPv6Address(literal.decode("ascii"))
        except ValueError:
            raise ClientProtocolError(400, f"bad IPv6 literal in Host: {host!r}") from None
        name = host[: end + 1]
    else:
        name = host.partition(b":")[0]
        if name.translate(None, _NAME_BYTES) or (not name and host):
            raise ClientProtocolError(400, f"Host is not host[:port]: {host!r}")
    port = host[len(name) :]
    if port and (port[:1] != b":" or not port[1:].isdigit()):
        raise ClientProtocolError(400, f"Host is not host[:port]: {host!r}")
    return name


@dataclass(slots=True, eq=False)
class RouteEntry:
    """One compiled route: where to send the request and what to apply on the way."""

    prefix: str
    prefix_b: bytes
    strip_prefix: bool
    app: str | None
    upstream: Upstream | None
    config: Route
    site: SiteEntry
    policy: Any = None
    """The compiled policy (edgeproxy.policies), set by the server at load time."""

    def upstream_target(self, target: bytes) -> bytes:
        """The request target sent upstream, with the prefix stripped when configured."""
        if not self.strip_prefix or self.prefix_b == b"/":
            return target
        rest = target[len(self.prefix_b) :]
        if not rest.startswith(b"/"):
            rest = b"/" + rest
        return rest


@dataclass(slots=True, eq=False)
class SiteEntry:
    index: int
    hosts: tuple[str, ...]
    https_redirect: bool
    config: Site
    routes: list[RouteEntry] = field(default_factory=list)
    policy: Any = None
    """(plain, tls) site-level policies for responses when no route matched."""

    def route(self, path: bytes) -> RouteEntry | None:
        # Routes are sorted longest prefix first; a handful per site, so a
        # linear scan beats anything cleverer.
        for r in self.routes:
            if path.startswith(r.prefix_b):
                return r
            # `/search/` also matches `/search` (nginx would 301; we route it).
            if r.prefix_b[-1:] == b"/" and path == r.prefix_b[:-1]:
                return r
        return None


class Router:
    def __init__(self, config: Config) -> None:
        self.sites: list[SiteEntry] = []
        self._exact: dict[str, SiteEntry] = {}
        self._wild: dict[str, SiteEntry] = {}
        for i, site in enumerate(config.sites):
            entry = SiteEntry(i, tuple(site.hosts), site.https_redirect, site)
            for route in sorted(site.routes, key=lambda r: len(r.path), reverse=True):
                entry.routes.append(
                    RouteEntry(
                        prefix=route.path,
                        prefix_b=route.path.encode(),
                        strip_prefix=route.strip_prefix,
                        app=route.app,
                        upstream=Upstream.parse(route.upstream) if route.upstream else None,
                        config=route,
                        site=entry,
                    )
                )
            self.sites.append(entry)
            for host in site.hosts:
                if host.startswith("*."):
                    self._wild[host[2:]] = entry
                else:
                    self._exact[host] = entry
        self._cache: dict[bytes, SiteEntry | None] = {}

    def site_for(self, host: bytes) -> SiteEntry | None:
        """The site for a Host header value (port stripped, case-insensitive).

        Raises ClientProtocolError (400) for a Host that is not `host[:port]`;
        only checked ones are cached, so a known Host costs one dict lookup.
        """
        hit = self._cache.get(host)
        if hit is not None or host in self._cache:
            return hit
        site = self._lookup(host)
        if len(self._cache) < 4096:  # bounded: Host is client-controlled
            self._cache[host] = site
        return site

    def _lookup(self, host: bytes) -> SiteEntry | None:
        name = host_name(host).decode("ascii").lower().rstrip(".")
        site = self._exact.get(name)
        if site is not None:
            return site
        _, dot, parent = name.partition(".")
        if dot:
            return self._wild.get(parent)
        return None

    def site_for_sni(self, server_name: str | None) -> SiteEntry | None:
        if not server_name:
            return None
        try:
            return self.site_for(server_name.encode())
        except ClientProtocolError:
            return None
