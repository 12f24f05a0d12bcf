"""Hugepage reservation gives back exactly what it took (the lifecycle must leave nothing behind)."""

from __future__ import annotations

import os

import pytest

from harness.errors import TargetError
from harness.hosts.local import LocalHost
from harness.hugepages import NR_HUGEPAGES, HugepageReservation

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not os.access(NR_HUGEPAGES, os.W_OK), reason="needs root to change vm.nr_hugepages"
)


def _nr() -> int:
    return int(open(NR_HUGEPAGES).read())


def _free_pages() -> int:
    for line in open("/proc/meminfo"):
        if line.startswith("HugePages_Free:"):
            return int(line.split()[1])
    return 0


def test_reserve_then_release_restores_the_setting(tmp_path) -> None:
    before = _nr()
    res = HugepageReservation(LocalHost(), need_mb=16 + 2 * _free_pages(), mount_dir=str(tmp_path / "huge"))
    res.reserve()
    try:
        assert _nr() > before
        assert res.huge_dir is not None and os.path.isdir(res.huge_dir)
    finally:
        res.release()
    assert _nr() == before
    res.release()  # twice is harmless
    assert _nr() == before


def test_impossible_reservation_is_a_clear_error_and_leaves_nothing(tmp_path) -> None:
    before = _nr()
    res = HugepageReservation(LocalHost(), need_mb=10 * 1024 * 1024, mount_dir=str(tmp_path / "huge"))
    with pytest.raises(TargetError, match=r"hugepages: need .*--no-huge"):
        res.reserve()
    assert _nr() == before
