"""terraform/aws-sles's node preparation (scripts/lvol-storm-node.sh) run against a made-up /sys: it binds only
instance-store NVMe (never the EBS root), falls back to uio_pci_generic, refuses addresses that are not instance
store and hugepages the kernel did not reserve at boot, each in one line that names the fix, and puts the
hugepages on the kernel command line. A thread plays the kernel's part of binding (drivers_probe)."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.provision.terraform import MODULES_DIR

SCRIPT = MODULES_DIR / "aws-sles" / "scripts" / "lvol-storm-node.sh"
EBS, STORE = "0000:00:04.0", "0000:00:1f.0"
pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


class FakeKernel:
    """/sys with an EBS and an instance-store NVMe controller; binds a device written to drivers_probe to its
    driver_override, unless that driver is in `refuse` (as vfio-pci is where no-IOMMU mode is off)."""

    def __init__(self, root: Path, refuse: tuple[str, ...] = ()) -> None:
        self.sys = root / "sys"
        self.refuse = refuse
        for name in ("nvme", "vfio-pci", "uio_pci_generic"):
            (self.sys / "bus/pci/drivers" / name).mkdir(parents=True)
        for addr, model in ((EBS, "Amazon Elastic Block Store              "),
                            (STORE, "Amazon EC2 NVMe Instance Storage        ")):
            dev = self.sys / "bus/pci/devices" / addr
            (dev / "nvme/nvme0").mkdir(parents=True)
            (dev / "class").write_text("0x010802\n")
            (dev / "nvme/nvme0/model").write_text(model + "\n")
            (dev / "driver_override").write_text("(null)\n")
            (dev / "driver").symlink_to(self.sys / "bus/pci/drivers/nvme")
        hp = self.sys / "kernel/mm/hugepages/hugepages-2048kB"
        hp.mkdir(parents=True)
        hp.joinpath("nr_hugepages").write_text("1024\n")
        self.probe = self.sys / "bus/pci/drivers_probe"
        os.mkfifo(self.probe)
        self._stop = False
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop:
            with open(self.probe) as fifo:
                addr = fifo.read().strip()
            if not addr:
                continue
            dev = self.sys / "bus/pci/devices" / addr
            want = (dev / "driver_override").read_text().strip()
            if want not in self.refuse:
                (dev / "driver").unlink()
                (dev / "driver").symlink_to(self.sys / "bus/pci/drivers" / want)
                shutil.rmtree(dev / "nvme")  # the kernel's nvme driver let go of it

    def close(self) -> None:
        self._stop = True
        while self._thread.is_alive():  # wake a reader blocked in open(); never block here if there is none
            try:
                os.close(os.open(self.probe, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:
                pass
            self._thread.join(timeout=0.1)

    def driver(self, addr: str) -> str:
        return os.readlink(self.sys / "bus/pci/devices" / addr / "driver").rsplit("/", 1)[-1]


@pytest.fixture
def node(tmp_path: Path) -> Iterator[tuple[Path, dict[str, str]]]:
    (tmp_path / "etc").mkdir()
    (tmp_path / "cmdline").write_text("BOOT_IMAGE=/boot/vmlinuz root=UUID=x hugepages=1024 quiet\n")
    env = {"PATH": os.environ["PATH"], "LVS_CONF": str(tmp_path / "etc/node.conf"),
           "LVS_SYSFS": str(tmp_path / "sys"), "LVS_CMDLINE": str(tmp_path / "cmdline"),
           "LVS_STATE": str(tmp_path / "run"), "LVS_GRUB_DEFAULT": str(tmp_path / "etc/grub"), "LVS_TOOLS": "sh",
           "LVS_MODPROBE": "true"}
    yield tmp_path, env


def _conf(root: Path, addrs: str = STORE) -> None:
    (root / "etc/node.conf").write_text(f'NR_HUGEPAGES=1024\nNVME_PCI_ADDRS="{addrs}"\nNVME_DRIVER=vfio-pci\n'
                                        "INSTANCE_TYPE=i4i.xlarge\n")


def _run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=30)


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("refuse", "bound"), [((), "vfio-pci"), (("vfio-pci",), "uio_pci_generic")])
def test_boot_binds_the_instance_store_and_never_the_ebs_root(node: tuple[Path, dict[str, str]],
                                                              refuse: tuple[str, ...], bound: str) -> None:
    root, env = node
    _conf(root)
    kernel = FakeKernel(root, refuse)
    try:
        assert _run(env, "status").stdout.startswith("pending: ")
        res = _run(env, "boot")
        assert res.returncode == 0, res.stderr
        assert kernel.driver(STORE) == bound and kernel.driver(EBS) == "nvme"
        assert (root / f"sys/bus/pci/devices/{EBS}/driver_override").read_text() == "(null)\n"
        said = _run(env, "status").stdout.strip()
        assert said == f"ready: hugepages=1024 nvme={STORE}={bound}"
        again = _run(env, "boot")  # a restarted unit: already bound, same answer
        assert again.returncode == 0 and _run(env, "status").stdout.strip() == said
    finally:
        kernel.close()


@pytest.mark.timeout(60)
def test_boot_refuses_an_address_that_is_not_instance_store(node: tuple[Path, dict[str, str]]) -> None:
    root, env = node
    _conf(root, addrs=EBS)
    kernel = FakeKernel(root)
    try:
        res = _run(env, "boot")
        assert res.returncode == 1
        said = _run(env, "status").stdout.strip()
        assert said == (f"failed: nvme: {EBS} is not an instance-store NVMe controller on this i4i.xlarge (its "
                        f"instance store is at: {STORE}): set the module's nvme_pci_addrs to those")
        assert kernel.driver(EBS) == "nvme" and kernel.driver(STORE) == "nvme"  # nothing was unbound
    finally:
        kernel.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("cmdline", "reason"), [
    ("root=UUID=x hugepages=1024", "the kernel reserved 10 of 1024 2 MiB pages at boot: this i4i.xlarge has too "
                                   "little memory for hugepages_mb; lower it or pick a bigger instance_type"),
    ("root=UUID=x quiet", "booted without hugepages=1024 on the kernel command line (root=UUID=x quiet): first-boot "
                          "did not update the boot loader"),
])
def test_boot_fails_when_the_kernel_did_not_reserve_the_hugepages(node: tuple[Path, dict[str, str]], cmdline: str,
                                                                  reason: str) -> None:
    root, env = node
    _conf(root)
    kernel = FakeKernel(root)
    try:
        (root / "sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages").write_text("10\n")
        (root / "cmdline").write_text(cmdline + "\n")
        assert _run(env, "boot").returncode == 1
        said = _run(env, "status").stdout.strip()
        assert said.startswith(f"failed: hugepages: {reason}") and "\n" not in said
        assert kernel.driver(STORE) == "nvme"  # no binding on a node that cannot run the target anyway
    finally:
        kernel.close()


def test_first_boot_puts_the_hugepages_on_the_kernel_command_line(node: tuple[Path, dict[str, str]]) -> None:
    root, env = node
    _conf(root)
    grub = root / "etc/grub"
    grub.write_text('GRUB_TIMEOUT=0\nGRUB_CMDLINE_LINUX_DEFAULT="splash=silent hugepages=16 quiet"\n'
                    'GRUB_CMDLINE_LINUX=""\n')
    res = _run(env, "first-boot")
    assert res.returncode == 0, res.stderr
    assert grub.read_text() == ('GRUB_TIMEOUT=0\nGRUB_CMDLINE_LINUX_DEFAULT="default_hugepagesz=2M hugepagesz=2M '
                                'hugepages=1024 splash=silent quiet"\nGRUB_CMDLINE_LINUX=""\n')
    assert (root / "etc/first-boot-done").exists()  # cloud-init reboots only then
    grub.write_text("GRUB_TIMEOUT=0\n")
    (root / "etc/first-boot-done").unlink()
    assert _run(env, "first-boot").returncode == 1
    assert "no GRUB_CMDLINE_LINUX_DEFAULT line" in _run(env, "status").stdout
    assert not (root / "etc/first-boot-done").exists()


WAIT_READY = MODULES_DIR / "aws-sles" / "scripts" / "wait-ready.sh"


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("answers", "rc", "said"), [
    (["ssh: connect to host 127.0.0.2 port 22: Connection refused", "pending: status: running",
      "ready: hugepages=2"], 0, "wait-ready lvs-a-0: ready: hugepages=2"),
    (["pending: status: done", "failed: nvme: 0000:00:04.0 is not an instance-store NVMe controller"],
     1, "wait-ready lvs-a-0 (127.0.0.2): failed: nvme: 0000:00:04.0 is not an instance-store NVMe controller"),
    (["pending: status: running"] * 100, 1, "wait-ready lvs-a-0 (127.0.0.2): not ready after 2s; last answer: "
                                            "pending: status: running"),
])
def test_wait_ready_retries_until_the_node_answers_and_stops_at_its_first_failure(
        tmp_path: Path, answers: list[str], rc: int, said: str) -> None:
    """wait-ready.sh as apply runs it, with a stand-in `ssh` that answers from a script: connection errors and
    `pending` are retried, `failed` ends the wait at once with the node's reason, silence ends at the timeout.
    The stand-in also records how it was called: the pinned host key, no trust on first use."""
    (tmp_path / "answers").write_text("\n".join(answers) + "\n")
    fake = tmp_path / "bin" / "ssh"
    fake.parent.mkdir()
    fake.write_text("#!/usr/bin/env bash\n"
                    f'printf "%s\\n" "$*" >> {tmp_path}/calls\n'
                    f'cp -- "$(printf "%s\\n" "$@" | sed -n "s/^UserKnownHostsFile=//p")" {tmp_path}/known\n'
                    f'n=$(wc -l < {tmp_path}/calls)\n'
                    f'line=$(sed -n "${{n}}p" {tmp_path}/answers)\n'
                    'echo "$line"\n'
                    'case $line in ssh:*) exit 255 ;; esac\n')
    fake.chmod(0o755)
    env = {"PATH": f"{fake.parent}:{os.environ['PATH']}", "NAME": "lvs-a-0", "ADDRESS": "127.0.0.2",
           "USER": "ec2-user", "KEY": str(tmp_path / "id"), "HOST_PUBKEY": "ssh-ed25519 AAAAhost lvs-a-0",
           "TIMEOUT": "2", "POLL": "0.05"}
    res = subprocess.run(["bash", str(WAIT_READY)], env=env, capture_output=True, text=True, timeout=30)
    assert res.returncode == rc, res.stdout + res.stderr
    assert (res.stdout if rc == 0 else res.stderr).strip() == said
    calls = (tmp_path / "calls").read_text().splitlines()
    if answers[-1].startswith(("ready", "failed")):
        assert len(calls) == len(answers)  # asked again after each error and pending, never after the end
    else:
        assert len(calls) >= 3  # kept asking until the timeout
    assert all("StrictHostKeyChecking=yes" in c and "BatchMode=yes" in c and c.endswith(
        "ec2-user@127.0.0.2 /usr/local/bin/lvol-storm-node status") for c in calls), calls[0]
    assert (tmp_path / "known").read_text() == "127.0.0.2 ssh-ed25519 AAAAhost lvs-a-0\n"
