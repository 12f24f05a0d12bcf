"""The target's whole listing of one lvstore, as quiesce points read it: `bdev_lvol_get_lvols`, the lvol bdevs of
`bdev_get_bdevs` (by UUID) and the lvstore (`bdev_lvol_get_lvstores`).

At thousands of lvols these replies are MBs (5.3 MB of bdev_get_bdevs at 5,000 lvols: every bdev's I/O types,
rate limits and memory domains), and decoding every field of them into Python objects was most of a quiesce
point's cost (issue 17: 49 ms for that reply, 13 ms for the lvols). A schema (msgspec `TypedDict`s) decodes only
the fields the checker, the model and the view read, into the same dicts as before, and skips the rest (still
validated as JSON: 12 ms and 1.4 ms). A reply the schema does not fit (another SPDK's shape, a field of another
type) is decoded whole instead, so the checker meets it exactly as it did before the schema.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypedDict

import msgspec

from harness.rpc.client import RpcConnection
from harness.rpc.framing import UnreadResult
from harness.storm.mirror import LvstoreInfo

LVOL_PRODUCT = "Logical Volume"


class LvolEntry(TypedDict, total=False):
    """What is read of a `bdev_lvol_get_lvols` entry (`harness.storm.mirror`, `.view`, `.listing_checks`,
    `harness.io.lanes`)."""

    uuid: str
    name: str
    alias: str
    is_thin_provisioned: bool
    is_snapshot: bool
    is_degraded: bool


class DriverSpecific(TypedDict, total=False):
    lvol: dict[str, Any]
    """Whole: its links, flags and clusters are what the checker compares (`links_of_bdev_reply`)."""


class BdevEntry(TypedDict, total=False):
    """What is read of a `bdev_get_bdevs` entry."""

    name: str
    uuid: str
    product_name: str
    block_size: int
    num_blocks: int
    driver_specific: DriverSpecific


class _LvolsReply(msgspec.Struct):
    result: list[LvolEntry]


class _BdevsReply(msgspec.Struct):
    result: list[BdevEntry]


_LVOLS = msgspec.json.Decoder(_LvolsReply)
_BDEVS = msgspec.json.Decoder(_BdevsReply)


@dataclass
class Listing:
    lvols: list[dict[str, Any]]
    bdevs: dict[str, dict[str, Any]]
    """The lvol bdevs, by UUID (by name for a bdev without one)."""
    store: LvstoreInfo


def decode_with(decoder: msgspec.json.Decoder[Any], result: Any) -> Any:
    """A listing's result through `decoder`'s schema when it came undecoded (a big reply), else as it came
    (decoded already: small); decoded whole when the schema does not fit it."""
    if type(result) is not UnreadResult:
        return result
    try:
        return decoder.decode(result.line).result
    except (msgspec.ValidationError, msgspec.DecodeError):
        return result.value()


def lvol_bdevs(bdevs: Any) -> dict[str, dict[str, Any]]:
    return {b.get("uuid") or b.get("name"): b for b in bdevs or [] if b.get("product_name") == LVOL_PRODUCT}


async def read_listing(conn: RpcConnection, lvs_name: str, timeout: float) -> Listing:
    """The three listings, one after the other (nothing may be in flight: they must show one state). Raises what
    `RpcConnection.call` raises."""
    lvols = decode_with(_LVOLS, await conn.call("bdev_lvol_get_lvols", {"lvs_name": lvs_name}, timeout=timeout,
                                                decode=False))
    bdevs = decode_with(_BDEVS, await conn.call("bdev_get_bdevs", {}, timeout=timeout, decode=False))
    stores = await conn.call("bdev_lvol_get_lvstores", {"lvs_name": lvs_name}, timeout=timeout)
    return Listing(lvols, lvol_bdevs(bdevs), LvstoreInfo.from_reply(stores[0]))
