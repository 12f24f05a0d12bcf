"""Flat memory: the harness's RSS at marks during one storm at full rate (history streamed to disk).

The storm is the default profile's (`make storm`), on the reference target with no poll delay, so it sends
as fast as this machine allows. RSS is read from /proc/self/status at each mark; growth is reported in MB per
hour between the first and the last mark (the first minute holds the warm-up). The watchdog's CPU under that
storm is sampled on the way (bench.watchdog_cpu).
"""

from __future__ import annotations

import shutil
import threading
import time
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


def rss_mb() -> float:
    with open("/proc/self/status", encoding="utf-8") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def run(marks_min: list[float], log: Any = print) -> list[Figure]:
    marks = sorted(marks_min)
    work = short_work_dir("lsm-")
    cfg = load_config("default").storm.model_copy(update={"duration": marks[-1] * 60 + 2.0})
    samples: list[tuple[float, float, float]] = []  # (minutes, RSS MB, watchdog CPU s)
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
                samples.append((m, rss_mb(), meter.sample() - cpu0))
                log(f"  {m:g} min: RSS {samples[-1][1]:.1f} MB")

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
    figs = [Figure("memory", f"harness RSS at {m:g} min", rss, "MB") for m, rss, _ in samples]
    note = (f"marks {','.join(f'{m:g}' for m in marks)} min (--minutes 1,5,15 for the issue's marks, --long: 1 h); "
            f"{res.ops:,} ops at {res.ops_per_s:,.0f} ops/s (stop: {res.stop_reason}), "
            f"history.jsonl {hist_mb:,.0f} MB on disk")
    if res.ops_per_s < 100:
        note += f"; THE STORM STALLED, so this RSS says little: {'; '.join(res.notes)[:300]}"
    if len(samples) >= 2:
        (m0, r0, _), (m1, r1, _) = samples[0], samples[-1]
        growth = (r1 - r0) / ((m1 - m0) / 60.0)
        figs.append(Figure.judged("memory", f"RSS growth {m0:g} -> {m1:g} min", growth, "MB/hour",
                                  f"< {GOAL_MB_PER_HOUR:g}", lambda v: v < GOAL_MB_PER_HOUR, note=note))
        if len(samples) >= 3:
            (ma, ra, _), (mb, rb, _) = samples[-2], samples[-1]
            figs.append(Figure("memory", f"  of which {ma:g} -> {mb:g} min", (rb - ra) / ((mb - ma) / 60.0),
                               "MB/hour", note="the last interval: what is left once bounded buffers "
                                               "(history tails, allocator pools) have filled"))
    else:
        figs.append(Figure("memory", "RSS growth", None, "MB/hour", f"< {GOAL_MB_PER_HOUR:g}",
                           note=f"fewer than 2 marks reached; {note} (stop: {res.stop_reason})"))
    if samples:
        m, _, cpu = samples[-1]
        figs.append(figure("under the storm", cpu / m, m * 60, meter.watched,
                           note=f"; storm at {res.ops_per_s:,.0f} ops/s"))
    return figs
