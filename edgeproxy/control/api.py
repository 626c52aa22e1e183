"""The control API: HTTP + JSON on a unix socket (routes in docs/control-api.md).

Thin by design: one typed request model per verb, each handler a line or two
calling the SwitchBoard, which validates, persists and only then answers.
Peers are identified with SO_PEERCRED and checked against the allowlist; every
mutation (refused ones included) writes one JSON line to the "edgeproxy.audit"
logger. What the data plane owns (metrics, certificates, health checks) comes
in through a `ControlHooks` object.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import socket
import stat
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

from aiohttp import web
from aiohttp.typedefs import Handler
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edgeproxy.config import COLOR_RE, Control
from edgeproxy.control.peercred import Peer, allowed, peer_of
from edgeproxy.errors import ConfigError, EdgeproxyError, StartupError, TLSConfigError
from edgeproxy.handover import HandoverError, ProcessInfo
from edgeproxy.switching.board import SwitchBoard
from edgeproxy.switching.state import FULL, AppState, Weight, weights

log = logging.getLogger("edgeproxy.control")
audit_log = logging.getLogger("edgeproxy.audit")


# --- hooks from the data plane ---------------------------------------------------------------


class ControlHooks(Protocol):
    def metrics_text(self) -> str:
        """Prometheus text exposition of every metric."""
        ...

    async def reload_certs(self) -> dict[str, Any]:
        """Reload certificates → {"ok": true, "certificates": [...]}; raise TLSConfigError."""
        ...

    def certs_view(self) -> dict[str, Any]:
        """{"certificates": [{"cert", "subject", "sans", "not_after", "days_left"}]}"""
        ...

    async def reload_config(self, *, force: bool = False) -> dict[str, Any]:
        """Re-read the config file → {"ok": true, ..., "switch": {APP: {"old", "new"}}};
        raise ConfigError listing problems (a color in use dropped, unless `force`)."""
        ...

    def health_view(self) -> dict[str, Any]:
        """{"apps": {APP: {COLOR: HealthView}}}"""
        ...

    async def cluster_view(self) -> dict[str, Any]:
        """{"backend": None} alone; with a shared store, every node (`observability/nodes.py`)."""
        ...

    def process_view(self) -> dict[str, Any]:
        """{"pid", "version", "started_at", "serving", "took_over", "stepping_back"}"""
        ...

    def handover(self, pid: int, version: str) -> dict[str, Any]:
        """Open a hand-over channel for process `pid` → {"id", "socket", "pid", "version"};
        raise HandoverError (409) when one is under way or this server cannot hand over."""
        ...


def switch_metrics(board: SwitchBoard) -> str:
    """Prometheus lines for the switch state (the data plane appends them to its own)."""
    lines = [
        "# HELP edgeproxy_switch_generation Switch state generation per app.",
        "# TYPE edgeproxy_switch_generation gauge",
        "# HELP edgeproxy_switch_weight Share of new requests per color (percent).",
        "# TYPE edgeproxy_switch_weight gauge",
        "# HELP edgeproxy_switch_paused 1 while the app holds new requests.",
        "# TYPE edgeproxy_switch_paused gauge",
        "# HELP edgeproxy_switch_draining 1 while the color drains.",
        "# TYPE edgeproxy_switch_draining gauge",
        "# HELP edgeproxy_state_records_rejected Parts of the app's saved switch state that "
        "could not be used at boot (0: restored whole; see switchctl status).",
        "# TYPE edgeproxy_state_records_rejected gauge",
    ]
    for app, s in sorted(board.states.items()):
        lines.append(f'edgeproxy_switch_generation{{app="{app}"}} {s.generation}')
        lines.append(f'edgeproxy_switch_paused{{app="{app}"}} {int(s.paused)}')
        rejected = len(board.set_aside.get(app, []))
        lines.append(f'edgeproxy_state_records_rejected{{app="{app}"}} {rejected}')
        for color, share in weights(s).items():
            lines.append(f'edgeproxy_switch_weight{{app="{app}",color="{color}"}} {share}')
            draining = int(color in s.draining)
            lines.append(f'edgeproxy_switch_draining{{app="{app}",color="{color}"}} {draining}')
    return "\n".join(lines) + "\n"


@dataclass
class BoardHooks:
    """Hooks that know only the switch board: no certificates, health from the board."""

    board: SwitchBoard

    def metrics_text(self) -> str:
        return switch_metrics(self.board)

    async def reload_certs(self) -> dict[str, Any]:
        return {"ok": True, "certificates": []}

    def certs_view(self) -> dict[str, Any]:
        return {"certificates": []}

    async def reload_config(self, *, force: bool = False) -> dict[str, Any]:
        raise ConfigError(["this control server has no config file to reload"])

    async def cluster_view(self) -> dict[str, Any]:
        return {"backend": None}

    def process_view(self) -> dict[str, Any]:
        return ProcessInfo().view()

    def handover(self, pid: int, version: str) -> dict[str, Any]:
        raise HandoverError("this control server has no listeners to hand over")

    def health_view(self) -> dict[str, Any]:
        apps: dict[str, Any] = {}
        for app, s in self.board.states.items():
            apps[app] = {}
            for color in s.colors:
                healthy, failing = self.board.health(app, color)
                apps[app][color] = {"healthy": healthy, "failing_checks": failing}
        return {"apps": apps}


# --- request models (one per verb) -----------------------------------------------------------


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class SetBody(Body):
    color: str = Field(pattern=COLOR_RE.pattern, description="color to give traffic to")
    weight: Weight = Field(default=FULL, description="its share of new requests")
    force: bool = Field(default=False, description="switch even if the color is unhealthy")


class ForceBody(Body):
    force: bool = Field(default=False, description="switch even if the color is unhealthy")


class DrainBody(Body):
    color: str = Field(pattern=COLOR_RE.pattern, description="color to drain")
    timeout: float | None = Field(
        default=None, gt=0, le=86400, description="seconds before cutting (app's drain_timeout)"
    )


class EmptyBody(Body):
    pass


class HandoverBody(Body):
    pid: int = Field(ge=1, description="the process that takes over")
    version: str = Field(max_length=100, description="its edgeproxy version")


class ReloadBody(Body):
    force: bool = Field(
        default=False,
        description="drop colors in use (active, candidate, draining) that the new config lacks",
    )


def _field_problem(model: type[Body], err: Any) -> str:
    loc = ".".join(str(p) for p in err["loc"]) or "body"
    kind = err["type"]
    if kind == "extra_forbidden":
        return f"{loc}: unknown field (allowed: {', '.join(model.model_fields) or 'none'})"
    if kind == "missing":
        return f"{loc}: required"
    if kind in ("greater_than_equal", "less_than_equal", "greater_than", "less_than"):
        meta = model.model_fields[str(err["loc"][0])].metadata
        lo = next((getattr(m, a) for m in meta for a in ("ge", "gt") if hasattr(m, a)), None)
        hi = next((getattr(m, a) for m in meta for a in ("le", "lt") if hasattr(m, a)), None)
        return f"{loc}: must be between {lo} and {hi}, got {err['input']!r}"
    if kind == "string_pattern_mismatch":
        return f"{loc}: {err['input']!r} is not a color name (lowercase letters, digits, - or _)"
    return f"{loc}: {err['msg'][0].lower()}{err['msg'][1:]}"


class BadRequest(EdgeproxyError):
    status = 400


B = TypeVar("B", bound=Body)


async def parse_body(request: web.Request, model: type[B]) -> B:
    raw = await request.read()
    try:
        data = json.loads(raw) if raw.strip() else {}
    except ValueError as e:
        raise BadRequest(f"request body is not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise BadRequest("request body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise BadRequest("; ".join(_field_problem(model, err) for err in e.errors())) from e


# --- handlers ------------------------------------------------------------------------------

BOARD = web.AppKey("board", SwitchBoard)
HOOKS = web.AppKey("hooks", ControlHooks)
CONTROL = web.AppKey("control", Control)
SOCKET_INODE = web.AppKey("socket_inode", dict[str, int])  # filled in once bound
PEER = web.RequestKey("peer", Peer)

Mutation = Callable[[SwitchBoard, str, Any], Awaitable[AppState]]


def _audit(request: web.Request, verb: str, app: str | None, body: Body, **result: Any) -> None:
    peer: Peer = request[PEER]
    line = {"peer_uid": peer.uid, "peer_gid": peer.gid, "peer_pid": peer.pid, "verb": verb}
    line |= {"app": app, "request": body.model_dump(), **result}
    audit_log.info("%s", json.dumps(line, sort_keys=True))


def mutation(verb: str, model: type[Body], call: Mutation) -> Handler:
    """A POST /v1/apps/{app}/VERB handler: parse → call the board → audit → AppView."""

    async def handler(request: web.Request) -> web.StreamResponse:
        board, app = request.app[BOARD], request.match_info["app"]
        body = await parse_body(request, model)
        try:
            new = await call(board, app, body)
        except EdgeproxyError as e:
            current = board.states.get(app)
            before = current.summary() if current else None
            _audit(request, verb, app, body, result="refused", old=before, error=str(e))
            raise
        replaced = board.replaced(app)
        before = replaced.summary() if replaced else None
        _audit(request, verb, app, body, result="ok", old=before, new=new.summary())
        return web.json_response(board.view(app))

    return handler


async def list_apps(request: web.Request) -> web.StreamResponse:
    board = request.app[BOARD]
    return web.json_response({"apps": {a: board.view(a) for a in board.states}})


async def get_app(request: web.Request) -> web.StreamResponse:
    return web.json_response(request.app[BOARD].view(request.match_info["app"]))


async def health(request: web.Request) -> web.StreamResponse:
    return web.json_response(request.app[HOOKS].health_view())


async def cluster(request: web.Request) -> web.StreamResponse:
    return web.json_response(await request.app[HOOKS].cluster_view())


async def metrics(request: web.Request) -> web.StreamResponse:
    text = request.app[HOOKS].metrics_text()
    return web.Response(text=text, content_type="text/plain", charset="utf-8")


async def certs(request: web.Request) -> web.StreamResponse:
    return web.json_response(request.app[HOOKS].certs_view())


async def reload_certs(request: web.Request) -> web.StreamResponse:
    body = await parse_body(request, EmptyBody)
    try:
        result = await request.app[HOOKS].reload_certs()
    except TLSConfigError as e:
        _audit(request, "certs reload", None, body, result="refused", error=str(e))
        raise
    _audit(request, "certs reload", None, body, result="ok")
    return web.json_response(result)


async def reload_config(request: web.Request) -> web.StreamResponse:
    body = await parse_body(request, ReloadBody)
    try:
        result = await request.app[HOOKS].reload_config(force=body.force)
    except ConfigError as e:
        _audit(request, "config reload", None, body, result="refused", error="; ".join(e.problems))
        return _error(
            409, "reload refused, the previous config stays in force: " + "; ".join(e.problems)
        )
    switched: dict[str, dict[str, str | None]] = result.get("switch") or {}
    # One line per app whose switch state the reload changed (like a `set`), else one.
    for app, change in switched.items():
        _audit(request, "config reload", app, body, result="ok", **change)
    if not switched:
        _audit(request, "config reload", None, body, result="ok")
    return web.json_response(result)


async def process(request: web.Request) -> web.StreamResponse:
    return web.json_response(request.app[HOOKS].process_view())


async def handover(request: web.Request) -> web.StreamResponse:
    body = await parse_body(request, HandoverBody)
    peer: Peer = request[PEER]
    if peer.uid not in (0, os.getuid()):
        message = f"uid {peer.uid} may not take over edgeproxy (only root or uid {os.getuid()})"
        _audit(request, "handover", None, body, result="refused", error=message)
        return _error(403, message)
    try:
        result = request.app[HOOKS].handover(body.pid, body.version)
    except HandoverError as e:
        _audit(request, "handover", None, body, result="refused", error=str(e))
        raise
    _audit(request, "handover", None, body, result="ok", id=result["id"])
    return web.json_response(result)


async def openapi(request: web.Request) -> web.StreamResponse:
    return web.json_response(openapi_document())


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    handler: Handler
    summary: str
    body: type[Body] | None = None


ROUTES = [
    Route("GET", "/v1/apps", list_apps, "Every app's switch state"),
    Route("GET", "/v1/apps/{app}", get_app, "One app's switch state (AppView)"),
    Route(
        "POST",
        "/v1/apps/{app}/set",
        mutation("set", SetBody, lambda b, a, r: b.set(a, r.color, r.weight, force=r.force)),
        "Give a color a share: 100 makes it active, less makes it the candidate",
        SetBody,
    ),
    Route(
        "POST",
        "/v1/apps/{app}/promote",
        mutation("promote", ForceBody, lambda b, a, r: b.promote(a, force=r.force)),
        "Make the candidate the active color at 100%",
        ForceBody,
    ),
    Route(
        "POST",
        "/v1/apps/{app}/rollback",
        mutation("rollback", ForceBody, lambda b, a, r: b.rollback(a, force=r.force)),
        "Make the previous color active again at 100%",
        ForceBody,
    ),
    Route(
        "POST",
        "/v1/apps/{app}/drain",
        mutation("drain", DrainBody, lambda b, a, r: b.drain(a, r.color, seconds=r.timeout)),
        "Drain a color that gets no traffic: in-flight requests finish, then it is cut",
        DrainBody,
    ),
    Route(
        "POST",
        "/v1/apps/{app}/pause",
        mutation("pause", EmptyBody, lambda b, a, r: b.pause(a)),
        "Hold new requests until resume (up to the app's pause_max_wait)",
        EmptyBody,
    ),
    Route(
        "POST",
        "/v1/apps/{app}/resume",
        mutation("resume", EmptyBody, lambda b, a, r: b.resume(a)),
        "Release held requests in arrival order",
        EmptyBody,
    ),
    Route("GET", "/v1/health", health, "Health of every color"),
    Route("GET", "/v1/cluster", cluster, "Every edge node sharing the switch state"),
    Route("POST", "/v1/certs/reload", reload_certs, "Reload TLS certificates", EmptyBody),
    Route("GET", "/v1/certs", certs, "Loaded certificates"),
    Route("POST", "/v1/config/reload", reload_config, "Re-read the config file", ReloadBody),
    Route("GET", "/v1/process", process, "Which process serves: pid, version, start time"),
    Route(
        "POST",
        "/v1/handover",
        handover,
        "Open a hand-over channel: a new process takes the listeners (edgeproxy serve --takeover)",
        HandoverBody,
    ),
    Route("GET", "/v1/openapi.json", openapi, "This document"),
    Route("GET", "/metrics", metrics, "Prometheus metrics"),
]


def openapi_document() -> dict[str, Any]:
    error = {
        "description": "error",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }
    paths: dict[str, Any] = {}
    for r in ROUTES:
        op: dict[str, Any] = {
            "summary": r.summary,
            "responses": {"200": {"description": "ok"}, "default": error},
        }
        if "{app}" in r.path:
            op["parameters"] = [
                {"name": "app", "in": "path", "required": True, "schema": {"type": "string"}}
            ]
        if r.body is not None:
            op["requestBody"] = {
                "content": {"application/json": {"schema": r.body.model_json_schema()}}
            }
        paths.setdefault(r.path, {})[r.method.lower()] = op
    return {
        "openapi": "3.0.3",
        "info": {"title": "edgeproxy control API", "version": "1"},
        "paths": paths,
        "components": {
            "schemas": {
                "Error": {
                    "type": "object",
                    "properties": {"error": {"type": "string"}, "status": {"type": "integer"}},
                }
            }
        },
    }


# --- middleware: peer check and errors -------------------------------------------------------


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message, "status": status}, status=status)


@web.middleware
async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    sock = request.transport.get_extra_info("socket") if request.transport else None
    if sock is None:
        return _error(403, "cannot identify the peer of this connection")
    peer = peer_of(sock)
    if not allowed(peer, request.app[CONTROL]):
        message = (
            f"uid {peer.uid} (pid {peer.pid}) may not use the control socket; "
            "add it to control.allow_uids (or its group to control.allow_gids)"
        )
        log.warning("refused control request from uid %d (pid %d)", peer.uid, peer.pid)
        line: dict[str, Any] = {"peer_uid": peer.uid, "peer_gid": peer.gid, "peer_pid": peer.pid}
        line |= {"verb": f"{request.method} {request.path}", "app": request.match_info.get("app")}
        audit_log.info("%s", json.dumps(line | {"result": "refused", "error": message}))
        return _error(403, message)
    request[PEER] = peer
    try:
        return await handler(request)
    except web.HTTPException as e:
        return _error(e.status, f"{e.reason}: {request.method} {request.path}")
    except TLSConfigError as e:
        return _error(409, str(e))
    except EdgeproxyError as e:
        status = getattr(e, "status", None)
        if isinstance(status, int):
            return _error(status, str(e))
        log.exception("control request %s %s failed", request.method, request.path)
        return _error(500, str(e))
    except Exception:
        log.exception("control request %s %s failed", request.method, request.path)
        return _error(500, "internal error; see edgeproxy's log")


def make_app(board: SwitchBoard, hooks: ControlHooks, control: Control) -> web.Application:
    app = web.Application(middlewares=[guard])
    app[BOARD] = board
    app[HOOKS] = hooks
    app[CONTROL] = control
    app[SOCKET_INODE] = {}
    for r in ROUTES:
        app.router.add_route(r.method, r.path, r.handler)
    return app


# --- the socket ----------------------------------------------------------------------------


def _prepare_socket_path(path: Path) -> None:
    """Create the directory; remove a stale socket; refuse if someone is listening."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise StartupError(
            f"cannot create the control socket's directory {path.parent}: {e.strerror}"
        ) from e
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise StartupError(f"control socket path {path} exists and is not a socket; move it away")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(str(path))
    except OSError as e:
        if e.errno not in (errno.ECONNREFUSED, errno.ENOENT):
            raise StartupError(
                f"cannot check the existing control socket {path}: {e.strerror}"
            ) from e
        path.unlink(missing_ok=True)  # stale: nobody listens any more
        return
    finally:
        probe.close()
    raise StartupError(
        f"another process is already listening on the control socket {path} "
        "(is another edgeproxy running? `docker ps` for a container, "
        "`systemctl status edgeproxy` for a unit)"
    )


