"""Processes the bench starts: pinned, logged, waited for, stopped by PID.

`running()` is the one way a bench command starts a server: it pins the child
with `taskset`, sends its output to a log file, waits until it answers, and
stops it (SIGTERM, then SIGKILL on its own process group) when the block ends,
even on Ctrl-C. `ProcSample` reads CPU ticks and RSS from /proc for a process
and its descendants (nginx = master + worker).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024


class BenchError(Exception):
    """A bench step failed; the message says what and where to look."""


def log(msg: str) -> None:
    """Progress goes to stderr so stdout stays a clean Markdown report."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                out.extend(int(c) for c in f.read().split())
    except OSError:
        pass
    return out


def process_tree(pid: int) -> list[int]:
    """`pid` and all its descendants that are alive now."""
    seen = [pid]
    i = 0
    while i < len(seen):
        seen.extend(c for c in _children(seen[i]) if c not in seen)
        i += 1
    return [p for p in seen if os.path.exists(f"/proc/{p}")]


@dataclass(frozen=True)
class ProcSample:
    """CPU ticks (user + system) and resident memory of a process tree at one instant."""

    at: float
    ticks: int
    rss_kib: int
    pids: int

    @classmethod
    def take(cls, pid: int) -> ProcSample:
        ticks = rss = n = 0
        for p in process_tree(pid):
            try:
                with open(f"/proc/{p}/stat") as f:
                    stat = f.read()
                with open(f"/proc/{p}/status") as f:
                    status = f.read()
            except OSError:
                continue
            # Fields after the command name, which may itself hold spaces and parens.
            fields = stat[stat.rindex(")") + 2 :].split()
            ticks += int(fields[11]) + int(fields[12])  # utime, stime
            rss += _status_kib(status, "VmRSS")
            n += 1
        return cls(at=time.monotonic(), ticks=ticks, rss_kib=rss, pids=n)


def _status_kib(status: str, key: str) -> int:
    for line in status.splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def cpu_seconds(before: ProcSample, after: ProcSample) -> float:
    return (after.ticks - before.ticks) / CLK_TCK


def cpu_percent(before: ProcSample, after: ProcSample) -> float:
    """Share of one core used between the samples (100 = one core busy)."""
    wall = after.at - before.at
    return 100.0 * cpu_seconds(before, after) / wall if wall > 0 else 0.0


@dataclass
class Proc:
    """A started server: its name, PID, log file and the cores it is pinned to."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    cpus: str

    @property
    def pid(self) -> int:
        return self.popen.pid

    def sample(self) -> ProcSample:
        return ProcSample.take(self.pid)

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


_NICE = 0
"""Scheduling priority for every process the bench starts (`--nice`; negative needs root)."""


def set_nice(value: int) -> None:
    global _NICE
    _NICE = value


def prioritize(pid: int) -> None:
    """Give a process started in its own session the `--nice` priority against other work.

    With sched_autogroup on, each session is scheduled as one group, so a task's
    own nice value only counts inside its session: the group's nice is what
    competes with the rest of the machine.
    """
    if _NICE:
        with contextlib.suppress(OSError), open(f"/proc/{pid}/autogroup", "w") as f:
            f.write(str(_NICE))


def pinned(cpus: str | None, argv: Sequence[str]) -> list[str]:
    """argv under `taskset -c cpus` (and `nice -n N` when a priority was set)."""
    out = ["taskset", "-c", cpus, *argv] if cpus else list(argv)
    return ["nice", "-n", str(_NICE), *out] if _NICE else out


def wait_tcp(host: str, port: int, deadline: float) -> bool:
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def stop(proc: Proc, grace: float = 5.0) -> None:
    """SIGTERM the PID, wait, then SIGKILL its process group (it was started in its own)."""
    if proc.popen.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.popen.send_signal(signal.SIGTERM)
        try:
            proc.popen.wait(grace)
        except subprocess.TimeoutExpired:
            pass
    # nginx workers or a wrapper's children can outlive the leader: the group is ours.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.popen.wait(2)


@contextlib.contextmanager
def running(
    name: str,
    argv: Sequence[str],
    *,
    log_dir: Path,
    cpus: str | None,
    ready: Callable[[], bool],
    timeout: float = 15.0,
    env: dict[str, str] | None = None,
) -> Iterator[Proc]:
    """Start `argv` pinned to `cpus`, wait until `ready()`, yield it, stop it afterwards."""
    log_path = log_dir / f"{name}.log"
    with open(log_path, "ab") as out:
        popen = subprocess.Popen(
            pinned(cpus, argv),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env=env,
        )
    prioritize(popen.pid)
    proc = Proc(name=name, popen=popen, log_path=log_path, cpus=cpus or "any")
    try:
        deadline = time.monotonic() + timeout
        while not ready():
            if popen.poll() is not None:
                raise BenchError(
                    f"{name} exited with status {popen.returncode} while starting "
                    f"({' '.join(argv)}); log {log_path}:\n{proc.log_tail()}"
                )
            if time.monotonic() > deadline:
                raise BenchError(
                    f"{name} did not become ready within {timeout:.0f} s; log {log_path}:\n"
                    f"{proc.log_tail()}"
                )
            time.sleep(0.05)
        log(f"started {name} (pid {proc.pid}, cores {proc.cpus})")
        yield proc
    finally:
        stop(proc)


@dataclass(frozen=True)
class SystemSample:
    """Whole-machine CPU ticks from /proc/stat, to see load we did not cause."""

    at: float
    busy: int
    """Ticks spent in processes (user, nice, system, steal), all cores; excludes irq/softirq."""
    irq: int
    cores: int

    @classmethod
    def take(cls) -> SystemSample:
        with open("/proc/stat") as f:
            first = f.readline().split()
            cores = sum(1 for line in f if line.startswith("cpu"))
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in first[1:9])
        return cls(time.monotonic(), user + nice + system + steal, irq + softirq, cores)


def other_cpu_percent(before: SystemSample, after: SystemSample, ours_seconds: float) -> float:
    """CPU% (of one core) used by processes other than ours between two samples."""
    wall = after.at - before.at
    if wall <= 0:
        return 0.0
    busy = (after.busy - before.busy) / CLK_TCK
    return max(0.0, 100.0 * (busy - ours_seconds) / wall)


def children_cpu_seconds() -> float:
    """User + system CPU of reaped children (wrk's share of a run, by difference)."""
    import resource

    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime
