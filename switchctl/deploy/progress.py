"""Step progress for humans (one line per step, with timing) or scripts (`--json` events).

Long waits (health, canary dwell, hooks, drains, edgeproxy's socket) report a
heartbeat every `heartbeat` seconds (default 10, env `SWITCHCTL_HEARTBEAT_SECONDS`):
what they wait for, the time elapsed and the deadline. For humans that is an
indented line under the step; with `--json` it is a `waiting` event on stdout
like every other event (`{"event": "waiting", "what", "elapsed", "deadline", "detail"}`).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

DEFAULT_HEARTBEAT = 10.0


def _heartbeat_from_env() -> float:
    try:
        return float(os.environ.get("SWITCHCTL_HEARTBEAT_SECONDS") or DEFAULT_HEARTBEAT)
    except ValueError:
        return DEFAULT_HEARTBEAT


class Heartbeat:
    """Called on every poll of a long wait; reports at most once per interval."""

    def __init__(
        self,
        progress: Progress,
        what: str,
        deadline: float | None,
        every: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.progress = progress
        self.what = what
        self.deadline = deadline
        self.every = every
        self.clock = clock
        self.started = self.last = clock()

    def __call__(self, detail: str = "") -> None:
        now = self.clock()
        if now - self.last < self.every:
            return
        self.last = now
        self.progress.waiting(self.what, now - self.started, self.deadline, detail)


class Progress:
    def __init__(
        self, json_lines: bool = False, out: TextIO | None = None, heartbeat: float | None = None
    ) -> None:
        self.json = json_lines
        self.out = out or sys.stdout
        self.heartbeat_every = _heartbeat_from_env() if heartbeat is None else heartbeat
        self._started = 0.0
        self._total = 0
        self._line_open = False

    def heartbeat(self, what: str, deadline: float | None) -> Heartbeat:
        """The helper every long wait uses: call it on each poll with what it last saw."""
        return Heartbeat(self, what, deadline, self.heartbeat_every)

    def waiting(self, what: str, elapsed: float, deadline: float | None, detail: str = "") -> None:
        self.event(
            "waiting",
            what=what,
            elapsed=round(elapsed, 1),
            deadline=deadline,
            detail=detail,
        )
        if not self.json:
            limit = f"deadline {deadline:.0f}s" if deadline is not None else "no deadline"
            self._say(
                f"      waiting for {what}: {elapsed:.0f}s elapsed, {limit}"
                + (f" ({detail})" if detail else "")
            )

    def event(self, name: str, **fields: Any) -> None:
        if self.json:
            self.out.write(json.dumps({"event": name, "time": round(time.time(), 3), **fields}))
            self.out.write("\n")
            self.out.flush()

    def start(self, total: int, title: str) -> None:
        """Any other run of numbered steps (e.g. `switchctl setup`)."""
        self._total = total
        self.event("run_start", title=title, steps=total)
        if not self.json:
            self._say(title)

    def begin(self, total: int, release: str, target: str, live: str | None) -> None:
        self._total = total
        self.event("deploy_start", release=release, target=target, live=live, steps=total)
        if not self.json:
            self._say(f"release {release}: {live or 'nothing'} serves now, deploying to {target}")

    def step(self, n: int, text: str, kind: str = "") -> None:
        self._started = time.monotonic()
        self.event("step_start", n=n, kind=kind, step=text)
        if not self.json:
            self.out.write(f"[{n:2d}/{self._total}] {text} ... ")
            self.out.flush()
            self._line_open = True

    def ok(self, n: int, note: str = "") -> None:
        took = time.monotonic() - self._started
        self.event("step_ok", n=n, seconds=round(took, 3), note=note)
        if not self.json:
            self._say(f"ok {took:.1f}s" + (f" ({note})" if note else ""))

    def failed(self, n: int, why: str) -> None:
        took = time.monotonic() - self._started
        self.event("step_failed", n=n, seconds=round(took, 3), why=why)
        if not self.json:
            self._say(f"FAILED after {took:.1f}s")

    def info(self, text: str) -> None:
        self.event("info", text=text)
        if not self.json:
            self._say(f"      {text}")

    def _say(self, line: str) -> None:
        if self._line_open and line.startswith("      "):
            self.out.write("\n")  # an info line under a step that is still running
        elif not self._line_open and (line.startswith(("ok ", "FAILED "))):
            line = "      " + line  # the step's line was interrupted by heartbeats
        self._line_open = False
        self.out.write(line + "\n")
        self.out.flush()
