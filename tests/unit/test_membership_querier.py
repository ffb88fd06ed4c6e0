"""The querier and membership state machine, driven with a fake clock: startup and general queries, election,
leaves and last-member queries, IGMPv3/MLDv2 filter modes and source timers, older-version compatibility, passive
mode, run-time enable/disable."""

from dataclasses import fields, replace
from ipaddress import IPv4Address, IPv6Address

import pytest

from mcr.membership.querier import Action, Changed, FilterMode, GroupView, Querier, Send, TimerChanges, Timers
from mcr.membership.wire import Family, Inbound, Leave, Query, Record, RecordType, Report

ME = IPv4Address("10.0.0.5")
LOWER = IPv4Address("10.0.0.1")
HIGHER = IPv4Address("10.0.0.9")
HOST = IPv4Address("10.0.0.20")
G = IPv4Address("239.1.1.1")
S1, S2 = IPv4Address("192.0.2.1"), IPv4Address("192.0.2.2")
ANY = IPv4Address(0)
# small numbers: QI 20, QRI 2, R 2 -> GMI 42, OQPI 41, SQI 5, LMQI 1, LMQT 2
T = Timers(robustness=2, query_interval=20.0, query_response_interval=2.0, last_member_query_interval=1.0)


def querier(active: bool = True, timers: Timers = T) -> Querier:
    return Querier("eth0", Family.IPV4, timers, address=ME, active=active)


def sends(actions: list[Action]) -> list[Query]:
    return [a.message for a in actions if isinstance(a, Send)]


def changed(actions: list[Action]) -> list[Changed]:
    return [a for a in actions if isinstance(a, Changed)]


def run(q: Querier, until: float, start: float = 0.0) -> list[tuple[float, Action]]:
    """Tick at every deadline from `start` up to `until`; the actions with their times."""
    out: list[tuple[float, Action]] = []
    now = start
    for _ in range(1000):
        d = q.deadline()
        if d is None or d > until:
            return out
        assert d > now or not out or d >= now, "a deadline in the past"
        now = max(now, d)
        out += [(now, a) for a in q.tick(now)]
        assert q.deadline() != d or d is None, f"tick at {now} left its deadline {d} in place"
    raise AssertionError("no progress")


def report(version: int, *records: Record, src: IPv4Address = HOST) -> Inbound:
    return Inbound(src, G, Report(Family.IPV4, version, records), True)


def v2_report(group: IPv4Address = G) -> Inbound:
    return report(2, Record(RecordType.MODE_IS_EXCLUDE, group))


def rec(kind: RecordType, *sources: IPv4Address) -> Record:
    return Record(kind, G, sources)


def query(src: IPv4Address, version: int = 3, group: IPv4Address = ANY, **kw: object) -> Inbound:
    return Inbound(src, G, Query(Family.IPV4, version, group, 1.0 if int(group) else 2.0, **kw), True)  # type: ignore[arg-type]


def row(q: Querier, now: float) -> GroupView | None:
    rows = [r for r in q.group_views(now) if r.group == G]
    return rows[0] if rows else None


def test_startup_queries_then_one_per_query_interval() -> None:
    q = querier()
    first = sends(q.start(0.0))
    times = [t for t, a in run(q, 70.0) if isinstance(a, Send)]
    assert first[0].general and first[0].version == 3 and first[0].max_response == 2.0
    assert first[0].robustness == 2 and first[0].query_interval == 20.0
    assert times == [5.0, 25.0, 45.0, 65.0]  # startup count 2 at QI/4, then every QI
    assert q.view(70.0).counters["general_queries_sent"] == 5


def test_a_lower_address_wins_and_we_take_over_when_it_goes_quiet() -> None:
    q = querier()
    q.start(0.0)
    assert q.receive(query(LOWER), 1.0) == []
    assert not q.is_querier and q.view(1.0).querier == LOWER
    got = run(q, 60.0, start=1.0)
    assert next(t for t, a in got if isinstance(a, Send)) == 42.0  # OQPI = R * QI + QRI / 2 = 41 after 1.0
    assert q.is_querier and q.view(43.0).querier == ME


def test_a_higher_address_does_not_unseat_us() -> None:
    q = querier()
    q.start(0.0)
    q.receive(query(HIGHER), 1.0)
    assert q.is_querier
    assert len([a for _, a in run(q, 10.0) if isinstance(a, Send)]) == 1


