"""The framework's RPCs as spdk_tgt answers them: its version (marked as the reference target's), its method
list in the recorded order, and the init calls."""

from __future__ import annotations

from harness.rpc_rules.table import RULES, SERVED_METHODS
from harness.sim.decoding import BOOL, decode
from harness.sim.protocol import ERROR_INVALID_PARAMS, ERROR_INVALID_STATE, RpcFault
from harness.sim.state import TargetState

VERSION = "SPDK v24.09.1-pre git sha1 1975133e9"
REFERENCE_SUFFIX = " (lvol-storm reference target)"
VERSION_FIELDS = {"major": 24, "minor": 9, "patch": 1, "suffix": "-pre", "commit": "1975133e9"}

METHODS: tuple[str, ...] = SERVED_METHODS
"""What rpc_get_methods lists, in the recorded order (transcript 07): the table's rows this target serves."""
ALIASES = {alias: r.method for r in RULES if r.served != "no" for alias in r.aliases}
"""SPDK_RPC_REGISTER_ALIAS_DEPRECATED names, and the method each stands for."""
ALIAS_POSITION = "bdev_lvol_get_snapshot_checksum"  # the recorded list shows lvol's alias just before this
STARTUP_ONLY = frozenset(r.method for r in RULES if r.startup_only)


class FrameworkMethods(TargetState):
    """spdk_get_version, rpc_get_methods, framework_wait_init, framework_start_init."""

    def _m_spdk_get_version(self, params: object) -> object:
        if params is not None:
            raise RpcFault(ERROR_INVALID_PARAMS, "spdk_get_version method requires no parameters")
        return {"version": VERSION + REFERENCE_SUFFIX, "fields": dict(VERSION_FIELDS)}

    def _m_rpc_get_methods(self, params: object) -> object:
        opts = {"current": False, "include_aliases": False}
        if params is not None:
            try:
                got = decode(params, (("current", BOOL, False), ("include_aliases", BOOL, False)))
            except RpcFault:
                raise RpcFault(ERROR_INVALID_PARAMS, "Invalid parameters") from None
            opts.update({k: bool(v) for k, v in got.items() if v is not None})
        names: list[str] = []
        for name in METHODS:
            if opts["current"] and name in STARTUP_ONLY:
                continue
            if opts["include_aliases"] and name == ALIAS_POSITION:
                names.extend(ALIASES)
            names.append(name)
        return names

    def _m_framework_wait_init(self, params: object) -> object:
        if params is not None:
            raise RpcFault(ERROR_INVALID_PARAMS, "framework_wait_init requires no parameters")
        return True

    def _m_framework_start_init(self, params: object) -> object:
        raise RpcFault(
            ERROR_INVALID_STATE,
            "Method may only be called before framework is initialized. Use --wait-for-rpc command line "
            "parameter and then issue this RPC before the framework_start_init RPC.",
        )
