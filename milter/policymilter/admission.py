"""End-of-message work admitted per worker process: at most N messages at once, the next in turn.

libmilter gives every SMTP session a thread, and Python runs one thread at a time: with 50
messages checked at once, each gets a fiftieth of the CPU and all of them pass Postfix's
timeouts together. So at most `site.max_concurrent_messages` run their end-of-message checks
at once in one worker; a message beyond it waits its turn (first come, first served) for up
to `site.queue_timeout` seconds, then is answered 451 4.3.2: the sender retries later, while
the messages that are running finish at full speed.

A turn bounds the CPU, not the waiting: a message that waits for the network (a DNS query,
a scan) gives its turn up meanwhile (`off_turn`, used by dns.py and scanning.py), and takes
one again, before any message not yet admitted, when the answer comes. Otherwise a sender
whose DKIM selectors sit in a zone that never answers could hold every turn with a few
connections, and the site's mail would be told "busy".
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager

_held = threading.local()  # .turn: (Admission, limit) while this thread holds a turn


class Admission:
    """The turns of one worker process (one per Service, shared by its sessions)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.running = 0
        self._waiting: deque[threading.Event] = deque()  # handed a turn in arrival order

    @contextmanager
    def turn(self, limit: int, timeout: float) -> Iterator[bool]:
        """True inside the block when this message got its turn within `timeout` seconds,
        False when it did not (the caller answers busy); the turn ends with the block."""
        admitted = self._enter(limit, timeout)
        if admitted:
            _held.turn = (self, limit)
        try:
            yield admitted
        finally:
            if admitted:
                _held.turn = None
                self._leave(limit)

    def _enter(self, limit: int, timeout: float) -> bool:
        with self._lock:
            if self.running < limit and not self._waiting:
                self.running += 1
                return True
            handed = threading.Event()
            self._waiting.append(handed)
        if handed.wait(timeout):
            return True
        with self._lock:
            if handed.is_set():  # handed a turn just as the wait ended
                return True
            self._waiting.remove(handed)
            return False

    def _resume(self, limit: int) -> None:
        """Take a turn again after a wait for the network: ahead of every message not yet
        admitted, and without a time limit (this message was admitted once)."""
        with self._lock:
            if self.running < limit and not self._waiting:
                self.running += 1
                return
            handed = threading.Event()
            self._waiting.appendleft(handed)
        handed.wait()

    def _leave(self, limit: int) -> None:
        with self._lock:
            self.running -= 1
            while self._waiting and self.running < limit:  # more than one if the limit was raised
                self.running += 1
                self._waiting.popleft().set()

    @property
    def waiting(self) -> int:
        with self._lock:
            return len(self._waiting)


@contextmanager
def off_turn() -> Iterator[None]:
    """Around a wait for the network: the thread's turn, if it holds one, is given up for the
    wait and taken back after it."""
    held = getattr(_held, "turn", None)
    if held is None:
        yield
        return
    admission, limit = held
    _held.turn = None
    admission._leave(limit)
    try:
        yield
    finally:
        admission._resume(limit)
        _held.turn = held
