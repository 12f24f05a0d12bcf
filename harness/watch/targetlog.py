"""Follow the target's own log: the only trace a SIGABRT leaves, and where SPDK's *ERROR* findings show.

SIGABRT deaths (glibc heap checks, `assert`, SPDK's spinlock checks) print one line on stderr and nothing
in the kernel log, so this follower is what turns them into evidence, at the moment the line is written.
Non-fatal lines that match configured patterns (`forced removal`) become findings, never crashes.
"""

from __future__ import annotations

import collections
import re
import threading
import time
from collections.abc import Callable, Iterable

from harness.hosts.base import Host, LineStream
from harness.watch.evidence import AbortMessage, Finding

DEFAULT_ERROR_PATTERNS: tuple[str, ...] = ("Lvol store removed with error", "forced removal")

_SPDK_PREFIX = re.compile(r"^\[[^\]]*\]\s*(?:(?P<file>[\w.\-]+):\s*(?P<line>\d+):(?P<func>\w+): )?")
_ASSERT = re.compile(
    r"(?:(?P<prog>[^\s:]+): )?(?P<file>[^\s:]+):(?P<line>\d+): (?P<func>[^:]+(?:::[^:]+)*): "
    r"Assertion [`'\u2018](?P<expr>.*)['\u2019] failed\.?"
)
_GLIBC_FATAL = re.compile(r"Fatal glibc error: (?P<msg>.*)$")
_GLIBC_OLD = re.compile(r"\*\*\* Error in [`'][^']*': (?P<msg>.*?)(?:: 0x[0-9a-f]+)? \*\*\*")
_GLIBC = re.compile(
    r"(?P<msg>(?:malloc|free|realloc|calloc|munmap_chunk|malloc_consolidate|_int_malloc|_int_free|"
    r"tcache_thread_shutdown|mremap_chunk|aligned_alloc|memalign|posix_memalign|pvalloc|valloc)"
    r"\(\): [^*]+?|double free or corruption(?: \(\w+\))?|corrupted size vs\. prev_size(?: in fastbins)?|"
    r"corrupted double-linked list(?: \(not small\))?)\s*$"
)
_STACK = re.compile(r"\*\*\* (?P<msg>stack smashing detected|buffer overflow detected) \*\*\*")
_SPINLOCK = re.compile(r"(?P<msg>unrecoverable spinlock error \d+: .*?)\s*$")
_HEXADDR = re.compile(r"0x[0-9a-fA-F]{6,}")


def _stable(text: str) -> str:
    """Pointers vary run to run; a title must not."""
    return _HEXADDR.sub("0x...", text.strip())


def parse_abort_line(line: str) -> AbortMessage | None:
    """The fatal message in a target log line, or None. Recognises glibc's heap checks, `assert`,
    `Fatal glibc error`, stack protector and SPDK's `unrecoverable spinlock error N: ...`."""
    stripped = line.rstrip()
    if m := _ASSERT.search(stripped):
        return AbortMessage("assert", f"Assertion '{m['expr']}' failed", stripped,
                            function=m["func"].strip(), file=m["file"], lineno=int(m["line"]))
    if m := _SPINLOCK.search(stripped):
        p = _SPDK_PREFIX.match(stripped)
        return AbortMessage("spinlock", _stable(m["msg"]), stripped,
                            function=p["func"] if p and p["func"] else None,
                            file=p["file"] if p and p["file"] else None,
                            lineno=int(p["line"]) if p and p["line"] else None)
    if m := _GLIBC_FATAL.search(stripped):
        return AbortMessage("glibc", _stable(m["msg"]), stripped)
    if m := _GLIBC_OLD.search(stripped):
        return AbortMessage("glibc", _stable(m["msg"]), stripped)
    if m := _STACK.search(stripped):
        return AbortMessage("stack-protector", m["msg"], stripped)
    if "*ERROR*" in stripped or "*NOTICE*" in stripped:
        return None  # an SPDK log line mentioning free(): etc. is not glibc speaking
    if m := _GLIBC.search(stripped):
        return AbortMessage("glibc", _stable(m["msg"]), stripped)
    return None


def match_finding(line: str, patterns: Iterable[str]) -> str | None:
    """The first configured pattern (plain substring, or `re:REGEX`) the line matches."""
    for pattern in patterns:
        if pattern.startswith("re:"):
            if re.search(pattern[3:], line):
                return pattern
        elif pattern in line:
            return pattern
    return None


class TargetLogWatch:
    """Follows the target log on its host; calls `on_abort` at the first fatal line, `on_finding` per match.

    Keeps the last `keep_lines` lines so a report can show what the target said before it died.
    """

    def __init__(
        self,
        host: Host,
        log_path: str,
        *,
        on_abort: Callable[[AbortMessage], None],
        on_finding: Callable[[Finding], None] | None = None,
        error_patterns: Iterable[str] = DEFAULT_ERROR_PATTERNS,
        keep_lines: int = 200,
        from_start: bool = True,
    ) -> None:
        self.host = host
        self.log_path = log_path
        self.error_patterns = tuple(error_patterns)
        self._on_abort = on_abort
        self._on_finding = on_finding
        self._from_start = from_start
        self._tail: collections.deque[str] = collections.deque(maxlen=keep_lines)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._stream: LineStream | None = None
        self._thread: threading.Thread | None = None
        self.last_line_at: float | None = None

    def start(self) -> None:
        self._stream = self.host.follow_file(self.log_path, from_start=self._from_start)
        self._thread = threading.Thread(target=self._run, name="watch:target-log", daemon=True)
        self._thread.start()

    def tail(self, n: int | None = None) -> list[str]:
        with self._lock:
            lines = list(self._tail)
        return lines[-n:] if n else lines

    def feed(self, line: str) -> None:
        """Classify one line (the follower thread calls this; tests may too)."""
        with self._lock:
            self._tail.append(line)
            self.last_line_at = time.time()
        abort = parse_abort_line(line)
        if abort is not None:
            self._on_abort(abort)
            return
        pattern = match_finding(line, self.error_patterns)
        if pattern is not None and self._on_finding is not None:
            self._on_finding(Finding(pattern, line))

    def _run(self) -> None:
        assert self._stream is not None
        while not self._stop.is_set():
            line = self._stream.get(timeout=0.5)
            if line is None:
                if self._stream.eof:
                    return
                continue
            self.feed(line)

    def stop(self) -> None:
        self._stop.set()
        if self._stream is not None:
            self._stream.close()
        if self._thread is not None:
            self._thread.join(timeout=2)
