"""atheris: the PIM parsers (IPv4, and IPv6 with the pseudo-header's addresses) and the MSDP framer never
raise (anything but the framer's FramingError), and what they accept builds back to bytes that parse the
same. Run: ``python3 fuzz/fuzz_routing.py``."""

from __future__ import annotations

from ipaddress import IPv6Address

import atheris

with atheris.instrument_imports():
    from mcr.routing.msdp_wire import FramingError, MsdpDrop, MsdpFramer, build_msdp
    from mcr.routing.pim_wire import PimDrop, build_pim, build_pim6, parse_pim, parse_pim6

from common import run


def target(data: bytes) -> None:
    if not data:
        return
    body = data[1:]
    if data[0] & 3 == 3 and len(body) >= 32:
        source, destination, body = IPv6Address(body[:16]), IPv6Address(body[16:32]), body[32:]
        msg = parse_pim6(body, source, destination)
        if isinstance(msg, PimDrop):
            return
        if parse_pim6(build_pim6(msg, source, destination), source, destination) != msg:
            raise AssertionError(f"PIM (IPv6) rebuild differs: {msg!r}")
        return
    if data[0] & 1:
        msg = parse_pim(body)
        if not isinstance(msg, PimDrop) and parse_pim(build_pim(msg)) != msg:
            raise AssertionError(f"PIM rebuild differs: {msg!r}")
        return
    try:
        items = MsdpFramer().feed(body)
    except FramingError:
        return
    for item in items:
        if not isinstance(item, MsdpDrop) and MsdpFramer().feed(build_msdp(item)) != [item]:
            raise AssertionError(f"MSDP rebuild differs: {item!r}")


if __name__ == "__main__":
    run(target)
