"""Properties of the PIM codec: the parser is total, and build -> parse is the identity."""

from ipaddress import IPv4Address, IPv6Address

from hypothesis import given
from hypothesis import strategies as st

from mcr.routing.pim_wire import (
    Assert,
    EncodedGroup,
    EncodedSource,
    Hello,
    IPAddress,
    JoinPrune,
    JoinPruneGroup,
    LanPruneDelay,
    PimDrop,
    PimMessage,
    Register,
    RegisterStop,
    build_pim,
    build_pim6,
    parse_pim,
    parse_pim6,
)

u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
v4 = st.integers(0, 0xFFFFFFFF).map(IPv4Address)
v6 = st.integers(0, (1 << 128) - 1).map(IPv6Address)


@st.composite
def family(draw: st.DrawFn) -> tuple[st.SearchStrategy[IPAddress], int]:
    return (v4, 32) if draw(st.booleans()) else (v6, 128)


@st.composite
def messages(draw: st.DrawFn) -> PimMessage:
    addrs, bits = draw(family())
    groups = st.builds(EncodedGroup, addrs, st.integers(0, bits), st.booleans(), st.booleans())
    sources = st.builds(EncodedSource, addrs, st.integers(0, bits), st.booleans(), st.booleans(), st.booleans())
    kind = draw(st.sampled_from(["hello", "jp", "register", "stop", "assert"]))
    if kind == "hello":
        delay = st.builds(LanPruneDelay, st.booleans(), st.integers(0, 0x7FFF), u16)
        return Hello(
            draw(st.none() | u16),
            draw(st.none() | u32),
            draw(st.none() | u32),
            draw(st.none() | delay),
            tuple(draw(st.lists(addrs, max_size=3))),
        )
    if kind == "jp":
        jp_group = st.builds(
            JoinPruneGroup,
            groups,
            st.lists(sources, max_size=3).map(tuple),
            st.lists(sources, max_size=3).map(tuple),
        )
        return JoinPrune(draw(addrs), draw(u16), tuple(draw(st.lists(jp_group, max_size=4))))
    if kind == "register":
        return Register(draw(st.booleans()), draw(st.booleans()), draw(st.binary(max_size=64)))
    if kind == "stop":
        return RegisterStop(draw(groups), draw(addrs))
    return Assert(draw(groups), draw(addrs), draw(st.booleans()), draw(st.integers(0, 0x7FFFFFFF)), draw(u32))


@given(messages())
def test_build_then_parse_is_identity(msg: PimMessage) -> None:
    assert parse_pim(build_pim(msg)) == msg


@given(st.binary(max_size=120), st.integers(0, 0xFFFF))
def test_parser_never_raises(data: bytes, pseudo: int) -> None:
    result = parse_pim(data, pseudo)
    assert isinstance(result, PimDrop | Hello | JoinPrune | Register | RegisterStop | Assert)


@given(messages(), st.data())
def test_any_corruption_is_a_drop_or_a_message(msg: PimMessage, data: st.DataObject) -> None:
    raw = bytearray(build_pim(msg))
    at = data.draw(st.integers(0, len(raw) - 1))
    raw[at] ^= data.draw(st.integers(1, 255))
    cut = data.draw(st.integers(0, len(raw)))
    result = parse_pim(bytes(raw[:cut]))
    assert isinstance(result, PimDrop | Hello | JoinPrune | Register | RegisterStop | Assert)


# ------------------------------------------------------------------------------ IPv6: the pseudo-header


@given(messages(), v6, v6)
def test_ipv6_build_then_parse_is_identity(msg: PimMessage, source: IPv6Address, destination: IPv6Address) -> None:
    assert parse_pim6(build_pim6(msg, source, destination), source, destination) == msg


@given(st.binary(max_size=120), v6, v6)
def test_ipv6_parser_never_raises(data: bytes, source: IPv6Address, destination: IPv6Address) -> None:
    result = parse_pim6(data, source, destination)
    assert isinstance(result, PimDrop | Hello | JoinPrune | Register | RegisterStop | Assert)


@given(messages(), v6, v6, v6)
def test_ipv6_checksum_covers_the_addresses(
    msg: PimMessage, source: IPv6Address, destination: IPv6Address, other: IPv6Address
) -> None:
    """A message checksummed for other addresses is dropped (unless the sums happen to agree: same sum)."""
    raw = build_pim6(msg, source, destination)
    same_sum = build_pim6(msg, other, destination)[2:4] == raw[2:4]
    assert parse_pim6(raw, other, destination) == (msg if same_sum else PimDrop.BAD_CHECKSUM)


@given(st.booleans(), st.booleans(), st.binary(max_size=64), st.binary(min_size=1, max_size=64), v6, v6)
def test_ipv6_register_checksum_covers_its_first_8_bytes_only(
    border: bool, null: bool, data: bytes, other: bytes, source: IPv6Address, destination: IPv6Address
) -> None:
    raw = build_pim6(Register(border, null, data), source, destination)
    assert parse_pim6(raw[:8] + other, source, destination) == Register(border, null, other)
