"""A tiny HTTP+JSON client for edgeproxy's control unix socket (docs/control-api.md).

Blocking and stdlib-only on purpose: `certs install` runs as certbot's deploy
hook, one request per run. The unix-socket connection is switchctl's (stdlib
only too); the error messages here speak of certificates.
"""

from __future__ import annotations

import http.client
import json
from pathlib import Path
from typing import Any

from certs.errors import ReloadRefused, ReloadUnreachable
from switchctl.client import UnixHTTPConnection

DEFAULT_SOCKET = Path("/run/edgeproxy/control.sock")


def call(
    socket_path: Path, method: str, path: str, body: Any = None, timeout: float = 30.0
) -> dict[str, Any]:
    """Send one request; return the decoded JSON reply or raise ReloadUnreachable/Refused."""
    conn = UnixHTTPConnection(str(socket_path), timeout)
    payload = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"} if payload is not None else {}
    try:
        try:
            conn.request(method, path, body=payload, headers=headers)
            resp = conn.getresponse()
            raw = resp.read()
        except FileNotFoundError as e:
            raise ReloadUnreachable(
                f"edgeproxy is not reachable: no control socket at {socket_path} "
                "(is edgeproxy running? is --socket / EDGEPROXY_SOCKET right?)"
            ) from e
        except PermissionError as e:
            raise ReloadUnreachable(
                f"edgeproxy is not reachable: permission denied on {socket_path} "
                "(run as root or as a member of the socket's group)"
            ) from e
        except (OSError, http.client.HTTPException) as e:
            raise ReloadUnreachable(
                f"edgeproxy is not reachable on {socket_path}: {e or type(e).__name__}"
            ) from e
    finally:
        conn.close()
    try:
        reply = json.loads(raw) if raw else {}
    except ValueError:
        reply = {"error": raw.decode(errors="replace")[:200]}
    if not isinstance(reply, dict):
        reply = {"reply": reply}
    if resp.status >= 400:
        raise ReloadRefused(resp.status, str(reply.get("error", reply)))
    return reply


def reload_certificates(socket_path: Path, timeout: float = 30.0) -> dict[str, Any]:
    """POST /v1/certs/reload; the reply lists the certificates edgeproxy now serves."""
    return call(socket_path, "POST", "/v1/certs/reload", body={}, timeout=timeout)
