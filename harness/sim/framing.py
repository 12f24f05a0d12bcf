"""Where one JSON value ends on an RPC connection, as spdk_json_parse decides (lib/json/json_parse.c).

Requests are JSON values concatenated on the stream: a truncated value waits for more bytes; invalid JSON
(no bytes can make it valid) gets no reply and SPDK closes the connection; the number of JSON values in one
request is counted as spdk_json_parse counts them, for SPDK_JSONRPC_MAX_VALUES.
"""

from __future__ import annotations

import re

INCOMPLETE = "incomplete"
INVALID = "invalid"
COMPLETE = "complete"

_TOKEN = re.compile(
    rb"[ \t\n\r]*(?:"
    rb"(?P<punct>[{}\[\]:,])"
    rb'|(?P<str>"(?:[^"\\\x00-\x1f]++|\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4}))*+")'
    rb"|(?P<num>-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?)"
    rb"|(?P<lit>true|false|null))"
)
_STRING_PREFIX = re.compile(rb'"(?:[^"\\\x00-\x1f]++|\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4}))*+(?:\\(?:u[0-9a-fA-F]{0,3})?)?')
_NUMBER_PREFIX = re.compile(rb"-?(?:(?:0|[1-9][0-9]*)(?:\.(?:[0-9]+(?:[eE][+-]?[0-9]*)?)?|[eE][+-]?[0-9]*)?)?")
_WHITESPACE = b" \t\n\r"

_VALUE, _VALUE_OR_CLOSE, _KEY, _KEY_OR_CLOSE, _COLON, _COMMA_OR_CLOSE = range(6)


def _is_partial_token(rest: bytes, expect: int) -> bool:
    """Could `rest` (the end of the buffer) still become a valid token where the grammar is now?"""
    if expect in (_KEY, _KEY_OR_CLOSE):
        return _STRING_PREFIX.fullmatch(rest) is not None
    if expect in (_VALUE, _VALUE_OR_CLOSE):
        return (
            _STRING_PREFIX.fullmatch(rest) is not None
            or _NUMBER_PREFIX.fullmatch(rest) is not None
            or any(lit.startswith(rest) for lit in (b"true", b"false", b"null"))
        )
    return False


def scan_value(buf: bytes | bytearray, pos: int = 0) -> tuple[str, int, int, int]:
    """Find the JSON value starting at `pos` (after whitespace): `(status, start, end, values)`.

    `status` is COMPLETE (the value is `buf[start:end]`), INCOMPLETE (wait for more bytes) or INVALID
    (no bytes can make it valid: SPDK closes the connection). `values` counts JSON values the way
    spdk_json_parse does (containers' begin and end, names, scalars), for the MAX_VALUES limit.
    """
    length = len(buf)
    start = pos
    while start < length and buf[start] in _WHITESPACE:
        start += 1
    if start == length:
        return INCOMPLETE, start, start, 0
    stack: list[int] = []
    expect = _VALUE
    values = 0
    pos = start
    while True:
        m = _TOKEN.match(buf, pos)
        if m is None:
            rest = bytes(buf[pos:]).lstrip(_WHITESPACE)
            if not rest or _is_partial_token(rest, expect):
                return INCOMPLETE, start, pos, values
            return INVALID, start, pos, values
        kind = m.lastgroup
        token = m.group(kind or 0)
        token_start = m.start(kind or 0)
        pos = m.end()
        if kind == "num" and _NUMBER_PREFIX.fullmatch(bytes(buf[token_start:])) is not None:
            return INCOMPLETE, start, pos, values  # the number may go on in the next bytes
        if kind != "punct" or token in b"{}[]":
            values += 1
        closed_value = False
        if expect in (_VALUE, _VALUE_OR_CLOSE):
            if token == b"]" and expect == _VALUE_OR_CLOSE:
                stack.pop()
                closed_value = True
            elif token == b"{":
                stack.append(ord("{"))
                expect = _KEY_OR_CLOSE
            elif token == b"[":
                stack.append(ord("["))
                expect = _VALUE_OR_CLOSE
            elif kind != "punct":
                closed_value = True
            else:
                return INVALID, start, pos, values
        elif expect in (_KEY, _KEY_OR_CLOSE):
            if kind == "str":
                expect = _COLON
            elif token == b"}" and expect == _KEY_OR_CLOSE:
                stack.pop()
                closed_value = True
            else:
                return INVALID, start, pos, values
        elif expect == _COLON:
            if token != b":":
                return INVALID, start, pos, values
            expect = _VALUE
        else:  # _COMMA_OR_CLOSE
            if token == b",":
                expect = _KEY if stack[-1] == ord("{") else _VALUE
            elif (token == b"}" and stack[-1] == ord("{")) or (token == b"]" and stack[-1] == ord("[")):
                stack.pop()
                closed_value = True
            else:
                return INVALID, start, pos, values
        if closed_value:
            if not stack:
                return COMPLETE, start, pos, values
            expect = _COMMA_OR_CLOSE
