"""Forwarding rules, output destinations and their validation (DESIGN §6).

Error texts follow the original MCR where it had one, so that its users see the same words.
"""

from __future__ import annotations

import hashlib
import re
import struct
import sys
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum, IntEnum
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network
from socket import AF_INET, AF_INET6, inet_ntoa, inet_ntop, inet_pton
from typing import overload

from mcr.model.errors import ValidationError
from mcr.model.ratelimit import RateLimit, rate_limit_problem

#: A group or address of either family, and an input source: a host or a prefix.
IPAddress = IPv4Address | IPv6Address
SourcePrefix = IPv4Network | IPv6Network

MULTICAST_V4 = IPv4Network("224.0.0.0/4")
MULTICAST_V6 = IPv6Network("ff00::/8")
LIMITED_BROADCAST = IPv4Address("255.255.255.255")
RESERVED_V4 = IPv4Network("240.0.0.0/4")
LOOPBACK_V4 = IPv4Network("127.0.0.0/8")
UNSPECIFIED = IPv4Address("0.0.0.0")
UNSPECIFIED_V6 = IPv6Address("::")
LINK_LOCAL_V6 = IPv6Network("fe80::/10")
# IPv6 multicast scopes (RFC 4291 2.7): the low nibble of the second byte.
SCOPE_INTERFACE_LOCAL = 1
SCOPE_LINK_LOCAL = 2
IFNAMSIZ_MAX = 15
#: The TTL (hop limit) of a multicast output that names none, unless the supervisor's `multicast_ttl` says
#: otherwise; a unicast output that names none keeps the kernel's default (net.ipv4.ip_default_ttl).
DEFAULT_MULTICAST_TTL = 1
MAX_NAME_LENGTH = 64

_IFNAME_CHARS = re.compile(r"[A-Za-z0-9_.\-]")
_RULE_ID = re.compile(r"[A-Za-z0-9_.:\-]{1,64}")


class RuleSource(Enum):
    """Where a rule came from: the config file or a runtime command."""

    RUNTIME = "runtime"
    CONFIG = "config"


class InputProtocol(IntEnum):
    """The IP protocol a rule relays (the original's `input_protocol`)."""

    UDP = 17
    ESP = 50


class Engine(Enum):
    USERSPACE = "userspace"
    KERNEL = "kernel"


def is_multicast(address: IPAddress) -> bool:
    return address in (MULTICAST_V4 if address.version == 4 else MULTICAST_V6)


def endpoint_text(group: IPAddress, port: int) -> str:
    """`239.1.1.1:5000` or `[ff3e::1]:5000`."""
    return f"[{group}]:{port}" if group.version == 6 else f"{group}:{port}"


def source_text(source: SourcePrefix) -> str:
    """A one-host prefix as its address (`10.0.0.1`), any other as a prefix (`10.0.0.0/24`)."""
    return str(source.network_address) if source.prefixlen == source.max_prefixlen else str(source)


def _family(text: str) -> str:
    return "IPv6" if ":" in text else "IPv4"


def parse_source(text: str) -> SourcePrefix:
    """An input source, `S` or `S/len`, of either family; ValueError with the reason otherwise."""
    if "/" not in text:
        return ip_network(parse_group(text))
    try:
        return ip_network(text.strip(), strict=True)
    except ValueError as e:
        raise ValueError(f"'{text}' is not a valid {_family(text)} prefix: {e}") from None


def parse_group(text: str) -> IPAddress:
    """An address of either family; ValueError naming the text otherwise. Read by the C library's
    `inet_pton` (about 1 µs, against 5 for `ipaddress` and an IPv6 address: a config file of 10,000 rules
    has 35,000), which takes the very texts `ipaddress` takes but a scoped IPv6 address
    (tests/property/test_address_text_properties.py); what it refuses goes to `ipaddress`, for its scope or
    its error."""
    if not isinstance(text, str):
        raise ValueError(f"an address must be a string, got {type(text).__name__}")
    bare = text.strip()
    try:
        if ":" in bare:
            return IPv6Address(inet_pton(AF_INET6, bare))
        return IPv4Address(inet_pton(AF_INET, bare))
    except (OSError, ValueError):
        pass
    try:
        return ip_address(bare)
    except ValueError:
        raise ValueError(f"'{text}' is not a valid {_family(text)} address") from None


