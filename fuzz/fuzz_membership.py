"""atheris: the IGMP/MLD parser never raises, and whatever it accepts builds back into a packet that parses to the
same message. Run: ``python3 fuzz/fuzz_membership.py -max_total_time=180``."""

from __future__ import annotations

import atheris

with atheris.instrument_imports():
    from mcr.membership.wire import Drop, Inbound, build_packet, parse_packet

from common import run


def target(data: bytes) -> None:
    result = parse_packet(data)
    if isinstance(result, Drop):
        return
    if not isinstance(result, Inbound):
        raise AssertionError(f"neither a message nor a drop: {result!r}")
    again = parse_packet(build_packet(result.message, result.source, result.destination))
    if not isinstance(again, Inbound) or again.message != result.message:
        raise AssertionError(f"{result.message!r} rebuilt parses to {again!r}")


if __name__ == "__main__":
    run(target)
