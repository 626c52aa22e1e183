"""Hand-over: a new edgeproxy process takes the listening sockets from the running one.

The same kernel sockets move (SCM_RIGHTS), so the accept queue is never closed
and no connection is refused. The conversation, on a one-shot unix
SOCK_SEQPACKET socket (one JSON message per packet):

1. new → old, on the control socket: `POST /v1/handover`. The old process
   makes the channel socket `<control socket>.handover-<id>` (mode 0600) and
   answers its path and the hand-over id.
2. new connects. old freezes its switch state (a change is refused with
   "retry in a moment" until the hand-over ends) and sends `offer`: its
   listening sockets (as file descriptors) and the switch state.
3. new starts with them: its own config (already validated), certificates,
   switch state, health checks, the control socket bound at a temporary path;
   then sends `ready` (or `refuse` with why, and exits non-zero).
4. old answers `go`; new moves its control socket into place, starts
   accepting and sends `accepting`.
5. old steps back: stops accepting, answers `Connection: close` on the next
   response of each keep-alive connection, lets tunnels run until
   `shutdown_grace` and then closes them with a close frame, and exits. Until
   it exits it reports what it still has in flight per color (`inflight`), so
   the new process does not end a drain the old one is still serving.

If the new process refuses, dies or stalls before `accepting`, the old one
unfreezes, takes its control socket back if it was moved, and keeps serving:
it never stopped accepting. Both processes log every step with the same id.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import aiohttp

from edgeproxy import __version__
from edgeproxy.control.peercred import peer_of
from edgeproxy.errors import EdgeproxyError
from edgeproxy.switching.state import AppState, from_json, to_json

log = logging.getLogger("edgeproxy.handover")

READY_TIMEOUT = 60.0
"""Seconds the old process waits for the new one to start (certificates, health checks)."""
STEP_TIMEOUT = 10.0
"""Seconds each side waits for any other answer."""
REPORT_INTERVAL = 0.25
"""Seconds between the old process's in-flight reports while it steps back."""
MAX_MESSAGE = 1 << 20
MAX_FDS = 64

Counts = dict[tuple[str, str], tuple[int, int]]
"""(app, color) → (requests in flight, open tunnels)."""


class HandoverError(EdgeproxyError):
    """A hand-over could not happen; the running process keeps serving. The message says why."""

    status = 409

    def __init__(self, message: str, *, nobody: bool = False) -> None:
        super().__init__(message)
        self.nobody = nobody
        """Nothing listens on the control socket: there is no process to take over from."""


# --- the switch state on the wire (one place for the state module's JSON functions) ----------


def states_to_wire(states: Mapping[str, AppState]) -> str:
    return to_json(states)


def states_from_wire(text: str) -> dict[str, AppState]:
    return from_json(text)


# --- messages ----------------------------------------------------------------------------


def _send(sock: socket.socket, kind: str, fds: list[int] | None = None, **fields: Any) -> None:
    data = json.dumps({"kind": kind, **fields}).encode()
    if fds:
        socket.send_fds(sock, [data], fds)
    else:
        sock.send(data)


async def _recv(sock: socket.socket, timeout: float | None) -> tuple[dict[str, Any], list[int]]:  # noqa: ASYNC109 - each step has its own deadline
    """The next message and the descriptors that came with it; HandoverError on EOF/timeout."""
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()

    def readable() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(sock.fileno(), readable)
    try:
        async with asyncio.timeout(timeout):
            await ready
    except TimeoutError:
        raise HandoverError(f"no answer within {timeout:.0f} s") from None
    finally:
        loop.remove_reader(sock.fileno())
    try:
        data, fds, _flags, _addr = socket.recv_fds(sock, MAX_MESSAGE, MAX_FDS)
    except OSError as e:
        raise HandoverError(f"the other process went away ({e.strerror or e})") from e
    if not data:
        for fd in fds:
            os.close(fd)
        raise HandoverError("the other process went away (the channel closed)")
    try:
        message = json.loads(data)
        kind = message["kind"]
    except (ValueError, KeyError, TypeError) as e:
        for fd in fds:
            os.close(fd)
        raise HandoverError(f"unreadable hand-over message: {e}") from e
    if not isinstance(kind, str):
        raise HandoverError("unreadable hand-over message: no kind")
    return message, fds


