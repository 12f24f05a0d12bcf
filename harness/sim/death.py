"""How the reference target dies: for real, the way `spdk_tgt` dies, so the watchdog sees real evidence.

A segfault is a genuine read of an unmapped address in a thread named like SPDK's (`reactor_0`), with the
default SIGSEGV disposition and no Python traceback, so the kernel writes its own
`reactor_0[PID]: segfault at 8 ip ... error 4 in ...` line and the process ends by SIGSEGV (a core if
`core_pattern`/`ulimit -c` allow). An abort prints its message to stderr (the target log) and raises SIGABRT
with no kernel line, like glibc's heap checks and SPDK's assertions. A hang stops the reactor forever with
every socket left open. An exit leaves mid-run with a code, without cleaning up the socket file.

A real fault has one cost: the CPU faults inside libc (ctypes' `string_at` -> `memcpy`), so the kernel line,
addr2line and gdb all name a libc routine, never the SPDK function the model says crashed. So the sim's last
words, just before the read, are one honest line of its own (`modelled_site_line`) naming that SPDK function;
the crash title takes the function from it when the fault's own culprit is libc/ctypes/the interpreter.
A log line, not a Python function named after SPDK's making the read: gdb shows no Python frames in a core
(no python-gdb here, and none at all without a core), while the log line is in every report, core or not.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import faulthandler
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import NoReturn

from harness.sim.protocol import SimulatedCrash

DEATH_KINDS = ("segv", "abort", "hang", "exit")

_PR_SET_NAME = 15
_THREAD_NAME_MAX = 15  # TASK_COMM_LEN - 1: the kernel keeps 15 bytes of a thread's name.

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def set_thread_name(name: str) -> None:
    """Name the calling OS thread (its `comm`), as SPDK names its reactors: the kernel's fault line uses it."""
    raw = name.encode()[:_THREAD_NAME_MAX]
    if _libc.prctl(_PR_SET_NAME, ctypes.c_char_p(raw), 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_NAME, {name!r}): {os.strerror(err)}")


def thread_name() -> str:
    """The calling OS thread's `comm` as the kernel reports it."""
    tid = threading.get_native_id()
    with open(f"/proc/self/task/{tid}/comm", encoding="utf-8", errors="replace") as f:
        return f.read().strip()


MODELLED_SITE_PREFIX = "spdk-sim:"
"""The sim's own log lines start so; SPDK's never do (they start with `file:line:function:`)."""

_SPDK_FUNCTION = re.compile(r"^(?P<func>[A-Za-z_]\w*): (?P<why>.+)$", re.DOTALL)


def modelled_site_line(signal_name: str, detail: str) -> str | None:
    """`spdk-sim: SIGSEGV modelled in spdk_lvol_destroy (the only clone of s1 has no lvol); the fault that
    follows is the sim's own read of an unmapped address, so its native frames are libc's, not SPDK's`.

    `detail` is the model's crash detail, `function: why` (ModelCrash("segv", "spdk_lvol_destroy: ...")); a
    detail naming no function gives no line (the title then names the native culprit as it is).
    """
    m = _SPDK_FUNCTION.match(detail.strip())
    if m is None:
        return None
    why = " ".join(m["why"].split())
    return (f"{MODELLED_SITE_PREFIX} {signal_name} modelled in {m['func']} ({why}); the fault that follows is "
            "the sim's own read of an unmapped address, so its native frames are libc's, not SPDK's")


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass


def default_disposition(sig: signal.Signals) -> None:
    """Make sure nothing in Python catches the signal: no faulthandler traceback, no handler."""
    if faulthandler.is_enabled():
        faulthandler.disable()
    if sig not in (signal.SIGKILL, signal.SIGSTOP):
        signal.signal(sig, signal.SIG_DFL)


def _read_address(address: int) -> None:
    """Read 8 bytes at `address`: unmapped, so the CPU faults in this thread (error 4: user read, not present)."""
    ctypes.string_at(address, 8)


def segfault(address: int = 8, name: str = "reactor_0") -> NoReturn:
    """Die by a genuine SIGSEGV reading `address` in a thread named `name`.

    If the calling thread already carries that name (the reactor, tid == pid, as in the recording) the
    fault happens right here; otherwise a thread with that name is started to fault, and the caller waits.
    """
    default_disposition(signal.SIGSEGV)
    _flush()
    if thread_name() == name[:_THREAD_NAME_MAX]:
        _read_address(address)
    else:

        def fault_in_named_thread() -> None:
            set_thread_name(name)
            _read_address(address)

        threading.Thread(target=fault_in_named_thread, name=name, daemon=True).start()
        while True:
            time.sleep(60)
    # Only reached if the address was mapped after all: still die the same way.
    os.kill(os.getpid(), signal.SIGSEGV)
    raise AssertionError("unreachable: SIGSEGV did not end the process")


def abort(stderr_text: str) -> NoReturn:
    """Print `stderr_text` to stderr as glibc or SPDK would, then SIGABRT (no kernel log line)."""
    default_disposition(signal.SIGABRT)
    if stderr_text:
        sys.stderr.write(stderr_text if stderr_text.endswith("\n") else stderr_text + "\n")
    _flush()
    os.abort()


def hang() -> NoReturn:
    """Stop the reactor forever: every socket stays open and nothing is answered until SIGKILL.

    SIGTERM and SIGINT only ask the (stuck) reactor to shut down, as in SPDK, so they change nothing.
    """
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda _signum, _frame: None)
    _flush()
    while True:
        signal.pause()


def exit_now(code: int) -> NoReturn:
    """Leave at once with `code`, as a target that exits unexpectedly: no cleanup, the socket file stays."""
    _flush()
    os._exit(code)


def die(crash: SimulatedCrash, write_log: Callable[[str], None]) -> NoReturn:
    """Write the crash's log lines to the target log, then die the way `crash.kind` says."""
    for line in crash.log_lines:
        write_log(line)
    _flush()
    if crash.kind == "segv":
        segfault(crash.address, crash.thread_name)
    if crash.kind == "abort":
        abort(crash.stderr_text)
    if crash.kind == "hang":
        hang()
    if crash.kind == "exit":
        exit_now(crash.exit_code)
    raise ValueError(f"SimulatedCrash.kind: expected one of {', '.join(DEATH_KINDS)}, got {crash.kind!r}")
