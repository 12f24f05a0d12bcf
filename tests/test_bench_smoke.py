"""CI-short benchmarks: each one in a tiny configuration, figures printed (run with -s to see them).

Timings on a shared CI machine say little, so nothing here asserts a goal; each test asserts the figure was
measured and is a sane number (positive, finite, of the right magnitude), which is what breaks when a
benchmark stops measuring what it claims. The whole file stays well under a minute on two cores.
"""

from __future__ import annotations

import asyncio
import json
import math
import pstats
import subprocess
import sys
from pathlib import Path

import pytest

from bench import detection, first_op, memory, scaling, throughput, watchdog_cpu
from bench.figures import Figure, markdown_table, table_text
from bench.rawclient import RawConnection, ReplayPlan, replay_history
from bench.session import BenchTarget, short_work_dir
from harness.history import SETUP_WORKER, History

pytestmark = pytest.mark.timeout(120)
REPO = Path(__file__).resolve().parent.parent


def _show(figs: list[Figure]) -> dict[str, Figure]:
    print("\n" + table_text(figs))
    return {f.name: f for f in figs}


def _sane(f: Figure, lo: float, hi: float) -> None:
    assert f.value is not None, f"{f.section} / {f.name}: not measured ({f.note})"
    assert math.isfinite(f.value) and lo <= f.value <= hi, f"{f.section} / {f.name}: {f.value} not in [{lo}, {hi}]"


def test_raw_client_replays_a_storm_with_the_same_outcomes(tmp_path: Path) -> None:
    """The yardstick does the storm's work: same call count, and most outcomes (ok/error) agree."""
    work = short_work_dir()
    with BenchTarget(work, watchdog=False) as target:
        plan, _, _, _ = throughput.run_storm_on(target, throughput.storm_config(1.0, workers=2, depth=2),
                                             tmp_path / "h.jsonl")
        target.wipe()
        res = asyncio.run(replay_history(plan, target.sock_path, 2))

        async def ping() -> dict:
            conn = await RawConnection.open(target.sock_path)
            try:
                return await conn.call("spdk_get_version")
            finally:
                await conn.close()

        assert "result" in asyncio.run(ping())
    print(f"\nstorm {plan.storm_calls} calls at {plan.storm_calls_per_s:.0f}/s; replay {res.calls_per_s:.0f}/s, "
          f"outcomes agree {res.agreement:.0%}")
    assert plan.calls == plan.storm_calls > 0
    assert res.calls == plan.calls
    assert res.agreement > 0.6


def test_throughput_short() -> None:
    figs = _show(throughput.measure("sim", seconds=1.5, rounds=1, peer_seconds=0.5))
    ratio = figs["storm / raw"]
    _sane(ratio, 0.05, 5.0)
    assert ratio.goal and ratio.met is not None
    _sane(figs["peer: spdk-rpc spawned per call"], 0.1, 1000)


def test_throughput_at_any_depth_names_it_and_profiles_the_storm(tmp_path: Path) -> None:
    """`--depth 8 --profile P`: one setting at depth 8, its section and figures say so, P-d8 holds the storm's
    profile (its hot path, not the raw client's)."""
    figs = throughput.run(seconds=1.0, rounds=1, peer_seconds=0.0, depths=[8], profile=tmp_path / "p.prof",
                          log=lambda msg: None)
    assert {f.section for f in figs} == {"throughput sim depth 8"}
    named = _show(figs)
    _sane(named["storm / raw"], 0.05, 5.0)
    assert "storm calls/s (8 conn x depth 8)" in named
    assert "µs/call" in named["storm calls/s (8 conn x depth 8)"].note
    assert "harness/" in throughput.profile_top(tmp_path / "p-d8.prof")
    profiled = {name for _, _, name in pstats.Stats(str(tmp_path / "p-d8.prof")).stats}  # type: ignore[attr-defined]
    assert "execute" in profiled and "replay_history" not in profiled


def test_bench_depth_flag_takes_a_list_and_refuses_nonsense() -> None:
    from bench.__main__ import build_parser

    assert build_parser().parse_args(["--depth", "4,16,64"]).depth == [4, 16, 64]
    for bad in ("0", "x", ""):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["--depth", bad])


def test_detection_short() -> None:
    clock = detection.KmsgClock()
    crash = detection.one_crash("abort-assert", 1, clock)
    print(f"\n{crash}")
    assert crash.stop_reason in ("crash", "connection_lost")
    assert crash.latency_s is not None and -1.0 < crash.latency_s < 10.0
    assert detection.percentile([0.1, 0.2, 0.3], 0.99) == 0.3
    assert detection.percentile(list(range(1, 21)), 0.5) == 10


def test_kmsg_clock_maps_to_wall_time() -> None:
    clock = detection.KmsgClock()
    if clock.offset_s is None:
        pytest.skip(f"kernel log not readable here: {clock.problem}")
    import time

    usec = int((time.monotonic() + clock.offset_s) * 1e6)
    wall = clock.wall(usec)
    assert wall is not None and abs(wall - time.time()) < 0.01