_PORTS: dict[int, int] = {}


def shared_port(port: int) -> int:
    """One int object per port number (0-65535) for every rule and output that names it: a decoded port
    above 256 is an object of its own (32 bytes), and rules mostly use a few ports. At most 65,536 are kept."""
    if type(port) is not int or not 0 <= port <= 0xFFFF:
        return port  # left to validation
    return _PORTS.setdefault(port, port)


@dataclass(frozen=True, slots=True)
class OutputDestination:
    group: IPAddress
    port: int
    interface: str
    ttl: int | None = None  # the hop limit for an IPv6 group; None: see effective_ttl
    source_ip: IPAddress | None = None  # send from this address instead of the interface's own
    follow_receivers: bool = False  # send only while the interface has receivers for the group (IGMP/MLD)

    def __post_init__(self) -> None:
        # thousands of outputs name a few interfaces: one string each (see docs/design.md, Scale)
        object.__setattr__(self, "interface", sys.intern(self.interface))
        object.__setattr__(self, "port", shared_port(self.port))

    @property
    def spec(self) -> str:
        return f"{endpoint_text(self.group, self.port)}:{self.interface}"


# An output packed (`OutputList`): flags, the group (4 or 16 bytes), the port (2), then the TTL (1) and the
# source address (4 or 16) when it has them, then the interface name (a length byte and ASCII).
_PACKED_V6 = 1
_PACKED_TTL = 2
_PACKED_SOURCE = 4
_PACKED_SOURCE_V6 = 8
_PACKED_FOLLOW = 16


def _packed_address(address: object) -> tuple[int, bytes] | None:
    """(0 for IPv4 or 1 for IPv6, its 4 or 16 bytes), or None for what packing would not give back equal."""
    if type(address) is IPv4Address:
        return 0, int(address).to_bytes(4, "big")
    if type(address) is IPv6Address and address.scope_id is None:
        return 1, int(address).to_bytes(16, "big")
    return None


def _pack_output(out: OutputDestination) -> bytes | None:
    group = _packed_address(out.group)
    port, ttl, name = out.port, out.ttl, out.interface
    if group is None or type(port) is not int or not 0 <= port <= 0xFFFF or not name.isascii() or len(name) > 255:
        return None
    flags = group[0] * _PACKED_V6
    tail = b""
    if ttl is not None:
        if type(ttl) is not int or not 0 <= ttl <= 255:
            return None
        flags |= _PACKED_TTL
        tail = bytes((ttl,))
    if out.source_ip is not None:
        source = _packed_address(out.source_ip)
        if source is None:
            return None
        flags |= _PACKED_SOURCE | source[0] * _PACKED_SOURCE_V6
        tail += source[1]
    if out.follow_receivers is True:
        flags |= _PACKED_FOLLOW
    elif out.follow_receivers is not False:
        return None
    return b"".join((bytes((flags,)), group[1], port.to_bytes(2, "big"), tail, bytes((len(name),)), name.encode()))


_V4_HEAD = struct.Struct(">BIH")  # flags, an IPv4 group, the port
_V6_HEAD = struct.Struct(">B16sH")
_NAMES: dict[bytes, str] = {}  # interface names as read back: one string each (at most 4,096 kept)


def _unpack_address(data: bytes, pos: int, v6: int) -> tuple[IPAddress, int]:
    if v6:
        return IPv6Address(int.from_bytes(data[pos : pos + 16], "big")), pos + 16
    return IPv4Address(int.from_bytes(data[pos : pos + 4], "big")), pos + 4


def _unpack_outputs(data: bytes) -> tuple[OutputDestination, ...]:
    outs = []
    pos = 2
    for _ in range(data[0] << 8 | data[1]):
        group: IPAddress
        if data[pos] & _PACKED_V6:
            flags, raw, port = _V6_HEAD.unpack_from(data, pos)
            group = IPv6Address(int.from_bytes(raw, "big"))
            pos += 19
        else:
            flags, n, port = _V4_HEAD.unpack_from(data, pos)
            group = IPv4Address(n)
            pos += 7
        ttl = source = None
        if flags & _PACKED_TTL:
            ttl = data[pos]
            pos += 1
        if flags & _PACKED_SOURCE:
            source, pos = _unpack_address(data, pos, flags & _PACKED_SOURCE_V6)
        end = pos + 1 + data[pos]
        raw_name = data[pos + 1 : end]
        name = _NAMES.get(raw_name)
        if name is None:
            if len(_NAMES) >= 4096:
                _NAMES.clear()
            name = _NAMES[raw_name] = sys.intern(raw_name.decode())
        pos = end
        out = _new_output(OutputDestination)
        _set_group(out, group)
        _set_port(out, shared_port(port))
        _set_interface(out, name)
        _set_ttl(out, ttl)
        _set_source_ip(out, source)
        _set_follow(out, bool(flags & _PACKED_FOLLOW))
        outs.append(out)
    return tuple(outs)


