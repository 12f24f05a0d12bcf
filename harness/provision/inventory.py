"""A lab inventory: the machines a storm may use, their SSH access and their disks, from one YAML file.

Field names follow the run config where they mean the same thing (`spdk_tgt`, `cpumask`, `hugepages_mb`,
bdev `kind`/`pci_addr`/`aio_path`/`block_size`), so a node's settings can be handed to the target and bdev
setup as they are. Every mistake is one line: `lab.yaml: nodes[1].bdevs[0].pci_addr: expected ..., got 'x'`.

    nodes:
      - name: lab1
        address: 192.0.2.10
        user: root                      # not root: commands run through `sudo -n`
        key: ~/.ssh/lvol-storm          # relative paths are relative to this file
        known_hosts: ~/.ssh/known_hosts # or `insecure_host_keys: true` (warns loudly)
        spdk_tgt: /opt/spdk/build/bin/spdk_tgt
        cpumask: "0x3"
        hugepages_mb: 2048
        bind_driver: vfio-pci           # optional: vfio-pci or uio_pci_generic
        bdevs:
          - {kind: nvme, pci_addr: "0000:00:04.0"}
          - {kind: aio, aio_path: /dev/nvme1n1}
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from harness.errors import ConfigError, shown
from harness.hosts.ssh import SshHost, address_problem, user_problem
from harness.safe_yaml import read_yaml_file

PCI_ADDR = re.compile(r"^[0-9a-fA-F]{4}:[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.[0-7]$")
_BDEV_KINDS = ("nvme", "aio")


class NvmeBdev(BaseModel):
    """An NVMe controller the target takes over by PCIe address (unbound from the kernel driver first)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["nvme"]
    name: str | None = None
    pci_addr: str

    @field_validator("pci_addr")
    @classmethod
    def _pci(cls, value: str) -> str:
        if not PCI_ADDR.match(value):
            raise ValueError("expected a PCI address like 0000:00:04.0")
        return value.lower()


class AioBdev(BaseModel):
    """A file or block device the target opens with Linux AIO (the kernel driver keeps the disk)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["aio"]
    name: str | None = None
    aio_path: str
    block_size: Literal[512, 4096] = 4096

    @field_validator("aio_path")
    @classmethod
    def _absolute(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError("expected an absolute path on the node, like /dev/nvme1n1")
        return value


Bdev = Annotated[NvmeBdev | AioBdev, Field(discriminator="kind")]


def _local_path(value: str, info: ValidationInfo, what: str) -> str:
    """Expand ~ and make relative paths relative to the inventory file; the file must exist here."""
    base = Path((info.context or {}).get("base_dir", "."))
    path = (base / Path(value).expanduser()).resolve()
    if not path.is_file():
        raise ValueError(f"{what} {path} does not exist on this machine")
    return str(path)


class InventoryNode(BaseModel):
    """One lab machine: how to reach it over SSH and what the target may use on it."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    address: str = Field(min_length=1)
    port: int = Field(22, ge=1, le=65535)
    user: str = Field("root", min_length=1)
    key: str
    sudo: bool | None = None
    known_hosts: str | None = None
    insecure_host_keys: bool = False
    spdk_tgt: str | None = None
    cpumask: str = Field("0x1", pattern=r"^(0x[0-9a-fA-F]+|\[[0-9,\- ]+\])$")
    hugepages_mb: int = Field(1024, ge=0)
    bind_driver: Literal["vfio-pci", "uio_pci_generic"] | None = None
    bdevs: list[Bdev] = Field(default_factory=list)

    @field_validator("address", "user")
    @classmethod
    def _a_name_not_shell(cls, value: str, info: ValidationInfo) -> str:
        problem = (address_problem if info.field_name == "address" else user_problem)(value)
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("key")
    @classmethod
    def _key_exists(cls, value: str, info: ValidationInfo) -> str:
        return _local_path(value, info, "private key")

    @field_validator("known_hosts")
    @classmethod
    def _known_hosts_exists(cls, value: str | None, info: ValidationInfo) -> str | None:
        return None if value is None else _local_path(value, info, "known_hosts file")

    @field_validator("cpumask", mode="before")
    @classmethod
    def _mask_from_int(cls, value: object) -> object:
        return hex(value) if isinstance(value, int) else value  # YAML reads 0x3 as 3

    @model_validator(mode="after")
    def _host_keys(self) -> InventoryNode:
        if self.known_hosts is None and not self.insecure_host_keys:
            raise ValueError("set known_hosts (a file with this node's host key) or insecure_host_keys: true")
        if self.known_hosts is not None and self.insecure_host_keys:
            raise ValueError("known_hosts and insecure_host_keys: true exclude each other; keep known_hosts")
        return self

    @property
    def uses_sudo(self) -> bool:
        return self.user != "root" if self.sudo is None else self.sudo

    def host(self) -> SshHost:
        return SshHost(self.name, self.address, user=self.user, port=self.port, key_path=self.key,
                       known_hosts=self.known_hosts, insecure_host_keys=self.insecure_host_keys, sudo=self.sudo)

    def target_settings(self) -> dict[str, Any]:
        """The run config's `target` fields this node decides (spdk_tgt, cpumask, hugepages_mb)."""
        settings: dict[str, Any] = {"cpumask": self.cpumask, "hugepages_mb": self.hugepages_mb}
        if self.spdk_tgt:
            settings["spdk_tgt"] = self.spdk_tgt
        return settings

    def bdev_settings(self) -> list[dict[str, Any]]:
        """The node's disks in the run config's `bdev` shape, first one first."""
        return [b.model_dump(exclude_none=True) for b in self.bdevs]


