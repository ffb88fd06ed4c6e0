"""The client side of the control socket: one request out, one response back, bounded in time and size.

Framing (DESIGN §5): the client writes one JSON document (newline-terminated) and half-closes; the
supervisor answers one document and closes. Everything that keeps us from getting that answer is an
`UnreachableError`; an answer we cannot use is a `ProtocolError`.
"""

from __future__ import annotations

import errno
import socket
import time
from typing import TypeVar

from mcr.membership.querier import QuerierView
from mcr.model.errors import McrError, ProtocolError
from mcr.model.status import ConfigView, KernelStatus
from mcr.protocol.control import (
    ConfigResponse,
    Error,
    KernelStatusResponse,
    QuerierStates,
    Query,
    Request,
    decode_response,
    encode_request,
)

R = TypeVar("R")

MAX_RESPONSE_BYTES = 64 << 20
DEFAULT_TIMEOUT_S = 10.0
_RECV_CHUNK = 1 << 16
_KNOBS = "choose the socket with --socket-path or MCR_CONTROL_SOCKET"


class UnreachableError(McrError):
    """No answer from the supervisor: no socket, no permission, nobody listening, or no answer in time."""


class ErrorAnswer(McrError):
    """The supervisor answered `{"Error": text}`."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


def connect_error(path: str, err: OSError) -> UnreachableError:
    """Explain why connecting to `path` failed, naming the knobs that choose another socket."""
    code = err.errno
    if code in (errno.ENOENT, errno.ENOTDIR):
        return UnreachableError(
            f"cannot reach the supervisor: control socket {path} does not exist (is the supervisor running? {_KNOBS})"
        )
    if code in (errno.EACCES, errno.EPERM):
        return UnreachableError(
            f"cannot reach the supervisor: permission denied on {path} "
            "(run as root, as the supervisor's user, or as a member of its --control-group or --read-only-group)"
        )
    if code == errno.ECONNREFUSED:
        return UnreachableError(
            f"cannot reach the supervisor: nothing is listening on {path} "
            f"(stale socket or not a socket; is the supervisor running? {_KNOBS})"
        )
    reason = err.strerror or str(err)
    return UnreachableError(f"cannot reach the supervisor at {path}: {reason}")


def _timed_out(path: str, timeout_s: float, doing: str) -> UnreachableError:
    return UnreachableError(f"timed out after {timeout_s:g} s {doing} the supervisor at {path}")


def _lost(path: str, err: OSError) -> UnreachableError:
    return UnreachableError(f"lost the connection to the supervisor at {path}: {err.strerror or err}")


def exchange(
    path: str,
    request: bytes,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    limit: int = MAX_RESPONSE_BYTES,
) -> bytes:
    """Send `request` to the Unix stream socket at `path` and return the whole response.

    `timeout_s` bounds the whole exchange, not each system call. Raises `UnreachableError` or
    `ProtocolError` (empty or oversized response).
    """
    deadline = time.monotonic() + timeout_s

    def remaining() -> float:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        return left

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            sock.settimeout(remaining())
            sock.connect(path)
        except TimeoutError:
            raise _timed_out(path, timeout_s, "connecting to") from None
        except OSError as e:
            raise connect_error(path, e) from None
        try:
            sock.settimeout(remaining())
            sock.sendall(request)
            sock.shutdown(socket.SHUT_WR)
        except TimeoutError:
            raise _timed_out(path, timeout_s, "sending to") from None
        except (BrokenPipeError, ConnectionResetError):
            pass  # the supervisor stopped reading early (e.g. it refused us); its answer may still be there
        except OSError as e:
            raise _lost(path, e) from None
        response = bytearray()
        while True:
            try:
                sock.settimeout(remaining())
                chunk = sock.recv(_RECV_CHUNK)
            except TimeoutError:
                raise _timed_out(path, timeout_s, "waiting for an answer from") from None
            except ConnectionResetError:
                break  # what arrived before the reset is judged by the decoder
            except OSError as e:
                raise _lost(path, e) from None
            if not chunk:
                break
            response += chunk
            if len(response) > limit:
                raise ProtocolError(f"the supervisor's response exceeds the limit of {limit} bytes")
    if not response.strip():
        raise ProtocolError("the supervisor closed the connection without answering")
    return bytes(response)


def ask_kernel_status(path: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> KernelStatus | None:
    """The kernel engine's status, or None from a supervisor that does not have the request (the original
    answers an Error); unreachable and malformed answers raise as `ask` does."""
    try:
        return ask(path, Query.GET_KERNEL_STATUS, KernelStatusResponse, timeout_s).status
    except ErrorAnswer:
        return None


def ask_queriers(path: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> tuple[QuerierView, ...]:
    """The queriers and membership trackers, or none from a supervisor that does not have the request (the
    originals answer an Error); unreachable and malformed answers raise as `ask` does."""
    try:
        return ask(path, Query.GET_QUERIERS, QuerierStates, timeout_s).queriers
    except ErrorAnswer:
        return ()


def ask_config(path: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> ConfigView | None:
    """The supervisor's configuration, or None from one that does not have the request (the December
    original answers an Error); unreachable and malformed answers raise as `ask` does."""
    try:
        return ask(path, Query.GET_CONFIG, ConfigResponse, timeout_s).view
    except ErrorAnswer:
        return None


def ask(path: str, request: Request, expected: type[R], timeout_s: float = DEFAULT_TIMEOUT_S) -> R:
    """One request, its answer decoded and of the `expected` response type.

    Raises `UnreachableError`, `ProtocolError` (including an answer of another type) or `ErrorAnswer`.
    """
    response = decode_response(exchange(path, encode_request(request), timeout_s))
    if isinstance(response, Error):
        raise ErrorAnswer(response.text)
    if not isinstance(response, expected):
        raise ProtocolError(f"unexpected {type(response).__name__} answer from the supervisor at {path}")
    return response
