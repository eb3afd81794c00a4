"""The state store in Redis, shared by several hosts: `redis://HOST:PORT/DB` (`rediss://` for TLS).

Same semantics as sqlitestore.py (the reference); every update that reads before it writes
runs in one server-side Lua script (EVALSHA), so a check-and-reserve is atomic across every
worker of every host. Each script names every key it touches in KEYS, and all of one key's
Redis keys share one hash slot, so the layout also works on a cluster.

Layout, for a key K (`login:alice`) whose UTF-8 bytes in hex are H (a login may hold any byte
but NUL, braces included, which would break the hash tag; hex cannot):

    pm:{H}:used:DIM   ZSET  member -> when it was last used (committed)
    pm:{H}:resv:DIM   ZSET  "TXN|member" -> when the reservation expires
    pm:{H}:keep       STRING  seconds members are kept (the longest window), for `keys()`
    pm:{H}:lock       STRING  "SINCE|reason" (set if absent; only `clear` removes it)
    pm:{H}:held       ZSET  "RANDOM|reason" -> when (a week of them)
    pm:{H}:notices    HASH  notification name -> until when it is not sent again

DMARC report rows, all under one hash tag (a report is one key; the index another, in the
same slot, so that a script can update both):

    pm:{dmarc}:rows:PERIOD:D  HASH  row text -> messages (D: the report domain's UTF-8 in hex)
    pm:{dmarc}:pending        ZSET  "PERIOD|domain" -> when the report is dropped unsent
    pm:{dmarc}:groups:PERIOD:D  HASH  group name -> distinct rows (Store.dmarc_record's groups)
    pm:{dmarc}:domains:PERIOD   SET   the period's report domains (its max_domains cap)

A new row checks the report's HLEN against the cap in the same script that adds it; the hash
expires at its `until` (a relative EXPIRE on the caller's clock, like the others), and
dmarc_record/dmarc_pending trim the index of those past theirs. `dmarc` is no hex, so `keys()`
passes them by.

DIM is messages, recipients, domains or clients. Every write trims members older than `keep` and
expired reservations, and sets the keys it wrote to expire `keep` + RESERVATION_SECONDS later,
so the data stays the size of one window's traffic and an idle key vanishes by itself. There
is no global index (it would sit in another slot and cost every write a second key):
`keys()`, for `accounts list` and not on the mail path, SCANs `pm:{*}:*`.

Times are the caller's clock (`now`), as with SQLite: they travel as full-precision strings
(Python's repr) and Lua compares them with tonumber; Lua never formats a number back into a
string (its %.14g would round them). Redis's own expiry only bounds the data, which is also why
a notice is "until" in a hash field checked by a script rather than SET NX EX.

For the server: `maxmemory-policy noeviction` (an evicted set is a limit forgotten). A call that
times out on a hung server may still be carried out when the server resumes (a reservation the
caller never got back): it expires after RESERVATION_SECONDS, or the transaction's release
removes it.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar
from urllib.parse import SplitResult, unquote, urlsplit

import redis
from redis.backoff import NoBackoff
from redis.commands.core import Script
from redis.retry import Retry

from policymilter.state.model import (
    RECENT,
    RESERVATION_SECONDS,
    SEPARATOR,
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
DIMS = tuple(Dimension)  # the order of the used/resv keys in every script's KEYS
HOLD_KEEP = 7 * 86400.0  # held-message records: a week, as in sqlitestore
PREFIX = b"pm:"
DMARC = PREFIX + b"{dmarc}:"
DMARC_PENDING = DMARC + b"pending"
DEFAULT_PORT = 6379
EXAMPLE = "redis://127.0.0.1:6379/0"

# Shared by reserve and commit: `over` of model.py, on the keys. KEYS[1..4] used, KEYS[5..8]
# reservations (DIMS order), KEYS[9] keep. ARGV: now, reservation expiry, trim (now - keep), ttl,
# keep, txn, then the counters (count; dimension 1-4, limit, window start), then the members
# (for each dimension: count, members).
_PRELUDE = f"local SEP = '{SEPARATOR}'" + """
local now_s, expires, trim, ttl, keep, txn = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local now = tonumber(now_s)
local counters, members, pos = {}, {}, 8
for i = 1, tonumber(ARGV[7]) do
  counters[i] = {d = tonumber(ARGV[pos]), limit = tonumber(ARGV[pos + 1]), start = ARGV[pos + 2]}
  pos = pos + 3
