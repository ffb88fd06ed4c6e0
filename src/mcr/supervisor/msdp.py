"""The MSDP shell: TCP sessions on port 639 around the pure peer/SA-cache core (`mcr.routing.msdp`).

For each local address that a peer is reached from (the kernel's choice of source toward the peer),
one listening socket on (address, 639); the core decides which side connects (the lower address) and
whether an incoming connection is accepted. Each session has a reader task feeding the framer; a
framing error, EOF or the hold timer closes it. A peer that does not drain what we send (over 1 MiB
queued) is closed rather than allowed to grow our memory.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from ipaddress import IPv4Address, ip_address

from mcr.model.errors import ValidationError
from mcr.model.rules import ForwardingRule
from mcr.protocol.routing import AddMsdpPeer, MsdpPeerInfo, MsdpSaInfo, RemoveMsdpPeer
from mcr.routing.config import MsdpConfig
from mcr.routing.msdp import Action, Close, Connect, Msdp, PeerConfig, PeerState, Send
from mcr.routing.msdp_wire import MSDP_PORT, FramingError, MsdpDrop, MsdpFramer, SaEntry, build_msdp
from mcr.routing.pim_joins import RpTable

log = logging.getLogger("mcr.controlplane.msdp")  # facility ControlPlane

CONNECT_TIMEOUT_S = 10.0
MAX_QUEUED = 1 << 20


@dataclass(eq=False)
class _Session:
    peer: IPv4Address
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    task: asyncio.Task[None] | None = None
    framer: MsdpFramer = field(default_factory=MsdpFramer)


def local_address_toward(peer: IPv4Address) -> IPv4Address:
    """The source address the kernel would use to reach `peer` (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect((str(peer), MSDP_PORT))
        return IPv4Address(s.getsockname()[0])


def local_sources(
    rules: Iterable[ForwardingRule], rps: RpTable, ours: frozenset[IPv4Address]
) -> tuple[IPv4Address | None, frozenset[SaEntry]]:
    """The sources we originate SAs for: rules with a single IPv4 input source whose group's RP is one of
    our addresses; and that RP address (None when we are RP for none of them)."""
    rp: IPv4Address | None = None
    entries: set[SaEntry] = set()
    if not any(a in ours for a in rps.addresses()):
        return None, frozenset()  # RP for no group: nothing to look at (a rule change costs nothing here)
    for r in rules:
        src = r.input_source
        if src is None or src.version != 4 or src.prefixlen != 32 or r.input_group.version != 4:
            continue
        group_rp = rps.lookup(r.input_group)
        if isinstance(group_rp, IPv4Address) and group_rp in ours:
            rp = rp or group_rp
            entries.add(SaEntry(IPv4Address(src.network_address), IPv4Address(r.input_group)))
    return rp, frozenset(entries)


class MsdpService:
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        on_sources: Callable[[], None] = lambda: None,
        config: MsdpConfig | None = None,
    ) -> None:
        self.loop = loop
        self.on_sources = on_sources  # the learned (S,G) pairs changed
        self._seen_version = 0
        self.config = config if config is not None and config.enabled else MsdpConfig()
        self.core = Msdp(self.config.keepalive_interval, self.config.hold_time)
        self.servers: dict[IPv4Address, asyncio.Server] = {}
        self.sessions: dict[IPv4Address, _Session] = {}
        self.counters: Counter[str] = Counter()
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------------------------------- requests

    async def start(self) -> None:
        """The config file's peers (a peer that cannot be set up is logged, the others go on)."""
        for p in self.config.peers:
            try:
                request = AddMsdpPeer(p.address, p.description, p.mesh_group, p.default_peer, p.sa_filter)
                log.info("%s", await self.add_peer(request))
            except ValidationError as e:
                log.error("MSDP peer %s from the config file: %s", p.address, e)

    async def add_peer(self, req: AddMsdpPeer) -> str:
        try:
            local = local_address_toward(req.address)
        except OSError as e:
            raise ValidationError(f"MSDP peer {req.address} is not reachable: {e.strerror}") from None
        if local == req.address:
            raise ValidationError(f"MSDP peer {req.address} is one of our own addresses")
        if local not in self.servers:
            try:
                self.servers[local] = await asyncio.start_server(
                    self._on_accept, host=str(local), port=MSDP_PORT, reuse_address=True
                )
            except OSError as e:
                raise ValidationError(f"cannot listen for MSDP on {local}:{MSDP_PORT}: {e.strerror}") from None
        config = PeerConfig(req.address, local, req.description, req.mesh_group, req.default_peer, req.sa_filter)
        self._execute(self.core.add_peer(config, self.loop.time()))
        side = "connecting" if config.active else "listening"
        return f"MSDP peer {req.address} added ({side} from {local})"

    def remove_peer(self, req: RemoveMsdpPeer) -> str:
        if req.address not in self.core.peers:
            raise ValidationError(f"MSDP peer {req.address} not found")
        self._execute(self.core.remove_peer(req.address))
        return f"MSDP peer {req.address} removed"

    def clear_cache(self) -> str:
        text = f"MSDP SA cache cleared ({self.core.clear_cache()} entries)"
        self._execute([])
        return text

    def set_local_sources(self, rp: IPv4Address | None, entries: frozenset[SaEntry]) -> None:
        self._execute(self.core.set_local_sources(rp, entries, self.loop.time()))

    def peer_infos(self) -> tuple[MsdpPeerInfo, ...]:
        now = self.loop.time()
        return tuple(
            MsdpPeerInfo(
                address=p.config.address,
                state=p.state.value,
                description=p.config.description,
                mesh_group=p.config.mesh_group,
                default_peer=p.config.default_peer,
                uptime_secs=None if p.established_at is None else int(now - p.established_at),
                sa_received=p.sa_received,
                sa_sent=p.sa_sent,
                is_active=p.config.active,
                rpf_failures=p.rpf_failures,
                sa_filter=p.config.sa_filter,
                sa_filtered=p.sa_filtered,
            )
            for p in sorted(self.core.peers.values(), key=lambda p: p.config.address)
        )

    def sa_infos(self) -> tuple[MsdpSaInfo, ...]:
        now = self.loop.time()
        return tuple(
            MsdpSaInfo(
                source=e.source,
                group=e.group,
                origin_rp=e.rp,
                learned_from=e.learned_from,
                age_secs=0 if e.learned_from is None else int(now - e.created_at),
                expires_in_secs=0 if e.expires_at is None else max(0, int(e.expires_at - now)),
                is_local=e.learned_from is None,
            )
            for e in self.core.cache()
        )

    async def close(self) -> None:
        self.on_sources = lambda: None
        for peer in list(self.sessions):
            self._drop_session(peer)
        for server in self.servers.values():
            server.close()
        for server in self.servers.values():
            await server.wait_closed()
        self.servers.clear()
        for task in list(self._tasks):
            task.cancel()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # ---------------------------------------------------------------------------------------- sessions

    def _on_accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peername = writer.get_extra_info("peername")
        try:
            address = ip_address(peername[0])
        except (TypeError, ValueError, IndexError):
            writer.close()
            return
        if not isinstance(address, IPv4Address) or address in self.sessions or not self.core.accepts(address):
            log.warning("MSDP connection from %s refused: not a peer we listen for", address)
            writer.close()
            return
        self._start_session(address, reader, writer)

    async def _connect(self, peer: IPv4Address, local: IPv4Address) -> None:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(str(peer), MSDP_PORT, local_addr=(str(local), 0)), CONNECT_TIMEOUT_S
            )
        except (OSError, TimeoutError) as e:
            log.info("MSDP connect to %s failed: %s; retrying in 30 s", peer, e)
            self._execute(self.core.on_connect_failed(peer, self.loop.time()))
            return
        if peer not in self.core.peers or peer in self.sessions:
            writer.close()
            return
        self._start_session(peer, reader, writer)

    def _start_session(self, peer: IPv4Address, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        session = _Session(peer, reader, writer)
        self.sessions[peer] = session
        session.task = self._spawn(self._read(session))
        log.info("MSDP session with %s established", peer)
        self._execute(self.core.on_established(peer, self.loop.time()))

    async def _read(self, session: _Session) -> None:
        reason = "closed by the peer"
        try:
            while True:
                data = await session.reader.read(65536)
                if not data:
                    break
                for item in session.framer.feed(data):
                    if isinstance(item, MsdpDrop):
                        self.counters[f"drop_{item.value}"] += 1
                        continue
                    self._execute(self.core.on_message(session.peer, item, self.loop.time()))
        except FramingError as e:
            reason = str(e)
        except OSError as e:
            reason = str(e)
        if self.sessions.get(session.peer) is session:
            log.info("MSDP session with %s ended: %s", session.peer, reason)
            self._drop_session(session.peer)

    def _drop_session(self, peer: IPv4Address) -> None:
        session = self.sessions.pop(peer, None)
        if session is None:
            return
        session.writer.close()
        if session.task is not None and session.task is not asyncio.current_task():
            session.task.cancel()
        self._execute(self.core.on_closed(peer, self.loop.time()))

    def _spawn(self, coro: object) -> asyncio.Task[None]:
        task: asyncio.Task[None] = self.loop.create_task(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # ------------------------------------------------------------------------------------------ actions

    def _execute(self, actions: list[Action]) -> None:
        for action in actions:
            match action:
                case Connect():
                    self._spawn(self._connect(action.peer, action.local_address))
                case Send():
                    session = self.sessions.get(action.peer)
                    if session is None:
                        continue
                    transport = session.writer.transport
                    if transport.get_write_buffer_size() > MAX_QUEUED:
                        log.warning("MSDP peer %s does not read what we send; closing", action.peer)
                        self._drop_session(action.peer)
                        continue
                    session.writer.write(build_msdp(action.message))
                case Close():
                    if action.peer in self.sessions:
                        log.info("MSDP session with %s closed: %s", action.peer, action.reason)
                        self._drop_session(action.peer)
        self._schedule()
        if self.core.cache_version != self._seen_version:
            self._seen_version = self.core.cache_version
            self.on_sources()

    def _on_timer(self) -> None:
        self._timer = None
        self._execute(self.core.on_timer(self.loop.time()))

    def _schedule(self) -> None:
        deadline = self.core.next_deadline()
        if self._timer is not None and (deadline is None or self._timer.when() != deadline):
            self._timer.cancel()
            self._timer = None
        if deadline is not None and self._timer is None:
            self._timer = self.loop.call_at(deadline, self._on_timer)

    def established(self) -> list[IPv4Address]:
        return [a for a, p in self.core.peers.items() if p.state is PeerState.ESTABLISHED]
