"""Where the relay's CPU goes: `perf record` on the relay's CPU during one measured step, grouped into the parts of a
relayed packet's life (the Python loop, the capture, the kernel's receive path, the send path, memory, ...).

`perf` samples the CPU clock (no PMU needed), system-wide on that CPU, so softirq work done there on behalf of the
relay is seen with the process's own time. `categorize` is pure: it reads `perf report --stdio` text. User-space
samples of processes that are not the relay's (a shared machine), and their own kernel time, are one part of their
own; softirq network work counts whichever task it interrupted.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

# (category, pattern on the kernel symbol): the first match wins, so specific before general
KERNEL_PARTS: tuple[tuple[str, str], ...] = (
    ("idle", r"^(cpuidle|default_idle|pv_native_safe_halt|do_idle|native_safe_halt|acpi_idle|cpu_idle|poll_idle)"),
    (
        "tc program and its helpers",
        r"^(bpf_prog_|bpf_skb_|bpf_l[34]_csum|bpf_clone_redirect|bpf_csum|tcx_|"
        r"sch_handle_ingress|tcf_classify|cls_bpf|__bpf_redirect|bpf_redirect|skb_do_redirect|bpf_ktime)",
    ),
    (
        "capture (AF_PACKET ring, socket filter)",
        r"^(tpacket_|packet_rcv|prb_|__packet_|run_filter|sk_filter|"
        r"bpf_prog_run|___bpf_prog_run|__bpf_prog_run|packet_lookup|packet_poll|packet_)",
    ),
    (
        "clone and copy for outputs",
        r"^(skb_clone|__skb_clone|pskb_expand_head|skb_ensure_writable|"
        r"skb_copy|__copy_skb_header|skb_headers_offset_update)",
    ),
    (
        "send path (UDP/IP output, qdisc, veth)",
        r"^(udp_send|udp_push|udp4_|udpv6_send|udp6_|ip_make_skb|"
        r"__ip_make_skb|ip_append|__ip_append|ip6_append|ip_generic_getfrag|ip_finish_output|ip_output|ip_mc_output|"
        r"ip_send_skb|ip_local_out|__ip_local_out|ip6_|ip_setup_cork|ip_route_output|__ip_route_output|"
        r"ip_mc_finish|dev_queue_xmit|__dev_queue_xmit|dev_hard_start_xmit|sch_direct_xmit|__qdisc|pfifo|"
        r"veth_|neigh_|ipv4_mtu|dst_|validate_xmit|netif_skb_features|skb_network_protocol|__sys_sendmmsg|"
        r"___sys_sendmsg|____sys_sendmsg|sock_sendmsg|inet_sendmsg|__sock_sendmsg|dev_forward_skb|__dev_forward_skb|"
        r"eth_type_trans|netif_rx|enqueue_to_backlog|get_rps_cpu|skb_set_owner_w|sock_wfree|sock_alloc_send)",
    ),
    (
        "receive path (netif, IP input, the original's trip up the stack)",
        r"^(__netif_receive|netif_receive|"
        r"process_backlog|net_rx_action|napi_|__napi|ip_rcv|ip_sublist|ip_list_rcv|ip_route_input|ip_route_use|"
        r"ip_mc_validate|fib_|__fib|ip_mr_|ipmr_|ip_local_deliver|ip_check_mc|__udp4_lib|udp_rcv|udp_queue|"
        r"__netif_receive_skb|deliver_skb|ip_rcv_finish|ip6_rcv|ipv6_rcv|ip6_mc|raw_local_deliver|igmp|"
        r"nf_|nft_|ipv4_pktinfo|inet_|rcu_read|__rcu_read|sk_filter_trim|do_softirq|__do_softirq|handle_softirq|"
        r"irq_exit|__irq_exit|__local_bh_enable|local_bh_enable)",
    ),
    (
        "memory (skb alloc/free, copies)",
        r"^(kmem_cache|kmalloc|__kmalloc|kfree|__kfree|__alloc_skb|alloc_skb|"
        r"__build_skb|skb_release|__slab|slab_|___slab|__free|free_|page_frag|memcpy|__memcpy|memset|__memset|"
        r"copy_user|_copy_from|_copy_to|rep_movs|__check_object_size|check_heap_object|__virt_addr_valid|"
        r"skb_put|skb_free|consume_skb|sk_skb_reason_drop|kfree_skb|skb_attempt|napi_consume|__napi_alloc|"
        r"__netdev_alloc|page_pool|__alloc_pages|get_page_from|mod_objcg|refill_obj|obj_cgroup|memcg|"
        r"__mod_memcg|__memcg)",
    ),
    (
        "system calls, polling, scheduling",
        r"^(entry_|syscall_|do_syscall|__x64_sys|x64_sys|__sys_|ksys_|"
        r"do_sys_poll|do_poll|__poll|sock_poll|ep_|do_epoll|schedule|__schedule|finish_task|pick_next|"
        r"update_|dequeue|enqueue_task|try_to_wake|ttwu|hrtimer|__hrtimer|futex|__futex|fdget|__fget|fput|"
        r"restore_fpregs|switch_fpu|exit_to_user|irqentry|asm_|sysvec|__sysvec|timekeeping|ktime_get|"
        r"read_tsc|native_sched_clock|sched_clock|__rseq|rseq_|srso_|__x86_return|__x86_indirect|"
        r"clear_bhb|arch_exit|security_|apparmor|selinux|__seccomp|seccomp|__secure_computing|audit_)",
    ),
)
_COMPILED = tuple((name, re.compile(pat)) for name, pat in KERNEL_PARTS)
PYTHON = "Python (interpreter, user space)"
OTHER_USER = "relay, other user space (e.g. libc)"
OTHER = "other kernel"
FOREIGN = "other processes (not the relay's)"
# kernel work that softirq does for the relay whichever task it interrupts; the rest of a foreign task's kernel
# time (its own system calls, page faults, ...) is that task's
NETWORK_PARTS = frozenset(name for name, _ in KERNEL_PARTS[1:6])

# `perf report --stdio --sort pid,dso,sym`: "  12.34%   4242:python3  [kernel.kallsyms]  [k] tpacket_rcv"
_LINE = re.compile(r"^\s*(\d+\.\d+)%\s+(\d+):(\S*)\s+(\S+)\s+\[([k.])\]\s+(\S+)")


@dataclass(frozen=True)
class Sample:
    pct: float
    pid: int
    comm: str
    dso: str
    kernel: bool
    symbol: str


def parse_report(text: str) -> list[Sample]:
    out: list[Sample] = []
    for line in text.splitlines():
        m = _LINE.match(line)
        if m:
            pct, pid, comm, dso, mode, sym = m.groups()
            out.append(Sample(float(pct), int(pid), comm, dso, mode == "k", sym))
    return out


def category(s: Sample, relay: frozenset[int] | None = None) -> str:
    """The part of a relayed packet's life a sample belongs to; `relay`: the relay's process ids (None: every
    process counts as the relay's)."""
    mine = relay is None or s.pid in relay
    if not s.kernel:
        if not mine:
            return FOREIGN
        return PYTHON if "python" in s.dso else OTHER_USER
    part = next((name for name, pat in _COMPILED if pat.match(s.symbol)), OTHER)
    if mine or s.pid == 0 or part in NETWORK_PARTS:
        return part
    return FOREIGN


def categorize(text: str, relay: frozenset[int] | None = None) -> dict[str, float]:
    """Share of the sampled CPU time (percent) per category, largest first."""
    shares: dict[str, float] = {}
    for s in parse_report(text):
        key = category(s, relay)
        shares[key] = shares.get(key, 0.0) + s.pct
    return dict(sorted(((k, round(v, 2)) for k, v in shares.items()), key=lambda kv: -kv[1]))


def top_by_part(text: str, relay: frozenset[int] | None = None, n: int = 4) -> dict[str, list[tuple[float, str]]]:
    """The `n` heaviest symbols of each part (what "other kernel" is made of, for one)."""
    parts: dict[str, dict[str, float]] = {}
    for s in parse_report(text):
        syms = parts.setdefault(category(s, relay), {})
        syms[s.symbol] = syms.get(s.symbol, 0.0) + s.pct
    return {
        part: [(round(pct, 2), sym) for sym, pct in sorted(syms.items(), key=lambda kv: -kv[1])[:n]]
        for part, syms in parts.items()
    }


def top_symbols(text: str, n: int = 15) -> list[tuple[float, str, str]]:
    return [(s.pct, s.comm, s.symbol) for s in sorted(parse_report(text), key=lambda s: -s.pct)[:n]]


def available() -> bool:
    return shutil.which("perf") is not None


def start(cpu: int, seconds: float, out: Path) -> subprocess.Popen[bytes]:
    """Record the CPU clock on `cpu` (all processes and softirq there) for `seconds`, into `out`."""
    return subprocess.Popen(
        [
            "perf",
            "record",
            "-q",
            "-e",
            "cpu-clock",
            "-F",
            "4999",
            "-C",
            str(cpu),
            "-o",
            str(out),
            "--",
            "sleep",
            f"{seconds:.1f}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def report(data: Path) -> str:
    return subprocess.run(
        [
            "perf",
            "report",
            "-i",
            str(data),
            "--stdio",
            "--sort",
            "pid,dso,sym",
            "-g",
            "none",
            "--percent-limit",
            "0.001",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
