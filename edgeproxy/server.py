"""The edgeproxy process: listeners, control plane, background tasks, shutdown.

Shutdown order (like uvicorn's): stop accepting → ask each connection to
finish its current response → wait up to `shutdown_grace` → close the rest.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from edgeproxy import compiled
from edgeproxy.config import Config, load_config, parse_address
from edgeproxy.errors import ConfigError, StartupError, TLSConfigError
from edgeproxy.fds import raise_nofile_limit
from edgeproxy.handover import Counts, HandoverError, ProcessInfo, Taker, file_sha256
from edgeproxy.listeners import Bound, bind_listeners
from edgeproxy.memory import TRIM_INTERVAL, heap_trimmer, settle_gc
from edgeproxy.policies import policy_problems
from edgeproxy.proxy.alpn import AlpnChooser
from edgeproxy.proxy.client import ClientConnection
from edgeproxy.proxy.context import ConnectionCaps, ProxyContext
from edgeproxy.proxy.tunnel import CLOSE_LINGER
from edgeproxy.proxy.upstream import as_protocol
from edgeproxy.supervisor import serving
from edgeproxy.tls.contexts import CertStore

log = logging.getLogger("edgeproxy.server")


class Server:
    def __init__(
        self, config: Config, *, config_path: Path | None = None, bound: Bound | None = None
    ) -> None:
        """`bound`: listeners the caller bound already (`edgeproxy serve` binds them before
        importing the rest: connections queue from then on instead of being refused)."""
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
        self.bound: Bound = list(bound or [])
        """(name, configured address, listening sockets): bound before anything can wait."""
        self.addresses: dict[str, tuple[str, int]] = {}
        self.info = ProcessInfo(config_sha256=file_sha256(config_path))
        self.taker: Taker | None = None
        """Set while this process takes over from a running one (`serve --takeover`)."""
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
        # Bound first (the kernel queues connections from here on); plugins next:
        # the restored switch state must be in force before the first request is
        # accepted. A process taking over accepts only once the old one says go.
        self._bind_listeners()
        started = []
        try:
            for plugin in self.plugins:
                await plugin.start(self)
                started.append(plugin)
            if self.taker is None:
                await self._start_listeners()
        except BaseException:
            # Leave nothing behind (control socket, drain supervisor) when we can't start.
            for srv in self.listeners:
                srv.close()
            for _name, _address, socks in self.bound:
                for sock in socks:
                    sock.close()
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
        """Serve every bound listener (a process taking over: once the old one says go)."""
        for name, _address, socks in self.bound:
            for sock in socks:
                await self._serve(name, sock, tls=name == "https")
        if self.ctx.https_port_suffix and "https" in self.addresses:
            self.ctx.https_port_suffix = b":%d" % self.addresses["https"][1]

    def _bind_listeners(self) -> None:
        """Bind and listen() each configured address (or take the old process's sockets).

        Nothing that can wait comes before this: from here on the kernel queues
        new connections, and they are answered as soon as serving starts.
        """
        listen = self.config.listen
        if listen.https:
            _host, port = parse_address(listen.https)
            self.ctx.https_port_suffix = b"" if port == 443 else b":%d" % port
        if self.bound:
            return  # bound by `edgeproxy serve` before the heavy imports
        taker = self.taker
        self.bound = bind_listeners(self.config, None if taker is None else taker.take_sockets)

    async def _serve(self, name: str, sock: socket.socket, *, tls: bool) -> None:
        loop = asyncio.get_running_loop()
        address = sock.getsockname()
        local_port = address[1]

        h2 = tls and self.config.listen.http2

        def factory() -> asyncio.Protocol:
            # self.ctx, read per connection: a config reload swaps it.
            if h2:  # HTTP/2 or HTTP/1.1, as the handshake's ALPN says (proxy/alpn.py)
                return as_protocol(AlpnChooser(self.ctx, local_port))
            return as_protocol(ClientConnection(self.ctx, tls=tls, local_port=local_port))

        srv = await loop.create_server(
            factory,
            sock=sock,
            ssl=self.certs.dispatch if tls else None,
            backlog=2048,
            ssl_handshake_timeout=10.0 if tls else None,
        )
        self.addresses[name] = (address[0], address[1])
        self.listeners.append(srv)
        log.info("listening on %s://%s:%d", name, address[0], address[1])

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
            loaded = file_sha256(self.config_path)
            new = load_config(self.config_path)
            problems = policy_problems(new)
            fixed = [
                k
                for k in ("listen", "control", "state_file", "state_backend", "node")
                if getattr(new, k) != getattr(self.config, k)
            ]
            problems += [
                f"{self.config_path}: {k}: changed; restart edgeproxy to apply it "
                "(a reload keeps the listeners, the control socket, the state file and the shared store)"
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
            self.info.config_sha256 = loaded
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

    async def run(self, *, takeover: bool = False, start_if_alone: bool = False) -> None:
        """Serve until SIGTERM/SIGINT or until another process takes over.

        `takeover`: take the listening sockets and switch state of the edgeproxy
        running with this config's control socket (edgeproxy/handover.py).
        Raises HandoverError when it cannot; the running one keeps serving.
        `start_if_alone`: when nothing listens on the control socket, start
        normally (a container restarted with its takeover command after a crash).
        """
        if takeover:
            try:
                await self._take_over()
            except HandoverError as e:
                if not (start_if_alone and e.nobody and self.taker is None):
                    raise
                log.info("nothing to take over (%s); starting on our own", e)
                await self.start()
        else:
            await self.start()
        # The process's setting, so here and not in start(): a test runs many servers
        # in one interpreter, whose garbage and heap are not a server's to collect or freeze.
        settle_gc()
        handover = self.info.handover
        serving(self.info.pid, None if handover is None else str(handover["id"]))
        self.install_signal_handlers()
        await self.stopping.wait()
        await self.shutdown()

    async def _take_over(self) -> None:
        taker = self.taker = await Taker.connect(self.config.control.socket)
        try:
            await self.start()
        except BaseException as e:
            reason = "; ".join(e.problems) if isinstance(e, ConfigError) else str(e)
            taker.refuse(reason or type(e).__name__)
            raise
        self.info.handover = {
            "id": taker.id,
            "from_pid": taker.from_pid,
            "from_version": taker.from_version,
            "at": time.time(),
        }

        async def go_live() -> None:
            for plugin in self.plugins:
                commit = getattr(plugin, "commit_takeover", None)
                if commit is not None:
                    await commit(self)
            await self._start_listeners()

        try:
            await taker.commit(go_live)
        except HandoverError:
            await self._abandon_takeover()
            raise
        log.info(
            "hand-over %s: this process (pid %d, version %s) accepts now; pid %d (version %s) "
            "steps back",
            taker.id,
            self.info.pid,
            self.info.version,
            taker.from_pid,
            taker.from_version,
        )

    async def _abandon_takeover(self) -> None:
        for srv in self.listeners:
            srv.close()
        for plugin in reversed(self.plugins):
            await plugin.stop()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    def inflight(self, app: str, color: str) -> tuple[int, int]:
        """Requests and tunnels in flight for a color: ours, and our predecessor's while it
        steps back (a drain it still serves must not end here)."""
        requests, tunnels = self.ctx.tracker.counts(app, color)
        if self.taker is not None:
            r, t = self.taker.predecessor.get((app, color), (0, 0))
            requests, tunnels = requests + r, tunnels + t
        return requests, tunnels

    def inflight_all(self) -> Counts:
        keys = set(self.ctx.tracker.live)
        if self.taker is not None:
            keys |= set(self.taker.predecessor)
        return {key: self.inflight(*key) for key in keys}

    def step_back(self, handover_id: str, to_pid: int) -> None:
        """Another process accepts on our sockets now: stop accepting, finish, exit."""
        self.info.stepping_back = {"id": handover_id, "to_pid": to_pid, "at": time.time()}
        # HTTP/1.1 reads the flag per request (its next response says Connection: close);
        # a connection kind that must act now (HTTP/2: GOAWAY) has a `step_back()` of its own.
        self.ctx.stepping_back = True
        for srv in self.listeners:
            srv.close()
        for conn in list(self.ctx.connections):
            step_back = getattr(conn, "step_back", None)
            if step_back is not None:
                step_back()
        self.stopping.set()

    async def shutdown(self) -> None:
        loop = asyncio.get_running_loop()
        handed = self.info.stepping_back
        if handed is None:
            log.info("shutting down: no new connections; finishing in-flight requests")
        else:
            log.info(
                "hand-over %s: stepping back: finishing in-flight requests; keep-alive "
                "connections close after their next response; tunnels run until the grace "
                "(%.0f s)",
                handed["id"],
                self.config.shutdown_grace,
            )
        for srv in self.listeners:
            srv.close()
        if handed is None:
            for conn in list(self.ctx.connections):
                conn.shutdown()
        deadline = loop.time() + self.config.shutdown_grace
        while self._busy(handed is not None) and loop.time() < deadline:  # noqa: ASYNC110 - polling a set the protocols mutate
            await asyncio.sleep(0.05)
        if handed is not None and self.ctx.connections:
            # The grace is over: tunnels get their close frame, idle connections close.
            log.info(
                "hand-over %s: grace over: closing %d connections (tunnels with a close frame)",
                handed["id"],
                len(self.ctx.connections),
            )
            for conn in list(self.ctx.connections):
                conn.shutdown()
            linger = loop.time() + CLOSE_LINGER
            while self.ctx.connections and loop.time() < linger:  # noqa: ASYNC110
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
        if self.taker is not None:
            await self.taker.stop()
        for pool in self.ctx.pools.values():
            pool.close_idle()
        for srv in self.listeners:
            await srv.wait_closed()
        if handed is not None:
            log.info("hand-over %s: done; pid %d serves", handed["id"], handed["to_pid"])
        log.info("stopped")

    def _busy(self, handed: bool) -> bool:
        """Something to wait for: connections; after a hand-over also a predecessor that
        still reports in-flight requests (our successor counts them through us)."""
        if self.ctx.connections:
            return True
        return handed and self.taker is not None and not self.taker.predecessor_gone.is_set()


def h1_hosts(config: Config) -> frozenset[str]:
    """The host names of sites with `http2: false` (their TLS clients get HTTP/1.1)."""
    return frozenset(h for site in config.sites if not site.http2 for h in site.hosts)
