"""The bridge from a request to `switching.choose`: who may override, which key, which cookie.

The switch state is read from `board.states[app]` on every request: one dict
lookup, and a switch is the assignment of a new state object there.
"""

from __future__ import annotations

from random import getrandbits
from typing import TYPE_CHECKING, Final

from edgeproxy.config import Config
from edgeproxy.proxy.context import Network, in_networks
from edgeproxy.proxy.headers import RequestInfo
from edgeproxy.switching.choose import choose

if TYPE_CHECKING:
    from edgeproxy.proxy.exchange import Exchange
    from edgeproxy.switching.board import SwitchBoard


KEY_CLIENT_IP: Final = 0
KEY_HEADER: Final = 1
KEY_REQUEST: Final = 2
"""What `apps.NAME.canary_key` names, as `AppPicker.key_kind`."""


class AppPicker:
    """Per-app choice settings compiled once from the config."""

    __slots__ = (
        "colors",
        "cookie_name",
        "key_header",
        "key_kind",
        "override_cookie",
        "override_nets",
        "sticky_cookie",
    )

    def __init__(
        self, colors: tuple[str, ...], override_nets: tuple[Network, ...], config: Config, app: str
    ) -> None:
        spec = config.apps[app]
        self.colors = colors
        self.override_nets = override_nets
        self.override_cookie = (
            spec.override.cookie.encode() + b"=" if spec.override.cookie else None
        )
        self.sticky_cookie = spec.sticky_cookie.encode() + b"=" if spec.sticky_cookie else None
        self.cookie_name = spec.sticky_cookie
        kind, _, header = spec.canary_key.partition(":")
        self.key_kind = (
            KEY_HEADER if kind == "header" else KEY_REQUEST if kind == "request" else KEY_CLIENT_IP
        )
        self.key_header = header.lower().encode()
        """Lowercase name of the canary key header (`canary_key: header:NAME`)."""

    def canary_key(self, ex: Exchange) -> bytes:
        """The bytes whose hash is this request's bucket (asked only during a canary,
        for a request without a sticky cookie)."""
        kind = self.key_kind
        if kind == KEY_CLIENT_IP:
            return ex.client_ip_b
        if kind == KEY_REQUEST:
            return getrandbits(64).to_bytes(8, "little")
        name = self.key_header
        for n, value in ex.headers:
            if (n == name or n.lower() == name) and value:
                return b"h:" + value  # never equal to an address key
        return ex.client_ip_b


def cookie_get(cookies: bytes | None, prefix: bytes | None) -> str | None:
    """The value of one cookie from a Cookie header (`prefix` is `name=`)."""
    if cookies is None or prefix is None:
        return None
    start = cookies.find(prefix)
    while start > 0 and cookies[start - 1 : start] not in (b" ", b";"):
        start = cookies.find(prefix, start + 1)
    if start < 0:
        return None
    start += len(prefix)
    end = cookies.find(b";", start)
    value = cookies[start:] if end < 0 else cookies[start:end]
    try:
        return value.strip().decode("ascii")
    except UnicodeDecodeError:
        return None


class Picker:
    def __init__(
        self, config: Config, board: SwitchBoard, override_nets: dict[str, tuple[Network, ...]]
    ) -> None:
        self.board = board
        self.apps = {
            name: AppPicker(tuple(app.colors), override_nets.get(name, ()), config, name)
            for name, app in config.apps.items()
        }

    def override(self, app: str, ex: Exchange, info: RequestInfo) -> str | None:
        """The color a tester asks for, if this client may override (else None)."""
        spec = self.apps[app]
        if info.override is None and not (spec.override_cookie and info.cookie):
            return None
        if spec.override_nets and not in_networks(ex.client_ip, spec.override_nets):
            return None
        if info.override is not None:
            return info.override.decode("latin-1").strip().lower() or None
        return cookie_get(info.cookie, spec.override_cookie) or None

    def choose(self, app: str, ex: Exchange, info: RequestInfo) -> str | None:
        """The color for this request, or None while the app is paused.

        `ex.override` (set by `override()`) is a tester's color; when it is not a
        color that may serve, the active color comes back and the exchange refuses.
        """
        state = self.board.states[app]
        override = ex.override
        if override is None and state.plain:
            # Released, not paused, no canary: the common case reads one attribute.
            return state.active
        if state.paused:
            return None
        if override is None and (not state.released or state.candidate is None):
            # Never released: nobody but testers (the exchange answers 503).
            return state.active if state.released else None
        spec = self.apps[app]
        sticky = cookie_get(info.cookie, spec.sticky_cookie)
        color, cookie = choose(
            state,
            override=override,
            sticky=sticky,
            client_key=spec.canary_key(ex),
            keep=spec.key_kind != KEY_REQUEST,
        )
        if cookie is not None and spec.cookie_name and override is None:
            ex.set_cookie = b"%s=%s; Path=/; Max-Age=86400; HttpOnly; SameSite=Lax%s" % (
                spec.cookie_name.encode(),
                cookie.encode(),
                b"; Secure" if ex.client.tls else b"",
            )
        return color
