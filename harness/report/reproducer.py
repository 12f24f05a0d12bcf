"""The last operations before a crash, and a standalone script that replays them against a fresh target.

The script uses only `spdk.rpc.client.JSONRPCClient` (pip install spdk), so it runs anywhere SPDK's own
rpc.py runs. `spdk-rpc` itself cannot be used: it has no way to send an arbitrary method with raw JSON
params (each method is an argparse subcommand with its own flags, and the fork's extra lvol methods are
not among them), so no `repro.sh` of `spdk-rpc` lines is written.
"""

from __future__ import annotations

import bisect
import dataclasses
import pprint
from collections.abc import Iterable, Mapping
from typing import Any

from harness.history import answered, execution_key
from harness.outcome import EXIT_REPRODUCED

SPDK_RPC_NOTE = (
    "python reproducer only: `spdk-rpc` (PyPI spdk) cannot send a method with raw JSON params, and the "
    "Longhorn fork's bdev_lvol_* extras have no spdk-rpc subcommand"
)


def as_record(item: Any) -> dict[str, Any]:
    """A history record as the dict `history.jsonl` holds (dicts, dataclasses, pydantic models, objects)."""
    if isinstance(item, Mapping):
        return dict(item)
    if dataclasses.is_dataclass(item) and not isinstance(item, type):
        return dataclasses.asdict(item)
    for method in ("to_json", "to_dict", "model_dump", "as_dict"):
        fn = getattr(item, method, None)
        if callable(fn):
            out = fn()
            if isinstance(out, Mapping):
                return dict(out)
    return dict(vars(item))


# Which parameter of a successful call names the object it made (SPDK's own parameter names).
_PRODUCED_NAME = {
    "bdev_malloc_create": "name",
    "bdev_aio_create": "name",
    "bdev_lvol_create_lvstore": "lvs_name",
    "bdev_lvol_create": "lvol_name",
    "bdev_lvol_snapshot": "snapshot_name",
    "bdev_lvol_clone": "clone_name",
    "bdev_lvol_clone_bdev": "clone_name",
    "bdev_lvol_rename": "new_name",
    "bdev_lvol_rename_lvstore": "new_name",
}


_SETUP_METHODS = {"bdev_malloc_create", "bdev_aio_create", "bdev_lvol_create_lvstore", "bdev_nvme_attach_controller"}


def _produced(rec: dict[str, Any]) -> set[str]:
    """Names and UUIDs a successful call created (the values later calls refer to)."""
    if rec.get("error") is not None:
        return set()
    out: set[str] = set()
    if isinstance(rec.get("result"), str) and rec["result"]:
        out.add(rec["result"])
    key = _PRODUCED_NAME.get(str(rec.get("method")))
    params = rec.get("params") or {}
    if key and isinstance(params, Mapping) and isinstance(params.get(key), str):
        out.add(params[key])
    return out


def _mutating(rec: Mapping[str, Any]) -> bool:
    method = str(rec.get("method", ""))
    return not ("_get_" in method or method.startswith(("bdev_get", "rpc_get", "spdk_get")) or
                method.startswith("bdev_lvol_check"))


def _consumed(rec: dict[str, Any]) -> set[str]:
    """Every string in the parameters, and both halves of `lvs/lvol` names."""
    out: set[str] = set()

    def walk(value: Any) -> None:
        if isinstance(value, str):
            out.add(value)
            if "/" in value:
                out.update(part for part in value.split("/", 1) if part)
        elif isinstance(value, Mapping):
            for v in value.values():
                walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)

    walk(rec.get("params"))
    key = _PRODUCED_NAME.get(str(rec.get("method")))
    params = rec.get("params") or {}
    if key and isinstance(params, Mapping) and params.get(key) in out:
        out.discard(params[key])  # the name it is about to create is not a reference
    return out


