"""Run the whole suite; start dockerd when it is installed and not running.

pytest's exit code 5 ("no tests ran") is reported as a failure: a suite that
collected nothing has verified nothing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def ensure_dockerd() -> None:
    docker = shutil.which("docker")
    dockerd = shutil.which("dockerd")
    if docker is None or dockerd is None:
        print("run.py: docker is not installed; docker system tests will be skipped", flush=True)
        return
    if subprocess.run([docker, "info"], capture_output=True).returncode == 0:
        return
    log = open(ROOT / ".venv" / "dockerd.log", "ab")  # noqa: SIM115 - lives as long as dockerd
    subprocess.Popen([dockerd], stdout=log, stderr=log, start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if subprocess.run([docker, "info"], capture_output=True).returncode == 0:
            print("run.py: started dockerd", flush=True)
            return
        time.sleep(0.5)
    print("run.py: dockerd did not come up within 60 s; see .venv/dockerd.log", flush=True)


def main() -> int:
    ensure_dockerd()
    args = [sys.executable, "-m", "pytest", *sys.argv[1:]]
    rc = subprocess.call(args, cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if rc == 5:
        print("run.py: pytest collected no tests; treating that as a failure", file=sys.stderr)
        return 1
    return rc


if __name__ == "__main__":
    sys.exit(main())
