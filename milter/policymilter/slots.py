"""Scans in flight per scanner, bounded across every worker process: `hold(scanner, count, deadline)`.

A scanner takes so many scans at once (Debian's clamd: 12 threads and a queue of 15; spamd:
5 children) whatever the number of milter workers, so the bound is one count for the whole
daemon, not one per worker. Each slot is one byte of a file the parent creates before it
forks (an unlinked temporary file, shared by inheritance); a scan holds a slot with an
open-file-description lock (F_OFD_SETLK) on its byte, taken through its own descriptor
(opened again through /proc/self/fd, so every scan, in any thread of any worker, is its own
lock owner). The kernel drops the lock when that descriptor is closed, including by the death
of the process: a worker killed mid-scan leaves no slot taken. A scan that finds every slot
taken waits, polling, until a slot is free or its deadline passes.
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
from collections.abc import Iterator
from contextlib import contextmanager
from enum import IntEnum
from typing import IO

MAX_WAIT_STEP = 0.05  # seconds between tries while every slot is taken
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
            start = random.randrange(count)  # spread the tries: the first slots are not the busiest
            pause = 0.001
            while not any(_lock(fd, base + (start + i) % count, fcntl.F_WRLCK) for i in range(count)):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise SlotsBusy(f"all {count} scans in flight stayed busy")
                time.sleep(min(pause, left))
                pause = min(pause * 2, MAX_WAIT_STEP)
            yield
        finally:
            os.close(fd)  # releases the lock

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


_pool: SlotPool | None = None
_made = threading.Lock()


def pool() -> SlotPool:
    """This daemon's pool: made by the parent before it forks (prepare), else on first use."""
    global _pool
    with _made:
        if _pool is None:
            _pool = SlotPool()
        return _pool


def prepare() -> None:
    """Make the pool now, in the process whose children must share it."""
    pool()
