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


class ExternalSnapshot(Protocol):
    """An external snapshot bdev of the storm (`harness.storm.esnaps.EsnapBdev`), as an episode sees it."""

    @property
    def name(self) -> str: ...

    @property
    def state(self) -> str:
        """present, deleting or gone."""
        ...


class Nested(Protocol):
    """A nested lvstore an episode made (`harness.storm.nested.NestedLvstore`): calls to it are judged by a
    model of its own."""

    async def do(self, method: str, params: dict[str, Any]) -> Op: ...

    async def compare(self) -> None: ...

    async def gone_with_its_lvol(self) -> None: ...


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

    async def reload_lvstore(self, while_unloaded: Callable[[], Awaitable[None]] | None = None) -> str | None: ...

    async def resync(self) -> None: ...

    async def plain(self, method: str, params: dict[str, Any], *, peer: bool = False,
                    timeout: float | None = None) -> Op: ...

    def pick_esnap(self) -> str | None: ...

    def esnap_mib(self, name: str) -> int: ...

    async def own_esnap(self) -> ExternalSnapshot | None: ...

    async def delete_esnap(self, bdev: Any, *, held: bool) -> asyncio.Task[Op]: ...

    async def recreate_esnap(self, bdev: Any) -> bool: ...

    async def drop_esnap(self, bdev: Any) -> None: ...

    async def reload_blocker(self) -> str | None: ...

    async def make_nested(self, lvol: str, name: str) -> Nested | None: ...


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


# ---- external snapshots, nested lvstores, reloads -------------------------------------------------------------


def _clone_bdev(ctx: EpisodeContext, bdev: str, *, peer: bool = False) -> Coroutine[Any, Any, Op]:
    return ctx.do("bdev_lvol_clone_bdev", {"bdev": bdev, "lvs_name": ctx.lvs_name, "clone_name": ctx.name("e")},
                  peer=peer)


async def esnap_clone_tree(ctx: EpisodeContext) -> None:
    """An esnap clone of one of the storm's external snapshots, snapshotted (the snapshot takes the external
    parent, the clone hangs under it), its snapshot deleted while a clone of it is made on another connection
    (two clones: EPERM; one: that clone becomes the esnap clone), then inflated or decoupled (every cluster of
    the external snapshot copied: no parent of any kind)."""
    esnap = ctx.pick_esnap()
    if esnap is None:
        return
    e = await _clone_bdev(ctx, esnap)
    if not e.ok:
        ctx.note(f"bdev_lvol_clone_bdev answered {e.outcome}")
        return
    s = await _snapshot(ctx, e.result)
    if not s.ok:
        await ctx.cleanup(_uuids(e))
        return
    extra = [await _clone(ctx, s.result)] if ctx.rng.random() < 0.5 else []
    ops = await _race(ctx.do("bdev_lvol_delete", {"name": s.result}), _clone(ctx, s.result, peer=True))
    if ctx.exists(e.result) and ctx.rng.random() < 0.5:
        method = "bdev_lvol_inflate" if ctx.rng.random() < 0.5 else "bdev_lvol_decouple_parent"
        await ctx.do(method, {"name": e.result})
    await ctx.cleanup(_uuids(ops[1], *extra, e, s))


async def esnap_reparent(ctx: EpisodeContext) -> None:
    """An lvol moved between external snapshots (set_parent_bdev) and back under a snapshot of its own tree
    (set_parent), a second move raced with a snapshot on another connection."""
    first = ctx.pick_esnap()
    if first is None:
        return
    second = ctx.pick_esnap() or first
    lvol = await _create(ctx, thin=True, size=ctx.esnap_mib(first))
    if not lvol.ok:
        return
    moved = await ctx.do("bdev_lvol_set_parent_bdev", {"lvol_name": lvol.result, "parent_name": first})
    if not moved.ok:
        ctx.note(f"bdev_lvol_set_parent_bdev answered {moved.outcome}")
    snap = await _snapshot(ctx, lvol.result)
    ops = await _race(ctx.do("bdev_lvol_set_parent_bdev", {"lvol_name": lvol.result, "parent_name": second}),
                      ctx.do("bdev_lvol_snapshot", {"lvol_name": lvol.result, "snapshot_name": ctx.name("s")},
                             peer=True))
    if snap.ok:
        await ctx.do("bdev_lvol_set_parent", {"lvol_name": lvol.result, "parent_name": snap.result})
    await ctx.cleanup(_uuids(lvol, ops[1], snap))


