"""A small SpamAssassin spamd client (the SPAMC/1.5 protocol), failing over in order.

No maintained client library fits a threaded milter that streams from a spool, and the
protocol is a request line, two headers and the message.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from policymilter.scanning import Deadline, ScannerError, connect, failover, receive, shown
from policymilter.slots import Scanner

_NUMBER = r"(-?\d+(?:\.\d+)?)"
_SYMBOL = re.compile(r"[A-Za-z0-9_]{1,64}", re.ASCII)
_SPAM_LINE = re.compile(rf"^Spam:\s*(True|False|Yes|No)\s*;\s*{_NUMBER}\s*/\s*{_NUMBER}\s*$",
                        re.IGNORECASE | re.MULTILINE | re.ASCII)
MAX_REPLY = 65536


@dataclass(frozen=True)
class SpamResult:
    score: float
    threshold: float  # spamd's own required score (informational: the policy's thresholds decide)
    symbols: tuple[str, ...]
    server: str


def check(endpoint: str, chunks: Iterable[bytes], length: int, timeout: float) -> SpamResult:
    deadline = Deadline(timeout)
    with connect(endpoint, timeout) as sock:
        deadline.arm(sock)
        sock.sendall(f"SYMBOLS SPAMC/1.5\r\nContent-length: {length}\r\n\r\n".encode())
        for chunk in chunks:
            deadline.arm(sock)
            sock.sendall(chunk)
        reply = receive(sock, deadline, MAX_REPLY, f"spamd at {endpoint}")
    text = reply.decode("utf-8", "replace")
    status = text.split("\r\n", 1)[0]
    if not status.startswith("SPAMD/") or " 0 " not in f"{status} ":
        raise ScannerError(f"spamd at {endpoint} answered {shown(status)!r}")
    match = _SPAM_LINE.search(text)
    if not match:
        raise ScannerError(f"spamd at {endpoint} sent no Spam: line")
    body = text.split("\r\n\r\n", 1)[1] if "\r\n\r\n" in text else ""
    # Rule names are identifiers: anything else a server sends is not one, and would reach our header.
    symbols = tuple(symbol for part in body.replace("\r\n", "").split(",")
                    if _SYMBOL.fullmatch(symbol := part.strip()))
    return SpamResult(float(match.group(2)), float(match.group(3)), symbols, endpoint)


def scan(endpoints: Sequence[str], source: Callable[[], Iterable[bytes]], timeout: float,
         in_flight: int) -> SpamResult:
    """Ask spamd; `source()` streams the message anew for each server tried; at most
    `in_flight` scans at once (all workers together)."""
    length = sum(len(chunk) for chunk in source())
    return failover(endpoints, timeout, lambda endpoint, left: check(endpoint, source(), length, left), "spamd",
                    Scanner.SPAM, in_flight)
