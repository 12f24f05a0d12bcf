"""`lvol-storm`: the same runs as the pytest suites, without pytest.

Exit codes: 0 the run found nothing; 1 findings (wrong answers, leaks); 3 the target crashed;
2 bad input (config, flags, inventory); 4 the target could not be started or reached.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from harness.errors import ConfigError, HarnessError

EXIT_OK, EXIT_FINDINGS, EXIT_USAGE, EXIT_CRASH, EXIT_TARGET = 0, 1, 2, 3, 4


def _target_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target", choices=["auto", "spdk", "sim"], default=None,
                   help="spdk: a real spdk_tgt; sim: the reference target; auto (default): spdk if found, else sim")
    p.add_argument("--spdk-tgt", default=None, help="path to spdk_tgt (else $SPDK_TGT, PATH, $SPDK_DIR/build/bin)")
    p.add_argument("--sim-fault", default=None, help="reference target fault mode(s), comma-separated")
    p.add_argument("--bdev", choices=["malloc", "aio", "nvme"], default=None)
    p.add_argument("--profile", default=None, help="profile name (profiles/NAME.yaml) or a YAML file")
    p.add_argument("--target-arg", action="append", default=[], help="extra spdk_tgt argument (repeatable)")
    p.add_argument("--set", dest="lvs_set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override any config field, e.g. --set storm.depth=8 (repeatable)")
    p.add_argument("--run-dir", default=None, help="where artefacts go (default runs/<time>-<profile>)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lvol-storm", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="start a target, make an lvstore, run a storm, check, tear down")
    _target_flags(run)
    run.add_argument("--duration", default=None, help="e.g. 30s, 5m, 1h")
    run.add_argument("--workers", type=int, default=None)
    run.add_argument("--seed", type=int, default=None)
    run.add_argument("--no-minimize", action="store_true",
                     help="do not minimize new crashes (default: each new crash title is minimized)")
    nodes = run.add_argument_group("nodes (one storm per node, at once; default: this machine)")
    nodes.add_argument("--inventory", default=None, metavar="FILE",
                       help="YAML list of lab nodes (harness/provision/inventory.py); one storm on each")
    nodes.add_argument("--terraform", default=None, metavar="MODULE",
                       help="provision nodes with terraform/MODULE (local, aws-sles), storm on each, destroy")
    nodes.add_argument("--nodes", type=int, default=None, help="with --terraform: how many nodes (default 1)")
    nodes.add_argument("--keep-nodes", action="store_true", help="with --terraform: do not destroy the nodes")
    nodes.add_argument("--tf-var", action="append", default=[], metavar="NAME=VALUE",
                       help="with --terraform: a module variable, e.g. --tf-var subnet_octet=201 (repeatable)")
    nodes.add_argument("--node-set", action="append", default=[], metavar="NODE:FIELD=VALUE",
                       help="override a config field on one node (NODE: name or position from 0), e.g. "
                            "--node-set 1:target.sim_fault=abort-assert (repeatable)")

    replay = sub.add_parser("replay", help="re-issue a history.jsonl against a fresh target")
    replay.add_argument("history", help="history.jsonl of an earlier run (or a crash directory's repro.jsonl)")
    _target_flags(replay)
    from harness.minimize.command import REPLAY_MODES, add_minimize_parser

    replay.add_argument("--mode", choices=[*REPLAY_MODES, "workers"], default="auto",
                        help="auto (default): grouped, then, if the expected crash did not come back, serial, then "
                             "serial-sent, each on a fresh target; grouped (alias workers): each call on its "
                             "recorded connection, calls that were in flight together sent together; serial: one "
                             "connection, in the order the target ran them (reply order; calls in flight at the "
                             "crash last, in send order); serial-sent: one connection, in send order")
    replay.add_argument("--expect-title", default=None,
                        help="crash title to compare with (default: the crash.json next to HISTORY, or the run's)")

    add_minimize_parser(sub, _target_flags)

    sub.add_parser("profiles", help="list the profiles under profiles/")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "profiles":
            from harness.config import PROFILES_DIR

            for path in sorted(PROFILES_DIR.glob("*.yaml")):
                print(path.stem)
            return EXIT_OK
        if args.command == "run" and (args.inventory or args.terraform or args.nodes is not None
                                      or args.keep_nodes or args.tf_var or args.node_set):
            from harness.fleet import main_fleet_run

            return main_fleet_run(args)
        if args.command == "run":
            from harness.run import main_run

            return main_run(args)
        if args.command == "replay":
            from harness.minimize.command import main_replay

            if not Path(args.history).exists():
                raise ConfigError(f"replay: {args.history} does not exist")
            return main_replay(args)
        if args.command == "minimize":
            from harness.minimize.command import main_minimize

            return main_minimize(args)
    except ConfigError as exc:
        print(f"lvol-storm: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except HarnessError as exc:
        print(f"lvol-storm: {exc}", file=sys.stderr)
        return EXIT_TARGET
    parser.error(f"unknown command {args.command}")
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