async def _expect(sock: socket.socket, kind: str, timeout: float) -> dict[str, Any]:  # noqa: ASYNC109
    message, fds = await _recv(sock, timeout)
    for fd in fds:
        os.close(fd)
    if message["kind"] == "refuse":
        raise HandoverError(f"refused: {message.get('reason', 'no reason given')}")
    if message["kind"] != kind:
        raise HandoverError(f"expected {kind!r}, got {message['kind']!r}")
    return message


def _counts_to_wire(counts: Counts) -> list[list[Any]]:
    return [[app, color, r, t] for (app, color), (r, t) in sorted(counts.items()) if r or t]


def _counts_from_wire(rows: Any) -> Counts:
    out: Counts = {}
    for row in rows if isinstance(rows, list) else []:
        if isinstance(row, list) and len(row) == 4:
            out[(str(row[0]), str(row[1]))] = (int(row[2]), int(row[3]))
    return out


# --- who serves --------------------------------------------------------------------------


@dataclass
class ProcessInfo:
    """What `GET /v1/process` and `switchctl status` show: which process serves."""

    pid: int = field(default_factory=os.getpid)
    version: str = __version__
    started_at: float = field(default_factory=time.time)
    config_sha256: str | None = None
    """Of the config file as last loaded (start or reload): a deploy compares it with the disk."""
    handover: dict[str, Any] | None = None
    """{"id", "from_pid", "from_version", "at"} when this process took over from another."""
    stepping_back: dict[str, Any] | None = None
    """{"id", "to_pid", "at"} once another process took over from this one."""

    def view(self) -> dict[str, Any]:
        return {
            "pid": self.pid,
            "version": self.version,
            "started_at": self.started_at,
            "config_sha256": self.config_sha256,
            "serving": self.stepping_back is None,
            "took_over": self.handover,
            "stepping_back": self.stepping_back,
        }


