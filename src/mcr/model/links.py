"""An interface as the relay sees it."""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network


@dataclass(frozen=True, slots=True)
class Link:
    name: str
    ifindex: int
    up: bool
    mtu: int
    ipv4: tuple[IPv4Address, ...] = ()
    mac: bytes = b""  # empty for links without an Ethernet address (lo, tun)
    carrier: bool = True  # IFF_LOWER_UP: without it the kernel silently drops what is sent there
    ipv6: tuple[IPv6Address, ...] = ()  # global and unique-local addresses first, then link-local ones
    ipv4_networks: tuple[IPv4Network, ...] = ()  # the subnets of `ipv4` (directly connected sources)
    ipv6_networks: tuple[IPv6Network, ...] = ()  # the prefixes of `ipv6` (directly connected sources)
    # (ifindex, name): made once, so that the resolutions of every rule on this input share it
    ident: tuple[int, str] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "ident", (self.ifindex, self.name))
