"""Workers contained: empty read-only root, no privileges, the seccomp allow-list; and what that stops."""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from mcr.lab import SINK_IP, Lab
from tests.e2e.harness import Relay, proc_status, send, start_sink, wait_for

NOBODY = pwd.getpwnam("nobody")

# Runs the worker's own containment routine, then tries what a compromised worker would. Everything it
# uses is imported before `contain`, as in the worker: nothing is readable after it.
PROBE = r"""
import errno, json, mmap, os, signal, socket, sys
from mcr.linux.containment import contain
from mcr.linux.mmsg import SendBatch, buffer_address

seccomp, uid, gid = sys.argv[1] == "on", int(sys.argv[2]), int(sys.argv[3])
rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
rx.bind(("127.0.0.1", 0))
rx.settimeout(5)
payload = bytearray(b"sent by a contained process")
esp = socket.socket(socket.AF_INET, socket.SOCK_RAW, 50)  # as the supervisor hands one over for ESP outputs
esp.connect(("127.0.0.1", 0))
contained = contain(uid, gid, seccomp=seccomp, death_signal=signal.SIGKILL)
results = {}

def probe(name, action):
    try:
        action()
        results[name] = "ok"
    except OSError as e:
        results[name] = errno.errorcode.get(e.errno, str(e.errno))

def udp_sendmmsg():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK) as tx:
        tx.connect(rx.getsockname())
        batch = SendBatch(1)
        batch.set(0, buffer_address(payload), len(payload))
        sent = batch.send(tx.fileno(), 1)
        if sent != 1:
            raise OSError(-sent, "sendmmsg")
    if rx.recv(100) != payload:
        raise OSError(errno.EIO, "wrong payload")

def fork():
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)

probe("udp_sendmmsg", udp_sendmmsg)
probe("packet_socket", lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0x0300).close())
probe("raw_socket", lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_UDP).close())
probe("unix_socket", lambda: socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).close())
probe("esp_send", lambda: esp.send(bytes(16)))
probe("esp_hdrincl", lambda: esp.setsockopt(socket.IPPROTO_IP, socket.IP_HDRINCL, 1))
probe("read_shadow", lambda: open("/etc/shadow", "rb").close())
probe("write_file", lambda: open("/mcr-probe", "wb").close())
probe("execve", lambda: os.execv(sys.executable, [sys.executable, "-c", "pass"]))
probe("fork", fork)
probe("exec_memory", lambda: mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_EXEC).close())
probe("chroot", lambda: os.chroot("/"))
print(json.dumps({"results": results, "describe": contained.describe()}))
"""

EXPECTED = {
    "on": {
        "udp_sendmmsg": "ok",
        "packet_socket": "EPERM",
        "raw_socket": "EPERM",
        "unix_socket": "EPERM",
        "esp_send": "ok",  # what it is handed over for
        "esp_hdrincl": "EPERM",  # but it cannot make it write IP headers of its own
        "read_shadow": "EACCES",  # openat is allowed read-only, but there is nothing to read
        "write_file": "EPERM",
        "execve": "EPERM",
        "fork": "EPERM",
        "exec_memory": "EPERM",
        "chroot": "EPERM",
    },
    # Without the filter the credentials and the empty root still refuse what matters most.
    "off": {
        "udp_sendmmsg": "ok",
        "packet_socket": "EPERM",
        "raw_socket": "EPERM",
        "unix_socket": "ok",
        "esp_send": "ok",
        "esp_hdrincl": "ok",  # only the system call filter stops this
        "read_shadow": "EACCES",
        "write_file": "EACCES",
        "execve": "EACCES",
        "fork": "ok",
        "exec_memory": "ok",
        "chroot": "EACCES",  # "/" cannot even be searched
    },
}


@pytest.mark.parametrize("seccomp", ["on", "off"])
def test_the_worker_containment_refuses_raw_sockets_and_the_rest(lab: Lab, seccomp: str) -> None:
    argv = [sys.executable, "-c", PROBE, seccomp, str(NOBODY.pw_uid), str(NOBODY.pw_gid)]
    done = subprocess.run(lab.exec_argv(lab.relay, argv), capture_output=True, text=True, timeout=60, cwd="/")
    assert done.returncode == 0, done.stderr
    report: dict[str, Any] = json.loads(done.stdout)
    assert report["results"] == EXPECTED[seccomp]
    assert report["describe"].startswith(f"uid {NOBODY.pw_uid}, no capabilities, no_new_privs, empty read-only root")
    assert ("seccomp allow-list of" in report["describe"]) == (seccomp == "on")


def assert_contained(pid: int, seccomp: bool) -> None:
    status = proc_status(pid)
    assert status["Seccomp"] == ("2" if seccomp else "0")
    assert status["Seccomp_filters"] == ("1" if seccomp else "0")
    assert status["NoNewPrivs"] == "1"
    for caps in ("CapEff", "CapPrm", "CapInh", "CapAmb", "CapBnd"):
        assert int(status[caps], 16) == 0, caps
    root = f"/proc/{pid}/root"
    assert os.readlink(root).endswith("(deleted)")  # a removed directory: nothing can be created in it
    assert os.listdir(root) == []


@pytest.mark.workers(2)
def test_workers_run_contained(relay: Relay) -> None:
    workers = relay.workers()
    assert len(workers) == 2
    for worker in workers:
        assert_contained(worker["pid"], seccomp=True)
    assert "workers contained: empty read-only root, no privileges, seccomp system call allow-list" in relay.log()
    wait_for(lambda: relay.log().count("seccomp allow-list of") == 2, 5, what="both workers to log their mode")


def test_contained_worker_restarts_contained(lab: Lab, relay: Relay) -> None:
    (worker,) = relay.workers()
    os.kill(worker["pid"], 9)
    wait_for(lambda: relay.workers()[0]["pid"] != worker["pid"] and relay.workers()[0]["status"] == "Running", 10)
    assert_contained(relay.workers()[0]["pid"], seccomp=True)


def test_unicast_output_under_seccomp(lab: Lab, workdir: Path, relay: Relay) -> None:
    """A unicast output takes another path (SO_BINDTODEVICE by name): it needs nothing the filter refuses."""
    relay.add("u", f"{SINK_IP}:6002:rout")
    sink = start_sink(lab, workdir, SINK_IP, "6002", expect=2000)
    send(lab, count=2000, rate=5000, size=512)
    assert sink.result()["received"] == 2000
    (out,) = relay.wait_relayed("u", 2000)["outputs"]
    assert (out["packets_sent"], out["send_errors"]) == (2000, 0)
    assert "cannot open its socket" not in relay.log()


@pytest.mark.parametrize("engine", ["userspace", "kernel"])
def test_no_seccomp_is_logged_and_still_forwards(lab: Lab, workdir: Path, engine: str) -> None:
    relay = Relay(lab, workdir, extra=["--engine", engine, "--no-seccomp"]).start()
    try:
        (worker,) = relay.workers()
        assert_contained(worker["pid"], seccomp=False)
        assert "workers contained without their seccomp filter (--no-seccomp)" in relay.log()
        wait_for(lambda: "seccomp OFF" in relay.log(), 5, what="the worker to log its mode")
        relay.add("n", "239.2.2.9:6009:rout")
        sink = start_sink(lab, workdir, "239.2.2.9", "6009", expect=2000)
        send(lab, count=2000, rate=5000, size=1000)
        assert sink.result()["received"] == 2000
        assert relay.wait_relayed("n", 2000)["packets_relayed"] == 2000
    finally:
        relay.stop()