def test_non_querier_adopts_the_queriers_robustness_and_interval() -> None:
    q = querier()
    q.start(0.0)
    q.receive(query(LOWER, robustness=3, query_interval=30.0), 1.0)
    assert q.gmi == 3 * 30.0 + 2.0
    assert q.view(1.0).other_querier_expires_in == pytest.approx(91.0)


def test_v2_report_creates_exclude_state_that_expires_after_gmi() -> None:
    q = querier()
    q.start(0.0)
    assert changed(q.receive(v2_report(), 1.0)) == [Changed(G)]
    r = row(q, 1.0)
    assert r is not None and r.filter_mode is FilterMode.EXCLUDE and r.version == 2 and r.last_reporter == HOST
    assert r.expires_in == 42.0 and r.wants(None) and r.wants(S1) and r.is_querier
    gone = [t for t, a in run(q, 100.0) if isinstance(a, Changed)]
    assert gone == [43.0] and row(q, 43.0) is None


def test_leave_sends_group_specific_queries_and_the_group_goes_after_lmqt() -> None:
    q = querier()
    q.start(0.0)
    q.receive(v2_report(), 1.0)
    first = sends(q.receive(Inbound(HOST, G, Leave(Family.IPV4, G), True), 10.0))
    assert [(m.group, m.max_response, m.version) for m in first] == [(G, 1.0, 3)]  # v2 hosts answer v3 queries
    got = run(q, 20.0, start=10.0)
    specific = [t for t, a in got if isinstance(a, Send) and a.message.group == G]
    assert specific == [11.0]  # LMQC = 2 in all
    assert [t for t, a in got if isinstance(a, Changed)] == [12.0]  # LMQT = 2 after the leave


def test_a_report_after_the_leave_keeps_the_group() -> None:
    q = querier()
    q.start(0.0)
    q.receive(v2_report(), 1.0)
    q.receive(Inbound(HOST, G, Leave(Family.IPV4, G), True), 10.0)
    q.receive(v2_report(), 10.5)
    assert not changed([a for _, a in run(q, 30.0, start=10.0)])
    r = row(q, 30.0)
    assert r is not None and r.wants(None)


def test_v3_include_sources_and_block() -> None:
    q = querier()
    q.start(0.0)
    q.receive(report(3, rec(RecordType.MODE_IS_INCLUDE, S1, S2)), 1.0)
    r = row(q, 1.0)
    assert r is not None and r.filter_mode is FilterMode.INCLUDE and r.version == 3
    assert r.wants(S1) and r.wants(S2) and not r.wants(IPv4Address("192.0.2.3")) and r.wants(None)
    queries = sends(q.receive(report(3, rec(RecordType.BLOCK_OLD_SOURCES, S1)), 5.0))
    assert [(m.group, m.sources, m.suppress) for m in queries] == [(G, (S1,), False)]
    run(q, 8.0, start=5.0)  # S1's timer was lowered to LMQT
    r = row(q, 8.0)
    assert r is not None and [s.address for s in r.sources] == [S2]


def test_v3_to_exclude_from_include() -> None:
    q = querier()
    q.start(0.0)
    q.receive(report(3, rec(RecordType.MODE_IS_INCLUDE, S1)), 1.0)
    q.receive(report(3, rec(RecordType.CHANGE_TO_EXCLUDE, S2)), 2.0)
    r = row(q, 2.0)
    assert r is not None and r.filter_mode is FilterMode.EXCLUDE
    assert not r.wants(S2) and r.wants(S1) and r.wants(IPv4Address("192.0.2.9"))
    assert [s.address for s in r.sources] == [S2] and r.sources[0].expires_in == 0.0  # S1 deleted (A - B)


def test_exclude_mode_group_timer_expiry_keeps_running_sources() -> None:
    q = querier()
    q.start(0.0)
    q.receive(report(3, rec(RecordType.MODE_IS_EXCLUDE)), 1.0)  # EXCLUDE({}) GT = 43
    q.receive(report(3, rec(RecordType.ALLOW_NEW_SOURCES, S1)), 30.0)  # S1 timer = 72
    run(q, 50.0, start=30.0)
    r = row(q, 50.0)
    assert r is not None and r.filter_mode is FilterMode.INCLUDE and r.wants(S1) and not r.wants(S2)


