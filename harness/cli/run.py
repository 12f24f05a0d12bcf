"""`lvol-storm run`: one storm on this machine, or one per node of an inventory or a Terraform module.

The face owns the signals for the whole command: the first Ctrl-C (or SIGTERM) makes every storm drain,
check and save; the second aborts (teardown still runs as the stack unwinds).
"""

from __future__ import annotations

import argparse
import sys
import threading

from harness.cli.tables import print_fleet_summary, print_run_summary
from harness.config import RunConfig, load_config
from harness.errors import ConfigError, TargetError
from harness.fleet import FleetRun
from harness.interrupts import interrupt_sets
from harness.nodes import (
    check_positions,
    check_terraform_module,
    inventory_nodes,
    parse_node_overrides,
    parse_tf_vars,
    terraform_nodes,
)
from harness.options import config_overrides
from harness.outcome import ExitCode
from harness.run import StormRun
from harness.rundir import RunDir, default_run_dir


def config_of(args: argparse.Namespace, face: str = "run") -> RunConfig:
    """The profile, then the flags, then `--set`: what this command's storm runs with."""
    return load_config(args.profile or "default", overrides=args.lvs_set,
                       cli=config_overrides(lambda name: getattr(args, name, None), face))  # type: ignore[arg-type]


def _uses_nodes(args: argparse.Namespace) -> bool:
    return bool(args.inventory or args.terraform or args.nodes is not None or args.keep_nodes or args.tf_var
                or args.node_set)


def main_run(args: argparse.Namespace) -> int:
    if _uses_nodes(args):
        return main_fleet_run(args)
    config = config_of(args)
    run_dir = RunDir(args.run_dir or default_run_dir(config.profile))
    stop = threading.Event()
    with interrupt_sets(stop):
        try:
            outcome = StormRun(config, run_dir, stop_event=stop).execute()
        except TargetError as exc:
            print(f"lvol-storm: {exc}", file=sys.stderr)
            return ExitCode.TARGET
    print_run_summary(outcome)
    return outcome.exit_code


def main_fleet_run(args: argparse.Namespace) -> int:
    """`lvol-storm run --inventory FILE` / `--terraform MODULE [--nodes N] [--keep-nodes]`."""
    inventory, module = args.inventory, args.terraform
    if inventory and module:
        raise ConfigError("--inventory and --terraform exclude each other: pick one")
    if not inventory and not module:
        raise ConfigError("--node-set, --nodes, --keep-nodes and --tf-var need --inventory FILE or --terraform MODULE")
    if not module and (args.nodes is not None or args.keep_nodes):
        raise ConfigError("--nodes and --keep-nodes only apply with --terraform MODULE")
    if not module and args.tf_var:
        raise ConfigError("--tf-var only applies with --terraform MODULE")
    config = config_of(args)
    overrides = parse_node_overrides(args.node_set or [])
    stop = threading.Event()
    if inventory:
        nodes = inventory_nodes(inventory, overrides)  # a bad inventory: one line, nothing started
        run_dir = RunDir(args.run_dir or default_run_dir(config.profile))
        with interrupt_sets(stop):
            fleet = FleetRun(config, run_dir, nodes, stop_event=stop)
            outcome = fleet.execute()
        print_fleet_summary(outcome)
        return outcome.exit_code
    count = args.nodes if args.nodes is not None else 1
    tf_vars = parse_tf_vars(args.tf_var or [])
    check_terraform_module(module, tf_vars)
    check_positions(overrides, count)  # names are known only after apply; positions can be checked now
    run_dir = RunDir(args.run_dir or default_run_dir(config.profile))
    # Ctrl-C during apply: Terraform's own handler destroys what was made; during the storms: ours drains them
    # (the nodes are destroyed after), and a second one aborts.
    with terraform_nodes(module, run_dir.path, nodes=count, keep=args.keep_nodes, tf_vars=tf_vars,
                         overrides=overrides) as nodes:
        with interrupt_sets(stop, what="stopping: draining the storms, then destroying the nodes"):
            outcome = FleetRun(config, run_dir, nodes, stop_event=stop).execute()
    print_fleet_summary(outcome)
    return outcome.exit_code
