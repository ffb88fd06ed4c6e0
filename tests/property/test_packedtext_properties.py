"""Kept texts come back as they went in, whatever they are (mcr.protocol.packedtext)."""

from hypothesis import given
from hypothesis import strategies as st

from mcr.protocol.packedtext import Packer, typical_rule

PACKER = Packer(repr(typical_rule()).encode())


@given(st.binary(max_size=20_000) | st.text(max_size=5_000).map(str.encode))
def test_what_is_packed_is_unpacked_byte_for_byte(text: bytes) -> None:
    assert PACKER.unpack(PACKER.pack(text)) == text


def test_a_text_like_the_dictionary_is_kept_in_a_fraction_of_its_size() -> None:
    text = repr(typical_rule()).replace("239.0.0.1", "239.7.1.9").encode()
    assert len(PACKER.pack(text)) * 8 < len(text)