def test_to_include_in_exclude_mode_queries_group_and_sources() -> None:
    q = querier()
    q.start(0.0)
    q.receive(report(3, rec(RecordType.MODE_IS_EXCLUDE)), 1.0)
    q.receive(report(3, rec(RecordType.ALLOW_NEW_SOURCES, S1)), 1.0)
    queries = sends(q.receive(report(3, rec(RecordType.CHANGE_TO_INCLUDE)), 2.0))
    assert {(m.group, m.sources) for m in queries} == {(G, (S1,)), (G, ())}
    run(q, 10.0, start=2.0)
    assert row(q, 10.0) is None  # nobody answered within LMQT


def test_v2_compatibility_ignores_block_and_to_exclude_sources() -> None:
    q = querier()
    q.start(0.0)
    q.receive(v2_report(), 1.0)
    q.receive(report(3, rec(RecordType.CHANGE_TO_EXCLUDE, S1)), 2.0)
    assert q.receive(report(3, rec(RecordType.BLOCK_OLD_SOURCES, S2)), 3.0) == []
    r = row(q, 3.0)
    assert r is not None and r.version == 2 and r.wants(S1) and r.wants(S2)


def test_v1_host_makes_leaves_ignored() -> None:
    q = querier()
    q.start(0.0)
    q.receive(report(1, Record(RecordType.MODE_IS_EXCLUDE, G)), 1.0)
    assert q.receive(Inbound(HOST, G, Leave(Family.IPV4, G), True), 2.0) == []
    r = row(q, 2.0)
    assert r is not None and r.version == 1


@pytest.mark.parametrize("older", [1, 2])
def test_an_older_querier_makes_us_query_in_its_version(older: int) -> None:
    q = querier()
    q.start(0.0)
    q.receive(query(HIGHER, version=older), 1.0)
    versions = [(t, a.message.version) for t, a in run(q, 90.0) if isinstance(a, Send)]
    assert versions[0] == (5.0, older)
    assert versions[-1][1] == 3  # back to v3 after R * QI + QRI = 42 without it
    assert all(v == older for t, v in versions if t < 43.0)


def test_passive_mode_tracks_but_never_queries() -> None:
    q = querier(active=False)
    assert q.start(0.0) == []
    q.receive(v2_report(), 1.0)
    assert sends(q.receive(Inbound(HOST, G, Leave(Family.IPV4, G), True), 2.0)) == []
    assert not any(isinstance(a, Send) for _, a in run(q, 100.0))
    assert not q.is_querier and row(q, 100.0) is None


def test_non_querier_lowers_its_timer_on_the_queriers_group_query() -> None:
    q = querier(active=False)
    q.receive(query(LOWER), 0.5)
    q.receive(v2_report(), 1.0)
    q.receive(query(LOWER, version=2, group=G), 10.0)  # max response 1.0 * R -> 12.0
    assert [t for t, a in run(q, 20.0, start=10.0) if isinstance(a, Changed)] == [12.0]


def test_disable_then_enable_at_run_time() -> None:
    q = querier()
    q.start(0.0)
    assert q.set_active(False, 1.0) == []
    assert not q.is_querier and not any(isinstance(a, Send) for _, a in run(q, 50.0))
    again = sends(q.set_active(True, 50.0))
    assert len(again) == 1 and again[0].general and q.is_querier


def test_no_address_no_querying_until_one_appears() -> None:
    q = Querier("eth0", Family.IPV4, T, address=None, active=True)
    assert q.start(0.0) == []
    assert len(sends(q.set_address(ME, 3.0))) == 1 and q.is_querier


def test_timers_problems() -> None:
    assert Timers().problems() == []
    bad = Timers(robustness=0, query_interval=10.0, query_response_interval=10.0, version=4)
    assert bad.problems() == [
        "robustness must be 1 to 7, got 0",
        "query_response_interval must be less than query_interval",
        "version must be 1, 2 or 3 (0: the highest), got 4",
    ]


MLD_ME = IPv6Address("fe80::5")
MLD_G = IPv6Address("ff0e::1")


