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


@pytest.mark.parametrize("first", ["resize", "snapshot"])
def test_a_snapshot_that_overlapped_a_resize_of_its_origin_may_have_either_size(io: IoStorm, first: str) -> None:
    """spdk_tgt may run the snapshot before or after the resize whatever order the replies come in: the
    snapshot (and a clone of it) is 4 or 16 MiB; an I/O past 4 MiB may fail, one within it may not."""
    resize = _op("bdev_lvol_resize", name=V, size_in_mib=16)
    snap = _op("bdev_lvol_snapshot", lvol_name=V, snapshot_name="s")
    io.on_send(resize)
    io.on_send(snap)
    if first == "resize":
        _reply(io, resize)
        _reply(io, snap, S)
    else:
        _reply(io, snap, S)
        _reply(io, resize)
    clone = _op("bdev_lvol_clone", snapshot_name=S, clone_name="c")
    io.on_send(clone)
    _reply(io, clone, C)
    _read_error(io, C, 14 * BPC)  # the target ran the snapshot first: the clone is 4 MiB (/tmp/iorep/r4)
    assert _io_errors(io) == [] and io.stats.expected_errors == 1
    _read_error(io, C, 3 * BPC)  # within either size: a finding
    assert len(_io_errors(io)) == 1 and io.stats.errors == 1
    assert io.images is not None
    assert {io.images.blobs[S].clusters, *io.images.blobs[S].alt_sizes} == {4, 16}
    assert {io.images.blobs[C].clusters, *io.images.blobs[C].alt_sizes} == {4, 16}
    assert io.images.blocks(V) == 16 * BPC and not io.images.blobs[V].alt_sizes  # the origin: 16 MiB either way


def test_a_snapshot_sent_after_a_resize_answered_has_the_new_size(io: IoStorm) -> None:
    resize = _op("bdev_lvol_resize", name=V, size_in_mib=16)
    io.on_send(resize)
    _reply(io, resize)
    snap = _op("bdev_lvol_snapshot", lvol_name=V, snapshot_name="s")
    io.on_send(snap)
    _reply(io, snap, S)
    clone = _op("bdev_lvol_clone", snapshot_name=S, clone_name="c")
    io.on_send(clone)
    _reply(io, clone, C)
    _read_error(io, C, 14 * BPC)
    assert len(_io_errors(io)) == 1
    assert io.images is not None and not io.images.blobs[C].alt_sizes


def _snapshot_over_a_write(io: IoStorm) -> Images:
    """Block 300 of V written (7), then V snapshotted as S: the images the two tests below start from."""
    images = io.images
    assert images is not None
    images.write(V, 300, 7)
    snap = _op("bdev_lvol_snapshot", lvol_name=V, snapshot_name="s")
    io.on_send(snap)
    _reply(io, snap, S)
    return images


def test_set_parent_bdev_makes_the_unowned_clusters_read_the_external_bdev_not_a_copy(io: IoStorm) -> None:
    """bdev_lvol_set_parent_bdev (spdk_bs_blob_set_external_parent) copies nothing: the clusters the lvol does
    not own read the external snapshot (the storm's malloc bdevs: zeroes), not its old parent's blocks."""
    images = _snapshot_over_a_write(io)
    assert images.visible(V, 300) == 7 and images.blobs[V].owned == 0
    esnap = _op("bdev_lvol_set_parent_bdev", lvol_name=V, parent_name="storm_esnap0")
    io.on_send(esnap)
    _reply(io, esnap)
    assert images.visible(V, 300) == ZERO and images.blobs[V].parent is None and images.blobs[V].owned == 0
    assert images.visible(S, 300) == 7
    images.write(V, 301, 8)  # copy-on-write from the external bdev: zeroes beside it
    assert images.visible(V, 300) == ZERO and images.visible(V, 301) == 8


def test_inflate_still_copies_the_parents_blocks(io: IoStorm) -> None:
    images = _snapshot_over_a_write(io)
    inflate = _op("bdev_lvol_inflate", name=V)
    io.on_send(inflate)
    _reply(io, inflate)
    assert images.visible(V, 300) == 7 and images.blobs[V].parent is None and images.blobs[V].owned == 0b1111


def test_no_export_while_a_resize_of_the_lvol_is_in_flight(io: IoStorm) -> None:
    """Exported while its resize is in flight, a shrink answers EBUSY where the checker expects ok."""
    io.storm.view.add(V, "v", size_mib=4)
    assert io._export_candidates() == [V]
    resize = _op("bdev_lvol_resize", name=V, size_in_mib=2)
    io.on_send(resize)
    assert io._export_candidates() == []
    _reply(io, resize)
    assert io._export_candidates() == [V]
