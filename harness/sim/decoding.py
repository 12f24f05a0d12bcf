"""Params decoded as SPDK's spdk_json_decode_object decodes them, refusals and all.

An object, only known keys, the right types (unsigned integers in range, no bools for numbers), required ones
present; anything else is `-32603 "spdk_json_decode_object failed"`, the same for every method (the
recordings show it). A spec is SPDK's decoder table: `(name, type, required)` per param, or a row's params
of the RPC table (`spec_of`).
"""

from __future__ import annotations

import errno

from harness.rpc_rules.rule import Param, Rule
from harness.rpc_rules.table import RULES
from harness.sim.protocol import ERROR_INTERNAL, RpcFault

DECODE_FAILED = "spdk_json_decode_object failed"

STR, U32, U64, BOOL, XATTRS = "string", "uint32", "uint64", "bool", "xattrs"
Spec = tuple[tuple[str, str, bool], ...]  # (name, type, required)


def _valid(kind: str, value: object) -> bool:
    if kind == STR:
        return isinstance(value, str)
    if kind == BOOL:
        return isinstance(value, bool)
    if kind in (U32, U64):
        limit = 1 << (32 if kind == U32 else 64)
        return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < limit
    if kind == XATTRS:
        return value is None or (isinstance(value, dict) and all(isinstance(v, str) for v in value.values()))
    raise AssertionError(kind)


def decode(params: object, spec: Spec) -> dict[str, object]:
    """Decode as spdk_json_decode_object does: an object, only known keys, right types, required ones present."""
    if not isinstance(params, dict):
        raise RpcFault(ERROR_INTERNAL, DECODE_FAILED)
    known = {name: (kind, required) for name, kind, required in spec}
    if any(key not in known for key in params):
        raise RpcFault(ERROR_INTERNAL, DECODE_FAILED)
    out: dict[str, object] = {}
    for name, (kind, required) in known.items():
        if name not in params:
            if required:
                raise RpcFault(ERROR_INTERNAL, DECODE_FAILED)
            out[name] = None
            continue
        value = params[name]
        if not _valid(kind, value):
            raise RpcFault(ERROR_INTERNAL, DECODE_FAILED)
        out[name] = {} if kind == XATTRS and value is None else value
    return out


def spec_of(params: tuple[Param, ...]) -> Spec:
    """A row's decoder table as a spec."""
    return tuple((p.name, p.kind, p.required) for p in params)


_ROW_SPECS: dict[str, Spec] = {r.method: spec_of(r.params) for r in RULES}


def decode_for(rule: Rule, params: object) -> dict[str, object]:
    """Decode per the row's decoder table."""
    return decode(params, _ROW_SPECS[rule.method])


def check_choices(rule: Rule, p: dict[str, object]) -> None:
    """A string param SPDK parses into one of a few values (clear_method): anything else is -EINVAL with the
    message the row gives (SPDK's, which differs between methods)."""
    for param in rule.params:
        value = p.get(param.name)
        if param.choices and value is not None and str(value).lower() not in param.choices:
            raise RpcFault(-errno.EINVAL, param.invalid)
