"""ddmin, the dependency closure, in-flight groups and the whole search, on synthetic histories.

The histories are recorded from the reference target's own dispatcher (in process, no sockets), so results and
UUIDs are real; the runners replay plans onto a fresh dispatcher with random UUIDs, so remapping matters.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from harness.minimize.config import MinimizeConfig
from harness.minimize.ddmin import Budget, BudgetExhausted, CachedTest, ddmin
from harness.minimize.deps import Dependencies, object_units, produces, references
from harness.minimize.operations import Operation, assign_in_flight_groups, before, execution_order, groups_of
from harness.minimize.plan import ReplayPlan, grouped_plan, plan_from_operations, serial_plan
from harness.minimize.remap import Remap
from harness.minimize.search import TrialResult, search, title_key, windows
from harness.sim.methods import Dispatcher
from harness.sim.protocol import RpcFault, SimulatedCrash

pytestmark = pytest.mark.timeout(60)

SEGV_TITLE = "SIGSEGV at 0x8 (fake)"
LVS = "lvs0"


# ---- a recorder and a runner around the in-process reference target ---------------------------------------


class Recorder:
    """Sends calls to an in-process Dispatcher and writes history records the way `History` does."""

    def __init__(self, faults: frozenset[str] = frozenset({"forced-removal"})) -> None:
        self.d = Dispatcher(faults=faults, seed=3)
        self.t = 1000.0
        self.records: list[dict[str, Any]] = []
        self.seq: dict[int, itertools.count[int]] = {}
        self.crashed_at: float | None = None

    def call(self, worker: int, method: str, params: dict[str, Any] | None, *, conn: int | None = None,
             t_start: float | None = None, t_end: float | None = None) -> Any:
        start = self.t if t_start is None else t_start
        end = start + 0.5 if t_end is None else t_end
        if t_start is None:
            self.t += 1.0
        rec: dict[str, Any] = {"v": 1, "worker": worker, "conn": worker if conn is None else conn,
                               "seq": next(self.seq.setdefault(worker, itertools.count(1))), "method": method,
                               "params": params, "t_start": start, "t_end": end}
        result: Any = None
        try:
            if self.crashed_at is not None:
                raise SimulatedCrash("segv")
            result = self.d.handle(method, params)
            rec["result"] = result
        except RpcFault as exc:
            rec["error"] = {"code": exc.code, "message": exc.message, "errno": None}
        except SimulatedCrash:
            rec["error"] = {"code": None, "message": "connection lost", "errno": "ECONNRESET"}
            if self.crashed_at is None:
                self.crashed_at = end
        self.records.append(rec)
        return result

    def ops(self) -> list[Operation]:
        ops = [Operation.from_record(i, r) for i, r in enumerate(self.records)]
        return assign_in_flight_groups(ops)


def setup(rec: Recorder) -> None:
    rec.call(-1, "bdev_malloc_create", {"name": "Malloc0", "num_blocks": 512 * 256, "block_size": 4096})
    rec.call(-1, "bdev_lvol_create_lvstore", {"bdev_name": "Malloc0", "lvs_name": LVS, "cluster_sz": 1 << 20})


def busy_delete_crash(rec: Recorder, worker: int, noise: Callable[[], None] = lambda: None) -> list[int]:
    """The 8 calls that crash the forced-removal target, with `noise` between them; returns their positions."""
    positions = []

    def call(method: str, params: dict[str, Any]) -> Any:
        positions.append(len(rec.records))
        out = rec.call(worker, method, params)
        noise()
        return out

    a = call("bdev_lvol_create", {"lvs_name": LVS, "lvol_name": "big", "size_in_mib": 200})
    p = call("bdev_lvol_snapshot", {"lvol_name": a, "snapshot_name": "P"})
    call("bdev_lvol_decouple_parent", {"name": f"{LVS}/big"})
    call("bdev_lvol_set_parent", {"lvol_name": a, "parent_name": p})
    x = call("bdev_lvol_snapshot", {"lvol_name": f"{LVS}/big", "snapshot_name": "X"})
    call("bdev_lvol_register_snapshot_checksum", {"name": x})
    call("bdev_lvol_delete", {"name": x})
    call("bdev_lvol_delete", {"name": f"{LVS}/P"})
    return positions


class Noise:
    """Other workers doing ordinary work (creates, snapshots, reads, deletes) between the crash's calls."""

    def __init__(self, rec: Recorder, workers: tuple[int, ...] = (1, 2, 3), seed: int = 5) -> None:
        self.rec = rec
        self.workers = workers
        self.rng = random.Random(seed)
        self.n = 0
        self.live: dict[int, list[str]] = {w: [] for w in workers}

    def __call__(self) -> None:
        for _ in range(self.rng.randint(1, 3)):
            w = self.rng.choice(self.workers)
            self.n += 1
            mine = self.live[w]
            roll = self.rng.random()
            if roll < 0.35 or not mine:
                uuid = self.rec.call(w, "bdev_lvol_create", {"lvs_name": LVS, "lvol_name": f"n{w}_{self.n}",
                                                              "size_in_mib": 4, "thin_provision": True})
                if isinstance(uuid, str):
                    mine.append(uuid)
            elif roll < 0.55:
                snap = self.rec.call(w, "bdev_lvol_snapshot", {"lvol_name": self.rng.choice(mine),
                                                                "snapshot_name": f"s{w}_{self.n}"})
                if isinstance(snap, str):
                    mine.append(snap)
            elif roll < 0.8:
                self.rec.call(w, "bdev_get_bdevs", {"name": self.rng.choice(mine)})
            else:
                self.rec.call(w, "bdev_lvol_delete", {"name": mine.pop(self.rng.randrange(len(mine)))})


