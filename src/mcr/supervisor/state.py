"""The state file: runtime rules kept on disk across restarts, read back at start.

Two files: the snapshot PATH (every runtime rule, written atomically) and the journal PATH.journal (one
line per accepted change since the snapshot, appended and fsynced before the client gets its Success).
A change costs one short append, not a rewrite of every rule; once the journal holds more changes than
the snapshot has rules (and at least COMPACT_MIN), a new snapshot is written and the journal emptied, so
the work stays in proportion to the changes. Replaying the journal over the snapshot is idempotent (each
rule ends as its last record says), so a crash between the new snapshot and the emptied journal loses
nothing; a line torn by a crash during its append (no newline) is a change that never got its Success,
and is ignored, and cut off before the next record is written.

The journal is written in place over zeros laid down ahead of it (JOURNAL_CHUNK at a time), not appended:
on ext4 an append changes the file's size, and its fdatasync then waits for a journal commit as well as
the data; over blocks already written, the fdatasync of a change flushes its data alone. Its records end
at the first NUL byte (JSON text never holds one).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import NoReturn

from mcr.model.errors import McrError, ProtocolError
from mcr.model.rules import ForwardingRule
from mcr.protocol.control import decode_rule, encode_rule
from mcr.protocol.jsondoc import load_json

log = logging.getLogger("mcr.supervisor")

STATE_VERSION = 1
COMPACT_MIN = 1024  # journal records before a snapshot is due, at least
JOURNAL_CHUNK = 1 << 18  # zeros laid down ahead of the journal's records at a time


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


def _fsync_dir(path: Path) -> None:
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


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
            _pwrite_all(fd, data, 0)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        _fsync_dir(path)
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


# ------------------------------------------------------------------------------------------------ journal


def journal_path(path: Path) -> Path:
    return path.with_name(f"{path.name}.journal")


def encode_record(added: ForwardingRule | None = None, removed: str | None = None) -> bytes:
    """One journal line: `{"add": rule}` or `{"remove": "id"}`."""
    doc = {"add": encode_rule(added)} if added is not None else {"remove": removed}
    return json.dumps(doc, separators=(",", ":")).encode() + b"\n"


def records_end(journal: bytes) -> int:
    """Where the journal's complete records end: before the zeros laid down ahead of them, and before a last
    line without its newline (torn by a crash while it was written: never acknowledged, it did not happen)."""
    zeros = journal.find(b"\0")
    return journal.rfind(b"\n", 0, len(journal) if zeros < 0 else zeros) + 1


def replay(rules: Iterable[ForwardingRule], journal: bytes) -> tuple[list[ForwardingRule], int]:
    """The snapshot's rules with the journal's changes applied, and the number of records applied (see
    `records_end` for what is not a record); a bad line is a StateError naming it."""
    table = {r.rule_id: r for r in rules}
    complete = journal[: records_end(journal)].split(b"\n")[:-1]
    for number, line in enumerate(complete, start=1):
        try:
            doc = load_json(line, "not valid JSON")
            if not isinstance(doc, dict) or len(doc) != 1:
                raise ProtocolError('expected {"add": rule} or {"remove": id}')
            if "add" in doc:
                rule = decode_rule(doc["add"])
                table.pop(rule.rule_id, None)  # a changed rule goes where it was added last
                table[rule.rule_id] = rule
            elif isinstance(doc.get("remove"), str):
                table.pop(doc["remove"], None)
            else:
                raise ProtocolError('expected {"add": rule} or {"remove": id}')
        except ProtocolError as e:
            raise StateError(f"journal line {number}: {e}") from None
    return list(table.values()), len(complete)


class StateStore:
    """The state file and its journal (see the module's docstring). Every method that changes the files
    raises StateError, leaving them as they were, when it cannot complete."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.journal = journal_path(path)
        self.records = 0  # changes in the journal since the snapshot
        self._fd = -1
        self._size = 0  # where the journal's complete records end: the next one is written there
        self._laid = 0  # the file's length: zeros from _size on
        self._unflushed: int | None = None  # where the record written but not yet flushed begins
        self.broken = False  # an append failed and may have left a partial line: compact before the next
        self.has_snapshot = path.exists()  # without one, the first change writes it (the journal needs a base)

    def load(self) -> list[ForwardingRule]:
        """The saved rules (snapshot, then journal); a missing snapshot is an empty one. A corrupt snapshot
        or journal is moved aside (never overwritten) and reported with StateError naming where it went;
        the rules of a good snapshot are then kept in a new one, without the unusable journal."""
        try:
            rules = load_state(self.path)
        except StateError as e:
            self.has_snapshot = False
            if self.journal.exists():  # its changes apply to the lost snapshot
                aside = self._set_aside()
                raise StateError(f"{e}; its journal is kept aside as {aside}") from None
            raise
        try:
            data = self.journal.read_bytes()
        except FileNotFoundError:
            return rules
        except OSError as e:
            raise StateError(f"cannot read state journal {self.journal}: {e.strerror}") from None
        try:
            restored, self.records = replay(rules, data)
        except StateError as e:
            aside = self._set_aside()
            self.compact(rules)
            raise StateError(f"state journal {self.journal} is unusable ({e}); kept aside as {aside}") from None
        return restored

    def _set_aside(self) -> Path:
        aside = self.journal.with_name(f"{self.journal.name}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}")
        os.replace(self.journal, aside)
        return aside

    def _open(self) -> int:
        if self._fd < 0:
            created = not self.journal.exists()
            self.path.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
            # never through a symbolic link (as write_atomically): a link planted there cannot redirect the appends
            self._fd = os.open(self.journal, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o640)
            self._laid = os.fstat(self._fd).st_size
            data = os.pread(self._fd, self._laid, 0)
            self._size = records_end(data)
            if data.count(0, self._size) != self._laid - self._size:  # a torn record: zeros over it
                os.pwrite(self._fd, bytes(self._laid - self._size), self._size)
                os.fdatasync(self._fd)
            if created:
                _fsync_dir(self.journal)
        return self._fd

    def _lay_zeros(self, fd: int, needed: int) -> None:
        """Extend the file with zeros (written and flushed now, so that the records written over them change no
        size) until `needed` bytes fit after the records. Where the disk has no room for a chunk, nothing is
        laid: the record then extends the file itself, as an append would, and fails only if it does not fit."""
        if self._size + needed <= self._laid:
            return
        laid = self._size + needed + JOURNAL_CHUNK
        try:
            _pwrite_all(fd, bytes(laid - self._laid), self._laid)
            os.fdatasync(fd)
        except OSError:
            os.ftruncate(fd, self._laid)
            return
        self._laid = laid

    def append(self, record: bytes, flush: bool = True) -> None:
        """Append one record and fsync it: on return it survives a crash. With `flush` False the record is
        written but not yet flushed: `flush` does that (the caller works meanwhile), or takes it back."""
        try:
            fd = self._open()
            try:
                self._lay_zeros(fd, len(record))
                _pwrite_all(fd, record, self._size)
                if flush:
                    os.fdatasync(fd)
                self._laid = max(self._laid, self._size + len(record))
            except OSError:
                os.ftruncate(fd, self._size)  # no half record left behind
                self._laid = self._size
                raise
        except OSError as e:
            self._fail(e)
        if not flush:
            self._unflushed = self._size
        self._size += len(record)
        self.records += 1

    def flush(self) -> None:
        """Flush the record `append` left unflushed. If that fails, the record is cut off again (the file's
        state is then the one before it) and StateError raised."""
        start, self._unflushed = self._unflushed, None
        if start is None:
            return
        try:
            os.fdatasync(self._fd)
        except OSError as e:
            try:
                os.ftruncate(self._fd, start)
            except OSError:
                pass  # broken: the next change writes a whole snapshot instead
            self._size = self._laid = start
            self.records -= 1
            self._fail(e)

    def _fail(self, e: OSError) -> NoReturn:
        self.close()
        self.broken = True
        raise StateError(f"cannot save state to {self.path}: {e.strerror}") from None

    def due(self, rules: int) -> bool:
        """Whether the journal has grown enough, for a table of `rules` runtime rules, to be compacted."""
        return self.broken or not self.has_snapshot or self.records > max(COMPACT_MIN, rules)

    def compact(self, rules: Iterable[ForwardingRule]) -> None:
        """Write every rule as the new snapshot, then empty the journal."""
        save_state(self.path, rules)
        self.has_snapshot = True
        try:
            fd = self._open()
            os.ftruncate(fd, 0)
            os.fsync(fd)
        except OSError as e:
            self.close()
            raise StateError(f"cannot save state to {self.path}: {e.strerror}") from None
        self._size = self._laid = 0
        self.records = 0
        self.broken = False

    def close(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            try:
                os.close(fd)
            except OSError:
                pass  # closing is all that was left to do with it
