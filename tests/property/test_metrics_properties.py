"""The metrics' own number formatting against prometheus_client's."""

from hypothesis import example, given
from hypothesis import strategies as st
from prometheus_client.utils import floatToGoString

from mcr.supervisor.metrics import _value


@given(st.one_of(st.integers(min_value=0, max_value=2**64), st.integers(min_value=0, max_value=2**54)))
@example(999_999)
@example(1_000_000)
@example(10_000_000_000)
@example(2**53 - 1)
@example(2**53)
@example(2**53 + 1)
@example(10**16)
def test_a_counter_is_written_as_prometheus_client_writes_it(n: int) -> None:
    assert _value(n) == floatToGoString(n)