async def start_control_server(
    control: Control,
    board: SwitchBoard,
    hooks: ControlHooks | None = None,
    *,
    bind_at: Path | None = None,
) -> web.AppRunner:
    """Serve the control API on `control.socket` (mode `control.mode`, group `control.group`).

    `bind_at`: bind there instead; a process taking over moves it to `control.socket`.
    """
    runner = web.AppRunner(make_app(board, hooks or BoardHooks(board), control), access_log=None)
    await runner.setup()
    try:
        await _serve_socket(runner, bind_at or control.socket)
    except StartupError:
        await runner.cleanup()
        raise
    return runner


async def _serve_socket(runner: web.AppRunner, path: Path) -> None:
    control = runner.app[CONTROL]
    gid = -1 if control.group is None else control.group  # a name was resolved by the config
    _prepare_socket_path(path)
    try:
        await web.UnixSite(runner, str(path)).start()
        os.chmod(path, control.mode)
        os.chown(path, -1, gid)
    except OSError as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        raise StartupError(f"cannot serve the control socket {path}: {e.strerror}") from e
    runner.app[SOCKET_INODE]["ino"] = os.stat(path).st_ino
    log.info("control API listening on %s", path)


async def rebind_control_socket(runner: web.AppRunner) -> None:
    """Serve `control.socket` again if another process replaced it and went away
    (a hand-over that failed after the new process moved its socket into place)."""
    path = runner.app[CONTROL].socket
    try:
        if os.stat(path).st_ino == runner.app[SOCKET_INODE].get("ino"):
            return
    except FileNotFoundError:
        pass
    await _serve_socket(runner, path)


async def stop_control_server(runner: web.AppRunner) -> None:
    """Stop serving and remove the socket file (unless another process has replaced it)."""
    app = runner.app
    await runner.cleanup()
    path = app[CONTROL].socket
    try:
        if os.stat(path).st_ino == app[SOCKET_INODE].get("ino"):
            path.unlink()
    except FileNotFoundError:
        pass
