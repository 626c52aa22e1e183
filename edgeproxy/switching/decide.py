"""Which color serves a request: the one decision, per request, on the hot path (compiled).

`Picker.decide` reads the app's switch state once and answers with a
`Decision`: serve a color (with a sticky cookie to set, and whether it is panic
routing), hold the request while the app is paused, or refuse it with a 503
and the reason. In order:

1. Tester override: a color named by the override header or cookie, honoured
   only from `apps.NAME.override.allow_from` (empty: anyone). An honoured
   override is served by that color or refused, never by another color (a
   smoke check must not pass on the old release).
2. Paused: hold (the exchange waits for `resume`, up to `pause_max_wait`).
3. Never released (`first_release: hold`): refused for visitors.
4. No canary: the active color. During a canary, `choose.choose` (pure): the
   sticky cookie's bucket, else the bucket of the app's `canary_key`.
5. The chosen color has no fit upstream: a canary's visitors go to the active
   color (never the other way round); with none fit either, panic routing to
   the active color (`when_all_down: route`) or a 503 (`refuse`).

Whether a color has a fit upstream is the data plane's to say (`Fitness`,
which `ProxyContext` implements); which upstream serves stays its choice too.
"""

from __future__ import annotations

from random import getrandbits
from typing import TYPE_CHECKING, Final

from edgeproxy.config import Config
from edgeproxy.networks import Network, in_networks, parse_networks
from edgeproxy.switching.choose import choose
from edgeproxy.switching.state import AppState, initial

if TYPE_CHECKING:
    from edgeproxy.switching.board import SwitchBoard

SERVE: Final = 0
HOLD: Final = 1
REFUSE: Final = 2
"""`Decision.action`."""

KEY_CLIENT_IP: Final = 0
KEY_HEADER: Final = 1
KEY_REQUEST: Final = 2
"""What `apps.NAME.canary_key` names, as `AppRules.key_kind`."""

NO_UPSTREAM: Final = "no healthy upstream for this app right now"
SECURE: Final = b"; Secure"
NOT_RELEASED: Final = "this site is not released yet; please come back soon"


class Decision:
    """Where one request goes. A value: never changed once made (the plain one is shared)."""

    __slots__ = ("action", "color", "override", "panic", "retry_after", "set_cookie", "why")

    def __init__(
        self,
        action: int,
        color: str | None,
        *,
        set_cookie: bytes | None = None,
        override: str | None = None,
        panic: bool = False,
        why: str = "",
        retry_after: bytes = b"",
    ) -> None:
        self.action = action
        self.color = color
        """SERVE: the color to serve from; REFUSE: the color that could not serve (None
        when the app has none to offer: paused, never released)."""
        self.set_cookie = set_cookie
        """A `Set-Cookie` value that keeps a canary visitor in its bucket, or None."""
        self.override = override
        """The color an honoured tester override asked for (None: no override)."""
        self.panic = panic
        """SERVE with no fit upstream: take one anyway (`when_all_down: route`)."""
        self.why = why
        """REFUSE: the 503's reason, for the response body."""
        self.retry_after = retry_after
        """REFUSE: the Retry-After header's value."""


class Fitness:
    """What the decision asks of the data plane: can `color` of `app` serve right now?

    Native base class (compiled): `ProxyContext` overrides `fit` with the health
    verdicts of the color's upstreams. This one says yes to everything.
    """

    def fit(self, app: str, color: str) -> bool:
        return True


class AppRules:
    """One app's settings for the decision, compiled once from the config."""

    __slots__ = (
        "cookie_name",
        "key_header",
        "key_kind",
        "override_cookie",
        "override_nets",
        "panic",
        "pause_max_wait",
        "plain",
        "sticky_cookie",
    )

    def __init__(self, config: Config, app: str) -> None:
        spec = config.apps[app]
        self.override_nets: tuple[Network, ...] = parse_networks(spec.override.allow_from)
        self.override_cookie = (
            spec.override.cookie.encode() + b"=" if spec.override.cookie else None
        )
        self.sticky_cookie = spec.sticky_cookie.encode() + b"=" if spec.sticky_cookie else None
        """`NAME=` of the sticky canary cookie, as it appears in a Cookie header."""
        self.cookie_name = spec.sticky_cookie.encode() if spec.sticky_cookie else b""
        kind, _, header = spec.canary_key.partition(":")
        self.key_kind = (
            KEY_HEADER if kind == "header" else KEY_REQUEST if kind == "request" else KEY_CLIENT_IP
        )
        self.key_header = header.lower().encode()
        """Lowercase name of the canary key header (`canary_key: header:NAME`)."""
        self.panic = spec.when_all_down == "route"
        self.pause_max_wait = spec.pause_max_wait
        self.plain: Decision | None = None
        """The last "serve the active color" decision, shared by every request it fits."""

    def canary_key(self, client_ip_b: bytes, headers: list[tuple[bytes, bytes]]) -> bytes:
        """The bytes whose hash is this request's bucket (asked only during a canary,
        for a request without a usable sticky cookie)."""
        kind = self.key_kind
        if kind == KEY_CLIENT_IP:
            return client_ip_b
        if kind == KEY_REQUEST:
            return getrandbits(64).to_bytes(8, "little")
        name = self.key_header
        for n, value in headers:
            if (n == name or n.lower() == name) and value:
                return b"h:" + value  # never equal to an address key
        return client_ip_b

    def override(self, asked: bytes | None, cookies: bytes | None, client_ip: str) -> str | None:
        """The color a tester asks for, if this client may override (else None).

        The header wins over the cookie; the client's address is asked about only
        when either names a color (a visitor's other cookies cost no address parse)."""
        if asked is not None:
            color = asked.decode("latin-1").strip().lower()
        else:
            color = cookie_get(cookies, self.override_cookie) or ""
        if not color:
            return None
        if self.override_nets and not in_networks(client_ip, self.override_nets):
            return None
        return color

    def cookie(self, value: str, tls: bool) -> bytes | None:
        if not self.cookie_name:
            return None
        return b"%s=%s; Path=/; Max-Age=86400; HttpOnly; SameSite=Lax%s" % (
            self.cookie_name,
            value.encode(),
            SECURE if tls else b"",
        )


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


