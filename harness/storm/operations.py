"""One storm operation (`Op`), the group of ops it overlapped with, and which SPDK methods the storm may send
(rows of `harness.rpc_rules`).

Method names and parameter names are SPDK's own, so an operation from a report pastes into `spdk-rpc`.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

from harness.rpc.framing import UnreadResult
from harness.rpc_rules.rule import Rule
from harness.rpc_rules.table import BY_METHOD, OPTIONAL_LONGHORN_METHODS, RULES

KNOWN_METHODS: frozenset[str] = frozenset(r.method for r in RULES if r.storm is not None)
"""Every method a mix may name: the table's rows the storm knows how to send."""

OPTIONAL_METHODS: frozenset[str] = KNOWN_METHODS & OPTIONAL_LONGHORN_METHODS
"""Only sent when `rpc_get_methods` lists them (the Longhorn fork has them, upstream v24.09 lacks some)."""

_op_ids = itertools.count(1)


class Group:
    """Ops that overlapped on some key while in flight; judged together once all have answered
    (`harness.storm.grouping` forms them). `merged` points at the group that absorbed this one."""

    __slots__ = ("closed", "inflight", "members", "merged", "with_rename")

    def __init__(self) -> None:
        self.members: list[Op] = []
        self.inflight = 0
        self.merged: Group | None = None
        self.with_rename = False  # an lvstore rename is a member: its "s:" keys draw ops in too
        self.closed = False  # judged (a quiesce point may judge it before the checker saw every reply)

    def root(self) -> Group:
        g = self
        while g.merged is not None:
            g = g.merged
        # Path compression: later lookups from this group take one step (merges chain groups).
        node = self
        while node.merged is not None and node.merged is not g:
            node.merged, node = g, node.merged
        return g


@dataclass(eq=False, slots=True)
class Op:
    """One request as the storm sent it, and what came back. `keys` are the objects it reads or changes."""

    method: str
    params: dict[str, Any]
    worker: int
    label: str = "mix"
    keys: tuple[str, ...] = ()
    conn: int = -1
    id: int = field(default_factory=lambda: next(_op_ids))
    t_start: float = 0.0
    t_end: float = 0.0
    result: Any = None
    error_code: int | None = None
    error_message: str | None = None
    errno_name: str | None = None
    contended: bool = False
    lenient: bool = False
    done: bool = False
    judged: bool = False  # judged as part of a group (the checker judges each op once)
    group: Group | None = None
    """Set by the checker: the ops overlapping this one on a shared key while it was in flight."""
    rule: Rule = field(init=False, repr=False)
    """The method's row in the RPC table (every method the storm sends has one), looked up once."""

    def __post_init__(self) -> None:
        self.rule = BY_METHOD[self.method]

    @property
    def ok(self) -> bool:
        return self.done and self.error_code is None

    @property
    def outcome(self) -> str:
        """`ok` or the errno name (`EBUSY`), the unit the checker compares."""
        if self.error_code is None:
            return "ok"
        return self.errno_name or f"code {self.error_code}"

    def record(self) -> dict[str, Any]:
        """The operation as a history line would show it (for findings and reports)."""
        rec: dict[str, Any] = {
            "worker": self.worker,
            "conn": self.conn,
            "method": self.method,
            "params": self.params,
            "t_start": self.t_start,
            "t_end": self.t_end,
            "label": self.label,
        }
        if self.error_code is None:
            result = self.result
            rec["result"] = result.value() if isinstance(result, UnreadResult) else result
        else:
            rec["error"] = {"code": self.error_code, "message": self.error_message, "errno": self.errno_name}
        return rec

    def describe(self) -> str:
        args = " ".join(f"{k}={v}" for k, v in self.params.items())
        return f"{self.method} {args} -> {self.outcome}"
