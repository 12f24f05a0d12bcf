"""Errno mapping of SPDK's error replies, over every distinct error the real target sent in the recordings."""

from __future__ import annotations

import errno
import json
import os
import pickle

import pytest

from harness.errors import HarnessError, TargetError
from harness.recordings import recordings_dir
from harness.rpc.errors import RpcConnectError, RpcConnectionLost, RpcError, RpcTimeout, errno_name_of

TRANSCRIPTS = recordings_dir() / "transcripts"

# What each recorded message means, decided by reading SPDK's source and the recordings, not by the code
# under test. A message that appears in a new recording fails the coverage test until it is added here.
EXPECTED_BY_MESSAGE: dict[str, str | None] = {
    "Device or resource busy": "EBUSY",
    "No such device": "ENODEV",
    "File exists": "EEXIST",
    "Invalid argument": "EINVAL",
    "Operation not permitted": "EPERM",
    "No space left on device": "ENOSPC",
    "No such file or directory": "ENOENT",
    "Lvol store nope not found": "ENOENT",  # code -2: the code is the errno
    "Invalid clear_method parameter": "EINVAL",  # code -22
    "Invalid clean_method option": "EINVAL",  # code -22
    "spdk_json_decode_object failed": None,
    "Method not found": None,
    "Invalid request": None,
    "Invalid parameters": None,
    "spdk_get_version method requires no parameters": None,
}


def recorded_errors() -> list[tuple[str, int, str]]:
    """(method, code, message) for every distinct error reply in the recordings."""
    if not TRANSCRIPTS.is_dir():
        pytest.skip(f"recordings not found at {TRANSCRIPTS}")
    seen: dict[tuple[int, str], str] = {}
    for path in sorted(TRANSCRIPTS.glob("*.json")):
        for step in json.loads(path.read_text())["steps"]:
            response = step.get("response")
            if isinstance(response, dict) and isinstance(response.get("error"), dict):
                err = response["error"]
                method = step["request"].get("method", "raw")
                seen.setdefault((err["code"], err["message"]), method)
    return [(method, code, message) for (code, message), method in sorted(seen.items())]


def test_recordings_have_the_errors_the_readme_names() -> None:
    messages = {message for _, _, message in recorded_errors()}
    assert {"Device or resource busy", "No such device", "File exists", "Invalid argument",
            "Operation not permitted", "No space left on device"} <= messages


def test_every_recorded_error_maps_to_its_errno_name() -> None:
    errors = recorded_errors()
    assert len(errors) >= 15
    unknown = sorted({message for _, _, message in errors} - set(EXPECTED_BY_MESSAGE))
    assert not unknown, f"new error messages in the recordings, add them to EXPECTED_BY_MESSAGE: {unknown}"
    for method, code, message in errors:
        exc = RpcError(method, code, message)
        expected = EXPECTED_BY_MESSAGE[message]
        assert exc.errno_name == expected, (code, message)
        assert exc.errno == (getattr(errno, expected) if expected else None)
        assert exc.code == code and exc.message == message and exc.method == method


@pytest.mark.parametrize(
    ("code", "message", "expected"),
    [
        (-32603, "Device or resource busy", "EBUSY"),  # generic code, errno text
        (-32602, "File exists", "EEXIST"),
        (-17, "File exists", "EEXIST"),  # negative-errno code
        (-19, "something SPDK invented", "ENODEV"),  # code decides when the text is not strerror
        (-32603, "Cannot allocate memory", "ENOMEM"),
        (-32603, "Operation not permitted", "EPERM"),  # message wins over the generic code
        (-1, "No such device", "ENODEV"),  # message wins over a contradicting errno code
        (-32601, "Method not found", None),
        (-32603, "spdk_json_decode_object failed", None),
        (None, "", None),
    ],
)
def test_errno_name_from_message_then_code(code: int | None, message: str, expected: str | None) -> None:
    assert errno_name_of(code, message) == expected


def test_mapping_covers_the_whole_errno_table_not_a_hand_list() -> None:
    for number, name in errno.errorcode.items():
        mapped = errno_name_of(-32603, os.strerror(number))
        # Aliases share a number (EWOULDBLOCK is EAGAIN): compare numbers, not names.
        assert mapped is not None and getattr(errno, mapped) == number, (number, name)


def test_error_types_and_one_line_text() -> None:
    exc = RpcError("bdev_lvol_delete", -32603, "Device or resource busy")
    assert str(exc) == "bdev_lvol_delete: -32603 Device or resource busy (EBUSY)"
    assert "\n" not in str(exc)
    assert isinstance(exc, HarnessError)
    assert exc.as_record() == {"code": -32603, "message": "Device or resource busy", "errno": "EBUSY"}
    timeout = RpcTimeout("bdev_lvol_snapshot", None, "no reply within 2 s")
    lost = RpcConnectionLost("bdev_lvol_clone", None, "the target closed the connection")
    assert isinstance(timeout, RpcError) and isinstance(lost, RpcError)
    assert (timeout.errno_name, lost.errno_name) == ("ETIMEDOUT", "ECONNRESET")
    assert timeout.code is None and lost.as_record()["code"] is None
    connect = RpcConnectError("connect", None, "cannot connect to RPC socket /x.sock")
    assert isinstance(connect, TargetError) and isinstance(connect, RpcError)
    assert str(connect) == "cannot connect to RPC socket /x.sock"


def test_errors_survive_pickling_for_worker_processes() -> None:
    for exc in (RpcError("m", -19, "No such device"), RpcTimeout("m", None, "late"),
                RpcConnectionLost("m", None, "gone")):
        back = pickle.loads(pickle.dumps(exc))
        assert type(back) is type(exc)
        assert (back.method, back.code, back.message, back.errno_name) == (
            exc.method, exc.code, exc.message, exc.errno_name)