class DispatcherRunner:
    """Replays a plan onto a fresh in-process target with random UUIDs; steps run in order, calls in order."""

    def __init__(self, faults: frozenset[str] = frozenset({"forced-removal"}),
                 crash_if: Callable[[ReplayPlan], str | None] | None = None) -> None:
        self.faults = faults
        self.crash_if = crash_if
        self.runs = 0
        self.plans: list[ReplayPlan] = []

    def run(self, plan: ReplayPlan) -> TrialResult:
        self.runs += 1
        self.plans.append(plan)
        d = Dispatcher(faults=self.faults)
        remap = Remap()
        for step in plan.steps:
            for op in step:
                try:
                    result = d.handle(op.method, remap.apply(op.params))
                except RpcFault:
                    continue
                except SimulatedCrash as crash:
                    return TrialResult(SEGV_TITLE if crash.kind == "segv" else f"{crash.kind} (fake)")
                if op.ok:
                    remap.learn(op.result, result)
        if self.crash_if is not None:
            return TrialResult(self.crash_if(plan))
        return TrialResult(None)


def fast_config(**kw: Any) -> MinimizeConfig:
    return MinimizeConfig(**{"budget_s": 50.0, "max_tries": 2000, **kw})


# ---- deps ---------------------------------------------------------------------------------------------------


def op(i: int, method: str, params: Any, result: Any = True, error: Any = None, worker: int = 0,
       t: float | None = None, t_end: float | None = None, conn: int | None = None) -> Operation:
    start = float(i) if t is None else t
    return Operation(i, worker, worker if conn is None else conn, i, method, params, start,
                     start + 0.5 if t_end is None else t_end, result, error)


def test_references_and_products_follow_spdk_param_names() -> None:
    create = op(0, "bdev_lvol_create", {"lvs_name": "lvs0", "lvol_name": "A", "size_in_mib": 4}, "u-1")
    assert produces(create) == {"u-1", "A", "lvs0/A"}
    assert references(create) == {"lvs0"}  # the new name is not a reference
    snap = op(1, "bdev_lvol_snapshot", {"lvol_name": "lvs0/A", "snapshot_name": "S"}, "u-2")
    assert references(snap) == {"lvs0/A", "lvs0", "A"} and produces(snap) == {"u-2", "S"}
    refused = op(2, "bdev_lvol_create", {"lvs_name": "lvs0", "lvol_name": "B", "size_in_mib": 4}, None,
                 {"code": -17, "message": "File exists", "errno": "EEXIST"})
    assert produces(refused) == set()
    copy = op(3, "bdev_lvol_start_shallow_copy", {"src_lvol_name": "u-2", "dst_bdev_name": "D"},
              {"operation_id": 7})
    check = op(4, "bdev_lvol_check_shallow_copy", {"operation_id": 7}, {"state": "complete"})
    assert "#7" in produces(copy) and references(check) == {"#7"}


def test_closure_keeps_creates_renames_and_the_latest_producer() -> None:
    ops = [
        op(0, "bdev_lvol_create_lvstore", {"bdev_name": "M", "lvs_name": "lvs0"}, "lvs-u"),
        op(1, "bdev_lvol_create", {"lvs_name": "lvs0", "lvol_name": "A", "size_in_mib": 4}, "u-a1"),
        op(2, "bdev_lvol_delete", {"name": "u-a1"}),
        op(3, "bdev_lvol_create", {"lvs_name": "lvs0", "lvol_name": "A", "size_in_mib": 4}, "u-a2"),
        op(4, "bdev_lvol_rename", {"old_name": "lvs0/A", "new_name": "B"}),
        op(5, "bdev_lvol_snapshot", {"lvol_name": "lvs0/B", "snapshot_name": "S"}, "u-s"),
        op(6, "bdev_get_bdevs", {"name": "u-s"}, [{}]),
        op(7, "bdev_lvol_create", {"lvs_name": "lvs0", "lvol_name": "C", "size_in_mib": 4}, "u-c"),
    ]
    deps = Dependencies(ops)
    assert deps.closure([6]) == [0, 3, 4, 5, 6]  # the second create of A (latest producer), not the first
    assert deps.closure([2]) == [0, 1, 2]
    assert deps.closure([7]) == [0, 7]
    assert deps.direct(5) == frozenset({0, 4})


