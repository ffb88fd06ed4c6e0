"""The benchmark's perf breakdown (bench/perfsplit.py): report lines parsed, symbols put in the right part."""

from __future__ import annotations

import pytest

from tests.bench_modules import load

perfsplit = load("perfsplit")

REPORT = """\
# Samples: 59K of event 'cpu-clock'
#
    20.00%  4242:python3          libpython3.11.so.1.0       [.] _PyEval_EvalFrameDefault
    10.00%  0:swapper          [kernel.kallsyms]          [k] pv_native_safe_halt
     8.00%  4242:python3          [kernel.kallsyms]          [k] tpacket_rcv
     7.50%  4242:python3          [kernel.kallsyms]          [k] udp_sendmsg
     5.00%  22:ksoftirqd/1      [kernel.kallsyms]          [k] ip_route_input_slow
     4.00%  4242:python3          [kernel.kallsyms]          [k] skb_clone
     3.00%  4242:python3          [kernel.kallsyms]          [k] kmem_cache_alloc_node_noprof
     2.00%  0:swapper          [kernel.kallsyms]          [k] bpf_prog_3b185187f1855c4c_relay
     1.50%  4242:python3          libc.so.6                  [.] __memmove_avx_unaligned_erms
     1.00%  4242:python3          [kernel.kallsyms]          [k] entry_SYSCALL_64
     0.50%  71:kdamond.0        [kernel.kallsyms]          [k] damon_pa_batch_lock
"""


def test_report_lines_are_parsed_and_headers_skipped() -> None:
    samples = perfsplit.parse_report(REPORT)
    assert len(samples) == 11
    first = samples[0]
    assert (first.pct, first.pid, first.comm, first.kernel) == (20.0, 4242, "python3", False)
    assert first.symbol == "_PyEval_EvalFrameDefault"
    assert samples[1].kernel and samples[1].symbol == "pv_native_safe_halt"


@pytest.mark.parametrize(
    ("line", "part"),
    [
        ("1.00%  4242:python3  libpython3.11.so.1.0  [.] _PyEval_EvalFrameDefault", perfsplit.PYTHON),
        ("1.00%  4242:python3  libc.so.6  [.] memcpy", perfsplit.OTHER_USER),
        ("1.00%  0:swapper  [kernel.kallsyms]  [k] pv_native_safe_halt", "idle"),
        ("1.00%  4242:python3  [kernel.kallsyms]  [k] tpacket_rcv", "capture (AF_PACKET ring, socket filter)"),
        ("1.00%  0:swapper  [kernel.kallsyms]  [k] bpf_prog_3b18_relay", "tc program and its helpers"),
        ("1.00%  0:swapper  [kernel.kallsyms]  [k] bpf_l4_csum_replace", "tc program and its helpers"),
        ("1.00%  4242:python3  [kernel.kallsyms]  [k] pskb_expand_head", "clone and copy for outputs"),
        ("1.00%  4242:python3  [kernel.kallsyms]  [k] veth_xmit", "send path (UDP/IP output, qdisc, veth)"),
        ("1.00%  0:swapper  [kernel.kallsyms]  [k] ip_rcv_core", perfsplit.KERNEL_PARTS[5][0]),
        ("1.00%  4242:python3  [kernel.kallsyms]  [k] kfree_skb_list_reason", "memory (skb alloc/free, copies)"),
        ("1.00%  4242:python3  [kernel.kallsyms]  [k] do_syscall_64", "system calls, polling, scheduling"),
        ("1.00%  71:kdamond.0  [kernel.kallsyms]  [k] damon_pa_batch_lock", perfsplit.OTHER),
    ],
)
def test_each_symbol_lands_in_its_part(line: str, part: str) -> None:
    (sample,) = perfsplit.parse_report(line)
    assert perfsplit.category(sample) == part


@pytest.mark.parametrize(
    ("line", "part"),
    [
        ("1.00%  999:pytest  libpython3.11.so.1.0  [.] _PyEval_EvalFrameDefault", perfsplit.FOREIGN),
        ("1.00%  999:pytest  [kernel.kallsyms]  [k] do_syscall_64", perfsplit.FOREIGN),
        ("1.00%  999:pytest  [kernel.kallsyms]  [k] tpacket_rcv", "capture (AF_PACKET ring, socket filter)"),
        ("1.00%  4242:python3  [kernel.kallsyms]  [k] do_syscall_64", "system calls, polling, scheduling"),
        ("1.00%  0:swapper  [kernel.kallsyms]  [k] pv_native_safe_halt", "idle"),
        ("1.00%  71:kdamond.0  [kernel.kallsyms]  [k] damon_pa_batch_lock", perfsplit.FOREIGN),
    ],
)
def test_other_processes_are_told_apart_from_the_relay(line: str, part: str) -> None:
    (sample,) = perfsplit.parse_report(line)
    assert perfsplit.category(sample, frozenset({4242})) == part


def test_shares_add_up_per_part_largest_first() -> None:
    shares = perfsplit.categorize(REPORT)
    assert shares[perfsplit.PYTHON] == 20.0
    assert shares["send path (UDP/IP output, qdisc, veth)"] == 7.5
    assert round(sum(shares.values()), 2) == 62.5
    assert list(shares.values()) == sorted(shares.values(), reverse=True)
    assert perfsplit.top_symbols(REPORT, 2) == [
        (20.0, "python3", "_PyEval_EvalFrameDefault"),
        (10.0, "swapper", "pv_native_safe_halt"),
    ]


def test_heaviest_symbols_per_part() -> None:
    tops = perfsplit.top_by_part(REPORT, n=1)
    assert tops[perfsplit.PYTHON] == [(20.0, "_PyEval_EvalFrameDefault")]
    assert tops["idle"] == [(10.0, "pv_native_safe_halt")]
