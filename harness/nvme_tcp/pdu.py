"""NVMe/TCP 1.0 PDUs (NVMe/TCP Transport Specification 1.0, section 3.3; SPDK's include/spdk/nvmf_spec.h
`struct spdk_nvme_tcp_*`): the 8-byte common header, ICReq/ICResp, CapsuleCmd/CapsuleResp, H2CData/C2HData,
R2T and the two TermReqs, encoded and split out of a byte stream.

Digests are never negotiated here (the harness asks for none, and its reference target grants none), so a PDU
is `hlen` header bytes, padding up to `pdo`, then data up to `plen`. `PduReader` cuts a stream into PDUs without
copying more than it must; both the initiator and the reference target use it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from harness.nvme_tcp.spec import CQE_SIZE, SQE_SIZE

COMMON_SIZE = 8
IC_SIZE = 128
CAPSULE_CMD_HLEN = COMMON_SIZE + SQE_SIZE  # 72
CAPSULE_RESP_HLEN = COMMON_SIZE + CQE_SIZE  # 24
DATA_HLEN = 24  # H2CData, C2HData, R2T
TERM_HLEN = 24
TERM_MAX_DATA = 128
"""A TermReq carries at most 128 bytes of the offending PDU's header (SPDK_NVME_TCP_TERM_REQ_ERROR_DATA_MAX_SIZE)."""
MAX_PLEN = 1 << 24
"""The largest PDU either side accepts: a capsule with 8 KiB in-capsule data or 128 KiB of data is far below."""

IC_REQ = 0x00
IC_RESP = 0x01
H2C_TERM_REQ = 0x02
C2H_TERM_REQ = 0x03
CAPSULE_CMD = 0x04
CAPSULE_RESP = 0x05
H2C_DATA = 0x06
C2H_DATA = 0x07
R2T = 0x09
PDU_NAMES = {IC_REQ: "ICReq", IC_RESP: "ICResp", H2C_TERM_REQ: "H2CTermReq", C2H_TERM_REQ: "C2HTermReq",
             CAPSULE_CMD: "CapsuleCmd", CAPSULE_RESP: "CapsuleResp", H2C_DATA: "H2CData", C2H_DATA: "C2HData",
             R2T: "R2T"}
HEADER_LENGTHS = {IC_REQ: IC_SIZE, IC_RESP: IC_SIZE, H2C_TERM_REQ: TERM_HLEN, C2H_TERM_REQ: TERM_HLEN,
                  CAPSULE_CMD: CAPSULE_CMD_HLEN, CAPSULE_RESP: CAPSULE_RESP_HLEN, H2C_DATA: DATA_HLEN,
                  C2H_DATA: DATA_HLEN, R2T: DATA_HLEN}
"""What `hlen` must be for each type (no header digest)."""

FLAG_HDGSTF = 0x01
FLAG_DDGSTF = 0x02
FLAG_DATA_LAST = 0x04
"""H2CData/C2HData: the last PDU of the command's data."""
FLAG_DATA_SUCCESS = 0x08
"""C2HData: the command succeeded and no CapsuleResp follows (SPDK's c2h_success optimization)."""

# TermReq fatal error status (NVMe/TCP 1.0 figure 24; spdk_nvme_tcp_term_req_fes).
FES_INVALID_HEADER_FIELD = 0x01
FES_PDU_SEQUENCE_ERROR = 0x02
FES_DATA_TRANSFER_OUT_OF_RANGE = 0x04
FES_DATA_TRANSFER_LIMIT_EXCEEDED = 0x05
FES_UNSUPPORTED_PARAMETER = 0x06

_COMMON = struct.Struct("<BBBBI")
_IC = struct.Struct("<HBBI")  # pfv, hpda|cpda, dgst, maxr2t|maxh2cdata (after the common header)
_DATA = struct.Struct("<HHII")  # cccid, ttag (H2C, R2T; reserved in C2H), datao|r2to, datal|r2tl
_TERM = struct.Struct("<HI")  # fes, fei


class PduError(Exception):
    """The stream broke NVMe/TCP's rules: `fes` is the TermReq status to answer with, `offset` the byte of the
    header that is wrong (TermReq FEI)."""

    def __init__(self, message: str, fes: int = FES_INVALID_HEADER_FIELD, offset: int = 0) -> None:
        super().__init__(message)
        self.fes = fes
        self.offset = offset


@dataclass(frozen=True, slots=True)
class Pdu:
    """One PDU: its type and flags, the whole header (common header included) and its data."""

    type: int
    flags: int
    header: bytes
    data: bytes

    @property
    def name(self) -> str:
        return PDU_NAMES.get(self.type, f"PDU{self.type:#x}")


def _common(pdu_type: int, flags: int, hlen: int, pdo: int, plen: int) -> bytes:
    return _COMMON.pack(pdu_type, flags, hlen, pdo, plen)


def ic_req(hpda: int = 0, maxr2t: int = 0) -> bytes:
    """ICReq: PFV 0, no digests; MAXR2T is 0's based (0: one R2T outstanding per command)."""
    return (_common(IC_REQ, 0, IC_SIZE, 0, IC_SIZE) + _IC.pack(0, hpda, 0, maxr2t)).ljust(IC_SIZE, b"\0")


