"""Detection latency: from the moment the target faults to the storm stopped and the run failed.

Each crash is a fresh reference target with one fault mode, a watchdog, and a storm aimed at the fault. The
fault moment comes from outside the harness: for a segfault, the kernel's own line (its /dev/kmsg timestamp,
printk's clock, mapped to wall time by a marker line we write to /dev/kmsg and read back); for every death,
an observer process blocked on a pidfd of the target prints the time it woke. The end is the later of
`run_storm_sync` returning and the watchdog's `crashed` being set (`detected_at`). A hang has no fault
moment to see: it is measured from the last reply the target sent, and is bounded below by `hang_after_s`.
"""

from __future__ import annotations

import os
import select
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.figures import Figure
from bench.session import BenchTarget, short_work_dir
from bench.throughput import storm_config
from harness.history import History
from harness.hosts.local import LocalHost
from harness.storm.engine import run_storm_sync

MODES = ("forced-removal", "abort-assert", "abort-malloc", "exit")
GOAL_P99_S = 1.0
PROBE_INTERVAL_S = 2.0  # Watchdog's default probe_interval_s, as StormRun uses it

_DEATH_CLOCK = (
    "import os, select, sys, time\n"
    "fd = os.pidfd_open(int(sys.argv[1]))\n"
    "print('ready', flush=True)\n"
    "select.select([fd], [], [])\n"
    "print(repr(time.time()), flush=True)\n"
)


class DeathClock:
    """A separate process that prints time.time() the moment the target process ends (not GIL-bound to us)."""

    def __init__(self, pid: int) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", _DEATH_CLOCK, str(pid)], stdout=subprocess.PIPE,
                                     text=True)
        assert self.proc.stdout is not None
        self.proc.stdout.readline()  # ready: the pidfd is open

    def at(self, timeout: float = 5.0) -> float | None:
        try:
            out, _ = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return None
        try:
            return float(out.strip())
        except ValueError:
            return None


class KmsgClock:
    """printk's clock (the `usec` of /dev/kmsg records) -> time.time(), by writing a marker and reading it back."""

    def __init__(self) -> None:
        self.offset_s: float | None = None  # kmsg seconds - time.monotonic()
        self.problem = ""
        try:
            self.offset_s = self._calibrate()
        except OSError as exc:
            self.problem = f"/dev/kmsg: {exc}"

    @staticmethod
    def _calibrate() -> float:
        marker = f"lvol-storm-bench: clock marker {os.getpid()} {time.time_ns()}"
        rfd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK)
        try:
            os.lseek(rfd, 0, os.SEEK_END)
            with open("/dev/kmsg", "w") as w:
                before = time.monotonic()
                w.write(marker + "\n")
                w.flush()
                after = time.monotonic()
            deadline = time.monotonic() + 2.0
            while time.monotonic() < deadline:
                select.select([rfd], [], [], 0.1)
                try:
                    rec = os.read(rfd, 8192).decode("utf-8", "replace")
                except BlockingIOError:
                    continue
                head, _, msg = rec.partition(";")
                if msg.strip() == marker:
                    usec = int(head.split(",")[2])
                    return usec / 1e6 - (before + after) / 2
        finally:
            os.close(rfd)
        raise OSError("marker line not read back within 2 s")

    def wall(self, usec: int) -> float | None:
        if self.offset_s is None:
            return None
        return usec / 1e6 - self.offset_s + (time.time() - time.monotonic())


@dataclass
class Crash:
    mode: str
    latency_s: float | None
    fault_source: str
    storm_stop_s: float | None
    watchdog_s: float | None
    stop_reason: str
    kernel_vs_death_ms: float | None = None
    note: str = ""


def _config(mode: str, seed: int) -> object:
    if mode == "forced-removal":
        return storm_config(60, seed=seed, strategies={"busy-delete": 1.0}, strategy_share=0.5)
    if mode == "hang":
        return storm_config(60, seed=seed, op_timeout=60)
    return storm_config(60, seed=seed)


def one_crash(mode: str, seed: int, clock: KmsgClock, *, hang_after_s: float = 2.0) -> Crash:
    """One target, one fault, one storm. Cores are dumped as in a real run (Target raises RLIMIT_CORE), so a
    segfault's process ends only once its core is written; the kernel line marks the fault itself."""
    return _one_crash(mode, seed, clock, hang_after_s=hang_after_s)


