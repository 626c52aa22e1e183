"""Smoke checks that prove what they tested.

A check reaches the site the way a visitor does: it connects to `smoke.url`
(edgeproxy's HTTPS listener on loopback), sends the check's `host` as TLS SNI
and as Host, adds the tester override header naming the color under test, and
never follows a redirect (a 3xx fails unless the check expects it). It passes
only when the status and body match AND edgeproxy's `X-Edgeproxy-Color`
response header names the color under test: a check answered by another color
(the override was ignored, e.g. because a redirect took it off loopback) fails
and says which color answered.

Trust: `smoke.ca_file` when set; otherwise the certificate files edgeproxy's
config serves (`tls.certificates[].cert`), trusted as they are (partial
chains allowed), so a Let's Encrypt, local-CA or self-signed certificate all
verify without the system store, and the host name is still checked.
Verification is never turned off.

Header and body values may name env-file variables as `${VAR}` (or
`${VAR:-default}`); their values are secrets and never appear in a message.
"""

from __future__ import annotations

import http.client
import re
import socket
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from edgeproxy.config import load_config
from edgeproxy.errors import ConfigError
from switchctl.deploy.config import Smoke, SmokeCheck
from switchctl.deploy.errors import DeployConfigError

SERVED_BY = "X-Edgeproxy-Color"
"""edgeproxy's response header naming the color that served a request with an honoured override."""

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand(text: str, env: Mapping[str, str], where: str, env_file: str) -> str:
    """`${VAR}` / `${VAR:-default}` from the env file; a missing VAR without default is an error."""

    def one(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(2)
        if env.get(name):
            return env[name]
        if default is not None:
            return default
        raise DeployConfigError([f"{where}: ${{{name}}} is not set in {env_file}"])

    return _VAR.sub(one, text)


def referenced(smoke: Smoke) -> set[str]:
    """Env-file variables the checks use without a default (for `deploy --check`)."""
    out: set[str] = set()
    for check in smoke.checks:
        for text in [*check.headers.values(), check.body or ""]:
            out |= {m.group(1) for m in _VAR.finditer(text) if m.group(2) is None}
    return out


def trust(smoke: Smoke, proxy_configs: list[Path]) -> ssl.SSLContext | None:
    """The TLS context the checks verify edgeproxy with (None for an http:// url)."""
    if urlsplit(smoke.url).scheme != "https":
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED and check_hostname
    ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN  # trust the served leaf itself
    if smoke.ca_file is not None:
        files, source = [smoke.ca_file], "smoke.ca_file"
    else:
        files, source = _served_certificates(proxy_configs), "edgeproxy's tls.certificates"
        if not files:
            raise DeployConfigError(
                [
                    "smoke.ca_file: not set, and edgeproxy's config lists no certificate to "
                    "trust; set smoke.ca_file to the CA (or certificate) edgeproxy serves"
                ]
            )
    for f in files:
        try:
            ctx.load_verify_locations(cafile=str(f))
        except (OSError, ssl.SSLError) as e:
            raise DeployConfigError(
                [
                    f"smoke: cannot read {f} ({source}) to verify edgeproxy's certificate: "
                    f"{getattr(e, 'strerror', None) or e}; make it readable or set smoke.ca_file"
                ]
            ) from e
    return ctx


def _served_certificates(proxy_configs: list[Path]) -> list[Path]:
    for path in proxy_configs:
        if path.exists():
            try:
                return [c.cert for c in load_config(path).tls.certificates]
            except ConfigError:
                continue
    return []


@dataclass(frozen=True)
class Outcome:
    check: SmokeCheck
    color: str
    status: int | None = None
    served_by: str | None = None
    problem: str | None = None
    """None: the check passed."""

    @property
    def ok(self) -> bool:
        return self.problem is None


class _PinnedHTTPS(http.client.HTTPSConnection):
    """HTTPS to the listener's address with the site's name as SNI (no DNS involved)."""

    def __init__(
        self, address: tuple[str, int], name: str, ctx: ssl.SSLContext, timeout: float
    ) -> None:
        super().__init__(name, address[1], context=ctx, timeout=timeout)
        self.address = address

    def connect(self) -> None:
        sock = socket.create_connection(self.address, self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)  # type: ignore[attr-defined]


class SmokeClient:
    """Runs checks against one listener; shared by the smoke step and the canary probe."""

    def __init__(
        self, smoke: Smoke, env: Mapping[str, str], ctx: ssl.SSLContext | None, env_file: str = ""
    ) -> None:
        self.smoke = smoke
        self.env = env
        self.ctx = ctx
        self.env_file = env_file or "the env file"
        u = urlsplit(smoke.url)
        self.scheme = u.scheme
        self.address = (u.hostname or "127.0.0.1", u.port or (443 if u.scheme == "https" else 80))

    def describe(self, check: SmokeCheck) -> str:
        host = check.host or self.address[0]
        return f"{check.method} {self.scheme}://{host}{check.path} (via {self.smoke.url})"

    def request(self, check: SmokeCheck, color: str) -> tuple[int, http.client.HTTPMessage, bytes]:
        i = self.smoke.checks.index(check) if check in self.smoke.checks else 0
        where = f"smoke.checks[{i}]"
        headers = {
            name: expand(value, self.env, f"{where}.headers.{name}", self.env_file)
            for name, value in check.headers.items()
        }
        headers[self.smoke.header] = color
        host = check.host or self.address[0]
        headers["Host"] = host
        body = None
        if check.body is not None:
            body = expand(check.body, self.env, f"{where}.body", self.env_file).encode()
        conn: http.client.HTTPConnection
        if self.ctx is not None:
            conn = _PinnedHTTPS(self.address, host, self.ctx, self.smoke.timeout)
        else:
            conn = http.client.HTTPConnection(*self.address, timeout=self.smoke.timeout)
        try:
            conn.request(check.method, check.path, body=body, headers=headers)
            r = conn.getresponse()
            return r.status, r.headers, r.read()
        finally:
            conn.close()

    def run(self, check: SmokeCheck, color: str) -> Outcome:
        what = f"{self.describe(check)} ({self.smoke.header}: {color})"
        try:
            status, headers, body = self.request(check, color)
        except ssl.SSLCertVerificationError as e:
            return Outcome(
                check,
                color,
                problem=f"{what}: edgeproxy's certificate is not trusted ({e.verify_message}); "
                "set smoke.ca_file, or check tls.certificates in edgeproxy's config",
            )
        except (OSError, http.client.HTTPException) as e:
            return Outcome(check, color, problem=f"{what}: {type(e).__name__}: {e}")
        served = [v.strip() for v in headers.get_all(SERVED_BY) or []]
        served_by = ", ".join(served) or None
        text = body.decode(errors="replace")
        problems = []
        if status != check.status:
            if 300 <= status < 400:
                problems.append(
                    f"answered {status} redirecting to {headers.get('Location', '?')} "
                    f"(expected {check.status}; redirects are not followed: smoke.url must be "
                    "the listener that serves the site, e.g. https://127.0.0.1:443)"
                )
            else:
                problems.append(f"answered {status}, expected {check.status}")
        if check.contains is not None and check.contains not in text:
            problems.append(f"the body does not contain {check.contains!r}")
        if not served:
            problems.append(
                f"no {SERVED_BY} response header: edgeproxy did not honour the override "
                f"(not from an override.allow_from address?) or is too old to say who served"
            )
        elif any(v.lower() != color.lower() for v in served):
            problems.append(f"answered by {served_by}, not {color}: the override was ignored")
        if not problems:
            return Outcome(check, color, status, served_by)
        answered = f"{status} from {served_by or 'an unnamed color'}"
        return Outcome(
            check,
            color,
            status,
            served_by,
            f"{what} -> {answered}: " + "; ".join(problems) + f"; body starts: {text[:200]!r}",
        )


class Prober:
    """The canary step's synthetic traffic: the smoke checks in turn, `rate` per second.

    They go through edgeproxy with the override, so edgeproxy counts them as the new
    color's requests: a shop with no visitors still gives the gates evidence."""

    def __init__(
        self, client: SmokeClient | None, color: str, rate: float, clock: Callable[[], float]
    ) -> None:
        self.client = client
        self.color = color
        self.rate = rate if client is not None and client.smoke.checks else 0.0
        self.clock = clock
        self.started = clock()
        self.slot = 0
        self.sent = 0
        self.failed = 0
        self.last_problem: str | None = None

    def next_due(self) -> float | None:
        """When the next probe is due (None: the probe is off)."""
        if self.rate <= 0:
            return None
        return self.started + self.slot / self.rate

    def tick(self) -> None:
        """Send the probes that are due (a slow listener makes it skip, never pile up)."""
        due = self.next_due()
        if due is None or self.client is None or self.clock() < due:
            return
        checks = self.client.smoke.checks
        out = self.client.run(checks[self.sent % len(checks)], self.color)
        self.sent += 1
        if not out.ok:
            self.failed += 1
            self.last_problem = out.problem
        self.slot = max(self.slot + 1, int((self.clock() - self.started) * self.rate))

    def describe(self) -> str:
        if self.rate <= 0:
            return "no probe"
        return f"probe sent {self.sent}" + (f", {self.failed} failed" if self.failed else "")
