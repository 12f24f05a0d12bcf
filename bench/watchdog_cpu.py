"""Watchdog overhead: CPU seconds per minute spent by the watchdog alone, idle and under a storm.

The watchdog lives in the harness process as threads (`watch:*`, and the `follow:*` readers of the streams it
follows) plus the follower processes it starts (`cat /dev/kmsg`, `tail -F` of the target log). Their CPU is
read from /proc/self/task/<tid>/stat and /proc/<child>/stat, so the storm's own CPU is not counted.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

from bench.figures import Figure
from bench.session import BenchTarget, short_work_dir

GOAL_CPU_S_PER_MIN = 0.6  # 1 % of one core
_TICK = os.sysconf("SC_CLK_TCK")
_PREFIXES = ("watch:", "follow:")


def _stat_cpu(path: str) -> float:
    try:
        with open(path, encoding="utf-8") as f:
            fields = f.read().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime (fields 14 and 15 of stat)


def _schedstat_cpu(path: str) -> float:
    """A thread's time on CPU in ns (schedstat), finer than stat's 10 ms ticks; stat when schedstat is off."""
    try:
        with open(path + "/schedstat", encoding="utf-8") as f:
            return int(f.read().split()[0]) / 1e9
    except (OSError, ValueError, IndexError):
        return _stat_cpu(path + "/stat")


def _ppid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
            return int(f.read().rpartition(")")[2].split()[1])
    except (OSError, ValueError, IndexError):
        return None


class WatchdogCpu:
    """Cumulative CPU of the watchdog's threads (alive or ended since we first looked) and follower processes."""

    def __init__(self, target_pid: int) -> None:
        self.target_pid = target_pid
        self._threads: dict[int, float] = {}
        self._children: dict[int, float] = {}

    def sample(self) -> float:
        me = os.getpid()
        for t in threading.enumerate():
            if t.name.startswith(_PREFIXES) and t.native_id is not None:
                cpu = _schedstat_cpu(f"/proc/{me}/task/{t.native_id}")
                if cpu or t.native_id not in self._threads:
                    self._threads[t.native_id] = cpu
        for entry in os.listdir("/proc"):
            if entry.isdigit() and int(entry) != self.target_pid and _ppid(int(entry)) == me:
                self._children[int(entry)] = _stat_cpu(f"/proc/{entry}/stat")
        return sum(self._threads.values()) + sum(self._children.values())

    @property
    def watched(self) -> str:
        return f"{len(self._threads)} threads, {len(self._children)} follower processes"


def idle(seconds: float) -> tuple[float, float, str]:
    """(CPU s per minute, seconds measured) of a watchdog on an idle reference target."""
    work = short_work_dir("lsw-")
    with BenchTarget(work) as target:
        meter = WatchdogCpu(target.pid)
        c0 = meter.sample()
        t0 = time.monotonic()
        time.sleep(seconds)
        c1 = meter.sample()
        wall = time.monotonic() - t0
        watched = meter.watched
    import shutil

    shutil.rmtree(work, ignore_errors=True)
    return (c1 - c0) / wall * 60.0, wall, watched


def figure(kind: str, cpu_per_min: float, wall: float, watched: str, note: str = "") -> Figure:
    return Figure.judged("watchdog CPU", f"watchdog, {kind}", cpu_per_min, "CPU s/min",
                         f"< {GOAL_CPU_S_PER_MIN:g}", lambda v: v < GOAL_CPU_S_PER_MIN,
                         note=f"over {wall:.0f} s; {watched} (watch:*, follow:*)" + note)


def run(seconds: float = 60.0, log: Any = print) -> list[Figure]:
    cpu, wall, watched = idle(seconds)
    log(f"  idle: {cpu:.4f} CPU s/min over {wall:.0f} s ({watched})")
    return [figure("idle target", cpu, wall, watched)]
