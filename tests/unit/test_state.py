"""The state stores against one contract (tests/state/contract.py): SQLite here, Redis in
tests/integration/test_state_redis.py against a real redis-server."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policymilter.state import Counter, Dimension, Exceeded, Reservation, Store, StoreError, open_store, store_problem
from policymilter.state.sqlitestore import SqliteStore
from tests.state.contract import CONTRACT, dmarc_race, race, transaction
from tests.state.reference import over


@pytest.mark.parametrize("rule", CONTRACT, ids=[rule.__name__ for rule in CONTRACT])
def test_sqlite_contract(rule: Callable[[Store], None], tmp_path: Path) -> None:
    store = open_store(f"sqlite:{tmp_path}/state.db")
    try:
        rule(store)
    finally:
        store.close()


def test_sqlite_exact_across_processes(tmp_path: Path) -> None:
    url = f"sqlite:{tmp_path}/state.db"
    assert race(lambda: open_store(url)) == 20


def test_sqlite_dmarc_counts_add_up_across_processes(tmp_path: Path) -> None:
    url = f"sqlite:{tmp_path}/state.db"
    assert dmarc_race(lambda: open_store(url)) == (200, [("a", 100), ("b", 100)])


def test_sqlite_opened_again_after_fork(tmp_path: Path) -> None:
    """As in the daemon: the parent makes the store (the policy names it) and never uses it; each
    forked worker opens its own connection and the writes of both land in one file."""
    store = SqliteStore(str(tmp_path / "state.db"))
    children = []
    for name in ("u", "v"):
        pid = os.fork()
        if pid == 0:
            os._exit(0 if store.reserve(transaction(name, "a@x.test"), 1.0) is None else 1)
        children.append(pid)
    assert [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in children] == [0, 0]
    assert store.usage("login:alice", 1.0, (3600.0,)).pending == 2


def test_sqlite_unwritable_is_a_store_error(tmp_path: Path) -> None:
    directory = tmp_path / "ro"
    directory.mkdir()
    store = open_store(f"sqlite:{directory}/missing/state.db")
    with pytest.raises(StoreError, match="cannot open"):
        store.reserve(transaction("t", "a@x.test"), 1.0)


@pytest.mark.parametrize(("url", "problem"), [
    ("sqlite:/var/lib/policy-milter/state.db", None),
    ("sqlite:state.db", "absolute path"),
    ("redis://127.0.0.1:6379/0", None),
    ("redis://127.0.0.1:6379/x", "database"),
    ("memcached://x", "expected"),
])
def test_store_urls(url: str, problem: str | None) -> None:
    found = store_problem(url)
    assert (found is None) if problem is None else (found is not None and problem in found)


# --- the SQLite arithmetic against the reference (model.over on a plain log) ------------------

WINDOWS = (Counter("short", Dimension.MESSAGES, 3, 10.0), Counter("short", Dimension.RECIPIENTS, 5, 10.0),
           Counter("long", Dimension.MESSAGES, 6, 40.0), Counter("long", Dimension.DOMAINS, 3, 40.0),
           Counter("long", Dimension.CLIENTS, 2, 40.0))
steps = st.lists(st.tuples(st.sampled_from(["reserve", "commit", "release"]), st.integers(0, 5),
                           st.floats(0.0, 15.0), st.lists(st.sampled_from(["a@x", "b@x", "c@y", "d@z", "e@w"]),
                                                          min_size=1, max_size=3),
                           st.sampled_from(["192.0.2.1", "192.0.2.2", "192.0.2.3"])), max_size=40)


class Reference:
    """The limits as model.over defines them, on a log kept in memory."""

    def __init__(self) -> None:
        self.used: dict[Dimension, dict[str, float]] = {d: {} for d in Dimension}
        self.pending: dict[str, Reservation] = {}

    def _pending(self, exclude: str = "") -> dict[Dimension, set[str]]:
        members: dict[Dimension, set[str]] = {d: set() for d in Dimension}
        for txn, reservation in self.pending.items():
            if txn != exclude:
                for dim, values in reservation.members.items():
                    members[dim].update(values)
        return members

    def reserve(self, reservation: Reservation, now: float) -> Exceeded | None:
        exceeded = over(reservation.counters, reservation.members, self.used, self._pending(), now)
        if exceeded is None:
            merged = dict(self.pending[reservation.txn].members) if reservation.txn in self.pending else {}
            for dim, values in reservation.members.items():
                merged[dim] = tuple(sorted({*merged.get(dim, ()), *values}))
            self.pending[reservation.txn] = Reservation(reservation.key, reservation.txn, merged)
        return exceeded

    def commit(self, reservation: Reservation, now: float) -> Exceeded | None:
        if reservation.txn not in self.pending:
            exceeded = over(reservation.counters, reservation.members, self.used, self._pending(reservation.txn), now)
            if exceeded is not None:
                return exceeded
        for dim, values in reservation.members.items():
            for value in values:
                self.used[dim][value] = now
        self.pending.pop(reservation.txn, None)
        return None

    def release(self, txn: str) -> None:
        self.pending.pop(txn, None)


OUTCOMES = {True: 0, False: 0}  # admitted, refused: both must happen (test_reference_saw_both)


@settings(max_examples=150, deadline=None, derandomize=True)
@given(steps)
def test_sqlite_counts_as_the_reference(tmp_path_factory: pytest.TempPathFactory, plan: list) -> None:
    """Reservations, commits and releases at increasing times: the SQLite store (tallies moved
    window by window) refuses and admits exactly what model.over says on a plain log."""
    store = SqliteStore(str(tmp_path_factory.mktemp("ref") / "state.db"))
    reference = Reference()
    now = 1_000.0
    envelopes: dict[str, list[str]] = {}
    try:
        for action, txn_number, advance, rcpts, client in plan:
            now += advance
            txn = f"t{txn_number}"
            rcpts = sorted({*envelopes.get(txn, []), *rcpts})
            reservation = Reservation("login:k", txn, {
                Dimension.MESSAGES: (txn,), Dimension.RECIPIENTS: tuple(f"{txn}|{r}" for r in rcpts),
                Dimension.DOMAINS: tuple(sorted({r.split("@")[1] for r in rcpts})), Dimension.CLIENTS: (client,)},
                WINDOWS, keep=40.0)
            if action == "reserve":  # a first or a further RCPT of the transaction
                envelopes[txn] = rcpts
                expected, got = reference.reserve(reservation, now), store.reserve(reservation, now)
                assert (expected is None) == (got is None), (expected, got)
                OUTCOMES[got is None] += 1
                if got is not None:
                    assert expected is not None and (got.counter, got.count) == (expected.counter, expected.count)
            elif action == "commit" and txn in reference.pending:
                full = Reservation("login:k", txn, reference.pending[txn].members, WINDOWS, keep=40.0)
                assert store.commit(full, now) is None and reference.commit(full, now) is None
                envelopes.pop(txn, None)
            elif action == "release":
                store.release("login:k", txn)
                reference.release(txn)
                envelopes.pop(txn, None)
    finally:
        store.close()


def test_reference_saw_both(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The comparison above met refusals as well as admissions."""
    if not any(OUTCOMES.values()):  # run alone (-k): run the comparison first
        test_sqlite_counts_as_the_reference(tmp_path_factory)
    assert OUTCOMES[True] > 50 and OUTCOMES[False] > 50, OUTCOMES


