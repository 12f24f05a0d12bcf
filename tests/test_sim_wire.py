"""SPDK's JSON-RPC wire format as the reference target speaks it, checked against the recordings.

Every raw step of transcript 06 is replayed byte for byte on a fresh connection to the real `spdk-sim`
process, including whether the target closed the connection; the framing and writer quirks behind them
are checked directly on the functions of `harness.sim.framing`, `envelope` and `json_writer`.
"""

from __future__ import annotations

import ast
import json
import random
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.recordings import recordings_dir
from harness.sim.envelope import parse_envelope
from harness.sim.framing import COMPLETE, INCOMPLETE, INVALID, scan_value
from harness.sim.json_writer import JSON_WRITE_BUF, PlainList, notification_reply, result_reply, spdk_json
from tests.test_sim_server import VERSION, SimProcess, read_raw, read_replies, real_dispatcher_available

TRANSCRIPTS = recordings_dir() / "transcripts"
T06 = TRANSCRIPTS / "longhorn-v24.09-06_malformed_requests.json"
T07 = TRANSCRIPTS / "longhorn-v24.09-07_rpc_get_methods_and_version.json"

needs_recordings = pytest.mark.skipif(not T06.exists(), reason=f"{T06} not present")
needs_real = pytest.mark.skipif(not real_dispatcher_available(), reason="harness.sim.methods not written yet")
REFERENCE_SUFFIX = " (lvol-storm reference target)"  # what harness.sim.methods appends to the version


def raw_steps() -> list[dict[str, Any]]:
    if not T06.exists():
        return []
    return [s for s in json.loads(T06.read_text())["steps"] if "raw" in s["request"]]


def recorded_wire(step: dict[str, Any]) -> tuple[bytes, bool]:
    """(the exact reply bytes, whether the target closed the connection) from a raw step's note."""
    note = step["note"]
    closed = re.search(r"connection_closed_by_target_after=(True|False)", note)
    raw = note.split("raw_reply_bytes=", 1)[1]
    assert closed is not None
    return ast.literal_eval(raw).encode(), closed.group(1) == "True"


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimProcess]:
    proc = SimProcess(tmp_path_factory.mktemp("wire")).wait_ready()
    yield proc
    proc.kill()


# -- transcript 06, raw steps, against the process --------------------------------------------------------


@needs_recordings
@pytest.mark.parametrize("step", raw_steps(), ids=lambda s: s["tag"])
def test_transcript_06_raw_step(sim: SimProcess, step: dict[str, Any]) -> None:
    want_bytes, want_closed = recorded_wire(step)
    with sim.connect() as s:
        s.sendall(step["request"]["raw"].encode())
        got_bytes, got_closed = read_raw(s, quiet=0.3)
    assert got_bytes == want_bytes
    assert got_closed == want_closed
    if step["response"] is not None:
        assert json.loads(got_bytes.split(b"\n")[0]) == step["response"]


def test_every_raw_step_was_replayed() -> None:
    if not T06.exists():
        pytest.skip(f"{T06} not present")
    assert len(raw_steps()) == 10


# -- more of SPDK's envelope and stream rules, against the process ----------------------------------------


def exchange(sim: SimProcess, data: bytes, quiet: float = 0.3) -> tuple[bytes, bool]:
    with sim.connect() as s:
        s.sendall(data)
        return read_raw(s, quiet=quiet)


INVALID_REQUEST = b'{"jsonrpc":"2.0","id":null,"error":{"code":-32600,"message":"Invalid request"}}\n'


@pytest.mark.parametrize(
    "request_bytes",
    [
        b'{"jsonrpc": "2.0", "method": "echo", "id": 1, "extra": 1}',
        b'{"jsonrpc": "2.0", "method": "echo", "id": 1, "id": 2}',
        b'{"jsonrpc": "2.0", "method": "echo", "id": true}',
        b'{"jsonrpc": "2.0", "method": "echo", "id": [1]}',
        b'{"jsonrpc": 2.0, "method": "echo", "id": 1}',
        b'{"jsonrpc": "2.0", "id": 1}',
        b'"just a string"',
        b"[]",
    ],
    ids=["unknown-key", "duplicate-key", "bool-id", "array-id", "number-version", "no-method", "string", "empty-batch"],
)
def test_bad_envelopes_are_invalid_request_with_id_null(sim: SimProcess, request_bytes: bytes) -> None:
    assert exchange(sim, request_bytes) == (INVALID_REQUEST, False)


def test_bad_params_type_keeps_the_id(sim: SimProcess) -> None:
    got, closed = exchange(sim, b'{"jsonrpc": "2.0", "method": "echo", "id": 5, "params": 5}')
    assert got == b'{"jsonrpc":"2.0","id":5,"error":{"code":-32600,"message":"Invalid request"}}\n' and not closed


def test_params_null_is_no_params(sim: SimProcess) -> None:
    got, _ = exchange(sim, b'{"jsonrpc": "2.0", "method": "spdk_get_version", "id": 1, "params": null}')
    assert json.loads(got) == {"jsonrpc": "2.0", "id": 1, "result": VERSION}


