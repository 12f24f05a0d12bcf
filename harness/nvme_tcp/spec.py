"""The NVMe base and NVMe-oF structures the harness speaks: submission and completion entries, status codes,
the Fabrics commands (Connect, Property Get/Set), controller registers and the Identify pages it reads.

Pure byte layouts, no sockets: the initiator (`harness.nvme_tcp.initiator`) builds commands and parses
completions with them, the reference target (`harness.sim.nvmf_tcp`) the other way round. Offsets follow
SPDK's include/spdk/nvme_spec.h and include/spdk/nvmf_spec.h (longhorn-v24.09 @1975133e9: `struct
spdk_nvme_cmd` 64 bytes, `struct spdk_nvme_cpl` 16 bytes, `struct spdk_nvmf_fabric_connect_cmd` and
`_connect_data` (1,024 bytes), `struct spdk_nvme_ctrlr_data` (nvmf_specific at byte 1792: ioccsz, iorcsz,
icdoff), `struct spdk_nvme_ns_data` (lbaf[] at byte 128)), i.e. NVMe Base 1.4 / NVMe-oF 1.1.
"""

from __future__ import annotations

import struct
import uuid as uuid_mod
from dataclasses import dataclass

SQE_SIZE = 64
CQE_SIZE = 16
NQN_FIELD = 256
CONNECT_DATA_SIZE = 1024
IDENTIFY_SIZE = 4096
DYNAMIC_CNTLID = 0xFFFF
"""Connect on the admin queue with cntlid FFFFh: the target picks (SPDK's dynamic controller model)."""
DEFAULT_HOSTNQN = "nqn.2014-08.org.nvmexpress:uuid:6c766f6c-2d73-746f-726d-2d696e697469"

# Admin opcodes (NVMe Base 1.4, figure 139) and the Fabrics opcode.
OPC_IDENTIFY = 0x06
OPC_KEEP_ALIVE = 0x18
OPC_FABRIC = 0x7F
# NVM command set (figure 346).
OPC_FLUSH = 0x00
OPC_WRITE = 0x01
OPC_READ = 0x02
# Fabrics command types (NVMe-oF 1.1, figure 20).
FCTYPE_PROPERTY_SET = 0x00
FCTYPE_CONNECT = 0x01
FCTYPE_PROPERTY_GET = 0x04
# Identify CNS values.
CNS_NAMESPACE = 0x00
CNS_CONTROLLER = 0x01
CNS_ACTIVE_NS_LIST = 0x02
# Controller properties (register offsets).
PROP_CAP = 0x00
PROP_VS = 0x08
PROP_CC = 0x14
PROP_CSTS = 0x1C
CC_ENABLE = 0x1
CC_IOSQES_SHIFT = 16
CC_IOCQES_SHIFT = 20
CC_SHN_NORMAL = 0x1 << 14
CSTS_RDY = 0x1
# PSDT 01b: SGLs, the only data pointer NVMe-oF allows (byte 1 bits 7:6).
PSDT_SGL = 0x40
# SGL descriptor type/subtype byte (type << 4 | subtype): in-capsule data, and data the transport moves.
SGL_DATA_BLOCK_OFFSET = 0x01
SGL_TRANSPORT_DATA_BLOCK = 0x5A

