"""The Redis store (policymilter/state/redisstore.py) against a real redis-server on loopback:
the whole store contract (tests/state/contract.py), exactness across processes and across two
"hosts", a server stopped or hung mid-test, odd logins, bounded data, and the URL check."""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import redis

from policymilter.state import Counter, Dimension, Store, StoreError, Usage, open_store, store_problem
from policymilter.state.redisstore import RedisStore
from policymilter.state.sqlitestore import SqliteStore
from tests.integration.redis_server import RedisServer
from tests.state.contract import CONTRACT, HOUR, dmarc_race, messages, race, transaction

pytestmark = pytest.mark.integration

TIMEOUT = 1.0  # the store's timeout in the down/hung tests
M, R, D, C = Dimension.MESSAGES, Dimension.RECIPIENTS, Dimension.DOMAINS, Dimension.CLIENTS


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with RedisServer(tmp_path_factory.mktemp("redis")) as running:
        yield running


@pytest.fixture
def url(server: RedisServer) -> str:
    """The shared server's URL, its database emptied first."""
    server.flush()
    return server.url


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A server of this test's own, to stop or pause."""
    with RedisServer(tmp_path / "redis") as running:
        yield running


@pytest.mark.parametrize("rule", CONTRACT, ids=[rule.__name__ for rule in CONTRACT])
def test_redis_contract(rule: Callable[[Store], None], url: str) -> None:
    store = open_store(url)
    try:
        rule(store)
    finally:
        store.close()


def test_redis_exact_across_processes(url: str) -> None:
    assert race(lambda: open_store(url)) == 20


def test_redis_dmarc_counts_add_up_across_processes(url: str) -> None:
    assert dmarc_race(lambda: open_store(url)) == (200, [("a", 100), ("b", 100)])


def test_two_hosts_share_one_count(url: str) -> None:
    hosts = (RedisStore(url), RedisStore(url))  # two milters, each with its own client
    counters = (messages(5),)
    granted = 0
    for n in range(10):
        store = hosts[n % 2]
        reservation = transaction(f"t{n}", f"r{n}@x.test", counters=counters)
        if store.reserve(reservation, 1000.0 + n) is None and store.commit(reservation, 1000.0 + n) is None:
            granted += 1
    assert granted == 5
    assert [host.usage("login:alice", 1010.0, (HOUR,)).counts[(M, HOUR)] for host in hosts] == [5, 5]
    for host in hosts:
        host.close()


def test_exact_across_threads(url: str) -> None:
    store = RedisStore(url)  # one client, its pool shared by the threads (the milter's workers)

    def sender(worker: int) -> int:
        granted = 0
        for n in range(10):
            reservation = transaction(f"w{worker}-{n}", "a@x.test", counters=(messages(20),))
            granted += store.reserve(reservation, 50.0) is None and store.commit(reservation, 50.0) is None
        return granted

    with ThreadPoolExecutor(8) as pool:
        assert sum(pool.map(sender, range(8))) == 20
    store.close()


def test_database_out_of_range(server: RedisServer) -> None:
    store = RedisStore(f"redis://127.0.0.1:{server.port}/99")  # the URL is fine; this server has 16
    with pytest.raises(StoreError, match="DB index is out of range"):
        store.lock_info("login:alice")


def test_other_keys_in_the_database(url: str, server: RedisServer) -> None:
    with redis.Redis(port=server.port) as client:
        client.set("pm:{not hex}:x", "1")
        client.set("pm:{", "1")
        client.set("someone:else", "1")
    store = RedisStore(url)
    store.lock("login:alice", "r", 1.0)
    assert store.keys(2.0) == ["login:alice"]
    store.close()


def test_opened_again_after_fork(url: str) -> None:
    store = RedisStore(url)
    assert store.reserve(transaction("t", "a@x.test"), 1.0) is None
    parent = store._connection
    pid = os.fork()
    if pid == 0:  # the child must not use the parent's connection
        ok = store.reserve(transaction("u", "a@x.test"), 1.0) is None and store._connection is not parent
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert store.usage("login:alice", 1.0, (HOUR,)).pending == 2  # and the parent's still works
    store.close()


