"""MSDP codec and framer: byte layout, totality, and any split of a stream decodes alike."""

from ipaddress import IPv4Address

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mcr.routing.msdp_wire import (
    FramingError,
    Keepalive,
    MsdpDrop,
    MsdpFramer,
    MsdpMessage,
    SaEntry,
    SourceActive,
    build_msdp,
)

v4 = st.integers(0, 0xFFFFFFFF).map(IPv4Address)
groups = st.integers(0xE0000000, 0xEFFFFFFF).map(IPv4Address)
entries = st.builds(SaEntry, v4, groups)
messages = st.one_of(
    st.just(Keepalive()),
    st.builds(SourceActive, v4, st.lists(entries, min_size=1, max_size=5).map(tuple), st.binary(max_size=40)),
)


def test_sa_bytes() -> None:
    sa = SourceActive(IPv4Address("10.0.0.1"), (SaEntry(IPv4Address("10.5.5.5"), IPv4Address("239.1.1.1")),))
    raw = build_msdp(sa)
    assert raw == bytes.fromhex("010014" + "01" + "0a000001" + "00000020" + "ef010101" + "0a050505")
    assert MsdpFramer().feed(raw) == [sa]
    assert build_msdp(Keepalive()) == b"\x04\x00\x03"


@pytest.mark.parametrize(
    ("raw", "result"),
    [
        (b"\x02\x00\x08\x20\xef\x01\x01\x01", [MsdpDrop.UNSUPPORTED_TYPE]),  # SA-Request: skipped, session goes on
        (b"\x01\x00\x08\x00\x0a\x00\x00\x01", [MsdpDrop.BAD_SA]),  # no entries
        (bytes.fromhex("010014010a00000100000018ef0101010a050505"), [MsdpDrop.BAD_SA]),  # prefix length 24
        (bytes.fromhex("010014010a00000100000020" + "0a010101" + "0a050505"), [MsdpDrop.BAD_SA]),  # unicast group
    ],
)
def test_drops(raw: bytes, result: list[object]) -> None:
    assert MsdpFramer().feed(raw + build_msdp(Keepalive())) == [*result, Keepalive()]


@pytest.mark.parametrize("raw", [b"\x04\x00\x04\x00", b"\x01\x00\x02", b"\x01\x24\x00"])
def test_impossible_lengths_end_the_stream(raw: bytes) -> None:
    with pytest.raises(FramingError):
        MsdpFramer().feed(raw)


@given(st.lists(messages, max_size=6), st.data())
def test_any_split_decodes_to_the_same_messages(msgs: list[MsdpMessage], data: st.DataObject) -> None:
    stream = b"".join(build_msdp(m) for m in msgs)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    framer = MsdpFramer()
    got: list[object] = []
    last = 0
    for cut in [*cuts, len(stream)]:
        got += framer.feed(stream[last:cut])
        last = cut
    assert got == msgs


@given(st.binary(max_size=200))
def test_framer_never_raises_anything_but_framing_error(data: bytes) -> None:
    try:
        for item in MsdpFramer().feed(data):
            assert isinstance(item, SourceActive | Keepalive | MsdpDrop)
    except FramingError:
        pass
