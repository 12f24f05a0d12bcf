"""Parsers over real kernel and target log lines: every recorded record, and the forms the issue quotes."""

from __future__ import annotations

import json

import pytest

from harness.recordings import recordings_dir
from harness.watch.kmsg import (
    decode_error_bits,
    parse_code_line,
    parse_fault,
    parse_record,
    parse_suppressed,
)
from harness.watch.targetlog import DEFAULT_ERROR_PATTERNS, match_finding, parse_abort_line

RECORDINGS = recordings_dir()
USER_FAULTS = RECORDINGS / "kernel-log" / "user-faults.json"
TARGET_LOG = RECORDINGS / "target-log" / "longhorn-v24.09-forced-removal-then-segv.log"

needs_recordings = pytest.mark.skipif(not USER_FAULTS.exists(), reason=f"{USER_FAULTS} not present")

_HEX_FIELDS = {"fault_addr", "ip", "sp", "error", "file_offset", "map_base", "map_size"}


def _recorded() -> list[dict]:
    if not USER_FAULTS.exists():
        return []
    return json.loads(USER_FAULTS.read_text())["records"]


def _check_expected(line: str, expect: dict) -> None:
    fault = parse_fault(line)
    assert fault is not None, line
    as_json = fault.to_json()
    for key, value in expect.items():
        if key in _HEX_FIELDS:
            assert as_json[key] == value, (key, line)
        else:
            assert getattr(fault, key) == value, (key, line)


@needs_recordings
@pytest.mark.parametrize("record", _recorded(), ids=lambda r: r["source"][:40])
def test_recorded_fault_records_parse_as_expected(record: dict) -> None:
    for form in ("kmsg", "dmesg"):
        if form in record:
            _check_expected(record[form], record["expect"])
    if "code" in record:
        code = parse_code_line(record["code"])
        assert code is not None and "<48>" in code
        assert parse_fault(record["code"]) is None


@needs_recordings
def test_kmsg_record_header_is_split() -> None:
    rec = parse_record(_recorded()[1]["kmsg"])
    assert rec is not None
    assert (rec.seq, rec.usec, rec.priority) == (340, 1017404033, 6)
    assert rec.message.startswith("reactor_0[17270]: segfault at 8")
    assert parse_record(" SUBSYSTEM=cpu") is None


QUOTED = [
    (
        "reactor_0[3692273]: segfault at 8 ip 000000000044de88 sp 00007ffcc77b0860 error 4 in "
        "spdk_tgt[400000+46c000] likely on CPU 0 (core 0, socket 0)",
        {"kind": "segfault", "comm": "reactor_0", "tid": 3692273, "mapping": "spdk_tgt", "file_offset": None,
         "map_base": 0x400000, "cpu": 0, "signal": "SIGSEGV"},
        "spdk_tgt+0x4de88",
    ),
    (
        "python3[2700]: segfault at 8 ip 00007f2bd8f74219 sp 00007fff4c0662e8 error 4 in "
        "libc.so.6[156219,7f2bd8e44000+156000] likely on CPU 1 (core 1, socket 0)",
        {"kind": "segfault", "mapping": "libc.so.6", "file_offset": 0x156219, "cpu": 1},
        "libc.so.6+0x156219",
    ),
    (  # no file behind the ip (JIT, a NULL function pointer): no ` in ...`
        "reactor_1[4242]: segfault at 0 ip 0000000000000000 sp 00007ffd1b2c3d40 error 14 "
        "likely on CPU 1 (core 1, socket 0)",
        {"kind": "segfault", "tid": 4242, "mapping": None, "fault_addr": 0, "ip": 0,
         "error_bits": ["user", "read", "page not present", "instruction fetch"]},
        "ip 0x0 (anonymous memory)",
    ),
    (  # old kernels: neither the file offset nor the CPU
        "spdk_tgt[811]: segfault at 7f0000000000 ip 00005618a2e0c9aa sp 00007ffe3d7b5ab0 error 6 in "
        "spdk_tgt[5618a2c00000+400000]",
        {"comm": "spdk_tgt", "cpu": None, "error_bits": ["user", "write", "page not present"]},
        "spdk_tgt+0x20c9aa",
    ),
    (
        "traps: reactor_0[5120] trap invalid opcode ip:55d5c0a4b2f1 sp:7ffc8d4e1e60 error:0 in "
        "spdk_tgt[55d5c0a00000+200000]",
        {"kind": "trap", "trap": "invalid opcode", "signal": "SIGILL", "tid": 5120, "error": 0},
        "spdk_tgt+0x4b2f1",
    ),
    (
        "traps: reactor_1[5121] general protection fault ip:7f12a4c3b1de sp:7f12a1ffe9a0 error:0 in "
        "libspdk_blob.so.11.0[2a1de,7f12a4c11000+2e000]",
        {"kind": "general protection", "signal": "SIGSEGV", "tid": 5121, "file_offset": 0x2A1DE},
        "libspdk_blob.so.11.0+0x2a1de",
    ),
    (
        "traps: spdk_tgt[77] trap divide error ip:401136 sp:7ffd3e8a1f10 error:0 in spdk_tgt[401000+1000]",
        {"kind": "trap", "signal": "SIGFPE"},
        "spdk_tgt+0x136",
    ),
]