def file_sha256(path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def channel_path(control_socket: Path, handover_id: str) -> Path:
    return control_socket.with_name(f"{control_socket.name}.handover-{handover_id}")


def temporary_control_path(control_socket: Path, handover_id: str) -> Path:
    """Where the new process binds its control socket until it takes over."""
    return control_socket.with_name(f"{control_socket.name}.new-{handover_id}")


# --- the new process -------------------------------------------------------------------------


class Taker:
    """The new process's side: what it received, and the steps it still owes the old one."""

    def __init__(self, channel: socket.socket, offer: dict[str, Any], fds: list[int]) -> None:
        self.channel = channel
        self.id: str = str(offer["id"])
        self.from_pid = int(offer["pid"])
        self.from_version = str(offer["version"])
        self.sockets: dict[str, list[socket.socket]] = {}
        """Listener name → the old process's listening sockets, when its address is unchanged."""
        self.addresses: dict[str, str] = {}
        """Listener name → the address the old process's config gave it."""
        fd_iter = iter(fds)
        for entry in offer["listeners"]:
            name, address, count = str(entry["name"]), str(entry["address"]), int(entry["count"])
            self.addresses[name] = address
            self.sockets[name] = [socket.socket(fileno=next(fd_iter)) for _ in range(count)]
        self.states = states_from_wire(str(offer["state"]))
        self.predecessor: Counts = _counts_from_wire(offer.get("inflight"))
        """What the old process still has in flight, per (app, color), until it exits
        (from the offer on: a drain it serves must not end here before the first report)."""
        self.predecessor_gone = asyncio.Event()
        self._follow: asyncio.Task[None] | None = None

    @classmethod
    async def connect(cls, control_socket: Path) -> Taker:
        """Ask the process on `control_socket` for its listeners; HandoverError if it can't."""
        try:
            connector = aiohttp.UnixConnector(path=str(control_socket))
            async with (
                aiohttp.ClientSession(connector=connector) as session,
                session.post(
                    "http://edgeproxy/v1/handover",
                    json={"pid": os.getpid(), "version": __version__},
                    timeout=aiohttp.ClientTimeout(total=STEP_TIMEOUT),
                ) as resp,
            ):
                body = await resp.json(content_type=None)
        except (aiohttp.ClientError, OSError, TimeoutError) as e:
            raise HandoverError(
                f"no edgeproxy answers on the control socket {control_socket} ({e}): "
                "nothing to take over; start without --takeover",
                nobody=isinstance(e, aiohttp.ClientConnectorError),
            ) from e
        except ValueError as e:
            raise HandoverError(f"the running edgeproxy answered something unreadable: {e}") from e
        if resp.status == 404:
            raise HandoverError(
                "the running edgeproxy is older than the hand-over (no POST /v1/handover): "
                "restart it this once the usual way"
            )
        if resp.status != 200 or not isinstance(body, dict):
            why = body.get("error") if isinstance(body, dict) else body
            raise HandoverError(
                f"the running edgeproxy refused the hand-over: {why} (HTTP {resp.status})"
            )
        channel = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        channel.setblocking(False)
        try:
            await asyncio.get_running_loop().sock_connect(channel, str(body["socket"]))
            offer, fds = await _recv(channel, STEP_TIMEOUT)
            if offer["kind"] != "offer":
                raise HandoverError(f"expected an offer, got {offer['kind']!r}")
            taker = cls(channel, offer, fds)
        except (OSError, HandoverError, KeyError, ValueError, TypeError) as e:
            channel.close()
            raise HandoverError(f"hand-over {body.get('id')}: {e}") from e
        log.info(
            "hand-over %s: received %d listening sockets (%s) and the switch state of %d apps "
            "from pid %d (version %s)",
            taker.id,
            sum(len(s) for s in taker.sockets.values()),
            ", ".join(f"{n} {a}" for n, a in taker.addresses.items()),
            len(taker.states),
            taker.from_pid,
            taker.from_version,
        )
        return taker

    def take_sockets(self, name: str, address: str) -> list[socket.socket] | None:
        """The old process's sockets for listener `name` if it listens on `address`, else None."""
        if self.addresses.get(name) != address:
            return None
        return self.sockets.pop(name, None)

    def refuse(self, reason: str) -> None:
        """Tell the old process why this one cannot take over (it keeps serving)."""
        with contextlib.suppress(OSError):
            _send(self.channel, "refuse", reason=reason)
        self.close()

    async def commit(self, go_live: Callable[[], Awaitable[None]]) -> None:
        """`ready` → wait for `go` → `go_live()` (control socket, accept) → `accepting`."""
        try:
            _send(self.channel, "ready", pid=os.getpid(), version=__version__)
            await _expect(self.channel, "go", STEP_TIMEOUT)
        except (OSError, HandoverError) as e:
            self.close()
            raise HandoverError(f"hand-over {self.id}: the old process did not answer: {e}") from e
        await go_live()
        try:
            _send(self.channel, "accepting", pid=os.getpid())
        except OSError as e:
            raise HandoverError(
                f"hand-over {self.id}: the old process gave up before this one accepted ({e})"
            ) from e
        self._follow = asyncio.get_running_loop().create_task(
            self._read_reports(), name=f"handover-{self.id}-follow"
        )

    async def _read_reports(self) -> None:
        try:
            while True:
                message, fds = await _recv(self.channel, None)
                for fd in fds:
                    os.close(fd)
                if message["kind"] == "inflight":
                    self.predecessor = _counts_from_wire(message.get("counts"))
        except HandoverError:
            pass
        finally:
            self.predecessor = {}
            self.predecessor_gone.set()
            log.info("hand-over %s: pid %d has exited", self.id, self.from_pid)
            self.close()

    def close(self) -> None:
        for socks in self.sockets.values():
            for s in socks:
                s.close()
        self.sockets.clear()
        self.channel.close()

    async def stop(self) -> None:
        task, self._follow = self._follow, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.close()


# --- the running process -----------------------------------------------------------------------


def frozen_because(handover_id: str) -> str:
    """Why the board refuses changes while its state moves to a new process."""
    return (
        f"edgeproxy is handing over to a new process (hand-over {handover_id}); "
        "nothing was changed: retry in a few seconds"
    )


class GiverHooks(Protocol):
    """What the giving side needs from the running process (app.py wires it)."""

    def listeners(self) -> list[tuple[str, str, list[socket.socket]]]:
        """(name, configured address, listening sockets) of each listener."""
        ...

    def states(self) -> Mapping[str, AppState]: ...

    async def freeze(self, handover_id: str) -> None:
        """Refuse switch changes (and stop finishing drains) until thaw or exit."""
        ...

    async def thaw(self) -> None: ...

    async def reclaim_control_socket(self) -> None:
        """The new process died after moving the control socket: take the path back."""
        ...

    def step_back(self, handover_id: str, to_pid: int) -> None:
        """The new process accepts: stop accepting and finish (Server.shutdown)."""
        ...

    def inflight(self) -> Counts:
        """In flight per (app, color) in this process, its predecessor's included."""
        ...


class Giver:
    """The running process's side: one hand-over at a time."""

    def __init__(self, control_socket: Path, hooks: GiverHooks, spawn: Callable[..., Any]) -> None:
        self.control_socket = control_socket
        self.hooks = hooks
        self.spawn = spawn
        """Server.spawn: a named task with a reference."""
        self.busy: str | None = None
        self.channel: socket.socket | None = None

    def begin(self, pid: int, version: str) -> dict[str, Any]:
        """Open the channel for the process `pid`; its conversation runs as a task."""
        if self.busy is not None:
            raise HandoverError(f"hand-over {self.busy} is under way; try again when it ends")
        handover_id = secrets.token_hex(4)
        path = channel_path(self.control_socket, handover_id)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            path.unlink(missing_ok=True)
            old_umask = os.umask(0o177)  # the socket file is born 0600
            try:
                listener.bind(str(path))
            finally:
                os.umask(old_umask)
            listener.listen(1)
            listener.setblocking(False)
        except OSError as e:
            listener.close()
            raise HandoverError(f"cannot open the hand-over socket {path}: {e.strerror}") from e
        self.busy = handover_id
        log.info(
            "hand-over %s: pid %d (version %s) asks to take over; waiting on %s",
            handover_id,
            pid,
            version,
            path,
        )
        self.spawn(self._run(handover_id, listener, path, pid), f"handover-{handover_id}")
        return {"id": handover_id, "socket": str(path), "pid": os.getpid(), "version": __version__}

    async def _run(self, hid: str, listener: socket.socket, path: Path, pid: int) -> None:
        loop = asyncio.get_running_loop()
        frozen = False
        stage = "connect"
        try:
            try:
                async with asyncio.timeout(STEP_TIMEOUT):
                    channel, _ = await loop.sock_accept(listener)
            except TimeoutError:
                raise HandoverError(
                    f"pid {pid} did not connect within {STEP_TIMEOUT:.0f} s"
                ) from None
            finally:
                listener.close()
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
            self.channel = channel
            channel.setblocking(False)
            uid = peer_of(channel).uid
            if uid not in (0, os.getuid()):
                raise HandoverError(f"uid {uid} may not take over (only root or uid {os.getuid()})")
            await self.hooks.freeze(hid)
            frozen = True
            listeners = self.hooks.listeners()
            fds = [s.fileno() for _, _, socks in listeners for s in socks]
            _send(
                channel,
                "offer",
                fds,
                id=hid,
                pid=os.getpid(),
                version=__version__,
                listeners=[
                    {"name": n, "address": a, "count": len(socks)} for n, a, socks in listeners
                ],
                state=states_to_wire(self.hooks.states()),
                inflight=_counts_to_wire(self.hooks.inflight()),
            )
            log.info(
                "hand-over %s: sent %d listening sockets and the switch state (frozen until "
                "the hand-over ends); waiting for pid %d to start",
                hid,
                len(fds),
                pid,
            )
            stage = "start"
            ready = await _expect(channel, "ready", READY_TIMEOUT)
            stage = "go"
            _send(channel, "go")
            await _expect(channel, "accepting", STEP_TIMEOUT)
        except (HandoverError, OSError) as e:
            await self._failed(hid, pid, stage, e, frozen)
            return
        log.info(
            "hand-over %s: pid %d (version %s) accepts now; this process (pid %d, version %s) "
            "steps back",
            hid,
            pid,
            ready.get("version"),
            os.getpid(),
            __version__,
        )
        self.hooks.step_back(hid, pid)
        await self._report(channel)

    async def _failed(
        self, hid: str, pid: int, stage: str, error: BaseException, frozen: bool
    ) -> None:
        if self.channel is not None:
            self.channel.close()
            self.channel = None
        if stage == "go":
            await self.hooks.reclaim_control_socket()
        if frozen:
            await self.hooks.thaw()
        self.busy = None
        log.error(
            "hand-over %s: failed (%s: %s); this process (pid %d) keeps serving",
            hid,
            {"connect": "pid %d never connected", "start": "pid %d did not start",
             "go": "pid %d did not take over"}[stage] % pid,
            error,
            os.getpid(),
        )  # fmt: skip

    async def _report(self, channel: socket.socket) -> None:
        """Until this process exits: what it still has in flight, for the new one's drains."""
        try:
            while True:
                _send(channel, "inflight", counts=_counts_to_wire(self.hooks.inflight()))
                await asyncio.sleep(REPORT_INTERVAL)
        except OSError:
            pass  # the new process is gone; nothing to report to

    def close(self) -> None:
        if self.channel is not None:
            self.channel.close()
            self.channel = None
