"""`History`: every RPC the harness sends, streamed to `history.jsonl`, with a bounded tail kept in memory.

The file is what a failing storm leaves for replay and minimization, so it is written as the storm runs
(buffered, flushed by a timer at least every `flush_interval` seconds and on close: a crash of the harness
loses at most that much). Memory holds only the last lines (for crash reports) and counters (for summaries),
so a storm of millions of calls runs in constant memory. Lines are kept as their JSON text and decoded only
when a report asks for them: encoding the line once is most of a record's cost (~2-4 us).
An existing file is appended to; a run directory gives each run its own.

A path ending in `.zst` is written zstd-compressed (about 11x smaller: an hour at full rate is ~1 GB, not 12),
one complete frame per write, so a file cut by a crash of the harness loses only the frame being written, and
a follower (the rolling report) decodes every frame written so far. `zstdcat history.jsonl.zst | jq` reads it.
"""

from __future__ import annotations

import atexit
import contextvars
import io
import itertools
import json
import threading
import weakref
from collections import Counter, deque
from collections.abc import Iterator, Mapping
from json.encoder import encode_basestring_ascii
from pathlib import Path
from typing import IO, Any, BinaryIO

import orjson

from harness.errors import ConfigError

HISTORY_VERSION = 1
EPISODE: contextvars.ContextVar[str | None] = contextvars.ContextVar("lvol_storm_episode", default=None)
"""The strategy episode the calls of this asyncio task (and the tasks it starts) belong to: `<worker>.<n>:<name>`,
written as the line's optional `episode` (the storm sets it; the minimizer tries a crashing episode first)."""
HISTORY_NAMES = ("history.jsonl", "history.jsonl.zst")
"""A run directory's history file: plain, or zstd-compressed (`history.compress: zstd`)."""
ZSTD_LEVEL = 1  # ~900 MB/s of history per core: under half a percent of one at a storm's full rate


def compressed(path: str | Path) -> bool:
    return str(path).endswith(".zst")


def history_in(directory: str | Path) -> Path | None:
    """The history file a run directory holds (plain or compressed), None without one."""
    for name in HISTORY_NAMES:
        path = Path(directory) / name
        if path.is_file():
            return path
    return None


def open_history(path: str | Path) -> BinaryIO:
    """A history file's bytes, decompressed when it is a `.zst` (a last frame cut short reads as far as it
    goes: the line it cut is then unterminated, which readers skip)."""
    handle = open(path, "rb")
    if not compressed(path):
        return handle
    import zstandard

    return zstandard.ZstdDecompressor().stream_reader(handle, read_across_frames=True, closefd=True)


def read_appended(path: str | Path, offset: int, chunk: int = 1 << 20) -> Iterator[tuple[list[bytes], int]]:
    """The whole lines written to `path` after byte `offset`, in batches, each with the offset to read from
    next once it is consumed (memory holds one batch, whatever the file's size).

    A plain file stops before a line still being written; a compressed one before a frame still being
    written (each write is one frame of whole lines), so a follower of a growing file never sees half."""
    with open(path, "rb") as f:
        f.seek(offset)
        if not compressed(path):
            rest = b""
            while True:
                data = f.read(chunk)
                if not data:
                    return
                data = rest + data
                end = data.rfind(b"\n") + 1
                rest = data[end:]
                if end:
                    offset += end
                    yield data[:end].splitlines(keepends=True), offset
        import zstandard

        pending = b""
        while True:
            frame = zstandard.ZstdDecompressor().decompressobj()
            out: list[bytes] = []
            used = 0
            data = pending
            pending = b""
            while True:
                if not data:
                    data = f.read(chunk)
                    if not data:
                        return  # a frame still being written (or none left): read it next time
                try:
                    out.append(frame.decompress(data))
                except zstandard.ZstdError:
                    return  # a torn frame: read it next time
                if frame.eof:
                    pending = frame.unused_data
                    used += len(data) - len(pending)
                    break
                used += len(data)
                data = b""
            offset += used
            yield b"".join(out).splitlines(keepends=True), offset


def _compact_encoder() -> Any:
    """Compact JSON text; the C encoder built once (`json.dumps` builds one per call, twice the cost)."""
    from json.encoder import c_make_encoder, encode_basestring_ascii  # type: ignore[attr-defined]

    if c_make_encoder is None:  # pragma: no cover - CPython always has it
        return json.JSONEncoder(separators=(",", ":")).encode

    def refuse(value: object) -> object:
        raise TypeError(f"{type(value).__name__} is not JSON serializable")

    chunks = c_make_encoder(None, refuse, encode_basestring_ascii, None, ":", ",", False, False, True)
    return lambda value: "".join(chunks(value, 0))


