"""`ReplayPlan`: what one replay sends, in which steps, on which connections.

A step is a set of operations sent together and all answered before the next step goes out. Serial replay is
one operation per step on one connection (the easiest reproducer to read and to run with `spdk-rpc`); grouped
replay sends each recorded in-flight group as one step, each operation on its original connection (pipelined
when they share one). A grouped plan can dissolve chosen groups into single steps, so the minimizer keeps
concurrency only where the crash needs it.

A one-write batch (calls the client corked into one socket write, `Operation.batch`) is one step in every mode,
its calls in the order they were written, and the replayer writes it in one write again: the target reads
such calls in one poll and starts them all before any I/O completes (a delete meets the checksum's open blob),
which separate writes do not give. `split` names batches to send as separate calls instead, so the minimizer
can find out whether the crash needs the batch, as it does for in-flight groups.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from harness.minimize.operations import (
    BatchKey,
    Operation,
    assign_in_flight_groups,
    batches_of,
    groups_of,
    start_order,
)

Mode = Literal["serial", "serial-sent", "grouped"]
"""serial: one at a time in the search's order (reply order); serial-sent: one at a time in send order (calls
in flight together then go in the order they were sent, which the reply order can get wrong); grouped: the
recorded in-flight groups sent together. One-write batches stay one step in all three unless split."""

Split = frozenset[BatchKey]


@dataclass(frozen=True)
class ReplayPlan:
    steps: tuple[tuple[Operation, ...], ...]
    single_connection: bool

    @property
    def ops(self) -> list[Operation]:
        return [op for step in self.steps for op in step]

    @property
    def mode(self) -> Mode:
        """serial when one connection sends one operation (or one one-write batch) at a time."""
        return "serial" if self.single_connection and all(_one_write(s) for s in self.steps) else "grouped"

    @property
    def concurrent_steps(self) -> int:
        """Steps that send more than one operation at once (one-write batches included)."""
        return sum(1 for s in self.steps if len(s) > 1)

    @property
    def batches(self) -> int:
        """One-write batches the plan writes (two or more calls in one socket write)."""
        return len({op.batch_key for op in self.ops if op.batch_key is not None})

    def __len__(self) -> int:
        return sum(len(s) for s in self.steps)

    def describe(self) -> str:
        written = (f"; {self.batches} one-write batch{'es' if self.batches != 1 else ''} (calls the target reads "
                   "in one poll)") if self.batches else ""
        if self.mode == "serial":
            return f"{len(self)} operations, serial on one connection{written}"
        conns = len({op.conn_key for op in self.ops})
        return (f"{len(self)} operations in {len(self.steps)} steps on {conns} connections "
                f"({self.concurrent_steps} steps in flight together){written}")


def _one_write(step: tuple[Operation, ...]) -> bool:
    """A single call, or the calls of one one-write batch."""
    return len(step) == 1 or (step[0].batch_key is not None and len({op.batch_key for op in step}) == 1)


def unbatched(ops: Sequence[Operation], split: Split = frozenset()) -> list[Operation]:
    """`ops` with the batch mark removed where it means nothing here: batches in `split` (sent as separate
    calls) and batches with a single call left in `ops` (the minimizer cut the others)."""
    counts = Counter(op.batch_key for op in ops if op.batch_key is not None)
    return [dataclasses.replace(op, batch=None)
            if op.batch_key is not None and (op.batch_key in split or counts[op.batch_key] < 2) else op
            for op in ops]


def _single_steps(ops: Sequence[Operation]) -> list[tuple[Operation, ...]]:
    """One step per call in the given order, except that a batch is one step at its first call's place, its
    calls in the order they were written (the reply order of a batch says nothing about what ran first)."""
    members = batches_of(ops)
    placed: set[BatchKey] = set()
    steps: list[tuple[Operation, ...]] = []
    for op in ops:
        key = op.batch_key
        if key is None or key not in members:
            steps.append((op,))
        elif key not in placed:
            placed.add(key)
            steps.append(tuple(members[key]))
    return steps


def _batches_contiguous(step: Sequence[Operation]) -> tuple[Operation, ...]:
    """A step's calls with each batch's calls together, in write order, at its first call's place (the
    replayer corks a connection around them)."""
    members = batches_of(step)
    out: list[Operation] = []
    placed: set[BatchKey] = set()
    for op in step:
        key = op.batch_key
        if key is None or key not in members:
            out.append(op)
        elif key not in placed:
            placed.add(key)
            out.extend(members[key])
    return tuple(out)


def serial_plan(ops: Iterable[Operation], split: Split = frozenset()) -> ReplayPlan:
    """One operation (or one-write batch) at a time, in the given order (the search passes its execution-order
    estimate), on one connection."""
    return ReplayPlan(tuple(_single_steps(unbatched(list(ops), split))), single_connection=True)


def grouped_plan(ops: Iterable[Operation], dissolved: frozenset[int] = frozenset(),
                 split: Split = frozenset()) -> ReplayPlan:
    """Recorded in-flight groups as steps on the original connections; groups in `dissolved` go one by one
    (a batch in one still goes in one write, unless it is in `split`)."""
    steps: list[tuple[Operation, ...]] = []
    for group in groups_of(unbatched(list(ops), split)):
        if group[0].group in dissolved or len(group) == 1:
            steps.extend(_single_steps(group))
        else:
            steps.append(_batches_contiguous(group))
    return ReplayPlan(tuple(steps), single_connection=False)


def plan_for(ops: Sequence[Operation], mode: Mode, dissolved: frozenset[int] = frozenset(),
             split: Split = frozenset()) -> ReplayPlan:
    if mode == "serial":
        return serial_plan(ops, split)
    if mode == "serial-sent":
        return serial_plan(start_order(ops), split)
    return grouped_plan(ops, dissolved, split)


def plan_from_operations(ops: Sequence[Operation]) -> ReplayPlan:
    """The plan a history or repro.min.jsonl describes: steps from `group` (derived from the times when the
    lines have none, as in a run's history.jsonl); serial when every op has its own group on one connection.
    A repro.min.jsonl's groups are its step numbers, so its order is theirs, not the recorded times'. Batches
    are kept as recorded (one write each)."""
    if any(op.group < 0 for op in ops):
        ordered = assign_in_flight_groups(ops)
    else:
        ordered = sorted(ops, key=lambda op: (op.group, op.t_start, op.worker, op.seq, op.index))
    ordered = unbatched(ordered)
    groups = [op.group for op in ordered]
    one_conn = len({op.conn_key for op in ordered}) <= 1
    if len(set(groups)) == len(groups):
        return ReplayPlan(tuple((op,) for op in ordered), single_connection=one_conn)
    steps: list[list[Operation]] = []
    for op in ordered:
        if steps and steps[-1][0].group == op.group:
            steps[-1].append(op)
        else:
            steps.append([op])
    return ReplayPlan(tuple(_batches_contiguous(s) for s in steps), single_connection=one_conn)
