"""What the clamd and spamd clients share: one deadline per scan, connecting, failing over.

Each scanner client lives with its check (checks/antivirus/clamd.py, checks/spam/spamd.py);
this is the plumbing both use, under a neutral name.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

from policymilter import metrics, safetext
from policymilter.slots import Scanner, SlotsBusy, pool

T = TypeVar("T")


class ScannerError(Exception):
    """A scanner could not give an answer (unreachable, timed out, protocol or size error)."""


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


MAX_QUEUE_WAIT_STEP = 0.05  # seconds between tries while a unix socket's accept queue is full


def connect(endpoint: str, timeout: float) -> socket.socket:
    """`unix:/path` or `HOST:PORT` (IPv6 as `[::1]:PORT`), within `timeout` seconds.

    A unix socket whose accept queue is full refuses a connect at once with EAGAIN, where TCP
    would wait for the server (Debian's clamd has a queue of 15 and 12 threads: 27 scans at
    once fill it while clamd is healthy). That is a busy server, not a broken one: tried again
    until the time is up.
    """
    if endpoint.startswith("unix:"):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        address: str | tuple[str, int] = endpoint[5:]
    else:
        host, _, port = endpoint.rpartition(":")
        host = host.strip("[]")
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        address = (host, int(port))
    deadline = time.monotonic() + timeout
    pause = 0.001
    try:
        while True:
            sock.settimeout(max(deadline - time.monotonic(), 0.001))
            try:
                sock.connect(address)
                return sock
            except BlockingIOError:  # EAGAIN: the accept queue is full
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{address}: the server's accept queue stayed full for {timeout:.1f} s "
                                       "(it is busy: see its thread and queue settings)") from None
                time.sleep(min(pause, left))
                pause = min(pause * 2, MAX_QUEUE_WAIT_STEP)
    except BaseException:
        sock.close()
        raise


def receive(sock: socket.socket, deadline: Deadline, limit: int, what: str, until: bytes = b"") -> bytes:
    """The server's reply: up to the connection's end (or `until` at its end), within the
    deadline; over `limit` bytes is a ScannerError (`what` names the server)."""
    reply = bytearray()
    while not (until and reply.endswith(until)):
        deadline.arm(sock)
        chunk = sock.recv(65536)
        if not chunk:
            break
        reply += chunk
        if len(reply) > limit:
            raise ScannerError(f"{what} sent an oversized reply")
    return bytes(reply)


def shown(text: str, limit: int = 200) -> str:
    """A server's words, fit for a log line."""
    return safetext.for_log(text, limit)


SLOW_TURN = 0.1  # seconds: a wait for a slot this long is named in the error


def failover(endpoints: Sequence[str], timeout: float, attempt: Callable[[str, float], T], what: str,
             scanner: Scanner, in_flight: int) -> T:
    """The first endpoint's answer that comes, trying them in order, all within one `timeout`
    (Postfix gives up on the milter after milter_content_timeout). At most `in_flight` scans of
    this scanner run at once across the workers (slots.py); waiting for a turn counts against
    `timeout`, and a long wait is named in the error."""
    errors = []
    overall = Deadline(timeout)
    setting = f"{scanner.name.lower()}.max_in_flight"
    try:
        with pool().hold(scanner, in_flight, overall.end):
            waited = timeout - (overall.end - time.monotonic())
            for endpoint in endpoints:
                left = overall.end - time.monotonic()
                if left <= 0:
                    errors.append("scan time limit reached")
                    metrics.scanner_error(scanner.name.lower(), endpoint, "timeout")
                    break
                try:
                    return attempt(endpoint, left)
                except (OSError, ScannerError) as error:  # unreachable or broken: the next one may answer
                    errors.append(f"{endpoint}: {error}")
                    timed_out = isinstance(error, TimeoutError) or time.monotonic() >= overall.end
                    metrics.scanner_error(scanner.name.lower(), endpoint, "timeout" if timed_out else "error")
    except SlotsBusy as busy:
        metrics.scanner_error(scanner.name.lower(), "none", "busy")
        raise ScannerError(f"{busy} for {timeout:g} s: {what} is slow or hung (the bound is {setting})") from None
    reason = "; ".join(errors) or f"no {what} server configured"
    if waited >= SLOW_TURN:
        reason += f" (after {waited:.1f} s waiting for one of the {in_flight} scans in flight: {setting})"
    raise ScannerError(reason)