# An output read back is made without `OutputDestination.__init__` (a third of the time): it was checked when it
# was packed, and its name is interned already (`_NAMES`). The fields are set through their slots.
_new_output = object.__new__
_set_group, _set_port, _set_interface, _set_ttl, _set_source_ip, _set_follow = (
    getattr(OutputDestination, name).__set__
    for name in ("group", "port", "interface", "ttl", "source_ip", "follow_receivers")
)


#: The outputs read last, and the bytes they were read from: a change reads one rule's outputs several times
#: over (validation, resolution, the workers' form, the journal), and the second read on costs nothing.
_last_read: tuple[bytes, tuple[OutputDestination, ...]] = (b"", ())


class OutputList(Sequence[OutputDestination]):
    """A rule's outputs, as a tuple of them behaves, but held packed in one `bytes` (about 15 bytes an IPv4
    output, 27 an IPv6 one) and made into `OutputDestination`s when read: a table of 10,000 rules holds their
    outputs in 1 MB instead of 4.5 (the objects and their addresses, 170 bytes an output). Reading them costs
    about 2 µs an output; what reads every rule's outputs often (listings, statistics templates) keeps its text.
    Outputs that would not come back equal (a port out of range, a name that is not ASCII: refused later by
    validation, which must see them as they were given) are held as given."""

    __slots__ = ("_held",)

    def __init__(self, outputs: Iterable[OutputDestination] = ()) -> None:
        given = tuple(outputs)
        packed = [_pack_output(out) for out in given] if len(given) <= 0xFFFF else [None]
        self._held: bytes | tuple[OutputDestination, ...] = (
            given if None in packed else b"".join((len(given).to_bytes(2, "big"), *packed))
        )

    def _outputs(self) -> tuple[OutputDestination, ...]:
        global _last_read
        held = self._held
        if isinstance(held, tuple):
            return held
        last = _last_read
        if last[0] is held:
            return last[1]
        outputs = _unpack_outputs(held)
        _last_read = (held, outputs)
        return outputs

    def __len__(self) -> int:
        held = self._held
        return len(held) if isinstance(held, tuple) else held[0] << 8 | held[1]

    def follow_receivers(self) -> bool:
        """Whether an output follows receivers, told from the packed flags without making the outputs."""
        held = self._held
        if isinstance(held, tuple):
            return any(out.follow_receivers for out in held)
        pos = 2
        for _ in range(len(self)):
            flags = held[pos]
            if flags & _PACKED_FOLLOW:
                return True
            pos += 3 + (16 if flags & _PACKED_V6 else 4) + (1 if flags & _PACKED_TTL else 0)
            if flags & _PACKED_SOURCE:
                pos += 16 if flags & _PACKED_SOURCE_V6 else 4
            pos += 1 + held[pos]
        return False

    @overload
    def __getitem__(self, index: int) -> OutputDestination: ...

    @overload
    def __getitem__(self, index: slice) -> tuple[OutputDestination, ...]: ...

    def __getitem__(self, index: int | slice) -> OutputDestination | tuple[OutputDestination, ...]:
        return self._outputs()[index]

    def __iter__(self) -> Iterator[OutputDestination]:
        return iter(self._outputs())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, OutputList):
            if type(self._held) is type(other._held):
                return self._held == other._held
            return self._outputs() == other._outputs()
        if isinstance(other, tuple | list):
            return self._outputs() == tuple(other)
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._outputs())

    def __repr__(self) -> str:
        return repr(self._outputs())


