"""The reference target's fault modes and method dispatch: each fault fires on its pattern and only there."""

from __future__ import annotations

from typing import Any

import pytest

from harness.errors import ConfigError
from harness.sim.faults import FAULT_MODES, parse_faults
from harness.sim.framework_methods import REFERENCE_SUFFIX
from harness.sim.methods import Dispatcher
from harness.sim.protocol import RpcFault, SimulatedCrash

RECORDED_FORCED_REMOVAL = [
    "blobstore.c:8681:bs_is_blob_deletable: *ERROR*: Cannot remove snapshot because it is open",
    "blobstore.c:8621:bs_delete_blob_finish: *ERROR*: Failed to remove blob",
    "lvol.c:1084:lvol_delete_blob_cb: *ERROR*: Could not remove blob on lvol gracefully - forced removal",
]


def call(d: Dispatcher, method: str, **params: Any) -> Any:
    return d.handle(method, params or None)


def error_of(d: Dispatcher, method: str, **params: Any) -> tuple[int, str]:
    with pytest.raises(RpcFault) as info:
        call(d, method, **params)
    return info.value.code, info.value.message


def target(faults: frozenset[str] = frozenset(), fault_after: int = 40, mib: int = 512) -> Dispatcher:
    d = Dispatcher(faults=faults, seed=7, fault_after=fault_after)
    call(d, "bdev_malloc_create", name="Malloc0", num_blocks=mib * 256, block_size=4096)
    call(d, "bdev_lvol_create_lvstore", bdev_name="Malloc0", lvs_name="lvs0", cluster_sz=1024 * 1024)
    return d


def busy_snapshot_with_parent(d: Dispatcher) -> None:
    """P <- X <- D over RPCs, X owning 200 clusters, its checksum in progress (holds X open for 4 calls)."""
    call(d, "bdev_lvol_create", lvs_name="lvs0", lvol_name="A", size_in_mib=200)
    call(d, "bdev_lvol_snapshot", lvol_name="lvs0/A", snapshot_name="P")
    call(d, "bdev_lvol_delete", name="lvs0/A")
    call(d, "bdev_lvol_clone", snapshot_name="lvs0/P", clone_name="D")
    call(d, "bdev_lvol_decouple_parent", name="lvs0/D")
    call(d, "bdev_lvol_set_parent", lvol_name="lvs0/D", parent_name="lvs0/P")
    call(d, "bdev_lvol_snapshot", lvol_name="lvs0/D", snapshot_name="X")
    call(d, "bdev_lvol_register_snapshot_checksum", name="lvs0/X")
    d.drain_log_lines()


# ---- parse_faults ---------------------------------------------------------------------------------------------


def test_parse_faults_accepts_lists_and_none() -> None:
    assert parse_faults("") == frozenset() and parse_faults("none") == frozenset()
    assert parse_faults("forced-removal, hang") == {"forced-removal", "hang"}
    assert set(FAULT_MODES) == {"forced-removal", "abort-assert", "abort-malloc", "hang", "exit", "leak-cluster",
                                "delete-snapshot-with-clones", "corrupt-clone-read"}
    assert all(FAULT_MODES.values())


def test_parse_faults_unknown_name_is_one_line_listing_valid_ones() -> None:
    with pytest.raises(ConfigError) as info:
        parse_faults("forced-removal,segfault")
    text = str(info.value)
    assert "'segfault'" in text and "\n" not in text
    assert all(name in text for name in FAULT_MODES)
    assert isinstance(info.value, ValueError)  # spdk-sim's CLI catches ValueError


# ---- forced-removal -------------------------------------------------------------------------------------------


def test_forced_removal_when_the_only_clone_is_busy_logs_two_lines() -> None:
    d = target(frozenset({"forced-removal"}))
    busy_snapshot_with_parent(d)
    assert error_of(d, "bdev_lvol_delete", name="lvs0/P") == (-32603, "Device or resource busy")
    assert d.drain_log_lines() == RECORDED_FORCED_REMOVAL[1:]
    assert error_of(d, "bdev_get_bdevs", name="lvs0/P") == (-19, "No such device")


