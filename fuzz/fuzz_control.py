"""atheris: every decoder of untrusted JSON/TOML returns a value or its own precise error, nothing else —
control requests and responses, worker commands, replies and stats reports, the state file, the TOML config and the original's JSON5 config.
Run: ``python3 fuzz/fuzz_control.py -max_total_time=180`` (add ``-dict=fuzz/json.dict`` to reach deeper)."""

from __future__ import annotations

import atheris

with atheris.instrument_imports():
    from mcr.model.config import parse_config
    from mcr.model.errors import ConfigError, ProtocolError
    from mcr.protocol import control, worker
    from mcr.supervisor.state import StateError, decode_state

from common import run

DECODERS = (
    control.decode_request,
    control.decode_response,
    worker.decode_command,
    worker.decode_reply,
    worker.decode_stats,
)


def target(data: bytes) -> None:
    for decode in DECODERS:
        try:
            decode(data)
        except ProtocolError:
            pass
    try:
        decode_state(data)
    except StateError:
        pass
    text = data.decode("utf-8", "replace")
    for path in ("fuzz.toml", "fuzz.json5"):  # ours, and the original's JSON5 file
        try:
            parse_config(text, path)
        except ConfigError:
            pass


if __name__ == "__main__":
    run(target)
