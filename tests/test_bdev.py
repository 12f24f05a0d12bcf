"""Base bdevs and the lvstore: created through SPDK's RPCs, torn down children-first, nothing left behind."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.bdev import BaseBdev, BdevConfig, Lvstore, LvstoreConfig, missing_pci_addr, verify_clean
from harness.errors import ConfigError, TargetError
from harness.hosts.local import LocalHost
from harness.rpc.sync import SyncRpc
from harness.session import TargetNeeds, TargetSession
from harness.target import TargetConfig


@pytest.fixture
def sim(tmp_path: Path):
    needs = TargetNeeds.of_run(BdevConfig(size_mib=64))
    with TargetSession(LocalHost(), TargetConfig(kind="sim"), str(tmp_path), needs=needs,
                       announce=lambda m: None) as session, SyncRpc(session.host, session.sock_path) as rpc:
        yield session, rpc


def _tree(rpc: SyncRpc, lvs: str) -> None:
    """A snapshot with two clones, one of which has a snapshot of its own: deletion order matters."""
    base = rpc.call("bdev_lvol_create", lvs_name=lvs, lvol_name="base", size_in_mib=8, thin_provision=False)
    snap = rpc.call("bdev_lvol_snapshot", lvol_name=base, snapshot_name="snap")
    c1 = rpc.call("bdev_lvol_clone", snapshot_name=snap, clone_name="c1")
    rpc.call("bdev_lvol_clone", snapshot_name=snap, clone_name="c2")
    rpc.call("bdev_lvol_snapshot", lvol_name=c1, snapshot_name="snap2")


@pytest.mark.parametrize("kind", ["malloc", "aio"])
def test_lvstore_teardown_deletes_children_first_and_leaves_nothing(sim, kind: str, tmp_path: Path) -> None:
    tgt, rpc = sim
    base = BaseBdev(tgt.host, BdevConfig(kind=kind, size_mib=64), str(tmp_path))
    name = base.create(rpc)
    lvs = Lvstore(LvstoreConfig(cluster_size=1 << 20), name)
    info = lvs.create(rpc)
    assert info["free_clusters"] == lvs.start_free_clusters > 0
    _tree(rpc, lvs.name)
    assert len(rpc.call("bdev_lvol_get_lvols", lvs_name=lvs.name)) == 5
    assert lvs.teardown(rpc) == []
    base.delete(rpc)
    assert verify_clean(rpc, name) == []
    if kind == "aio":
        assert not (tmp_path / "aio0.img").exists()


def test_teardown_reports_leaked_clusters(tmp_path: Path) -> None:
    cfg = TargetConfig(kind="sim", sim_fault="leak-cluster")
    with TargetSession(LocalHost(), cfg, str(tmp_path), needs=TargetNeeds.of_run(BdevConfig(size_mib=64)),
                       announce=lambda m: None) as tgt, SyncRpc(tgt.host, tgt.sock_path) as rpc:
        base = BaseBdev(tgt.host, BdevConfig(size_mib=64), str(tmp_path))
        lvs = Lvstore(LvstoreConfig(), base.create(rpc))
        lvs.create(rpc)
        rpc.call("bdev_lvol_create", lvs_name=lvs.name, lvol_name="thick", size_in_mib=8, thin_provision=False)
        problems = lvs.teardown(rpc)
        assert any(p.startswith("leaked clusters: lvstore lvs0 has") for p in problems), problems


def test_bdev_config_errors_name_the_field() -> None:
    # A profile may leave the address to each node (nightly does); what still lacks one by then cannot start.
    assert missing_pci_addr(BdevConfig(kind="nvme")).startswith("bdev.pci_addr: required when bdev.kind is nvme")
    assert missing_pci_addr(BdevConfig(kind="nvme", pci_addr="0000:00:1f.0")) is None
    assert missing_pci_addr(BdevConfig(kind="malloc")) is None
    with pytest.raises(ValueError, match=r"expected a PCI address like 0000:00:04\.0, got 'x'"):
        BdevConfig(kind="nvme", pci_addr="x")
    with pytest.raises(ValueError, match="block_size: expected 512 or 4096"):
        BdevConfig(block_size=1000)


def test_missing_aio_file_is_a_config_error(sim, tmp_path: Path) -> None:
    tgt, rpc = sim
    base = BaseBdev(tgt.host, BdevConfig(kind="aio", aio_path=str(tmp_path / "nope.img")), str(tmp_path))
    with pytest.raises(ConfigError, match=r"bdev.aio_path: .*nope.img does not exist"):
        base.create(rpc)


def test_nvme_not_present_says_how_to_find_it(sim, tmp_path: Path) -> None:
    tgt, rpc = sim
    base = BaseBdev(tgt.host, BdevConfig(kind="nvme", pci_addr="0000:ff:1f.7"), str(tmp_path))
    with pytest.raises((ConfigError, TargetError), match=r"no PCI device 0000:ff:1f.7 .*lspci"):
        base.create(rpc)


def test_nvme_without_an_address_is_one_line_naming_where_to_set_it(sim, tmp_path: Path) -> None:
    tgt, rpc = sim
    base = BaseBdev(tgt.host, BdevConfig(kind="nvme"), str(tmp_path))
    with pytest.raises(ConfigError) as info:
        base.create(rpc)
    msg = str(info.value)
    assert "bdev.pci_addr: required when bdev.kind is nvme" in msg and "nvme_pci_addrs" in msg and "\n" not in msg


def test_fixtures_give_a_ready_lvstore(lvstore, rpc) -> None:
    """The pytest plugin's own fixtures: an lvstore on the configured bdev, torn down and verified after."""
    uuid = rpc.call("bdev_lvol_create", lvs_name=lvstore.name, lvol_name="v", size_in_mib=4, thin_provision=True)
    assert rpc.call("bdev_lvol_get_lvols", lvs_name=lvstore.name)[0]["uuid"] == uuid


def test_malloc_out_of_hugepages_says_what_to_change(tmp_path: Path) -> None:
    # spdk_tgt 24.09 answers -12 when its hugepages are short (create_malloc_disk: spdk_zmalloc() failed),
    # seen on this machine with other SPDK apps running.
    cfg = BdevConfig(kind="malloc", size_mib=8)

    class Short:
        def call(self, method: str, **params: object) -> object:
            from harness.rpc.errors import RpcError

            raise RpcError(method, -12, "Cannot allocate memory")

    with pytest.raises(TargetError) as info:
        BaseBdev(LocalHost(), cfg, str(tmp_path)).create(Short())  # type: ignore[arg-type]
    text = str(info.value)
    assert "no 8 MiB of hugepage memory" in text and "bdev.size_mib" in text and "target.hugepages_mb" in text
    assert "\n" not in text
