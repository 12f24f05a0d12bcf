"""A compressed history (`history.compress: zstd`): what nightly and soak write, since a storm at full rate
writes ~12 GB of plain history an hour. It must read back record for record, be followed while it grows
(one frame per write: a follower never sees half a frame), survive a harness killed mid-write, and say so
in one line when it is not a history at all."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from harness.errors import ConfigError
from harness.history import History, history_in, read_appended
from harness.report.timeline import Timeline
from harness.rundir import RunDir


def _fill(history: History, n: int, start: int = 0) -> None:
    for i in range(start, start + n):
        params = {"lvs_name": "lvs0", "lvol_name": f"v{i}", "size_in_mib": 4}
        history.record(i % 8, i % 8, "bdev_lvol_create", params, 1000.0 + i / 1000, 1000.0 + i / 1000 + 0.0004,
                       result=f"uuid-{i:08d}-0000-0000-0000-000000000000")


def test_a_compressed_history_reads_back_every_record_at_a_tenth_of_the_size(tmp_path: Path) -> None:
    with History(tmp_path / "plain" / "history.jsonl") as plain, \
            History(tmp_path / "zst" / "history.jsonl.zst") as packed:
        _fill(plain, 20_000)
        _fill(packed, 20_000)
    plain_records = list(History.read(tmp_path / "plain" / "history.jsonl"))
    packed_records = list(History.read(tmp_path / "zst" / "history.jsonl.zst"))
    assert len(packed_records) == 20_000 and packed_records == plain_records
    plain_size = (tmp_path / "plain" / "history.jsonl").stat().st_size
    ratio = plain_size / (tmp_path / "zst" / "history.jsonl.zst").stat().st_size
    print(f"\nhistory: zstd {ratio:.1f}x smaller than plain (20,000 creates)")
    assert ratio > 5
    assert history_in(tmp_path / "zst") == tmp_path / "zst" / "history.jsonl.zst"
    assert RunDir(tmp_path / "zst").history == tmp_path / "zst" / "history.jsonl.zst"
    assert history_in(tmp_path) is None


def test_a_follower_reads_each_written_frame_and_never_half_of_one(tmp_path: Path) -> None:
    path = tmp_path / "history.jsonl.zst"
    history = History(path)
    _fill(history, 300)
    history.flush()
    [(lines, offset)] = list(read_appended(path, 0))
    assert len(lines) == 300 and offset == path.stat().st_size
    # a frame cut in the middle (the harness writing it, or killed while it did): nothing yet, offset kept
    whole = path.read_bytes()
    _fill(history, 200, start=300)
    history.flush()
    second = path.read_bytes()[len(whole):]
    path.write_bytes(whole + second[: len(second) // 2])
    assert list(read_appended(path, offset)) == []
    path.write_bytes(whole + second)
    [(lines, offset2)] = list(read_appended(path, offset))
    assert len(lines) == 200 and offset2 == len(whole + second)
    history.close()
    timeline = Timeline()
    assert timeline.feed_file(path) == 500 and timeline.feed_file(path) == 0
    assert timeline.records == 500 and timeline.methods["bdev_lvol_create"] == 500


def test_a_history_cut_mid_frame_reads_up_to_the_cut(tmp_path: Path) -> None:
    path = tmp_path / "history.jsonl.zst"
    with History(path) as history:
        _fill(history, 1000)
        history.flush()
        _fill(history, 1000, start=1000)
    data = path.read_bytes()
    first = next(read_appended(path, 0))[1]
    path.write_bytes(data[: first + (len(data) - first) // 2])  # killed while writing the second frame
    records = list(History.read(path))
    assert 1000 <= len(records) < 2000
    assert [r["params"]["lvol_name"] for r in records[:3]] == ["v0", "v1", "v2"]


def test_a_file_that_is_not_a_compressed_history_is_a_one_line_error(tmp_path: Path) -> None:
    path = tmp_path / "history.jsonl.zst"
    path.write_bytes(os.urandom(4096))
    with pytest.raises(ConfigError, match=r"history\.jsonl\.zst: cannot read history: .*is it a history file") as exc:
        list(History.read(path))
    assert "\n" not in str(exc.value)


def test_a_run_with_a_compressed_history_reports_replays_and_minimizes_from_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from harness.cli import main as cli_main
    from harness.config import load_config
    from harness.minimize.crash import read_crash
    from harness.run import StormRun

    cfg = load_config("smoke", overrides=["history.compress=zstd", "target.stop_timeout_s=2"],
                      cli={"target.kind": "sim", "target.sim_fault": "abort-assert", "storm.duration": 30,
                           "minimize.enabled": False})
    run = RunDir(tmp_path / "run")
    outcome = StormRun(cfg, run, progress=False, announce=lambda m: None).execute()
    assert outcome.exit_code == 3
    assert (run.path / "history.jsonl.zst").is_file() and not (run.path / "history.jsonl").exists()
    records = list(History.read(run.history))
    assert records and len(records) == sum(outcome.summary.ops_by_method.values())
    assert "history.jsonl.zst" in (run.path / "report.html").read_text()  # the replay command names it
    [crash_dir] = outcome.crash_dirs
    assert read_crash(crash_dir)[1] == run.path / "history.jsonl.zst"
    capsys.readouterr()
    rc = cli_main(["replay", str(run.history), "--run-dir", str(tmp_path / "r")])
    out = capsys.readouterr().out
    assert rc == 3 and "the target crashed with the same crash title" in out, out[-2000:]
