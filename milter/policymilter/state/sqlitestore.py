"""The state store in one SQLite file per host (the default): `sqlite:/var/lib/policy-milter/state.db`.

WAL journal, so `accounts` reads while the workers write; every update runs in one
`BEGIN IMMEDIATE` transaction, which takes the file's write lock first, so a check-and-reserve
is atomic across every worker process (and every thread: one connection per process, used
under a lock).

The cost of a check must not grow with the window (a login allowed 3,000 recipients a day has
up to 3,000 members in it): members are kept per window length (`per`) with a tally beside
them. A window's members older than `per` are deleted, and its tally lowered, when the key is
next used (the index on (key, dim, per, ts) finds just those); then the tally is the window's
count, each new member is one primary-key lookup, and only reservations (transactions in
progress: few) are read whole. Expired reservations, old holds and notices, and the windows of
keys nobody uses any more go in a purge at most once a minute per process, so the file stays
the size of the traffic of the longest window.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from policymilter.state.model import (
    RECENT,
    RESERVATION_SECONDS,
    UNIQUE_PER_TRANSACTION,
    Counter,
    Dimension,
    Exceeded,
    LockInfo,
    Reservation,
    StoreError,
    Usage,
    recipient_of,
)

T = TypeVar("T")
PURGE_EVERY = 60.0
WRITER_POLL = 0.0002  # seconds between tries for the writers' lock
HOLD_KEEP = 7 * 86400.0  # held-message records: a week, for `accounts list`

SCHEMA = """
CREATE TABLE IF NOT EXISTS member (
    key TEXT NOT NULL, dim TEXT NOT NULL, per REAL NOT NULL, member TEXT NOT NULL, ts REAL NOT NULL,
    PRIMARY KEY (key, dim, per, member)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS member_age ON member (key, dim, per, ts);
CREATE INDEX IF NOT EXISTS member_expiry ON member (ts);
CREATE TABLE IF NOT EXISTS tally (
    key TEXT NOT NULL, dim TEXT NOT NULL, per REAL NOT NULL, n INTEGER NOT NULL, oldest REAL NOT NULL,
    PRIMARY KEY (key, dim, per)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS reserved (
    key TEXT NOT NULL, dim TEXT NOT NULL, member TEXT NOT NULL, txn TEXT NOT NULL, expires REAL NOT NULL,
    PRIMARY KEY (key, txn, dim, member)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS reserved_member ON reserved (key, dim, member);
CREATE TABLE IF NOT EXISTS locks (key TEXT PRIMARY KEY, since REAL NOT NULL, reason TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS held (key TEXT NOT NULL, ts REAL NOT NULL, reason TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS held_key ON held (key, ts);
CREATE TABLE IF NOT EXISTS notices (key TEXT NOT NULL, name TEXT NOT NULL, until REAL NOT NULL,
    PRIMARY KEY (key, name)) WITHOUT ROWID;
"""
# `accounts show` and the notification read recipients and clients from this window's members.
WIDEST = "SELECT MAX(per) FROM tally WHERE key = ? AND dim = ?"


def _windows(reservation: Reservation) -> dict[tuple[Dimension, float], list[Counter]]:
    windows: dict[tuple[Dimension, float], list[Counter]] = {}
    for counter in reservation.counters:
        windows.setdefault((counter.dimension, counter.per), []).append(counter)
    return windows


class SqliteStore:
    def __init__(self, path: str, timeout: float = 2.0) -> None:
        self.url = f"sqlite:{path}"
        self.path = Path(path)
        self.timeout = timeout
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self._pid = 0
        self._lockfile: int | None = None  # the writers' lock (a descriptor of this process's own)
        self._lockfile_pid = 0
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
                with self._writer(), _immediate(db):
                    return work(db)
            except sqlite3.Error as error:
                raise StoreError(f"{self.path}: {error}") from None

    @contextmanager
    def _writer(self) -> Iterator[None]:
        """The processes' turn to write, taken before SQLite's own lock. SQLite's busy handler
        sleeps 1, 2, 5, 10... ms between its tries, so two workers writing at once would wait
        milliseconds for a lock held for a tenth of one; this lock is polled every WRITER_POLL
        seconds instead, up to the store's timeout."""
        if self._lockfile is None or self._lockfile_pid != os.getpid():
            try:
                self._lockfile = os.open(f"{self.path}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            except OSError as error:
                raise StoreError(f"cannot open {self.path}.lock: {error.strerror}") from None
            self._lockfile_pid = os.getpid()
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                fcntl.flock(self._lockfile, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise StoreError(f"{self.path}: another process held the write lock for "
                                     f"{self.timeout:g} s") from None
                time.sleep(WRITER_POLL)
        try:
            yield
        finally:
            fcntl.flock(self._lockfile, fcntl.LOCK_UN)

    def close(self) -> None:
        with self._lock:
            if self._db is not None and self._pid == os.getpid():
                self._db.close()
            if self._lockfile is not None and self._lockfile_pid == os.getpid():
                os.close(self._lockfile)
            self._db, self._lockfile = None, None

    # --- the limits -------------------------------------------------------------------------

    def reserve(self, reservation: Reservation, now: float) -> Exceeded | None:
        def work(db: sqlite3.Connection) -> Exceeded | None:
            self._purge(db, now)
            exceeded = self._over(db, reservation, now, exclude_txn=None)
            if exceeded is None:
                db.executemany(
                    "INSERT OR IGNORE INTO reserved (key, dim, member, txn, expires) VALUES (?, ?, ?, ?, ?)",
                    [(reservation.key, str(dim), member, reservation.txn, now + RESERVATION_SECONDS)
                     for dim, members in reservation.members.items() for member in members])
            return exceeded

        return self._run(work)

    def commit(self, reservation: Reservation, now: float) -> Exceeded | None:
        def work(db: sqlite3.Connection) -> Exceeded | None:
            key, txn = reservation.key, reservation.txn
            alive = db.execute("SELECT 1 FROM reserved WHERE key = ? AND txn = ? AND expires > ? LIMIT 1",
                               (key, txn, now)).fetchone()
            if alive is None:
                db.execute("DELETE FROM reserved WHERE key = ? AND txn = ?", (key, txn))
                exceeded = self._over(db, reservation, now, exclude_txn=txn)
                if exceeded is not None:
                    return exceeded
            # Every window of the key's limits; a dimension no limit counts is kept for
            # `accounts show` in a window as long as the longest limit's.
            windows = list(_windows(reservation))
            windows += [(dim, reservation.keep) for dim in reservation.members if dim not in {d for d, _ in windows}]
            tallies = []
            for dim, per in windows:
                added = self._add(db, key, dim, per, reservation.members.get(dim, ()), now)
                if added:
                    tallies.append((key, str(dim), per, added, now))
            db.executemany("INSERT INTO tally (key, dim, per, n, oldest) VALUES (?, ?, ?, ?, ?) "
                           "ON CONFLICT (key, dim, per) DO UPDATE SET n = n + excluded.n", tallies)
            db.execute("DELETE FROM reserved WHERE key = ? AND txn = ?", (key, txn))
            return None

        return self._run(work)

    def release(self, key: str, txn: str) -> None:
        self._run(lambda db: db.execute("DELETE FROM reserved WHERE key = ? AND txn = ?", (key, txn)))

    @staticmethod
    def _expire(db: sqlite3.Connection, key: str, dim: str, per: float, now: float) -> int:
        """Forget the window's members older than it; its tally and oldest follow. The count left."""
        db.execute("DELETE FROM member WHERE key = ? AND dim = ? AND per = ? AND ts <= ?", (key, dim, per, now - per))
        left, oldest = db.execute("SELECT COUNT(*), MIN(ts) FROM member WHERE key = ? AND dim = ? AND per = ?",
                                  (key, dim, per)).fetchone()
        db.execute("UPDATE tally SET n = ?, oldest = ? WHERE key = ? AND dim = ? AND per = ?",
                   (left, oldest if oldest is not None else now, key, dim, per))
        return int(left)

    @staticmethod
    def _add(db: sqlite3.Connection, key: str, dimension: Dimension, per: float, members: Sequence[str],
             now: float) -> int:
        """Members used now; how many were not in the window yet."""
        dim = str(dimension)
        if dimension in UNIQUE_PER_TRANSACTION:
            db.executemany("INSERT INTO member (key, dim, per, member, ts) VALUES (?, ?, ?, ?, ?)",
                           [(key, dim, per, member, now) for member in members])
            return len(members)
        new = 0
        for member in members:
            if db.execute("INSERT OR IGNORE INTO member (key, dim, per, member, ts) VALUES (?, ?, ?, ?, ?)",
                          (key, dim, per, member, now)).rowcount:
                new += 1
            else:
                db.execute("UPDATE member SET ts = ? WHERE key = ? AND dim = ? AND per = ? AND member = ?",
                           (now, key, dim, per, member))
        return new

    def _over(self, db: sqlite3.Connection, reservation: Reservation, now: float,
              exclude_txn: str | None) -> Exceeded | None:
        """model.over's arithmetic, at a cost that does not grow with the window (module doc):
        a window is expired only when its oldest member has left it."""
        key, txn = reservation.key, exclude_txn or ""
        tallies = {(Dimension(dim), per): (n, oldest) for dim, per, n, oldest in db.execute(
            "SELECT dim, per, n, oldest FROM tally WHERE key = ?", (key,))}
        reserved: dict[Dimension, set[str]] = {}
        for dim, member in db.execute("SELECT dim, member FROM reserved WHERE key = ? AND expires > ? AND txn != ?",
                                      (key, now, txn)):
            reserved.setdefault(Dimension(dim), set()).add(member)
        for (dimension, per), counters in _windows(reservation).items():
            dim = str(dimension)
            count, oldest = tallies.get((dimension, per), (0, now))
            if count and oldest <= now - per:
                count = self._expire(db, key, dim, per, now)
            pending = reserved.get(dimension, set())
            if dimension not in UNIQUE_PER_TRANSACTION:  # a pending domain may be in the window already
                pending = {m for m in pending if not self._in_window(db, key, dim, per, m)}
            current = count + len(pending)
            adding = sum(1 for member in set(reservation.members.get(dimension, ())) if member not in pending
                         and (dimension in UNIQUE_PER_TRANSACTION or not self._in_window(db, key, dim, per, member)))
            for counter in counters:
                if adding and current + adding > counter.limit:
                    return Exceeded(counter, current, adding)
        return None

    @staticmethod
    def _in_window(db: sqlite3.Connection, key: str, dim: str, per: float, member: str) -> bool:
        return db.execute("SELECT 1 FROM member WHERE key = ? AND dim = ? AND per = ? AND member = ?",
                          (key, dim, per, member)).fetchone() is not None

    def _purge(self, db: sqlite3.Connection, now: float) -> None:
        if now - self._purged < PURGE_EVERY:
            return
        self._purged = now
        for key, dim, per in db.execute("SELECT key, dim, per FROM tally WHERE oldest <= ? - per", (now,)).fetchall():
            self._expire(db, key, dim, per, now)
        db.execute("DELETE FROM tally WHERE n <= 0")
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
            for table in ("locks", "member", "tally", "reserved", "held", "notices"):
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
            def widest(dim: Dimension) -> float:
                row = db.execute(WIDEST, (key, str(dim))).fetchone()
                return float(row[0]) if row and row[0] is not None else 0.0

            def members(dim: Dimension, since: float) -> list[tuple[str, float]]:
                return list(db.execute("SELECT member, ts FROM member WHERE key = ? AND dim = ? AND per = ? "
                                       "AND ts > ? ORDER BY ts DESC", (key, str(dim), widest(dim), since)))

            counts: dict[tuple[Dimension, float], int] = {}
            for dim in Dimension:
                reserved = {m for (m,) in db.execute(
                    "SELECT member FROM reserved WHERE key = ? AND dim = ? AND expires > ?", (key, str(dim), now))}
                for per in windows:
                    counts[(dim, per)] = len({m for m, _ in members(dim, now - per)} | reserved)
            clients = tuple(members(Dimension.CLIENTS, now - widest(Dimension.CLIENTS)))
            recipients = tuple((recipient_of(m), ts) for m, ts in
                               members(Dimension.RECIPIENTS, now - widest(Dimension.RECIPIENTS))[:RECENT])
            pending = db.execute("SELECT COUNT(DISTINCT txn) FROM reserved WHERE key = ? AND expires > ?",
                                 (key, now)).fetchone()[0]
            held = tuple(db.execute("SELECT reason, ts FROM held WHERE key = ? ORDER BY ts DESC", (key,)))
            row = db.execute("SELECT since, reason FROM locks WHERE key = ?", (key,)).fetchone()
            return Usage(key, counts, clients, recipients, pending, held, LockInfo(row[0], row[1]) if row else None)

        return self._run(work, write=False)

    def keys(self, now: float) -> list[str]:
        def work(db: sqlite3.Connection) -> list[str]:
            rows = db.execute(
                "SELECT key FROM member WHERE ts > ? - per UNION SELECT key FROM reserved WHERE expires > ? "
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