def _one_crash(mode: str, seed: int, clock: KmsgClock, *, hang_after_s: float) -> Crash:
    work = short_work_dir("lsd-")
    target = BenchTarget(work, sim_fault=mode, sim_fault_after=40, bdev_mib=1024, hang_after_s=hang_after_s,
                         keep_evidence=False)  # only the detection time is measured
    target.start()
    death = DeathClock(target.pid)
    history = History(Path(work) / "history.jsonl")
    wd = target.watchdog
    assert wd is not None
    try:
        res = run_storm_sync(_config(mode, seed), host=LocalHost(), sock_path=target.sock_path,  # type: ignore
                             lvs_name=target.lvs_name, history=history, capabilities=target.methods,
                             progress=False, crashed=wd.crashed)
        stopped = time.time()
        wd.crashed.wait(10.0)
        detected = wd.detected_at
        history.flush()
        died = death.at(timeout=10.0 if mode != "hang" else 0.1)  # a core dump delays the end
        fault_at: float | None = None
        source = "process death (pidfd observer)"
        kernel_vs_death: float | None = None
        for ev in wd.evidence:
            usec = getattr(ev.fault, "kmsg_usec", None) if ev.fault is not None else None
            if usec is not None:
                fault_at = clock.wall(usec)
                source = "kernel line (kmsg timestamp)"
                if fault_at is not None and died is not None:
                    kernel_vs_death = (died - fault_at) * 1000
                break
        if fault_at is None and mode == "hang":
            fault_at = _last_reply(Path(work) / "history.jsonl")
            source = "last reply before the hang"
        elif fault_at is None:
            fault_at = died
        end = max(stopped, detected) if detected is not None else None
        latency = end - fault_at if end is not None and fault_at is not None else None
        return Crash(mode, latency, source, stopped - fault_at if fault_at else None,
                     detected - fault_at if detected and fault_at else None, res.stop_reason, kernel_vs_death,
                     ("" if wd.crashed.is_set() else "watchdog never fired; ")
                     + f"evidence: {','.join(ev.kind for ev in wd.evidence) or 'none'}"
                     + ("" if died is not None else "; the process did not end within 10 s"))
    finally:
        history.close()
        target.stop()
        if death.proc.poll() is None:
            death.proc.kill()
            death.proc.wait()
        import shutil

        shutil.rmtree(work, ignore_errors=True)


def _last_reply(path: Path) -> float | None:
    import json

    last = None
    with open(path, encoding="utf-8") as f:
        for line in f:
            rec = json.loads(line)
            if "error" not in rec or (rec["error"].get("code") is not None):
                last = rec["t_end"] if last is None else max(last, rec["t_end"])
    return last


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (with 20 samples p99 is the worst one, as it should be)."""
    s = sorted(values)
    k = max(0, min(len(s) - 1, int(-(-q * len(s) // 1)) - 1))
    return s[k]


def run(crashes: int = 20, quick: bool = False, hangs: int | None = None,
        log: Callable[[str], object] = print) -> list[Figure]:
    clock = KmsgClock()
    results: list[Crash] = []
    for i in range(crashes):
        mode = MODES[i % len(MODES)]
        t0 = time.monotonic()
        c = one_crash(mode, seed=i + 1, clock=clock)
        c.note += f" ({time.monotonic() - t0:.0f} s to crash and clean up)"
        results.append(c)
        shown = f"{c.latency_s * 1000:.0f} ms" if c.latency_s is not None else "not measured"
        log(f"  crash {i + 1}/{crashes} {mode}: {shown} from {c.fault_source} (stop: {c.stop_reason}) {c.note}")
    section = "detection"
    figs: list[Figure] = []
    lat = [c.latency_s for c in results if c.latency_s is not None]
    missing = len(results) - len(lat)
    note = f"{len(lat)} crashes ({', '.join(MODES)})" + (f"; {missing} not measured" if missing else "")
    if clock.problem:
        note += f"; kernel clock: {clock.problem}"
    figs.append(Figure(section, "p50 fault -> storm stopped + run failed", statistics.median(lat) * 1000 if lat
                       else None, "ms", note=note))
    figs.append(Figure.judged(section, "p99 fault -> storm stopped + run failed",
                              percentile(lat, 0.99) * 1000 if lat else None, "ms", f"< {GOAL_P99_S * 1000:.0f} ms",
                              lambda v: v < GOAL_P99_S * 1000, note=note))
    for mode in MODES:
        ml = [c.latency_s for c in results if c.mode == mode and c.latency_s is not None]
        if ml:
            src = next(c.fault_source for c in results if c.mode == mode)
            figs.append(Figure(section, f"  {mode}: max", max(ml) * 1000, "ms", note=f"n={len(ml)}, from {src}"))
    kd = [c.kernel_vs_death_ms for c in results if c.kernel_vs_death_ms is not None]
    if kd:
        figs.append(Figure(section, "  kernel line -> process gone (median)", statistics.median(kd), "ms",
                           note="how far the two clocks' fault moments are apart"))
    n_hang = hangs if hangs is not None else (1 if quick else 3)
    hang_after = 2.0
    hl: list[float] = []
    for i in range(n_hang):
        c = one_crash("hang", seed=100 + i, clock=clock, hang_after_s=hang_after)
        log(f"  hang {i + 1}/{n_hang}: {c.latency_s if c.latency_s is None else round(c.latency_s * 1000)} ms "
            f"(stop: {c.stop_reason})")
        if c.latency_s is not None:
            hl.append(c.latency_s)
    if hl:
        over = max(hl) - hang_after
        bound = PROBE_INTERVAL_S * 1000
        figs.append(Figure.judged(section, f"hang: max beyond hang_after_s={hang_after:g} s", over * 1000, "ms",
                                  f"<= {bound:.0f} ms (probe interval)", lambda v: v <= bound,
                                  note=f"n={len(hl)}, from the last reply; the watchdog probes every "
                                       f"{PROBE_INTERVAL_S:g} s, so a hang is called hang_after_s to "
                                       f"hang_after_s + {PROBE_INTERVAL_S:g} s after it began"))
    return figs