def test_ids_come_back_as_written(sim: SimProcess) -> None:
    got, _ = exchange(sim, b'{"method": "echo", "id": 1.50}{"method": "echo", "id": -0}{"method": "echo", "id": 1e3}'
                           b'{"method": "echo", "id": "caf\\u00e9/\\n"}')
    assert got.split(b"\n")[:4] == [
        b'{"jsonrpc":"2.0","id":1.50,"result":null}',
        b'{"jsonrpc":"2.0","id":-0,"result":null}',
        b'{"jsonrpc":"2.0","id":1e3,"result":null}',
        b'{"jsonrpc":"2.0","id":"caf\\u00E9/\\n","result":null}',
    ]


def test_notification_errors_are_full_replies_with_id_null(sim: SimProcess) -> None:
    assert exchange(sim, b'{"jsonrpc": "2.0", "method": "no_such_method"}') == (
        b'{"jsonrpc":"2.0","id":null,"error":{"code":-32601,"message":"Method not found"}}\n', False)


def test_explicit_null_id_is_answered_like_a_notification(sim: SimProcess) -> None:
    got, closed = exchange(sim, b'{"jsonrpc": "2.0", "method": "echo", "id": null, "params": [1]}')
    assert (got, closed) == (b'{"jsonrpc":"2.0","id":null,"result":[1]', False)


def test_long_notification_reply_keeps_only_the_last_4k_of_the_writer(sim: SimProcess) -> None:
    params = ["x" * 100] * 60  # about 6 KiB of result
    got, _ = exchange(sim, json.dumps({"method": "echo", "params": params}).encode())
    full = ('{"jsonrpc":"2.0","id":null,"result":' + json.dumps(params, separators=(",", ":"))).encode()
    assert len(full) > JSON_WRITE_BUF and got == full[JSON_WRITE_BUF:]


def test_invalid_json_after_a_good_request_drops_its_queued_reply(sim: SimProcess) -> None:
    before = sim.call("count")["result"]
    assert exchange(sim, b'{"method": "count", "id": 1}not json') == (b"", True)
    assert sim.call("count")["result"] == before + 2  # type: ignore[operator]  # it ran; its reply was dropped


@pytest.mark.parametrize(
    "request_bytes",
    [
        b'{"jsonrpc": "2.0", "method": "echo", "id": 1, "params": [NaN]}',
        b'{"jsonrpc": "2.0", "method": "echo", "id": 1, "params": [' + b",".join([b"1"] * 1100) + b"]}",
        b'{"jsonrpc": "2.0", "method": "echo", "id": 1, "params": ["\xff"]}',
        b'{"jsonrpc": "2.0", "method": "echo", "id": 1, "params": ["tab\there"]}',
        b"}",
    ],
    ids=["nan", "over-1024-values", "bad-utf8", "raw-control-char", "stray-brace"],
)
def test_parse_errors_close_the_connection_without_a_reply(sim: SimProcess, request_bytes: bytes) -> None:
    assert exchange(sim, request_bytes) == (b"", True)


def test_a_request_larger_than_the_32k_receive_buffer_is_dropped(sim: SimProcess) -> None:
    big = b'{"jsonrpc": "2.0", "method": "echo", "id": 1, "params": ["' + b"a" * 40000 + b'"]}'
    with sim.connect() as s:
        s.sendall(big[:33000])
        got, closed = read_raw(s, quiet=0.5)
    assert (got, closed) == (b"", True)


def test_split_values_wait_for_the_rest(sim: SimProcess) -> None:
    with sim.connect() as s:
        for part in (b'{"method": "echo", "id": 1, "params": [12', b"34.5e", b'1, tru', b'e, "\\u00'):
            s.sendall(part)
            assert read_raw(s, quiet=0.05) == (b"", False)
        s.sendall(b'e9"]}')
        assert read_replies(s, 1) == [{"jsonrpc": "2.0", "id": 1, "result": [1234.5e1, True, "\u00e9"]}]


# -- the quirks on their own ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b'{"a": 1}', COMPLETE),
        (b'  {"a": [1, {"b": null}]} {"next"', COMPLETE),
        (b'{"a": 1', INCOMPLETE),
        (b'{"a": "unterminated \\u00', INCOMPLETE),
        (b'{"a": tr', INCOMPLETE),
        (b'{"a": -', INCOMPLETE),
        (b'{"a": 1.', INCOMPLETE),
        (b"", INCOMPLETE),
        (b"  \n", INCOMPLETE),
        (b'{"a": x}', INVALID),
        (b'{"a" 1}', INVALID),
        (b'{"a": 1,}', INVALID),
        (b"[1 2]", INVALID),
        (b'{"a": 01}', INVALID),
        (b"not json", INVALID),
        (b'{"a": "\x01"}', INVALID),
    ],
)
def test_scan_value(data: bytes, status: str) -> None:
    assert scan_value(data)[0] == status


def test_scan_value_finds_the_end_and_counts_values_as_spdk() -> None:
    data = b' {"a": [1, "x"], "b": {}}{"c": 2}'
    status, start, end, values = scan_value(data)
    assert (status, data[start:end]) == (COMPLETE, b'{"a": [1, "x"], "b": {}}')
    assert values == 10  # { a [ 1 x ] b { } }
    assert scan_value(data, end)[:3] == (COMPLETE, end, len(data))


