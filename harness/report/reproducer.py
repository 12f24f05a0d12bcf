"""The last operations before a crash, and a standalone script that replays them against a fresh target.

The script uses only `spdk.rpc.client.JSONRPCClient` (pip install spdk), so it runs anywhere SPDK's own
rpc.py runs. `spdk-rpc` itself cannot be used: it has no way to send an arbitrary method with raw JSON
params (each method is an argparse subcommand with its own flags, and the fork's extra lvol methods are
not among them), so no `repro.sh` of `spdk-rpc` lines is written.
"""

from __future__ import annotations

import dataclasses
import pprint
from collections.abc import Iterable, Mapping
from typing import Any

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


def last_operations(history: Iterable[Any], *, before: float | None = None, per_worker: int = 20,
                    setup_limit: int = 200) -> list[dict[str, Any]]:
    """The last `per_worker` operations of every worker started before `before`, in start order.

    Setup calls (worker -1) are kept whole up to `setup_limit`: a fresh target needs its bdev and lvstore.
    """
    records = [as_record(r) for r in history]
    if before is not None:
        records = [r for r in records if float(r.get("t_start", 0.0)) <= before]
    by_worker: dict[int, list[dict[str, Any]]] = {}
    for rec in records:
        by_worker.setdefault(int(rec.get("worker", 0)), []).append(rec)
    kept: list[dict[str, Any]] = []
    for worker, recs in by_worker.items():
        recs.sort(key=lambda r: (float(r.get("t_start", 0.0)), int(r.get("seq", 0))))
        kept.extend(recs[-setup_limit:] if worker == -1 else recs[-per_worker:])
    kept.sort(key=lambda r: (float(r.get("t_start", 0.0)), int(r.get("worker", 0)), int(r.get("seq", 0))))
    return kept


def reproducer_script(operations: list[dict[str, Any]], title: str) -> str:
    """A standalone Python script: `python3 repro.py /var/tmp/spdk.sock` replays `operations` in order."""
    ops = [
        {"worker": op.get("worker"), "seq": op.get("seq"), "method": op["method"], "params": op.get("params"),
         "recorded": {"error": op["error"]} if op.get("error") is not None else {"result": op.get("result")}}
        for op in operations
    ]
    body = pprint.pformat(ops, width=110, sort_dicts=False)
    return f'''#!/usr/bin/env python3
"""Reproducer for: {title.replace('"', "'")}

Replays the {len(ops)} operations recorded before the crash, one at a time and in their recorded start
order, against a FRESH target (start spdk_tgt, then: python3 repro.py /var/tmp/spdk.sock).
Operations that ran concurrently in the storm run sequentially here; a race may need several runs.
Needs SPDK's Python client: pip install spdk (or PYTHONPATH=<spdk>/python).
"""

import json
import sys

from spdk.rpc.client import JSONRPCClient, JSONRPCException

OPERATIONS = {body}


def main() -> int:
    if len(sys.argv) != 2:
        print(f"usage: {{sys.argv[0]}} RPC_SOCKET_PATH", file=sys.stderr)
        return 2
    client = JSONRPCClient(sys.argv[1], timeout=60.0)
    for i, op in enumerate(OPERATIONS):
        params = json.loads(json.dumps(op["params"])) if op["params"] is not None else None
        print(f"[{{i}}] worker {{op['worker']}} {{op['method']}} {{json.dumps(params)}}", flush=True)
        try:
            result = client.call(op["method"], params)
            print(f"    -> {{json.dumps(result)[:200]}}   (recorded: {{json.dumps(op['recorded'])[:200]}})")
        except JSONRPCException as exc:
            print(f"    -> error {{exc.message.splitlines()[-1] if exc.message else exc}}"
                  f"   (recorded: {{json.dumps(op['recorded'])[:200]}})")
        except (OSError, ValueError) as exc:
            print(f"target stopped answering at operation {{i}} ({{op['method']}}): {{exc}}")
            return 1
    print("all operations replayed; check whether the target is still alive")
    return 0


if __name__ == "__main__":
    sys.exit(main())
'''