def test_scaling_short() -> None:
    figs = scaling.connections_depth(0.7, (1, 4), (2,)) + scaling.lvol_count(0.7, (10, 50))
    named = _show(figs)
    _sane(named["1 conn x depth 2"], 1, 1e6)
    _sane(named["4 conn x depth 2"], 1, 1e6)
    _sane(named["model: µs per op, 50 lvols"], 0.01, 1e5)
    growth = [f for f in figs if f.name.startswith("model per-op cost growth")]
    assert growth and growth[0].met is not None


def test_memory_and_watchdog_short() -> None:
    named = _show(memory.run([0.03, 0.06]))
    first = named["harness RSS at 0.03 min"]
    _sane(first, 10, 4000)
    assert first.extra["calls"] > 0 and first.extra["py_blocks"] > 10_000
    if memory.malloc_heap_mb() is not None:  # glibc: where the RSS is, beside it
        assert 0 < first.extra["malloc_in_use_mb"] < first.value
    growth = named["RSS growth 0.03 -> 0.06 min"]
    assert growth.value is not None and growth.goal and "Python blocks" in growth.note
    _sane(named["  per million calls, 0.03 -> 0.06 min"], -1e4, 1e4)
    _sane(named["watchdog, under the storm"], 0.0, 60.0)
    idle = _show(watchdog_cpu.run(seconds=1.0))
    _sane(idle["watchdog, idle target"], 0.0, 60.0)


def test_history_tails_are_bounded_in_bytes() -> None:
    """The memory figure relies on it: big listings (the setup worker's quiesce reads) must not fill the
    in-memory tails up to their line counts; the newest line is kept whatever its size."""
    history = History(None, tail_len=1000, per_worker_tail_len=200, tail_bytes=200_000,
                      per_worker_tail_bytes=50_000)
    listing = [{"name": f"lvol{i}", "uuid": "u" * 36, "driver_specific": {"lvol": {"clones": []}}} for i in range(100)]
    for i in range(300):
        history.record(SETUP_WORKER, SETUP_WORKER, "bdev_get_bdevs", None, 1.0, 2.0, result=listing)
        history.record(0, 0, "bdev_lvol_create", {"lvol_name": f"v{i}"}, 1.0, 2.0, result="u" * 36)
    per_worker = history.per_worker_tail(1000)
    line = len(json.dumps(per_worker[SETUP_WORKER][-1], separators=(",", ":")))
    assert 1 <= len(per_worker[SETUP_WORKER]) <= 50_000 // line + 1
    assert len(per_worker[0]) == 200  # small lines: the count bounds them first
    tail = history.tail()
    assert tail[-1]["params"] == {"lvol_name": "v299"} and len(tail) < 1000
    assert sum(len(json.dumps(r, separators=(",", ":"))) for r in tail) <= 200_000 + line
    huge = History(None, tail_bytes=10)
    huge.record(0, 0, "bdev_get_bdevs", None, 1.0, 2.0, result=listing)
    assert len(huge.tail()) == 1


def test_first_op_short() -> None:
    named = _show(first_op.run(repeats=1))
    _sane(named["make storm -> first RPC sent"], 0.01, 60)


def test_cli_quick_table_and_markdown(tmp_path: Path) -> None:
    """`python -m bench --only ... --quick` prints the table with goals; --markdown writes the same rows."""
    md = tmp_path / "b.md"
    res = subprocess.run([sys.executable, "-m", "bench", "--only", "watchdog", "--quick", "--markdown", str(md)],
                         cwd=REPO, capture_output=True, text=True, timeout=60)
    print(res.stdout)
    assert res.returncode == 0, res.stderr
    assert "watchdog, idle target" in res.stdout and "goals met" in res.stdout
    assert md.read_text().startswith("| section |")
    bad = subprocess.run([sys.executable, "-m", "bench", "--only", "nope"], cwd=REPO, capture_output=True,
                         text=True, timeout=30)
    assert bad.returncode == 2 and "unknown nope" in bad.stderr
    assert "| x |" in markdown_table([Figure("x", "y", 1.0)])


def test_replay_plan_reads_only_worker_calls(tmp_path: Path) -> None:
    lines = [
        '{"v":1,"worker":-1,"conn":-1,"seq":1,"method":"bdev_get_bdevs","params":null,"t_start":1.0,"t_end":1.1,'
        '"result":[]}',
        '{"v":1,"worker":0,"conn":0,"seq":2,"method":"bdev_lvol_delete","params":{"name":"'
        + "a" * 36 + '"},"t_start":2.5,"t_end":3.0,"result":true}',
        '{"v":1,"worker":0,"conn":0,"seq":1,"method":"bdev_lvol_create","params":{"lvs_name":"lvs0"},'
        '"t_start":2.0,"t_end":2.4,"result":"' + "a" * 36 + '"}',
    ]
    path = tmp_path / "h.jsonl"
    path.write_text("\n".join(lines) + "\n")
    plan = ReplayPlan.from_history(path)
    assert [c.method for c in plan.by_conn[0]] == ["bdev_lvol_create", "bdev_lvol_delete"]
    assert plan.producer["a" * 36].method == "bdev_lvol_create"
    assert plan.storm_calls == 2 and abs(plan.storm_wall_s - 1.0) < 1e-9
