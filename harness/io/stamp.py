"""Block stamps: every block the storm writes says which lvol it was written through, at which LBA, by which
write, and carries a checksum of itself, so a read shows exactly which write it returned (or that it is torn,
misplaced or garbage).

Layout (little-endian): magic `LVS1` (4), lvol identity (8: the first 8 bytes of the lvol bdev's UUID), LBA (8),
write id (8), CRC-32 (4) of the other 28 header bytes and the body; the body repeats a 16-byte digest of the
header, so a block compresses well (the reference target keeps them zlib-compressed) and a tear shows.
"""

from __future__ import annotations

import hashlib
import struct
import uuid as uuid_mod
import zlib
from dataclasses import dataclass

MAGIC = b"LVS1"
_HEAD = struct.Struct("<4sQQQ")
HEADER = 32


def lvol_identity(uuid: str) -> int:
    """The 64-bit identity a stamp carries for an lvol bdev (its UUID's first 8 bytes)."""
    return int.from_bytes(uuid_mod.UUID(uuid).bytes[:8], "little")


def make_block(identity: int, lba: int, write_id: int, block_size: int) -> bytes:
    head = _HEAD.pack(MAGIC, identity, lba, write_id)
    digest = hashlib.blake2b(head, digest_size=16).digest()
    body = (digest * (block_size // 16 + 1))[:block_size - HEADER]
    crc = zlib.crc32(body, zlib.crc32(head))
    return head + struct.pack("<I", crc) + body


@dataclass(frozen=True, slots=True)
class Seen:
    """What a read block is: `zero`, a valid `stamp` (identity, lba, write id), or `garbage`."""

    kind: str
    identity: int = 0
    lba: int = 0
    write_id: int = 0

    def describe(self, names: dict[int, str] | None = None) -> str:
        if self.kind != "stamp":
            return self.kind
        who = (names or {}).get(self.identity, f"{self.identity:#018x}")
        return f"write {self.write_id} to {who} lba {self.lba}"


ZERO_SEEN = Seen("zero")
GARBAGE = Seen("garbage")


def parse_block(block: bytes) -> Seen:
    if block[:4] != MAGIC:
        return ZERO_SEEN if block == bytes(len(block)) else GARBAGE
    _magic, identity, lba, write_id = _HEAD.unpack_from(block)
    (crc,) = struct.unpack_from("<I", block, 28)
    if zlib.crc32(block[HEADER:], zlib.crc32(block[:28])) != crc:
        return GARBAGE
    return Seen("stamp", identity, lba, write_id)
