"""The lvol RPCs as spdk_tgt serves them, onto the model (`harness.model.LvolStore`).

SPDK's error codes per RPC are inconsistent on purpose: a refusal found before SPDK's callback is `-errno`,
one found in the callback is `-32602`/`-32603`. A checksum or shallow copy is a job of the model that holds
its snapshot across the next polls; with `defer_checksum_replies` a checksum is answered when its job is done.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from harness.model.lvstore import Job, Lvol, LvolStore, ModelCrash, ModelError
from harness.rpc_rules.rule import ESNAP_ID, ESNAP_SIZE_BYTES, Param, Rule, Transition
from harness.rpc_rules.table import BY_METHOD, RULES
from harness.sim.decoding import Spec, check_choices, decode, decode_for, spec_of
from harness.sim.protocol import ERROR_INTERNAL, ERROR_INVALID_PARAMS, DeferredReply, RpcFault, fault, no_device
from harness.sim.state import ShallowCopy, TargetState


@dataclass(frozen=True, slots=True)
class ServePlan:
    """What the generic handler needs of a row, worked out once (the handler runs per request): its decoder
    spec, the params naming the lvstore (uuid, name; the reply when it is missing) and the lvols (name, found
    by names too), the bdev a transition reads as an external snapshot, whether any param has choices, the
    names it gives (new, renamed), its transition and that as the LvolStore function."""

    rule: Rule
    spec: Spec
    lvstore: tuple[str | None, str | None] | None
    lvstore_missing: tuple[int, str] | None
    lvols: tuple[tuple[str, bool], ...]
    esnap: Param | None
    choices: bool
    new_lvols: tuple[str, ...]
    renamed: tuple[str, ...]
    transition: Transition
    model_fn: Callable[..., Any]

    @classmethod
    def of(cls, rule: Rule) -> ServePlan:
        assert rule.model is not None, f"{rule.method} is served from the model but has no transition"
        by_role = {p.role: p.name for p in rule.lvstore_params}
        missing = next((p.missing_reply for p in rule.lvstore_params if p.missing_reply), None)
        esnap = next((p for p in rule.params if p.role == "bdev"), None) if ESNAP_ID in rule.model.args else None
        return cls(rule, spec_of(rule.params),
                   (by_role.get("lvstore_uuid"), by_role.get("lvstore")) if by_role else None, missing,
                   tuple((p.name, p.by_names) for p in rule.params if p.role == "lvol"), esnap,
                   any(p.choices for p in rule.params),
                   rule.names("new_lvol"), rule.names("renamed"),
                   rule.model, getattr(LvolStore, rule.model.method))


PLANS: dict[str, ServePlan] = {r.method: ServePlan.of(r) for r in RULES if r.served == "model"}


def _job_result(job: Job) -> object:
    """The checksum RPC's answer once its job ended: true, or the job's errno as SPDK's callback reports it."""
    if job.error:
        raise fault(job.error, ERROR_INTERNAL)
    return True


