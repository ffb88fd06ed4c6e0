"""Properties of the querier state machine under any sequence of reports, leaves, queries, timer changes and ticks:
it never raises, `tick` always clears what was due, INCLUDE-mode groups always have sources, it never sends when
passive, and never two general queries at once (a timer change brings one forward at most)."""

from ipaddress import IPv4Address

from hypothesis import given
from hypothesis import strategies as st

from mcr.membership.querier import FilterMode, Querier, Send, Timers
from mcr.membership.wire import Family, Inbound, Leave, Query, Record, RecordType, Report

groups = st.sampled_from([IPv4Address("239.1.1.1"), IPv4Address("239.1.1.2")])
sources = st.lists(st.sampled_from([IPv4Address(f"192.0.2.{i}") for i in range(1, 5)]), max_size=3).map(tuple)
hosts = st.sampled_from([IPv4Address("10.0.0.1"), IPv4Address("10.0.0.9"), IPv4Address(0)])
records = st.builds(Record, st.sampled_from(RecordType), groups, sources)
messages = st.one_of(
    st.builds(lambda v, r: Report(Family.IPV4, v, r), st.just(3), st.lists(records, max_size=3).map(tuple)),
    st.builds(
        lambda v, g: Report(Family.IPV4, v, (Record(RecordType.MODE_IS_EXCLUDE, g),)), st.sampled_from([1, 2]), groups
    ),
    st.builds(lambda g: Leave(Family.IPV4, g), groups),
    st.builds(
        lambda v, g, s: Query(Family.IPV4, v, g, 1.0, s if v == 3 and int(g) else ()),
        st.sampled_from([1, 2, 3]),
        st.sampled_from([IPv4Address(0), IPv4Address("239.1.1.1")]),
        sources,
    ),
)
timer_changes = st.builds(
    Timers,
    robustness=st.integers(1, 7),
    query_interval=st.sampled_from([5.0, 20.0, 60.0]),
    query_response_interval=st.sampled_from([0.5, 2.0, 4.5]),
    last_member_query_interval=st.sampled_from([0.1, 1.0, 3.0]),
    last_member_query_count=st.integers(0, 7),
    startup_query_count=st.integers(0, 7),
    version=st.integers(0, 3),
)
steps = st.lists(
    st.tuples(st.floats(0.0, 30.0), st.one_of(st.none(), st.tuples(hosts, messages), timer_changes)), max_size=40
)


@given(steps, st.booleans())
def test_any_sequence_keeps_the_invariants(events: list[tuple[float, object]], active: bool) -> None:
    timers = Timers(robustness=2, query_interval=20.0, query_response_interval=2.0)
    q = Querier("eth0", Family.IPV4, timers, address=IPv4Address("10.0.0.5"), active=active)
    actions = q.start(0.0)
    now = 0.0
    general_at: list[float] = []
    for delay, event in events:
        now += delay
        while (d := q.deadline()) is not None and d <= now:
            due = q.tick(d)
            general = [a for a in due if isinstance(a, Send) and a.message.general]
            assert len(general) <= 1 and not (general and d in general_at), "a burst of general queries"
            general_at += [d] * len(general)
            actions += due
            after = q.deadline()
            assert after is None or after > d, "tick left something due"
        if isinstance(event, Timers):
            assert event.problems() == [] and q.set_timers(event, now) == []
        elif event is not None:
            src, message = event  # type: ignore[misc]
            actions += q.receive(Inbound(src, IPv4Address("224.0.0.1"), message, True), now)
        for g in q.group_views(now):
            assert g.filter_mode is FilterMode.EXCLUDE or g.sources
            assert g.expires_in >= 0
    if not active:
        assert not any(isinstance(a, Send) for a in actions)
