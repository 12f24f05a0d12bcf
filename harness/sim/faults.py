"""The reference target's fault modes: which bug it carries, what triggers it, and what the death looks like.

Every trigger is a deterministic operation pattern (never a timer or a random draw), so the reproducer a
crash report carries re-crashes a fresh faulty target. The texts are SPDK's and glibc's own layouts, so the
watchdog and the crash-report titles treat the reference target's deaths like spdk_tgt's.
"""

from __future__ import annotations

from harness.errors import ConfigError
from harness.model.lvstore import (
    ABORT_ASSERT,
    ABORT_MALLOC,
    DELETE_SNAPSHOT_WITH_CLONES,
    FORCED_REMOVAL,
    LEAK_CLUSTER,
)

HANG = "hang"
EXIT = "exit"
CORRUPT_CLONE_READ = "corrupt-clone-read"

FAULT_MODES: dict[str, str] = {
    FORCED_REMOVAL: (
        "Longhorn's lvol destroy bug: deleting a snapshot held open (checksum / shallow copy in progress) answers "
        "EBUSY but removes the lvol, leaving its blob and clusters; deleting a snapshot whose only clone is that "
        "blob then segfaults at address 8 in spdk_lvol_destroy (deleting the lvstore instead aborts on "
        "vbdev_lvol.c:490's assert)"
    ),
    ABORT_ASSERT: (
        "deleting a snapshot that has exactly one clone fails a blobstore assertion (SIGABRT, message on stderr)"
    ),
    ABORT_MALLOC: (
        "cloning a snapshot that already has two or more clones corrupts the heap: glibc aborts with "
        "'malloc(): unsorted double linked list corrupted'"
    ),
    HANG: "the Nth mutating lvol call (--fault-after, default 40) never completes: the target stops answering",
    EXIT: (
        "the Nth mutating lvol call (--fault-after, default 40) makes the target exit with code 0 mid-run (as "
        "spdk_app_stop would: a clean code is still a death)"
    ),
    LEAK_CLUSTER: "checker test, no crash: deletes and shrinks do not return clusters to the lvstore",
    DELETE_SNAPSHOT_WITH_CLONES: (
        "checker test, no crash: a snapshot with two or more clones can be deleted; its clones are not re-parented"
    ),
    CORRUPT_CLONE_READ: (
        "data checker test, no crash: from the Nth block read through a clone's namespace (--fault-after), a read "
        "of a clone returns another lvol's block (the same LBA where one has it) instead of the clone's own"
    ),
}

# What the recorded forced removal printed (/work/shared/spdk/target-log/*forced-removal-then-segv.log),
# without the timestamp prefix the server adds.
FORCED_REMOVAL_LOG_LINES: tuple[str, ...] = (
    "blobstore.c:8681:bs_is_blob_deletable: *ERROR*: Cannot remove snapshot because it is open",
    "blobstore.c:8621:bs_delete_blob_finish: *ERROR*: Failed to remove blob",
    "lvol.c:1084:lvol_delete_blob_cb: *ERROR*: Could not remove blob on lvol gracefully - forced removal",
)
SEGV_ADDRESS = 8  # req->clone_lvol->blob with clone_lvol == NULL (lvol.c:1884)
SEGV_THREAD = "reactor_0"

# glibc's assert(3) layout: "prog: file:line: function: Assertion `expr' failed."
# A real assertion on that path in longhorn-v24.09 @1975133e9 (lib/blob/blobstore.c).
ABORT_ASSERT_STDERR = (
    "spdk_tgt: blobstore.c:8602: delete_snapshot_open_clone_cb: "
    "Assertion `snapshot_entry->clone_count == 1' failed.\n"
)
ABORT_MALLOC_STDERR = "malloc(): unsorted double linked list corrupted\n"
# forced-removal, second signature: deleting the lvstore after a forced removal left a blob in an lvol's clone
# list (module/bdev/lvol/vbdev_lvol.c:489-490, _vbdev_lvs_remove_lvol_cb).
LVS_REMOVE_LOG_LINE = "vbdev_lvol.c: 489:_vbdev_lvs_remove_lvol_cb: *ERROR*: Lvols left in lvs, but unable to delete."
LVS_REMOVE_STDERR = "spdk_tgt: vbdev_lvol.c:490: _vbdev_lvs_remove_lvol_cb: Assertion `false' failed.\n"
EXIT_CODE = 0


class FaultSpecError(ConfigError, ValueError):
    """An unknown fault mode name (a ConfigError for the CLI, a ValueError for plain callers)."""


def parse_faults(spec: str) -> frozenset[str]:
    """`"forced-removal,hang"` -> frozenset; "" or "none" -> no faults; an unknown name is a FaultSpecError."""
    names = [part.strip() for part in (spec or "").split(",") if part.strip()]
    if names == ["none"]:
        return frozenset()
    unknown = [n for n in names if n not in FAULT_MODES]
    if unknown:
        raise FaultSpecError(
            f"unknown fault mode {', '.join(repr(n) for n in unknown)}; "
            f"valid: {', '.join(sorted(FAULT_MODES))} (comma-separated, or 'none')"
        )
    return frozenset(names)
