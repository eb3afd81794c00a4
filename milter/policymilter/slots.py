"""Scans in flight per scanner, bounded across every worker process: `hold(scanner, count, deadline)`.

A scanner takes so many scans at once (Debian's clamd: 12 threads and a queue of 15; spamd:
5 children) whatever the number of milter workers, so the bound is one count for the whole
daemon, not one per worker. Each slot is one byte of a file the parent creates before it
forks (an unlinked temporary file, shared by inheritance); a scan holds a slot with an
open-file-description lock (F_OFD_SETLK) on its byte, taken through its own descriptor
(opened again through /proc/self/fd, so every scan, in any thread of any worker, is its own
lock owner). The kernel drops the lock when that descriptor is closed, including by the death
of the process: a worker killed mid-scan leaves no slot taken.

Waiting is fair: every scan first takes its scanner's "door" (one more locked byte), and only
the door's holder looks for a free slot, every SLOT_POLL seconds, until one is free or its
deadline passes; it then lets the door go and scans. So a freed slot goes to the scan that
was waiting at the door, never to a newcomer (a sender's stream of cheap scans, each asking
again the moment it ends, would otherwise take every freed slot while the site's scan backs
off to its deadline). Scans waiting for the door try it every DOOR_POLL seconds, all alike.
"""

from __future__ import annotations

import errno
import fcntl
import os
import random
import struct
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import IntEnum
from typing import IO

SLOT_POLL = 0.002  # seconds between the door holder's looks for a free slot
DOOR_POLL = 0.005  # seconds between tries for the door, the same for every waiting scan
_LOCK_FORMAT = "hhqqi4x"  # struct flock on Linux: l_type, l_whence, l_start, l_len, l_pid (0 for OFD locks)


class Scanner(IntEnum):
    """Each scanner's slots are their own range of bytes."""

    ANTIVIRUS = 0
    SPAM = 1


_RANGE = 1 << 20  # bytes (slots) per scanner: far beyond any count a policy may set


class SlotsBusy(Exception):
    """Every slot stayed taken until the deadline."""


def _lock(fd: int, offset: int, kind: int) -> bool:
    request = struct.pack(_LOCK_FORMAT, kind, os.SEEK_SET, offset, 1, 0)
    try:
        fcntl.fcntl(fd, fcntl.F_OFD_SETLK, request)
    except OSError as error:
        if error.errno in (errno.EAGAIN, errno.EACCES):
            return False
        raise
    return True


class SlotPool:
    """The slots of every scanner, shared by the processes forked after it was made."""

    def __init__(self) -> None:
        self._file: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the process

    def _descriptor(self) -> int:
        # A new open file description of the same file: its locks are its own.
        return os.open(f"/proc/self/fd/{self._file.fileno()}", os.O_RDWR | os.O_CLOEXEC)

    @contextmanager
    def hold(self, scanner: Scanner, count: int, deadline: float) -> Iterator[None]:
        """One of `count` slots of `scanner` until the block ends; SlotsBusy at `deadline`
        (a time.monotonic() value) if none came free."""
        fd = self._descriptor()
        try:
            base = int(scanner) * _RANGE
            door = base + _RANGE - 1
            self._wait(lambda: _lock(fd, door, fcntl.F_WRLCK), DOOR_POLL, deadline, count)
            try:
                start = random.randrange(count)  # spread the tries: the first slots are not the busiest
                self._wait(lambda: any(_lock(fd, base + (start + i) % count, fcntl.F_WRLCK) for i in range(count)),
                           SLOT_POLL, deadline, count)
            finally:
                _lock(fd, door, fcntl.F_UNLCK)
            yield
        finally:
            os.close(fd)  # releases the slot

    @staticmethod
    def _wait(taken: Callable[[], bool], pause: float, deadline: float, count: int) -> None:
        while not taken():
            left = deadline - time.monotonic()
            if left <= 0:
                raise SlotsBusy(f"all {count} scans in flight stayed busy")
            time.sleep(min(pause * random.uniform(0.5, 1.5), left))

    def taken(self, scanner: Scanner, count: int) -> int:
        """How many of the first `count` slots are held now (for tests and diagnostics)."""
        fd = self._descriptor()
        try:
            base = int(scanner) * _RANGE
            busy = 0
            for slot in range(count):
                if _lock(fd, base + slot, fcntl.F_RDLCK):
                    _lock(fd, base + slot, fcntl.F_UNLCK)
                else:
                    busy += 1
            return busy
        finally:
            os.close(fd)


class _Made:
    """This process's pool, made once (under the lock: two threads must not make two)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.pool: SlotPool | None = None


_made = _Made()


def pool() -> SlotPool:
    """This daemon's pool: made by the parent before it forks (prepare), else on first use."""
    with _made.lock:
        if _made.pool is None:
            _made.pool = SlotPool()
        return _made.pool


def prepare() -> None:
    """Make the pool now, in the process whose children must share it."""
    pool()
