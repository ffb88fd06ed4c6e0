"""The state file's journal: a change is one fsynced line, a snapshot is written once the journal has
grown past the table, replay is idempotent (a crash between a new snapshot and the emptied journal loses
nothing), a line torn by a crash is ignored, and a bad journal is kept aside."""

from __future__ import annotations

import os
from dataclasses import replace
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from mcr.model.rules import ForwardingRule, OutputDestination
from mcr.supervisor.state import (
    StateError,
    StateStore,
    encode_record,
    encode_state,
    journal_path,
    replay,
)

OUT = (OutputDestination(IPv4Address("239.2.2.2"), 6000, "eth1", 1),)


def rule(rule_id: str, port: int = 5000) -> ForwardingRule:
    return ForwardingRule(rule_id, "eth0", IPv4Address("239.1.1.1"), port, OUT)


def test_changes_are_appended_and_read_back(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "rules.json")
    assert store.load() == []
    assert store.due(0), "no snapshot yet: the first change writes one"
    store.compact([rule("a")])
    store.append(encode_record(added=rule("b", 5001)))
    store.append(encode_record(removed="a"))
    store.append(encode_record(added=rule("a", 5002)))
    assert store.records == 3 and not store.due(3)
    store.close()
    assert (tmp_path / "rules.json").read_bytes() == encode_state([rule("a")]), "the snapshot is not rewritten"
    assert StateStore(tmp_path / "rules.json").load() == [rule("b", 5001), rule("a", 5002)]


def test_the_journal_is_compacted_once_it_outgrows_the_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mcr.supervisor import state

    monkeypatch.setattr(state, "COMPACT_MIN", 16)  # as 1024, with fewer fsyncs
    store = StateStore(tmp_path / "rules.json")
    store.compact([])
    for i in range(state.COMPACT_MIN):
        store.append(encode_record(removed=f"x{i}"))
    assert not store.due(10)
    store.append(encode_record(removed="y"))
    assert store.due(10) and not store.due(state.COMPACT_MIN + 1)
    store.compact([rule("a")])
    assert store.records == 0 and journal_path(store.path).read_bytes() == b""
    assert StateStore(store.path).load() == [rule("a")]


def test_replay_over_a_snapshot_that_already_has_the_changes_gives_the_same_rules() -> None:
    records = [encode_record(added=rule("a")), encode_record(removed="a"), encode_record(added=rule("b"))]
    journal = b"".join(records)
    before, _ = replay([rule("a", 5009)], journal)
    after, n = replay(before, journal)  # the crash came after the new snapshot, before the journal was emptied
    assert before == after == [rule("b")] and n == 3


def test_a_torn_last_line_is_a_change_that_never_happened(tmp_path: Path) -> None:
    path = tmp_path / "rules.json"
    path.write_bytes(encode_state([rule("a")]))
    whole = encode_record(added=rule("b", 5001))
    journal_path(path).write_bytes(whole + encode_record(added=rule("c", 5002))[:-9])
    assert StateStore(path).load() == [rule("a"), rule("b", 5001)]


def test_a_change_after_a_torn_line_is_kept_with_the_ones_before(tmp_path: Path) -> None:
    """The torn bytes are cut off before the next record goes in: glued to them it would make a bad line, and
    the next start would set the whole journal aside (b and d, both acknowledged, lost)."""
    path = tmp_path / "rules.json"
    path.write_bytes(encode_state([rule("a")]))
    whole = encode_record(added=rule("b", 5001))
    journal_path(path).write_bytes(whole + encode_record(added=rule("c", 5002))[:-9])
    store = StateStore(path)
    assert store.load() == [rule("a"), rule("b", 5001)]
    store.append(encode_record(added=rule("d", 5003)))
    store.close()
    assert StateStore(path).load() == [rule("a"), rule("b", 5001), rule("d", 5003)]
    assert not list(tmp_path.glob("*.corrupt-*"))


def test_records_are_written_over_zeros_laid_ahead_of_them(tmp_path: Path) -> None:
    """A change writes over blocks already in the file, so its fdatasync changes no size (no ext4 journal
    commit); the zeros go down JOURNAL_CHUNK at a time. A journal from before, records only, reads as it did
    and is extended the same way."""
    from mcr.supervisor import state

    path = tmp_path / "rules.json"
    path.write_bytes(encode_state([rule("a")]))
    first = encode_record(added=rule("b", 5001))
    journal_path(path).write_bytes(first)  # as an older version left it
    store = StateStore(path)
    assert store.load() == [rule("a"), rule("b", 5001)]
    second, third = encode_record(removed="a"), encode_record(added=rule("c", 5002))
    store.append(second)
    laid = journal_path(path).stat().st_size
    assert laid == len(first) + len(second) + state.JOURNAL_CHUNK
    store.append(third)
    data = journal_path(path).read_bytes()
    assert len(data) == laid, "the second change was written over the zeros, the size unchanged"
    assert data == first + second + third + bytes(laid - len(first + second + third))
    store.close()
    assert StateStore(path).load() == [rule("b", 5001), rule("c", 5002)]


