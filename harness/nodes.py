"""Nodes: the machines a run's targets run on, this one, a lab inventory's, or Terraform's, and each one's config.

Every face (the CLI's `run --inventory/--terraform`, the suites, the `nodes` fixture) gets its nodes here and
checks them the same way before anything is provisioned: a bad inventory, an unknown module, missing
credentials or a per-node override that names no node is one line, and nothing has started yet.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from harness.bdev import missing_pci_addr
from harness.config import RunConfig, apply_override
from harness.errors import ConfigError, shown
from harness.hosts.base import Host
from harness.hosts.local import LocalHost
from harness.provision.inventory import InventoryNode, load_inventory
from harness.provision.terraform import MODULES_DIR, NodeSpec, nodes_from_outputs, provisioned_nodes
from harness.safe_yaml import load_yaml

TERRAFORM_MODULES = ("local", "aws-sles", "qemu")
AWS_CREDENTIAL_VARS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")


@dataclass(frozen=True)
class Node:
    """One machine: its name (also its run subdirectory), how to reach it, and what it decides of the config
    (an inventory's spdk_tgt, cpumask, hugepages and disks, then per-node `FIELD=VALUE` overrides)."""

    name: str
    spec: InventoryNode | None = None
    given_host: Host | None = field(default=None, compare=False)
    overrides: tuple[str, ...] = ()
    source: str = "node"
    disks: tuple[Mapping[str, Any], ...] = ()  # without an inventory spec: a Terraform node's NVMe, say

    @property
    def is_local(self) -> bool:
        return self.spec is None and (self.given_host is None or self.given_host.is_local)

    def host(self) -> Host:
        """The node's Host (an SSH one is not connected until its first command)."""
        if self.given_host is not None:
            return self.given_host
        return self.spec.host() if self.spec is not None else LocalHost()

    def config(self, profile: RunConfig) -> RunConfig:
        return node_config(profile, target_settings=self.spec.target_settings() if self.spec else None,
                           bdev_settings=self.spec.bdev_settings() if self.spec else self.disks,
                           overrides=self.overrides, source=self.source)


LOCAL_NODE = Node("local")


def node_config(profile: RunConfig, *, target_settings: Mapping[str, Any] | None = None,
                bdev_settings: Sequence[Mapping[str, Any]] = (), overrides: Sequence[str] = (),
                source: str = "node") -> RunConfig:
    """The profile, then what the inventory says about the node (its spdk_tgt, cpumask, hugepages, first
    disk), then per-node `FIELD=VALUE` overrides (`target.sim_fault=abort-assert`); an NVMe bdev must have
    its PCI address by then."""
    if not target_settings and not bdev_settings and not overrides:
        _check_complete(profile, source)
        return profile
    data = profile.model_dump(mode="json")
    data["target"].update(dict(target_settings or {}))
    if bdev_settings:
        data["bdev"].update(dict(bdev_settings[0]))
    for assignment in overrides:
        apply_override(data, assignment)
    try:
        config = RunConfig.model_validate(data)
    except ValueError as exc:
        lines = str(exc).splitlines()
        detail = next((line.strip() for line in lines[1:] if line.strip()), lines[0] if lines else "invalid")
        raise ConfigError(f"{source}: per-node config is invalid: {detail}") from None
    _check_complete(config, source)
    return config


def _check_complete(config: RunConfig, source: str) -> None:
    problem = missing_pci_addr(config.bdev)
    if problem:
        raise ConfigError(f"{source}: {problem}")


def parse_node_overrides(items: Sequence[str]) -> dict[str, list[str]]:
    """`--node-set NODE:FIELD=VALUE` (NODE: a node name or its 0-based position) into {NODE: [FIELD=VALUE]}."""
    out: dict[str, list[str]] = {}
    for item in items:
        node, sep, assignment = item.partition(":")
        if not sep or not node.strip() or "=" not in assignment:
            raise ConfigError(f"--node-set {item}: expected NODE:FIELD=VALUE, e.g. 1:target.sim_fault=abort-assert "
                              "(NODE is a node name or its position, from 0)")
        out.setdefault(node.strip(), []).append(assignment.strip())
    return out


def overrides_for(overrides: Mapping[str, Sequence[str]], names: Sequence[str]) -> list[tuple[str, ...]]:
    """Each node's overrides, by name or by position; an override naming no node is a one-line error."""
    known = set(names) | {str(i) for i in range(len(names))}
    for key in overrides:
        if key not in known:
            raise ConfigError(f"--node-set {key}:...: no node {key!r}; nodes are {', '.join(names)} "
                              f"(or positions 0..{len(names) - 1})")
    return [(*overrides.get(str(i), ()), *overrides.get(name, ())) for i, name in enumerate(names)]


def check_positions(overrides: Mapping[str, Sequence[str]], count: int) -> None:
    """Before provisioning `count` nodes (their names come later): positions that cannot exist."""
    for key in overrides:
        if key.isdigit() and int(key) >= count:
            raise ConfigError(f"--node-set {key}:...: there are {count} node(s) (positions 0..{count - 1})")


def inventory_nodes(path: str | os.PathLike[str], overrides: Mapping[str, Sequence[str]] | None = None,
                    ) -> list[Node]:
    """The nodes of an inventory file; nothing is connected yet."""
    if not Path(path).is_file():
        raise ConfigError(f"--inventory: {path} does not exist (an inventory lists the lab nodes: see "
                          "docs/SUITES.md)")
    inventory = load_inventory(path)
    names = [n.name for n in inventory.nodes]
    per_node = overrides_for(overrides or {}, names)
    return [Node(n.name, spec=n, overrides=extra, source=f"{path}: {n.name}")
            for n, extra in zip(inventory.nodes, per_node, strict=True)]


def host_nodes(hosts: Sequence[Host], overrides: Mapping[str, Sequence[str]] | None = None) -> list[Node]:
    """Hosts without inventory settings (Terraform's, a fixture's) as nodes: the profile plus overrides."""
    names = [h.name for h in hosts]
    if len(set(names)) != len(names):
        raise ConfigError(f"nodes: names must be unique, got {', '.join(names)}")
    per_node = overrides_for(overrides or {}, names)
    return [Node(h.name, given_host=h, overrides=extra, source=h.name)
            for h, extra in zip(hosts, per_node, strict=True)]


def terraform_node_list(provisioned: Sequence[tuple[NodeSpec, Host]],
                        overrides: Mapping[str, Sequence[str]] | None = None) -> list[Node]:
    """Terraform's nodes with what their outputs say of them: each one's NVMe controllers are its disks, so its
    first becomes `bdev.pci_addr`, exactly as an inventory's `bdevs` would."""
    nodes = host_nodes([host for _spec, host in provisioned], overrides)
    return [Node(n.name, given_host=n.given_host, overrides=n.overrides, source=f"terraform node {n.name}",
                 disks=tuple(spec.bdevs())) for n, (spec, _host) in zip(nodes, provisioned, strict=True)]


# -- Terraform -------------------------------------------------------------------------------------------------


def parse_tf_vars(items: Sequence[str]) -> dict[str, Any]:
    """`--tf-var NAME=VALUE` (values parsed as YAML, so numbers stay numbers)."""
    out: dict[str, Any] = {}
    for item in items:
        name, sep, raw = item.partition("=")
        if not sep or not name.strip():
            raise ConfigError(f"--tf-var {item}: expected NAME=VALUE, e.g. runner_cidr=203.0.113.7/32")
        out[name.strip()] = load_yaml(raw, f"--tf-var {shown(name.strip(), quote=False)}") if raw.strip() else ""
    return out


def aws_credentials_present(environ: Mapping[str, str] | None = None, home: Path | None = None) -> bool:
    env = os.environ if environ is None else environ
    if all(env.get(v) for v in AWS_CREDENTIAL_VARS):
        return True
    if env.get("AWS_PROFILE") or env.get("AWS_WEB_IDENTITY_TOKEN_FILE"):
        return True
    base = home if home is not None else Path(env.get("HOME", str(Path.home())))
    creds = Path(env.get("AWS_SHARED_CREDENTIALS_FILE", str(base / ".aws" / "credentials")))
    return creds.is_file() and "aws_access_key_id" in creds.read_text(errors="replace")


def terraform_module_dir(module: str) -> Path:
    """`local` -> terraform/local; a path with a slash is a module directory of the user's own."""
    return Path(module) if os.sep in module else MODULES_DIR / module


def check_terraform_module(module: str, variables: Mapping[str, Any], environ: Mapping[str, str] | None = None,
                           *, who: str = "--terraform") -> Path:
    """Everything that can be known before provisioning: the module, root for `local`, AWS credentials and
    `runner_cidr` for `aws-sles`, QEMU for `qemu`. One line each, naming the fix."""
    path = terraform_module_dir(module)
    if not path.is_dir() or not any(path.glob("*.tf")):
        raise ConfigError(f"{who} {module}: no Terraform module at {path}; known: {', '.join(TERRAFORM_MODULES)} "
                          "(or a directory with *.tf files); or pass --inventory FILE, or --target spdk|sim to run "
                          "on this machine")
    if path.name == "local" and os.geteuid() != 0:
        raise ConfigError(f"{who} local: makes network namespaces on this machine and needs root: run as root, or "
                          "use --inventory FILE")
    if path.name == "qemu":
        qemu = str(variables.get("qemu") or "qemu-system-x86_64")
        if shutil.which(qemu) is None:
            raise ConfigError(f"{who} qemu: boots QEMU guests on this machine and needs {shown(qemu)}: apt-get "
                              "install -y qemu-system-x86 (and linux-image-amd64 busybox-static for the guest "
                              "image), or use --inventory FILE")
    if "aws" in path.name:
        if not aws_credentials_present(environ):
            raise ConfigError(f"{who} {module}: needs AWS credentials: set AWS_ACCESS_KEY_ID and "
                              "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), or run on your own machines with "
                              "--inventory FILE, or on this one with --target spdk|sim")
        if not variables.get("runner_cidr"):
            raise ConfigError(f"{who} {module}: SSH is opened only to your address: pass "
                              "--tf-var runner_cidr=<your public IP>/32")
    return path


def terraform_run_id(run_dir: Path) -> str:
    """terraform/local names namespaces after the run id: 8 lowercase hex characters from the run dir."""
    return hashlib.sha1(str(run_dir.absolute()).encode()).hexdigest()[:8]


@contextlib.contextmanager
def terraform_nodes(module: str, run_dir: Path, *, nodes: int, keep: bool,
                    tf_vars: Mapping[str, Any] | None = None,
                    overrides: Mapping[str, Sequence[str]] | None = None) -> Iterator[list[Node]]:
    """Provisioned nodes with connected hosts and their outputs' disks; the state under `<run_dir>/terraform`,
    destroyed on the way out unless `keep` (and on a failed apply, and on Ctrl-C during apply)."""
    variables = {"run_id": terraform_run_id(run_dir), "node_count": nodes, **(tf_vars or {})}
    with provisioned_nodes(module, run_dir / "terraform", variables, keep,
                           log=run_dir / "terraform.log") as provisioned:
        yield terraform_node_list(provisioned, overrides)


@contextlib.contextmanager
def terraform_hosts(module: str, run_dir: Path, *, nodes: int, keep: bool,
                    tf_vars: Mapping[str, Any] | None = None) -> Iterator[list[Host]]:
    """`terraform_nodes`, for callers that need only the connected hosts."""
    with terraform_nodes(module, run_dir, nodes=nodes, keep=keep, tf_vars=tf_vars) as found:
        yield [n.host() for n in found]


def inventory_from_terraform(outputs: Mapping[str, Any], dest_dir: Path) -> Path:
    """Terraform's output contract (nodes, private_key_path, known_hosts) as an inventory file, so xdist
    workers and a later `--inventory` rerun read the nodes the same way."""
    specs = nodes_from_outputs(outputs)
    known = dest_dir / "known_hosts"
    known.write_text(specs[0].known_hosts if specs[0].known_hosts.endswith("\n") else specs[0].known_hosts + "\n")
    data = {"nodes": [{"name": s.name, "address": s.address, "user": s.user, "port": s.port,
                       "key": s.private_key_path, "known_hosts": str(known),
                       **({"bdevs": s.bdevs()} if s.nvme_pci_addrs else {})} for s in specs]}
    path = dest_dir / "nodes.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path
