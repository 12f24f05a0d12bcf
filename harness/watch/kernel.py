"""Follow the kernel log from now on, through the best source the host offers, and say which one.

Sources, in order: `/dev/kmsg` opened directly (local; seek to the end, poll for records), `cat /dev/kmsg`
on the host (dropping records with a sequence number at or below the last one present at start),
`dmesg --follow-new`, `journalctl -k -f -n 0`. With none readable the run goes on without it, loudly:
faults are then known only by the exit signal (no address, no ip, no mapping, no thread name).
"""

from __future__ import annotations

import collections
import errno
import logging
import os
import select
import threading
import time
from collections.abc import Callable, Sequence

from harness.hosts.base import Host, LineStream
from harness.watch.kmsg import KernelRecord, parse_record

log = logging.getLogger(__name__)

SOURCES = ("kmsg", "kmsg-command", "dmesg", "journalctl")

LOST_WITHOUT_KERNEL_LOG = (
    "kernel log unavailable: SIGSEGV/SIGILL/SIGBUS deaths are seen only as an exit signal, without the "
    "fault address, ip, faulting file, thread name or error bits, and OOM kills look like plain SIGKILL"
)


class KernelLogWatch:
    """Calls `on_record` for each kernel record written after `start()`; keeps the last `keep` lines."""

    def __init__(
        self,
        host: Host,
        *,
        on_record: Callable[[KernelRecord], None],
        sources: Sequence[str] = SOURCES,
        keep: int = 500,
    ) -> None:
        self.host = host
        self._on_record = on_record
        self._sources = tuple(sources)
        self._lines: collections.deque[tuple[float, str]] = collections.deque(maxlen=keep)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._stream: LineStream | None = None
        self._fd: int | None = None
        self._wake_r: int | None = None
        self._wake_w: int | None = None
        self._min_seq: int | None = None
        self._min_usec: int | None = None
        self.source = "none"
        self.problems: list[str] = []
        self.lost_records = 0

    # --- choosing a source -------------------------------------------------------------------------

    def start(self) -> str:
        """Pick the first source that works; returns its name (`none` when the kernel log is unreadable)."""
        for name in self._sources:
            try:
                started = getattr(self, f"_open_{name.replace('-', '_')}")()
            except Exception as exc:  # a source that cannot start is reported, the next one is tried
                started = False
                self.problems.append(f"{name}: {exc}")
            if started:
                self.source = name
                break
        if self.source == "none":
            log.warning("%s: %s (tried: %s)", self.host.name, LOST_WITHOUT_KERNEL_LOG, "; ".join(self.problems))
            return self.source
        log.info("%s: following the kernel log through %s", self.host.name, self.describe_source())
        self._thread = threading.Thread(target=self._run, name="watch:kernel-log", daemon=True)
        self._thread.start()
        return self.source

    def describe_source(self) -> str:
        return {
            "kmsg": "/dev/kmsg (read directly)",
            "kmsg-command": "`cat /dev/kmsg` on the host",
            "dmesg": "`dmesg --follow-new`",
            "journalctl": "`journalctl -k -f -n 0`",
            "none": "nothing: " + LOST_WITHOUT_KERNEL_LOG,
        }[self.source]

    def _open_kmsg(self) -> bool:
        if not self.host.is_local:
            return False
        try:
            fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK)
        except OSError as exc:
            self.problems.append(f"/dev/kmsg: {exc.strerror}")
            return False
        os.lseek(fd, 0, os.SEEK_END)
        self._fd = fd
        self._wake_r, self._wake_w = os.pipe()  # stop() writes here so the poll returns at once
        return True

    def _open_kmsg_command(self) -> bool:
        # dd stops at EAGAIN: the last record present now gives the sequence number to start after.
        probe = self.host.run("dd if=/dev/kmsg iflag=nonblock bs=16384 2>/dev/null | grep -v '^ ' | tail -n 1",
                              timeout=20)
        rec = parse_record(probe.stdout.strip()) if probe.stdout.strip() else None
        if rec is None or rec.seq is None:
            self.problems.append("cat /dev/kmsg: not readable on the host")
            return False
        self._min_seq = rec.seq
        self._stream = self.host.follow_command(["cat", "/dev/kmsg"])
        return True

    def _open_dmesg(self) -> bool:
        helptext = self.host.run(["dmesg", "--help"], timeout=10)
        if "--follow-new" not in helptext.stdout:
            self.problems.append("dmesg: no --follow-new (util-linux < 2.36)")
            return False
        if not self.host.run(["dmesg", "--notime"], timeout=20).ok:
            self.problems.append("dmesg: cannot read the kernel log (dmesg_restrict?)")
            return False
        self._stream = self.host.follow_command(["dmesg", "--follow-new"])
        return True

    def _open_journalctl(self) -> bool:
        check = self.host.run(["journalctl", "-k", "-n", "1", "-q", "--no-pager"], timeout=20)
        if not check.ok or not check.stdout.strip():
            self.problems.append("journalctl -k: no kernel messages in the journal")
            return False
        self._stream = self.host.follow_command(["journalctl", "-k", "-f", "-n", "0", "-q", "--no-pager"])
        return True

    # --- reading ----------------------------------------------------------------------------------

    def lines(self, since: float | None = None) -> list[str]:
        """Kernel lines seen since `since` (time.time()), or all kept."""
        with self._lock:
            return [line for t, line in self._lines if since is None or t >= since]

    def _deliver(self, line: str) -> None:
        rec = parse_record(line)
        if rec is None:
            return
        if self._min_seq is not None and rec.seq is not None and rec.seq <= self._min_seq:
            return
        with self._lock:
            self._lines.append((time.time(), rec.message if rec.seq is not None else line))
        try:
            self._on_record(rec)
        except Exception:  # the watch must outlive a bug in a consumer
            log.exception("kernel record consumer failed on %r", line)

    def _run(self) -> None:
        if self._fd is not None:
            self._run_fd(self._fd)
        elif self._stream is not None:
            while not self._stop.is_set():
                line = self._stream.get(timeout=0.5)
                if line is None:
                    if self._stream.eof:
                        if not self._stop.is_set():
                            self.problems.append(f"{self.source}: the follower ended; kernel log lost from now")
                            log.warning("%s: kernel log follower %s ended", self.host.name, self.source)
                        return
                    continue
                self._deliver(line)

    def _run_fd(self, fd: int) -> None:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        if self._wake_r is not None:
            poller.register(self._wake_r, select.POLLIN)
        while not self._stop.is_set():
            if not poller.poll(5000):
                continue
            while True:
                try:
                    data = os.read(fd, 16384)
                except BlockingIOError:
                    break
                except OSError as exc:
                    if exc.errno == errno.EPIPE:
                        # The ring buffer overwrote records we had not read yet.
                        self.lost_records += 1
                        continue
                    if exc.errno == errno.EINVAL:
                        break
                    self.problems.append(f"/dev/kmsg: {exc.strerror}; kernel log lost from now")
                    return
                if not data:
                    break
                self._deliver(data.decode("utf-8", "replace").split("\n", 1)[0])

    def stop(self) -> None:
        self._stop.set()
        if self._wake_w is not None:
            os.write(self._wake_w, b"x")
        if self._stream is not None:
            self._stream.close()
        if self._thread is not None:
            self._thread.join(timeout=2)
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        for fd in (self._wake_r, self._wake_w):
            if fd is not None:
                os.close(fd)
        self._wake_r = self._wake_w = None
