"""`Operation`: one recorded RPC as replay and minimization see it, and its in-flight group.

A history line says which worker and connection sent a call and when it was outstanding (`t_start`..`t_end`).
Minimization needs both to replay faithfully: calls on one connection keep their order, and calls that were in
flight at the same instant are sent together again (pipelined on one connection or overlapping across
connections), because some crashes need that overlap. `index` is the line's position in the history file, a
stable identity across every cut the minimizer makes. `batch` marks calls the client wrote to the socket in
one write (`RpcConnection.cork()`): the target read them in one poll and started them all before any I/O
completed, so a delete written with a checksum meets the checksum's open blob; a replay sends them in one
write again (the minimizer may split the batch, like any group, when the crash does not need it).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.errors import ConfigError
from harness.history import HISTORY_VERSION, History, answered, execution_key

ConnKey = tuple[int, int]
"""(worker, conn): conn ids are only unique per worker (setup's SyncRpc and worker 0 both use conn 0)."""
BatchKey = tuple[int, int, str]
"""(worker, conn, batch id): a one-write batch, unique in its history."""


@dataclass(frozen=True)
class Operation:
    """One recorded call; `group` is its in-flight group (-1 until `assign_in_flight_groups`)."""

    index: int
    worker: int
    conn: int
    seq: int
    method: str
    params: Any
    t_start: float
    t_end: float
    result: Any = None
    error: dict[str, Any] | None = None
    group: int = -1
    batch: str | None = None
    """The one-write batch it was sent in (the history's `batch`), None when it was written alone."""
    episode: str | None = None
    """The strategy episode it was sent in (the history's `episode`), None for a plain mix call."""

    @property
    def conn_key(self) -> ConnKey:
        return (self.worker, self.conn)

    @property
    def batch_key(self) -> BatchKey | None:
        return None if self.batch is None else (self.worker, self.conn, self.batch)

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def answered(self) -> bool:
        """The target answered it (`history.answered`); False for a call in flight when the connection went
        away or timed out."""
        return answered(self._outcome())

    @property
    def execution_key(self) -> tuple[int, float, float]:
        return execution_key(self._outcome())

    def _outcome(self) -> dict[str, Any]:
        """The fields of its history line that the history's ordering rules read."""
        return {"t_start": self.t_start, "t_end": self.t_end, "error": self.error, "result": self.result}

    @classmethod
    def from_record(cls, index: int, record: dict[str, Any]) -> Operation:
        """A history line (or a repro.min.jsonl line, which adds `index` and `group`)."""
        try:
            return cls(
                index=int(record.get("index", index)), worker=int(record["worker"]), conn=int(record["conn"]),
                seq=int(record.get("seq", 0)), method=str(record["method"]), params=record.get("params"),
                t_start=float(record.get("t_start", 0.0)), t_end=float(record.get("t_end", 0.0)),
                result=record.get("result"), error=record.get("error"), group=int(record.get("group", -1)),
                batch=None if record.get("batch") is None else str(record["batch"]),
                episode=None if record.get("episode") is None else str(record["episode"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"history line {index + 1}: not an operation record ({exc!r}); "
                              "expected worker, conn, method, t_start, t_end") from exc

    def to_record(self) -> dict[str, Any]:
        """The history line plus `index` and `group`: what repro.min.jsonl holds (History.read reads it)."""
        out: dict[str, Any] = {"v": HISTORY_VERSION, "worker": self.worker, "conn": self.conn, "seq": self.seq,
                               "method": self.method, "params": self.params, "t_start": self.t_start,
                               "t_end": self.t_end}
        if self.error is not None:
            out["error"] = self.error
        else:
            out["result"] = self.result
        if self.batch is not None:
            out["batch"] = self.batch
        if self.episode is not None:
            out["episode"] = self.episode
        out["index"] = self.index
        out["group"] = self.group
        return out

    def describe(self) -> str:
        answer = (f"error {self.error.get('errno') or self.error.get('code')}" if self.error is not None
                  else json.dumps(self.result)[:60])
        batch = f" [batch {self.batch}]" if self.batch is not None else ""
        return (f"#{self.index} w{self.worker}/c{self.conn}{batch} {self.method} {json.dumps(self.params)} "
                f"-> {answer}")


def start_order(ops: Iterable[Operation]) -> list[Operation]:
    """Issue order: start time, then the per-worker seq (taken at send time), then file position."""
    return sorted(ops, key=lambda op: (op.t_start, op.worker, op.seq, op.index))


def execution_order(ops: Iterable[Operation]) -> list[Operation]:
    """The order the target most likely executed them in (`history.execution_key`): answered calls by reply
    time, then the calls in flight when it died, in send order.

    SPDK serves RPCs on one reactor, so replies come back in execution order; the send order (`t_start`) of
    calls in flight on different connections says nothing about which one the target ran first, and a serial
    replay in send order diverges from the recording (a delete that failed ENODEV now succeeds, and so on).
    A call that used an earlier answer was sent after that answer, so it also ends after it."""
    return sorted(ops, key=lambda op: (*op.execution_key, op.worker, op.seq, op.index))


def load_operations(path: str | Path) -> list[Operation]:
    """Every record of a history file (or repro.min.jsonl) in issue order; History.read checks the version."""
    ops = [Operation.from_record(i, rec) for i, rec in enumerate(History.read(path))]
    return start_order(ops)


def before(ops: Sequence[Operation], t: float) -> list[Operation]:
    """Operations sent no later than `t` (the crash's detection time): everything after it is not the cause."""
    return [op for op in ops if op.t_start <= t]


def assign_in_flight_groups(ops: Sequence[Operation]) -> list[Operation]:
    """Give every operation the id of its in-flight group, in issue order.

    A group is a run of consecutive operations that were all outstanding at one common instant (each started
    before any of them ended): those were pipelined or overlapping, and replay sends them together. The next
    operation starts a new group as soon as some member of the current one had already ended when it was sent
    (its sender could have seen that reply). Transitive overlap is not enough: with eight busy workers every
    call overlaps some other, and one giant group would say nothing. The calls of one one-write batch are
    always in one group (a reply can arrive between two of their sends only if the clock says so wrongly).
    """
    out: list[Operation] = []
    group = -1
    min_end = float("-inf")
    seen_batches: set[BatchKey] = set()
    for op in start_order(ops):
        key = op.batch_key
        if (op.t_start >= min_end and key not in seen_batches) or not out:
            group += 1
            min_end = op.t_end
        else:
            min_end = min(min_end, op.t_end)
        if key is not None:
            seen_batches.add(key)
        out.append(dataclasses.replace(op, group=group))
    return out


def groups_of(ops: Sequence[Operation]) -> Iterator[list[Operation]]:
    """Consecutive runs of one group id, in issue order (what a grouped replay sends together)."""
    current: list[Operation] = []
    for op in start_order(ops):
        if current and op.group != current[0].group:
            yield current
            current = []
        current.append(op)
    if current:
        yield current


def workers_of(ops: Iterable[Operation]) -> list[int]:
    return sorted({op.worker for op in ops})


def batches_of(ops: Iterable[Operation]) -> dict[BatchKey, list[Operation]]:
    """Every one-write batch with two or more of `ops` in it, its calls in send order."""
    out: dict[BatchKey, list[Operation]] = {}
    for op in start_order(ops):
        key = op.batch_key
        if key is not None:
            out.setdefault(key, []).append(op)
    # One worker's seq is taken at send time: the order the batch was written in.
    return {key: sorted(members, key=lambda op: (op.seq, op.index)) for key, members in out.items()
            if len(members) > 1}
