"""A health check that fails because edgeproxy itself is out of file descriptors.

Real EMFILE in a real `edgeproxy serve` subprocess: a wrapper lowers its
RLIMIT_NOFILE (soft and hard) to 256 and, on SIGRTMIN, opens /dev/null until the kernel answers
EMFILE (SIGRTMIN+1 closes them again), so every socket the health checks create
fails as it would with thousands of idle client connections.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from switchctl.client import ControlClient
from tests.health_fixtures import flaky_fixture  # noqa: F401 - provides `flaky`
from tests.proxy_fixtures import http_get, site
from tests.test_switching_e2e import free_port

HOG = """
import os, resource, signal, sys, threading, time

# Soft and hard: edgeproxy raises its soft limit to the hard one at start.
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(256, hard), min(256, hard)))
held = []
lock = threading.Lock()
hogging = threading.Event()

def take_all():
    try:
        while True:
            held.append(os.open("/dev/null", os.O_RDONLY))
    except OSError as e:
        return e.strerror

def keep_taking():  # a descriptor edgeproxy closes is taken again within a millisecond
    while True:
        hogging.wait()
        with lock:
            if hogging.is_set():
                take_all()
        time.sleep(0.001)

def hog(signum, frame):
    with lock:
        why = take_all()
        hogging.set()
    os.write(2, b"test-hog: holding %d fds (%s)\\n" % (len(held), why.encode()))

def release(signum, frame):
    hogging.clear()
    with lock:
        n = len(held)
        while held:
            os.close(held.pop())
    os.write(2, b"test-hog: released %d fds\\n" % n)

threading.Thread(target=keep_taking, daemon=True).start()
signal.signal(signal.SIGRTMIN, hog)  # not SIGUSR1: edgeproxy reopens its logs on that
signal.signal(signal.SIGRTMIN + 1, release)
sys.argv = ["edgeproxy", "serve", "--config", sys.argv[1], "--log-format", "text"]
from edgeproxy.cli import main
main()
"""


def wait_for(predicate, what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_emfile_during_health_checks_does_not_mark_the_upstream_unhealthy(flaky, tmp_path: Path):
    blue = flaky("blue")
    port = free_port()
    sock = tmp_path / "ctl.sock"
    conf = {
        "listen": {"http": f"127.0.0.1:{port}"},
        "control": {"socket": str(sock)},
        "state_file": str(tmp_path / "state.json"),
        "access_log": {"enabled": False},
        "apps": {
            "shop": {
                "colors": {"blue": {"upstreams": [blue.url]}},
                # One failed check would mark it unhealthy, three passes to come back.
                "health": {"interval": 0.1, "unhealthy_threshold": 1, "healthy_threshold": 3},
            }
        },
        "sites": [site("shop")],
    }
    config = tmp_path / "edgeproxy.yml"
    config.write_text(yaml.safe_dump(conf))
    wrapper = tmp_path / "hog.py"
    wrapper.write_text(HOG)
    log = tmp_path / "stderr.log"
    with log.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, str(wrapper), str(config)], stdout=subprocess.DEVNULL, stderr=err
        )
    try:
        wait_for(sock.exists, f"edgeproxy did not start: {log.read_text()}")
        ctl = ControlClient(sock)
        wait_for(lambda: ctl.app("shop")["colors"]["blue"]["healthy"], "blue never healthy")
        time.sleep(0.3)  # the control connections above are closed: no fd frees up later
        probes = len(blue.probes)
        proc.send_signal(signal.SIGRTMIN)
        wait_for(
            lambda: "test-hog: holding" in log.read_text(),
            f"the fds were not taken: {log.read_text()[-3000:]}",
        )
        assert "Too many open files" in log.read_text()
        time.sleep(1.0)  # about ten checks, each failing with EMFILE
        assert len(blue.probes) <= probes + 1  # none reached the backend (but one under way)
        proc.send_signal(signal.SIGRTMIN + 1)
        wait_for(lambda: "test-hog: released" in log.read_text(), "the fds were not released")

        up = ctl.health()["apps"]["shop"]["blue"]["upstreams"][0]
        assert up["checks_failed"] == 0, up
        assert up["checks_local_errors"] >= 3, up
        assert up["healthy"] is True and up["check"] == "passing", up
        metrics = ctl.metrics()
        line = next(
            m for m in metrics.splitlines() if 'result="local_error"' in m and "checks_total" in m
        )
        assert float(line.rsplit(" ", 1)[1]) >= 3
        assert http_get(port).body == b"blue\n"
        text = log.read_text()
        assert "could not run: GET /health: local error EMFILE (too many open files)" in text
        assert text.count("could not run") == 1  # logged once per run of local errors
        assert " unhealthy" not in text, text
        wait_for(lambda: "run again after" in log.read_text(), "no check after the release")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