_stdlib_encode = _compact_encoder()
_dumps = orjson.dumps


def _encode(value: Any) -> str:
    """Compact JSON text (orjson: a listing of thousands of lvols ~10x faster than the stdlib); what orjson
    refuses (integers past 64 bits, keys that are not strings, bytes, sets) the stdlib encoder judges, and what
    it refuses too takes the slow path of `record`."""
    try:
        return _dumps(value).decode()
    except TypeError:
        return _stdlib_encode(value)


_encode_str = encode_basestring_ascii

_HEAD = ('{"v":' + str(HISTORY_VERSION)
         + ',"worker":%d,"conn":%d,"seq":%d,"method":%s,"params":%s,"t_start":%.6f,"t_end":%.6f,')

_METHOD_JSON: dict[str, str] = {}
_ERROR_JSON: dict[tuple[Any, ...], str] = {}
"""Error objects already encoded, by (code, message, errno): a storm meets a few dozen, millions of times."""
_MAX_UNWRITTEN = 4096
"""Lines held before a write even if the flush timer has not fired (bounds memory and loss on a crash)."""
TAIL_BYTES = 16 << 20
PER_WORKER_TAIL_BYTES = 256 << 10
"""The tails' bounds in bytes of text. A count alone does not bound memory: a listing (`bdev_get_bdevs`,
`bdev_lvol_get_lvols`) is tens of KB at 60 lvols and MBs at thousands, and the setup worker records only
listings at quiesce points, so its 200-line tail filled over ~17 minutes with 7 MB of them, which looked like
a leak in a 15-minute memory benchmark. A tail always keeps its newest line, however big."""


PIECE_CHARS = 1 << 20
"""Lines are joined into one write up to about this much text, and a longer line is written alone. Joining a
whole batch at once (tens of MB when it holds listings of thousands of lvols) took a fresh mmap, and a page fault
per 4 KiB, for every batch: 10x the kernel time of the write itself (issue 17: 0.7 s of a 6 s storm at 5,000
lvols)."""


def _pieces(lines: list[str | bytes]) -> Iterator[tuple[bytes, ...]]:
    """`lines` as byte chunks, newline-terminated, grouped so each group is whole lines of bounded size (a long
    line's group is the line and its newline: encoded alone, never copied into a bigger buffer)."""
    group: list[str] = []
    size = 0
    for line in lines:
        if type(line) is not str or len(line) >= PIECE_CHARS:
            if group:
                group.append("")
                yield ("\n".join(group).encode("utf-8"),)
                group, size = [], 0
            yield line if type(line) is bytes else line.encode("utf-8"), b"\n"  # type: ignore[union-attr]
            continue
        group.append(line)
        size += len(line)
        if size >= PIECE_CHARS:
            group.append("")
            yield ("\n".join(group).encode("utf-8"),)
            group, size = [], 0
    if group:
        group.append("")
        yield ("\n".join(group).encode("utf-8"),)


class _Tail:
    """The newest lines, at most `max_lines` of them and at most `max_bytes` of text (the newest always)."""

    __slots__ = ("lines", "max_bytes", "nbytes")

    def __init__(self, max_lines: int, max_bytes: int) -> None:
        self.lines: deque[str | bytes] = deque(maxlen=max_lines)
        self.max_bytes = max_bytes
        self.nbytes = 0

    def append(self, text: str | bytes) -> None:
        lines = self.lines
        if len(lines) == lines.maxlen:
            self.nbytes -= len(lines[0])
        lines.append(text)
        self.nbytes += len(text)
        while self.nbytes > self.max_bytes and len(lines) > 1:
            self.nbytes -= len(lines.popleft())


def _encode_result(result: Any) -> str:
    """Results that need no full encoder: `true` (most mutations), a UUID string (creations), null."""
    if result is True:
        return "true"
    if type(result) is str:
        return _encode_str(result)
    if result is None:
        return "null"
    return _encode(result)


SETUP_WORKER = -1
"""The worker id of setup and teardown calls (base bdevs, lvstores), outside any storm worker."""


