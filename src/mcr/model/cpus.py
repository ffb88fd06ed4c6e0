"""CPU lists: which CPUs the data-plane workers are pinned to (`--worker-cpus`, `worker_cpus`, `pinning`).

The text form is the kernel's and taskset's (`0-3,6`): numbers and inclusive ranges, comma-separated.
Worker k runs on the k-th CPU of the list, round robin when there are more workers than CPUs.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

CPUS_MAX = 8192  # the kernel's largest NR_CPUS: no host has a CPU numbered beyond it


def parse_cpu_list(text: str) -> tuple[int, ...]:
    """`1`, `0,2`, `2-5,8`: the CPUs in the order written; ValueError naming the part that is wrong."""
    if not text.strip():
        raise ValueError("a CPU list cannot be empty (write CPUs as 0,2 or 1-3)")
    cpus: list[int] = []
    for part in text.split(","):
        item = part.strip()
        low_text, dash, high_text = item.partition("-")
        low, high = _cpu_number(low_text, item), _cpu_number(high_text, item) if dash else None
        if high is None:
            cpus.append(low)
        elif high < low:
            raise ValueError(f"'{item}' is not a CPU range: it must go from low to high (like 1-3)")
        else:
            cpus.extend(range(low, high + 1))
    return checked_cpus(cpus)


def _cpu_number(text: str, item: str) -> int:
    value = text.strip()
    if not value.isdecimal() or not value.isascii():
        raise ValueError(f"'{item}' is not a CPU number or range (write CPUs as 0,2 or 1-3)")
    return int(value)


def checked_cpus(cpus: Iterable[object]) -> tuple[int, ...]:
    """The CPUs as a tuple; ValueError for one that is not a CPU number or is named twice."""
    seen: list[int] = []
    for cpu in cpus:
        if type(cpu) is not int or cpu < 0:
            raise ValueError(f"{cpu!r} is not a CPU number (0 or more)")
        if cpu >= CPUS_MAX:
            raise ValueError(f"CPU {cpu} is beyond the largest CPU number Linux has ({CPUS_MAX - 1})")
        if cpu in seen:
            raise ValueError(f"CPU {cpu} is named twice")
        seen.append(cpu)
    if not seen:
        raise ValueError("a CPU list cannot be empty (write CPUs as 0,2 or 1-3)")
    return tuple(seen)


def cpu_list_text(cpus: Sequence[int]) -> str:
    """The list written back, runs of three or more consecutive CPUs as ranges: (0, 1, 2, 3, 6) -> `0-3,6`."""
    parts: list[str] = []
    i = 0
    while i < len(cpus):
        j = i
        while j + 1 < len(cpus) and cpus[j + 1] == cpus[j] + 1:
            j += 1
        if j - i >= 2:
            parts.append(f"{cpus[i]}-{cpus[j]}")
        else:
            parts.extend(str(c) for c in cpus[i : j + 1])
        i = j + 1
    return ",".join(parts)


def absent_cpus_problem(cpus: Sequence[int], online: Sequence[int]) -> str | None:
    """Why the list cannot be applied on a host whose CPUs are `online`, or None."""
    missing = [c for c in cpus if c not in online]
    if not missing:
        return None
    verb = "is" if len(missing) == 1 else "are"
    return f"CPU {', '.join(map(str, missing))} {verb} not online on this host (online: {cpu_list_text(online)})"


def worker_cpu(cpus: Sequence[int], worker_id: int) -> int | None:
    """The CPU worker `worker_id` is pinned to, or None when no list is set."""
    return cpus[worker_id % len(cpus)] if cpus else None


def union_of(lists: Iterable[Sequence[int]]) -> tuple[int, ...]:
    """Every CPU of the lists once, in the order first named."""
    return tuple(dict.fromkeys(c for cpus in lists for c in cpus))