# Status code types and the codes the harness meets (figure 127 ff.).
SCT_GENERIC = 0x0
SCT_COMMAND_SPECIFIC = 0x1
SCT_MEDIA = 0x2
SCT_PATH = 0x3
STATUS_NAMES: dict[tuple[int, int], str] = {
    (SCT_GENERIC, 0x00): "SUCCESS",
    (SCT_GENERIC, 0x01): "INVALID_OPCODE",
    (SCT_GENERIC, 0x02): "INVALID_FIELD",
    (SCT_GENERIC, 0x04): "DATA_TRANSFER_ERROR",
    (SCT_GENERIC, 0x06): "INTERNAL_DEVICE_ERROR",
    (SCT_GENERIC, 0x07): "ABORTED_BY_REQUEST",
    (SCT_GENERIC, 0x08): "ABORTED_SQ_DELETION",
    (SCT_GENERIC, 0x0B): "INVALID_NAMESPACE_OR_FORMAT",
    (SCT_GENERIC, 0x0C): "COMMAND_SEQUENCE_ERROR",
    (SCT_GENERIC, 0x80): "LBA_OUT_OF_RANGE",
    (SCT_GENERIC, 0x81): "CAPACITY_EXCEEDED",
    (SCT_GENERIC, 0x82): "NAMESPACE_NOT_READY",
    (SCT_COMMAND_SPECIFIC, 0x01): "INVALID_QUEUE_IDENTIFIER",
    (SCT_COMMAND_SPECIFIC, 0x80): "CONNECT_INCOMPATIBLE_FORMAT",
    (SCT_COMMAND_SPECIFIC, 0x81): "CONNECT_CONTROLLER_BUSY",
    (SCT_COMMAND_SPECIFIC, 0x82): "CONNECT_INVALID_PARAMETERS",
    (SCT_COMMAND_SPECIFIC, 0x84): "CONNECT_INVALID_HOST",
    (SCT_MEDIA, 0x80): "WRITE_FAULTS",
    (SCT_MEDIA, 0x81): "UNRECOVERED_READ_ERROR",
    (SCT_MEDIA, 0x86): "ACCESS_DENIED",
    (SCT_PATH, 0x00): "INTERNAL_PATH_ERROR",
}
SC_SUCCESS = 0x00
SC_INVALID_OPCODE = 0x01
SC_INVALID_FIELD = 0x02
SC_INTERNAL_DEVICE_ERROR = 0x06
SC_ABORTED_SQ_DELETION = 0x08
SC_INVALID_NAMESPACE_OR_FORMAT = 0x0B
SC_COMMAND_SEQUENCE_ERROR = 0x0C
SC_LBA_OUT_OF_RANGE = 0x80
SC_CONNECT_INVALID_PARAMETERS = 0x82
SC_CONNECT_INVALID_HOST = 0x84

_SQE = struct.Struct("<BBHIQQQIBBBB6I")
"""opc, flags (fuse, psdt), cid, nsid, cdw2-3, mptr, sgl address, sgl length, 3 reserved, sgl type, cdw10-15."""
_CQE = struct.Struct("<IIHHHH")
"""cdw0, cdw1, sqhd, sqid, cid, status (phase bit 0, sc 8:1, sct 11:9, crd 13:12, more 14, dnr 15)."""


@dataclass(frozen=True, slots=True)
class Status:
    """A completion's status field, with its name from the spec's tables."""

    sct: int
    sc: int
    dnr: bool = False

    @property
    def ok(self) -> bool:
        return self.sct == 0 and self.sc == 0

    @property
    def name(self) -> str:
        return STATUS_NAMES.get((self.sct, self.sc), f"SCT{self.sct:#x}/SC{self.sc:#04x}")

    def field(self) -> int:
        """The 16-bit status word (phase bit 0)."""
        return (self.sc << 1) | (self.sct << 9) | (int(self.dnr) << 15)

    @classmethod
    def of_field(cls, word: int) -> Status:
        return cls((word >> 9) & 0x7, (word >> 1) & 0xFF, bool(word >> 15))

    def __str__(self) -> str:
        return self.name


SUCCESS = Status(SCT_GENERIC, SC_SUCCESS)


