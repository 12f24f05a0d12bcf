"""harness.target_bundle: this machine's spdk_tgt carried to a node that has none, for real (ldd, tar over the
Host API, the start check), with small system binaries standing in for spdk_tgt; the QEMU test runs a real one."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from harness import target_bundle
from harness.errors import TargetError
from harness.hosts.local import LocalHost
from harness.session import TargetNeeds
from harness.target import TargetConfig, node_spdk_tgt


def test_gather_takes_the_libraries_ldd_names_but_not_glibc_and_names_the_bundle_by_content(tmp_path: Path) -> None:
    ssh = shutil.which("ssh")
    assert ssh is not None
    binary = tmp_path / "build" / "bin" / "ssh"
    binary.parent.mkdir(parents=True)
    shutil.copy2(ssh, binary)
    bundle = target_bundle.gather(str(binary))
    names = [name for name, _ in bundle.files]
    assert names[0] == "bin/ssh"
    assert any(n.startswith("lib/libcrypto.so") for n in names), names
    assert not any(n.startswith(("lib/libc.so", "lib/ld-linux")) for n in names), names
    assert bundle.environment()["LD_LIBRARY_PATH"] == f"{bundle.root}/lib"
    assert bundle.executable == f"{bundle.root}/bin/ssh"
    again = target_bundle.gather(str(binary))
    assert again.digest == bundle.digest
    with open(binary, "ab") as f:
        f.write(b"\0")  # another build: another bundle
    assert target_bundle.gather(str(binary)).digest != bundle.digest


def test_install_unpacks_once_checks_it_starts_and_refuses_a_binary_that_does_not(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(target_bundle, "BUNDLES_DIR", str(tmp_path / "node"))
    host = LocalHost("node")
    said: list[str] = []
    ok = target_bundle.gather(str(shutil.which("true")))
    path = target_bundle.install(ok, host, said.append)
    assert Path(path).is_file() and (Path(ok.root) / target_bundle.COMPLETE).is_file()
    assert len(said) == 1 and "installed" in said[0] and ok.root in said[0], said
    assert target_bundle.install(ok, host, said.append) == path and len(said) == 1  # already there: no copy
    bad = target_bundle.gather(str(shutil.which("false")))
    with pytest.raises(TargetError, match="does not run there"):
        target_bundle.install(bad, host)
    assert not Path(bad.root).exists(), "a bundle that does not start is not left behind"


def test_gather_names_a_binary_that_is_not_here() -> None:
    with pytest.raises(TargetError, match=r"not an executable file on this machine"):
        target_bundle.gather("/nonexistent/build/bin/spdk_tgt")


class _Remote(LocalHost):
    """This machine seen as a node that is not it (what the ship policy asks)."""

    @property
    def is_local(self) -> bool:
        return False


def test_a_remote_node_without_spdk_tgt_gets_this_machines_and_never_means_never(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(target_bundle, "BUNDLES_DIR", str(tmp_path / "node"))
    monkeypatch.setattr(target_bundle, "mirror_here", lambda bundle: bundle.root)
    here = tmp_path / "spdk_tgt"
    shutil.copy2(str(shutil.which("true")), here)
    node = _Remote("node")
    monkeypatch.setattr(node, "exists", lambda path: path.startswith(str(tmp_path / "node")))
    monkeypatch.setattr(node, "which", lambda program: None)
    path, bundle = node_spdk_tgt(node, TargetConfig(spdk_tgt=str(here)), announce=lambda _m: None)
    assert bundle is not None and path == bundle.executable and path.startswith(str(tmp_path / "node"))
    with pytest.raises(TargetError, match="spdk_tgt not found"):
        node_spdk_tgt(node, TargetConfig(spdk_tgt=str(here), ship="never"))
    with pytest.raises(TargetError, match="nor is one on this machine"):
        node_spdk_tgt(node, TargetConfig(spdk_tgt="/nonexistent/spdk_tgt"))


def test_a_replay_that_attaches_a_pcie_nvme_binds_pci_and_names_the_drive_to_empty() -> None:
    calls = [("bdev_nvme_attach_controller", {"name": "Nvme0", "trtype": "PCIe", "traddr": "0000:00:04.0"},
              ["Nvme0n1"]),
             ("bdev_nvme_attach_controller", {"name": "T", "trtype": "tcp", "traddr": "127.0.0.1"}, ["Tn1"]),
             ("bdev_lvol_create_lvstore", {"bdev_name": "Nvme0n1", "lvs_name": "lvs0"}, "u")]
    needs = TargetNeeds.of_calls(calls)
    assert needs.pci and needs.nvme == ("0000:00:04.0",)
    assert not TargetNeeds.of_calls(calls[1:]).pci
