import socket
from pathlib import Path

from mcr.supervisor.notify import Notifier


def receiver(tmp_path: Path) -> tuple[socket.socket, str]:
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(2)
    return sock, path


def test_messages(tmp_path: Path) -> None:
    sock, path = receiver(tmp_path)
    n = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "30000000"})
    assert n.watchdog_interval == 15.0
    n.ready("2 workers, 3 rules")
    assert sock.recv(1024) == b"READY=1\nSTATUS=2 workers, 3 rules"
    n.reloading()
    first, second = sock.recv(1024).decode().split("\n")
    assert first == "RELOADING=1" and second.startswith("MONOTONIC_USEC=") and int(second.split("=")[1]) > 0
    n.stopping()
    assert sock.recv(1024) == b"STOPPING=1"
    n.watchdog()
    assert sock.recv(1024) == b"WATCHDOG=1"
    sock.close()


def test_without_systemd_nothing_is_sent() -> None:
    n = Notifier({})
    assert n.send("READY=1") is False and n.watchdog_interval is None
    assert Notifier({"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "100", "WATCHDOG_PID": "1"}).watchdog_interval is None
