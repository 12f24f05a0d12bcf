"""`ReplayPlan`: what one replay sends, in which steps, on which connections.

A step is a set of operations sent together and all answered before the next step goes out. Serial replay is
one operation per step on one connection (the easiest reproducer to read and to run with `spdk-rpc`); grouped
replay sends each recorded in-flight group as one step, each operation on its original connection (pipelined
when they share one). A grouped plan can dissolve chosen groups into single steps, so the minimizer keeps
concurrency only where the crash needs it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from harness.minimize.operations import Operation, assign_in_flight_groups, groups_of, start_order

Mode = Literal["serial", "serial-sent", "grouped"]
"""serial: one at a time in the search's order (reply order); serial-sent: one at a time in send order (calls
in flight together then go in the order they were sent, which the reply order can get wrong); grouped: the
recorded in-flight groups sent together."""


@dataclass(frozen=True)
class ReplayPlan:
    steps: tuple[tuple[Operation, ...], ...]
    single_connection: bool

    @property
    def ops(self) -> list[Operation]:
        return [op for step in self.steps for op in step]

    @property
    def mode(self) -> Mode:
        return "serial" if self.single_connection and all(len(s) == 1 for s in self.steps) else "grouped"

    @property
    def concurrent_steps(self) -> int:
        """Steps that send more than one operation at once."""
        return sum(1 for s in self.steps if len(s) > 1)

    def __len__(self) -> int:
        return sum(len(s) for s in self.steps)

    def describe(self) -> str:
        if self.mode == "serial":
            return f"{len(self)} operations, serial on one connection"
        conns = len({op.conn_key for op in self.ops})
        return (f"{len(self)} operations in {len(self.steps)} steps on {conns} connections "
                f"({self.concurrent_steps} steps in flight together)")


def serial_plan(ops: Iterable[Operation]) -> ReplayPlan:
    """One operation at a time, in the given order (the search passes its execution-order estimate), on one
    connection."""
    return ReplayPlan(tuple((op,) for op in ops), single_connection=True)


def grouped_plan(ops: Iterable[Operation], dissolved: frozenset[int] = frozenset()) -> ReplayPlan:
    """Recorded in-flight groups as steps on the original connections; groups in `dissolved` go one by one."""
    steps: list[tuple[Operation, ...]] = []
    for group in groups_of(list(ops)):
        if group[0].group in dissolved or len(group) == 1:
            steps.extend((op,) for op in group)
        else:
            steps.append(tuple(group))
    return ReplayPlan(tuple(steps), single_connection=False)


def plan_for(ops: Sequence[Operation], mode: Mode, dissolved: frozenset[int] = frozenset()) -> ReplayPlan:
    if mode == "serial":
        return serial_plan(ops)
    if mode == "serial-sent":
        return serial_plan(start_order(ops))
    return grouped_plan(ops, dissolved)


def plan_from_operations(ops: Sequence[Operation]) -> ReplayPlan:
    """The plan a history or repro.min.jsonl describes: steps from `group` (derived from the times when the
    lines have none, as in a run's history.jsonl); serial when every op has its own group on one connection.
    A repro.min.jsonl's groups are its step numbers, so its order is theirs, not the recorded times'."""
    if any(op.group < 0 for op in ops):
        ordered = assign_in_flight_groups(ops)
    else:
        ordered = sorted(ops, key=lambda op: (op.group, op.t_start, op.worker, op.seq, op.index))
    groups = [op.group for op in ordered]
    unique = len(set(groups)) == len(groups)
    if unique and len({op.conn_key for op in ordered}) <= 1:
        return serial_plan(ordered)
    if unique:
        return ReplayPlan(tuple((op,) for op in ordered), single_connection=False)
    steps: list[tuple[Operation, ...]] = []
    for op in ordered:
        if steps and steps[-1][0].group == op.group:
            steps[-1] = (*steps[-1], op)
        else:
            steps.append((op,))
    return ReplayPlan(tuple(steps), single_connection=False)
