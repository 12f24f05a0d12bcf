"""The external snapshot bdevs a storm makes for esnap clones (malloc bdevs outside the lvstore), and what the
checker needs to know of them: each one's UUID and size (SPDK keeps the UUID whatever name a call used), and
whether it is there, gone, or being deleted (esnap clones hold it: gone from listings, the delete's reply
waits; recorded in transcript 10).

The storm makes ESNAP_COUNT of them at setup, named `storm_esnap<i>`, with UUIDs derived from the run's seed, so
an episode that deletes one can make it again under the same UUID (the lvstore's degraded esnap clones then
find it: hotplug). Episodes make their own (`storm_esnap_<worker>_<n>`) when they delete theirs.
"""

from __future__ import annotations

import uuid as uuid_mod
from dataclasses import dataclass
from typing import Literal

from harness.rpc_rules.table import ESNAP_PREFIX

ESNAP_COUNT = 2
State = Literal["present", "deleting", "gone"]


@dataclass
class EsnapBdev:
    name: str
    uuid: str
    size_bytes: int
    state: State = "present"


def esnap_uuid(seed: int, name: str) -> str:
    """A stable UUID for the storm's external snapshot `name` (the same on a re-creation)."""
    return str(uuid_mod.uuid5(uuid_mod.NAMESPACE_URL, f"lvol-storm/{seed}/{name}"))


class EsnapBdevs:
    """The storm's external snapshots by name, and by UUID."""

    def __init__(self) -> None:
        self.by_name: dict[str, EsnapBdev] = {}
        self.shared: list[str] = []
        """The ones the mix draws from (made at setup)."""

    def add(self, bdev: EsnapBdev, *, shared: bool = False) -> None:
        self.by_name[bdev.name] = bdev
        if shared and bdev.name not in self.shared:
            self.shared.append(bdev.name)

    def resolve(self, name: str) -> EsnapBdev | None:
        """The bdev a call names (by name or by UUID), unless it is gone."""
        bdev = self.by_name.get(name) or next((b for b in self.by_name.values() if b.uuid == name), None)
        return None if bdev is None or bdev.state == "gone" else bdev

    def present(self, uuid: str) -> bool:
        """Whether a bdev with this UUID exists now (an lvstore loading now finds it)."""
        return any(b.uuid == uuid and b.state == "present" for b in self.by_name.values())

    def pick(self, u: float) -> str:
        """One of the shared external snapshots (by u in [0, 1)), or a name no bdev has."""
        if not self.shared:
            return f"{ESNAP_PREFIX}_missing"
        return self.shared[min(int(u * len(self.shared)), len(self.shared) - 1)]
