"""`minimize_crash`: a crash directory in, a minimal reproducer and its reproduction rate out.

The crash directory is `<run_dir>/crashes/NNN-slug/`; its crash.json has the title and `detected_at`, the run's
history is `<run_dir>/history.jsonl`. Everything sent after the detection is cut, the rest is searched
(`harness.minimize.search`) on fresh targets of the given configuration, and the result lands next to the
report: repro.min.{jsonl,py,sh,txt} and a `minimized` section in crash.json.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.errors import ConfigError
from harness.history import SETUP_WORKER, history_in
from harness.hosts.base import Host
from harness.hosts.local import LocalHost
from harness.minimize.config import MinimizeConfig
from harness.minimize.ddmin import Budget
from harness.minimize.operations import (
    Operation,
    assign_in_flight_groups,
    before,
    execution_order,
    load_operations,
)
from harness.minimize.output import write_reproducer
from harness.minimize.search import SearchOutcome, TrialRunner, search
from harness.minimize.trial import TargetTrials, quiet_watchdogs
from harness.report.backtrace import rpc_in_stack
from harness.report.core import CorePattern
from harness.target import TargetConfig

Progress = Callable[[str], None]


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass
class MinimizeResult:
    """What `minimize_crash` did; `to_dict()` is crash.json's `minimized` section."""

    crash_dir: Path
    title: str
    reproduced: bool
    ops_before: int
    ops_after: int
    setup_ops_after: int
    """Of ops_after, the harness's setup calls (worker -1: the base bdev and the lvstore a fresh target lacks)."""
    mode: str
    steps: int
    concurrent_steps: int
    batches: int
    """One-write batches the reproducer keeps (calls it must write to the socket at once)."""
    rate: tuple[int, int]
    k: int
    tries: int
    tries_spent: int
    seconds: float
    stop_reason: str
    other_titles: dict[str, int] = field(default_factory=dict)
    target_starts: int | None = None
    """Targets started for the tries (fewer than tries when survived tries' targets were wiped and reused)."""
    phases: list[dict[str, Any]] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    target: dict[str, Any] = field(default_factory=dict)

    @property
    def lvol_ops_after(self) -> int:
        """The storm's own operations in the reproducer (ops_after without the setup calls)."""
        return self.ops_after - self.setup_ops_after

    @property
    def rate_text(self) -> str:
        crashed, runs = self.rate
        if not runs:
            return "not measured (the crash did not reproduce on replay)"
        return f"{crashed}/{runs} fresh targets crashed with the same title"

    def to_dict(self) -> dict[str, Any]:
        return {
            "title": self.title, "reproduced": self.reproduced, "ops_before": self.ops_before,
            "ops_after": self.ops_after, "lvol_ops_after": self.lvol_ops_after,
            "setup_ops_after": self.setup_ops_after, "mode": self.mode, "steps": self.steps,
            "concurrent_steps": self.concurrent_steps, "batches": self.batches,
            "rate": {"crashed": self.rate[0], "runs": self.rate[1], "text": self.rate_text},
            "k_of_n": f"{self.k} of {self.tries}", "tries_spent": self.tries_spent,
            "seconds": round(self.seconds, 2), "target_starts": self.target_starts, "stop_reason": self.stop_reason,
            "other_titles": self.other_titles,
            "phases": self.phases, "files": self.files, "target": self.target, "time": time.time(),
        }

    def summary_lines(self) -> list[str]:
        lines = [
            f"title: {self.title}",
            f"operations: {self.ops_before} before the crash -> {self.ops_after} = {self.lvol_ops_after} lvol "
            f"operations + {self.setup_ops_after} setup calls (base bdev, lvstore) ({self.mode}, {self.steps} steps, "
            f"{self.concurrent_steps} in flight together, {self.batches} written in one write)",
            f"reproduction rate: {self.rate[0]}/{self.rate[1]}" + ("" if self.rate[1] else " (not reproduced)"),
            f"search: {self.tries_spent} tries"
            + (f" on {self.target_starts} target starts" if self.target_starts is not None else "")
            + f", {self.seconds:.1f} s, candidates count at {self.k} of {self.tries} (1 of 1 once the crash showed "
            f"itself deterministic); {self.stop_reason}",
        ]
        for title, n in self.other_titles.items():
            lines.append(f"other crash title seen on replay (x{n}): {title}")
        return lines


