"""The state stores against one contract (tests/state/contract.py): SQLite here, Redis in
tests/integration/test_state_redis.py against a real redis-server."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from policymilter.state import Store, StoreError, open_store, store_problem
from policymilter.state.sqlitestore import SqliteStore
from tests.state.contract import CONTRACT, race, transaction


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


def test_sqlite_opened_again_after_fork(tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path / "state.db"))
    assert store.reserve(transaction("t", "a@x.test"), 1.0) is None
    pid = os.fork()
    if pid == 0:  # the child must not use the parent's connection
        code = 0 if store.reserve(transaction("u", "a@x.test"), 1.0) is None else 1
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


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
