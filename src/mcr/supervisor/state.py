"""The state file: runtime rules written atomically after every accepted change, read back at start."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterable
from pathlib import Path

from mcr.model.errors import McrError, ProtocolError
from mcr.model.rules import ForwardingRule
from mcr.protocol.control import decode_rule, encode_rule
from mcr.protocol.jsondoc import load_json

log = logging.getLogger("mcr.supervisor")

STATE_VERSION = 1


class StateError(McrError):
    """The state file could not be read or written."""


def encode_state(rules: Iterable[ForwardingRule]) -> bytes:
    """One rule per line: readable, and written by the C encoder (`indent` would take Python's own, which
    made saving 1000 rules, on every change, several times slower)."""
    lines = ",\n".join(json.dumps(encode_rule(r)) for r in rules)
    return f'{{"version": {STATE_VERSION}, "rules": [\n{lines}\n]}}\n'.encode()


def decode_state(data: bytes) -> list[ForwardingRule]:
    try:
        doc = load_json(data, "not valid JSON")
    except ProtocolError as e:
        raise StateError(str(e)) from None
    if not isinstance(doc, dict) or doc.get("version") != STATE_VERSION or not isinstance(doc.get("rules"), list):
        raise StateError(f"not an MCR state file of version {STATE_VERSION}")
    try:
        return [decode_rule(r) for r in doc["rules"]]
    except ProtocolError as e:
        raise StateError(str(e)) from None


def save_state(path: Path, rules: Iterable[ForwardingRule]) -> None:
    """Write to a temporary file in the same directory, fsync it, rename it over the old one, fsync the
    directory: after a crash the file holds either the old or the new rule set, never a mix."""
    try:
        write_atomically(path, encode_state(rules))
    except OSError as e:
        raise StateError(f"cannot save state to {path}: {e.strerror}") from None


def write_atomically(path: Path, data: bytes, mode: int = 0o640) -> None:
    """Replace `path` with `data` in one rename (the file is new, created with `mode`). The temporary file is
    created exclusively and never through a symbolic link, so a directory others can write to is no risk; a
    symbolic link at `path` itself is replaced, not followed. Raises OSError."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    path.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
    try:
        tmp.unlink()  # our own leftover from a crash (the pid is ours)
    except FileNotFoundError:
        pass
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise


def load_state(path: Path) -> list[ForwardingRule]:
    """The saved rules; a missing file is an empty set. A corrupt file is moved aside (never
    overwritten) and reported with StateError naming where it went."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    except OSError as e:
        raise StateError(f"cannot read state file {path}: {e.strerror}") from None
    try:
        return decode_state(data)
    except StateError as e:
        aside = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}")
        os.replace(path, aside)
        raise StateError(f"state file {path} is unusable ({e}); kept aside as {aside}") from None
