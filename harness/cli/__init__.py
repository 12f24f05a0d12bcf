"""`lvol-storm`: the same runs as the pytest suites, without pytest.

Exit codes (harness.outcome): 0 nothing found; 1 findings (wrong answers, leaks; minimize: not reproduced);
2 bad input (config, flags, inventory, history); 3 the target crashed (replay: the crash came back);
4 the target could not be started or reached; 130 interrupted before anything could be judged.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import harness
from harness.cli.replay import main_minimize, main_replay
from harness.cli.run import main_run
from harness.cli.triage import main_triage
from harness.config import known_profiles
from harness.errors import ConfigError, HarnessError, Stopped
from harness.interrupts import Interrupted, signals_end_the_command
from harness.minimize.replay import REPLAY_MODES
from harness.options import add_to_argparse
from harness.outcome import ExitCode


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is exit status 2 with one line naming the flag (no usage block)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"{self.prog}: {message} (see {self.prog} --help)\n")
        sys.exit(ExitCode.USAGE)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="lvol-storm", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"lvol-storm {harness.__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", help="start a target, make an lvstore, run a storm, check, tear down")
    add_to_argparse(run, "run")

    replay = sub.add_parser("replay", help="re-issue a history.jsonl (or a crash dir's reproducer) against fresh "
                                           "targets; exit 3 when the crash came back")
    replay.add_argument("history", help="history.jsonl of an earlier run, or a crash directory's repro.min.jsonl "
                                        "or last-operations.jsonl")
    replay.add_argument("--mode", choices=[*REPLAY_MODES, "workers"], default="auto",
                        help="auto (default): grouped, then, if the expected crash did not come back, serial, then "
                             "serial-sent, each on a fresh target; grouped (alias workers): each call on its "
                             "recorded connection, calls that were in flight together sent together; serial: one "
                             "connection, in the order the target ran them (reply order; calls in flight at the "
                             "crash last, in send order); serial-sent: one connection, in send order")
    replay.add_argument("--expect-title", default=None,
                        help="crash title to compare with (default: the crash.json next to HISTORY, or the run's)")
    add_to_argparse(replay, "replay")

    minimize = sub.add_parser("minimize", help="cut a crash's history down to a minimal reproducer (repro.min.*); "
                                               "exit 3 when it reproduced, 1 when it did not")
    minimize.add_argument("crash_dir", help="a crash directory: <run_dir>/crashes/NNN-slug/")
    add_to_argparse(minimize, "minimize")

    triage = sub.add_parser("triage", help="one row per bug (crash key) over run directories; with --db, which "
                                           "bugs are new, gone or back across nightlies")
    triage.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories (a run, fleet, nightly)")
    triage.add_argument("--db", default=None, metavar="DIR",
                        help="a crash database (a folder): append these runs to it and compare with earlier ones")
    triage.add_argument("--html", default=None, metavar="FILE",
                        help="where the page goes (default: DIR/triage.html, else the first run dir's)")
    triage.add_argument("--known-issues", default=None, metavar="FILE",
                        help="known-issues YAML (default: known-issues.yaml at the repository root)")

    sub.add_parser("profiles", help="list the profiles (built in, and profiles/ in the current directory)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """The command line (`argv` None: this process's own, which exits after it) to an exit status."""
    with signals_end_the_command(process_exits_after=argv is None):
        try:
            return _command(build_parser().parse_args(argv))
        except ConfigError as exc:
            print(f"lvol-storm: {exc}", file=sys.stderr)
            return ExitCode.USAGE
        except Stopped as exc:
            print(f"lvol-storm: {exc}", file=sys.stderr)
            return ExitCode.INTERRUPTED
        except HarnessError as exc:
            print(f"lvol-storm: {exc}", file=sys.stderr)
            return ExitCode.TARGET
        except Interrupted as exc:
            if exc.during_run:
                print(f"lvol-storm: interrupted twice ({exc}); teardown ran, what was saved is in the run "
                      "directory", file=sys.stderr)
            else:
                print(f"lvol-storm: {exc}: stopped (no run was under way to drain; what a run saved is in its run "
                      "directory)", file=sys.stderr)
            return ExitCode.INTERRUPTED
        except KeyboardInterrupt:  # Ctrl-C during a Terraform apply: destroyed already
            print("lvol-storm: interrupted; Terraform nodes (if any) were destroyed unless --keep-nodes; what was "
                  "saved is in the run directory", file=sys.stderr)
            return ExitCode.INTERRUPTED


def _command(args: argparse.Namespace) -> int:
    if args.command == "profiles":
        for name, path in known_profiles().items():
            print(f"{name}\t{path}")
        return ExitCode.OK
    if args.command == "run":
        return main_run(args)
    if args.command == "replay":
        return main_replay(args)
    if args.command == "triage":
        return main_triage(args)
    return main_minimize(args)