def test_object_units_gather_an_lvols_whole_life() -> None:
    ops = [
        op(0, "bdev_lvol_create_lvstore", {"bdev_name": "M", "lvs_name": "lvs0"}, "lvs-u"),
        op(1, "bdev_lvol_create", {"lvs_name": "lvs0", "lvol_name": "A", "size_in_mib": 4}, "u-a"),
        op(2, "bdev_lvol_resize", {"name": "u-a", "size_in_mib": 8}),
        op(3, "bdev_lvol_snapshot", {"lvol_name": "lvs0/A", "snapshot_name": "S"}, "u-s"),
        op(4, "bdev_get_bdevs", {"name": "lvs0/S"}, [{}]),
        op(5, "bdev_lvol_delete", {"name": "lvs0/A"}),
        op(6, "bdev_lvol_get_lvols", {"lvs_name": "lvs0"}, []),
    ]
    units = object_units(ops)
    assert units == {0: 0, 1: 1, 2: 1, 3: 3, 4: 3, 5: 1, 6: 0}


# ---- in-flight groups and plans ---------------------------------------------------------------------------


def test_in_flight_groups_need_a_common_instant_not_a_chain() -> None:
    ops = [
        op(0, "m", None, t=0.0, t_end=1.0, worker=0),
        op(1, "m", None, t=0.2, t_end=0.6, worker=1),
        op(2, "m", None, t=0.5, t_end=2.0, worker=2),   # overlaps 0 and 1: same instant 0.5
        op(3, "m", None, t=0.8, t_end=3.0, worker=3),   # 1 ended at 0.6 before it started: new group
        op(4, "m", None, t=1.5, t_end=2.5, worker=0),   # overlaps 3 (and 2): same group as 3
        op(5, "m", None, t=3.5, t_end=4.0, worker=1),
    ]
    grouped = assign_in_flight_groups(ops)
    assert [o.group for o in grouped] == [0, 0, 0, 1, 1, 2]
    plan = grouped_plan(grouped)
    assert [len(s) for s in plan.steps] == [3, 2, 1] and plan.concurrent_steps == 2
    assert [len(s) for s in grouped_plan(grouped, frozenset({1})).steps] == [3, 1, 1, 1]
    serial = serial_plan(execution_order(grouped))
    # Serial replay follows the reply order: the order a one-reactor target executed them in.
    assert serial.mode == "serial" and [o.index for o in serial.ops] == [1, 0, 2, 4, 3, 5]
    # A repro.min.jsonl is read back in its step order, whatever the recorded times say.
    steps = [dataclasses.replace(o, group=n) for n, o in enumerate(reversed(ops))]
    assert [o.index for o in plan_from_operations(steps).ops] == [5, 4, 3, 2, 1, 0]
    assert [[o.index for o in g] for g in groups_of(grouped)] == [[0, 1, 2], [3, 4], [5]]
    # A run's history has no groups: they are derived from the times.
    assert [len(s) for s in plan_from_operations(ops).steps] == [3, 2, 1]
    assert before(ops, 1.5) == ops[:5]


def test_pipelined_calls_on_one_connection_are_one_group() -> None:
    ops = [op(i, "m", None, t=10.0 + i * 0.001, t_end=10.01, worker=4, conn=12) for i in range(5)]
    ops.append(op(5, "m", None, t=10.02, t_end=10.03, worker=4, conn=12))
    plan = grouped_plan(assign_in_flight_groups(ops))
    assert [len(s) for s in plan.steps] == [5, 1]
    assert {o.conn_key for o in plan.ops} == {(4, 12)}


def test_remap_replaces_uuids_aliases_and_ids_without_touching_the_input() -> None:
    remap = Remap()
    remap.learn("old-u", "new-u")
    remap.learn({"operation_id": 3}, {"operation_id": 0})
    remap.learn(True, True)
    params = {"name": "old-u", "alias": "lvs0/old-u", "operation_id": 3, "size_in_mib": 3, "list": ["old-u"]}
    assert remap.apply(params) == {"name": "new-u", "alias": "lvs0/new-u", "operation_id": 0, "size_in_mib": 3,
                                   "list": ["new-u"]}
    assert params["name"] == "old-u"


# ---- ddmin --------------------------------------------------------------------------------------------------


def test_ddmin_finds_the_two_needed_items() -> None:
    test = CachedTest(lambda c: {13, 71} <= set(c))
    assert ddmin(list(range(100)), test) == [13, 71]
    assert test.runs < 100