def _json_default(value: object) -> object:
    """Make odd values (bytes, sets, custom objects) recordable instead of failing the call that made them."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    return repr(value)


_OPEN_HISTORIES: weakref.WeakSet[History] = weakref.WeakSet()


@atexit.register
def _flush_open_histories() -> None:
    """An unhandled exception ends the harness without close(): still write what was recorded."""
    for history in list(_OPEN_HISTORIES):
        try:
            history.close()
        except Exception:
            pass


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
        tail_bytes: int = TAIL_BYTES,
        per_worker_tail_bytes: int = PER_WORKER_TAIL_BYTES,
        flush_interval: float = 0.5,
        buffer_size: int = 1 << 20,
    ) -> None:
        if tail_len < 1 or per_worker_tail_len < 1:
            raise ConfigError(f"history: tail_len and per_worker_tail_len must be >= 1, got {tail_len}, "
                              f"{per_worker_tail_len}")
        self.path = Path(path) if path is not None else None
        self._lock = threading.Lock()  # memory state; held for microseconds
        self._io_lock = threading.Lock()  # the file; held while writing
        self._tail = _Tail(tail_len, tail_bytes)
        self._per_worker: dict[int, _Tail] = {}
        self._per_worker_len = per_worker_tail_len
        self._per_worker_bytes = per_worker_tail_bytes
        self._seq: dict[int, itertools.count[int]] = {}
        self.ops_by_method: Counter[str] = Counter()
        self.errors_by_errno: Counter[str] = Counter()
        self.total = 0
        self._file: IO[bytes] | None = None
        self._zstd: Any = None
        self._unwritten: list[str | bytes] = []
        """Lines not yet written: text, or bytes (a big result recorded as the reply carried it)."""
        self.write_error: str | None = None
        """Why the file stopped being written (disk full, ...), None while it is fine."""
        self._dirty = False
        self._closed = False
        self._stop = threading.Event()
        self._flusher: threading.Thread | None = None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if compressed(self.path):
                import zstandard

                self._zstd = zstandard.ZstdCompressor(level=ZSTD_LEVEL)
            self._file = open(self.path, "ab", buffering=buffer_size)
            # The thread holds only a weak reference, so a History nobody closed can still be collected.
            self._flusher = threading.Thread(
                target=History._flush_loop, args=(weakref.ref(self), self._stop, flush_interval),
                name=f"history-flush:{self.path.name}", daemon=True,
            )
            self._flusher.start()
            _OPEN_HISTORIES.add(self)

    # -- recording --------------------------------------------------------------------------------------

    def next_seq(self, worker: int) -> int:
        """The next sequence number of `worker`; clients take it when they send, so seq is issue order."""
        counter = self._seq.get(worker)
        if counter is None:
            with self._lock:
                counter = self._seq.setdefault(worker, itertools.count(1))
        return next(counter)  # One C call: atomic under the GIL, no lock on the hot path.

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
        params_json: str | None = None,
        batch: str | None = None,
        result_json: str | bytes | memoryview | None = None,
    ) -> int:
        """Record one finished call; returns its seq. `error` is an `RpcError` or an `{code, message, errno}` dict.

        Pass `seq` from `next_seq` taken at send time; without it the seq is taken now (completion order).
        `params_json` is `params` already encoded (the client encoded them for the wire): saves encoding twice;
        `result_json` likewise the result's text as the reply carried it (big listings: not encoded again); as
        bytes (a view of the reply read), the line is kept and written as bytes: a listing of 5,000 lvols is
        1.5 MB, and decoding it to text to encode it back cost four copies.
        `batch` names the one-write batch the call was sent in (`RpcConnection.cork()`): the target read those
        requests together, and a replay must send them in one write again. Lines without it were sent alone
        (or by a harness that did not record batches); the field is optional, so the version stays 1.
        """
        if seq is None:
            seq = self.next_seq(worker)
        method_json = _METHOD_JSON.get(method)
        if method_json is None:
            method_json = _encode(method)
            if len(_METHOD_JSON) < 4096:
                _METHOD_JSON[method] = method_json
        try:
            # Assembled by hand around the two variable objects: half the cost of encoding one big dict.
            # Times to the microsecond (`%.6f`): time.time()'s real resolution, twice as fast as repr.
            if params_json is None:
                params_json = "null" if params is None else _encode(params)
            head = _HEAD % (worker, conn, seq, method_json, params_json, t_start, t_end)
            if batch is not None:
                head += '"batch":' + _encode_str(batch) + ","
            episode = EPISODE.get()
            if episode is not None:
                head += '"episode":' + _encode_str(episode) + ","
            text: str | bytes
            if error is None:
                errno_name = None
                if result_json is None:
                    text = head + '"result":' + _encode_result(result) + "}"
                elif isinstance(result_json, str):
                    text = "".join((head, '"result":', result_json, "}"))
                else:
                    text = b"".join((head.encode("utf-8"), b'"result":', result_json, b"}"))
            else:
                err = error.as_record() if hasattr(error, "as_record") else dict(error)
                errno_name = err.get("errno") or f"code {err.get('code')}"
                key = (err.get("code"), err.get("message"), err.get("errno"), len(err))
                err_json = _ERROR_JSON.get(key) if type(key[1]) is str else None
                if err_json is None:
                    err_json = _encode(err)
                    if len(_ERROR_JSON) < 4096 and type(key[1]) is str and len(err) == 3:
                        _ERROR_JSON[key] = err_json
                text = head + '"error":' + err_json + "}"
        except (TypeError, ValueError, RecursionError):
            text, errno_name = self._encode_odd(worker, conn, seq, method, params, t_start, t_end, result, error,
                                                batch, EPISODE.get())
        with self._lock:
            self._tail.append(text)
            wtail = self._per_worker.get(worker)
            if wtail is None:
                wtail = self._per_worker[worker] = _Tail(self._per_worker_len, self._per_worker_bytes)
            wtail.append(text)
            self.ops_by_method[method] += 1
            if errno_name is not None:
                self.errors_by_errno[errno_name] += 1
            self.total += 1
            if self._file is None or self._closed:
                return seq
            pending = self._unwritten
            pending.append(text)
            full = len(pending) >= _MAX_UNWRITTEN
        if full:
            self._write_out(flush=False)
        return seq

    @staticmethod
    def _encode_odd(worker: int, conn: int, seq: int, method: str, params: Any, t_start: float, t_end: float,
                    result: Any, error: Any, batch: str | None = None,
                    episode: str | None = None) -> tuple[str, str | None]:
        """The slow path for params or results plain JSON cannot encode (bytes, sets, objects)."""
        line: dict[str, Any] = {"v": HISTORY_VERSION, "worker": worker, "conn": conn, "seq": seq,
                                "method": method, "params": params, "t_start": t_start, "t_end": t_end}
        if batch is not None:
            line["batch"] = batch
        if episode is not None:
            line["episode"] = episode
        errno_name = None
        if error is None:
            line["result"] = result
        else:
            err = error.as_record() if hasattr(error, "as_record") else dict(error)
            errno_name = err.get("errno") or f"code {err.get('code')}"
            line["error"] = err
        try:
            return json.dumps(line, separators=(",", ":"), default=_json_default), errno_name
        except (TypeError, ValueError, RecursionError):  # Circular: keep its text, never fail the call.
            line["params"] = repr(params)
            if error is None and result is not None:
                line["result"] = repr(result)
            return json.dumps(line, separators=(",", ":"), default=_json_default), errno_name

    def _write_out(self, *, flush: bool) -> None:
        """Write the lines recorded since the last write in one write, outside the lock `record` takes.

        The file has its own lock, so a slow disk stalls the flusher thread, not the event loop recording
        a reply. A failing disk must not fail the RPC being recorded either: the error is kept in
        `write_error` (and the summary), and from then on records go to memory only.
        """
        with self._io_lock:
            with self._lock:
                lines, self._unwritten = self._unwritten, []
                file = self._file
            if file is None:
                return
            try:
                if lines:
                    self._write_lines(file, lines)
                    self._dirty = True
                if flush and self._dirty:
                    file.flush()
                    self._dirty = False
            except (OSError, ValueError) as exc:
                with self._lock:
                    self._file_failed(exc)

    def _write_lines(self, file: IO[bytes], lines: list[str | bytes]) -> None:
        """The lines, newline-terminated, in writes of whole lines (each one zstd frame when compressing)."""
        zstd = self._zstd
        for piece in _pieces(lines):
            if zstd is None:
                for chunk in piece:
                    file.write(chunk)
            else:
                frame = zstd.compressobj()
                file.write(b"".join([*(frame.compress(chunk) for chunk in piece), frame.flush()]))

    def _file_failed(self, exc: BaseException) -> None:
        detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        self.write_error = f"{self.path}: history not written past {self.total} records: {detail}"
        self._unwritten = []
        file, self._file = self._file, None
        if file is not None:
            try:
                file.close()
            except (OSError, ValueError):
                pass

    # -- reading the in-memory tail ---------------------------------------------------------------------

    def tail(self, n: int | None = None) -> list[dict[str, Any]]:
        """The last `n` records (all kept ones when None), oldest first."""
        with self._lock:
            lines = list(self._tail.lines)
        if n is not None:
            lines = lines[-n:] if n > 0 else []
        return [json.loads(line) for line in lines]

    def per_worker_tail(self, n: int) -> dict[int, list[dict[str, Any]]]:
        """The last `n` records of each worker (what each one did just before a crash), oldest first."""
        with self._lock:
            snapshot = {w: list(d.lines)[-n:] if n > 0 else [] for w, d in self._per_worker.items()}
        return {w: [json.loads(line) for line in lines] for w, lines in sorted(snapshot.items())}

    def summary(self) -> dict[str, Any]:
        """Counts for a run summary: total ops, ops by method, errors by errno name (`code N` without one)."""
        with self._lock:
            return {"total": self.total, "ops_by_method": dict(self.ops_by_method),
                    "errors_by_errno": dict(self.errors_by_errno), "write_error": self.write_error}

    # -- file lifecycle ---------------------------------------------------------------------------------

    def flush(self) -> None:
        """Push recorded lines to the OS (not fsync: a harness crash, not a power cut, is what we survive)."""
        self._write_out(flush=True)

    @staticmethod
    def _flush_loop(ref: weakref.ref[History], stop: threading.Event, interval: float) -> None:
        while not stop.wait(interval):
            history = ref()
            if history is None:
                return
            history.flush()
            del history

    def close(self) -> None:
        """Flush and close the file; later records only go to memory. Idempotent."""
        self._stop.set()
        if self._flusher is not None and self._flusher is not threading.current_thread():
            self._flusher.join(timeout=5.0)
        with self._io_lock:
            with self._lock:
                if self._closed:
                    return
                self._closed = True  # later records go to memory only
                lines, self._unwritten = self._unwritten, []
                file, self._file = self._file, None
            if file is not None:
                try:
                    if lines:
                        self._write_lines(file, lines)
                    file.close()
                except (OSError, ValueError) as exc:
                    with self._lock:
                        self._file = file
                        self._file_failed(exc)
        _OPEN_HISTORIES.discard(self)

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
            handle = io.TextIOWrapper(open_history(path), encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read history: {exc.strerror}") from exc
        with handle:
            for lineno, line in enumerate(_lines_of(handle, path), 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except RecursionError:
                    raise ConfigError(f"{path}:{lineno}: not a JSON history record (nested deeper than a history "
                                      "line ever is): is it a history file?") from None
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


def whole_frames_end(path: str | Path) -> int:
    """Where the last whole frame of a compressed history ends: its size, unless the file was cut short (a
    copy that stopped early, a harness killed mid-write) or goes on with bytes that are not a frame."""
    ends = [offset for _, offset in read_appended(path, 0)]  # one int a frame; a batch's lines are dropped
    return ends[-1] if ends else 0


def _lines_of(handle: io.TextIOWrapper, path: Path) -> Iterator[str]:
    """The lines of an open history; a corrupt file (bad zstd data, bytes that are not UTF-8) ends in a
    one-line ConfigError."""
    errors: tuple[type[BaseException], ...] = (OSError, UnicodeDecodeError)
    if compressed(path):
        import zstandard

        errors += (zstandard.ZstdError,)
    try:
        yield from handle
    except errors as exc:
        raise ConfigError(f"{path}: cannot read history: {exc}; is it a history file?") from exc


def answered(record: Mapping[str, Any]) -> bool:
    """Did the target answer this call (a result, or an error with a JSON-RPC code)? A call still in flight
    when the connection went away or timed out has an error without a code."""
    error = record.get("error")
    if error is None:
        return "result" in record
    return isinstance(error, Mapping) and error.get("code") is not None


def execution_key(record: Mapping[str, Any]) -> tuple[int, float, float]:
    """Where a recorded call most likely ran in the target's one-reactor order.

    SPDK's reactor applies calls in the order it answers them, so answered calls go by `t_end` (the send
    order of calls in flight on different connections says nothing about which ran first). A call still in
    flight when the target died has no such time (its `t_end` is when the harness noticed): those come last,
    in the order they were sent, since one of them killed it and each ran after every answered one."""
    t_start = float(record.get("t_start") or 0.0)
    if answered(record):
        return (0, float(record.get("t_end") or t_start), t_start)
    return (1, t_start, t_start)
