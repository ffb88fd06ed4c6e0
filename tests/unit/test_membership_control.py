"""The membership requests and responses on the control socket: the original's shapes (GetIgmpGroups,
EnableIgmpQuerier, DisableIgmpQuerier) with our fields added, MLD's and GetQueriers, the CLI and its tables."""

from __future__ import annotations

import io
import json
from dataclasses import fields
from ipaddress import IPv4Address, IPv6Address

import pytest
from rich.console import Console

from mcr.cli.control_client import build_parser, parse_invocation
from mcr.cli.render import render_response
from mcr.membership.querier import FilterMode, GroupView, QuerierView, SourceView, TimerChanges, Timers
from mcr.membership.wire import Family
from mcr.model.errors import ProtocolError
from mcr.protocol.control import (
    MembershipGroups,
    QuerierStates,
    Query,
    SetQuerier,
    SetQuerierTimers,
    decode_request,
    decode_response,
    encode_request,
    encode_response,
)
from mcr.supervisor.access import is_read_only, request_name

GROUP = GroupView(
    interface="eth1",
    family=Family.IPV4,
    group=IPv4Address("239.1.1.1"),
    filter_mode=FilterMode.INCLUDE,
    expires_in=41.5,
    sources=(SourceView(IPv4Address("192.0.2.1"), 41.5),),
    last_reporter=IPv4Address("10.0.0.20"),
    version=3,
    is_querier=True,
)
QUERIER = QuerierView(
    interface="eth1",
    family=Family.IPV6,
    active=True,
    is_querier=False,
    address=IPv6Address("fe80::5"),
    querier=IPv6Address("fe80::1"),
    other_querier_expires_in=200.0,
    version=2,
    counters={"reports_v2": 3, "dropped_bad_checksum": 1},
    timers=Timers(query_interval=30.0, startup_query_count=1, version=2),
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('"GetIgmpGroups"', Query.GET_IGMP_GROUPS),
        ('"GetMldGroups"', Query.GET_MLD_GROUPS),
        ('"GetQueriers"', Query.GET_QUERIERS),
        ('{"EnableIgmpQuerier": {"interface": "eth1"}}', SetQuerier(Family.IPV4, "eth1", True)),
        ('{"DisableIgmpQuerier": {"interface": "eth1"}}', SetQuerier(Family.IPV4, "eth1", False)),
        ('{"EnableMldQuerier": {"interface": "eth1"}}', SetQuerier(Family.IPV6, "eth1", True)),
        ('{"DisableMldQuerier": {"interface": "eth1"}}', SetQuerier(Family.IPV6, "eth1", False)),
        (
            '{"SetQuerierTimers": {"family": "ipv4", "interface": "eth1", "query_interval": 30, "robustness": 3}}',
            SetQuerierTimers(Family.IPV4, "eth1", TimerChanges(robustness=3, query_interval=30.0)),
        ),
        (
            '{"SetQuerierTimers": {"family": "ipv6", "interface": null, "query_response_interval": 2.5}}',
            SetQuerierTimers(Family.IPV6, None, TimerChanges(query_response_interval=2.5)),
        ),
    ],
)
def test_requests_round_trip(text: str, expected: object) -> None:
    assert decode_request(text.encode()) == expected
    assert decode_request(encode_request(expected)) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"EnableIgmpQuerier": {}}', "missing field 'interface' in EnableIgmpQuerier"),
        ('{"EnableIgmpQuerier": {"interface": 3}}', "field 'interface' in EnableIgmpQuerier must be a string"),
        ('{"DisableMldQuerier": {"interface": "a", "x": 1}}', "unknown field 'x' in DisableMldQuerier"),
        ('"EnableIgmpQuerier"', "command 'EnableIgmpQuerier' needs arguments"),
        ('{"SetQuerierTimers": {"query_interval": 30}}', "missing field 'family' in SetQuerierTimers"),
        (
            '{"SetQuerierTimers": {"family": "ipv4", "query_intervall": 30}}',
            "unknown field 'query_intervall' in SetQuerierTimers; expected family, interface, last_member_query",
        ),
        (
            '{"SetQuerierTimers": {"family": "ipv4", "version": true}}',
            "field 'version' in SetQuerierTimers must be an integer, got boolean",
        ),
        (
            '{"SetQuerierTimers": {"family": "ipv4", "startup_query_interval": [1]}}',
            "field 'startup_query_interval' in SetQuerierTimers must be a number, got array",
        ),
        ('{"SetQuerierTimers": {"family": "ipv4", "interface": 1, "robustness": 2}}', "field 'interface' in"),
    ],
)
def test_bad_requests(text: str, message: str) -> None:
    with pytest.raises(ProtocolError) as e:
        decode_request(text.encode())
    assert message in str(e.value)


def test_enable_and_disable_need_control_rights() -> None:
    req = SetQuerier(Family.IPV4, "eth1", True)
    assert not is_read_only(req) and request_name(req) == "EnableIgmpQuerier"
    timers = SetQuerierTimers(Family.IPV4, None, TimerChanges(robustness=3))
    assert not is_read_only(timers) and request_name(timers) == "SetQuerierTimers"
    assert is_read_only(Query.GET_IGMP_GROUPS)