def test_ddmin_keeps_what_kept_items_depend_on() -> None:
    needs = {71: {40}, 40: {2}}

    def closure(items: list[int]) -> list[int]:
        out = set(items)
        stack = list(items)
        while stack:
            for d in needs.get(stack.pop(), ()):
                if d not in out:
                    out.add(d)
                    stack.append(d)
        return sorted(out)

    tried: list[list[int]] = []

    def test(c: list[int]) -> bool:
        tried.append(c)
        return {13, 71} <= set(c)

    assert ddmin(list(range(100)), CachedTest(test), closure=closure) == [2, 13, 40, 71]
    assert all(set(closure(c)) == set(c) for c in tried)  # never a candidate missing a dependency


def test_ddmin_stops_on_budget_with_a_passing_candidate() -> None:
    budget = Budget(max_tries=10, seconds=60)

    def test(c: list[int]) -> bool:
        budget.spend()
        return {13, 71} <= set(c)

    out = ddmin(list(range(100)), test)
    assert {13, 71} <= set(out) and len(out) < 100
    assert budget.tries == 10 and budget.exhausted
    with pytest.raises(BudgetExhausted):
        budget.spend()


def test_windows_grow_to_the_whole_history() -> None:
    assert windows(10) == [10]
    assert windows(1000, first=16) == [16, 64, 256, 1000]
    assert windows(100_000) == [4096, 16384, 65536, 100_000]


# ---- the whole search ------------------------------------------------------------------------------------


def crashing_history(noise_workers: tuple[int, ...] = (1, 2, 3)) -> tuple[list[Operation], float, list[int]]:
    rec = Recorder()
    setup(rec)
    noise = Noise(rec, noise_workers)
    for _ in range(10):
        noise()
    positions = busy_delete_crash(rec, 0, noise)
    assert rec.crashed_at is not None
    for _ in range(5):
        noise()  # after the crash: must be cut away
    ops = rec.ops()
    return before(ops, rec.crashed_at), rec.crashed_at, positions


def test_search_cuts_a_noisy_history_to_the_crash_and_its_setup() -> None:
    ops, _, positions = crashing_history()
    assert len(ops) > 40
    runner = DispatcherRunner()
    progress: list[str] = []
    out = search(ops, SEGV_TITLE, runner, fast_config(), progress=progress.append)
    assert out.reproduced and out.stop_reason == "done"
    kept = [o.index for o in out.plan.ops]
    assert kept == [0, 1, *positions]  # malloc, lvstore, then exactly the 8 crash calls
    assert out.plan.mode == "serial"
    assert out.rate == (3, 3) and out.ops_before == len(ops) and out.ops_after == 10
    assert any("ddmin" in p for p in progress) and any("rate 3/3" in p for p in progress)
    assert [p.name for p in out.phases][:4] == ["reproduce", "drop workers and reads", "ddmin over objects",
                                                "ddmin"]


def test_search_keeps_two_operations_in_flight_when_the_crash_needs_them() -> None:
    """A failure that needs two calls in flight at once: serial never crashes, the group must survive."""
    rec = Recorder(frozenset())
    setup(rec)
    rec.call(0, "bdev_lvol_create", {"lvs_name": LVS, "lvol_name": "A", "size_in_mib": 4})
    for i in range(6):
        rec.call(1, "bdev_lvol_create", {"lvs_name": LVS, "lvol_name": f"n{i}", "size_in_mib": 4})
    t = rec.t
    rec.call(0, "bdev_lvol_delete", {"name": f"{LVS}/A"}, t_start=t, t_end=t + 0.3)
    rec.call(1, "bdev_get_bdevs", {"name": f"{LVS}/n1"}, t_start=t + 0.01, t_end=t + 0.2)  # in flight too
    rec.call(2, "bdev_lvol_snapshot", {"lvol_name": f"{LVS}/A", "snapshot_name": "S"}, t_start=t + 0.1,
             t_end=t + 0.4)
    rec.t = t + 1
    for i in range(4):
        rec.call(1, "bdev_get_bdevs", {"name": f"{LVS}/n{i}"})
    ops = assign_in_flight_groups([Operation.from_record(i, r) for i, r in enumerate(rec.records)])
    delete, snap = (o for o in ops if o.method in ("bdev_lvol_delete", "bdev_lvol_snapshot"))
    assert delete.group == snap.group

    def race(plan: ReplayPlan) -> str | None:
        for step in plan.steps:
            methods = {o.index for o in step}
            if {delete.index, snap.index} <= methods:
                return "SIGSEGV in race (fake)"
        return None

    runner = DispatcherRunner(frozenset(), crash_if=race)
    out = search(ops, "SIGSEGV in race (fake)", runner, fast_config())
    assert out.reproduced and out.rate == (3, 3)
    assert out.plan.mode == "grouped"
    together = [s for s in out.plan.steps if len(s) > 1]
    assert [sorted(o.index for o in s) for s in together] == [sorted([delete.index, snap.index])]
    # The create of A stays (both racers name it), the bystander in the group and the noise go.
    assert sorted(o.method for o in out.plan.ops) == ["bdev_lvol_create", "bdev_lvol_create_lvstore",
                                                      "bdev_lvol_delete", "bdev_lvol_snapshot",
                                                      "bdev_malloc_create"]
    assert any(p.mode == "serial" for p in runner.plans)  # serial was tried first


