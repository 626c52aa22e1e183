"""The deploy lock: flock, holder record, no stale lock after a kill."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from switchctl.deploy.errors import LockHeld
from switchctl.deploy.lock import DeployLock, read_holder

HOLD = """
import sys, time
from pathlib import Path
from switchctl.deploy.lock import DeployLock
lock = DeployLock(Path(sys.argv[1]), command="switchctl deploy --ref abc")
lock.acquire()
print("held", flush=True)
time.sleep(60)
"""


def hold_in_child(path: Path) -> subprocess.Popen[str]:
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None
    assert p.stdout.readline().strip() == "held"
    return p


def test_a_second_deploy_fails_at_once_naming_the_holder(tmp_path: Path) -> None:
    path = tmp_path / "deploy.lock"
    child = hold_in_child(path)
    try:
        with pytest.raises(LockHeld) as e, DeployLock(path):
            pass
        assert f"pid {child.pid} on " in str(e.value)
        assert "(switchctl deploy --ref abc)" in str(e.value)
        holder, held = read_holder(path)
        assert held
        assert holder is not None
        assert holder.pid == child.pid
    finally:
        child.kill()
        child.wait()
        assert child.stdout is not None
        child.stdout.close()


def test_a_killed_deploy_leaves_no_stale_lock_and_the_next_one_sees_it_did_not_finish(
    tmp_path: Path,
) -> None:
    path = tmp_path / "deploy.lock"
    child = hold_in_child(path)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert child.stdout is not None
    child.stdout.close()
    holder, held = read_holder(path)
    assert not held
    assert holder is not None
    assert holder.pid == child.pid
    with DeployLock(path) as lock:
        assert lock.previous is not None
        assert lock.previous.pid == child.pid
        mine, held = read_holder(path)
        assert held
        assert mine is not None
        assert mine.pid == os.getpid()


def test_a_clean_release_leaves_no_holder_record(tmp_path: Path) -> None:
    path = tmp_path / "deploy.lock"
    with DeployLock(path):
        pass
    assert read_holder(path) == (None, False)
    with DeployLock(path) as again:
        assert again.previous is None
