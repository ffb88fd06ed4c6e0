"""The DR's side of Register (RFC 7761 §4.4.1), pure: which sources to register, and when.

We are a source's DR when a rule with a single `--input-source` S captures group G on an interface that
runs PIM, S is on that interface's subnet (directly connected) and we are the DR there; the group's RP
must be another router. For each such (S,G) (`CouldRegister`), this core keeps the register state:

- Join: the register tunnel is up: the shell encapsulates S's packets to G in Registers to the RP;
- Prune: the RP sent a Register-Stop; nothing goes out until the Register-Stop timer (a random 30-90 s,
  less the probe time) expires;
- Join-Pending: we sent the RP a Null-Register (the IP header alone) and wait Register_Probe_Time (5 s)
  for another Register-Stop; without one, back to Join.

A Null-Register tells the RP the source still sends, so none is sent for a source silent for the
Keepalive period (210 s): its Prune goes back to Join, where its next packet is registered at once (the
shell reports what it sees of the source while it does not encapsulate: `saw_data`).

A Register-Stop in Join or Join-Pending goes to Prune; a new RP (or the RP seen for the first time) goes to
Join. When `CouldRegister` ends (the rule goes, we lose the DR election, the RP becomes us), the entry
goes. The shell draws the random suppression time and passes it in, with the time.

Data Registers are rate-limited (`REGISTER_DATA_RATE` packets a second over all sources, a token bucket):
the supervisor does no per-packet work at line rate, and the RP needs the data only until its Register-Stop
(its native (S,G) path then carries the stream); what the bucket refuses is counted, not sent.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from enum import Enum
from ipaddress import IPv4Address, IPv6Address

from mcr.packet.cbpf import ACCEPT, DROP, SKF_AD_OFF, SKF_AD_PKTTYPE, Insn, Op, PacketType
from mcr.routing.pim_joins import RpTable
from mcr.routing.pim_upstream import Wanted
from mcr.routing.pim_wire import IPAddress, Register, RegisterStop, ones_complement_sum

REGISTER_SUPPRESSION_TIME = 60.0
REGISTER_PROBE_TIME = 5.0
REGISTER_STOP_TIMER = (  # the range the shell draws the Register-Stop timer from
    0.5 * REGISTER_SUPPRESSION_TIME - REGISTER_PROBE_TIME,
    1.5 * REGISTER_SUPPRESSION_TIME - REGISTER_PROBE_TIME,
)
KEEPALIVE_PERIOD = 210.0  # a source silent this long is not probed for (RFC 7761: its Keepalive timer ran out)
REGISTER_DATA_RATE = 100.0  # data Registers a second, over all sources
REGISTER_DATA_BURST = 50.0


class RegisterState(Enum):
    JOIN = "Join"
    JOIN_PENDING = "JoinPending"
    PRUNE = "Prune"


@dataclass(frozen=True, slots=True)
class LocalSource:
    """A source we are the DR of: it sends to `group` on `interface`, and `rp` is the group's RP."""

    interface: str
    source: IPAddress
    group: IPAddress
    rp: IPAddress


@dataclass(frozen=True, slots=True)
class DrEntry:
    local: LocalSource
    state: RegisterState
    timer_at: float | None  # the Register-Stop timer (Prune, Join-Pending)
    last_data: float | None = None  # when the source was last seen sending (the Keepalive timer's start)


@dataclass(frozen=True, slots=True)
class SendRegister:
    """A Register to unicast to `rp`: a Null-Register (probe) here; data Registers are built by `encapsulate`."""

    rp: IPAddress
    message: Register


def could_register(
    wanted: Iterable[Wanted],
    connected: Callable[[str, IPAddress], bool],
    is_dr: Callable[[str], bool],
    rps: RpTable,
    ours: frozenset[IPAddress],
) -> dict[tuple[IPAddress, IPAddress], LocalSource]:
    """The (S,G) we are to register (RFC 7761 `CouldRegister`): a rule's single source, directly connected on its
    input interface (`connected`), where we are the DR, for a group whose RP is another router. A source seen
    on several such interfaces is registered from the first by name."""
    found: dict[tuple[IPAddress, IPAddress], LocalSource] = {}
    for w in sorted(wanted, key=lambda w: (w.interface, str(w.group), str(w.source))):
        if w.source is None or (w.source, w.group) in found:
            continue
        if not connected(w.interface, w.source) or not is_dr(w.interface):
            continue
        rp = rps.lookup(w.group)
        if rp is None or rp in ours or rp.version != w.source.version:
            continue
        found[(w.source, w.group)] = LocalSource(w.interface, w.source, w.group, rp)
    return found


