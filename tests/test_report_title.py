"""Crash titles from recorded evidence: the recorded gdb backtrace, kernel lines, abort messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.recordings import recordings_dir
from harness.report.backtrace import parse_gdb_backtrace
from harness.report.symbolize import Symbol
from harness.report.title import crash_title, modelled_site, title_slug
from harness.sim.death import modelled_site_line
from harness.sim.faults import FORCED_REMOVAL_LOG_LINES
from harness.sim.target_log import spdk_log_line
from harness.watch.evidence import CrashEvidence
from harness.watch.kmsg import parse_fault
from harness.watch.targetlog import parse_abort_line

BACKTRACES = sorted((recordings_dir() / "backtraces").glob("*.txt"))

STATIC_LINE = ("reactor_0[3692273]: segfault at 8 ip 000000000044de88 sp 00007ffcc77b0860 error 4 in "
               "spdk_tgt[400000+46c000] likely on CPU 0 (core 0, socket 0)")


def _fault_evidence(line: str) -> CrashEvidence:
    fault = parse_fault(line)
    assert fault is not None
    return CrashEvidence("fault", fault.describe(), "kernel", fault=fault)


@pytest.mark.skipif(not BACKTRACES, reason="no recorded backtraces")
@pytest.mark.parametrize("path", BACKTRACES, ids=lambda p: p.name)
def test_recorded_backtrace_gives_title(path: Path) -> None:
    bt = parse_gdb_backtrace(path.read_text())
    assert bt.signal == "SIGSEGV"
    assert bt.crashing_lwp == 17270
    assert len(bt.frames) == 23
    assert [f.n for f in bt.frames] == list(range(23))
    assert bt.frames[0].func == "spdk_lvol_destroy" and bt.frames[0].line == 1884
    assert bt.frames[1].pc == 0x7F38F465C515 and bt.frames[1].file == "vbdev_lvol.c"
    assert bt.frames[-1].func == "main"
    ev = CrashEvidence("exit", "target died", "process", exit_rc=-11)
    assert crash_title([ev], backtrace=bt) == "SIGSEGV in spdk_lvol_destroy (lvol.c:1884)"
    assert crash_title([_fault_evidence(STATIC_LINE), ev], backtrace=bt) == (
        "SIGSEGV in spdk_lvol_destroy (lvol.c:1884)")


def test_fault_titles_with_and_without_symbols() -> None:
    ev = _fault_evidence(STATIC_LINE)
    assert crash_title([ev]) == "SIGSEGV at spdk_tgt+0x4de88"
    sym = Symbol("spdk_lvol_destroy", "/usr/src/spdk/lib/lvol/lvol.c", 1884, "spdk_tgt", 0x44DE88)
    assert crash_title([ev], symbol=sym) == "SIGSEGV in spdk_lvol_destroy (lvol.c:1884)"
    shared = _fault_evidence(
        "reactor_0[17270]: segfault at 8 ip 00007f38f45e3be8 sp 00007fffbf0892a0 error 4 in "
        "libspdk_lvol.so.10.0[8be8,7f38f45de000+a000] likely on CPU 0 (core 0, socket 0)")
    assert crash_title([shared]) == "SIGSEGV at libspdk_lvol.so.10.0+0x8be8"
    trap = _fault_evidence("traps: reactor_0[5120] trap invalid opcode ip:55d5c0a4b2f1 sp:7ffc8d4e1e60 "
                           "error:0 in spdk_tgt[55d5c0a00000+200000]")
    assert crash_title([trap]) == "SIGILL at spdk_tgt+0x4b2f1"


def test_same_bug_same_title_across_runs() -> None:
    """pids, tids, bases and timestamps differ between runs; the title must not."""
    a = _fault_evidence("6,1,2,-;reactor_0[100]: segfault at 8 ip 00007f38f45e3be8 sp 00007fffbf0892a0 error 4 "
                        "in libspdk_lvol.so.10.0[8be8,7f38f45de000+a000] likely on CPU 0 (core 0, socket 0)")
    b = _fault_evidence("6,9,7,-;reactor_1[2222]: segfault at 8 ip 00007faa00002be8 sp 00007fffbf0000a0 error 4 "
                        "in libspdk_lvol.so.10.0[8be8,7faa00000000+a000] likely on CPU 1 (core 1, socket 0)")
    assert crash_title([a]) == crash_title([b])


@pytest.mark.parametrize(
    ("line", "title"),
    [
        ("malloc(): unsorted double linked list corrupted", "SIGABRT: malloc(): unsorted double linked list corrupted"),
        ("spdk_tgt: bdev.c:4370: bdev_channel_destroy_resource: Assertion `TAILQ_EMPTY(&ch->io_submitted)' failed.",
         "SIGABRT: Assertion 'TAILQ_EMPTY(&ch->io_submitted)' failed in bdev_channel_destroy_resource"),
        ("[2026-11-29 05:57:09.8] thread.c:2915:sspin_fatal: *ERROR*: unrecoverable spinlock error 3: "
         "Destroying a held spinlock (sspin->thread == NULL)",
         "SIGABRT: unrecoverable spinlock error 3: Destroying a held spinlock (sspin->thread == NULL)"),
    ],
)
def test_abort_titles(line: str, title: str) -> None:
    abort = parse_abort_line(line)
    assert abort is not None
    evidence = [CrashEvidence("exit", "died", "process", exit_rc=-6, t=2.0),
                CrashEvidence("abort", abort.text, "target-log", abort=abort, t=1.0)]
    assert crash_title(evidence) == title


def test_hang_and_exit_titles() -> None:
    assert crash_title([CrashEvidence("hang", "x", "probe", hang_s=30.0)]) == "hang: no RPC reply for 30 s"
    assert crash_title([CrashEvidence("exit", "x", "process", exit_rc=0)]) == "exit: target exited 0 unexpectedly"
    assert crash_title([CrashEvidence("exit", "x", "process", exit_rc=-9)]) == "SIGKILL: target killed from outside"
    assert crash_title([CrashEvidence("exit", "x", "process", exit_rc=-6)]) == "SIGABRT: no message in the target log"
    assert title_slug("SIGSEGV in spdk_lvol_destroy (lvol.c:1884)") == "SIGSEGV-in-spdk_lvol_destroy-lvol.c-1884"
    with pytest.raises(ValueError):
        crash_title([])


@pytest.mark.parametrize("func", ["__memcpy_avx512_unaligned_erms", "__memmove_avx_unaligned_erms",
                                  "__memmove_sse2_unaligned_erms"])
def test_libc_string_routine_variants_share_one_title(func: str) -> None:
    """glibc picks memcpy's implementation per CPU; the same crash must dedupe across machines."""
    bt = parse_gdb_backtrace(
        "Program terminated with signal SIGSEGV, Segmentation fault.\n"
        f"#0  {func} () at ../sysdeps/x86_64/multiarch/memmove-vec-unaligned-erms.S:372\n"
        "#1  0x00007f00000010 in PyBytes_FromStringAndSize ()\n"
    )
    ev = CrashEvidence("exit", "target died", "process", exit_rc=-11)
    assert crash_title([ev], backtrace=bt) == "SIGSEGV in memcpy (libc)"


