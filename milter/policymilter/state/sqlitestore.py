"""The state store in one SQLite file per host (the default): `sqlite:/var/lib/policy-milter/state.db`.

WAL journal, so `accounts` reads while the workers write; every update runs in one
`BEGIN IMMEDIATE` transaction, which takes the file's write lock first, so a check-and-reserve
is atomic across every worker process (and every thread: one connection per process, used
under a lock).

The cost of a check must not grow with the window (a login allowed 3,000 recipients a day has
up to 3,000 members in it), nor should a commit write much: each member is one row
(`event`: messages and recipients, new in every transaction, keyed by time; `seen`: domains
and clients, one row per distinct value with its last use), and each window of a limit has a
tally beside them: its count, the edge it was counted from, and the time of its next member to
leave. Moving a window forward subtracts only the members that left since (a range of the time
index), and only when one did; a new member adds one to each window of its dimension. Only
reservations (transactions in progress: few) are read whole. Rows older than the widest
window, expired reservations, old holds and notices go in a purge in small batches every ten
seconds per process, so the file stays the size of the traffic of the widest window.

DMARC report rows: `dmarc_row` holds one counter per distinct row of a report (period, domain),
`dmarc_report` one line per report with its number of distinct rows (the cap's check costs one
read, not a count) and when it is dropped unsent, `dmarc_group` the distinct rows of each group
a row named (Store.dmarc_record). A message costs one upsert: the counter's UPDATE, or for a
new row the report line's and its groups' reads and the inserts (a new report also counts the
period's reports, an index range). Expired reports go in the same purge, DMARC_PURGE_ROWS rows
at a time, their groups with their line.
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
PURGE_EVERY = 10.0
PURGE_BATCH = 200  # windows (and rows of each other table) tidied per purge
WRITER_POLL = 0.00005  # seconds before the second try for the writers' lock, doubling each time
WRITER_POLL_MAX = 0.001
CHECKPOINT_EVERY = 200  # commits of a process between its WAL checkpoints
CHECKPOINT_WAIT = 0.05  # seconds a checkpoint waits for readers (holding the writers' lock)
HOLD_KEEP = 7 * 86400.0  # held-message records: a week, for `accounts list`
HELD_SHOWN = 100  # the newest held-message records `usage` returns
DMARC_PURGE_ROWS = 2000  # rows of expired DMARC reports deleted per purge

SCHEMA = """
CREATE TABLE IF NOT EXISTS event (
    key TEXT NOT NULL, dim TEXT NOT NULL, ts REAL NOT NULL, member TEXT NOT NULL,
    PRIMARY KEY (key, dim, ts, member)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS seen (
    key TEXT NOT NULL, dim TEXT NOT NULL, member TEXT NOT NULL, ts REAL NOT NULL,
    PRIMARY KEY (key, dim, member)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS seen_age ON seen (key, dim, ts);
CREATE TABLE IF NOT EXISTS tally (
    key TEXT NOT NULL, dim TEXT NOT NULL, per REAL NOT NULL, n INTEGER NOT NULL, edge REAL NOT NULL,
    next REAL, PRIMARY KEY (key, dim, per)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS tally_next ON tally (next);
CREATE TABLE IF NOT EXISTS reserved (
    key TEXT NOT NULL, dim TEXT NOT NULL, member TEXT NOT NULL, txn TEXT NOT NULL, expires REAL NOT NULL,
    PRIMARY KEY (key, txn, dim, member)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS locks (key TEXT PRIMARY KEY, since REAL NOT NULL, reason TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS held (key TEXT NOT NULL, ts REAL NOT NULL, reason TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS held_key ON held (key, ts);
CREATE TABLE IF NOT EXISTS notices (key TEXT NOT NULL, name TEXT NOT NULL, until REAL NOT NULL,
    PRIMARY KEY (key, name)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS dmarc_report (period INTEGER NOT NULL, domain TEXT NOT NULL, rows INTEGER NOT NULL,
    until REAL NOT NULL, PRIMARY KEY (period, domain)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS dmarc_report_until ON dmarc_report (until);
CREATE TABLE IF NOT EXISTS dmarc_row (period INTEGER NOT NULL, domain TEXT NOT NULL, row TEXT NOT NULL,
    count INTEGER NOT NULL, PRIMARY KEY (period, domain, row)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS dmarc_group (period INTEGER NOT NULL, domain TEXT NOT NULL, name TEXT NOT NULL,
    rows INTEGER NOT NULL, PRIMARY KEY (period, domain, name)) WITHOUT ROWID;
"""
Tally = tuple[int, float, float | None]  # n, edge, next


def _table(dimension: Dimension) -> str:
    return "event" if dimension in UNIQUE_PER_TRANSACTION else "seen"


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
        self._lockfiles: dict[str, int] = {}  # the writers' lock: descriptors of this process's own
        self._lockfile_pid = 0
        self._commits = 0
        self._read_lock = threading.Lock()
        self._reader: sqlite3.Connection | None = None
        self._reader_pid = 0
        self._checkpoint_lock = threading.Lock()
        self._checkpointer: sqlite3.Connection | None = None
        self._checkpointer_pid = 0
        self._purged = 0.0

    # --- the connection ---------------------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        # Opened by the process that uses it: a connection must never cross a fork.
        if self._db is None or self._pid != os.getpid():
            # Under the writers' lock: on a new file, journal_mode=WAL and the schema are writes,
            # and SQLite answers a second process making them at once with "database is locked"
            # at once, whatever its busy timeout.
            with self._writer():
                self._db = self._open()
                self._pid = os.getpid()
        return self._db

    def _open(self) -> sqlite3.Connection:
        try:
            db = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")  # WAL: durable at checkpoints, never corrupted
            # No checkpoint inside a commit: one copies the WAL back and fsyncs, tens of
            # milliseconds during which this process's threads and the other workers would wait
            # for the store. _checkpoint does it after the commit, outside the locks.
            db.execute("PRAGMA wal_autocheckpoint=0")
            db.execute("PRAGMA journal_size_limit=67108864")
            db.executescript(SCHEMA)
        except sqlite3.Error as error:
            raise StoreError(f"cannot open {self.path}: {error}{self._hint()}") from None
        return db

    def _hint(self) -> str:
        return (f" (the user the milter runs as must own {self.path.parent} and the files in it, e.g. "
                f"chown -R policy-milter {self.path.parent})")

    def _checkpoint(self) -> None:
        """Copy the WAL back into the database, on a connection of its own, outside this
        process's store lock (its other threads go on reading) but under the writers' lock: a
        checkpoint that a writer appends to meanwhile never completes, and a WAL whose
        checkpoints never complete is never reset (measured: 1.6 GB after 45,000 messages).
        Another thread already at it, or an error (readers busy for longer): next time."""
        if not self._checkpoint_lock.acquire(blocking=False):
            return
        try:
            if self._checkpointer is None or self._checkpointer_pid != os.getpid():
                self._checkpointer = sqlite3.connect(self.path, timeout=CHECKPOINT_WAIT, isolation_level=None,
                                                     check_same_thread=False)
                self._checkpointer_pid = os.getpid()
            with self._writer("checkpoint"):
                # RESTART: waits (CHECKPOINT_WAIT at most) for the readers, so that the next
                # writer starts the WAL again from its beginning (journal_size_limit trims it).
                self._checkpointer.execute("PRAGMA wal_checkpoint(RESTART)")
        except (sqlite3.Error, StoreError):
            pass
        finally:
            self._checkpoint_lock.release()

    def _run(self, work: Callable[[sqlite3.Connection], T], *, write: bool = True) -> T:
        if not write:
            return self._read(work)
        with self._lock:
            try:
                db = self._connection()
                with self._writer(), _immediate(db):
                    result = work(db)
                self._commits += 1
            except sqlite3.Error as error:
                hint = self._hint() if "readonly" in str(error) else ""
                raise StoreError(f"{self.path}: {error}{hint}") from None
            except UnicodeError as error:  # a member with lone surrogates (pymilter's undecodable bytes)
                raise StoreError(f"{self.path}: cannot store {error}") from None
        if self._commits % CHECKPOINT_EVERY == 0:
            self._checkpoint()
        return result

    def _read(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Reads (the lock check at MAIL FROM, `accounts`) on a connection of their own: in WAL
        mode they see the last commit without waiting for a writer, so they never queue behind
        this process's writes, nor those behind the other workers'."""
        with self._read_lock:
            try:
                if self._reader is None or self._reader_pid != os.getpid():
                    self._connection_made()
                    self._reader = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None,
                                                   check_same_thread=False)
                    self._reader_pid = os.getpid()
                return work(self._reader)
            except sqlite3.Error as error:
                raise StoreError(f"{self.path}: {error}") from None
            except UnicodeError as error:
                raise StoreError(f"{self.path}: cannot read {error}") from None

    def _connection_made(self) -> None:
        """The file exists in WAL mode with its schema (made by the writer's connection)."""
        with self._lock:
            self._connection()

    @contextmanager
    def _writer(self, holder: str = "store") -> Iterator[None]:
        """The processes' turn to write, taken before SQLite's own lock. SQLite's busy handler
        sleeps 1, 2, 5, 10... ms between its tries, so two workers writing at once would wait
        milliseconds for a lock held for a tenth of one; this lock is tried again after
        WRITER_POLL seconds, doubling up to WRITER_POLL_MAX, until the store's timeout.
        An flock belongs to an open file, shared by the threads that use it: `holder` names the
        descriptor ("store": the threads under self._lock; "checkpoint": the checkpointer's own)."""
        fd = self._lockfiles.get(holder) if self._lockfile_pid == os.getpid() else None
        if fd is None:
            if self._lockfile_pid != os.getpid():
                self._lockfiles, self._lockfile_pid = {}, os.getpid()  # never the parent's descriptors
            try:
                fd = os.open(f"{self.path}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            except OSError as error:
                raise StoreError(f"cannot open {self.path}.lock: {error.strerror}{self._hint()}") from None
            self._lockfiles[holder] = fd
        deadline, pause = time.monotonic() + self.timeout, WRITER_POLL
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise StoreError(f"{self.path}: another process held the write lock for "
                                     f"{self.timeout:g} s") from None
                time.sleep(pause)
                pause = min(pause * 2, WRITER_POLL_MAX)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)

    def problem(self) -> str | None:
        """Why this process's user could not use the store, or None; opens nothing (`check-policy`,
        and the daemon at start, before its workers fork)."""
        directory = self.path.parent
        try:
            exists = directory.is_dir()
        except OSError as error:
            return f"cannot reach {directory}: {error.strerror}{self._hint()}"
        if not exists:
            return f"{directory} does not exist: make it, owned by the milter's user (install -d -m 0700 -o " \
                   f"policy-milter -g policy-milter {directory})"
        if not os.access(directory, os.W_OK | os.X_OK, effective_ids=True):
            return f"{directory} is not writable by this user{self._hint()}"
        for name in (self.path.name, f"{self.path.name}-wal", f"{self.path.name}-shm", f"{self.path.name}.lock"):
            path = directory / name
            if path.exists() and not os.access(path, os.R_OK | os.W_OK, effective_ids=True):
                return f"{path} is not writable by this user{self._hint()}"
        return None

    def close(self) -> None:
        with self._lock:
            if self._db is not None and self._pid == os.getpid():
                self._db.close()
            if self._lockfile_pid == os.getpid():
                for fd in self._lockfiles.values():
                    os.close(fd)
            self._db, self._lockfiles = None, {}
        with self._checkpoint_lock:
            if self._checkpointer is not None and self._checkpointer_pid == os.getpid():
                self._checkpointer.close()
            self._checkpointer = None
        with self._read_lock:
            if self._reader is not None and self._reader_pid == os.getpid():
                self._reader.close()
            self._reader = None

    # --- the limits -------------------------------------------------------------------------

    def reserve(self, reservation: Reservation, now: float) -> Exceeded | None:
        def work(db: sqlite3.Connection) -> Exceeded | None:
            self._purge(db, now)
            exceeded = self._over(db, reservation, now, exclude_txn=None)
            if exceeded is None:
                # Each RCPT renews the whole transaction's reservation: a slow transaction must not
                # lose its earlier members while its later ones are fresh.
                if reservation.renew:
                    db.execute("UPDATE reserved SET expires = ? WHERE key = ? AND txn = ?",
                               (now + RESERVATION_SECONDS, reservation.key, reservation.txn))
                db.executemany(
                    "INSERT OR IGNORE INTO reserved (key, dim, member, txn, expires) VALUES (?, ?, ?, ?, ?)",
                    [(reservation.key, str(dim), member, reservation.txn, now + RESERVATION_SECONDS)
                     for dim, members in reservation.members.items() for member in members])
            return exceeded

        return self._run(work)

    def commit(self, reservation: Reservation, now: float, recheck: bool = False) -> Exceeded | None:
        def work(db: sqlite3.Connection) -> Exceeded | None:
            key, txn = reservation.key, reservation.txn
            # The reservation goes either way: counted below, or checked again first (any of its
            # members expired: the room may have gone to others meanwhile).
            expiries = [row[0] for row in db.execute("DELETE FROM reserved WHERE key = ? AND txn = ? RETURNING expires",
                                                     (key, txn)).fetchall()]
            if recheck or not expiries or min(expiries) <= now:
                exceeded = self._over(db, reservation, now, exclude_txn=txn)
                if exceeded is not None:
                    return exceeded
            tallies = self._tallies(db, key)
            # Every window of the key's limits; a dimension no limit counts is kept for
            # `accounts show` in a window as long as the longest limit's.
            # ... and every window the key already has for the dimension (a hold limit's, set aside
            # from the check for a held message, counts that message too).
            windows = {dim: sorted({per for (d, per) in _windows(reservation) if d is dim}
                                   | {per for (d, per) in tallies if d is dim}) or [reservation.keep]
                       for dim in reservation.members}
            changed: list[tuple[object, ...]] = []
            members = {dim: tuple(dict.fromkeys(values)) for dim, values in reservation.members.items()}  # once each
            last = self._last_uses(db, key, [(dim, m) for dim, values in members.items()
                                             if dim not in UNIQUE_PER_TRANSACTION for m in values])
            events, seen = [], []
            for dimension, values in members.items():
                dim = str(dimension)
                for per in windows[dimension]:
                    if (dimension, per) not in tallies:
                        tallies[(dimension, per)] = self._count(db, key, dimension, per, now)
                        changed.append((key, dim, per, *tallies[(dimension, per)]))
                if dimension in UNIQUE_PER_TRANSACTION:
                    events += [(key, dim, now, member) for member in values]
                    added = {per: len(values) for per in windows[dimension]}
                else:
                    seen += [(key, dim, member, now) for member in values]
                    # counted again if its window had let it go (or never had it)
                    added = {per: sum(1 for member in values if (used := last.get((dimension, member))) is None
                                      or used <= tallies[(dimension, per)][1]) for per in windows[dimension]}
                for per, count in added.items():
                    n, edge, following = tallies[(dimension, per)]
                    if count:
                        changed.append((key, dim, per, n + count, edge, now if following is None else following))
            db.executemany("INSERT OR IGNORE INTO event (key, dim, ts, member) VALUES (?, ?, ?, ?)", events)
            db.executemany("INSERT INTO seen (key, dim, member, ts) VALUES (?, ?, ?, ?) ON CONFLICT (key, dim, member) "
                           "DO UPDATE SET ts = excluded.ts", seen)
            db.executemany("INSERT OR REPLACE INTO tally (key, dim, per, n, edge, next) VALUES (?, ?, ?, ?, ?, ?)",
                           _last_per_window(changed))
            return None

        return self._run(work)

    def release(self, key: str, txn: str) -> None:
        self._run(lambda db: db.execute("DELETE FROM reserved WHERE key = ? AND txn = ?", (key, txn)))

    @staticmethod
    def _tallies(db: sqlite3.Connection, key: str) -> dict[tuple[Dimension, float], Tally]:
        return {(Dimension(dim), per): (n, edge, following) for dim, per, n, edge, following in db.execute(
            "SELECT dim, per, n, edge, next FROM tally WHERE key = ?", (key,))}

    @staticmethod
    def _count(db: sqlite3.Connection, key: str, dimension: Dimension, per: float, now: float) -> Tally:
        """A window no tally kept yet (a limit added by a reload): counted once, from the rows."""
        start = now - per
        n, following = db.execute(f"SELECT COUNT(*), MIN(ts) FROM {_table(dimension)} "
                                  "WHERE key = ? AND dim = ? AND ts > ?", (key, str(dimension), start)).fetchone()
        return int(n), start, following

    @staticmethod
    def _expire(db: sqlite3.Connection, key: str, dimension: Dimension, per: float, now: float,
                tally: Tally) -> Tally:
        """The window moved to now: subtract the members that left it since its edge."""
        n, edge, following = tally
        start = now - per
        if following is None or following > start:
            return tally  # nobody left
        table, dim = _table(dimension), str(dimension)
        gone = db.execute(f"SELECT COUNT(*) FROM {table} WHERE key = ? AND dim = ? AND ts > ? "
                          "AND ts <= ?", (key, dim, edge, start)).fetchone()[0]
        following = db.execute(f"SELECT MIN(ts) FROM {table} WHERE key = ? AND dim = ? AND ts > ?",
                               (key, dim, start)).fetchone()[0]
        tally = (n - int(gone), start, following)
        db.execute("UPDATE tally SET n = ?, edge = ?, next = ? WHERE key = ? AND dim = ? AND per = ?",
                   (*tally, key, dim, per))
        return tally

    def _over(self, db: sqlite3.Connection, reservation: Reservation, now: float,
              exclude_txn: str | None) -> Exceeded | None:
        """The arithmetic of state/model.py's module doc (tests/state/reference.py writes it plainly),
        at a cost that does not grow with the window."""
        key, txn = reservation.key, exclude_txn or ""
        tallies = self._tallies(db, key)
        reserved: dict[Dimension, set[str]] = {}
        for dim, member in db.execute("SELECT dim, member FROM reserved WHERE key = ? AND expires > ? AND txn != ?",
                                      (key, now, txn)):
            reserved.setdefault(Dimension(dim), set()).add(member)
        distinct = [(dim, m) for dim, values in reservation.members.items() if dim not in UNIQUE_PER_TRANSACTION
                    for m in values]
        distinct += [(dim, m) for dim, values in reserved.items() if dim not in UNIQUE_PER_TRANSACTION for m in values]
        last = self._last_uses(db, key, distinct)
        for (dimension, per), counters in _windows(reservation).items():
            tally = tallies.get((dimension, per))
            tally = (self._expire(db, key, dimension, per, now, tally) if tally is not None
                     else self._count(db, key, dimension, per, now))
            start = now - per

            def in_window(member: str, dimension: Dimension = dimension, start: float = start) -> bool:
                return dimension not in UNIQUE_PER_TRANSACTION and last.get((dimension, member), start) > start

            # a pending domain or client may be in the window already: counted once
            pending = {m for m in reserved.get(dimension, set()) if not in_window(m)}
            current = tally[0] + len(pending)
            adding = sum(1 for member in set(reservation.members.get(dimension, ()))
                         if member not in pending and not in_window(member))
            for counter in counters:
                if adding and current + adding > counter.limit:
                    return Exceeded(counter, current, adding)
        return None

    @staticmethod
    def _last_uses(db: sqlite3.Connection, key: str, pairs: Sequence[tuple[Dimension, str]]
                   ) -> dict[tuple[Dimension, str], float]:
        """The latest use of each (dimension, member) of `pairs` that has one: one query."""
        wanted = list(dict.fromkeys(pairs))
        found: dict[tuple[Dimension, str], float] = {}
        for start in range(0, len(wanted), 400):  # SQLite's variables per statement, with room
            chunk = wanted[start:start + 400]
            values = ", ".join("(?, ?)" for _ in chunk)
            rows = db.execute(f"SELECT dim, member, ts FROM seen WHERE key = ? AND (dim, member) IN "
                              f"(VALUES {values})", (key, *(v for dim, m in chunk for v in (str(dim), m))))
            found.update({(Dimension(dim), member): ts for dim, member, ts in rows})
        return found

    def _purge(self, db: sqlite3.Connection, now: float) -> None:
        """At most PURGE_BATCH windows and their old rows per call, every PURGE_EVERY seconds per
        process: the writers' lock is never held for time in proportion to the number of keys
        (100,000 client keys took 3 s in one go, during which every other worker's store
        operation timed out)."""
        if now - self._purged < PURGE_EVERY:
            return
        self._purged = now
        for key, dim, per, n, edge, following in db.execute(
                "SELECT key, dim, per, n, edge, next FROM tally WHERE next <= ? - per LIMIT ?",
                (now, PURGE_BATCH)).fetchall():
            dimension = Dimension(dim)
            self._expire(db, key, dimension, per, now, (n, edge, following))
            # Only rows every window of the key's dimension has let go (its edge passed them): a
            # wider window that has not moved yet still counts the others, and subtracts them
            # when it does (deleting them first would leave them counted for good).
            edge = db.execute("SELECT MIN(edge) FROM tally WHERE key = ? AND dim = ?", (key, dim)).fetchone()[0]
            db.execute(f"DELETE FROM {_table(dimension)} WHERE key = ? AND dim = ? AND ts <= ?",
                       (key, dim, edge))
        db.execute("DELETE FROM tally WHERE (key, dim, per) IN (SELECT key, dim, per FROM tally "
                   "WHERE n <= 0 AND next IS NULL LIMIT ?)", (PURGE_BATCH,))
        db.execute("DELETE FROM reserved WHERE (key, txn, dim, member) IN (SELECT key, txn, dim, member "
                   "FROM reserved WHERE expires <= ? LIMIT ?)", (now, PURGE_BATCH))
        db.execute("DELETE FROM held WHERE rowid IN (SELECT rowid FROM held WHERE ts <= ? LIMIT ?)",
                   (now - HOLD_KEEP, PURGE_BATCH))
        db.execute("DELETE FROM notices WHERE (key, name) IN (SELECT key, name FROM notices WHERE until <= ? "
                   "LIMIT ?)", (now, PURGE_BATCH))
        _purge_dmarc(db, now)

    # --- locks, holds, notices --------------------------------------------------------------

    def lock(self, key: str, reason: str, now: float) -> None:
        self._run(lambda db: db.execute("INSERT OR IGNORE INTO locks (key, since, reason) VALUES (?, ?, ?)",
                                        (key, now, reason)))

    def lock_info(self, key: str) -> LockInfo | None:
        row = self._run(lambda db: db.execute("SELECT since, reason FROM locks WHERE key = ?", (key,)).fetchone(),
                        write=False)
        return LockInfo(row[0], row[1]) if row else None

    def hold(self, key: str, reason: str, now: float) -> None:
        self._run(lambda db: db.execute("INSERT INTO held (key, ts, reason) VALUES (?, ?, ?)", (key, now, reason)))

    def clear(self, key: str) -> bool:
        def work(db: sqlite3.Connection) -> bool:
            removed = 0
            for table in ("locks", "event", "seen", "tally", "reserved", "held", "notices"):
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
            for dimension in Dimension:
                dim, table = str(dimension), _table(dimension)
                reserved = {m for (m,) in db.execute(
                    "SELECT member FROM reserved WHERE key = ? AND dim = ? AND expires > ?", (key, dim, now))}
                for per in windows:
                    used = {m for (m,) in db.execute(f"SELECT member FROM {table} "
                                                     "WHERE key = ? AND dim = ? AND ts > ?", (key, dim, now - per))}
                    counts[(dimension, per)] = len(used | reserved)
            def reserved_since(dim: Dimension) -> list[tuple[str, float]]:
                # In progress too, as of their reservation.
                return [(m, expires - RESERVATION_SECONDS) for m, expires in db.execute(
                    "SELECT member, expires FROM reserved WHERE key = ? AND dim = ? AND expires > ?",
                    (key, str(dim), now))]

            clients = _newest([*db.execute("SELECT member, ts FROM seen WHERE key = ? AND dim = ?",
                                           (key, str(Dimension.CLIENTS))), *reserved_since(Dimension.CLIENTS)])
            recipients = tuple((recipient_of(m), ts) for m, ts in _newest([*db.execute(
                "SELECT member, ts FROM event WHERE key = ? AND dim = ? ORDER BY ts DESC LIMIT ?",
                (key, str(Dimension.RECIPIENTS), RECENT)), *reserved_since(Dimension.RECIPIENTS)])[:RECENT])
            pending = db.execute("SELECT COUNT(DISTINCT txn) FROM reserved WHERE key = ? AND expires > ?",
                                 (key, now)).fetchone()[0]
            held = tuple(db.execute("SELECT reason, ts FROM held WHERE key = ? ORDER BY ts DESC LIMIT ?",
                                    (key, HELD_SHOWN)))
            row = db.execute("SELECT since, reason FROM locks WHERE key = ?", (key,)).fetchone()
            return Usage(key, counts, clients, recipients, pending, held, LockInfo(row[0], row[1]) if row else None)

        return self._run(work, write=False)

    def keys(self, now: float) -> list[str]:
        def work(db: sqlite3.Connection) -> list[str]:
            rows = db.execute(
                "SELECT key FROM tally WHERE n > 0 UNION SELECT key FROM reserved WHERE expires > ? "
                "UNION SELECT key FROM held UNION SELECT key FROM locks ORDER BY key", (now,))
            return [key for (key,) in rows]

        return self._run(work, write=False)


    # --- DMARC report rows -------------------------------------------------------------------

    def dmarc_record(self, period: int, domain: str, row: str, now: float, max_rows: int, until: float, *,
                     groups: Sequence[tuple[str, int]] = (), max_domains: int = 0) -> bool:
        def work(db: sqlite3.Connection) -> bool:
            self._purge(db, now)
            if db.execute("UPDATE dmarc_row SET count = count + 1 WHERE period = ? AND domain = ? AND row = ?",
                          (period, domain, row)).rowcount:
                return True
            report = db.execute("SELECT rows FROM dmarc_report WHERE period = ? AND domain = ?",
                                (period, domain)).fetchone()
            if report is not None and report[0] >= max_rows:
                return False
            if report is None and max_domains > 0 and db.execute(
                    "SELECT COUNT(*) FROM dmarc_report WHERE period = ?", (period,)).fetchone()[0] >= max_domains:
                return False
            for name, cap in groups:
                held = db.execute("SELECT rows FROM dmarc_group WHERE period = ? AND domain = ? AND name = ?",
                                  (period, domain, name)).fetchone()
                if cap <= 0 or (held is not None and held[0] >= cap):
                    return False
            db.execute("INSERT INTO dmarc_row (period, domain, row, count) VALUES (?, ?, ?, 1)", (period, domain, row))
            db.execute("INSERT INTO dmarc_report (period, domain, rows, until) VALUES (?, ?, 1, ?) "
                       "ON CONFLICT (period, domain) DO UPDATE SET rows = rows + 1, until = MAX(until, excluded.until)",
                       (period, domain, until))
            for name in dict(groups):
                db.execute("INSERT INTO dmarc_group (period, domain, name, rows) VALUES (?, ?, ?, 1) "
                           "ON CONFLICT (period, domain, name) DO UPDATE SET rows = rows + 1", (period, domain, name))
            return True

        return self._run(work)

    def dmarc_pending(self, before: int, now: float | None = None) -> list[tuple[int, str]]:
        when = time.time() if now is None else now

        def work(db: sqlite3.Connection) -> list[tuple[int, str]]:
            _purge_dmarc(db, when)
            return [(int(period), domain) for period, domain in db.execute(
                "SELECT period, domain FROM dmarc_report WHERE period < ? AND until > ? ORDER BY period, domain",
                (before, when))]

        return self._run(work)

    def dmarc_rows(self, period: int, domain: str) -> list[tuple[str, int]]:
        return self._run(lambda db: [(row, int(count)) for row, count in db.execute(
            "SELECT row, count FROM dmarc_row WHERE period = ? AND domain = ? ORDER BY row", (period, domain))],
                         write=False)

    def dmarc_forget(self, period: int, domain: str) -> None:
        def work(db: sqlite3.Connection) -> None:
            db.execute("DELETE FROM dmarc_row WHERE period = ? AND domain = ?", (period, domain))
            db.execute("DELETE FROM dmarc_report WHERE period = ? AND domain = ?", (period, domain))
            db.execute("DELETE FROM dmarc_group WHERE period = ? AND domain = ?", (period, domain))

        self._run(work)


def _purge_dmarc(db: sqlite3.Connection, now: float) -> None:
    """Reports past their `until`: at most DMARC_PURGE_ROWS of their rows per call (a report may
    have max_rows of them); a report's line goes with its last row, and is never listed meanwhile."""
    budget = DMARC_PURGE_ROWS
    for period, domain in db.execute("SELECT period, domain FROM dmarc_report WHERE until <= ? ORDER BY until "
                                     "LIMIT ?", (now, PURGE_BATCH)).fetchall():
        gone = db.execute("DELETE FROM dmarc_row WHERE (period, domain, row) IN (SELECT period, domain, row "
                          "FROM dmarc_row WHERE period = ? AND domain = ? LIMIT ?)", (period, domain, budget)).rowcount
        if gone < budget:
            db.execute("DELETE FROM dmarc_report WHERE period = ? AND domain = ?", (period, domain))
            db.execute("DELETE FROM dmarc_group WHERE period = ? AND domain = ?", (period, domain))
        budget -= gone
        if budget <= 0:
            return


def _newest(members: list[tuple[str, float]]) -> tuple[tuple[str, float], ...]:
    """Each member once, at its latest time, newest first (ties in name order)."""
    latest: dict[str, float] = {}
    for member, ts in members:
        latest[member] = max(ts, latest.get(member, ts))
    return tuple(sorted(latest.items(), key=lambda item: (-item[1], item[0])))


def _last_per_window(rows: list[tuple[object, ...]]) -> list[tuple[object, ...]]:
    """One row per (key, dim, per): the last written wins."""
    return list({row[:3]: row for row in rows}.values())


@contextmanager
def _immediate(db: sqlite3.Connection) -> Iterator[None]:
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
