"""`TargetLogCap`: a long-lived target's log kept within a bound on disk, all of it kept compressed.

spdk_tgt prints an ERROR line for every call it refuses, and a storm makes it refuse thousands a second: on the
NULL-check build one incarnation that outlived every crash wrote 75 MB of log in 5 minutes of a nightly (a soak
would fill its disk). The target writes its log itself (O_APPEND, harness.hosts), so the harness cannot filter
it; instead, while the log is over `cap_bytes`, the part already written is appended to `target.log.zst` (one
zstd frame per chunk, whole lines) and its blocks are given back with FALLOC_FL_PUNCH_HOLE: the file keeps its
size and offsets (the watchdog's `tail -F` and the target's appends go on as before), the disk holds at most
the cap plus a chunk. Nothing is lost and nothing is rewritten while the target runs; when it has stopped,
`finish()` completes the archive and leaves `target.log` as its last lines under a header naming the archive
(the last TAIL_BYTES archived are never punched, so they are there to keep).
A log that never reaches the cap is never touched. Local hosts only: a remote node's log is on its own disk.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import os
import threading
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
BLOCK = 4096
CHUNK = 8 << 20
"""Read and compressed at most this much per step (memory stays flat however fast the target writes)."""
TAIL_BYTES = 256 << 10
"""What `finish()` leaves in the plain file: the last lines, where a reader of target.log looks."""


def _libc_fallocate() -> Any:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    func = ctypes.CDLL(name, use_errno=True).fallocate
    func.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
    func.restype = ctypes.c_int
    return func


_FALLOCATE = _libc_fallocate()


def punch_hole(fd: int, offset: int, length: int) -> None:
    """Free the blocks of [offset, offset+length) without changing the file's size (reads return zeros)."""
    if _FALLOCATE is None:
        raise OSError(errno.ENOSYS, "fallocate is not available (no libc)")
    if _FALLOCATE(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


class TargetLogCap:
    """Archive-and-punch of one target log; `start()` a thread that `step()`s every `interval_s`."""

    def __init__(self, path: str | os.PathLike[str], cap_bytes: int, *, interval_s: float = 1.0) -> None:
        self.path = Path(path)
        self.archive = self.path.with_name(self.path.name + ".zst")
        self.cap_bytes = cap_bytes
        self.interval_s = interval_s
        self.archived = 0
        """Bytes [0, archived) of the log are in the archive."""
        self.punched = 0
        self.disabled: str | None = None
        """Why capping stopped (the file system cannot punch holes): the log then grows as before."""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    # -- while the target runs ------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"logcap:{self.path.name}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.step()
            except OSError as exc:
                log.warning("target log cap: %s: %s", self.path, exc)

    def step(self) -> bool:
        """Archive and punch when the log holds more than the cap on disk; True when it did."""
        with self._lock:
            if self.disabled or not self.path.exists():
                return False
            size = self.path.stat().st_size
            if size - self.punched <= self.cap_bytes:
                return False
            self._archive_to(size, whole_lines=True)
            target = max(0, self.archived - TAIL_BYTES) // BLOCK * BLOCK  # the last lines stay readable
            if target > self.punched:
                with open(self.path, "rb+") as f:
                    try:
                        punch_hole(f.fileno(), self.punched, target - self.punched)
                    except OSError as exc:
                        self.disabled = (f"{self.path} cannot be capped ({exc.strerror}: the file system does "
                                         "not punch holes); it grows as the target writes")
                        log.warning("%s", self.disabled)
                        return False
                self.punched = target
            return True

    def _archive_to(self, size: int, *, whole_lines: bool) -> None:
        import zstandard

        compressor = zstandard.ZstdCompressor(level=3)
        with open(self.path, "rb") as src, open(self.archive, "ab") as out:
            while self.archived < size:
                src.seek(self.archived)
                data = src.read(min(CHUNK, size - self.archived))
                if not data:
                    return
                if whole_lines:
                    cut = data.rfind(b"\n") + 1
                    if cut == 0:
                        if len(data) < CHUNK:
                            return  # a line still being written: the next step takes it whole
                        cut = len(data)  # one line longer than a chunk: taken in pieces
                    data = data[:cut]
                out.write(compressor.compress(data))
                out.flush()
                self.archived += len(data)

    # -- after the target stopped ---------------------------------------------------------------------------

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def finish(self) -> str | None:
        """Once the target has exited: the archive gets the rest, and target.log becomes its last lines under a
        header; a note for the run, or None when the log never reached the cap."""
        self.stop()
        with self._lock:
            if self.archived == 0 or self.disabled or not self.path.exists():
                return self.disabled
            size = self.path.stat().st_size
            self._archive_to(size, whole_lines=False)
            start = max(self.punched, size - TAIL_BYTES)
            with open(self.path, "rb") as f:
                f.seek(start)
                tail = f.read(size - start)
            if start > 0:
                tail = tail[tail.find(b"\n") + 1:] if b"\n" in tail else tail
            header = (f"[lvol-storm] this log grew past target.log_cap_mb ({self.cap_bytes / 2**20:g} MiB): the "
                      f"whole of it ({size:,} bytes) is in {self.archive.name} (zstd -dc {self.archive.name}); "
                      f"its last {len(tail):,} bytes follow\n").encode()
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_bytes(header + tail)
            os.replace(tmp, self.path)
            return (f"target log: {size / 2**20:.0f} MiB, past target.log_cap_mb: the whole log is "
                    f"{self.archive} ({self.archive.stat().st_size / 2**20:.1f} MiB), target.log its last lines")
