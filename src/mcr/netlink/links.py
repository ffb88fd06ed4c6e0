"""Interfaces and their IPv4 and IPv6 addresses, from rtnetlink. The only module that imports pyroute2."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from ipaddress import IPv4Address, IPv4Interface, IPv4Network, IPv6Address, IPv6Interface, IPv6Network

from pyroute2 import AsyncIPRoute

from mcr.model.links import Link

log = logging.getLogger("mcr.netlink")

IFF_UP = 0x1
IFF_LOWER_UP = 0x10000


async def dump_links(ipr: AsyncIPRoute) -> dict[str, Link]:
    addresses: dict[int, list[IPv4Address]] = {}
    networks: dict[int, list[IPv4Network]] = {}
    async for msg in await ipr.get_addr(family=2):
        addr = msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS")
        if addr:
            addresses.setdefault(int(msg["index"]), []).append(IPv4Address(addr))
            networks.setdefault(int(msg["index"]), []).append(IPv4Interface(f"{addr}/{int(msg['prefixlen'])}").network)
    addresses6: dict[int, list[IPv6Address]] = {}
    networks6: dict[int, list[IPv6Network]] = {}
    async for msg in await ipr.get_addr(family=10):
        addr = msg.get_attr("IFA_ADDRESS")
        if addr:
            addresses6.setdefault(int(msg["index"]), []).append(IPv6Address(addr))
            prefix = IPv6Interface(f"{addr}/{int(msg['prefixlen'])}").network
            if not prefix.is_link_local:
                networks6.setdefault(int(msg["index"]), []).append(prefix)
    links: dict[str, Link] = {}
    async for msg in await ipr.get_links():
        index = int(msg["index"])
        name = str(msg.get_attr("IFLA_IFNAME"))
        links[name] = Link(
            name=name,
            ifindex=index,
            up=bool(int(msg["flags"]) & IFF_UP),
            mtu=int(msg.get_attr("IFLA_MTU") or 0),
            ipv4=tuple(addresses.get(index, ())),
            mac=_mac(msg.get_attr("IFLA_ADDRESS")),
            carrier=bool(int(msg["flags"]) & IFF_LOWER_UP),
            ipv6=tuple(sorted(addresses6.get(index, ()), key=lambda a: a.is_link_local)),
            ipv4_networks=tuple(networks.get(index, ())),
            ipv6_networks=tuple(networks6.get(index, ())),
        )
    return links


def _mac(text: object) -> bytes:
    if not isinstance(text, str):
        return b""
    try:
        mac = bytes.fromhex(text.replace(":", ""))
    except ValueError:
        return b""
    return mac if len(mac) == 6 and any(mac) else b""


class LinkWatcher:
    """Keeps a current view of the links; calls `on_change(links)` whenever it differs."""

    def __init__(self, on_change: Callable[[dict[str, Link]], None], resync_s: float = 5.0) -> None:
        self.on_change = on_change
        self.resync_s = resync_s
        self.links: dict[str, Link] = {}
        self._kick = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._ipr: AsyncIPRoute | None = None
        self._mon: AsyncIPRoute | None = None

    async def start(self) -> None:
        self._ipr = AsyncIPRoute()
        self._mon = AsyncIPRoute()
        await self._mon.bind()
        await self.refresh()
        self._tasks = [asyncio.create_task(self._listen()), asyncio.create_task(self._refresher())]

    async def refresh(self) -> None:
        assert self._ipr is not None
        links = await dump_links(self._ipr)
        if links != self.links:
            self.links = links
            self.on_change(links)

    async def _listen(self) -> None:
        assert self._mon is not None
        while True:
            async for _msg in self._mon.get():
                self._kick.set()

    async def _refresher(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._kick.wait(), self.resync_s)
            except TimeoutError:
                pass
            self._kick.clear()
            await asyncio.sleep(0.02)  # let a burst of events settle
            try:
                await self.refresh()
            except Exception as e:
                log.warning("netlink refresh failed: %s", e)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for ipr in (self._ipr, self._mon):
            if ipr is not None:
                ipr.close()
