"""The [igmp] and [mld] sections of the TOML config: values, defaults and precise errors."""

import pytest

from mcr.membership.querier import Timers
from mcr.membership.settings import MembershipSettings
from mcr.model.config import parse_config
from mcr.model.errors import ConfigError


def test_sections_fill_the_settings() -> None:
    config = parse_config(
        '[igmp]\nquerier_interfaces = ["eth1"]\npassive_interfaces = ["eth2"]\nquery_interval = 30\n'
        "robustness = 3\nquery_response_interval = 2.5\nlast_member_query_interval = 0.5\n"
        '[mld]\nquerier_interfaces = ["eth1"]\nversion = 1\n',
        "mcr.toml",
    )
    assert config.igmp == MembershipSettings(
        ("eth1",),
        ("eth2",),
        Timers(robustness=3, query_interval=30.0, query_response_interval=2.5, last_member_query_interval=0.5),
    )
    assert config.mld.timers.version == 1 and config.mld.querier_interfaces == ("eth1",)


def test_absent_sections_are_defaults() -> None:
    config = parse_config("", "mcr.toml")
    assert config.igmp == MembershipSettings() and config.mld == MembershipSettings()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[igmp]\nquery_intervall = 3\n", "mcr.toml: [igmp]: unknown key 'query_intervall'"),
        ("[igmp]\nrobustness = 0\n", "mcr.toml: [igmp]: robustness must be 1 to 7, got 0"),
        ("[igmp]\nrobustness = 1.5\n", "mcr.toml: [igmp]: 'robustness' must be an integer"),
        ("[igmp]\nquery_interval = 'x'\n", "mcr.toml: [igmp]: 'query_interval' must be a number of seconds"),
        ("[igmp]\nquery_response_interval = 200\n", "query_response_interval must be less than query_interval"),
        ("[mld]\nversion = 3\n", "mcr.toml: [mld]: version must be 1 or 2 for MLD"),
        ("[igmp]\nquerier_interfaces = 'eth1'\n", "'querier_interfaces' must be an array of interface names"),
        ("[igmp]\nquerier_interfaces = ['-x']\n", "mcr.toml: [igmp]: "),
        (
            "[igmp]\nquerier_interfaces = ['eth1']\npassive_interfaces = ['eth1']\n",
            "interface eth1 is both a querier and a passive interface",
        ),
    ],
)
def test_errors(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_config(text, "mcr.toml")
    assert message in str(e.value)
