"""Health verdicts of one upstream. Pure: no I/O, times are passed in.

Two independent judges, like Envoy's:

- `CheckState`, the active checks: consecutive results against the healthy and
  unhealthy thresholds. The very first result decides at once either way (Envoy
  does the same at startup), so a restarted edgeproxy knows every upstream after
  one round. Probes run every `interval` with ±10% jitter; an upstream that is
  not healthy is never probed later than one interval after its last probe
  (no back-off: its jitter only shortens the wait), so once it answers it is
  seen healthy after `healthy_threshold` probes, within that many intervals
  (two with the default threshold), plus the duration of a check that was
  already running (up to `timeout` when it hung). A check that could not run
  because of a local error (edgeproxy out of file descriptors or memory) is
  counted apart and changes no verdict: it says nothing about the upstream.
- `EjectionState`, the passive outlier detection: `consecutive_failures`
  failed requests in a row (connect errors, resets, timeouts, 5xx) eject the
  upstream for `base * n` seconds (capped at `max_seconds`), where n counts its
  ejections; n goes down by one for every `base` seconds it stayed in service.
  An ejection always lasts its cool-down: a passing active check does not end it.
"""

from __future__ import annotations

from dataclasses import dataclass

JITTER = 0.1


@dataclass(slots=True)
class CheckState:
    healthy_threshold: int
    unhealthy_threshold: int
    healthy: bool | None = None
    """None until the first probe finished."""
    successes: int = 0
    """Passing probes in a row."""
    failures: int = 0
    """Failing probes in a row."""
    detail: str = ""
    """What the last failing probe saw."""
    last_check: float = 0.0
    passed: int = 0
    failed: int = 0
    local_errors: int = 0
    """Checks that could not run because of a local error (EMFILE, ENOBUFS, ...)."""
    local_streak: int = 0
    """Local errors in a row (0 once a check runs again)."""
    local_detail: str = ""
    """What the last local error was."""

    def record(self, ok: bool, detail: str, now: float) -> bool:
        """Count one probe result; True when the verdict changed."""
        self.last_check = now
        self.local_streak = 0
        before = self.healthy
        if ok:
            self.passed += 1
            self.successes += 1
            self.failures = 0
            if before is None or (not before and self.successes >= self.healthy_threshold):
                self.healthy = True
        else:
            self.failed += 1
            self.failures += 1
            self.successes = 0
            self.detail = detail
            if before is None or (before and self.failures >= self.unhealthy_threshold):
                self.healthy = False
        return self.healthy != before

    def record_local(self, detail: str) -> bool:
        """Count a check that could not run (a local error); True for the first of a run.

        The verdict and the consecutive counts stay as they were.
        """
        self.local_errors += 1
        self.local_streak += 1
        self.local_detail = detail
        return self.local_streak == 1

    def next_delay(self, interval: float, jitter: float = 0.0) -> float:
        """Seconds until the next probe; `jitter` in [-1, 1] scales the ±10% spread.

        Never more than `interval` while the upstream is not healthy, so a
        recovery is seen within `healthy_threshold` intervals.
        """
        delay = interval * (1.0 + JITTER * jitter)
        if self.healthy is not True and delay > interval:
            delay = interval
        return delay

    def describe(self) -> str:
        """The failing check, for switch refusals and the health view."""
        if self.healthy is None:
            if self.local_streak:
                return f"no health check has finished yet ({self.local_detail})"
            return "no health check has finished yet"
        if self.failures:
            return f"{self.detail} ({self.failures} in a row)"
        if self.healthy is False and self.successes:
            return (
                f"{self.detail}, then {self.successes} of {self.healthy_threshold} "
                "passing checks in a row"
            )
        return self.detail


@dataclass(slots=True)
class EjectionState:
    consecutive_failures: int
    base_seconds: float
    max_seconds: float
    failures: int = 0
    """Failed requests in a row."""
    multiplier: int = 0
    ejections: int = 0
    ejected_until: float = 0.0
    last_failure: str = ""

    def ejected(self, now: float) -> bool:
        return now < self.ejected_until

    def success(self) -> None:
        self.failures = 0

    def failure(self, why: str, now: float) -> float | None:
        """Count one failed request; the ejection's length when this one ejects the upstream."""
        if now < self.ejected_until:
            return None  # requests started before the ejection finishing now
        self.failures += 1
        self.last_failure = why
        if self.failures < self.consecutive_failures:
            return None
        if self.ejected_until:
            # Time in service since the last ejection ended earns forgiveness.
            served = now - self.ejected_until
            self.multiplier = max(0, self.multiplier - int(served // self.base_seconds))
        self.multiplier += 1
        self.ejections += 1
        self.failures = 0
        seconds = min(self.base_seconds * self.multiplier, self.max_seconds)
        self.ejected_until = now + seconds
        return seconds

    def describe(self) -> str:
        return f"ejected after {self.consecutive_failures} failed requests in a row ({self.last_failure})"