def test_forced_removal_answers_ebusy_logs_then_parent_delete_segfaults() -> None:
    d = target(frozenset({"forced-removal"}))
    busy_snapshot_with_parent(d)
    assert error_of(d, "bdev_lvol_delete", name="lvs0/X") == (-32603, "Device or resource busy")
    assert d.drain_log_lines() == RECORDED_FORCED_REMOVAL
    assert error_of(d, "bdev_get_bdevs", name="lvs0/X") == (-19, "No such device")
    with pytest.raises(SimulatedCrash) as crash:
        call(d, "bdev_lvol_delete", name="lvs0/P")
    c = crash.value
    assert (c.kind, c.address, c.thread_name) == ("segv", 8, "reactor_0")
    # SPDK logs nothing before a SIGSEGV; the sim's one line of its own names the SPDK function it models.
    assert len(c.log_lines) == 1 and c.log_lines[0].startswith("spdk-sim: SIGSEGV modelled in spdk_lvol_destroy (")
    with pytest.raises(SimulatedCrash):  # a dead target stays dead
        call(d, "spdk_get_version")


def test_healthy_target_keeps_the_busy_snapshot_and_survives_the_parent_delete() -> None:
    d = target()
    busy_snapshot_with_parent(d)
    assert error_of(d, "bdev_lvol_delete", name="lvs0/X") == (-32603, "Device or resource busy")
    assert d.drain_log_lines() == []
    assert call(d, "bdev_get_bdevs", name="lvs0/X")[0]["aliases"] == ["lvs0/X"]
    assert error_of(d, "bdev_lvol_delete", name="lvs0/P") == (-32603, "Device or resource busy")  # X locked
    call(d, "bdev_lvol_get_lvstores")  # the fourth call since the checksum started: it is done now
    assert call(d, "bdev_lvol_delete", name="lvs0/P") is True
    free = call(d, "bdev_lvol_get_lvstores", lvs_name="lvs0")[0]["free_clusters"]
    assert free == 509 - 200  # only D's copy (now X's clusters) remains


# ---- aborts ---------------------------------------------------------------------------------------------------


def test_abort_assert_on_deleting_a_snapshot_with_one_clone_only() -> None:
    d = target(frozenset({"abort-assert"}))
    call(d, "bdev_lvol_create", lvs_name="lvs0", lvol_name="K", size_in_mib=8)
    call(d, "bdev_lvol_snapshot", lvol_name="lvs0/K", snapshot_name="KS")
    call(d, "bdev_lvol_create", lvs_name="lvs0", lvol_name="Z", size_in_mib=8)
    call(d, "bdev_lvol_snapshot", lvol_name="lvs0/Z", snapshot_name="ZS")
    call(d, "bdev_lvol_delete", name="lvs0/Z")
    assert call(d, "bdev_lvol_delete", name="lvs0/ZS") is True  # no clone left: no assertion
    with pytest.raises(SimulatedCrash) as crash:
        call(d, "bdev_lvol_delete", name="lvs0/KS")
    assert crash.value.kind == "abort"
    assert crash.value.stderr_text.startswith("spdk_tgt: blobstore.c:")
    assert "Assertion `" in crash.value.stderr_text and crash.value.stderr_text.endswith("' failed.\n")


def test_abort_malloc_on_cloning_a_snapshot_with_two_clones_only() -> None:
    d = target(frozenset({"abort-malloc"}))
    call(d, "bdev_lvol_create", lvs_name="lvs0", lvol_name="T", size_in_mib=8, thin_provision=True)
    call(d, "bdev_lvol_snapshot", lvol_name="lvs0/T", snapshot_name="S")
    call(d, "bdev_lvol_clone", snapshot_name="lvs0/S", clone_name="C1")  # second clone: fine
    with pytest.raises(SimulatedCrash) as crash:
        call(d, "bdev_lvol_clone", snapshot_name="lvs0/S", clone_name="C2")
    assert (crash.value.kind, crash.value.stderr_text) == ("abort", "malloc(): unsorted double linked list corrupted\n")


