"""CPU lists: parsing, writing back, and which CPU each worker gets (mcr.model.cpus)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mcr.model.cpus import (
    absent_cpus_problem,
    checked_cpus,
    cpu_list_text,
    parse_cpu_list,
    union_of,
    worker_cpu,
)


@pytest.mark.parametrize(
    ("text", "cpus"),
    [
        ("1", (1,)),
        ("0,2", (0, 2)),
        ("2-5,8", (2, 3, 4, 5, 8)),
        (" 3 , 1 ", (3, 1)),  # the order written: worker 0 gets CPU 3
        ("0-3\n", (0, 1, 2, 3)),  # as sysfs writes /sys/devices/system/cpu/online
        ("4-4", (4,)),
    ],
)
def test_a_cpu_list_reads_like_the_kernels(text: str, cpus: tuple[int, ...]) -> None:
    assert parse_cpu_list(text) == cpus


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("", "a CPU list cannot be empty"),
        ("1,", "'' is not a CPU number or range"),
        ("a", "'a' is not a CPU number or range"),
        ("-1", "'-1' is not a CPU number or range"),
        ("3-1", "'3-1' is not a CPU range: it must go from low to high"),
        ("1-2-3", "'1-2-3' is not a CPU number or range"),
        ("1,1", "CPU 1 is named twice"),
        ("0-3,2", "CPU 2 is named twice"),
        ("²", "'²' is not a CPU number or range"),
        ("8192", "CPU 8192 is beyond the largest CPU number Linux has (8191)"),
    ],
)
def test_a_bad_cpu_list_names_the_part_that_is_wrong(text: str, error: str) -> None:
    with pytest.raises(ValueError) as e:
        parse_cpu_list(text)
    assert error in str(e.value)


def test_an_array_of_cpus_is_checked_like_the_text() -> None:
    assert checked_cpus([2, 0]) == (2, 0)
    for bad, error in [([True], "True is not a CPU number"), ([-1], "-1 is not a CPU"), ([], "cannot be empty")]:
        with pytest.raises(ValueError, match=error):
            checked_cpus(bad)


@given(st.lists(st.integers(0, 300), min_size=1, max_size=40, unique=True))
def test_a_list_written_back_reads_as_itself(cpus: list[int]) -> None:
    text = cpu_list_text(cpus)
    assert parse_cpu_list(text) == tuple(cpus)
    assert " " not in text


def test_runs_of_three_or_more_are_written_as_ranges() -> None:
    assert cpu_list_text((0, 1, 2, 3, 6)) == "0-3,6"
    assert cpu_list_text((0, 1, 5)) == "0,1,5"
    assert cpu_list_text((3, 2, 1)) == "3,2,1"


def test_workers_take_the_cpus_in_turn() -> None:
    assert [worker_cpu((2, 3), k) for k in range(5)] == [2, 3, 2, 3, 2]
    assert worker_cpu((), 0) is None


def test_a_cpu_that_is_not_online_is_named() -> None:
    assert absent_cpus_problem((1,), (0, 1)) is None
    assert absent_cpus_problem((1, 4, 5), (0, 1, 2, 3)) == "CPU 4, 5 are not online on this host (online: 0-3)"
    assert absent_cpus_problem((7,), (0, 1)) == "CPU 7 is not online on this host (online: 0,1)"


def test_the_union_keeps_the_order_first_named() -> None:
    assert union_of([(2, 3), (0, 2), (1,)]) == (2, 3, 0, 1)
