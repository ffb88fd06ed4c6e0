"""MSDP peers and the SA cache (RFC 3618), pure: events and time in, actions out.

- **Connection rule** (§5): the peer with the lower address opens the TCP connection, the higher one
  listens. We connect only to configured peers whose address is higher than our local address, and
  accept only configured peers whose address is lower (the original did the opposite, and accepted
  anyone).
- **Timers**: ConnectRetry 30 s, KeepAlive 60 s (any message we send restarts it), Hold 75 s (any
  message we receive restarts it; expiry closes the session).
- **SA cache**: (S,G,RP) entries live SG-State-Period (90 s, the RFC's minimum: SA-Advertisement-Period
  60 s + SA-Hold-Down 30 s) after the last SA that carried them.
- **Peer-RPF** (§10.1.3): an SA is accepted from peer P when P is the originating RP, P is in a mesh group,
  P is our only peer, or P is a default peer. The rule that needs the unicast/BGP route toward the RP is not
  applied (there is no routing table here): configure default peers or mesh groups where it matters.
  Rejected SAs are counted (`rpf_failures`).
- **Flooding** (§10.2): an accepted SA goes to every other established peer, except the members of the
  sender's mesh group.
- **Origination**: when we are RP, our local sources go out as SAs at once and every 60 s.
- **SA filters**: a peer's `sa_filter` (group prefixes) keeps those groups' SAs from being taken from it or
  sent to it; what a filter drops is counted per peer.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from ipaddress import IPv4Address, IPv4Network

from mcr.routing.msdp_wire import Keepalive, MsdpMessage, SaEntry, SourceActive, max_entries_per_sa

CONNECT_RETRY_PERIOD = 30.0
KEEPALIVE_PERIOD = 60.0
HOLD_TIME = 75.0
SA_ADVERTISEMENT_PERIOD = 60.0
SG_STATE_PERIOD = 90.0
MAX_SA_CACHE = 50_000  # learned (S,G,RP) entries: what a peer announces beyond that is counted, not kept


@dataclass(frozen=True, slots=True)
class PeerConfig:
    address: IPv4Address
    local_address: IPv4Address
    description: str | None = None
    mesh_group: str | None = None
    default_peer: bool = False
    sa_filter: tuple[IPv4Network, ...] = ()  # groups never taken from nor sent to this peer

    def filtered(self, group: IPv4Address) -> bool:
        return any(group in prefix for prefix in self.sa_filter)

    @property
    def active(self) -> bool:
        """We open the connection (RFC 3618 §5: the lower address connects)."""
        return self.local_address < self.address


class PeerState(Enum):
    CONNECTING = "connecting"  # we are the lower address: connecting, or waiting to retry
    LISTEN = "listen"  # we are the higher address: waiting for the peer to connect
    ESTABLISHED = "established"


@dataclass(frozen=True, slots=True)
class Connect:
    peer: IPv4Address
    local_address: IPv4Address


@dataclass(frozen=True, slots=True)
class Close:
    peer: IPv4Address
    reason: str


@dataclass(frozen=True, slots=True)
class Send:
    peer: IPv4Address
    message: MsdpMessage


Action = Connect | Close | Send


@dataclass(slots=True)
class Peer:
    config: PeerConfig
    state: PeerState
    retry_at: float | None = None
    keepalive_at: float | None = None
    hold_until: float | None = None
    established_at: float | None = None
    sa_received: int = 0
    sa_sent: int = 0
    rpf_failures: int = 0
    sa_filtered: int = 0  # (S,G) entries dropped by the peer's SA filter, in or out
    connects: int = 0


@dataclass(frozen=True, slots=True)
class SaCacheEntry:
    source: IPv4Address
    group: IPv4Address
    rp: IPv4Address
    learned_from: IPv4Address | None  # None: one of our own sources
    created_at: float
    expires_at: float | None  # None: local, lasts while the source does


@dataclass(slots=True)
class _Local:
    rp: IPv4Address | None = None
    sources: frozenset[SaEntry] = frozenset()
    next_advertisement: float | None = None


@dataclass(slots=True)
class Counters:
    rejected_connections: int = 0
    sa_cache_expired: int = 0
    sa_cache_full: int = 0


class Msdp:
    """Every MSDP peer, the SA cache, and our own SAs."""

    def __init__(self, keepalive: float = KEEPALIVE_PERIOD, hold: float = HOLD_TIME) -> None:
        if not 0 < keepalive < hold:
            raise ValueError(f"the MSDP keepalive interval ({keepalive:g} s) must be below the hold time ({hold:g} s)")
        self.keepalive = keepalive
        self.hold = hold
        self.peers: dict[IPv4Address, Peer] = {}
        self._cache: dict[tuple[IPv4Address, IPv4Address, IPv4Address], SaCacheEntry] = {}
        self._local = _Local()
        self.counters = Counters()
        self.cache_version = 0  # grows whenever the set of learned (S,G) pairs changes

    # ------------------------------------------------------------------------------------ configuration

    def add_peer(self, config: PeerConfig, now: float) -> list[Action]:
        if config.address == config.local_address:
            raise ValueError(f"MSDP peer {config.address} is our own address")
        old = self.peers.get(config.address)
        if old is not None:
            old.config = config  # description, mesh group, default peer: take effect at once
            return []
        if config.active:
            self.peers[config.address] = Peer(config, PeerState.CONNECTING, connects=1)
            return [Connect(config.address, config.local_address)]
        self.peers[config.address] = Peer(config, PeerState.LISTEN)
        return []

    def remove_peer(self, address: IPv4Address) -> list[Action]:
        peer = self.peers.pop(address, None)
        if peer is None:
            return []
        gone = [k for k, e in self._cache.items() if e.learned_from == address]
        for key in gone:
            del self._cache[key]
        self.cache_version += bool(gone)
        return [Close(address, "peer removed")]

    def set_local_sources(self, rp: IPv4Address | None, sources: frozenset[SaEntry], now: float) -> list[Action]:
        """Our sources, advertised with `rp` (None: we are not an RP, nothing is originated)."""
        if (rp, sources) == (self._local.rp, self._local.sources):
            return []
        new = sources - self._local.sources if rp == self._local.rp else sources
        self._local.rp, self._local.sources = rp, sources
        if rp is None or not sources:
            self._local.next_advertisement = None
            return []
        self._local.next_advertisement = now + SA_ADVERTISEMENT_PERIOD
        return self._originate(new, now)

    def clear_cache(self) -> int:
        """Forget every learned SA (our own sources stay); how many went."""
        count = len(self._cache)
        self._cache.clear()
        self.cache_version += bool(count)
        return count

    # ------------------------------------------------------------------------------------------- events

    def accepts(self, address: IPv4Address) -> bool:
        """May `address` connect to us? Only a configured peer for which we are the listening side."""
        peer = self.peers.get(address)
        ok = peer is not None and not peer.config.active and peer.state is PeerState.LISTEN
        if not ok:
            self.counters.rejected_connections += 1
        return ok

    def on_established(self, address: IPv4Address, now: float) -> list[Action]:
        peer = self.peers.get(address)
        if peer is None:
            return [Close(address, "not a configured peer")]
        peer.state = PeerState.ESTABLISHED
        peer.established_at = now
        peer.retry_at = None
        peer.hold_until = now + self.hold
        actions: list[Action] = [self._send(peer, Keepalive(), now)]
        actions += self._sas_for(peer, self._local_entries(), now)
        return actions

    def on_connect_failed(self, address: IPv4Address, now: float) -> list[Action]:
        peer = self.peers.get(address)
        if peer is not None and peer.config.active:
            peer.state = PeerState.CONNECTING
            peer.retry_at = now + CONNECT_RETRY_PERIOD
        return []

    def on_closed(self, address: IPv4Address, now: float) -> list[Action]:
        """The TCP session ended (peer closed, error, or our own Close)."""
        peer = self.peers.get(address)
        if peer is None:
            return []
        peer.established_at = peer.keepalive_at = peer.hold_until = None
        if peer.config.active:
            peer.state = PeerState.CONNECTING
            peer.retry_at = now + CONNECT_RETRY_PERIOD
        else:
            peer.state = PeerState.LISTEN
        return []

    def on_message(self, address: IPv4Address, msg: MsdpMessage, now: float) -> list[Action]:
        peer = self.peers.get(address)
        if peer is None or peer.state is not PeerState.ESTABLISHED:
            return []
        peer.hold_until = now + self.hold
        if isinstance(msg, Keepalive):
            return []
        peer.sa_received += 1
        if not self._peer_rpf_ok(peer, msg.rp):
            peer.rpf_failures += 1
            return []
        entries = tuple(e for e in msg.entries if not peer.config.filtered(e.group))
        peer.sa_filtered += len(msg.entries) - len(entries)
        for e in entries:
            key = (e.source, e.group, msg.rp)
            old = self._cache.get(key)
            if old is None and len(self._cache) >= MAX_SA_CACHE:
                self.counters.sa_cache_full += 1
                continue
            self.cache_version += old is None
            created = old.created_at if old is not None else now
            self._cache[key] = SaCacheEntry(e.source, e.group, msg.rp, address, created, now + SG_STATE_PERIOD)
        actions: list[Action] = []
        for other in self.peers.values():
            if other is peer or other.state is not PeerState.ESTABLISHED:
                continue
            if peer.config.mesh_group is not None and other.config.mesh_group == peer.config.mesh_group:
                continue
            out = tuple(e for e in entries if not other.config.filtered(e.group))
            other.sa_filtered += len(entries) - len(out)
            if out:
                actions.append(self._send(other, SourceActive(msg.rp, out), now))
        return actions

    def on_timer(self, now: float) -> list[Action]:
        actions: list[Action] = []
        for peer in self.peers.values():
            if peer.state is PeerState.ESTABLISHED:
                if peer.hold_until is not None and peer.hold_until <= now:
                    actions.append(Close(peer.config.address, "hold timer expired"))
                    actions += self.on_closed(peer.config.address, now)
                elif peer.keepalive_at is not None and peer.keepalive_at <= now:
                    actions.append(self._send(peer, Keepalive(), now))
            elif peer.retry_at is not None and peer.retry_at <= now:
                peer.retry_at = None
                peer.connects += 1
                actions.append(Connect(peer.config.address, peer.config.local_address))
        for key, entry in list(self._cache.items()):
            if entry.expires_at is not None and entry.expires_at <= now:
                del self._cache[key]
                self.counters.sa_cache_expired += 1
                self.cache_version += 1
        local = self._local
        if local.next_advertisement is not None and local.next_advertisement <= now:
            local.next_advertisement = now + SA_ADVERTISEMENT_PERIOD
            actions += self._originate(local.sources, now)
        return actions

    def next_deadline(self) -> float | None:
        times: list[float] = []
        for p in self.peers.values():
            times += [t for t in (p.retry_at, p.keepalive_at, p.hold_until) if t is not None]
        times += [e.expires_at for e in self._cache.values() if e.expires_at is not None]
        if self._local.next_advertisement is not None:
            times.append(self._local.next_advertisement)
        return min(times, default=None)

    # ------------------------------------------------------------------------------------------ queries

    def learned_pairs(self) -> frozenset[SaEntry]:
        """The (S,G) pairs learned from peers (for SA-triggered (S,G) Joins)."""
        return frozenset(SaEntry(e.source, e.group) for e in self._cache.values())

    def cache(self) -> list[SaCacheEntry]:
        """Our own sources (learned_from None), then the learned entries."""
        rp = self._local.rp
        local = (
            [] if rp is None else [SaCacheEntry(e.source, e.group, rp, None, 0.0, None) for e in self._local_entries()]
        )
        learned = sorted(self._cache.values(), key=lambda e: (e.group, e.source, e.rp))
        return local + learned

    # ---------------------------------------------------------------------------------------- internals

    def _local_entries(self) -> list[SaEntry]:
        if self._local.rp is None:
            return []
        return sorted(self._local.sources, key=lambda e: (e.group, e.source))

    def _peer_rpf_ok(self, peer: Peer, rp: IPv4Address) -> bool:
        c = peer.config
        return c.address == rp or c.mesh_group is not None or len(self.peers) == 1 or c.default_peer

    def _originate(self, entries: frozenset[SaEntry], now: float) -> list[Action]:
        ordered = sorted(entries, key=lambda e: (e.group, e.source))
        actions: list[Action] = []
        for peer in self.peers.values():
            if peer.state is PeerState.ESTABLISHED:
                actions += self._sas_for(peer, ordered, now)
        return actions

    def _sas_for(self, peer: Peer, entries: list[SaEntry], now: float) -> list[Action]:
        rp = self._local.rp
        allowed = [e for e in entries if not peer.config.filtered(e.group)]
        peer.sa_filtered += len(entries) - len(allowed)
        entries = allowed
        if rp is None or not entries:
            return []
        step = max_entries_per_sa()
        chunks = [tuple(entries[i : i + step]) for i in range(0, len(entries), step)]
        return [self._send(peer, SourceActive(rp, chunk), now) for chunk in chunks]

    def _send(self, peer: Peer, msg: MsdpMessage, now: float) -> Send:
        """A message to an established peer: its KeepAlive timer restarts (any message keeps it alive)."""
        peer.keepalive_at = now + self.keepalive
        if isinstance(msg, SourceActive):
            peer.sa_sent += 1
        return Send(peer.config.address, msg)
