"""One table of options: every flag `lvol-storm` and the pytest plugin take, with its help and where its value
lands in the run's config.

Both faces generate their flags from `OPTIONS` (argparse's `add_argument` and pytest's `addoption` take the
same keywords), so a flag has one name, one help text and one meaning everywhere, and `config_overrides`
turns whatever a face parsed into the dotted config paths `harness.config.load_config` applies. Nothing here
imports a face: `lvol-storm run --help` never loads pytest.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from harness.sim.faults import FAULT_MODES, parse_faults
from harness.storm.config import parse_duration
from harness.storm.strategies import STRATEGIES

Face = Literal["run", "replay", "minimize", "pytest"]
Group = Literal["target", "storm", "nodes", "suite", "minimize"]
TARGET_FACES: frozenset[Face] = frozenset({"run", "replay", "minimize", "pytest"})
RUN_FACES: frozenset[Face] = frozenset({"run", "pytest"})

GROUP_TITLES: dict[Group, str] = {
    "target": "target: which target to start and how",
    "storm": "storm: what the run does",
    "nodes": "nodes: one storm per node, at once (default: this machine)",
    "suite": "suites: long runs and known issues (pytest suites/nightly, suites/soak)",
    "minimize": "minimize: how hard to search for a minimal reproducer",
}


def _faults(text: str) -> str:
    """`--sim-fault` as argparse checks it: comma-separated names of FAULT_MODES (or 'none')."""
    try:
        parse_faults(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _duration(text: str) -> str:
    try:
        parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _seed(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


@dataclass(frozen=True)
class Option:
    """One flag: its names, its help, which faces take it, and the config field it sets (if any)."""

    flags: tuple[str, ...]
    dest: str
    help: str
    group: Group
    faces: frozenset[Face]
    config: str | None = None
    """The dotted RunConfig field the value lands in (`target.kind`); None: the face reads it itself."""
    action: Literal["store", "store_true", "append"] = "store"
    type: Callable[[str], Any] | None = None
    choices: tuple[str, ...] | None = None
    metavar: str | None = None
    default: Any = None
    to_config: Callable[[Any], Any] | None = None
    """The config value for a given flag value (`--no-minimize` -> minimize.enabled: false)."""

    def kwargs(self, face: Face = "run") -> dict[str, Any]:
        """The keywords argparse's `add_argument` and pytest's `addoption` take. pytest turns an argparse type
        error into a usage block; there a value is only converted, and checked (in one line) by the config."""
        kw: dict[str, Any] = {"dest": self.dest, "help": self.help, "action": self.action}
        if self.action == "append":
            kw["default"] = []
        elif self.action == "store_true":
            kw["default"] = False
        else:
            kw["default"] = self.default
        if self.action != "store_true":
            if self.type is not None and face != "pytest":
                kw["type"] = self.type
            elif self.type in (_positive, _seed):
                kw["type"] = int
            if self.choices is not None:
                kw["choices"] = list(self.choices)
            if self.metavar is not None:
                kw["metavar"] = self.metavar
        return kw


OPTIONS: tuple[Option, ...] = (
    # -- the target -------------------------------------------------------------------------------------------
    Option(("--target",), "target", "spdk: a real spdk_tgt; sim: the reference target (a model, said loudly); "
           "auto (default): spdk_tgt if one is found ($SPDK_TGT, PATH, $SPDK_DIR/build/bin), else sim",
           "target", TARGET_FACES, "target.kind", choices=("auto", "spdk", "sim")),
    Option(("--spdk-tgt",), "spdk_tgt", "path to spdk_tgt (else $SPDK_TGT, PATH, $SPDK_DIR/build/bin)", "target",
           TARGET_FACES, "target.spdk_tgt", metavar="PATH"),
    Option(("--sim-fault",), "sim_fault", "the reference target's bug(s), comma-separated: "
           + ", ".join(sorted(FAULT_MODES)) + " (or 'none')", "target", TARGET_FACES, "target.sim_fault",
           type=_faults, metavar="MODE[,MODE]"),
    Option(("--bdev",), "bdev", "the lvstore's base bdev: malloc (hugepage memory), aio (a file), nvme (a PCIe "
           "NVMe namespace; bdev.pci_addr)", "target", TARGET_FACES, "bdev.kind", choices=("malloc", "aio", "nvme")),
    Option(("--profile",), "profile", "a profile name (lvol-storm profiles) or a YAML file", "target", TARGET_FACES,
           metavar="NAME|FILE"),
    Option(("--target-arg",), "target_arg", "one more spdk_tgt argument, e.g. --target-arg=--no-huge (repeatable)",
           "target", TARGET_FACES, "target.extra_args", action="append", metavar="ARG", to_config=list),
    Option(("--set",), "lvs_set", "override any config field, e.g. --set storm.depth=8 (repeatable; values are "
           "YAML)", "target", TARGET_FACES, action="append", metavar="FIELD=VALUE"),
    Option(("--run-dir",), "run_dir", "where the run's files go (default runs/<time>-<profile>)", "target",
           TARGET_FACES, metavar="DIR"),
    # -- the storm -------------------------------------------------------------------------------------------
    Option(("--duration",), "duration", "how long the storm runs, e.g. 30s, 5m, 1h (0: until Ctrl-C)", "storm",
           RUN_FACES, "storm.duration", type=_duration, metavar="TIME"),
    Option(("--workers",), "workers", "concurrent workers, one connection each (storm.workers)", "storm", RUN_FACES,
           "storm.workers", type=_positive, metavar="N"),
    Option(("--seed",), "seed", "the run's seed: worker w draws its operations from (seed, w) (storm.seed)",
           "storm", RUN_FACES, "storm.seed", type=_seed, metavar="N"),
    Option(("--strategy",), "strategy", "only this strategy's episodes beside the mix (repeatable): "
           + ", ".join(sorted(STRATEGIES)), "storm", RUN_FACES, action="append", choices=tuple(sorted(STRATEGIES)),
           metavar="NAME"),
    Option(("--io",), "io", "also read and write the lvols over NVMe/TCP while the storm changes them, every "
           "block checked against a model (the io: section: lanes, depth, block counts, read share)", "storm",
           RUN_FACES, "io.enabled", action="store_true"),
    Option(("--no-minimize",), "no_minimize", "do not cut new crashes down to a minimal reproducer (default: each "
           "new crash key is minimized once, after its evidence is saved)", "storm", RUN_FACES, "minimize.enabled",
           action="store_true", to_config=lambda on: False if on else None),
    # -- nodes -----------------------------------------------------------------------------------------------
    Option(("--inventory",), "inventory", "a YAML inventory of lab nodes (docs/SUITES.md): one storm on each",
           "nodes", RUN_FACES, metavar="FILE"),
    Option(("--terraform", "--terraform-module"), "terraform", "provision nodes with terraform/MODULE (local, "
           "aws-sles, qemu) or a module directory, storm on each, destroy them at the end", "nodes", RUN_FACES,
           metavar="MODULE"),
    Option(("--nodes",), "nodes", "with --terraform: how many nodes (default 1)", "nodes", RUN_FACES,
           type=_positive, metavar="N"),
    Option(("--keep-nodes",), "keep_nodes", "with --terraform: do not destroy the nodes at the end", "nodes",
           RUN_FACES, action="store_true"),
    Option(("--tf-var",), "tf_var", "with --terraform: a module variable, e.g. --tf-var runner_cidr=203.0.113.7/32 "
           "(repeatable)", "nodes", RUN_FACES, action="append", metavar="NAME=VALUE"),
    Option(("--node-set",), "node_set", "override a config field on one node (NODE: its name or position from 0), "
           "e.g. --node-set 1:target.sim_fault=abort-assert (repeatable)", "nodes", RUN_FACES, action="append",
           metavar="NODE:FIELD=VALUE"),
    # -- suites ----------------------------------------------------------------------------------------------
    Option(("--known-issues",), "known_issues", "known-issues YAML for nightly and soak (default: known-issues.yaml "
           "at the repository root)", "suite", frozenset({"pytest"}), metavar="FILE"),
    Option(("--crash-db",), "crash_db", "nightly/soak: append the session's crashes to this crash database (a "
           "folder; `lvol-storm triage --db` reads it)", "suite", frozenset({"pytest"}), metavar="DIR"),
    Option(("--health-every",), "health_every", "nightly/soak: period of the health line (default 60s)", "suite",
           frozenset({"pytest"}), type=_duration, default="60s", metavar="TIME"),
    Option(("--report-every",), "report_every", "nightly/soak: period of the summary.json/report.html rewrite "
           "(default 60s)", "suite", frozenset({"pytest"}), type=_duration, default="60s", metavar="TIME"),
    # -- minimize --------------------------------------------------------------------------------------------
    Option(("--budget",), "budget", "wall time for the search, e.g. 600s, 10m (default: minimize.budget_s)",
           "minimize", frozenset({"minimize"}), "minimize.budget_s", type=_duration, metavar="TIME",
           to_config=parse_duration),
    Option(("--tries",), "tries", "fresh targets per candidate: the n of k-of-n (default 3)", "minimize",
           frozenset({"minimize"}), "minimize.tries", type=_positive, metavar="N"),
    Option(("--k",), "k", "same-title crashes out of --tries for a candidate to count (default 2)", "minimize",
           frozenset({"minimize"}), "minimize.k", type=_positive, metavar="K"),
    Option(("--max-tries",), "max_tries", "target starts the whole search may spend (default 1000)", "minimize",
           frozenset({"minimize"}), "minimize.max_tries", type=_positive, metavar="N"),
)


def options_for(face: Face) -> list[Option]:
    return [opt for opt in OPTIONS if face in opt.faces]


def add_to_argparse(parser: argparse.ArgumentParser, face: Face) -> None:
    """The flags of one `lvol-storm` command, in their groups."""
    groups: dict[Group, Any] = {}
    for opt in options_for(face):
        group = groups.get(opt.group)
        if group is None:
            group = groups[opt.group] = parser.add_argument_group(GROUP_TITLES[opt.group])
        group.add_argument(*opt.flags, **opt.kwargs(face))


def add_to_pytest(parser: Any) -> None:
    """Every pytest option, in one group (pytest's `parser.getgroup(...).addoption` takes argparse's keywords)."""
    group = parser.getgroup("lvol-storm", "lvol-storm: the target under test, the run, nodes and suites")
    for opt in options_for("pytest"):
        group.addoption(*opt.flags, **opt.kwargs("pytest"))


def config_overrides(get: Callable[[str], Any], face: Face) -> dict[str, Any]:
    """What the parsed flags set in the run's config, as dotted paths (unset flags set nothing)."""
    out: dict[str, Any] = {}
    for opt in options_for(face):
        if opt.config is None:
            continue
        value = get(opt.dest)
        if value is None or value == [] or value is False:
            continue
        if opt.to_config is not None:
            value = opt.to_config(value)
            if value is None:
                continue
        out[opt.config] = value
    strategies = get("strategy") if any(o.dest == "strategy" for o in options_for(face)) else None
    if strategies:
        out["storm.strategies"] = {name: 1.0 for name in strategies}
    return out