@pytest.mark.parametrize(("line", "expect", "location"), QUOTED, ids=range(len(QUOTED)))
def test_quoted_fault_forms(line: str, expect: dict, location: str) -> None:
    for form in (line, f"[5734138.241035] {line}", f"6,900,1234567,-;{line}",
                 f"Nov 29 07:00:01 node1 kernel: {line}"):
        fault = parse_fault(form)
        assert fault is not None, form
        for key, value in expect.items():
            assert getattr(fault, key) == value, (key, form)
        assert fault.location() == location


def test_oom_killer_lines() -> None:
    fault = parse_fault("6,77,999,-;Out of memory: Killed process 4321 (reactor_0) total-vm:9000kB, "
                        "anon-rss:8000kB, file-rss:0kB, shmem-rss:0kB, UID:0 pgtables:64kB oom_score_adj:0")
    assert fault is not None and (fault.kind, fault.tid, fault.comm, fault.signal) == (
        "oom-kill", 4321, "reactor_0", "SIGKILL")
    summary = parse_fault("oom-kill:constraint=CONSTRAINT_NONE,nodemask=(null),cpuset=/,mems_allowed=0,"
                          "global_oom,task_memcg=/,task=spdk_tgt,pid=4321,uid=0")
    assert summary is not None and (summary.tid, summary.comm) == (4321, "spdk_tgt")
    old = parse_fault("Out of memory: Kill process 4321 (spdk_tgt) score 912 or sacrifice child")
    assert old is not None and old.tid == 4321


def test_suppressed_and_unrelated_lines() -> None:
    assert parse_suppressed("[  12.5] show_signal_msg: 14 callbacks suppressed") == ("show_signal_msg", 14)
    assert parse_fault("show_signal_msg: 14 callbacks suppressed") is None
    assert parse_fault("EXT4-fs (vda): mounted filesystem with ordered data mode") is None
    code = "Unable to access opcode bytes at 0x7f00."
    assert parse_code_line(f"Code: {code}") == code


@pytest.mark.parametrize(
    ("error", "words"),
    [
        (0x4, ["user", "read", "page not present"]),
        (0x6, ["user", "write", "page not present"]),
        (0x7, ["user", "write", "protection violation"]),
        (0x15, ["user", "read", "protection violation", "instruction fetch"]),
        (0x0, ["kernel", "read", "page not present"]),
        (0x8 | 0x20 | 0x8000, ["kernel", "read", "page not present", "reserved bit", "protection keys", "SGX"]),
    ],
)
def test_error_bits(error: int, words: list[str]) -> None:
    assert decode_error_bits(error) == words


ABORT_LINES = [
    ("malloc(): unsorted double linked list corrupted", "glibc", "malloc(): unsorted double linked list corrupted"),
    ("double free or corruption (out)", "glibc", "double free or corruption (out)"),
    ("free(): double free detected in tcache 2", "glibc", "free(): double free detected in tcache 2"),
    ("*** Error in `./spdk_tgt': double free or corruption (fasttop): 0x0000000001e6c010 ***", "glibc",
     "double free or corruption (fasttop)"),
    ("spdk_tgt: bdev.c:4370: bdev_channel_destroy_resource: Assertion `TAILQ_EMPTY(&ch->io_submitted)' failed.",
     "assert", "Assertion 'TAILQ_EMPTY(&ch->io_submitted)' failed"),
    ("spdk_tgt: bdev.c:4370: bdev_channel_destroy_resource: Assertion 'TAILQ_EMPTY(&ch->io_submitted)' failed.",
     "assert", "Assertion 'TAILQ_EMPTY(&ch->io_submitted)' failed"),
    ("[2026-11-29 05:57:09.834816] thread.c:2915:sspin_fatal: *ERROR*: unrecoverable spinlock error 7: "
     "Lock(s) held while SPDK thread going off CPU (thread->lock_count == 0)", "spinlock",
     "unrecoverable spinlock error 7: Lock(s) held while SPDK thread going off CPU (thread->lock_count == 0)"),
    ("*** stack smashing detected ***: terminated", "stack-protector", "stack smashing detected"),
    ("Fatal glibc error: malloc.c:4376 (_int_malloc): assertion failed: chunk_main_arena (fwd)", "glibc",
     "malloc.c:4376 (_int_malloc): assertion failed: chunk_main_arena (fwd)"),
]


@pytest.mark.parametrize(("line", "kind", "text"), ABORT_LINES, ids=range(len(ABORT_LINES)))
def test_abort_lines(line: str, kind: str, text: str) -> None:
    abort = parse_abort_line(line)
    assert abort is not None and (abort.kind, abort.text) == (kind, text)


def test_assert_names_the_function() -> None:
    abort = parse_abort_line(ABORT_LINES[4][0])
    assert abort is not None and (abort.function, abort.file, abort.lineno) == (
        "bdev_channel_destroy_resource", "bdev.c", 4370)


@pytest.mark.skipif(not TARGET_LOG.exists(), reason=f"{TARGET_LOG} not present")
def test_recorded_target_log_has_findings_but_no_abort() -> None:
    lines = TARGET_LOG.read_text().splitlines()
    assert all(parse_abort_line(line) is None for line in lines)
    found = [(match_finding(line, DEFAULT_ERROR_PATTERNS), line) for line in lines]
    hits = [pattern for pattern, _ in found if pattern]
    assert hits == ["forced removal"]
    # a plain *ERROR* that is not configured stays quiet
    assert any("Failed to open bdev" in line for _, line in found if _ is None)
    assert match_finding("x *ERROR*: Lvol store removed with error: -5", ["re:removed with error: -\\d+"])
