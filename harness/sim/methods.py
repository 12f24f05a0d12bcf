"""The reference target's method dispatch: everything from a method name and its params to a result or an error.

`Dispatcher` is a whole target: its state (`state.TargetState`: base bdevs, lvstores as
`harness.model.LvolStore`, shallow copy statuses) and the handler families (`framework_methods`,
`bdev_methods`, `lvstore_methods`, `lvol_methods`), one handler per served row of the RPC table. It answers
each RPC the way Longhorn's spdk_tgt (longhorn-v24.09 @1975133e9) does: the same
parameter decoding (`-32603 "spdk_json_decode_object failed"` for unknown, missing, mistyped or negative
params), the same error codes per RPC (inconsistent on purpose: a refusal found before SPDK's callback is
`-errno`, one found in the callback is `-32602`/`-32603`), the same JSON shapes. The recordings in
/work/shared/spdk/transcripts are the ground truth; tests/test_conformance.py replays all of them.

Transport-level matters (framing, invalid JSON, envelopes, notifications, spdk_kill_instance) are the
server's. The server calls `handle(method, params)` for each request and then `drain_log_lines()`: lines
SPDK would have printed to its log on that call (without the timestamp prefix), written even when the call
succeeded or returned an error (the forced removal prints three *ERROR* lines and answers EBUSY).

Time: background jobs advance one tick (see `harness.model.lvstore.CLUSTERS_PER_TICK`) per poll of the RPC
socket, as SPDK's I/O completes only between two polls of its RPC poller: the server calls `start_poll()`
before the first request of each batch it read; used alone (no server), every call is its own poll. So a
checksum or shallow copy of a large snapshot holds it open across the next few polls, deterministically, and a
checksum of a snapshot without clusters across the rest of its own poll (its metadata write, see `Job`).
With `--defer-checksum-replies` a served checksum is answered when its job is done (a `DeferredReply`: SPDK
answers from the completion callback), and while a reply waits the server also advances jobs in rounds
without requests (`poll_idle()`); by default it is answered at once.
A run against this target is identifiable: `spdk_get_version` appends REFERENCE_SUFFIX to the version.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from harness.rpc_rules.table import BY_METHOD, MUTATING_LVOL_METHODS, RULES
from harness.sim import faults as fm
from harness.sim.bdev_methods import BdevMethods
from harness.sim.framework_methods import ALIASES, METHODS, FrameworkMethods
from harness.sim.lvol_methods import PLANS, LvolMethods
from harness.sim.lvstore_methods import LvstoreMethods
from harness.sim.nvmf import NvmfMethods
from harness.sim.protocol import ERROR_METHOD_NOT_FOUND, RpcFault, SimulatedCrash

SERVER_METHODS = frozenset({"spdk_kill_instance"})
"""Served by the server itself (it signals the process), not by a handler here."""
SETTLING = frozenset(r.method for r in RULES if r.mutating)
"""After these the target settles its bdevs: a deleted external snapshot no clone holds goes, an lvstore on a
deleted lvol is unloaded (state.TargetState._settle_bdevs)."""


class Dispatcher(FrameworkMethods, BdevMethods, LvstoreMethods, LvolMethods, NvmfMethods):
    """One reference target's state and its RPC methods (see the module docstring)."""

    def __init__(self, faults: frozenset[str] = frozenset(), seed: int | None = None, fault_after: int = 40,
                 memory_mib: int | None = None) -> None:
        unknown = set(faults) - set(fm.FAULT_MODES)
        if unknown:
            raise ValueError(f"unknown fault modes {sorted(unknown)}; valid: {sorted(fm.FAULT_MODES)}")
        if fault_after < 1:
            raise ValueError(f"fault_after must be >= 1, got {fault_after}")
        super().__init__(faults, seed, memory_mib)
        self._nvmf_init()
        self.fault_after = fault_after
        self._mutations = 0
        # A row served from the model goes to the generic handler; the others to this target's own `_m_<method>`.
        self._handlers: dict[str, Callable[[object], object]] = {
            name: (partial(self._serve_from_model, PLANS[name]) if BY_METHOD[name].served == "model"
                   else getattr(self, "_m_" + name))
            for name in METHODS if name not in SERVER_METHODS
        }
        for alias, method in ALIASES.items():
            self._handlers[alias] = self._handlers[method]

    # ---- public interface -------------------------------------------------------------------------------------

    def method_names(self) -> list[str]:
        """What rpc_get_methods lists (without aliases), in the recorded order."""
        return list(METHODS)

    def start_poll(self) -> None:
        """The server is about to run the requests it read in one poll (SPDK's jsonrpc_server_conn_recv runs
        every request of a read back to back, and the RPC poller reads every connection before the reactor
        completes any I/O): jobs advance one tick now and not between the calls of the poll."""
        self._tick_per_call = False
        for store in self.stores.values():
            store.tick()

    def poll_idle(self) -> None:
        """A reactor round without requests (the server calls it while a deferred reply waits): jobs advance."""
        for store in self.stores.values():
            store.tick()

    def drain_log_lines(self) -> list[str]:
        """Target-log lines produced since the last drain (no timestamp prefix), oldest first."""
        lines, self._log = self._log, []
        return lines

    def handle(self, method: str, params: object) -> object:
        """Answer one request: a result, or RpcFault for an error reply, or SimulatedCrash when the target dies."""
        if self.dead is not None:
            raise self.dead
        if self._tick_per_call:
            for store in self.stores.values():
                store.tick()
        handler = self._handlers.get(method)
        if handler is None:
            raise RpcFault(ERROR_METHOD_NOT_FOUND, "Method not found")
        if method in MUTATING_LVOL_METHODS and self.faults & {fm.HANG, fm.EXIT}:
            self._mutations += 1
            if self._mutations >= self.fault_after:
                if fm.HANG in self.faults:
                    self._die(SimulatedCrash(kind="hang"))
                self._die(SimulatedCrash(kind="exit", exit_code=fm.EXIT_CODE))
        if method not in SETTLING:
            return self._serve(method, handler, params)
        try:
            return self._serve(method, handler, params)
        finally:
            if self.dead is None:
                self._settle_bdevs()

    def _serve(self, method: str, handler: Callable[[object], object], params: object) -> object:
        if not self.nvmf_active:
            return handler(params)
        rule = BY_METHOD.get(method)
        return self.nvmf_serve(method, rule is not None and rule.mutating, handler, params)
