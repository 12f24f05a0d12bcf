"""Which recorded operations each operation needs: the ones that made the names and UUIDs it refers to.

A candidate the minimizer tries must stay meaningful: a snapshot of an lvol whose create was cut away only
answers ENODEV and tells nothing. So every kept operation keeps, transitively, the latest earlier operation
that produced a name or UUID its params mention (`bdev_lvol_create` of `lvs0/A` before `bdev_lvol_snapshot`
of `lvs0/A` or of the UUID the create returned). Only names and UUIDs are tracked; other state an operation
needs (free clusters, a busy blob) is left to the search itself, which keeps what the crash needs.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from harness.minimize.operations import Operation
from harness.rpc_rules.table import rule_for

PRODUCED_PARAMS: dict[str, tuple[str, ...]] = {
    "bdev_nvme_attach_controller": ("name",),
}
"""Methods outside the RPC table whose params name a new object; other `*_create` methods produce `name`."""

ID_KEYS = frozenset({"uuid", "operation_id", "name"})
"""Keys of a dict result that identify what the call made (shallow copy's `operation_id`, ...)."""


def produced_params(method: str) -> tuple[str, ...]:
    """Params that name a new object (SPDK's own parameter names): by their role in the method's row."""
    rule = rule_for(method)
    if rule is not None and rule.params:
        return rule.names("new_lvol", "renamed", "new_lvstore")
    if method in PRODUCED_PARAMS:
        return PRODUCED_PARAMS[method]
    return ("name",) if method.endswith("_create") else ()


def _scalar_token(value: Any) -> str | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, str):
        return value or None
    if isinstance(value, int):
        return f"#{value}"
    return None


def result_tokens(result: Any) -> set[str]:
    """What a successful answer hands back to later calls: a UUID or bdev name, or a dict's id fields."""
    if isinstance(result, str):
        return {result} if result else set()
    if isinstance(result, dict):
        out = set()
        for key in ID_KEYS:
            token = _scalar_token(result.get(key))
            if token is not None:
                out.add(token)
        return out
    return set()


def _split(text: str) -> set[str]:
    """An alias `lvs0/A` refers to the lvstore `lvs0`, the lvol `A` and the alias itself."""
    tokens = {text}
    if "/" in text:
        tokens.update(part for part in text.split("/") if part)
    return tokens


def _strings(value: Any, key: str | None, out: set[str], depth: int = 0) -> None:
    if depth > 20:
        return
    if isinstance(value, str):
        if value:
            out.update(_split(value))
    elif isinstance(value, dict):
        for k, v in value.items():
            _strings(v, str(k), out, depth + 1)
    elif isinstance(value, list):
        for v in value:
            _strings(v, key, out, depth + 1)
    elif key in ID_KEYS:
        token = _scalar_token(value)
        if token is not None:
            out.add(token)


def references(op: Operation) -> set[str]:
    """Names, aliases, UUIDs and ids an operation's params mention (new names it gives are not references)."""
    out: set[str] = set()
    params = op.params
    if isinstance(params, dict):
        new = set(produced_params(op.method))
        for key, value in params.items():
            if key not in new:
                _strings(value, key, out)
    elif params is not None:
        _strings(params, None, out)
    return out


def produces(op: Operation) -> set[str]:
    """Names and UUIDs a successful operation brings into existence (a refused one makes nothing)."""
    if not op.ok:
        return set()
    out = result_tokens(op.result)
    if isinstance(op.params, dict):
        for key in produced_params(op.method):
            value = op.params.get(key)
            if isinstance(value, str) and value:
                out.add(value)
                lvs = op.params.get("lvs_name")
                if isinstance(lvs, str) and lvs and key != "lvs_name":
                    out.add(f"{lvs}/{value}")
    return out


class Dependencies:
    """For each operation (by `index`), the operations it needs directly; `closure()` adds them transitively."""

    def __init__(self, ops: Sequence[Operation]) -> None:
        self.order = {op.index: pos for pos, op in enumerate(ops)}
        self.needs: dict[int, frozenset[int]] = {}
        latest: dict[str, int] = {}
        for op in ops:
            self.needs[op.index] = frozenset(latest[t] for t in references(op) if t in latest)
            for token in produces(op):
                latest[token] = op.index

    def closure(self, indices: Iterable[int]) -> list[int]:
        """`indices` plus everything they need, transitively, in the original issue order."""
        kept: set[int] = set()
        stack = [i for i in indices if i in self.needs]
        while stack:
            i = stack.pop()
            if i in kept:
                continue
            kept.add(i)
            stack.extend(j for j in self.needs[i] if j not in kept)
        return sorted(kept, key=self.order.__getitem__)

    def direct(self, index: int) -> frozenset[int]:
        return self.needs.get(index, frozenset())


def object_units(ops: Sequence[Operation], deps: Dependencies | None = None) -> dict[int, int]:
    """Each operation's object: the index of the operation that made what it acts on (its own index if it
    makes something). Dropping an lvol's whole life at once (create, resizes, renames, reads, delete) is one
    try where dropping each call is many: the search cuts whole objects before single operations."""
    latest: dict[str, int] = {}
    units: dict[int, int] = {}
    for op in ops:
        made = produces(op)
        unit = op.index
        if not made and isinstance(op.params, dict):
            for key, value in op.params.items():
                if key in produced_params(op.method):
                    continue
                hits = [latest[t] for t in sorted(_tokens_of(value, key)) if t in latest]
                if hits:
                    unit = units.get(max(hits), max(hits))
                    break
        units[op.index] = unit
        for token in made:
            latest[token] = op.index
    return units


def _tokens_of(value: Any, key: str) -> set[str]:
    out: set[str] = set()
    _strings(value, key, out)
    return out


class ObjectLives:
    """Whole lives of the objects a candidate touches: every call on each lvol it keeps (its deletes too).

    The name closure keeps an lvol's create but not the delete another worker sent later, so a worker replayed
    alone leaks the space others freed and diverges (ENOSPC where the storm had room). Completing lives keeps
    the state the crash grew in; it seeds the search, and ddmin then cuts what is not needed. Setup objects
    (worker -1: base bdevs, the lvstore) are not completed: their lives are the whole history."""

    def __init__(self, ops: Sequence[Operation], deps: Dependencies) -> None:
        self.deps = deps
        self.units = object_units(ops, deps)
        setup = {op.index for op in ops if op.worker < 0}
        self.members: dict[int, list[int]] = {}
        for op in ops:
            unit = self.units[op.index]
            if unit not in setup:
                self.members.setdefault(unit, []).append(op.index)

    def complete(self, indices: Iterable[int], within: set[int] | None = None, rounds: int | None = None) -> list[int]:
        """`indices`, their dependencies and the whole lives of what they touch (only calls in `within`, if
        given); `rounds=1` takes the lives of the objects the slice itself touches (any worker's calls on them:
        another worker's snapshot of the episode's lvol) without growing to the objects those pull in."""
        current = set(self.deps.closure(indices))
        for _ in range(len(self.units) + 1 if rounds is None else rounds):  # bounded: each round only adds
            more = set(current)
            for i in current:
                life = self.members.get(self.units.get(i, i), ())
                more.update(life if within is None else (j for j in life if j in within))
            grown = set(self.deps.closure(more))
            if grown == current:
                break
            current = grown
        return sorted(current, key=self.deps.order.__getitem__)
