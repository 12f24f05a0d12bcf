"""What one row of the RPC table says about an SPDK method: everything the harness needs to know about it.

A `Rule` is data, like syzkaller's `oopsFormat` rows: SPDK's decoder table for its params (and what each
param names), whether it changes anything, which `LvolStore` method models it and with which arguments, how
the reference target answers it, what the storm sends and how the checker judges the reply. Every layer
reads the rows (`harness.rpc_rules.table`) instead of keeping its own list, so adding an RPC is one row plus
its model transition. It imports nothing from the harness: rpc, model, sim, storm and minimize can all use it.
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Literal, Protocol

Kind = Literal["string", "uint32", "uint64", "bool", "xattrs"]
"""spdk_json_decode_string / _uint32 / _uint64 / _bool, and the fork's snapshot xattrs object."""

Role = Literal["value", "lvol", "new_lvol", "renamed", "lvstore", "lvstore_uuid", "new_lvstore", "bdev"]
"""What a param names. `lvol`: an existing lvol (a bdev name or alias; the checker orders ops on its tree,
replay remaps it). `new_lvol`: a new lvol's name, checked by the lvol library first and as a bdev alias when
its bdev registers. `renamed`: an lvol's new name, whose bdev alias changes first (vbdev_lvol_rename).
`lvstore` / `lvstore_uuid`: the lvstore, by name or UUID. `new_lvstore`: an lvstore's new name. `bdev`: a
bdev that is not an lvol of the lvstore (a copy's destination, an external snapshot). `value`: anything else."""

Effect = Literal["read", "lvol", "lvstore", "target"]
"""What a call changes: nothing (`read`), lvols of one lvstore, the lvstore as a whole (its name, its
existence, its size), or the target outside any lvstore (base bdevs, the process)."""

Availability = Literal["required", "upstream", "newer-upstream", "longhorn"]
"""`required`: any lvol-capable target (upstream SPDK since v23) has it and the harness cannot run without
it; `upstream`: upstream has had it long before v23; `newer-upstream`: recent upstream (an older target may
lack it); `longhorn`: registered only by Longhorn's fork (longhorn-v24.09)."""

Served = Literal["model", "target", "no"]
"""How the reference target answers it: `model` by the generic handler (decode per the row, resolve the
lvols and lvstore it names, run the model transition, encode the reply); `target` by a handler of its own
(state beyond one lvstore: base bdevs, lvstores, shallow copy statuses, the process); `no`: not served."""

TakesClusters = Literal["never", "if-thick", "always"]
"""Whether a call may claim free clusters (and so meet ENOSPC): a thick create, a resize, an inflate."""

ViewEffect = Literal["add", "esnap-clone", "snapshot", "clone", "remove", "rename", "orphan", "to-grandparent",
                     "reparent", "resize"]
"""How a success changes the storm's view of the tree: a new lvol; a new lvol whose parent is outside the
lvstore (an esnap clone); a snapshot taking its origin's place; a clone under its snapshot; an lvol gone (a
snapshot's only clone moves up); a new name; no parent in the lvstore any more (inflate, an external parent);
moved to its parent's parent (decouple, detach); a new parent; a new size."""

DST_SIZE_BYTES = "dst_size_bytes"
"""A transition argument that is not a param: the size of the bdev `dst_bdev_name` names (the caller knows it)."""
ESNAP_ID = "esnap_id"
ESNAP_SIZE_BYTES = "esnap_size_bytes"
"""Transition arguments that are not params: the UUID and size of the bdev the row's `bdev` param names, an
external snapshot (the caller resolves the name: the reference target from its bdevs, the storm's checker from
the external snapshots it made). SPDK stores the UUID, whatever name the call used."""
CALLER_ARGS = frozenset({DST_SIZE_BYTES, ESNAP_ID, ESNAP_SIZE_BYTES})
"""Transition arguments the caller supplies (what a bdev the call names is), not params of the call."""


