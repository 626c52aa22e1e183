"""The deploy lock: `fcntl.flock` on a file that also records its holder.

The kernel releases a flock when the process holding it dies, so a killed
deploy never leaves a stale lock; the holder record it wrote stays behind and
tells the next deploy that the previous one did not finish.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from switchctl.deploy.errors import LockHeld


@dataclass(frozen=True)
class Holder:
    pid: int
    host: str
    since: float
    command: str

    def describe(self) -> str:
        at = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.since))
        return f"pid {self.pid} on {self.host} since {at} ({self.command})"

    @classmethod
    def parse(cls, text: str) -> Holder | None:
        try:
            d: Any = json.loads(text)
            return cls(int(d["pid"]), str(d["host"]), float(d["since"]), str(d["command"]))
        except (ValueError, KeyError, TypeError):
            return None


class DeployLock:
    """`with DeployLock(path):` — fails at once (LockHeld) when another process holds it."""

    def __init__(self, path: Path, command: str | None = None) -> None:
        self.path = path
        self.command = command or " ".join(["switchctl", *sys.argv[1:]])
        self._fd: int | None = None
        self.previous: Holder | None = None
        """The record a previous holder left behind: it exited without releasing (killed)."""

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = Holder.parse(_read(fd))
            os.close(fd)
            raise LockHeld(
                holder.describe() if holder else f"unknown process ({self.path})"
            ) from None
        self.previous = Holder.parse(_read(fd))
        me = Holder(os.getpid(), socket.gethostname(), time.time(), self.command)
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me.__dict__).encode() + b"\n", 0)
        os.fsync(fd)
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        os.ftruncate(self._fd, 0)
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> DeployLock:
        self.acquire()
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


def read_holder(path: Path) -> tuple[Holder | None, bool]:
    """(recorded holder, whether a live process holds the lock) — for `switchctl doctor`."""
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return None, False
    try:
        holder = Holder.parse(_read(fd))
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return holder, True
        fcntl.flock(fd, fcntl.LOCK_UN)
        return holder, False
    finally:
        os.close(fd)


def _read(fd: int) -> str:
    return os.pread(fd, 4096, 0).decode(errors="replace")
