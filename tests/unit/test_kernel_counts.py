"""When a kernel rule's counters restart in its slot, so that the supervisor reads them before and after."""

from ipaddress import IPv4Address

from mcr.kernel.engine import output_counts_reset
from mcr.supervisor.core import KernelOutput, KernelRule
from mcr.supervisor.main import _restarts

GROUP = IPv4Address("239.1.1.1")


def out(index: int, ifindex: int) -> KernelOutput:
    return KernelOutput(
        index, ifindex, IPv4Address(f"239.2.2.{index + 1}"), 6001 + index, IPv4Address("10.0.0.1"), b"\x02" * 6, 1
    )


def rule(*outputs: KernelOutput, epoch: int = 0) -> KernelRule:
    return KernelRule("r", 3, GROUP, 5001, outputs, None, None, epoch)


def test_positions_that_stay_keep_the_counts() -> None:
    assert not output_counts_reset([1, 2], [1, 2])
    assert not output_counts_reset([1, 2], [1, 2, 3])  # one more at the end
    assert not output_counts_reset([1, 2, 3], [1, 2])  # the last one gone: its own counts restart only


def test_a_position_that_sends_elsewhere_restarts_them() -> None:
    assert output_counts_reset([1, 3], [1, 2, 3])  # an output came back in the middle
    assert output_counts_reset([1, 2, 3], [1, 3])  # the middle one went away


def test_the_supervisor_reads_before_and_after_each_restart() -> None:
    a, b, c = out(0, 4), out(1, 5), out(2, 4)
    held = rule(a, c)
    assert _restarts(held, rule(a, b, c))  # the test in test_faults_survived: rout2 comes up
    assert not _restarts(held, rule(a, c, out(3, 4)))
    assert _restarts(held, None)  # leaves the kernel
    assert _restarts(held, rule(a, c, epoch=1))  # a new slot