def null_register_header(source: IPAddress, group: IPAddress) -> bytes:
    """The dummy inner header of a Null-Register: an IP header from S to G, protocol PIM (IPv4: with its
    checksum; IPv6: payload length 0)."""
    if isinstance(source, IPv6Address) and isinstance(group, IPv6Address):
        return struct.pack("!IHBB16s16s", 6 << 28, 0, 103, 255, source.packed, group.packed)
    assert isinstance(source, IPv4Address) and isinstance(group, IPv4Address)
    head = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20, 0, 0, 255, 103, 0, source.packed, group.packed)
    total = ones_complement_sum(head)
    return head[:10] + struct.pack("!H", ~total & 0xFFFF) + head[12:]


def words(address: IPv6Address) -> tuple[int, int, int, int]:
    """The address as the four 32-bit words a classic BPF program loads."""
    a, b, c, d = struct.unpack("!4I", address.packed)
    return a, b, c, d


def match_ipv6(offset: int, address: IPv6Address, miss: int, hit: int = 0) -> list[Insn]:
    """8 instructions that go on `hit` places after the last of them when the 16 bytes at `offset` are
    `address`, and `miss` places after it otherwise."""
    out: list[Insn] = []
    for i, word in enumerate(words(address)):
        out.append(Insn(Op.LD_W_ABS, k=offset + 4 * i))
        out.append(Insn(Op.JEQ_K, hit if i == 3 else 0, miss + 6 - 2 * i, word))
    return out


def source_group_filter(source: IPAddress, group: IPAddress) -> list[Insn]:
    """A classic BPF filter for an `AF_PACKET` `SOCK_DGRAM` socket (offset 0: the IP header): packets from
    `source` to `group` that the host did not send itself."""
    if isinstance(source, IPv6Address) and isinstance(group, IPv6Address):
        return [
            Insn(Op.LD_B_ABS, k=SKF_AD_OFF + SKF_AD_PKTTYPE),
            Insn(Op.JEQ_K, 17, 0, PacketType.OUTGOING),
            *match_ipv6(8, source, 9),
            *match_ipv6(24, group, 1),
            Insn(Op.RET_K, k=ACCEPT),
            Insn(Op.RET_K, k=DROP),
        ]
    assert isinstance(source, IPv4Address) and isinstance(group, IPv4Address)
    return [
        Insn(Op.LD_B_ABS, k=SKF_AD_OFF + SKF_AD_PKTTYPE),
        Insn(Op.JEQ_K, 5, 0, PacketType.OUTGOING),
        Insn(Op.LD_W_ABS, k=12),
        Insn(Op.JEQ_K, 0, 3, int(source)),
        Insn(Op.LD_W_ABS, k=16),
        Insn(Op.JEQ_K, 0, 1, int(group)),
        Insn(Op.RET_K, k=ACCEPT),
        Insn(Op.RET_K, k=DROP),
    ]


def register6_filter() -> list[Insn]:
    """A classic BPF filter for a raw IPv6 PIM socket (offset 0: the PIM header): Registers and Register-Stops."""
    return [
        Insn(Op.LD_B_ABS, k=0),
        Insn(Op.JEQ_K, 1, 0, 0x21),  # version 2, type 1
        Insn(Op.JEQ_K, 0, 1, 0x22),  # version 2, type 2
        Insn(Op.RET_K, k=ACCEPT),
        Insn(Op.RET_K, k=DROP),
    ]


def register_stop_filter() -> list[Insn]:
    """A classic BPF filter for a raw IPv4 PIM socket (offset 0: the IP header): Register-Stops only."""
    return [
        Insn(Op.LDX_B_MSH, k=0),  # X = the IP header's length
        Insn(Op.LD_H_IND, k=0),  # PIM version and type, reserved byte
        Insn(Op.ALU_AND_K, k=0xFF00),
        Insn(Op.JEQ_K, 0, 1, 0x2200),  # version 2, type 2
        Insn(Op.RET_K, k=ACCEPT),
        Insn(Op.RET_K, k=DROP),
    ]