def test_flaky_candidates_count_only_with_k_of_n() -> None:
    ops, _, _ = crashing_history(noise_workers=(1,))
    flips = itertools.cycle([True, False, False])  # the crash shows once in three tries

    class Flaky(DispatcherRunner):
        def run(self, plan: ReplayPlan) -> TrialResult:
            result = super().run(plan)
            return result if next(flips) else TrialResult(None)

    out = search(ops, SEGV_TITLE, Flaky(), fast_config(max_tries=60))
    assert not out.reproduced  # 1 of 3 never reaches k=2
    out1 = search(ops, SEGV_TITLE, Flaky(), fast_config(k=1, max_tries=400, final_runs=6))
    assert out1.reproduced and out1.ops_after == 10 and out1.rate == (2, 6)


def test_another_title_is_reported_and_the_search_keeps_the_original() -> None:
    ops, _, positions = crashing_history(noise_workers=(1,))
    checksum = positions[5]

    def other(plan: ReplayPlan) -> str | None:
        # Without the checksum call the fake target dies another way (after replaying everything).
        return None if any(o.index == checksum for o in plan.ops) else "SIGABRT: other bug (fake)"

    out = search(ops, SEGV_TITLE, DispatcherRunner(crash_if=other), fast_config())
    assert out.reproduced and out.ops_after == 10
    assert out.other_titles.get("SIGABRT: other bug (fake)", 0) >= 1


def test_a_ratelimited_fault_line_neither_confirms_nor_refutes(monkeypatch: pytest.MonkeyPatch) -> None:
    import harness.minimize.search as search_module

    monkeypatch.setattr(search_module, "RATELIMIT_PAUSE_S", 0.0)
    ops, _, _ = crashing_history(noise_workers=(1,))
    thin = itertools.cycle([False, False, True])  # every third death lost its kernel line

    class Ratelimited(DispatcherRunner):
        def run(self, plan: ReplayPlan) -> TrialResult:
            result = super().run(plan)
            if result.title is not None and next(thin):
                return TrialResult("SIGSEGV: no kernel line (kernel log unavailable or ratelimited)")
            return result

    out = search(ops, SEGV_TITLE, Ratelimited(), fast_config())
    assert out.reproduced and out.ops_after == 10
    assert out.other_titles == {}


def test_libc_routine_variants_are_one_title() -> None:
    assert title_key("SIGSEGV in __memcpy_avx512_unaligned_erms (memmove-vec-unaligned-erms.S:372)") == \
        title_key("SIGSEGV in memcpy (libc)") == "SIGSEGV in memcpy (libc)"
    assert title_key("SIGSEGV in __memmove_avx_unaligned_erms") == "SIGSEGV in memcpy (libc)"
    # one bug on two builds (the line moved) is one title; another function is another bug
    assert title_key("SIGSEGV in spdk_lvol_destroy (lvol.c:1884)") == \
        title_key("SIGSEGV in spdk_lvol_destroy (lib/lvol/lvol.c:1890)") == "SIGSEGV in spdk_lvol_destroy (lvol.c)"
    other = "SIGSEGV in lvol_delete_blob_cb (lvol.c:1884)"
    assert title_key("SIGSEGV in spdk_lvol_destroy (lvol.c:1884)") != title_key(other)


def test_a_history_that_does_not_crash_on_replay_keeps_the_full_reproducer() -> None:
    ops, _, _ = crashing_history(noise_workers=(1,))
    out = search(ops, SEGV_TITLE, DispatcherRunner(frozenset()), fast_config())
    assert not out.reproduced and len(out.plan) == len(ops)
    assert "timing" in out.stop_reason and out.rate == (0, 0)


def test_budget_bounds_the_search_and_keeps_a_reproducing_result() -> None:
    ops, _, positions = crashing_history()
    runner = DispatcherRunner()
    out = search(ops, SEGV_TITLE, runner, fast_config(max_tries=12))
    assert out.reproduced and "try budget" in out.stop_reason
    assert set(positions) <= {o.index for o in out.plan.ops}
    assert runner.runs <= 12 + 3  # the rate runs come on top of the budget


# ---- one-write batches --------------------------------------------------------------------------------------


