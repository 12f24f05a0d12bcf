"""`lvol-storm run --io` end to end: the reference target verifies thousands of blocks clean, its
`corrupt-clone-read` fault is a data finding naming the block (exit 1), and a real spdk_tgt (SPDK_TGT) runs the
`io` profile clean."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench import io_cost
from harness.hosts.local import LocalHost
from harness.target import find_spdk_tgt

LVOL_STORM = [sys.executable, "-m", "harness.cli"]


def _run(args: list[str], timeout: float = 180) -> tuple[int, dict[str, Any], str]:
    res = subprocess.run([*LVOL_STORM, "run", "--no-minimize", *args], capture_output=True, text=True,
                         timeout=timeout, cwd=Path(__file__).resolve().parent.parent)
    run_dir = Path(args[args.index("--run-dir") + 1])
    summary = json.loads((run_dir / "summary.json").read_text()) if (run_dir / "summary.json").exists() else {}
    return res.returncode, summary, res.stdout + res.stderr


def test_sim_io_storm_verifies_thousands_of_blocks_clean(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    rc, summary, out = _run(["--target", "sim", "--io", "--duration", "10s", "--run-dir", str(run_dir)])
    assert rc == 0, out[-3000:]
    io = summary["io"]
    assert io["verified_blocks"] > 2000 and io["mismatches"] == 0 and io["errors"] == 0, io
    assert io["writes"] > 300 and io["reads"] > 300 and io["exported"] >= 8
    assert io["verified_blocks"] - io["loose_blocks"] > 1000  # exact expectations, not just well-formed stamps
    assert summary["findings"] == [] and summary["storm"]["io"] == io
    rows = [json.loads(line) for line in (run_dir / "io.jsonl").read_text().splitlines()]
    assert len(rows) == io["reads"] + io["writes"] and {r[3] for r in rows} == {"r", "w"}
    methods = summary["ops_by_method"]
    assert methods["nvmf_subsystem_add_ns"] >= 8 and methods["nvmf_delete_subsystem"] == 1


def test_corrupt_clone_read_is_a_data_finding_naming_the_block(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    rc, summary, out = _run(["--target", "sim", "--io", "--duration", "10s", "--sim-fault", "corrupt-clone-read",
                             "--set", "target.sim_fault_after=20", "--run-dir", str(run_dir)])
    assert rc == 1, out[-3000:]
    data = [f for f in summary["findings"] if f["kind"] == "data-mismatch"]
    assert data and summary["io"]["mismatches"] >= 1, summary["findings"][:3]
    message = data[0]["message"]
    assert " lba " in message and "expected " in message and "seen write " in message
    assert data[0]["op"]["params"]["lvol"] in message and data[0]["op"]["method"] == "nvme_read"


@pytest.mark.spdk_tgt
def test_real_target_io_profile_runs_clean(tmp_path: Path) -> None:
    """The `io` profile (RPCs one at a time: the build aborts under concurrent deletes otherwise)."""
    run_dir = tmp_path / "run"
    binary = find_spdk_tgt(LocalHost(), os.environ.get("SPDK_TGT"))
    rc, summary, out = _run(["--profile", "io", "--target", "spdk", "--spdk-tgt", binary, "--duration", "10s",
                             "--target-arg=--disable-cpumask-locks", "--set", "target.cpumask=0x2",
                             "--run-dir", str(run_dir)], timeout=300)
    if summary.get("crashes"):
        pytest.xfail(f"the build crashed first: {summary['crashes'][0]['title']}")
    assert rc == 0, out[-3000:]
    io = summary["io"]
    assert io["verified_blocks"] > 1000 and io["mismatches"] == 0 and io["errors"] == 0, io


def test_bench_io_cost_row_measures_both_rates() -> None:
    figures = io_cost._pair_rows("io", "sim", "default", 2.0, 1, {"target.kind": "sim", "storm.strategies": {}},
                                 log=lambda _m: None)
    ratio, iops = figures
    assert ratio.value is not None and 0.05 < ratio.value < 5 and ratio.goal == ">= 0.5"
    assert iops.value is not None and iops.value > 0 and "blocks verified" in iops.note
