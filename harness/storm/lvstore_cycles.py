"""Lvstore cycles a storm runs exclusively (nothing else in flight): delete the lvstore with its whole tree and
make it again, or unload it (hot-remove its aio base bdev) and load it again from the file, after which what
is on disk must come back exactly as the model has it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

from harness.rpc.errors import RpcError
from harness.storm.checker import Finding
from harness.storm.control import Stopping, StormControl, Worker
from harness.storm.operations import Op


async def recreate_lvstore(storm: StormControl, worker: Worker) -> None:
    """Delete the lvstore with everything in it and make it again on the same bdev (exclusive only)."""
    lvs, checker = storm.lvs, storm.checker
    conn = worker.conn
    name = storm.sched.lvs_name
    op = Op("bdev_lvol_delete_lvstore", {"lvs_name": name}, worker.index, label="lvstore-delete-with-tree")
    await storm.plain(op, conn)
    if not op.ok:
        return
    create = Op("bdev_lvol_create_lvstore", {"bdev_name": lvs.base_bdev, "lvs_name": storm.lvs_name,
                                             "cluster_sz": lvs.cluster_size},
                worker.index, label="lvstore-delete-with-tree")
    await storm.plain(create, conn)
    if not create.ok:
        checker.add(Finding("lvstore-recreate-failed", f"could not recreate the lvstore: "
                                 f"{create.error_message}", create.record()))
        storm.stop("connection_lost")
        raise Stopping
    storm.sched.lvs_name = storm.lvs_name
    await storm.resync(initial=True)

async def _base_info(storm: StormControl, worker: Worker) -> dict[str, Any] | str:
    """The lvstore's base bdev as bdev_get_bdevs shows it, or why it cannot be reloaded."""
    base = storm.lvs.base_bdev
    try:
        info = (await worker.conn.call("bdev_get_bdevs", {"name": base}, timeout=storm.cfg.op_timeout))[0]
    except RpcError as exc:
        return f"bdev_get_bdevs {base}: {exc}"
    aio = (info.get("driver_specific") or {}).get("aio")
    if not isinstance(aio, dict) or not aio.get("filename"):
        return f"base bdev {base} is not an aio bdev (bdev.kind: aio reloads; malloc would lose the data)"
    return info


async def reload_blocker(storm: StormControl, worker: Worker) -> str | None:
    """Why `reload_lvstore` would not happen (the base bdev is not an aio bdev), or None. Asked outside the
    exclusive section, where another episode's reload may have the base bdev away for a moment: only a base
    bdev that answers and is no aio bdev blocks."""
    base = storm.lvs.base_bdev
    try:
        info = (await worker.conn.call("bdev_get_bdevs", {"name": base}, timeout=storm.cfg.op_timeout))[0]
    except RpcError:
        return None
    aio = (info.get("driver_specific") or {}).get("aio")
    return None if isinstance(aio, dict) and aio.get("filename") else \
        f"base bdev {base} is not an aio bdev (bdev.kind: aio reloads; malloc would lose the data)"


async def reload_lvstore(storm: StormControl, worker: Worker,
                         while_unloaded: Callable[[], Awaitable[None]] | None = None) -> str | None:
    """Unload the lvstore by hot-removing its aio base bdev, make the bdev again on the same file and let
    the examine load it (exclusive only): what is on disk must come back exactly as the model has it (esnap
    clones of an external snapshot missing now degraded). `while_unloaded` runs between the two (an episode
    deletes an external snapshot there). Returns why it did not happen (not aio, a refused step), or None."""
    lvs, checker = storm.lvs, storm.checker
    conn, t = worker.conn, storm.cfg.op_timeout
    base = lvs.base_bdev
    info = await _base_info(storm, worker)
    if isinstance(info, str):
        return info
    aio = info["driver_specific"]["aio"]
    checker.settle()
    name = storm.sched.lvs_name
    delete = Op("bdev_aio_delete", {"name": base}, worker.index, label="lvstore-reload")
    await storm.plain(delete, conn)
    if not delete.ok:
        return f"bdev_aio_delete {base} answered {delete.outcome}"
    gone = False
    for _ in range(100):  # the unload finishes after the delete answers on some builds: 5 s at most
        try:
            await conn.call("bdev_lvol_get_lvstores", {"lvs_name": name}, timeout=t)
        except RpcError:
            gone = True
            break
        await asyncio.sleep(0.05)
    if while_unloaded is not None:
        await while_unloaded()
    params: dict[str, Any] = {"filename": aio["filename"], "name": base}
    if aio.get("block_size_override"):
        params["block_size"] = info.get("block_size")
    create = Op("bdev_aio_create", params, worker.index, label="lvstore-reload")
    await storm.plain(create, conn)
    stores: list[dict[str, Any]] = []
    if create.ok:
        await conn.call("bdev_wait_for_examine", None, timeout=t)
        with contextlib.suppress(RpcError):
            stores = await conn.call("bdev_lvol_get_lvstores", {"lvs_name": name}, timeout=t)
    if not gone or not stores or stores[0].get("uuid") != lvs.uuid:
        why = ("the lvstore was still listed 5 s after its base bdev was deleted" if not gone else
               f"bdev_aio_create answered {create.outcome}" if not create.ok else
               f"after the reload bdev_lvol_get_lvstores {name} shows {stores or 'nothing'}, "
               f"not lvstore {lvs.uuid}")
        checker.add(Finding("lvstore-reload-failed", f"unload and reload of lvstore {name} on {base}: "
                                 f"{why}", create.record()))
        storm.stop("lvstore_lost")
        raise Stopping
    checker.on_reload()
    for finding in await storm.resync():
        checker.add(finding)
    return None