def test_mld_v1_report_and_done() -> None:
    q = Querier("eth0", Family.IPV6, T, address=MLD_ME, active=True)
    first = sends(q.start(0.0))
    assert first[0].version == 2 and first[0].family is Family.IPV6
    host = IPv6Address("fe80::20")
    q.receive(Inbound(host, MLD_G, Report(Family.IPV6, 1, (Record(RecordType.MODE_IS_EXCLUDE, MLD_G),)), True), 1.0)
    rows = q.group_views(1.0)
    assert [(r.group, r.version, r.filter_mode) for r in rows] == [(MLD_G, 1, FilterMode.EXCLUDE)]
    done = sends(q.receive(Inbound(host, MLD_G, Leave(Family.IPV6, MLD_G), True), 2.0))
    assert [(m.group, m.version) for m in done] == [(MLD_G, 2)]  # MLDv1 hosts answer v2 queries
    run(q, 10.0, start=2.0)
    assert q.group_views(10.0) == []


def test_counters() -> None:
    q = querier()
    q.start(0.0)
    q.receive(v2_report(), 1.0)
    q.receive(report(3, rec(RecordType.MODE_IS_INCLUDE, S1)), 1.0)
    q.receive(Inbound(HOST, G, Leave(Family.IPV4, G), True), 2.0)
    c = q.view(2.0).counters
    assert (c["reports_v2"], c["reports_v3"], c["leaves"], c["queries_sent"]) == (
        1,
        1,
        1,
        3,
    )  # general, then Q(G,S1) and Q(G) for the leave


def test_passive_listener_shows_the_lowest_querier_it_hears() -> None:
    q = querier(active=False)
    q.receive(query(HIGHER), 1.0)
    assert q.view(1.0).querier == HIGHER
    q.receive(query(LOWER), 2.0)
    q.receive(query(HIGHER), 3.0)
    assert q.view(3.0).querier == LOWER and not q.is_querier


def test_enabling_next_to_a_higher_querier_takes_over_at_once() -> None:
    q = querier(active=False)
    q.receive(query(HIGHER), 1.0)
    assert len(sends(q.set_active(True, 2.0))) == 1 and q.is_querier


def test_enabling_next_to_a_lower_querier_waits_for_it_to_go_quiet() -> None:
    q = querier(active=False)
    q.receive(query(LOWER), 1.0)
    assert q.set_active(True, 2.0) == [] and not q.is_querier
    assert next(t for t, a in run(q, 60.0, start=2.0) if isinstance(a, Send)) == 42.0


def test_a_flood_of_groups_and_sources_is_bounded_and_counted() -> None:
    q = Querier("eth0", Family.IPV4, T, address=ME, active=True, max_groups=2, max_sources=3)
    q.start(0.0)
    for i in range(4):
        q.receive(v2_report(IPv4Address(f"239.9.9.{i}")), 1.0)
    assert len(q.group_views(1.0)) == 2
    many = tuple(IPv4Address(f"192.0.2.{i}") for i in range(1, 6))
    q.receive(report(3, Record(RecordType.ALLOW_NEW_SOURCES, IPv4Address("239.9.9.0"), many)), 2.0)
    (g,) = [r for r in q.group_views(2.0) if r.group == IPv4Address("239.9.9.0")]
    assert [s.address for s in g.sources] == list(many[:3])
    assert q.view(2.0).counters["dropped_table_full"] == 3  # two groups, one source list


# ------------------------------------------------------------------------------------------ timers at run time


def general_times(got: list[tuple[float, Action]]) -> list[float]:
    return [t for t, a in got if isinstance(a, Send) and a.message.general]


@pytest.mark.parametrize(
    ("interval", "expected"),
    [
        (8.0, [33.0, 41.0, 49.0]),  # shorter: the next query comes 8 s after the previous (25), then every 8
        (4.0, [30.0, 34.0, 38.0, 42.0, 46.0, 50.0]),  # already overdue: one query at once, never a burst
        (100.0, [45.0]),  # longer: the query already due goes out, the next one 100 s later
    ],
)
def test_a_new_query_interval_takes_effect_at_the_next_query(interval: float, expected: list[float]) -> None:
    q = querier()
    q.start(0.0)
    assert general_times(run(q, 30.0)) == [5.0, 25.0]
    assert q.set_timers(replace(T, query_interval=interval), 30.0) == []
    got = run(q, 50.0, start=30.0)
    assert general_times(got) == expected
    assert all(a.message.query_interval == interval for _, a in got if isinstance(a, Send))
    assert q.view(50.0).timers == replace(T, query_interval=interval)


def test_a_new_response_interval_is_in_the_next_query() -> None:
    q = querier()
    q.start(0.0)
    run(q, 30.0)
    q.set_timers(replace(T, query_response_interval=7.5, robustness=3), 30.0)
    (query_sent,) = sends([a for _, a in run(q, 46.0, start=30.0)])
    assert (query_sent.max_response, query_sent.robustness) == (7.5, 3)


