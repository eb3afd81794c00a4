"""The state store in one SQLite file per host (the default): `sqlite:/var/lib/policy-milter/state.db`.

WAL journal, so `accounts` reads while the workers write; every update runs in one
`BEGIN IMMEDIATE` transaction, which takes the file's write lock first, so a check-and-reserve
is atomic across every worker process (and every thread: one connection per process, used
under a lock). Members older than the longest window, expired reservations and old holds are
deleted as the store is used (`_purge`, at most once a minute per process), so the file stays
the size of the traffic of one window.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from policymilter.state.model import (
    RECENT,
    RESERVATION_SECONDS,
    Dimension,
    Exceeded,
    LockInfo,
    Reservation,
    StoreError,
    Usage,
    over,
    recipient_of,
)

T = TypeVar("T")
BUSY_TIMEOUT_MS = 5000  # waiting for another process's write; beyond it the store "is down"
PURGE_EVERY = 60.0
HOLD_KEEP = 7 * 86400.0  # held-message records: a week, for `accounts list`

SCHEMA = """
CREATE TABLE IF NOT EXISTS used (
    key TEXT NOT NULL, dim TEXT NOT NULL, member TEXT NOT NULL, ts REAL NOT NULL, keep REAL NOT NULL,
    PRIMARY KEY (key, dim, member)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS used_expiry ON used (ts);
CREATE TABLE IF NOT EXISTS reserved (
    key TEXT NOT NULL, dim TEXT NOT NULL, member TEXT NOT NULL, txn TEXT NOT NULL, expires REAL NOT NULL,
    keep REAL NOT NULL, PRIMARY KEY (key, txn, dim, member)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS reserved_key ON reserved (key, dim);
CREATE TABLE IF NOT EXISTS locks (key TEXT PRIMARY KEY, since REAL NOT NULL, reason TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS held (key TEXT NOT NULL, ts REAL NOT NULL, reason TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS held_key ON held (key, ts);
CREATE TABLE IF NOT EXISTS notices (key TEXT NOT NULL, name TEXT NOT NULL, until REAL NOT NULL,
    PRIMARY KEY (key, name)) WITHOUT ROWID;
"""


class SqliteStore:
    def __init__(self, path: str, timeout: float = BUSY_TIMEOUT_MS / 1000) -> None:
        self.url = f"sqlite:{path}"
        self.path = Path(path)
        self.timeout = timeout
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self._pid = 0
        self._purged = 0.0

    # --- the connection ---------------------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        # Opened by the process that uses it: a connection must never cross a fork.
        if self._db is None or self._pid != os.getpid():
            try:
                db = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None,
                                     check_same_thread=False)
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=NORMAL")
                db.executescript(SCHEMA)
            except sqlite3.Error as error:
                raise StoreError(f"cannot open {self.path}: {error}") from None
            self._db, self._pid = db, os.getpid()
        return self._db

    def _run(self, work: Callable[[sqlite3.Connection], T], *, write: bool = True) -> T:
        with self._lock:
            try:
                db = self._connection()
                if not write:
                    return work(db)
                with _immediate(db):
                    return work(db)
            except sqlite3.Error as error:
                raise StoreError(f"{self.path}: {error}") from None

    def close(self) -> None:
        with self._lock:
            if self._db is not None and self._pid == os.getpid():
                self._db.close()
            self._db = None

    # --- the limits -------------------------------------------------------------------------

    def reserve(self, reservation: Reservation, now: float) -> Exceeded | None:
        def work(db: sqlite3.Connection) -> Exceeded | None:
            self._purge(db, now)
            exceeded = self._over(db, reservation, now, exclude_txn=None)
            if exceeded is None:
                db.executemany(
                    "INSERT OR IGNORE INTO reserved (key, dim, member, txn, expires, keep) VALUES (?, ?, ?, ?, ?, ?)",
                    [(reservation.key, str(dim), member, reservation.txn, now + RESERVATION_SECONDS,
                      reservation.keep) for dim, members in reservation.members.items() for member in members])
            return exceeded

        return self._run(work)

    def commit(self, reservation: Reservation, now: float) -> Exceeded | None:
        def work(db: sqlite3.Connection) -> Exceeded | None:
            key, txn = reservation.key, reservation.txn
            alive = db.execute("SELECT COUNT(*) FROM reserved WHERE key = ? AND txn = ? AND expires > ?",
                               (key, txn, now)).fetchone()[0]
            if not alive:
                db.execute("DELETE FROM reserved WHERE key = ? AND txn = ?", (key, txn))
                exceeded = self._over(db, reservation, now, exclude_txn=txn)
                if exceeded is not None:
                    return exceeded
            rows = [(key, str(dim), member, now, reservation.keep)
                    for dim, members in reservation.members.items() for member in members]
            db.executemany("INSERT INTO used (key, dim, member, ts, keep) VALUES (?, ?, ?, ?, ?) "
                           "ON CONFLICT (key, dim, member) DO UPDATE SET ts = excluded.ts, "
                           "keep = max(keep, excluded.keep)", rows)
            db.execute("DELETE FROM reserved WHERE key = ? AND txn = ?", (key, txn))
            return None

        return self._run(work)

    def release(self, key: str, txn: str) -> None:
        self._run(lambda db: db.execute("DELETE FROM reserved WHERE key = ? AND txn = ?", (key, txn)))

    def _over(self, db: sqlite3.Connection, reservation: Reservation, now: float,
              exclude_txn: str | None) -> Exceeded | None:
        dims = {counter.dimension for counter in reservation.counters}
        longest = max((counter.per for counter in reservation.counters), default=0.0)
        used: dict[Dimension, dict[str, float]] = {}
        pending: dict[Dimension, set[str]] = {}
        for dim in dims:
            used[dim] = dict(db.execute("SELECT member, ts FROM used WHERE key = ? AND dim = ? AND ts > ?",
                                        (reservation.key, str(dim), now - longest)))
            pending[dim] = {member for member, txn in db.execute(
                "SELECT member, txn FROM reserved WHERE key = ? AND dim = ? AND expires > ?",
                (reservation.key, str(dim), now)) if txn != exclude_txn}
        return over(reservation.counters, reservation.members, used, pending, now)

    def _purge(self, db: sqlite3.Connection, now: float) -> None:
        if now - self._purged < PURGE_EVERY:
            return
        self._purged = now
        db.execute("DELETE FROM used WHERE ts <= ? - keep", (now,))
        db.execute("DELETE FROM reserved WHERE expires <= ?", (now,))
        db.execute("DELETE FROM held WHERE ts <= ?", (now - HOLD_KEEP,))
        db.execute("DELETE FROM notices WHERE until <= ?", (now,))

    # --- locks, holds, notices --------------------------------------------------------------

    def lock(self, key: str, reason: str, now: float) -> None:
        self._run(lambda db: db.execute("INSERT OR IGNORE INTO locks (key, since, reason) VALUES (?, ?, ?)",
                                        (key, now, reason)))

    def lock_info(self, key: str) -> LockInfo | None:
        row = self._run(lambda db: db.execute("SELECT since, reason FROM locks WHERE key = ?", (key,)).fetchone(),
                        write=False)
        return LockInfo(row[0], row[1]) if row else None

    def hold(self, key: str, reason: str, now: float, keep: float) -> None:
        self._run(lambda db: db.execute("INSERT INTO held (key, ts, reason) VALUES (?, ?, ?)", (key, now, reason)))

    def clear(self, key: str) -> bool:
        def work(db: sqlite3.Connection) -> bool:
            removed = 0
            for table in ("locks", "used", "reserved", "held", "notices"):
                removed += db.execute(f"DELETE FROM {table} WHERE key = ?", (key,)).rowcount
            return removed > 0

        return self._run(work)

    def notify_once(self, key: str, name: str, now: float, period: float) -> bool:
        def work(db: sqlite3.Connection) -> bool:
            row = db.execute("SELECT until FROM notices WHERE key = ? AND name = ?", (key, name)).fetchone()
            if row and row[0] > now:
                return False
            db.execute("INSERT OR REPLACE INTO notices (key, name, until) VALUES (?, ?, ?)", (key, name, now + period))
            return True

        return self._run(work)

    # --- reading (accounts) -----------------------------------------------------------------

    def usage(self, key: str, now: float, windows: Sequence[float]) -> Usage:
        def work(db: sqlite3.Connection) -> Usage:
            counts: dict[tuple[Dimension, float], int] = {}
            for dim in Dimension:
                for per in windows:
                    used = {m for (m,) in db.execute("SELECT member FROM used WHERE key = ? AND dim = ? AND ts > ?",
                                                     (key, str(dim), now - per))}
                    used |= {m for (m,) in db.execute(
                        "SELECT member FROM reserved WHERE key = ? AND dim = ? AND expires > ?", (key, str(dim), now))}
                    counts[(dim, per)] = len(used)
            clients = tuple(db.execute("SELECT member, ts FROM used WHERE key = ? AND dim = ? ORDER BY ts DESC",
                                       (key, str(Dimension.CLIENTS))))
            recipients = tuple((recipient_of(m), ts) for m, ts in db.execute(
                "SELECT member, ts FROM used WHERE key = ? AND dim = ? ORDER BY ts DESC LIMIT ?",
                (key, str(Dimension.RECIPIENTS), RECENT)))
            pending = db.execute("SELECT COUNT(DISTINCT txn) FROM reserved WHERE key = ? AND expires > ?",
                                 (key, now)).fetchone()[0]
            held = tuple(db.execute("SELECT reason, ts FROM held WHERE key = ? ORDER BY ts DESC", (key,)))
            row = db.execute("SELECT since, reason FROM locks WHERE key = ?", (key,)).fetchone()
            return Usage(key, counts, clients, recipients, pending, held, LockInfo(row[0], row[1]) if row else None)

        return self._run(work, write=False)

    def keys(self, now: float) -> list[str]:
        def work(db: sqlite3.Connection) -> list[str]:
            rows = db.execute(
                "SELECT key FROM used WHERE ts > ? - keep UNION SELECT key FROM reserved WHERE expires > ? "
                "UNION SELECT key FROM held UNION SELECT key FROM locks ORDER BY key", (now, now))
            return [key for (key,) in rows]

        return self._run(work, write=False)


@contextmanager
def _immediate(db: sqlite3.Connection) -> Iterator[None]:
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")

