"""Re-issue a storm's history against a (fresh) target, with lvol UUIDs remapped.

A replayed create returns a new UUID; every later operation that named the old one names the new one. Setup
calls (worker -1: base bdevs, lvstores) are skipped unless asked for, since the caller prepares the target.
`serial` sends everything on one connection in the original send order (deterministic); `workers` gives each
original worker its own connection and sends its operations in its own order, all workers at once (the
overlaps of the original run are approximated, not reproduced).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.history import SETUP_WORKER, History
from harness.hosts.base import Host
from harness.rpc.client import RpcConnection
from harness.rpc.errors import RpcConnectionLost, RpcError, RpcTimeout
from harness.storm.operations import CREATES

# Calls the engine makes for itself that are not part of the operation stream.
_SKIP_METHODS = frozenset({"rpc_get_methods", "spdk_get_version"})


@dataclass
class ReplayResult:
    """How a replay went: ops sent, outcomes that differ from the recording, the UUID map, why it stopped."""

    ops: int = 0
    differences: list[dict[str, Any]] = field(default_factory=list)
    uuid_map: dict[str, str] = field(default_factory=dict)
    stop_reason: str = "end"
    wall_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"ops": self.ops, "differences": self.differences, "uuid_map": self.uuid_map,
                "stop_reason": self.stop_reason, "wall_s": round(self.wall_s, 3)}


def _outcome_of(record: dict[str, Any]) -> str:
    err = record.get("error")
    if err is None:
        return "ok"
    return err.get("errno") or f"code {err.get('code')}"


def remap(value: Any, uuid_map: dict[str, str]) -> Any:
    """`value` with every old UUID (alone, or as the tail of an alias) replaced by its new one."""
    if isinstance(value, str):
        if value in uuid_map:
            return uuid_map[value]
        return value
    if isinstance(value, dict):
        return {k: remap(v, uuid_map) for k, v in value.items()}
    if isinstance(value, list):
        return [remap(v, uuid_map) for v in value]
    return value


def load_operations(history_path: str | Path, *, include_setup: bool = False) -> list[dict[str, Any]]:
    """The recorded operations in send order (per-worker `seq`, then `t_start`)."""
    records = [r for r in History.read(history_path)
               if r.get("method") not in _SKIP_METHODS and (include_setup or r.get("worker") != SETUP_WORKER)]
    records.sort(key=lambda r: (r.get("t_start", 0.0), r.get("worker", 0), r.get("seq", 0)))
    return records


class _Replayer:
    def __init__(self, records: list[dict[str, Any]], timeout: float) -> None:
        self.records = records
        self.timeout = timeout
        self.result = ReplayResult()
        self.created: dict[str, asyncio.Event] = {}
        self.stopped = False

    def _old_created_uuids(self) -> set[str]:
        return {r["result"] for r in self.records
                if r.get("method") in CREATES and isinstance(r.get("result"), str) and "error" not in r}

    async def send(self, conn: RpcConnection, rec: dict[str, Any], wait_for: set[str]) -> None:
        params = rec.get("params")
        pending = [u for u in _uuids_in(params, wait_for) if u not in self.result.uuid_map]
        for u in pending:  # in workers mode another worker may not have created it yet
            ev = self.created.setdefault(u, asyncio.Event())
            try:
                await asyncio.wait_for(ev.wait(), timeout=2.0)
            except TimeoutError:
                pass
        params = remap(params, self.result.uuid_map)
        method = rec["method"]
        self.result.ops += 1
        try:
            got = await conn.call(method, params, timeout=self.timeout)
            outcome = "ok"
        except (RpcConnectionLost, RpcTimeout) as exc:
            self.stopped = True
            self.result.stop_reason = "connection_lost" if isinstance(exc, RpcConnectionLost) else "unresponsive"
            raise
        except RpcError as exc:
            got, outcome = None, exc.errno_name or f"code {exc.code}"
        old = rec.get("result")
        if outcome == "ok" and method in CREATES and isinstance(old, str) and isinstance(got, str):
            self.result.uuid_map[old] = got
            ev = self.created.setdefault(old, asyncio.Event())
            ev.set()
        recorded = _outcome_of(rec)
        if recorded != outcome:
            self.result.differences.append({"method": method, "params": params, "worker": rec.get("worker"),
                                            "seq": rec.get("seq"), "recorded": recorded, "replayed": outcome})
        elif method in CREATES and isinstance(old, str) and outcome != "ok":
            ev = self.created.setdefault(old, asyncio.Event())
            ev.set()


def _uuids_in(value: Any, known: set[str]) -> list[str]:
    if isinstance(value, str):
        return [value] if value in known else []
    if isinstance(value, dict):
        return [u for v in value.values() for u in _uuids_in(v, known)]
    if isinstance(value, list):
        return [u for v in value for u in _uuids_in(v, known)]
    return []


async def replay(history_path: str | Path, host: Host, sock_path: str, mode: str = "serial", *,
                 history: History | None = None, timeout: float = 30.0,
                 include_setup: bool = False) -> ReplayResult:
    """Replay a history file against the target at `sock_path`; see the module docstring for `mode`."""
    if mode not in ("serial", "workers"):
        raise ValueError(f"replay mode: expected serial or workers, got {mode!r}")
    records = load_operations(history_path, include_setup=include_setup)
    rp = _Replayer(records, timeout)
    known = rp._old_created_uuids()
    t0 = time.monotonic()
    conns: list[RpcConnection] = []
    try:
        if mode == "serial":
            conn = await RpcConnection.open(host, sock_path, history=history, worker=0, conn=0)
            conns.append(conn)
            for rec in records:
                try:
                    await rp.send(conn, rec, known)
                except (RpcConnectionLost, RpcTimeout):
                    break
        else:
            by_worker: dict[int, list[dict[str, Any]]] = {}
            for rec in records:
                by_worker.setdefault(int(rec.get("worker", 0)), []).append(rec)

            async def run_worker(w: int, recs: list[dict[str, Any]]) -> None:
                conn = await RpcConnection.open(host, sock_path, history=history, worker=w, conn=w)
                conns.append(conn)
                for rec in sorted(recs, key=lambda r: (r.get("seq", 0), r.get("t_start", 0.0))):
                    if rp.stopped:
                        return
                    try:
                        await rp.send(conn, rec, known)
                    except (RpcConnectionLost, RpcTimeout):
                        return

            await asyncio.gather(*(run_worker(w, recs) for w, recs in sorted(by_worker.items())))
    finally:
        for c in conns:
            try:
                await asyncio.wait_for(c.close(), timeout=1.0)
            except Exception:
                pass
    rp.result.wall_s = time.monotonic() - t0
    return rp.result


def replay_sync(history_path: str | Path, host: Host, sock_path: str, mode: str = "serial",
                **kwargs: Any) -> ReplayResult:
    return asyncio.run(replay(history_path, host, sock_path, mode, **kwargs))
