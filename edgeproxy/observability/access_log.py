"""The access log: one JSON line per finished request, to stdout or a file.

Lines are buffered and written at most every 0.2 s (or per 64 KiB), not one
syscall per request. Only client-controlled strings go through `json.dumps`,
and only when they hold a character that needs escaping. `sample: 0.1` keeps a
random tenth of the lines; `enabled: false` takes the writer off the hot path
entirely. Errors and state changes are not here: they go to the structured log
on stderr.

With a file `path`, SIGUSR1 reopens it (logrotate's convention, as nginx does):
rotate by renaming the file, then `kill -USR1`; lines buffered before the
signal go to the renamed file, every later line to a new file at `path`.

Fields: time (UTC, when the response ended), request_id, client, host, method,
path (without the query string), status, bytes_in (request body bytes sent
upstream), bytes_out (response body bytes), duration_ms, app, color, upstream,
panic (only present, as true, on a request routed to a color with no fit
upstream: `apps.*.when_all_down: route`), tls (protocol version, or null), and
error (why edgeproxy ended the exchange itself, or null).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from edgeproxy.config import AccessLog as AccessLogConfig
from edgeproxy.errors import StartupError
from edgeproxy.proxy.h2stream import H2Stream

if TYPE_CHECKING:
    from edgeproxy.proxy.exchange import Exchange
    from edgeproxy.proxy.upstream import UpstreamPool

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


_NEEDS_ESCAPE = re.compile(rb'[\x00-\x1f"\\\x7f-\xff]').search


def jbytes(value: bytes) -> bytes:
    """Raw request bytes as a JSON string (decoded as UTF-8, undecodable bytes escaped)."""
    if _NEEDS_ESCAPE(value) is None:
        return b'"%s"' % value
    return json.dumps(value.decode("utf-8", "backslashreplace")).encode()


def _cached(cache: dict[Any, bytes], key: Any, make: Callable[[], str]) -> bytes:
    out = cache.get(key)
    if out is None:
        out = cache[key] = make().encode()
    return out


LINE = (
    b'{"time":"%s.%03dZ","request_id":%s,"client":"%s","host":%s,"method":%s,"path":%s,'
    b'"status":%d,"bytes_in":%d,"bytes_out":%d,"duration_ms":%.3f,%s,"tls":%s,"proto":"%s","error":%s}\n'
)


class AccessLogWriter:
    def __init__(self, config: AccessLogConfig) -> None:
        self.path = config.path
        self.sample = config.sample
        self.fd = -1
        self.buf: list[bytes] = []
        self.size = 0
        self.timer: asyncio.TimerHandle | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.offset = 0.0
        """Wall clock minus loop clock."""
        self._sec = -1
        self._prefix = b""
        self._where: dict[tuple[str | None, str | None, UpstreamPool | None, bool], bytes] = {}
        self._tls: dict[str | None, bytes] = {}
        self._methods = {
            m: b'"%s"' % m
            for m in (b"GET", b"HEAD", b"POST", b"PUT", b"PATCH", b"DELETE", b"OPTIONS")
        }
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

    def reopen(self) -> None:
        """Flush to the current file, then append to a new one at `path` (after a rename)."""
        if self.path == "-" or self.fd < 0:
            return
        self.flush()
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        except OSError as e:
            log.error(
                "access log %s: cannot reopen it (%s); still writing to the old file",
                self.path,
                e.strerror,
            )
            return
        old, self.fd = self.fd, fd
        self.broken = False
        if old > 2:
            os.close(old)
        log.info("access log %s reopened", self.path)

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
        local = ex.local
        finished = ex.finished_at
        wall = finished + self.offset
        sec = int(wall)
        if sec != self._sec:
            self._sec = sec
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)).encode()
        started = ex.started_at
        # Strings from the config or the socket are cached as JSON; only what the client
        # sent (request id, host, path) is checked for characters to escape, per line.
        where = self._where
        key = (ex.app, ex.color, ex.pool, ex.panic)
        target = where.get(key)
        if target is None:
            target = where[key] = self._target(key)
        method = self._methods.get(ex.method)
        if method is None:
            method = jbytes(ex.method)
        line = LINE % (
            self._prefix,
            int((wall - sec) * 1000),
            jbytes(ex.request_id),
            ex.client_ip_b,
            jbytes(ex.host),
            method,
            jbytes(ex.path),
            ex.status,
            ex.body_sent,
            ex.resp_bytes or (len(local) if local is not None else 0),
            (finished - started) * 1000 if started else 0.0,
            target,
            _cached(self._tls, client.tls_version, lambda: jstr(client.tls_version)),
            b"h2" if type(client) is H2Stream else b"http/1.1",
            b"null" if ex.error is None else jstr(ex.error).encode(),
        )
        self.buf.append(line)
        self.size += len(line)
        if self.size >= FLUSH_BYTES:
            self.flush()
        elif self.timer is None and self.loop is not None:
            self.timer = self.loop.call_later(FLUSH_SECONDS, self.flush)

    @staticmethod
    def _target(key: tuple[str | None, str | None, UpstreamPool | None, bool]) -> bytes:
        app, color, pool, panic = key
        upstream = None if pool is None else pool.upstream.url
        where = f'"app":{jstr(app)},"color":{jstr(color)},"upstream":{jstr(upstream)}'
        return (where + ',"panic":true' if panic else where).encode()

    # --- output --------------------------------------------------------------------------------

    def flush(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if not self.buf:
            return
        data = b"".join(self.buf)
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
