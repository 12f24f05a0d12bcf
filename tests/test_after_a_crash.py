"""What a crash leaves behind is the target's and the user's alone: a crash dir's kernel.log keeps the target's
lines (not the machine's other segfaults), Terraform's state is private, and an inventory's or a Terraform
module's address and user cannot carry shell text."""

from __future__ import annotations

import stat
import time
from pathlib import Path

import pytest

from harness.errors import ConfigError
from harness.hosts.local import LocalHost
from harness.provision.inventory import load_inventory
from harness.provision.terraform import nodes_from_outputs, owner_only
from harness.watch.attribution import target_kernel_lines
from harness.watch.watchdog import Watchdog
from tests.test_watch_e2e import Helper, kernel_printed_fault, needs_kernel_log

TARGET = 4242
STRANGER = 9999
LINES = [
    "usb 1-1: new high-speed USB device number 3 using xhci_hcd",
    "eth0: link up",
    f"python3[{STRANGER}]: segfault at 0 ip 00007f0000001000 sp 00007ffc00000000 error 4 in libc.so.6[7f00,7f00+1000]",
    "Code: 48 8b 07 <0f> 0b",
    "audit: type=1400 apparmor=STATUS",
    f"reactor_0[{TARGET}]: segfault at 8 ip 0000000000454d1c sp 00007ffcc77b0860 error 4 in spdk_tgt[400000+46c000]",
    "Code: 41 54 55 <48> 8b 47 08",
    "potentially unexpected fatal signal 11.",
    "eth1: link down",
    "usb 1-2: new full-speed USB device number 4",
    f"bash[{STRANGER + 1}]: segfault at 10 ip 0000000000001000 sp 0000000000002000 error 6",
]


def test_kernel_log_keeps_the_targets_lines_and_what_surrounds_them() -> None:
    kept = target_kernel_lines(LINES, {TARGET, TARGET + 1}, foreign={LINES[2], LINES[10]})
    assert kept == [LINES[4], LINES[5], LINES[6], LINES[7], LINES[8]]  # 2 either side; the stranger's Code: left out
    # the same from dmesg's layout, and an OOM kill named by pid
    dmesg = [f"[ 1{i:03d}.000000] {line}" for i, line in enumerate(LINES)]
    assert target_kernel_lines(dmesg, {TARGET}, foreign={LINES[2], LINES[10]}, context=0) == dmesg[5:7]
    oom = ["Out of memory: Killed process 4242 (spdk_tgt) total-vm:1000kB", f"{LINES[2]}"]
    assert target_kernel_lines(oom, {TARGET}, foreign={LINES[2]}) == oom[:1]
    assert target_kernel_lines(LINES[:5], {TARGET}) == []  # nothing of the target: nothing of the others either


@needs_kernel_log
def test_a_crash_report_leaves_out_another_processes_segfault(tmp_path: Path) -> None:
    host = LocalHost()
    target = Helper(host, tmp_path, "segv")
    stranger = Helper(host, tmp_path, "segv", "worker")
    try:
        time.sleep(0.3)
        wd = Watchdog(host, pid=target.proc.pid, log_path=str(target.log), process=target.proc,
                      track_interval_s=0.1).start()
        try:
            stranger.fire()
            assert stranger.proc.wait(5) == -11
            deadline = time.time() + 5
            while not any(f.tid == stranger.proc.pid for f, _ in wd.unrelated) and time.time() < deadline:
                time.sleep(0.01)
            target.fire()
            assert wd.crashed.wait(5)
            evidence = wd.settle(5)
        finally:
            wd.stop()
        if not any(f.tid == stranger.proc.pid for f, _ in wd.unrelated) or not kernel_printed_fault(target.proc.pid):
            pytest.skip("the kernel printed no line for one of the two faults (printk ratelimit)")
        lines = next(ev.kernel_lines for ev in evidence if ev.kind == "fault")
        assert any(f"reactor_0[{target.proc.pid}]: segfault at 8" in line for line in lines), lines
        assert not any(f"[{stranger.proc.pid}]" in line for line in lines), lines
    finally:
        target.kill()
        stranger.kill()


def test_owner_only_tightens_a_kept_state(tmp_path: Path) -> None:
    state = tmp_path / "terraform"
    (state / "module" / ".terraform" / "providers").mkdir(parents=True)
    (state / "module" / "terraform.tfstate").write_text('{"private_key_pem": "-----BEGIN..."}')
    provider = state / "module" / ".terraform" / "providers" / "terraform-provider-tls"
    provider.write_text("#!/bin/sh\n")
    provider.chmod(0o755)
    state.chmod(0o755)
    owner_only(state)
    modes = {p.relative_to(state).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in [state, *state.rglob("*")]}
    assert modes == {".": 0o700, "module": 0o700, "module/.terraform": 0o700, "module/.terraform/providers": 0o700,
                     "module/terraform.tfstate": 0o600, "module/.terraform/providers/terraform-provider-tls": 0o700}


@pytest.mark.parametrize(("field", "value", "expected"), [
    ("address", "10.0.0.1; touch /tmp/PWNED", "expected a host name (letters, digits and '-', in labels between "
                                              "dots) or an IP address"),
    ("address", "$(id)", "expected a host name"),
    ("address", "-oProxyCommand=sh", "expected a host name"),
    ("user", "root`id`", "expected a user name (letters, digits, '.', '_' and '-', starting with a letter or '_', "
                         "at most 32)"),
    ("user", "a b", "expected a user name"),
])
def test_inventory_address_and_user_are_names_not_shell(tmp_path: Path, field: str, value: str,
                                                       expected: str) -> None:
    (tmp_path / "key").write_text("k")
    node = {"name": "lab1", "address": "lab1.example.com", "user": "ec2-user", "key": "key",
            "insecure_host_keys": True, field: value}
    (tmp_path / "lab.yaml").write_text("nodes:\n  - " + "\n    ".join(f"{k}: {v!r}" for k, v in node.items()) + "\n")
    with pytest.raises(ConfigError) as info:
        load_inventory(tmp_path / "lab.yaml")
    assert str(info.value).startswith(f"{tmp_path / 'lab.yaml'}: nodes[0].{field}: {expected}")
    assert str(info.value).endswith(f", got {value!r}") and "\n" not in str(info.value)
    outputs = {"nodes": [{"name": "a", "address": "10.0.0.1", "user": "root", field: value}],
               "private_key_path": "/k", "known_hosts": "10.0.0.1 ssh-ed25519 AAAA"}
    with pytest.raises(ConfigError, match=rf"^terraform output: nodes\[0\]\.{field}: {expected[:20]}"):
        nodes_from_outputs(outputs)


def test_ordinary_addresses_and_users_pass(tmp_path: Path) -> None:
    (tmp_path / "key").write_text("k")
    lines = [f"  - {{name: n{i}, address: '{a}', user: {u}, key: key, insecure_host_keys: true}}"
             for i, (a, u) in enumerate([("192.0.2.10", "root"), ("2001:db8::1", "ec2-user"),
                                         ("lab1.example.com.", "_svc.storm")])]
    (tmp_path / "lab.yaml").write_text("nodes:\n" + "\n".join(lines) + "\n")
    assert [n.address for n in load_inventory(tmp_path / "lab.yaml").nodes] == \
        ["192.0.2.10", "2001:db8::1", "lab1.example.com."]
