"""What every state store must do (tests/unit/test_state.py runs it on SQLite and on a real Redis)."""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Callable

from policymilter.state import Counter, Dimension, Reservation, Store

M, R, D, C = Dimension.MESSAGES, Dimension.RECIPIENTS, Dimension.DOMAINS, Dimension.CLIENTS
HOUR = 3600.0


def messages(limit: int, per: float = HOUR) -> Counter:
    return Counter(f"login {per:g}s", M, limit, per)


def transaction(txn: str, *rcpts: str, key: str = "login:alice", client: str = "192.0.2.1",
                counters: tuple[Counter, ...] = ()) -> Reservation:
    return Reservation(key, txn, {M: (txn,), R: tuple(f"{txn}|{r}" for r in rcpts),
                                  D: tuple(sorted({r.rsplit("@", 1)[1] for r in rcpts})), C: (client,)},
                       counters, keep=max((c.per for c in counters), default=HOUR))


def limit_exact(store: Store) -> None:
    counters = (messages(3),)
    now = 1_000_000.0
    for n in range(3):
        assert store.reserve(transaction(f"t{n}", "a@x.test", counters=counters), now) is None
    refused = store.reserve(transaction("t3", "a@x.test", counters=counters), now)
    assert refused is not None and refused.counter.dimension is M and refused.count == 3
    # A second recipient of a reserved transaction adds no message.
    assert store.reserve(transaction("t0", "a@x.test", "b@y.test", counters=counters), now) is None
    for n in range(3):
        assert store.commit(transaction(f"t{n}", "a@x.test", counters=counters), now + 1) is None
    assert store.reserve(transaction("t4", "a@x.test", counters=counters), now + 2) is not None
    # The window slides: an hour after the commits there is room again.
    assert store.reserve(transaction("t5", "a@x.test", counters=counters), now + 1 + HOUR) is None


def release_frees(store: Store) -> None:
    counters = (messages(1),)
    now = 2_000_000.0
    assert store.reserve(transaction("a", "a@x.test", counters=counters), now) is None
    assert store.reserve(transaction("b", "a@x.test", counters=counters), now) is not None
    store.release("login:alice", "a")
    assert store.reserve(transaction("b", "a@x.test", counters=counters), now) is None


def distinct_domains_and_clients(store: Store) -> None:
    counters = (Counter("d", D, 2, HOUR), Counter("c", C, 2, HOUR))
    now = 3_000_000.0
    for n, (rcpt, client) in enumerate((("a@x.test", "192.0.2.1"), ("b@x.test", "192.0.2.1"),
                                        ("c@y.test", "192.0.2.2"))):
        reservation = transaction(f"t{n}", rcpt, client=client, counters=counters)
        assert store.reserve(reservation, now) is None
        assert store.commit(reservation, now) is None
    refused = store.reserve(transaction("t9", "d@z.test", counters=counters), now)
    assert refused is not None and refused.counter.name == "d" and refused.count == 2
    refused = store.reserve(transaction("t9", "d@x.test", client="192.0.2.3", counters=counters), now)
    assert refused is not None and refused.counter.name == "c"
    assert store.reserve(transaction("t9", "d@y.test", client="192.0.2.2", counters=counters), now) is None


def expired_reservation_checked_again(store: Store) -> None:
    counters = (messages(1),)
    now = 4_000_000.0
    late = transaction("late", "a@x.test", counters=counters)
    assert store.reserve(late, now) is None
    after = now + 10_000  # the reservation has expired: another transaction got the room
    other = transaction("other", "a@x.test", counters=counters)
    assert store.reserve(other, after) is None and store.commit(other, after) is None
    refused = store.commit(late, after + 1)
    assert refused is not None and refused.counter.dimension is M


def locks_holds_clear(store: Store) -> None:
    now = 5_000_000.0
    assert store.lock_info("login:bob") is None
    store.lock("login:bob", "messages 21 > 20 per 3600s", now)
    info = store.lock_info("login:bob")
    assert info is not None and info.reason == "messages 21 > 20 per 3600s" and info.since == now
    store.hold("login:bob", "held: messages", now)
    reservation = transaction("t", "Zed@x.test", key="login:bob", counters=(messages(5),))
    assert store.reserve(reservation, now) is None and store.commit(reservation, now) is None
    usage = store.usage("login:bob", now + 1, (HOUR,))
    assert usage.lock is not None and [r for r, _ in usage.held] == ["held: messages"]
    assert usage.counts[(M, HOUR)] == 1 and [r for r, _ in usage.recipients] == ["Zed@x.test"]
    assert [c for c, _ in usage.clients] == ["192.0.2.1"]
    assert "login:bob" in store.keys(now + 1)
    assert store.clear("login:bob") is True
    assert store.lock_info("login:bob") is None and "login:bob" not in store.keys(now + 1)
    assert store.clear("login:bob") is False


