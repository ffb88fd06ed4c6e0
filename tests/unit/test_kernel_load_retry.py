"""Loading a BPF program again when the verifier gave up because a signal arrived (EAGAIN): a supervisor
whose worker exits, or that gets SIGHUP, while its program is verified must not fail to start for that."""

from __future__ import annotations

import ctypes
import errno

import pytest

from mcr.kernel import bpf
from mcr.kernel.abi import Cmd
from mcr.kernel.asm import Insn

EXIT = [Insn(0xB7), Insn(0x95)]  # r0 = 0; exit


def failing(errnos: list[int], fd: int = 7) -> tuple[list[int], object]:
    """A stand-in for bpf(2): fails with each of `errnos` in turn, then returns `fd`; counts its calls."""
    calls: list[int] = []

    def call(cmd: Cmd, attr: ctypes.Array[ctypes.c_char], what: str) -> int:
        calls.append(int(cmd))
        if len(calls) <= len(errnos):
            raise bpf.BpfError(what, errnos[len(calls) - 1])
        return fd

    return calls, call


def test_a_load_interrupted_by_a_signal_is_tried_again(monkeypatch: pytest.MonkeyPatch) -> None:
    calls, call = failing([errno.EAGAIN, errno.EAGAIN])
    monkeypatch.setattr(bpf, "bpf", call)
    assert bpf.load_program_logged(EXIT, name="t").fd == 7
    assert calls == [int(Cmd.PROG_LOAD)] * 3


def test_a_load_interrupted_every_time_fails_with_eagain_after_the_last_attempt(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls, call = failing([errno.EAGAIN] * bpf.PROG_LOAD_ATTEMPTS)
    monkeypatch.setattr(bpf, "bpf", call)
    with pytest.raises(bpf.BpfError) as raised:
        bpf.load_program_logged(EXIT, name="t")
    assert raised.value.errno == errno.EAGAIN
    assert "loading program t" in str(raised.value)
    assert len(calls) == bpf.PROG_LOAD_ATTEMPTS


def test_a_rejected_program_is_not_tried_again(monkeypatch: pytest.MonkeyPatch) -> None:
    calls, call = failing([errno.EACCES])
    monkeypatch.setattr(bpf, "bpf", call)
    with pytest.raises(bpf.BpfError) as raised:
        bpf.load_program_logged(EXIT, name="t")
    assert raised.value.errno == errno.EACCES
    assert len(calls) == 1
