"""Triage: one row per bug (crash key) over any number of run directories, and a small crash database so
nightlies over days show which bugs are new, which went away and which came back.

Every crash a run saw has a crash dir (`crashes/NNN-slug/crash.json`, a repeat's slim one too), so the rows'
counts add up to the runs' crashes. The database is a folder the user names holding `runs.jsonl`: one line per
run (its builds and its keys with counts), appended, never rewritten.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.errors import ConfigError
from harness.known_issues import KnownIssues
from harness.report.title import crash_key

DB_FILE = "runs.jsonl"
_SHA = re.compile(r"git sha1 ([0-9a-f]{7,40})")


@dataclass
class Crash:
    """One crash dir, as triage reads it."""

    key: str
    title: str
    time: float
    run: str
    build: str
    path: Path
    kept: str = "all"
    reproducer_ops: int | None = None
    reproduced: bool = False


@dataclass
class BugRow:
    """One bug (crash key) over every run given."""

    key: str
    title: str
    count: int = 0
    first: float = 0.0
    last: float = 0.0
    builds: set[str] = field(default_factory=set)
    runs: set[str] = field(default_factory=set)
    example: Path | None = None
    reproducer_ops: int | None = None
    known: str | None = None
    history: str = ""
    """new / seen before / back (gone in the runs just before) / gone (earlier runs only): from the database."""

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "title": self.title, "count": self.count, "first_seen": self.first,
                "last_seen": self.last, "builds": sorted(self.builds), "runs": sorted(self.runs),
                "example": str(self.example) if self.example else None, "reproducer_ops": self.reproducer_ops,
                "known": self.known, "history": self.history}


def build_of(target: dict[str, Any]) -> str:
    """`SPDK v24.09.1-pre git sha1 1975133e9` -> `v24.09.1-pre 1975133e9 (/usr/src/spdk)`: version, commit,
    and the tree the binary came from (two local builds of one commit differ only there)."""
    version = str(target.get("version") or "")
    if target.get("kind") == "sim" or "reference" in version:
        return "reference target"
    sha = _SHA.search(version)
    head = version.split(" git sha1")[0].removeprefix("SPDK ").strip() or "unknown"
    binary = str(target.get("binary") or "")
    tree = binary.split("/build/bin/")[0] if "/build/bin/" in binary else binary
    return (f"{head} {sha.group(1)}" if sha else head) + (f" ({tree})" if tree else "")


def crashes_in(run_dir: Path) -> list[Crash]:
    """Every crash dir under a run dir (a run's, a fleet's nodes', a long run's incarnations', a suite's tests')."""
    if not run_dir.is_dir():
        raise ConfigError(f"triage: {run_dir} is not a run directory")
    out: list[Crash] = []
    for path in sorted(run_dir.rglob("crashes/*/crash.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        title = str(data.get("title") or "?")
        minimized = data.get("minimized") or {}
        out.append(Crash(
            key=str(data.get("key") or crash_key(title)), title=title,
            time=float(data.get("detected_at") or data.get("time") or 0.0), run=str(run_dir),
            build=build_of(data.get("target") or {}), path=path.parent, kept=str(data.get("kept") or "all"),
            reproducer_ops=minimized.get("ops_after") if minimized.get("reproduced") else None,
            reproduced=bool(minimized.get("reproduced"))))
    return out


def bug_rows(crashes: Iterable[Crash], known: KnownIssues | None = None) -> list[BugRow]:
    """One row per key, most frequent first."""
    rows: dict[str, BugRow] = {}
    for crash in sorted(crashes, key=lambda c: c.time):
        row = rows.get(crash.key)
        if row is None:
            row = rows[crash.key] = BugRow(crash.key, crash.title, first=crash.time)
        row.count += 1
        row.last = max(row.last, crash.time)
        row.builds.add(crash.build)
        row.runs.add(crash.run)
        smaller = row.reproducer_ops is None or (crash.reproducer_ops or 0) < row.reproducer_ops
        if crash.reproducer_ops is not None and smaller:
            row.reproducer_ops, row.example = crash.reproducer_ops, crash.path
        elif row.example is None and crash.kept == "all":
            row.example = crash.path
    for row in rows.values():
        issue = known.for_crash(row.title) if known is not None else None
        row.known = issue.id if issue is not None else None
    return sorted(rows.values(), key=lambda r: -r.count)


# -- the database ---------------------------------------------------------------------------------------------


def read_db(db: Path) -> list[dict[str, Any]]:
    path = db / DB_FILE
    if not path.exists():
        return []
    runs = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        try:
            runs.append(json.loads(line))
        except ValueError as exc:
            raise ConfigError(f"{path}:{n}: not a JSON line ({exc}); the database is damaged") from exc
    return runs


def record_runs(db: Path, run_dirs: Sequence[Path], crashes: Sequence[Crash]) -> list[dict[str, Any]]:
    """Append each run (once: a run dir already in the database is not added again); the database after."""
    db.mkdir(parents=True, exist_ok=True)
    runs = read_db(db)
    known_dirs = {r.get("run_dir") for r in runs}
    added = []
    for run_dir in run_dirs:
        if str(run_dir) in known_dirs:
            continue
        mine = [c for c in crashes if c.run == str(run_dir)]
        keys: dict[str, dict[str, Any]] = {}
        for c in mine:
            entry = keys.setdefault(c.key, {"title": c.title, "count": 0})
            entry["count"] += 1
        added.append({"run_dir": str(run_dir), "recorded": time.time(),
                      "started": min((c.time for c in mine), default=run_dir.stat().st_mtime),
                      "builds": sorted({c.build for c in mine}), "keys": keys})
    if added:
        with open(db / DB_FILE, "a", encoding="utf-8") as f:
            for run in added:
                f.write(json.dumps(run) + "\n")
    return runs + added


def mark_history(rows: list[BugRow], runs: Sequence[dict[str, Any]], current: Sequence[Path]) -> list[BugRow]:
    """Each row's place in the database's story: new (no earlier run had it), seen before (the run just before
    had it too), back (earlier runs had it, the one just before did not); and rows for bugs earlier runs had
    and these do not: gone."""
    now = {str(p) for p in current}
    earlier = sorted((r for r in runs if r.get("run_dir") not in now), key=lambda r: r.get("started") or 0.0)
    last = earlier[-1] if earlier else None
    ever = {k for r in earlier for k in r.get("keys", {})}
    for row in rows:
        if row.key not in ever:
            row.history = "new"
        elif last is not None and row.key in last.get("keys", {}):
            row.history = "seen before"
        else:
            row.history = "back"
    present = {r.key for r in rows}
    for key in sorted(ever - present):
        title = next(r["keys"][key]["title"] for r in reversed(earlier) if key in r.get("keys", {}))
        rows.append(BugRow(key, title, history="gone"))
    return rows
