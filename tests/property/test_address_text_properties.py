"""`address_text` writes an address exactly as `str()` does, whatever its runs of zero hextets: rule listings,
stats, metrics and the state file are byte for byte what they were when `ipaddress` formatted them."""

from ipaddress import IPv4Address, IPv6Address

from hypothesis import given
from hypothesis import strategies as st

from mcr.model.rules import address_text

# addresses made of hextets that are zero half the time, so that runs of every length and position occur
hextets = st.lists(st.integers(0, 0xFFFF) | st.just(0), min_size=8, max_size=8)


@given(hextets)
def test_ipv6_text_is_str(words: list[int]) -> None:
    address = IPv6Address(sum(w << (16 * (7 - i)) for i, w in enumerate(words)))
    assert address_text(address) == str(address)


@given(st.integers(0, 2**128 - 1))
def test_any_ipv6_address_formats_as_str(n: int) -> None:
    assert address_text(IPv6Address(n)) == str(IPv6Address(n))


@given(st.integers(0, 2**32 - 1))
def test_ipv4_and_ipv4_mapped_addresses_format_as_str(n: int) -> None:
    mapped = IPv6Address(0xFFFF << 32 | n)
    assert (address_text(IPv4Address(n)), address_text(mapped)) == (str(IPv4Address(n)), str(mapped))


def test_scoped_addresses_keep_their_scope() -> None:
    address = IPv6Address("fe80::1%eth0")
    assert address_text(address) == str(address) == "fe80::1%eth0"
