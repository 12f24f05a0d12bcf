"""Record transcripts from a real spdk_tgt: a tool, not a test (pytest collects only test_*.py).

    PYTHONPATH=. python -m tests.tools.record_transcript --spdk-tgt /path/to/spdk_tgt [--cpumask 0x2] \
        [--out tests/data/transcripts] [SCENARIO ...]

Each scenario drives a fresh target, started through `TargetSession` (the hugepages its malloc bdevs need
reserved and given back), one JSON-RPC request at a time on one connection, and writes what it sent and got in
the format of /work/shared/spdk/transcripts (`{target, bdev, how, steps: [{tag, request, response, note?}]}`):
machine-specific paths are replaced by conventional ones (the aio file is `/usr/src/spdk/aio0.img`), nothing
else is edited. A step whose reply only comes after later steps (`deferred`) is sent on a second connection
and its note says after which step it was answered; the conformance replayers read that note.

Tags: the replayers make a fresh 64 MiB file for a step tagged `bdev_aio_create`; a step that creates the aio
bdev again on the same file (a reload) is tagged `reload_aio_create`.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.hosts.local import LocalHost
from harness.rpc.framing import ReplyParser, encode_request
from harness.session import TargetNeeds, TargetSession
from harness.target import TargetConfig

AIO_FILE = "/usr/src/spdk/aio0.img"
"""The conventional path the transcripts show for the aio file (the replayers substitute their own)."""
AIO_BYTES = 64 * 1024 * 1024
OUT = Path(__file__).resolve().parent.parent / "data" / "transcripts"
PREFIX = "longhorn-v24.09-"
ESNAP_UUID = "e4b40d8b-f623-416d-8234-baf5a4c83cbd"
"""A fixed UUID for an external snapshot bdev (SPDK's own esnap tests use it), so it can be made again."""
MIB = 1024 * 1024


class Wire:
    """One connection to the target: compact requests as rpc.py sends them, whole replies parsed."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.parser = ReplyParser()
        self.pending: list[dict[str, Any]] = []

    def send(self, method: str, params: Any, request_id: int) -> None:
        self.sock.sendall(encode_request(method, params, request_id))

    def receive(self, timeout: float) -> dict[str, Any] | None:
        """The next reply, or None if none came within `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while not self.pending:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(1 << 20)
            except TimeoutError:
                return None
            if not data:
                raise ConnectionError("the target closed the connection")
            self.pending.extend(self.parser.feed(data))
        return self.pending.pop(0)


@dataclass
class Recorder:
    """Sends steps and keeps them in the transcript format; `aio_path` is this machine's aio file."""

    wire: Wire
    connect: Callable[[], socket.socket]
    aio_path: str
    steps: list[dict[str, Any]] = field(default_factory=list)
    next_id: int = 1
    deferred: dict[int, tuple[Wire, int]] = field(default_factory=dict)

    def _request(self, method: str, params: Any) -> tuple[dict[str, Any], Any]:
        request: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "id": self.next_id}
        if params is not None:
            request["params"] = _conventional(params, self.aio_path)
        self.next_id += 1
        return request, params

    def call(self, tag: str, method: str, params: Any = None, note: str | None = None,
             timeout: float = 30.0) -> Any:
        """One step; its result (None on an error). A step without a reply in `timeout` stops the recording."""
        request, sent = self._request(method, params)
        self.wire.send(method, sent, request["id"])
        reply = self.wire.receive(timeout)
        if reply is None:
            raise TimeoutError(f"step {len(self.steps)} {tag}: {method} got no reply within {timeout:g} s")
        self._keep(tag, request, reply, note)
        return reply.get("result")

    def send_deferred(self, tag: str, method: str, params: Any = None, wait_s: float = 2.0) -> int:
        """A step whose reply does not come yet: sent on a second connection, the reply collected by
        `collect()` later. Returns the step's index."""
        wire = Wire(self.connect())
        request, sent = self._request(method, params)
        wire.send(method, sent, request["id"])
        early = wire.receive(wait_s)
        index = len(self.steps)
        self.steps.append({"tag": tag, "request": request, "response": early})
        if early is not None:
            self.steps[index]["note"] = f"deferred: sent on a second connection, answered within {wait_s:g} s"
            wire.sock.close()
        else:
            self.deferred[index] = (wire, len(self.steps))
        return index

    def collect(self, index: int, timeout: float = 10.0) -> Any:
        """The reply of deferred step `index`, expected now that the steps before have run."""
        wire, _ = self.deferred.pop(index)
        reply = wire.receive(timeout)
        wire.sock.close()
        before = len(self.steps) - 1
        self.steps[index]["response"] = reply
        self.steps[index]["note"] = (f"deferred: sent on a second connection; no reply within 2 s; "
                                     f"answered after step {before}" if reply is not None else
                                     f"deferred: sent on a second connection; no reply even after step {before}")
        return None if reply is None else reply.get("result")

    def _keep(self, tag: str, request: dict[str, Any], reply: dict[str, Any], note: str | None) -> None:
        step: dict[str, Any] = {"tag": tag, "request": request, "response": _conventional(reply, self.aio_path)}
        if note:
            step["note"] = note
        self.steps.append(step)


def _conventional(value: Any, aio_path: str) -> Any:
    """This machine's aio path replaced by the conventional one, everywhere in a value."""
    if isinstance(value, str):
        return AIO_FILE if value == aio_path else value
    if isinstance(value, list):
        return [_conventional(v, aio_path) for v in value]
    if isinstance(value, dict):
        return {k: _conventional(v, aio_path) for k, v in value.items()}
    return value


# ---- scenarios -------------------------------------------------------------------------------------------------


def _malloc(r: Recorder, name: str, mib: int, block: int = 4096, uuid: str | None = None, tag: str | None = None,
            ) -> Any:
    params: dict[str, Any] = {"name": name, "num_blocks": mib * MIB // block, "block_size": block}
    if uuid:
        params["uuid"] = uuid
    return r.call(tag or f"malloc_create_{name}", "bdev_malloc_create", params)


def _lvstore(r: Recorder, bdev: str, name: str = "lvs0", cluster: int = MIB, tag: str | None = None) -> Any:
    return r.call(tag or "bdev_lvol_create_lvstore", "bdev_lvol_create_lvstore",
                  {"bdev_name": bdev, "lvs_name": name, "cluster_sz": cluster})


def _create(r: Recorder, name: str, mib: int, thin: bool, lvs: str = "lvs0") -> Any:
    return r.call(f"create_{name}", "bdev_lvol_create",
                  {"lvs_name": lvs, "lvol_name": name, "size_in_mib": mib, "thin_provision": thin})


def _bdev(r: Recorder, tag: str, name: Any) -> Any:
    return r.call(tag, "bdev_get_bdevs", {"name": name})


def _lvols(r: Recorder, tag: str, lvs: str | None = "lvs0") -> Any:
    return r.call(tag, "bdev_lvol_get_lvols", {"lvs_name": lvs} if lvs else None)


def _stores(r: Recorder, tag: str, lvs: str = "lvs0") -> Any:
    return r.call(tag, "bdev_lvol_get_lvstores", {"lvs_name": lvs})


def _aio(r: Recorder, tag: str = "bdev_aio_create") -> Any:
    return r.call(tag, "bdev_aio_create", {"filename": r.aio_path, "name": "aio0", "block_size": 4096})


def _unload(r: Recorder, tag: str) -> None:
    r.call(tag, "bdev_aio_delete", {"name": "aio0"})
    _stores(r, f"{tag}_lvstore_gone")


def _reload(r: Recorder, tag: str) -> None:
    _aio(r, "reload_aio_create")
    r.call(f"{tag}_wait_for_examine", "bdev_wait_for_examine")
    _stores(r, f"{tag}_lvstore_back")


def _external_snapshots(r: Recorder, odd: str) -> None:
    """lvs0 on a 256 MiB malloc bdev, and the bdevs to be external snapshots: esnap0 (8 MiB, a fixed UUID),
    esnap1 (4 MiB) and `odd` (300 blocks: no whole number of clusters)."""
    _malloc(r, "Malloc0", 256)
    _lvstore(r, "Malloc0")
    _malloc(r, "esnap0", 8, uuid=ESNAP_UUID)
    _malloc(r, "esnap1", 4)
    r.call("malloc_create_odd_size", "bdev_malloc_create", {"name": odd, "num_blocks": 300, "block_size": 4096})


def esnap_clones(r: Recorder) -> None:
    """Esnap clones of malloc bdevs: errors, links in both listings, snapshots, clones and deletes of them."""
    _external_snapshots(r, "odd2")
    _malloc(r, "esnap512", 2, block=512)
    _bdev(r, "get_esnap0_unclaimed", "esnap0")
    r.call("clone_bdev_missing_bdev", "bdev_lvol_clone_bdev", {"bdev": "nope", "lvs_name": "lvs0", "clone_name": "x"})
    r.call("clone_bdev_missing_lvs", "bdev_lvol_clone_bdev", {"bdev": "esnap0", "lvs_name": "nolvs",
                                                              "clone_name": "x"})
    r.call("clone_bdev_size_not_cluster_multiple", "bdev_lvol_clone_bdev",
           {"bdev": "odd2", "lvs_name": "lvs0", "clone_name": "x"})
    r.call("clone_bdev_empty_name", "bdev_lvol_clone_bdev", {"bdev": "esnap0", "lvs_name": "lvs0", "clone_name": ""})
    r.call("clone_bdev_name_256", "bdev_lvol_clone_bdev", {"bdev": "esnap0", "lvs_name": "lvs0",
                                                           "clone_name": "n" * 256})
    r.call("clone_bdev_missing_clone_name", "bdev_lvol_clone_bdev", {"bdev": "esnap0", "lvs_name": "lvs0"})
    v = _create(r, "v1", 8, True)
    r.call("clone_bdev_of_lvol_same_lvs_by_uuid", "bdev_lvol_clone_bdev",
           {"bdev": v, "lvs_name": "lvs0", "clone_name": "x"})
    r.call("clone_bdev_of_lvol_same_lvs_by_alias", "bdev_lvol_clone_bdev",
           {"bdev": "lvs0/v1", "lvs_name": "lvs0", "clone_name": "x"})
    r.call("clone_bdev_name_exists", "bdev_lvol_clone_bdev", {"bdev": "esnap0", "lvs_name": "lvs0",
                                                              "clone_name": "v1"})
    e1 = r.call("clone_bdev_e1", "bdev_lvol_clone_bdev", {"bdev": "esnap0", "lvs_name": "lvs0", "clone_name": "e1"})
    e2 = r.call("clone_bdev_e2_by_uuid", "bdev_lvol_clone_bdev",
                {"bdev": ESNAP_UUID, "lvs_name": "lvs0", "clone_name": "e2"})
    e3 = r.call("clone_bdev_e3_of_512_block_bdev", "bdev_lvol_clone_bdev",
                {"bdev": "esnap512", "lvs_name": "lvs0", "clone_name": "e3"})
    _bdev(r, "get_e1", e1)
    _bdev(r, "get_e3", e3)
    _bdev(r, "get_esnap0_claimed", "esnap0")
    _lvols(r, "get_lvols_with_esnap_clones")
    _stores(r, "get_lvstores_esnap_clones_take_nothing")
    r.call("resize_e1_past_its_esnap", "bdev_lvol_resize", {"name": e1, "size_in_mib": 16})
    _bdev(r, "get_e1_resized", e1)
    r.call("detach_parent_of_esnap_clone", "bdev_lvol_detach_parent", {"name": e2})
    r.call("inflate_e2", "bdev_lvol_inflate", {"name": e2})
    _bdev(r, "get_e2_inflated", e2)
    _stores(r, "get_lvstores_after_inflate")
    e4 = r.call("clone_bdev_e4", "bdev_lvol_clone_bdev", {"bdev": "esnap1", "lvs_name": "lvs0", "clone_name": "e4"})
    r.call("decouple_parent_e4", "bdev_lvol_decouple_parent", {"name": e4})
    _bdev(r, "get_e4_decoupled", e4)
    r.call("decouple_parent_e4_again", "bdev_lvol_decouple_parent", {"name": e4})
    _bdev(r, "get_esnap1_released", "esnap1")
    _stores(r, "get_lvstores_after_decouple")
    # A snapshot of an esnap clone takes the external parent; the clone hangs under the snapshot.
    s1 = r.call("snapshot_e1", "bdev_lvol_snapshot", {"lvol_name": e1, "snapshot_name": "s1"})
    _bdev(r, "get_s1", s1)
    _bdev(r, "get_e1_under_s1", e1)
    c1 = r.call("clone_s1", "bdev_lvol_clone", {"snapshot_name": s1, "clone_name": "c1"})
    _bdev(r, "get_s1_two_clones", s1)
    _lvols(r, "get_lvols_esnap_tree")
    r.call("delete_s1_two_clones", "bdev_lvol_delete", {"name": s1})
    r.call("delete_c1", "bdev_lvol_delete", {"name": c1})
    r.call("delete_s1_one_clone", "bdev_lvol_delete", {"name": s1})
    _bdev(r, "get_e1_esnap_again", e1)
    r.call("set_read_only_e3", "bdev_lvol_set_read_only", {"name": e3})
    c3 = r.call("clone_read_only_esnap_clone", "bdev_lvol_clone", {"snapshot_name": e3, "clone_name": "c3"})
    _bdev(r, "get_e3_cloned", e3)
    _bdev(r, "get_c3", c3)
    r.call("snapshot_read_only_esnap_clone", "bdev_lvol_snapshot", {"lvol_name": e3, "snapshot_name": "s3"})
    r.call("delete_e3_one_clone", "bdev_lvol_delete", {"name": e3})
    _bdev(r, "get_c3_esnap_clone", c3)
    _bdev(r, "get_esnap512_claimed_by_c3", "esnap512")
    _lvols(r, "get_lvols_after_deletes")
    r.call("delete_c3", "bdev_lvol_delete", {"name": c3})
    _bdev(r, "get_esnap512_released", "esnap512")
    r.call("delete_e1", "bdev_lvol_delete", {"name": e1})
    r.call("delete_e2", "bdev_lvol_delete", {"name": e2})
    r.call("delete_e4", "bdev_lvol_delete", {"name": e4})
    r.call("delete_v1", "bdev_lvol_delete", {"name": v})
    _bdev(r, "get_esnap0_released", "esnap0")
    _stores(r, "get_lvstores_all_back")
    # Deleting an external snapshot an esnap clone holds: the bdev leaves the listing at once, the reply waits
    # until no esnap clone holds it. (Deleting the esnap clone meanwhile kills this build: its blob is opened
    # again without its lvol, the external bdev cannot be, and vbdev_lvol_esnap_dev_create logs lvol->unique_id
    # of a NULL lvol: SIGSEGV in strlen. Moving the clone to another external snapshot lets the bdev go.)
    e5 = r.call("clone_bdev_e5", "bdev_lvol_clone_bdev", {"bdev": "esnap0", "lvs_name": "lvs0", "clone_name": "e5"})
    pending = r.send_deferred("delete_esnap0_held_by_e5", "bdev_malloc_delete", {"name": "esnap0"})
    _bdev(r, "get_esnap0_while_deleting", "esnap0")
    _bdev(r, "get_e5_while_esnap_deleting", e5)
    r.call("clone_bdev_of_deleting_esnap", "bdev_lvol_clone_bdev",
           {"bdev": ESNAP_UUID, "lvs_name": "lvs0", "clone_name": "e6"})
    r.call("set_parent_bdev_to_deleting_esnap", "bdev_lvol_set_parent_bdev", {"lvol_name": e5, "parent_name": "esnap0"})
    r.call("set_parent_bdev_e5_away", "bdev_lvol_set_parent_bdev", {"lvol_name": e5, "parent_name": "esnap1"})
    r.collect(pending)
    _bdev(r, "get_esnap0_gone", "esnap0")
    _bdev(r, "get_esnap1_claimed_by_e5", "esnap1")
    r.call("delete_e5", "bdev_lvol_delete", {"name": e5})
    _lvols(r, "get_lvols_empty")


def set_parent_bdev(r: Recorder) -> None:
    """bdev_lvol_set_parent_bdev: its refusals and what an lvol becomes (from none, a snapshot, another esnap)."""
    _external_snapshots(r, "odd")
    v = _create(r, "v", 8, True)
    t = _create(r, "t", 8, False)
    r.call("set_parent_bdev_missing_bdev", "bdev_lvol_set_parent_bdev", {"lvol_name": v, "parent_name": "nope"})
    r.call("set_parent_bdev_missing_lvol", "bdev_lvol_set_parent_bdev", {"lvol_name": "nolvol",
                                                                         "parent_name": "esnap0"})
    r.call("set_parent_bdev_thick", "bdev_lvol_set_parent_bdev", {"lvol_name": t, "parent_name": "esnap0"})
    r.call("set_parent_bdev_itself", "bdev_lvol_set_parent_bdev", {"lvol_name": v, "parent_name": v})
    r.call("set_parent_bdev_size_not_cluster_multiple", "bdev_lvol_set_parent_bdev",
           {"lvol_name": v, "parent_name": "odd"})
    r.call("set_parent_bdev_missing_param", "bdev_lvol_set_parent_bdev", {"lvol_name": v})
    r.call("set_parent_bdev_esnap1_smaller", "bdev_lvol_set_parent_bdev", {"lvol_name": v, "parent_name": "esnap1"})
    _bdev(r, "get_v_esnap1", v)
    _bdev(r, "get_esnap1_claimed", "esnap1")
    r.call("set_parent_bdev_same_again", "bdev_lvol_set_parent_bdev", {"lvol_name": v, "parent_name": "esnap1"})
    r.call("set_parent_bdev_same_by_uuid_alias", "bdev_lvol_set_parent_bdev",
           {"lvol_name": "lvs0/v", "parent_name": _bdev_uuid(r, "esnap1")})
    r.call("set_parent_bdev_to_esnap0", "bdev_lvol_set_parent_bdev", {"lvol_name": "lvs0/v", "parent_name": "esnap0"})
    _bdev(r, "get_v_esnap0", v)
    _bdev(r, "get_esnap1_released", "esnap1")
    s = r.call("snapshot_v", "bdev_lvol_snapshot", {"lvol_name": v, "snapshot_name": "s"})
    _bdev(r, "get_s_esnap_snapshot", s)
    w = _create(r, "w", 8, True)
    r.call("set_parent_w_to_s", "bdev_lvol_set_parent", {"lvol_name": w, "parent_name": s})
    _bdev(r, "get_s_two_clones", s)
    r.call("set_parent_bdev_clone_w_to_esnap1", "bdev_lvol_set_parent_bdev", {"lvol_name": w, "parent_name": "esnap1"})
    _bdev(r, "get_w_esnap1", w)
    _bdev(r, "get_s_one_clone", s)
    r.call("set_parent_esnap_clone_w_to_s", "bdev_lvol_set_parent", {"lvol_name": w, "parent_name": s})
    _bdev(r, "get_w_clone_of_s", w)
    _bdev(r, "get_esnap1_released_again", "esnap1")
    r.call("set_parent_bdev_snapshot_s", "bdev_lvol_set_parent_bdev", {"lvol_name": s, "parent_name": "esnap1"})
    _bdev(r, "get_s_after_set_parent_bdev", s)
    x = _create(r, "x", 8, True)
    r.call("set_parent_bdev_to_lvol_of_same_lvs", "bdev_lvol_set_parent_bdev", {"lvol_name": x, "parent_name": w})
    _bdev(r, "get_x_esnap_of_w", x)
    _bdev(r, "get_w_claimed_by_x", w)
    r.call("set_parent_bdev_x_back_to_esnap0", "bdev_lvol_set_parent_bdev", {"lvol_name": x, "parent_name": "esnap0"})
    _bdev(r, "get_w_released", w)
    _lvols(r, "get_lvols_after_set_parent_bdev")
    _stores(r, "get_lvstores_nothing_taken")
    for name, uuid in (("x", x), ("w", w), ("v", v), ("t", t)):
        r.call(f"delete_{name}", "bdev_lvol_delete", {"name": uuid})
    _lvols(r, "get_lvols_s_left")


def _bdev_uuid(r: Recorder, name: str) -> str:
    """A bdev's UUID, read on a second connection (not a step of the transcript)."""
    wire = Wire(r.connect())
    try:
        wire.send("bdev_get_bdevs", {"name": name}, 1)
        reply = wire.receive(10.0)
        assert reply is not None and "result" in reply, reply
        return str(reply["result"][0]["uuid"])
    finally:
        wire.sock.close()


def esnap_missing_and_late(r: Recorder) -> None:
    """An lvstore loaded while its esnap clones' external bdev is missing (degraded lvols), the bdev arriving
    late (hotplug), a reload with it present, and deletes of degraded lvols."""
    _aio(r)
    _lvstore(r, "aio0")
    _malloc(r, "esnap0", 8, uuid=ESNAP_UUID)
    e = r.call("clone_bdev_e", "bdev_lvol_clone_bdev", {"bdev": "esnap0", "lvs_name": "lvs0", "clone_name": "e"})
    s = r.call("snapshot_e", "bdev_lvol_snapshot", {"lvol_name": e, "snapshot_name": "s"})
    c = r.call("clone_s", "bdev_lvol_clone", {"snapshot_name": s, "clone_name": "c"})
    v = _create(r, "v", 4, False)
    r.call("set_xattr_c", "bdev_lvol_set_xattr", {"name": c, "xattr_name": "k", "xattr_value": "c"})
    _lvols(r, "get_lvols_before_unload")
    _unload(r, "unload_1")
    _bdev(r, "get_esnap0_released_by_unload", "esnap0")
    r.call("delete_esnap0", "bdev_malloc_delete", {"name": "esnap0"})
    _reload(r, "reload_1_esnap_missing")
    _lvols(r, "get_lvols_degraded")
    _bdev(r, "get_e_degraded_no_bdev", e)
    _bdev(r, "get_s_degraded_by_alias", "lvs0/s")
    _bdev(r, "get_c_degraded", c)
    _bdev(r, "get_v_not_degraded", v)
    r.call("get_bdevs_all_while_degraded", "bdev_get_bdevs")
    r.call("get_xattr_degraded", "bdev_lvol_get_xattr", {"name": c, "xattr_name": "k"})
    r.call("snapshot_degraded", "bdev_lvol_snapshot", {"lvol_name": c, "snapshot_name": "cs"})
    r.call("rename_degraded", "bdev_lvol_rename", {"old_name": e, "new_name": "e2"})
    r.call("create_name_of_degraded", "bdev_lvol_create", {"lvs_name": "lvs0", "lvol_name": "c", "size_in_mib": 4,
                                                           "thin_provision": True})
    _stores(r, "get_lvstores_degraded")
    # The external bdev arrives: the degraded lvols get their bdevs.
    _malloc(r, "esnap0", 8, uuid=ESNAP_UUID, tag="malloc_create_esnap0_late")
    r.call("wait_for_examine_after_late_esnap", "bdev_wait_for_examine")
    _lvols(r, "get_lvols_hotplugged")
    _bdev(r, "get_e_hotplugged", e)
    _bdev(r, "get_s_hotplugged", s)
    _bdev(r, "get_c_hotplugged", c)
    _bdev(r, "get_esnap0_claimed_after_hotplug", "esnap0")
    r.call("get_xattr_after_hotplug", "bdev_lvol_get_xattr", {"name": c, "xattr_name": "k"})
    # Reload with the external bdev present: nothing degraded.
    _unload(r, "unload_2")
    _reload(r, "reload_2_esnap_present")
    _lvols(r, "get_lvols_esnap_present_at_load")
    _bdev(r, "get_e_present_at_load", e)
    # Degraded again, then deleted while degraded.
    _unload(r, "unload_3")
    r.call("delete_esnap0_again", "bdev_malloc_delete", {"name": "esnap0"})
    _reload(r, "reload_3_esnap_missing")
    _lvols(r, "get_lvols_degraded_again")
    r.call("delete_degraded_s_two_clones", "bdev_lvol_delete", {"name": s})
    r.call("delete_degraded_c_by_uuid", "bdev_lvol_delete", {"name": c})
    _lvols(r, "get_lvols_after_degraded_delete")
    r.call("delete_degraded_s_by_alias", "bdev_lvol_delete", {"name": "lvs0/s"})
    _lvols(r, "get_lvols_e_moved_up")
    r.call("delete_degraded_e_by_names", "bdev_lvol_delete", {"name": "lvs0/e"})
    r.call("delete_v", "bdev_lvol_delete", {"name": v})
    _lvols(r, "get_lvols_empty")
    _stores(r, "get_lvstores_all_free")


def nested_lvstore(r: Recorder) -> None:
    """An lvstore on an lvol bdev: made, listed, used, and unloaded when its lvol goes."""
    _malloc(r, "Malloc0", 256)
    _lvstore(r, "Malloc0")
    base = _create(r, "base", 64, False)
    thin = _create(r, "thinbase", 64, True)
    nested = _lvstore(r, base, "inner", tag="create_lvstore_on_lvol")
    _bdev(r, "get_base_claimed", base)
    r.call("get_lvstores_both", "bdev_lvol_get_lvstores")
    r.call("create_lvstore_on_claimed_lvol", "bdev_lvol_create_lvstore",
           {"bdev_name": base, "lvs_name": "inner2", "cluster_sz": MIB})
    r.call("create_lvstore_on_thin_lvol_by_alias", "bdev_lvol_create_lvstore",
           {"bdev_name": "lvs0/thinbase", "lvs_name": "inner2", "cluster_sz": 4 * MIB})
    a = _create(r, "a", 8, False, lvs="inner")
    b = _create(r, "b", 8, True, lvs="inner")
    sa = r.call("snapshot_inner_a", "bdev_lvol_snapshot", {"lvol_name": a, "snapshot_name": "sa"})
    _bdev(r, "get_inner_a", a)
    _bdev(r, "get_inner_sa", sa)
    _lvols(r, "get_lvols_inner", "inner")
    _lvols(r, "get_lvols_outer", "lvs0")
    r.call("get_lvols_all", "bdev_lvol_get_lvols")
    _stores(r, "get_lvstores_inner", "inner")
    _stores(r, "get_lvstores_outer", "lvs0")
    ea = r.call("clone_bdev_inner_lvol_into_outer", "bdev_lvol_clone_bdev",
                {"bdev": b, "lvs_name": "lvs0", "clone_name": "eb"})
    _bdev(r, "get_outer_esnap_of_inner", ea)
    r.call("delete_outer_esnap_clone", "bdev_lvol_delete", {"name": ea})
    r.call("snapshot_base_holding_lvstore", "bdev_lvol_snapshot", {"lvol_name": base, "snapshot_name": "bsnap"})
    _bdev(r, "get_base_after_snapshot", base)
    r.call("resize_base_holding_lvstore", "bdev_lvol_resize", {"name": base, "size_in_mib": 96})
    r.call("grow_inner", "bdev_lvol_grow_lvstore", {"lvs_name": "inner"})
    _stores(r, "get_lvstores_inner_grown", "inner")
    r.call("rename_inner_to_existing_name", "bdev_lvol_rename_lvstore", {"old_name": "inner", "new_name": "lvs0"})
    r.call("rename_inner", "bdev_lvol_rename_lvstore", {"old_name": "inner", "new_name": "inner_r"})
    _lvols(r, "get_lvols_inner_renamed", "inner_r")
    r.call("delete_base_holding_lvstore", "bdev_lvol_delete", {"name": base})
    r.call("get_lvstores_after_base_delete", "bdev_lvol_get_lvstores")
    r.call("get_lvols_after_base_delete", "bdev_lvol_get_lvols")
    _bdev(r, "get_inner_a_after_base_delete", a)
    r.call("delete_thinbase", "bdev_lvol_delete", {"name": thin})
    _stores(r, "get_lvstores_outer_end")
    del nested, b


def reload_many(r: Recorder) -> None:
    """Ten lvols with snapshots, clones, xattrs, read-only flags, renames, resizes, a checksum and reused blob
    ids, unloaded (aio base bdev deleted) and examined again: every lvol must come back as it was."""
    _aio(r)
    _lvstore(r, "aio0")
    u = {}
    for i, (mib, thin) in enumerate(((4, False), (2, True), (3, False), (2, True), (5, True))):
        u[f"v{i}"] = _create(r, f"v{i}", mib, thin)
    u["s0"] = r.call("snapshot_v0", "bdev_lvol_snapshot", {"lvol_name": u["v0"], "snapshot_name": "s0"})
    u["c0"] = r.call("clone_s0", "bdev_lvol_clone", {"snapshot_name": u["s0"], "clone_name": "c0"})
    u["s1"] = r.call("snapshot_v1_with_xattrs", "bdev_lvol_snapshot",
                     {"lvol_name": u["v1"], "snapshot_name": "s1", "xattrs": {"snap_k": "snap_v"}})
    r.call("delete_v3", "bdev_lvol_delete", {"name": u.pop("v3")})
    u["n3"] = _create(r, "n3", 2, True)
    r.call("rename_v2", "bdev_lvol_rename", {"old_name": u["v2"], "new_name": "v2_renamed"})
    r.call("resize_v4", "bdev_lvol_resize", {"name": u["v4"], "size_in_mib": 7})
    r.call("set_read_only_v4", "bdev_lvol_set_read_only", {"name": u["v4"]})
    for name in ("v0", "c0", "n3"):
        r.call(f"set_xattr_{name}", "bdev_lvol_set_xattr",
               {"name": u[name], "xattr_name": "longhorn", "xattr_value": f"value-of-{name}"})
    r.call("register_checksum_s0", "bdev_lvol_register_snapshot_checksum", {"name": u["s0"]})
    r.call("get_checksum_s0", "bdev_lvol_get_snapshot_checksum", {"name": u["s0"]})
    u["t9"] = _create(r, "t9", 1, True)
    r.call("set_parent_t9_missing_size", "bdev_lvol_set_parent", {"lvol_name": u["t9"], "parent_name": u["s1"]})
    u["c1"] = r.call("clone_s1", "bdev_lvol_clone", {"snapshot_name": u["s1"], "clone_name": "c1"})
    _lvols(r, "get_lvols_before_unload")
    r.call("get_bdevs_before_unload", "bdev_get_bdevs")
    _stores(r, "get_lvstores_before_unload")
    _unload(r, "unload")
    _reload(r, "reload")
    _lvols(r, "get_lvols_after_reload")
    r.call("get_bdevs_after_reload", "bdev_get_bdevs")
    for name, uuid in u.items():
        _bdev(r, f"get_{name}_after_reload", uuid)
    for name in ("v0", "c0", "n3"):
        r.call(f"get_xattr_{name}_after_reload", "bdev_lvol_get_xattr", {"name": u[name], "xattr_name": "longhorn"})
    r.call("get_xattr_s1_snapshot_xattr", "bdev_lvol_get_xattr", {"name": u["s1"], "xattr_name": "snap_k"})
    r.call("get_xattr_name_of_renamed", "bdev_lvol_get_xattr", {"name": u["v2"], "xattr_name": "name"})
    r.call("get_checksum_s0_after_reload", "bdev_lvol_get_snapshot_checksum", {"name": u["s0"]})
    r.call("set_xattr_read_only_after_reload", "bdev_lvol_set_xattr",
           {"name": u["v4"], "xattr_name": "k", "xattr_value": "v"})
    r.call("delete_s0_two_clones_after_reload", "bdev_lvol_delete", {"name": u["s0"]})
    for name in ("c0", "s0", "c1", "s1", "v0", "v1", "v2", "v4", "n3", "t9"):
        r.call(f"delete_{name}", "bdev_lvol_delete", {"name": u[name]})
    _stores(r, "get_lvstores_all_free")


def validation(r: Recorder) -> None:
    """Numeric and name parameters at their bounds: lvstore cluster sizes, metadata ratios, names; lvol sizes."""
    _malloc(r, "Malloc0", 64)
    _malloc(r, "M512", 32, block=512)
    _malloc(r, "Big", 256)

    def lvstore(tag: str, bdev: str, name: str, **kw: Any) -> None:
        uuid = r.call(tag, "bdev_lvol_create_lvstore", {"bdev_name": bdev, "lvs_name": name, **kw})
        if uuid:
            r.call(f"{tag}_listed", "bdev_lvol_get_lvstores", {"uuid": uuid})
            r.call(f"{tag}_deleted", "bdev_lvol_delete_lvstore", {"uuid": uuid})

    for cs in (512, 4095, 4097, 8191, 12288):
        lvstore(f"lvstore_512b_cluster_{cs}", "M512", f"x{cs}", cluster_sz=cs)
    for cs in (2048, 4096, 8191, 12288, 32 * MIB, 64 * MIB, 128 * MIB, 1 << 31):
        lvstore(f"lvstore_4k_cluster_{cs}", "Malloc0", f"y{cs}", cluster_sz=cs)
    lvstore("lvstore_cluster_8191_big_bdev", "Big", "z8191", cluster_sz=8191)
    lvstore("lvstore_cluster_0_is_default", "Malloc0", "c0", cluster_sz=0)
    lvstore("lvstore_cluster_too_big_for_u32", "Malloc0", "c1", cluster_sz=1 << 32)
    for ratio in (1, 6, 7, 99, 101, 1000, 100000):
        lvstore(f"lvstore_md_ratio_{ratio}", "Malloc0", f"r{ratio}", num_md_pages_per_cluster_ratio=ratio)
    lvstore("lvstore_name_empty", "Malloc0", "")
    lvstore("lvstore_name_255", "Malloc0", "a" * 255)
    lvstore("lvstore_name_256", "Malloc0", "b" * 256)
    lvstore("lvstore_clear_method_bogus", "Malloc0", "cm", clear_method="bogus")
    lvstore("lvstore_clear_method_upper_case", "Malloc0", "cm", clear_method="UNMAP")
    lvstore("lvstore_missing_bdev", "nobdev", "z")
    _lvstore(r, "Big", cluster=MIB, tag="lvstore_lvs0")
    r.call("lvstore_duplicate_name", "bdev_lvol_create_lvstore", {"bdev_name": "Malloc0", "lvs_name": "lvs0"})
    r.call("lvstore_on_claimed_bdev", "bdev_lvol_create_lvstore", {"bdev_name": "Big", "lvs_name": "other"})
    r.call("rename_lvstore_missing", "bdev_lvol_rename_lvstore", {"old_name": "nolvs", "new_name": "x"})
    r.call("rename_lvstore_256", "bdev_lvol_rename_lvstore", {"old_name": "lvs0", "new_name": "r" * 256})
    r.call("get_lvstores_after_long_rename", "bdev_lvol_get_lvstores")
    r.call("rename_lvstore_back", "bdev_lvol_rename_lvstore", {"old_name": "r" * 255, "new_name": "lvs0"})
    r.call("rename_lvstore_empty", "bdev_lvol_rename_lvstore", {"old_name": "lvs0", "new_name": ""})
    r.call("get_lvstores_after_empty_rename", "bdev_lvol_get_lvstores")
    r.call("rename_lvstore_back_from_empty", "bdev_lvol_rename_lvstore", {"old_name": "", "new_name": "lvs0"})

    def lvol(tag: str, **kw: Any) -> Any:
        uuid = r.call(tag, "bdev_lvol_create", {"lvs_name": "lvs0", "lvol_name": tag, **kw})
        if uuid:
            _bdev(r, f"{tag}_bdev", uuid)
            r.call(f"{tag}_deleted", "bdev_lvol_delete", {"name": uuid})
        return uuid

    lvol("size_0_thick", size_in_mib=0, thin_provision=False)
    lvol("size_1_thin", size_in_mib=1, thin_provision=True)
    lvol("size_1TiB_thin", size_in_mib=1 << 20, thin_provision=True)
    lvol("size_2pow44_wraps", size_in_mib=1 << 44, thin_provision=True)
    lvol("size_2pow44_plus_1_wraps", size_in_mib=(1 << 44) + 1, thin_provision=False)
    lvol("size_over_free", size_in_mib=512, thin_provision=False)
    lvol("clear_method_bogus", size_in_mib=1, clear_method="bogus")
    lvol("clear_method_upper_case", size_in_mib=1, clear_method="WRITE_ZEROES")
    r.call("create_lvol_missing_lvs", "bdev_lvol_create", {"lvs_name": "nolvs", "lvol_name": "x", "size_in_mib": 1})
    r.call("create_lvol_uuid_and_name", "bdev_lvol_create",
           {"uuid": "00000000-0000-0000-0000-000000000000", "lvs_name": "lvs0", "lvol_name": "x", "size_in_mib": 1})
    r.call("create_lvol_no_lvs", "bdev_lvol_create", {"lvol_name": "x", "size_in_mib": 1})
    v = _create(r, "v", 4, True)
    r.call("resize_to_0", "bdev_lvol_resize", {"name": v, "size_in_mib": 0})
    _bdev(r, "get_v_size_0", v)
    r.call("resize_2pow44_wraps", "bdev_lvol_resize", {"name": v, "size_in_mib": 1 << 44})
    _bdev(r, "get_v_after_wrapping_resize", v)
    r.call("rename_lvol_empty", "bdev_lvol_rename", {"old_name": v, "new_name": ""})
    r.call("set_xattr_empty_name", "bdev_lvol_set_xattr", {"name": v, "xattr_name": "", "xattr_value": "x"})
    r.call("get_xattr_empty_name", "bdev_lvol_get_xattr", {"name": v, "xattr_name": ""})
    r.call("set_xattr_long_value", "bdev_lvol_set_xattr", {"name": v, "xattr_name": "big", "xattr_value": "x" * 3000})
    r.call("get_xattr_long_value", "bdev_lvol_get_xattr", {"name": v, "xattr_name": "big"})
    r.call("delete_v", "bdev_lvol_delete", {"name": v})
    _stores(r, "get_lvstores_end")


@dataclass(frozen=True)
class Scenario:
    name: str
    bdev: str
    how: str
    run: Callable[[Recorder], None]
    malloc_mib: int


SCENARIOS = (
    Scenario("10_esnap_clones", "Malloc0: 65536 x 4096 B (256 MiB) with lvstore lvs0 cluster_sz 1 MiB; external "
             "snapshots: esnap0 8 MiB (uuid e4b40d8b-...), esnap1 4 MiB, esnap512 2 MiB of 512 B blocks, odd2 "
             "300 blocks", "fresh spdk_tgt; raw JSON-RPC over the Unix socket, one request then one response; a "
             "'deferred' step was sent on a second connection and answered after the step its note names",
             esnap_clones, 256 + 8 + 4 + 2 + 2 + 2),
    Scenario("11_set_parent_bdev", "Malloc0: 256 MiB with lvstore lvs0 cluster_sz 1 MiB; esnap0 8 MiB (uuid "
             "e4b40d8b-...), esnap1 4 MiB, odd 300 blocks", "fresh spdk_tgt; raw JSON-RPC over the Unix socket",
             set_parent_bdev, 256 + 8 + 4 + 2),
    Scenario("12_esnap_missing_and_late", "aio0: bdev_aio_create on a 64 MiB file (block_size 4096) with lvstore "
             "lvs0 cluster_sz 1 MiB; esnap0: 8 MiB malloc, uuid e4b40d8b-..., deleted and made again",
             "fresh spdk_tgt; raw JSON-RPC over the Unix socket; unload = bdev_aio_delete, reload = "
             "bdev_aio_create on the same file (tag reload_aio_create) and bdev_wait_for_examine",
             esnap_missing_and_late, 8),
    Scenario("13_nested_lvstore", "Malloc0: 256 MiB with lvstore lvs0 cluster_sz 1 MiB; lvstore inner on the "
             "thick 64 MiB lvol lvs0/base", "fresh spdk_tgt; raw JSON-RPC over the Unix socket",
             nested_lvstore, 256),
    Scenario("14_reload_many_lvols", "aio0: bdev_aio_create on a 64 MiB file (block_size 4096) with lvstore lvs0 "
             "cluster_sz 1 MiB", "fresh spdk_tgt; raw JSON-RPC over the Unix socket; unload = bdev_aio_delete, "
             "reload = bdev_aio_create on the same file (tag reload_aio_create) and bdev_wait_for_examine",
             reload_many, 0),
    Scenario("15_validation", "Malloc0: 64 MiB (4096 B blocks), M512: 32 MiB (512 B blocks), Big: 256 MiB (4096 B "
             "blocks; lvstore lvs0 cluster_sz 1 MiB later)", "fresh spdk_tgt; raw JSON-RPC over the Unix socket",
             validation, 64 + 32 + 256),
)


def record(scenario: Scenario, binary: str, cpumask: str, out: Path) -> Path:
    host = LocalHost()
    work = tempfile.mkdtemp(prefix="rec-", dir="/tmp")
    aio = Path(work) / "aio0.img"
    with aio.open("wb") as f:
        f.truncate(AIO_BYTES)
    cfg = TargetConfig(kind="spdk", spdk_tgt=binary, cpumask=cpumask)
    # Each malloc bdev costs its size rounded up to 2 MiB plus 2 MiB (spdk_memory); a few spare bdevs' worth.
    needs = TargetNeeds(malloc_mib=scenario.malloc_mib + 32)
    with TargetSession(host, cfg, work, needs=needs) as session:
        def connect() -> socket.socket:
            return host.connect_unix(session.sock_path)

        rec = Recorder(Wire(connect()), connect, str(aio))
        version = rec.wire
        version.send("spdk_get_version", None, 0)
        info = version.receive(10.0) or {}
        try:
            scenario.run(rec)
        finally:
            for index in list(rec.deferred):
                rec.collect(index, timeout=1.0)
            alive = session.alive()
        if not alive:
            raise RuntimeError(f"{scenario.name}: the target died during the recording (see {work})")
    variant = Path(binary).resolve().parents[2].name
    version_text = (info.get("result") or {}).get("version", "spdk_tgt")
    data = {
        "target": f"spdk_tgt ({version_text}, Longhorn SPDK fork longhorn-v24.09 @1975133e9, {variant} build, debug)",
        "bdev": scenario.bdev,
        "how": scenario.how,
        "steps": rec.steps,
    }
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{PREFIX}{scenario.name}.json"
    path.write_text(json.dumps(data, indent=1) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--spdk-tgt", default=os.environ.get("SPDK_TGT"), help="the spdk_tgt binary")
    parser.add_argument("--cpumask", default="0x2", help="spdk_tgt -m (default 0x2: core 0 is someone else's)")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("scenarios", nargs="*", help=f"default: all of {[s.name for s in SCENARIOS]}")
    args = parser.parse_args(argv)
    if not args.spdk_tgt:
        parser.error("--spdk-tgt (or SPDK_TGT) is required")
    chosen = [s for s in SCENARIOS if not args.scenarios or s.name in args.scenarios
              or s.name.split("_", 1)[1] in args.scenarios]
    for scenario in chosen:
        path = record(scenario, args.spdk_tgt, args.cpumask, args.out)
        print(f"{path}: {len(json.loads(path.read_text())['steps'])} steps", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
