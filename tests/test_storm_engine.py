"""The storm engine end to end against the reference target (spdk-sim), plus its pure parts.

Each storm here runs at most a few seconds; the target is a real `spdk-sim` process on a socket in tmp_path.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from harness.errors import ConfigError
from harness.history import History
from harness.hosts.local import LocalHost
from harness.rpc.sync import SyncRpc
from harness.storm.config import StormConfig, check_against_lvstore, parse_duration
from harness.storm.engine import StormResult, run_storm_sync
from harness.storm.scheduler import WorkerStream
from harness.storm.view import TreeView

REPO = Path(__file__).resolve().parent.parent
STRATEGY_SET = ["delete-vs-clone", "double-delete", "delete-vs-snapshot", "delete-vs-checksum",
                "delete-vs-xattr", "purge-chain", "clone-fanout-delete", "busy-delete"]


class Sim:
    """A spdk-sim process with a malloc bdev and an lvstore on it."""

    def __init__(self, tmp: Path, *flags: str, mib: int = 512) -> None:
        self.sock = str(tmp / "sim.sock")
        self.log = tmp / "sim.log"
        self.proc = subprocess.Popen([sys.executable, "-m", "harness.sim", "-r", self.sock, *flags],
                                     stdout=open(self.log, "w"), stderr=subprocess.STDOUT, cwd=REPO)
        deadline = time.monotonic() + 10
        while not os.path.exists(self.sock) and time.monotonic() < deadline:
            time.sleep(0.02)
        self.host = LocalHost()
        with SyncRpc(self.host, self.sock) as rpc:
            rpc.call("bdev_malloc_create", name="Malloc0", num_blocks=mib * 256, block_size=4096)
            rpc.call("bdev_lvol_create_lvstore", bdev_name="Malloc0", lvs_name="lvs0", cluster_sz=1 << 20)

    def storm(self, cfg: dict[str, Any], history: History | None, **kw: Any) -> StormResult:
        cfg = {"quiesce_every": "1s", **cfg}
        return run_storm_sync(StormConfig.model_validate(cfg), host=self.host, sock_path=self.sock,
                              lvs_name="lvs0", history=history, progress=False, **kw)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()


@pytest.fixture
def sim_factory(tmp_path: Path):
    sims: list[Sim] = []

    def make(*flags: str, mib: int = 512, sub: str = "a") -> Sim:
        d = tmp_path / sub
        d.mkdir(exist_ok=True)
        s = Sim(d, *flags, mib=mib)
        sims.append(s)
        return s

    yield make
    for s in sims:
        s.stop()


def _kinds(res: StormResult) -> list[str]:
    return [f.kind for f in res.findings]


# -- configuration ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("value, seconds", [("30s", 30), ("5m", 300), ("1h", 3600), (12, 12), ("250ms", 0.25)])
def test_durations_parse(value: Any, seconds: float) -> None:
    assert parse_duration(value) == seconds
    assert StormConfig(duration=value).duration == seconds


@pytest.mark.parametrize("fields, fragment", [
    ({"mix": {"bdev_lvol_frobnicate": 1}}, "mix: unknown method 'bdev_lvol_frobnicate'"),
    ({"mix": {"bdev_lvol_create": 0, "bdev_lvol_delete": 0}}, "mix: weights sum to zero"),
    ({"strategies": ["no-such-strategy"]}, "strategies: unknown strategy 'no-such-strategy'"),
    ({"duration": "-5s"}, "duration: must not be negative"),
    ({"duration": -1}, "duration: must not be negative"),
    ({"quiesce_every": "soon"}, "quiesce_every: expected a duration"),
    ({"workers": 0}, "workers: must be >= 1, got 0"),
    ({"depth": 0}, "depth: must be >= 1"),
    ({"lvol_size_mib": [8, 4]}, "lvol_size_mib"),
    ({"surprise": 1}, "surprise"),
])
def test_bad_config_is_one_line(fields: dict[str, Any], fragment: str) -> None:
    from harness.config import load_config

    with pytest.raises(ConfigError) as exc:
        load_config(overrides=[f"storm.{k}={json.dumps(v)}" for k, v in fields.items()])
    text = str(exc.value)
    assert fragment in text
    assert "\n" not in text


def test_lvol_larger_than_lvstore_is_refused() -> None:
    cfg = StormConfig(lvol_size_mib=(4, 600))
    with pytest.raises(ConfigError, match=r"storm.lvol_size_mib: max 600 MiB is larger than the lvstore"):
        check_against_lvstore(cfg, cluster_size=1 << 20, total_data_clusters=509, free_clusters=509)
    check_against_lvstore(StormConfig(lvol_size_mib=(4, 16)), cluster_size=1 << 20, total_data_clusters=509,
                          free_clusters=509)


# -- pure parts ---------------------------------------------------------------------------------------------

def test_worker_streams_depend_only_on_seed_and_worker() -> None:
    cfg = StormConfig(seed=7, strategies=["double-delete"])
    methods, weights = list(cfg.mix), list(cfg.mix.values())
    a = [WorkerStream(cfg, w, methods, weights) for w in range(3)]
    b = [WorkerStream(cfg, w, methods, weights) for w in range(3)]
    seq_a = [[a[w].next() for _ in range(200)] for w in range(3)]
    seq_b = [[b[w].next() for _ in range(200)] for w in range(3)]
    assert seq_a == seq_b
    assert seq_a[0] != seq_a[1]
    other = WorkerStream(StormConfig(seed=8), 0, methods, weights)
    assert [other.next() for _ in range(50)] != seq_a[0][:50]


def test_view_reparents_single_child_and_samples_by_kind() -> None:
    v = TreeView()
    v.add("L", "l")
    v.insert_snapshot("L", "S1", "s1")
    v.insert_snapshot("L", "S2", "s2")
    assert v.parent_of("L") == "S2" and v.parent_of("S2") == "S1" and v.root_of("L") == "S1"
    v.remove("S2")
    assert v.parent_of("L") == "S1" and v.children_of("S1") == {"L"}
    assert {v.by_kind["snapshot"].choice(u / 10) for u in range(10)} == {"S1"}
    assert "L" in v.by_kind["clone"] and "L" in v.by_kind["leaf"] and "S1" not in v.by_kind["leaf"]


# -- against the reference target ---------------------------------------------------------------------------

def test_healthy_target_gives_no_findings(sim_factory, tmp_path: Path) -> None:
    sim = sim_factory()
    hist = History(tmp_path / "history.jsonl")
    res = sim.storm({"duration": "4s", "contention": "high", "strategies": STRATEGY_SET, "seed": 3}, hist)
    hist.close()
    assert res.findings == [], [str(f) for f in res.findings]
    assert res.stop_reason == "duration"
    assert res.ops > 1000 and res.races > 0
    assert res.free_clusters_end == res.free_clusters_start
    assert res.ops_by_method["bdev_lvol_delete"] > 50
    lines = (tmp_path / "history.jsonl").read_text().splitlines()
    assert len(lines) >= res.ops


def test_same_seed_same_per_worker_sequence(sim_factory, tmp_path: Path) -> None:
    seqs = []
    for run in ("r1", "r2"):
        sim = sim_factory(sub=run)
        hist = History(tmp_path / f"{run}.jsonl")
        # No lvol ceiling and no follow-up lookups: nothing state-dependent changes which method comes next.
        sim.storm({"duration": 0, "max_ops": 400, "workers": 3, "depth": 2, "seed": 11, "quiesce_every": 0,
                   "final_cleanup": False, "max_lvols": 10_000, "check_busy_delete": False}, hist)
        hist.close()
        per_worker: dict[int, list[tuple[str, str]]] = defaultdict(list)
        records = sorted(History.read(tmp_path / f"{run}.jsonl"), key=lambda r: (r["worker"], r["seq"]))
        for r in records:
            if r["worker"] >= 0:
                name = next((str(v) for k, v in (r["params"] or {}).items()
                             if k in ("lvol_name", "snapshot_name", "clone_name", "new_name")
                             and str(v).startswith("w")), "")
                per_worker[r["worker"]].append((r["method"], name))
        seqs.append(per_worker)
    # Methods and new names per worker, in send order: the same in both runs (targets may differ).
    for w in range(3):
        n = min(len(seqs[0][w]), len(seqs[1][w]))
        assert n > 100
        assert seqs[0][w][:n] == seqs[1][w][:n]


def test_leak_cluster_fault_is_found_and_names_a_delete(sim_factory) -> None:
    sim = sim_factory("--fault", "leak-cluster")
    res = sim.storm({"duration": "3s"}, None)
    leaks = [f for f in res.findings if f.kind == "leaked-clusters"]
    assert leaks, [str(f) for f in res.findings]
    assert leaks[0].op is not None and leaks[0].op["method"] in ("bdev_lvol_delete", "bdev_lvol_resize")


def test_delete_snapshot_with_clones_fault_is_found(sim_factory) -> None:
    sim = sim_factory("--fault", "delete-snapshot-with-clones")
    res = sim.storm({"duration": "3s", "contention": "low", "strategies": ["clone-fanout-delete"]}, None)
    bad = [f for f in res.findings if f.op and f.op["method"] == "bdev_lvol_delete" and "result" in f.op
           and "EPERM" in f.message]
    assert bad, [str(f) for f in res.findings]


def test_forced_removal_is_found_and_the_crash_stops_the_storm(sim_factory, tmp_path: Path) -> None:
    sim = sim_factory("--fault", "forced-removal", mib=1024)
    hist = History(tmp_path / "h.jsonl")
    t0 = time.monotonic()
    res = sim.storm({"duration": "15s", "workers": 2, "depth": 2, "strategies": {"busy-delete": 1},
                     "strategy_share": 1.0}, hist)
    done_at = time.time()
    hist.close()
    busy = [f for f in res.findings if f.kind == "busy-delete-removed"]
    assert busy and "delete answered EBUSY but the lvol is gone" in busy[0].message
    assert busy[0].op["method"] == "bdev_lvol_delete" and busy[0].op["error"]["errno"] == "EBUSY"
    assert res.stop_reason in ("connection_lost", "crash")
    assert sim.proc.wait(5) == -signal.SIGSEGV
    # The storm returned within a second of the death (the last history line is the lost connection).
    last = max(r["t_end"] for r in History.read(tmp_path / "h.jsonl"))
    assert done_at - last < 1.0, done_at - last
    assert time.monotonic() - t0 < 15


def test_stop_event_stops_within_a_second(sim_factory) -> None:
    sim = sim_factory()
    stop = threading.Event()
    threading.Timer(1.0, stop.set).start()
    t0 = time.monotonic()
    res = sim.storm({"duration": "30s", "final_cleanup": False}, None, stop_event=stop)
    assert res.stop_reason == "interrupted"
    assert res.wall_s < 2.0
    assert time.monotonic() - t0 < 10


def test_hung_target_is_an_unresponsive_finding(sim_factory, tmp_path: Path) -> None:
    sim = sim_factory("--fault", "hang", "--fault-after", "200")
    hist = History(tmp_path / "h.jsonl")
    res = sim.storm({"duration": "20s", "op_timeout": "2s"}, hist)
    hist.close()
    assert res.stop_reason == "unresponsive"
    assert any(f.kind == "unresponsive" and "target unresponsive after 2 s" in f.message for f in res.findings)
    assert sum(1 for _ in History.read(tmp_path / "h.jsonl")) >= 150


def test_replay_remaps_uuids(sim_factory, tmp_path: Path) -> None:
    sim = sim_factory(sub="rec")
    hist = History(tmp_path / "rec.jsonl")
    sim.storm({"duration": 0, "max_ops": 150, "workers": 1, "depth": 1, "seed": 5, "quiesce_every": 0,
               "final_cleanup": False}, hist)
    hist.close()
    fresh = sim_factory(sub="fresh")
    import asyncio

    from harness.minimize.operations import load_operations, start_order
    from harness.minimize.plan import serial_plan
    from harness.minimize.replayer import replay_plan

    # The storm's own calls, and the external snapshots its setup made (esnap clones of them are in the mix).
    ops = [op for op in load_operations(tmp_path / "rec.jsonl") if op.worker >= 0 or op.method == "bdev_malloc_create"]
    res = asyncio.run(replay_plan(fresh.host, fresh.sock, serial_plan(start_order(ops))))
    assert len(res.answers) >= 150
    assert len(res.remap.strings) > 5
    assert all(old != new for old, new in res.remap.strings.items())
    # One worker, one in flight: the replay must reproduce every outcome.
    assert res.differing == [], res.differing[:3]


async def _raw_pipelined(host: LocalHost, sock: str, seconds: float, workers: int = 8, depth: int = 4) -> float:
    """The yardstick: the same connections and depth, create/delete pairs, no history, no checks."""
    import asyncio

    from harness.rpc.client import RpcConnection
    from harness.rpc.errors import RpcError

    conns = [await RpcConnection.open(host, sock) for _ in range(workers)]
    n = 0
    t0 = time.monotonic()
    end = t0 + seconds

    async def lane(c: Any, i: int) -> None:
        nonlocal n
        k = 0
        while time.monotonic() < end:
            k += 1
            try:
                u = await c.call("bdev_lvol_create", {"lvs_name": "lvs0", "lvol_name": f"r{id(c)}_{i}_{k}",
                                                      "size_in_mib": 4, "thin_provision": True})
                n += 1
                await c.call("bdev_lvol_delete", {"name": u})
                n += 1
            except RpcError:
                n += 1

    await asyncio.gather(*(lane(c, i) for c in conns for i in range(depth)))
    rate = n / (time.monotonic() - t0)
    for c in conns:
        await c.close()
    return rate


def test_storm_keeps_up_with_a_raw_pipelined_client(sim_factory, tmp_path: Path) -> None:
    """8 connections x depth 4 against spdk-sim polling every 8 ms like spdk_tgt: the storm, with history
    and model checks on, must get close to a bare client (measured ~0.96). Rounds alternate (raw, storm, raw,
    storm) and each side keeps its best, so a burst of load elsewhere hits both sides alike; on a machine
    that stays saturated (two suites at once: 0.58 measured) the rates say little, so there the claim is the
    storm's own CPU: per call small enough to carry the raw client's rate on a fraction of one core."""
    import asyncio

    raw_sim = sim_factory("--poll-interval-ms", "8", sub="raw")
    raws: list[float] = []
    storms: list[tuple[float, float]] = []  # (ops/s, harness CPU seconds per call)
    for round_ in range(2):
        raws.append(asyncio.run(_raw_pipelined(raw_sim.host, raw_sim.sock, 1.5)))
        storm_sim = sim_factory("--poll-interval-ms", "8", sub=f"storm{round_}")
        hist = History(tmp_path / f"h{round_}.jsonl")
        cpu0 = time.process_time()
        res = storm_sim.storm({"duration": "1.5s", "quiesce_every": 0, "final_cleanup": False,
                               "thin_ratio": 1.0, "lvol_size_mib": [4, 4],
                               "mix": {"bdev_lvol_create": 1, "bdev_lvol_delete": 1}}, hist)
        cpu = time.process_time() - cpu0
        hist.close()
        assert res.findings == []
        storms.append((res.ops_per_s, cpu / max(res.ops, 1)))
    raw, (storm, _) = max(raws), max(storms)
    cpu_per_call = min(c for _, c in storms)
    assert cpu_per_call * raw < 0.6, f"{cpu_per_call * 1e6:.0f} us of harness CPU per call cannot carry {raw:.0f}/s"
    saturated = os.getloadavg()[0] > 1.5 * (os.cpu_count() or 1)
    assert storm >= (0.5 if saturated else 0.85) * raw, (storms, raws, os.getloadavg())


def test_a_storm_leaves_almost_nothing_for_the_garbage_collector(sim_factory, tmp_path: Path) -> None:
    """What a storm drops must go when its last reference does. Each error reply used to leave its exception,
    traceback and frames in a reference cycle, and each group of overlapping ops another (op -> group ->
    members -> op): ~8 objects per call at depth 64, and collecting them cost the storm a fifth of its CPU."""
    import gc

    sim = sim_factory()
    hist = History(tmp_path / "history.jsonl")
    gc.collect()
    gc.disable()
    try:
        res = sim.storm({"duration": "2s", "depth": 16, "contention": "high", "seed": 5}, hist)
        garbage = gc.collect()
    finally:
        gc.enable()
        hist.close()
    assert res.findings == [], [str(f) for f in res.findings]
    errors = sum(res.errors_by_errno.values())
    assert res.ops > 1000 and errors > 200
    assert garbage < 500 + 0.2 * res.ops, (garbage, res.ops, errors)
