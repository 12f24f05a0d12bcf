"""The NVMe and NVMe/TCP byte layouts, checked against the offsets SPDK's nvme_spec.h / nvmf_spec.h assert
(`SPDK_STATIC_ASSERT(offsetof(...))`), and the PDU splitter's refusals."""

from __future__ import annotations

import struct

import pytest

from harness.nvme_tcp import pdu as P
from harness.nvme_tcp.spec import (
    OPC_READ,
    OPC_WRITE,
    SGL_DATA_BLOCK_OFFSET,
    SGL_TRANSPORT_DATA_BLOCK,
    Command,
    Completion,
    ControllerData,
    NamespaceData,
    Status,
    cc_enable_value,
    connect_command,
    connect_data,
    connect_fields,
    encode_ns_list,
    parse_connect_data,
    parse_ns_list,
    property_set_command,
    rw_command,
)


def test_sqe_offsets_are_spdk_nvme_cmd() -> None:
    raw = rw_command(OPC_WRITE, nsid=7, slba=0x1_0000_0002, nblocks=3, nbytes=12288, in_capsule=False).encode()
    assert len(raw) == 64
    assert raw[0] == OPC_WRITE and raw[1] == 0x40  # PSDT 01b: SGL
    assert struct.unpack_from("<I", raw, 4)[0] == 7
    assert struct.unpack_from("<QI", raw, 24) == (0, 12288)  # dptr.sgl1 address, length
    assert raw[39] == SGL_TRANSPORT_DATA_BLOCK
    assert struct.unpack_from("<III", raw, 40) == (2, 1, 2)  # SLBA low, high, NLB 0's based
    back = Command.decode(raw)
    assert (back.slba, back.nlb, back.nsid, back.sgl_length) == (0x1_0000_0002, 3, 7, 12288)
    assert rw_command(OPC_READ, 1, 0, 1, 4096, in_capsule=True).encode()[39] == SGL_DATA_BLOCK_OFFSET


def test_connect_command_and_data_layout() -> None:
    raw = connect_command(qid=3, sqsize=31, kato_ms=0).encode()
    assert raw[0] == 0x7F and raw[4] == 0x01  # fabric opcode, fctype connect
    assert struct.unpack_from("<HHH", raw, 40) == (0, 3, 31)  # recfmt, qid, sqsize
    assert connect_fields(Command.decode(raw)) == (0, 3, 31, 0)
    data = connect_data("nqn.2016-06.io.spdk:a", "nqn.host", 0xFFFF, b"h" * 16)
    assert len(data) == 1024 and data[16:18] == b"\xff\xff"
    assert data[256:277] == b"nqn.2016-06.io.spdk:a" and data[277] == 0
    assert parse_connect_data(data) == (b"h" * 16, 0xFFFF, "nqn.2016-06.io.spdk:a", "nqn.host")
    with pytest.raises(ValueError, match="NQN longer"):
        connect_data("n" * 256, "h", 1, b"")


def test_property_set_cc_and_completion_status() -> None:
    cmd = property_set_command(0x14, cc_enable_value())
    raw = cmd.encode()
    assert raw[4] == 0x00 and struct.unpack_from("<I", raw, 44)[0] == 0x14
    assert struct.unpack_from("<Q", raw, 48)[0] == 0x460001  # EN, IOSQES 6, IOCQES 4
    cpl = Completion(cid=9, status=Status(0, 0x80, dnr=True), cdw0=5, sqid=1)
    enc = cpl.encode()
    assert len(enc) == 16 and struct.unpack_from("<H", enc, 12)[0] == 9
    back = Completion.decode(enc)
    assert back.status.name == "LBA_OUT_OF_RANGE" and back.status.dnr and not back.status.ok
    assert Status.of_field(0).ok and Status(0, 0x0B).name == "INVALID_NAMESPACE_OR_FORMAT"


def test_identify_pages_round_trip_at_spdk_offsets() -> None:
    ctrl = ControllerData("SN", "SPDK bdev Controller", "24.09.1", 5, 1, 64, "nqn.x", 260, 1, 0)
    raw = ctrl.encode()
    assert struct.unpack_from("<I", raw, 1792)[0] == 260 and raw[77] == 5
    assert ControllerData.parse(raw) == ctrl and ctrl.in_capsule_bytes == 4096
    ns = NamespaceData(2048, 2048, 2048, 4096, b"g" * 16)
    back = NamespaceData.parse(ns.encode())
    assert back == ns and back.active
    assert not NamespaceData.parse(NamespaceData(0, 0, 0, 0).encode()).active
    assert parse_ns_list(encode_ns_list([9, 3, 5], above=3)) == [5, 9]


def test_pdus_split_from_a_stream_in_any_chunking() -> None:
    stream = (P.capsule_cmd(bytes(64), b"x" * 100) + P.r2t(4, 7, 0, 8192)
              + P.data_pdu(P.C2H_DATA, 4, 0, 4096, b"y" * 10, P.FLAG_DATA_LAST | P.FLAG_DATA_SUCCESS))
    for step in (1, 7, 64, len(stream)):
        reader = P.PduReader()
        got: list[P.Pdu] = []
        for i in range(0, len(stream), step):
            got += reader.feed(stream[i:i + step])
        assert [p.type for p in got] == [P.CAPSULE_CMD, P.R2T, P.C2H_DATA]
        assert got[0].data == b"x" * 100 and len(got[0].header) == 72
        assert P.parse_data(got[1]) == (4, 7, 0, 8192)
        assert P.parse_data(got[2]) == (4, 0, 4096, 10) and got[2].data == b"y" * 10
    ic = P.PduReader().feed(P.ic_req(hpda=0, maxr2t=0))[0]
    assert len(ic.header) == 128 and P.parse_ic(ic) == (0, 0, 0, 0)


@pytest.mark.parametrize("bad, fes_offset", [
    (bytes([0x0B, 0, 8, 0, 8, 0, 0, 0]), 0),  # unknown type
    (bytes([P.CAPSULE_RESP, 0, 23, 0, 24, 0, 0, 0]), 2),  # wrong HLEN
    (bytes([P.CAPSULE_RESP, P.FLAG_HDGSTF, 24, 0, 24, 0, 0, 0]), 1),  # digest never negotiated
    (bytes([P.C2H_DATA, 0, 24, 8, 40, 0, 0, 0]), 3),  # PDO inside the header
])
def test_pdu_reader_refuses_broken_headers(bad: bytes, fes_offset: int) -> None:
    with pytest.raises(P.PduError) as info:
        P.PduReader().feed(bad + bytes(64))
    assert info.value.offset == fes_offset
