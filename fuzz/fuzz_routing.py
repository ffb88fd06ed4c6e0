"""atheris: the PIM parser and the MSDP framer never raise (anything but the framer's FramingError), and
what they accept builds back to bytes that parse the same. Run: ``python3 fuzz/fuzz_routing.py``."""

from __future__ import annotations

import atheris

with atheris.instrument_imports():
    from mcr.routing.msdp_wire import FramingError, MsdpDrop, MsdpFramer, build_msdp
    from mcr.routing.pim_wire import PimDrop, build_pim, parse_pim

from common import run


def target(data: bytes) -> None:
    if not data:
        return
    body = data[1:]
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
