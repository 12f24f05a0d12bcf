"""Lab inventory: a valid file becomes SshHosts and settings; each mistake is one line naming the field path."""

from __future__ import annotations

import os
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest

from harness.errors import ConfigError
from harness.hosts.ssh import SshHost
from harness.provision.inventory import load_inventory

SCRIPTS = Path(__file__).resolve().parents[1] / "terraform" / "local" / "scripts"

GOOD = """\
nodes:
  - name: lab1
    address: 192.0.2.10
    key: keys/id
    known_hosts: known_hosts
    spdk_tgt: /opt/spdk/build/bin/spdk_tgt
    cpumask: 0x3
    hugepages_mb: 2048
    bind_driver: vfio-pci
    bdevs:
      - {kind: nvme, pci_addr: "0000:00:04.0"}
      - {kind: aio, aio_path: /dev/nvme1n1, block_size: 512}
  - name: lab2
    address: 192.0.2.11
    port: 2222
    user: ec2-user
    key: keys/id
    insecure_host_keys: true
"""


@pytest.fixture
def lab(tmp_path: Path) -> Path:
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "id").write_text("not read until connecting\n")
    (tmp_path / "known_hosts").write_text("192.0.2.10 ssh-ed25519 AAAA\n")
    return tmp_path


def _write(lab: Path, text: str) -> Path:
    path = lab / "lab.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_valid_inventory_gives_hosts_and_settings(lab: Path) -> None:
    inv = load_inventory(_write(lab, GOOD))
    first, second = inv.nodes
    assert first.key == str(lab / "keys" / "id") and first.known_hosts == str(lab / "known_hosts")
    assert first.target_settings() == {"cpumask": "0x3", "hugepages_mb": 2048,
                                       "spdk_tgt": "/opt/spdk/build/bin/spdk_tgt"}
    assert first.bdev_settings() == [{"kind": "nvme", "pci_addr": "0000:00:04.0"},
                                     {"kind": "aio", "aio_path": "/dev/nvme1n1", "block_size": 512}]
    assert first.bind_driver == "vfio-pci" and second.bind_driver is None
    with pytest.warns(UserWarning, match="insecure_host_keys"):
        hosts = inv.hosts()
    assert all(isinstance(h, SshHost) for h in hosts)
    assert [(h.name, h.address, h.port, h.user, h.sudo) for h in hosts] == [
        ("lab1", "192.0.2.10", 22, "root", False), ("lab2", "192.0.2.11", 2222, "ec2-user", True)]
    assert hosts[0].known_hosts == str(lab / "known_hosts") and hosts[1].insecure_host_keys
    assert inv.node("lab2").uses_sudo
    with pytest.raises(ConfigError, match="no node named 'lab3'; known: lab1, lab2"):
        inv.node("lab3")


@pytest.mark.parametrize(("old", "new", "expected"), [
    ('pci_addr: "0000:00:04.0"', "pci_addr: x",
     "nodes[0].bdevs[0].pci_addr: expected a PCI address like 0000:00:04.0, got 'x'"),
    ("kind: aio, aio_path: /dev/nvme1n1", "kind: aio, aio_path: nvme1n1",
     "nodes[0].bdevs[1].aio_path: expected an absolute path on the node, like /dev/nvme1n1, got 'nvme1n1'"),
    ("block_size: 512", "block_size: 1000", "nodes[0].bdevs[1].block_size: expected 512 or 4096, got 1000"),
    ("{kind: nvme, ", "{kind: iscsi, ", "nodes[0].bdevs[0]: expected kind: nvme or aio, got 'iscsi'"),
    ('{kind: nvme, pci_addr: "0000:00:04.0"}', "{kind: nvme}", "nodes[0].bdevs[0].pci_addr: required field missing"),
    ("    address: 192.0.2.11\n", "    adress: 192.0.2.11\n",
     "nodes[1].adress: unknown field (did you mean 'address'?) (and 1 more)"),
    ("    port: 2222\n", "    port: 70000\n", "nodes[1].port: expected less than or equal to 65535, got 70000"),
    ("bind_driver: vfio-pci", "bind_driver: vfio",
     "nodes[0].bind_driver: expected 'vfio-pci' or 'uio_pci_generic', got 'vfio'"),
    ("cpumask: 0x3", "cpumask: three", "nodes[0].cpumask: expected a value matching"),
    ("    insecure_host_keys: true\n", "",
     "nodes[1]: set known_hosts (a file with this node's host key) or insecure_host_keys: true"),
    ("    known_hosts: known_hosts\n", "    known_hosts: nowhere\n", "nodes[0].known_hosts: known_hosts file "),
    ("    key: keys/id\n    known_hosts", "    key: keys/none\n    known_hosts", "nodes[0].key: private key "),
    ("name: lab2", "name: lab1", "nodes[1].name: duplicate name 'lab1' (also nodes[0])"),
    ("  - name: lab1\n    address", "  - address", "nodes[0].name: required field missing"),
])
def test_mistakes_are_one_line_with_the_field_path(lab: Path, old: str, new: str, expected: str) -> None:
    assert old in GOOD
    path = _write(lab, GOOD.replace(old, new, 1))
    with pytest.raises(ConfigError) as info:
        load_inventory(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}: {expected}"), msg
    assert "\n" not in msg


