"""A fake supervisor for the control client's unit tests: a real Unix socket served by a thread, one request per
connection (read to EOF), recorded, and answered by a function of the request."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Mapping
from pathlib import Path

HOLD = object()  # an answer: keep the connection open and never reply

Answer = bytes | object | None  # bytes to send, None to close without answering, or HOLD
Respond = Callable[[bytes], Answer]


def by_command(answers: Mapping[str, object]) -> Respond:
    """Answer each request (a bare command such as "GetStats") as the real supervisor would: its JSON, one line;
    a command not in `answers` gets an Error, as from a supervisor that does not know it (the original)."""

    def respond(request: bytes) -> bytes:
        command = json.loads(request)
        answer = answers.get(command, {"Error": f"unknown command '{command}'"})
        return json.dumps(answer).encode() + b"\n"

    return respond


class FakeSupervisor:
    def __init__(self, path: Path, respond: Respond) -> None:
        self.path = path
        self.respond = respond
        self.requests: list[bytes] = []
        self.connections = 0
        self._stop = threading.Event()
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(str(path))
        self._listener.listen(8)
        self._listener.settimeout(0.05)
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            with conn:
                self.connections += 1
                conn.settimeout(5)
                data = bytearray()
                while chunk := conn.recv(65536):
                    data += chunk
                self.requests.append(bytes(data))
                answer = self.respond(bytes(data))
                if answer is HOLD:
                    self._stop.wait(10)
                elif isinstance(answer, bytes):
                    conn.sendall(answer)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._listener.close()
