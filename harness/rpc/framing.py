"""SPDK's JSON-RPC framing: requests are compact JSON objects, replies a stream of concatenated JSON objects.

SPDK has no length prefix: a reply is a JSON object followed by "\\n", and several replies can arrive in one
read or one reply across many reads. `ReplyParser` splits that stream in O(n) overall. Its fast path takes the
stream as SPDK writes it, one compact reply per line: whole lines are decoded by orjson (3x the stdlib's speed
on small replies, 4-5x on listings of thousands of lvols) and their bytes kept (`raw`), so the history can
write a big result as it came instead of encoding it again. Anything else (pretty-printed replies, replies
without newlines, values orjson refuses such as NaN) goes to the generic path: the stdlib's `raw_decode` over
the text, decoding only when a newline arrived or the pending text doubled since the last failed attempt, so a
10 MB `bdev_get_bdevs` reply in 64 KiB reads is not re-scanned from its start on every read.

A parser made with `lazy_results` leaves a big result (a line of `BIG_REPLY` bytes or more: a listing of
thousands of lvols is MBs) undecoded: simdjson validates the whole line (~10x orjson's speed: it builds no
objects) and reads its id, and the result comes as an `UnreadResult`, decoded only if its caller asks. The
storm records an unjudged listing without ever looking inside it; a malformed one goes where any malformed
reply goes (the generic path), unread or not.

Requests are encoded by orjson too (UTF-8 as is, where the stdlib escaped non-ASCII: the same JSON value), with
the stdlib encoder for what orjson refuses (integers past 64 bits).
"""

from __future__ import annotations

import codecs
import json
import re
import threading
from typing import Any

import orjson
import simdjson

from harness.errors import HarnessError


def _compact_encoder() -> Any:
    """Compact JSON text; the C encoder built once (`json.dumps` builds one per call, twice the cost).

    Like `json.dumps` but without its circular-reference check (params are plain trees).
    """
    from json.encoder import c_make_encoder, encode_basestring_ascii  # type: ignore[attr-defined]

    if c_make_encoder is None:  # pragma: no cover - CPython always has it
        return json.JSONEncoder(separators=(",", ":")).encode

    def refuse(value: object) -> object:
        raise TypeError(f"{type(value).__name__} is not JSON serializable")

    chunks = c_make_encoder(None, refuse, encode_basestring_ascii, None, ":", ",", False, False, True)
    return lambda value: "".join(chunks(value, 0))


_stdlib_encode = _compact_encoder()
_dumps = orjson.dumps


def encode_json(value: Any) -> str:
    """Compact JSON text of a plain tree (orjson; the stdlib encoder for integers past 64 bits and odd keys)."""
    try:
        return _dumps(value).decode()
    except TypeError:
        return _stdlib_encode(value)


_LOADS = orjson.loads
_LoadError = orjson.JSONDecodeError
_RESULT_HEAD = re.compile(rb'\{"jsonrpc":"2\.0","id":-?\d+,"result":')


def result_span(raw: bytes | memoryview) -> bytes | memoryview | None:
    """The `result` value's JSON inside a reply's raw bytes as SPDK writes a reply
    (`{"jsonrpc":"2.0","id":N,"result":VALUE}`), None for any other shape; a slice of `raw` (a view of a view:
    a big listing is not copied)."""
    m = _RESULT_HEAD.match(raw)
    if m is None or raw[-1:] != b"}":
        return None
    return raw[m.end():-1]


BIG_REPLY = 16 << 10
"""Lines at least this big are validated by simdjson and their result left undecoded (`lazy_results`)."""
_SIMD = threading.local()


class UnreadResult:
    """A big reply's `result`, validated but not decoded; `value()` decodes it (orjson, each time asked)."""

    __slots__ = ("line",)

    def __init__(self, line: bytes | memoryview) -> None:
        self.line = line
        """The whole reply line as it came (a view of the bytes read)."""

    def value(self) -> Any:
        return _LOADS(self.line)["result"]

    def __repr__(self) -> str:
        return f"<UnreadResult of {len(self.line):,} bytes>"


def _big_reply(line: bytes | memoryview) -> Any:
    """A big line as a reply object whose `result` is an UnreadResult; anything but a plain result reply (an
    error, an odd id, not an object) is decoded whole. Invalid JSON raises as `orjson.loads` would."""
    parser = getattr(_SIMD, "parser", None)
    if parser is None:
        parser = _SIMD.parser = simdjson.Parser()  # one per thread: a parser and its documents are not shared
    try:
        doc = parser.parse(line)
    except ValueError:
        return _LOADS(line)  # raises orjson's error (or decodes what simdjson alone refuses)
    try:
        rid = None
        plain = False
        if isinstance(doc, simdjson.Object):
            rid = doc.get("id")
            plain = type(rid) is int and "result" in doc and "error" not in doc
    finally:
        del doc  # the parser's next document needs this one released
    if not plain:
        return _LOADS(line)
    return {"jsonrpc": "2.0", "id": rid, "result": UnreadResult(line)}


_DECODER = json.JSONDecoder()
_WHITESPACE = re.compile(r"[ \t\n\r]*")

# A reply larger than this without a parseable end is garbage, not a slow reply.
MAX_PENDING_CHARS = 512 * 1024 * 1024


class FramingError(HarnessError):
    """The byte stream from the target is not a sequence of JSON objects (the connection is unusable)."""


_REQUEST_HEAD: dict[str, bytes] = {}


def encode_request(method: str, params: Any, request_id: int) -> bytes:
    """A request as SPDK's rpc.py sends it, compact; `params` is left out when None."""
    return encode_request_json(method, None if params is None else encode_json(params), request_id)


