"""Throughput: the storm (history, model checks, watchdog on) against a raw pipelined client doing the same calls.

One target per setting, several rounds: the storm runs for `seconds`, then the raw client replays exactly the
calls the storm sent (bench.rawclient), same connections and depth, on the same target after the lvstore was
wiped. Both rates count the calls storm workers put on the wire (busy checks included, quiesce reads not),
from the first send to the last reply. The peers show what slower clients get on the same target: SPDK's
`JSONRPCClient` (one call at a time per connection) and `spdk-rpc` spawned per call, as shell suites do.
"""

from __future__ import annotations

import asyncio
import cProfile
import io
import os
import pstats
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.figures import Figure
from bench.rawclient import ReplayPlan, replay_history, replay_one_at_a_time
from bench.session import BenchTarget, short_work_dir, spdk_tgt_path
from harness.history import History
from harness.hosts.local import LocalHost
from harness.storm.config import StormConfig
from harness.storm.engine import run_storm_sync

GOAL_RATIO = 0.9
SPDK_TGT_MIX: dict[str, float] = {
    "bdev_lvol_create": 20, "bdev_lvol_snapshot": 10, "bdev_lvol_clone": 8, "bdev_lvol_delete": 22,
    "bdev_lvol_get_lvols": 1, "bdev_get_bdevs": 2, "bdev_lvol_get_lvstores": 1,
}
"""The mix for a real spdk_tgt: the debug builds of Longhorn's fork measured here die within seconds under the
default mix (resize racing snapshot/clone: `Assertion 'blob->remaining_clusters_in_et >= cluster_count'
failed in blob_parse_page`; rename, inflate, xattr: docs/REAL-TARGET.md), and a crashed round measures
nothing. Create, snapshot, clone, delete and reads ran 20 s clean, twice, at ~3,800 ops/s."""


def storm_config(seconds: float, workers: int = 8, depth: int = 4, seed: int = 1, **more: object) -> StormConfig:
    """The default profile's mix, without strategy episodes (they add peer connections), quiesce every 5 s."""
    data: dict[str, object] = {"workers": workers, "depth": depth, "duration": seconds, "seed": seed,
                               "quiesce_every": min(5.0, max(seconds / 2, 0.5)), "final_cleanup": False}
    data.update(more)
    return StormConfig.model_validate(data)


@dataclass
class RoundPair:
    storm_calls: int
    storm_wall_s: float
    storm_ops_per_s: float
    raw_calls: int
    raw_wall_s: float
    agreement: float
    findings: int
    storm_errors: int = 0
    raw_errors: int = 0
    storm_cpu_s: float = 0.0
    raw_cpu_s: float = 0.0


def run_storm_on(target: BenchTarget, cfg: StormConfig, history_path: Path,
                 profiler: cProfile.Profile | None = None) -> tuple[ReplayPlan, float, int, float]:
    """One storm with history and the target's watchdog; returns its calls (as a replay plan), ops/s, findings
    and the harness's CPU seconds for the storm (history closed included; reading the plan back is not)."""
    cpu = time.process_time()
    if profiler is not None:
        profiler.enable()
    history = History(history_path)
    try:
        res = run_storm_sync(cfg, host=LocalHost(), sock_path=target.sock_path, lvs_name=target.lvs_name,
                             history=history, capabilities=target.methods, progress=False,
                             crashed=target.watchdog.crashed if target.watchdog else None)
    finally:
        history.close()
        if profiler is not None:
            profiler.disable()
    cpu = time.process_time() - cpu
    return ReplayPlan.from_history(history_path), res.ops_per_s, len(res.findings), cpu


def spdk_rpc_per_call(sock_path: str, seconds: float, max_calls: int = 200) -> tuple[int, float]:
    """`spdk-rpc` spawned once per call (a read, so the target does almost nothing): calls, wall seconds."""
    exe = Path(sys.executable).with_name("spdk-rpc")
    argv = [str(exe) if exe.exists() else "spdk-rpc", "-s", sock_path, "bdev_lvol_get_lvstores", "-l", "lvs0"]
    n = 0
    t0 = time.monotonic()
    while n < max_calls and time.monotonic() - t0 < seconds:
        subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True, timeout=30)
        n += 1
    return n, time.monotonic() - t0


