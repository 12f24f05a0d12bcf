"""How fast a storm catches SPDK's lvol destroy bug, per seed, on the reference target (spdk-sim).

The promise users rely on: a build with the bug fails fast and every time. With `--fault forced-removal` a
busy snapshot's delete answers EBUSY but removes the lvol; deleting its parent then dies with SIGSEGV. For 8
seeds: the regression profile restricted to busy-delete must kill the target within 15 s every time, the
default profile within 30 s in at least 7 of 8; a healthy target under the same storms gives no finding.
Time-to-crash per seed is printed (`pytest -s`). Storms stop at the crash, so the fault runs take a second or
so each; the healthy runs are cut to HEALTHY_S here (LVOL_STORM_ACCEPTANCE=1 runs them at full length).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from harness.config import load_config
from harness.storm.config import StormConfig
from harness.storm.engine import StormResult
from tests.test_storm_engine import Sim

SEEDS = range(1, 9)
BUSY_LIMIT_S = 15.0
DEFAULT_LIMIT_S = 30.0
FULL = os.environ.get("LVOL_STORM_ACCEPTANCE") == "1"
HEALTHY_S = 1.5


def _profile_storm(profile: str, seed: int, duration: float, **over: object) -> dict[str, object]:
    """The storm section of a shipped profile, as the CLI would run it, with this seed and duration."""
    storm = load_config(profile).storm.model_dump(mode="json")
    storm.update(over, seed=seed, duration=duration)
    return storm


def _busy_profile(seed: int, duration: float) -> dict[str, object]:
    # What suites/regression's test_delete_race[busy-delete] runs: the profile, one strategy, episodes only.
    return _profile_storm("regression", seed, duration, strategies={"busy-delete": 1.0}, strategy_share=1.0)


def _default_profile(seed: int, duration: float) -> dict[str, object]:
    return _profile_storm("default", seed, duration)


def _run(tmp: Path, storm: dict[str, object], *, fault: bool) -> tuple[StormResult, int | None, float]:
    """One storm on a fresh 1 GiB target (the profiles' bdev): result, the target's exit code, seconds."""
    tmp.mkdir(parents=True, exist_ok=True)
    sim = Sim(tmp, *(("--fault", "forced-removal") if fault else ()), mib=1024)
    try:
        t0 = time.monotonic()
        res = sim.storm(storm, None)
        took = time.monotonic() - t0
        try:
            rc = sim.proc.wait(2) if fault else sim.proc.poll()
        except Exception:
            rc = sim.proc.poll()
    finally:
        sim.stop()
    return res, rc, took


def _crash_times(tmp: Path, make: object, limit: float) -> dict[int, float | None]:
    """Seconds from storm start to the target's SIGSEGV per seed; None when it lived through `limit`."""
    times: dict[int, float | None] = {}
    for seed in SEEDS:
        res, rc, took = _run(tmp / f"fault{seed}", make(seed, limit), fault=True)  # type: ignore[operator]
        crashed = rc == -signal.SIGSEGV and res.stop_reason in ("crash", "connection_lost")
        times[seed] = res.wall_s if crashed else None
        busy = [f for f in res.findings if f.kind == "busy-delete-removed"]
        print(f"seed {seed}: " + (f"SIGSEGV after {res.wall_s:.2f} s" if crashed else
                                  f"no crash in {took:.1f} s (stop {res.stop_reason}, notes {res.notes})")
              + f", {res.ops} ops, forced removal seen: {bool(busy)}")
    return times


def test_busy_delete_crashes_the_faulty_target_fast_for_every_seed(tmp_path: Path) -> None:
    times = _crash_times(tmp_path, _busy_profile, BUSY_LIMIT_S)
    missed = [s for s, t in times.items() if t is None or t > BUSY_LIMIT_S]
    assert not missed, f"busy-delete did not crash the target within {BUSY_LIMIT_S:g} s for seeds {missed}"


def test_default_profile_crashes_the_faulty_target_within_30s(tmp_path: Path) -> None:
    times = _crash_times(tmp_path, _default_profile, DEFAULT_LIMIT_S)
    hits = [s for s, t in times.items() if t is not None and t <= DEFAULT_LIMIT_S]
    assert len(hits) >= 7, f"the default profile crashed the target within {DEFAULT_LIMIT_S:g} s for {hits} only"


@pytest.mark.parametrize("profile", ["busy", "default"])
def test_healthy_target_gives_no_findings_under_the_same_storms(tmp_path: Path, profile: str) -> None:
    make = _busy_profile if profile == "busy" else _default_profile
    full = BUSY_LIMIT_S if profile == "busy" else DEFAULT_LIMIT_S
    for seed in SEEDS:
        res, rc, _ = _run(tmp_path / f"ok{seed}", make(seed, full if FULL else HEALTHY_S), fault=False)
        assert rc is None, f"seed {seed}: the healthy target died (exit {rc})"
        assert res.stop_reason == "duration", (seed, res.stop_reason, res.notes)
        assert res.findings == [], (seed, [str(f) for f in res.findings])
        assert res.free_clusters_end == res.free_clusters_start, (seed, res.notes)
        assert res.errors_by_errno.get("ENOSPC", 0) < max(50, res.ops // 100), (seed, res.errors_by_errno)


def test_held_and_doomed_lvols_are_never_picked() -> None:
    from harness.storm.view import TreeView

    v = TreeView()
    for u in ("A", "B", "C"):
        v.add(u, u.lower())
    v.hide("A")  # an episode's own
    v.hide("B")  # a delete in flight
    v.hide("B")  # and a second hold on it
    picks = {v.pick(kind, i / 20, 0.5, (i % 3) / 3) for i in range(20) for kind in ("any", "volume", "leaf")}
    assert picks == {"C"}
    v.unhide("B")
    assert "B" not in v.by_kind["any"]
    v.unhide("B")
    v.rebuild([{"uuid": "A", "name": "a"}, {"uuid": "B", "name": "b"}], {})
    assert "A" not in v.by_kind["any"] and "B" in v.by_kind["any"]  # holds survive a resync


def test_a_worker_short_of_space_deletes_instead_of_creating_thick() -> None:
    from harness.storm.scheduler import Scheduler, Step
    from harness.storm.view import TreeView

    v = TreeView()
    v.add("L", "l")
    sched = Scheduler(StormConfig(), v)
    thick = Step("bdev_lvol_create", None, 0.1, 0.9, 0.9, 8, False, 1, 0)
    thin = Step("bdev_lvol_create", None, 0.1, 0.9, 0.9, 8, True, 2, 0)
    assert sched.build(thick, 0).method == "bdev_lvol_create"
    sched.short_of_space.add(0)
    op = sched.build(thick, 0)
    assert op.method == "bdev_lvol_delete" and op.params == {"name": "L"}
    assert sched.build(thin, 0).method == "bdev_lvol_create"  # thin creates take no clusters
    assert sched.build(thick, 1).method == "bdev_lvol_create"  # another worker is not held back