class DrRegisters:
    """The register state of every source we are the DR of."""

    def __init__(self) -> None:
        self._entries: dict[tuple[IPAddress, IPAddress], DrEntry] = {}
        self._tokens = REGISTER_DATA_BURST
        self._tokens_at: float | None = None
        self.stops_received = 0  # Register-Stops that matched one of our sources
        self.stops_unmatched = 0  # Register-Stops for sources we do not register, or not from their RP
        self.data_rate_limited = 0  # packets not encapsulated: over REGISTER_DATA_RATE
        self.silent_sources = 0  # Register-Stop timers that ran out on a silent source: no probe sent

    def update(self, could_register: Mapping[tuple[IPAddress, IPAddress], LocalSource]) -> bool:
        """The sources we could register now (by (S,G)); whether the set of tunnels changed."""
        before = self.tunnels()
        for key in set(self._entries) - set(could_register):
            del self._entries[key]
        for key, local in could_register.items():
            old = self._entries.get(key)
            if old is None or old.local != local:  # new, or its RP (or interface) changed: the tunnel (re)starts
                self._entries[key] = DrEntry(local, RegisterState.JOIN, None, None if old is None else old.last_data)
        return self.tunnels() != before

    def on_register_stop(self, stop: RegisterStop, now: float, timer: float, sender: IPAddress) -> bool:
        """A Register-Stop from `sender` (its source may be the wildcard: every source of the group); `timer`
        is drawn in REGISTER_STOP_TIMER. It stops only the tunnels whose RP sent it (the RP answers from the
        address our Registers go to), so no other host on the path can silence a source. Whether the set of
        tunnels changed."""
        before = self.tunnels()
        matched = False
        wildcard = stop.source.is_unspecified
        for key, entry in list(self._entries.items()):
            source, group = key
            if group != stop.group.address or not (wildcard or source == stop.source) or entry.local.rp != sender:
                continue
            matched = True
            if entry.state is not RegisterState.PRUNE:
                self._entries[key] = replace(entry, state=RegisterState.PRUNE, timer_at=now + timer)
        if matched:
            self.stops_received += 1
        else:
            self.stops_unmatched += 1
        return self.tunnels() != before

    def on_timer(self, now: float) -> tuple[list[SendRegister], bool]:
        """Expired Register-Stop timers: Prune sends a Null-Register and waits the probe time (Join-Pending),
        Join-Pending goes back to Join. The Null-Registers to send, and whether the tunnels changed."""
        before = self.tunnels()
        sends: list[SendRegister] = []
        for key, entry in list(self._entries.items()):
            if entry.timer_at is None or entry.timer_at > now:
                continue
            silent = entry.last_data is None or now - entry.last_data >= KEEPALIVE_PERIOD
            if entry.state is RegisterState.PRUNE and silent:
                # nothing to probe for: back to Join, where the source's next packet is registered at once
                self._entries[key] = replace(entry, state=RegisterState.JOIN, timer_at=None)
                self.silent_sources += 1
            elif entry.state is RegisterState.PRUNE:
                self._entries[key] = replace(
                    entry, state=RegisterState.JOIN_PENDING, timer_at=now + REGISTER_PROBE_TIME
                )
                local = entry.local
                sends.append(
                    SendRegister(local.rp, Register(False, True, null_register_header(local.source, local.group)))
                )
            else:
                self._entries[key] = replace(entry, state=RegisterState.JOIN, timer_at=None)
        return sends, self.tunnels() != before

    def saw_data(self, source: IPAddress, group: IPAddress, now: float) -> None:
        """The source sent (seen by the shell while its packets are not encapsulated: Prune, Join-Pending)."""
        entry = self._entries.get((source, group))
        if entry is not None:
            self._entries[(source, group)] = replace(entry, last_data=now)

    def tunnels(self) -> frozenset[LocalSource]:
        """The sources whose data goes to the RP in Registers (state Join)."""
        return frozenset(e.local for e in self._entries.values() if e.state is RegisterState.JOIN)

    def encapsulate(self, source: IPAddress, group: IPAddress, packet: bytes, now: float) -> SendRegister | None:
        """The data Register for a packet of (S,G), or None: no tunnel, or over the rate (counted)."""
        entry = self._entries.get((source, group))
        if entry is None or entry.state is not RegisterState.JOIN:
            return None
        if entry.last_data != now:
            self._entries[(source, group)] = replace(entry, last_data=now)
        if self._tokens_at is not None:
            self._tokens = min(REGISTER_DATA_BURST, self._tokens + (now - self._tokens_at) * REGISTER_DATA_RATE)
        self._tokens_at = now
        if self._tokens < 1.0:
            self.data_rate_limited += 1
            return None
        self._tokens -= 1.0
        return SendRegister(entry.local.rp, Register(False, False, packet))

    def next_deadline(self) -> float | None:
        return min((e.timer_at for e in self._entries.values() if e.timer_at is not None), default=None)

    def entries(self) -> list[DrEntry]:
        return sorted(self._entries.values(), key=lambda e: (str(e.local.group), str(e.local.source)))
