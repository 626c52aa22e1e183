"""The switch state file: versioned JSON, written atomically, read at boot.

A write is: temp file in the same directory (mode 0600) → write → fsync →
rename over the old file → fsync the directory. A crash at any point leaves
either the old file or the new one, never a torn mix.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

from edgeproxy.errors import EdgeproxyError
from edgeproxy.switching.state import (
    AppState,
    Restored,
    StateFormatError,
    from_json,
    restore,
    to_json,
)


class StateFileError(EdgeproxyError):
    """The state file could not be written (nothing was changed) or read."""

    status = 500


class CorruptStateFile(StateFileError):
    """The state file exists but cannot be read or parsed; the message says why."""


class StateStore:
    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)

    def check_open(self) -> None:
        """Raise when no change may be made now (a hand-over freezes the store);
        called before a change is committed anywhere, the shared store included."""

    def load(self) -> dict[str, AppState] | None:
        """The saved states, or None when there is no state file yet."""
        raw = self._read()
        if raw is None:
            return None
        try:
            return from_json(raw)
        except StateFormatError as e:
            raise CorruptStateFile(f"{self.path}: {e}") from e

    def restore(self) -> Restored | None:
        """Read the file app by app (`state.restore`), or None when there is no file yet.

        Raises CorruptStateFile only when it cannot be read or holds no `apps` object.
        """
        raw = self._read()
        if raw is None:
            return None
        try:
            return restore(raw)
        except StateFormatError as e:
            raise CorruptStateFile(f"{self.path}: {e}") from e

    def _read(self) -> bytes | None:
        try:
            return self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise CorruptStateFile(f"cannot read {self.path}: {e.strerror}") from e

    def save(self, states: Mapping[str, AppState]) -> None:
        """Replace the file atomically; raise StateFileError (old file intact) on failure."""
        data = to_json(states).encode()
        directory = self.path.parent
        tmp: str | None = None
        try:
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=directory)
            with os.fdopen(fd, "wb") as f:  # mkstemp creates the file with mode 0600
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
            tmp = None
            dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as e:
            raise StateFileError(
                f"could not write the state file {self.path}: {e.strerror or e}; "
                "nothing was changed (check the disk space and the directory's permissions)"
            ) from e
        finally:
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)

    def keep_copy(self, now: float | None = None) -> Path | None:
        """Copy the file as `state.json.rejected-<timestamp>` for inspection; return the copy."""
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
        target = self.path.with_name(f"{self.path.name}.rejected-{stamp}")
        try:
            shutil.copy2(self.path, target)
        except OSError:
            return None
        return target

    def quarantine(self, now: float | None = None) -> Path | None:
        """Move a bad state file aside as `state.json.corrupt-<timestamp>`; return its new path."""
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
        target = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        try:
            os.replace(self.path, target)
        except OSError:
            return None
        return target
