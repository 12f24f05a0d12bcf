"""What `lvol-storm` prints at the end of a command: the numbers of summary.json, as tables.

Off a terminal (a CI log) nothing is wrapped at 80 columns: lines are as long as they need to be, so a crash
title or a finding stays on one greppable line.
"""

from __future__ import annotations

import sys

from rich.console import Console
from rich.table import Table

from harness.fleet import FleetOutcome
from harness.outcome import Verdict
from harness.run import RunOutcome
from harness.target import SIM_BANNER

VERDICT_STYLE = {
    Verdict.CLEAN: "[green]clean[/]", Verdict.FINDINGS: "[red]findings[/]", Verdict.CRASH: "[bold red]crash[/]",
    Verdict.ERROR: "[red]error[/]", Verdict.INTERRUPTED: "[yellow]interrupted (nothing judged)[/]",
    Verdict.NOTHING_RAN: "[yellow]nothing ran[/]", Verdict.RUNNING: "running",
}


def console() -> Console:
    """rich's console, as wide as the terminal on one, unbounded (no wrapping) in a log."""
    tty = sys.stdout.isatty()
    return Console(stderr=False, width=None if tty else 10_000, soft_wrap=not tty)


def print_run_summary(outcome: RunOutcome) -> None:
    """The table `make storm` ends with; the same numbers as summary.json."""
    s = outcome.summary
    out = console()
    if s.storm is None and s.verdict == Verdict.INTERRUPTED:  # stopped while the target started
        out.print(f"verdict: interrupted before the storm (nothing ran, nothing judged); run dir {outcome.run_dir}",
                  highlight=False)
        return
    tgt = s.target
    if tgt.get("reference_target"):
        out.print(f"[bold yellow]{SIM_BANNER}[/]")
    storm = s.storm or {}
    head = Table.grid(padding=(0, 2))
    head.add_row("target", f"{tgt.get('kind')} {tgt.get('version', '')} ({tgt.get('exit')})")
    head.add_row("run dir", str(outcome.run_dir))
    head.add_row("seed", str(s.seed))
    head.add_row("wall time", f"{s.wall_s:.1f} s")
    head.add_row("calls", f"{s.ops} in all (the table below); the storm's own {storm.get('ops', 0)} at "
                          f"{storm.get('ops_per_s', 0)} ops/s, stop: {storm.get('stop_reason')}")
    head.add_row("kernel log", str(s.kernel_log))
    out.print(head)
    methods = Table(title="calls by method", show_edge=False)
    methods.add_column("method")
    methods.add_column("calls", justify="right")
    for m, n in sorted(s.ops_by_method.items(), key=lambda kv: -kv[1]):
        methods.add_row(m, str(n))
    out.print(methods)
    if s.errors_by_errno:
        errs = Table(title="errors by errno", show_edge=False)
        errs.add_column("errno")
        errs.add_column("count", justify="right")
        for e, n in sorted(s.errors_by_errno.items(), key=lambda kv: -kv[1]):
            errs.add_row(e, str(n))
        out.print(errs)
    for crash in s.crashes:
        out.print(f"[bold red]CRASH[/] {crash.title} x{crash.count}")
    for f in s.findings[:20]:
        out.print(f"[bold red]FINDING[/] {f.get('kind')}: {f.get('message')}")
    if len(s.findings) > 20:
        out.print(f"... and {len(s.findings) - 20} more findings in summary.json")
    out.print(f"verdict: {VERDICT_STYLE.get(outcome.verdict, outcome.verdict.value)}")


def print_fleet_summary(outcome: FleetOutcome) -> None:
    """One line per node and the merged crash titles: the numbers of summary.json."""
    s = outcome.summary
    out = console()
    table = Table(title=f"fleet run {s.run_id} ({outcome.run_dir})", show_edge=False)
    for col in ("node", "outcome", "calls", "ops/s", "errors", "findings", "crashes"):
        table.add_column(col, justify="right" if col in ("calls", "ops/s", "findings", "crashes") else "left")
    for name, n in (s.nodes or {}).items():
        errs = ", ".join(f"{k} {v}" for k, v in sorted(n["errors_by_errno"].items(), key=lambda kv: -kv[1])[:3])
        table.add_row(name, n["outcome"], str(n["ops"]), str(n["ops_per_s"]), errs, str(n["findings"]),
                      str(n["crashes"]))
    out.print(table)
    for name, err in (s.errors or {}).items():
        out.print(f"[bold red]ERROR[/] {name}: {err}")
    for c in s.crashes:
        where = ", ".join(f"{k} x{v}" for k, v in c.nodes.items())
        out.print(f"[bold red]CRASH[/] {c.title} x{c.count} ({where})")
    verdict = Verdict(s.verdict)
    out.print(f"verdict: {VERDICT_STYLE.get(verdict, verdict.value)}; summary: {outcome.run_dir / 'summary.json'}")
