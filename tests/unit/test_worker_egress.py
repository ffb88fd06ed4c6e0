"""The worker's raw ESP output sockets: taken from the supervisor (OpenEgress), used by the Sync's ESP
outputs, and given up (CloseEgress) without leaving an output pointing at a descriptor number that another
socket may reuse."""

from __future__ import annotations

import os
import socket
from ipaddress import IPv4Address

from mcr.model.rules import InputProtocol
from mcr.protocol.worker import CloseEgress, OpenEgress, Sync, WorkerOutput, WorkerRule
from mcr.worker.loop import DataPlane

OUT = WorkerOutput(0, IPv4Address("239.5.5.5"), 0, 1, IPv4Address("127.0.0.1"), 4, InputProtocol.ESP)
RULE = WorkerRule("e", 1, IPv4Address("239.1.1.1"), 0, (OUT,), protocol=InputProtocol.ESP)


def stand_in() -> int:
    """A descriptor in place of a raw socket (opening one takes CAP_NET_RAW; the worker only sends on it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        return os.dup(s.fileno())


def is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def test_esp_outputs_use_the_sockets_handed_over_and_let_go_of_closed_ones(data_plane: DataPlane) -> None:
    fd, extra = stand_in(), stand_in()
    data_plane.apply(OpenEgress((OUT.raw_egress,)), [fd, extra])  # a descriptor too many is closed
    assert not is_open(extra)
    data_plane.sync(Sync(1, (RULE,)))
    (out,) = data_plane.slots["e"].outputs
    assert out.fd == fd and not data_plane.sockets  # no UDP socket of its own for an ESP output
    data_plane.apply(CloseEgress((OUT.raw_egress,)), [])
    assert out.fd == -1 and not is_open(fd)  # unhooked before the next Sync: its sends count as errors
    data_plane.apply(CloseEgress((OUT.raw_egress,)), [])  # twice: nothing to do


def test_an_esp_output_without_its_socket_counts_errors(data_plane: DataPlane) -> None:
    data_plane.sync(Sync(1, (RULE,)))
    slot = data_plane.slots["e"]
    (out,) = slot.outputs
    assert out.fd == -1
    data_plane.flush(slot, [0, 100, 0, 200])  # (address, length) pairs; nothing is sent
    assert (slot.packets, out.packets, out.errors) == (2, 0, 2)