def test_igmp_groups_carry_the_originals_fields() -> None:
    doc = json.loads(encode_response(MembershipGroups(Family.IPV4, (GROUP,))))
    (entry,) = doc["IgmpGroups"]
    assert {k: entry[k] for k in ("interface", "group", "expires_in_secs", "last_reporter", "is_querier")} == {
        "interface": "eth1",
        "group": "239.1.1.1",
        "expires_in_secs": 42,
        "last_reporter": "10.0.0.20",
        "is_querier": True,
    }
    assert entry["sources"] == [{"address": "192.0.2.1", "expires_in_secs": 42, "expires_in": 41.5}]
    assert (entry["filter_mode"], entry["version"], entry["family"]) == ("include", 3, "ipv4")


def test_responses_round_trip() -> None:
    groups = MembershipGroups(Family.IPV4, (GROUP,))
    assert decode_response(encode_response(groups)) == groups
    queriers = QuerierStates((QUERIER,))
    assert decode_response(encode_response(queriers)) == queriers
    (entry,) = json.loads(encode_response(queriers))["Queriers"]
    assert entry["timers"]["query_interval"] == 30.0 and entry["timers"]["startup_query_count"] == 1


def test_a_querier_entry_without_timers_decodes() -> None:
    """From a supervisor of ours that did not list the timers yet; unknown timer names are ignored."""
    entry = json.loads(encode_response(QuerierStates((QUERIER,))))["Queriers"][0]
    del entry["timers"]
    got = decode_response(json.dumps({"Queriers": [entry]}).encode())
    assert isinstance(got, QuerierStates) and got.queriers[0].timers is None
    entry["timers"] = {"query_interval": 60, "jitter": 1}
    got = decode_response(json.dumps({"Queriers": [entry]}).encode())
    assert isinstance(got, QuerierStates) and got.queriers[0].timers == Timers(query_interval=60.0)


def test_the_originals_group_entry_decodes() -> None:
    raw = b'{"IgmpGroups": [{"interface": "eth0", "group": "239.1.1.1", "expires_in_secs": 250, '
    raw += b'"last_reporter": null, "is_querier": true}]}'
    got = decode_response(raw)
    assert isinstance(got, MembershipGroups)
    assert got.groups[0].filter_mode is FilterMode.EXCLUDE and got.groups[0].last_reporter is None


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["igmp", "groups"], Query.GET_IGMP_GROUPS),
        (["mld", "groups"], Query.GET_MLD_GROUPS),
        (["igmp", "queriers"], Query.GET_QUERIERS),
        (["igmp", "enable-querier", "--interface", "eth1"], SetQuerier(Family.IPV4, "eth1", True)),
        (["mld", "disable-querier", "--interface", "eth1"], SetQuerier(Family.IPV6, "eth1", False)),
        (
            ["igmp", "set-timers", "--interface", "eth1", "--query-interval", "30", "--query-response-interval", "2.5"],
            SetQuerierTimers(Family.IPV4, "eth1", TimerChanges(query_interval=30.0, query_response_interval=2.5)),
        ),
        (
            ["mld", "set-timers", "--robustness", "3", "--version", "1", "--other-querier-present-interval", "300"],
            SetQuerierTimers(
                Family.IPV6, None, TimerChanges(robustness=3, version=1, other_querier_present_interval=300.0)
            ),
        ),
    ],
)
def test_cli(argv: list[str], expected: object) -> None:
    assert parse_invocation(argv, {}).request == expected  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["igmp", "set-timers", "--interface", "eth1"], "give at least one timer to change: --robustness"),
        (["igmp", "set-timers", "--query-interval", "soon"], "invalid number of seconds 'soon'"),
        (["igmp", "set-timers", "--query-interval", "nan"], "invalid number of seconds 'nan'"),
        (["mld", "set-timers", "--robustness", "2.5"], "invalid whole number '2.5'"),
    ],
)
def test_cli_timer_errors(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        parse_invocation(argv, {})
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_every_timer_has_a_flag() -> None:
    help_text = " ".join(build_parser().parse_known_args(["igmp", "set-timers", "--robustness", "1"])[0].__dict__)
    assert all(f"timer_{f.name}" in help_text for f in fields(Timers))


def plain(resp: object) -> str:
    out = io.StringIO()
    Console(file=out, width=200, color_system=None, highlight=False).print(render_response(resp), markup=False)  # type: ignore[arg-type]
    return out.getvalue()


def test_tables() -> None:
    text = plain(MembershipGroups(Family.IPV4, (GROUP,)))
    assert "239.1.1.1" in text and "192.0.2.1 42s" in text and "IGMPv3" in text and "include" in text
    text = plain(QuerierStates((QUERIER,)))
    assert "fe80::1 (200s)" in text and "non-querier" in text and "reports_v2=3" in text
    assert "QI 30s QRI 10s R 2 LMQI 1s SQC 1 max v2" in text
    assert "no groups have receivers" in plain(MembershipGroups(Family.IPV6, ()))
