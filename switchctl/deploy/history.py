"""The release history: a JSON file per app, written atomically."""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError

Outcome = Literal["success", "failed", "rolled_back", "running", "interrupted"]
"""`interrupted`: the deploy process died (SIGKILL, a reboot) before it could record an outcome;
the next deploy closes its entry."""


class Release(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: str
    app: str
    image: str
    image_id: str | None = None
    git_sha: str | None = None
    color: str
    started_at: float
    duration_s: float | None = None
    outcome: Outcome = "running"
    failed_step: str | None = None
    message: str | None = None
    rollback_of: str | None = None
    """For `releases rollback ID`: the release whose image was redeployed."""


def new_release_id(ref: str | None, now: float | None = None) -> str:
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now if now is not None else time.time()))
    short = "".join(c for c in (ref or "") if c.isalnum())[:12]
    return f"{stamp}-{short}" if short else stamp


class History:
    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> list[Release]:
        try:
            raw = json.loads(self.path.read_text())
        except FileNotFoundError:
            return []
        except ValueError as e:
            raise ValueError(
                f"{self.path}: not valid JSON ({e}); move it aside to start afresh"
            ) from e
        out = []
        for item in raw.get("releases", []) if isinstance(raw, dict) else []:
            try:
                out.append(Release.model_validate(item))
            except ValidationError:
                continue
        return out

    def get(self, release_id: str) -> Release | None:
        return next((r for r in self.load() if r.id == release_id), None)

    def last_success(self) -> Release | None:
        done = [r for r in self.load() if r.outcome == "success"]
        return done[-1] if done else None

    def record(self, release: Release) -> None:
        """Insert or replace the release with this id, then write atomically."""
        releases = [r for r in self.load() if r.id != release.id]
        releases.append(release)
        releases.sort(key=lambda r: r.started_at)
        self._write(releases)

    def _write(self, releases: list[Release]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = {"version": 1, "releases": [r.model_dump() for r in releases]}
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".releases-")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(data, f, indent=2)
                f.write("\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            os.unlink(tmp)
            raise
        dfd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    def stuck(self, current: str | None = None) -> list[Release]:
        """Entries still `running`, other than `current` (meaningful only when no deploy holds
        the lock: then their process died before it recorded an outcome)."""
        return [r for r in self.load() if r.outcome == "running" and r.id != current]

    def retained(self, keep: int) -> list[Release]:
        """The successful releases whose images are kept for rollback (newest last)."""
        return [r for r in self.load() if r.outcome == "success"][-keep:]