def read_crash(crash_dir: Path) -> tuple[dict[str, Any], Path]:
    """crash.json and the run's history path, or a one-line ConfigError saying what is missing."""
    crash_json = crash_dir / "crash.json"
    if not crash_json.is_file():
        raise ConfigError(f"{crash_dir}: no crash.json: not a crash directory (expected "
                          "<run_dir>/crashes/NNN-slug/ as `lvol-storm run` writes it)")
    try:
        crash = json.loads(crash_json.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{crash_json}: unreadable ({exc}); the crash report is damaged") from exc
    if not crash.get("title"):
        raise ConfigError(f"{crash_json}: has no title; cannot tell the same crash on replay")
    history = history_in(crash_dir.parent.parent)
    if history is None:
        raise ConfigError(f"{crash_dir}: no history at {crash_dir.parent.parent / 'history.jsonl'} (or .zst): "
                          "minimize needs the run's history next to its crashes/ directory (was the run "
                          "directory moved or pruned?)")
    return crash, history


def operations_before_crash(history: Path, detected_at: float | None) -> list[Operation]:
    """The run's operations with their in-flight groups, cut at the crash's detection time, in the order the
    target executed them (what a serial replay follows and the search's windows count back from)."""
    ops = assign_in_flight_groups(load_operations(history))
    if detected_at is not None:
        ops = before(ops, float(detected_at))
    ops = execution_order(ops)
    if not ops:
        raise ConfigError(f"{history}: no operations before the crash (detected_at {detected_at}); nothing to "
                          "minimize")
    return ops


def minimize_crash(
    crash_dir: str | os.PathLike[str],
    target_config: TargetConfig,
    budget_s: float = 600.0,
    *,
    config: MinimizeConfig | None = None,
    host: Host | None = None,
    progress: Progress | None = None,
    runner: TrialRunner | None = None,
    kernel_log: bool = True,
    hang_after_s: float = 30.0,
    stop: threading.Event | None = None,
) -> MinimizeResult:
    """Minimize one crash directory's history; write the reproducer files and crash.json's `minimized`.

    `budget_s` bounds the search (the final rate runs come on top); `config` gives k-of-n and the try cap
    (its budget_s is replaced by `budget_s`); setting `stop` ends the search early with what it has.
    Raises ConfigError for a directory without crash.json or history, or a history from another harness
    version; TargetError if the target cannot be started.
    """
    cfg = (config or MinimizeConfig()).model_copy(update={"budget_s": budget_s})
    if target_config.kind != "sim" and cfg.parallel > 1:
        # Real spdk_tgt instances claim their cores (and share hugepages): one at a time.
        cfg = cfg.model_copy(update={"parallel": 1})
    crash_path = Path(crash_dir).absolute()
    say = progress or _stderr
    crash, history = read_crash(crash_path)
    title = str(crash["title"])
    ops = operations_before_crash(history, crash.get("detected_at"))
    host = host or LocalHost()
    log_lines: list[str] = []

    def log(msg: str) -> None:
        log_lines.append(f"{time.strftime('%H:%M:%S')} {msg}")
        say(msg)

    log(f"minimize: {crash_path.name}: {len(ops)} operations before the crash; looking for {title!r} on fresh "
        f"{target_config.kind} targets ({cfg.k} of {cfg.tries} tries per candidate, budget {budget_s:g} s, "
        f"at most {cfg.max_tries} target starts)")
    t0 = time.monotonic()
    with ExitStack() as stack:
        trials: TargetTrials | None = None
        if runner is None:
            trials = TargetTrials(host, target_config, cfg, kernel_log=kernel_log, hang_after_s=hang_after_s)
            stack.callback(trials.close)
            stack.enter_context(quiet_watchdogs())
            if cfg.cores:
                trials.cores = stack.enter_context(CorePattern(host, f"{trials.work_root}/cores"))
            runner = trials
        outcome: SearchOutcome = search(ops, title, runner, cfg, budget=Budget(cfg.max_tries, budget_s, cancel=stop),
                                        progress=log, stack_method=rpc_in_stack(crash_path))
    plan = outcome.plan
    result = MinimizeResult(
        crash_dir=crash_path, title=title, reproduced=outcome.reproduced, ops_before=outcome.ops_before,
        ops_after=outcome.ops_after, setup_ops_after=sum(1 for op in plan.ops if op.worker == SETUP_WORKER),
        mode=plan.mode, steps=len(plan.steps), concurrent_steps=plan.concurrent_steps, batches=plan.batches,
        rate=outcome.rate, k=cfg.k, tries=cfg.tries, tries_spent=outcome.tries, seconds=time.monotonic() - t0,
        stop_reason=outcome.stop_reason, other_titles=outcome.other_titles,
        target_starts=trials.starts if trials is not None else None, phases=[p.to_dict() for p in outcome.phases],
        target={"kind": target_config.kind, "sim_fault": target_config.sim_fault or None},
    )
    files = write_reproducer(crash_path, plan, title, result.rate_text)
    txt = crash_path / "repro.min.txt"
    how = [
        "",
        "run it against a fresh target:",
        f"  python3 {crash_path / 'repro.min.py'} /var/tmp/spdk.sock     (exit 3: reproduced)",
        f"  sh {crash_path / 'repro.min.sh'} /var/tmp/spdk.sock           (spdk-rpc lines; see its header)",
        f"  lvol-storm replay {crash_path / 'repro.min.jsonl'} --target {target_config.kind}"
        + (f" --sim-fault {target_config.sim_fault}" if target_config.sim_fault else ""),
    ]
    if not outcome.reproduced:
        how.insert(0, "the crash did NOT reproduce on replay: these files hold the FULL operation list before it "
                      "(it may need timing a replay cannot give)")
    txt.write_text("\n".join(result.summary_lines() + how) + "\n")
    (crash_path / "minimize.log").write_text("\n".join(log_lines) + "\n")
    result.files = [p.name for p in [*files, txt]]
    _update_crash_json(crash_path / "crash.json", result.to_dict())
    log(f"minimize: {result.ops_before} -> {result.ops_after} operations ({result.lvol_ops_after} lvol + "
        f"{result.setup_ops_after} setup), rate {result.rate[0]}/{result.rate[1]}, "
        f"{result.seconds:.1f} s: {crash_path / 'repro.min.txt'}")
    return result


def _update_crash_json(path: Path, minimized: dict[str, Any]) -> None:
    """Add the `minimized` section, atomically (a reader never sees half a crash.json)."""
    data = json.loads(path.read_text())
    data["minimized"] = minimized
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)
