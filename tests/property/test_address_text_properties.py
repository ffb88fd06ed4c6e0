"""`address_text` writes an address exactly as `str()` does, whatever its runs of zero hextets: rule listings,
stats, metrics and the state file are byte for byte what they were when `ipaddress` formatted them. And
`parse_group` reads exactly the texts `ip_address` reads, as the same addresses, and refuses the others."""

from ipaddress import IPv4Address, IPv6Address, ip_address

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mcr.model.rules import address_text, parse_group

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


def _texts() -> st.SearchStrategy[str]:
    """Address texts, most of them valid, mutated: leading zeros, case, cut short, a character changed or
    added, surrounding spaces, a scope, embedded IPv4."""
    v4 = st.integers(0, 2**32 - 1).map(lambda n: str(IPv4Address(n)))
    v6 = st.integers(0, 2**128 - 1).map(lambda n: str(IPv6Address(n)))
    mapped = st.integers(0, 2**32 - 1).map(lambda n: f"::ffff:{IPv4Address(n)}")
    base = st.one_of(v4, v6, mapped, st.text("0123456789abcdefABCDEF:.% x", max_size=45))

    def mutate(text: str, how: int, at: int, char: str) -> str:
        i = at % (len(text) + 1)
        return [
            text,
            text.upper(),
            text[:i],
            text[:i] + char + text[i:],
            text[:i] + char + text[i + 1 :],
            f" {text} ",
            text + "%eth0",
            text.replace(".", ".0", 1),
            "0" + text,
        ][how]

    return st.builds(mutate, base, st.integers(0, 8), st.integers(0, 64), st.sampled_from("0:.a%g 1\x00"))


@given(_texts())
def test_parse_group_reads_what_ip_address_reads(text: str) -> None:
    try:
        expected = ip_address(text.strip())
    except ValueError:
        try:
            parse_group(text)
        except ValueError as e:
            assert text in str(e)
        else:
            raise AssertionError(f"{text!r} read, which ip_address refuses")
        return
    got = parse_group(text)
    assert (got, type(got), str(got)) == (expected, type(expected), str(expected))


@given(st.none() | st.integers() | st.floats() | st.lists(st.text(max_size=3), max_size=2) | st.binary(max_size=8))
def test_parse_group_names_a_value_that_is_not_text(value: object) -> None:
    """A decoded document can hold anything where an address belongs (`null`, a number): a ValueError that
    says so, which every caller turns into its precise error, not an AttributeError."""
    with pytest.raises(ValueError, match="an address must be a string, got "):
        parse_group(value)  # type: ignore[arg-type]