# ---- hang / exit ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("fault", "kind", "code"), [("hang", "hang", 0), ("exit", "exit", 0)])
def test_hang_and_exit_after_the_nth_mutating_lvol_call(fault: str, kind: str, code: int) -> None:
    d = target(frozenset({fault}), fault_after=3)
    call(d, "bdev_lvol_create", lvs_name="lvs0", lvol_name="a", size_in_mib=1)
    for _ in range(5):
        call(d, "bdev_lvol_get_lvols")  # reads do not count
        call(d, "bdev_lvol_get_lvstores")
    call(d, "bdev_lvol_resize", name="lvs0/a", size_in_mib=2)
    with pytest.raises(SimulatedCrash) as crash:
        call(d, "bdev_lvol_create", lvs_name="lvs0", lvol_name="b", size_in_mib=1)
    assert crash.value.kind == kind and crash.value.exit_code == code


def test_no_fault_no_hang() -> None:
    d = target(fault_after=3)
    for i in range(10):
        call(d, "bdev_lvol_create", lvs_name="lvs0", lvol_name=f"v{i}", size_in_mib=1)
    assert len(call(d, "bdev_lvol_get_lvols")) == 10


# ---- checker-test modes ---------------------------------------------------------------------------------------


def test_leak_cluster_keeps_clusters_after_delete() -> None:
    d = target(frozenset({"leak-cluster"}))
    call(d, "bdev_lvol_create", lvs_name="lvs0", lvol_name="a", size_in_mib=8)
    assert call(d, "bdev_lvol_delete", name="lvs0/a") is True
    assert call(d, "bdev_lvol_get_lvstores")[0]["free_clusters"] == 509 - 8


def test_delete_snapshot_with_clones_succeeds_and_leaves_clones_parentless() -> None:
    d = target(frozenset({"delete-snapshot-with-clones"}))
    call(d, "bdev_lvol_create", lvs_name="lvs0", lvol_name="T", size_in_mib=8, thin_provision=True)
    call(d, "bdev_lvol_snapshot", lvol_name="lvs0/T", snapshot_name="S")
    call(d, "bdev_lvol_clone", snapshot_name="lvs0/S", clone_name="C")
    assert call(d, "bdev_lvol_delete", name="lvs0/S") is True
    info = call(d, "bdev_get_bdevs", name="lvs0/C")[0]["driver_specific"]["lvol"]
    assert info["clone"] is True and "base_snapshot" not in info
    healthy = target()
    call(healthy, "bdev_lvol_create", lvs_name="lvs0", lvol_name="T", size_in_mib=8, thin_provision=True)
    call(healthy, "bdev_lvol_snapshot", lvol_name="lvs0/T", snapshot_name="S")
    call(healthy, "bdev_lvol_clone", snapshot_name="lvs0/S", clone_name="C")
    assert error_of(healthy, "bdev_lvol_delete", name="lvs0/S") == (-32603, "Operation not permitted")


# ---- dispatch basics ------------------------------------------------------------------------------------------


def test_unknown_method_version_and_method_list() -> None:
    d = Dispatcher(seed=1)
    assert error_of(d, "no_such") == (-32601, "Method not found")
    assert call(d, "spdk_get_version")["version"].endswith(REFERENCE_SUFFIX)
    assert error_of(d, "spdk_get_version", x=1)[0] == -32602
    names = d.method_names()
    assert names == call(d, "rpc_get_methods") and "bdev_lvol_detach_parent" in names
    assert "framework_start_init" not in call(d, "rpc_get_methods", current=True)
    assert "get_lvol_stores" in call(d, "rpc_get_methods", include_aliases=True)
    assert error_of(d, "rpc_get_methods", bogus=True) == (-32602, "Invalid parameters")
    assert call(d, "get_lvol_stores") == []


