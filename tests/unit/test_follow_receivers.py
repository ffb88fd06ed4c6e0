"""Outputs that follow receivers: the flag on the wire, in the config and on the command line, and the
resolution that leaves such an output out while nobody listens (any source, or the output's own address for
source-specific receivers)."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from ipaddress import IPv4Address

import pytest
from rich.console import Console

from mcr.cli.control_client import parse_invocation
from mcr.membership.querier import FilterMode, GroupView, Listeners, SourceView
from mcr.membership.wire import Family
from mcr.model.config import parse_config
from mcr.model.errors import ConfigError, ProtocolError, ValidationError
from mcr.model.links import Link
from mcr.model.rules import ForwardingRule, OutputDestination, check_rule_shape
from mcr.protocol.control import AddRule, decode_request, encode_request
from mcr.supervisor.core import resolve
from tests.fake_supervisor import FakeSupervisor

G_OUT = IPv4Address("239.2.2.2")
OWN = IPv4Address("10.0.1.1")  # eth1's address: what the output is sent from
LINKS = {
    "eth0": Link("eth0", 2, True, 1500, (IPv4Address("10.0.0.1"),), mac=bytes.fromhex("020000000002")),
    "eth1": Link("eth1", 3, True, 1500, (OWN,), mac=bytes.fromhex("020000000003")),
    "eth2": Link("eth2", 4, True, 1500, (IPv4Address("10.0.2.1"),), mac=bytes.fromhex("020000000004")),
}
RULE = ForwardingRule(
    "r1",
    "eth0",
    IPv4Address("239.1.1.1"),
    5000,
    (OutputDestination(G_OUT, 6000, "eth1", follow_receivers=True), OutputDestination(G_OUT, 6000, "eth2")),
)


def listening(mode: FilterMode, *sources: tuple[IPv4Address, float]) -> Listeners:
    view = GroupView(
        "eth1",
        Family.IPV4,
        G_OUT,
        mode,
        10.0,
        tuple(SourceView(s, t) for s, t in sources),
        None,
        3,
        True,
    )
    return Listeners.of([view])


@pytest.mark.parametrize(
    ("listeners", "sent"),
    [
        (Listeners(), False),
        (listening(FilterMode.EXCLUDE), True),
        (listening(FilterMode.EXCLUDE, (OWN, 0.0)), False),  # the receiver blocks the relay's address
        (listening(FilterMode.INCLUDE, (OWN, 5.0)), True),  # SSM receiver of the relay's address
        (listening(FilterMode.INCLUDE, (IPv4Address("10.9.9.9"), 5.0)), False),  # wants another source
    ],
)
def test_resolution_follows_the_listeners(listeners: Listeners, sent: bool) -> None:
    res = resolve([RULE], LINKS, listeners=listeners)
    (wr,) = res.worker_rules
    assert [o.index for o in wr.outputs] == ([0, 1] if sent else [1])  # output 1 never moves
    (view,) = res.views
    assert ("output[0] eth1 has no receivers for 239.2.2.2" in view.state_reason) is not sent


def test_the_kernel_form_follows_too() -> None:
    res = resolve([RULE], LINKS, kernel_max_outputs=64, listeners=Listeners())
    (kr,) = res.kernel_rules
    assert [o.ifindex for o in kr.outputs] == [4]


def test_wire_and_cli() -> None:
    text = (
        b'{"AddRule": {"input_interface": "eth0", "input_group": "239.1.1.1", "input_port": 5000, '
        b'"outputs": [{"group": "239.2.2.2", "port": 6000, "interface": "eth1", "follow_receivers": true}]}}'
    )
    req = decode_request(text)
    assert isinstance(req, AddRule) and req.outputs[0].follow_receivers
    assert decode_request(encode_request(req)) == req
    argv = ["add", "--input-interface", "eth0", "--input-group", "239.1.1.1", "--input-port", "5000"]
    cli = parse_invocation([*argv, "--outputs", "239.2.2.2:6000:eth1", "--follow-receivers"], {})
    assert cli.request == req  # type: ignore[union-attr]
    with pytest.raises(ProtocolError, match=r"field 'follow_receivers' in AddRule.outputs\[0\] must be a boolean"):
        decode_request(text.replace(b"true", b'"yes"'))


def test_config() -> None:
    config = parse_config(
        '[[rule]]\ninput_interface = "eth0"\ninput_group = "239.1.1.1"\ninput_port = 5000\n'
        'outputs = [{ group = "239.2.2.2", port = 6000, interface = "eth1", follow_receivers = true }]\n',
        "mcr.toml",
    )
    assert config.rules[0].outputs[0].follow_receivers
    with pytest.raises(ConfigError, match=r"outputs\[0\]\.follow_receivers must be a boolean"):
        parse_config(
            '[[rule]]\ninput_interface = "eth0"\ninput_group = "239.1.1.1"\ninput_port = 5000\n'
            'outputs = [{ group = "239.2.2.2", port = 6000, interface = "eth1", follow_receivers = 1 }]\n',
            "mcr.toml",
        )


def test_a_unicast_output_cannot_follow_receivers() -> None:
    rule = ForwardingRule(
        "r1",
        "eth0",
        IPv4Address("239.1.1.1"),
        5000,
        (OutputDestination(IPv4Address("10.0.1.9"), 6000, "eth1", follow_receivers=True),),
    )
    with pytest.raises(ValidationError, match="only a multicast output can follow receivers"):
        check_rule_shape(rule)


def test_membership_metrics() -> None:
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.registry import Collector

    from mcr.membership.querier import QuerierView
    from mcr.supervisor.metrics import Snapshot, metric_families

    view = QuerierView("eth1", Family.IPV4, True, True, OWN, OWN, 0.0, 3, {"reports_v3": 4, "dropped_bad_checksum": 1})
    snap = Snapshot(queriers=(view,), groups=tuple(listening(FilterMode.EXCLUDE).groups.values()))

    class Fixed(Collector):
        def collect(self):  # type: ignore[no-untyped-def]
            return metric_families(snap)

    registry = CollectorRegistry()
    registry.register(Fixed())
    text = generate_latest(registry).decode()
    for line in (
        'mcr_querier_is_querier{interface="eth1",protocol="igmp"} 1.0',
        'mcr_membership_groups{interface="eth1",protocol="igmp"} 1.0',
        'mcr_membership_messages_total{interface="eth1",kind="reports_v3",protocol="igmp"} 4.0',
        'mcr_membership_messages_total{interface="eth1",kind="dropped_bad_checksum",protocol="igmp"} 1.0',
    ):
        assert line in text


def test_an_ipv6_output_follows_mld_listeners() -> None:
    from ipaddress import IPv6Address

    own6 = IPv6Address("2001:db8:1::1")
    links = {**LINKS, "eth1": Link("eth1", 3, True, 1500, (OWN,), mac=bytes.fromhex("020000000003"), ipv6=(own6,))}
    g6 = IPv6Address("ff0e::5")
    rule = ForwardingRule(
        "r6", "eth0", IPv4Address("239.1.1.1"), 5000, (OutputDestination(g6, 6000, "eth1", follow_receivers=True),)
    )
    assert resolve([rule], links, listeners=Listeners()).worker_rules[0].outputs == ()
    view = GroupView("eth1", Family.IPV6, g6, FilterMode.INCLUDE, 5.0, (SourceView(own6, 5.0),), None, 2, True)
    (wr,) = resolve([rule], links, listeners=Listeners.of([view])).worker_rules
    assert [o.index for o in wr.outputs] == [0]


def test_top_shows_the_queriers() -> None:
    from datetime import datetime

    from mcr.cli.top import Controls, TopView, on_poll, render_top
    from mcr.membership.querier import QuerierView

    mine = QuerierView("eth1", Family.IPV4, True, True, OWN, OWN, 0.0, 3, {"reports_v3": 4, "leaves": 1})
    other = QuerierView(
        "eth2", Family.IPV6, False, False, None, None, 0.0, 2, {"reports_v1": 2, "dropped_bad_checksum": 1}
    )
    view = on_poll(TopView(), (), (), datetime(2026, 1, 1), queriers=(mine, other))
    out = io.StringIO()
    Console(file=out, width=200, color_system=None).print(render_top(view, Controls(), 1.0, live=False))
    assert (
        "membership eth1 igmp querier, eth2 mld passive, non-querier (no querier)  reports 6  leaves 1  dropped 1"
        in out.getvalue()
    )


def test_follow_receivers_is_not_sent_to_an_original_that_would_ignore_it(
    fake_supervisor: Callable[[Callable[[bytes], bytes]], FakeSupervisor], capsys: pytest.CaptureFixture[str]
) -> None:
    from mcr.cli.control_client import ExitCode, main

    answers = {"GetVersion": {"Version": {"protocol_version": 1}}, "AddRule": {"Success": "Rule x added"}}

    def respond(request: bytes) -> bytes:
        doc = json.loads(request)
        name = doc if isinstance(doc, str) else next(iter(doc))
        return json.dumps(answers[name]).encode() + b"\n"

    fake = fake_supervisor(respond)
    argv = ["--socket-path", str(fake.path), "add", "--input-interface", "eth0", "--input-group", "239.1.1.1",
            "--input-port", "5000", "--outputs", "239.2.2.2:6000:eth1", "--follow-receivers"]  # fmt: skip
    assert main(argv) == ExitCode.ERROR_RESPONSE
    err = capsys.readouterr().err
    assert "would ignore --follow-receivers and send to every output whether anyone listens there or not" in err
    assert [json.loads(r) for r in fake.requests] == ["GetVersion"]
