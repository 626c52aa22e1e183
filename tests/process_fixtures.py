"""edgeproxy as a subprocess (`edgeproxy serve`), for what only a real process shows.

Memory (VmRSS), open descriptors (/proc/PID/fd), its RLIMIT_NOFILE, and what
SIGTERM does. `edge_process(config_dict)` writes the config, starts
`python -m edgeproxy serve` with text logs in a file, waits until every
listener is up, and stops it (SIGTERM, then SIGKILL) after the test.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

__all__ = ["EdgeProcess", "edge_process"]

LISTENING = re.compile(r"listening on (https?)://[^ ]*:(\d+)")


@dataclass
class EdgeProcess:
    popen: subprocess.Popen[bytes]
    log_path: Path
    ports: dict[str, int]
    control_socket: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def http_port(self) -> int:
        return self.ports["http"]

    @property
    def https_port(self) -> int:
        return self.ports["https"]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def rss_kib(self) -> int:
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise AssertionError(f"no VmRSS for pid {self.pid}")

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def sockets(self) -> int:
        n = 0
        for fd in os.listdir(f"/proc/{self.pid}/fd"):
            with contextlib.suppress(OSError):
                n += os.readlink(f"/proc/{self.pid}/fd/{fd}").startswith("socket:")
        return n

    def nofile(self) -> tuple[int, int]:
        """The process's RLIMIT_NOFILE (soft, hard), from /proc/PID/limits."""
        with open(f"/proc/{self.pid}/limits") as f:
            for line in f:
                if line.startswith("Max open files"):
                    soft, hard = line.split()[3:5]
                    return int(soft), int(hard)
        raise AssertionError("no 'Max open files' line")

    def wait_fds(self, at_most: int, timeout: float) -> int:
        """Wait until the process holds at most `at_most` descriptors; return the count."""
        deadline = time.monotonic() + timeout
        n = self.fds()
        while n > at_most and time.monotonic() < deadline:
            time.sleep(0.1)
            n = self.fds()
        return n

    def terminate(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)


@pytest.fixture
def edge_process(tmp_path: Path) -> Iterator[Callable[..., EdgeProcess]]:
    started: list[EdgeProcess] = []

    def start(
        conf: dict[str, Any], *, nofile: tuple[int, int] | None = None, timeout: float = 20
    ) -> EdgeProcess:
        n = len(started)
        conf = dict(conf)
        conf.setdefault("listen", {"http": "127.0.0.1:0"})
        conf.setdefault("control", {"socket": str(tmp_path / f"ctl{n}.sock")})
        conf.setdefault("state_file", str(tmp_path / f"state{n}.json"))
        conf.setdefault("access_log", {"enabled": False})
        path = tmp_path / f"edgeproxy{n}.yml"
        path.write_text(yaml.safe_dump(conf))
        log_path = tmp_path / f"edgeproxy{n}.log"

        argv = [sys.executable, "-m", "edgeproxy", "serve", "--config", str(path)]
        argv += ["--log-format", "text"]
        if nofile is not None:
            # Set the limit in the child itself, then exec (no preexec_fn: the tests run threads).
            set_limit = (
                "import os, resource, sys; "
                f"resource.setrlimit(resource.RLIMIT_NOFILE, {nofile!r}); "
                "os.execv(sys.argv[1], sys.argv[1:])"
            )
            argv = [sys.executable, "-c", set_limit, *argv]
        with open(log_path, "wb") as out:
            popen = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        proc = EdgeProcess(popen, log_path, {}, Path(conf["control"]["socket"]))
        started.append(proc)
        wanted = {k for k, v in conf["listen"].items() if v}
        deadline = time.monotonic() + timeout
        while set(proc.ports) != wanted:
            if popen.poll() is not None:
                raise AssertionError(f"edgeproxy exited {popen.returncode}:\n{proc.log()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"edgeproxy did not start:\n{proc.log()}")
            time.sleep(0.05)
            proc.ports = {m[1]: int(m[2]) for m in LISTENING.finditer(proc.log())}
        return proc

    yield start
    for proc in started:
        proc.terminate()
        try:
            proc.popen.wait(15)
        except subprocess.TimeoutExpired:
            proc.popen.kill()
            proc.popen.wait(5)
