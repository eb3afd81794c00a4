"""A small ClamAV clamd client: INSTREAM over a unix or TCP socket, failing over in order.

The protocol is four commands long; the PyPI `clamd` package is unmaintained since 2015 and
reads the whole message into memory, so the message is streamed here from the spool instead.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from policymilter.scanning import Deadline, ScannerError, connect, failover, receive, shown
from policymilter.slots import Scanner

CHUNK = 64 * 1024


@dataclass(frozen=True)
class ScanResult:
    infected: bool
    signature: str = ""
    server: str = ""


MAX_REPLY = 4096  # "stream: <signature name> FOUND" is short; anything longer is not clamd


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
            data = receive(sock, deadline, MAX_REPLY, f"clamd at {endpoint}", until=b"\0")
        except ConnectionResetError:
            data = b""
    reply = data.rstrip(b"\0").decode("utf-8", "replace").strip()
    if not reply:
        raise ScannerError(f"clamd at {endpoint} closed the connection without an answer")
    # "stream: OK", "stream: Eicar-Signature FOUND", "INSTREAM size limit exceeded. ERROR"
    status = reply.removeprefix("stream:").strip()
    if status == "OK":
        return ScanResult(False, server=endpoint)
    if status.endswith(" FOUND"):
        return ScanResult(True, status.removesuffix(" FOUND").strip(), endpoint)
    raise ScannerError(f"clamd at {endpoint} answered {shown(reply)!r}")


def scan(endpoints: Sequence[str], source: Callable[[], Iterable[bytes]], timeout: float,
         in_flight: int) -> ScanResult:
    """Scan with clamd; `source()` streams the message anew for each server tried; at most
    `in_flight` scans at once (all workers together)."""
    return failover(endpoints, timeout, lambda endpoint, left: instream(endpoint, source(), left), "clamd",
                    Scanner.ANTIVIRUS, in_flight)
