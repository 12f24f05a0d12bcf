"""The pure lvstore model: clusters, the snapshot/clone tree, delete rules, busy blobs, faults, invariants."""

from __future__ import annotations

import dataclasses
import errno
import itertools
import random
import time
from typing import Any

import pytest

from harness.model import CLUSTERS_PER_TICK, LvolStore, ModelCrash, ModelError

MIB = 1024 * 1024


def store(clusters: int = 254, cluster_mib: int = 1, faults: frozenset[str] = frozenset()) -> LvolStore:
    counter = itertools.count()
    return LvolStore(
        name="lvs0",
        uuid="00000000-0000-4000-8000-000000000000",
        base_bdev="Malloc0",
        total_data_clusters=clusters,
        cluster_size=cluster_mib * MIB,
        block_size=4096,
        faults=faults,
        uuid_factory=lambda: f"00000000-0000-4000-8000-{next(counter) + 1:012d}",
    )


def refusal(fn, *args) -> int:  # type: ignore[no-untyped-def]
    with pytest.raises(ModelError) as info:
        fn(*args)
    return info.value.errno


# ---- clusters -----------------------------------------------------------------------------------------------------


def test_thick_lvols_take_clusters_rounded_up_thin_and_zero_take_none() -> None:
    s = store(clusters=63, cluster_mib=4)
    s.create("thick8", 8)
    assert s.free_clusters == 61
    s.create("thick5", 5)  # 5 MiB -> 2 clusters of 4 MiB
    assert s.free_clusters == 59
    assert s.lookup("thick5").num_clusters == 2
    s.create("thin16", 16, thin_provision=True)
    s.create("zero", 0)
    assert s.free_clusters == 59
    assert s.lookup("zero").num_clusters == 0
    assert s.check_invariants() == []


def test_out_of_space_changes_nothing_and_exactly_free_fits() -> None:
    s = store(clusters=10)
    assert refusal(s.create, "big", 11) == errno.ENOSPC
    assert s.find("big") is None and s.free_clusters == 10
    s.create("fill", 10)
    assert s.free_clusters == 0
    s.create("thin", 100, thin_provision=True)  # over-provisioning is fine
    assert refusal(s.resize, "fill", 11) == errno.ENOSPC
    assert s.lookup("fill").num_clusters == 10


def test_resize_thick_allocates_and_frees_thin_does_not() -> None:
    s = store()
    s.create("L", 8)
    s.resize("L", 16)
    assert s.free_clusters == 254 - 16
    s.resize("lvs0/L", 4)
    assert s.free_clusters == 250
    s.resize("L", 0)
    assert s.free_clusters == 254
    s.create("T", 8, thin_provision=True)
    s.resize("T", 4096)
    assert s.free_clusters == 254
    assert s.check_invariants() == []


def test_names_length_duplicates_and_lookup_by_uuid_alias_name() -> None:
    s = store()
    lv = s.create("b" * 255, 1, thin_provision=True)
    assert refusal(s.create, "c" * 256, 1, True) == errno.EINVAL
    assert refusal(s.create, "", 1, True) == errno.EINVAL
    assert refusal(s.create, "b" * 255, 1, True) == errno.EEXIST
    assert s.lookup(lv.uuid) is lv and s.lookup("lvs0/" + "b" * 255) is lv and s.lookup("b" * 255) is lv
    assert refusal(s.lookup, "lvs0/nope") == errno.ENODEV
    s.rename(lv.uuid, "x" * 256)  # rename accepts 256 and keeps 255
    assert lv.name == "x" * 255
    assert refusal(s.rename, lv.uuid, "x" * 255) == errno.EEXIST  # the same name again


# ---- snapshots, clones, the tree -----------------------------------------------------------------------------------


def test_snapshot_of_thick_moves_its_clusters_and_origin_becomes_a_thin_clone() -> None:
    s = store()
    s.create("K", 8)
    ks = s.snapshot("K", "KS")
    k = s.lookup("K")
    assert (ks.thin, ks.num_allocated_clusters, ks.is_snapshot, ks.read_only) == (False, 8, True, True)
    assert (k.thin, k.num_allocated_clusters, k.is_clone, s.parent_of(k)) == (True, 0, True, ks)
    assert s.free_clusters == 254 - 8
    assert refusal(s.snapshot, "KS", "SS") == errno.EINVAL  # snapshot of a snapshot
    assert refusal(s.snapshot, "K", "KS") == errno.EEXIST
    assert refusal(s.clone, "K", "CX") == errno.EINVAL  # clone of a writable lvol


