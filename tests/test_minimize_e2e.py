"""End to end on the reference target: a crashing multi-connection history -> crash dir -> minimize -> the
minimal reproducer (repro.min.py, and `lvol-storm replay` of repro.min.jsonl) crashes a fresh target.

The crashing history is made the way a storm makes one: noise workers pipelining calls on their own
connections, one worker running the 6-call forced-removal sequence with the busy checksum and the delete
written in one write (cork, as the storm's busy-delete does), the watchdog noticing the SIGSEGV, a CrashReport
written by the report code.
"""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from harness.cli import main as cli_main
from harness.errors import ConfigError
from harness.history import History
from harness.hosts.local import LocalHost
from harness.minimize.config import MinimizeConfig
from harness.minimize.crash import minimize_crash
from harness.minimize.operations import load_operations
from harness.minimize.plan import plan_from_operations
from harness.minimize.replayer import replay_plan
from harness.minimize.trial import plan_needs
from harness.rpc.client import RpcConnection
from harness.rpc.errors import RpcError
from harness.rpc.sync import SyncRpc
from harness.session import TargetNeeds, TargetSession
from harness.spdk_memory import malloc_total_mib
from harness.target import TargetConfig
from harness.watch.config import WatchConfig

pytestmark = pytest.mark.timeout(90)

REPO = Path(__file__).resolve().parent.parent
LVS = "lvs0"
Minimized = tuple[Path, Any, int, list[str]]
"""crash dir, MinimizeResult, operations recorded, the search's progress messages."""
SIM = TargetConfig(kind="sim", sim_fault="forced-removal")


async def _noise(host: LocalHost, sock: str, history: History, worker: int, stop: asyncio.Event) -> None:
    """Ordinary work, a few calls pipelined at a time, until the crash."""
    rng = random.Random(worker)
    conn = await RpcConnection.open(host, sock, history=history, worker=worker, conn=worker)
    mine: list[str] = []
    n = 0
    try:
        while not stop.is_set() and n < 400:
            n += 1
            calls = []
            for _ in range(rng.randint(1, 4)):
                roll = rng.random()
                name = f"{worker}_{n}_{len(calls)}"
                if roll < 0.4 or not mine:
                    calls.append(conn.call("bdev_lvol_create", {"lvs_name": LVS, "lvol_name": f"n{name}",
                                                                "size_in_mib": 4, "thin_provision": True}, timeout=5))
                elif roll < 0.6:
                    calls.append(conn.call("bdev_lvol_snapshot", {"lvol_name": rng.choice(mine),
                                                                  "snapshot_name": f"s{name}"}, timeout=5))
                elif roll < 0.85:
                    calls.append(conn.call("bdev_get_bdevs", {"name": rng.choice(mine)}, timeout=5))
                else:
                    calls.append(conn.call("bdev_lvol_delete", {"name": mine.pop(rng.randrange(len(mine)))}, timeout=5))
            for res in await asyncio.gather(*calls, return_exceptions=True):
                if isinstance(res, str):
                    mine.append(res)
                elif isinstance(res, RpcError) and res.errno_name == "ECONNRESET":
                    return
            await asyncio.sleep(0.002)
    finally:
        await conn.close()


async def _crasher(host: LocalHost, sock: str, history: History, stop: asyncio.Event) -> None:
    """The forced-removal sequence, 6 lvol calls: A, snapshots P and X of it (X is then P's only clone), the
    checksum of X and the delete of X written in ONE write as the storm's busy-delete writes them (the target
    reads them in one poll: the delete meets the checksum's open blob, answers EBUSY and removes X's lvol
    anyway), then the delete of P, which dies on the clone with no lvol."""
    conn = await RpcConnection.open(host, sock, history=history, worker=0, conn=0)
    try:
        await asyncio.sleep(0.15)
        a = await conn.call("bdev_lvol_create", {"lvs_name": LVS, "lvol_name": "A", "size_in_mib": 16})
        await asyncio.sleep(0.03)
        p = await conn.call("bdev_lvol_snapshot", {"lvol_name": a, "snapshot_name": "P"})
        await asyncio.sleep(0.03)
        x = await conn.call("bdev_lvol_snapshot", {"lvol_name": f"{LVS}/A", "snapshot_name": "X"})
        await asyncio.sleep(0.03)
        conn.cork()
        racers = [asyncio.ensure_future(conn.call("bdev_lvol_register_snapshot_checksum", {"name": x})),
                  asyncio.ensure_future(conn.call("bdev_lvol_delete", {"name": x}))]
        asyncio.get_running_loop().call_soon(conn.uncork)
        await asyncio.gather(*racers, return_exceptions=True)
        await asyncio.sleep(0.05)
        try:
            await conn.call("bdev_lvol_delete", {"name": p}, timeout=5)
        except RpcError:
            pass
    finally:
        stop.set()
        await conn.close()


