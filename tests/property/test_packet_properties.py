from ipaddress import IPv4Address

from hypothesis import given
from hypothesis import strategies as st

from mcr.packet.build import build_udp_frame
from mcr.packet.cbpf import ACCEPT, PACKET_OUTGOING, build_capture_filter, run_program
from mcr.packet.parse import DropReason, parse_frame

groups = st.integers(min_value=0xE0000000, max_value=0xEFFFFFFF)
ports = st.integers(min_value=1, max_value=65535)


@given(st.binary(max_size=2000), st.integers(min_value=0, max_value=64))
def test_parser_never_raises(data: bytes, offset: int) -> None:
    offset = min(offset, len(data))
    reason, _key, off, length = parse_frame(data, offset, len(data) - offset)
    assert reason in set(DropReason)
    if reason == 0:
        assert offset <= off and off + length <= len(data)


@given(groups, ports, st.binary(max_size=1500), st.sampled_from([b"", b"\x01" * 4, b"\x00" * 40]))
def test_build_parse_round_trip(group: int, port: int, payload: bytes, options: bytes) -> None:
    f = build_udp_frame(
        src_ip="10.1.1.1", dst_ip=IPv4Address(group), dst_port=port, payload=payload, ip_options=options
    )
    reason, key, off, length = parse_frame(f, 0, len(f))
    assert (reason, key) == (0, (group << 16) | port)
    assert f[off : off + length] == payload


def expected(mapping: dict[int, set[int]], group: int, port: int, kind: str, pkttype: int) -> bool:
    if pkttype == PACKET_OUTGOING or group not in mapping:
        return False
    return kind != "udp" or port in mapping[group]


@given(
    st.dictionaries(groups, st.sets(ports, min_size=1, max_size=5), max_size=30),
    st.data(),
    st.sampled_from(["udp", "fragment", "tcp"]),
    st.sampled_from([0, 1, 2, 3, PACKET_OUTGOING]),
)
def test_filter_matches_reference(mapping: dict[int, set[int]], data: st.DataObject, kind: str, pkttype: int) -> None:
    group = data.draw(st.sampled_from(sorted(mapping)) if mapping and data.draw(st.booleans()) else groups)
    port = data.draw(
        st.sampled_from(sorted(mapping[group])) if group in mapping and data.draw(st.booleans()) else ports
    )
    f = build_udp_frame(
        src_ip="10.1.1.1",
        dst_ip=IPv4Address(group),
        dst_port=port,
        payload=b"p",
        more_fragments=kind == "fragment",
        protocol=6 if kind == "tcp" else 17,
    )
    accepted = run_program(build_capture_filter(mapping), f, pkttype) == ACCEPT
    assert accepted == expected(mapping, group, port, kind, pkttype)