def test_startup_queries_follow_a_new_startup_interval() -> None:
    q = querier(timers=replace(T, startup_query_count=4))
    q.start(0.0)
    q.set_timers(replace(T, startup_query_count=4, startup_query_interval=2.0), 1.0)
    assert general_times(run(q, 30.0, start=1.0)) == [2.0, 4.0, 6.0, 26.0]


def test_a_longer_response_interval_loses_no_membership() -> None:
    """GMI 42 -> 2 * 100 + 50: a receiver heard at 26 under the old timers stays while hosts answer the next
    query within up to 50 s."""
    q = querier()
    q.start(0.0)
    run(q, 26.0)
    q.receive(v2_report(), 26.0)
    q.set_timers(replace(T, query_interval=100.0, query_response_interval=50.0), 30.0)
    got = run(q, 94.0, start=30.0)
    assert general_times(got) == [45.0] and changed([a for _, a in got]) == []
    r = row(q, 94.0)
    assert r is not None and r.expires_in == pytest.approx(26.0 + 42.0 + 208.0 - 94.0)
    q.receive(v2_report(), 94.0)  # the answer to the query at 45, late in its 50 s
    assert row(q, 94.0).expires_in == 250.0  # type: ignore[union-attr]


def test_a_shorter_membership_interval_applies_from_the_next_report() -> None:
    q = querier()
    q.start(0.0)
    q.receive(v2_report(), 1.0)
    q.set_timers(replace(T, query_interval=10.0), 2.0)
    assert row(q, 2.0).expires_in == 41.0  # type: ignore[union-attr]
    q.receive(v2_report(), 3.0)
    assert row(q, 3.0).expires_in == 22.0  # type: ignore[union-attr]


def test_a_leave_being_handled_is_not_lengthened() -> None:
    q = querier()
    q.start(0.0)
    q.receive(v2_report(), 1.0)
    q.receive(Inbound(HOST, G, Leave(Family.IPV4, G), True), 10.0)
    q.set_timers(replace(T, query_interval=100.0), 10.5)
    got = run(q, 20.0, start=10.5)
    assert [t for t, a in got if isinstance(a, Changed)] == [12.0]


def test_values_learnt_from_the_elected_querier_stay_until_it_goes() -> None:
    q = querier()
    q.start(0.0)
    q.receive(query(LOWER, robustness=3, query_interval=30.0), 1.0)
    q.set_timers(replace(T, robustness=4, query_interval=10.0), 2.0)
    assert (q.robustness, q.query_interval) == (3, 30.0)
    run(q, 200.0, start=2.0)
    assert q.is_querier and (q.robustness, q.query_interval) == (4, 10.0)


def test_a_configured_other_querier_present_interval() -> None:
    q = querier()
    q.start(0.0)
    q.set_timers(replace(T, other_querier_present_interval=25.0), 0.5)
    q.receive(query(LOWER), 1.0)
    assert q.view(1.0).other_querier_expires_in == 25.0
    assert next(t for t, a in run(q, 60.0, start=1.0) if isinstance(a, Send)) == 26.0


def test_a_new_version_is_spoken_from_the_next_query() -> None:
    q = querier()
    q.start(0.0)
    q.set_timers(replace(T, version=2), 1.0)
    (first, *_) = sends([a for _, a in run(q, 10.0, start=1.0)])
    assert first.version == 2 and q.view(10.0).version == 2


def test_timer_changes_apply_only_the_fields_given() -> None:
    assert [f.name for f in fields(TimerChanges)] == [f.name for f in fields(Timers)]
    changes = TimerChanges(query_interval=30.0).merged(TimerChanges(robustness=3))
    assert changes.given() == {"robustness": 3, "query_interval": 30.0}
    assert changes.applied(T) == replace(T, robustness=3, query_interval=30.0)
    assert TimerChanges().applied(T) == T


def test_other_querier_present_interval_problems() -> None:
    assert Timers(other_querier_present_interval=300.0).problems() == []
    assert Timers(other_querier_present_interval=100.0).problems() == [
        "other_querier_present_interval must be more than query_interval and at most 250000 seconds "
        "(0: robustness * query_interval + query_response_interval / 2), got 100"
    ]