@dataclass(frozen=True, slots=True)
class ForwardingRule:
    rule_id: str
    input_interface: str
    input_group: IPAddress
    input_port: int
    outputs: Sequence[OutputDestination]  # held as an `OutputList`, whatever sequence is given
    input_source: SourcePrefix | None = None  # only packets from this host or prefix match
    source: RuleSource = field(default=RuleSource.RUNTIME, compare=False)
    rate_limit: RateLimit | None = None  # None: unlimited
    name: str | None = None  # a human-friendly name, unique like the id (the original's `name`)
    input_protocol: InputProtocol = InputProtocol.UDP

    def __post_init__(self) -> None:
        # one string per id and per interface, shared with the ids that workers' reports decode (`sys.intern`)
        object.__setattr__(self, "rule_id", sys.intern(self.rule_id))
        object.__setattr__(self, "input_interface", sys.intern(self.input_interface))
        object.__setattr__(self, "input_port", shared_port(self.input_port))
        if type(self.outputs) is not OutputList:
            object.__setattr__(self, "outputs", OutputList(self.outputs))

    @property
    def flow(self) -> tuple[str, IPAddress, int]:
        """Its input flow: (input interface, group, port). Made when asked: the indexes of rules key them by
        their input group, which the rule holds anyway, and compare the flows of the few on one group."""
        return (self.input_interface, self.input_group, self.input_port)

    @property
    def follows_receivers(self) -> bool:
        """Whether one of its outputs follows receivers (`OutputDestination.follow_receivers`)."""
        outputs = self.outputs
        if isinstance(outputs, OutputList):
            return outputs.follow_receivers()
        return any(out.follow_receivers for out in outputs)

    @property
    def input_key(self) -> tuple[str, IPAddress, int, SourcePrefix | None]:
        return (self.input_interface, self.input_group, self.input_port, self.input_source)

    @property
    def input_text(self) -> str:
        """`eth0 239.1.1.1:5000`, `eth0 [ff3e::1]:5000 from 2001:db8::1`."""
        text = f"{self.input_interface} {endpoint_text(self.input_group, self.input_port)}"
        return text if self.input_source is None else f"{text} from {source_text(self.input_source)}"


@dataclass(frozen=True, slots=True)
class Limits:
    """Caps that protect a small host; every refusal names the limit as `(name = value)`.

    This is the one place each limit and its default live: the supervisor's flags, the config
    file's [limits] table, the rule table and the control server all read them from here.
    """

    max_rules: int = 10_000  # what one supervisor was measured to carry (docs/benchmarks.md, scale)
    max_outputs_per_rule: int = 256
    max_total_outputs: int = 40_000
    max_request_bytes: int = 1 << 20
    max_connections: int = 64  # control connections served at once
    max_connection_seconds: int = 5  # to send a complete request and take the answer

    def named(self, name: str) -> str:
        """`(name = value)`: how every refusal names the limit it hit."""
        return f"({name} = {getattr(self, name)})"


def interface_name_problem(name: str) -> str | None:
    """Why `name` is not a valid Linux interface name, or None when it is."""
    if not name:
        return "interface name cannot be empty"
    if len(name.encode()) > IFNAMSIZ_MAX:
        return f"interface name '{name}' exceeds maximum length of {IFNAMSIZ_MAX} characters"
    for i, ch in enumerate(name):
        if not _IFNAME_CHARS.fullmatch(ch):
            return (
                f"interface name '{name}' contains invalid character '{ch}' at position {i}; "
                "only alphanumeric, dash, underscore, and dot are allowed"
            )
    if name[0] in "-.":
        return f"interface name '{name}' cannot start with '{name[0]}'; must start with alphanumeric or underscore"
    return None


def effective_ttl(out: OutputDestination, multicast_ttl: int = DEFAULT_MULTICAST_TTL) -> int | None:
    """The TTL an output sends with: its own, else `multicast_ttl` for a multicast group; None for a unicast
    output that names none (the kernel's default applies, so a routed unicast output crosses routers)."""
    if out.ttl is not None:
        return out.ttl
    return multicast_ttl if is_multicast(out.group) else None


def generated_rule_id(
    interface: str,
    group: IPAddress,
    port: int,
    source: SourcePrefix | None,
    protocol: InputProtocol = InputProtocol.UDP,
) -> str:
    """A stable id derived from the input key, so re-adding the same flow yields the same id."""
    text = f"{interface}|{group}|{port}|{'' if source is None else source_text(source)}|{protocol.name.lower()}"
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


