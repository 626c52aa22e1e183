"""The access-log file is reopened on SIGUSR1 (logrotate's rename-then-signal convention)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import yaml

from tests.proxy_fixtures import http_get


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_lines(path: Path, n: int, timeout: float = 10) -> list[dict[str, object]]:
    """The file's JSON lines once it holds at least n (the writer flushes every 0.2 s)."""
    end = time.monotonic() + timeout
    while True:
        text = path.read_text() if path.exists() else ""
        lines = [json.loads(line) for line in text.splitlines()]
        if len(lines) >= n:
            return lines
        if time.monotonic() > end:
            raise AssertionError(f"{path} has {len(lines)} lines, expected {n}")
        time.sleep(0.05)


def test_sigusr1_after_a_rename_sends_new_lines_to_a_new_file_and_none_are_lost(
    tmp_path: Path,
) -> None:
    port = free_port()
    log = tmp_path / "access.log"
    config = tmp_path / "edgeproxy.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "listen": {"http": f"127.0.0.1:{port}"},
                "control": {"socket": str(tmp_path / "ctl.sock")},
                "access_log": {"path": str(log)},
                "apps": {"shop": {"colors": {"blue": {"upstreams": ["http://127.0.0.1:9"]}}}},
                "sites": [
                    {
                        "hosts": ["a.test"],
                        "https_redirect": False,
                        "routes": [{"path": "/", "app": "shop"}],
                    }
                ],
            }
        )
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgeproxy", "serve", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "edgeproxy did not start"
                time.sleep(0.05)
        # Unknown hosts get edgeproxy's own 404: each is one access-log line.
        assert http_get(port, "/before-1", host="unknown.test").status == 404
        assert http_get(port, "/before-2", host="unknown.test").status == 404
        assert [line["path"] for line in wait_lines(log, 2)] == ["/before-1", "/before-2"]

        rotated = tmp_path / "access.log.1"
        os.rename(log, rotated)  # what logrotate does first
        assert http_get(port, "/between", host="unknown.test").status == 404
        time.sleep(0.05)
        os.kill(proc.pid, signal.SIGUSR1)  # then its postrotate script
        deadline = time.monotonic() + 10
        while not log.exists():
            assert time.monotonic() < deadline, "no new file after SIGUSR1"
            time.sleep(0.05)
        assert http_get(port, "/after-1", host="unknown.test").status == 404
        assert http_get(port, "/after-2", host="unknown.test").status == 404

        assert [line["path"] for line in wait_lines(log, 2)] == ["/after-1", "/after-2"]
        old = [line["path"] for line in wait_lines(rotated, 3)]
        assert old == ["/before-1", "/before-2", "/between"]
        assert proc.poll() is None, "SIGUSR1 must not stop edgeproxy"
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=15)
    assert b"reopened" in err