def ic_resp(cpda: int = 0, maxh2cdata: int = 131072) -> bytes:
    return (_common(IC_RESP, 0, IC_SIZE, 0, IC_SIZE) + _IC.pack(0, cpda, 0, maxh2cdata)).ljust(IC_SIZE, b"\0")


def parse_ic(pdu: Pdu) -> tuple[int, int, int, int]:
    """(pfv, hpda or cpda, dgst, maxr2t or maxh2cdata) of an ICReq / ICResp."""
    pfv, pda, dgst, last = _IC.unpack_from(pdu.header, COMMON_SIZE)
    return pfv, pda, dgst, last


def capsule_cmd(sqe: bytes, data: bytes = b"") -> bytes:
    """CapsuleCmd with the SQE and any in-capsule data right after the header (PDO = HLEN: CPDA 0)."""
    plen = CAPSULE_CMD_HLEN + len(data)
    return _common(CAPSULE_CMD, 0, CAPSULE_CMD_HLEN, CAPSULE_CMD_HLEN if data else 0, plen) + sqe + data


def capsule_resp(cqe: bytes) -> bytes:
    return _common(CAPSULE_RESP, 0, CAPSULE_RESP_HLEN, 0, CAPSULE_RESP_HLEN) + cqe


def data_pdu(pdu_type: int, cccid: int, ttag: int, datao: int, data: bytes | memoryview, flags: int = 0) -> bytes:
    """H2CData (with the R2T's ttag) or C2HData (ttag reserved): the data right after the 24-byte header."""
    plen = DATA_HLEN + len(data)
    return (_common(pdu_type, flags, DATA_HLEN, DATA_HLEN, plen) + _DATA.pack(cccid, ttag, datao, len(data))
            + b"\0" * 4 + bytes(data))


def r2t(cccid: int, ttag: int, offset: int, length: int) -> bytes:
    return _common(R2T, 0, DATA_HLEN, 0, DATA_HLEN) + _DATA.pack(cccid, ttag, offset, length) + b"\0" * 4


def parse_data(pdu: Pdu) -> tuple[int, int, int, int]:
    """(cccid, ttag, offset, length) of an H2CData, C2HData or R2T."""
    cccid, ttag, offset, length = _DATA.unpack_from(pdu.header, COMMON_SIZE)
    return cccid, ttag, offset, length


def term_req(pdu_type: int, fes: int, fei: int, offending: bytes = b"") -> bytes:
    """H2C or C2H TermReq: the fatal error, the field it is in, and up to 128 bytes of the offending header."""
    data = offending[:TERM_MAX_DATA]
    plen = TERM_HLEN + len(data)
    return (_common(pdu_type, 0, TERM_HLEN, TERM_HLEN if data else 0, plen) + _TERM.pack(fes, fei)
            + b"\0" * 10 + data)


def parse_term(pdu: Pdu) -> tuple[int, int]:
    """(fes, fei) of a TermReq."""
    fes, fei = _TERM.unpack_from(pdu.header, COMMON_SIZE)
    return fes, fei


class PduReader:
    """Cuts a byte stream into PDUs; `feed(data)` returns the PDUs completed by it (a partial PDU waits).

    Checks what any PDU must satisfy before its data is trusted: a known type, its type's header length, PDO
    within [HLEN, PLEN] for a PDU with data, PLEN within bounds; a violation is a PduError."""

    def __init__(self, max_plen: int = MAX_PLEN) -> None:
        self.buf = bytearray()
        self.max_plen = max_plen

    def feed(self, data: bytes) -> list[Pdu]:
        buf = self.buf
        buf += data
        out: list[Pdu] = []
        pos = 0
        n = len(buf)
        while n - pos >= COMMON_SIZE:
            pdu_type, flags, hlen, pdo, plen = _COMMON.unpack_from(buf, pos)
            want = HEADER_LENGTHS.get(pdu_type)
            if want is None:
                raise PduError(f"unknown PDU type {pdu_type:#x}", FES_INVALID_HEADER_FIELD, 0)
            if flags & (FLAG_HDGSTF | FLAG_DDGSTF):
                raise PduError(f"{PDU_NAMES[pdu_type]} with a digest flag set, none was negotiated",
                               FES_INVALID_HEADER_FIELD, 1)
            if hlen != want:
                raise PduError(f"{PDU_NAMES[pdu_type]} HLEN {hlen}, expected {want}", FES_INVALID_HEADER_FIELD, 2)
            if plen < hlen or plen > self.max_plen:
                raise PduError(f"{PDU_NAMES[pdu_type]} PLEN {plen} outside [{hlen}, {self.max_plen}]",
                               FES_INVALID_HEADER_FIELD, 4)
            if plen > hlen and not hlen <= pdo <= plen:
                raise PduError(f"{PDU_NAMES[pdu_type]} PDO {pdo} outside [{hlen}, {plen}]",
                               FES_INVALID_HEADER_FIELD, 3)
            if n - pos < plen:
                break
            header = bytes(buf[pos:pos + hlen])
            payload = bytes(buf[pos + pdo:pos + plen]) if plen > hlen else b""
            out.append(Pdu(pdu_type, flags, header, payload))
            pos += plen
        if pos:
            del buf[:pos]
        return out
