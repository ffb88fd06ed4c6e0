"""One JSON document from an untrusted peer, decoded so that every failure is a precise `ProtocolError`.

`json.loads` alone lets three kinds of bad input escape as something other than `JSONDecodeError`:
nesting deeper than the interpreter's recursion limit (`RecursionError`), an integer literal longer than
`sys.get_int_max_str_digits()` (a plain `ValueError`) and bytes that are not UTF-8 (`UnicodeDecodeError`).
It also accepts `NaN`, `Infinity` and `-Infinity`, which are not JSON. Every codec that reads a peer's
JSON (the control socket, the worker channel, the stats pipe, the state file) goes through `load_json`.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from mcr.model.errors import ProtocolError

__all__ = ["load_json"]


class _NotJson(ValueError):
    """`NaN`, `Infinity` or `-Infinity`: Python's decoder takes them, JSON has no such values."""


def _reject_constant(name: str) -> Any:
    raise _NotJson(name)


def load_json(data: bytes | str, what: str) -> Any:
    """Decode one JSON document; on any failure raise ``ProtocolError(f"{what}: {why}")``.

    `why` names the cause and, where the decoder knows it, the place (line and column).
    """
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
    except UnicodeDecodeError as e:
        raise ProtocolError(f"{what}: not valid UTF-8 (byte 0x{data[e.start]:02x} at offset {e.start})") from None
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as e:
        raise ProtocolError(f"{what}: {e.msg} at line {e.lineno} column {e.colno}") from None
    except _NotJson as e:
        raise ProtocolError(f"{what}: {e} is not a JSON value") from None
    except RecursionError:
        raise ProtocolError(f"{what}: arrays or objects nested too deeply") from None
    except ValueError:  # the only other ValueError json raises: an integer literal with too many digits
        raise ProtocolError(f"{what}: a number has more than {sys.get_int_max_str_digits()} digits") from None