def test_chain_snapshot_replaces_origin_at_the_tail_of_the_parent_clone_list() -> None:
    s = store()
    s.create("T", 16, thin_provision=True)
    s1 = s.snapshot("T", "S1")
    s.clone("S1", "C1")
    s.clone("S1", "C2")
    s.snapshot("T", "S2")
    assert [c.name for c in s.clones_of(s1)] == ["C1", "C2", "S2"]


def test_delete_rules_two_clones_eperm_one_clone_reparents_zero_frees() -> None:
    s = store()
    s.create("T", 16, thin_provision=True)
    s1 = s.snapshot("T", "S1")
    s.clone("S1", "C1")
    s.clone("S1", "C2")
    s.snapshot("T", "S2")
    assert refusal(s.delete, "S1") == errno.EPERM
    s.delete("C2")
    assert refusal(s.delete, "S1") == errno.EPERM
    s.delete("S2")  # one clone (T): T moves up to S1, at the tail
    assert [c.name for c in s.clones_of(s1)] == ["C1", "T"]
    assert s.parent_of(s.lookup("T")) is s1
    s.delete("C1")
    s.delete("S1")
    t = s.lookup("T")
    assert not t.is_clone and t.thin
    assert s.check_invariants() == []
    assert refusal(s.delete, "S1") == errno.ENODEV


def test_deleting_a_snapshot_with_one_clone_gives_the_clone_its_clusters() -> None:
    s = store()
    s.create("V", 8)
    s.snapshot("V", "A1")
    v = s.lookup("V")
    s.delete("A1")
    assert v.num_allocated_clusters == 8 and s.free_clusters == 254 - 8
    s.delete("V")
    assert s.free_clusters == 254
    assert s.check_invariants() == []


def test_snapshot_keeps_is_snapshot_after_its_last_clone_goes() -> None:
    s = store()
    s.create("K", 8)
    ks = s.snapshot("K", "KS")
    s.delete("K")
    assert ks.is_snapshot and not ks.clones
    s.delete("KS")
    assert s.free_clusters == 254


def test_read_only_lvol_can_be_cloned_not_snapshotted_resized_or_xattr_set() -> None:
    s = store()
    s.create("L", 8)
    s.set_read_only("L")
    assert refusal(s.resize, "L", 16) == errno.EPERM
    assert refusal(s.snapshot, "L", "SofRO") == errno.EINVAL
    assert refusal(s.set_xattr, "L", "a", "b") == errno.EPERM
    s.clone("L", "CofRO")
    assert s.lookup("L").is_snapshot


def test_inflate_decouple_detach_set_parent() -> None:
    s = store()
    s.create("T", 8, thin_provision=True)
    snap = s.snapshot("T", "S")
    s.clone("S", "C")
    s.inflate("C")
    c = s.lookup("C")
    assert (c.thin, c.is_clone, c.num_allocated_clusters, s.free_clusters) == (False, False, 8, 246)
    s.inflate("C")  # thick: nothing to do
    s.inflate("S")  # a thin snapshot gets all its clusters
    assert snap.num_allocated_clusters == 8 and s.free_clusters == 238
    s.clone("S", "D")
    s.decouple_parent("D")
    d = s.lookup("D")
    assert (d.thin, d.is_clone, d.num_allocated_clusters, s.free_clusters) == (True, False, 8, 230)
    assert refusal(s.decouple_parent, "D") == errno.EINVAL
    s.create("X", 8, thin_provision=True)
    p1 = s.snapshot("X", "P1")
    e = s.clone("S", "E")
    s.set_parent("E", "P1")
    assert s.parent_of(e) is p1 and [c.name for c in s.clones_of(p1)] == ["X", "E"]
    assert refusal(s.set_parent, "E", "P1") == errno.EEXIST
    assert refusal(s.set_parent, "E", "X") == errno.EINVAL
    assert refusal(s.set_parent, "P1", "P1") == errno.EINVAL
    assert refusal(s.set_parent, "C", "P1") == errno.EINVAL  # thick
    s.create("Y", 16, thin_provision=True)
    assert refusal(s.set_parent, "Y", "P1") == errno.EINVAL  # size
    s.detach_parent("E")
    assert not e.is_clone and e.thin and s.free_clusters == 230
    assert refusal(s.detach_parent, "E") == errno.EINVAL
    assert s.check_invariants() == []


