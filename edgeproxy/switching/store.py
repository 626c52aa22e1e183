"""Where the switch state is kept: the `Store` interface, and the state file.

`SwitchBoard` (board.py) asks a store for two things: at boot, what was saved
(`restore`, or nothing yet), and on every change, to keep the new states
(`save`, called from a worker thread under the board's lock, before the change
takes effect: if it raises, nothing changes). `keep_copy` and `quarantine`
keep a bad saved state for inspection. `StateFile` is the single-node store.

The state file is versioned JSON (`state.to_json`), written atomically: temp
file in the same directory (mode 0600) → write → fsync → rename over the old
file → fsync the directory. A crash at any point leaves either the old file or
the new one, never a torn mix.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Protocol, TypeVar

from edgeproxy.errors import EdgeproxyError
from edgeproxy.switching.state import (
    AppState,
    Restored,
    StateFormatError,
    from_json,
    restore,
    to_json,
)

_T = TypeVar("_T")


class StateFileError(EdgeproxyError):
    """The state file could not be written (nothing was changed) or read."""

    status = 500


class CorruptStateFile(StateFileError):
    """The state file exists but cannot be read or parsed; the message says why."""


class Store(Protocol):
    """What the board needs of a place that keeps switch states."""

    @property
    def where(self) -> str:
        """Where the states are kept, for messages (a path, a URL)."""
        ...

    def restore(self) -> Restored | None:
        """What was saved, read app by app (`state.restore`); None when nothing was yet.

        Raises CorruptStateFile when what was saved cannot be read at all."""
        ...

    def save(self, states: Mapping[str, AppState]) -> None:
        """Keep `states` (every app's); raise StateFileError, keeping the old ones, on failure."""
        ...

    def keep_copy(self, now: float | None = None) -> Path | None:
        """Keep a copy of what was saved, as it is now, in a file; the copy, or None."""
        ...

    def quarantine(self, now: float | None = None) -> Path | None:
        """Move unreadable saved states aside into a file; the file, or None."""
        ...


class StateStore:
    """The state file: the single-node `Store` (and what `switchctl deploy` reads)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)

    @property
    def where(self) -> str:
        return str(self.path)

    def load(self) -> dict[str, AppState] | None:
        """The saved states, or None when there is no state file yet."""
        return self._read(from_json)

    def restore(self) -> Restored | None:
        """Read the file app by app (`state.restore`), or None when there is no file yet.

        Raises CorruptStateFile only when it cannot be read or holds no `apps` object.
        """
        return self._read(restore)

    def _read(self, parse: Callable[[bytes], _T]) -> _T | None:
        """`parse(the file's bytes)`, or None when there is no file; CorruptStateFile when
        it cannot be read or parsed."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise CorruptStateFile(f"cannot read {self.path}: {e.strerror}") from e
        try:
            return parse(raw)
        except StateFormatError as e:
            raise CorruptStateFile(f"{self.path}: {e}") from e

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
