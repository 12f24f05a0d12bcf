"""Flat memory: the harness's RSS at marks during one storm at full rate (history streamed to disk).

The storm is the default profile's (`make storm`), on the reference target with no poll delay, so it sends
as fast as this machine allows. RSS is read from /proc/self/status at each mark; growth is reported in MB per
hour between the first and the last mark (the first minute holds the warm-up). Beside RSS each mark records
where the memory is - glibc's heap (`mallinfo2`: in use and free inside it) and Python's allocated blocks - so
a growing figure says at once whether Python objects pile up (a container nobody empties: blocks grow) or the
native heap does (fragmentation, C buffers: blocks flat). The watchdog's CPU under that storm is sampled on
the way (bench.watchdog_cpu).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import shutil
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.figures import Figure
from bench.session import BenchTarget, short_work_dir
from bench.watchdog_cpu import WatchdogCpu, figure
from harness.config import load_config
from harness.history import History
from harness.hosts.local import LocalHost
from harness.storm.engine import run_storm_sync

GOAL_MB_PER_HOUR = 20.0
MARKS_MIN = (1.0, 5.0, 15.0)
"""The issue's marks: what `make bench` measures (~16 minutes of storm)."""
LONG_MARKS_MIN = (1.0, 5.0, 15.0, 30.0, 60.0)


def rss_mb() -> float:
    with open("/proc/self/status", encoding="utf-8") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                       "fsmblks", "uordblks", "fordblks", "keepcost")]


def _mallinfo2() -> Any:
    """glibc's mallinfo2 (2.33+), or None where there is none (musl, older glibc, not Linux)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        fn = libc.mallinfo2
    except (OSError, AttributeError):
        return None
    fn.restype = _MallInfo2
    fn.argtypes = []
    return fn


_MALLINFO2 = _mallinfo2()


def malloc_heap_mb() -> tuple[float, float] | None:
    """(MB of glibc's heap in use, MB free inside it), main and thread arenas together; None without glibc.

    Python's own small objects live in its arenas (mmap'd, not counted here): `sys.getallocatedblocks()`
    counts them; strings over 512 bytes (history lines, listings) and C buffers are in this heap.
    """
    if _MALLINFO2 is None:
        return None
    mi = _MALLINFO2()
    return mi.uordblks / 2**20, mi.fordblks / 2**20


@dataclass
class Mark:
    """One sample during the storm."""

    minutes: float
    rss_mb: float
    watchdog_cpu_s: float
    calls: int
    py_blocks: int
    heap: tuple[float, float] | None

    def note(self) -> str:
        heap = (f"malloc heap {self.heap[0]:.1f} MB in use + {self.heap[1]:.1f} MB free; " if self.heap else "")
        return f"{heap}Python {self.py_blocks / 1e3:,.0f}k blocks; {self.calls:,} calls so far"


def _per_hour(a: float, b: float, ma: float, mb: float) -> float:
    return (b - a) / ((mb - ma) / 60.0)


def run(marks_min: list[float], log: Any = print) -> list[Figure]:
    marks = sorted(marks_min)
    work = short_work_dir("lsm-")
    cfg = load_config("default").storm.model_copy(update={"duration": marks[-1] * 60 + 2.0})
    samples: list[Mark] = []
    stop = threading.Event()
    with BenchTarget(work) as target:
        meter = WatchdogCpu(target.pid)
        history = History(Path(work) / "history.jsonl")
        t0 = time.monotonic()
        cpu0 = meter.sample()

        def sampler() -> None:
            for m in marks:
                if stop.wait(max(0.0, t0 + m * 60 - time.monotonic())):
                    return
                mark = Mark(m, rss_mb(), meter.sample() - cpu0, history.total, sys.getallocatedblocks(),
                            malloc_heap_mb())
                samples.append(mark)
                log(f"  {m:g} min: RSS {mark.rss_mb:.1f} MB ({mark.note()})")

        thread = threading.Thread(target=sampler, name="bench-rss", daemon=True)
        thread.start()
        try:
            res = run_storm_sync(cfg, host=LocalHost(), sock_path=target.sock_path, lvs_name=target.lvs_name,
                                 history=history, capabilities=target.methods, progress=False,
                                 crashed=target.watchdog.crashed if target.watchdog else None)
        finally:
            stop.set()
            thread.join(5)
            history.close()
        hist_mb = (Path(work) / "history.jsonl").stat().st_size / 1e6
    shutil.rmtree(work, ignore_errors=True)
    figs = [Figure("memory", f"harness RSS at {s.minutes:g} min", s.rss_mb, "MB", note=s.note(),
                   extra={"calls": s.calls, "py_blocks": s.py_blocks,
                          "malloc_in_use_mb": s.heap[0] if s.heap else None,
                          "malloc_free_mb": s.heap[1] if s.heap else None}) for s in samples]
    note = (f"marks {','.join(f'{m:g}' for m in marks)} min (--long: 1 h); "
            f"{res.ops:,} ops at {res.ops_per_s:,.0f} ops/s (stop: {res.stop_reason}), "
            f"history.jsonl {hist_mb:,.0f} MB on disk")
    if res.ops_per_s < 100:
        note += f"; THE STORM STALLED, so this RSS says little: {'; '.join(res.notes)[:300]}"
    if len(samples) >= 2:
        a, b = samples[0], samples[-1]
        growth = _per_hour(a.rss_mb, b.rss_mb, a.minutes, b.minutes)
        where = f"Python blocks {_per_hour(a.py_blocks, b.py_blocks, a.minutes, b.minutes) / 1e3:+,.0f}k/hour"
        if a.heap and b.heap:
            where += (f", malloc heap in use {_per_hour(a.heap[0], b.heap[0], a.minutes, b.minutes):+.1f} MB/hour, "
                      f"free in it {_per_hour(a.heap[1], b.heap[1], a.minutes, b.minutes):+.1f} MB/hour")
        figs.append(Figure.judged("memory", f"RSS growth {a.minutes:g} -> {b.minutes:g} min", growth, "MB/hour",
                                  f"< {GOAL_MB_PER_HOUR:g}", lambda v: v < GOAL_MB_PER_HOUR,
                                  note=f"{where}; {note}"))
        calls = b.calls - a.calls
        if calls > 0:
            figs.append(Figure("memory", f"  per million calls, {a.minutes:g} -> {b.minutes:g} min",
                               (b.rss_mb - a.rss_mb) * 1e6 / calls, "MB",
                               note=f"over {calls:,} calls: the same growth whatever this machine's rate"))
        if len(samples) >= 3:
            c, d = samples[-2], samples[-1]
            figs.append(Figure("memory", f"  of which {c.minutes:g} -> {d.minutes:g} min",
                               _per_hour(c.rss_mb, d.rss_mb, c.minutes, d.minutes), "MB/hour",
                               note="the last interval: what is left once bounded buffers (history tails, "
                                    "allocator pools) have filled"))
    else:
        figs.append(Figure("memory", "RSS growth", None, "MB/hour", f"< {GOAL_MB_PER_HOUR:g}",
                           note=f"fewer than 2 marks reached; {note} (stop: {res.stop_reason})"))
    if samples:
        last = samples[-1]
        figs.append(figure("under the storm", last.watchdog_cpu_s / last.minutes, last.minutes * 60, meter.watched,
                           note=f"; storm at {res.ops_per_s:,.0f} ops/s"))
    return figs
