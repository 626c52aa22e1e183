"""The access log: one JSON line per finished request, to stdout or a file.

Lines are buffered and written at most every 0.2 s (or per 64 KiB), not one
syscall per request. Only client-controlled strings go through `json.dumps`,
and only when they hold a character that needs escaping. `sample: 0.1` keeps a
random tenth of the lines; `enabled: false` takes the writer off the hot path
entirely. Errors and state changes are not here: they go to the structured log
on stderr.

Fields: time (UTC, when the response ended), request_id, client, host, method,
path (without the query string), status, bytes_in (request body bytes sent
upstream), bytes_out (response body bytes), duration_ms, app, color, upstream,
tls (protocol version, or null), and error (why edgeproxy ended the exchange
itself, or null).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import time
from typing import TYPE_CHECKING

from edgeproxy.config import AccessLog as AccessLogConfig
from edgeproxy.errors import StartupError

if TYPE_CHECKING:
    from edgeproxy.proxy.exchange import Exchange

log = logging.getLogger("edgeproxy.access")

FLUSH_BYTES = 65536
FLUSH_SECONDS = 0.2


def jstr(value: str | None) -> str:
    """A JSON string (or null), escaping only when needed."""
    if value is None:
        return "null"
    if value.isascii() and value.isprintable() and '"' not in value and "\\" not in value:
        return f'"{value}"'
    return json.dumps(value)


def jbytes(value: bytes) -> str:
    return jstr(value.decode("utf-8", "backslashreplace"))


class AccessLogWriter:
    def __init__(self, config: AccessLogConfig) -> None:
        self.path = config.path
        self.sample = config.sample
        self.fd = -1
        self.buf: list[str] = []
        self.size = 0
        self.timer: asyncio.TimerHandle | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.offset = 0.0
        """Wall clock minus loop clock."""
        self._sec = -1
        self._prefix = ""
        self.lines = 0
        self.broken = False

    def open(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.offset = time.time() - self.loop.time()
        if self.path == "-":
            self.fd = 1
            return
        try:
            self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        except OSError as e:
            raise StartupError(
                f"access_log.path: cannot open {self.path} for appending: {e.strerror}"
            ) from e

    def close(self) -> None:
        self.flush()
        if self.fd > 2:
            os.close(self.fd)
        self.fd = -1

    # --- hot path ------------------------------------------------------------------------------

    def write(self, ex: Exchange) -> None:
        if self.sample < 1.0 and random.random() >= self.sample:
            return
        client = ex.client
        pool = ex.pool
        local = ex.local
        wall = ex.finished_at + self.offset
        sec = int(wall)
        if sec != self._sec:
            self._sec = sec
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
        ms = int((wall - sec) * 1000)
        started = ex.started_at
        duration = (ex.finished_at - started) * 1000 if started else 0.0
        line = (
            f'{{"time":"{self._prefix}.{ms:03d}Z","request_id":{jbytes(ex.request_id)},'
            f'"client":"{client.peer_ip}","host":{jbytes(ex.host)},'
            f'"method":{jbytes(ex.method)},"path":{jbytes(ex.path)},"status":{ex.status},'
            f'"bytes_in":{ex.body_sent},'
            f'"bytes_out":{ex.resp_bytes or (len(local) if local is not None else 0)},'
            f'"duration_ms":{duration:.3f},"app":{jstr(ex.app)},"color":{jstr(ex.color)},'
            f'"upstream":{"null" if pool is None else jstr(pool.upstream.url)},'
            f'"tls":{jstr(client.tls_version)},"error":{jstr(ex.error)}}}\n'
        )
        self.buf.append(line)
        self.size += len(line)
        if self.size >= FLUSH_BYTES:
            self.flush()
        elif self.timer is None and self.loop is not None:
            self.timer = self.loop.call_later(FLUSH_SECONDS, self.flush)

    # --- output --------------------------------------------------------------------------------

    def flush(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if not self.buf:
            return
        data = "".join(self.buf).encode("utf-8", "backslashreplace")
        self.lines += len(self.buf)
        self.buf.clear()
        self.size = 0
        if self.loop is not None:
            self.offset = time.time() - self.loop.time()  # follow wall clock steps
        if self.fd < 0 or self.broken:
            return
        view = memoryview(data)
        try:
            while view:
                n = os.write(self.fd, view)
                view = view[n:]
        except OSError as e:
            # Losing log lines must not stop the proxy; say so once.
            self.broken = True
            log.error("access log %s: write failed (%s); access logging stopped", self.path, e)
