"""A small synchronous client for edgeproxy's control socket (HTTP + JSON over a unix socket).

Reusable by any tool: `ControlClient(path).set("shop", "green", 10)`. Errors
answered by the proxy raise `ControlError(status, message)`; a proxy that
cannot be reached raises `ProxyUnreachable(socket_path, reason)`.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
from pathlib import Path
from typing import Any, NotRequired, TypedDict, cast

DEFAULT_SOCKET = "/run/edgeproxy/control.sock"


class ClientError(Exception):
    """Root of the control client's errors."""


class ControlError(ClientError):
    """The proxy answered with an error (400 bad request, 403, 404, 409 refused, 500)."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        self.message = message
        super().__init__(f"{message} (HTTP {status})")


GENERIC_HINT = (
    "is it running? in a container: `docker ps -a --filter name=edgeproxy`, "
    "`docker logs edgeproxy`; as a unit: `systemctl status edgeproxy`"
)


class ProxyUnreachable(ClientError):
    """Nothing answers on the control socket. `hint` says where to look (how edgeproxy runs)."""

    def __init__(self, socket_path: str, reason: str, hint: str | None = None) -> None:
        self.socket_path = socket_path
        self.reason = reason
        self.hint = hint or GENERIC_HINT
        super().__init__(self.describe())

    def describe(self, hint: str | None = None) -> str:
        return (
            f"cannot reach edgeproxy on {self.socket_path}: {self.reason} "
            f"({hint or self.hint}; `ls -l {self.socket_path}`)"
        )


class ColorView(TypedDict, total=False):
    weight: int
    in_flight: int
    tunnels: int
    healthy: bool
    failing_checks: list[str]
    requests: int
    errors_5xx: int
    error_rate: float
    p99_ms: float


class AppView(TypedDict):
    app: str
    active: str
    candidate: str | None
    weight: int
    weights: dict[str, int]
    previous: str | None
    draining: dict[str, dict[str, float]]
    paused: bool
    released: NotRequired[bool]
    """False until the app's first release (`first_release: hold`); absent from older
    edgeproxy versions, which always serve."""
    generation: int
    changed_at: float
    guard: dict[str, Any] | None
    set_aside: NotRequired[list[str]]
    """What of the app's saved state could not be used at boot, and why."""
    set_aside_copy: NotRequired[str | None]
    colors: dict[str, ColorView]


def socket_path(explicit: str | os.PathLike[str] | None = None) -> str:
    """The socket to use: explicit, else $EDGEPROXY_SOCKET, else the default."""
    return str(explicit or os.environ.get("EDGEPROXY_SOCKET") or DEFAULT_SOCKET)


class UnixHTTPConnection(http.client.HTTPConnection):
    """http.client over a unix socket (also used by `certs install`)."""

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class ControlClient:
    def __init__(
        self, path: str | Path | None = None, *, timeout: float = 10.0, hint: str | None = None
    ) -> None:
        self.socket_path = socket_path(path)
        self.timeout = timeout
        self.hint = hint
        """Where to look when the socket does not answer (how edgeproxy runs here)."""

    # --- reading ---------------------------------------------------------------------------

    def apps(self) -> dict[str, AppView]:
        return cast(dict[str, AppView], self._json("GET", "/v1/apps")["apps"])

    def app(self, name: str) -> AppView:
        return cast(AppView, self._json("GET", f"/v1/apps/{name}"))

    def health(self) -> dict[str, Any]:
        return self._json("GET", "/v1/health")

    def certs(self) -> dict[str, Any]:
        return self._json("GET", "/v1/certs")

    def process(self) -> dict[str, Any] | None:
        """Which process serves (pid, version, started_at, took_over); None from an
        edgeproxy older than the hand-over (no such endpoint)."""
        try:
            return self._json("GET", "/v1/process")
        except ControlError as e:
            if e.status == 404:
                return None
            raise

    def metrics(self) -> str:
        return self._request("GET", "/metrics", None).decode()

    def cluster(self) -> dict[str, Any]:
        """Every edge node sharing the switch state (`{"backend": None}` for a lone node)."""
        return self._json("GET", "/v1/cluster")

    # --- changes ---------------------------------------------------------------------------

    def set(self, app: str, color: str, weight: int, force: bool = False) -> AppView:
        body = {"color": color, "weight": weight, "force": force}
        return self._app_verb(app, "set", body)

    def promote(self, app: str, force: bool = False) -> AppView:
        return self._app_verb(app, "promote", {"force": force})

    def rollback(self, app: str, force: bool = False) -> AppView:
        return self._app_verb(app, "rollback", {"force": force})

    def drain(self, app: str, color: str, timeout: float | None = None) -> AppView:
        body: dict[str, Any] = {"color": color}
        if timeout is not None:
            body["timeout"] = timeout
        return self._app_verb(app, "drain", body)

    def pause(self, app: str) -> AppView:
        return self._app_verb(app, "pause", {})

    def resume(self, app: str) -> AppView:
        return self._app_verb(app, "resume", {})

    def reload_certs(self) -> dict[str, Any]:
        return self._json("POST", "/v1/certs/reload", {})

    def reload_config(self, force: bool = False) -> dict[str, Any]:
        return self._json("POST", "/v1/config/reload", {"force": force})

    # --- plumbing --------------------------------------------------------------------------

    def _app_verb(self, app: str, verb: str, body: dict[str, Any]) -> AppView:
        return cast(AppView, self._json("POST", f"/v1/apps/{app}/{verb}", body))

    def _json(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        raw = self._request(method, path, body)
        try:
            data = json.loads(raw)
        except ValueError as e:
            raise ControlError(502, f"the proxy sent a reply that is not JSON: {e}") from e
        return cast(dict[str, Any], data)

    def _request(self, method: str, path: str, body: dict[str, Any] | None) -> bytes:
        conn = UnixHTTPConnection(self.socket_path, self.timeout)
        payload = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if payload is not None else {}
        try:
            try:
                conn.request(method, path, body=payload, headers=headers)
            except OSError as e:
                raise ProxyUnreachable(self.socket_path, e.strerror or str(e), self.hint) from e
            try:
                resp = conn.getresponse()
                raw = resp.read()
            except (OSError, http.client.HTTPException) as e:
                raise ProxyUnreachable(self.socket_path, f"no reply: {e}", self.hint) from e
        finally:
            conn.close()
        if resp.status >= 400:
            raise ControlError(resp.status, _error_message(raw, resp.status))
        return raw


def _error_message(raw: bytes, status: int) -> str:
    try:
        data = json.loads(raw)
    except ValueError:
        return raw.decode(errors="replace").strip() or f"HTTP {status}"
    message = data.get("error") if isinstance(data, dict) else None
    if isinstance(message, str):
        return message
    return f"HTTP {status}"
