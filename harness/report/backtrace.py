"""gdb backtrace text -> frames, so a core gives the crash title (`SIGSEGV in spdk_lvol_destroy (lvol.c:1884)`).

gdb prints the crashing thread's frame 0 when it loads a core (`Program terminated with signal ...`,
`#0 func (...) at file:line`), then whatever the commands asked for (`bt`, `thread apply all bt`).
The first `#0` after loading is the crash site; the full stack is the first block that starts with it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from harness.rpc_rules.table import BY_METHOD

_FRAME = re.compile(
    r"^#(?P<n>\d+)\s+(?:(?P<pc>0x[0-9a-fA-F]+) in )?(?P<func>[^\s(]+|\?\?)\s*(?P<args>\(.*?\))?"
    r"(?: at (?P<file>[^\s:]+):(?P<line>\d+))?(?: from (?P<lib>\S+))?\s*$"
)
_SIGNAL = re.compile(r"Program terminated with signal (?P<sig>SIG\w+)")
_CURRENT = re.compile(r"^\[Current thread is \d+ \(.*\(LWP (?P<lwp>\d+)\)\)\]")
_THREAD = re.compile(r"^Thread (?P<n>\d+) \(.*?(?:LWP (?P<lwp>\d+))?.*\):\s*$")

# Frames that say how the process died, not where the bug is: skip them for the title.
_DEATH_FRAMES = re.compile(
    r"^(?:__)?(?:raise|abort|gsignal|pthread_kill|pthread_kill_implementation|pthread_kill_internal|"
    r"__GI_\w+|__assert_fail(?:_base)?|__libc_message(?:_impl)?|malloc_printerr|__fortify_fail|"
    r"__stack_chk_fail|__chk_fail|_int_malloc|_int_free|_int_free_merge_chunk|_int_free_create_chunk|"
    r"_int_realloc|unlink_chunk|malloc_consolidate|__libc_malloc|__libc_free|__libc_realloc|"
    r"__libc_calloc|tcache_\w+|cfree|free|malloc|realloc|calloc|sspin_fatal|spdk_spin_\w+|"
    r"__spdk_\w*assert\w*)$"
)


def is_death_frame(func: str) -> bool:
    """A frame of the machinery of dying (raise, abort, __assert_fail, malloc_printerr...), not of the bug."""
    return bool(_DEATH_FRAMES.match(func))


@dataclass(frozen=True)
class Frame:
    """One `#N` line of a gdb backtrace."""

    n: int
    func: str
    file: str | None = None
    line: int | None = None
    pc: int | None = None
    lib: str | None = None
    args: str | None = None  # `(lvol=0x..., cb_fn=0x... <rpc_bdev_lvol_delete_cb>, ...)` as gdb printed them

    def describe(self) -> str:
        """`spdk_lvol_destroy (lvol.c:1884)`, `func` or `func (from libfoo.so)`."""
        if self.file and self.line is not None:
            return f"{self.func} ({self.file.rsplit('/', 1)[-1]}:{self.line})"
        if self.lib:
            return f"{self.func} (from {self.lib.rsplit('/', 1)[-1]})"
        return self.func


@dataclass
class Backtrace:
    """The crashing thread's stack, the signal the core names, and every other thread's frames."""

    signal: str | None = None
    frames: list[Frame] = field(default_factory=list)
    threads: dict[str, list[Frame]] = field(default_factory=dict)
    crashing_lwp: int | None = None

    def culprit(self) -> Frame | None:
        """Where the bug is: frame 0 for a fault; for SIGABRT the first frame past the machinery of dying
        (raise/abort/__assert_fail/malloc_printerr/sspin_fatal)."""
        skip_dying = self.signal == "SIGABRT"
        for frame in self.frames:
            if frame.func == "??" or (skip_dying and _DEATH_FRAMES.match(frame.func)):
                continue
            return frame
        return self.frames[0] if self.frames else None


def parse_frame(line: str) -> Frame | None:
    m = _FRAME.match(line.strip())
    if not m:
        return None
    return Frame(
        n=int(m["n"]),
        func=m["func"],
        file=m["file"],
        line=int(m["line"]) if m["line"] else None,
        pc=int(m["pc"], 16) if m["pc"] else None,
        lib=m["lib"],
        args=m["args"],
    )


def parse_gdb_backtrace(text: str) -> Backtrace:
    """Parse `gdb -batch -ex bt -ex 'thread apply all bt'` output over a core."""
    bt = Backtrace()
    blocks: list[tuple[str | None, list[Frame]]] = []
    thread: str | None = None
    current: list[Frame] | None = None
    for line in text.splitlines():
        if bt.signal is None and (m := _SIGNAL.search(line)):
            bt.signal = m["sig"]
            continue
        if m := _CURRENT.match(line):
            bt.crashing_lwp = int(m["lwp"])
            continue
        if m := _THREAD.match(line):
            thread = f"Thread {m['n']}" + (f" (LWP {m['lwp']})" if m["lwp"] else "")
            current = None
            continue
        frame = parse_frame(line)
        if frame is None:
            continue
        if frame.n == 0 or current is None or frame.n != current[-1].n + 1:
            current = [frame]
            blocks.append((thread, current))
        else:
            current.append(frame)
    if not blocks:
        return bt
    crash_site = blocks[0][1][0]
    full = next((frames for _, frames in blocks if frames[0] == crash_site and len(frames) > 1), None)
    bt.frames = full or blocks[0][1]
    for name, frames in blocks:
        if name is not None:
            bt.threads.setdefault(name, frames)
    return bt


_CALLBACK = re.compile(r"<rpc_(\w+)>")


def rpc_in_stack(crash_dir: Path) -> str | None:
    """The RPC whose handler (rpc_<method>, or its completion rpc_<method>_cb) is on the crashing thread's
    stack in the crash dir's backtrace.txt; failing that, the RPC whose completion a frame was handed
    (`cb_fn=0x... <rpc_bdev_lvol_delete_cb>`: the handler returned long ago, its work crashed on a poller).
    None without either."""
    try:
        text = (crash_dir / "backtrace.txt").read_text(errors="replace")
    except OSError:
        return None

    def method_of(name: str) -> str | None:
        if name not in BY_METHOD and name.endswith("_cb"):
            name = name[:-len("_cb")]
        return name if name in BY_METHOD else None

    frames = parse_gdb_backtrace(text).frames
    for frame in frames:
        if frame.func.startswith("rpc_") and (method := method_of(frame.func[len("rpc_"):])):
            return method
    for frame in frames:
        for name in _CALLBACK.findall(frame.args or ""):
            if method := method_of(name):
                return method
    return None
