"""One JSON document from an untrusted peer, decoded so that every failure is a precise `ProtocolError`.

`json.loads` alone lets three kinds of bad input escape as something other than `JSONDecodeError`:
nesting deeper than the interpreter's recursion limit (`RecursionError`), an integer literal longer than
`sys.get_int_max_str_digits()` (a plain `ValueError`) and bytes that are not UTF-8 (`UnicodeDecodeError`).
It also accepts `NaN`, `Infinity` and `-Infinity`, which are not JSON. Every codec that reads a peer's
JSON (the control socket, the worker channel, the stats pipe, the state file) goes through `load_json`.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from json.scanner import make_scanner
from typing import Any, TypeVar

from mcr.model.errors import ProtocolError

__all__ = ["load_json", "load_json_streaming"]

_T = TypeVar("_T")


class _NotJson(ValueError):
    """`NaN`, `Infinity` or `-Infinity`: Python's decoder takes them, JSON has no such values."""


def _reject_constant(name: str) -> Any:
    raise _NotJson(name)


def load_json(data: bytes | str, what: str) -> Any:
    """Decode one JSON document; on any failure raise ``ProtocolError(f"{what}: {why}")``.

    `why` names the cause and, where the decoder knows it, the place (line and column).
    """
    text = _text(data, what)
    with _errors(what):
        return _DECODER.decode(text)  # one decoder for all (json.loads with an option makes one a call)


def load_json_streaming(
    data: bytes, what: str, key: str, each: Callable[[str, str, Any], _T]
) -> tuple[dict[str, Any], list[_T]]:
    """`load_json` of an object whose member `key` is an object read one member at a time, so that a large
    one (a worker's full report: 10,000 rules) is never held decoded all at once: `each(name, text, value)`
    is called for each of its members, `text` being the member's JSON (by which `each` may share results).
    Returns the other members (`key` itself as None) and what `each` returned, in order. Errors as
    `load_json`'s, and `key` not an object; an exception from `each` goes to the caller as it is."""
    text = _text(data, what)
    top: dict[str, Any] = {}
    found: list[_T] = []
    with _errors(what):
        i, more = _open(text, 0)
        while more:
            name, i = _name(text, i)
            if name == key:
                if not text.startswith("{", i):
                    raise ProtocolError(f"{what}: '{key}' must be an object")
                i, inner = _open(text, i)
                while inner:
                    member, start = _name(text, i)
                    value, i = _SCAN(text, start)
                    try:
                        found.append(each(member, text[start:i], value))
                    except Exception as e:
                        raise _EachFailed(e) from None
                    i, inner = _next(text, i)
                top[name] = None
            else:
                top[name], i = _SCAN(text, i)
            i, more = _next(text, i)
        end = _skip(text, i)
        if end != len(text):
            raise json.JSONDecodeError("Extra data", text, end)
    return top, found


# the value at an index: (value, the index after it); StopIteration(index) where no value starts. (typeshed
# types make_scanner's argument as itself; it takes a decoder)
_DECODER = json.JSONDecoder(parse_constant=_reject_constant)
_SCAN: Callable[[str, int], tuple[Any, int]] = make_scanner(_DECODER)  # type: ignore[arg-type]
_WHITE = re.compile(r"[ \t\n\r]*")
_SPACE = " \t\n\r"  # ("" is in it too: at the end of the text the expression is asked)


def _text(data: bytes | str, what: str) -> str:
    """The document as text: UTF-8, without the byte order mark that `json.loads` (not the decoder it calls)
    refuses."""
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
    except UnicodeDecodeError as e:
        raise ProtocolError(f"{what}: not valid UTF-8 (byte 0x{data[e.start]:02x} at offset {e.start})") from None
    if text.startswith("\ufeff"):
        raise ProtocolError(f"{what}: Unexpected UTF-8 BOM (decode using utf-8-sig) at line 1 column 1")
    return text


def _skip(text: str, i: int) -> int:
    """The index of the first character from `i` on that is not white space."""
    if text[i : i + 1] not in _SPACE:  # (a worker's report has none: no regular expression needed)
        return i
    return _WHITE.match(text, i).end()  # type: ignore[union-attr]  # matches everywhere (even nothing)


def _open(text: str, i: int) -> tuple[int, bool]:
    """At the "{" of an object: (its first member's index, True), or (the index after "}", False) if empty."""
    i = _skip(text, i)
    if not text.startswith("{", i):
        raise json.JSONDecodeError("Expecting '{'", text, i)
    i = _skip(text, i + 1)
    return (i + 1, False) if text.startswith("}", i) else (i, True)


def _name(text: str, i: int) -> tuple[str, int]:
    """A member's name and its ":" at `i`: the name, and the index of the member's value."""
    if not text.startswith('"', i):
        raise json.JSONDecodeError("Expecting property name enclosed in double quotes", text, i)
    name, i = _SCAN(text, i)
    i = _skip(text, i)
    if not text.startswith(":", i):
        raise json.JSONDecodeError("Expecting ':' delimiter", text, i)
    return name, _skip(text, i + 1)


def _next(text: str, i: int) -> tuple[int, bool]:
    """After a member's value: (the next member's index, True), or (the index after "}", False) at the end."""
    i = _skip(text, i)
    if text.startswith(",", i):
        return _skip(text, i + 1), True
    if text.startswith("}", i):
        return i + 1, False
    raise json.JSONDecodeError("Expecting ',' delimiter", text, i)


class _EachFailed(Exception):
    """What `each` raised, carried past `_errors` to the caller."""

    def __init__(self, error: Exception) -> None:
        self.error = error


@contextmanager
def _errors(what: str) -> Iterator[None]:
    """Every way the decoder fails, as `ProtocolError(f"{what}: {why}")`."""
    try:
        yield
    except _EachFailed as e:
        raise e.error from None
    except json.JSONDecodeError as e:
        raise ProtocolError(f"{what}: {e.msg} at line {e.lineno} column {e.colno}") from None
    except StopIteration as e:  # scan_once: no JSON value starts at this index
        raise ProtocolError(f"{what}: Expecting value at offset {e.value}") from None
    except _NotJson as e:
        raise ProtocolError(f"{what}: {e} is not a JSON value") from None
    except RecursionError:
        raise ProtocolError(f"{what}: arrays or objects nested too deeply") from None
    except ValueError:  # the only other ValueError json raises: an integer literal with too many digits
        raise ProtocolError(f"{what}: a number has more than {sys.get_int_max_str_digits()} digits") from None