def last_operations(history: Iterable[Any], *, before: float | None = None, per_worker: int = 20,
                    setup_limit: int = 200, dependencies: bool = True, limit: int = 2000) -> list[dict[str, Any]]:
    """The last `per_worker` operations of every worker started before `before`, in replay order.

    Setup calls (worker -1) are kept whole up to `setup_limit`: a fresh target needs its bdev and lvstore.
    With `dependencies`, the calls that created what those operations name (an lvol's create, the snapshot
    a clone is made of, recursively) and the successful changes to those objects since (other clones of
    that snapshot) are added from the rest of the history, so a replay on a fresh target finds the objects
    it acts on in the state they were in.
    """
    records = [as_record(r) for r in history]
    if before is not None:
        records = [r for r in records if float(r.get("t_start", 0.0)) <= before]

    def order(r: dict[str, Any]) -> tuple[float, int, int]:
        return (float(r.get("t_start", 0.0)), int(r.get("worker", 0)), int(r.get("seq", 0)))

    records.sort(key=order)
    by_worker: dict[int, list[int]] = {}
    for index, rec in enumerate(records):
        by_worker.setdefault(int(rec.get("worker", 0)), []).append(index)
    chosen: set[int] = set()
    for worker, indexes in by_worker.items():
        chosen.update(indexes[-setup_limit:] if worker == -1 else indexes[-per_worker:])
    if dependencies:
        chosen |= _dependencies(records, sorted(chosen), limit)
    return sorted((records[i] for i in chosen), key=execution_key)


def _dependencies(records: list[dict[str, Any]], start: list[int], limit: int) -> set[int]:
    """The calls that made what `start`'s calls name, and every successful change to those objects since,
    recursively (at most `limit` calls in all). Indexed by name: a kill -9 at the end of a long storm has a
    10,000-call tail, and a scan back through it per call took half a minute."""
    # the lvstore and base bdev are named by every call: a change "to" them is no dependency
    shared = set().union(*(_produced(r) for r in records
                           if int(r.get("worker", 0)) == -1 or r.get("method") in _SETUP_METHODS))
    consumed = [_consumed(r) for r in records]
    makers: dict[str, list[int]] = {}
    changers: dict[str, list[int]] = {}
    for i, rec in enumerate(records):
        for name in _produced(rec):
            makers.setdefault(name, []).append(i)
        if _mutating(rec) and answered(rec) and rec.get("error") is None:
            for name in consumed[i] - shared:
                changers.setdefault(name, []).append(i)
    chosen = set(start)
    pending = list(start)
    while pending and len(chosen) < limit:
        index = pending.pop()
        for name in consumed[index]:
            made_at = makers.get(name, [])
            k = bisect.bisect_left(made_at, index) - 1
            maker = made_at[k] if k >= 0 else -1
            found = [maker] if maker >= 0 else []
            if name not in shared:
                changed_at = changers.get(name, [])
                found += changed_at[bisect.bisect_right(changed_at, maker):bisect.bisect_left(changed_at, index)]
            for earlier in sorted(found, reverse=True):
                if earlier not in chosen and len(chosen) < limit:
                    chosen.add(earlier)
                    pending.append(earlier)
    return chosen


