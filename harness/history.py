"""`History`: every RPC the harness sends, streamed to `history.jsonl`, with a bounded tail kept in memory.

The file is what a failing storm leaves for replay and minimization, so it is written as the storm runs
(buffered, flushed by a timer at least every `flush_interval` seconds and on close: a crash of the harness
loses at most that much). Memory holds only the last lines (for crash reports) and counters (for summaries),
so a storm of millions of calls runs in constant memory. Lines are kept as their JSON text and decoded only
when a report asks for them: one `json.dumps` per call is the whole per-record cost.
"""

from __future__ import annotations

import json
import threading
from collections import Counter, deque
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from harness.errors import ConfigError

HISTORY_VERSION = 1
_encode = json.JSONEncoder(separators=(",", ":")).encode

SETUP_WORKER = -1
"""The worker id of setup and teardown calls (base bdevs, lvstores), outside any storm worker."""


def _json_default(value: object) -> object:
    """Make odd values (bytes, sets, custom objects) recordable instead of failing the call that made them."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    return repr(value)


class History:
    """Thread-safe recorder of RPC calls; also safe from asyncio (a record takes a lock for microseconds).

    `path=None` keeps only the in-memory tail and counters (tests, one-off tools).
    """

    def __init__(
        self,
        path: str | Path | None,
        *,
        tail_len: int = 10_000,
        per_worker_tail_len: int = 200,
        flush_interval: float = 0.5,
        buffer_size: int = 1 << 20,
    ) -> None:
        if tail_len < 1 or per_worker_tail_len < 1:
            raise ConfigError(f"history: tail_len and per_worker_tail_len must be >= 1, got {tail_len}, "
                              f"{per_worker_tail_len}")
        self.path = Path(path) if path is not None else None
        self._lock = threading.Lock()
        self._tail: deque[str] = deque(maxlen=tail_len)
        self._per_worker: dict[int, deque[str]] = {}
        self._per_worker_len = per_worker_tail_len
        self._seq: dict[int, int] = {}
        self.ops_by_method: Counter[str] = Counter()
        self.errors_by_errno: Counter[str] = Counter()
        self.total = 0
        self._file: IO[str] | None = None
        self._dirty = False
        self._closed = False
        self._stop = threading.Event()
        self._flusher: threading.Thread | None = None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "a", encoding="utf-8", buffering=buffer_size)
            self._flusher = threading.Thread(
                target=self._flush_loop, args=(flush_interval,), name=f"history-flush:{self.path.name}",
                daemon=True,
            )
            self._flusher.start()

    # -- recording --------------------------------------------------------------------------------------

    def next_seq(self, worker: int) -> int:
        """The next sequence number of `worker`; clients take it when they send, so seq is issue order."""
        with self._lock:
            seq = self._seq.get(worker, 0) + 1
            self._seq[worker] = seq
        return seq

    def record(
        self,
        worker: int,
        conn: int,
        method: str,
        params: Any,
        t_start: float,
        t_end: float,
        *,
        result: Any = None,
        error: Any = None,
        seq: int | None = None,
    ) -> int:
        """Record one finished call; returns its seq. `error` is an `RpcError` or an `{code, message, errno}` dict.

        Pass `seq` from `next_seq` taken at send time; without it the seq is taken now (completion order).
        """
        if seq is None:
            seq = self.next_seq(worker)
        if error is None:
            line = {"v": HISTORY_VERSION, "worker": worker, "conn": conn, "seq": seq, "method": method,
                    "params": params, "t_start": t_start, "t_end": t_end, "result": result}
            errno_name = None
        else:
            err = error.as_record() if hasattr(error, "as_record") else dict(error)
            errno_name = err.get("errno") or f"code {err.get('code')}"
            line = {"v": HISTORY_VERSION, "worker": worker, "conn": conn, "seq": seq, "method": method,
                    "params": params, "t_start": t_start, "t_end": t_end, "error": err}
        try:
            text = _encode(line)
        except (TypeError, ValueError):
            text = json.dumps(line, separators=(",", ":"), default=_json_default)
        with self._lock:
            self._tail.append(text)
            wtail = self._per_worker.get(worker)
            if wtail is None:
                wtail = self._per_worker[worker] = deque(maxlen=self._per_worker_len)
            wtail.append(text)
            self.ops_by_method[method] += 1
            if errno_name is not None:
                self.errors_by_errno[errno_name] += 1
            self.total += 1
            if self._file is not None and not self._closed:
                self._file.write(text)
                self._file.write("\n")
                self._dirty = True
        return seq

    # -- reading the in-memory tail ---------------------------------------------------------------------

    def tail(self, n: int | None = None) -> list[dict[str, Any]]:
        """The last `n` records (all kept ones when None), oldest first."""
        with self._lock:
            lines = list(self._tail)
        if n is not None:
            lines = lines[-n:] if n > 0 else []
        return [json.loads(line) for line in lines]

    def per_worker_tail(self, n: int) -> dict[int, list[dict[str, Any]]]:
        """The last `n` records of each worker (what each one did just before a crash), oldest first."""
        with self._lock:
            snapshot = {w: list(d)[-n:] if n > 0 else [] for w, d in self._per_worker.items()}
        return {w: [json.loads(line) for line in lines] for w, lines in sorted(snapshot.items())}

    def summary(self) -> dict[str, Any]:
        """Counts for a run summary: total ops, ops by method, errors by errno name (`code N` without one)."""
        with self._lock:
            return {"total": self.total, "ops_by_method": dict(self.ops_by_method),
                    "errors_by_errno": dict(self.errors_by_errno)}

    # -- file lifecycle ---------------------------------------------------------------------------------

    def flush(self) -> None:
        """Push buffered lines to the OS (not fsync: a harness crash, not a power cut, is what we survive)."""
        with self._lock:
            if self._file is not None and self._dirty and not self._closed:
                self._file.flush()
                self._dirty = False

    def _flush_loop(self, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                self.flush()
            except OSError:
                return  # Disk full or gone: records keep going to memory; close() reports the error.

    def close(self) -> None:
        """Flush and close the file; later records only go to memory. Idempotent."""
        self._stop.set()
        if self._flusher is not None and self._flusher is not threading.current_thread():
            self._flusher.join(timeout=5.0)
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._file is not None:
                self._file.close()

    def __enter__(self) -> History:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            if not self._closed:
                self.close()
        except Exception:
            pass

    # -- replay ------------------------------------------------------------------------------------------

    @staticmethod
    def read(path: str | Path) -> Iterator[dict[str, Any]]:
        """The records of a history file, in file order, for replay.

        A truncated last line (the harness died mid-write) is skipped; any other bad line, or a line from
        another history version, is a one-line ConfigError naming the file and line.
        """
        path = Path(path)
        try:
            handle = open(path, encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read history: {exc.strerror}") from exc
        with handle:
            for lineno, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    if not line.endswith("\n"):
                        return  # The last line, cut short when the harness died mid-write.
                    raise ConfigError(f"{path}:{lineno}: not a JSON history record ({exc.msg})") from exc
                if not isinstance(record, dict):
                    raise ConfigError(f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}")
                version = record.get("v")
                if version != HISTORY_VERSION:
                    raise ConfigError(
                        f"{path}:{lineno}: history version {version!r}, this harness reads version "
                        f"{HISTORY_VERSION}; replay it with the lvol-storm that wrote it"
                    )
                yield record