def _refuse(
    color: str | None, why: str, retry_after: bytes, override: str | None = None
) -> Decision:
    return Decision(REFUSE, color, override=override, why=why, retry_after=retry_after)


class Picker:
    """The switch decision for every app of one config (rebuilt on a config reload)."""

    def __init__(self, config: Config, board: SwitchBoard | None, fitness: Fitness) -> None:
        """`board`: the switch states (None: each app stays on its first color, as
        before any switch, for a data plane run without one)."""
        self.board = board
        self.fitness = fitness
        self.apps = {name: AppRules(config, name) for name in config.apps}
        self.fixed: dict[str, AppState] = {
            name: initial(name, tuple(app.colors), app.first_color)
            for name, app in config.apps.items()
        }

    def decide(
        self,
        app: str,
        asked: bytes | None,
        cookies: bytes | None,
        client_ip: str,
        client_ip_b: bytes,
        headers: list[tuple[bytes, bytes]],
        tls: bool,
    ) -> Decision:
        """Where this request of `app` goes (the module docstring gives the order).

        `asked`: the override header's value; `cookies`: the Cookie header;
        `client_ip`/`client_ip_b`: the client address found once per request;
        `headers`: the request headers (for `canary_key: header:NAME`).
        """
        rules = self.apps[app]
        board = self.board
        state = self.fixed[app] if board is None else board.states[app]
        override: str | None = None
        if asked is not None or (cookies is not None and rules.override_cookie is not None):
            override = rules.override(asked, cookies, client_ip)
        if override is None and state.plain:
            # Released, not paused, no canary: the common case reads one attribute
            # and allocates nothing (the decision is shared while the active color is).
            plain = rules.plain
            active = state.active
            if plain is None or plain.color != active:
                plain = rules.plain = Decision(SERVE, active)
            if self.fitness.fit(app, active):
                return plain
            return self._unfit(app, rules, state, active, None)
        if state.paused:
            return Decision(HOLD, None, override=override)
        if override is None and (not state.released or state.candidate is None):
            if not state.released:  # nobody but testers
                return _refuse(None, NOT_RELEASED, b"30")
            color, cookie = state.active, None
        else:
            color, cookie = choose(
                state,
                override=override,
                sticky=cookie_get(cookies, rules.sticky_cookie),
                client_key=rules.canary_key(client_ip_b, headers),
                keep=rules.key_kind != KEY_REQUEST,
            )
        if override is not None:
            if not self.fitness.fit(app, color):
                why = f"the override asks for {override}, but {color} has no healthy upstream"
                return _refuse(color, why, b"5", override)
            if color != override:
                why = (
                    f"the override asks for {override}, but it is not a color of this app, "
                    "or it is draining"
                )
                return _refuse(color, why, b"5", override)
            return Decision(SERVE, color, override=override)
        set_cookie = None if cookie is None else rules.cookie(cookie, tls)
        if self.fitness.fit(app, color):
            return Decision(SERVE, color, set_cookie=set_cookie)
        return self._unfit(app, rules, state, color, set_cookie)

    def _unfit(
        self, app: str, rules: AppRules, state: AppState, color: str, set_cookie: bytes | None
    ) -> Decision:
        """`color` has no fit upstream: the active color if it has one (a canary with no
        healthy upstream must not cost its share of visitors), else panic routing to the
        active color (`when_all_down: route`), else a 503."""
        active = state.active
        if color != active and self.fitness.fit(app, active):
            return Decision(SERVE, active, set_cookie=set_cookie)
        if rules.panic and state.released:
            return Decision(SERVE, active, set_cookie=set_cookie, panic=True)
        return _refuse(color, NO_UPSTREAM, b"5")

    async def wait_unpaused(self, app: str) -> bool:
        """Wait while `app` is paused (after a HOLD), up to its `pause_max_wait`.
        False when it was still paused at the end."""
        board = self.board
        if board is None:
            return True
        return await board.wait_unpaused(app, self.apps[app].pause_max_wait)