def test_set_parent_refuses_a_cycle() -> None:
    s = store()
    s.create("T", 8, thin_provision=True)
    s.snapshot("T", "A")
    s.snapshot("T", "B")  # A <- B <- T
    assert refusal(s.set_parent, "A", "B") == errno.EINVAL
    assert s.check_invariants() == []


def test_xattrs_and_internal_names() -> None:
    s = store()
    t = s.create("T", 8, thin_provision=True)
    s.set_xattr("T", "foo", "bar")
    assert s.get_xattr("T", "foo") == "bar"
    s.set_xattr("T", "foo", "")
    assert s.get_xattr("T", "foo") == ""
    assert s.get_xattr("T", "name") == "T" and s.get_xattr("T", "uuid") == t.uuid
    assert refusal(s.get_xattr, "T", "missing") == errno.ENOENT
    snap = s.snapshot("T", "S", {"user_created": "true"})
    assert s.get_xattr(snap.uuid, "user_created") == "true"


def test_fragmap_bits_offsets_and_bounds() -> None:
    s = store()
    s.create("K", 8)
    s.snapshot("K", "KS")
    assert s.get_fragmap("K") == {"cluster_size": MIB, "num_clusters": 8, "num_allocated_clusters": 0,
                                  "fragmap": "AA=="}
    assert s.get_fragmap("KS")["fragmap"] == "/w=="
    assert s.get_fragmap("KS", MIB, 2 * MIB)["fragmap"] == "Aw=="
    assert refusal(s.get_fragmap, "KS", 1000, 4096) == errno.EINVAL
    assert refusal(s.get_fragmap, "KS", 0, 1024 * MIB) == errno.EINVAL


def test_fragmap_walks_like_seek_data_and_seek_hole_past_the_end() -> None:
    """vbdev_lvol_get_fragmap's walk: size 0 with an offset covers offset .. offset + the lvol's size; no hole
    up to the end means data to the end of that range; a seek at or past the end is -EINVAL."""
    s = store()
    s.create("T", 8)  # thick: all 8 clusters
    whole = s.get_fragmap("T", 2 * MIB)  # [2, 10): no hole is found, so all 8 bits are data
    assert whole == {"cluster_size": MIB, "num_clusters": 8, "num_allocated_clusters": 8, "fragmap": "/w=="}
    assert refusal(s.get_fragmap, "T", 8 * MIB) == errno.EINVAL  # the first seek is at the end
    s.create("Z", 0)
    assert refusal(s.get_fragmap, "Z") == errno.EINVAL  # no block to seek in
    s.create("V", 8, thin_provision=True)
    assert s.get_fragmap("V", 3 * MIB)["fragmap"] == "AA=="  # thin: the first seek finds no data at all
    s.snapshot("T", "TS")
    s.resize("T", 16)  # T: a thin clone of TS now, 16 clusters, none its own
    s.decouple_parent("T")  # copies TS's 8 clusters: T owns clusters 0..7 of 16
    assert s.get_fragmap("T")["fragmap"] == "/wA="
    assert s.get_fragmap("T", 4 * MIB) == {"cluster_size": MIB, "num_clusters": 16,
                                           "num_allocated_clusters": 4, "fragmap": "DwA="}


# ---- busy blobs and jobs -------------------------------------------------------------------------------------------


