"""The kernel engine on its own, in namespaces: the generated tc program loaded with bpf(2), attached with tcx.

Two kinds of tests:

- BPF_PROG_TEST_RUN in a namespace with one veth pair `ka`/`kb`: crafted frames (IP options, a zero UDP
  checksum, CHECKSUM_COMPLETE skbs, fragments, non-UDP, malformed headers, 64 outputs, a bad output; IPv6
  with and without extension headers, its drops and a source prefix) go through the program; its clones
  leave by `ka` and are read back raw on `kb`, where every checksum is recomputed.
- Real traffic through SRC -> RELAY -> SINK: traffic_generator -> `rin` (program at tcx ingress) -> `rout`
  -> traffic_sink. With transmit checksum offload off on the source, every frame carries a full UDP checksum
  and the sink's kernel drops any frame whose checksum is wrong, so "received == sent, corrupted == 0" proves
  the rewritten checksums.

bpf objects belong to the process that made them, so the engine runs inside the relay namespace in a child
process: this module, run with `runner` as its first argument (see `runner_main`).
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import socket
import struct
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import replace
from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network
from pathlib import Path
from types import FrameType
from typing import Any

import pytest

from mcr.packet.build import (
    build_esp_frame,
    build_udp6_frame,
    build_udp_frame,
    ipv4_checksum,
    ipv6_extension,
    multicast_mac,
    multicast_mac6,
)
from tests.e2e.netns import Chain, NetLab, Proc, wait_for
from tests.e2e.relay import generate, probe, start_generator, start_sink

ROOT = Path(__file__).resolve().parents[2]
INGRESS = 99  # ingress_ifindex the test runs pretend the frames arrived on
TC_ACT_UNSPEC = -1
SOURCE = "10.9.9.9"


# ------------------------------------------------------------------------------ the child process


def _runner_argv(*args: str) -> list[str]:
    code = f"import sys; sys.path.insert(0, {str(ROOT)!r}); from tests.e2e.test_kernel_program import runner_main; "
    return [sys.executable, "-c", code + "sys.exit(runner_main(sys.argv[1:]))", *args]


def _mac(ifname: str) -> bytes:
    return bytes.fromhex(Path(f"/sys/class/net/{ifname}/address").read_text().strip().replace(":", ""))


def _outputs(spec: Sequence[dict[str, Any]]) -> list[Any]:
    from mcr.kernel.engine import OutputEntry

    return [
        OutputEntry(
            ifindex=socket.if_nametoindex(o["ifname"]) if "ifname" in o else int(o["ifindex"]),
            group=ip_address(o["group"]),
            port=int(o["port"]),
            source=ip_address(o["source"]),
            src_mac=_mac(o["ifname"]) if "ifname" in o else b"\x02\0\0\0\0\x09",
            ttl=int(o.get("ttl", 1)),
            protocol=int(o.get("protocol", 17)),
        )
        for o in spec
    ]


def _counters_doc(relay: Any) -> dict[str, Any]:
    c = relay.counters()
    return {
        "rules": {
            str(slot): {
                "packets": r.packets,
                "bytes": r.bytes,
                "outputs": [{"packets": o.packets, "bytes": o.bytes, "errors": o.errors} for o in r.outputs],
                "rate_limited": r.rate_limited,
            }
            for slot, r in c.rules.items()
        },
        "drops": c.drops,
    }


def _apply(relay: Any, ifindex: int, ops: Sequence[dict[str, Any]]) -> None:
    for op in ops:
        if op.get("op", "set") == "remove":
            relay.remove_rule(op["slot"])
        else:
            relay.set_rule(op["slot"], ifindex, ip_address(op["group"]), op["port"], _outputs(op["outputs"]))


def _run_relay(spec: dict[str, Any]) -> int:
    """Load, attach at tcx ingress of spec["input"], install the rules. SIGUSR1 writes the counters to
    spec["counters"]; SIGUSR2 applies the rule changes in the file spec["ops"] and writes `<ops>.done`;
    SIGTERM prints the counters on stdout, closes everything and exits."""
    from mcr.kernel import bpf
    from mcr.kernel.engine import KernelRelay

    names = {signal.SIGTERM: "stop", signal.SIGUSR1: "dump", signal.SIGUSR2: "ops"}
    flags = dict.fromkeys(names.values(), False)

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        flags[names[signal.Signals(signum)]] = True

    for signum in names:
        signal.signal(signum, on_signal)
    relay = KernelRelay(max_rules=8, max_outputs=64)
    ifindex = socket.if_nametoindex(spec["input"])
    _apply(relay, ifindex, spec["rules"])
    relay.attach(ifindex)
    info = bpf.prog_info(relay.prog_fd)
    ready: dict[str, object] = {"prog_id": info.id, "insns": len(relay.insns), "xlated": info.xlated_len // 8}
    ready.update(jited=info.jited_len, verified=info.verified_insns, verifier=relay.verifier_stats)
    tmp = Path(spec["ready"] + ".tmp")
    tmp.write_text(json.dumps(ready))
    tmp.replace(spec["ready"])
    deadline = time.monotonic() + float(spec.get("lifetime", 120))
    while not flags["stop"] and time.monotonic() < deadline:
        if flags["ops"]:
            flags["ops"] = False
            _apply(relay, ifindex, json.loads(Path(spec["ops"]).read_text()))
            Path(spec["ops"] + ".done").write_text("done")
        if flags["dump"]:
            flags["dump"] = False
            out = Path(spec["counters"] + ".tmp")
            out.write_text(json.dumps(_counters_doc(relay)))
            out.replace(spec["counters"])
        time.sleep(0.02)
    print(json.dumps(_counters_doc(relay)), flush=True)
    relay.close()
    return 0


def _run_cases(spec: dict[str, Any]) -> int:
    """BPF_PROG_TEST_RUN of each case's frame; print the verdict, the frame after the program and the clones
    read back on `kb` (IPv4/UDP frames only), then the counters."""
    from mcr.kernel import bpf
    from mcr.kernel.engine import KernelRelay

    ka = socket.if_nametoindex("ka")
    rx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
    rx.bind(("kb", 0x0003))
    from mcr.model.ratelimit import decode_rate_limit

    relay = KernelRelay(max_rules=8, max_outputs=64)
    probe = _CsumProbe(socket.if_nametoindex("kb")) if spec.get("csum_probe") else None
    for rule in spec["rules"]:
        outputs = _outputs(rule["outputs"])
        limit = decode_rate_limit(rule["rate_limit"]) if "rate_limit" in rule else None
        source = ip_network(rule["source"]) if "source" in rule else None
        group, port, protocol = ip_address(rule["group"]), rule["port"], rule.get("protocol", 17)
        relay.set_rule(rule["slot"], INGRESS, group, port, outputs, limit, source, protocol=protocol)
    results: list[dict[str, Any]] = []
    for case in spec["cases"]:
        try:
            run = bpf.prog_test_run(
                relay.prog_fd,
                bytes.fromhex(case["frame"]),
                ingress_ifindex=INGRESS,
                ifindex=ka,
                flags=case["flags"],
                repeat=case.get("repeat", 1),
            )
        except bpf.BpfError as e:
            results.append({"error": str(e), "errno": e.errno})
            continue
        clones: list[str] = []
        deadline = time.monotonic() + 1.0
        rx.settimeout(0.05)
        while time.monotonic() < deadline and (len(clones) < case["expect"] or time.monotonic() < deadline - 0.9):
            try:
                data, addr = rx.recvfrom(65535)
            except TimeoutError:
                continue
            if addr[2] != 4 and _relayed(data):  # not outgoing
                clones.append(data.hex())
        result = {"retval": run.retval, "data": run.data.hex(), "clones": clones}
        if probe is not None:
            result["skb_csums"] = [probe.take(bytes.fromhex(c)) for c in clones]
        results.append(result)
    print(json.dumps({"results": results, "counters": _counters_doc(relay)}))
    relay.close()
    if probe is not None:
        probe.close()
    return 0


class _CsumProbe:
    """A tc program at tcx ingress of `kb` that records skb->csum of each IPv6 frame arriving there, keyed by
    the last 4 bytes of its destination: `bpf_csum_update(skb, 0)` returns it for a CHECKSUM_COMPLETE skb (a
    negative errno for any other). So a clone's skb->csum, which BPF_F_TEST_SKB_CHECKSUM_COMPLETE does not
    check (it checks the original after the run), can be compared with its bytes."""

    def __init__(self, ifindex: int) -> None:
        from mcr.kernel import bpf
        from mcr.kernel.abi import TC_ACT_UNSPEC, MapType, SkbOffset
        from mcr.kernel.asm import AluOp, Assembler, Helper, JmpOp, Reg, Size, alu64_imm, ldx, mov64_imm, mov64_reg, stx

        a, fp = Assembler(), Reg.FP
        a.emit(mov64_reg(Reg.R6, Reg.R1), ldx(Size.W, Reg.R2, Reg.R6, SkbOffset.DATA))
        a.emit(ldx(Size.W, Reg.R3, Reg.R6, SkbOffset.DATA_END), mov64_reg(Reg.R4, Reg.R2))
        a.emit(alu64_imm(AluOp.ADD, Reg.R4, 54))
        a.jump_reg(JmpOp.JGT, Reg.R4, Reg.R3, "out")
        a.emit(ldx(Size.W, Reg.R2, Reg.R2, 50), stx(Size.W, fp, -4, Reg.R2))
        a.emit(mov64_reg(Reg.R1, Reg.R6), mov64_imm(Reg.R2, 0))
        a.call(Helper.CSUM_UPDATE)
        a.emit(stx(Size.DW, fp, -16, Reg.R0))
        a.ld_map(Reg.R1, "csums")
        a.emit(mov64_reg(Reg.R2, fp), alu64_imm(AluOp.ADD, Reg.R2, -4), mov64_reg(Reg.R3, fp))
        a.emit(alu64_imm(AluOp.ADD, Reg.R3, -16), mov64_imm(Reg.R4, 0))
        a.call(Helper.MAP_UPDATE_ELEM)
        a.label("out")
        a.emit(mov64_imm(Reg.R0, TC_ACT_UNSPEC))
        a.exit()
        self.map_fd = bpf.create_map(MapType.HASH, 4, 8, 256, "mcr_csums")
        self.prog_fd = bpf.load_program(a.assemble().link({"csums": self.map_fd}), name="mcr_csum_probe")
        self.link_fd = bpf.attach_tcx_ingress(self.prog_fd, ifindex)

    def take(self, frame: bytes) -> int | None:
        """The skb->csum recorded for `frame` (None: not CHECKSUM_COMPLETE, or not seen), then forget it."""
        from mcr.kernel import bpf

        value = bpf.lookup_elem(self.map_fd, frame[50:54], 8)
        bpf.delete_elem(self.map_fd, frame[50:54])
        csum = None if value is None else int.from_bytes(value, sys.byteorder)
        return csum if csum is not None and csum < 1 << 32 else None

    def close(self) -> None:
        for fd in (self.link_fd, self.prog_fd, self.map_fd):
            os.close(fd)


def _relayed(data: bytes) -> bool:
    """IPv4 UDP or ESP, or IPv6 from a routable source (not the veths' own neighbour discovery and MLD)."""
    if data[12:14] == b"\x08\x00":
        return data[23] in (17, 50)
    return data[12:14] == b"\x86\xdd" and not IPv6Address(data[22:38]).is_link_local and any(data[22:38])


def runner_main(argv: list[str]) -> int:
    """`relay SPEC_JSON`, `cases SPEC_JSON`, or `query IFNAME` (program ids at tcx ingress of IFNAME)."""
    from mcr.kernel import bpf

    match argv:
        case ["relay", spec]:
            return _run_relay(json.loads(spec))
        case ["cases", spec]:
            return _run_cases(json.loads(spec))
        case ["query", ifname]:
            print(json.dumps(bpf.query_tcx(socket.if_nametoindex(ifname))))
            return 0
    print(f"usage: runner relay|cases SPEC_JSON | query IFNAME (got {argv})", file=sys.stderr)
    return 2


# ------------------------------------------------------------------------------------ test helpers


def frame_headers(frame: bytes) -> dict[str, Any]:
    """The fields a relay rewrites, and whether both checksums hold (recomputed here)."""
    ihl = (frame[14] & 0x0F) * 4
    total = struct.unpack_from("!H", frame, 16)[0]
    udp = frame[14 + ihl : 14 + total]
    src, dst = frame[26:30], frame[30:34]
    csum = struct.unpack_from("!H", udp, 6)[0]
    pseudo = src + dst + struct.pack("!BBH", 0, 17, len(udp))
    return {
        "dst_mac": frame[0:6],
        "src_mac": frame[6:12],
        "ttl": frame[22],
        "src": str(IPv4Address(src)),
        "dst": str(IPv4Address(dst)),
        "dport": struct.unpack_from("!H", udp, 2)[0],
        "sport": struct.unpack_from("!H", udp, 0)[0],
        "ip_ok": ipv4_checksum(frame[14 : 14 + ihl]) == 0,
        "udp_csum": csum,
        "udp_ok": csum == 0 or ipv4_checksum(pseudo + udp) == 0,
        "options": frame[34 : 14 + ihl],
        "payload": udp[8:],
    }


def out(ifname: str, group: str, port: int, ttl: int = 1, source: str = SOURCE) -> dict[str, Any]:
    return {"ifname": ifname, "group": group, "port": port, "ttl": ttl, "source": source}


def frame(dst: str = "239.1.1.1", port: int = 5001, **kw: Any) -> bytes:
    kw.setdefault("payload", bytes(range(256)) * 2)
    return build_udp_frame(src_ip="10.200.1.2", dst_ip=dst, dst_port=port, ttl=5, **kw)


def zero_udp_checksum(f: bytes) -> bytes:
    ihl = (f[14] & 0x0F) * 4
    return f[: 14 + ihl + 6] + b"\0\0" + f[14 + ihl + 8 :]


def run_cases(
    lab: NetLab, rules: list[dict[str, Any]], cases: list[dict[str, Any]], *, csum_probe: bool = False
) -> dict[str, Any]:
    ns = lab.add_netns("k")
    lab.run(ns, "ip", "link", "add", "ka", "type", "veth", "peer", "name", "kb")
    for ifname in ("ka", "kb"):
        lab.run(ns, "ip", "link", "set", "dev", ifname, "up")
    for c in cases:
        c["frame"] = c["frame"].hex()
        c.setdefault("flags", 0)
        c.setdefault("expect", 0)
    spec = json.dumps({"rules": rules, "cases": cases, "csum_probe": csum_probe})
    result = lab.run(ns, *_runner_argv("cases", spec), timeout=120)
    return dict(json.loads(result.stdout))


RULES_3 = [
    {
        "slot": 0,
        "group": "239.1.1.1",
        "port": 5001,
        "outputs": [out("ka", f"239.2.2.{i}", 6000 + i, 6 + i) for i in (1, 2, 3)],
    }
]


# ------------------------------------------------------------------------- BPF_PROG_TEST_RUN cases


@pytest.mark.parametrize("options", [b"", b"\x94\x04\x00\x00", b"\x01" * 40], ids=["ihl5", "router-alert", "ihl15"])
@pytest.mark.parametrize("zero_csum", [False, True], ids=["csum", "no-csum"])
def test_rewrite_fan_out_and_restore(netlab: NetLab, options: bytes, zero_csum: bool) -> None:
    original = frame(ip_options=options)
    if zero_csum:
        original = zero_udp_checksum(original)
    doc = run_cases(netlab, RULES_3, [{"frame": original, "expect": 3}])
    (res,) = doc["results"]
    assert res["retval"] == TC_ACT_UNSPEC
    assert bytes.fromhex(res["data"]) == original  # the original goes on to the stack unchanged
    assert len(res["clones"]) == 3
    for i, clone in zip((1, 2, 3), sorted(res["clones"]), strict=True):
        h = frame_headers(bytes.fromhex(clone))
        assert (h["dst"], h["dport"], h["ttl"], h["src"]) == (f"239.2.2.{i}", 6000 + i, 6 + i, SOURCE)
        assert h["dst_mac"] == multicast_mac(IPv4Address(h["dst"]))
        assert h["ip_ok"] and h["udp_ok"], h
        assert (h["udp_csum"] == 0) == zero_csum  # a zero checksum stays zero, a real one is never zeroed
        assert h["options"] == options and h["sport"] == 40000
        assert h["payload"] == bytes(range(256)) * 2
    rule = doc["counters"]["rules"]["0"]
    assert (rule["packets"], rule["bytes"]) == (1, 512)
    assert rule["outputs"] == [{"packets": 1, "bytes": 512, "errors": 0}] * 3


def test_checksum_complete_skb_stays_consistent(netlab: NetLab) -> None:
    """With BPF_F_TEST_SKB_CHECKSUM_COMPLETE the kernel fails the run (EBADMSG) if skb->csum is stale after
    the program: the restore and the zero-checksum port rewrite must keep it right."""
    complete = 1 << 2
    cases = [
        {"frame": frame(), "flags": complete, "expect": 3},
        {"frame": zero_udp_checksum(frame()), "flags": complete, "expect": 3},
        {"frame": frame(ip_options=b"\x01" * 8), "flags": complete, "expect": 3},
    ]
    doc = run_cases(netlab, RULES_3, cases)
    for res in doc["results"]:
        if res.get("errno") == 22:
            pytest.skip("this kernel has no BPF_F_TEST_SKB_CHECKSUM_COMPLETE (Linux 6.11+)")
        assert "error" not in res, res
        assert res["retval"] == TC_ACT_UNSPEC and len(res["clones"]) == 3
        assert all(frame_headers(bytes.fromhex(c))["udp_ok"] for c in res["clones"])


def _udp_checksum_ffff(f: bytes) -> bytes:
    """`f` (IPv4 or IPv6) with its first payload word chosen so that the UDP checksum computes to zero, sent as
    0xffff."""
    if f[12:14] == b"\x86\xdd":
        udp = _udp6_offset(f)
        pseudo = f[22:54] + struct.pack("!I3xB", len(f) - udp, 17)
    else:
        udp = 14 + (f[14] & 0x0F) * 4
        pseudo = f[26:34] + struct.pack("!BBH", 0, 17, len(f) - udp)
    g = bytearray(f)
    g[udp + 6 : udp + 10] = bytes(4)  # checksum and the word to choose
    g[udp + 8 : udp + 10] = struct.pack("!H", ipv4_checksum(pseudo + bytes(g[udp:])))  # = 0xffff - the rest
    g[udp + 6 : udp + 8] = b"\xff\xff"
    return bytes(g)


def test_the_verifier_accepts_the_largest_output_loop() -> None:
    """The loop is walked once per possible output: the largest limit the builder allows must still load."""
    from mcr.kernel.engine import KernelRelay
    from mcr.kernel.program import MAX_OUTPUTS_LIMIT

    relay = KernelRelay(max_rules=4, max_outputs=MAX_OUTPUTS_LIMIT)
    try:
        assert relay.max_outputs == MAX_OUTPUTS_LIMIT
        assert "processed" in relay.verifier_stats
    finally:
        relay.close()


def test_rewrite_checksums_hold_for_any_header(netlab: NetLab) -> None:
    """Random sources, TTLs, ports, payloads and options, checksums 0 ("none"), 0xffff and any other, with and
    without CHECKSUM_COMPLETE: every clone carries valid IPv4 and UDP checksums and its output's fields, and the
    original comes back byte for byte. The outputs also cover the shortcuts of the incremental update: one keeps
    the input port, one keeps the whole address pair (its source and group are the frame's)."""
    rng = random.Random(20261127)
    rules = [
        {
            "slot": 0,
            "group": "239.1.1.1",
            "port": 5001,
            "outputs": [
                out("ka", "239.2.2.1", 5001, 9),  # same port
                out("ka", "239.1.1.1", 6002, 1, source="10.200.1.2"),  # same addresses as the fixed-source frames
                out("ka", "239.255.254.253", 65535, 255, source="192.168.255.254"),
            ],
        }
    ]
    cases: list[dict[str, Any]] = []
    for n in range(150):  # (the cases travel on a command line)
        src = "10.200.1.2" if n % 4 == 0 else str(IPv4Address(rng.getrandbits(32) & 0x0AFFFFFF | 0x0A000000))
        f = build_udp_frame(
            src_ip=src,
            dst_ip="239.1.1.1",
            dst_port=5001,
            src_port=rng.randrange(1, 65536),
            ttl=rng.randrange(1, 256),
            ip_options=rng.choice([b"", b"\x94\x04\x00\x00", b"\x01" * 12]),
            payload=rng.randbytes(rng.randrange(2, 300)),
        )
        f = (f, zero_udp_checksum(f), _udp_checksum_ffff(f))[n % 3]
        cases.append({"frame": f, "flags": (1 << 2) if n % 2 else 0, "expect": 3})
    originals = [c["frame"] for c in cases]
    doc = run_cases(netlab, rules, cases)
    expected = [(o["group"], o["port"], o["ttl"], o["source"]) for o in rules[0]["outputs"]]
    for n, (original, res) in enumerate(zip(originals, doc["results"], strict=True)):
        if res.get("errno") == 22:
            pytest.skip("this kernel has no BPF_F_TEST_SKB_CHECKSUM_COMPLETE (Linux 6.11+)")
        assert "error" not in res, res
        assert (res["retval"], bytes.fromhex(res["data"])) == (TC_ACT_UNSPEC, original)
        sent = frame_headers(original)
        clones = [frame_headers(bytes.fromhex(c)) for c in res["clones"]]
        assert sorted((h["dst"], h["dport"], h["ttl"], h["src"]) for h in clones) == sorted(expected)
        for h in clones:
            assert h["ip_ok"] and h["udp_ok"], (n, h, original.hex())
            assert (h["udp_csum"] == 0) == (sent["udp_csum"] == 0)
            assert (h["sport"], h["payload"], h["options"]) == (sent["sport"], sent["payload"], sent["options"])
    assert doc["counters"]["rules"]["0"]["packets"] == len(cases)


def test_not_relayed_frames_pass_untouched_and_are_counted(netlab: NetLab) -> None:
    arp = bytes.fromhex("ffffffffffff0200000000010806") + bytes(28)
    cases = {
        "arp": arp,
        "other_group": frame(dst="239.9.9.9"),  # no rule, group not configured: not counted
        "no_rule": frame(port=5999),
        "fragment": frame(more_fragments=True),
        "later_fragment": frame(fragment_offset=100),
        "not_udp": frame(protocol=6),
        "bad_ihl": frame(ihl=4),
        "bad_version": frame(version=6),
        "truncated": frame(total_length=2000),
        "bad_udp_length": frame(udp_length=4),
        "udp_length_too_long": frame(udp_length=4000),
    }
    doc = run_cases(netlab, RULES_3, [{"frame": f} for f in cases.values()])
    for (name, f), res in zip(cases.items(), doc["results"], strict=True):
        assert res["retval"] == TC_ACT_UNSPEC, name
        assert bytes.fromhex(res["data"]) == f, name
        assert res["clones"] == [], name
    assert doc["counters"]["drops"] == {
        "truncated": 1,
        "bad_ip_header": 2,
        "fragment": 2,
        "not_udp": 1,
        "bad_udp_length": 2,
        "no_rule": 1,
        "rate_limited": 0,
        "ext_header": 0,
        "zero_udp_checksum": 0,
    }
    assert doc["counters"]["rules"]["0"]["packets"] == 0


# ------------------------------------------------------------------------------------------------ ESP

ESP_BODY = bytes(range(256)) * 3  # stands for the encrypted data and ICV: relayed byte for byte


def esp_frame(dst: str = "239.1.1.1", **kw: Any) -> bytes:
    kw.setdefault("payload", ESP_BODY)
    kw.setdefault("src_ip", "10.200.1.2")
    return build_esp_frame(dst_ip=dst, spi=0x01020304, seq=99, ttl=5, **kw)


def esp_out(ifname: str, group: str, ttl: int = 1, source: str = SOURCE) -> dict[str, Any]:
    return {"ifname": ifname, "group": group, "port": 0, "ttl": ttl, "source": source, "protocol": 50}


def esp_headers(frame: bytes) -> dict[str, Any]:
    ihl = (frame[14] & 0x0F) * 4
    total = struct.unpack_from("!H", frame, 16)[0]
    return {
        "dst_mac": frame[0:6],
        "ttl": frame[22],
        "protocol": frame[23],
        "src": str(IPv4Address(frame[26:30])),
        "dst": str(IPv4Address(frame[30:34])),
        "ip_ok": ipv4_checksum(frame[14 : 14 + ihl]) == 0,
        "options": frame[34 : 14 + ihl],
        "esp": frame[14 + ihl : 14 + total],
    }


ESP_RULES = [
    {"slot": 0, "group": "239.1.1.1", "port": 5001, "outputs": [out("ka", "239.2.2.9", 6009)]},
    {
        "slot": 1,
        "group": "239.1.1.1",
        "port": 0,
        "protocol": 50,
        "outputs": [esp_out("ka", f"239.5.5.{i}", 6 + i) for i in (1, 2, 3)],
    },
]


@pytest.mark.parametrize("options", [b"", b"\x94\x04\x00\x00", b"\x01" * 40], ids=["ihl5", "router-alert", "ihl15"])
def test_esp_fan_out_and_restore(netlab: NetLab, options: bytes) -> None:
    """An ESP packet goes to each ESP output with its IP payload (SPI, sequence number, data) untouched and a
    new IPv4 header (addresses, TTL, checksum); the original goes on unchanged, also as CHECKSUM_COMPLETE."""
    original = esp_frame(ip_options=options)
    complete = 1 << 2
    cases = [{"frame": original, "expect": 3}, {"frame": original, "expect": 3, "flags": complete}]
    doc = run_cases(netlab, ESP_RULES, cases)
    for n, res in enumerate(doc["results"]):
        if n == 1 and res.get("errno") == 22:
            break  # no BPF_F_TEST_SKB_CHECKSUM_COMPLETE before Linux 6.11
        assert "error" not in res, res
        assert res["retval"] == TC_ACT_UNSPEC
        assert bytes.fromhex(res["data"]) == original
        heads = sorted((esp_headers(bytes.fromhex(c)) for c in res["clones"]), key=lambda h: h["dst"])
        assert [(h["dst"], h["ttl"], h["src"], h["protocol"]) for h in heads] == [
            (f"239.5.5.{i}", 6 + i, SOURCE, 50) for i in (1, 2, 3)
        ]
        for h in heads:
            assert h["ip_ok"] and h["options"] == options
            assert h["dst_mac"] == multicast_mac(IPv4Address(h["dst"]))
            assert h["esp"] == bytes.fromhex("01020304 00000063") + ESP_BODY
    rule = doc["counters"]["rules"]["1"]
    relayed = sum(1 for r in doc["results"] if "error" not in r)
    assert (rule["packets"], rule["bytes"]) == (relayed, relayed * (8 + len(ESP_BODY)))
    assert rule["outputs"] == [{"packets": relayed, "bytes": relayed * (8 + len(ESP_BODY)), "errors": 0}] * 3
    assert doc["counters"]["rules"]["0"]["packets"] == 0  # the UDP rule on the same group saw none of it


def test_esp_frames_not_relayed_pass_untouched_and_are_counted(netlab: NetLab) -> None:
    """ESP fragments and ESP shorter than its header are the drops UDP's would be; ESP to a group with no ESP
    rule and UDP to port 0 of the ESP rule's group are `no_rule` (port 0 never reaches the ESP rule)."""
    rules = [ESP_RULES[1], {"slot": 2, "group": "239.1.1.2", "port": 5001, "outputs": [out("ka", "239.2.2.9", 6009)]}]
    cases = {
        "fragment": esp_frame(more_fragments=True),
        "later_fragment": esp_frame(fragment_offset=3),
        "no_esp_header": esp_frame(payload=b"", total_length=27),
        "cut": esp_frame(total_length=2000),
        "esp_to_udp_group": esp_frame(dst="239.1.1.2"),
        "udp_port_0": frame(port=0),
        "other_group": esp_frame(dst="239.9.9.9"),  # not configured: not counted
    }
    doc = run_cases(netlab, rules, [{"frame": f} for f in cases.values()])
    for (name, f), res in zip(cases.items(), doc["results"], strict=True):
        assert res["retval"] == TC_ACT_UNSPEC, name
        assert bytes.fromhex(res["data"]) == f, name
        assert res["clones"] == [], name
    drops = doc["counters"]["drops"]
    assert (drops["fragment"], drops["truncated"], drops["no_rule"], drops["not_udp"]) == (2, 2, 2, 0)
    assert doc["counters"]["rules"]["1"]["packets"] == doc["counters"]["rules"]["2"]["packets"] == 0


def test_esp_source_filter_and_a_failing_output(netlab: NetLab) -> None:
    bad = {"ifindex": 9999, "group": "239.5.9.1", "port": 0, "source": SOURCE, "protocol": 50}
    rules = [{**ESP_RULES[1], "source": "10.200.1.0/24", "outputs": [bad, esp_out("ka", "239.5.9.2")]}]
    original = esp_frame()
    doc = run_cases(netlab, rules, [{"frame": original, "expect": 1}, {"frame": esp_frame(src_ip="10.7.7.7")}])
    ok, foreign = doc["results"]
    assert bytes.fromhex(ok["data"]) == original
    assert [esp_headers(bytes.fromhex(c))["dst"] for c in ok["clones"]] == ["239.5.9.2"]
    assert foreign["clones"] == []
    size = 8 + len(ESP_BODY)
    assert doc["counters"]["rules"]["1"]["outputs"] == [
        {"packets": 0, "bytes": 0, "errors": 1},
        {"packets": 1, "bytes": size, "errors": 0},
    ]
    assert doc["counters"]["drops"]["no_rule"] == 1


def test_esp_rate_limit_charges_the_ip_payload(netlab: NetLab) -> None:
    """The ESP copy of the rate limit: a bps limit takes the whole IP payload (SPI onwards) as the bytes."""
    rules = [{**ESP_RULES[1], "outputs": [], "rate_limit": {"bps": 8000, "burst_bytes": 4000}}]
    doc = run_cases(netlab, rules, [{"frame": esp_frame(), "repeat": 50}])  # 776 bytes each: 5 fit in 4000
    rule = doc["counters"]["rules"]["1"]
    assert (rule["packets"], rule["bytes"], rule["rate_limited"]) == (5, 5 * (8 + len(ESP_BODY)), 45)
    assert doc["counters"]["drops"]["rate_limited"] == 45


def test_64_outputs(netlab: NetLab) -> None:
    rules = [
        {
            "slot": 1,
            "group": "239.1.1.1",
            "port": 5002,
            "outputs": [out("ka", f"239.3.0.{i}", 7000 + i) for i in range(64)],
        }
    ]
    doc = run_cases(netlab, rules, [{"frame": frame(port=5002), "expect": 64}])
    (res,) = doc["results"]
    heads = [frame_headers(bytes.fromhex(c)) for c in res["clones"]]
    assert sorted((h["dst"], h["dport"]) for h in heads) == sorted((f"239.3.0.{i}", 7000 + i) for i in range(64))
    assert all(h["ip_ok"] and h["udp_ok"] for h in heads)
    assert [o["packets"] for o in doc["counters"]["rules"]["1"]["outputs"]] == [1] * 64


def test_a_failing_output_is_counted_and_does_not_stop_the_others(netlab: NetLab) -> None:
    bad = {"ifindex": 9999, "group": "239.2.9.1", "port": 6999, "source": SOURCE}
    rules = [{"slot": 2, "group": "239.1.1.1", "port": 5001, "outputs": [bad, out("ka", "239.2.9.2", 6999)]}]
    original = frame()
    doc = run_cases(netlab, rules, [{"frame": original, "expect": 1}])
    (res,) = doc["results"]
    assert bytes.fromhex(res["data"]) == original
    assert [frame_headers(bytes.fromhex(c))["dst"] for c in res["clones"]] == ["239.2.9.2"]
    assert doc["counters"]["rules"]["2"]["outputs"] == [
        {"packets": 0, "bytes": 0, "errors": 1},
        {"packets": 1, "bytes": 512, "errors": 0},
    ]


def test_rate_limits_are_shared_token_buckets(netlab: NetLab) -> None:
    """1000 back-to-back runs (a few milliseconds) against a 10 pps limit with a burst of 5: the burst
    passes and every other frame is counted as rate-limited; a bps limit charges payload bytes; an
    unlimited rule next to them relays everything."""
    rules = [
        {"slot": 0, "group": "239.1.1.1", "port": 5001, "outputs": [out("ka", "239.2.2.1", 6001)]},
        {**RULES_3[0], "slot": 1, "port": 5002, "rate_limit": {"pps": 10, "burst": 5}},
        {
            "slot": 2,
            "group": "239.1.1.1",
            "port": 5003,
            "outputs": [],
            "rate_limit": {"bps": 8000, "burst_bytes": 2048},
        },
    ]
    cases = [
        {"frame": frame(port=5001), "repeat": 300},
        {"frame": frame(port=5002), "repeat": 1000, "expect": 15},
        {"frame": frame(port=5003), "repeat": 50},  # 512 payload bytes: 4 fit in 2048
    ]
    result = run_cases(netlab, rules, cases)
    assert [r["retval"] for r in result["results"]] == [TC_ACT_UNSPEC] * 3  # the original always goes on
    counters = result["counters"]["rules"]
    assert (counters["0"]["packets"], counters["0"]["rate_limited"]) == (300, 0)
    limited = counters["1"]
    assert limited["packets"] + limited["rate_limited"] == 1000
    assert 5 <= limited["packets"] <= 6  # the burst, and one more only if the runs took over 100 ms
    assert [o["packets"] for o in limited["outputs"]] == [limited["packets"]] * 3
    assert limited["bytes"] == 512 * limited["packets"]
    assert (counters["2"]["packets"], counters["2"]["rate_limited"]) == (4, 46)
    assert result["counters"]["drops"]["rate_limited"] == limited["rate_limited"] + 46


# ------------------------------------------------------------------------------------------ IPv6

G6 = "ff3e::1:5"
SOURCE6 = "fd00:9::9"
SRC6 = "fd00:200:1::2"
HOP_BY_HOP = (0, ipv6_extension(60, b"\x01\x04" + bytes(4)))  # a PadN option, then destination options
DEST_OPTS = (60, ipv6_extension(17))


def frame6(port: int = 5001, src: str = SRC6, **kw: Any) -> bytes:
    kw.setdefault("payload", bytes(range(256)) * 2)
    return build_udp6_frame(src_ip=src, dst_ip=G6, dst_port=port, hop_limit=5, **kw)


def _udp6_offset(frame: bytes) -> int:
    """Where the UDP header of an IPv6 frame starts, after its extension headers."""
    nxt, pos = frame[20], 54
    while nxt != 17:
        nxt, pos = frame[pos], pos + (frame[pos + 1] + 1) * 8
    return pos


def frame6_headers(frame: bytes) -> dict[str, Any]:
    """The fields a relay rewrites (the extension headers walked), and whether the UDP checksum holds."""
    pos = _udp6_offset(frame)
    udp = frame[pos : 54 + struct.unpack_from("!H", frame, 18)[0]]
    src, dst = frame[22:38], frame[38:54]
    pseudo = src + dst + struct.pack("!I3xB", len(udp), 17)
    return {
        "dst_mac": frame[0:6],
        "hop": frame[21],
        "src": str(IPv6Address(src)),
        "dst": str(IPv6Address(dst)),
        "extensions": frame[54:pos],
        "dport": struct.unpack_from("!H", udp, 2)[0],
        "sport": struct.unpack_from("!H", udp, 0)[0],
        "udp_csum": struct.unpack_from("!H", udp, 6)[0],
        "udp_ok": ipv4_checksum(pseudo + udp) == 0,
        "payload": udp[8:],
    }


def zero_udp6_checksum(f: bytes) -> bytes:
    return f[:60] + b"\0\0" + f[62:]


RULES6_3 = [
    {
        "slot": 0,
        "group": G6,
        "port": 5001,
        "outputs": [out("ka", f"ff3e::2:{i}", 6000 + i, 6 + i, source=SOURCE6) for i in (1, 2, 3)],
    }
]


@pytest.mark.parametrize(
    "extensions", [(), (HOP_BY_HOP, DEST_OPTS), ((60, ipv6_extension(60)),) * 7 + (DEST_OPTS,)], ids=["none", "2", "8"]
)
def test_ipv6_rewrite_fan_out_and_restore(netlab: NetLab, extensions: tuple[tuple[int, bytes], ...]) -> None:
    original = frame6(extensions=extensions)
    complete = 1 << 2
    cases = [{"frame": original, "expect": 3}, {"frame": original, "flags": complete, "expect": 3}]
    doc = run_cases(netlab, RULES6_3, cases)
    plain, checked = doc["results"]
    assert plain["retval"] == TC_ACT_UNSPEC
    assert bytes.fromhex(plain["data"]) == original  # the original goes on to the stack unchanged
    assert len(plain["clones"]) == 3
    for i, clone in zip((1, 2, 3), sorted(plain["clones"]), strict=True):
        h = frame6_headers(bytes.fromhex(clone))
        assert (h["dst"], h["dport"], h["hop"], h["src"]) == (f"ff3e::2:{i}", 6000 + i, 6 + i, SOURCE6)
        assert h["dst_mac"] == multicast_mac6(IPv6Address(h["dst"]))
        assert h["udp_ok"] and h["udp_csum"] != 0, h  # computed in software over the output frame
        assert h["extensions"] == b"".join(body for _t, body in extensions) and h["sport"] == 40000
        assert h["payload"] == bytes(range(256)) * 2
    if checked.get("errno") != 22:  # BPF_F_TEST_SKB_CHECKSUM_COMPLETE (6.11): skb->csum still right afterwards
        assert "error" not in checked, checked
        assert checked["retval"] == TC_ACT_UNSPEC and len(checked["clones"]) == 3
        assert all(frame6_headers(bytes.fromhex(c))["udp_ok"] for c in checked["clones"])
    rule = doc["counters"]["rules"]["0"]
    runs = 2 if checked.get("errno") != 22 else 1
    assert (rule["packets"], rule["bytes"]) == (runs, runs * 512)
    assert rule["outputs"] == [{"packets": runs, "bytes": runs * 512, "errors": 0}] * 3


def test_ipv6_rewrite_checksums_hold_for_any_header(netlab: NetLab) -> None:
    """Random sources, hop limits, ports, payloads and extension headers (up to eight, the UDP header up to
    566 bytes in), checksums 0xffff and any other, with and without CHECKSUM_COMPLETE: every clone carries a
    valid UDP checksum and its output's fields, and the original comes back byte for byte (with
    CHECKSUM_COMPLETE the kernel also fails the run unless skb->csum is right for it, and a probe on `kb`
    checks each clone's skb->csum against its bytes). The outputs cover the shortcuts: one keeps the input
    port, one the whole address pair (its source and group are the fixed-source frames'), one the hop limit
    of some frames."""
    rng = random.Random(20261128)
    outputs = [
        out("ka", "ff3e::2:1", 5001, 9, source=SOURCE6),  # same port
        out("ka", G6, 6002, 1, source=SRC6),  # same addresses as the fixed-source frames
        out("ka", "ff3e:ffff:ffff::fffe", 65535, 255, source="fdff:ffff:ffff::fffe"),
        out("ka", "ff05::1:3", 1, 64, source="fd00:9::1"),  # a hop limit some frames already have
    ]
    rules = [{"slot": 0, "group": G6, "port": 5001, "outputs": outputs}]
    far = ((0, ipv6_extension(60, bytes(500))), DEST_OPTS)  # the UDP header 566 bytes into the frame
    headers = [(), (HOP_BY_HOP, DEST_OPTS), ((60, ipv6_extension(60)),) * 7 + (DEST_OPTS,), far]
    cases: list[dict[str, Any]] = []
    for n in range(120):  # (the cases travel on a command line)
        src = SRC6 if n % 4 == 0 else str(IPv6Address(0xFD << 120 | rng.getrandbits(120)))
        f = build_udp6_frame(
            src_ip=src,
            dst_ip=G6,
            dst_port=5001,
            src_port=rng.randrange(1, 65536),
            hop_limit=rng.choice([64, rng.randrange(1, 256)]),
            extensions=rng.choice(headers),
            payload=rng.randbytes(rng.randrange(2, 200)),
        )
        f = _udp_checksum_ffff(f) if n % 3 == 0 else f
        cases.append({"frame": f, "flags": (1 << 2) if n % 2 else 0, "expect": len(outputs)})
    originals = [c["frame"] for c in cases]
    doc = run_cases(netlab, rules, cases, csum_probe=True)
    canonical = [(str(IPv6Address(o["group"])), str(IPv6Address(o["source"]))) for o in outputs]
    expected = sorted((g, o["port"], o["ttl"], src) for (g, src), o in zip(canonical, outputs, strict=True))
    for n, (original, res) in enumerate(zip(originals, doc["results"], strict=True)):
        if res.get("errno") == 22:
            pytest.skip("this kernel has no BPF_F_TEST_SKB_CHECKSUM_COMPLETE (Linux 6.11+)")
        assert "error" not in res, (n, res, original.hex())
        assert (res["retval"], bytes.fromhex(res["data"])) == (TC_ACT_UNSPEC, original), n
        sent = frame6_headers(original)
        clones = [frame6_headers(bytes.fromhex(c)) for c in res["clones"]]
        assert sorted((h["dst"], h["dport"], h["hop"], h["src"]) for h in clones) == expected, n
        for clone, skb_csum in zip(res["clones"], res["skb_csums"], strict=True):
            assert (skb_csum is not None) == bool(n % 2), (n, skb_csum)  # CHECKSUM_COMPLETE stays so
            if skb_csum is not None:  # right for the clone's bytes (see `_skb_csum_ok`)
                assert _skb_csum_ok(bytes.fromhex(clone), skb_csum), (n, clone, skb_csum)
        for h in clones:
            assert h["udp_ok"] and h["udp_csum"] != 0, (n, h, original.hex())
            assert h["dst_mac"] == multicast_mac6(IPv6Address(h["dst"]))
            assert (h["sport"], h["payload"], h["extensions"]) == (sent["sport"], sent["payload"], sent["extensions"])
    rule = doc["counters"]["rules"]["0"]
    assert rule["packets"] == len(cases)
    assert rule["outputs"] == [{"packets": len(cases), "bytes": rule["bytes"], "errors": 0}] * len(outputs)


def _ones_sum(data: bytes) -> int:
    """The 16-bit one's complement sum of `data` (network-order words), 0..0xfffe (0xffff taken as 0)."""
    return (~ipv4_checksum(data) & 0xFFFF) % 0xFFFF


def _skb_csum_ok(frame: bytes, skb_csum: int) -> bool:
    """Whether skb->csum (as the probe on `kb` read it) is the sum of the frame from its network header on.

    The probe's value is a memory image like the checksum words themselves, so its bytes in host order sum
    as network-order words. A test run's skb is not at tc ingress: `bpf_clone_redirect` adds no MAC header
    to skb->csum, and `kb`'s veth takes the Ethernet header's sum off as it receives the clone."""
    expected = (_ones_sum(frame[14:]) - _ones_sum(frame[:14])) % 0xFFFF
    return _ones_sum(skb_csum.to_bytes(4, sys.byteorder)) == expected


def test_ipv6_frames_not_relayed_pass_untouched_and_are_counted(netlab: NetLab) -> None:
    cases = {
        "other_group": build_udp6_frame(src_ip=SRC6, dst_ip="ff3e::9:9", dst_port=5001, payload=b"x" * 64),
        "no_rule": frame6(port=5999),
        "fragment": frame6(extensions=((44, ipv6_extension(17)),)),
        "fragment_after_hop_by_hop": frame6(extensions=((0, ipv6_extension(44)), (44, ipv6_extension(17)))),
        "auth_header": frame6(extensions=((51, ipv6_extension(17)),)),
        "esp": frame6(next_header=50),
        "nine_headers": frame6(extensions=((60, ipv6_extension(60)),) * 8 + (DEST_OPTS,)),
        "not_udp": frame6(next_header=6),
        "bad_version": frame6(version=4),
        "truncated": frame6(payload_length=4000),
        "extension_cut": frame6(extensions=((0, ipv6_extension(17)),), payload_length=6),
        "bad_udp_length": frame6(udp_length=7),
        "udp_length_too_long": frame6(udp_length=4000),
        "zero_checksum": zero_udp6_checksum(frame6()),
    }  # (a frame too short for an IPv6 header cannot be test-run: the kernel refuses it with EINVAL)
    doc = run_cases(netlab, RULES6_3, [{"frame": f} for f in cases.values()])
    for (name, f), res in zip(cases.items(), doc["results"], strict=True):
        assert res.get("retval") == TC_ACT_UNSPEC, (name, res)
        assert bytes.fromhex(res["data"]) == f, name
        assert res["clones"] == [], name
    assert doc["counters"]["drops"] == {
        "truncated": 2,
        "bad_ip_header": 1,
        "fragment": 2,
        "not_udp": 1,
        "bad_udp_length": 2,
        "no_rule": 1,
        "rate_limited": 0,
        "ext_header": 3,
        "zero_udp_checksum": 1,
    }
    assert doc["counters"]["rules"]["0"]["packets"] == 0


def test_ipv6_source_prefix_and_rate_limit(netlab: NetLab) -> None:
    """A rule with a source prefix relays its sources only (others count as no_rule); a pps limit holds."""
    rules = [
        {**RULES6_3[0], "source": "fd00:200:1::/64"},
        {**RULES6_3[0], "slot": 1, "port": 5002, "rate_limit": {"pps": 10, "burst": 5}},
    ]
    cases = [
        {"frame": frame6(), "expect": 3},
        {"frame": frame6(src="fd00:200:2::2")},  # outside the prefix
        {"frame": frame6(port=5002), "repeat": 100, "expect": 15},
    ]
    doc = run_cases(netlab, rules, cases)
    inside, outside, limited = doc["results"]
    assert len(inside["clones"]) == 3 and outside["clones"] == []
    assert [r["retval"] for r in (inside, outside, limited)] == [TC_ACT_UNSPEC] * 3
    counters = doc["counters"]
    assert counters["rules"]["0"]["packets"] == 1
    assert counters["drops"]["no_rule"] == 1
    r = counters["rules"]["1"]
    assert r["packets"] + r["rate_limited"] == 100 and 5 <= r["packets"] <= 6
    assert counters["drops"]["rate_limited"] == r["rate_limited"]


def test_ipv6_a_failing_output_is_counted_and_restored(netlab: NetLab) -> None:
    bad = {"ifindex": 9999, "group": "ff3e::2:9", "port": 6999, "source": SOURCE6}
    rules = [{"slot": 2, "group": G6, "port": 5001, "outputs": [bad, out("ka", "ff3e::2:8", 6998, source=SOURCE6)]}]
    original = frame6(extensions=(HOP_BY_HOP, DEST_OPTS))
    doc = run_cases(netlab, rules, [{"frame": original, "expect": 1}])
    (res,) = doc["results"]
    assert bytes.fromhex(res["data"]) == original
    (clone,) = res["clones"]
    h = frame6_headers(bytes.fromhex(clone))
    assert (h["dst"], h["dport"], h["udp_ok"]) == ("ff3e::2:8", 6998, True)
    assert doc["counters"]["rules"]["2"]["outputs"] == [
        {"packets": 0, "bytes": 0, "errors": 1},
        {"packets": 1, "bytes": 512, "errors": 0},
    ]


# ------------------------------------------------------------------------ the engine's bookkeeping


@pytest.fixture
def engine() -> Iterator[Any]:
    """A KernelRelay in this process: maps and a program, nothing attached, no network touched."""
    if os.geteuid() != 0:
        pytest.skip("bpf(2) maps and programs need root")
    from mcr.kernel.engine import KernelRelay

    with KernelRelay(max_rules=4, max_outputs=4) as relay:
        yield relay


def _outs(n: int) -> list[Any]:
    from mcr.kernel.engine import OutputEntry

    src = IPv4Address("10.0.0.1")
    return [OutputEntry(1, IPv4Address(f"239.5.5.{i}"), 6000 + i, src, b"\x02" * 6) for i in range(n)]


def _fake_traffic(engine: Any, slot: int, outputs: int) -> None:
    """Per-CPU counter values as the program would leave them: CPU k counted k + 1 packets of 100 bytes."""
    from mcr.kernel import bpf
    from mcr.kernel.program import OUTPUT_STATS, RULE_STATS, MapName

    n = bpf.possible_cpus()
    key = slot.to_bytes(4, sys.byteorder)
    values = [RULE_STATS.pack(k + 1, 100 * (k + 1), 2 * (k + 1)) for k in range(n)]
    bpf.update_percpu(engine.map_fd(MapName.RULE_STATS), key, values)
    for i in range(outputs):
        key = (slot * engine.max_outputs + i).to_bytes(4, sys.byteorder)
        values = [OUTPUT_STATS.pack(k + 1, 100 * (k + 1), i) for k in range(n)]
        bpf.update_percpu(engine.map_fd(MapName.OUTPUT_STATS), key, values)


def test_engine_rules_and_counters(engine: Any) -> None:
    from mcr.kernel import bpf
    from mcr.kernel.program import RULE_VALUE, MapName, pack_group_key, pack_rule_key

    g = IPv4Address("239.1.1.1")
    with pytest.raises(ValueError, match="slot 4"):
        engine.set_rule(4, 7, g, 5001, _outs(1))
    with pytest.raises(ValueError, match="at most 4"):
        engine.set_rule(0, 7, g, 5001, _outs(5))
    engine.set_rule(0, 7, g, 5001, _outs(3))
    engine.set_rule(1, 7, g, 5002, _outs(1))
    with pytest.raises(ValueError, match="slot 0 already relays"):
        engine.set_rule(2, 7, g, 5001, _outs(1))
    rules, groups = engine.map_fd(MapName.RULES), engine.map_fd(MapName.GROUPS)
    value = bpf.lookup_elem(rules, pack_rule_key(7, g, 5001), RULE_VALUE.size) or b""
    assert RULE_VALUE.unpack(value) == (0, 3, bytes(4), bytes(4))
    assert bpf.lookup_elem(groups, pack_group_key(7, g), 4) == (2).to_bytes(4, sys.byteorder)  # two rules

    n = bpf.possible_cpus()
    per_cpu_sum = n * (n + 1) // 2
    _fake_traffic(engine, 0, 3)
    c = engine.counters()
    assert (c.rules[0].packets, c.rules[0].bytes) == (per_cpu_sum, 100 * per_cpu_sum)
    assert c.rules[0].rate_limited == 2 * per_cpu_sum
    assert [(o.packets, o.errors) for o in c.rules[0].outputs] == [(per_cpu_sum, i * n) for i in range(3)]
    assert c.rules[1].packets == 0 and set(c.drops) >= {"fragment", "no_rule"}

    engine.set_rule(0, 7, g, 5001, _outs(1))  # replaced in place: counters kept, dropped outputs zeroed
    assert engine.counters().rules[0].packets == per_cpu_sum
    engine.set_rule(0, 7, g, 5001, _outs(3))
    assert [o.packets for o in engine.counters().rules[0].outputs] == [per_cpu_sum, 0, 0]

    engine.remove_rule(0)
    assert bpf.lookup_elem(rules, pack_rule_key(7, g, 5001), 8) is None
    assert bpf.lookup_elem(groups, pack_group_key(7, g), 4) == (1).to_bytes(4, sys.byteorder)
    engine.set_rule(0, 8, g, 5001, _outs(2))  # a new rule in the slot starts from zero
    assert engine.counters().rules[0].packets == 0
    engine.remove_rule(1)
    assert bpf.lookup_elem(groups, pack_group_key(7, g), 4) is None


def test_an_output_position_sending_elsewhere_starts_the_slot_from_zero(engine: Any) -> None:
    """Output counters are kept by position: when a position that stays sends to another output (one before it
    was removed or skipped), the whole slot restarts from zero instead of booking one output's counts to another."""
    from mcr.kernel import bpf

    g, outs = IPv4Address("239.1.1.1"), _outs(3)
    n = bpf.possible_cpus()
    per_cpu_sum = n * (n + 1) // 2

    def counted() -> tuple[int, list[int]]:
        c = engine.counters().rules[0]
        return c.packets, [o.packets for o in c.outputs]

    engine.set_rule(0, 7, g, 5001, outs)
    _fake_traffic(engine, 0, 3)
    engine.set_rule(0, 7, g, 5001, [outs[0], outs[2]])  # the middle output goes: position 1 now sends to outs[2]
    assert counted() == (0, [0, 0])
    _fake_traffic(engine, 0, 2)
    engine.set_rule(0, 7, g, 5001, [outs[0], outs[2], outs[1]])  # one more at the end: the others keep theirs
    assert counted() == (per_cpu_sum, [per_cpu_sum, per_cpu_sum, 0])
    engine.set_rule(0, 7, g, 5001, [outs[0], outs[2]])  # the last one goes: nothing moves
    assert counted() == (per_cpu_sum, [per_cpu_sum, per_cpu_sum])
    engine.set_rule(0, 7, g, 5001, [outs[0], replace(outs[2], ttl=9)])  # a position rewritten in place
    assert counted() == (0, [0, 0])


def test_a_reused_slot_shows_none_of_its_earlier_rules_counts(engine: Any) -> None:
    """A rule put in a freed slot zeroes only the output counters the slot's earlier rules used: none of their
    counts shows, not even on outputs the new rule gains later."""
    from mcr.kernel import bpf

    g, n = IPv4Address("239.1.1.1"), bpf.possible_cpus()
    per_cpu_sum = n * (n + 1) // 2
    engine.set_rule(0, 7, g, 5001, _outs(3))
    _fake_traffic(engine, 0, 3)
    engine.remove_rule(0)
    engine.set_rule(0, 8, g, 5002, _outs(1))
    assert [o.packets for o in engine.counters().rules[0].outputs] == [0]
    engine.set_rule(0, 8, g, 5002, _outs(3))  # grown in place: the new positions were zeroed when reused
    c = engine.counters().rules[0]
    assert (c.packets, [o.packets for o in c.outputs]) == (0, [0, 0, 0])
    _fake_traffic(engine, 0, 3)
    assert [o.packets for o in engine.counters().rules[0].outputs] == [per_cpu_sum] * 3


def test_a_slot_unused_since_its_maps_were_made_is_not_zeroed_again(
    engine: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """New maps are zeroed by the kernel: the first rule of a slot above every slot used so far writes no
    counters (a start loading 10,000 rules makes 10,000 system calls fewer); a slot used before is zeroed."""
    from mcr.kernel import bpf

    g = IPv4Address("239.1.1.1")
    real, writes = bpf.update_percpu, []
    monkeypatch.setattr(bpf, "update_percpu", lambda fd, key, values: writes.append(key) or real(fd, key, values))
    engine.set_rule(2, 7, g, 5001, _outs(3))
    assert writes == []
    c = engine.counters().rules[2]
    assert (c.packets, [o.packets for o in c.outputs]) == (0, [0, 0, 0])
    _fake_traffic(engine, 2, 3)
    engine.remove_rule(2)
    writes.clear()
    engine.set_rule(2, 7, g, 5002, _outs(2))  # used before: its rule and output counters zeroed
    assert len(writes) == 1 + 3
    c = engine.counters().rules[2]
    assert (c.packets, [o.packets for o in c.outputs]) == (0, [0, 0])
    engine.set_rule(1, 7, g, 5003, _outs(1))  # below the highest slot used: zeroed, to be sure
    assert len(writes) == 1 + 3 + 1


def test_engine_ipv6_rules_use_their_own_maps(engine: Any) -> None:
    from mcr.kernel import bpf
    from mcr.kernel.engine import OutputEntry
    from mcr.kernel.program import RULE6_VALUE, MapName, pack_group_key, pack_rule_key

    g6, g4 = IPv6Address(G6), IPv4Address("239.1.1.1")
    out6 = OutputEntry(1, IPv6Address("ff3e::2:1"), 6001, IPv6Address(SOURCE6), b"\x02" * 6)
    with pytest.raises(ValueError, match="not of the family"):
        engine.set_rule(0, 7, g4, 5001, [out6])
    with pytest.raises(ValueError, match="not of the family"):
        engine.set_rule(0, 7, g6, 5001, _outs(1))
    engine.set_rule(0, 7, g6, 5001, [out6, out6], source=ip_network("fd00:200:1::/64"))
    engine.set_rule(1, 7, g4, 5001, _outs(1))  # the same port and ifindex in the other family: its own rule
    rules6, groups6 = engine.map_fd(MapName.RULES6), engine.map_fd(MapName.GROUPS6)
    value = bpf.lookup_elem(rules6, pack_rule_key(7, g6, 5001), RULE6_VALUE.size) or b""
    slot, count, network, mask = RULE6_VALUE.unpack(value)
    assert (slot, count, network, mask) == (0, 2, IPv6Address("fd00:200:1::").packed, b"\xff" * 8 + bytes(8))
    assert bpf.lookup_elem(groups6, pack_group_key(7, g6), 4) == (1).to_bytes(4, sys.byteorder)
    assert bpf.lookup_elem(engine.map_fd(MapName.RULES), pack_rule_key(7, g4, 5001), 16) is not None
    assert set(engine.counters().rules) == {0, 1}
    engine.remove_rule(0)
    assert bpf.lookup_elem(rules6, pack_rule_key(7, g6, 5001), RULE6_VALUE.size) is None
    assert bpf.lookup_elem(groups6, pack_group_key(7, g6), 4) is None


def test_a_rejected_program_raises_with_the_verifier_log() -> None:
    if os.geteuid() != 0:
        pytest.skip("bpf(2) needs root")
    from mcr.kernel import bpf
    from mcr.kernel.asm import Reg, Size, exit_insn, ldx, mov64_imm

    bad = [ldx(Size.W, Reg.R0, Reg.R2, 0), mov64_imm(Reg.R0, 0), exit_insn()]  # r2 was never set
    with pytest.raises(bpf.BpfError) as info:
        bpf.load_program(bad, name="mcr_bad")
    assert info.value.errno == 13  # EACCES: the verifier said no
    assert "R2 !read_ok" in info.value.log and "verifier log" in str(info.value)


# ----------------------------------------------------------------------------------- real traffic


class RelayProc:
    """The engine running in the relay namespace (see `_run_relay`)."""

    def __init__(self, chain: Chain, rules: list[dict[str, Any]], name: str = "kernel_relay") -> None:
        self.chain = chain
        self.ready_path = chain.lab.workdir / f"{name}.ready"
        self.counters_path = chain.lab.workdir / f"{name}.counters"
        self.ops_path = chain.lab.workdir / f"{name}.ops"
        spec = {"input": "rin", "rules": rules, "ready": str(self.ready_path), "counters": str(self.counters_path)}
        spec["ops"] = str(self.ops_path)
        self.proc: Proc = chain.lab.popen(chain.relay, *_runner_argv("relay", json.dumps(spec)), name=name)

        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"the kernel relay exited ({self.proc.poll()}): {self.proc.err()[-4000:]}")
            return self.ready_path.exists()

        wait_for(ready, 20.0, "the kernel relay to load and attach")
        self.info: dict[str, Any] = json.loads(self.ready_path.read_text())

    def counters(self) -> dict[str, Any]:
        self.counters_path.unlink(missing_ok=True)
        self.proc.signal(signal.SIGUSR1)
        wait_for(self.counters_path.exists, 10.0, "the counters")
        return dict(json.loads(self.counters_path.read_text()))

    def apply(self, ops: list[dict[str, Any]]) -> None:
        done = Path(str(self.ops_path) + ".done")
        done.unlink(missing_ok=True)
        self.ops_path.write_text(json.dumps(ops))
        self.proc.signal(signal.SIGUSR2)
        wait_for(done.exists, 10.0, "the rule changes")

    def stop(self) -> dict[str, Any]:
        self.proc.signal(signal.SIGTERM)
        assert self.proc.wait(10) == 0, self.proc.err()[-3000:]
        return dict(json.loads(self.proc.out()))


def attached(chain: Chain, ifname: str = "rin") -> list[int]:
    return list(json.loads(chain.lab.run(chain.relay, *_runner_argv("query", ifname)).stdout))


def rule(slot: int, outputs: list[tuple[str, int]], ttl: int = 1, port: int = 5001) -> dict[str, Any]:
    return {
        "slot": slot,
        "group": "239.1.1.1",
        "port": port,
        "outputs": [out("rout", g, p, ttl, source="10.200.3.1") for g, p in outputs],
    }


@pytest.fixture(params=[False, True], ids=["src-csum-sw", "src-csum-offload"])
def chain_csum(chain: Chain, request: pytest.FixtureRequest) -> Chain:
    """The chain, with the source's transmit checksum offload off (full checksums on the wire, checked by the
    sink's kernel) or on (CHECKSUM_PARTIAL skbs: the program must update the pseudo-header sum only)."""
    if not request.param:
        chain.lab.run(chain.src, "ethtool", "-K", chain.src_if, "tx", "off")
    return chain


def test_relays_1000_packets_intact_with_matching_counters(chain_csum: Chain) -> None:
    chain = chain_csum
    relay = RelayProc(chain, [rule(0, [("239.2.2.2", 6001)])])
    assert attached(chain) == [relay.info["prog_id"]]
    sink = start_sink(chain.lab, chain.sink, [("239.2.2.2", 6001)], expect=1000, idle_timeout=2)
    generate(chain, "239.1.1.1", 5001, rate=2000, size=1400, count=1000)
    report = sink.report()
    assert (report["received"], report["lost"], report["corrupted"], report["duplicated"]) == (1000, 0, 0, 0)
    counters = relay.stop()
    r = counters["rules"]["0"]
    assert (r["packets"], r["bytes"]) == (1000, 1000 * 1400)
    assert r["outputs"] == [{"packets": 1000, "bytes": 1000 * 1400, "errors": 0}]
    snmp = chain.lab.run(chain.sink, "cat", "/proc/net/snmp").stdout
    udp = [line.split() for line in snmp.splitlines() if line.startswith("Udp:")]
    assert dict(zip(udp[0], udp[1], strict=True))["InCsumErrors"] == "0"
    assert attached(chain) == []  # the link went with the process


def test_fan_out_1_to_3(chain: Chain) -> None:
    streams = [("239.2.2.2", 6001), ("239.2.2.3", 6001), ("239.2.2.4", 6001)]
    relay = RelayProc(chain, [rule(0, streams)])
    sink = start_sink(chain.lab, chain.sink, streams, expect=3000, idle_timeout=2)
    generate(chain, "239.1.1.1", 5001, rate=2000, size=1000, count=1000)
    report = sink.report()
    for g, p in streams:
        s = report.stream(g, p)
        assert (s["received"], s["lost"], s["corrupted"]) == (1000, 0, 0), s
    r = relay.stop()["rules"]["0"]
    assert r["packets"] == 1000
    assert [o["packets"] for o in r["outputs"]] == [1000, 1000, 1000]


@pytest.mark.parametrize("size", [1, 64, 1472])
def test_payload_sizes(chain: Chain, size: int) -> None:
    chain.lab.run(chain.src, "ethtool", "-K", chain.src_if, "tx", "off")
    relay = RelayProc(chain, [rule(0, [("239.2.2.2", 6001)])])
    sink = start_sink(chain.lab, chain.sink, [("239.2.2.2", 6001)], expect=500, idle_timeout=2)
    generate(chain, "239.1.1.1", 5001, rate=5000, size=size, count=500)
    report = sink.report()
    assert (report["received"], report["bytes"], report["corrupted"]) == (500, 500 * size, 0)
    r = relay.stop()["rules"]["0"]
    assert (r["packets"], r["bytes"], r["outputs"][0]["bytes"]) == (500, 500 * size, 500 * size)


def test_wire_format(chain: Chain) -> None:
    """On the sink's wire: the output group, port and MAC, the relay's source address and MAC, the rule's
    TTL, and checksums tcpdump verifies."""
    chain.lab.run(chain.src, "ethtool", "-K", chain.src_if, "tx", "off")
    RelayProc(chain, [rule(0, [("239.2.2.2", 6001)], ttl=4)])
    argv = ["tcpdump", "-l", "-t", "-nn", "-vv", "-e", "-c", "5", "-i", "snk0", "udp", "and", "dst", "239.2.2.2"]
    dump = chain.lab.popen(chain.sink, *argv, name="tcpdump")
    wait_for(lambda: "listening on" in dump.err(), 10.0, "tcpdump to listen")
    generate(chain, "239.1.1.1", 5001, rate=100, size=200, count=5)
    assert dump.wait(10) == 0, dump.err()
    lines = dump.out().strip().splitlines()
    relay_mac = chain.mac(chain.relay, "rout").hex(":")
    headers = [line for line in lines if "ethertype IPv4" in line]
    assert len(headers) == 5, dump.out()
    for line in headers:
        assert line.startswith(f"{relay_mac} > 01:00:5e:02:02:02"), line
        assert "ttl 4," in line, line
    bodies = [line for line in lines if "> 239.2.2.2.6001" in line]
    assert len(bodies) == 5, dump.out()
    for line in bodies:
        assert re.search(r"10\.200\.3\.1\.\d+ > 239\.2\.2\.2\.6001: \[udp sum ok\] UDP, length 200", line), line


def test_sigkill_leaves_nothing_attached(chain: Chain) -> None:
    relay = RelayProc(chain, [rule(0, [("239.2.2.2", 6001)])])
    assert attached(chain) == [relay.info["prog_id"]]
    relay.proc.signal(signal.SIGKILL)
    relay.proc.wait(10)
    wait_for(lambda: attached(chain) == [], 5.0, "the tcx link to go away")
    sink = start_sink(chain.lab, chain.sink, [("239.2.2.2", 6001)], duration=3, idle_timeout=1)
    generate(chain, "239.1.1.1", 5001, rate=1000, size=100, count=200)
    assert sink.stop()["received"] == 0  # nothing relays any more


def test_rules_change_at_run_time_without_reloading(chain: Chain) -> None:
    """Two rules on two ports relay side by side with their own counters; then one is removed and another
    output takes its place, by map updates only: the attached program stays the same."""
    relay = RelayProc(chain, [rule(0, [("239.2.2.2", 6001)]), rule(1, [("239.2.2.5", 6005)], port=5002)])
    streams = [("239.2.2.2", 6001), ("239.2.2.5", 6005), ("239.2.2.6", 6006)]
    sink = start_sink(chain.lab, chain.sink, streams, expect=900, idle_timeout=3)
    gen = start_generator(chain, "239.1.1.2", 5001, rate=1000, size=100, count=100)  # no rule: ignored
    generate(chain, "239.1.1.1", 5001, rate=2000, size=100, count=300)
    generate(chain, "239.1.1.1", 5002, rate=2000, size=100, count=300)
    gen.wait(30)
    c = relay.counters()
    assert (c["rules"]["0"]["packets"], c["rules"]["1"]["packets"]) == (300, 300)
    relay.apply([{"op": "remove", "slot": 0}, rule(2, [("239.2.2.6", 6006)])])
    generate(chain, "239.1.1.1", 5001, rate=2000, size=100, count=300)
    report = sink.report()
    assert report.stream("239.2.2.2", 6001)["received"] == 300  # nothing more after the removal
    assert report.stream("239.2.2.5", 6005)["received"] == 300
    assert report.stream("239.2.2.6", 6006)["received"] == 300
    c = relay.counters()
    assert set(c["rules"]) == {"1", "2"} and c["rules"]["2"]["packets"] == 300
    assert attached(chain) == [relay.info["prog_id"]]
    relay.stop()


def test_vlan_tagged_frames_are_not_relayed(chain: Chain) -> None:
    """A tagged frame reaches the tc hook of the interface it came in on with its tag moved into the skb (the
    core does that, with or without 8021q): it belongs to a VLAN interface on top, so the rule on the parent
    must not relay it, nor carry the tag to the output."""
    relay = RelayProc(chain, [rule(0, [("239.2.2.2", 6001)])])
    src_mac = chain.mac(chain.src, chain.src_if)
    frames = chain.lab.workdir / "frames.hex"
    tagged, untagged = (
        build_udp_frame(
            src_mac=src_mac, src_ip=chain.src_ip, dst_ip="239.1.1.1", dst_port=5001, payload=b"v" * 64, vlan=vlan
        )
        for vlan in (100, None)
    )
    frames.write_text((tagged.hex() + "\n") * 20 + (untagged.hex() + "\n") * 20)  # one veth queue: in order
    probe(chain.lab, chain.src, "inject", "--ifname", chain.src_if, "--frames", str(frames))
    wait_for(lambda: relay.counters()["rules"]["0"]["packets"] >= 20, 5.0, "the untagged frames to be relayed")
    time.sleep(0.2)
    assert relay.counters()["rules"]["0"]["packets"] == 20
    relay.stop()


def test_verifier_accepts_and_reports(chain: Chain) -> None:
    relay = RelayProc(chain, [])
    info = relay.info
    print(f"program: {info['insns']} instructions, {info['xlated']} after the verifier, {info['jited']} bytes JITed")
    print(info["verifier"])
    m = re.search(r"processed (\d+) insns", info["verifier"])
    assert m and int(m.group(1)) < 1_000_000
    assert info["jited"] > 0  # CONFIG_BPF_JIT: the program runs as native code
    relay.stop()


def test_counters_of_a_large_table_take_a_few_system_calls(monkeypatch: pytest.MonkeyPatch) -> None:
    """The counters of 1,000 rules are read in batches: the rule and drop counters in one call each, and the
    outputs only of the rules whose counts moved (and once more after they went quiet, for the last frame's
    outputs). The totals are those of the per-CPU values, whatever was skipped."""
    if os.geteuid() != 0:
        pytest.skip("bpf(2) maps and programs need root")
    from mcr.kernel import bpf
    from mcr.kernel.engine import KernelRelay
    from mcr.kernel.program import OUTPUT_STATS, MapName

    calls: list[int] = []
    real = bpf.bpf

    def counting(cmd: Any, attr: Any, what: str) -> int:
        calls.append(int(cmd))
        return real(cmd, attr, what)

    n = bpf.possible_cpus()
    per_cpu_sum = n * (n + 1) // 2
    with KernelRelay(max_rules=1000, max_outputs=4) as relay:
        for slot in range(1000):
            relay.set_rule(slot, 7, IPv4Address(f"239.9.{slot // 250}.{slot % 250 + 1}"), 5001, _outs(slot % 4 + 1))
        first = relay.counters()
        assert len(first.rules) == 1000 and first.changed == frozenset(range(1000))
        assert all(c.packets == 0 and len(c.outputs) == slot % 4 + 1 for slot, c in first.rules.items())
        assert relay.counters().changed == frozenset()  # the outputs of every new slot once more
        monkeypatch.setattr(bpf, "bpf", counting)
        quiet = relay.counters()
        assert quiet.rules == first.rules and quiet.changed == frozenset()
        assert len(calls) == 2  # rule counters, drops

        _fake_traffic(relay, 500, 1)
        _fake_traffic(relay, 999, 4)
        calls.clear()
        moved = relay.counters()
        assert moved.changed == {500, 999} and len(calls) == 4
        assert moved.rules[999].packets == per_cpu_sum
        assert [o.packets for o in moved.rules[999].outputs] == [per_cpu_sum] * 4
        assert [o.packets for o in moved.rules[500].outputs] == [per_cpu_sum]
        assert moved.rules[499] is first.rules[499]  # untouched slots are not read again

        # an output counted after the rule's counters were read is caught by the read after
        key = (999 * relay.max_outputs + 3).to_bytes(4, sys.byteorder)
        bpf.update_percpu(relay.map_fd(MapName.OUTPUT_STATS), key, [OUTPUT_STATS.pack(100, 0, 0)] * n)
        after = relay.counters()
        assert after.rules[999].outputs[3].packets == 100 * n and after.changed == {999}
        calls.clear()
        assert relay.counters().changed == frozenset() and len(calls) == 2
