"""A small SpamAssassin spamd client (the SPAMC/1.5 protocol), failing over in order.

No maintained client library fits a threaded milter that streams from a spool, and the
protocol is a request line, two headers and the message.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from policymilter.clamav import ScannerError, connect

_SPAM_LINE = re.compile(r"^Spam:\s*(True|False|Yes|No)\s*;\s*(-?[\d.]+)\s*/\s*(-?[\d.]+)", re.IGNORECASE | re.MULTILINE)


@dataclass(frozen=True)
class SpamResult:
    score: float
    threshold: float  # spamd's own required score (informational: the policy's thresholds decide)
    symbols: tuple[str, ...]
    server: str


def check(endpoint: str, chunks: Iterable[bytes], length: int, timeout: float) -> SpamResult:
    with connect(endpoint, timeout) as sock:
        sock.sendall(f"SYMBOLS SPAMC/1.5\r\nContent-length: {length}\r\n\r\n".encode())
        for chunk in chunks:
            sock.sendall(chunk)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
            if len(reply) > 1_000_000:
                raise ScannerError(f"spamd at {endpoint} sent an oversized reply")
    text = reply.decode("utf-8", "replace")
    status = text.split("\r\n", 1)[0]
    if not status.startswith("SPAMD/") or " 0 " not in f"{status} ":
        raise ScannerError(f"spamd at {endpoint} answered {status!r}")
    match = _SPAM_LINE.search(text)
    if not match:
        raise ScannerError(f"spamd at {endpoint} sent no Spam: line")
    body = text.split("\r\n\r\n", 1)[1] if "\r\n\r\n" in text else ""
    symbols = tuple(symbol.strip() for symbol in body.replace("\r\n", "").split(",") if symbol.strip())
    return SpamResult(float(match.group(2)), float(match.group(3)), symbols, endpoint)


def scan(endpoints: Sequence[str], source: Callable[[], Iterable[bytes]], timeout: float) -> SpamResult:
    length = sum(len(chunk) for chunk in source())
    errors = []
    for endpoint in endpoints:
        try:
            return check(endpoint, source(), length, timeout)
        except (OSError, ScannerError) as error:  # unreachable or broken: the next one may answer
            errors.append(f"{endpoint}: {error}")
    raise ScannerError("; ".join(errors) or "no spamd server configured")