def test_missing_key_names_the_resolved_path(lab: Path) -> None:
    path = _write(lab, GOOD.replace("key: keys/id\n    known_hosts", "key: keys/none\n    known_hosts"))
    with pytest.raises(ConfigError, match=f"private key {lab}/keys/none does not exist on this machine"):
        load_inventory(path)


def test_file_level_mistakes(lab: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read inventory"):
        load_inventory(tmp_path / "absent.yaml")
    with pytest.raises(ConfigError, match=r"lab.yaml:\d+:\d+: not valid YAML"):
        load_inventory(_write(lab, "nodes:\n  - name: [unclosed\n"))
    with pytest.raises(ConfigError, match="expected a mapping with a `nodes:` list"):
        load_inventory(_write(lab, "- just a list\n"))
    with pytest.raises(ConfigError, match=r"lab.yaml: nodes: expected at least one entry, got none$"):
        load_inventory(_write(lab, "nodes: []\n"))
    with pytest.raises(ConfigError, match=r"lab.yaml: node: unknown field \(did you mean 'nodes'\?\)"):
        load_inventory(_write(lab, "node: []\n"))


@pytest.mark.netns
@pytest.mark.skipif(not (os.geteuid() == 0 and os.access("/usr/sbin/sshd", os.X_OK) and shutil.which("ip")),
                    reason="needs root, ip and /usr/sbin/sshd to make a node in a network namespace")
def test_inventory_hosts_reach_a_real_node(tmp_path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "id")], check=True)
    used = subprocess.run(["ip", "-o", "-4", "addr", "show"], capture_output=True, text=True).stdout
    octet = next(o for o in (250 + (os.getpid() + k) % 6 for k in range(6)) if f" 10.213.{o}." not in used)
    run = f"i{os.getpid() % 100000}"
    env = {**os.environ, "NS": f"lvs-{run}-0", "VETH_HOST": f"lvh{run}-0", "VETH_NODE": f"lvn{run}-0",
           "HOST_ADDR": f"10.213.{octet}.1", "NODE_ADDR": f"10.213.{octet}.2", "NODE_DIR": str(tmp_path / "n0"),
           "PUBKEY": str(tmp_path / "id.pub")}
    try:
        subprocess.run([str(SCRIPTS / "node-up.sh")], env=env, check=True, timeout=30, capture_output=True)
        path = tmp_path / "lab.yaml"
        path.write_text(f"nodes:\n  - name: netns0\n    address: {env['NODE_ADDR']}\n    key: id\n"
                        f"    known_hosts: n0/known_hosts\n    bdevs: [{{kind: aio, aio_path: /tmp/aio0}}]\n")
        (host,) = load_inventory(path).hosts()
        with host:
            assert env["NODE_ADDR"] in host.run(["ip", "-o", "-4", "addr", "show"]).check().stdout
    finally:
        subprocess.run([str(SCRIPTS / "node-down.sh")], env=env, timeout=30, check=False)
