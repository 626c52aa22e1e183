"""The edgeproxy process: listeners, control plane, background tasks, shutdown.

Shutdown order (like uvicorn's): stop accepting → ask each connection to
finish its current response → wait up to `shutdown_grace` → close the rest.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import signal
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from edgeproxy import compiled
from edgeproxy.config import Config, load_config, parse_address
from edgeproxy.errors import ConfigError, StartupError, TLSConfigError
from edgeproxy.fds import raise_nofile_limit
from edgeproxy.memory import TRIM_INTERVAL, heap_trimmer
from edgeproxy.policies import policy_problems
from edgeproxy.proxy.alpn import AlpnChooser
from edgeproxy.proxy.client import ClientConnection
from edgeproxy.proxy.context import ConnectionCaps, ProxyContext
from edgeproxy.proxy.upstream import as_protocol
from edgeproxy.tls.contexts import CertStore

log = logging.getLogger("edgeproxy.server")


class Server:
    def __init__(self, config: Config, *, config_path: Path | None = None) -> None:
        self.config = config
        self.config_path = config_path
        self.certs = CertStore(
            config.tls.certificates,
            session_tickets=config.tls.session_tickets,
            http2=config.listen.http2,
        )
        self.certs.h1_hosts = h1_hosts(config)
        self.ctx = ProxyContext(config)
        self.listeners: list[asyncio.Server] = []
        self.addresses: dict[str, tuple[str, int]] = {}
        self.tasks: set[asyncio.Task[Any]] = set()
        self.stopping = asyncio.Event()
        self._reload_lock = asyncio.Lock()
        self.plugins: list[Any] = []
        """Objects with async `start(server)` / `stop()` (control API, health, metrics)."""

    # -- tasks ----------------------------------------------------------------
    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        """Start a named background task and keep a reference (no orphans)."""
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self.tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task %s failed", task.get_name(), exc_info=task.exception())

    # -- start ----------------------------------------------------------------
    async def start(self) -> None:
        hot_path = compiled.state()
        if hot_path.stale:
            # It would serve the code as it was at the build, not as the sources say.
            raise StartupError(hot_path.summary)
        log.info("%s", hot_path.summary)
        self._raise_fd_limit()
        try:
            self.certs.load()
        except TLSConfigError as e:
            raise StartupError(f"tls.certificates: {e}") from e
        # Plugins first: the restored switch state must be in force before the
        # first request is accepted.
        started = []
        try:
            for plugin in self.plugins:
                await plugin.start(self)
                started.append(plugin)
            await self._start_listeners()
        except BaseException:
            # Leave nothing behind (control socket, drain supervisor) when we can't start.
            for srv in self.listeners:
                srv.close()
            for plugin in reversed(started):
                await plugin.stop()
            raise
        if self.config.tls.reload_poll_seconds and self.certs.certs:
            self.spawn(self._watch_certs(), "cert-watch")
        self.spawn(self._expire_reads(), "read-timeouts")
        trim = heap_trimmer()
        if trim is not None:
            self.spawn(self._trim_heap(trim), "heap-trim")

    def _raise_fd_limit(self) -> None:
        """Soft RLIMIT_NOFILE up to the hard limit, then the connection caps it allows, logged."""
        before, after = raise_nofile_limit()
        if after > before:
            log.info("file descriptors: limit raised from %d to %d (the hard limit)", before, after)
        else:
            log.info("file descriptors: limit %d (already the hard limit)", after)
        self.ctx.caps = ConnectionCaps(self.config, self.ctx.caps)  # fitted to the new limit
        caps = self.ctx.caps
        limits = self.config.limits
        if limits.max_connections > caps.max_total:
            log.warning(
                "limits.max_connections %d lowered to %d: %d descriptors, and some must stay "
                "free for upstreams and health checks (raise LimitNOFILE / ulimit -n)",
                limits.max_connections,
                caps.max_total,
                after,
            )
        log.info(
            "connection caps: %d in all (%d of %d descriptors held back for upstreams, health "
            "checks and the control socket), %s per client address",
            caps.max_total,
            after - caps.max_total,
            after,
            caps.max_per_client or "no cap",
        )

    async def _expire_reads(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(0.25)
            self.ctx.tracker.expire(loop.time())

    async def _trim_heap(self, trim: Any) -> None:
        """Keep RSS flat under connection churn (see edgeproxy/memory.py)."""
        while True:
            await asyncio.sleep(TRIM_INTERVAL)
            trim()

    async def _start_listeners(self) -> None:
        listen = self.config.listen
        if listen.https:
            _host, port = parse_address(listen.https)
            self.ctx.https_port_suffix = b"" if port == 443 else b":%d" % port
        if listen.http:
            await self._listen("http", listen.http, tls=False)
        if listen.https:
            await self._listen("https", listen.https, tls=True)
            if self.ctx.https_port_suffix:
                self.ctx.https_port_suffix = b":%d" % self.addresses["https"][1]

    async def _listen(self, name: str, address: str, *, tls: bool) -> None:
        host, port = parse_address(address)
        loop = asyncio.get_running_loop()
        local_port = port

        h2 = tls and self.config.listen.http2

        def factory() -> asyncio.Protocol:
            # self.ctx, read per connection: a config reload swaps it.
            if h2:  # HTTP/2 or HTTP/1.1, as the handshake's ALPN says (proxy/alpn.py)
                return as_protocol(AlpnChooser(self.ctx, local_port))
            return as_protocol(ClientConnection(self.ctx, tls=tls, local_port=local_port))

        try:
            srv = await loop.create_server(
                factory,
                host,
                port,
                ssl=self.certs.dispatch if tls else None,
                reuse_address=True,
                backlog=2048,
                ssl_handshake_timeout=10.0 if tls else None,
            )
        except OSError as e:
            hint = ""
            if e.errno == errno.EADDRINUSE:
                hint = ": address in use by another process (is nginx still running?)"
            elif e.errno == errno.EACCES:
                hint = ": permission denied (ports below 1024 need root or CAP_NET_BIND_SERVICE)"
            else:
                hint = f": {e.strerror or e}"
            raise StartupError(f"listen.{name}: could not bind {address}{hint}") from e
        sock = srv.sockets[0].getsockname()
        local_port = sock[1]
        self.addresses[name] = (sock[0], sock[1])
        self.listeners.append(srv)
        log.info("listening on %s://%s:%d", name, sock[0], sock[1])

    # -- certificates -----------------------------------------------------------
    async def reload_certs(self) -> dict[str, Any]:
        self.certs.specs = list(self.config.tls.certificates)
        self.certs.reload()  # raises TLSConfigError; the old contexts stay
        self.warn_expiring()
        return {"ok": True, "certificates": self.certs.views()}

    def warn_expiring(self) -> None:
        limit = self.config.tls.expiry_warning_days
        for c in self.certs.certs:
            days = c.days_left()
            if days < limit:
                log.warning(
                    "certificate %s (%s) expires in %.1f days; renew it (`certs renew`)",
                    c.cert_path,
                    ", ".join(c.names),
                    days,
                )

    async def _watch_certs(self) -> None:
        interval = self.config.tls.reload_poll_seconds
        checked: float | None = None
        loop = asyncio.get_running_loop()
        while True:
            if checked is None or loop.time() - checked > 3600:
                self.warn_expiring()
                checked = loop.time()
            await asyncio.sleep(interval)
            if self.certs.changed_on_disk():
                log.info("certificate files changed on disk; reloading")
                try:
                    await self.reload_certs()
                except TLSConfigError:
                    pass  # logged by reload(); retried on the next change

    # -- config reload ------------------------------------------------------------
    async def reload_config(self, *, force: bool = False) -> dict[str, Any]:
        """Apply the config file again without dropping a connection.

        Everything new is built and checked first (model, policies, certificates);
        then plugins move to it (switch states fitted to the new apps and colors,
        health checks run once for the new upstreams), and the context pointer is
        swapped. Listeners, the control socket and the state file stay: changing
        those needs a restart, and the reload says so. A reload that would drop a
        color in use is refused unless `force` (see `SwitchBoard.reconfigure`).
        Plugins may add entries to the reply (the switch changes, per app).
        """
        if self.config_path is None:
            raise ConfigError(["no config file to reload: edgeproxy was started without one"])
        async with self._reload_lock:
            new = load_config(self.config_path)
            problems = policy_problems(new)
            fixed = [
                k
                for k in ("listen", "control", "state_file")
                if getattr(new, k) != getattr(self.config, k)
            ]
            problems += [
                f"{self.config_path}: {k}: changed; restart edgeproxy to apply it "
                "(a reload keeps the listeners, the control socket and the state file)"
                for k in fixed
            ]
            if problems:
                raise ConfigError(problems)
            try:
                certs = self.certs.build(new.tls.certificates)
            except TLSConfigError as e:
                raise ConfigError([f"{self.config_path}: tls.certificates: {e}"]) from e
            old = self.ctx
            ctx = ProxyContext(new, previous=old)
            result: dict[str, Any] = {"ok": True, "sites": len(new.sites), "apps": sorted(new.apps)}
            for plugin in self.plugins:
                reconfigure = getattr(plugin, "reconfigure", None)
                if reconfigure is not None:
                    extra = await reconfigure(self, new, ctx, force=force)
                    if isinstance(extra, dict):
                        result |= extra
            self.certs.install(certs, new.tls.certificates)
            self.certs.h1_hosts = h1_hosts(new)
            self.certs.log_serving()
            self.config, self.ctx = new, ctx
            old.replaced_by = ctx  # for connections accepted before, handshaking now
            for conn in list(ctx.connections):
                conn.ctx = ctx  # their next request routes with the new config
            log.info(
                "config reloaded from %s: %d sites, apps %s",
                self.config_path,
                len(new.sites),
                ", ".join(new.apps) or "none",
            )
            return result

    # -- run / stop -------------------------------------------------------------
    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.stopping.set)
        loop.add_signal_handler(signal.SIGINT, self.stopping.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: self.spawn(self._sighup(), "sighup-reload"))
        loop.add_signal_handler(signal.SIGUSR1, self.reopen_logs)

    def reopen_logs(self) -> None:
        """SIGUSR1 reopens the log files (logrotate's convention): rename, signal, new file."""
        for plugin in self.plugins:
            reopen = getattr(plugin, "reopen_logs", None)
            if reopen is not None:
                reopen()

    async def _sighup(self) -> None:
        """SIGHUP reloads the config file (and with it the certificates), like nginx."""
        log.info("SIGHUP: reloading %s", self.config_path or "certificates")
        try:
            if self.config_path is not None:
                await self.reload_config()
            else:
                await self.reload_certs()
        except ConfigError as e:
            log.error("reload refused, the previous config stays: %s", "; ".join(e.problems))
        except TLSConfigError:
            pass  # logged by CertStore.reload; the previous certificates stay

    async def run(self) -> None:
        await self.start()
        self.install_signal_handlers()
        await self.stopping.wait()
        await self.shutdown()

    async def shutdown(self) -> None:
        log.info("shutting down: no new connections; finishing in-flight requests")
        for srv in self.listeners:
            srv.close()
        for conn in list(self.ctx.connections):
            conn.shutdown()
        deadline = asyncio.get_running_loop().time() + self.config.shutdown_grace
        while self.ctx.connections and asyncio.get_running_loop().time() < deadline:  # noqa: ASYNC110 - polling a set the protocols mutate
            await asyncio.sleep(0.05)
        if self.ctx.connections:
            log.warning(
                "closing %d connections still open at the deadline", len(self.ctx.connections)
            )
            for conn in list(self.ctx.connections):
                if conn.transport is not None:
                    conn.transport.abort()
        for plugin in reversed(self.plugins):
            await plugin.stop()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for pool in self.ctx.pools.values():
            pool.close_idle()
        for srv in self.listeners:
            await srv.wait_closed()
        log.info("stopped")


def h1_hosts(config: Config) -> frozenset[str]:
    """The host names of sites with `http2: false` (their TLS clients get HTTP/1.1)."""
    return frozenset(h for site in config.sites if not site.http2 for h in site.hosts)
