"""The reference target's NVMe/TCP transport: listeners and queue connections on the RPC server's reactor.

As lib/nvmf/tcp.c does it (longhorn-v24.09 @1975133e9): ICReq first (PFV 0, HPDA <= 31: else a C2HTermReq),
ICResp with CPDA 0 and MAXH2CDATA = max_io_size (131072); then CapsuleCmds: the first on a queue must be a
Fabrics Connect; in-capsule data may carry at most in_capsule_data_size (4096) bytes on an I/O queue, 8192 for
admin and Fabrics commands (nvmf_tcp_req_parse_sgl); a write without in-capsule data gets one R2T for its
whole length and its H2CData (each with the R2T's ttag, inside the range) is gathered until the LAST_PDU flag;
a read is answered by C2HData PDUs of at most 128 KiB, the last flagged LAST_PDU|SUCCESS with no CapsuleResp
(c2h_success, on by default). A protocol violation gets a C2HTermReq naming the field, then the connection
closes. Digests are refused (the harness never asks; spdk_tgt would grant them: a deviation).

Every command completes in the reactor turn that read it, in arrival order: SPDK's poll group may reorder
commands on one queue, the reference target never does.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
from collections.abc import Callable
from dataclasses import dataclass, field

from harness.nvme_tcp import pdu as P
from harness.nvme_tcp.spec import (
    FCTYPE_CONNECT,
    OPC_FABRIC,
    OPC_WRITE,
    SC_COMMAND_SEQUENCE_ERROR,
    SGL_DATA_BLOCK_OFFSET,
    SGL_TRANSPORT_DATA_BLOCK,
    Command,
    Completion,
    Status,
)
from harness.sim.nvmf import TCP_OPTS, Controller, NvmfMethods, Reply

ADMIN_ICD_MAX = 8192
IO_ICD_MAX = int(TCP_OPTS["in_capsule_data_size"])  # type: ignore[call-overload]
MAX_IO = int(TCP_OPTS["max_io_size"])  # type: ignore[call-overload]
C2H_CHUNK = 131072
RECV_CHUNK = 256 * 1024
LISTEN_BACKLOG = 128


@dataclass(eq=False)
class _Write:
    cmd: Command
    ttag: int
    buf: bytearray
    received: int = 0


@dataclass(eq=False)
class _Queue:
    """One accepted connection: its PDU state, the queue it became, writes waiting for H2CData."""

    sock: socket.socket
    port: int
    reader: P.PduReader = field(default_factory=P.PduReader)
    out: bytearray = field(default_factory=bytearray)
    initialized: bool = False
    qid: int = -1
    ctrlr: Controller | None = None
    writes: dict[int, _Write] = field(default_factory=dict)
    next_ttag: int = 1
    closing: bool = False
    events: int = 0


class _Listener:
    def __init__(self, owner: NvmfTcp, sock: socket.socket, port: int) -> None:
        self.owner, self.sock, self.port = owner, sock, port

    def on_ready(self, _mask: int) -> None:
        self.owner.accept(self)


class _Handle:
    def __init__(self, owner: NvmfTcp, q: _Queue) -> None:
        self.owner, self.q = owner, q

    def on_ready(self, mask: int) -> None:
        self.owner.ready(self.q, mask)


class NvmfTcp:
    """The TCP side: listens where the nvmf RPCs say, serves queues from `target` (see the module docstring)."""

    def __init__(self, target: NvmfMethods, selector: selectors.BaseSelector, log: Callable[[str], None]) -> None:
        self.target = target
        self.selector = selector
        self.log = log
        self.listeners: dict[tuple[str, int], _Listener] = {}
        self.queues: set[_Queue] = set()

    # -- listeners ---------------------------------------------------------------------------------------------

    def listen(self, traddr: str, trsvcid: int) -> None:
        if (traddr, trsvcid) in self.listeners:
            return
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((traddr, trsvcid))
            sock.listen(LISTEN_BACKLOG)
        except OSError:
            sock.close()
            raise
        sock.setblocking(False)
        lsn = _Listener(self, sock, trsvcid)
        self.listeners[(traddr, trsvcid)] = lsn
        self.selector.register(sock, selectors.EVENT_READ, lsn)
        self.log(f"tcp.c:1080:nvmf_tcp_listen: *NOTICE*: *** NVMe/TCP Target Listening on {traddr} port {trsvcid} ***")

    def unlisten(self, traddr: str, trsvcid: int) -> None:
        lsn = self.listeners.pop((traddr, trsvcid), None)
        if lsn is not None:
            self.selector.unregister(lsn.sock)
            lsn.sock.close()

    def accept(self, lsn: _Listener) -> None:
        for _ in range(16):  # NVMF_TCP_MAX_ACCEPT_SOCK_ONE_TIME
            try:
                sock, _ = lsn.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            sock.setblocking(False)
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            q = _Queue(sock, lsn.port)
            self.queues.add(q)
            q.events = selectors.EVENT_READ
            self.selector.register(sock, q.events, _Handle(self, q))

    def close_all(self) -> None:
        for q in list(self.queues):
            self._close(q)
        for key in list(self.listeners):
            self.unlisten(*key)

    # -- one connection -----------------------------------------------------------------------------------------

    def ready(self, q: _Queue, mask: int) -> None:
        if mask & selectors.EVENT_WRITE:
            self._flush(q)
        if mask & selectors.EVENT_READ and q in self.queues and not q.closing:
            try:
                data = q.sock.recv(RECV_CHUNK)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self._close(q)
                return
            if not data:
                self._close(q)
                return
            try:
                for pdu in q.reader.feed(data):
                    self._pdu(q, pdu)
                    if q.closing:
                        break
            except P.PduError as exc:
                self._terminate(q, exc.fes, exc.offset, str(exc))
            self._flush(q)

    def _send(self, q: _Queue, data: bytes) -> None:
        q.out += data

    def _flush(self, q: _Queue) -> None:
        if q not in self.queues:
            return
        if q.out:
            try:
                sent = q.sock.send(q.out)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                self._close(q)
                return
            del q.out[:sent]
        if q.closing and not q.out:
            self._close(q)
            return
        want = selectors.EVENT_READ | (selectors.EVENT_WRITE if q.out else 0)
        if want != q.events:
            q.events = want
            self.selector.modify(q.sock, want, _Handle(self, q))

    def _close(self, q: _Queue) -> None:
        if q not in self.queues:
            return
        self.queues.discard(q)
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(q.sock)
        q.sock.close()
        if q.qid == 0 and q.ctrlr is not None:
            self.target.nvmf_drop_controller(q.ctrlr)

    def _terminate(self, q: _Queue, fes: int, fei: int, why: str) -> None:
        self.log(f"tcp.c:2126:nvmf_tcp_send_c2h_term_req: *ERROR*: {why}")
        self._send(q, P.term_req(P.C2H_TERM_REQ, fes, fei))
        q.closing = True

    # -- PDUs ---------------------------------------------------------------------------------------------------

    def _pdu(self, q: _Queue, pdu: P.Pdu) -> None:
        if not q.initialized:
            if pdu.type != P.IC_REQ:
                raise P.PduError(f"{pdu.name} before ICReq", P.FES_PDU_SEQUENCE_ERROR, 0)
            pfv, hpda, dgst, _maxr2t = P.parse_ic(pdu)
            if pfv != 0:
                raise P.PduError(f"Expected ICReq PFV 0, got {pfv}", P.FES_INVALID_HEADER_FIELD, 8)
            if hpda > 31:
                raise P.PduError(f"ICReq HPDA out of range 0 to 31, got {hpda}", P.FES_INVALID_HEADER_FIELD, 10)
            if dgst:
                raise P.PduError("digests are not served by the reference target", P.FES_UNSUPPORTED_PARAMETER, 11)
            q.initialized = True
            self._send(q, P.ic_resp(0, MAX_IO))
            return
        if pdu.type == P.CAPSULE_CMD:
            self._capsule(q, pdu)
        elif pdu.type == P.H2C_DATA:
            self._h2c(q, pdu)
        elif pdu.type == P.H2C_TERM_REQ:
            q.closing = True
        else:
            raise P.PduError(f"unexpected {pdu.name} from a host", P.FES_INVALID_HEADER_FIELD, 0)

    def _capsule(self, q: _Queue, pdu: P.Pdu) -> None:
        cmd = Command.decode(pdu.header[P.COMMON_SIZE:])
        data = pdu.data
        if data:
            limit = ADMIN_ICD_MAX if (q.qid <= 0 or cmd.opc == OPC_FABRIC) else IO_ICD_MAX
            if cmd.sgl_type != SGL_DATA_BLOCK_OFFSET or len(data) != cmd.sgl_length:
                raise P.PduError(f"In-Capsule Data length {len(data):#x} is not equal to SGL data length "
                                 f"{cmd.sgl_length:#x}", P.FES_INVALID_HEADER_FIELD, 4)
            if cmd.sgl_address != 0:
                raise P.PduError("In-capsule offset should be ZERO in NVMe/TCP", P.FES_UNSUPPORTED_PARAMETER, 32)
            if len(data) > limit:
                raise P.PduError(f"In-capsule data length {len(data):#x} exceeds capsule length {limit:#x}",
                                 P.FES_DATA_TRANSFER_LIMIT_EXCEEDED, 0)
        elif cmd.sgl_length > MAX_IO:
            raise P.PduError(f"SGL length {cmd.sgl_length:#x} exceeds max io size {MAX_IO:#x}",
                             P.FES_DATA_TRANSFER_LIMIT_EXCEEDED, 0)
        if q.qid < 0:
            if cmd.opc != OPC_FABRIC or cmd.fctype != FCTYPE_CONNECT:
                self._complete(q, cmd, Reply(Status(0, SC_COMMAND_SEQUENCE_ERROR, dnr=True)))
                return
            qid = cmd.cdw10 >> 16
            reply, ctrlr = self.target.nvmf_connect(cmd, data, qid, q.port)
            if ctrlr is not None:
                q.qid, q.ctrlr = qid, ctrlr
            self._complete(q, cmd, reply)
            return
        if (q.qid > 0 and cmd.opc == OPC_WRITE and not data and cmd.sgl_type == SGL_TRANSPORT_DATA_BLOCK
                and cmd.sgl_length):
            if cmd.cid in q.writes:
                raise P.PduError(f"command id {cmd.cid} is already outstanding", P.FES_INVALID_HEADER_FIELD, 10)
            ttag = q.next_ttag
            q.next_ttag = q.next_ttag % 0xFFFF + 1
            q.writes[cmd.cid] = _Write(cmd, ttag, bytearray(cmd.sgl_length))
            self._send(q, P.r2t(cmd.cid, ttag, 0, cmd.sgl_length))
            return
        self._execute(q, cmd, data)

    def _h2c(self, q: _Queue, pdu: P.Pdu) -> None:
        cccid, ttag, offset, length = P.parse_data(pdu)
        w = q.writes.get(cccid)
        if w is None or w.ttag != ttag:
            raise P.PduError(f"H2CData for command {cccid} / ttag {ttag}: none outstanding",
                             P.FES_INVALID_HEADER_FIELD, 8)
        if offset != w.received or offset + length > len(w.buf) or length != len(pdu.data):
            raise P.PduError(f"H2CData [{offset}, +{length}) outside the expected data",
                             P.FES_DATA_TRANSFER_OUT_OF_RANGE, 12)
        w.buf[offset:offset + length] = pdu.data
        w.received += length
        if pdu.flags & P.FLAG_DATA_LAST:
            if w.received != len(w.buf):
                raise P.PduError("H2CData LAST_PDU before all data", P.FES_DATA_TRANSFER_OUT_OF_RANGE, 1)
            del q.writes[cccid]
            self._execute(q, w.cmd, bytes(w.buf))

    def _execute(self, q: _Queue, cmd: Command, data: bytes) -> None:
        ctrlr = q.ctrlr
        assert ctrlr is not None
        reply = self.target.nvmf_admin(ctrlr, cmd) if q.qid == 0 else self.target.nvmf_io(ctrlr, cmd, data)
        self._complete(q, cmd, reply)

    def _complete(self, q: _Queue, cmd: Command, reply: Reply) -> None:
        if reply.data and reply.status.ok:
            n = min(len(reply.data), cmd.sgl_length)
            view = memoryview(reply.data)[:n]
            pos = 0
            while pos < n:
                size = min(C2H_CHUNK, n - pos)
                last = pos + size >= n
                flags = (P.FLAG_DATA_LAST | P.FLAG_DATA_SUCCESS) if last else 0
                self._send(q, P.data_pdu(P.C2H_DATA, cmd.cid, 0, pos, view[pos:pos + size], flags))
                pos += size
            if n:
                return
        cpl = Completion(cmd.cid, reply.status, reply.cdw0, reply.cdw1, sqid=max(q.qid, 0))
        self._send(q, P.capsule_resp(cpl.encode()))

