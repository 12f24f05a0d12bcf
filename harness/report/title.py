"""One stable title per crash, syzkaller style: same title, same bug (deduplicated once per run).

Titles name the signal and the place (`SIGSEGV in spdk_lvol_destroy (lvol.c:1884)`), or the fatal
message (`SIGABRT: malloc(): unsorted double linked list corrupted`), never pids, pointers or times.
The reference target's segfaults are real reads that fault in libc; their place is the SPDK function its model
crashed in (`SIGSEGV in spdk_lvol_destroy (reference target)`), taken from the line it logs just before.

The title people read keeps the line (`(lvol.c:1884)`); `crash_key` drops what differs between builds of the
same code (line numbers, offsets, addresses, glibc's per-CPU routine names, a hang's threshold), and the key
decides deduplication, known issues and the minimizer's match: one bug found on two builds is one bug.
"""

from __future__ import annotations

import re
import signal as signal_module

from harness.report.backtrace import Backtrace
from harness.report.symbolize import Symbol
from harness.watch.evidence import CrashEvidence

OUTSIDE_SIGNALS = frozenset({"SIGKILL", "SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT"})
KILLED_FROM_OUTSIDE = "target killed from outside"

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


# Files of the C runtime and of the Python interpreter: a fault whose culprit is in one of them, in the reference
# target, is the sim's own ctypes read (harness/sim/death.py), not where the modelled SPDK crash is.
_RUNTIME_FILE = re.compile(r"^(?:libc\.so|libc-|ld-linux|libffi\.so|libpython|python\d|_ctypes)")
_RUNTIME_SOURCE = re.compile(r"(?:^|/)(?:sysdeps|Objects|Python|Modules)/")
_RUNTIME_FUNC = re.compile(r"^_*Py|^ffi_|^_ctypes_")


def _in_runtime(func: str | None, file: str | None, binary: str | None) -> bool:
    if func and (_libc_routine(func) or _RUNTIME_FUNC.match(func)):
        return True
    if binary and _RUNTIME_FILE.match(binary.rsplit("/", 1)[-1]):
        return True
    return bool(file and _RUNTIME_SOURCE.search(file))


# The reference target's last words before a real fault it makes on purpose (harness/sim/death.py
# `modelled_site_line`): `spdk-sim: SIGSEGV modelled in spdk_lvol_destroy (...)`. SPDK's lines never start so.
_MODELLED_SITE = re.compile(r"(?:^|\]\s*)spdk-sim: (?P<sig>SIG[A-Z]+) modelled in (?P<func>[A-Za-z_]\w*)\b")
_LAST_WORDS = 5
"""The line must be among the log's last few: a sim writes it just before it dies, so an older one is stale."""


def modelled_site(evidence: list[CrashEvidence], signal: str) -> str | None:
    """The SPDK function a dying reference target said it modelled for `signal`, from its log's last lines."""
    for ev in evidence:
        last = [line for line in ev.log_tail if line.strip()][-_LAST_WORDS:]
        for line in reversed(last):
            m = _MODELLED_SITE.search(line)
            if m and m["sig"] == signal:
                return f"{m['func']} (reference target)"
    return None


def _where(backtrace: Backtrace | None, symbol: Symbol | None, evidence: list[CrashEvidence], signal: str,
           mapping: str | None = None) -> str | None:
    """Where it crashed: the core's culprit frame, else the symbolized fault ip. When that is (or, with neither,
    the kernel's mapping is) the C runtime or the interpreter and the target is the reference target, the SPDK
    function its model crashed in, as its last log line says: the sim's own fault is always a ctypes read in
    libc, which would give every modelled crash the same useless title."""
    where: str | None = None
    runtime = bool(mapping and _RUNTIME_FILE.match(mapping))
    frame = backtrace.culprit() if backtrace is not None else None
    if frame is not None and frame.func != "??":
        where = _libc_routine(frame.func) or frame.describe()
        runtime = _in_runtime(frame.func, frame.file, frame.lib)
    elif symbol is not None and symbol.function:
        where = _libc_routine(symbol.function) or symbol.describe()
        runtime = _in_runtime(symbol.function, symbol.file, symbol.binary)
    if where is None or runtime:
        return modelled_site(evidence, signal) or where
    return where