def notify_once(store: Store) -> None:
    now = 6_000_000.0
    assert store.notify_once("login:carol", "login 3600s", now, HOUR) is True
    assert store.notify_once("login:carol", "login 3600s", now + 10, HOUR) is False
    assert store.notify_once("login:carol", "other", now + 10, HOUR) is True
    assert store.notify_once("login:carol", "login 3600s", now + HOUR + 1, HOUR) is True


DAY = 86400
KEEP = 7 * DAY


def record(store: Store, period: int, domain: str, row: str, now: float | None = None, max_rows: int = 100) -> bool:
    when = period + 10.0 if now is None else now
    return store.dmarc_record(period, domain, row, when, max_rows, period + DAY + KEEP)


def dmarc_counts(store: Store) -> None:
    period = 100 * DAY
    for row, times in (("b-row", 3), ("a-row", 2), ("ünïcode", 1)):
        for _ in range(times):
            assert record(store, period, "example.test", row) is True
    record(store, period, "other.test", "a-row")
    record(store, period + DAY, "example.test", "a-row")
    assert store.dmarc_rows(period, "example.test") == [("a-row", 2), ("b-row", 3), ("ünïcode", 1)]
    assert store.dmarc_rows(period, "other.test") == [("a-row", 1)]
    assert store.dmarc_rows(period + DAY, "example.test") == [("a-row", 1)]
    assert store.dmarc_rows(period, "nobody.test") == []
    assert store.keys(period + 10.0) == []  # report rows are no rate-limit key


def dmarc_pending_closed_oldest_first(store: Store) -> None:
    first = 200 * DAY
    for period, domain in ((first + 2 * DAY, "a.test"), (first + DAY, "b.test"), (first, "z.test"),
                           (first, "a.test"), (first + DAY, "a.test")):
        record(store, period, domain, "row")
    now = first + 2 * DAY + 60
    assert store.dmarc_pending(first + 2 * DAY, now) == [
        (first, "a.test"), (first, "z.test"), (first + DAY, "a.test"), (first + DAY, "b.test")]
    assert store.dmarc_pending(first, now) == []
    assert store.dmarc_pending(first + 3 * DAY, now)[-1] == (first + 2 * DAY, "a.test")


def dmarc_forget_removes(store: Store) -> None:
    period = 300 * DAY
    record(store, period, "a.test", "one")
    record(store, period, "a.test", "two")
    record(store, period, "b.test", "one")
    store.dmarc_forget(period, "a.test")
    assert store.dmarc_rows(period, "a.test") == []
    assert store.dmarc_pending(period + DAY, period + DAY) == [(period, "b.test")]
    store.dmarc_forget(period, "a.test")  # again: nothing to do, no error
    # Recorded again after a forget: a new report starting at 1.
    record(store, period, "a.test", "one")
    assert store.dmarc_rows(period, "a.test") == [("one", 1)]


def dmarc_cap_holds(store: Store) -> None:
    period = 400 * DAY
    assert [record(store, period, "a.test", row, max_rows=2) for row in ("r1", "r2", "r3", "r1", "r2", "r3")] == [
        True, True, False, True, True, False]
    assert store.dmarc_rows(period, "a.test") == [("r1", 2), ("r2", 2)]
    assert record(store, period, "b.test", "r3", max_rows=2) is True  # per report: another domain has room