@pytest.mark.parametrize(
    "params",
    [None, [], {"lvs_name": "lvs0", "size_in_mib": 4}, {"lvs_name": "lvs0", "lvol_name": "a", "size_in_mib": -4},
     {"lvs_name": "lvs0", "lvol_name": "a", "size_in_mib": 4.5}, {"lvs_name": "lvs0", "lvol_name": "a",
                                                                   "size_in_mib": 4, "bogus": 1}],
)
def test_decoding_failures(params: Any) -> None:
    d = target()
    with pytest.raises(RpcFault) as info:
        d.handle("bdev_lvol_create", params)
    assert (info.value.code, info.value.message) == (-32603, "spdk_json_decode_object failed")


def test_same_seed_same_uuids_and_log_drain_empties() -> None:
    a, b = target(), target()
    ua = call(a, "bdev_lvol_create", lvs_name="lvs0", lvol_name="v", size_in_mib=1)
    ub = call(b, "bdev_lvol_create", lvs_name="lvs0", lvol_name="v", size_in_mib=1)
    assert ua == ub
    error_of(a, "bdev_malloc_delete", name="nope")
    assert len(a.drain_log_lines()) == 2 and a.drain_log_lines() == []


def test_deleting_the_base_bdev_unloads_its_lvstore() -> None:
    d = target()
    call(d, "bdev_lvol_create", lvs_name="lvs0", lvol_name="v", size_in_mib=1)
    base = call(d, "bdev_get_bdevs", name="Malloc0")[0]
    assert base["claimed"] is True and base["product_name"] == "Malloc disk"
    assert call(d, "bdev_malloc_delete", name="Malloc0") is True
    assert call(d, "bdev_lvol_get_lvstores") == [] and call(d, "bdev_get_bdevs") == []


def test_a_shallow_copy_claims_its_destination_until_it_completes() -> None:
    d = target()
    call(d, "bdev_malloc_create", name="Dst", num_blocks=200 * 256, block_size=4096)
    call(d, "bdev_lvol_create", lvs_name="lvs0", lvol_name="B", size_in_mib=200)
    call(d, "bdev_lvol_snapshot", lvol_name="lvs0/B", snapshot_name="BS")
    op = call(d, "bdev_lvol_start_shallow_copy", src_lvol_name="lvs0/BS", dst_bdev_name="Dst")["operation_id"]
    assert error_of(d, "bdev_lvol_start_shallow_copy", src_lvol_name="lvs0/BS",
                    dst_bdev_name="Dst") == (-32602, "Operation not permitted")
    assert error_of(d, "bdev_lvol_create_lvstore", bdev_name="Dst", lvs_name="x") == (-1, "Operation not permitted")
    states = [call(d, "bdev_lvol_check_shallow_copy", operation_id=op)["state"] for _ in range(2)]
    assert states == ["in progress", "complete"]
    assert error_of(d, "bdev_lvol_check_shallow_copy", operation_id=op) == (-19, "No such device")  # reported once
    assert isinstance(call(d, "bdev_lvol_create_lvstore", bdev_name="Dst", lvs_name="x"), str)