def test_libc_routine_title_is_the_same_without_a_core() -> None:
    """addr2line (no core) and gdb (a core) must agree, or runs with and without cores would not dedupe."""
    line = ("reactor_0[15859]: segfault at 8 ip 00007f0d2878b8a2 sp 00007ffe225b8298 error 4 in "
            "libc.so.6[16d8a2,7f0d28644000+156000] likely on CPU 1 (core 1, socket 0)")
    sym = Symbol("__memcpy_avx512_unaligned_erms", "../sysdeps/x86_64/multiarch/memmove-vec-unaligned-erms.S",
                 372, "libc.so.6", 0x16D8A2)
    assert crash_title([_fault_evidence(line)], symbol=sym) == "SIGSEGV in memcpy (libc)"


# The reference target's segfault: a real ctypes read of address 8 that faults in libc's memcpy (harness/sim/death.py),
# after its last words naming the SPDK function the model crashed in.
SIM_FAULT_LINE = ("reactor_0[27396]: segfault at 8 ip 00007f0d2878b8a2 sp 00007ffe225b8298 error 4 in "
                  "libc.so.6[16d8a2,7f0d28644000+156000] likely on CPU 1 (core 1, socket 0)")
SIM_SYMBOL = Symbol("__memcpy_avx512_unaligned_erms", "../sysdeps/x86_64/multiarch/memmove-vec-unaligned-erms.S",
                    372, "libc.so.6", 0x16D8A2)
SIM_CORE_BT = (
    "Program terminated with signal SIGSEGV, Segmentation fault.\n"
    "#0  __memcpy_avx512_unaligned_erms () at ../sysdeps/x86_64/multiarch/memmove-vec-unaligned-erms.S:372\n"
    "#1  0x00007fec2174e1bd in PyBytes_FromStringAndSize (str=0x8, size=8) at Objects/bytesobject.c:142\n"
    "#2  0x00007fec20d04f7a in ?? () from /lib/x86_64-linux-gnu/libffi.so.8\n"
    "#3  0x00007fec20d04b0d in ffi_call () from /lib/x86_64-linux-gnu/libffi.so.8\n"
)