_V6_SPEC = re.compile(r"\[([^\]]*)\]:([^:]*):([^:]*)")


def parse_output_spec(spec: str, ttl: int | None = None) -> OutputDestination:
    """Parse the CLI's `group:port:interface` form (original error texts), or `[ipv6-group]:port:interface`."""
    text = spec.strip()
    group: IPAddress
    if text.startswith("["):
        m = _V6_SPEC.fullmatch(text)
        if m is None:
            raise ValidationError(f"Invalid format. Expected [ipv6-group]:port:interface, got '{spec}'")
        group_text, port_text, interface = m.groups()
        try:
            group = IPv6Address(group_text)
        except ValueError:
            raise ValidationError(f"Invalid group IP: '{group_text}' in '{spec}'") from None
    else:
        parts = text.split(":")
        if len(parts) != 3:
            hint = " (write an IPv6 group in brackets: [ff3e::1]:6000:eth1)" if len(parts) > 3 else ""
            raise ValidationError(f"Invalid format. Expected group:port:interface, got '{spec}'{hint}")
        group_text, port_text, interface = parts
        try:
            group = IPv4Address(group_text)
        except ValueError:
            raise ValidationError(f"Invalid group IP: '{group_text}' in '{spec}'") from None
    try:
        port = int(port_text, 10)
    except ValueError:
        raise ValidationError(f"Invalid port: '{port_text}' in '{spec}'") from None
    return OutputDestination(group=group, port=port, interface=interface, ttl=ttl)


def _port_problem(label: str, port: int) -> str | None:
    if port == 0:
        return f"{label} cannot be 0; valid port range is 1-65535"
    if not 1 <= port <= 65535:
        return f"{label} {port} is out of range; valid port range is 1-65535"
    return None


def ttl_problem(label: str, ttl: int | None) -> str | None:
    if ttl is not None and not 1 <= ttl <= 255:
        return f"{label} {ttl} is out of range; valid TTL range is 1-255"
    return None


def check_rule_shape(rule: ForwardingRule) -> None:
    """Checks that need only the rule itself (no limits); raises ValidationError with the response text."""
    if not _RULE_ID.fullmatch(rule.rule_id):
        raise ValidationError(
            f"Invalid rule_id '{rule.rule_id}': must be 1-64 characters of letters, digits, '_', '.', ':' or '-'"
        )
    problem = interface_name_problem(rule.input_interface)
    if problem:
        raise ValidationError(f"Invalid input_interface: {problem}")
    outputs = tuple(rule.outputs)  # read once, then walked three times
    for i, out in enumerate(outputs):
        problem = interface_name_problem(out.interface)
        if problem:
            raise ValidationError(f"Invalid output_interface in output[{i}]: {problem}")
    if rule.name is not None:
        problem = name_problem(rule.name)
        if problem:
            raise ValidationError(problem)
    if rule.input_protocol is InputProtocol.ESP:
        _check_esp(rule)
    else:
        problem = _port_problem("input_port", rule.input_port)
        if problem:
            raise ValidationError(problem)
    for i, out in enumerate(outputs):
        problem = ttl_problem(f"output[{i}].ttl", out.ttl)
        if rule.input_protocol is not InputProtocol.ESP:
            problem = _port_problem(f"output[{i}].port", out.port) or problem
        if problem:
            raise ValidationError(problem)
    _check_input_addresses(rule)
    if rule.rate_limit is not None:
        problem = rate_limit_problem(rule.rate_limit)
        if problem:
            raise ValidationError(problem)
    seen: dict[tuple[IPAddress, int, str], int] = {}
    for i, out in enumerate(outputs):
        problem = _destination_problem(out.group)
        if problem:
            raise ValidationError(f"output[{i}].group {out.group} {problem}")
        if out.source_ip is not None:
            problem = _source_ip_problem(out)
            if problem:
                raise ValidationError(f"output[{i}].source_ip {out.source_ip} {problem}")
        if out.follow_receivers and not out.group.is_multicast:
            raise ValidationError(
                f"output[{i}].group {out.group} is not multicast: only a multicast output can follow receivers"
            )
        if out.interface == rule.input_interface:
            raise ValidationError(
                f"Rule rejected: input_interface '{rule.input_interface}' and output_interface "
                f"'{out.interface}' cannot be the same. This creates packet loops: output[{i}] would be "
                "captured again on the input"
            )
        key = (out.group, out.port, out.interface)
        if key in seen:
            raise ValidationError(f"output[{i}] duplicates output[{seen[key]}] ({out.spec})")
        seen[key] = i