SHAPES: dict[str, tuple[str, ...]] = {
    "bdev_lvol_create": ("lvs_name", "lvol_name", "size_in_mib", "thin_provision"),
    "bdev_lvol_snapshot": ("lvol_name", "snapshot_name"),
    "bdev_lvol_clone": ("snapshot_name", "clone_name"),
    "bdev_lvol_delete": ("name",),
    "bdev_lvol_resize": ("name", "size_in_mib"),
    "bdev_lvol_rename": ("old_name", "new_name"),
    "bdev_lvol_set_read_only": ("name",),
    "bdev_lvol_inflate": ("name",),
    "bdev_lvol_decouple_parent": ("name",),
    "bdev_lvol_detach_parent": ("name",),
    "bdev_lvol_set_parent": ("lvol_name", "parent_name"),
    "bdev_lvol_set_xattr": ("name", "xattr_name", "xattr_value"),
    "bdev_lvol_get_xattr": ("name", "xattr_name"),
    "bdev_lvol_get_fragmap": ("name", "offset", "size"),
    "bdev_lvol_register_snapshot_checksum": ("name",),
    "bdev_lvol_get_snapshot_checksum": ("name",),
    "bdev_lvol_start_shallow_copy": ("src_lvol_name", "dst_bdev_name"),
    "bdev_lvol_check_shallow_copy": ("operation_id",),
    "bdev_get_bdevs": ("name",),
    "bdev_lvol_get_lvols": ("lvs_name",),
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("faults", ["", "forced-removal", "abort-assert,abort-malloc", "leak-cluster",
                                    "delete-snapshot-with-clones"])
def test_random_rpc_sequences_only_answer_results_or_spdk_errors_and_keep_invariants(faults: str) -> None:
    """Fuzz the dispatch glue: every call is a result, an RpcFault or (with a crash fault) a SimulatedCrash,
    never a Python error; in healthy mode the lvstores stay consistent."""
    import random
    import time

    methods = [m for m in Dispatcher().method_names() if m not in ("spdk_kill_instance", "bdev_malloc_delete",
                                                                   "bdev_lvol_delete_lvstore", "bdev_aio_delete")
               and not m.startswith("nvmf_")]  # the lvol RPCs' fuzz (tests/test_io_sim_nvmf.py has the nvmf ones)
    deadline = time.monotonic() + 8
    for seed in range(30):
        rng = random.Random(seed)
        d = target(parse_faults(faults))
        call(d, "bdev_malloc_create", name="Dst", num_blocks=64 * 256, block_size=4096)
        names: list[str] = ["lvs0/nope", "Malloc0"]
        answered = refused = 0
        def ref(rng: random.Random = rng, names: list[str] = names) -> str:
            return rng.choice(names)

        for step in range(200):
            pool: dict[str, Any] = {
                "lvs_name": "lvs0", "lvol_name": f"v{step}" if rng.random() < 0.7 else ref(),
                "size_in_mib": rng.randrange(0, 16), "thin_provision": rng.random() < 0.5, "name": ref(),
                "snapshot_name": f"s{step}" if rng.random() < 0.5 else ref(), "clone_name": f"c{step}",
                "old_name": ref(), "new_name": f"r{step}", "parent_name": ref(), "xattr_name": "k",
                "xattr_value": "v", "src_lvol_name": ref(), "dst_bdev_name": rng.choice(["Malloc0", "Dst"]),
                "operation_id": step % 5, "offset": 0, "size": 0,
            }
            method = rng.choice(list(SHAPES)) if rng.random() < 0.9 else rng.choice(methods)
            if rng.random() < 0.9 and method in SHAPES:
                params: Any = {k: pool[k] for k in SHAPES[method]}
            else:
                params = rng.choice([None, [], {"x": 1}, {k: pool[k] for k in pool if rng.random() < 0.3}])
            try:
                result = d.handle(method, params)
            except RpcFault:
                refused += 1
                continue
            except SimulatedCrash:
                assert faults and faults != "leak-cluster" and faults != "delete-snapshot-with-clones"
                break
            answered += 1
            if isinstance(result, str) and method in ("bdev_lvol_create", "bdev_lvol_snapshot", "bdev_lvol_clone"):
                names.append(result)
        if not faults:
            for store in d.stores.values():
                assert store.check_invariants() == [], (seed, store.check_invariants())
            assert answered > 20 and refused > 20, (answered, refused)  # the fuzz reaches both outcomes
        if time.monotonic() > deadline:
            break


def test_blobstore_layout_reproduces_the_recorded_cluster_counts() -> None:
    from harness.sim.bdevs import blobstore_layout

    mib = 1024 * 1024
    for size, cluster, data in [(256, 1, 254), (256, 4, 63), (512, 1, 509), (64, 1, 63)]:
        layout = blobstore_layout(size * mib, cluster * mib)
        assert layout.total_clusters - layout.md_clusters == data, (size, cluster)


def test_grow_lvstore_follows_the_aio_file_within_the_cluster_mask(tmp_path: Any) -> None:
    img = tmp_path / "aio.img"
    img.write_bytes(b"")
    with img.open("r+b") as f:
        f.truncate(64 * 1024 * 1024)
    d = Dispatcher(seed=5)
    call(d, "bdev_aio_create", filename=str(img), name="AIO0", block_size=4096)
    call(d, "bdev_lvol_create_lvstore", bdev_name="AIO0", lvs_name="g", cluster_sz=1024 * 1024)
    with img.open("r+b") as f:
        f.truncate(128 * 1024 * 1024)
    assert call(d, "bdev_lvol_grow_lvstore", lvs_name="g") is True  # no rescan yet: the bdev has not grown
    assert call(d, "bdev_lvol_get_lvstores", lvs_name="g")[0]["total_data_clusters"] == 63
    call(d, "bdev_aio_rescan", name="AIO0")
    call(d, "bdev_lvol_grow_lvstore", lvs_name="g")
    assert call(d, "bdev_lvol_get_lvstores", lvs_name="g")[0]["free_clusters"] == 127
    with img.open("r+b") as f:
        f.truncate(40 * 1024 * 1024 * 1024)  # 40960 clusters: more than one mask page holds
    call(d, "bdev_aio_rescan", name="AIO0")
    assert error_of(d, "bdev_lvol_grow_lvstore", lvs_name="g") == (-32602, "No space left on device")


def test_deleting_the_lvstore_deletes_leaves_first_and_busy_ones_too() -> None:
    d = target()
    busy_snapshot_with_parent(d)  # P <- X (busy) <- D
    assert call(d, "bdev_lvol_delete_lvstore", lvs_name="lvs0") is True
    assert call(d, "bdev_lvol_get_lvstores") == [] and call(d, "bdev_lvol_get_lvols") == []
    assert call(d, "bdev_get_bdevs", name="Malloc0")[0]["claimed"] is False


def test_forced_removal_then_lvstore_delete_hits_the_assert_in_lvs_remove() -> None:
    d = target(frozenset({"forced-removal"}))
    busy_snapshot_with_parent(d)
    error_of(d, "bdev_lvol_delete", name="lvs0/X")  # the forced removal: P keeps X's blob as its clone
    with pytest.raises(SimulatedCrash) as crash:
        call(d, "bdev_lvol_delete_lvstore", lvs_name="lvs0")
    c = crash.value
    assert c.kind == "abort"
    assert "vbdev_lvol.c:490: _vbdev_lvs_remove_lvol_cb: Assertion `false' failed." in c.stderr_text
    assert c.log_lines == ["vbdev_lvol.c: 489:_vbdev_lvs_remove_lvol_cb: *ERROR*: Lvols left in lvs, but unable "
                           "to delete."]


def test_lvol_alias_and_bdev_names_share_one_namespace() -> None:
    d = target()
    call(d, "bdev_malloc_create", name="lvs0/taken", num_blocks=256, block_size=4096)
    assert error_of(d, "bdev_lvol_create", lvs_name="lvs0", lvol_name="taken", size_in_mib=1) == (
        -32602, "File exists")
    call(d, "bdev_lvol_create", lvs_name="lvs0", lvol_name="v", size_in_mib=1)
    assert error_of(d, "bdev_lvol_rename", old_name="lvs0/v", new_name="taken") == (-32602, "File exists")
    assert error_of(d, "bdev_malloc_create", name="lvs0/v", num_blocks=256, block_size=4096) == (-17, "File exists")


def test_a_256_character_rename_splits_alias_and_name_as_spdk_does() -> None:
    d = target()
    uuid = call(d, "bdev_lvol_create", lvs_name="lvs0", lvol_name="v", size_in_mib=1, thin_provision=True)
    call(d, "bdev_lvol_rename", old_name=uuid, new_name="x" * 256)
    assert call(d, "bdev_get_bdevs", name=uuid)[0]["aliases"] == ["lvs0/" + "x" * 256]
    assert call(d, "bdev_lvol_get_lvols")[0]["alias"] == "lvs0/" + "x" * 255
    assert error_of(d, "bdev_get_bdevs", name="lvs0/" + "x" * 255)[0] == -19  # not a bdev alias ...
    assert call(d, "bdev_lvol_delete", name="lvs0/" + "x" * 255) is True  # ... but delete finds it by names