@dataclass(slots=True)
class Command:
    """A submission queue entry (`struct spdk_nvme_cmd`), SGL in DPTR as NVMe-oF requires."""

    opc: int
    cid: int = 0
    nsid: int = 0
    cdw10: int = 0
    cdw11: int = 0
    cdw12: int = 0
    cdw13: int = 0
    cdw14: int = 0
    cdw15: int = 0
    sgl_type: int = SGL_TRANSPORT_DATA_BLOCK
    sgl_length: int = 0
    sgl_address: int = 0
    flags: int = PSDT_SGL

    def encode(self) -> bytes:
        return _SQE.pack(self.opc, self.flags, self.cid, self.nsid, 0, 0, self.sgl_address, self.sgl_length,
                         0, 0, 0, self.sgl_type, self.cdw10, self.cdw11, self.cdw12, self.cdw13, self.cdw14,
                         self.cdw15)

    @classmethod
    def decode(cls, raw: bytes | memoryview) -> Command:
        (opc, flags, cid, nsid, _c2, _mptr, addr, length, _r1, _r2, _r3, sgl_type, c10, c11, c12, c13, c14,
         c15) = _SQE.unpack_from(raw)
        return cls(opc, cid, nsid, c10, c11, c12, c13, c14, c15, sgl_type, length, addr, flags)

    @property
    def fctype(self) -> int:
        """A Fabrics command's type: byte 4, where other commands have nsid's low byte."""
        return self.nsid & 0xFF

    @property
    def slba(self) -> int:
        return self.cdw10 | (self.cdw11 << 32)

    @property
    def nlb(self) -> int:
        """Blocks, from the 0's based NLB field of cdw12."""
        return (self.cdw12 & 0xFFFF) + 1


@dataclass(frozen=True, slots=True)
class Completion:
    """A completion queue entry (`struct spdk_nvme_cpl`)."""

    cid: int
    status: Status = SUCCESS
    cdw0: int = 0
    cdw1: int = 0
    sqhd: int = 0
    sqid: int = 0

    def encode(self) -> bytes:
        return _CQE.pack(self.cdw0 & 0xFFFFFFFF, self.cdw1 & 0xFFFFFFFF, self.sqhd, self.sqid, self.cid,
                         self.status.field())

    @classmethod
    def decode(cls, raw: bytes | memoryview) -> Completion:
        cdw0, cdw1, sqhd, sqid, cid, word = _CQE.unpack_from(raw)
        return cls(cid, Status.of_field(word), cdw0, cdw1, sqhd, sqid)

    @property
    def value64(self) -> int:
        """A Property Get's value (cdw0 | cdw1 << 32)."""
        return self.cdw0 | (self.cdw1 << 32)


def rw_command(opc: int, nsid: int, slba: int, nblocks: int, nbytes: int, *, in_capsule: bool) -> Command:
    """Read or Write of `nblocks` from `slba` (NLB is 0's based); the data in-capsule (a write that fits) or
    moved by the transport (C2HData for a read, R2T + H2CData for a larger write)."""
    return Command(opc, nsid=nsid, cdw10=slba & 0xFFFFFFFF, cdw11=slba >> 32, cdw12=(nblocks - 1) & 0xFFFF,
                   sgl_type=SGL_DATA_BLOCK_OFFSET if in_capsule else SGL_TRANSPORT_DATA_BLOCK, sgl_length=nbytes)


def flush_command(nsid: int) -> Command:
    return Command(OPC_FLUSH, nsid=nsid, sgl_length=0)


def identify_command(cns: int, nsid: int = 0) -> Command:
    return Command(OPC_IDENTIFY, nsid=nsid, cdw10=cns, sgl_length=IDENTIFY_SIZE)


def connect_command(qid: int, sqsize: int, kato_ms: int = 0) -> Command:
    """Fabrics Connect (`struct spdk_nvmf_fabric_connect_cmd`): recfmt 0, qid at byte 42, the 0's based SQ size
    at 44, kato at 48 (0: no keep alive); its 1,024 bytes of data go in the capsule."""
    cmd = Command(OPC_FABRIC, nsid=FCTYPE_CONNECT, sgl_type=SGL_DATA_BLOCK_OFFSET, sgl_length=CONNECT_DATA_SIZE)
    cmd.cdw10 = (qid << 16) | 0  # recfmt (16 bits) then qid
    cmd.cdw11 = sqsize & 0xFFFF  # sqsize, then cattr and a reserved byte
    cmd.cdw12 = kato_ms
    return cmd


