"""`lvol-storm replay HISTORY` and `lvol-storm minimize CRASH_DIR`: fresh targets of the configuration the run
used (its config.yaml), unless flags say otherwise.

replay: 3 the target crashed (the expected title, or any when none is known), 0 it survived.
minimize: 3 the crash reproduced (repro.min.* written), 1 it did not (the full reproducer is kept).
"""

from __future__ import annotations

import argparse
import sys
import threading
from pathlib import Path

from harness.config import RunConfig, load_config
from harness.errors import ConfigError
from harness.interrupts import interrupt_sets
from harness.minimize.crash import minimize_crash
from harness.minimize.replay import replay_history, run_dir_of
from harness.options import Face, config_overrides
from harness.outcome import EXIT_NOT_REPRODUCED, ExitCode


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run_config(args: argparse.Namespace, run_dir: Path | None, face: Face) -> RunConfig:
    """The run's own config.yaml when there is one (same target, same fault), then the flags on top."""
    profile = args.profile
    if profile is None and run_dir is not None and (run_dir / "config.yaml").is_file():
        profile = str(run_dir / "config.yaml")
    return load_config(profile or "default", overrides=args.lvs_set,
                       cli=config_overrides(lambda name: getattr(args, name, None), face))


def main_replay(args: argparse.Namespace) -> int:
    history = Path(args.history).absolute()
    if not history.is_file():
        raise ConfigError(f"replay: {args.history} " + ("is not a file" if history.exists() else "does not exist"))
    config = run_config(args, run_dir_of(history), "replay")
    stop = threading.Event()
    with interrupt_sets(stop, what="stopping after this replay"):
        result = replay_history(history, config, mode=args.mode, expect_title=args.expect_title,
                                run_dir=Path(args.run_dir).absolute() if args.run_dir else None, say=_say,
                                out=print)
    return ExitCode.CRASH if result.crashed else ExitCode.OK


def main_minimize(args: argparse.Namespace) -> int:
    crash_dir = Path(args.crash_dir)
    if not crash_dir.is_dir():
        raise ConfigError(f"minimize: {crash_dir} is not a directory (expected <run_dir>/crashes/NNN-slug/)")
    config = run_config(args, crash_dir.absolute().parent.parent, "minimize")
    stop = threading.Event()
    with interrupt_sets(stop, what="stopping the search; writing what it has"):
        result = minimize_crash(crash_dir, config.target, config.minimize.budget_s, config=config.minimize,
                                kernel_log=config.watch.kernel_log, hang_after_s=config.watch.hang_after_s,
                                stop=stop)
    for line in result.summary_lines():
        print(line)
    print(f"files: {', '.join(str(crash_dir / f) for f in result.files)}")
    return ExitCode.CRASH if result.reproduced else EXIT_NOT_REPRODUCED