def name_problem(name: str) -> str | None:
    """Why `name` cannot name a rule, or None: 1-64 printable characters, not all blank."""
    if not name.strip():
        return "Invalid name: a rule name cannot be empty"
    if len(name) > MAX_NAME_LENGTH:
        return f"Invalid name '{name[:MAX_NAME_LENGTH]}...': longer than {MAX_NAME_LENGTH} characters"
    if not name.isprintable():
        return f"Invalid name {name!r}: control characters are not allowed"
    return None


def _source_ip_problem(out: OutputDestination) -> str:
    src = out.source_ip
    assert src is not None
    if src.version != out.group.version:
        return f"is IPv{src.version} but the output group {out.group} is IPv{out.group.version}"
    if is_multicast(src) or src in (UNSPECIFIED, LIMITED_BROADCAST, UNSPECIFIED_V6):
        return "must be a unicast address"
    return ""


def _check_esp(rule: ForwardingRule) -> None:
    """ESP (IP protocol 50) has no ports: the input port is 0, and an output's port is not used (any value
    0-65535 is accepted, as the original's files carry one); IPv4 only, like the original."""
    if rule.input_port != 0:
        raise ValidationError(
            f"input_port must be 0 for ESP (input_protocol 50), which has no ports; got {rule.input_port}"
        )
    if rule.input_group.version != 4:
        raise ValidationError(f"ESP (input_protocol 50) is relayed over IPv4 only; input_group {rule.input_group}")
    for i, out in enumerate(rule.outputs):
        if out.group.version != 4:
            raise ValidationError(f"ESP (input_protocol 50) is relayed over IPv4 only; output[{i}].group {out.group}")
        if not 0 <= out.port <= 65535:
            raise ValidationError(f"output[{i}].port {out.port} is out of range; valid port range is 0-65535")


def _v6_scope(group: IPv6Address) -> int:
    return group.packed[1] & 0x0F


def _check_input_addresses(rule: ForwardingRule) -> None:
    group = rule.input_group
    if isinstance(group, IPv4Address) and group not in MULTICAST_V4:
        problem = _unicast_input_problem(group)
        if problem:
            raise ValidationError(f"input_group {group} {problem}")
    if isinstance(group, IPv6Address):
        if group not in MULTICAST_V6:
            raise ValidationError(
                f"input_group {group} is not an IPv6 multicast address (ff00::/8); unicast input is IPv4 only"
            )
        scope = _v6_scope(group)
        if scope in (0, SCOPE_INTERFACE_LOCAL, 0xF):
            raise ValidationError(f"input_group {group} has scope {scope:x}, which never leaves a host")
        if scope == SCOPE_LINK_LOCAL:
            raise ValidationError(
                f"input_group {group} is link-local (ff02::/16): link-scoped traffic must not be relayed off "
                "its link; use a wider scope (e.g. ff05:: site-local or ff0e:: global)"
            )
    src = rule.input_source
    if src is None:
        return
    if src.version != group.version:
        raise ValidationError(
            f"input_source {source_text(src)} is IPv{src.version} but input_group {group} is IPv{group.version}"
        )
    if src.prefixlen == 0:
        raise ValidationError(f"input_source {src} matches every source; leave input_source out instead")
    net = src.network_address
    if is_multicast(net) or net in (UNSPECIFIED, LIMITED_BROADCAST, UNSPECIFIED_V6):
        raise ValidationError(f"input_source {source_text(src)} must be a unicast address or prefix")


def _unicast_input_problem(address: IPv4Address) -> str:
    """Why a unicast input address (a rule on the host's own address, relayed like a group) cannot be one."""
    if address in (UNSPECIFIED, LIMITED_BROADCAST) or address in RESERVED_V4:
        return "is neither an IPv4 multicast address (224.0.0.0/4) nor a usable unicast address"
    if address in LOOPBACK_V4:
        return "is a loopback address: it never arrives on an interface"
    return ""


