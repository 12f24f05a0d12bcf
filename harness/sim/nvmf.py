"""The reference target's NVMe-oF target: the `nvmf_*` RPCs the storm's I/O uses, and the controllers behind
them, answering NVMe commands from the lvols' blocks (`harness.sim.nvmf_blocks`).

RPCs as spdk_tgt (longhorn-v24.09 @1975133e9, lib/nvmf/nvmf_rpc.c) answers them; the replies and refusals are
recorded in tests/data/nvmf/longhorn-v24.09-nvmf_tcp.json: a decoding failure, a missing subsystem for a
namespace or listener, a missing bdev, a taken nsid or an already claimed bdev are all -32602 "Invalid
parameters"; a second TCP transport is -32603 "Transport type 'TCP' already exists"; a subsystem that exists
or an NQN that is not one is -32603 "Unable to create subsystem <nqn>". An exported bdev is claimed
(exclusive_write); deleting its lvol hot-removes the namespace before the delete answers (nvmf_ns_hot_remove).
Deviation: only lvol bdevs are exported (a malloc bdev's namespace is refused as a missing bdev is).

Controllers follow lib/nvmf/ctrlr.c: the admin queue's Connect (cntlid FFFFh) makes one, Property Set CC.EN
readies it, an I/O queue's Connect needs it enabled with IOSQES 6 and IOCQES 4; a command to a namespace that
is not there is INVALID_NAMESPACE_OR_FORMAT, past the end LBA_OUT_OF_RANGE, a write the blobstore refuses
(read-only, no free cluster) INTERNAL_DEVICE_ERROR (bdev_io failed).
"""

from __future__ import annotations

import errno
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from harness.model.lvstore import Lvol, LvolStore
from harness.nvme_tcp.spec import (
    CC_ENABLE,
    CC_IOCQES_SHIFT,
    CC_IOSQES_SHIFT,
    CNS_ACTIVE_NS_LIST,
    CNS_CONTROLLER,
    CNS_NAMESPACE,
    CSTS_RDY,
    DYNAMIC_CNTLID,
    FCTYPE_CONNECT,
    FCTYPE_PROPERTY_GET,
    FCTYPE_PROPERTY_SET,
    OPC_FABRIC,
    OPC_FLUSH,
    OPC_IDENTIFY,
    OPC_KEEP_ALIVE,
    OPC_READ,
    OPC_WRITE,
    PROP_CAP,
    PROP_CC,
    PROP_CSTS,
    PROP_VS,
    SC_COMMAND_SEQUENCE_ERROR,
    SC_CONNECT_INVALID_HOST,
    SC_CONNECT_INVALID_PARAMETERS,
    SC_INTERNAL_DEVICE_ERROR,
    SC_INVALID_FIELD,
    SC_INVALID_NAMESPACE_OR_FORMAT,
    SC_INVALID_OPCODE,
    SC_LBA_OUT_OF_RANGE,
    SCT_COMMAND_SPECIFIC,
    SCT_GENERIC,
    Command,
    ControllerData,
    NamespaceData,
    Status,
    connect_fields,
    encode_ns_list,
    parse_connect_data,
)
from harness.sim import faults as fm
from harness.sim.nvmf_blocks import BlockError, BlockStore, Capture
from harness.sim.protocol import ERROR_INTERNAL, ERROR_INVALID_PARAMS, RpcFault, fault
from harness.sim.state import TargetState

DISCOVERY_NQN = "nqn.2014-08.org.nvmexpress.discovery"
SERIAL = "00000000000000000000"
MODEL = "SPDK bdev Controller"
FIRMWARE = "24.09.1"
MDTS = 5  # 128 KiB with 4 KiB pages: max_io_size
MAX_CNTLID = 65519
DEFAULT_MAX_NAMESPACES = 32
SC_SGL_LENGTH_INVALID = 0x0F
TCP_OPTS: dict[str, object] = {
    "trtype": "TCP", "max_queue_depth": 128, "max_io_qpairs_per_ctrlr": 127, "in_capsule_data_size": 4096,
    "max_io_size": 131072, "io_unit_size": 131072, "max_aq_depth": 128, "num_shared_buffers": 511,
    "buf_cache_size": 4294967295, "dif_insert_or_strip": False, "zcopy": False, "c2h_success": True,
    "sock_priority": 0, "abort_timeout_sec": 1, "ack_timeout": 0, "data_wr_pool_size": 0,
}
"""nvmf_get_transports' entry for a TCP transport made with spdk_tgt's defaults (recorded)."""
_NQN = re.compile(r"^nqn\.\d{4}-\d{2}\.[^:]+(:.+)?$")
_INVALID = "Invalid parameters"

