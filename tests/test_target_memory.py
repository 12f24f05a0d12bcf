"""The reference target is as strict about memory as spdk_tgt, and every target start reserves what its bdevs need.

A real spdk_tgt holds 860 MiB of hugepages of its own and answers `bdev_malloc_create` beyond the free
hugepages with `{"code": -12, "message": "Cannot allocate memory"}` (harness.spdk_memory, measured). A path
that forgot a bdev's memory (the minimizer's tries once did) passed on a forgiving stand-in and failed on the
real target; with the strict one it fails here first.
"""

from __future__ import annotations

import ast
import json
import socket
from pathlib import Path
from typing import Any

import pytest

from harness.bdev import BdevConfig
from harness.errors import TargetError
from harness.hosts.local import LocalHost
from harness.rpc.framing import ReplyParser, encode_request
from harness.session import TargetNeeds, TargetSession
from harness.spdk_memory import (
    ENOMEM_REPLY,
    MALLOC_ENOMEM_LOG,
    SPDK_BASE_MIB,
    malloc_cost_mib,
    malloc_total_mib,
    peak_malloc_mib,
)
from harness.storm.config import StormConfig, esnap_bdev_mibs
from harness.target import TargetConfig

REPO = Path(__file__).resolve().parent.parent
MIB = 1024 * 1024


