"""Named strategies: short scripted episodes that set up one race Longhorn can hit and fire it.

Each episode builds its own small tree with its own names (so it is deterministic per worker seed), races two
or more operations on two connections (`peer=True` sends on another worker's connection), and deletes what is
left. What an episode creates is held out of the random mix's picks until it ends, so the overlap it arranges is
not spoiled by a random clone or delete of its tree. The checker judges every reply; an episode only arranges
for the interesting overlap to happen, and notes (`ctx.note`) why when it could not.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Coroutine
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

from harness.storm.operations import Op


class EpisodeContext(Protocol):
    """What an episode may do: send operations (on its own or a peer connection) and name new lvols."""

    rng: random.Random

    @property
    def lvs_name(self) -> str: ...

    def name(self, kind: str) -> str: ...

    def size_mib(self) -> int: ...

    async def reserve_busy_size(self, max_mib: int | None = None) -> int | None: ...

    def note(self, reason: str) -> None: ...

    def exists(self, uuid: str) -> bool: ...

    async def pipelined(self, *calls: tuple[str, dict[str, Any]], peer: bool = False) -> list[Op]: ...

    def has(self, method: str) -> bool: ...

    async def do(self, method: str, params: dict[str, Any], *, peer: bool = False) -> Op: ...

    async def cleanup(self, uuids: list[str]) -> None: ...

    def exclusive(self) -> AbstractAsyncContextManager[None]: ...

    def pick_existing(self, kind: str) -> str | None: ...

    @property
    def copy_dst(self) -> str | None: ...

    @property
    def copy_dst_mib(self) -> int: ...

    async def recreate_lvstore(self) -> None: ...

    async def reload_lvstore(self) -> str | None: ...


Strategy = Callable[[EpisodeContext], Awaitable[None]]


async def _race(*coros: Coroutine[Any, Any, Op]) -> list[Op]:
    """Send all at once: each goes out before any reply is read, so they overlap inside the target."""
    return list(await asyncio.gather(*coros))


async def _create(ctx: EpisodeContext, thin: bool = True, size: int | None = None) -> Op:
    return await ctx.do("bdev_lvol_create", {
        "lvs_name": ctx.lvs_name, "lvol_name": ctx.name("v"), "size_in_mib": size or ctx.size_mib(),
        "thin_provision": thin,
    })


async def _snapshot(ctx: EpisodeContext, uuid: str) -> Op:
    return await ctx.do("bdev_lvol_snapshot", {"lvol_name": uuid, "snapshot_name": ctx.name("s")})


def _clone(ctx: EpisodeContext, snap: str, *, peer: bool = False) -> Coroutine[Any, Any, Op]:
    return ctx.do("bdev_lvol_clone", {"snapshot_name": snap, "clone_name": ctx.name("c")}, peer=peer)


def _uuids(*ops: Op) -> list[str]:
    return [op.result for op in ops if op.ok and isinstance(op.result, str)]


async def _lvol_with_snapshot(ctx: EpisodeContext) -> tuple[Op, Op] | None:
    lvol = await _create(ctx, thin=ctx.rng.random() < 0.5)
    if not lvol.ok:
        return None
    snap = await _snapshot(ctx, lvol.result)
    if not snap.ok:
        await ctx.cleanup(_uuids(lvol))
        return None
    return lvol, snap


async def delete_vs_clone(ctx: EpisodeContext) -> None:
    """Delete a snapshot while a clone of it is being created (0 or 1 existing clones: the answer is a race)."""
    base = await _lvol_with_snapshot(ctx)
    if base is None:
        return
    lvol, snap = base
    extra = []
    if ctx.rng.random() < 0.5:
        extra.append(await _clone(ctx, snap.result))
    delete = ctx.do("bdev_lvol_delete", {"name": snap.result})
    clone = _clone(ctx, snap.result, peer=True)
    ops = await _race(delete, clone)
    await ctx.cleanup(_uuids(ops[1], *extra, lvol, snap))


async def double_delete(ctx: EpisodeContext) -> None:
    """The same lvol deleted from two connections at once: exactly one may succeed."""
    target = None
    if ctx.rng.random() < 0.3:
        target = ctx.pick_existing("leaf")
    if target is None:
        lvol = await _create(ctx, thin=ctx.rng.random() < 0.5)
        if not lvol.ok:
            return
        target = lvol.result
    await _race(ctx.do("bdev_lvol_delete", {"name": target}),
                ctx.do("bdev_lvol_delete", {"name": target}, peer=True))
    await ctx.cleanup([target])


async def delete_vs_snapshot(ctx: EpisodeContext) -> None:
    """Snapshot an lvol while it is being deleted."""
    lvol = await _create(ctx, thin=ctx.rng.random() < 0.5)
    if not lvol.ok:
        return
    ops = await _race(ctx.do("bdev_lvol_delete", {"name": lvol.result}),
                      ctx.do("bdev_lvol_snapshot", {"lvol_name": lvol.result, "snapshot_name": ctx.name("s")},
                             peer=True))
    await ctx.cleanup(_uuids(lvol, ops[1]))


async def delete_vs_checksum(ctx: EpisodeContext) -> None:
    """Delete a snapshot while its checksum is being registered on another connection."""
    if not ctx.has("bdev_lvol_register_snapshot_checksum"):
        return await delete_vs_snapshot(ctx)
    base = await _lvol_with_snapshot(ctx)
    if base is None:
        return
    lvol, snap = base
    await _race(ctx.do("bdev_lvol_register_snapshot_checksum", {"name": snap.result}, peer=True),
                ctx.do("bdev_lvol_delete", {"name": snap.result}))
    await ctx.cleanup(_uuids(lvol, snap))


async def delete_vs_xattr(ctx: EpisodeContext) -> None:
    """Set/get an xattr on an lvol (and its snapshot) while it is deleted."""
    if not ctx.has("bdev_lvol_set_xattr"):
        return await delete_vs_snapshot(ctx)
    lvol = await _create(ctx, thin=True)
    if not lvol.ok:
        return
    await _race(ctx.do("bdev_lvol_set_xattr", {"name": lvol.result, "xattr_name": "storm",
                                               "xattr_value": ctx.name("x")}, peer=True),
                ctx.do("bdev_lvol_delete", {"name": lvol.result}))
    await ctx.cleanup(_uuids(lvol))


async def delete_during_lvstore_rename(ctx: EpisodeContext) -> None:
    """Rename the lvstore while an lvol in it is deleted and another is created, then rename it back."""
    lvol = await _create(ctx, thin=True)
    if not lvol.ok:
        return
    old = ctx.lvs_name
    new = f"{old}_r"
    async with ctx.exclusive():
        ops = await _race(
            ctx.do("bdev_lvol_rename_lvstore", {"old_name": old, "new_name": new}, peer=True),
            ctx.do("bdev_lvol_delete", {"name": lvol.result}),
        )
        if ops[0].ok:
            await ctx.do("bdev_lvol_rename_lvstore", {"old_name": new, "new_name": old})
    await ctx.cleanup(_uuids(lvol))


async def purge_chain(ctx: EpisodeContext) -> None:
    """Delete a snapshot with exactly one child (Longhorn's snapshot purge): the child moves up."""
    lvol = await _create(ctx, thin=ctx.rng.random() < 0.5)
    if not lvol.ok:
        return
    s1 = await _snapshot(ctx, lvol.result)
    s2 = await _snapshot(ctx, lvol.result)
    if s2.ok:
        await ctx.do("bdev_lvol_delete", {"name": s2.result})
        await ctx.do("bdev_get_bdevs", {"name": lvol.result})
    await ctx.cleanup(_uuids(lvol, s2, s1))


async def busy_delete(ctx: EpisodeContext) -> None:
    """Make a snapshot busy (checksum or shallow copy), delete it, then delete its child and its parent as
    Longhorn does when it removes a volume: the sequence that exposes SPDK's forced removal of a busy lvol
    (the busy delete answers EBUSY but removes the lvol; deleting the parent, whose only clone is the removed
    blob, then crashes in spdk_lvol_destroy).

    The busy snapshot S needs its own clusters (so the job outlasts the delete behind it) and a parent P whose
    only clone it is, built without I/O: thick L -> snapshot P -> decouple L (L keeps P's clusters, stays
    thin) -> set_parent(L, P) -> snapshot S of L (S takes L's clusters, under P; L under S). The job and the
    delete go out back to back on one connection, so the delete meets the job whatever the target's poller
    does. Every step that makes the rest pointless is noted (StormResult.notes) instead of skipped silently.
    The tree is the episode's own: the random mix does not pick it while the episode runs."""
    if ctx.has("bdev_lvol_start_shallow_copy") and ctx.copy_dst and ctx.rng.random() < 0.3:
        busy_method = "bdev_lvol_start_shallow_copy"
    elif ctx.has("bdev_lvol_register_snapshot_checksum"):
        busy_method = "bdev_lvol_register_snapshot_checksum"
    else:
        ctx.note("the target has neither snapshot checksums nor shallow copies")
        return
    # A shallow copy needs a destination at least as large as the snapshot.
    big = await ctx.reserve_busy_size(ctx.copy_dst_mib if busy_method == "bdev_lvol_start_shallow_copy" else None)
    if big is None:
        return
    lvol = await _create(ctx, thin=False, size=big)
    if not lvol.ok:
        ctx.note(f"thick create of {big} MiB answered {lvol.outcome}")
        return
    p = await _snapshot(ctx, lvol.result)
    made = [lvol, p]
    steps: list[Op] = [p]
    if p.ok:
        steps.append(await ctx.do("bdev_lvol_decouple_parent", {"name": lvol.result}))
    if steps[-1].ok:
        steps.append(await ctx.do("bdev_lvol_set_parent", {"lvol_name": lvol.result, "parent_name": p.result}))
    if steps[-1].ok:
        snap = await _snapshot(ctx, lvol.result)
        made.append(snap)
        steps.append(snap)
    failed = next((o for o in steps if not o.ok), None)
    if failed is not None:
        ctx.note(f"building the busy tree: {failed.method} answered {failed.outcome}")
        await ctx.cleanup(_uuids(*reversed(made)))
        return
    s_uuid = snap.result
    params = ({"src_lvol_name": s_uuid, "dst_bdev_name": ctx.copy_dst}
              if busy_method == "bdev_lvol_start_shallow_copy" else {"name": s_uuid})
    busy, delete = await ctx.pipelined((busy_method, params), ("bdev_lvol_delete", {"name": s_uuid}))
    if not busy.ok:
        ctx.note(f"{busy_method} answered {busy.outcome}: the snapshot was never busy")
    elif delete.ok:
        ctx.note(f"the busy snapshot's delete answered ok: {busy_method} had finished first")
    elif delete.errno_name != "EBUSY":
        ctx.note(f"the busy snapshot's delete answered {delete.outcome}")
    # Longhorn goes on removing the volume: the child, then the parent chain (the parent's only clone is the
    # snapshot; after a forced removal it has no lvol and this delete is where SPDK crashes).
    for u in (lvol.result, p.result):
        if ctx.exists(u):
            await ctx.do("bdev_lvol_delete", {"name": u})
    await ctx.cleanup(_uuids(snap, lvol, p))


async def clone_fanout_delete(ctx: EpisodeContext) -> None:
    """A snapshot with two clones must refuse deletion; with one left it must succeed and re-parent."""
    base = await _lvol_with_snapshot(ctx)
    if base is None:
        return
    lvol, snap = base
    c1 = await _clone(ctx, snap.result)
    await ctx.do("bdev_lvol_delete", {"name": snap.result})
    await ctx.cleanup(_uuids(c1, lvol, snap))


async def lvstore_delete_with_tree(ctx: EpisodeContext) -> None:
    """Rarely: with everything else paused, delete the lvstore with a tree in it and recreate it."""
    base = await _lvol_with_snapshot(ctx)
    if base is None:
        return
    snap = base[1]
    await _clone(ctx, snap.result)
    async with ctx.exclusive():
        await ctx.recreate_lvstore()


async def lvstore_reload(ctx: EpisodeContext) -> None:
    """Rarely: with everything else paused, hot-remove the lvstore's aio base bdev and create it again; the
    lvstore that loads must hold exactly what the model holds (a tree with a clone and a checksum is made
    first, so the reload has links, clusters and xattrs to lose)."""
    base = await _lvol_with_snapshot(ctx)
    if base is None:
        return
    snap = base[1]
    clone = await _clone(ctx, snap.result)
    if ctx.has("bdev_lvol_register_snapshot_checksum"):
        await ctx.do("bdev_lvol_register_snapshot_checksum", {"name": snap.result})
    async with ctx.exclusive():
        why = await ctx.reload_lvstore()
    if why is not None:
        ctx.note(why)
    await ctx.cleanup(_uuids(clone, *base))


STRATEGIES: dict[str, Strategy] = {
    "delete-vs-clone": delete_vs_clone,
    "double-delete": double_delete,
    "delete-vs-snapshot": delete_vs_snapshot,
    "delete-vs-checksum": delete_vs_checksum,
    "delete-vs-xattr": delete_vs_xattr,
    "delete-during-lvstore-rename": delete_during_lvstore_rename,
    "purge-chain": purge_chain,
    "busy-delete": busy_delete,
    "clone-fanout-delete": clone_fanout_delete,
    "lvstore-delete-with-tree": lvstore_delete_with_tree,
    "lvstore-reload": lvstore_reload,
}