def test_spdk_json_writer_escaping() -> None:
    assert spdk_json({"s": "é/\x7f\t\x01😀"}) == '{"s":"\\u00E9/\\u007F\\t\\u0001\\uD83D\\uDE00"}'
    assert spdk_json(["back\\u00e9slash"]) == '["back\\\\u00e9slash"]'  # an escaped backslash stays as is


_TRICKY = ["", "plain", "é", "\x00", "\x1f", "\x7f", '"', "\\", "\u2028", "\ud800", "a/b", "\t\n\r\b\f", "😀"]


@pytest.mark.parametrize("seed", range(40))
def test_the_reference_targets_fast_listing_writer_writes_the_same_bytes(seed: int) -> None:
    rng = random.Random(seed)

    def value(depth: int = 0) -> Any:
        kind = rng.randrange(9 if depth < 3 else 6)
        if kind == 0:
            return rng.choice(_TRICKY) + rng.choice(_TRICKY)
        if kind == 1:
            return rng.choice([0, -1, 2**63 - 1, -(2**63), 2**64, 2**70, rng.randrange(1 << 40)])
        if kind in (2, 3):
            return rng.choice([True, False, None])
        if kind in (4, 5):
            return f"lvs0/lvol{rng.randrange(100)}"
        if kind == 6:
            return [value(depth + 1) for _ in range(rng.randrange(4))]
        keys = [rng.choice([*_TRICKY, "uuid", "name"]) for _ in range(rng.randrange(4))]
        return {k: value(depth + 1) for k in keys}

    items = [value() for _ in range(rng.randrange(1, 30))]
    try:
        want = spdk_json(list(items))
    except (UnicodeEncodeError, ValueError) as exc:  # a lone surrogate: both writers refuse it alike
        with pytest.raises(type(exc)):
            spdk_json(PlainList(items))
        return
    assert spdk_json(PlainList(items)) == want



def test_result_and_notification_replies() -> None:
    assert result_reply("7", True) == b'{"jsonrpc":"2.0","id":7,"result":true}\n'
    assert notification_reply(True) == b'{"jsonrpc":"2.0","id":null,"result":true'
    exact = notification_reply("y" * (JSON_WRITE_BUF - 40))
    assert len(b'{"jsonrpc":"2.0","id":null,"result":"') + JSON_WRITE_BUF - 40 + 1 == len(exact)


def test_parse_envelope_accepts_missing_jsonrpc_and_returns_the_request() -> None:
    request = parse_envelope('{"method": "m", "params": {"a": 1}, "id": "x"}')
    assert not isinstance(request, bytes)
    assert (request.method, request.params, request.id_json, request.notification) == ("m", {"a": 1}, '"x"', False)


# -- with the model's Dispatcher: the whole of transcripts 06 and 07 --------------------------------------

_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _normalised(value: object) -> object:
    """UUIDs are the target's to choose; the model's version carries its label."""
    return json.loads(_UUID.sub("<uuid>", json.dumps(value)).replace(REFERENCE_SUFFIX, ""))


@needs_real
@needs_recordings
def test_transcript_06_replays_end_to_end_on_the_model(tmp_path: Path) -> None:
    sim = SimProcess(tmp_path, real=True).wait_ready()
    try:
        with sim.connect() as main:
            for step in json.loads(T06.read_text())["steps"]:
                if "raw" in step["request"]:
                    want_bytes, want_closed = recorded_wire(step)
                    with sim.connect() as s:
                        s.sendall(step["request"]["raw"].encode())
                        got_bytes, got_closed = read_raw(s, quiet=0.3)
                    # The model labels its version honestly; every other byte is as recorded.
                    got_bytes = got_bytes.replace(REFERENCE_SUFFIX.encode(), b"")
                    assert (got_bytes, got_closed) == (want_bytes, want_closed), step["tag"]
                    continue
                main.sendall(json.dumps(step["request"]).encode())
                reply = read_replies(main, 1)[0]
                assert _normalised(reply) == _normalised(step["response"]), step["tag"]
    finally:
        sim.kill()


@needs_real
@needs_recordings
def test_transcript_07_version_and_methods_on_the_model(tmp_path: Path) -> None:
    sim = SimProcess(tmp_path, real=True).wait_ready()
    try:
        steps = {s["tag"]: s for s in json.loads(T07.read_text())["steps"]}
        with sim.connect() as s:
            for tag in ("spdk_get_version", "rpc_get_methods_unknown_param"):
                s.sendall(json.dumps(steps[tag]["request"]).encode())
                assert _normalised(read_replies(s, 1)[0]) == steps[tag]["response"], tag
            s.sendall(json.dumps(steps["rpc_get_methods_full"]["request"]).encode())
            methods = read_replies(s, 1)[0]["result"]
        assert isinstance(methods, list) and "spdk_kill_instance" in methods and "bdev_lvol_delete" in methods
    finally:
        sim.kill()
