"""The SQLite store stays exact: processes interleaving every step (reserve, release, commit, a
commit with recheck, a commit after losing its reservation), and against a plain log of uses
with rechecks and purges in two windows per dimension (kept from the second attack review of
issue 13, which found the purge deleting rows a wider window still counted)."""

from __future__ import annotations

import multiprocessing
import random
import sqlite3
import time
from pathlib import Path

from policymilter.state import Counter, Dimension, Reservation, open_store
from policymilter.state.sqlitestore import SqliteStore

M, R, D, C = Dimension.MESSAGES, Dimension.RECIPIENTS, Dimension.DOMAINS, Dimension.CLIENTS
HOUR = 3600.0


def txn(name: str, *rcpts: str, counters: tuple[Counter, ...]) -> Reservation:
    return Reservation("login:k", name, {M: (name,), R: tuple(f"{name}|{r}" for r in rcpts),
                                         D: tuple(sorted({r.rsplit("@", 1)[1] for r in rcpts})), C: ("192.0.2.1",)},
                       counters, keep=HOUR)


# --- processes at once, every step of a transaction interleaved -------------------------------

LIMITS = (Counter("h", M, 20, HOUR), Counter("h", R, 30, HOUR), Counter("h", D, 6, HOUR))


def _worker(url: str, worker: int, start: float, seed: int, out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    store = open_store(url)
    rng = random.Random(seed)
    while time.time() < start:
        time.sleep(0.001)
    committed: list[Reservation] = []
    for n in range(40):
        name = f"w{worker}-{n}"
        rcpts: list[str] = []
        reserved = ok = False
        for step in range(rng.randint(1, 3)):  # RCPTs; one refused is left out of the envelope
            candidate = [*rcpts, f"u{worker}-{n}-{step}@d{rng.randint(0, 9)}.test"]
            if store.reserve(txn(name, *candidate, counters=LIMITS), time.time()) is None:
                rcpts, reserved = candidate, True
        if not reserved:
            continue
        choice = rng.random()
        final = txn(name, *rcpts, counters=LIMITS)
        if choice < 0.25:
            store.release("login:k", name)
        elif choice < 0.5:  # a store failure met earlier: the commit checks again
            ok = store.commit(final, time.time(), recheck=True) is None
        elif choice < 0.6:  # a commit whose reservation a purge or `accounts clear` removed
            store.release("login:k", name)
            ok = store.commit(final, time.time()) is None
        else:
            ok = store.commit(final, time.time()) is None
        if ok:
            committed.append(final)
    out.put([(r.txn, r.members[R], r.members[D]) for r in committed])


def test_processes_interleaving_every_step_stay_exact(tmp_path: Path) -> None:
    """4 processes, 160 transactions of 1-3 RCPTs each, released, committed, committed with a
    recheck, or committed after losing their reservation: the committed messages, recipients and
    distinct domains never pass the limits, and the store's tallies say what its rows say."""
    url = f"sqlite:{tmp_path}/state.db"
    context = multiprocessing.get_context("fork")
    out = context.Queue()
    start = time.time() + 0.3
    workers = [context.Process(target=_worker, args=(url, n, start, 1000 + n, out)) for n in range(4)]
    for worker in workers:
        worker.start()
    committed = [row for _ in workers for row in out.get(timeout=120)]
    for worker in workers:
        worker.join(timeout=30)
    messages = len(committed)
    recipients = sum(len(r) for _, r, _ in committed)
    domains = {d for _, _, ds in committed for d in ds}
    assert messages <= 20 and recipients <= 30 and len(domains) <= 6, (messages, recipients, sorted(domains))
    assert messages >= 5  # the race really ran
    usage = open_store(url).usage("login:k", time.time(), (HOUR,))
    assert usage.counts[(M, HOUR)] == messages and usage.counts[(R, HOUR)] == recipients
    assert usage.counts[(D, HOUR)] == len(domains)
    with sqlite3.connect(tmp_path / "state.db") as db:
        tallies = {(dim, per): n for dim, per, n in db.execute("SELECT dim, per, n FROM tally WHERE key = 'login:k'")}
    assert tallies[("messages", HOUR)] == messages and tallies[("recipients", HOUR)] == recipients
    assert tallies[("domains", HOUR)] == len(domains)


# --- one store against a plain log: rechecks, commits without a reservation, the purge ---------

# One window per dimension: with two (test_finding_purge_loses_what_leaves_the_wider_window)
# the comparison fails within a few steps.
WINDOWS = (Counter("short", M, 3, 10.0), Counter("short", R, 5, 10.0), Counter("long", D, 3, 40.0),
           Counter("long", C, 2, 40.0))


def test_store_counts_as_a_plain_log_with_rechecks_and_purges(tmp_path: Path) -> None:
    """200 random plans of 60 steps (time moves 0-12 s a step, so purges run and windows slide;
    never as far as a reservation's expiry): every reserve and every commit, rechecked or not,
    reserved or not, refuses exactly when model.over on a plain log does."""
    from tests.state.reference import over

    rng = random.Random(13)
    refused = admitted = 0
    for plan in range(200):
        store = SqliteStore(str(tmp_path / f"p{plan}.db"))
        used: dict[Dimension, dict[str, float]] = {d: {} for d in Dimension}
        pending: dict[str, dict[Dimension, set[str]]] = {}
        envelopes: dict[str, list[str]] = {}
        now = 1000.0
        generation = dict.fromkeys(range(6), 0)  # a transaction id is never used again (uuids)
        for _ in range(60):
            now += rng.choice((0.0, 0.5, 1.0, 3.0, 9.0, 12.0))
            slot_number = rng.randint(0, 5)
            name = f"t{slot_number}-{generation[slot_number]}"
            client = rng.choice(("192.0.2.1", "192.0.2.2", "192.0.2.3"))
            new = rng.sample(["a@x", "b@x", "c@y", "d@z", "e@w"], rng.randint(1, 2))
            rcpts = sorted({*envelopes.get(name, []), *new})
            members = {M: (name,), R: tuple(f"{name}|{r}" for r in rcpts),
                       D: tuple(sorted({r.split("@")[1] for r in rcpts})), C: (client,)}
            reservation = Reservation("login:k", name, members, WINDOWS, keep=40.0)

            def others(exclude: str, pending: dict[str, dict[Dimension, set[str]]] = pending
                       ) -> dict[Dimension, set[str]]:
                merged: dict[Dimension, set[str]] = {d: set() for d in Dimension}
                for txn_name, reserved in pending.items():
                    if txn_name != exclude:
                        for dim, values in reserved.items():
                            merged[dim] |= values
                return merged

            action = rng.choice(("reserve", "reserve", "commit", "recheck", "release"))
            if action == "reserve":
                expected = over(WINDOWS, members, used, others(""), now)
                got = store.reserve(reservation, now)
                assert (expected is None) == (got is None), (plan, expected, got)
                if got is None:
                    envelopes[name] = rcpts
                    slot = pending.setdefault(name, {d: set() for d in Dimension})
                    for dim, values in members.items():
                        slot[dim] |= set(values)
                    admitted += 1
                else:
                    refused += 1
            elif action in ("commit", "recheck"):
                if name in pending:  # what it reserved, as the milter commits it
                    members = {dim: tuple(sorted(values)) for dim, values in pending[name].items()}
                    reservation = Reservation("login:k", name, members, WINDOWS, keep=40.0)
                check = action == "recheck" or name not in pending
                expected = over(WINDOWS, members, used, others(name), now) if check else None
                got = store.commit(reservation, now, recheck=action == "recheck")
                assert (expected is None) == (got is None), (plan, action, expected, got)
                if got is None:
                    for dim, values in members.items():
                        for value in values:
                            used[dim][value] = now
                pending.pop(name, None)
                envelopes.pop(name, None)
                generation[slot_number] += 1
            else:
                store.release("login:k", name)
                pending.pop(name, None)
                envelopes.pop(name, None)
                generation[slot_number] += 1
        store.close()
    assert refused > 100 and admitted > 100, (refused, admitted)