def connect_fields(cmd: Command) -> tuple[int, int, int, int]:
    """(recfmt, qid, sqsize, kato) of a Connect command."""
    return cmd.cdw10 & 0xFFFF, cmd.cdw10 >> 16, cmd.cdw11 & 0xFFFF, cmd.cdw12


def connect_data(subnqn: str, hostnqn: str, cntlid: int, hostid: bytes) -> bytes:
    """`struct spdk_nvmf_fabric_connect_data`: hostid[16], cntlid, subnqn at 256, hostnqn at 512."""
    out = bytearray(CONNECT_DATA_SIZE)
    out[0:16] = hostid[:16].ljust(16, b"\0")
    struct.pack_into("<H", out, 16, cntlid)
    for offset, nqn in ((256, subnqn), (512, hostnqn)):
        raw = nqn.encode()
        if len(raw) >= NQN_FIELD:
            raise ValueError(f"NQN longer than {NQN_FIELD - 1} bytes: {nqn[:40]}...")
        out[offset:offset + len(raw)] = raw
    return bytes(out)


def parse_connect_data(raw: bytes) -> tuple[bytes, int, str, str]:
    """(hostid, cntlid, subnqn, hostnqn) of Connect data."""
    if len(raw) < CONNECT_DATA_SIZE:
        raise ValueError(f"Connect data is {len(raw)} bytes, expected {CONNECT_DATA_SIZE}")
    (cntlid,) = struct.unpack_from("<H", raw, 16)
    return bytes(raw[0:16]), cntlid, _cstr(raw[256:512]), _cstr(raw[512:768])


def property_get_command(offset: int, size8: bool) -> Command:
    """Property Get (`struct spdk_nvmf_fabric_prop_get_cmd`): attrib.size at byte 40 (1: 8 bytes), ofst at 44."""
    return Command(OPC_FABRIC, nsid=FCTYPE_PROPERTY_GET, cdw10=int(size8), cdw11=offset, sgl_length=0)


def property_set_command(offset: int, value: int, size8: bool = False) -> Command:
    """Property Set: attrib at 40, ofst at 44, the value at 48."""
    return Command(OPC_FABRIC, nsid=FCTYPE_PROPERTY_SET, cdw10=int(size8), cdw11=offset,
                   cdw12=value & 0xFFFFFFFF, cdw13=value >> 32, sgl_length=0)


def cc_enable_value() -> int:
    """CC with EN=1, IOSQES=6 (64-byte SQEs) and IOCQES=4 (16-byte CQEs): what SPDK checks before it takes an
    I/O queue's Connect (ctrlr.c nvmf_ctrlr_add_io_qpair)."""
    return CC_ENABLE | (6 << CC_IOSQES_SHIFT) | (4 << CC_IOCQES_SHIFT)


def _cstr(raw: bytes | memoryview) -> str:
    data = bytes(raw)
    end = data.find(b"\0")
    return (data if end < 0 else data[:end]).decode("utf-8", "replace").rstrip(" ")


