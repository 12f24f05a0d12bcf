"""The I/O lanes' model under interleavings driven by hand (no target, no sleeps): what the RPCs the engine
reports (`on_send`, `on_reply`) leave each block and each size, and which I/O errors that makes legal."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from harness.hosts.local import LocalHost
from harness.io import export as ex
from harness.io.config import IoConfig
from harness.io.images import ZERO, Images
from harness.io.lanes import IoStorm
from harness.storm.checker import Checker, LvstoreInfo
from harness.storm.operations import Op
from harness.storm.view import TreeView

MIB = 1 << 20
BPC = MIB // 4096
V = "0bbe3fb1-e912-4a7a-ae6b-4bdee00f39b2"
S = "1c2d3e4f-0000-4000-8000-000000000001"
C = "1c2d3e4f-0000-4000-8000-000000000002"


class _Storm:
    """What IoStorm needs of the engine: a real checker and view, no lanes running."""

    def __init__(self) -> None:
        self.stopping = False
        self.inflight = 0
        self.gate_open = asyncio.Event()
        self.drained = asyncio.Event()
        self.view = TreeView()
        self.crashed: threading.Event | None = None
        self.lvs = LvstoreInfo("lvs0", "72978825-3c72-47a5-b1c1-f3eeec8506d3", "Malloc0", 1000, 1000, MIB, 4096)
        self.checker = Checker(self.view, self.lvs)

    def stop(self, reason: str) -> None:
        self.stopping = True


@pytest.fixture
def io() -> IoStorm:
    storm = _Storm()
    lanes = IoStorm(IoConfig(enabled=True), storm, host=LocalHost(), sock_path="", history=None, run_dir=None,
                    seed=1, op_timeout=1.0)
    lanes.images = Images(MIB, 4096)
    lanes.images.create(V, 4, thin=True)
    return lanes


def _op(method: str, **params: Any) -> Op:
    return Op(method, params, 0)


def _reply(io: IoStorm, op: Op, result: Any = True) -> None:
    op.done, op.result = True, result
    op.t_end = time.time()
    io.on_reply(op)


def _read_error(io: IoStorm, uuid: str, lba: int) -> None:
    io._judge_error_now("read", ex.Export(uuid, 1, time.monotonic()), lba, 2, "LBA_OUT_OF_RANGE",
                        time.monotonic(), time.time())


def _io_errors(io: IoStorm) -> list[str]:
    return [f.message for f in io.storm.checker.findings if f.kind == "io-error"]


def test_set_parent_bdev_makes_the_unowned_clusters_read_the_external_bdev_not_a_copy(io: IoStorm) -> None:
    """bdev_lvol_set_parent_bdev (spdk_bs_blob_set_external_parent) copies nothing: the clusters the lvol does
    not own read the external snapshot (the storm's malloc bdevs: zeroes), not its old parent's blocks."""
    images = io.images
    assert images is not None
    images.write(V, 300, 7)
    snap = _op("bdev_lvol_snapshot", lvol_name=V, snapshot_name="s")
    io.on_send(snap)
    _reply(io, snap, S)
    assert images.visible(V, 300) == 7 and images.blobs[V].owned == 0
    esnap = _op("bdev_lvol_set_parent_bdev", lvol_name=V, parent_name="storm_esnap0")
    io.on_send(esnap)
    _reply(io, esnap)
    assert images.visible(V, 300) == ZERO and images.blobs[V].parent is None and images.blobs[V].owned == 0
    assert images.visible(S, 300) == 7
    images.write(V, 301, 8)  # copy-on-write from the external bdev: zeroes beside it
    assert images.visible(V, 300) == ZERO and images.visible(V, 301) == 8


def test_inflate_still_copies_the_parents_blocks(io: IoStorm) -> None:
    images = io.images
    assert images is not None
    images.write(V, 300, 7)
    snap = _op("bdev_lvol_snapshot", lvol_name=V, snapshot_name="s")
    io.on_send(snap)
    _reply(io, snap, S)
    inflate = _op("bdev_lvol_inflate", name=V)
    io.on_send(inflate)
    _reply(io, inflate)
    assert images.visible(V, 300) == 7 and images.blobs[V].parent is None and images.blobs[V].owned == 0b1111
