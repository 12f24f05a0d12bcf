"""One storm operation (`Op`) and what the storm knows about each SPDK method it may send.

Method names and parameter names are SPDK's own, so an operation from a report pastes into `spdk-rpc`.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

# Methods that change the lvstore; everything else is a read whose reply the checker can compare.
MUTATING: frozenset[str] = frozenset({
    "bdev_lvol_create",
    "bdev_lvol_snapshot",
    "bdev_lvol_clone",
    "bdev_lvol_delete",
    "bdev_lvol_resize",
    "bdev_lvol_rename",
    "bdev_lvol_set_read_only",
    "bdev_lvol_inflate",
    "bdev_lvol_decouple_parent",
    "bdev_lvol_set_parent",
    "bdev_lvol_detach_parent",
    "bdev_lvol_set_xattr",
    "bdev_lvol_register_snapshot_checksum",
    "bdev_lvol_start_shallow_copy",
    "bdev_lvol_rename_lvstore",
})

READS: frozenset[str] = frozenset({
    "bdev_lvol_get_lvols",
    "bdev_get_bdevs",
    "bdev_lvol_get_lvstores",
    "bdev_lvol_get_xattr",
    "bdev_lvol_get_snapshot_checksum",
    "bdev_lvol_check_shallow_copy",
})

# Every method a mix may name.
KNOWN_METHODS: frozenset[str] = (MUTATING | READS) - {"bdev_lvol_check_shallow_copy"}

# Only sent when `rpc_get_methods` lists them (the Longhorn fork has them, upstream v24.09 lacks some).
OPTIONAL_METHODS: frozenset[str] = frozenset({
    "bdev_lvol_set_xattr",
    "bdev_lvol_get_xattr",
    "bdev_lvol_register_snapshot_checksum",
    "bdev_lvol_get_snapshot_checksum",
    "bdev_lvol_detach_parent",
    "bdev_lvol_start_shallow_copy",
    "bdev_lvol_set_parent",
})

# Which parameter of each method names an existing lvol (the ones replay remaps and the checker follows).
LVOL_PARAMS: dict[str, tuple[str, ...]] = {
    "bdev_lvol_snapshot": ("lvol_name",),
    "bdev_lvol_clone": ("snapshot_name",),
    "bdev_lvol_delete": ("name",),
    "bdev_lvol_resize": ("name",),
    "bdev_lvol_rename": ("old_name",),
    "bdev_lvol_set_read_only": ("name",),
    "bdev_lvol_inflate": ("name",),
    "bdev_lvol_decouple_parent": ("name",),
    "bdev_lvol_set_parent": ("lvol_name", "parent_name"),
    "bdev_lvol_detach_parent": ("name",),
    "bdev_lvol_set_xattr": ("name",),
    "bdev_lvol_get_xattr": ("name",),
    "bdev_lvol_register_snapshot_checksum": ("name",),
    "bdev_lvol_get_snapshot_checksum": ("name",),
    "bdev_lvol_start_shallow_copy": ("src_lvol_name",),
    "bdev_get_bdevs": ("name",),
}

# Methods whose reply is the UUID of a new lvol, and the parameter holding its name.
CREATES: dict[str, str] = {
    "bdev_lvol_create": "lvol_name",
    "bdev_lvol_snapshot": "snapshot_name",
    "bdev_lvol_clone": "clone_name",
}

_op_ids = itertools.count(1)


@dataclass(eq=False, slots=True)
class Op:
    """One request as the storm sent it, and what came back. `keys` are the objects it reads or changes."""

    method: str
    params: dict[str, Any]
    worker: int
    label: str = "mix"
    keys: tuple[str, ...] = ()
    conn: int = -1
    id: int = field(default_factory=lambda: next(_op_ids))
    t_start: float = 0.0
    t_end: float = 0.0
    result: Any = None
    error_code: int | None = None
    error_message: str | None = None
    errno_name: str | None = None
    contended: bool = False
    lenient: bool = False
    done: bool = False
    judged: bool = False  # judged as part of a group (the checker judges each op once)
    # Set by the checker: ops overlapping this one on a shared key, while it was in flight.
    group: Any = None

    @property
    def ok(self) -> bool:
        return self.done and self.error_code is None

    @property
    def outcome(self) -> str:
        """`ok` or the errno name (`EBUSY`), the unit the checker compares."""
        if self.error_code is None:
            return "ok"
        return self.errno_name or f"code {self.error_code}"

    def record(self) -> dict[str, Any]:
        """The operation as a history line would show it (for findings and reports)."""
        rec: dict[str, Any] = {
            "worker": self.worker,
            "conn": self.conn,
            "method": self.method,
            "params": self.params,
            "t_start": self.t_start,
            "t_end": self.t_end,
            "label": self.label,
        }
        if self.error_code is None:
            rec["result"] = self.result
        else:
            rec["error"] = {"code": self.error_code, "message": self.error_message, "errno": self.errno_name}
        return rec

    def describe(self) -> str:
        args = " ".join(f"{k}={v}" for k, v in self.params.items())
        return f"{self.method} {args} -> {self.outcome}"