def make_crash(run_dir: Path) -> Path:
    """A run directory with history.jsonl, config.yaml and crashes/001-*/ from a real crash of spdk-sim."""
    host = LocalHost()
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text("target:\n  kind: sim\n  sim_fault: forced-removal\n")
    session = TargetSession(host, SIM, str(run_dir / "t"), needs=TargetNeeds(malloc_mib=malloc_total_mib([512])),
                            watch=WatchConfig(core_dumps=False), evidence_dir=run_dir,
                            history_path=run_dir / "history.jsonl", announce=lambda _m: None)
    with session:
        history = session.history
        assert history is not None
        with SyncRpc(host, session.sock_path, history=history) as rpc:
            rpc.call("bdev_malloc_create", name="Malloc0", num_blocks=512 * 256, block_size=4096)
            rpc.call("bdev_lvol_create_lvstore", bdev_name="Malloc0", lvs_name=LVS, cluster_sz=1 << 20)

        async def storm() -> None:
            stop = asyncio.Event()
            await asyncio.gather(_crasher(host, session.sock_path, history, stop),
                                 *(_noise(host, session.sock_path, history, w, stop) for w in (1, 2, 3)))

        asyncio.run(storm())
        assert session.wait_for_death(settle_s=10), "the reference target did not crash"
        crash_dir = session.save_crash()
        assert crash_dir is not None
        return crash_dir


@pytest.fixture(scope="module")
def minimized(tmp_path_factory: pytest.TempPathFactory) -> Minimized:
    run_dir = tmp_path_factory.mktemp("m") / "run"
    crash_dir = make_crash(run_dir)
    ops_recorded = len(load_operations(run_dir / "history.jsonl"))
    messages: list[str] = []
    result = minimize_crash(crash_dir, SIM, budget_s=45, config=MinimizeConfig(k=2, tries=3),
                            progress=messages.append)
    assert any("ddmin" in m for m in messages)
    return crash_dir, result, ops_recorded, messages


def test_the_storm_history_records_the_one_write_batch(minimized: Minimized) -> None:
    crash_dir, _, _, _ = minimized
    ops = load_operations(crash_dir.parent.parent / "history.jsonl")
    batched = [o for o in ops if o.batch is not None]
    assert [o.method for o in batched] == ["bdev_lvol_register_snapshot_checksum", "bdev_lvol_delete"]
    assert len({o.batch for o in batched}) == 1 and {o.conn_key for o in batched} == {(0, 0)}
    assert batched[1].error is not None and batched[1].error["errno"] == "EBUSY"


def test_minimized_to_the_six_lvol_calls_and_reproduces_every_time(
        minimized: Minimized) -> None:
    """The issue's "at most 6 operations" counted as the lvol operations: the 2 setup calls (base bdev, lvstore)
    every reproducer needs on a fresh target come on top and are reported apart."""
    crash_dir, result, ops_recorded, messages = minimized
    title = json.loads((crash_dir / "crash.json").read_text())["title"]
    assert title.startswith("SIGSEGV")
    assert result.reproduced and result.title == title
    assert ops_recorded > 100 and result.ops_before > 100
    assert result.lvol_ops_after <= 6 and result.setup_ops_after == 2 and result.ops_after <= 8
    assert result.rate == (3, 3)
    assert result.batches == 1  # the checksum and the delete must still be written together
    assert any("must stay one write" in m for m in messages)  # written apart, the delete finds X free
    section = json.loads((crash_dir / "crash.json").read_text())["minimized"]
    assert section["ops_after"] == result.ops_after and section["rate"]["crashed"] == 3
    assert (section["lvol_ops_after"], section["setup_ops_after"], section["batches"]) == (
        result.lvol_ops_after, 2, 1)
    text = (crash_dir / "repro.min.txt").read_text()
    assert "reproduction rate: 3/3" in text
    assert f"{result.lvol_ops_after} lvol operations + 2 setup calls" in text
    lines = [json.loads(x) for x in (crash_dir / "repro.min.jsonl").read_text().splitlines()]
    assert len(lines) == result.ops_after
    methods = [x["method"] for x in lines]
    assert methods.count("bdev_lvol_delete") == 2 and "bdev_lvol_register_snapshot_checksum" in methods
    batch = [x for x in lines if x.get("batch")]
    assert [x["method"] for x in batch] == ["bdev_lvol_register_snapshot_checksum", "bdev_lvol_delete"]
    assert batch[0]["group"] == batch[1]["group"]  # one replay step
    py = (crash_dir / "repro.min.py").read_text()
    assert '"batch"' in py and "one write" in py
    sh = (crash_dir / "repro.min.sh").read_text()
    assert "bdev_lvol_register_snapshot_checksum" in sh and "repro.min.py" in sh  # said it cannot send it


