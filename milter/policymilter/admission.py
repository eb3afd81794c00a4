"""End-of-message work admitted per worker process: at most N messages at once, the next in turn.

libmilter gives every SMTP session a thread, and Python runs one thread at a time: with 50
messages checked at once, each gets a fiftieth of the CPU and all of them pass Postfix's
timeouts together; and each message being checked holds its body in memory once. So at most
`site.max_concurrent_messages` run their end-of-message checks at once in one worker; a
message beyond it waits its turn (first come, first served) for up to `site.queue_timeout`
seconds, then is answered 451 4.3.2: the sender retries later, while the messages that are
running finish at full speed.

A message keeps its turn while it waits for DNS or a scanner: the bound is on messages in
progress (their memory), not only on the CPU. The limit is the policy in force (a reload
sets it, `limit`), whatever policy a connection started with.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager


class Admission:
    """The turns of one worker process (one per Service, shared by its sessions)."""

    def __init__(self, limit: int) -> None:
        self._lock = threading.Lock()
        self._limit = limit
        self.running = 0
        self._waiting: deque[threading.Event] = deque()  # handed a turn in arrival order

    @property
    def limit(self) -> int:
        return self._limit

    @limit.setter
    def limit(self, value: int) -> None:
        """A reload's new limit: a raised one admits waiting messages at once."""
        with self._lock:
            self._limit = value
            self._hand_out()

    @contextmanager
    def turn(self, timeout: float) -> Iterator[bool]:
        """True inside the block when this message got its turn within `timeout` seconds,
        False when it did not (the caller answers busy); the turn ends with the block."""
        admitted = self._enter(timeout)
        try:
            yield admitted
        finally:
            if admitted:
                self._leave()

    def _enter(self, timeout: float) -> bool:
        with self._lock:
            if self.running < self._limit and not self._waiting:
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

    def _leave(self) -> None:
        with self._lock:
            self.running -= 1
            self._hand_out()

    def _hand_out(self) -> None:
        """Turns that fit go to the waiting messages, oldest first (the lock is held)."""
        while self._waiting and self.running < self._limit:
            self.running += 1
            self._waiting.popleft().set()

    @property
    def waiting(self) -> int:
        with self._lock:
            return len(self._waiting)