class Inventory(BaseModel):
    """All lab nodes of one inventory file."""

    model_config = ConfigDict(extra="forbid")

    nodes: list[InventoryNode] = Field(min_length=1)
    _source: str = PrivateAttr("inventory")

    @property
    def source(self) -> str:
        return self._source

    @model_validator(mode="after")
    def _unique_names(self) -> Inventory:
        seen: dict[str, int] = {}
        for i, node in enumerate(self.nodes):
            if node.name in seen:
                raise ValueError(f"nodes[{i}].name: duplicate name {node.name!r} (also nodes[{seen[node.name]}])")
            seen[node.name] = i
        return self

    def hosts(self) -> list[SshHost]:
        """One SshHost per node, not yet connected (the first command connects)."""
        return [node.host() for node in self.nodes]

    def node(self, name: str) -> InventoryNode:
        for node in self.nodes:
            if node.name == name:
                return node
        raise ConfigError(f"{self.source}: no node named {name!r}; known: {', '.join(n.name for n in self.nodes)}")


def _path_text(loc: Sequence[int | str]) -> str:
    """('nodes', 1, 'bdevs', 0, 'nvme', 'pci_addr') -> nodes[1].bdevs[0].pci_addr (union tags dropped)."""
    out = ""
    prev: int | str | None = None
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in _BDEV_KINDS and isinstance(prev, int):
            pass  # pydantic's discriminated-union tag, not a field the user wrote
        else:
            out += f".{part}" if out else part
        prev = part
    return out


def _fields_of(loc: Sequence[int | str]) -> list[str]:
    """Field names valid where an unknown field was found, for a did-you-mean hint."""
    parents = [p for p in loc[:-1] if isinstance(p, str)]
    if parents[-1:] == ["nvme"]:
        return list(NvmeBdev.model_fields)
    if parents[-1:] == ["aio"]:
        return list(AioBdev.model_fields)
    if parents[-1:] == ["nodes"]:
        return list(InventoryNode.model_fields)
    return ["nodes"]


def _one_line(source: str, exc: ValidationError) -> ConfigError:
    # A misspelt field also shows up as the real one missing: name the misspelling, it is the cause.
    errors = sorted(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")
    err = errors[0]
    loc = err["loc"]
    path = _path_text(loc)
    msg = err["msg"].removeprefix("Value error, ")
    kind = err["type"]
    if kind == "extra_forbidden":
        close = difflib.get_close_matches(str(loc[-1]), _fields_of(loc), n=1)
        text = "unknown field" + (f" (did you mean {close[0]!r}?)" if close else "")
    elif kind == "missing":
        text = "required field missing"
    elif kind == "too_short":
        text = "expected at least one entry, got none"
    elif kind == "union_tag_invalid" or kind == "union_tag_not_found":
        text = f"expected kind: {' or '.join(_BDEV_KINDS)}, got {shown(err.get('input', {}).get('kind'))}" \
            if isinstance(err.get("input"), dict) else f"expected a bdev with kind: {' or '.join(_BDEV_KINDS)}"
    elif kind == "value_error" and re.match(r"nodes\[\d+\]\.name: duplicate", msg):
        path, text = msg.split(": ", 1)
    elif kind == "value_error" and not path.endswith(("key", "known_hosts")) and "input" in err \
            and not isinstance(err["input"], dict):
        text = f"{msg}, got {shown(err['input'])}"
    else:
        msg = re.sub(r"^Input should be ", "expected ", msg)
        msg = re.sub(r"^String should match pattern ", "expected a value matching ", msg)
        got = err.get("input")
        text = msg if isinstance(got, dict | list) or got is None else f"{msg}, got {shown(got)}"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return ConfigError(f"{source}: {path or '(top level)'}: {text}{more}")


def load_inventory(path: str | os.PathLike[str]) -> Inventory:
    """Read and validate an inventory YAML; ConfigError naming the file, the field path and the fix."""
    p = Path(path)
    source = str(path)
    data = read_yaml_file(p, "inventory")
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping with a `nodes:` list, got {type(data).__name__}")
    try:
        inventory = Inventory.model_validate(data, context={"base_dir": str(p.resolve().parent)})
    except ValidationError as exc:
        raise _one_line(source, exc) from None
    inventory._source = source
    return inventory
