"""A request's envelope checked as SPDK's parse_single_request checks it (lib/jsonrpc/jsonrpc_server.c).

A bad envelope is `{"jsonrpc":"2.0","id":null,"error":{"code":-32600,"message":"Invalid request"}}`; a
missing "jsonrpc" is accepted; a batch array is an invalid request; an object naming a key twice is invalid;
the id comes back as it was sent (numbers verbatim).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from harness.sim.json_writer import error_reply, spdk_json

ERROR_INVALID_REQUEST = -32600


class _DuplicateKeys(dict[str, Any]):
    """A JSON object that named a key twice (spdk_json_decode_object refuses it)."""


def _object_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    return obj if len(obj) == len(pairs) else _DuplicateKeys(obj)


def _reject_constant(name: str) -> None:
    raise ValueError(f"not JSON: {name}")


class _RawNumber(str):
    """A JSON number's text as sent, so an id like 1.50 or -0 comes back byte for byte."""


def _id_json(text: str, request_id: object) -> str:
    """The request id as SPDK writes it back: numbers verbatim, strings re-escaped, null."""
    if request_id is None:
        return "null"
    if isinstance(request_id, str):
        return spdk_json(request_id)
    if isinstance(request_id, int) and request_id != 0:
        return str(request_id)  # a JSON integer without fraction or exponent reads back identically
    raw = json.loads(text, parse_int=_RawNumber, parse_float=_RawNumber, parse_constant=_reject_constant)
    return str(raw["id"])


_ENVELOPE_KEYS = frozenset({"jsonrpc", "method", "params", "id"})


@dataclass
class Request:
    """A request that passed SPDK's envelope checks (parse_single_request)."""

    method: str
    params: object
    id_json: str
    notification: bool


def parse_envelope(text: str) -> Request | bytes:
    """Check the envelope as SPDK does; return the request, or the error reply SPDK would send."""
    invalid = error_reply("null", ERROR_INVALID_REQUEST, "Invalid request")
    obj = json.loads(text, object_pairs_hook=_object_pairs, parse_constant=_reject_constant)
    if not isinstance(obj, dict) or isinstance(obj, _DuplicateKeys) or not obj.keys() <= _ENVELOPE_KEYS:
        return invalid
    if "jsonrpc" in obj and obj["jsonrpc"] != "2.0":
        return invalid
    method = obj.get("method")
    if not isinstance(method, str):
        return invalid
    has_id = "id" in obj
    request_id = obj.get("id")
    if has_id and (isinstance(request_id, bool) or not isinstance(request_id, str | int | float | None)):
        return invalid
    id_json = _id_json(text, request_id)
    params = obj.get("params")
    if params is not None and not isinstance(params, dict | list):
        return error_reply(id_json, ERROR_INVALID_REQUEST, "Invalid request")
    return Request(method=method, params=params, id_json=id_json, notification=request_id is None)
