"""`lvol-storm minimize CRASH_DIR` and `lvol-storm replay HISTORY`: the CLI faces of this package.

Both drive fresh targets of the configuration the run used (its config.yaml), unless flags say otherwise, and
answer with the CLI's exit codes: 3 the target crashed (replay) / the crash reproduced (minimize), 0 it
survived / did not reproduce (minimize: 1), 2 bad input, 4 target could not be started.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pydantic import ValidationError

from harness.config import RunConfig, load_config
from harness.errors import ConfigError
from harness.hosts.local import LocalHost
from harness.minimize.config import MinimizeConfig
from harness.minimize.crash import minimize_crash
from harness.minimize.operations import Operation, execution_order, load_operations, start_order
from harness.minimize.plan import ReplayPlan, plan_from_operations, serial_plan
from harness.minimize.search import title_key
from harness.minimize.trial import TargetTrials, quiet_watchdogs

EXIT_OK, EXIT_NOT_REPRODUCED, EXIT_CRASH = 0, 1, 3


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def add_minimize_parser(sub: argparse._SubParsersAction, target_flags: object) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("minimize", help="cut a crash's history down to a minimal reproducer (repro.min.*)")
    p.add_argument("crash_dir", help="a crash directory: <run_dir>/crashes/NNN-slug/")
    target_flags(p)  # type: ignore[operator]
    p.add_argument("--budget", default=None, help="wall time for the search, e.g. 600s, 10m (default 600s)")
    p.add_argument("--tries", type=int, default=None, help="fresh targets per candidate (n of k-of-n, default 3)")
    p.add_argument("--k", type=int, default=None, help="same-title crashes out of --tries to count (default 2)")
    p.add_argument("--max-tries", type=int, default=None, help="target starts for the whole search (default 1000)")


def _seconds(text: str | None, default: float) -> float:
    if text is None:
        return default
    from harness.storm.config import parse_duration

    try:
        return float(parse_duration(text))
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"--budget {text}: expected a duration like 90s, 10m ({exc})") from exc


def _run_config(args: argparse.Namespace, run_dir: Path | None) -> RunConfig:
    """The run's own config.yaml when there is one (same target, same fault), then the flags on top."""
    from harness.pytest_plugin import cli_overrides

    profile = args.profile
    if profile is None and run_dir is not None and (run_dir / "config.yaml").is_file():
        profile = str(run_dir / "config.yaml")
    return load_config(profile or "default", overrides=args.lvs_set,
                       cli=cli_overrides(lambda name: getattr(args, name, None)))


def minimize_config(config: RunConfig, args: argparse.Namespace) -> MinimizeConfig:
    base = getattr(config, "minimize", None)
    cfg = base if isinstance(base, MinimizeConfig) else MinimizeConfig()
    update = {k: v for k, v in {"tries": args.tries, "k": args.k, "max_tries": args.max_tries}.items()
              if v is not None}
    try:
        return MinimizeConfig.model_validate({**cfg.model_dump(), **update})
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or "k"
        raise ConfigError(f"minimize: --{field.replace('_', '-')}: {err['msg'].removeprefix('Value error, ')}") \
            from exc


def main_minimize(args: argparse.Namespace) -> int:
    crash_dir = Path(args.crash_dir)
    if not crash_dir.is_dir():
        raise ConfigError(f"minimize: {crash_dir} is not a directory (expected <run_dir>/crashes/NNN-slug/)")
    config = _run_config(args, crash_dir.absolute().parent.parent)
    cfg = minimize_config(config, args)
    budget = _seconds(args.budget, cfg.budget_s)
    result = minimize_crash(crash_dir, config.target, budget, config=cfg, kernel_log=config.watch.kernel_log,
                            hang_after_s=config.watch.hang_after_s)
    for line in result.summary_lines():
        print(line)
    print(f"files: {', '.join(str(crash_dir / f) for f in result.files)}")
    return EXIT_CRASH if result.reproduced else EXIT_NOT_REPRODUCED


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


REPLAY_MODES = ("auto", "grouped", "serial", "serial-sent")
"""grouped: each call on its recorded connection, calls in flight together sent together; serial: one
connection, one call at a time in the order the target ran them (`execution_order`); serial-sent: the same in
send order; auto: grouped, then (when the expected crash did not come back) serial, then serial-sent."""


def _replay_plan(ops: list[Operation], mode: str) -> ReplayPlan:
    if mode == "serial":
        return serial_plan(execution_order(ops))
    if mode == "serial-sent":
        return serial_plan(start_order(ops))
    return plan_from_operations(ops)


def main_replay(args: argparse.Namespace) -> int:
    """Replay a history (or repro.min.jsonl) against fresh targets and say whether the crash came back.

    Calls in flight together on different connections reach the target in one poll, and which one it runs
    first is not the replayer's to choose: a grouped replay can take another order than the recording did
    (a delete before the set_xattr it raced) and miss the crash. So `auto` tries the plans in turn, each on a
    fresh target, until the expected title comes back, and says which one did."""
    history = Path(args.history).absolute()
    run_dir_of_history = history.parent.parent.parent if (history.parent / "crash.json").is_file() else history.parent
    config = _run_config(args, run_dir_of_history)
    ops = load_operations(history)
    mode = getattr(args, "mode", "auto")
    mode = "grouped" if mode == "workers" else mode
    title, source = expected_title(history, getattr(args, "expect_title", None))
    modes = (["grouped", "serial", "serial-sent"] if title else ["grouped"]) if mode == "auto" else [mode]
    run_dir = Path(args.run_dir).absolute() if args.run_dir else None
    if run_dir is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
    crashed_otherwise = False
    for attempt, each in enumerate(modes):
        plan = _replay_plan(ops, each)
        _say(f"replay: {history}: {plan.describe()} ({each}), against a fresh {config.target.kind} target"
             + (f" (fault {config.target.sim_fault})" if config.target.sim_fault else ""))
        name = "history.jsonl" if attempt == 0 else f"history.{each}.jsonl"
        trials = TargetTrials(LocalHost(), config.target, MinimizeConfig(),
                              kernel_log=config.watch.kernel_log, hang_after_s=config.watch.hang_after_s,
                              history_path=(lambda _n, name=name: run_dir / name) if run_dir else None)
        try:
            with quiet_watchdogs():
                result = trials.run(plan)
        finally:
            trials.close()
        outcome = trials.last_outcome
        differing = outcome.differing if outcome is not None else []
        print(f"replay ({each}): {result.detail}; {len(differing)} answers differ from the recording")
        for answer in differing[:10]:
            got = answer.error if answer.error is not None else answer.result
            print(f"  {answer.op.describe()}\n    replayed: {json.dumps(got)[:160]}")
        if result.title is None:
            print(f"replay ({each}): the target survived" + (f"; expected {title!r} ({source})" if title else ""))
            continue
        if title is None:
            print(f"replay ({each}): the target crashed: {result.title}")
            return EXIT_CRASH
        if title_key(result.title) == title_key(title):
            print(f"replay ({each}): the target crashed with the same crash title: {result.title}")
            return EXIT_CRASH
        print(f"replay ({each}): the target crashed with a DIFFERENT title: {result.title!r}; expected {title!r} "
              f"({source})")
        crashed_otherwise = True
    if crashed_otherwise:
        return EXIT_CRASH
    if title and len(modes) > 1:
        print(f"replay: no plan ({', '.join(modes)}) crashed the target: the crash may need timing a replay cannot "
              "give (run `lvol-storm minimize` on the crash dir, or keep the whole history)")
    return EXIT_OK