def batched_crash_history() -> tuple[list[Operation], list[int]]:
    """The crashing history with the checksum and the busy delete recorded as one write (as the storm's
    busy-delete corks them): overlapping, the delete answered first."""
    rec = Recorder()
    setup(rec)
    noise = Noise(rec, (1, 2))
    for _ in range(5):
        noise()
    positions = busy_delete_crash(rec, 0, noise)
    checksum, delete = rec.records[positions[5]], rec.records[positions[6]]
    checksum["batch"] = delete["batch"] = "0.0-1"
    delete["t_start"] = checksum["t_start"] + 0.0001
    checksum["t_end"], delete["t_end"] = checksum["t_start"] + 0.004, checksum["t_start"] + 0.003
    assert rec.crashed_at is not None
    return before(rec.ops(), rec.crashed_at), positions


def test_a_one_write_batch_is_one_step_in_write_order_in_every_mode_unless_split() -> None:
    ops, positions = batched_crash_history()
    checksum, delete = positions[5], positions[6]
    by_index = {o.index: o for o in ops}
    key = by_index[checksum].batch_key
    assert key == (0, 0, "0.0-1") and by_index[checksum].group == by_index[delete].group
    # Reply order puts the delete first; the batch still goes as one step, checksum then delete.
    serial = serial_plan(execution_order(ops))
    step = next(s for s in serial.steps if len(s) > 1)
    assert [o.index for o in step] == [checksum, delete]
    assert serial.mode == "serial" and serial.batches == 1 and serial.concurrent_steps == 1
    assert "1 one-write batch" in serial.describe()
    apart = serial_plan(execution_order(ops), frozenset({key}))
    assert apart.batches == 0 and all(len(s) == 1 for s in apart.steps)
    assert all(o.batch is None for o in apart.ops)
    grouped = assign_in_flight_groups(ops)
    group = by_index[checksum].group
    dissolved = grouped_plan(grouped, frozenset({group}))
    assert [o.index for o in next(s for s in dissolved.steps if len(s) > 1)] == [checksum, delete]
    # A batch the minimizer cut down to one call is just a call.
    alone = serial_plan([o for o in ops if o.index != checksum])
    assert alone.batches == 0 and all(o.batch is None for o in alone.ops)
    # repro.min.jsonl keeps the batch: read back, the same step comes out.
    from harness.minimize.output import minimal_records

    records = minimal_records(serial)
    assert [r.get("batch") for r in records].count("0.0-1") == 2
    again = plan_from_operations([Operation.from_record(i, r) for i, r in enumerate(records)])
    assert [[o.index for o in s] for s in again.steps] == [[o.index for o in s] for s in serial.steps]
    assert again.mode == "serial" and again.batches == 1


def test_search_keeps_a_batch_only_when_the_crash_needs_it() -> None:
    ops, positions = batched_crash_history()
    checksum, delete = positions[5], positions[6]
    # The in-process target runs one call at a time whatever the writes: the batch is not needed.
    progress: list[str] = []
    out = search(ops, SEGV_TITLE, DispatcherRunner(), fast_config(), progress=progress.append)
    assert out.reproduced and out.plan.batches == 0
    assert any("need not be one write" in p for p in progress)

    def needs_the_batch(plan: ReplayPlan) -> str | None:
        for step in plan.steps:
            if {o.index for o in step if o.batch is not None} == {checksum, delete}:
                return "SIGSEGV in race (fake)"
        return None

    out = search(ops, "SIGSEGV in race (fake)", DispatcherRunner(frozenset(), crash_if=needs_the_batch),
                 fast_config())
    assert out.reproduced and out.plan.batches == 1 and out.rate == (3, 3)
    assert out.plan.mode == "serial"  # one connection; only the batch goes in one write
    # The racers and what makes X (its lvol's create and the snapshot): the rest of the episode goes.
    assert [o.method for o in out.plan.ops] == [
        "bdev_malloc_create", "bdev_lvol_create_lvstore", "bdev_lvol_create", "bdev_lvol_snapshot",
        "bdev_lvol_register_snapshot_checksum", "bdev_lvol_delete"]


def test_replay_writes_a_batch_in_one_write(tmp_path: Path) -> None:
    """The replayer corks a batch: a fake target sees its calls in one read; the calls around it alone."""
    import asyncio

    from harness.hosts.local import LocalHost
    from harness.minimize.replayer import replay_plan

    sock_path = str(tmp_path / "s.sock")
    reads: list[list[str]] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        decoder = json.JSONDecoder()
        while data := await reader.read(65536):
            text, methods = data.decode(), []
            while text.strip():
                req, end = decoder.raw_decode(text.lstrip())
                text = text.lstrip()[end:]
                methods.append(req["method"])
                writer.write(json.dumps({"jsonrpc": "2.0", "id": req["id"], "result": True}).encode())
            reads.append(methods)
            await writer.drain()
        writer.close()

    ops = [op(0, "a", {}), op(1, "b", {}, t=1.0, t_end=1.5), op(2, "c", {}, t=1.001, t_end=1.4), op(3, "d", {})]
    ops[1:3] = [dataclasses.replace(o, batch="0.0-1") for o in ops[1:3]]
    plan = serial_plan(execution_order(ops))
    assert [len(s) for s in plan.steps] == [1, 2, 1]

    async def run() -> None:
        server = await asyncio.start_unix_server(serve, sock_path)
        try:
            out = await replay_plan(LocalHost(), sock_path, plan, op_timeout_s=5)
            assert len(out.answers) == 4 and not out.differing
        finally:
            server.close()
            await server.wait_closed()

    asyncio.run(asyncio.wait_for(run(), 20))
    assert reads == [["a"], ["b", "c"], ["d"]]