end
for d = 1, 4 do
  local list = {}
  for j = 1, tonumber(ARGV[pos]) do list[j] = ARGV[pos + j] end
  pos = pos + 1 + #list
  members[d] = list
end

-- members reserved by unexpired reservations of transactions other than `exclude`
local function pending(rkey, exclude)
  local set = {}
  for _, e in ipairs(redis.call('ZRANGEBYSCORE', rkey, '(' .. now_s, '+inf')) do
    local i = string.find(e, SEP, 1, true)
    if i and string.sub(e, 1, i - 1) ~= exclude then set[string.sub(e, i + 1)] = true end
  end
  return set
end

-- the first counter the new members take past its limit: {index, count, adding}, or false
local function over(exclude)
  local cache = {}
  for i, c in ipairs(counters) do
    local p = cache[c.d]
    if not p then p = pending(KEYS[4 + c.d], exclude); cache[c.d] = p end
    local used, start = KEYS[c.d], tonumber(c.start)
    local function recent(m)
      local s = redis.call('ZSCORE', used, m)
      return s and tonumber(s) > start
    end
    local current = redis.call('ZCOUNT', used, '(' .. c.start, '+inf')
    for m in pairs(p) do
      if not recent(m) then current = current + 1 end
    end
    local adding, seen = 0, {}
    for _, m in ipairs(members[c.d]) do
      if not seen[m] then
        seen[m] = true
        if not p[m] and not recent(m) then adding = adding + 1 end
      end
    end
    if adding > 0 and current + adding > c.limit then return {i - 1, current, adding} end
  end
  return false
end

local function trim_all()
  for d = 1, 4 do
    redis.call('ZREMRANGEBYSCORE', KEYS[4 + d], '-inf', now_s)
    redis.call('ZREMRANGEBYSCORE', KEYS[d], '-inf', trim)
  end
end

local function touch()
  for k = 1, 8 do redis.call('EXPIRE', KEYS[k], ttl) end
  redis.call('SET', KEYS[9], keep, 'EX', ttl)
