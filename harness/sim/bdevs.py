"""The base bdevs an lvstore sits on (malloc, aio) and the blobstore layout spdk_bs_init gives them."""

from __future__ import annotations

from dataclasses import dataclass

BS_PAGE_SIZE = 4096
DEFAULT_CLUSTER_SZ = 4 * 1024 * 1024
DEFAULT_MD_PAGES_RATIO = 100


@dataclass(eq=False)
class BaseBdev:
    """A malloc or aio bdev an lvstore can sit on; `lvs_uuid` is the lvstore claiming it."""

    name: str
    uuid: str
    driver: str  # "malloc" | "aio"
    block_size: int
    num_blocks: int
    creation_time: str = ""
    filename: str | None = None
    block_size_override: bool = False
    lvs_uuid: str | None = None

    @property
    def size_bytes(self) -> int:
        return self.block_size * self.num_blocks


def mask_pages(bits: int) -> int:
    """Pages a blobstore bit mask of `bits` takes (a small header, then one bit each)."""
    return -(-(8 + -(-bits // 8)) // BS_PAGE_SIZE)


@dataclass(frozen=True)
class BlobstoreLayout:
    """What spdk_bs_init decided: clusters in all, clusters the metadata takes, pages reserved for the
    used-cluster mask (which bounds how far bdev_lvol_grow_lvstore can grow), and the device size."""

    total_clusters: int
    md_clusters: int
    cluster_mask_pages: int
    size_bytes: int


def blobstore_layout(bdev_bytes: int, cluster_sz: int, md_ratio: int = DEFAULT_MD_PAGES_RATIO) -> BlobstoreLayout:
    """spdk_bs_init's layout: super block, three bit masks (md pages, clusters sized for growth, blob ids)
    and one md page per cluster x ratio%. Reproduces the recorded total_data_clusters (254, 63, 509, 127)."""
    total = bdev_bytes // cluster_sz
    md_len = total * md_ratio // 100
    cluster_mask = max(mask_pages(md_len), mask_pages(total))
    pages = 1 + mask_pages(md_len) + cluster_mask + mask_pages(md_len) + md_len
    return BlobstoreLayout(total, -(-pages * BS_PAGE_SIZE // cluster_sz), cluster_mask, bdev_bytes)