def _destination_problem(group: IPAddress) -> str:
    if group in (UNSPECIFIED, LIMITED_BROADCAST, UNSPECIFIED_V6):
        return "is not a valid destination"
    if isinstance(group, IPv6Address):
        if group in MULTICAST_V6 and _v6_scope(group) in (0, SCOPE_INTERFACE_LOCAL, 0xF):
            return f"has scope {_v6_scope(group):x}, which never leaves a host"
        if group in LINK_LOCAL_V6:
            return "is a link-local unicast address (it needs a scope); use a multicast group or a global address"
    return ""


def _overlaps(a: SourcePrefix | None, b: SourcePrefix | None) -> bool:
    """Whether some packet could match both sources (no source matches every one)."""
    if a is None or b is None:
        return True
    return a.version == b.version and a.overlaps(b)


def check_rule_unique(rule: ForwardingRule, existing: Mapping[str, ForwardingRule]) -> None:
    """Checks against the current table: no duplicate id, no second rule on the same input (the same
    interface, group and port with overlapping sources)."""
    if rule.rule_id in existing:
        raise ValidationError(f"Rule rejected: rule_id '{rule.rule_id}' already exists")
    for other in existing.values():
        if rule.name is not None and other.name == rule.name:
            raise ValidationError(f"Rule rejected: name '{rule.name}' is already used by rule '{other.rule_id}'")
        if other.input_key == rule.input_key:
            raise ValidationError(
                f"Rule rejected: input {rule.input_text} is already relayed by rule '{other.rule_id}'"
            )
        if other.input_key[:3] == rule.input_key[:3] and _overlaps(other.input_source, rule.input_source):
            raise ValidationError(
                f"Rule rejected: input {rule.input_text} overlaps rule '{other.rule_id}' ({other.input_text}); "
                "rules on one input group and port must have disjoint sources"
            )


def check_rule_limits(rule: ForwardingRule, existing: Mapping[str, ForwardingRule], limits: Limits) -> None:
    """Would adding `rule` to `existing` cross a limit? The refusal names it."""
    check_rule_counts(rule, len(existing), sum(len(r.outputs) for r in existing.values()), limits)


def check_rule_counts(rule: ForwardingRule, rules: int, outputs: int, limits: Limits) -> None:
    """Would adding `rule` to a table of `rules` rules with `outputs` outputs in all cross a limit?"""
    if len(rule.outputs) > limits.max_outputs_per_rule:
        raise ValidationError(
            f"Rule rejected: {len(rule.outputs)} outputs exceed the per-rule output limit "
            f"{limits.named('max_outputs_per_rule')}"
        )
    if rules >= limits.max_rules:
        raise ValidationError(f"Rule rejected: rule limit reached {limits.named('max_rules')}")
    total = outputs + len(rule.outputs)
    if total > limits.max_total_outputs:
        raise ValidationError(
            f"Rule rejected: {total} outputs in all would exceed the total output limit "
            f"{limits.named('max_total_outputs')}"
        )


def check_rule_fits(rule: ForwardingRule, existing: Mapping[str, ForwardingRule], limits: Limits) -> None:
    """Checks against the current table: duplicates and every limit."""
    check_rule_unique(rule, existing)
    check_rule_limits(rule, existing, limits)


def address_text(address: IPAddress) -> str:
    """`str(address)` in less time, with the C library's formatter: `ipaddress` takes about 4 µs for an IPv6
    address (0.45 here) and 0.7 for an IPv4 one (0.35), and listing 10,000 rules spent half its time there.
    (It was an LRU cache of the texts, 170 bytes and more an address; then a regular expression, 2 µs.)"""
    if type(address) is IPv4Address:
        return inet_ntoa(int(address).to_bytes(4, "big"))
    return ipv6_text(address)


def ipv6_text(address: IPv4Address | IPv6Address) -> str:
    """What `str()` gives for an IPv6 address: RFC 5952 text (the first longest run of two or more zero hextets
    is "::"), which is what `inet_ntop` writes too (tests/property/test_address_text_properties.py holds the two
    equal). Left to `str()`: scoped addresses, IPv4-mapped ones (Python versions print them differently),
    those with 96 leading zero bits (`inet_ntop` writes their last 32 bits as an IPv4 address), and any other
    type."""
    n = int(address)
    if type(address) is not IPv6Address or n >> 32 in (0, 0xFFFF) or address.scope_id:
        return str(address)
    return inet_ntop(AF_INET6, n.to_bytes(16, "big"))


