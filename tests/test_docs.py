"""The README says what the CLI does: every flag of every command is in its synopsis and nothing the CLI lacks
is, the exit codes are the ones harness.outcome gives, and "what a run leaves" names what a run writes."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from harness.cli import build_parser
from harness.outcome import ExitCode

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text()
TARGET_FLAGS = {"--target", "--spdk-tgt", "--sim-fault", "--bdev", "--profile", "--target-arg", "--set", "--run-dir"}


def _synopsis() -> dict[str, set[str]]:
    block = README.split("## lvol-storm\n", 1)[1].split("```", 2)[1]
    out: dict[str, set[str]] = {}
    command = ""
    for line in block.splitlines():
        m = re.match(r"lvol-storm (\w+)", line.strip())
        if m:
            command = m.group(1)
        flags = set(re.findall(r"(--[a-z][a-z-]*)", line))
        if "[target flags]" in line:
            flags |= TARGET_FLAGS
        out.setdefault(command, set()).update(flags)
    return out


def _cli_flags() -> dict[str, set[str]]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {name: {s for action in p._actions for s in action.option_strings if s.startswith("--")} - {"--help"}
            for name, p in sub.choices.items()}


@pytest.mark.parametrize("command", sorted(_cli_flags()))
def test_the_readme_synopsis_has_every_flag_of_the_cli_and_no_other(command: str) -> None:
    in_readme = _synopsis().get(command, set())
    # an alias of a flag (--terraform-module) need not be shown beside it
    in_cli = _cli_flags()[command] - {"--terraform-module"}
    assert in_readme - {"--version"} == in_cli, (sorted(in_cli - in_readme), sorted(in_readme - in_cli))


def test_the_readme_gives_the_exit_codes_outcome_defines() -> None:
    text = README.split("Exit codes", 1)[1].split("\n\n", 1)[0]
    for code in ExitCode:
        assert re.search(rf"\b{int(code)} ", text), f"exit code {int(code)} ({code.name}) is not in the README"


def test_every_file_a_run_writes_is_in_what_a_run_leaves(tmp_path: Path) -> None:
    from harness.config import load_config
    from harness.run import StormRun
    from harness.rundir import RunDir

    cfg = load_config("smoke", cli={"target.kind": "sim", "target.sim_fault": "exit", "storm.duration": "5s",
                                    "minimize.enabled": False})
    StormRun(cfg, RunDir(tmp_path / "run"), progress=False, announce=lambda _m: None).execute()
    table = README.split("## What a run leaves", 1)[1].split("\n## ", 1)[0]
    for path in sorted((tmp_path / "run").iterdir()):
        name = path.name + ("/" if path.is_dir() else "")
        shown = name.removesuffix("/")
        assert f"`{shown}" in table or (shown == "crashes" and "`crashes/" in table), f"{name} is not described"
    crash = next((tmp_path / "run" / "crashes").glob("001-*"))
    for path in crash.iterdir():
        assert path.name in table or path.suffix == ".gz", f"crashes/*/{path.name} is not described"