@dataclass(frozen=True)
class ControllerData:
    """The Identify Controller fields the harness uses."""

    serial: str
    model: str
    firmware: str
    mdts: int
    cntlid: int
    nn: int
    subnqn: str
    ioccsz: int
    iorcsz: int
    icdoff: int

    @property
    def in_capsule_bytes(self) -> int:
        """Most write data a capsule may carry: IOCCSZ (16-byte units) less the 64-byte SQE."""
        return max(0, self.ioccsz * 16 - SQE_SIZE)

    @classmethod
    def parse(cls, raw: bytes) -> ControllerData:
        if len(raw) < IDENTIFY_SIZE:
            raise ValueError(f"Identify Controller data is {len(raw)} bytes, expected {IDENTIFY_SIZE}")
        (cntlid,) = struct.unpack_from("<H", raw, 78)
        (nn,) = struct.unpack_from("<I", raw, 516)
        ioccsz, iorcsz, icdoff = struct.unpack_from("<IIH", raw, 1792)
        return cls(_cstr(raw[4:24]), _cstr(raw[24:64]), _cstr(raw[64:72]), raw[77], cntlid, nn,
                   _cstr(raw[768:1024]), ioccsz, iorcsz, icdoff)

    def encode(self) -> bytes:
        out = bytearray(IDENTIFY_SIZE)
        out[4:24] = self.serial.encode()[:20].ljust(20, b" ")
        out[24:64] = self.model.encode()[:40].ljust(40, b" ")
        out[64:72] = self.firmware.encode()[:8].ljust(8, b" ")
        out[77] = self.mdts
        struct.pack_into("<H", out, 78, self.cntlid)
        struct.pack_into("<I", out, 80, 0x00010300)  # VER 1.3
        out[512] = 0x66  # SQES: 64 bytes required and maximum
        out[513] = 0x44  # CQES: 16 bytes
        struct.pack_into("<I", out, 516, self.nn)
        sub = self.subnqn.encode()[:NQN_FIELD - 1]
        out[768:768 + len(sub)] = sub
        struct.pack_into("<IIH", out, 1792, self.ioccsz, self.iorcsz, self.icdoff)
        return bytes(out)


@dataclass(frozen=True)
class NamespaceData:
    """The Identify Namespace fields the harness uses: size in blocks and the block size of the format in use.
    An inactive nsid returns all zeroes (nsze 0)."""

    nsze: int
    ncap: int
    nuse: int
    block_size: int
    nguid: bytes = b"\0" * 16

    @property
    def active(self) -> bool:
        return self.nsze > 0

    @classmethod
    def parse(cls, raw: bytes) -> NamespaceData:
        if len(raw) < IDENTIFY_SIZE:
            raise ValueError(f"Identify Namespace data is {len(raw)} bytes, expected {IDENTIFY_SIZE}")
        nsze, ncap, nuse = struct.unpack_from("<QQQ", raw, 0)
        flbas = raw[26] & 0x0F
        lbads = raw[128 + 4 * flbas + 2]
        return cls(nsze, ncap, nuse, (1 << lbads) if nsze else 0, bytes(raw[104:120]))

    def encode(self) -> bytes:
        out = bytearray(IDENTIFY_SIZE)
        struct.pack_into("<QQQ", out, 0, self.nsze, self.ncap, self.nuse)
        if self.nsze:
            out[25] = 0  # NLBAF: one format (0's based)
            out[26] = 0  # FLBAS: format 0
            out[104:120] = self.nguid[:16].ljust(16, b"\0")
            out[128 + 2] = max(0, self.block_size.bit_length() - 1)
        return bytes(out)


def parse_ns_list(raw: bytes) -> list[int]:
    """An Identify Active Namespace ID list: up to 1,024 nsids, ascending, ended by a zero."""
    out = []
    for (nsid,) in struct.iter_unpack("<I", raw[:IDENTIFY_SIZE]):
        if nsid == 0:
            break
        out.append(nsid)
    return out


def encode_ns_list(nsids: list[int], above: int = 0) -> bytes:
    """The active nsids greater than `above`, ascending, as Identify CNS 02h returns them."""
    picked = sorted(n for n in nsids if n > above)[: IDENTIFY_SIZE // 4]
    return struct.pack(f"<{len(picked)}I", *picked).ljust(IDENTIFY_SIZE, b"\0")


def host_id(seed: str) -> bytes:
    """A stable 16-byte host identifier from a name (Connect data's hostid)."""
    return uuid_mod.uuid5(uuid_mod.NAMESPACE_URL, seed).bytes