@dataclass(frozen=True, slots=True)
class Param:
    """One entry of SPDK's decoder table (`{"name", offsetof(...), spdk_json_decode_*, optional}`).

    `choices` and `invalid`: a string SPDK parses after the lvstore is found (clear_method), and the message
    of its -EINVAL reply. `missing`: for the lvstore, the errno when no lvstore has that name. `by_names`: for
    an lvol, also found as `lvs_name/lvol_name` by its lvol name when no bdev has that name or alias
    (rpc_bdev_lvol_delete's spdk_lvol_get_by_names). `missing_reply`: the exact error reply (code, message)
    when nothing has that name, where the RPC writes its own (bdev_lvol_clone_bdev: "bdev does not exist").
    `own_lvstore_reply`: for a `bdev`, the reply when it is an lvol of the call's own lvstore (None: allowed)."""

    name: str
    kind: Kind = "string"
    required: bool = True
    role: Role = "value"
    choices: tuple[str, ...] = ()
    invalid: str = ""
    missing: int = errno.ENODEV
    by_names: bool = False
    missing_reply: tuple[int, str] | None = None
    own_lvstore_reply: tuple[int, str] | None = None


@dataclass(frozen=True, slots=True)
class Transition:
    """The `LvolStore` method that models the call, and its keyword arguments: param names (lvol params as
    the caller resolved them) or values the caller supplies (DST_SIZE_BYTES). A param left out of the call
    (None) is left out of the arguments, so the model's default applies as SPDK's zeroed field does."""

    method: str
    args: tuple[str, ...] = ()

    def kwargs(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """The call's keyword arguments from `values` (the params, resolved), None ones left out."""
        out = {}
        for a in self.args:  # a loop, not a comprehension: no frame of its own per call (a hot path)
            v = values.get(a)
            if v is not None:
                out[a] = v
        return out

    def run(self, store: Any, values: Mapping[str, Any]) -> Any:
        """`store.<method>(**args)`; ModelError / ModelCrash pass through to the caller. (Hot callers look the
        LvolStore function up once and call it with `kwargs(values)`.)"""
        return getattr(store, self.method)(**self.kwargs(values))


@dataclass(frozen=True, slots=True)
class Judge:
    """The checker compares a successful reply with the model's: `view` turns the target's reply into the
    model's form (None: not comparable); a difference is a finding of `kind`."""

    kind: str
    view: Callable[[Any], Any] | None = None


class Draw(Protocol):
    """What an argument builder may ask the scheduler for, all drawn from the worker's seeded stream."""

    @property
    def name(self) -> str:
        """A fresh lvol name from the worker's counter."""
        ...

    @property
    def size_mib(self) -> int: ...

    @property
    def thin(self) -> bool: ...

    @property
    def u_extra(self) -> float:
        """A spare uniform draw in [0, 1) for choices the step did not fix."""
        ...

    @property
    def lvs_name(self) -> str:
        """The lvstore's name now (the storm follows its renames)."""
        ...

    @property
    def copy_dst(self) -> str | None:
        """The shallow copies' destination bdev, if the storm made one."""
        ...

    @property
    def esnap(self) -> str:
        """One of the external snapshot bdevs the storm made (drawn with `u_extra`), or a name no bdev has."""
        ...

    def target(self, kind: str) -> str:
        """A live lvol of `kind` (see `harness.storm.view.KINDS`), or a name no lvol has."""
        ...

    def other(self, kind: str) -> str:
        """A second live lvol of `kind`, drawn with `u_extra`, or a name no lvol has."""
        ...


@dataclass(frozen=True, slots=True)
class StormUse:
    """How the storm sends the method: its weight in the default mix (0: only when a profile's mix names it)
    and the params it builds for one drawn step."""

    weight: float
    args: Callable[[Draw], dict[str, Any]]


def as_is(value: Any) -> Any:
    return value


def uuid_of(lvol: Any) -> Any:
    """A new lvol's reply: its UUID."""
    return lvol.uuid


def true(_result: Any) -> bool:
    """A mutation's reply: `true` (spdk_jsonrpc_send_bool_response)."""
    return True


def checksum_object(checksum: Any) -> dict[str, Any]:
    """bdev_lvol_get_snapshot_checksum's reply: `{"checksum": <uint64>}`."""
    return {"checksum": checksum}


@dataclass(frozen=True)
class Rule:
    """One SPDK method. `why` says what SPDK's source does, in a line, where the name does not say it.

    Space: `takes_clusters` (may claim free clusters, so may meet ENOSPC), `returns_clusters` (a success may
    give clusters back: a leak shows after it), `claims_md_pages` (may claim a blobstore metadata page, so
    may meet ENOMEM when they run short). Jobs: `starts_job` (a background job holds the lvol open after
    the reply), `status_method` (the method that reports the job's progress, by the reply's operation_id).

    Errors: a refusal the model raises is answered `-errno` when SPDK finds it before its completion
    callback (`sync_errnos`), else with `refusal_code` (None: `-errno` always). The codes are SPDK's, and
    inconsistent on purpose (see /work/shared/spdk/README.md).
    """

    method: str
    params: tuple[Param, ...] = ()
    effect: Effect = "read"
    idempotent: bool = True
    availability: Availability = "upstream"
    served: Served = "target"
    model: Transition | None = None
    refusal_code: int | None = -32602
    sync_errnos: frozenset[int] = frozenset()
    reply: Callable[[Any], Any] = as_is
    judge: Judge | None = None
    view: ViewEffect | None = None
    takes_clusters: TakesClusters = "never"
    returns_clusters: bool = False
    claims_md_pages: bool = False
    starts_job: bool = False
    status_method: str | None = None
    storm: StormUse | None = None
    aliases: tuple[str, ...] = ()
    startup_only: bool = False
    why: str = ""

    @property
    def mutating(self) -> bool:
        return self.effect != "read"

    @cached_property
    def result_unread(self) -> bool:
        """Nothing in the storm looks inside this call's result (a read no judge, model, view or job reads):
        a big one may stay undecoded (harness.rpc.framing.UnreadResult)."""
        return (self.effect == "read" and self.judge is None and self.model is None and self.view is None
                and self.status_method is None and not self.returns_clusters)

    def names(self, *roles: Role) -> tuple[str, ...]:
        """The params with one of `roles`, in decoder order."""
        return tuple(p.name for p in self.params if p.role in roles)

    @cached_property
    def lvol_params(self) -> tuple[str, ...]:
        """Params naming existing lvols."""
        return self.names("lvol")

    @cached_property
    def lvstore_params(self) -> tuple[Param, ...]:
        """Params naming the lvstore the call acts on (by name or UUID)."""
        return tuple(p for p in self.params if p.role in ("lvstore", "lvstore_uuid"))

    @cached_property
    def lvstore_keys(self) -> tuple[str, ...]:
        """Params holding an lvstore name, old or new (what an lvstore rename races with)."""
        return self.names("lvstore", "new_lvstore")

    @cached_property
    def new_name_param(self) -> str | None:
        """The param holding a name this call gives an lvol (create, snapshot, clone, rename)."""
        names = self.names("new_lvol", "renamed")
        return names[0] if names else None

    @cached_property
    def new_lvstore_param(self) -> str | None:
        """The param holding the lvstore's new name (an lvstore rename)."""
        names = self.names("new_lvstore")
        return names[0] if names else None

    @cached_property
    def creates_lvol(self) -> bool:
        """The reply is the UUID of a new lvol, named by `new_name_param`."""
        return self.reply is uuid_of

    def param(self, name: str) -> Param:
        for p in self.params:
            if p.name == name:
                return p
        raise KeyError(f"{self.method} has no param {name!r}")