def test_repro_min_py_writes_a_batch_at_once_and_takes_its_replies_in_any_order(tmp_path: Path) -> None:
    """SPDK answers a checksum only when its job is done, after the delete written behind it: the script must
    match replies by id across calls, and write the batch in one write (the fake target sees one read)."""
    import asyncio
    import sys

    from harness.minimize.output import python_script

    sock_path = str(tmp_path / "s.sock")
    reads: list[list[str]] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        decoder = json.JSONDecoder()
        while data := await reader.read(65536):
            text, requests = data.decode(), []
            while text.strip():
                req, end = decoder.raw_decode(text.lstrip())
                text = text.lstrip()[end:]
                requests.append(req)
            reads.append([r["method"] for r in requests])
            for req in reversed(requests):  # the last request of a read is answered first
                writer.write(json.dumps({"jsonrpc": "2.0", "id": req["id"], "result": True}).encode())
            await writer.drain()
        writer.close()

    ops = [op(0, "a", {}), op(1, "b", {}, t=1.0, t_end=1.5), op(2, "c", {}, t=1.001, t_end=1.4), op(3, "d", {})]
    ops[1:3] = [dataclasses.replace(o, batch="0.0-1") for o in ops[1:3]]
    script = tmp_path / "repro.min.py"
    script.write_text(python_script(serial_plan(execution_order(ops)), "SIGSEGV x", "3/3"))

    async def run() -> tuple[int, str]:
        server = await asyncio.start_unix_server(serve, sock_path)
        try:
            proc = await asyncio.create_subprocess_exec(sys.executable, str(script), sock_path,
                                                        stdout=asyncio.subprocess.PIPE)
            out, _ = await asyncio.wait_for(proc.communicate(), 20)
            return proc.returncode or 0, out.decode()
        finally:
            server.close()
            await server.wait_closed()

    rc, out = asyncio.run(run())
    assert rc == 0 and "NOT reproduced" in out and "no reply" not in out, out
    assert reads[:3] == [["a"], ["b", "c"], ["d"]]  # then the script's own liveness probe
    assert out.count("(one write: batch 0.0-1)") == 2


def test_a_try_the_machine_could_not_set_up_neither_confirms_nor_refutes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Other jobs holding the hugepages make the base bdev's create answer ENOMEM: that try never ran the
    candidate, so it is run again instead of counting as a survival."""
    import harness.minimize.search as search_module
    from harness.minimize.replayer import Answer, ReplayOutcome
    from harness.minimize.search import SETUP_REFUSED
    from harness.minimize.trial import environment_refusal

    setup_op = op(0, "bdev_malloc_create", {"name": "Malloc0"}, result="Malloc0", worker=-1)
    create = op(1, "bdev_lvol_create", {"lvol_name": "a"}, result="u1")
    refused = op(2, "bdev_lvol_delete", {"name": "a"}, error={"code": -19, "errno": "ENODEV"})
    enomem = {"code": -12, "message": "Cannot allocate memory", "errno": "ENOMEM"}
    assert environment_refusal(ReplayOutcome([Answer(setup_op, {}, error=enomem)])) is not None
    assert environment_refusal(ReplayOutcome([Answer(create, {}, error=enomem)])) is not None
    busy = {"code": -16, "message": "Device or resource busy", "errno": "EBUSY"}
    assert environment_refusal(ReplayOutcome([Answer(create, {}, error=busy),  # the candidate's own answer
                                              Answer(refused, {}, error=enomem)])) is None  # recorded an error too

    monkeypatch.setattr(search_module, "RATELIMIT_PAUSE_S", 0.0)
    ops, _, _ = crashing_history(noise_workers=(1,))
    starved = itertools.cycle([False, False, True])

    class Starved(DispatcherRunner):
        def run(self, plan: ReplayPlan) -> TrialResult:
            result = super().run(plan)
            if next(starved):
                return TrialResult(f"{SETUP_REFUSED}: bdev_malloc_create answered ENOMEM on replay")
            return result

    out = search(ops, SEGV_TITLE, Starved(), fast_config())
    assert out.reproduced and out.ops_after == 10 and out.rate == (3, 3)
    assert out.other_titles == {}


def test_a_search_the_machine_keeps_refusing_stops_at_once_and_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every fresh target refuses the setup (the minimizer forgot a bdev's memory, or other jobs hold the
    hugepages): two refusals in a row end the search; it does not spend its budget on tries that cannot run."""
    import harness.minimize.search as search_module
    from harness.minimize.search import SETUP_REFUSED

    monkeypatch.setattr(search_module, "RATELIMIT_PAUSE_S", 0.0)
    ops, _, _ = crashing_history(noise_workers=(1,))

    class Refusing(DispatcherRunner):
        def run(self, plan: ReplayPlan) -> TrialResult:
            self.runs += 1
            return TrialResult(f"{SETUP_REFUSED}: bdev_malloc_create answered ENOMEM on replay, ok in the recording")

    runner = Refusing()
    out = search(ops, SEGV_TITLE, runner, fast_config())
    assert not out.reproduced and runner.runs == 2
    assert out.stop_reason.startswith("stopped after 2 tries in a row the fresh target could not run as recorded")
    assert "bdev_malloc_create answered ENOMEM" in out.stop_reason


