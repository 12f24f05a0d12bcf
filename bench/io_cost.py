"""What the storm's I/O costs its RPCs: the same storm with and without `--io`, alternating, calls/s of each and
the I/O's IOPS beside them. Goal: I/O does not halve the RPC storm's rate (ratio >= 0.5).

One process runs both (the harness's own CPU is what they share: the I/O lanes, their stamps and the model run
in the storm's event loop). The reference target polls its RPC socket every 8 ms, as spdk_tgt does; with
SPDK_TGT set, the real build runs the `io` profile (one RPC at a time: it aborts under concurrent deletes).
"""

from __future__ import annotations

import os
import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.figures import Figure
from harness.config import load_config
from harness.run import StormRun
from harness.rundir import RunDir

GOAL = 0.5


def _one(profile: str, io: bool, seconds: float, seed: int, extra: dict[str, Any]) -> dict[str, Any]:
    cli = {"storm.duration": seconds, "storm.seed": seed, "io.enabled": io, "minimize.enabled": False, **extra}
    cfg = load_config(profile, cli=cli)
    with tempfile.TemporaryDirectory(prefix="lsb-io-") as tmp:
        outcome = StormRun(cfg, RunDir(Path(tmp) / "run"), progress=False, announce=lambda _m: None).execute()
        summary = outcome.summary
        storm = summary.storm or {}
        return {"ops_per_s": float(storm.get("ops_per_s", 0.0)), "io": summary.io or {},
                "verdict": summary.verdict, "crashes": [c.title for c in summary.crashes]}


def _pair_rows(section: str, label: str, profile: str, seconds: float, rounds: int, extra: dict[str, Any],
               log: Callable[[str], None]) -> list[Figure]:
    plain: list[float] = []
    with_io: list[float] = []
    iops: list[float] = []
    blocks = 0
    bad: list[str] = []
    for r in range(rounds):
        for io in (False, True):
            got = _one(profile, io, seconds, 1 + r, extra)
            log(f"bench io: {label} round {r + 1} io={io}: {got['ops_per_s']:.0f} calls/s, "
                f"{got['io'].get('iops', 0)} IOPS, {got['verdict']}")
            if got["crashes"]:
                bad.append(got["crashes"][0])
                continue
            (with_io if io else plain).append(got["ops_per_s"])
            if io:
                iops.append(float(got["io"].get("iops", 0.0)))
                blocks += int(got["io"].get("verified_blocks", 0))
    if not plain or not with_io:
        return [Figure(section, f"storm calls/s with --io / without ({label})", None, goal=f">= {GOAL}",
                       note=f"the target crashed: {bad[0] if bad else 'no round finished'}")]
    p, w = statistics.median(plain), statistics.median(with_io)
    ratio = w / p if p else 0.0
    note = f"{rounds} rounds x {seconds:g} s; {p:,.0f} -> {w:,.0f} calls/s"
    return [
        Figure.judged(section, f"storm calls/s with --io / without ({label})", ratio, "", f">= {GOAL}",
                      lambda v: v >= GOAL, note=note + (f"; {len(bad)} crashed rounds left out" if bad else "")),
        Figure(section, f"IOPS beside it ({label})", statistics.median(iops), "IOPS",
               note=f"{blocks:,} blocks verified in the --io rounds"),
    ]


def run(seconds: float = 10.0, rounds: int = 2, log: Callable[[str], None] = print) -> list[Figure]:
    figures = _pair_rows("io", "reference target, 8 ms polls, default mix", "default", seconds, rounds,
                         {"target.kind": "sim", "target.sim_poll_interval_ms": 8.0, "storm.strategies": {}}, log)
    figures += _pair_rows("io", "reference target, no poll delay", "default", seconds, rounds,
                          {"target.kind": "sim", "storm.strategies": {}}, log)
    binary = os.environ.get("SPDK_TGT")
    if binary:
        figures += _pair_rows("io spdk_tgt", "spdk_tgt, io profile", "io", seconds, rounds,
                              {"target.kind": "spdk", "target.spdk_tgt": binary, "target.cpumask": "0x2",
                               "target.extra_args": ["--disable-cpumask-locks"]}, log)
    return figures