def crash_title(
    evidence: list[CrashEvidence], *, symbol: Symbol | None = None, backtrace: Backtrace | None = None,
) -> str:
    """The title of a crash from its evidence, the symbolized fault ip and the core's backtrace (if any)."""
    ev = primary_evidence(evidence)
    if ev.kind == "fault" and ev.fault is not None:
        where = _where(backtrace, symbol, evidence, ev.fault.signal, ev.fault.mapping)
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
            where = _where(backtrace, None, evidence, sig)
            if where:
                return f"{sig} in {where}"
            if sig == "SIGABRT":
                return "SIGABRT: no message in the target log"
            if sig in OUTSIDE_SIGNALS:
                return f"{sig}: {KILLED_FROM_OUTSIDE}"
            return f"{sig}: no kernel line (kernel log unavailable or ratelimited)"
        return f"exit: target exited {ev.exit_rc} unexpectedly"
    if ev.kind == "exit":
        return "exit: target exited unexpectedly (exit code unknown)"
    return f"{ev.kind}: {ev.summary}"


THIN_EVIDENCE = ("no kernel line", "exit code unknown")
"""What a title says when its evidence was incomplete (the kernel's ratelimit dropped the fault line)."""


def indeterminate_title(title: str) -> bool:
    """A title from incomplete evidence: it names the signal, not the place."""
    return any(text in title for text in THIN_EVIDENCE)


def killed_from_outside(title: str) -> bool:
    """A death someone else caused (SIGKILL by an operator, the OOM killer's sibling): no bug to minimize."""
    return title.endswith(KILLED_FROM_OUTSIDE)


_SLUG = re.compile(r"[^A-Za-z0-9_.+-]+")


def title_slug(title: str, limit: int = 80) -> str:
    """A directory name for a title: `SIGSEGV-in-spdk_lvol_destroy-lvol.c-1884`."""
    return _SLUG.sub("-", title).strip("-")[:limit] or "crash"


def _libc_base(m: re.Match[str]) -> str:
    return f"{'memcpy' if m['base'] == 'memmove' else m['base']} (libc)"


KEY_RULES: tuple[tuple[re.Pattern[str], str | object, str], ...] = (
    (re.compile(r"\b__(?P<base>memcpy|memmove|memset|memcmp|memchr|strlen|strnlen|strcmp|strncmp|strchr|strrchr|"
                r"strcpy|stpcpy)_[a-z0-9_]+(?: \([^)]*\))?"), _libc_base,
     "glibc's per-CPU variant of a string routine (a try without a core names it; a backtrace names the base)"),
    (re.compile(r"\((?:[\w.+-]+/)*([\w.+-]+\.(?:c|h|cc|cpp|S|s)):\d+\)"), r"(\1)",
     "a source line (and the path gdb or addr2line printed): the same function's bug moves with every patch"),
    (re.compile(r"\b([\w.+-]+\.(?:c|h|cc|cpp)):\s*\d+:"), r"\1:", "an assertion's `file.c:1234:` prefix"),
    (re.compile(r"\+0x[0-9a-fA-F]+\b"), "+OFFSET", "an offset into a binary or library (`spdk_tgt+0x4de88`)"),
    (re.compile(r"\b0x[0-9a-fA-F]+\b"), "ADDR", "an address"),
    (re.compile(r"\.so(?:\.\d+)+\b"), ".so", "a library's version suffix (`libspdk_lvol.so.10.0`)"),
    (re.compile(r"^(hang: no RPC reply for )\d+(?:\.\d+)? s$"), r"\1N s", "the hang threshold the run chose"),
)
"""How a title becomes its key, syzkaller's way: substitutions as data, each with why."""


def crash_key(title: str) -> str:
    """What makes two titles the same bug (see the module docstring); the title itself stays as it was."""
    key = title
    for pattern, replacement, _why in KEY_RULES:
        key = pattern.sub(replacement, key)  # type: ignore[arg-type]
    return key