end
"""

_RESERVE = _PRELUDE + """
trim_all()
local exceeded = over(nil)
if not exceeded then
  -- each RCPT renews the whole transaction's reservation (a slow one keeps its earlier members)
  local prefix = txn .. SEP
  for d = 1, 4 do
    local all = redis.call('ZRANGE', KEYS[4 + d], 0, -1)
    for _, entry in ipairs(all) do
      if string.sub(entry, 1, #prefix) == prefix then redis.call('ZADD', KEYS[4 + d], 'XX', expires, entry) end
    end
    for _, m in ipairs(members[d]) do redis.call('ZADD', KEYS[4 + d], 'NX', expires, txn .. SEP .. m) end
  end
end
touch()
return exceeded
"""

_COMMIT = _PRELUDE + """
-- alive only if every member of the reservation still is (else the room may have gone to others)
local found, expired, prefix = false, false, txn .. SEP
for d = 1, 4 do
  local all = redis.call('ZRANGE', KEYS[4 + d], 0, -1, 'WITHSCORES')
  for j = 1, #all, 2 do
    if string.sub(all[j], 1, #prefix) == prefix then
      found = true
      if tonumber(all[j + 1]) <= now then expired = true end
      redis.call('ZREM', KEYS[4 + d], all[j])
    end
  end
end
local alive = found and not expired
trim_all()
if not alive then
  local exceeded = over(txn)
  if exceeded then touch(); return exceeded end
end
for d = 1, 4 do
  for _, m in ipairs(members[d]) do redis.call('ZADD', KEYS[d], now_s, m) end
end
touch()
return false
"""

# KEYS: the four reservation sets; ARGV: txn
_RELEASE = f"local prefix = ARGV[1] .. '{SEPARATOR}'" + """
for k = 1, #KEYS do
  for _, e in ipairs(redis.call('ZRANGE', KEYS[k], 0, -1)) do
    if string.sub(e, 1, #prefix) == prefix then redis.call('ZREM', KEYS[k], e) end
  end
end
return 0
"""

# KEYS: the notices hash; ARGV: name, now, until, ttl
_NOTIFY = """
local now = tonumber(ARGV[2])
local until_s = redis.call('HGET', KEYS[1], ARGV[1])
if until_s and tonumber(until_s) > now then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
local fields = redis.call('HGETALL', KEYS[1])
for j = 1, #fields, 2 do
  if tonumber(fields[j + 1]) <= now then redis.call('HDEL', KEYS[1], fields[j]) end
end
if redis.call('TTL', KEYS[1]) < tonumber(ARGV[4]) then redis.call('EXPIRE', KEYS[1], ARGV[4]) end
return 1
"""

# Whether a key has state, as sqlitestore's keys() counts it. KEYS: used x4, resv x4, keep, lock,
# held; ARGV: now, oldest hold kept (now - a week)
_ALIVE = """
local now = tonumber(ARGV[1])
if redis.call('EXISTS', KEYS[10]) == 1 then return 1 end
if redis.call('ZCOUNT', KEYS[11], '(' .. ARGV[2], '+inf') > 0 then return 1 end
for d = 1, 4 do
  if redis.call('ZCOUNT', KEYS[4 + d], '(' .. ARGV[1], '+inf') > 0 then return 1 end
end
local keep = tonumber(redis.call('GET', KEYS[9]) or '')
if keep then
  for d = 1, 4 do
    local newest = redis.call('ZRANGE', KEYS[d], -1, -1, 'WITHSCORES')
    if newest[2] and tonumber(newest[2]) > now - keep then return 1 end
  end
end
return 0
"""

# KEYS: the report's hash, the pending index, the report's groups, the period's domains;
# ARGV: row, max_rows, index member, until, now, ttl, max_domains, domain, then (group, cap) pairs
_DMARC_RECORD = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then
  redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
  return 1
end
local rows = redis.call('HLEN', KEYS[1])
if rows >= tonumber(ARGV[2]) then return 0 end
if rows == 0 and tonumber(ARGV[7]) > 0 and redis.call('SISMEMBER', KEYS[4], ARGV[8]) == 0
   and redis.call('SCARD', KEYS[4]) >= tonumber(ARGV[7]) then return 0 end
for i = 9, #ARGV, 2 do
  local cap = tonumber(ARGV[i + 1])
  if cap <= 0 or tonumber(redis.call('HGET', KEYS[3], ARGV[i]) or '0') >= cap then return 0 end
end
redis.call('HSET', KEYS[1], ARGV[1], 1)
if redis.call('TTL', KEYS[1]) < tonumber(ARGV[6]) then redis.call('EXPIRE', KEYS[1], ARGV[6]) end
if #ARGV >= 9 then
  for i = 9, #ARGV, 2 do redis.call('HINCRBY', KEYS[3], ARGV[i], 1) end
  if redis.call('TTL', KEYS[3]) < tonumber(ARGV[6]) then redis.call('EXPIRE', KEYS[3], ARGV[6]) end
end
redis.call('SADD', KEYS[4], ARGV[8])
if redis.call('TTL', KEYS[4]) < tonumber(ARGV[6]) then redis.call('EXPIRE', KEYS[4], ARGV[6]) end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[5])
local until_s = redis.call('ZSCORE', KEYS[2], ARGV[3])
if not until_s or tonumber(until_s) < tonumber(ARGV[4]) then redis.call('ZADD', KEYS[2], ARGV[4], ARGV[3]) end
return 1
"""


def url_problem(url: str) -> str | None:
    """Why `url` is not a Redis URL this store can use, or None."""
    try:
        _parse(url)
    except ValueError as error:
        return f"{_without_password(url)!r}: {error}"
    return None


def _without_password(url: str) -> str:
    # the password never goes into logs and error messages
    scheme, sep, rest = url.partition("://")
    netloc, slash, path = rest.partition("/")
    return scheme + sep + netloc.rpartition("@")[2] + slash + path


def _parse(url: str) -> SplitResult:
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss"):
        raise ValueError(f"expected redis://HOST:PORT/DB (rediss:// for TLS), e.g. {EXAMPLE}")
    if parts.query or parts.fragment:
        raise ValueError(f"options after '?' or '#' are not supported: write only redis://HOST:PORT/DB, e.g. {EXAMPLE}")
    if not parts.hostname:
        raise ValueError(f"the host is missing, e.g. {EXAMPLE}")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"the port must be a number from 1 to 65535, e.g. {EXAMPLE}") from None
    if port == 0:
        raise ValueError(f"the port must be a number from 1 to 65535, e.g. {EXAMPLE}")
    db = parts.path.removeprefix("/")
    if db and not (db.isascii() and db.isdigit()):
        raise ValueError(f"the database must be a number, e.g. {EXAMPLE}")
    return parts


def _b(text: str) -> bytes:
    # surrogatepass: any str the milter holds (undecodable bytes arrive as surrogates) round-trips
    return text.encode("utf-8", "surrogatepass")


def _s(data: bytes) -> str:
    return data.decode("utf-8", "surrogatepass")


def _f(value: float) -> str:
    return repr(float(value))  # shortest string that reads back as the same double


class _Keys:
    """The Redis key names of one state key."""

    def __init__(self, key: str) -> None:
        tag = PREFIX + b"{" + _b(key).hex().encode() + b"}:"
        self.used = [tag + b"used:" + dim.value.encode() for dim in DIMS]
        self.resv = [tag + b"resv:" + dim.value.encode() for dim in DIMS]
        self.keep = tag + b"keep"
        self.lock = tag + b"lock"
        self.held = tag + b"held"
        self.notices = tag + b"notices"

    def limits(self) -> list[bytes]:
        return [*self.used, *self.resv, self.keep]

    def all(self) -> list[bytes]:
        return [*self.used, *self.resv, self.lock, self.held, self.notices]


class _Connection:
    """One process's client and its scripts (redis-py's pool is thread-safe)."""

    def __init__(self, client: redis.Redis) -> None:
        self.pid = os.getpid()
        self.client = client
        self.reserve = client.register_script(_RESERVE)
        self.commit = client.register_script(_COMMIT)
        self.release = client.register_script(_RELEASE)
        self.notify = client.register_script(_NOTIFY)
        self.alive = client.register_script(_ALIVE)
        self.dmarc_record = client.register_script(_DMARC_RECORD)


class RedisStore:
    def __init__(self, url: str, timeout: float = 2.0) -> None:
        problem = url_problem(url)
        if problem is not None:
            raise ValueError(problem)  # open_store's callers check store_problem first
        self._parts = _parse(url)
        self.url = url  # as the policy names it (a reload keeps a store whose url is unchanged)
        self.shown = _without_password(url)  # for messages and logs
        self.timeout = timeout
        self._connection: _Connection | None = None

    # --- the connection ---------------------------------------------------------------------

    def _connect(self) -> _Connection:
        # Made by the process that uses it: a forked worker never talks on its parent's sockets.
        # One attribute read and one write, no lock: two threads racing here each make a client
        # and one is dropped, which is harmless (no lock a fork could leave held).
        connection = self._connection
        if connection is None or connection.pid != os.getpid():
            parts = self._parts
            client = redis.Redis(
                host=parts.hostname or "", port=parts.port or DEFAULT_PORT,
                db=int(parts.path.removeprefix("/") or 0),
                username=unquote(parts.username) if parts.username else None,
                password=unquote(parts.password) if parts.password else None,
                ssl=parts.scheme == "rediss",
                socket_connect_timeout=self.timeout, socket_timeout=self.timeout,
                # A pooled connection the server closed (it restarted) is tried once more on a
                # new one; a timeout is never repeated: a hung server costs one timeout.
                retry=Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)),
                client_name="policy-milter")
            connection = _Connection(client)
            self._connection = connection
        return connection

    def _run(self, work: Callable[[_Connection], T]) -> T:
        try:
            return work(self._connect())
        except (redis.RedisError, OSError) as error:
            raise StoreError(f"{self.shown}: {error}") from None

    def problem(self) -> str | None:
        """Why the server cannot be used now, or None (a PING; the connection is closed again, so
        nothing crosses the daemon's fork)."""
        try:
            self._run(lambda c: c.client.ping())
        except StoreError as error:
            return str(error)
        finally:
            self.close()
        return None

    def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None and connection.pid == os.getpid():
            connection.client.close()

    # --- the limits -------------------------------------------------------------------------

    def reserve(self, reservation: Reservation, now: float) -> Exceeded | None:
        return self._limits(reservation, now, lambda c: c.reserve)

    def commit(self, reservation: Reservation, now: float, recheck: bool = False) -> Exceeded | None:
        if recheck:  # forget the reservation: the commit then checks the whole transaction again
            self.release(reservation.key, reservation.txn)
        return self._limits(reservation, now, lambda c: c.commit)

    def _limits(self, reservation: Reservation, now: float, script: Callable[[_Connection], Script]) -> Exceeded | None:
        keys = _Keys(reservation.key)
        # never trim a member a counter still counts, whatever `keep` says
        keep = max([reservation.keep, *(counter.per for counter in reservation.counters)])
        args: list[bytes | str | int] = [
            _f(now), _f(now + RESERVATION_SECONDS), _f(now - keep), math.ceil(keep + RESERVATION_SECONDS),
            _f(keep), _b(reservation.txn), len(reservation.counters)]
        for counter in reservation.counters:
            args += [DIMS.index(counter.dimension) + 1, counter.limit, _f(now - counter.per)]
        for dim in DIMS:
            members = reservation.members.get(dim, ())
            args += [len(members), *map(_b, members)]
        result = self._run(lambda c: script(c)(keys=keys.limits(), args=args))
        return _exceeded(reservation.counters, result)

    def release(self, key: str, txn: str) -> None:
        self._run(lambda c: c.release(keys=_Keys(key).resv, args=[_b(txn)]))

    # --- locks, holds, notices --------------------------------------------------------------

    def lock(self, key: str, reason: str, now: float) -> None:
        self._run(lambda c: c.client.set(_Keys(key).lock, _b(_f(now) + SEPARATOR + reason), nx=True))

    def lock_info(self, key: str) -> LockInfo | None:
        return _lock_info(self._run(lambda c: c.client.get(_Keys(key).lock)))

    def hold(self, key: str, reason: str, now: float) -> None:
        held = _Keys(key).held
        # a random prefix: two holds for the same reason are two records
        member = os.urandom(8).hex().encode() + _b(SEPARATOR + reason)

        def work(c: _Connection) -> None:
            with c.client.pipeline(transaction=True) as pipe:
                pipe.zadd(held, {member: now})
                pipe.zremrangebyscore(held, "-inf", _f(now - HOLD_KEEP))
                pipe.expire(held, math.ceil(HOLD_KEEP + RESERVATION_SECONDS))
                pipe.execute()

        self._run(work)

    def clear(self, key: str) -> bool:
        keys = _Keys(key)

        def work(c: _Connection) -> bool:
            with c.client.pipeline(transaction=True) as pipe:
                pipe.delete(*keys.all())
                pipe.delete(keys.keep)  # bookkeeping, not state: not counted
                removed: list[int] = pipe.execute()
            return removed[0] > 0

        return self._run(work)

    def notify_once(self, key: str, name: str, now: float, period: float) -> bool:
        args: list[bytes | str | int] = [_b(name), _f(now), _f(now + period), max(1, math.ceil(period))]
        return bool(self._run(lambda c: c.notify(keys=[_Keys(key).notices], args=args)))

    # --- reading (accounts) -----------------------------------------------------------------

    def usage(self, key: str, now: float, windows: Sequence[float]) -> Usage:
        keys = _Keys(key)
        oldest = now - max(windows, default=0.0)

        def work(c: _Connection) -> list[Any]:
            with c.client.pipeline(transaction=True) as pipe:  # one snapshot
                for used, resv in zip(keys.used, keys.resv, strict=True):
                    pipe.zrangebyscore(used, "(" + _f(oldest), "+inf", withscores=True)
                    pipe.zrangebyscore(resv, "(" + _f(now), "+inf", withscores=True)
                pipe.zrevrange(keys.used[DIMS.index(Dimension.CLIENTS)], 0, -1, withscores=True)
                pipe.zrevrange(keys.used[DIMS.index(Dimension.RECIPIENTS)], 0, RECENT - 1, withscores=True)
                pipe.zrevrange(keys.held, 0, -1, withscores=True)
                pipe.get(keys.lock)
                results: list[Any] = pipe.execute()
            return results

        results = self._run(work)
        counts: dict[tuple[Dimension, float], int] = {}
        txns: set[bytes] = set()
        reserved: dict[Dimension, list[tuple[bytes, float]]] = {}
        for n, dim in enumerate(DIMS):
            used: list[tuple[bytes, float]] = results[2 * n]
            entries: list[tuple[bytes, float]] = results[2 * n + 1]
            pending = {entry.split(SEPARATOR.encode(), 1)[-1] for entry, _ in entries}
            txns |= {entry.split(SEPARATOR.encode(), 1)[0] for entry, _ in entries}
            # In progress too, as of their reservation (the score is when it expires).
            reserved[dim] = [(entry.split(SEPARATOR.encode(), 1)[-1], expires - RESERVATION_SECONDS)
                             for entry, expires in entries]
            for per in windows:
                counts[(dim, per)] = len({m for m, ts in used if ts > now - per} | pending)
        clients, recipients, held, lock = results[8:]
        return Usage(
            key, counts,
            _newest([*clients, *reserved[Dimension.CLIENTS]], len(clients) + len(reserved[Dimension.CLIENTS])),
            tuple((recipient_of(m), ts) for m, ts in _newest([*recipients, *reserved[Dimension.RECIPIENTS]], RECENT)),
            len(txns),
            tuple((_s(m).split(SEPARATOR, 1)[-1], ts) for m, ts in held),
            _lock_info(lock))

    def keys(self, now: float) -> list[str]:
        def work(c: _Connection) -> list[str]:
            found: set[str] = set()
            for name in c.client.scan_iter(match=PREFIX + b"{*}:*", count=1000):
                tag = name[len(PREFIX) + 1:name.find(b"}")]
                try:
                    found.add(_s(bytes.fromhex(tag.decode("ascii"))))
                except ValueError:  # someone else's key in the same database
                    continue
            candidates = sorted(found)
            with c.client.pipeline(transaction=False) as pipe:
                for key in candidates:
                    k = _Keys(key)
                    c.alive(keys=[*k.used, *k.resv, k.keep, k.lock, k.held],
                            args=[_f(now), _f(now - HOLD_KEEP)], client=pipe)
                alive: list[int] = pipe.execute()
            return [key for key, live in zip(candidates, alive, strict=True) if live]

        return self._run(work)

    # --- DMARC report rows -------------------------------------------------------------------

    def dmarc_record(self, period: int, domain: str, row: str, now: float, max_rows: int, until: float, *,
                     groups: Sequence[tuple[str, int]] = (), max_domains: int = 0) -> bool:
        args: list[bytes | str | int] = [_b(row), max_rows, _dmarc_member(period, domain), _f(until), _f(now),
                                         max(1, math.ceil(until - now)), max_domains, _b(domain)]
        for name, cap in dict(groups).items():
            args += [_b(name), cap]
        keys = [_dmarc_rows(period, domain), DMARC_PENDING, _dmarc_groups(period, domain), _dmarc_domains(period)]
        return bool(self._run(lambda c: c.dmarc_record(keys=keys, args=args)))

    def dmarc_pending(self, before: int, now: float | None = None) -> list[tuple[int, str]]:
        when = time.time() if now is None else now

        def work(c: _Connection) -> list[bytes]:
            # The expired go with their rows at once (their hashes would expire by themselves,
            # but on the server's clock, and a report dropped must not be read meanwhile).
            expired = [m for m in c.client.zrangebyscore(DMARC_PENDING, "-inf", _f(when)) if isinstance(m, bytes)]
            with c.client.pipeline(transaction=True) as pipe:
                for member in expired:
                    period, _, domain = member.partition(b"|")
                    pipe.delete(_dmarc_rows(int(period), _s(domain)), _dmarc_groups(int(period), _s(domain)))
                    pipe.srem(_dmarc_domains(int(period)), domain)
                    pipe.zrem(DMARC_PENDING, member)
                pipe.zrange(DMARC_PENDING, 0, -1)
                members: list[bytes] = pipe.execute()[-1]
            return members

        pending = []
        for member in self._run(work):
            period, _, domain = member.partition(b"|")
            if int(period) < before:
                pending.append((int(period), _s(domain)))
        return sorted(pending)

    def dmarc_rows(self, period: int, domain: str) -> list[tuple[str, int]]:
        rows = self._run(lambda c: c.client.hgetall(_dmarc_rows(period, domain)))
        return sorted((_s(row) if isinstance(row, bytes) else row, int(count)) for row, count in rows.items())

    def dmarc_forget(self, period: int, domain: str) -> None:
        def work(c: _Connection) -> None:
            with c.client.pipeline(transaction=True) as pipe:
                pipe.delete(_dmarc_rows(period, domain), _dmarc_groups(period, domain))
                pipe.srem(_dmarc_domains(period), _b(domain))
                pipe.zrem(DMARC_PENDING, _dmarc_member(period, domain))
                pipe.execute()

        self._run(work)


