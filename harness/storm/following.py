"""Keeps the storm's view of the tree in step with what the target answered (optimistic, reply order).

Each row of the RPC table names its `ViewEffect`; this module is what each effect does to a `TreeView`, with
the params found by their role in the row (the lvols it names, the name it gives).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from harness.rpc_rules.rule import Rule, ViewEffect
from harness.storm.view import TreeView

Follow = Callable[[TreeView, Rule, dict[str, Any], Any], None]


def _given_name(rule: Rule, p: dict[str, Any]) -> str:
    """The name the call gives an lvol (rows with add, snapshot, clone and rename effects have one)."""
    assert rule.new_name_param is not None, f"{rule.method}: its view effect needs a new_lvol/renamed param"
    return str(p[rule.new_name_param])


def _add(view: TreeView, rule: Rule, p: dict[str, Any], result: Any) -> None:
    view.add(result, _given_name(rule, p), thin=bool(p.get("thin_provision")), size_mib=p["size_in_mib"])


def _esnap_clone(view: TreeView, rule: Rule, p: dict[str, Any], result: Any) -> None:
    # A thin lvol with no parent in the lvstore (its size is the external bdev's: the next resync reads it).
    view.add(result, _given_name(rule, p), thin=True)


def _snapshot(view: TreeView, rule: Rule, p: dict[str, Any], result: Any) -> None:
    view.insert_snapshot(p[rule.lvol_params[0]], result, _given_name(rule, p))


def _clone(view: TreeView, rule: Rule, p: dict[str, Any], result: Any) -> None:
    snap = p[rule.lvol_params[0]]
    parent = view.nodes.get(snap)
    if parent is not None:
        parent.snapshot = True
    view.add(result, _given_name(rule, p), parent=snap if parent else None,
             size_mib=parent.size_mib if parent else 0)


def _remove(view: TreeView, rule: Rule, p: dict[str, Any], result: Any) -> None:
    view.remove(p[rule.lvol_params[0]])


def _rename(view: TreeView, rule: Rule, p: dict[str, Any], result: Any) -> None:
    view.rename(p[rule.lvol_params[0]], _given_name(rule, p))


def _orphan(view: TreeView, rule: Rule, p: dict[str, Any], result: Any) -> None:
    view.set_parent(p[rule.lvol_params[0]], None)


def _to_grandparent(view: TreeView, rule: Rule, p: dict[str, Any], result: Any) -> None:
    # The lvol moves to its parent's parent (bs_inflate_blob_done), or to none at the top.
    name = p[rule.lvol_params[0]]
    node = view.nodes.get(name)
    parent = view.nodes.get(node.parent) if node is not None and node.parent is not None else None
    view.set_parent(name, parent.parent if parent is not None else None)


def _reparent(view: TreeView, rule: Rule, p: dict[str, Any], result: Any) -> None:
    lvol, parent = rule.lvol_params[:2]
    view.set_parent(p[lvol], p[parent])


def _resize(view: TreeView, rule: Rule, p: dict[str, Any], result: Any) -> None:
    node = view.nodes.get(p[rule.lvol_params[0]])
    if node is not None:
        node.size_mib = p["size_in_mib"]


EFFECTS: dict[ViewEffect, Follow] = {
    "add": _add,
    "esnap-clone": _esnap_clone,
    "snapshot": _snapshot,
    "clone": _clone,
    "remove": _remove,
    "rename": _rename,
    "orphan": _orphan,
    "to-grandparent": _to_grandparent,
    "reparent": _reparent,
    "resize": _resize,
}


def follow(view: TreeView, rule: Rule, params: dict[str, Any], result: Any) -> None:
    """Apply a successful call's effect on the tree (if its row names one) to the view."""
    if rule.view is not None:
        EFFECTS[rule.view](view, rule, params, result)
