"""The model of which write each block must show (harness.io.images) and the stamps that say which it shows."""

from __future__ import annotations

import pytest

from harness.io.images import LOOSE, ZERO, Images, allows, union
from harness.io.stamp import lvol_identity, make_block, parse_block

BPC = 4  # 4 blocks per cluster keeps the arithmetic visible
V, S, C = "v" * 8, "s" * 8, "c" * 8


@pytest.fixture
def im() -> Images:
    images = Images(cluster_size=BPC * 512, block_size=512)
    images.create(V, clusters=4, thin=True)
    return images


def test_stamps_name_lvol_lba_and_write_and_catch_tears_and_misplacement() -> None:
    u = "0bbe3fb1-e912-4a7a-ae6b-4bdee00f39b2"
    block = make_block(lvol_identity(u), 77, 1234, 4096)
    seen = parse_block(block)
    assert (seen.kind, seen.identity, seen.lba, seen.write_id) == ("stamp", lvol_identity(u), 77, 1234)
    torn = block[:2048] + make_block(lvol_identity(u), 77, 1235, 4096)[2048:]
    assert parse_block(torn).kind == "garbage"
    assert parse_block(bytes(4096)).kind == "zero" and parse_block(b"\1" + bytes(4095)).kind == "garbage"
    assert seen.describe({lvol_identity(u): "v1"}) == "write 1234 to v1 lba 77"


def test_a_snapshot_is_frozen_and_its_origin_and_clones_show_it_until_written(im: Images) -> None:
    im.write(V, 1, 10)
    im.write(V, 5, 11)
    im.snapshot(V, S)
    assert im.blobs[S].read_only and im.blobs[V].parent == S and im.blobs[V].owned == 0
    _, allocated = im.write(V, 1, 12)  # copy-on-write of cluster 0
    assert allocated and im.visible(V, 1) == 12 and im.visible(S, 1) == 10
    assert im.visible(V, 5) == 11 and im.visible(V, 2) == ZERO
    im.clone(S, C)
    assert [im.visible(C, b) for b in (1, 5, 9)] == [10, 11, ZERO]
    im.write(C, 6, 13)
    assert im.visible(C, 5) == 11 and im.visible(C, 6) == 13 and im.visible(V, 6) == ZERO


def test_delete_of_a_snapshot_with_one_clone_keeps_the_clones_data(im: Images) -> None:
    im.write(V, 1, 10)
    im.write(V, 9, 11)
    im.snapshot(V, S)
    im.write(V, 1, 12)
    im.delete(S)
    assert S not in im.blobs and im.blobs[V].parent is None
    assert im.visible(V, 1) == 12 and im.visible(V, 9) == 11
    assert im.blobs[V].owned == 0b0101  # its own cluster 0 and the snapshot's cluster 2


def test_shrink_drops_blocks_and_a_thin_clone_grown_again_shows_its_parent(im: Images) -> None:
    im.write(V, 9, 11)
    im.snapshot(V, S)
    im.write(V, 9, 12)
    im.resize(V, 1, t=1.0)
    assert im.blocks(V) == BPC and im.min_blocks_since(V, 0.0) == BPC
    im.resize(V, 4, t=2.0)
    assert im.visible(V, 9) == 11  # past the cut it reads the snapshot again, not its own lost write
    im.resize(V, 6, t=3.0)
    assert im.visible(V, 20) == ZERO  # past the parent's end: zeroes
    im.resize(V, 1, t=4.0, bdev_kept=True)  # a refused shrink of an exported lvol
    assert im.blocks(V) == 6 * BPC and im.blobs[V].clusters == 1


def test_inflate_and_decouple_keep_data_and_detach_and_set_parent_change_it(im: Images) -> None:
    im.write(V, 1, 10)
    im.snapshot(V, S)
    im.clone(S, C)
    im.decouple(C)
    assert im.blobs[C].parent is None and im.visible(C, 1) == 10 and im.blobs[C].owned == 0b1
    im.inflate(V)
    assert im.blobs[V].parent is None and not im.blobs[V].thin and im.visible(V, 1) == 10
    c2 = "d" * 8
    im.clone(S, c2)
    im.detach(c2)  # Longhorn's detach copies nothing: the clone now shows zeroes there
    assert im.visible(c2, 1) == ZERO
    im.set_parent(c2, S)
    assert im.visible(c2, 1) == 10


def test_races_leave_candidates_and_overlaps_leave_the_tree_loose(im: Images) -> None:
    prev, _ = im.write(V, 1, 10)
    assert prev == ZERO
    im.snapshot(V, S)
    im.raced_snapshot(S, V, 1, 10, prev)  # the write may have landed after the snapshot
    assert im.visible(S, 1) == frozenset({ZERO, 10}) and im.blobs[V].maybe == 0b1
    assert allows(im.visible(S, 1), 10) and allows(im.visible(S, 1), ZERO) and not allows(im.visible(S, 1), 9)
    im.loosen_tree(V)
    assert im.visible(S, 3) == LOOSE and im.visible(V, 2) == LOOSE
    im.write(V, 2, 20)
    assert im.visible(V, 2) == 20  # a write makes its block exact again
    assert union(10, 11) == frozenset({10, 11}) and union(LOOSE, 3) == LOOSE
    assert union(frozenset(range(8)), 9) == LOOSE
