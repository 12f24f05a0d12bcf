"""`harness.storm.listing`: quiesce listings decoded with a schema that keeps what the checker reads, on
replies recorded from real spdk_tgt builds and on the reference target's, with the whole decode as the truth."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from harness.errors import ConfigError
from harness.hosts.local import LocalHost
from harness.recordings import recordings_dir
from harness.rpc.client import RpcConnection
from harness.rpc.framing import BIG_REPLY, UnreadResult
from harness.storm.checker import Checker
from harness.storm.listing import _BDEVS, _LVOLS, BdevEntry, LvolEntry, decode_with, lvol_bdevs, read_listing
from harness.storm.listing_checks import listing_diff
from harness.storm.mirror import LvstoreInfo
from harness.storm.view import TreeView

OUR_TRANSCRIPTS = Path(__file__).resolve().parent / "data" / "transcripts"


def _transcripts() -> list[Path]:
    try:
        shared = sorted((recordings_dir() / "transcripts").glob("*.json"))
    except ConfigError:
        shared = []
    return shared + sorted(OUR_TRANSCRIPTS.glob("*.json"))


def _recorded(method: str) -> list[list[dict[str, Any]]]:
    out = []
    for path in _transcripts():
        for step in json.loads(path.read_text())["steps"]:
            req, resp = step.get("request"), step.get("response")
            if isinstance(req, dict) and req.get("method") == method and isinstance(resp, dict) \
                    and isinstance(resp.get("result"), list) and resp["result"]:
                out.append(resp["result"])
    return out


def _unread(result: list[dict[str, Any]], rid: int = 7) -> UnreadResult:
    """A result as a big reply comes: validated, not decoded (padded past BIG_REPLY as a listing of many is)."""
    line = json.dumps({"jsonrpc": "2.0", "id": rid, "result": result}, separators=(",", ":")).encode()
    return UnreadResult(line)


def _kept(entry: dict[str, Any], keys: frozenset[str]) -> dict[str, Any]:
    out = {k: v for k, v in entry.items() if k in keys}
    if "driver_specific" in out:
        out["driver_specific"] = {k: v for k, v in out["driver_specific"].items() if k == "lvol"}
    return out


LVOL_KEYS = frozenset(LvolEntry.__annotations__)
BDEV_KEYS = frozenset(BdevEntry.__annotations__)


def test_recorded_real_listings_decode_to_exactly_the_fields_read() -> None:
    lvols, bdevs = _recorded("bdev_lvol_get_lvols"), _recorded("bdev_get_bdevs")
    assert len(lvols) >= 20 and len(bdevs) >= 100  # the transcripts hold them
    for result in lvols:
        assert decode_with(_LVOLS, _unread(result)) == [_kept(e, LVOL_KEYS) for e in result]
    for result in bdevs:
        got = decode_with(_BDEVS, _unread(result))
        assert got == [_kept(e, BDEV_KEYS) for e in result]
        assert lvol_bdevs(got).keys() == lvol_bdevs(result).keys()
    seen = {k for result in bdevs for e in result for k in (e.get("driver_specific") or {}).get("lvol", {})}
    assert {"base_snapshot", "num_allocated_clusters", "esnap_clone", "external_snapshot_name"} <= seen


def test_a_reply_the_schema_does_not_fit_is_decoded_whole() -> None:
    result = _recorded("bdev_get_bdevs")[0]
    odd = [dict(e, num_blocks=str(e["num_blocks"])) for e in result]  # another build's type for a field
    assert decode_with(_BDEVS, _unread(odd)) == odd
    assert decode_with(_BDEVS, odd) is odd  # small: decoded already, as it came
    assert decode_with(_LVOLS, _unread([{"name": 3}])) == [{"name": 3}]


def test_the_model_and_view_adopt_the_same_state_from_either_decode() -> None:
    """Whatever the checker reads of a listing, the schema keeps: adopting the trimmed listing gives the model
    and view the whole one gives, and both compare alike with a model."""
    tries = 0
    for path in _transcripts():
        steps = json.loads(path.read_text())["steps"]
        last: dict[str, Any] = {}
        for step in steps:
            req, resp = step.get("request"), step.get("response")
            if isinstance(req, dict) and isinstance(resp, dict) and isinstance(resp.get("result"), list):
                if req.get("method") in ("bdev_lvol_get_lvols", "bdev_lvol_get_lvstores") or \
                        (req.get("method") == "bdev_get_bdevs" and not req.get("params")):
                    last[req["method"]] = resp["result"]
            if len(last) < 3 or not last["bdev_lvol_get_lvstores"]:
                continue
            store = LvstoreInfo.from_reply(last["bdev_lvol_get_lvstores"][0])
            full = ([e for e in last["bdev_lvol_get_lvols"] if e["lvs"]["uuid"] == store.uuid],
                    lvol_bdevs(last["bdev_get_bdevs"]))
            trimmed = ([e for e in decode_with(_LVOLS, _unread(last["bdev_lvol_get_lvols"]))
                        if any(f["uuid"] == e["uuid"] for f in full[0])],
                       lvol_bdevs(decode_with(_BDEVS, _unread(last["bdev_get_bdevs"]))))
            a, b = Checker(TreeView(), store), Checker(TreeView(), store)
            a.adopt(*full, store)
            b.adopt(*trimmed, store)
            assert _model_state(a) == _model_state(b)
            assert _view_state(a.view) == _view_state(b.view)
            assert [(f.kind, f.message) for f in listing_diff(*full, store, b.model)] == \
                [(f.kind, f.message) for f in listing_diff(*trimmed, store, b.model)]
            tries += 1
    assert tries >= 10


def _model_state(c: Checker) -> list[tuple[Any, ...]]:
    m = c.model
    return sorted((lv.uuid, lv.name, lv.num_clusters, lv.thin, lv.num_allocated_clusters, lv.is_snapshot,
                   lv.read_only, lv.esnap, getattr(m.parent_of(lv), "uuid", None)) for lv in m.lvols())


def _view_state(v: TreeView) -> list[tuple[Any, ...]]:
    return sorted((n.uuid, n.name, n.snapshot, n.parent, sorted(n.children), n.thin, n.size_mib)
                  for n in v.nodes.values())


def test_read_listing_on_the_reference_target_equals_the_whole_listing() -> None:
    """End to end on the reference target: the storm's read of a listing past BIG_REPLY (schema) and the plain
    decode of the same listings agree on every field the checker reads."""
    from bench.session import BenchTarget, short_work_dir

    with BenchTarget(short_work_dir("lsl-"), bdev_mib=256, watchdog=False, keep_evidence=False) as target:
        async def go() -> None:
            conn = await RpcConnection.open(LocalHost(), target.sock_path)
            try:
                for i in range(80):
                    await conn.call("bdev_lvol_create", {"lvs_name": "lvs0", "lvol_name": f"v{i}", "size_in_mib": 4,
                                                         "thin_provision": True})
                await conn.call("bdev_lvol_snapshot", {"lvol_name": "lvs0/v0", "snapshot_name": "s0"})
                await conn.call("bdev_lvol_clone", {"snapshot_name": "lvs0/s0", "clone_name": "c0"})
                listing = await read_listing(conn, "lvs0", 10)
                raw = await conn.call("bdev_get_bdevs", {}, decode=False)
                assert type(raw) is UnreadResult and len(raw.line) > BIG_REPLY  # the schema's path was taken
                lvols = await conn.call("bdev_lvol_get_lvols", {"lvs_name": "lvs0"})
                bdevs = lvol_bdevs(await conn.call("bdev_get_bdevs", {}))
                assert listing.lvols == [_kept(e, LVOL_KEYS) for e in lvols]
                assert listing.bdevs == {u: _kept(b, BDEV_KEYS) for u, b in bdevs.items()}
                assert listing.store.name == "lvs0" and len(listing.bdevs) == 82
            finally:
                await conn.close()

        asyncio.run(go())
