import struct
from ipaddress import IPv4Address

import pytest

from mcr.packet.build import build_udp_frame
from mcr.packet.cbpf import (
    ACCEPT,
    BPF_MAXINSNS,
    PACKET_OUTGOING,
    Insn,
    Op,
    build_capture_filter,
    coarse_filter,
    pack_program,
    run_program,
)

G1 = int(IPv4Address("239.1.1.1"))
G2 = int(IPv4Address("239.1.1.2"))


def frame(group: int = G1, port: int = 5001, **kw: object) -> bytes:
    return build_udp_frame(src_ip="10.0.0.1", dst_ip=IPv4Address(group), dst_port=port, payload=b"x" * 20, **kw)  # type: ignore[arg-type]


def test_pack() -> None:
    assert pack_program([Insn(Op.RET_K, 0, 0, 7)]) == struct.pack("=HBBI", 6, 0, 0, 7)
    assert len(pack_program(build_capture_filter({G1: {1}}))) % 8 == 0


@pytest.mark.parametrize(
    ("raw", "pkttype", "accepted"),
    [
        (frame(), 0, True),
        (frame(), 2, True),  # PACKET_MULTICAST
        (frame(), PACKET_OUTGOING, False),
        (frame(port=5002), 0, False),
        (frame(group=G2), 0, False),
        (frame(ethertype=0x86DD), 0, False),
        (frame(more_fragments=True), 0, True),
        (frame(fragment_offset=100), 0, True),
        (frame(group=G2, more_fragments=True), 0, False),
        (frame(protocol=6), 0, True),
        (frame(ip_options=b"\x01" * 8), 0, True),
        (frame(ip_options=b"\x01" * 40, port=5002), 0, False),
        (frame()[:30], 0, False),
    ],
)
def test_single_flow(raw: bytes, pkttype: int, accepted: bool) -> None:
    assert (run_program(build_capture_filter({G1: {5001}}), raw, pkttype) == ACCEPT) is accepted


def test_empty_mapping_drops_everything() -> None:
    assert run_program(build_capture_filter({}), frame()) == 0


@pytest.mark.parametrize(("groups", "ports"), [(1, 2), (2, 25), (50, 1), (300, 1), (3, 400), (1, 1000)])
def test_large_mappings_are_exact(groups: int, ports: int) -> None:
    mapping = {G1 + g: {1000 + p * 3 for p in range(ports)} for g in range(groups)}
    program = build_capture_filter(mapping)
    assert len(program) <= BPF_MAXINSNS
    for g in (0, groups // 2, groups - 1):
        for p in (0, ports // 2, ports - 1):
            assert run_program(program, frame(G1 + g, 1000 + p * 3)) == ACCEPT
            assert run_program(program, frame(G1 + g, 1001 + p * 3)) == 0
    assert run_program(program, frame(G1 + groups, 1000)) == 0


def test_falls_back_to_the_coarse_filter_beyond_the_limit() -> None:
    mapping = {G1 + g: {5000} for g in range(3000)}
    program = build_capture_filter(mapping)
    assert program == coarse_filter()
    assert run_program(program, frame(G1 + 7, 5000)) == ACCEPT
    assert run_program(program, frame(int(IPv4Address("10.1.2.3")), 5000)) == 0
    assert run_program(program, frame(), PACKET_OUTGOING) == 0


def test_interpreter_rejects_bad_programs() -> None:
    with pytest.raises(ValueError, match="unsupported opcode"):
        run_program([Insn(0x99)], frame())
    with pytest.raises(ValueError, match="outside the program"):
        run_program([Insn(Op.JA, k=5)], frame())
