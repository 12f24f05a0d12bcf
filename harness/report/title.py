"""One stable title per crash, syzkaller style: same title, same bug (deduplicated once per run).

Titles name the signal and the place (`SIGSEGV in spdk_lvol_destroy (lvol.c:1884)`), or the fatal
message (`SIGABRT: malloc(): unsorted double linked list corrupted`), never pids, pointers or times.
"""

from __future__ import annotations

import re
import signal as signal_module

from harness.report.backtrace import Backtrace
from harness.report.symbolize import Symbol
from harness.watch.evidence import CrashEvidence

# Which evidence explains a crash best when several arrived (a fault line, then the exit it caused).
_RANK = {"fault": 0, "abort": 1, "oom": 2, "exit-signal": 3, "hang": 4, "exit": 5}


def _rank(ev: CrashEvidence) -> int:
    if ev.kind == "exit" and ev.exit_rc is not None and ev.exit_rc < 0:
        return _RANK["exit-signal"]
    return _RANK.get(ev.kind, 9)


def primary_evidence(evidence: list[CrashEvidence]) -> CrashEvidence:
    """The most telling evidence; ties go to the earliest."""
    if not evidence:
        raise ValueError("a crash title needs at least one piece of evidence")
    return min(evidence, key=lambda ev: (_rank(ev), ev.t))


def signal_name(rc: int) -> str:
    try:
        return signal_module.Signals(-rc).name
    except ValueError:
        return f"signal {-rc}"


# glibc picks a string routine per CPU (`__memmove_avx_unaligned_erms`, `__memcpy_avx512_unaligned_erms`, ...):
# the same bug must get the same title on every machine, so such frames are named by the routine alone.
_LIBC_IFUNC = re.compile(
    r"^__(?P<base>memcpy|memmove|memset|memcmp|memchr|strlen|strnlen|strcmp|strncmp|strchr|strrchr|strcpy|stpcpy)"
    r"_[a-z0-9_]+$"
)


def _libc_routine(func: str) -> str | None:
    m = _LIBC_IFUNC.match(func)
    if not m:
        return None
    return f"{'memcpy' if m['base'] == 'memmove' else m['base']} (libc)"


def _where(backtrace: Backtrace | None, symbol: Symbol | None) -> str | None:
    if backtrace is not None:
        frame = backtrace.culprit()
        if frame is not None and frame.func != "??":
            return _libc_routine(frame.func) or frame.describe()
    if symbol is not None and symbol.function:
        return _libc_routine(symbol.function) or symbol.describe()
    return None


def crash_title(
    evidence: list[CrashEvidence], *, symbol: Symbol | None = None, backtrace: Backtrace | None = None,
) -> str:
    """The title of a crash from its evidence, the symbolized fault ip and the core's backtrace (if any)."""
    ev = primary_evidence(evidence)
    if ev.kind == "fault" and ev.fault is not None:
        where = _where(backtrace, symbol)
        if where:
            return f"{ev.fault.signal} in {where}"
        if ev.fault.mapping:
            return f"{ev.fault.signal} at {ev.fault.location()}"
        return f"{ev.fault.signal} at anonymous memory (ip in no file)"
    if ev.kind == "abort" and ev.abort is not None:
        if ev.abort.kind == "assert" and ev.abort.function:
            return f"SIGABRT: {ev.abort.text} in {ev.abort.function}"
        return f"SIGABRT: {ev.abort.text}"
    if ev.kind == "oom":
        return "OOM: target killed by the OOM killer"
    if ev.kind == "hang":
        return f"hang: no RPC reply for {ev.hang_s or 0:g} s"
    if ev.kind == "exit" and ev.exit_rc is not None:
        if ev.exit_rc < 0:
            sig = signal_name(ev.exit_rc)
            where = _where(backtrace, None)
            if where:
                return f"{sig} in {where}"
            if sig == "SIGABRT":
                return "SIGABRT: no message in the target log"
            if sig in {"SIGKILL", "SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT"}:
                return f"{sig}: target killed from outside"
            return f"{sig}: no kernel line (kernel log unavailable or ratelimited)"
        return f"exit: target exited {ev.exit_rc} unexpectedly"
    if ev.kind == "exit":
        return "exit: target exited unexpectedly (exit code unknown)"
    return f"{ev.kind}: {ev.summary}"


_SLUG = re.compile(r"[^A-Za-z0-9_.+-]+")


def title_slug(title: str, limit: int = 80) -> str:
    """A directory name for a title: `SIGSEGV-in-spdk_lvol_destroy-lvol.c-1884`."""
    return _SLUG.sub("-", title).strip("-")[:limit] or "crash"
