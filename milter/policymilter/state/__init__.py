"""The store behind the limits and the DMARC report rows: SQLite on one host, Redis for several.

`open_store(url)` makes the store a policy names (`state.store`): `sqlite:/path/state.db`
or `redis://HOST:PORT/DB` (`rediss://` for TLS). Nothing is opened until first use, and each
process opens its own connection: the daemon's parent loads the policy, its workers fork and
use it.
"""

from __future__ import annotations

from policymilter.state.model import (
    RESERVATION_SECONDS,
    Counter,
    Dimension,
    Exceeded,
    LockInfo,
    Reservation,
    Store,
    StoreError,
    Usage,
)
from policymilter.state.sqlitestore import SqliteStore

__all__ = ["RESERVATION_SECONDS", "Counter", "Dimension", "Exceeded", "LockInfo", "Reservation", "Store",
           "StoreError", "Usage", "open_store", "store_problem"]


def store_problem(url: str) -> str | None:
    """Why `url` names no store this milter can use, or None (the policy loader's check)."""
    if url.startswith("sqlite:"):
        path = url.removeprefix("sqlite:")
        if not path.startswith("/"):
            return f"{url!r}: the SQLite file must be an absolute path, e.g. \"sqlite:/var/lib/policy-milter/state.db\""
        return None
    if url.startswith(("redis://", "rediss://")):
        from policymilter.state.redisstore import url_problem

        return url_problem(url)
    return f"{url!r}: expected \"sqlite:/PATH\" or \"redis://HOST:PORT/DB\""


def open_store(url: str, timeout: float = 2.0) -> Store:
    """The store `url` names (already validated by store_problem); connects on first use."""
    if url.startswith("sqlite:"):
        return SqliteStore(url.removeprefix("sqlite:"), timeout=timeout)
    from policymilter.state.redisstore import RedisStore

    return RedisStore(url, timeout=timeout)