def test_server_stopped_then_back(own_server: RedisServer) -> None:
    store = RedisStore(own_server.url, timeout=TIMEOUT)
    counters = (messages(2),)
    assert store.reserve(transaction("t0", "a@x.test", counters=counters), 10.0) is None
    own_server.stop()
    started = time.monotonic()
    with pytest.raises(StoreError, match=rf"^{own_server.url}: .*(Connection refused|Error 111)"):
        store.reserve(transaction("t1", "a@x.test", counters=counters), 11.0)
    assert time.monotonic() - started < 3 * TIMEOUT
    own_server.start()
    # No persistence: the restarted server is empty, so t0's reservation is gone; the next call
    # works on a new connection and the limit counts again from there.
    for n in (1, 2):
        assert store.reserve(transaction(f"t{n}", "a@x.test", counters=counters), 12.0) is None
    refused = store.reserve(transaction("t3", "a@x.test", counters=counters), 12.0)
    assert refused is not None and refused.count == 2
    store.close()


def test_server_hung_then_back(own_server: RedisServer) -> None:
    store = RedisStore(own_server.url, timeout=TIMEOUT)
    counters = (messages(2),)
    assert store.reserve(transaction("t0", "a@x.test", counters=counters), 10.0) is None
    own_server.pause()
    try:
        started = time.monotonic()
        with pytest.raises(StoreError, match=rf"^{own_server.url}: .*[Tt]imeout"):
            store.reserve(transaction("t1", "a@x.test", counters=counters), 11.0)
        elapsed = time.monotonic() - started
    finally:
        own_server.resume()
    assert 0.9 * TIMEOUT <= elapsed < 3 * TIMEOUT
    # The server was only hung, so it kept t0; t1's command was already in its socket when the
    # client gave up, and is carried out when the server resumes (a reservation the caller never
    # got: the milter releases it when the transaction ends, or it expires).
    assert store.commit(transaction("t0", "a@x.test", counters=counters), 12.0) is None
    usage = store.usage("login:alice", 12.0, (HOUR,))
    assert usage.counts[(M, HOUR)] in (1, 2)
    store.release("login:alice", "t1")
    assert store.reserve(transaction("t2", "a@x.test", counters=counters), 12.0) is None
    assert store.reserve(transaction("t3", "a@x.test", counters=counters), 12.0) is not None
    store.close()


ODD_LOGINS = ("a b", "x}y{", "{braces}", "ünïcødé 郵便", "z" * 300, "semi|colon:", "bad\udcffbyte")


@pytest.mark.parametrize("login", ODD_LOGINS,
                         ids=["space", "braces", "tag", "unicode", "300", "separator", "undecodable"])
def test_odd_logins(login: str, url: str) -> None:
    store = RedisStore(url)
    key = f"login:{login}"
    counters = (messages(1),)
    first = transaction("t0", "Rcpt@x.test", key=key, client="2001:db8::1", counters=counters)
    assert store.reserve(first, 100.0) is None and store.commit(first, 100.0) is None
    assert store.reserve(transaction("t1", "a@x.test", key=key, counters=counters), 101.0) is not None
    store.lock(key, f"locked {login}", 101.0)
    store.hold(key, f"held {login}", 101.0)
    assert store.notify_once(key, login, 101.0, HOUR) is True
    assert store.notify_once(key, login, 102.0, HOUR) is False
    usage = store.usage(key, 102.0, (HOUR,))
    assert usage.counts[(M, HOUR)] == 1 and usage.clients[0][0] == "2001:db8::1"
    assert [r for r, _ in usage.recipients] == ["Rcpt@x.test"]
    assert usage.lock is not None and usage.lock.reason == f"locked {login}" and usage.lock.since == 101.0
    assert [r for r, _ in usage.held] == [f"held {login}"]
    assert store.keys(102.0) == [key]
    assert store.clear(key) is True and store.keys(102.0) == []
    store.close()


