"""What the state store keeps (rate limits, DMARC report rows), and the arithmetic of a sliding window.

A limit counts *members* of one dimension under one key (`login:alice`, `client:192.0.2.7`):
messages (one member per transaction), recipients (one per normalised recipient of a
transaction), recipient domains and client addresses (distinct values). Each member the store
keeps carries the time it was last used; a limit of N over `per` seconds counts the distinct
members used in the last `per` seconds plus those reserved by transactions still in progress.

Why a sliding log and not GCRA: GCRA with a burst of N lets N through at once and then one more
every per/N seconds, so up to N + per/(per/N) - 1 = 2N - 1 in one window; the issue asks for
exactly N in *any* window. A log of members (bounded: a refused transaction adds nothing, and
members older than the longest window expire) gives that exactly, and it is what `accounts
show` needs anyway (the clients and recipients of the window).

Reservations make it exact under concurrency: the recipient command of a transaction reserves
its members (checked and added in one atomic step of the store); end of message commits them
(they become "used now"); a transaction refused, aborted or cut releases them. A reservation
left by a worker that died expires after the store's reservation time; a commit that finds its
reservation expired checks the limits again before it counts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol


class Dimension(StrEnum):
    MESSAGES = "messages"
    RECIPIENTS = "recipients"
    DOMAINS = "domains"
    CLIENTS = "clients"


# Members made of the transaction id (the message, its recipients): new in every transaction,
# never used before it commits. Domains and clients recur and are counted once per window.
UNIQUE_PER_TRANSACTION = frozenset({Dimension.MESSAGES, Dimension.RECIPIENTS})


# How long a reservation lasts without its commit (a worker killed mid-transaction): longer than
# any transaction Postfix lets run (DATA within smtpd_timeout per read, the milter's 300 s).
RESERVATION_SECONDS = 900.0
# How many recipients `accounts show` and the notification list.
RECENT = 20
SEPARATOR = "|"  # transaction id | recipient, in recipient members (ids never contain it)


class StoreError(Exception):
    """The store could not be read or written (file, permissions, server down, timeout)."""


@dataclass(frozen=True)
class Counter:
    """One limit on one dimension: at most `limit` members in any `per` seconds."""

    name: str  # the limit's label, e.g. "login 3600s" (replies, logs, metrics)
    dimension: Dimension
    limit: int
    per: float


@dataclass(frozen=True)
class Exceeded:
    """A reservation refused: which counter, and how many members it already had."""

    counter: Counter
    count: int  # members in the window before this transaction's new ones
    adding: int  # the new members this reservation would have added


@dataclass(frozen=True)
class LockInfo:
    since: float
    reason: str


@dataclass(frozen=True)
class Usage:
    """One key's state, for `accounts` and the notification."""

    key: str
    counts: Mapping[tuple[Dimension, float], int]  # (dimension, window seconds) -> members in it
    clients: tuple[tuple[str, float], ...] = ()  # (address, last used), newest first
    recipients: tuple[tuple[str, float], ...] = ()  # (recipient, when), newest first, at most RECENT
    pending: int = 0  # transactions reserved, not committed
    held: tuple[tuple[str, float], ...] = ()  # (reason, when) of held messages, newest first
    lock: LockInfo | None = None


@dataclass(frozen=True)
class Reservation:
    """What a transaction adds under one key, and the counters it must fit."""

    key: str
    txn: str
    members: Mapping[Dimension, tuple[str, ...]] = field(default_factory=dict)
    counters: tuple[Counter, ...] = ()
    keep: float = 0.0  # seconds members are kept: the longest window of any limit on this key
    renew: bool = True  # the transaction reserved before (a later RCPT): its earlier members' time is renewed


def recipient_of(member: str) -> str:
    return member.split(SEPARATOR, 1)[1] if SEPARATOR in member else member


class Store(Protocol):
    """The state behind the limits: one per process (opened after fork), safe across threads."""

    url: str
    timeout: float

    def reserve(self, reservation: Reservation, now: float) -> Exceeded | None:
        """Atomically: refuse if a counter would go past its limit, else reserve the members."""
        ...

    def commit(self, reservation: Reservation, now: float, recheck: bool = False) -> Exceeded | None:
        """The transaction was accepted: its reserved members are used now. If its reservation
        expired meanwhile, or `recheck` (a step of the transaction could not reach the store, so
        what it reserved may be short of what it sends), the limits are checked again for the
        whole transaction (None: counted; else not counted)."""
        ...

    def release(self, key: str, txn: str) -> None:
        """The transaction will not be accepted: forget what it reserved."""
        ...

    def lock(self, key: str, reason: str, now: float) -> None: ...

    def lock_info(self, key: str) -> LockInfo | None: ...

    def hold(self, key: str, reason: str, now: float) -> None:
        """Record a message held for review (listed by `accounts`; never counted)."""
        ...

    def clear(self, key: str) -> bool:
        """Forget the key: its lock, members, reservations and held records (True if any)."""
        ...

    def usage(self, key: str, now: float, windows: Sequence[float]) -> Usage: ...

    def keys(self, now: float) -> list[str]:
        """Every key with state (members in their window, a reservation, a hold or a lock)."""
        ...

    def notify_once(self, key: str, name: str, now: float, period: float) -> bool:
        """True for the first call per (key, name) in `period` seconds (notification mails)."""
        ...

    # DMARC aggregate report rows (dmarcreports/rows.py): one counter per distinct row text, per
    # report domain and period (the period's start, epoch seconds). Rows are opaque text here.
    # Bounded two ways: at most `max_rows` distinct rows per report (a message whose row would be
    # one more is not counted: dmarc_record answers False, and the dmarc check counts it in its
    # metrics and log), and a report not sent by `until` is dropped with its rows. A new row may
    # also name groups, each with its own cap of distinct rows in the report (the dmarc check's
    # failing rows, and those of one source: what a forger can vary cannot fill the report), and
    # a period holds at most `max_domains` reports (what a wildcard _dmarc cannot multiply).

    def dmarc_record(self, period: int, domain: str, row: str, now: float, max_rows: int, until: float, *,
                     groups: Sequence[tuple[str, int]] = (), max_domains: int = 0) -> bool:
        """Atomically count one message of `row` in `domain`'s report for `period` (a new row
        starts at 1): True, or False when the row is new and the report has `max_rows` already,
        or one of its `groups` (name, cap) has `cap` distinct rows in this report already, or the
        report is new and the period has `max_domains` reports (0: no such cap). A new row
        counts once in each of its groups. `until` (same clock as `now`): when the report is
        dropped if it was not sent by then."""
        ...

    def dmarc_pending(self, before: int, now: float | None = None) -> list[tuple[int, str]]:
        """The (period, domain) pairs with rows, of periods starting before `before`, oldest first
        (then by domain). Reports past their `until` as of `now` (default: the clock) are dropped
        first, in batches, and never listed."""
        ...

    def dmarc_rows(self, period: int, domain: str) -> list[tuple[str, int]]:
        """The rows of one report and their counts, in row order ([] for a report not kept)."""
        ...

    def dmarc_forget(self, period: int, domain: str) -> None:
        """Remove one report's rows (after the report was accepted, or given up on)."""
        ...

    def problem(self) -> str | None:
        """Why the store could not be used by this process's user, or None (opens nothing lasting)."""
        ...

    def close(self) -> None: ...
