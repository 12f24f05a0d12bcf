"""Time to first operation: from `make storm` (venv already made) to the first RPC on the wire.

`make storm ARGS="--target sim --duration 2s --run-dir DIR"` is launched as a user would; the time before the
launch is compared with the earliest `t_start` in DIR/history.jsonl (a setup call), and with the first call a
storm worker sent.
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

from bench.figures import Figure
from bench.session import short_work_dir

REPO = Path(__file__).resolve().parent.parent
GOAL_S = 3.0


def once(duration: str = "2s") -> tuple[float, float]:
    work = short_work_dir("lsf-")
    run_dir = Path(work) / "run"
    argv = ["make", "-s", "storm", f"ARGS=--target sim --duration {duration} --run-dir {run_dir}"]
    t_launch = time.time()
    subprocess.run(argv, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120, check=False)
    first = first_worker = None
    with open(run_dir / "history.jsonl", encoding="utf-8") as f:
        for line in f:
            rec = json.loads(line)
            first = rec["t_start"] if first is None else min(first, rec["t_start"])
            if rec["worker"] >= 0:
                first_worker = rec["t_start"] if first_worker is None else min(first_worker, rec["t_start"])
    shutil.rmtree(work, ignore_errors=True)
    if first is None or first_worker is None:
        raise RuntimeError(f"make storm left no calls in {run_dir}/history.jsonl")
    return first - t_launch, first_worker - t_launch


def run(repeats: int = 3, log: Any = print) -> list[Figure]:
    firsts: list[float] = []
    storms: list[float] = []
    for _ in range(repeats):
        a, b = once()
        firsts.append(a)
        storms.append(b)
        log(f"  make storm: first RPC after {a:.2f} s, first storm operation after {b:.2f} s")
    med = statistics.median(firsts)
    return [
        Figure.judged("first operation", "make storm -> first RPC sent", med, "s", f"< {GOAL_S:g} s",
                      lambda v: v < GOAL_S, note=f"median of {repeats}; reference target, venv already made"),
        Figure("first operation", "make storm -> first storm operation", statistics.median(storms), "s",
               note="after target start, bdev, lvstore, capability check"),
    ]