def test_data_is_bounded(url: str, server: RedisServer) -> None:
    store = RedisStore(url)
    keep = 600.0
    old = transaction("old", "a@x.test", counters=(messages(10, per=keep),))
    assert store.reserve(old, 1000.0) is None and store.commit(old, 1000.0) is None
    with redis.Redis(port=server.port) as client:
        names = client.keys("pm:*")
        assert names and all(0 < client.ttl(name) <= keep + 900 for name in names)
        # A write after the window trims what fell out of it, and expired reservations.
        left = transaction("left", "b@x.test", counters=(messages(10, per=keep),))
        assert store.reserve(left, 1000.0 + 900.0) is None  # never committed or released
        late = transaction("new", "c@x.test", counters=(messages(10, per=keep),))
        assert store.reserve(late, 1000.0 + 900.0 + 901.0) is None
        assert client.keys("pm:*:used:*") == []  # an emptied set is no key at all
        [resv] = client.keys("pm:*:resv:messages")
        assert client.zrange(resv, 0, -1) == [b"new|new"]
    assert store.keys(1000.0 + 900.0 + 901.0) == ["login:alice"]
    assert store.keys(1000.0 + 900.0 + 901.0 + 901.0) == []  # the reservation expired, nothing used
    store.close()


def test_reserve_commit_rate(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Not a limit, a figure: reserve + commit pairs per second from one process."""
    store = RedisStore(url)
    counters = (messages(100_000), messages(100_000, per=86400.0))
    count = 2000
    started = time.perf_counter()
    for n in range(count):
        reservation = transaction(f"t{n}", f"r{n}@x.test", f"s{n}@y.test", counters=counters)
        assert store.reserve(reservation, 1000.0 + n / 1000) is None
        assert store.commit(reservation, 1000.0 + n / 1000) is None
    elapsed = time.perf_counter() - started
    with capsys.disabled():
        print(f"\nredis reserve+commit: {count} pairs in {elapsed:.2f}s = {count / elapsed:.0f}/s "
              f"(one process, 2 counters, 2 recipients, the window holding up to {count} messages)")
    store.close()


@pytest.mark.parametrize(("url", "problem"), [
    ("redis://127.0.0.1:6379/0", None),
    ("rediss://redis.example.org:6380/3", None),
    ("redis://[::1]:6379/0", None),
    ("redis://:secret@127.0.0.1:6379/0", None),
    ("redis://127.0.0.1/0", None),
    ("redis://h:6379/x", "the database must be a number, e.g. redis://127.0.0.1:6379/0"),
    ("redis://h:6379/0/1", "the database must be a number"),
    ("redis://:6379/0", "the host is missing"),
    ("redis://h:port/0", "the port must be a number"),
    ("redis://h:70000/0", "the port must be a number"),
    ("redis://h:6379/0?timeout=1", "not supported"),
    ("redis://127.0.0.1:6379/99", None),  # the server says how many it has
])
def test_redis_urls(url: str, problem: str | None) -> None:
    found = store_problem(url)
    assert (found is None) if problem is None else (found is not None and problem in found and url in found)


def test_password_not_in_messages(own_server: RedisServer) -> None:
    problem = store_problem("redis://:hunter2@h:6379/x")
    assert problem is not None and "hunter2" not in problem and "redis://h:6379/x" in problem
    with redis.Redis(port=own_server.port) as client:
        client.config_set("requirepass", "right")
    store = RedisStore(own_server.url.replace("redis://", "redis://:hunter2@"), timeout=TIMEOUT)
    assert store.shown == own_server.url
    with pytest.raises(StoreError, match="password") as raised:
        store.lock_info("login:alice")
    assert "hunter2" not in str(raised.value)
    good = RedisStore(own_server.url.replace("redis://", "redis://:right@"), timeout=TIMEOUT)
    assert good.lock_info("login:alice") is None
    good.close()


def test_same_answers_as_sqlite(url: str, tmp_path: Path) -> None:
    """A seeded random run of reserves, commits and releases (time jumping past windows and
    reservation expiry) gets the same answer from Redis as from the reference SQLite store."""
    stores = (SqliteStore(str(tmp_path / "state.db")), RedisStore(url))
    seen = same_answers(random.Random(13), stores)
    assert seen["reserve refused"] > 100 and seen["commit refused"] > 50  # not only Nones compared
    assert seen["usage"] > 100
    for store in stores:
        store.close()


def same_answers(rng: random.Random, stores: tuple[Store, Store], steps: int = 1500) -> dict[str, int]:
    """Drive both stores alike; assert each answer is the same; what was compared, by kind."""
    seen: dict[str, int] = {}
    policies = {  # per key: its counters (so its keep is fixed)
        "login:a": (messages(3, per=300.0), Counter("rcpt", R, 5, 600.0), Counter("dom", D, 2, 600.0)),
        "login:b": (messages(2, per=120.0), Counter("clients", C, 2, 900.0)),
    }
    rcpts: dict[tuple[str, str], list[str]] = {}
    generation = [0] * 12
    now = 10_000.0
    for step in range(steps):
        now += rng.choice((0.0, 0.5, 3.0, 40.0, 130.0, 950.0)) if step % 7 else 0.0
        key = rng.choice(tuple(policies))
        slot = rng.randrange(12)
        txn = f"t{slot}-{generation[slot]}"  # ids are never reused (model.UNIQUE_PER_TRANSACTION)
        match rng.choices(("reserve", "commit", "release", "usage"), weights=(5, 3, 1, 1))[0]:
            case "reserve" | "commit" as operation:
                have = rcpts.setdefault((key, txn), [])
                rcpt = f"{rng.choice('abcdef')}@{rng.choice(('x', 'y', 'z'))}.test"
                if (operation == "reserve" or not have) and rcpt not in have:  # the check dedupes them
                    have.append(rcpt)
                reservation = transaction(txn, *have, key=key, client=f"192.0.2.{rng.randrange(4)}",
                                          counters=policies[key])
                answers = [getattr(store, operation)(reservation, now) for store in stores]
                kind = f"{operation} {'refused' if answers[0] else 'granted'}"
                if operation == "commit":
                    rcpts.pop((key, txn), None)
                    generation[slot] += 1
            case "release":
                answers = [store.release(key, txn) for store in stores]
                kind = "release"
                rcpts.pop((key, txn), None)
                generation[slot] += 1
            case _:
                keep = max(c.per for c in policies[key])
                windows = (60.0, *(c.per for c in policies[key]))  # none longer than keep
                answers = [_comparable(store.usage(key, now, windows), policies[key], now - keep) for store in stores]
                kind = "usage"
        assert answers[0] == answers[1], f"step {step}: {key} {txn} at {now}"
        seen[kind] = seen.get(kind, 0) + 1
    assert stores[0].keys(now) == stores[1].keys(now)
    return seen


def _comparable(usage: Usage, counters: tuple[Counter, ...], oldest: float) -> tuple[object, ...]:
    # SQLite keeps a dimension's members only as long as its longest limit (Redis: as long as the
    # key's longest), so a longer window of that dimension is left out; and it deletes old members
    # once a minute (Redis at each write), so lists are compared within the window.
    keep = max(c.per for c in counters)
    widest = {dim: max((c.per for c in counters if c.dimension is dim), default=keep) for dim in Dimension}
    counts = {(dim, per): n for (dim, per), n in usage.counts.items() if per <= widest[dim]}
    return (counts, usage.pending, sorted(c for c, ts in usage.clients if ts > oldest),
            sorted(r for r, ts in usage.recipients if ts > oldest), usage.lock, usage.held)


def test_missing_redis_server_names_the_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # /usr/bin/redis-server out of sight
    with pytest.raises(RuntimeError, match=r"apt-get install -y redis-server"):
        RedisServer(tmp_path / "redis")
