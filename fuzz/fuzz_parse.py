"""atheris: the frame parser never raises, its fast path agrees with the general parser, and an accepted
frame's payload lies inside the captured bytes. Run: ``python3 fuzz/fuzz_parse.py -max_total_time=180``."""

from __future__ import annotations

import atheris

with atheris.instrument_imports():
    from mcr.packet.parse import ESP_KEY_TAG, IPV6_KEY_TAG, _parse_general, parse_frame

from common import run


def target(data: bytes) -> None:
    if len(data) < 2:
        return
    offset, cut = data[0] % 8, data[1]
    buf = data[2:]
    caplen = max(0, len(buf) - offset - (cut % 16 if cut & 0x80 else 0))
    result = parse_frame(buf, offset, caplen)
    if result != _parse_general(buf, offset, min(caplen, len(buf) - offset)):
        raise AssertionError(f"fast path disagrees: {result}")
    reason, key, start, length = result
    header = 34 if ESP_KEY_TAG <= key < IPV6_KEY_TAG else 42  # an ESP payload starts with its own header
    if reason == 0 and not (offset + header <= start <= start + length <= offset + caplen):
        raise AssertionError(f"payload outside the frame: {result}")


if __name__ == "__main__":
    run(target)