def test_checksum_holds_a_large_snapshot_open_until_ticks_finish_it() -> None:
    s = store(clusters=509)
    s.create("B", 200)
    s.snapshot("B", "BS")
    s.delete("B")
    s.register_snapshot_checksum("BS")
    assert refusal(s.get_snapshot_checksum, "BS") == errno.ENODEV
    ticks = 0
    while refusal_or_none(s, "BS") == errno.EBUSY and ticks < 10:
        s.tick()
        ticks += 1
    assert ticks == -(-200 // CLUSTERS_PER_TICK)
    assert s.find("BS") is None and s.free_clusters == 509
    assert s.check_invariants() == []


def refusal_or_none(s: LvolStore, name: str) -> int | None:
    try:
        s.delete(name)
    except ModelError as exc:
        return exc.errno
    return None


def test_checksum_value_rules_and_non_snapshot_refused() -> None:
    s = store()
    s.create("T", 8, thin_provision=True)
    s.snapshot("T", "S")
    s.register_snapshot_checksum("S")  # nothing allocated: done at once, checksum 0
    assert s.get_snapshot_checksum("S") == 0
    assert refusal(s.register_snapshot_checksum, "T") == errno.EPERM
    s.create("K", 8)
    s.snapshot("K", "KS")
    s.register_snapshot_checksum("KS")
    s.tick()
    assert s.get_snapshot_checksum("KS") != 0


def test_shallow_copy_progress_and_errors() -> None:
    s = store(clusters=509)
    s.create("B", 200)
    s.snapshot("B", "BS")
    job = s.start_shallow_copy("BS", 200 * MIB)
    assert s.lookup("BS").busy
    s.tick()
    assert (job.copied_clusters, job.done) == (64, False)
    s.tick(3)
    assert job.done and not s.lookup("BS").busy
    bad = s.start_shallow_copy("B", 1024 * MIB)  # not read-only
    assert bad.done and bad.error == errno.EPERM
    small = s.start_shallow_copy("BS", 8 * MIB)  # destination smaller than the source
    assert small.error == errno.EINVAL


def test_open_and_close_blob() -> None:
    s = store()
    s.create("K", 8)
    s.snapshot("K", "KS")
    s.delete("K")
    s.open_blob("KS")
    assert refusal(s.delete, "KS") == errno.EBUSY
    s.close_blob("KS")
    s.delete("KS")


# ---- faults in the model ------------------------------------------------------------------------------------------


def _busy_chain(s: LvolStore) -> None:
    """P <- X <- D, X owning 200 clusters and held open by its checksum (built with RPC-level operations only)."""
    s.create("A", 200)
    s.snapshot("A", "P")
    s.delete("A")
    s.clone("P", "D")
    s.decouple_parent("D")  # D owns a copy of P's 200 clusters
    s.set_parent("D", "P")
    s.snapshot("D", "X")  # X takes D's 200 clusters; P's only clone is X
    s.register_snapshot_checksum("X")


def test_forced_removal_removes_the_lvol_leaks_and_the_parent_delete_segfaults() -> None:
    s = store(clusters=509, faults=frozenset({"forced-removal"}))
    _busy_chain(s)
    free = s.free_clusters
    with pytest.raises(ModelError) as info:
        s.delete("X")
    assert info.value.errno == errno.EBUSY and info.value.forced_removal
    assert s.find("X") is None and s.free_clusters == free
    assert s.lookup("D").is_clone  # still a clone of the orphan blob
    problems = s.check_invariants()
    assert any("orphan blob" in p and "200 clusters leaked" in p for p in problems)
    with pytest.raises(ModelCrash) as crash:
        s.delete("P")
    assert crash.value.kind == "segv" and crash.value.address == 8


def test_healthy_busy_delete_changes_nothing_and_parent_delete_is_fine() -> None:
    s = store(clusters=509)
    _busy_chain(s)
    assert refusal(s.delete, "X") == errno.EBUSY
    assert s.find("X") is not None and s.check_invariants() == []
    assert refusal(s.delete, "P") == errno.EBUSY  # its only clone X is locked by the checksum
    s.tick(4)
    s.delete("P")  # one clone (X): merged, no crash
    assert s.check_invariants() == []


def test_forced_removal_without_a_busy_blob_never_fires() -> None:
    s = store(faults=frozenset({"forced-removal"}))
    s.create("T", 8, thin_provision=True)
    s.snapshot("T", "S")
    s.delete("S")
    assert s.check_invariants() == []


def test_abort_assert_fires_on_one_clone_delete_only() -> None:
    s = store(faults=frozenset({"abort-assert"}))
    s.create("K", 8)
    s.snapshot("K", "KS")
    s.create("Z", 8)
    zs = s.snapshot("Z", "ZS")
    s.delete("Z")
    s.delete(zs.uuid)  # zero clones: fine
    with pytest.raises(ModelCrash) as crash:
        s.delete("KS")
    assert (crash.value.kind, crash.value.detail) == ("abort", "abort-assert")


def test_abort_malloc_fires_on_third_clone_only() -> None:
    s = store(faults=frozenset({"abort-malloc"}))
    s.create("T", 8, thin_provision=True)
    s.snapshot("T", "S")
    s.clone("S", "C1")  # S has T, C1 now
    with pytest.raises(ModelCrash) as crash:
        s.clone("S", "C2")
    assert crash.value.detail == "abort-malloc"


def test_leak_cluster_fault_is_caught_by_the_invariants() -> None:
    s = store(faults=frozenset({"leak-cluster"}))
    s.create("K", 8)
    s.delete("K")
    assert s.free_clusters == 254 - 8
    assert any("8 leaked" in p for p in s.check_invariants())


def test_delete_snapshot_with_clones_fault_leaves_broken_links() -> None:
    s = store(faults=frozenset({"delete-snapshot-with-clones"}))
    s.create("T", 8, thin_provision=True)
    s.snapshot("T", "S")
    s.clone("S", "C")
    s.delete("S")
    assert s.find("S") is None
    assert any("parent blob" in p for p in s.check_invariants())


# ---- copies, cost, random sequences --------------------------------------------------------------------------------


def test_copy_is_independent() -> None:
    s = store()
    s.create("T", 8)
    dup = s.copy()
    s.delete("T")
    assert dup.find("T") is not None and dup.free_clusters == 246 and s.free_clusters == 254
    dup.create("U", 1)
    assert s.find("U") is None


PROBES = ("a", "b", "s1", "c1", "sb", "new", "z" * 255, "z" * 256)
"""Names the checkpoint tests look up before and after (ones that come and go included)."""


def _observed(s: LvolStore) -> Any:
    """Everything the model shows: its fields, every blob and job, and what each name and UUID finds."""
    blobs = {bid: dataclasses.asdict(lv) for bid, lv in s.blobs.items()}
    names = {*PROBES, *(lv.uuid for lv in s.blobs.values())}
    found = {n: (getattr(s.find_by_name(n), "blob_id", None), getattr(s.find_by_uuid(n), "blob_id", None),
                 getattr(s.find_by_alias_tail(n), "blob_id", None)) for n in names}
    return (s.name, s.free_clusters, s.total_data_clusters, blobs, found, [dataclasses.asdict(j) for j in s.jobs])


def _tree_with_a_job() -> tuple[LvolStore, dict[str, str]]:
    s = store()
    ids: dict[str, str] = {}
    ids["a"] = s.create("a", 8).uuid
    ids["s1"] = s.snapshot("a", "s1").uuid
    ids["c1"] = s.clone("s1", "c1").uuid
    ids["b"] = s.create("b", 8).uuid
    ids["sb"] = s.snapshot("b", "sb").uuid
    s.create("elsewhere", 4)  # another tree: not covered, not touched
    s.register_snapshot_checksum("sb")  # a job holding sb open across ticks
    return s, ids


def test_checkpoint_of_some_trees_restores_exactly_what_operations_on_them_changed() -> None:
    s, ids = _tree_with_a_job()
    before = _observed(s)
    cp = s.checkpoint([ids["c1"], ids["s1"], "lvs0/b"])  # the trees of a, s1, c1 and of b, sb
    s.tick(1 << 20)  # the job finishes and lets sb go
    s.set_parent("lvs0/c1", ids["sb"])
    s.decouple_parent(ids["a"])
    s.inflate("lvs0/b")
    s.delete(ids["s1"])
    s.create("new", 2)
    assert _observed(s) != before
    s.restore(cp)
    assert _observed(s) == before and s.check_invariants() == []
    s.delete("lvs0/c1")  # the same checkpoint restores again after other changes
    s.restore(cp)
    assert _observed(s) == before


def test_checkpoint_covers_the_blobs_jobs_hold_outside_the_trees_named() -> None:
    s, ids = _tree_with_a_job()
    before = _observed(s)
    cp = s.checkpoint([ids["a"]])  # a's tree only; the job holds sb in another
    s.tick(1 << 20)  # any operation may tick: the job ends, sb is let go and gets its checksum
    s.delete("lvs0/c1")
    assert s.lookup("sb").checksum is not None
    s.restore(cp)
    assert _observed(s) == before and s.lookup("sb").busy


def test_checkpoint_of_everything_undoes_an_lvstore_rename() -> None:
    s, _ = _tree_with_a_job()
    before = _observed(s)
    cp = s.checkpoint()
    s.rename_store("lvs1")
    s.rename("lvs1/a", "z" * 256)
    s.restore(cp)
    assert _observed(s) == before and s.find("lvs0/a") is not None


def test_restore_puts_a_deleted_blob_back_in_its_place_in_the_listing() -> None:
    s = store()
    for name in ("a", "b", "c"):
        s.create(name, 4)
    before = _observed(s)
    cp = s.checkpoint(["b"])
    s.delete("b")
    s.create("d", 2)
    s.restore(cp)
    assert [lv.name for lv in s.lvols()] == ["a", "b", "c"] and _observed(s) == before
    s.create("e", 1)  # a blob made after the restore lists last
    assert [lv.name for lv in s.lvols()] == ["a", "b", "c", "e"]
    s.release(cp)


def test_a_checkpoint_released_or_undone_by_an_earlier_one_cannot_be_restored() -> None:
    s, ids = _tree_with_a_job()
    first = s.checkpoint([ids["a"]])
    s.create("new", 2)
    second = s.checkpoint([ids["a"]])
    s.restore(first)  # undoes what `second` saved
    with pytest.raises(ValueError):
        s.restore(second)
    s.release(first)
    with pytest.raises(ValueError):
        s.restore(first)
    s.create("after", 1)  # no checkpoint live: nothing journaled, the store goes on as usual
    assert s.find("after") is not None and s.check_invariants() == []


def test_checkpoint_cost_does_not_grow_with_the_number_of_lvols() -> None:
    """It saves the trees it names and a mark in the indexes' undo journal, not a copy of every index."""
    def cost(n: int) -> float:
        s = store(clusters=1 << 20)
        for i in range(n):
            s.create(f"v{i}", 1, thin_provision=True)
        for i in range(0, n, 2):
            s.delete(f"v{i}")  # holes in the indexes: a dict copy then takes its slow path
        start = time.perf_counter()
        for _ in range(300):
            s.release(s.checkpoint(["lvs0/v1"]))
        return time.perf_counter() - start

    small, big = min(cost(100) for _ in range(3)), min(cost(20000) for _ in range(3))
    assert big < small * 3, (small, big)


@pytest.mark.timeout(60)
def test_per_operation_cost_does_not_grow_with_the_number_of_lvols() -> None:
    def cost(n: int) -> float:
        s = store(clusters=1 << 20)
        for i in range(n):
            s.create(f"v{i}", 1, thin_provision=True)
        start = time.perf_counter()
        for i in range(300):
            s.create(f"w{i}", 1)
            s.snapshot(f"w{i}", f"ws{i}")
            s.resize(f"lvs0/w{i}", 2)
            s.delete(f"w{i}")
            s.delete(f"ws{i}")
        return time.perf_counter() - start

    small, big = min(cost(10) for _ in range(3)), min(cost(20000) for _ in range(2))
    assert big < small * 5, (small, big)


def _random_op(s: LvolStore, rng: random.Random, step: int) -> None:
    names = [lv.uuid for lv in s.lvols()]
    pick = (lambda: rng.choice(names)) if names else (lambda: "none")
    op = rng.randrange(16)
    try:
        if op == 0 or not names:
            s.create(f"v{step}", rng.randrange(0, 9), thin_provision=rng.random() < 0.5)
        elif op == 1:
            s.snapshot(pick(), f"s{step}")
        elif op == 2:
            s.clone(pick(), f"c{step}")
        elif op in (3, 4):
            s.delete(pick())
        elif op == 5:
            s.resize(pick(), rng.randrange(0, 12))
        elif op == 6:
            s.inflate(pick())
        elif op == 7:
            s.decouple_parent(pick())
        elif op == 8:
            s.set_parent(pick(), pick())
        elif op == 9:
            s.detach_parent(pick())
        elif op == 10:
            s.set_read_only(pick())
        elif op == 11:
            s.register_snapshot_checksum(pick())
        elif op == 12:
            s.start_shallow_copy(pick(), 1 << 40)
        elif op == 13:
            s.open_blob(pick())
        elif op == 14:
            s.close_blob(pick())
        else:
            s.rename(pick(), f"r{step}")
    except ModelError:
        pass
    s.tick()


@pytest.mark.timeout(60)
def test_random_sequences_keep_invariants_in_healthy_mode() -> None:
    deadline = time.monotonic() + 20
    for seed in range(40):
        rng = random.Random(seed)
        s = store(clusters=rng.choice([16, 64, 254]))
        for step in range(250):
            _random_op(s, rng, step)
            problems = s.check_invariants()
            assert problems == [], (seed, step, problems)
        if time.monotonic() > deadline:
            break


def test_random_sequences_with_forced_removal_are_flagged() -> None:
    """The same generator with the bug on: whenever a busy delete happens, the invariants say so."""
    flagged = 0
    for seed in range(40):
        rng = random.Random(seed)
        s = store(clusters=254, faults=frozenset({"forced-removal"}))
        for step in range(200):
            try:
                _random_op(s, rng, step)
            except ModelCrash:
                break
            if any(lv.removed for lv in s.blobs.values()):
                assert s.check_invariants() != []
                flagged += 1
                break
    assert flagged > 0



def test_random_sequences_restore_exactly_from_a_checkpoint_of_everything() -> None:
    """The undo journal against what the model showed: every blob, every lookup, the listing order, after any
    mix of operations (reloads and lvstore renames, which replace whole indexes, included), twice."""
    for seed in range(30):
        rng = random.Random(seed)
        s = store(clusters=254, faults=frozenset({"forced-removal"}) if seed % 3 == 0 else frozenset())
        for step in range(rng.randrange(0, 60)):
            _random_op(s, rng, step)
        before, order, twin = _observed(s), [lv.uuid for lv in s.lvols()], s.copy()
        cp = s.checkpoint()
        for again in range(2):
            for step in range(rng.randrange(1, 60)):
                try:
                    if rng.random() < 0.05:
                        s.reload()
                    elif rng.random() < 0.03:
                        s.rename_store("lvs1" if s.name == "lvs0" else "lvs0")
                    else:
                        _random_op(s, rng, 1000 * (again + 1) + step)
                except ModelCrash:
                    break
            s.restore(cp)
            assert _observed(s) == before and [lv.uuid for lv in s.lvols()] == order, (seed, again)
        s.release(cp)
        # The metadata pages came back too: new blobs take the ids they take on a copy made before.
        ids = [s.create(f"probe{i}", 0).blob_id for i in range(4) if s.find(f"probe{i}") is None]
        assert ids == [twin.create(f"probe{i}", 0).blob_id for i in range(4) if twin.find(f"probe{i}") is None]

# ---- details taken from SPDK's source (lib/blob/blobstore.c, lib/lvol/lvol.c @1975133e9) -------------------------


def test_a_job_locks_its_snapshot_against_clone_inflate_and_a_second_job() -> None:
    s = store(clusters=509)
    s.create("B", 200)
    s.snapshot("B", "BS")
    s.start_shallow_copy("BS", 200 * MIB)
    assert refusal(s.clone, "BS", "C") == errno.EBUSY
    assert refusal(s.inflate, "BS") == errno.EBUSY
    assert refusal(s.register_snapshot_checksum, "BS") == errno.EBUSY
    assert s.start_shallow_copy("BS", 200 * MIB).error == errno.EBUSY
    s.tick(4)
    s.clone("BS", "C")  # the copy finished: unlocked
    assert s.check_invariants() == []


def test_set_parent_checks_in_spdk_order() -> None:
    s = store()
    s.create("X", 8, thin_provision=True)
    s.snapshot("X", "P1")
    s.create("K", 8)
    assert refusal(s.set_parent, "X", "P1") == errno.EEXIST  # already the parent, checked before anything else
    assert refusal(s.set_parent, "K", "K") == errno.EINVAL
    assert refusal(s.set_parent, "K", "P1") == errno.EINVAL  # thick


def test_detach_of_a_thick_lvol_without_parent_is_einval_and_inflate_drops_a_checksum() -> None:
    s = store()
    s.create("K", 8)
    assert refusal(s.detach_parent, "K") == errno.EINVAL
    ks = s.snapshot("K", "KS")
    s.register_snapshot_checksum("KS")
    s.tick()
    assert ks.checksum is not None
    s.inflate("KS")  # thick already: nothing to do, but the checksum is gone
    assert refusal(s.get_snapshot_checksum, "KS") == errno.ENODEV


def test_rename_keeps_255_in_the_name_all_256_in_the_alias_until_the_store_is_renamed() -> None:
    s = store()
    lv = s.create("T", 8, thin_provision=True)
    s.snapshot("T", "S")
    s.rename("S", "S2")  # snapshots can be renamed
    s.rename(lv.uuid, "y" * 256)
    assert lv.name == "y" * 255 and s.bdev_alias(lv) == "lvs0/" + "y" * 256
    assert s.find("lvs0/" + "y" * 256) is lv and s.find("lvs0/" + "y" * 255) is None
    s.rename_store("lvs9")
    assert s.bdev_alias(lv) == "lvs9/" + "y" * 255 and s.find("lvs9/" + "y" * 255) is lv
    assert refusal(s.rename, "S2", "S2") == errno.EEXIST
    assert s.check_invariants() == []


def test_checksum_is_spdks_crc64_of_the_zeroed_clusters() -> None:
    from harness.model.lvstore import crc64_iso_of_zeroes

    s = store()
    s.create("K", 8)
    s.snapshot("K", "KS")
    s.register_snapshot_checksum("KS")
    s.tick()
    assert s.get_snapshot_checksum("KS") == 13859014760662026744  # recorded in transcript 05, step 24
    assert crc64_iso_of_zeroes(0) == 0
    # chaining per cluster (as bs_snapshot_checksum does) equals one pass: compare with a bytewise CRC of 3 bytes
    reg = (1 << 64) - 1
    for _ in range(3):
        for _ in range(8):
            reg = (reg >> 1) ^ (0xD800000000000000 if reg & 1 else 0)
    assert crc64_iso_of_zeroes(3) == reg ^ ((1 << 64) - 1)


def test_internal_xattrs_live_in_the_blob_like_any_other() -> None:
    s = store()
    lv = s.create("T", 8, thin_provision=True)
    assert s.get_xattr("T", "creation_time") == lv.creation_time
    s.rename("T", "z" * 256)
    assert s.get_xattr(lv.uuid, "name") == "z" * 256 and lv.name == "z" * 255
    s.set_xattr(lv.uuid, "name", "other")  # SPDK lets a user overwrite it; the lvol keeps its name
    assert s.get_xattr(lv.uuid, "name") == "other" and lv.name == "z" * 255


@pytest.mark.parametrize("op", ["decouple_parent", "detach_parent"])
def test_decouple_and_detach_in_a_chain_move_the_lvol_to_its_grandparent(op: str) -> None:
    """bs_inflate_blob_done: the blob hangs on the parent's parent. Seen on spdk_tgt 24.09 (thick 4 MiB lvol v,
    snapshot s1, snapshot s2, then decouple/detach v): v's base_snapshot is s1, 0 clusters allocated (s2, the
    direct parent, owns none; decouple copies only the direct parent's clusters)."""
    s = store()
    s.create("v", 4)
    s1 = s.snapshot("v", "s1")
    s2 = s.snapshot("v", "s2")
    free = s.free_clusters
    getattr(s, op)("v")
    v = s.lookup("v")
    assert s.parent_of(v) is s1 and [c.name for c in s.clones_of(s1)] == ["s2", "v"]
    assert s.clones_of(s2) == [] and v.num_allocated_clusters == 0 and s.free_clusters == free
    assert not s.check_invariants()