def encode_request_json(method: str, params_json: str | None, request_id: int) -> bytes:
    """`encode_request` with the params already encoded (the client also hands them to the history).

    The `{"jsonrpc":"2.0","method":...,"id":` head is cached per method name: the storm sends a few dozen
    distinct methods millions of times.
    """
    head = _REQUEST_HEAD.get(method)
    if head is None:
        head = ('{"jsonrpc":"2.0","method":' + encode_json(method) + ',"id":').encode()
        if len(_REQUEST_HEAD) < 4096:
            _REQUEST_HEAD[method] = head
    if params_json is None:
        return b"%b%d}" % (head, request_id)
    return b"%b%d,\"params\":%b}" % (head, request_id, params_json.encode())


class ReplyParser:
    """Incremental splitter of a concatenated-JSON byte stream into message objects."""

    __slots__ = ("_bchunks", "_blen", "_chunks", "_decoder", "_generic", "_lazy", "_lines_seen", "_next_attempt",
                 "_pending_len", "raw")

    def __init__(self, *, lazy_results: bool = False) -> None:
        self._lazy = lazy_results
        """Big results as UnreadResult (see the module docstring)."""
        self._decoder = codecs.getincrementaldecoder("utf-8")("strict")
        self._chunks: list[str] = []
        self._pending_len = 0
        self._next_attempt = 0
        self._bchunks: list[bytes] = []
        """The fast path's pending bytes: the start of a reply whose newline has not come yet."""
        self._blen = 0
        self._generic = False
        """The stream left one-reply-per-line framing; back on the fast path at the next clean line end."""
        self._lines_seen = False
        self.raw: list[bytes | memoryview] | None = None
        """The bytes of each message the last `feed` returned (fast path), None when it took the generic path."""

    @property
    def pending_chars(self) -> int:
        """Characters (bytes, on the fast path) received that are not yet a whole message."""
        return self._pending_len + self._blen

    def feed(self, data: bytes) -> list[Any]:
        """Every whole message completed by `data`, in stream order; keeps the incomplete rest."""
        if self._generic:
            return self._feed_generic(data)
        if b"\n" not in data:
            if not self._lines_seen and not self._bchunks:
                # A fresh stream that does not start with a line: a server without newlines, or one reply
                # bigger than a read; the generic path tells them apart.
                return self._feed_generic(data)
            self._bchunks.append(data)
            self._blen += len(data)
            if self._blen > MAX_PENDING_CHARS:
                raise FramingError(f"{self._blen} bytes without a complete JSON reply")
            self.raw = None
            return []
        if self._bchunks:
            self._bchunks.append(data)
            buf = b"".join(self._bchunks)
            self._bchunks = []
            self._blen = 0
        else:
            buf = data
        messages: list[Any] = []
        raws: list[bytes | memoryview] = []
        pos = 0
        end = buf.rfind(b"\n")
        loads = _LOADS
        lazy = self._lazy
        view: memoryview | None = None
        while pos <= end:
            nl = buf.find(b"\n", pos)
            line: bytes | memoryview
            big = lazy and nl - pos >= BIG_REPLY
            if big:
                # A big line stays in the buffer: its reply, the history and a listing's schema read it there.
                if view is None:
                    view = memoryview(buf)
                line = view[pos:nl]
            else:
                line = buf[pos:nl]
                if not line or line.isspace():
                    pos = nl + 1
                    continue
            try:
                messages.append(_big_reply(line) if big else loads(line))
            except _LoadError:
                # Not one compact reply per line (pretty-printed, glued, NaN, not UTF-8, not JSON): the
                # generic path from this line on decides.
                messages += self._feed_generic(buf[pos:])
                return messages
            raws.append(line)
            pos = nl + 1
        if pos < len(buf):
            rest = buf[pos:]
            self._bchunks = [rest]
            self._blen = len(rest)
        self._lines_seen = True
        self.raw = raws
        return messages

    def _feed_generic(self, data: bytes) -> list[Any]:
        self.raw = None
        self._generic = True
        messages = self._feed_text(data)
        if not self._chunks and data.endswith(b"\n"):
            # A clean line end: one reply per line again from here, and a stream of lines (its next reply
            # bigger than a read is a line still coming, not a reason to take this path again).
            self._generic = False
            self._lines_seen = self._lines_seen or bool(messages)
        return messages

    def _feed_text(self, data: bytes) -> list[Any]:
        try:
            text = self._decoder.decode(data)
        except UnicodeDecodeError as exc:
            raise FramingError(f"reply is not UTF-8: {exc}") from exc
        if not text:
            return []
        self._chunks.append(text)
        self._pending_len += len(text)
        if "\n" not in text and self._pending_len < self._next_attempt:
            return []
        buf = self._chunks[0] if len(self._chunks) == 1 else "".join(self._chunks)
        messages: list[Any] = []
        pos = 0
        end = len(buf)
        raw_decode = _DECODER.raw_decode
        while True:
            pos = _WHITESPACE.match(buf, pos).end()  # type: ignore[union-attr]
            if pos >= end:
                break
            try:
                obj, pos_after = raw_decode(buf, pos)
            except json.JSONDecodeError as exc:
                if buf[pos] not in "{[":
                    raise FramingError(f"reply stream is not JSON at {buf[pos:pos + 40]!r}: {exc.msg}") from exc
                break
            messages.append(obj)
            pos = pos_after
        rest = buf[pos:] if pos < end else ""
        self._chunks = [rest] if rest else []
        self._pending_len = len(rest)
        if rest:
            if self._pending_len > MAX_PENDING_CHARS:
                raise FramingError(f"{self._pending_len} characters without a complete JSON reply")
            # Try again on the next newline or once the partial reply has doubled: O(n) overall.
            self._next_attempt = 2 * self._pending_len
        else:
            self._next_attempt = 0
        return messages