def measure(label: str, *, kind: str = "sim", poll_interval_ms: float = 0.0, seconds: float = 8.0,
            rounds: int = 2, peer_seconds: float = 4.0, workers: int = 8, depth: int = 4,
            mix: dict[str, float] | None = None, log: Callable[[str], object] = print,
            profile: Path | None = None) -> list[Figure]:
    """Figures for one target setting: storm and raw rates, their ratio, the peers. `profile`: a cProfile of
    the storm rounds (only theirs: not the raw client's, not the peers') is written there as pstats."""
    work = short_work_dir()
    try:
        return _measure(label, work, kind=kind, poll_interval_ms=poll_interval_ms, seconds=seconds, rounds=rounds,
                        peer_seconds=peer_seconds, workers=workers, depth=depth, mix=mix, log=log,
                        profile=profile)
    finally:
        _remove_tree(work)


def _measure(label: str, work: str, *, kind: str, poll_interval_ms: float, seconds: float, rounds: int,
             peer_seconds: float, workers: int, depth: int, mix: dict[str, float] | None,
             log: Callable[[str], object], profile: Path | None) -> list[Figure]:
    with BenchTarget(work, kind=kind, poll_interval_ms=poll_interval_ms) as target:
        try:
            return _rounds(label, target, work, seconds=seconds, rounds=rounds, peer_seconds=peer_seconds,
                           workers=workers, depth=depth, mix=mix, log=log, profile=profile)
        except Exception as exc:
            death = target.death()
            if death is None:
                raise
            title, report = death
            kept = Path(work).with_name(Path(work).name + "-crashed")
            shutil.copytree(work, kept, ignore=shutil.ignore_patterns("core*", "*.sock", "*.lock"))
            where = kept / report.relative_to(work) if report is not None else kept
            raise RuntimeError(f"the target crashed: {title} (report: {where})") from exc


def _rounds(label: str, target: BenchTarget, work: str, *, seconds: float, rounds: int, peer_seconds: float,
            workers: int, depth: int, mix: dict[str, float] | None, log: Callable[[str], object],
            profile: Path | None = None) -> list[Figure]:
    """The storm and the raw client, round after round on one target, then the peers."""
    pairs: list[RoundPair] = []
    section = f"throughput {label}"
    figures: list[Figure] = []
    plan: ReplayPlan | None = None
    profiler = cProfile.Profile() if profile is not None else None
    for r in range(rounds):
        cfg = storm_config(seconds, workers, depth, seed=r + 1, **({"mix": mix} if mix else {}))
        # The last round's plan (~100,000 calls at depth 64) is not the storm's memory: kept alive through
        # this round's storm, it made each of the storm's full garbage collections scan it (rounds 2 and 3
        # ran ~15% slower than round 1 for it).
        plan = None
        plan, ops_per_s, findings, storm_cpu = run_storm_on(target, cfg, Path(work) / f"storm-{r}.jsonl", profiler)
        target.wipe()
        cpu = time.process_time()
        raw = asyncio.run(replay_history(plan, target.sock_path, depth))
        raw_cpu = time.process_time() - cpu
        target.wipe()
        pairs.append(RoundPair(plan.storm_calls, plan.storm_wall_s, ops_per_s, raw.calls, raw.wall_s,
                               raw.agreement, findings, raw.storm_errors, raw.errors, storm_cpu, raw_cpu))
        log(f"  {label} round {r + 1}: storm {plan.storm_calls_per_s:,.0f} calls/s, raw replay "
            f"{raw.calls_per_s:,.0f} calls/s (outcomes agree {raw.agreement:.0%}), findings {findings}")
    if profiler is not None and profile is not None:
        profile.parent.mkdir(parents=True, exist_ok=True)
        profiler.dump_stats(str(profile))
        log(f"  {label}: storm profile in {profile}\n{profile_top(profile)}")
    storm_rate = sum(p.storm_calls for p in pairs) / sum(p.storm_wall_s for p in pairs)
    raw_rate = sum(p.raw_calls for p in pairs) / sum(p.raw_wall_s for p in pairs)
    ratio = storm_rate / raw_rate if raw_rate else 0.0
    agreement = sum(p.agreement for p in pairs) / len(pairs)
    conf = f"{workers} conn x depth {depth}"
    storm_us = sum(p.storm_cpu_s for p in pairs) / max(1, sum(p.storm_calls for p in pairs)) * 1e6
    raw_us = sum(p.raw_cpu_s for p in pairs) / max(1, sum(p.raw_calls for p in pairs)) * 1e6
    figures.append(Figure(section, f"storm calls/s ({conf})", storm_rate, "calls/s",
                          note=f"ops/s {sum(p.storm_ops_per_s for p in pairs) / len(pairs):,.0f}; "
                               f"findings {sum(p.findings for p in pairs)}; "
                               f"harness CPU {storm_us:,.0f} µs/call (setup, quiesce, checks included)"))
    storm_err = sum(p.storm_errors for p in pairs) / max(1, sum(p.storm_calls for p in pairs))
    raw_err = sum(p.raw_errors for p in pairs) / max(1, sum(p.raw_calls for p in pairs))
    figures.append(Figure(section, "raw pipelined client, same calls", raw_rate, "calls/s",
                          note=f"outcomes agree with the storm's: {agreement:.0%}; error replies "
                               f"{raw_err:.0%} (storm {storm_err:.0%}); client CPU {raw_us:,.0f} µs/call"))
    figures.append(Figure.judged(section, "storm / raw", ratio, "", f">= {GOAL_RATIO}",
                                 lambda v: v >= GOAL_RATIO, note=f"{rounds} rounds x {seconds:g} s"
                                 + ("; mix: create, snapshot, clone, delete, reads (SPDK_TGT_MIX)" if mix else "")))
    if peer_seconds > 0 and plan is not None:
        calls, wall, conns = replay_one_at_a_time(plan, target.sock_path, peer_seconds)
        target.wipe()
        rate = calls / wall if wall else 0.0
        figures.append(Figure(section, f"peer: JSONRPCClient, 1 call at a time x {conns} conn", rate,
                              "calls/s", note=f"{rate / max(conns, 1):,.0f} calls/s per connection; "
                                              f"{rate / raw_rate if raw_rate else 0:.2f} of raw"))
        n, wall = spdk_rpc_per_call(target.sock_path, peer_seconds)
        figures.append(Figure(section, "peer: spdk-rpc spawned per call", n / wall if wall else 0.0,
                              "calls/s", note=f"{n} calls, sequential"))
    return figures