async def _own_esnap_clone(ctx: EpisodeContext) -> tuple[Any, Op] | None:
    """An external snapshot of the episode's own and an esnap clone of it (None, noted, if either failed)."""
    own = await ctx.own_esnap()
    if own is None:
        return None
    e = await _clone_bdev(ctx, own.name)
    if not e.ok:
        ctx.note(f"bdev_lvol_clone_bdev answered {e.outcome}")
        await ctx.drop_esnap(own)
        return None
    return own, e


async def esnap_missing_reload(ctx: EpisodeContext) -> None:
    """Rarely, with everything else paused: esnap clones of the worker's own external snapshot (one with a
    snapshot and a clone under it), the lvstore unloaded, the external snapshot deleted, the lvstore loaded
    again (those lvols come back degraded: listed, without bdevs), calls at them (No such device; a delete by
    UUID works), then the bdev made again under its UUID (hotplug: the bdevs come back)."""
    blocker = await ctx.reload_blocker()
    if blocker is not None:
        ctx.note(blocker)
        return
    made_own = await _own_esnap_clone(ctx)
    if made_own is None:
        return
    own, e = made_own
    s = await _snapshot(ctx, e.result)
    c = await _clone(ctx, s.result) if s.ok else None
    made = [op for op in (c, s, e) if op is not None]

    async def delete_it() -> None:
        await ctx.delete_esnap(own, held=False)

    async with ctx.exclusive():
        why = await ctx.reload_lvstore(while_unloaded=delete_it)
        if why is not None:
            ctx.note(why)
        else:
            leaf = c if c is not None and c.ok else e
            await ctx.do("bdev_get_bdevs", {"name": leaf.result})
            await ctx.do("bdev_lvol_snapshot", {"lvol_name": leaf.result, "snapshot_name": ctx.name("s")})
            if ctx.rng.random() < 0.3:
                await ctx.do("bdev_lvol_delete", {"name": leaf.result})  # a degraded lvol: by its UUID
        if own.state == "gone" and await ctx.recreate_esnap(own):
            await ctx.resync()
    await ctx.cleanup(_uuids(*made))
    await ctx.drop_esnap(own)


async def esnap_external_delete(ctx: EpisodeContext) -> None:
    """With everything else paused: delete the worker's own external snapshot while an esnap clone holds it.
    The bdev leaves the listings at once, new esnap clones of it fail, and the delete's reply waits. Then
    either move the clone to a shared external snapshot (the delete answers) or delete the clone: the fork
    @1975133e9 dies there (its blob is opened again without its lvol; vbdev_lvol_esnap_dev_create logs the
    NULL lvol's name: SIGSEGV in strlen), a correct target deletes it and answers the bdev's delete."""
    made_own = await _own_esnap_clone(ctx)
    if made_own is None:
        return
    own, e = made_own
    async with ctx.exclusive():
        pending = await ctx.delete_esnap(own, held=True)
        if own.state != "deleting":
            ctx.note(f"the delete of {own.name} answered before its esnap clone let go")
        await _clone_bdev(ctx, own.name)
        away = ctx.pick_esnap()
        if away is not None and ctx.rng.random() < 0.5:
            await ctx.do("bdev_lvol_set_parent_bdev", {"lvol_name": e.result, "parent_name": away})
        else:
            await ctx.do("bdev_lvol_delete", {"name": e.result})
        try:
            done = await asyncio.wait_for(asyncio.shield(pending), timeout=5.0)
        except TimeoutError:
            ctx.note(f"the delete of {own.name} had no reply 5 s after its last esnap clone let go")
        else:
            if not done.ok:
                ctx.note(f"the delete of {own.name} answered {done.outcome}")
    await ctx.cleanup(_uuids(e))
    await ctx.drop_esnap(own)


