"""Run wrk and parse what it prints (`--latency` percentiles, errors, req/s)."""

from __future__ import annotations

import re
import subprocess
from dataclasses import asdict, dataclass
from typing import Any

from bench.procs import BenchError, pinned, prioritize

_UNITS_S = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_SUFFIX = {"": 1.0, "k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9}
_BYTES = {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3, "TB": 1024**4}


@dataclass(frozen=True)
class WrkResult:
    requests: int
    seconds: float
    rps: float
    latency_ms: dict[str, float]
    """Percentile ("50", "75", "90", "99") → milliseconds."""
    latency_avg_ms: float
    latency_max_ms: float
    bytes_read: float
    errors: dict[str, int]
    """Socket errors (connect, read, write, timeout) and `non2xx`."""

    @property
    def p99_ms(self) -> float:
        return self.latency_ms.get("99", float("nan"))

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def duration_ms(text: str) -> float:
    """`780.12us` → 0.78012; `1.50ms` → 1.5; `2.00s` → 2000; `1.00m` → 60000."""
    m = re.fullmatch(r"\s*([\d.]+)\s*(us|ms|s|m|h)\s*", text)
    if not m:
        raise ValueError(f"not a wrk duration: {text!r}")
    return float(m.group(1)) * _UNITS_S[m.group(2)] * 1000.0


def parse(output: str) -> WrkResult:
    """Parse wrk 4.x stdout; raise BenchError when the run produced no figures."""
    latency: dict[str, float] = {}
    for pct, value in re.findall(
        r"^\s+(\d+(?:\.\d+)?)%\s+([\d.]+\s*(?:us|ms|s|m|h))\s*$", output, re.M
    ):
        latency[pct.removesuffix(".000")] = duration_ms(value)
    m = re.search(r"^\s+Latency\s+(\S+)\s+\S+\s+(\S+)", output, re.M)
    avg = duration_ms(m.group(1)) if m else float("nan")
    mx = duration_ms(m.group(2)) if m else float("nan")
    m = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m|h), ([\d.]+)([KMGT]?B) read", output)
    if not m:
        raise BenchError(f"wrk printed no request count; output was:\n{output}")
    requests = int(m.group(1))
    seconds = float(m.group(2)) * _UNITS_S[m.group(3)]
    bytes_read = float(m.group(4)) * _BYTES[m.group(5)]
    m = re.search(r"Requests/sec:\s+([\d.]+)([kMG]?)", output)
    rps = float(m.group(1)) * _SUFFIX[m.group(2)] if m else requests / seconds
    errors = {"connect": 0, "read": 0, "write": 0, "timeout": 0, "non2xx": 0}
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    if m:
        for key, value in zip(("connect", "read", "write", "timeout"), m.groups(), strict=True):
            errors[key] = int(value)
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    if m:
        errors["non2xx"] = int(m.group(1))
    return WrkResult(requests, seconds, rps, latency, avg, mx, bytes_read, errors)


def argv(
    url: str,
    *,
    connections: int = 50,
    threads: int = 1,
    duration: int = 5,
    close: bool = False,
    timeout: float = 5.0,
) -> list[str]:
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--latency"]
    cmd += [f"--timeout={timeout:g}s"]
    # What browsers send; only a peer with a gzip policy acts on it.
    cmd += ["-H", "Accept-Encoding: gzip"]
    if close:
        cmd += ["-H", "Connection: close"]
    return [*cmd, url]


def run(url: str, *, cpus: str | None, **kw: Any) -> WrkResult:
    cmd = pinned(cpus, argv(url, **kw))
    with subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    ) as proc:
        prioritize(proc.pid)
        try:
            out, err = proc.communicate(timeout=kw.get("duration", 5) + 60)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
    if proc.returncode != 0:
        said = " / ".join(line for line in (err + out).splitlines() if line.strip())
        raise BenchError(f"wrk exited with status {proc.returncode}: {said} ({' '.join(cmd)})")
    return parse(out)
