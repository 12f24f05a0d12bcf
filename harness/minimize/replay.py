"""`replay_history`: re-issue a recorded history (or a crash dir's reproducer) against fresh targets and say
whether the crash came back, and with which plan.

Calls in flight together on different connections reach the target in one poll, and which one it runs first
is not the replayer's to choose: a grouped replay can take another order than the recording did (a delete
before the set_xattr it raced) and miss the crash. So `auto` tries the plans in turn, each on a fresh target,
until the expected title comes back.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from harness.config import RunConfig
from harness.errors import ConfigError
from harness.history import compressed, whole_frames_end
from harness.hosts.local import LocalHost
from harness.minimize.config import MinimizeConfig
from harness.minimize.operations import Operation, execution_order, load_operations, start_order
from harness.minimize.plan import ReplayPlan, plan_from_operations, serial_plan
from harness.minimize.trial import TargetTrials, quiet_watchdogs
from harness.report.title import crash_key
from harness.rundir import make_writable_dir

Mode = Literal["auto", "grouped", "serial", "serial-sent"]
REPLAY_MODES: tuple[Mode, ...] = ("auto", "grouped", "serial", "serial-sent")
"""grouped: each call on its recorded connection, calls in flight together sent together; serial: one
connection, one call at a time in the order the target ran them (`execution_order`); serial-sent: the same in
send order; auto: grouped, then (when the expected crash did not come back) serial, then serial-sent."""
Say = Callable[[str], None]


@dataclass
class ReplayResult:
    """What the replays did: each plan's line, and whether (and with which title) the target crashed."""

    crashed: bool = False
    title: str | None = None
    same_title: bool = False
    expected: str | None = None
    plan: str | None = None
    lines: list[str] = field(default_factory=list)


def expected_title(history: Path, given: str | None) -> tuple[str | None, str]:
    """The title a replay should reproduce: --expect-title, the crash dir's crash.json, or the run's crashes."""
    if given:
        return given, "--expect-title"
    crash_json = history.parent / "crash.json"
    if crash_json.is_file():
        return json.loads(crash_json.read_text()).get("title"), str(crash_json)
    index = history.parent / "crashes" / "index.json"
    if index.is_file():
        titles = list(json.loads(index.read_text()))
        if titles:
            return titles[0], str(index)
    return None, ""


def run_dir_of(history: Path) -> Path:
    """The run directory a history belongs to (a crash dir's reproducer lives two levels below it)."""
    return history.parent.parent.parent if (history.parent / "crash.json").is_file() else history.parent


def _plan(ops: list[Operation], mode: str) -> ReplayPlan:
    if mode == "serial":
        return serial_plan(execution_order(ops))
    if mode == "serial-sent":
        return serial_plan(start_order(ops))
    return plan_from_operations(ops)


def replay_history(history: Path, config: RunConfig, *, mode: str = "auto", expect_title: str | None = None,
                   run_dir: Path | None = None, say: Say, out: Say) -> ReplayResult:
    """Replay `history` on fresh targets of `config.target`, each plan of `mode` in turn; `say` gets progress,
    `out` the result lines. A ConfigError for a file that holds no operations."""
    if compressed(history) and (end := whole_frames_end(history)) < (size := history.stat().st_size):
        raise ConfigError(f"replay: {history}: cut short: its whole zstd frames end at byte {end:,} of {size:,} (a "
                          "copy that stopped early, or a harness killed mid-write), so a replay would say nothing of "
                          f"the calls after the cut: copy it whole, or replay what it holds: `zstdcat {history} > "
                          "history.jsonl` and replay that")
    ops = load_operations(history)
    if not ops:
        raise ConfigError(f"replay: {history} holds no operations (an empty or truncated history?)")
    mode = "grouped" if mode == "workers" else mode
    title, source = expected_title(history, expect_title)
    modes = (["grouped", "serial", "serial-sent"] if title else ["grouped"]) if mode == "auto" else [mode]
    result = ReplayResult(expected=title)
    if run_dir is not None:
        make_writable_dir(run_dir, "--run-dir")
    crashed_otherwise = False
    for attempt, each in enumerate(modes):
        plan = _plan(ops, each)
        say(f"replay: {history}: {plan.describe()} ({each}), against a fresh {config.target.kind} target"
            + (f" (fault {config.target.sim_fault})" if config.target.sim_fault else ""))
        written = run_dir / ("history.jsonl" if attempt == 0 else f"history.{each}.jsonl") if run_dir else None

        def history_path(_n: int, path: Path | None = written) -> Path | None:
            return path

        trials = TargetTrials(LocalHost(), config.target, MinimizeConfig(),
                              kernel_log=config.watch.kernel_log, hang_after_s=config.watch.hang_after_s,
                              history_path=history_path)
        try:
            with quiet_watchdogs():
                trial = trials.run(plan)
        finally:
            trials.close()
        outcome = trials.last_outcome
        differing = outcome.differing if outcome is not None else []
        out(f"replay ({each}): {trial.detail}; {len(differing)} answers differ from the recording")
        for answer in differing[:10]:
            got = answer.error if answer.error is not None else answer.result
            out(f"  {answer.op.describe()}\n    replayed: {json.dumps(got)[:160]}")
        if trial.title is None:
            out(f"replay ({each}): the target survived" + (f"; expected {title!r} ({source})" if title else ""))
            continue
        result.crashed, result.title, result.plan = True, trial.title, each
        if title is None:
            out(f"replay ({each}): the target crashed: {trial.title}")
            return result
        if crash_key(trial.title) == crash_key(title):
            out(f"replay ({each}): the target crashed with the same crash title: {trial.title}")
            result.same_title = True
            return result
        out(f"replay ({each}): the target crashed with a DIFFERENT title: {trial.title!r}; expected {title!r} "
            f"({source})")
        crashed_otherwise = True
    if not crashed_otherwise and title and len(modes) > 1:
        out(f"replay: no plan ({', '.join(modes)}) crashed the target: the crash may need timing a replay cannot "
            "give (run `lvol-storm minimize` on the crash dir, or keep the whole history)")
    return result