def _sim_log(detail: str = "spdk_lvol_destroy: the only clone of w2s7 has no lvol", after: int = 0) -> list[str]:
    """A reference target's log as the server writes it: SPDK lines, its last words, then `after` more lines."""
    last_words = modelled_site_line("SIGSEGV", detail)
    assert last_words is not None
    return [spdk_log_line(x) for x in (
        *FORCED_REMOVAL_LOG_LINES, last_words,
        *(f"app.c: 900:spdk_app_start: *NOTICE*: Total cores available: {i}" for i in range(after)))]


def _with_log(evidence: list[CrashEvidence], log: list[str]) -> list[CrashEvidence]:
    for ev in evidence:
        ev.log_tail = list(log)
    return evidence


SIM_TITLE = "SIGSEGV in spdk_lvol_destroy (reference target)"


def test_reference_target_segfault_is_titled_by_the_spdk_function_it_models() -> None:
    """Core or not, addr2line or not, kernel line or not: the sim's libc fault is titled by its model's function."""
    died = CrashEvidence("exit", "target died", "process", exit_rc=-11)
    core = parse_gdb_backtrace(SIM_CORE_BT)
    log = _sim_log()
    with_core = _with_log([_fault_evidence(SIM_FAULT_LINE), died], log)
    assert crash_title(with_core, symbol=SIM_SYMBOL, backtrace=core) == SIM_TITLE
    assert crash_title(_with_log([_fault_evidence(SIM_FAULT_LINE), died], log), symbol=SIM_SYMBOL) == SIM_TITLE
    assert crash_title(_with_log([_fault_evidence(SIM_FAULT_LINE), died], log)) == SIM_TITLE  # no addr2line
    died_only = CrashEvidence("exit", "target died", "process", exit_rc=-11)
    assert crash_title(_with_log([died_only], log), backtrace=core) == SIM_TITLE  # kernel line lost
    assert crash_title(_with_log([CrashEvidence("exit", "x", "process", exit_rc=-11)], log)) == SIM_TITLE
    # without its last words the same fault keeps its native title
    bare = [_fault_evidence(SIM_FAULT_LINE), CrashEvidence("exit", "target died", "process", exit_rc=-11)]
    assert crash_title(bare, symbol=SIM_SYMBOL) == "SIGSEGV in memcpy (libc)"


def test_modelled_site_never_overrides_a_real_spdk_culprit() -> None:
    """A culprit outside libc/the interpreter is where the bug is, whatever a log line says."""
    bt = parse_gdb_backtrace(BACKTRACES[0].read_text()) if BACKTRACES else parse_gdb_backtrace(
        "Program terminated with signal SIGSEGV, Segmentation fault.\n"
        "#0  spdk_lvol_destroy (lvol=0x0) at lvol.c:1884\n#1  0x00007f38f465c515 in main () at app.c:1\n")
    ev = _with_log([CrashEvidence("exit", "target died", "process", exit_rc=-11)],
                   _sim_log("spdk_bs_delete_blob: not the culprit"))
    assert crash_title(ev, backtrace=bt) == "SIGSEGV in spdk_lvol_destroy (lvol.c:1884)"
    sym = Symbol("spdk_lvol_destroy", "/usr/src/spdk/lib/lvol/lvol.c", 1884, "spdk_tgt", 0x44DE88)
    fault = _with_log([_fault_evidence(STATIC_LINE)], _sim_log("spdk_bs_delete_blob: not the culprit"))
    assert crash_title(fault, symbol=sym) == "SIGSEGV in spdk_lvol_destroy (lvol.c:1884)"


def test_stale_or_other_signal_last_words_are_ignored() -> None:
    died = CrashEvidence("exit", "target died", "process", exit_rc=-11)
    stale = _with_log([_fault_evidence(SIM_FAULT_LINE), died], _sim_log(after=10))  # an older incarnation's
    assert crash_title(stale, symbol=SIM_SYMBOL) == "SIGSEGV in memcpy (libc)"
    bus = _with_log([CrashEvidence("exit", "x", "process", exit_rc=-7)], _sim_log())
    assert crash_title(bus) == "SIGBUS: no kernel line (kernel log unavailable or ratelimited)"


def test_modelled_site_line_needs_a_function_and_reads_back() -> None:
    """What harness.sim.death writes is what the title reads; a detail naming no function writes nothing."""
    line = modelled_site_line("SIGSEGV", "spdk_lvol_destroy: the only clone of\n s1 has no lvol")
    assert line is not None and line.startswith("spdk-sim: SIGSEGV modelled in spdk_lvol_destroy (")
    assert "\n" not in line and parse_abort_line(line) is None  # never an abort of its own
    assert modelled_site_line("SIGSEGV", "no function named here") is None
    assert modelled_site([CrashEvidence("exit", "x", "process", exit_rc=-11, log_tail=[spdk_log_line(line)])],
                         "SIGSEGV") == "spdk_lvol_destroy (reference target)"