def test_a_record_torn_among_the_zeros_is_cleared_before_the_next(tmp_path: Path) -> None:
    """A crash while a record was written can leave its start, or a later block of it, among the zeros: both
    are ignored, and zeroed before the next record goes in (a shorter record would leave their tail behind)."""
    path = tmp_path / "rules.json"
    path.write_bytes(encode_state([rule("a")]))
    whole = encode_record(added=rule("b", 5001))
    torn = encode_record(added=rule("c", 5002))
    journal_path(path).write_bytes(whole + torn[:40] + bytes(100) + torn[60:] + bytes(50))
    store = StateStore(path)
    assert store.load() == [rule("a"), rule("b", 5001)]
    short = encode_record(removed="a")
    store.append(short)
    store.close()
    data = journal_path(path).read_bytes()
    assert data[: len(whole + short)] == whole + short and not any(data[len(whole + short) :])
    assert StateStore(path).load() == [rule("b", 5001)]


@pytest.mark.parametrize("bad", [b"{not json}\n", b'{"drop": "a"}\n', b'{"remove": 7}\n', b'{"add": {"rule_id": 1}}\n'])
def test_a_bad_journal_is_kept_aside_and_the_snapshot_kept(tmp_path: Path, bad: bytes) -> None:
    path = tmp_path / "rules.json"
    path.write_bytes(encode_state([rule("a")]))
    journal_path(path).write_bytes(bad + encode_record(removed="a"))
    store = StateStore(path)
    with pytest.raises(StateError, match=r"state journal .* is unusable \(journal line 1: .*\); kept aside as"):
        store.load()
    assert [p.name.split(".corrupt-")[0] for p in tmp_path.glob("*.corrupt-*")] == ["rules.json.journal"]
    assert StateStore(path).load() == [rule("a")]


def test_a_corrupt_snapshot_takes_its_journal_aside_with_it(tmp_path: Path) -> None:
    path = tmp_path / "rules.json"
    path.write_text("{ not json")
    journal_path(path).write_bytes(encode_record(added=rule("b")))
    store = StateStore(path)
    with pytest.raises(StateError, match="its journal is kept aside as"):
        store.load()
    assert sorted(p.name.split(".corrupt-")[0] for p in tmp_path.glob("*.corrupt-*")) == [
        "rules.json",
        "rules.json.journal",
    ]
    assert store.due(0), "the next change writes a new snapshot"


def test_a_failed_append_leaves_no_half_record_and_forces_a_snapshot(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "rules.json")
    store.compact([rule("a")])
    store.append(encode_record(added=replace(rule("b"), input_port=5001)))
    real, store._fd = store._fd, 10_000  # a descriptor that is not open: the write fails
    with pytest.raises(StateError, match=r"cannot save state to .*rules.json: Bad file descriptor"):
        store.append(encode_record(removed="a"))
    os.close(real)
    assert store.due(2)
    assert StateStore(store.path).load() == [rule("a"), rule("b", 5001)]


def test_a_record_left_unflushed_is_kept_once_flushed(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "rules.json")
    store.compact([rule("a")])
    store.append(encode_record(added=rule("b", 5001)), flush=False)
    store.flush()
    store.flush()  # nothing left to flush: nothing happens
    store.append(encode_record(removed="a"))
    store.close()
    assert StateStore(store.path).load() == [rule("b", 5001)]


def test_a_record_that_cannot_be_flushed_is_taken_back_and_forces_a_snapshot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = StateStore(tmp_path / "rules.json")
    store.compact([rule("a")])
    store.append(encode_record(added=rule("b", 5001)))
    store.append(encode_record(added=rule("c", 5002)), flush=False)

    def failing(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fdatasync", failing)
    with pytest.raises(StateError, match=r"cannot save state to .*rules.json: Input/output error"):
        store.flush()
    monkeypatch.undo()
    assert store.due(3) and store.records == 1
    assert StateStore(store.path).load() == [rule("a"), rule("b", 5001)], "c is not there: its Success was not sent"


def test_the_journal_is_never_written_through_a_symbolic_link(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_bytes(b"")
    journal_path(tmp_path / "rules.json").symlink_to(target)
    store = StateStore(tmp_path / "rules.json")
    with pytest.raises(StateError, match="Too many levels of symbolic links"):
        store.compact([rule("a")])
    with pytest.raises(StateError, match="Too many levels of symbolic links"):
        store.append(encode_record(removed="a"))
    assert target.read_bytes() == b""