class LvolMethods(TargetState):
    """The rows served from the model (bdev_lvol_create, _snapshot, _clone, _delete, ...: one generic handler)
    and the jobs whose replies need more than the model: the checksum, the shallow copy and its status."""

    def _serve_from_model(self, plan: ServePlan, params: object) -> object:
        """Answer a row served from the model, as SPDK's handlers do in order: decode per the row; find the
        lvstore it names (by UUID xor name) and each lvol it names (a bdev name or alias, -ENODEV; several
        must share one lvstore); parse choices (clear_method); check the bdev alias of a name it gives;
        run the row's transition (refusals as the row's codes say); encode the reply."""
        rule = plan.rule
        p = decode(params, plan.spec)  # a new dict: ours to change
        store = None
        if plan.lvstore is not None:
            uuid_param, name_param = plan.lvstore
            try:
                store = self._store_xor(p[uuid_param] if uuid_param else None,
                                        p[name_param] if name_param else None)
            except RpcFault:
                if plan.lvstore_missing is None:
                    raise
                raise RpcFault(*plan.lvstore_missing) from None
        for name, by_names in plan.lvols:
            value = p[name]
            found = self._find_lvol(value if isinstance(value, str) else None)
            if found is None and by_names:
                found = self._lvol_by_names(value)
            if found is None:
                raise no_device()
            if store is not None and found[0] is not store:
                raise fault(errno.EINVAL, rule.refusal_code)  # e.g. spdk_lvol_set_parent: not the same lvstore
            store = found[0]
            p[name] = found[1].uuid  # the model is told the lvol by UUID
        assert store is not None, f"{rule.method}: names no lvstore or lvol"
        if plan.esnap is not None:
            self._resolve_esnap(plan.esnap, store, p, rule.refusal_code)
        if plan.choices:
            check_choices(rule, p)
        for name in plan.new_lvols:
            self._check_alias_free(store, p[name])
        for name in plan.renamed:
            if f"{store.name}/{p[name]}" in self.bdevs:
                raise fault(errno.EEXIST, ERROR_INVALID_PARAMS)  # the alias changes first (vbdev_lvol_rename)
        try:
            result = plan.model_fn(store, **plan.transition.kwargs(p))
        except (ModelError, ModelCrash) as exc:
            self._model_failed(exc, rule.refusal_code, rule.sync_errnos)
        if rule.creates_lvol:
            self._register([result.uuid])
        return rule.reply(result)

    def _resolve_esnap(self, param: Param, store: LvolStore, p: dict[str, object], code: int | None) -> None:
        """The bdev a row reads as an external snapshot, as UUID and size for its transition: spdk_bdev_get_by_name
        (missing: the row's own reply, else -ENODEV as its callback answers it), an lvol of the call's lvstore
        where the row refuses one, then spdk_bdev_open_ext (a bdev being deleted: -ENODEV from the callback)."""
        name = str(p[param.name])
        ref = self._bdev_ref(name, deleting=True)
        if ref is None:
            if param.missing_reply is not None:
                raise RpcFault(*param.missing_reply)
            raise fault(param.missing, code)
        if ref.store is store and param.own_lvstore_reply is not None:
            raise RpcFault(*param.own_lvstore_reply)
        if ref.base is not None and ref.base.deleting:
            raise fault(errno.ENODEV, code)
        p[ESNAP_ID], p[ESNAP_SIZE_BYTES] = ref.uuid, ref.size_bytes

    def _lvol_by_names(self, name: object) -> tuple[LvolStore, Lvol] | None:
        """An lvol without a bdev (degraded) by its UUID (spdk_lvol_get_by_uuid), else `lvs_name/lvol_name` by
        the lvol's name, when no bdev has that name or alias (rpc_bdev_lvol_delete's fallbacks)."""
        if not isinstance(name, str):
            return None
        for store in self.stores.values():
            lv = store.find_by_uuid(name)
            if lv is not None:
                return store, lv
        lvs_name, sep, lvol_name = name.partition("/")
        named = self._store_by_name(lvs_name) if sep else None
        lv = named.find_by_name(lvol_name) if named is not None else None
        return (named, lv) if named is not None and lv is not None else None

    def _m_bdev_lvol_register_snapshot_checksum(self, params: object) -> object:
        p = decode_for(BY_METHOD["bdev_lvol_register_snapshot_checksum"], params)
        store, lv = self._lvol(p["name"])
        # min_ticks=1: even without clusters the checksum's metadata write keeps the blob open past this poll.
        job = self._model_call(lambda: store.register_snapshot_checksum(lv.uuid, min_ticks=1), ERROR_INTERNAL)
        if self._tick_per_call or not isinstance(job, Job) or job.done or not self.defer_checksum_replies:
            # Answered at once by default, the job holding the snapshot across the next polls. SPDK answers from
            # the job's completion callback instead (vbdev_lvol_rpc.c); deferring the reply is faithful but
            # made the crash dir's serial repro.py lose the forced-removal race in 2 runs out of 3, so it is
            # opt-in (`--defer-checksum-replies`) until repro.py replays overlapping calls together.
            return True
        return DeferredReply(ready=lambda: job.done, result=lambda: _job_result(job))

    def _m_bdev_lvol_start_shallow_copy(self, params: object) -> object:
        p = decode_for(BY_METHOD["bdev_lvol_start_shallow_copy"], params)
        store, lv = self._lvol(p["src_lvol_name"])
        self._copy_count += 1  # taken before the destination is looked at, as SPDK does
        op_id = self._copy_count
        dst = str(p["dst_bdev_name"])
        size = self._bdev_size(dst)
        if size is None:
            raise fault(errno.ENODEV, ERROR_INVALID_PARAMS)
        if (dst in self.bdevs and self.bdevs[dst].lvs_uuid is not None) or self._copy_target(dst):
            raise fault(errno.EPERM, ERROR_INVALID_PARAMS)  # claimed (an lvstore, or a copy in progress)
        job = self._model_call(lambda: store.start_shallow_copy(lv.uuid, size), ERROR_INVALID_PARAMS)
        assert isinstance(job, Job)
        self._copies[op_id] = ShallowCopy(store=store, job=job, dst=dst)
        return {"operation_id": op_id}

    def _m_bdev_lvol_check_shallow_copy(self, params: object) -> object:
        p = decode_for(BY_METHOD["bdev_lvol_check_shallow_copy"], params)
        op_id = int(p["operation_id"])  # type: ignore[call-overload]
        cp = self._copies.get(op_id)
        if cp is None:
            raise no_device()
        job = cp.job
        out: dict[str, object] = {"copied_clusters": job.copied_clusters, "total_clusters": job.total_clusters}
        if job.error:
            out.update(state="error", error=os.strerror(job.error))
            del self._copies[op_id]
        elif job.copied_clusters < job.total_clusters:
            out["state"] = "in progress"
        else:
            out["state"] = "complete"
            del self._copies[op_id]
        return out