def dmarc_group_caps_hold(store: Store) -> None:
    period = 450 * DAY
    fail, ip = ("fail", 3), ("src:192.0.2.1", 2)

    def counted(row: str, *groups: tuple[str, int]) -> bool:
        return store.dmarc_record(period, "a.test", row, period + 10.0, 100, period + DAY + KEEP, groups=groups)

    # row, its groups -> counted: a group full refuses a new row, never a known one
    assert [counted(row, *groups) for row, groups in (
        ("f1", (fail, ip)), ("f2", (fail, ip)), ("f3", (fail, ip)), ("f1", (fail, ip)),  # ip full after f2
        ("g1", (fail, ("src:192.0.2.9", 2))), ("g2", (fail, ("src:192.0.2.9", 2))),  # fail full after g1
        ("p1", ()), ("p2", ()),  # rows of no group: only max_rows applies
    )] == [True, True, False, True, True, False, True, True]
    assert store.dmarc_rows(period, "a.test") == [("f1", 2), ("f2", 1), ("g1", 1), ("p1", 1), ("p2", 1)]
    store.dmarc_forget(period, "a.test")  # the groups go with the rows
    assert counted("f3", fail, ip) and counted("f4", fail, ip) and not counted("f5", fail, ip)


def dmarc_domain_cap_holds(store: Store) -> None:
    period = 460 * DAY

    def counted(domain: str, row: str = "r") -> bool:
        return store.dmarc_record(period, domain, row, period + 10.0, 100, period + DAY + KEEP, max_domains=2)

    assert [counted(domain, row) for domain, row in (
        ("a.test", "r"), ("b.test", "r"), ("c.test", "r"), ("a.test", "r2"), ("b.test", "r"))] == [
        True, True, False, True, True]
    assert store.dmarc_record(period + DAY, "c.test", "r", period + 10.0, 100, period + 2 * DAY + KEEP,
                              max_domains=2)  # per period
    store.dmarc_forget(period, "a.test")
    assert counted("c.test")


def dmarc_expired_dropped(store: Store) -> None:
    period = 500 * DAY
    record(store, period, "old.test", "row")
    record(store, period + 6 * DAY, "new.test", "row")
    after = period + DAY + KEEP  # old.test's until
    assert store.dmarc_pending(period + 7 * DAY, after) == [(period + 6 * DAY, "new.test")]
    assert store.dmarc_rows(period, "old.test") == []
    assert store.dmarc_rows(period + 6 * DAY, "new.test") == [("row", 1)]


CONTRACT: tuple[Callable[[Store], None], ...] = (
    limit_exact, release_frees, distinct_domains_and_clients, expired_reservation_checked_again,
    locks_holds_clear, notify_once, dmarc_counts, dmarc_pending_closed_oldest_first, dmarc_forget_removes,
    dmarc_cap_holds, dmarc_group_caps_hold, dmarc_domain_cap_holds, dmarc_expired_dropped)


def _racer(open_store: Callable[[], Store], worker: int, tries: int, start: float,
           results: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    store = open_store()
    while time.time() < start:
        time.sleep(0.001)
    granted = 0
    for n in range(tries):
        txn = f"w{worker}-{n}"
        reservation = transaction(txn, f"r{n}@x.test", key="login:race", counters=(messages(20),))
        if store.reserve(reservation, time.time()) is None and store.commit(reservation, time.time()) is None:
            granted += 1
    results.put(granted)


def race(open_store: Callable[[], Store], processes: int = 4, tries: int = 15) -> int:
    """Processes reserving and committing at once: how many transactions the limit of 20 let through."""
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    start = time.time() + 0.3
    workers = [context.Process(target=_racer, args=(open_store, n, tries, start, results)) for n in range(processes)]
    for worker in workers:
        worker.start()
    granted = sum(results.get(timeout=60) for _ in workers)
    for worker in workers:
        worker.join(timeout=30)
    return granted


def _dmarc_writer(open_store: Callable[[], Store], rounds: int, start: float,
                  results: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    store = open_store()
    while time.time() < start:
        time.sleep(0.001)
    # Every writer sends a, b, c in turn: a and b are always the first two distinct rows, so a
    # cap of 2 keeps exactly those, whatever the interleaving.
    counted = sum(record(store, 600 * DAY, "race.test", row, max_rows=2) for _ in range(rounds) for row in "abc")
    results.put(counted)


def dmarc_race(open_store: Callable[[], Store], processes: int = 4,
               rounds: int = 25) -> tuple[int, list[tuple[str, int]]]:
    """Processes recording the same report at once: how many records were counted, and the rows."""
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    start = time.time() + 0.3
    workers = [context.Process(target=_dmarc_writer, args=(open_store, rounds, start, results))
               for _ in range(processes)]
    for worker in workers:
        worker.start()
    counted = sum(results.get(timeout=60) for _ in workers)
    for worker in workers:
        worker.join(timeout=30)
    return counted, open_store().dmarc_rows(600 * DAY, "race.test")
