"""A userspace NVMe/TCP initiator on asyncio: these machines have no nvme-tcp kernel module, and the storm's I/O
has to run beside its RPCs in one event loop anyway.

`Controller.connect(address, port, subnqn)` opens the admin queue (ICReq/ICResp, Fabrics Connect with cntlid
FFFFh), enables the controller (Property Set CC.EN with IOSQES/IOCQES, then CSTS.RDY, as SPDK's
nvmf_ctrlr_add_io_qpair requires before any I/O queue connects), reads Identify Controller and opens
`io_queues` I/O queues, each its own TCP connection, each with `queue_depth` commands in flight at most.
`Namespace` reads, writes and flushes blocks on one of them: write data rides in the capsule when it fits
IOCCSZ (SPDK's in_capsule_data_size, 4 KiB by default) and otherwise follows the controller's R2Ts in H2CData
PDUs of at most MAXH2CDATA bytes; read data arrives in C2HData PDUs, the last one possibly flagged SUCCESS
with no CapsuleResp after it (SPDK's c2h_success).

Written against the NVMe/TCP 1.0 and NVMe-oF 1.1 specifications, checked with SPDK's own host driver
(lib/nvme/nvme_tcp.c: nvme_tcp_qpair_icreq_send, nvme_tcp_c2h_data_hdr_handle, nvme_tcp_r2t_hdr_handle) and
target (lib/nvmf/tcp.c: nvmf_tcp_icreq_handle, nvmf_tcp_req_parse_sgl). Digests are off; keep-alive is off
(KATO 0: SPDK arms no timer). Nothing is ever retried: a command that gets no completion in time fails with
NvmeTimeout and takes its queue down (a late completion could otherwise land on a reused command id).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

from harness.nvme_tcp import pdu as P
from harness.nvme_tcp.spec import (
    CNS_ACTIVE_NS_LIST,
    CNS_CONTROLLER,
    CNS_NAMESPACE,
    CSTS_RDY,
    DEFAULT_HOSTNQN,
    DYNAMIC_CNTLID,
    OPC_READ,
    OPC_WRITE,
    PROP_CAP,
    PROP_CC,
    PROP_CSTS,
    Command,
    Completion,
    ControllerData,
    NamespaceData,
    Status,
    cc_enable_value,
    connect_command,
    connect_data,
    flush_command,
    host_id,
    identify_command,
    parse_ns_list,
    property_get_command,
    property_set_command,
    rw_command,
)

ADMIN_DEPTH = 8
ADMIN_SQSIZE = 31
READY_POLLS = 200
"""Property Gets of CSTS while waiting for RDY (each bounded by the command timeout)."""


class NvmeTransportError(Exception):
    """The queue is gone: the connection closed, the controller sent a TermReq, or a PDU broke the protocol.
    Every command in flight on that queue fails with it."""


class NvmeTimeout(NvmeTransportError):
    """No completion within the timeout; the queue is closed (its command ids cannot be trusted any more)."""


class NvmeError(Exception):
    """A command completed with a non-zero status."""

    def __init__(self, what: str, status: Status) -> None:
        super().__init__(f"{what}: {status.name} (sct {status.sct:#x}, sc {status.sc:#04x})")
        self.what = what
        self.status = status


@dataclass(eq=False)
class _Pending:
    cid: int
    future: asyncio.Future[tuple[Completion, bytes]]
    read_len: int = 0
    buf: bytearray | None = None
    received: int = 0
    write_data: bytes = b""
    sent_h2c: int = 0


@dataclass
class QueueStats:
    commands: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    r2ts: int = 0
    c2h_success: int = 0


class QueuePair(asyncio.Protocol):
    """One NVMe/TCP connection: a submission/completion queue pair with `depth` commands in flight at most."""

    def __init__(self, qid: int, depth: int, *, on_lost: Callable[[QueuePair, str], None] | None = None) -> None:
        self.qid = qid
        self.depth = depth
        self.reader = P.PduReader()
        self.transport: asyncio.Transport | None = None
        self.pending: dict[int, _Pending] = {}
        self.free_cids: list[int] = list(range(depth - 1, -1, -1))
        self.slots = asyncio.Semaphore(depth)
        self.ic_future: asyncio.Future[P.Pdu] = asyncio.get_running_loop().create_future()
        self.maxh2cdata = 0
        self.lost: str | None = None
        self.stats = QueueStats()
        self.on_lost = on_lost

    # -- asyncio.Protocol -------------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            pdus = self.reader.feed(data)
        except P.PduError as exc:
            self._fail(f"queue {self.qid}: bad PDU from the controller: {exc}")
            return
        for pdu in pdus:
            try:
                self._handle(pdu)
            except (P.PduError, struct.error, ValueError) as exc:
                self._fail(f"queue {self.qid}: {pdu.name}: {exc}")
                return

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(f"queue {self.qid}: connection closed by the controller" + (f" ({exc})" if exc else ""))

    # -- PDUs ---------------------------------------------------------------------------------------------------

    def _handle(self, pdu: P.Pdu) -> None:
        t = pdu.type
        if t == P.C2H_DATA:
            self._c2h_data(pdu)
        elif t == P.CAPSULE_RESP:
            cpl = Completion.decode(pdu.header[P.COMMON_SIZE:])
            self._complete(cpl.cid, cpl)
        elif t == P.R2T:
            self._r2t(pdu)
        elif t == P.IC_RESP:
            if not self.ic_future.done():
                self.ic_future.set_result(pdu)
        elif t == P.C2H_TERM_REQ:
            fes, fei = P.parse_term(pdu)
            self._fail(f"queue {self.qid}: the controller terminated the connection (C2HTermReq fes {fes:#x}, "
                       f"fei {fei:#x})")
        else:
            raise P.PduError(f"unexpected {pdu.name} from a controller")

    def _c2h_data(self, pdu: P.Pdu) -> None:
        cccid, _ttag, offset, length = P.parse_data(pdu)
        pend = self.pending.get(cccid)
        if pend is None or pend.buf is None:
            raise P.PduError(f"C2HData for command {cccid}, which reads nothing")
        if length != len(pdu.data) or offset + length > pend.read_len:
            raise P.PduError(f"C2HData [{offset}, +{length}) outside the {pend.read_len}-byte read")
        pend.buf[offset:offset + length] = pdu.data
        pend.received += length
        self.stats.bytes_in += length
        if pdu.flags & P.FLAG_DATA_SUCCESS:
            if not pdu.flags & P.FLAG_DATA_LAST:
                raise P.PduError("C2HData with SUCCESS but without LAST_PDU")
            self.stats.c2h_success += 1
            self._complete(cccid, Completion(cccid, sqid=self.qid))

    def _r2t(self, pdu: P.Pdu) -> None:
        cccid, ttag, offset, length = P.parse_data(pdu)
        pend = self.pending.get(cccid)
        if pend is None or not pend.write_data:
            raise P.PduError(f"R2T for command {cccid}, which writes nothing")
        if offset + length > len(pend.write_data) or length == 0:
            raise P.PduError(f"R2T [{offset}, +{length}) outside the {len(pend.write_data)}-byte write")
        assert self.transport is not None
        self.stats.r2ts += 1
        chunk = self.maxh2cdata or length
        view = memoryview(pend.write_data)
        end = offset + length
        pos = offset
        while pos < end:
            n = min(chunk, end - pos)
            last = P.FLAG_DATA_LAST if pos + n >= end else 0
            self.transport.write(P.data_pdu(P.H2C_DATA, cccid, ttag, pos, view[pos:pos + n], last))
            pos += n
        pend.sent_h2c += length
        self.stats.bytes_out += length

    def _complete(self, cid: int, cpl: Completion) -> None:
        pend = self.pending.pop(cid, None)
        if pend is None:
            raise P.PduError(f"completion for command id {cid}, which is not outstanding")
        self.free_cids.append(cid)
        if not pend.future.done():
            data = bytes(pend.buf) if pend.buf is not None else b""
            if pend.buf is not None and cpl.status.ok and pend.received < pend.read_len:
                pend.future.set_exception(NvmeTransportError(
                    f"queue {self.qid}: command {cid} completed with {pend.received} of {pend.read_len} bytes"))
            else:
                pend.future.set_result((cpl, data))
        self.slots.release()

    def _fail(self, reason: str) -> None:
        if self.lost is None:
            self.lost = reason
            if self.on_lost is not None:
                self.on_lost(self, reason)
        if not self.ic_future.done():
            self.ic_future.set_exception(NvmeTransportError(reason))
        for pend in list(self.pending.values()):
            if not pend.future.done():
                pend.future.set_exception(NvmeTransportError(reason))
        self.pending.clear()
        if self.transport is not None:
            self.transport.abort()

    # -- commands ---------------------------------------------------------------------------------------------

    async def initialize(self, timeout: float) -> None:
        """ICReq -> ICResp: PFV 0, no digests, HPDA 0; remember MAXH2CDATA for the H2CData we send."""
        assert self.transport is not None
        self.transport.write(P.ic_req())
        try:
            resp = await asyncio.wait_for(self.ic_future, timeout)
        except TimeoutError:
            self.close()
            raise NvmeTimeout(f"queue {self.qid}: no ICResp within {timeout:g} s") from None
        pfv, cpda, dgst, maxh2cdata = P.parse_ic(resp)
        if pfv != 0 or dgst != 0:
            self.close()
            raise NvmeTransportError(f"queue {self.qid}: ICResp PFV {pfv}, digests {dgst:#x}: expected 0 and none")
        if cpda != 0:
            self.close()
            raise NvmeTransportError(f"queue {self.qid}: ICResp CPDA {cpda}: this initiator pads no data")
        if maxh2cdata < 4096 or maxh2cdata % 4:
            self.close()
            raise NvmeTransportError(f"queue {self.qid}: ICResp MAXH2CDATA {maxh2cdata}: must be >= 4096, dword "
                                     "aligned")
        self.maxh2cdata = maxh2cdata

    async def submit(self, cmd: Command, *, data_out: bytes = b"", read_len: int = 0, in_capsule: bool = False,
                     timeout: float = 30.0) -> tuple[Completion, bytes]:
        """Send `cmd` (its cid is ours to set) and wait for its completion and any read data."""
        await self.slots.acquire()
        if self.lost is not None or self.transport is None:
            self.slots.release()
            raise NvmeTransportError(self.lost or f"queue {self.qid}: not connected")
        cid = self.free_cids.pop()
        cmd.cid = cid
        fut: asyncio.Future[tuple[Completion, bytes]] = asyncio.get_running_loop().create_future()
        pend = _Pending(cid, fut, read_len, bytearray(read_len) if read_len else None)
        if data_out and not in_capsule:
            pend.write_data = data_out
        self.pending[cid] = pend
        self.stats.commands += 1
        capsule = data_out if in_capsule else b""
        self.stats.bytes_out += len(capsule)
        self.transport.write(P.capsule_cmd(cmd.encode(), capsule))
        try:
            return await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            reason = f"queue {self.qid}: no completion for opcode {cmd.opc:#04x} within {timeout:g} s"
            self._fail(reason)
            raise NvmeTimeout(reason) from None

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()
        if self.lost is None:
            self.lost = f"queue {self.qid}: closed by the host"


@dataclass
class Namespace:
    """One namespace of a connected controller: its size and block size as Identify Namespace reported them."""

    controller: Controller
    nsid: int
    data: NamespaceData

    @property
    def block_size(self) -> int:
        return self.data.block_size

    @property
    def blocks(self) -> int:
        return self.data.nsze

    async def read(self, lba: int, nblocks: int, *, queue: int = 0, timeout: float | None = None) -> bytes:
        return await self.controller.read(self.nsid, lba, nblocks, self.block_size, queue=queue, timeout=timeout)

    async def write(self, lba: int, data: bytes, *, queue: int = 0, timeout: float | None = None) -> None:
        await self.controller.write(self.nsid, lba, data, self.block_size, queue=queue, timeout=timeout)

    async def flush(self, *, queue: int = 0, timeout: float | None = None) -> None:
        await self.controller.flush(self.nsid, queue=queue, timeout=timeout)


@dataclass
class Controller:
    """A connected NVMe-oF controller: its admin queue and I/O queues (see the module docstring)."""

    address: str
    port: int
    subnqn: str
    hostnqn: str
    timeout: float
    admin: QueuePair
    cntlid: int = 0
    data: ControllerData | None = None
    io: list[QueuePair] = field(default_factory=list)
    max_transfer: int = 0

    @classmethod
    async def connect(cls, address: str, port: int, subnqn: str, *, hostnqn: str = DEFAULT_HOSTNQN,
                      io_queues: int = 1, queue_depth: int = 32, timeout: float = 10.0) -> Controller:
        """Connect, enable and identify the controller, then open the I/O queues. Fails whole: whatever was
        opened is closed again."""
        if io_queues < 1 or queue_depth < 1:
            raise ValueError(f"io_queues and queue_depth must be >= 1, got {io_queues} and {queue_depth}")
        admin = await _open_queue(address, port, 0, ADMIN_DEPTH, timeout)
        ctrl = cls(address, port, subnqn, hostnqn, timeout, admin)
        try:
            ctrl.cntlid = await ctrl._connect_queue(admin, ADMIN_SQSIZE, DYNAMIC_CNTLID)
            cap = await ctrl._property_get(PROP_CAP, size8=True)
            mqes = (cap & 0xFFFF) + 1
            mpsmin = 4096 << ((cap >> 48) & 0xF)
            await ctrl._admin(property_set_command(PROP_CC, cc_enable_value()), "Property Set CC.EN")
            for _ in range(READY_POLLS):
                if await ctrl._property_get(PROP_CSTS) & CSTS_RDY:
                    break
                await asyncio.sleep(0.01)
            else:
                raise NvmeTransportError(f"controller {cntlid_text(ctrl.cntlid)} never set CSTS.RDY")
            raw = await ctrl._admin(identify_command(CNS_CONTROLLER), "Identify Controller", read_len=4096)
            ctrl.data = ControllerData.parse(raw)
            ctrl.max_transfer = (mpsmin << ctrl.data.mdts) if ctrl.data.mdts else 1 << 30
            sqsize = min(queue_depth, mqes - 1)
            for qid in range(1, io_queues + 1):
                q = await _open_queue(address, port, qid, sqsize, timeout)
                ctrl.io.append(q)
                await ctrl._connect_queue(q, sqsize, ctrl.cntlid)
        except BaseException:
            await ctrl.close()
            raise
        return ctrl

    async def _connect_queue(self, q: QueuePair, sqsize: int, cntlid: int) -> int:
        data = connect_data(self.subnqn, self.hostnqn, cntlid, host_id(self.hostnqn))
        cpl, _ = await q.submit(connect_command(q.qid, sqsize), data_out=data, in_capsule=True,
                                timeout=self.timeout)
        if not cpl.status.ok:
            raise NvmeError(f"Fabrics Connect of queue {q.qid} to {self.subnqn}", cpl.status)
        return cpl.cdw0 & 0xFFFF

    async def _admin(self, cmd: Command, what: str, *, read_len: int = 0) -> bytes:
        cpl, data = await self.admin.submit(cmd, read_len=read_len, timeout=self.timeout)
        if not cpl.status.ok:
            raise NvmeError(what, cpl.status)
        return data

    async def _property_get(self, offset: int, size8: bool = False) -> int:
        cpl, _ = await self.admin.submit(property_get_command(offset, size8), timeout=self.timeout)
        if not cpl.status.ok:
            raise NvmeError(f"Property Get {offset:#x}", cpl.status)
        return cpl.value64 if size8 else cpl.cdw0

    # -- admin ----------------------------------------------------------------------------------------------

    async def identify_namespace(self, nsid: int) -> NamespaceData:
        raw = await self._admin(identify_command(CNS_NAMESPACE, nsid), f"Identify Namespace {nsid}", read_len=4096)
        return NamespaceData.parse(raw)

    async def active_namespaces(self) -> list[int]:
        """Every active nsid (Identify CNS 02h, paged by the last nsid seen; bounded)."""
        out: list[int] = []
        above = 0
        for _ in range(1024):
            raw = await self._admin(identify_command(CNS_ACTIVE_NS_LIST, above), "Identify Active NS List",
                                    read_len=4096)
            page = parse_ns_list(raw)
            out.extend(page)
            if len(page) < 1024:
                break
            above = page[-1]
        return out

    async def namespace(self, nsid: int) -> Namespace:
        data = await self.identify_namespace(nsid)
        if not data.active:
            raise NvmeError(f"Identify Namespace {nsid}", Status(0, 0x0B))
        return Namespace(self, nsid, data)

    # -- I/O ------------------------------------------------------------------------------------------------

    def queue(self, index: int) -> QueuePair:
        return self.io[index % len(self.io)]

    async def read(self, nsid: int, lba: int, nblocks: int, block_size: int, *, queue: int = 0,
                   timeout: float | None = None) -> bytes:
        nbytes = nblocks * block_size
        self._check_size(nblocks, nbytes)
        cmd = rw_command(OPC_READ, nsid, lba, nblocks, nbytes, in_capsule=False)
        cpl, data = await self.queue(queue).submit(cmd, read_len=nbytes, timeout=timeout or self.timeout)
        if not cpl.status.ok:
            raise NvmeError(f"Read nsid {nsid} lba {lba} +{nblocks}", cpl.status)
        return data

    async def write(self, nsid: int, lba: int, data: bytes, block_size: int, *, queue: int = 0,
                    timeout: float | None = None) -> None:
        if not data or len(data) % block_size:
            raise ValueError(f"write of {len(data)} bytes: not a whole number of {block_size}-byte blocks")
        nblocks = len(data) // block_size
        self._check_size(nblocks, len(data))
        assert self.data is not None
        in_capsule = len(data) <= self.data.in_capsule_bytes
        cmd = rw_command(OPC_WRITE, nsid, lba, nblocks, len(data), in_capsule=in_capsule)
        cpl, _ = await self.queue(queue).submit(cmd, data_out=data, in_capsule=in_capsule,
                                                timeout=timeout or self.timeout)
        if not cpl.status.ok:
            raise NvmeError(f"Write nsid {nsid} lba {lba} +{nblocks}", cpl.status)

    async def flush(self, nsid: int, *, queue: int = 0, timeout: float | None = None) -> None:
        cpl, _ = await self.queue(queue).submit(flush_command(nsid), timeout=timeout or self.timeout)
        if not cpl.status.ok:
            raise NvmeError(f"Flush nsid {nsid}", cpl.status)

    def _check_size(self, nblocks: int, nbytes: int) -> None:
        if not 1 <= nblocks <= 0x10000:
            raise ValueError(f"{nblocks} blocks: one command moves 1..65536 blocks")
        if self.max_transfer and nbytes > self.max_transfer:
            raise ValueError(f"{nbytes} bytes exceed the controller's MDTS ({self.max_transfer} bytes)")

    @property
    def lost(self) -> str | None:
        """Why a queue of this controller went down, if one did."""
        for q in (self.admin, *self.io):
            if q.lost is not None and not q.lost.endswith("closed by the host"):
                return q.lost
        return None

    async def close(self) -> None:
        """Close every queue (SPDK tears the controller down when its admin queue goes)."""
        for q in (*self.io, self.admin):
            q.close()
        await asyncio.sleep(0)


def cntlid_text(cntlid: int) -> str:
    return f"{cntlid:#06x}"


async def _open_queue(address: str, port: int, qid: int, depth: int, timeout: float) -> QueuePair:
    loop = asyncio.get_running_loop()
    try:
        _, proto = await asyncio.wait_for(
            loop.create_connection(lambda: QueuePair(qid, depth), address, port), timeout)
    except TimeoutError:
        raise NvmeTimeout(f"queue {qid}: no TCP connection to {address}:{port} within {timeout:g} s") from None
    except OSError as exc:
        raise NvmeTransportError(f"queue {qid}: cannot connect to {address}:{port}: {exc.strerror or exc}") from exc
    with contextlib.suppress(OSError):
        sock = proto.transport.get_extra_info("socket") if proto.transport is not None else None
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    await proto.initialize(timeout)
    return proto