STR, U16, U32, U64, BOOL, OBJ = "string", "uint16", "uint32", "uint64", "bool", "object"
_LIMITS = {U16: 1 << 16, U32: 1 << 32, U64: 1 << 64}


def _decode(params: object, spec: tuple[tuple[str, str, bool], ...], *, relaxed: bool = False) -> dict[str, Any]:
    """spdk_json_decode_object(_relaxed) for the nvmf RPCs: any failure is -32602 "Invalid parameters"."""
    if not isinstance(params, dict):
        raise RpcFault(ERROR_INVALID_PARAMS, _INVALID)
    known = {name: (kind, required) for name, kind, required in spec}
    if not relaxed and any(k not in known for k in params):
        raise RpcFault(ERROR_INVALID_PARAMS, _INVALID)
    out: dict[str, Any] = {}
    for name, (kind, required) in known.items():
        if name not in params:
            if required:
                raise RpcFault(ERROR_INVALID_PARAMS, _INVALID)
            out[name] = None
            continue
        v = params[name]
        ok = (isinstance(v, str) if kind == STR else isinstance(v, bool) if kind == BOOL
              else isinstance(v, dict) if kind == OBJ
              else isinstance(v, int) and not isinstance(v, bool) and 0 <= v < _LIMITS[kind])
        if not ok:
            raise RpcFault(ERROR_INVALID_PARAMS, _INVALID)
        out[name] = v
    return out


_LISTEN_ADDRESS = (("trtype", STR, False), ("adrfam", STR, False), ("traddr", STR, True), ("trsvcid", STR, False))
_NS_PARAMS = (("nsid", U32, False), ("bdev_name", STR, True), ("ptpl_file", STR, False), ("nguid", STR, False),
              ("eui64", STR, False), ("uuid", STR, False), ("anagrpid", U32, False), ("no_auto_visible", BOOL, False))


class Reactor(Protocol):
    """The transport side (harness.sim.nvmf_tcp): it listens where a listener is added."""

    def listen(self, traddr: str, trsvcid: int) -> None: ...

    def unlisten(self, traddr: str, trsvcid: int) -> None: ...


@dataclass(eq=False)
class NvmfNamespace:
    nsid: int
    bdev: str
    """The lvol's UUID (its bdev name)."""


@dataclass(eq=False)
class Controller:
    cntlid: int
    subnqn: str
    hostnqn: str
    cc: int = 0

    @property
    def csts(self) -> int:
        return CSTS_RDY if self.cc & CC_ENABLE else 0


@dataclass(eq=False)
class Subsystem:
    nqn: str
    max_namespaces: int
    allow_any_host: bool
    serial: str = SERIAL
    model: str = MODEL
    listeners: list[tuple[str, str, str, str]] = field(default_factory=list)
    """(trtype, adrfam, traddr, trsvcid) as nvmf_get_subsystems prints them."""
    namespaces: dict[int, NvmfNamespace] = field(default_factory=dict)
    controllers: dict[int, Controller] = field(default_factory=dict)
    next_cntlid: int = 1

    def to_json(self) -> dict[str, object]:
        return {
            "nqn": self.nqn, "subtype": "NVMe",
            "listen_addresses": [{"trtype": t, "adrfam": a, "traddr": h, "trsvcid": p}
                                 for t, a, h, p in self.listeners],
            "allow_any_host": self.allow_any_host, "hosts": [], "serial_number": self.serial,
            "model_number": self.model, "max_namespaces": self.max_namespaces, "min_cntlid": 1,
            "max_cntlid": MAX_CNTLID,
            "namespaces": [{"nsid": n.nsid, "bdev_name": n.bdev, "name": n.bdev,
                            "nguid": n.bdev.replace("-", "").upper(), "uuid": n.bdev}
                           for n in sorted(self.namespaces.values(), key=lambda n: n.nsid)],
        }