async def nested_lvstore(ctx: EpisodeContext) -> None:
    """An lvstore on a thick lvol of the storm's lvstore, with lvols, a snapshot and a clone in it (judged by
    a model of the nested lvstore), then the outer lvol deleted: the nested lvstore must go with it."""
    size = max(16, ctx.size_mib() * 2)
    outer = await _create(ctx, thin=False, size=size)
    if not outer.ok:
        ctx.note(f"thick create of {size} MiB answered {outer.outcome}")
        return
    async with ctx.exclusive():  # an lvstore-wide episode must not drop the outer lvstore under it
        await _nested_lvstore_on(ctx, outer.result)
    await ctx.cleanup(_uuids(outer))


async def _nested_lvstore_on(ctx: EpisodeContext, outer: str) -> None:
    name = f"{ctx.lvs_name}_{ctx.name('n')}"
    nested = await ctx.make_nested(outer, name)
    if nested is not None:
        made = []
        for i in range(3):
            op = await nested.do("bdev_lvol_create", {"lvs_name": name, "lvol_name": ctx.name("v"),
                                                      "size_in_mib": 2 + i, "thin_provision": i % 2 == 0})
            made.append(op)
        first = next((op for op in made if op.ok), None)
        if first is not None:
            snap = await nested.do("bdev_lvol_snapshot", {"lvol_name": first.result, "snapshot_name": ctx.name("s")})
            if snap.ok:
                await nested.do("bdev_lvol_clone", {"snapshot_name": snap.result, "clone_name": ctx.name("c")})
                await nested.do("bdev_lvol_delete", {"name": snap.result})
        await nested.compare()
    gone = await ctx.do("bdev_lvol_delete", {"name": outer})
    if gone.ok and nested is not None:
        await nested.gone_with_its_lvol()


async def lvstore_reload_many(ctx: EpisodeContext) -> None:
    """Rarely, with everything else paused: the lvstore made again, then lvols of every kind made one at a time
    (thick and thin, snapshots with xattrs, clones, a rename, a resize, a read-only one, a delete whose blob id a
    later lvol takes, an esnap clone), unloaded and loaded: every lvol, link and xattr, and the listing order
    (blob id order), must come back."""
    blocker = await ctx.reload_blocker()
    if blocker is not None:
        ctx.note(blocker)
        return
    async with ctx.exclusive():
        await ctx.recreate_lvstore()
        made: list[Op] = []
        for i in range(8):
            made.append(await _create(ctx, thin=i % 2 == 1, size=1 + i % 3))
        live = [op for op in made if op.ok]
        if len(live) < 6:
            ctx.note("could not make the lvols to reload")
            await ctx.cleanup(_uuids(*reversed(made)))
            return
        snaps = [await _snapshot(ctx, live[0].result),
                 await ctx.do("bdev_lvol_snapshot", {"lvol_name": live[1].result, "snapshot_name": ctx.name("s"),
                                                     "xattrs": {"storm": "snapshot"}})]
        if snaps[0].ok:
            made.append(await _clone(ctx, snaps[0].result))
        await ctx.do("bdev_lvol_delete", {"name": live[2].result})
        made.append(await _create(ctx, thin=True, size=1))  # takes the deleted lvol's blob id
        await ctx.do("bdev_lvol_rename", {"old_name": live[3].result, "new_name": ctx.name("r")})
        await ctx.do("bdev_lvol_resize", {"name": live[4].result, "size_in_mib": 5})
        await ctx.do("bdev_lvol_set_read_only", {"name": live[5].result})
        for op in live[3:5]:
            await ctx.do("bdev_lvol_set_xattr", {"name": op.result, "xattr_name": "storm", "xattr_value": op.params[
                "lvol_name"]})
        esnap = ctx.pick_esnap() if ctx.has("bdev_lvol_clone_bdev") else None
        if esnap is not None:
            made.append(await _clone_bdev(ctx, esnap))
        why = await ctx.reload_lvstore()
        if why is not None:
            ctx.note(why)
        else:
            for op in live[3:5]:
                await ctx.do("bdev_lvol_get_xattr", {"name": op.result, "xattr_name": "storm"})
    await ctx.cleanup(_uuids(*reversed(made), *snaps))


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
    "esnap-clone-tree": esnap_clone_tree,
    "esnap-reparent": esnap_reparent,
    "esnap-missing-reload": esnap_missing_reload,
    "esnap-external-delete": esnap_external_delete,
    "nested-lvstore": nested_lvstore,
    "lvstore-reload-many": lvstore_reload_many,
}