def test_sqlite_purge_works_in_bounded_batches(tmp_path: Path) -> None:
    """Old windows of many keys are tidied PURGE_BATCH at a time (the writers' lock is never held
    for time in proportion to the number of keys), and all of them in the end."""
    from policymilter.state import sqlitestore

    store = SqliteStore(str(tmp_path / "state.db"))
    counters = (Counter("m", Dimension.MESSAGES, 5, 10.0),)
    for n in range(3 * sqlitestore.PURGE_BATCH):
        reservation = transaction(f"t{n}", "a@x.test", key=f"client:192.0.2.{n}", counters=counters)
        assert store.reserve(reservation, 100.0) is None and store.commit(reservation, 100.0) is None

    def windows_left() -> int:
        return store._run(lambda db: db.execute("SELECT COUNT(*) FROM tally WHERE n > 0").fetchone()[0])

    start = windows_left()  # 4 a key: the message window, and recipients, domains, clients kept beside it
    assert start == 4 * 3 * sqlitestore.PURGE_BATCH
    later = 100.0 + sqlitestore.PURGE_EVERY * 10
    for step in range(1, 4):  # each purge (one per PURGE_EVERY) takes one batch
        store.reserve(transaction(f"p{step}", "a@x.test", key="login:other", counters=counters),
                      later + step * sqlitestore.PURGE_EVERY)
        assert windows_left() == start - step * sqlitestore.PURGE_BATCH
    store.close()
