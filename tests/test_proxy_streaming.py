"""Large bodies stream through with backpressure: the proxy's peak memory stays flat."""

from __future__ import annotations

import socket
import time

import pytest
import yaml

from tests.test_switching_e2e import free_port, start_proxy, write_config

SIZE = 256 * 1024 * 1024


def status_mib(pid: int, key: str) -> float:
    """A memory figure of /proc/PID/status in MiB (VmRSS now, VmHWM the peak)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    raise AssertionError(f"no {key}")


def peak_rss_mib(pid: int) -> float:
    return status_mib(pid, "VmHWM")


def rss_mib(pid: int) -> float:
    return status_mib(pid, "VmRSS")


@pytest.mark.slow
def test_a_256_mib_download_read_slowly_and_a_256_mib_upload_do_not_sit_in_memory(
    tmp_path, backend
):
    blue, green = backend("blue"), backend("green")
    port = free_port()
    config = write_config(tmp_path, blue.url, green.url, port)
    conf = yaml.safe_load(config.read_text())
    conf["limits"] = {"max_body": "1G"}
    config.write_text(yaml.safe_dump(conf))
    proc = start_proxy(config, port)
    try:
        before = rss_mib(proc.pid)
        # Download, read in small slow bites at first so the proxy must pause the upstream.
        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
            s.sendall(b"GET /big?n=%d HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n" % SIZE)
            got = 0
            t_end = time.monotonic() + 1.0
            while time.monotonic() < t_end:
                got += len(s.recv(4096))
                time.sleep(0.01)
            assert peak_rss_mib(proc.pid) - before < 40
            while chunk := s.recv(1 << 20):
                got += len(chunk)
        assert got > SIZE  # body plus head and chunk framing
        # Upload with Content-Length (over the default 50M limit, raised to 1G here).
        with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
            s.sendall(
                b"POST /upload HTTP/1.1\r\nHost: a.test\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
                % SIZE
            )
            block = b"u" * (1 << 20)
            for _ in range(SIZE // len(block)):
                s.sendall(block)
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        assert data.startswith(b"HTTP/1.1 200")
        assert len(blue.bodies[-1]) == SIZE
        growth = peak_rss_mib(proc.pid) - before
        assert growth < 40, f"proxy peak RSS grew by {growth:.0f} MiB while streaming 2 x 256 MiB"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        if proc.stderr:
            proc.stderr.close()
