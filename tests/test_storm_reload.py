"""Lvstore unload and reload: hot-remove the aio base bdev, create it again on the same file, let the examine
load the lvstore. On the reference target what is on disk comes back (and what a forced removal left behind
comes back as an lvol); in a storm, a reload that loses or adds anything is a finding."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from harness.cli import main as cli_main
from harness.sim.methods import Dispatcher
from harness.sim.protocol import RpcFault

pytestmark = pytest.mark.timeout(120)


def call(d: Dispatcher, method: str, **params: Any) -> Any:
    return d.handle(method, params or None)


def _aio_target(tmp_path: Path, faults: frozenset[str] = frozenset()) -> tuple[Dispatcher, str]:
    img = tmp_path / "aio0.img"
    with img.open("wb") as f:
        f.truncate(256 << 20)
    d = Dispatcher(faults=faults, seed=3)
    call(d, "bdev_aio_create", filename=str(img), name="AIO0", block_size=4096)
    call(d, "bdev_lvol_create_lvstore", bdev_name="AIO0", lvs_name="lvs0", cluster_sz=1 << 20)
    return d, str(img)


def _reload(d: Dispatcher, img: str) -> None:
    call(d, "bdev_aio_delete", name="AIO0")
    with pytest.raises(RpcFault):
        call(d, "bdev_lvol_get_lvstores", lvs_name="lvs0")
    call(d, "bdev_aio_create", filename=img, name="AIO0", block_size=4096)
    assert call(d, "bdev_wait_for_examine") is True


def _listing(d: Dispatcher) -> list[dict[str, Any]]:
    out = []
    for b in call(d, "bdev_get_bdevs"):
        lvol = b.get("driver_specific", {}).get("lvol")
        if lvol is not None:
            out.append({"uuid": b["uuid"], "aliases": b["aliases"], "num_blocks": b["num_blocks"], **lvol})
    return sorted(out, key=lambda e: e["uuid"])


def test_reference_target_reload_gives_back_the_same_tree(tmp_path: Path) -> None:
    d, img = _aio_target(tmp_path)
    a = call(d, "bdev_lvol_create", lvs_name="lvs0", lvol_name="a", size_in_mib=16)
    call(d, "bdev_lvol_snapshot", lvol_name=a, snapshot_name="s")
    call(d, "bdev_lvol_clone", snapshot_name="lvs0/s", clone_name="c")
    call(d, "bdev_lvol_set_xattr", name=a, xattr_name="k", xattr_value="v")
    call(d, "bdev_lvol_register_snapshot_checksum", name="lvs0/s")
    before, store_before = _listing(d), call(d, "bdev_lvol_get_lvstores", lvs_name="lvs0")
    _reload(d, img)
    assert _listing(d) == before
    assert call(d, "bdev_lvol_get_lvstores", lvs_name="lvs0") == store_before
    assert call(d, "bdev_lvol_get_xattr", name=a, xattr_name="k") == "v"
    assert call(d, "bdev_lvol_get_snapshot_checksum", name="lvs0/s")["checksum"] is not None
    with pytest.raises(RpcFault) as info:
        call(d, "bdev_wait_for_examine", name="x")
    assert info.value.message == "bdev_wait_for_examine requires no parameters"


def test_a_blob_left_by_a_forced_removal_comes_back_as_an_lvol(tmp_path: Path) -> None:
    d, img = _aio_target(tmp_path, frozenset({"forced-removal"}))
    a = call(d, "bdev_lvol_create", lvs_name="lvs0", lvol_name="a", size_in_mib=64)
    snap = call(d, "bdev_lvol_snapshot", lvol_name=a, snapshot_name="s")
    d.stores[next(iter(d.stores))].open_blob(snap)  # held open, as a checksum in progress holds it
    with pytest.raises(RpcFault):
        call(d, "bdev_lvol_delete", name=snap)  # EBUSY, and the lvol goes anyway
    assert snap not in [e["uuid"] for e in _listing(d)]
    _reload(d, img)
    assert snap in [e["uuid"] for e in _listing(d)]


def _run(tmp_path: Path, bdev: str, *sets: str) -> dict[str, Any]:
    run_dir = tmp_path / bdev
    rc = cli_main(["run", "--target", "sim", "--bdev", bdev, "--duration", "6s", "--run-dir", str(run_dir),
                   "--set", "storm.strategies={lvstore-reload: 0.2}", *(x for s in sets for x in ("--set", s))])
    summary = json.loads((run_dir / "summary.json").read_text())
    summary["rc"] = rc
    return summary


def test_storm_reloads_an_aio_lvstore_and_finds_nothing_on_a_healthy_target(tmp_path: Path) -> None:
    s = _run(tmp_path, "aio")
    assert s["rc"] == 0, s.get("findings")
    assert s["ops_by_method"].get("bdev_aio_delete", 0) >= 1
    assert s["ops_by_method"]["bdev_aio_create"] == s["ops_by_method"]["bdev_aio_delete"]
    assert not s.get("findings")


def test_storm_on_malloc_says_why_it_does_not_reload(tmp_path: Path) -> None:
    s = _run(tmp_path, "malloc")
    assert "bdev_aio_delete" not in s["ops_by_method"]
    assert "is not an aio bdev" in json.dumps(s)


def test_a_snapshot_without_clones_is_no_snapshot_after_a_reload(tmp_path: Path) -> None:
    """What spdk_tgt 24.09 showed in an lvstore-reload storm: the snapshot list is rebuilt from clone links."""
    d, img = _aio_target(tmp_path)
    a = call(d, "bdev_lvol_create", lvs_name="lvs0", lvol_name="a", size_in_mib=8)
    s = call(d, "bdev_lvol_snapshot", lvol_name=a, snapshot_name="s")
    call(d, "bdev_lvol_delete", name=a)
    lvol = call(d, "bdev_get_bdevs", name=s)[0]["driver_specific"]["lvol"]
    assert lvol["snapshot"] is True and not lvol.get("clones")
    _reload(d, img)
    lvol = call(d, "bdev_get_bdevs", name=s)[0]["driver_specific"]["lvol"]
    assert lvol["snapshot"] is False
    assert call(d, "bdev_get_bdevs", name=s)[0]["driver_specific"]["lvol"]["num_allocated_clusters"] == 8
