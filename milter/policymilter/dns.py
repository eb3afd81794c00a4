"""One resolver for every check, built from the policy's [dns] table, and its answer cache.

pyspf, dkimpy and the DMARC lookups all go through a `Resolver`, so a site (or a test) points
every lookup at its own server with `dns.nameservers`. A lookup that cannot be answered
(timeout, SERVFAIL, no server reachable, the message's time budget spent) raises `DnsError`:
checks turn it into `temperror`, never a crash. NXDOMAIN and NODATA are answers: empty.

The cache (`DnsCache`, policy `dns.cache_size`, `dns.cache_max_ttl`) is our own, kept above
dnspython, and not dnspython's `LRUCache`. Checked against nsd, `LRUCache` does cache answers,
NODATA (with `raise_on_no_answer=False`) and NXDOMAIN (for the whole name) for the right TTL
(RFC 2308 §5: min(SOA TTL, SOA MINIMUM) for negatives) and never caches errors; but
- it has no TTL cap, and it times entries by the wall clock (`time.time()`: a clock step
  changes every lifetime, and tests cannot inject a clock);
- it keeps a negative answer without an SOA for 300 s (`dns.message.NEGATIVE_TTL_WITHOUT_SOA`;
  nsd always sends the SOA, so this is read from dnspython, not seen), where RFC 2308 §5 says
  such answers SHOULD NOT be cached;
- its hit/miss counts are per internal lookup, not per query: a query it has to send counts two
  misses (the type, then the name's NXDOMAIN), a cached NXDOMAIN a miss and a hit; and it
  counts no evictions.
Keeping it right would mean overriding its `get` and `put`, which is all of it. `DnsCache`
keeps what `Resolver.query` returns (the records, `()` for NXDOMAIN/NODATA) in an LRU bounded
by entries, on the monotonic clock, for the answer's TTL capped at `max_ttl` (a TTL of 0 is
not kept); a negative answer without an SOA is not kept at all (a stub has no loop to fear,
but nothing tells it how long the answer holds, and the recursive resolver behind it caches
anyway). Errors are never kept. One cache serves every check of a worker process (SPF, DKIM,
ARC, DMARC, on every connection thread) and outlives a reload that keeps the same servers.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, cast

import dns.exception
import dns.message
import dns.name
import dns.rdata
import dns.rdatatype
import dns.resolver
from dns.rdtypes.ANY.MX import MX
from dns.rdtypes.ANY.PTR import PTR
from dns.rdtypes.ANY.SOA import SOA
from dns.rdtypes.ANY.TXT import TXT
from dns.rdtypes.IN.A import A

from policymilter import metrics

DEFAULT_CACHE_MAX_TTL = 3600.0


class DnsError(Exception):
    """A lookup got no answer: the result is temperror (RFC 7208 §2.6.6, RFC 7489 §6.6.3)."""


@dataclass
class Budget:
    """Seconds left for all lookups of one message (policy `dns.lifetime`)."""

    deadline: float
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def remaining(self) -> float:
        return self.deadline - time.monotonic()


def parse_nameserver(text: str) -> tuple[str, int]:
    """`"127.0.0.1"`, `"127.0.0.1:5353"`, `"[::1]:53"` -> (address, port)."""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else 53
    host, sep, port = text.rpartition(":")
    return (host, int(port)) if sep and host and ":" not in host else (text, 53)


@dataclass(frozen=True)
class CacheStats:
    """What a cache did since it was made: one hit or one miss per query."""

    hits: int = 0
    misses: int = 0
    evictions: int = 0  # pushed out by newer entries (the size bound)
    expired: int = 0  # found past their TTL and dropped
    entries: int = 0
    bytes: int = 0  # what the entries cost, roughly (answer_size)


# The key of a name's NXDOMAIN: it holds for every type at the name (RFC 2308 §5).
_NAME = None


@dataclass(frozen=True)
class _Entry:
    records: tuple[dns.rdata.Rdata, ...]
    expires: float
    size: int  # bytes, roughly (answer_size)


# An answer may be 64 KiB (TCP), and whoever runs a sender's DNS chooses the names a message
# makes us look up: entries alone do not bound the memory (10,000 x 64 KiB is 640 MiB).
DEFAULT_CACHE_MAX_BYTES = 16 * 1024 * 1024
# What Python objects cost beyond their data, measured with tracemalloc (tests/unit/test_dns_cache.py):
_ENTRY_OVERHEAD = 300  # the entry, its key tuple, the dict slot
_RECORD_OVERHEAD = 200  # one rdata object and its tuple slot
_OBJECT_OVERHEAD = 60  # one bytes object (a TXT string, a name label) and its tuple slot


def _name_size(name: dns.name.Name) -> int:
    return sum(_OBJECT_OVERHEAD + len(label) for label in name.labels)


_SLOTS: dict[type, tuple[str, ...]] = {}


def _slots(cls: type) -> tuple[str, ...]:
    """The attributes an rdata class keeps (dnspython's rdata classes use __slots__)."""
    found = _SLOTS.get(cls)
    if found is None:
        found = _SLOTS[cls] = tuple(slot for klass in cls.__mro__ for slot in getattr(klass, "__slots__", ()))
    return found


def _value_size(value: object) -> int:
    if isinstance(value, dns.name.Name):
        return _name_size(value)
    if isinstance(value, (bytes, str)):
        return _OBJECT_OVERHEAD + len(value)
    if isinstance(value, tuple):
        return _OBJECT_OVERHEAD + sum(_value_size(item) for item in value)
    return 0


def answer_size(qname: dns.name.Name, records: Sequence[dns.rdata.Rdata]) -> int:
    """What keeping these records under `qname` costs, roughly (Python objects included: a TXT
    record of 2-byte strings costs twenty times its data). Every bytes, text, name or tuple an
    rdata keeps is counted, whatever its type."""
    size = _ENTRY_OVERHEAD + _name_size(qname)
    for record in records:
        size += _RECORD_OVERHEAD
        for slot in _slots(type(record)):
            size += _value_size(getattr(record, slot, None))
    return size


class DnsCache:
    """Answers by (name, type), LRU-bounded by entries and by bytes, each kept for its TTL (at
    most `max_ttl`).

    Thread-safe: one lock around every lookup and insert (both are a few dict operations).
    Two threads missing the same name at once both ask the server; the later answer stays.
    """

    def __init__(self, max_entries: int, max_ttl: float = DEFAULT_CACHE_MAX_TTL,
                 clock: Callable[[], float] = time.monotonic, max_bytes: int = DEFAULT_CACHE_MAX_BYTES) -> None:
        if max_entries < 1:
            raise ValueError("a DnsCache holds at least one entry (no cache: cache_size 0, no DnsCache)")
        self.max_entries = max_entries
        self.max_ttl = max_ttl
        self.max_bytes = max_bytes
        self._bytes = 0
        self._clock = clock
        self._entries: OrderedDict[tuple[dns.name.Name, int | None], _Entry] = OrderedDict()
        self._lock = threading.Lock()
        self._hits = self._misses = self._evictions = self._expired = 0

    def get(self, qname: dns.name.Name, rdtype: int) -> tuple[dns.rdata.Rdata, ...] | None:
        """The cached records (`()`: NXDOMAIN or NODATA), or None: ask the server."""
        with self._lock:
            now = self._clock()
            for key in ((qname, rdtype), (qname, _NAME)):
                entry = self._entries.get(key)
                if entry is None:
                    continue
                if entry.expires <= now:
                    del self._entries[key]
                    self._bytes -= entry.size
                    self._expired += 1
                    continue
                self._entries.move_to_end(key)
                self._hits += 1
                return entry.records
            self._misses += 1
            return None

    def put(self, qname: dns.name.Name, rdtype: int | None, records: Sequence[dns.rdata.Rdata], ttl: float) -> None:
        """Keep an answer for `ttl` seconds, capped at `max_ttl`; rdtype None: NXDOMAIN (any type)."""
        ttl = min(max(ttl, 0.0), self.max_ttl)
        if ttl <= 0:
            return  # RFC 1035 §3.2.1: TTL 0 is for this transaction only
        key = (qname, rdtype)
        entry = _Entry(tuple(records), self._clock() + ttl, answer_size(qname, records))
        if entry.size > self.max_bytes:
            return
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= old.size
            self._entries[key] = entry
            self._bytes += entry.size
            while len(self._entries) > self.max_entries or self._bytes > self.max_bytes:
                _, evicted = self._entries.popitem(last=False)
                self._bytes -= evicted.size
                self._evictions += 1

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(self._hits, self._misses, self._evictions, self._expired, len(self._entries), self._bytes)


@dataclass(frozen=True)
class Reply:
    """What the server said: the records, and for how long that holds (None: do not cache)."""

    records: tuple[dns.rdata.Rdata, ...]
    ttl: float | None
    nxdomain: bool = False


def negative_ttl(response: dns.message.Message, chained_ttl: float) -> float | None:
    """RFC 2308 §5: a negative answer holds for min(SOA TTL, SOA MINIMUM) of the SOA in its
    authority section (and no longer than a CNAME that led there); None without an SOA."""
    for rrset in response.authority:
        if rrset.rdtype == dns.rdatatype.SOA and len(rrset):
            return min(chained_ttl, rrset.ttl, cast(SOA, rrset[0]).minimum)
    return None


class Gate(Enum):
    GO = "go"  # ask the servers
    CHECK = "check"  # first see whether they answer at all (Resolver.answers)
    REFUSE = "refuse"  # they did not a moment ago: fail at once


class Breaker:
    """Fail fast while the servers are not answering at all.

    A DNS server that is down or black-holed answers nothing: every query then waits its full
    timeout, about 16 s per message with SPF, DKIM and DMARC, each holding a Postfix smtpd
    process and a milter thread, only to end in the same temperror (and a 4xx: the sender
    retries). But a timeout may also be one slow zone — and a sender chooses which zones we ask
    (an SPF include, a DKIM selector): a sender's black-holed zone must never make us refuse
    everyone's lookups. So after `threshold` timeouts in a row the servers are asked something
    any server answers at once (the root's SOA: an answer, a referral, REFUSED or SERVFAIL all
    count); only when that goes unanswered too do queries fail at once, for `cooldown` seconds,
    after which the next query first asks again (silence doubles the wait, up to
    `max_cooldown`). Cached answers are served all along.
    """

    def __init__(self, threshold: int = 3, cooldown: float = 2.0, max_cooldown: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.threshold, self.cooldown, self.max_cooldown = threshold, cooldown, max_cooldown
        self._clock = clock
        self._lock = threading.Lock()
        self._timeouts = 0
        self._open_until: float | None = None  # None: closed
        self._wait = cooldown
        self._checking = False
        self.opened = 0  # how often the servers were found silent (for the metrics)

    def gate(self) -> Gate:
        """Whether a query may go to the servers now (CHECK: the caller asks first, then settle())."""
        with self._lock:
            if self._open_until is None:
                return Gate.GO
            if self._checking or self._clock() < self._open_until:
                return Gate.REFUSE
            self._checking = True
            return Gate.CHECK

    def timed_out(self) -> bool:
        """Count a query the servers did not answer; True: the caller checks them (settle())."""
        with self._lock:
            self._timeouts += 1
            if self._timeouts >= self.threshold and not self._checking and self._open_until is None:
                self._checking = True
                return True
            return False

    def answered(self) -> None:
        with self._lock:
            self._timeouts = 0

    def settle(self, answering: bool) -> None:
        """The result of a check: the servers answer (closed again) or not (open)."""
        with self._lock:
            self._checking = False
            if answering:
                self._timeouts, self._open_until, self._wait = 0, None, self.cooldown
            else:
                self.opened += 1
                self._open_until = self._clock() + self._wait
                self._wait = min(self._wait * 2, self.max_cooldown)

    @property
    def is_open(self) -> bool:
        with self._lock:
            return self._open_until is not None


class Resolver:
    """A stub resolver with a per-query timeout, a per-message lifetime budget and an optional
    answer cache (`cache_size` entries; 0: none).

    `previous`: the resolver of the policy this one replaces (a reload). Its cache is kept when
    it asks the same servers with the same cache settings: a reload does not start cold.
    """

    def __init__(self, nameservers: Sequence[str] = (), timeout: float = 5.0, lifetime: float = 20.0,
                 cache_size: int = 0, cache_max_ttl: float = DEFAULT_CACHE_MAX_TTL,
                 previous: Resolver | None = None) -> None:
        self.timeout = timeout
        self.lifetime = lifetime
        self._resolvers = self._build(nameservers)
        self.cache = self._cache(cache_size, cache_max_ttl, previous)
        same_servers = previous is not None and previous.servers == self.servers
        self.breaker: Breaker = previous.breaker if previous is not None and same_servers else Breaker()

    def _cache(self, size: int, max_ttl: float, previous: Resolver | None) -> DnsCache | None:
        if size == 0:
            return None
        if (previous is not None and previous.cache is not None and previous.servers == self.servers
                and (previous.cache.max_entries, previous.cache.max_ttl) == (size, max_ttl)):
            return previous.cache  # what these servers said still holds; the old snapshot shares it
        return DnsCache(size, max_ttl)

    @property
    def servers(self) -> tuple[tuple[str, int], ...]:
        """(address, port) of every server asked, in order (from /etc/resolv.conf when the policy
        names none)."""
        return tuple((str(host), resolver.port) for resolver in self._resolvers for host in resolver.nameservers)

    def _build(self, nameservers: Sequence[str]) -> list[dns.resolver.Resolver]:
        if not nameservers:
            system = dns.resolver.Resolver()  # /etc/resolv.conf
            system.cache = None
            return [system]
        # dnspython has one port per Resolver: one resolver per distinct port, tried in order.
        by_port: dict[int, list[str]] = {}
        for server in nameservers:
            host, port = parse_nameserver(server)
            by_port.setdefault(port, []).append(host)
        resolvers = []
        for port, hosts in by_port.items():
            resolver = dns.resolver.Resolver(configure=False)
            resolver.nameservers = hosts
            resolver.port = port
            resolvers.append(resolver)
        return resolvers

    def budget(self) -> Budget:
        return Budget(time.monotonic() + self.lifetime)

    def _lifetime(self, budget: Budget | None) -> float:
        if budget is None:
            return self.timeout
        left = budget.remaining()
        if left <= 0:
            raise DnsError("DNS time budget for this message is spent")
        return min(self.timeout, left)

    def query(self, name: str, rdtype: str, budget: Budget | None = None) -> list[dns.rdata.Rdata]:
        """Records of `rdtype` at `name`; [] for NXDOMAIN/NODATA; DnsError when unanswered.

        A cached answer is served even when the budget is spent: it costs no waiting.
        """
        try:
            qname = dns.name.from_text(name)
            qtype = dns.rdatatype.from_text(rdtype)
        except dns.exception.DNSException:
            return []  # not a valid name: nothing can be published there
        if self.cache is not None:
            cached = self.cache.get(qname, qtype)
            metrics.dns_cache(hit=cached is not None)
            if cached is not None:
                return list(cached)
        reply = self.send(qname, qtype, budget, f"{name}/{rdtype}")
        if self.cache is not None and reply.ttl is not None:
            self.cache.put(qname, _NAME if reply.nxdomain else qtype, reply.records, reply.ttl)
        return list(reply.records)

    def send(self, qname: dns.name.Name, qtype: dns.rdatatype.RdataType, budget: Budget | None,
             label: str) -> Reply:
        """Ask the servers, past the cache; `label` ("name/TYPE" as asked) names a DnsError."""
        gate = self.breaker.gate()
        if gate is Gate.CHECK:
            answering = self._settled_check()
            gate = Gate.GO if answering else Gate.REFUSE
        if gate is Gate.REFUSE:
            metrics.dns_error("fast_fail")
            raise DnsError(f"{label}: the DNS servers are not answering at all; not waiting for them "
                           "(asked again every few seconds)")
        try:
            reply = self._send(qname, qtype, budget, label)
        except DnsError as error:
            metrics.dns_error("timeout" if isinstance(error.__cause__, dns.exception.Timeout) else "error")
            if isinstance(error.__cause__, dns.exception.Timeout):
                if self.breaker.timed_out():
                    self._settled_check()
            elif error.__cause__ is not None:
                self.breaker.answered()  # SERVFAIL, REFUSED, unreachable: not silence
            raise
        self.breaker.answered()
        return reply

    def _settled_check(self) -> bool:
        """answers(), its result always handed to the breaker (whatever goes wrong: not answering)."""
        answering = False
        try:
            answering = self.answers()
        finally:
            self.breaker.settle(answering)
        return answering

    def answers(self) -> bool:
        """Whether any server answers anything: the root's SOA, which every server answers at
        once (with the record, a referral, REFUSED or SERVFAIL) unless it is down."""
        for resolver in self._resolvers:
            try:
                # The whole query timeout: a resolver slowed by a flood of lookups is not a dead one.
                resolver.resolve(dns.name.root, dns.rdatatype.SOA, lifetime=self.timeout, search=False,
                                 raise_on_no_answer=False)
            except dns.exception.Timeout:
                continue
            except dns.exception.DNSException:
                return True
            return True
        return False

    def _send(self, qname: dns.name.Name, qtype: dns.rdatatype.RdataType, budget: Budget | None,
              label: str) -> Reply:
        last: Exception | None = None
        for resolver in self._resolvers:
            try:
                answer = resolver.resolve(qname, qtype, lifetime=self._lifetime(budget), search=False,
                                          raise_on_no_answer=False)
            except dns.resolver.NXDOMAIN as error:
                response = error.kwargs.get("responses", {}).get(qname)
                if not isinstance(response, dns.message.QueryMessage):
                    return Reply((), None)
                chain = response.resolve_chaining()
                # Through a CNAME, it is the target that does not exist, not the name asked
                # (its CNAME record does): held for this type only.
                return Reply((), negative_ttl(response, chain.minimum_ttl), nxdomain=not chain.cnames)
            except dns.resolver.NoAnswer:  # not raised with raise_on_no_answer=False: not cached either
                return Reply((), None)
            except (dns.resolver.NoNameservers, dns.exception.Timeout, dns.resolver.YXDOMAIN) as error:
                last = error
                continue
            if answer.rrset is None:  # NODATA
                return Reply((), negative_ttl(answer.response, answer.chaining_result.minimum_ttl))
            return Reply(tuple(answer.rrset), answer.chaining_result.minimum_ttl)
        raise DnsError(f"{label}: {last}") from last

    def txt(self, name: str, budget: Budget | None = None) -> list[str]:
        """TXT records, each joined from its strings (RFC 7208 §3.3), decoded leniently."""
        return [b"".join(cast(TXT, record).strings).decode("utf-8", errors="replace")
                for record in self.query(name, "TXT", budget)]


# --- pyspf ------------------------------------------------------------------------------------
# pyspf looks every name up through its module-level `DNSLookup` function. The hook installed
# here sends those lookups to the Resolver of the check that is running on this thread (set by
# `for_pyspf`), so pyspf uses the policy's servers and the message's budget like every check.

_current = threading.local()


def _pyspf_lookup(name: str, qtype: str, strict: bool = True, timeout: float = 20) -> list[tuple[Any, Any]]:
    import spf  # pyspf

    resolver: Resolver | None = getattr(_current, "resolver", None)
    if resolver is None:
        raise spf.TempError("DNS lookup outside an SPF check")
    try:
        records = resolver.query(name, qtype, getattr(_current, "budget", None))
    except DnsError as error:
        raise spf.TempError(f"DNS {error}") from None
    key = (name, qtype)
    match qtype:
        case "A" | "AAAA":
            return [(key, cast(A, record).address) for record in records]
        case "MX":
            return [(key, (cast(MX, record).preference, cast(MX, record).exchange)) for record in records]
        case "PTR":
            return [(key, cast(PTR, record).target.to_text(True)) for record in records]
        case "TXT" | "SPF":
            return [(key, cast(TXT, record).strings) for record in records]
    return []


@contextlib.contextmanager
def for_pyspf(resolver: Resolver, budget: Budget | None) -> Iterator[None]:
    """Route pyspf's lookups on this thread to `resolver` within `budget`."""
    import spf  # pyspf

    spf.DNSLookup = _pyspf_lookup
    _current.resolver, _current.budget = resolver, budget
    try:
        yield
    finally:
        _current.resolver = _current.budget = None
