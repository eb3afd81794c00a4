"""A small ClamAV clamd client: INSTREAM over a unix or TCP socket, failing over in order.

The protocol is four commands long; the PyPI `clamd` package is unmaintained since 2015 and
reads the whole message into memory, so the message is streamed here from the spool instead.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

CHUNK = 64 * 1024


class ScannerError(Exception):
    """clamd could not give an answer (unreachable, timed out, protocol or size error)."""


@dataclass(frozen=True)
class ScanResult:
    infected: bool
    signature: str = ""
    server: str = ""


def connect(endpoint: str, timeout: float) -> socket.socket:
    """`unix:/path` or `HOST:PORT` (IPv6 as `[::1]:PORT`)."""
    if endpoint.startswith("unix:"):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        address: object = endpoint[5:]
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


def _reply(sock: socket.socket) -> str:
    data = b""
    while not data.endswith(b"\0"):
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data.rstrip(b"\0").decode("utf-8", "replace").strip()


def instream(endpoint: str, chunks: Iterable[bytes], timeout: float) -> ScanResult:
    with connect(endpoint, timeout) as sock:
        try:
            sock.sendall(b"zINSTREAM\0")
            for chunk in chunks:
                for start in range(0, len(chunk), CHUNK):
                    piece = chunk[start:start + CHUNK]
                    sock.sendall(struct.pack("!L", len(piece)) + piece)
            sock.sendall(struct.pack("!L", 0))
        except (BrokenPipeError, ConnectionResetError):
            # Over StreamMaxLength clamd answers and closes while we are still sending: its
            # reply (if it got through) says why.
            pass
        try:
            reply = _reply(sock)
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
    raise ScannerError(f"clamd at {endpoint} answered {reply!r}")


def scan(endpoints: Sequence[str], source: Callable[[], Iterable[bytes]], timeout: float) -> ScanResult:
    """Scan with the first endpoint that answers; `source()` streams the message anew per try."""
    errors = []
    for endpoint in endpoints:
        try:
            return instream(endpoint, source(), timeout)
        except (OSError, ScannerError) as error:  # unreachable or broken: the next one may answer
            errors.append(f"{endpoint}: {error}")
    raise ScannerError("; ".join(errors) or "no clamd server configured")
