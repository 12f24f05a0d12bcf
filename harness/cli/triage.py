"""`lvol-storm triage RUN_DIR... [--db DIR] [--html FILE]`: one row per bug over the runs, and their story in a
crash database (new, seen before, back, gone)."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.table import Table

from harness.cli.tables import console
from harness.known_issues import KnownIssues
from harness.outcome import ExitCode
from harness.report import triage_page
from harness.triage import bug_rows, crashes_in, mark_history, record_runs


def main_triage(args: argparse.Namespace) -> int:
    runs = [Path(p).absolute() for p in args.run_dirs]
    crashes = [c for run in runs for c in crashes_in(run)]
    rows = bug_rows(crashes, KnownIssues.load(args.known_issues))
    db = Path(args.db).absolute() if args.db else None
    if db is not None:
        rows = mark_history(rows, record_runs(db, runs, crashes), runs)
    out = console()
    table = Table(title=f"{len([r for r in rows if r.count])} bugs, {len(crashes)} crashes in {len(runs)} run(s)",
                  show_edge=False)
    for col in ("history", "count", "title", "first seen", "last seen", "builds", "repro ops", "known", "example"):
        table.add_column(col, justify="right" if col in ("count", "repro ops") else "left")
    for r in rows:
        table.add_row(r.history or "-", str(r.count), r.title, triage_page._when(r.first), triage_page._when(r.last),
                      ", ".join(sorted(r.builds)), str(r.reproducer_ops or "-"), r.known or "-",
                      str(r.example) if r.example else "-")
    out.print(table)
    page = Path(args.html) if args.html else (db / "triage.html" if db else runs[0] / "triage.html")
    out.print(f"page: {triage_page.write(page, rows, runs, db)}")
    return ExitCode.OK
