"""`lvol-storm triage`: one row per bug over runs, counts that add up to the runs' crashes, and a crash
database that says which bugs are new, seen before, back or gone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.cli import main as cli_main
from harness.triage import bug_rows, crashes_in, mark_history, record_runs

BUILD = {"kind": "spdk", "version": "SPDK v24.09.1-pre git sha1 1975133e9",
         "binary": "/usr/src/spdk/build/bin/spdk_tgt"}


def _crash(run: Path, inc: str, n: int, title: str, t: float, **extra: object) -> None:
    path = run / inc / "crashes" / f"{n:03d}-x"
    path.mkdir(parents=True)
    (path / "crash.json").write_text(json.dumps({"title": title, "detected_at": t, "target": BUILD, **extra}))


def _run(tmp_path: Path, name: str, crashes: list[tuple[str, float]]) -> Path:
    run = tmp_path / name
    for i, (title, t) in enumerate(crashes):
        _crash(run, f"inc-{i + 1:03d}", 1, title, t)
    return run


def test_one_row_per_key_counts_add_up_and_line_numbers_do_not_split_a_bug(tmp_path: Path) -> None:
    run = _run(tmp_path, "n1", [("SIGSEGV in f (lvol.c:2251)", 10.0), ("SIGSEGV in f (lvol.c:2254)", 11.0),
                                ("SIGABRT: Assertion 'x' failed in g", 12.0)])
    _crash(run, "inc-009", 1, "SIGSEGV in f (lvol.c:2251)", 13.0,
           minimized={"reproduced": True, "ops_after": 7})
    crashes = crashes_in(run)
    rows = bug_rows(crashes)
    assert sum(r.count for r in rows) == len(crashes) == 4
    assert [(r.title, r.count) for r in rows] == [("SIGSEGV in f (lvol.c:2251)", 3),
                                                  ("SIGABRT: Assertion 'x' failed in g", 1)]
    top = rows[0]
    assert (top.first, top.last, top.reproducer_ops) == (10.0, 13.0, 7) and top.example is not None
    assert top.example.parent.parent.name == "inc-009"  # the crash with the smallest reproducer
    assert top.builds == {"v24.09.1-pre 1975133e9 (/usr/src/spdk)"}


def test_the_database_tells_new_seen_back_and_gone_across_nights(tmp_path: Path) -> None:
    db = tmp_path / "db"
    night1 = _run(tmp_path, "night1", [("A (a.c:1)", 1.0), ("B", 2.0)])
    night2 = _run(tmp_path, "night2", [("A (a.c:9)", 11.0)])
    night3 = _run(tmp_path, "night3", [("A (a.c:1)", 21.0), ("B", 22.0), ("C", 23.0)])
    for night in (night1, night2):
        record_runs(db, [night], crashes_in(night))
    crashes = crashes_in(night3)
    rows = mark_history(bug_rows(crashes), record_runs(db, [night3], crashes), [night3])
    story = {r.title.split(" (")[0]: r.history for r in rows}
    assert story == {"A": "seen before", "B": "back", "C": "new"}
    again = record_runs(db, [night3], crashes)  # a run already recorded is not added twice
    assert len(again) == 3
    night4 = _run(tmp_path, "night4", [("C", 31.0)])
    rows = mark_history(bug_rows(crashes_in(night4)), record_runs(db, [night4], crashes_in(night4)), [night4])
    assert {r.title.split(" (")[0]: r.history for r in rows} == {"C": "seen before", "A": "gone", "B": "gone"}


def test_the_command_prints_the_table_and_writes_the_page(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = _run(tmp_path, "n1", [("SIGSEGV in f (lvol.c:1)", 1.0), ("SIGSEGV in f (lvol.c:1)", 2.0)])
    assert cli_main(["triage", str(run), "--db", str(tmp_path / "db")]) == 0
    out = capsys.readouterr().out
    assert "1 bugs, 2 crashes in 1 run(s)" in out and "SIGSEGV in f (lvol.c:1)" in out and "new" in out
    page = (tmp_path / "db" / "triage.html").read_text()
    assert page.count('<tr class="bug">') == 1 and "SIGSEGV in f (lvol.c:1)" in page
    assert cli_main(["triage", str(tmp_path / "nope")]) == 2
