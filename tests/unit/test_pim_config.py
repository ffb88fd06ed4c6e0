"""The [pim] section of the TOML config: the original's keys and defaults, precise errors."""

from ipaddress import IPv4Address, ip_network

import pytest

from mcr.model.config import parse_config
from mcr.model.errors import ConfigError
from mcr.routing.config import PimConfig, PimInterfaceConfig
from mcr.routing.pim_joins import StaticRp
from mcr.routing.pim_spt import SptPolicy


def test_section_with_defaults() -> None:
    text = """
[pim]
interfaces = [{ name = "eth1", dr_priority = 10 }, { name = "eth2", hello_period = 5 }, { name = "s0", passive = true }]
static_rp = [{ group = "239.0.0.0/8", rp = "10.0.0.1" }]
"""
    assert parse_config(text, "f.toml").pim == PimConfig(
        True,
        (PimInterfaceConfig("eth1", 10, 30), PimInterfaceConfig("eth2", 1, 5), PimInterfaceConfig("s0", passive=True)),
        (StaticRp(ip_network("239.0.0.0/8"), IPv4Address("10.0.0.1")),),
    )


def test_spt_switchover_policy() -> None:
    assert parse_config("[pim]\n", "f.toml").pim.spt_switchover is SptPolicy.IMMEDIATE
    assert parse_config('[pim]\nspt_switchover = "never"\n', "f.toml").pim.spt_switchover is SptPolicy.NEVER


def test_absent_section_is_disabled() -> None:
    assert parse_config("", "f.toml").pim == PimConfig()
    assert parse_config("[pim]\nenabled = false\n", "f.toml").pim.enabled is False


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("hello = 1", "f.toml: [pim]: unknown key 'hello'"),
        ("enabled = 1", "'enabled' must be a boolean"),
        ("interfaces = 3", "'interfaces' must be an array of tables"),
        ('interfaces = [{ name = "-x" }]', "interfaces[0]: interface name '-x' cannot start with '-'"),
        ('interfaces = [{ name = "a" }, { name = "a" }]', "interfaces[1]: interface 'a' is listed twice"),
        ('interfaces = [{ name = "a", dr_priority = -1 }]', "'dr_priority' must be an integer from 0 to 4294967295"),
        ('interfaces = [{ name = "a", hello_period = 0 }]', "'hello_period' must be an integer from 1 to 18724"),
        ('interfaces = [{ name = "a", speed = 1 }]', "unknown key 'speed'"),
        ('interfaces = [{ name = "a", passive = "yes" }]', "interfaces[0]: 'passive' must be a boolean"),
        ('static_rp = [{ group = "10.0.0.0/8", rp = "10.0.0.1" }]', "static_rp[0]: group prefix '10.0.0.0/8'"),
        ('static_rp = [{ group = "239.0.0.0/8", rp = "239.1.1.1" }]', "must be a unicast address"),
        ('static_rp = [{ group = "239.0.0.0/8" }]', "needs exactly 'group'"),
        ('spt_switchover = "later"', "'spt_switchover' must be one of immediate, never"),
        ("spt_switchover = [1]", "'spt_switchover' must be one of immediate, never"),
    ],
)
def test_errors_name_the_entry_and_key(body: str, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_config(f"[pim]\n{body}\n", "f.toml")
    assert message in str(e.value)


def test_msdp_section() -> None:
    from mcr.routing.config import MsdpConfig, MsdpPeerEntry

    peers = '[{ address = "10.0.0.9", mesh_group = "core" }, { address = "10.0.0.7" }]'
    text = f"[msdp]\nkeepalive_interval = 30\npeers = {peers}\n"
    assert parse_config(text, "f.toml").msdp == MsdpConfig(
        True,
        (MsdpPeerEntry(IPv4Address("10.0.0.9"), None, "core", False), MsdpPeerEntry(IPv4Address("10.0.0.7"))),
        30,
        75,
    )
    assert parse_config("", "f.toml").msdp == MsdpConfig()


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("local_address = '10.0.0.1'", "[msdp]: unknown key 'local_address'"),
        ("keepalive_interval = 80", "'keepalive_interval' (80) must be below 'hold_time' (75)"),
        ("peers = [{ address = 'ff::1' }]", "peers[0]: 'address' must be an IPv4 address"),
        ("peers = [{ address = '127.0.0.1' }]", "127.0.0.1 is not a unicast peer address"),
        ("peers = [{ address = '10.0.0.9' }, { address = '10.0.0.9' }]", "peers[1]: peer 10.0.0.9 is listed twice"),
        ("peers = [{ address = '10.0.0.9', default_peer = 'yes' }]", "'default_peer' must be a boolean"),
        ("peers = [{ address = '10.0.0.9', md5 = 'x' }]", "unknown key 'md5'"),
    ],
)
def test_msdp_errors(body: str, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_config(f"[msdp]\n{body}\n", "f.toml")
    assert message in str(e.value)


def test_the_originals_json5_pim_and_msdp_sections_fill_ours() -> None:
    from mcr.routing.config import MsdpPeerEntry

    text = """{
  pim: { enabled: true, router_id: "10.0.0.1", interfaces: [ { name: "eth1" }, { name: "src0", passive: true } ],
         static_rp: [ { group: "239.0.0.0/8", rp: "10.0.0.1" } ], rp_address: null },
  msdp: { enabled: true, local_address: "10.0.0.1", peers: [ { address: "10.0.0.9", default_peer: true } ],
          keepalive_interval: null },
  rules: [],
}"""
    config = parse_config(text, "mcr.json5")
    assert config.pim.interfaces == (PimInterfaceConfig("eth1"), PimInterfaceConfig("src0", passive=True))
    assert [str(r.prefix) for r in config.pim.static_rps] == ["239.0.0.0/8"]
    assert config.msdp.peers == (MsdpPeerEntry(IPv4Address("10.0.0.9"), default_peer=True),)
    assert config.msdp.keepalive_interval == 60  # null: the default
    assert config.original.unserved == ()
    assert [w.split(": ", 1)[1].split(" ")[0] for w in config.warnings] == ["pim.router_id", "msdp.local_address"]


def test_msdp_sa_filter_in_the_config() -> None:
    from ipaddress import ip_network

    text = '[msdp]\npeers = [{ address = "10.0.0.9", sa_filter = ["239.255.0.0/16"] }]\n'
    assert parse_config(text, "f.toml").msdp.peers[0].sa_filter == (ip_network("239.255.0.0/16"),)
    with pytest.raises(ConfigError, match=r"peers\[0\]: sa_filter: group prefix '10.0.0.0/8'"):
        parse_config('[msdp]\npeers = [{ address = "10.0.0.9", sa_filter = ["10.0.0.0/8"] }]\n', "f.toml")
