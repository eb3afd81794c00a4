"""A small ClamAV clamd client: INSTREAM over a unix or TCP socket, failing over in order.

The protocol is four commands long; the PyPI `clamd` package is unmaintained since 2015 and
reads the whole message into memory, so the message is streamed here from the spool instead.
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TypeVar

CHUNK = 64 * 1024
T = TypeVar("T")


class ScannerError(Exception):
    """clamd could not give an answer (unreachable, timed out, protocol or size error)."""


@dataclass(frozen=True)
class ScanResult:
    infected: bool
    signature: str = ""
    server: str = ""


class Deadline:
    """One time limit for a whole scan: a server that trickles bytes cannot stretch it."""

    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def arm(self, sock: socket.socket) -> None:
        """Give the next socket call only the time that is left."""
        left = self.end - time.monotonic()
        if left <= 0:
            raise ScannerError("scan time limit reached")
        sock.settimeout(left)


def connect(endpoint: str, timeout: float) -> socket.socket:
    """`unix:/path` or `HOST:PORT` (IPv6 as `[::1]:PORT`)."""
    if endpoint.startswith("unix:"):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        address: str | tuple[str, int] = endpoint[5:]
    else:
        host, _, port = endpoint.rpartition(":")
        host = host.strip("[]")
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        address = (host, int(port))
    sock.settimeout(timeout)
    try:
        sock.connect(address)
    except OSError:
        sock.close()
        raise
    return sock


MAX_REPLY = 4096  # "stream: <signature name> FOUND" is short; anything longer is not clamd


def _reply(sock: socket.socket, deadline: Deadline) -> str:
    data = bytearray()
    while not data.endswith(b"\0"):
        deadline.arm(sock)
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
        if len(data) > MAX_REPLY:
            raise ScannerError("clamd sent an oversized reply")
    return bytes(data).rstrip(b"\0").decode("utf-8", "replace").strip()


def shown(text: str, limit: int = 200) -> str:
    """A server's words, fit for a log line."""
    return "".join(char if char.isprintable() else "?" for char in text)[:limit]


def instream(endpoint: str, chunks: Iterable[bytes], timeout: float) -> ScanResult:
    deadline = Deadline(timeout)
    with connect(endpoint, timeout) as sock:
        try:
            deadline.arm(sock)
            sock.sendall(b"zINSTREAM\0")
            for chunk in chunks:
                for start in range(0, len(chunk), CHUNK):
                    piece = chunk[start:start + CHUNK]
                    deadline.arm(sock)
                    sock.sendall(struct.pack("!L", len(piece)) + piece)
            deadline.arm(sock)
            sock.sendall(struct.pack("!L", 0))
        except (BrokenPipeError, ConnectionResetError):
            # Over StreamMaxLength clamd answers and closes while we are still sending: its
            # reply (if it got through) says why.
            pass
        try:
            reply = _reply(sock, deadline)
        except ConnectionResetError:
            reply = ""
    if not reply:
        raise ScannerError(f"clamd at {endpoint} closed the connection without an answer")
    # "stream: OK", "stream: Eicar-Signature FOUND", "INSTREAM size limit exceeded. ERROR"
    status = reply.removeprefix("stream:").strip()
    if status == "OK":
        return ScanResult(False, server=endpoint)
    if status.endswith(" FOUND"):
        return ScanResult(True, status.removesuffix(" FOUND").strip(), endpoint)
    raise ScannerError(f"clamd at {endpoint} answered {shown(reply)!r}")


def failover(endpoints: Sequence[str], timeout: float, attempt: Callable[[str, float], T], what: str) -> T:
    """The first endpoint's answer that comes, trying them in order, all within one `timeout`
    (Postfix gives up on the milter after milter_content_timeout)."""
    errors = []
    overall = Deadline(timeout)
    for endpoint in endpoints:
        left = overall.end - time.monotonic()
        if left <= 0:
            errors.append("scan time limit reached")
            break
        try:
            return attempt(endpoint, left)
        except (OSError, ScannerError) as error:  # unreachable or broken: the next one may answer
            errors.append(f"{endpoint}: {error}")
    raise ScannerError("; ".join(errors) or f"no {what} server configured")


def scan(endpoints: Sequence[str], source: Callable[[], Iterable[bytes]], timeout: float) -> ScanResult:
    """Scan with clamd; `source()` streams the message anew for each server tried."""
    return failover(endpoints, timeout, lambda endpoint, left: instream(endpoint, source(), left), "clamd")