def _dmarc_rows(period: int, domain: str) -> bytes:
    return DMARC + b"rows:" + str(period).encode() + b":" + _b(domain).hex().encode()


def _dmarc_groups(period: int, domain: str) -> bytes:
    return DMARC + b"groups:" + str(period).encode() + b":" + _b(domain).hex().encode()


def _dmarc_domains(period: int) -> bytes:
    return DMARC + b"domains:" + str(period).encode()


def _dmarc_member(period: int, domain: str) -> bytes:
    return str(period).encode() + b"|" + _b(domain)


def _exceeded(counters: Sequence[Counter], result: object) -> Exceeded | None:
    if result is None:
        return None
    if not (isinstance(result, list) and len(result) == 3 and all(isinstance(n, int) for n in result)):
        raise StoreError(f"unexpected answer from the Redis script: {result!r}")
    index, count, adding = result
    return Exceeded(counters[index], count, adding)


def _lock_info(value: object) -> LockInfo | None:
    if not isinstance(value, bytes):
        return None
    since, _, reason = value.partition(SEPARATOR.encode())
    return LockInfo(float(since), _s(reason))


def _newest(members: list[tuple[bytes, float]], count: int) -> tuple[tuple[str, float], ...]:
    """Each member once, at its latest time, newest first, at most `count`."""
    latest: dict[bytes, float] = {}
    for member, ts in members:
        latest[member] = max(ts, latest.get(member, ts))
    ranked = sorted(latest.items(), key=lambda item: (-item[1], item[0]))[:count]
    return tuple((_s(member), ts) for member, ts in ranked)