DISCOVERY_JSON = {"nqn": DISCOVERY_NQN, "subtype": "Discovery", "listen_addresses": [], "allow_any_host": True,
                  "hosts": []}


@dataclass(frozen=True, slots=True)
class Reply:
    """What a command completes with: its status, cdw0 (Connect's cntlid, Property Get's value) and read data."""

    status: Status
    cdw0: int = 0
    cdw1: int = 0
    data: bytes = b""


OK = Status(SCT_GENERIC, 0)


def _error(sc: int, sct: int = SCT_GENERIC) -> Reply:
    return Reply(Status(sct, sc, dnr=True))


class NvmfMethods(TargetState):
    """The nvmf RPCs and the NVMe commands of this target's controllers (see the module docstring)."""

    def _nvmf_init(self) -> None:
        self.transports: dict[str, dict[str, object]] = {}
        self.subsystems: dict[str, Subsystem] = {}
        self.blocks = BlockStore()
        self.reactor: Reactor | None = None
        self.clone_reads = 0
        self.bdev_blocks: dict[str, int] = {}
        """Lvol bdevs whose size is not their blob's (a refused shrink of an exported lvol), by UUID."""

    # -- wiring ------------------------------------------------------------------------------------------------

    def attach_reactor(self, reactor: Reactor) -> None:
        """The server's NVMe/TCP side; listeners added before it came are listened on now."""
        self.reactor = reactor
        for sub in self.subsystems.values():
            for _t, _a, host, port in sub.listeners:
                reactor.listen(host, int(port))

    @property
    def nvmf_active(self) -> bool:
        """Anything for the NVMe-oF side to follow: subsystems, written blocks, bdev sizes of their own."""
        return bool(self.subsystems) or bool(self.blocks.data) or bool(self.bdev_blocks)

    def nvmf_serve(self, method: str, mutating: bool, handler: Callable[[object], object], params: object) -> object:
        """Run one call with the NVMe-oF side following it: a mutating call moves data and may hot-remove
        namespaces; an exported lvol's resize and bdev_get_bdevs show the bdev as the bdev layer keeps it."""
        if method == "bdev_get_bdevs":
            return self._bdev_view(handler(params))
        if not mutating:
            return handler(params)
        before = self.blocks.capture(self.stores)
        resizing = self._resize_before(params) if method == "bdev_lvol_resize" else None
        try:
            result = handler(params)
            if resizing is not None:
                self._resize_after(*resizing)
            return result
        finally:
            self.after_mutation(before)

    def _bdev_blocks(self, store: LvolStore, lv: Lvol) -> int:
        """The lvol bdev's size in blocks: the blob's, unless a refused shrink left the bdev larger."""
        return self.bdev_blocks.get(lv.uuid, store.size_bytes(lv) // store.block_size)

    def _resize_before(self, params: object) -> tuple[LvolStore, Lvol, int] | None:
        name = params.get("name") if isinstance(params, dict) else None
        found = self._find_lvol(name) if isinstance(name, str) else None
        if found is None:
            return None
        return found[0], found[1], self._bdev_blocks(*found)

    def _resize_after(self, store: LvolStore, lv: Lvol, old_blocks: int) -> None:
        """vbdev_lvol.c _vbdev_lvol_resize_cb: the blob is resized first, then spdk_bdev_notify_blockcnt_change,
        which refuses to shrink a bdev with open descriptors (-EBUSY): an exported lvol's shrink answers
        EBUSY with its blob shrunk and its bdev as large as before (recorded on the nullcheck build)."""
        new_blocks = store.size_bytes(lv) // store.block_size
        if new_blocks < old_blocks and self.exported(lv.uuid):
            self.bdev_blocks[lv.uuid] = old_blocks
            self._log.append(f"vbdev_lvol.c:1647:_vbdev_lvol_resize_cb: *ERROR*: Could not change num blocks for "
                             f"bdev lvol {lv.name} with error no: -16.")
            raise fault(errno.EBUSY, ERROR_INVALID_PARAMS)
        self.bdev_blocks.pop(lv.uuid, None)

    def _bdev_view(self, result: object) -> object:
        """bdev_get_bdevs as the bdev layer reports an exported lvol: claimed by the NVMe-oF target, and its
        own size after a refused shrink."""
        if not isinstance(result, list):
            return result
        for entry in result:
            if not isinstance(entry, dict) or entry.get("product_name") != "Logical Volume":
                continue
            uuid = str(entry.get("uuid"))
            if uuid in self.bdev_blocks:
                entry["num_blocks"] = self.bdev_blocks[uuid]
            if self.exported(uuid) and not entry.get("claimed"):
                fields = list(entry.items())  # claim_type right after claimed, as SPDK writes them
                entry.clear()
                for k, v in fields:
                    entry[k] = True if k == "claimed" else v
                    if k == "claimed":
                        entry["claim_type"] = "exclusive_write"
        return result

    def after_mutation(self, before: Capture | None) -> None:
        """After a mutating call: data follows the blobs; namespaces of lvols that are gone are hot-removed."""
        if before is None:
            return
        kept = {s.uuid for s, _layout in getattr(self, "_on_disk", {}).values()}
        self.blocks.follow(before, self.stores, kept)
        for sub in self.subsystems.values():
            for nsid in [n for n, ns in sub.namespaces.items() if self._lvol_of(ns.bdev) is None]:
                del sub.namespaces[nsid]
        for uuid in [u for u in self.bdev_blocks if self._lvol_of(u) is None]:
            del self.bdev_blocks[uuid]

    def _lvol_of(self, bdev: str) -> tuple[LvolStore, Lvol] | None:
        for store in self.stores.values():
            lv = store.find_by_uuid(bdev)
            if lv is not None:
                return store, lv
        return None

    def exported(self, bdev: str) -> bool:
        """Is this bdev a namespace (claimed exclusive_write by the NVMe-oF target)?"""
        return any(ns.bdev == bdev for sub in self.subsystems.values() for ns in sub.namespaces.values())

    # -- RPCs ----------------------------------------------------------------------------------------------------

    def _m_nvmf_create_transport(self, params: object) -> object:
        p = _decode(params, (("trtype", STR, True), ("tgt_name", STR, False)), relaxed=True)
        trtype = str(p["trtype"]).upper()
        if trtype != "TCP":
            raise RpcFault(ERROR_INVALID_PARAMS, f"Invalid transport type '{p['trtype']}'")
        if trtype in self.transports:
            raise RpcFault(ERROR_INTERNAL, f"Transport type '{trtype}' already exists")
        self.transports[trtype] = dict(TCP_OPTS)
        return True

    def _m_nvmf_get_transports(self, params: object) -> object:
        p = _decode(params, (("trtype", STR, False), ("tgt_name", STR, False))) if params is not None else {}
        want = p.get("trtype")
        picked = [t for name, t in self.transports.items() if want is None or name == str(want).upper()]
        if want is not None and not picked:
            raise fault(errno.EINVAL)
        return [dict(t) for t in picked]

    def _m_nvmf_create_subsystem(self, params: object) -> object:
        p = _decode(params, (("nqn", STR, True), ("serial_number", STR, False), ("model_number", STR, False),
                             ("tgt_name", STR, False), ("max_namespaces", U32, False), ("allow_any_host", BOOL, False),
                             ("ana_reporting", BOOL, False), ("min_cntlid", U16, False), ("max_cntlid", U16, False),
                             ("max_discard_size_kib", U64, False), ("max_write_zeroes_size_kib", U64, False),
                             ("passthrough", BOOL, False)))
        nqn = str(p["nqn"])
        if nqn in self.subsystems or nqn == DISCOVERY_NQN or not _NQN.match(nqn) or len(nqn) > 223:
            raise RpcFault(ERROR_INTERNAL, f"Unable to create subsystem {nqn}")
        self.subsystems[nqn] = Subsystem(
            nqn, int(p["max_namespaces"] or DEFAULT_MAX_NAMESPACES), bool(p["allow_any_host"]),
            str(p["serial_number"] or SERIAL), str(p["model_number"] or MODEL))
        return True

    def _subsystem(self, nqn: object) -> Subsystem:
        sub = self.subsystems.get(str(nqn))
        if sub is None:
            raise RpcFault(ERROR_INVALID_PARAMS, _INVALID)
        return sub

    def _m_nvmf_delete_subsystem(self, params: object) -> object:
        p = _decode(params, (("nqn", STR, True), ("tgt_name", STR, False)))
        sub = self._subsystem(p["nqn"])
        for _t, _a, host, port in sub.listeners:
            if self.reactor is not None and not self._port_shared(sub, host, port):
                self.reactor.unlisten(host, int(port))
        del self.subsystems[sub.nqn]
        return True

    def _m_nvmf_get_subsystems(self, params: object) -> object:
        p = _decode(params, (("nqn", STR, False), ("tgt_name", STR, False))) if params is not None else {}
        if p.get("nqn") is not None:
            sub = self.subsystems.get(str(p["nqn"]))
            if sub is None:
                raise fault(errno.ENODEV)
            return [sub.to_json()]
        return [dict(DISCOVERY_JSON), *(s.to_json() for s in self.subsystems.values())]

    def _listener_params(self, params: object) -> tuple[Subsystem, tuple[str, str, str, str]]:
        p = _decode(params, (("nqn", STR, True), ("listen_address", OBJ, True), ("tgt_name", STR, False),
                             ("secure_channel", BOOL, False), ("ana_state", STR, False), ("sock_impl", STR, False)))
        a = _decode(p["listen_address"], _LISTEN_ADDRESS)
        sub = self._subsystem(p["nqn"])
        trtype = str(a["trtype"] or "").upper()
        if trtype not in self.transports:
            raise RpcFault(ERROR_INVALID_PARAMS, _INVALID)
        adrfam = {"IPV4": "IPv4", "IPV6": "IPv6"}.get(str(a["adrfam"] or "ipv4").upper())
        port = str(a["trsvcid"] or "")
        if adrfam is None or not port.isdigit() or not 0 < int(port) < 65536:
            raise RpcFault(ERROR_INVALID_PARAMS, _INVALID)
        return sub, (trtype, adrfam, str(a["traddr"]), port)

    def _port_shared(self, sub: Subsystem, host: str, port: str) -> bool:
        return any((h, p) == (host, port) for s in self.subsystems.values() if s is not sub
                   for _t, _a, h, p in s.listeners)

    def _m_nvmf_subsystem_add_listener(self, params: object) -> object:
        sub, lsn = self._listener_params(params)
        if lsn in sub.listeners:
            raise RpcFault(ERROR_INVALID_PARAMS, _INVALID)
        if self.reactor is not None and not self._port_shared(sub, lsn[2], lsn[3]):
            try:
                self.reactor.listen(lsn[2], int(lsn[3]))
            except OSError as exc:
                self._log.append(f"posix.c:1115:posix_sock_create: *ERROR*: bind() failed, errno = {exc.errno}")
                raise RpcFault(ERROR_INVALID_PARAMS, _INVALID) from None
        sub.listeners.append(lsn)
        return True

    def _m_nvmf_subsystem_remove_listener(self, params: object) -> object:
        sub, lsn = self._listener_params(params)
        if lsn not in sub.listeners:
            raise RpcFault(ERROR_INVALID_PARAMS, _INVALID)
        sub.listeners.remove(lsn)
        if self.reactor is not None and not self._port_shared(sub, lsn[2], lsn[3]):
            self.reactor.unlisten(lsn[2], int(lsn[3]))
        return True

    def _m_nvmf_subsystem_add_ns(self, params: object) -> object:
        p = _decode(params, (("nqn", STR, True), ("namespace", OBJ, True), ("tgt_name", STR, False)))
        ns = _decode(p["namespace"], _NS_PARAMS)
        sub = self._subsystem(p["nqn"])
        found = self._find_lvol(str(ns["bdev_name"]))
        if found is None or found[1].removed:
            self._log.append(f"bdev.c:8198:spdk_bdev_open_ext: *NOTICE*: Currently unable to find bdev with name: "
                             f"{ns['bdev_name']}")
            raise RpcFault(ERROR_INVALID_PARAMS, _INVALID)
        uuid = found[1].uuid
        nsid = ns["nsid"] or next((n for n in range(1, sub.max_namespaces + 1) if n not in sub.namespaces), 0)
        if not 0 < nsid <= sub.max_namespaces or nsid in sub.namespaces or self.exported(uuid):
            raise RpcFault(ERROR_INVALID_PARAMS, _INVALID)
        sub.namespaces[nsid] = NvmfNamespace(nsid, uuid)
        return nsid

    def _m_nvmf_subsystem_remove_ns(self, params: object) -> object:
        p = _decode(params, (("nqn", STR, True), ("nsid", U32, True), ("tgt_name", STR, False)))
        sub = self._subsystem(p["nqn"])
        if sub.namespaces.pop(int(p["nsid"]), None) is None:
            raise RpcFault(ERROR_INVALID_PARAMS, _INVALID)
        return True

    # -- NVMe commands -----------------------------------------------------------------------------------------

    def nvmf_connect(self, cmd: Command, data: bytes, qid_expected: int, port: int) -> tuple[Reply, Controller | None]:
        """A Fabrics Connect on a queue: the controller it joins (admin: a new one), or the refusal."""
        _recfmt, qid, sqsize, _kato = connect_fields(cmd)
        try:
            _hostid, cntlid, subnqn, hostnqn = parse_connect_data(data)
        except ValueError:
            return _error(SC_INVALID_FIELD), None
        sub = self.subsystems.get(subnqn)
        if sub is None or not any(int(p) == port for _t, _a, _h, p in sub.listeners):
            return _error(SC_CONNECT_INVALID_PARAMETERS, SCT_COMMAND_SPECIFIC), None
        if not sub.allow_any_host:
            return _error(SC_CONNECT_INVALID_HOST, SCT_COMMAND_SPECIFIC), None
        depth = int(TCP_OPTS["max_aq_depth" if qid == 0 else "max_queue_depth"])  # type: ignore[call-overload]
        if qid != qid_expected or sqsize == 0 or sqsize > depth - 1:
            return _error(SC_CONNECT_INVALID_PARAMETERS, SCT_COMMAND_SPECIFIC), None
        if qid == 0:
            if cntlid != DYNAMIC_CNTLID:
                return _error(SC_CONNECT_INVALID_PARAMETERS, SCT_COMMAND_SPECIFIC), None
            ctrlr = Controller(sub.next_cntlid, subnqn, hostnqn)
            sub.next_cntlid += 1
            sub.controllers[ctrlr.cntlid] = ctrlr
            return Reply(OK, ctrlr.cntlid), ctrlr
        found = sub.controllers.get(cntlid)
        want_cc = (6 << CC_IOSQES_SHIFT) | (4 << CC_IOCQES_SHIFT)
        if found is None or not found.cc & CC_ENABLE or found.cc & (0xFF << CC_IOSQES_SHIFT) != want_cc:
            return _error(SC_CONNECT_INVALID_PARAMETERS, SCT_COMMAND_SPECIFIC), None
        return Reply(OK, cntlid), found

    def nvmf_drop_controller(self, ctrlr: Controller) -> None:
        """Its admin queue disconnected: the controller goes (its I/O queues see commands fail)."""
        sub = self.subsystems.get(ctrlr.subnqn)
        if sub is not None:
            sub.controllers.pop(ctrlr.cntlid, None)
        ctrlr.cc = 0

    def nvmf_admin(self, ctrlr: Controller, cmd: Command) -> Reply:
        """A command on the admin queue after Connect."""
        if cmd.opc == OPC_FABRIC:
            return self._fabric(ctrlr, cmd)
        if not ctrlr.cc & CC_ENABLE:
            return _error(SC_COMMAND_SEQUENCE_ERROR)  # "Admin command sent to disabled controller"
        sub = self.subsystems.get(ctrlr.subnqn)
        if sub is None:
            return _error(SC_COMMAND_SEQUENCE_ERROR)
        if cmd.opc == OPC_KEEP_ALIVE:
            return Reply(OK)
        if cmd.opc != OPC_IDENTIFY:
            return _error(SC_INVALID_OPCODE)
        cns = cmd.cdw10 & 0xFF
        if cns == CNS_CONTROLLER:
            data = ControllerData(sub.serial, sub.model, FIRMWARE, MDTS, ctrlr.cntlid, sub.max_namespaces, sub.nqn,
                                  (int(TCP_OPTS["in_capsule_data_size"]) + 64) // 16,  # type: ignore[call-overload]
                                  1, 0).encode()
            return Reply(OK, data=data)
        if cns == CNS_ACTIVE_NS_LIST:
            return Reply(OK, data=encode_ns_list(list(sub.namespaces), above=cmd.nsid))
        if cns == CNS_NAMESPACE:
            ns = sub.namespaces.get(cmd.nsid)
            found = self._lvol_of(ns.bdev) if ns is not None else None
            if found is None:
                if not 0 < cmd.nsid <= sub.max_namespaces:
                    return _error(SC_INVALID_NAMESPACE_OR_FORMAT)
                return Reply(OK, data=NamespaceData(0, 0, 0, 0).encode())
            store, lv = found
            n = self._bdev_blocks(store, lv)
            return Reply(OK, data=NamespaceData(n, n, n, store.block_size, bytes.fromhex(lv.uuid.replace("-", "")))
                         .encode())
        return _error(SC_INVALID_FIELD)

    def _fabric(self, ctrlr: Controller, cmd: Command) -> Reply:
        offset = cmd.cdw11
        if cmd.fctype == FCTYPE_PROPERTY_GET:
            values = {PROP_CAP: 127 | (1 << 16) | (30 << 24) | (1 << 37), PROP_VS: 0x00010300, PROP_CC: ctrlr.cc,
                      PROP_CSTS: ctrlr.csts}
            if offset not in values:
                return _error(SC_INVALID_FIELD)
            value = values[offset]
            return Reply(OK, value & 0xFFFFFFFF, value >> 32)
        if cmd.fctype == FCTYPE_PROPERTY_SET:
            if offset != PROP_CC:
                return _error(SC_INVALID_FIELD)
            ctrlr.cc = cmd.cdw12
            return Reply(OK)
        if cmd.fctype == FCTYPE_CONNECT:
            return _error(SC_COMMAND_SEQUENCE_ERROR)
        return _error(SC_INVALID_OPCODE)

    def nvmf_io(self, ctrlr: Controller, cmd: Command, data: bytes) -> Reply:
        """A Read, Write or Flush on an I/O queue; `data` is a write's whole payload."""
        if not ctrlr.cc & CC_ENABLE:
            return _error(SC_COMMAND_SEQUENCE_ERROR)  # "I/O command sent to disabled controller"
        sub = self.subsystems.get(ctrlr.subnqn)
        ns = sub.namespaces.get(cmd.nsid) if sub is not None else None
        found = self._lvol_of(ns.bdev) if ns is not None else None
        if found is None:
            return _error(SC_INVALID_NAMESPACE_OR_FORMAT)
        store, lv = found
        if cmd.opc == OPC_FLUSH:
            return Reply(OK)
        if cmd.opc not in (OPC_READ, OPC_WRITE):
            return _error(SC_INVALID_OPCODE)
        bs = store.block_size
        slba, nlb = cmd.slba, cmd.nlb
        if slba + nlb > self._bdev_blocks(store, lv):
            return _error(SC_LBA_OUT_OF_RANGE)
        if nlb * bs > cmd.sgl_length:
            return _error(SC_SGL_LENGTH_INVALID)
        if slba + nlb > store.size_bytes(lv) // bs:
            return _error(SC_INTERNAL_DEVICE_ERROR)  # past the blob, inside the bdev: the blob I/O fails
        if cmd.opc == OPC_READ:
            return Reply(OK, data=b"".join(self._read_block(store, lv, lba) for lba in range(slba, slba + nlb)))
        try:
            for i in range(nlb):
                self.blocks.write(store, lv, slba + i, data[i * bs:(i + 1) * bs])
        except BlockError as exc:
            if exc.reason == "store-full":
                self._log.append("spdk-sim: block store full (its memory bound): write failed")
            return _error(SC_INTERNAL_DEVICE_ERROR)
        return Reply(OK)

    def _read_block(self, store: LvolStore, lv: Lvol, lba: int) -> bytes:
        if fm.CORRUPT_CLONE_READ in self.faults and lv.parent is not None:
            self.clone_reads += 1
            if self.clone_reads >= self._fault_after_reads:
                chain: set[int] = set()
                cur: Lvol | None = lv
                for _ in range(len(store.blobs) + 1):
                    if cur is None:
                        break
                    chain.add(cur.blob_id)
                    cur = store.parent_of(cur)
                other = self.blocks.some_block_elsewhere(store, chain, lba)
                if other is not None:
                    return other
        return self.blocks.read(store, lv, lba)

    @property
    def _fault_after_reads(self) -> int:
        return int(getattr(self, "fault_after", 40))