def _call(sock_path: str, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(sock_path)
        sock.sendall(encode_request(method, params, 1))
        parser, got = ReplyParser(), []
        while not got:
            got = parser.feed(sock.recv(65536))
    return {k: v for k, v in got[0].items() if k in ("result", "error")}


def _malloc(sock_path: str, name: str, mib: int) -> dict[str, Any]:
    return _call(sock_path, "bdev_malloc_create", {"name": name, "num_blocks": mib * 256, "block_size": 4096})


def test_the_cost_of_a_malloc_bdev_is_what_spdk_tgt_took() -> None:
    # Measured on the fork's build: 100 MiB -> 51 pages, 50 -> 26, 4 -> 3, 1 -> 2 (2 MiB pages).
    assert [malloc_cost_mib(n * MIB) // 2 for n in (100, 50, 4, 1)] == [51, 26, 3, 2]
    assert malloc_total_mib([1024, 0, 96]) == 1026 + 98


def test_peak_malloc_memory_follows_creates_deletes_and_failures() -> None:
    calls = [
        ("bdev_malloc_create", {"name": "A", "num_blocks": 256 * 100, "block_size": 4096}, "A"),
        ("bdev_malloc_create", {"name": "B", "num_blocks": 256 * 50, "block_size": 4096}, "B"),
        ("bdev_malloc_delete", {"name": "A"}, True),
        ("bdev_malloc_create", {"name": "C", "num_blocks": 256 * 20, "block_size": 4096}, "C"),
        ("bdev_malloc_create", {"name": "D", "num_blocks": 256 * 900, "block_size": 4096}, None),  # refused
    ]
    assert peak_malloc_mib(calls) == malloc_cost_mib(100 * MIB) + malloc_cost_mib(50 * MIB)


def test_malloc_beyond_the_targets_memory_is_spdk_tgts_enomem(tmp_path: Path) -> None:
    room = 100  # MiB beyond SPDK's own share
    cfg = TargetConfig(kind="sim", hugepages_mb=SPDK_BASE_MIB + room)
    with TargetSession(LocalHost(), cfg, str(tmp_path), announce=lambda _m: None) as session:
        assert f"-s {SPDK_BASE_MIB + room}" in session.info.argv
        assert _malloc(session.sock_path, "M0", 60) == {"result": "M0"}
        assert _malloc(session.sock_path, "M1", 60) == {"error": ENOMEM_REPLY}
        assert MALLOC_ENOMEM_LOG in Path(session.target.log_path).read_text()
        assert _call(session.sock_path, "bdev_malloc_delete", {"name": "M0"}) == {"result": True}
        assert _malloc(session.sock_path, "M1", 60) == {"result": "M1"}  # deleting gave the memory back


def test_a_session_reserves_the_bdevs_memory_on_top_of_spdks_own(tmp_path: Path) -> None:
    cfg = TargetConfig(kind="sim")  # hugepages_mb 1024: SPDK's own 860 leave room for a small bdev only
    bdev = BdevConfig(kind="malloc", size_mib=512)
    with TargetSession(LocalHost(), cfg, str(tmp_path / "bare"), announce=lambda _m: None) as bare:
        assert _malloc(bare.sock_path, "Malloc0", 512) == {"error": ENOMEM_REPLY}  # the bug, as a real target
    needs = TargetNeeds.of_run(bdev)
    assert needs.malloc_mib == malloc_cost_mib(512 * MIB)
    with TargetSession(LocalHost(), cfg, str(tmp_path / "ok"), needs=needs, announce=lambda _m: None) as ok:
        assert _malloc(ok.sock_path, "Malloc0", 512) == {"result": "Malloc0"}


def test_a_runs_needs_include_the_storms_copy_destination_and_external_snapshots() -> None:
    storm = StormConfig(strategies={"busy-delete": 1.0})
    needs = TargetNeeds.of_run(BdevConfig(size_mib=1024), storm, cluster_size=MIB)
    # BUSY_MIN_CLUSTERS x 1 MiB, and the two shared external snapshots the default mix's esnap clones read.
    assert esnap_bdev_mibs(storm, MIB) == [16, 4]
    assert needs.malloc_mib == malloc_total_mib([1024, 96, 16, 4])
    deleting = StormConfig(workers=2, depth=3, strategies={"esnap-external-delete": 1.0})
    assert esnap_bdev_mibs(deleting, MIB) == [16, 4] + [4] * 6  # one of its own per lane
    assert esnap_bdev_mibs(StormConfig(mix={"bdev_lvol_create": 1.0}), MIB) == []
    assert TargetNeeds.of_run(BdevConfig(kind="aio", size_mib=1024)).malloc_mib == 0


def test_too_little_memory_for_spdk_itself_fails_start_up_as_spdk_tgt_does(tmp_path: Path) -> None:
    cfg = TargetConfig(kind="sim", hugepages_mb=600, start_timeout_s=20)
    session = TargetSession(LocalHost(), cfg, str(tmp_path), announce=lambda _m: None)
    with pytest.raises(TargetError) as info:
        session.start()
    text = str(info.value)
    assert "exited during start-up" in text and "Subsystem initialization failed" in text, text
    assert not list(tmp_path.glob("core*")), "a start-up failure leaves no core"


def test_a_replay_reserves_what_the_recording_created(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`lvol-storm replay` of a history with a 512 MiB malloc bdev: the fresh target gets its memory (before
    the target session it got SPDK's share only, and the replay's first call answered ENOMEM)."""
    from harness.cli import main as cli_main

    history = tmp_path / "history.jsonl"
    lines = [
        {"v": 1, "worker": -1, "conn": -1, "seq": 0, "method": "bdev_malloc_create",
         "params": {"name": "Malloc0", "num_blocks": 512 * 256, "block_size": 4096}, "t_start": 1.0, "t_end": 1.1,
         "result": "Malloc0"},
        {"v": 1, "worker": -1, "conn": -1, "seq": 1, "method": "bdev_lvol_create_lvstore",
         "params": {"bdev_name": "Malloc0", "lvs_name": "lvs0"}, "t_start": 1.2, "t_end": 1.3,
         "result": "0b6f0e43-8b8e-4f5a-9d2c-4d1e5e0b3c11"},
    ]
    history.write_text("".join(json.dumps(line) + "\n" for line in lines))
    rc = cli_main(["replay", str(history), "--target", "sim", "--run-dir", str(tmp_path / "r")])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "0 answers differ from the recording" in out, out


def _constructors_of(name: str, tree: ast.AST) -> list[int]:
    return [node.lineno for node in ast.walk(tree)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name | ast.Attribute)
            and (node.func.id if isinstance(node.func, ast.Name) else node.func.attr) == name]


def test_only_the_target_session_constructs_a_target() -> None:
    """One way to start a target: a second path is where a forgotten bdev memory, watchdog or core_pattern hides."""
    found = []
    for folder in ("harness", "bench", "suites"):
        for path in sorted((REPO / folder).rglob("*.py")):
            rel = path.relative_to(REPO).as_posix()
            if rel == "harness/session.py":
                continue
            found += [f"{rel}:{line}" for line in _constructors_of("Target", ast.parse(path.read_text()))]
    assert found == [], "Target(...) outside harness/session.py: start targets with TargetSession"
