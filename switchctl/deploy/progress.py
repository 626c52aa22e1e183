"""Step progress for humans (one line per step, with timing) or scripts (`--json` events)."""

from __future__ import annotations

import json
import sys
import time
from typing import Any, TextIO


class Progress:
    def __init__(self, json_lines: bool = False, out: TextIO | None = None) -> None:
        self.json = json_lines
        self.out = out or sys.stdout
        self._started = 0.0
        self._total = 0

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
        self.out.write(line + "\n")
        self.out.flush()
