"""The base bdevs an lvstore sits on (malloc, aio) and the blobstore layout spdk_lvs_init / spdk_bs_init give them."""

from __future__ import annotations

import errno
from dataclasses import dataclass

BS_PAGE_SIZE = 4096
DEFAULT_CLUSTER_SZ = 4 * 1024 * 1024
DEFAULT_MD_PAGES_RATIO = 100
_U32 = (1 << 32) - 1
MALLOC_MEMORY_DOMAINS = 2
"""A malloc bdev reports two memory domains (system and the accel framework's); an aio bdev none. An lvol
reports its lvstore's base bdev's, plus its external snapshot's when it is an esnap clone (recorded)."""


@dataclass(eq=False)
class BaseBdev:
    """A malloc or aio bdev an lvstore can sit on; `lvs_uuid` is the lvstore claiming it. `deleting`: its
    delete was asked for while esnap clones hold it open: it is gone from every listing and lookup, and goes
    when the last of them lets go (the delete's reply waits for that)."""

    name: str
    uuid: str
    driver: str  # "malloc" | "aio"
    block_size: int
    num_blocks: int
    creation_time: str = ""
    filename: str | None = None
    block_size_override: bool = False
    lvs_uuid: str | None = None
    deleting: bool = False

    @property
    def size_bytes(self) -> int:
        return self.block_size * self.num_blocks

    @property
    def memory_domains(self) -> int:
        return MALLOC_MEMORY_DOMAINS if self.driver == "malloc" else 0


def mask_pages(bits: int) -> int:
    """Pages a blobstore bit mask of `bits` takes (a small header, then one bit each)."""
    return -(-(8 + -(-bits // 8)) // BS_PAGE_SIZE)


@dataclass(frozen=True)
class BlobstoreLayout:
    """What spdk_bs_init decided: clusters in all, clusters the metadata takes, pages reserved for the
    used-cluster mask (which bounds how far bdev_lvol_grow_lvstore can grow), the device size, and the metadata
    pages in all (what it writes at the start of the device)."""

    total_clusters: int
    md_clusters: int
    cluster_mask_pages: int
    size_bytes: int
    md_pages: int = 0


class InitError(Exception):
    """spdk_bs_init refused (its callback's errno: the RPC answers it with -32602)."""

    def __init__(self, err: int) -> None:
        super().__init__(errno.errorcode.get(err, str(err)))
        self.errno = err


def blobstore_layout(bdev_bytes: int, cluster_sz: int, md_ratio: int = DEFAULT_MD_PAGES_RATIO,
                     block_size: int = 512) -> BlobstoreLayout:
    """spdk_lvs_init then spdk_bs_init, in SPDK's integer arithmetic: the lvstore counts clusters in blocks
    (blockcnt / (cluster_sz / blocklen)) and asks for ratio% metadata pages of that (uint32); the blobstore
    refuses no metadata pages (EINVAL), a device smaller than a cluster (ENOSPC), a cluster below a page
    (EINVAL) and metadata that would not fit (ENOMEM: a cluster size that is no whole number of pages gets
    cluster_sz / 4096 pages per cluster, so -c 8191 is ENOMEM, recorded). The layout: super block, three bit
    masks (md pages, clusters sized for growth, blob ids) and the metadata pages. Reproduces the recorded
    total_data_clusters (254, 63, 509, 127, 1818, 3639). The caller checks cluster_sz >= block_size first."""
    lvs_clusters = (bdev_bytes // block_size) // max(1, cluster_sz // block_size)
    md_len = ((md_ratio * lvs_clusters) & _U32) // 100
    if BS_PAGE_SIZE % block_size or md_len == 0:
        raise InitError(errno.EINVAL)
    if bdev_bytes < cluster_sz:
        raise InitError(errno.ENOSPC)
    if cluster_sz < BS_PAGE_SIZE:
        raise InitError(errno.EINVAL)
    total = bdev_bytes // cluster_sz
    cluster_mask = max(mask_pages(md_len), mask_pages(total))
    pages = 1 + mask_pages(md_len) + cluster_mask + mask_pages(md_len) + md_len
    md_clusters = -(-pages // (cluster_sz // BS_PAGE_SIZE))
    if md_clusters > total:
        raise InitError(errno.ENOMEM)
    return BlobstoreLayout(total, md_clusters, cluster_mask, bdev_bytes, pages)
