"""Free space in a storm: what the target last said (the truth the progress line and episode sizing use; the
model's count drifts while it judges races leniently), what running episodes were promised for the big thick
trees they build, and which workers are short of space (they delete instead of meeting ENOSPC again)."""

from __future__ import annotations

import asyncio
import time

from harness.storm.operations import Op


class SpaceLedger:
    """The storm's view of the lvstore's free clusters and who holds a claim on them."""

    def __init__(self, short_of_space: set[int]) -> None:
        self.free: int | None = None
        """free_clusters in the target's latest bdev_lvol_get_lvstores reply (any connection)."""
        self.free_at = 0.0
        self.reserved = 0
        """Clusters promised to running episodes that build big thick trees."""
        self.freed = asyncio.Event()
        """Set when something freed space (a delete answered, an episode gave its promise back, the stop)."""
        self.short_of_space = short_of_space
        """Workers whose last create (or grow) met ENOSPC and who have not freed anything since (the
        scheduler's set: it turns their space-taking steps into deletes)."""

    def saw_free(self, free: int) -> None:
        self.free = free
        self.free_at = time.monotonic()

    def follow(self, op: Op, lvs_name: str) -> None:
        """Free space as a reply shows it: an lvstore listing says how much; a worker whose call that takes
        clusters met ENOSPC deletes until one of its deletes succeeds (growth turns into deletion, as at the
        lvol ceiling) instead of retrying in vain."""
        rule = op.rule
        if op.method == "bdev_lvol_get_lvstores" and op.ok and isinstance(op.result, list):
            for st in op.result:
                if isinstance(st, dict) and st.get("name") == lvs_name and "free_clusters" in st:
                    self.saw_free(int(st["free_clusters"]))
        elif op.errno_name == "ENOSPC" and rule.takes_clusters != "never":
            self.short_of_space.add(op.worker)
        elif rule.view == "remove" and op.ok:
            self.short_of_space.discard(op.worker)
            self.freed.set()

    def promise(self, clusters: int) -> None:
        self.reserved += clusters

    def give_back(self, clusters: int) -> None:
        if clusters:
            self.reserved -= clusters
            self.freed.set()