class FlowIndex:
    """A table's rules by id and by input group, with its output count: the checks of `check_rule_fits` at a
    cost that does not depend on the size of the table (a rule is compared only with the rules on its own
    input group)."""

    __slots__ = ("by_id", "groups", "names", "outputs")

    def __init__(self, rules: Iterable[ForwardingRule] = ()) -> None:
        self.by_id: dict[str, ForwardingRule] = {}
        # input group -> its rule, or its rules by id when several take it (other interfaces or ports, or
        # sources sharing one flow): a group almost always has one rule, a dict of one costs 180 bytes more
        # than the rule itself, and a key of (interface, group, port) 64
        self.groups: dict[IPAddress, ForwardingRule | dict[str, ForwardingRule]] = {}
        self.names: dict[str, str] = {}  # rule name -> rule id
        self.outputs = 0
        for rule in rules:
            self.add(rule)

    def add(self, rule: ForwardingRule) -> None:
        self.discard(rule.rule_id)
        self.by_id[rule.rule_id] = rule
        group = rule.input_group
        held = self.groups.get(group)
        if held is None:
            self.groups[group] = rule
        elif isinstance(held, ForwardingRule):
            self.groups[group] = {held.rule_id: held, rule.rule_id: rule}
        else:
            held[rule.rule_id] = rule
        if rule.name is not None:
            self.names[rule.name] = rule.rule_id
        self.outputs += len(rule.outputs)

    def discard(self, rule_id: str) -> None:
        rule = self.by_id.pop(rule_id, None)
        if rule is None:
            return
        group = rule.input_group
        held = self.groups[group]
        if isinstance(held, ForwardingRule):
            del self.groups[group]
        else:
            del held[rule_id]
            if len(held) == 1:
                self.groups[group] = next(iter(held.values()))
        if rule.name is not None and self.names.get(rule.name) == rule_id:
            del self.names[rule.name]
        self.outputs -= len(rule.outputs)

    def same_flow(self, rule: ForwardingRule) -> Mapping[str, ForwardingRule]:
        """The rules on `rule`'s input interface, group and port (any source), `rule` itself included."""
        held = self.groups.get(rule.input_group)
        if held is None:
            return {}
        flow = rule.flow
        if isinstance(held, ForwardingRule):
            return {held.rule_id: held} if held.flow == flow else {}
        return {rule_id: other for rule_id, other in held.items() if other.flow == flow}

    def check_unique(self, rule: ForwardingRule) -> None:
        if rule.rule_id in self.by_id:
            raise ValidationError(f"Rule rejected: rule_id '{rule.rule_id}' already exists")
        if rule.name is not None and rule.name in self.names:
            raise ValidationError(
                f"Rule rejected: name '{rule.name}' is already used by rule '{self.names[rule.name]}'"
            )
        check_rule_unique(rule, self.same_flow(rule))

    def check_fits(self, rule: ForwardingRule, limits: Limits) -> None:
        """`check_rule_fits` against the indexed rules."""
        self.check_unique(rule)
        check_rule_counts(rule, len(self.by_id), self.outputs, limits)


def limits_exceeded(rules: Collection[ForwardingRule], limits: Limits) -> list[str]:
    """Which limits a whole rule set is over (a state file saved under higher limits), one text each."""
    found = [
        f"rule '{r.rule_id}' has {len(r.outputs)} outputs {limits.named('max_outputs_per_rule')}"
        for r in rules
        if len(r.outputs) > limits.max_outputs_per_rule
    ]
    if len(rules) > limits.max_rules:
        found.append(f"{len(rules)} rules {limits.named('max_rules')}")
    total = sum(len(r.outputs) for r in rules)
    if total > limits.max_total_outputs:
        found.append(f"{total} outputs in all {limits.named('max_total_outputs')}")
    return found


def input_groups(rules: Iterable[ForwardingRule]) -> dict[str, set[IPAddress]]:
    """Input groups per input interface: what must be joined (IGMP/MLD) where (a unicast input is joined
    nowhere: the host's own address needs no membership)."""
    groups: dict[str, set[IPAddress]] = {}
    for rule in rules:
        if is_multicast(rule.input_group):
            groups.setdefault(rule.input_interface, set()).add(rule.input_group)
    return groups