def profile_top(path: Path, n: int = 25) -> str:
    """The top entries of a pstats file by own time (where the CPU went, not who called it)."""
    out = io.StringIO()
    pstats.Stats(str(path), stream=out).sort_stats("tottime").print_stats(n)
    return out.getvalue()


def _remove_tree(path: str) -> None:
    if os.path.isdir(path):
        shutil.rmtree(path, ignore_errors=True)


DEFAULT_DEPTHS = (4, 64)
"""The reference target's settings `make bench` measures: the default profile's depth, and Longhorn's own
pipelining (its Go client keeps up to 1,024 requests in flight per connection; 64 x 8 connections here)."""


def depth_label(depth: int) -> str:
    """The setting's section: `sim` at the default profile's depth (as earlier tables named it), else
    `sim depth N`."""
    return "sim" if depth == 4 else f"sim depth {depth}"


def run(seconds: float = 8.0, rounds: int = 2, peer_seconds: float = 4.0,
        log: Callable[[str], object] = print, depths: list[int] | None = None,
        profile: Path | None = None) -> list[Figure]:
    """The reference target at each depth (default: 4 and 64) and at depth 4 with spdk_tgt's 8 ms poll, and a
    real spdk_tgt when $SPDK_TGT is set. `depths` given: only the reference target at those depths."""
    figures: list[Figure] = []
    for depth in depths or DEFAULT_DEPTHS:
        path = None if profile is None else profile.with_name(f"{profile.stem}-d{depth}{profile.suffix}")
        figures += measure(depth_label(depth), seconds=seconds, rounds=rounds, depth=depth,
                           peer_seconds=peer_seconds if depth == 4 else 0.0, log=log, profile=path)
    if depths:
        return figures
    figures += measure("sim poll 8 ms", poll_interval_ms=8.0, seconds=seconds, rounds=rounds,
                       peer_seconds=peer_seconds, log=log)
    if spdk_tgt_path():
        try:
            figures += measure("spdk_tgt", kind="spdk", seconds=seconds, rounds=rounds, peer_seconds=peer_seconds,
                               mix=SPDK_TGT_MIX, log=log)
        except RuntimeError as exc:  # the build crashed under the mix: the sim rows stand, this one says why
            figures.append(Figure("throughput spdk_tgt", "storm / raw", None, goal=f">= {GOAL_RATIO}",
                                  note=str(exc)))
    else:
        figures.append(Figure("throughput spdk_tgt", "storm / raw", None, goal=f">= {GOAL_RATIO}",
                              note="SPDK_TGT not set: no real spdk_tgt on this machine"))
    return figures