def _fresh_sim(tmp: Path) -> tuple[subprocess.Popen[bytes], str]:
    sock = str(tmp / "s.sock")
    proc = subprocess.Popen([sys.executable, "-m", "harness.sim", "-r", sock, "--fault", "forced-removal"],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while not Path(sock).exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    return proc, sock


def test_repro_min_py_crashes_a_fresh_reference_target(minimized: Minimized, tmp_path: Path) -> None:
    crash_dir, _, _, _ = minimized
    proc, sock = _fresh_sim(tmp_path)
    try:
        run = subprocess.run([sys.executable, str(crash_dir / "repro.min.py"), sock], capture_output=True,
                             text=True, timeout=30)
        assert run.returncode == 3, run.stdout + run.stderr
        assert "REPRODUCED" in run.stdout
        assert proc.wait(5) == -11  # a genuine SIGSEGV
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


def test_lvol_storm_replay_of_the_minimal_reproducer_reports_the_same_title(
        minimized: Minimized, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    crash_dir, result, _, _ = minimized
    rc = cli_main(["replay", str(crash_dir / "repro.min.jsonl"), "--target", "sim", "--sim-fault",
                   "forced-removal", "--run-dir", str(tmp_path / "r")])
    out = capsys.readouterr()
    assert rc == 3, out.out + out.err
    assert "same crash title" in (out.out + out.err) and result.title in (out.out + out.err)


def test_grouped_replay_sends_the_recorded_overlaps_and_remaps_uuids(minimized: Minimized) -> None:
    crash_dir, _, _, _ = minimized
    history = crash_dir.parent.parent / "history.jsonl"
    plan = plan_from_operations(load_operations(history))
    assert plan.concurrent_steps > 0  # the noise workers pipelined
    host = LocalHost()
    with TargetSession(host, SIM, str(crash_dir.parent.parent / "g"), needs=plan_needs(plan),
                       announce=lambda _m: None) as session:
        outcome = asyncio.run(replay_plan(host, session.sock_path, plan, op_timeout_s=5))
    assert outcome.lost is not None  # the full history crashes the target too
    assert len(outcome.remap) > 10  # every create answered a new UUID, later calls used it
    # A snapshot that succeeded in the recording succeeds again, unless a call in flight with it named the same
    # lvol (a delete racing it): which of those the target runs first is its poller's choice, not the replay's.
    step_of = {op.index: n for n, step in enumerate(plan.steps) for op in step}
    names_in_step: dict[int, list[str]] = {}
    for op in plan.ops:
        names_in_step.setdefault(step_of[op.index], []).extend(str(v) for v in (op.params or {}).values())
    ok_then = [a for a in outcome.answers if a.op.ok and a.op.method == "bdev_lvol_snapshot"
               and names_in_step[step_of[a.op.index]].count(a.op.params["lvol_name"]) == 1]
    assert ok_then and [a.op.describe() for a in ok_then if not a.ok] == []


def test_bad_inputs_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"no crash\.json"):
        minimize_crash(tmp_path, SIM, budget_s=1)
    crash = tmp_path / "run" / "crashes" / "001-x"
    crash.mkdir(parents=True)
    (crash / "crash.json").write_text(json.dumps({"title": "SIGSEGV x", "detected_at": 5.0}))
    with pytest.raises(ConfigError, match="no history"):
        minimize_crash(crash, SIM, budget_s=1)
    (tmp_path / "run" / "history.jsonl").write_text(json.dumps({"v": 99, "worker": 0}) + "\n")
    with pytest.raises(ConfigError, match="history version 99"):
        minimize_crash(crash, SIM, budget_s=1)
    rc = cli_main(["minimize", str(tmp_path / "nowhere")])
    assert rc == 2