def test_a_crash_that_reproduces_every_time_is_decided_by_one_try_per_candidate(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """k-of-n guards flaky crashes; once the first candidates were unanimous, one try decides each (a try on a
    real target is a target start). The result and its rate are those of the k-of-n search."""
    import harness.minimize.search as search_module

    ops, _, _ = crashing_history(noise_workers=(1,))
    adaptive = DispatcherRunner()
    out = search(ops, SEGV_TITLE, adaptive, fast_config())
    assert out.reproduced and out.ops_after == 10 and out.rate == (3, 3)
    monkeypatch.setattr(search_module, "UNANIMOUS_BEFORE_ONE_TRY", 10**9)  # never adapt
    fixed = DispatcherRunner()
    out_fixed = search(ops, SEGV_TITLE, fixed, fast_config())
    assert [o.index for o in out_fixed.plan.ops] == [o.index for o in out.plan.ops]  # the same reproducer
    assert adaptive.runs < fixed.runs * 0.75, (adaptive.runs, fixed.runs)


def test_the_crashing_strategy_episode_is_tried_first_and_saves_tries() -> None:
    """The history tags a strategy episode's calls (`episode`); the episode the death cut off is the first
    candidate, and the search gets there in fewer tries than from the worker's whole history."""
    ops, _, positions = crashing_history(noise_workers=(0, 1, 2))  # worker 0 also sends plain mix calls
    tagged = [dataclasses.replace(op, episode="0.7:busy-delete") if op.index in positions else op for op in ops]
    messages: list[str] = []
    untagged_runner, tagged_runner = DispatcherRunner(), DispatcherRunner()
    plain = search(ops, SEGV_TITLE, untagged_runner, fast_config())
    out = search(tagged, SEGV_TITLE, tagged_runner, fast_config(), progress=messages.append)
    first = next(m for m in messages if m.startswith("minimize: trying"))
    assert first.startswith("minimize: trying the crashing episode 0.7:busy-delete"), first
    assert out.reproduced and out.ops_after == plain.ops_after == 10
    assert tagged_runner.runs < untagged_runner.runs, (tagged_runner.runs, untagged_runner.runs)


def test_the_episode_cut_off_in_the_rpc_on_the_crashing_stack_goes_before_a_smaller_one() -> None:
    """A long call of another episode is cut off by the same death (on the asis build a checksum sent before
    the fatal delete): the episode whose cut-off call is the RPC on the crashing stack is tried first, however
    small the other; without a stack, smallest first as before."""
    ops, _, positions = crashing_history(noise_workers=(1, 2))
    decoy = next(op for op in ops if op.worker != 0 and op.index > positions[-3] and op.method != "bdev_lvol_delete")
    lost = {"code": None, "message": "connection lost", "errno": "ECONNRESET"}
    tagged = [dataclasses.replace(op, episode="0.7:busy-delete") if op.index in positions
              else dataclasses.replace(op, episode="1.2:decoy", error=lost, result=None) if op is decoy else op
              for op in ops]

    def first_try(stack_method: str | None) -> tuple[str, int, bool]:
        messages: list[str] = []
        runner = DispatcherRunner()
        out = search(tagged, SEGV_TITLE, runner, fast_config(), progress=messages.append,
                     stack_method=stack_method)
        return next(m for m in messages if m.startswith("minimize: trying")), runner.runs, out.reproduced

    blind, blind_runs, blind_ok = first_try(None)
    told, told_runs, told_ok = first_try("bdev_lvol_delete")
    assert "episode 1.2:decoy" in blind, blind
    assert "episode 0.7:busy-delete" in told, told
    assert blind_ok and told_ok and told_runs < blind_runs, (told_runs, blind_runs)