def reproducer_script(operations: list[dict[str, Any]], title: str) -> str:
    """A standalone Python script: `python3 repro.py /var/tmp/spdk.sock` replays `operations` in order.

    UUIDs differ on a fresh target, so each string a call returned (an lvol's or lvstore's UUID) is
    remembered and replaced by the fresh target's answer wherever later parameters use it.
    """
    ops = [
        {"worker": op.get("worker"), "seq": op.get("seq"), "method": op["method"], "params": op.get("params"),
         "recorded": {"error": op["error"]} if op.get("error") is not None else {"result": op.get("result")}}
        | ({"batch": op["batch"]} if op.get("batch") else {})
        for op in operations
    ]
    body = pprint.pformat(ops, width=110, sort_dicts=False)
    return f'''#!/usr/bin/env python3
"""Reproducer for: {title.replace('"', "'")}

Replays the {len(ops)} operations recorded before the crash, one at a time and in their recorded start
order, against a FRESH target (start spdk_tgt, then: python3 repro.py /var/tmp/spdk.sock).
Operations that ran concurrently in the storm run sequentially here, in the order the target answered
them, except calls the storm wrote to the socket together ("batch"): they go in ONE write again, so the
target reads them in one poll and starts them before any I/O completes (a delete meeting a checksum's open
snapshot needs that). The calls at the end got no answer (in flight when it died, one of them killed it)
and their order is unknown: if the replay survives, reorder those (`lvol-storm minimize` does this).
UUIDs returned by the recorded calls are mapped to the ones the fresh target returns.
Exit status: {EXIT_REPRODUCED} the target closed the connection or stopped answering (reproduced), 0 it answered
every call, 2 bad usage or no target to connect to.
Needs SPDK's Python client: pip install spdk (or PYTHONPATH=<spdk>/python).
"""

import json
import sys

from spdk.rpc.client import JSONRPCClient, JSONRPCException

OPERATIONS = {body}

RENAMED = {{}}  # recorded answer (a UUID) -> the fresh target's answer


def renamed(value):
    if isinstance(value, str):
        for old, new in RENAMED.items():
            value = value.replace(old, new)
        return value
    if isinstance(value, list):
        return [renamed(v) for v in value]
    if isinstance(value, dict):
        return {{k: renamed(v) for k, v in value.items()}}
    return value


def error_text(exc):
    text = exc.message or str(exc)
    if "response:" in text:
        try:
            err = json.loads(text.split("response:", 1)[1])
            return f"{{err.get('code')}} {{err.get('message')}}"
        except ValueError:
            pass
    return text.strip().splitlines()[-1] if text.strip() else repr(exc)


def main():
    if len(sys.argv) != 2:
        print(f"usage: {{sys.argv[0]}} RPC_SOCKET_PATH", file=sys.stderr)
        return 2
    try:
        client = JSONRPCClient(sys.argv[1], timeout=60.0)
    except Exception as exc:
        print(f"cannot connect to {{sys.argv[1]}}: {{exc}} (start a fresh target first)", file=sys.stderr)
        return 2
    sent_already = set()
    for i, op in enumerate(OPERATIONS):
        if i in sent_already:
            continue
        batch = [j for j, o in enumerate(OPERATIONS) if op.get("batch") and o.get("batch") == op["batch"]] or [i]
        sent_already.update(batch)
        ids = []
        for j in batch:
            o = OPERATIONS[j]
            params = renamed(o["params"]) if o["params"] is not None else None
            together = f" (one write: {{len(batch)}} calls)" if len(batch) > 1 else ""
            print(f"[{{j}}] worker {{o['worker']}} {{o['method']}} {{json.dumps(params)}}{{together}}", flush=True)
            ids.append((j, client.add_request(o["method"], params)))
        replies = {{}}
        try:
            client.flush()
            while len(replies) < len(ids):  # a batch may be answered out of order (a checksum after the delete)
                reply = client.recv()
                replies[reply.get("id")] = reply
        except JSONRPCException as exc:
            if not client.sock:
                print(f"    -> error {{error_text(exc)}}")
                print(f"target closed the connection at operation {{i}} ({{op['method']}}): REPRODUCED")
                return {EXIT_REPRODUCED}
            print(f"target stopped answering at operation {{i}} ({{op['method']}}): {{error_text(exc)}}: REPRODUCED")
            return {EXIT_REPRODUCED}
        except (OSError, ValueError) as exc:
            print(f"target stopped answering at operation {{i}} ({{op['method']}}): {{exc}}: REPRODUCED")
            return {EXIT_REPRODUCED}
        for j, rid in ids:
            o = OPERATIONS[j]
            reply = replies[rid]
            recorded = json.dumps(o["recorded"])[:200]
            if "error" in reply:
                err = reply["error"]
                print(f"    [{{j}}] -> error {{err.get('code')}} {{err.get('message')}}   (recorded: {{recorded}})")
                continue
            result = reply.get("result")
            old = o["recorded"].get("result")
            if isinstance(old, str) and isinstance(result, str) and old and old != result:
                RENAMED[old] = result
            print(f"    [{{j}}] -> {{json.dumps(result)[:200]}}   (recorded: {{recorded}})")
    print("all operations replayed and answered: NOT reproduced (check whether the target is still alive)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
'''
