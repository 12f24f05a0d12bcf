"""How much hugepage memory `spdk_tgt` takes, measured, so the harness reserves enough and the reference
target refuses what spdk_tgt would refuse.

Measured on Longhorn's fork (longhorn-v24.09 @1975133e9, debug build, shared libraries, `-m 0x1 --no-pci`),
2 MiB hugepages, this machine, 2026-12-06:
- at start-up the target holds 430 pages (860 MiB) of its own (mempools: bdev_io, iscsi PDUs, messages); with
  only 300 pages free it aborts during subsystem init (`iscsi_initialize_pdu_pool: create PDU immediate data
  pool failed`, then `Assertion 'false' failed` in spdk_for_each_channel, exit 134);
- a malloc bdev of N MiB takes N rounded up to 2 MiB plus one more 2 MiB page (100 MiB: 51 pages; 50: 26;
  4: 3; 1: 2), and when the pages are not there `bdev_malloc_create` answers
  `{"code": -12, "message": "Cannot allocate memory"}` and logs
  `bdev_malloc.c: 763:create_malloc_disk: *ERROR*: malloc_buf spdk_zmalloc() failed`;
- `-s` preallocates but does not cap: with `-s 1100` and free pages beyond it, bdevs kept growing into them.
  Only the free hugepages cap a real target, which is why the harness reserves exactly what a run needs.

Pure arithmetic: the session (harness.session) and the reference target (harness.sim) both import it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

HUGEPAGE_MIB = 2
SPDK_BASE_MIB = 860
"""Hugepage memory spdk_tgt holds of its own once started (see the module docstring)."""
MALLOC_OVERHEAD_MIB = HUGEPAGE_MIB
"""Beyond its size rounded up to a hugepage, each malloc bdev costs one more page."""
ENOMEM_REPLY = {"code": -12, "message": "Cannot allocate memory"}
MALLOC_ENOMEM_LOG = "bdev_malloc.c: 763:create_malloc_disk: *ERROR*: malloc_buf spdk_zmalloc() failed"
START_WITHOUT_MEMORY_LOG = (
    "iscsi_subsystem.c:  74:iscsi_initialize_pdu_pool: *ERROR*: create PDU immediate data pool failed",
    "iscsi_subsystem.c:1109:iscsi_parse_globals: *ERROR*: initialize_all_pools() failed",
    "iscsi_subsystem.c:1138:spdk_iscsi_init: *ERROR*: iscsi_parse_globals() failed",
    "subsystem.c: 154:spdk_subsystem_init_next: *ERROR*: Init subsystem iscsi failed",
    "app.c: 396:app_subsystem_init_done: *ERROR*: Subsystem initialization failed with code: -1",
)
"""spdk_tgt's log when its hugepages cannot hold its own pools (recorded; then it aborts)."""
START_WITHOUT_MEMORY_ABORT = "spdk_tgt: thread.c:2597: spdk_for_each_channel: Assertion `false' failed."


def malloc_cost_mib(size_bytes: int) -> int:
    """Hugepage MiB one malloc bdev of `size_bytes` takes (its buffer, page-rounded, plus one page)."""
    mib = -(-max(0, size_bytes) // (1024 * 1024))
    return -(-mib // HUGEPAGE_MIB) * HUGEPAGE_MIB + MALLOC_OVERHEAD_MIB


def malloc_size_bytes(params: Mapping[str, Any] | None) -> int:
    """The buffer `bdev_malloc_create` allocates for these params (0 when they do not say)."""
    if not isinstance(params, Mapping):
        return 0
    try:
        return int(params.get("num_blocks") or 0) * int(params.get("block_size") or 0)
    except (TypeError, ValueError):
        return 0


def peak_malloc_mib(calls: Iterable[tuple[str, Mapping[str, Any] | None, Any]]) -> int:
    """The most hugepage MiB the malloc bdevs of a call sequence hold at once: `(method, params, result)` in
    the order the target ran them (a create that failed in the recording takes nothing; a delete gives back
    the bdev its name names). What a replay or a minimize try must reserve beyond SPDK's own."""
    held: dict[str, int] = {}
    peak = current = 0
    for n, (method, params, result) in enumerate(calls):
        if method == "bdev_malloc_create":
            if result is None:
                continue
            name = result if isinstance(result, str) else str((params or {}).get("name") or f"#{n}")
            cost = malloc_cost_mib(malloc_size_bytes(params))
            current += cost - held.get(name, 0)
            held[name] = cost
            peak = max(peak, current)
        elif method == "bdev_malloc_delete" and result is not None:
            current -= held.pop(str((params or {}).get("name")), 0)
    return peak


def malloc_total_mib(sizes_mib: Iterable[int]) -> int:
    """Hugepage MiB for malloc bdevs of these sizes (MiB) held together."""
    return sum(malloc_cost_mib(size * 1024 * 1024) for size in sizes_mib if size > 0)
