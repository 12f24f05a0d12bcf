"""The RPC table against what SPDK registers and what the model offers: its rows are the fork's methods in
the fork's order, every transition is a real `LvolStore` method, every storm builder sends params its row
decodes, and the name sets other layers use say what SPDK's source says."""

from __future__ import annotations

import inspect
import json

import pytest

from harness.model import LvolStore
from harness.recordings import recordings_dir
from harness.rpc_rules.rule import CALLER_ARGS
from harness.rpc_rules.table import MUTATING_LVOL_METHODS, READ_METHODS, READS, RULES, SERVED_METHODS, rule_for
from harness.storm.config import DEFAULT_MIX
from harness.storm.operations import KNOWN_METHODS

RECORDED_METHODS = recordings_dir() / "transcripts" / "longhorn-v24.09-07_rpc_get_methods_and_version.json"


def _recorded() -> list[str]:
    if not RECORDED_METHODS.is_file():
        pytest.skip(f"recording not found at {RECORDED_METHODS}")
    steps = json.loads(RECORDED_METHODS.read_text())["steps"]
    return next(s["response"]["result"] for s in steps if s["tag"] == "rpc_get_methods_full")


def test_rows_are_the_forks_methods_in_its_order_and_every_lvol_method_has_one() -> None:
    recorded = _recorded()
    position = {m: i for i, m in enumerate(recorded)}
    methods = [r.method for r in RULES]
    assert len(set(methods)) == len(methods)
    assert [m for m in methods if m not in position] == []
    assert [position[m] for m in methods] == sorted(position[m] for m in methods)
    assert {m for m in recorded if m.startswith("bdev_lvol_")} <= set(methods)
    assert SERVED_METHODS == tuple(r.method for r in RULES if r.served != "no")


def test_every_transition_is_an_lvolstore_method_taking_those_arguments() -> None:
    for rule in RULES:
        if rule.served == "model":
            assert rule.model is not None, f"{rule.method}: served from the model without a transition"
        if rule.model is None:
            continue
        fn = getattr(LvolStore, rule.model.method, None)
        assert callable(fn), f"{rule.method}: LvolStore has no {rule.model.method}"
        accepted = set(inspect.signature(fn).parameters) - {"self"}
        params = {p.name for p in rule.params} | CALLER_ARGS
        assert set(rule.model.args) <= accepted, (rule.method, rule.model.args, accepted)
        assert set(rule.model.args) <= params, f"{rule.method}: {rule.model.args} are not its params"


class _FakeDraw:
    name, size_mib, thin, u_extra, lvs_name, copy_dst, esnap = "w0n1", 8, True, 0.5, "lvs0", "Dst", "Esnap"

    def target(self, kind: str) -> str:
        return f"lvs0/{kind}"

    def other(self, kind: str) -> str:
        return f"lvs0/other-{kind}"


def test_the_storm_sends_only_params_its_rows_decode() -> None:
    for rule in RULES:
        if rule.storm is None:
            continue
        sent = rule.storm.args(_FakeDraw())
        declared = {p.name: p for p in rule.params}
        assert set(sent) <= set(declared), f"{rule.method}: sends {set(sent) - set(declared)} it does not decode"
        assert {n for n, p in declared.items() if p.required} <= set(sent), rule.method
    assert KNOWN_METHODS == {r.method for r in RULES if r.storm is not None}
    assert DEFAULT_MIX == {r.method: r.storm.weight for r in RULES if r.storm is not None and r.storm.weight > 0}


def test_the_three_methods_the_old_lists_disagreed_on() -> None:
    """All three change state in SPDK's source: rename_lvstore writes the new name into the super blob
    (spdk_lvs_rename -> lvs_rename_open_cb), clone_bdev makes a new lvol (an esnap clone of a bdev),
    set_parent_bdev makes an lvol an esnap clone (spdk_lvol_set_external_parent). Only the last two change
    lvols; the rename changes the lvstore, which the `hang`/`exit` faults do not count."""
    rename_lvs, clone_bdev, set_parent_bdev = (rule_for(m) for m in (
        "bdev_lvol_rename_lvstore", "bdev_lvol_clone_bdev", "bdev_lvol_set_parent_bdev"))
    assert rename_lvs is not None and clone_bdev is not None and set_parent_bdev is not None
    assert rename_lvs.mutating and rename_lvs.effect == "lvstore"
    assert clone_bdev.effect == set_parent_bdev.effect == "lvol"
    assert {"bdev_lvol_clone_bdev", "bdev_lvol_set_parent_bdev"} <= MUTATING_LVOL_METHODS
    assert "bdev_lvol_rename_lvstore" not in MUTATING_LVOL_METHODS
    assert clone_bdev.creates_lvol and clone_bdev.new_name_param == "clone_name"
    assert set_parent_bdev.lvol_params == ("lvol_name",)  # parent_name is a bdev, not an lvol


def test_reads_and_what_may_be_sent_again() -> None:
    assert "bdev_lvol_check_shallow_copy" in READS and "bdev_lvol_check_shallow_copy" not in READ_METHODS
    assert READ_METHODS <= READS
    assert not READS & MUTATING_LVOL_METHODS
    assert "bdev_wait_for_examine" not in READS  # a barrier: the minimizer must keep it
