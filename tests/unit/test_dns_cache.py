"""The resolver's answer cache: TTLs on an injected clock, the LRU bound, counters, what is never
kept, threads, and a reload that keeps it. Against a real server: tests/integration/test_dns_cache.py.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import dns.message
import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import pytest

from policymilter.dns import Budget, CacheStats, DnsCache, DnsError, Reply, Resolver, negative_ttl
from policymilter.policy import PolicyError, load_policy
from policymilter.service import Service
from tests.conftest import OFFLINE

TXT = dns.rdatatype.TXT
A = dns.rdatatype.A


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def name(text: str) -> dns.name.Name:
    return dns.name.from_text(text)


def txt(value: str) -> dns.rdata.Rdata:
    return dns.rdata.from_text(dns.rdataclass.IN, TXT, f'"{value}"')


SPF = txt("v=spf1 -all")


@pytest.fixture
def clock() -> Clock:
    return Clock()


# --- DnsCache --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ttl", "max_ttl", "kept_for"),
    [
        (300, 3600, 300),  # the record's TTL
        (86400, 3600, 3600),  # capped at max_ttl
        (2, 3600, 2),
        (0.5, 3600, 0.5),
        (0, 3600, 0),  # TTL 0: this transaction only (RFC 1035 §3.2.1)
        (-5, 3600, 0),  # floor of 0
    ],
)
def test_an_answer_is_kept_for_its_ttl_capped_at_max_ttl(clock: Clock, ttl: float, max_ttl: float,
                                                         kept_for: float) -> None:
    cache = DnsCache(10, max_ttl, clock)
    cache.put(name("example.test"), TXT, [SPF], ttl)
    if kept_for:
        clock.now += kept_for - 0.001
        assert cache.get(name("example.test"), TXT) == (SPF,)
    clock.now += 0.001
    assert cache.get(name("example.test"), TXT) is None
    assert cache.stats().entries == 0


def test_names_are_case_insensitive_and_types_apart(clock: Clock) -> None:
    cache = DnsCache(10, clock=clock)
    cache.put(name("Example.TEST"), TXT, [SPF], 60)
    assert cache.get(name("example.test"), TXT) == (SPF,)
    assert cache.get(name("example.test"), A) is None


def test_nodata_is_kept_for_its_type_and_nxdomain_for_every_type(clock: Clock) -> None:
    cache = DnsCache(10, clock=clock)
    cache.put(name("mail.example.test"), TXT, [], 30)  # NODATA
    cache.put(name("nowhere.example.test"), None, [], 30)  # NXDOMAIN
    assert cache.get(name("mail.example.test"), TXT) == ()
    assert cache.get(name("mail.example.test"), A) is None
    assert cache.get(name("nowhere.example.test"), TXT) == ()
    assert cache.get(name("nowhere.example.test"), A) == ()
    clock.now += 30
    assert cache.get(name("nowhere.example.test"), A) is None


def test_one_hit_or_one_miss_per_lookup_and_expiries_counted(clock: Clock) -> None:
    cache = DnsCache(10, clock=clock)
    assert cache.get(name("nowhere.test"), TXT) is None  # miss
    cache.put(name("nowhere.test"), None, [], 10)
    assert cache.get(name("nowhere.test"), TXT) == ()  # hit (the name's NXDOMAIN)
    cache.put(name("a.test"), TXT, [SPF], 5)
    assert cache.get(name("a.test"), TXT) == (SPF,)  # hit
    clock.now += 5
    assert cache.get(name("a.test"), TXT) is None  # expired: a miss
    stats = cache.stats()
    assert stats == CacheStats(hits=2, misses=2, evictions=0, expired=1, entries=1, bytes=stats.bytes)
    assert stats.bytes > 0


def test_the_least_recently_used_entry_goes_first(clock: Clock) -> None:
    cache = DnsCache(3, clock=clock)
    for label in "abc":
        cache.put(name(f"{label}.test"), TXT, [txt(label)], 60)
    assert cache.get(name("a.test"), TXT) is not None  # a is now the most recent
    cache.put(name("d.test"), TXT, [txt("d")], 60)  # pushes out b
    cache.put(name("a.test"), TXT, [txt("a2")], 60)  # replacing an entry evicts nothing
    assert cache.get(name("b.test"), TXT) is None
    assert [cache.get(name(f"{label}.test"), TXT) for label in "acd"] == [(txt("a2"),), (txt("c"),), (txt("d"),)]
    stats = cache.stats()
    assert (stats.entries, stats.evictions) == (3, 1)


def test_a_cache_holds_at_least_one_entry() -> None:
    with pytest.raises(ValueError, match="at least one"):
        DnsCache(0)


def test_threads_share_one_cache_safely() -> None:
    cache = DnsCache(50)
    names = [name(f"n{i}.test") for i in range(200)]
    gets_per_thread, threads = 5000, 8

    def work(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(gets_per_thread):
            qname = rng.choice(names)
            if cache.get(qname, TXT) is None:
                cache.put(qname, TXT, [SPF], 60)

    with ThreadPoolExecutor(threads) as pool:
        for done in [pool.submit(work, seed) for seed in range(threads)]:
            done.result()  # a thread's exception fails the test here
    stats = cache.stats()
    assert stats.hits + stats.misses == threads * gets_per_thread
    assert stats.entries == 50
    # every miss was put; two threads missing one name at once put it twice, evicting nothing
    assert 0 < stats.evictions <= stats.misses - 50


# --- negative TTL (RFC 2308 §5) ---------------------------------------------------------------

NXDOMAIN_WITH_SOA = """\
id 1
opcode QUERY
rcode NXDOMAIN
flags QR AA RD
;QUESTION
nowhere.example.test. IN TXT
;AUTHORITY
example.test. {soa_ttl} IN SOA ns.example.test. hostmaster.example.test. 1 3600 600 86400 {minimum}
"""

NXDOMAIN_WITHOUT_SOA = """\
id 1
opcode QUERY
rcode NXDOMAIN
flags QR RD RA
;QUESTION
nowhere.example.test. IN TXT
"""


@pytest.mark.parametrize(
    ("soa_ttl", "minimum", "chained", "expected"),
    [
        (60, 10, 2**31, 10),  # the SOA MINIMUM is smaller
        (5, 300, 2**31, 5),  # the SOA's own TTL is smaller
        (60, 30, 7, 7),  # a CNAME on the way expires first
    ],
)
def test_a_negative_answer_holds_for_min_of_soa_ttl_and_minimum(soa_ttl: int, minimum: int, chained: int,
                                                                expected: int) -> None:
    response = dns.message.from_text(NXDOMAIN_WITH_SOA.format(soa_ttl=soa_ttl, minimum=minimum))
    assert negative_ttl(response, chained) == expected


def test_a_negative_answer_without_soa_is_not_cacheable() -> None:
    # RFC 2308 §5: negative responses without SOA records SHOULD NOT be cached.
    assert negative_ttl(dns.message.from_text(NXDOMAIN_WITHOUT_SOA), 300) is None


# --- Resolver with a cache ---------------------------------------------------------------------


class ScriptedResolver(Resolver):
    """A Resolver whose server answers from a script: one step per query sent, in order."""

    def __init__(self, steps: list[Reply | DnsError], cache_size: int = 100,
                 clock: Callable[[], float] | None = None) -> None:
        super().__init__(("127.0.0.1:1",), cache_size=cache_size)  # never contacted
        if clock is not None and self.cache is not None:
            self.cache = DnsCache(cache_size, clock=clock)
        self.steps = steps
        self.sent: list[str] = []

    def send(self, qname: dns.name.Name, qtype: dns.rdatatype.RdataType, budget: Budget | None,
             label: str) -> Reply:
        self._lifetime(budget)  # a spent budget fails here as it would with a server
        self.sent.append(label)
        step = self.steps.pop(0)
        if isinstance(step, DnsError):
            raise step
        return step


def test_errors_are_never_cached() -> None:
    resolver = ScriptedResolver([DnsError("example.test/TXT: timed out"), Reply((SPF,), 60)])
    with pytest.raises(DnsError):
        resolver.query("example.test", "TXT")
    assert resolver.query("example.test", "TXT") == [SPF]  # asked again, answered
    assert resolver.query("example.test", "TXT") == [SPF]  # now from the cache
    assert resolver.sent == ["example.test/TXT", "example.test/TXT"]


def test_answers_without_a_ttl_are_asked_every_time() -> None:
    resolver = ScriptedResolver([Reply((), None, nxdomain=True), Reply((), None, nxdomain=True)])
    assert resolver.query("nowhere.test", "TXT") == []
    assert resolver.query("nowhere.test", "TXT") == []
    assert len(resolver.sent) == 2


def test_nxdomain_answers_every_type_of_the_name_until_it_expires(clock: Clock) -> None:
    resolver = ScriptedResolver([Reply((), 10, nxdomain=True), Reply((SPF,), 60)], clock=clock)
    assert resolver.query("nowhere.test", "TXT") == []
    assert resolver.query("nowhere.test", "A") == []
    assert resolver.query("NOWHERE.test.", "MX") == []
    clock.now += 10
    assert resolver.query("nowhere.test", "TXT") == [SPF]
    assert resolver.sent == ["nowhere.test/TXT", "nowhere.test/TXT"]


def test_a_cached_answer_is_served_when_the_budget_is_spent() -> None:
    resolver = ScriptedResolver([Reply((SPF,), 60)])
    resolver.query("example.test", "TXT")
    spent = Budget(deadline=0.0)
    assert resolver.query("example.test", "TXT", spent) == [SPF]
    with pytest.raises(DnsError, match="budget"):
        resolver.query("other.test", "TXT", spent)  # not cached: would have to wait


def test_cache_size_zero_sends_every_query() -> None:
    resolver = ScriptedResolver([Reply((SPF,), 60), Reply((SPF,), 60)], cache_size=0)
    assert resolver.cache is None
    resolver.query("example.test", "TXT")
    resolver.query("example.test", "TXT")
    assert len(resolver.sent) == 2


def test_the_returned_list_is_the_callers_own() -> None:
    resolver = ScriptedResolver([Reply((SPF,), 60)])
    resolver.query("example.test", "TXT").clear()
    assert resolver.query("example.test", "TXT") == [SPF]


# --- a reload keeps the cache when it still fits ----------------------------------------------

SERVERS = ("127.0.0.1:5301", "127.0.0.2:5301", "127.0.0.1:5302")


@pytest.mark.parametrize(
    ("nameservers", "size", "max_ttl", "kept"),
    [
        (SERVERS, 100, 3600.0, True),
        (SERVERS[:2], 100, 3600.0, False),  # a server less
        (("127.0.0.1:5302", "127.0.0.1:5301", "127.0.0.2:5301"), 100, 3600.0, False),  # other order
        (SERVERS, 200, 3600.0, False),
        (SERVERS, 100, 60.0, False),
    ],
)
def test_a_new_resolver_takes_over_the_previous_cache_only_if_it_fits(
        nameservers: tuple[str, ...], size: int, max_ttl: float, kept: bool) -> None:
    previous = Resolver(SERVERS, cache_size=100, cache_max_ttl=3600.0)
    resolver = Resolver(nameservers, cache_size=size, cache_max_ttl=max_ttl, previous=previous)
    assert resolver.cache is not None
    assert (resolver.cache is previous.cache) is kept


def test_no_cache_to_take_over() -> None:
    assert Resolver(SERVERS, cache_size=100, previous=Resolver(SERVERS)).cache is not None
    assert Resolver(SERVERS, cache_size=0, previous=Resolver(SERVERS, cache_size=100)).cache is None


def test_servers_lists_address_and_port_in_order() -> None:
    assert Resolver(SERVERS).servers == (("127.0.0.1", 5301), ("127.0.0.2", 5301), ("127.0.0.1", 5302))


def policy_file(tmp_path: Path, nameserver: str) -> Path:
    path = tmp_path / "policy.toml"
    path.write_text(f'[site]\ndomains = ["example.org"]\n[dns]\nnameservers = ["{nameserver}"]\n'
                    "[listeners.smtp]\nports = [25]\n")
    return path


def test_a_reload_keeps_the_cache_unless_the_servers_change(tmp_path: Path) -> None:
    path = policy_file(tmp_path, "127.0.0.1:5301")
    service = Service(path, OFFLINE)
    cache = service.snapshot.resolver.cache
    assert cache is not None and cache.max_entries == 10_000 and cache.max_ttl == 3600
    assert service.reload()
    assert service.snapshot.generation == 2
    assert service.snapshot.resolver.cache is cache
    policy_file(tmp_path, "127.0.0.1:5302")
    assert service.reload()
    assert service.snapshot.resolver.cache is not None
    assert service.snapshot.resolver.cache is not cache


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("cache_size = -1", "dns.cache_size: Input should be greater than or equal to 0"),
        ("cache_max_ttl = 0", "dns.cache_max_ttl: Input should be greater than 0"),
        ("cache_max_ttl = 604801", "dns.cache_max_ttl: Input should be less than or equal to 604800"),
        ('cache_size = "big"', "dns.cache_size: Input should be a valid integer"),
        ("cache_ttl = 60", "dns.cache_ttl: unknown key"),
    ],
)
def test_cache_settings_are_validated(tmp_path: Path, setting: str, message: str) -> None:
    path = tmp_path / "p.toml"
    path.write_text(f"[dns]\n{setting}\n[listeners.smtp]\nports = [25]\n")
    with pytest.raises(PolicyError) as caught:
        load_policy(path)
    assert any(message in str(issue) for issue in caught.value.issues), [str(i) for i in caught.value.issues]


def test_cache_settings_default_and_load(tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    path.write_text("[listeners.smtp]\nports = [25]\n")
    assert (load_policy(path).policy.dns.cache_size, load_policy(path).policy.dns.cache_max_ttl) == (10_000, 3600.0)
    path.write_text("[dns]\ncache_size = 0\ncache_max_ttl = 60\n[listeners.smtp]\nports = [25]\n")
    assert (load_policy(path).policy.dns.cache_size, load_policy(path).policy.dns.cache_max_ttl) == (0, 60.0)


def test_memory_is_bounded_by_bytes_not_only_entries():
    # A sender's DNS picks the names we look up, and each answer may be 64 KiB.
    import dns.rdata
    import dns.rdataclass
    import dns.rdatatype

    big = dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.TXT, " ".join(['"' + "x" * 255 + '"'] * 200))
    cache = DnsCache(10_000, max_bytes=1_000_000)
    for index in range(100):
        cache.put(dns.name.from_text(f"n{index}.example.net"), dns.rdatatype.TXT, [big], 3600)
    stats = cache.stats()
    assert stats.bytes <= 1_000_000 and stats.entries < 100 and stats.evictions > 0
    assert cache.get(dns.name.from_text("n99.example.net"), dns.rdatatype.TXT) == (big,)  # the newest stay
    assert cache.get(dns.name.from_text("n0.example.net"), dns.rdatatype.TXT) is None
    huge = DnsCache(10, max_bytes=1000)
    huge.put(dns.name.from_text("a.example.net"), dns.rdatatype.TXT, [big], 3600)
    assert huge.stats().entries == 0  # larger than the whole cache: not kept


def _real_and_estimated(make, count: int) -> tuple[float, float]:
    import gc
    import tracemalloc

    from policymilter.dns import answer_size

    gc.collect()
    cache = DnsCache(100_000, max_bytes=10**10)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        estimated = 0
        for index in range(count):
            name, records = make(index)
            estimated += answer_size(name, records)
            cache.put(name, dns.rdatatype.TXT, records, 3600)
        real = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    return real / count, estimated / count


def _txt(text: str) -> dns.rdata.Rdata:
    return dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.TXT, text)


@pytest.mark.parametrize(("shape", "make", "count"), [
    # 20,000 two-byte strings: each its own Python object, twenty times the data
    ("tiny strings", lambda i: (dns.name.from_text(f"n{i}.example.net"), [_txt(" ".join(['"ab"'] * 20_000))]), 20),
    ("a long name, negative", lambda i: (dns.name.from_text(".".join(["ab"] * 70) + f".x{i}.example.net"), []), 300),
    ("1,000 A records", lambda i: (dns.name.from_text(f"n{i}.example.net"), [
        dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.A, f"10.0.{j // 250}.{j % 250}")
        for j in range(1000)]), 30),
    ("an ordinary SPF record", lambda i: (dns.name.from_text(f"n{i}.example.net"), [
        _txt('"v=spf1 ip4:192.0.2.0/24 include:_spf.example.com -all"')]), 300),
    # types nothing asks for today, counted all the same (every bytes, name and tuple an rdata keeps)
    ("NAPTR records with long strings", lambda i: (dns.name.from_text(f"n{i}.example.net"), [
        dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.NAPTR,
                            f'{j} 10 "{"a" * 200}" "{"b" * 200}" "{"c" * 200}" r{j}.example.net.')
        for j in range(20)]), 30),
    ("HINFO records", lambda i: (dns.name.from_text(f"n{i}.example.net"), [
        dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.HINFO, f'"cpu{j}" "os{j}"') for j in range(50)]), 30),
    ("CAA records", lambda i: (dns.name.from_text(f"n{i}.example.net"), [
        dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.CAA, f'0 issue "ca{j}.example.net"')
        for j in range(50)]), 30),
])
def test_the_byte_bound_counts_what_python_really_holds(shape, make, count):
    real, estimated = _real_and_estimated(make, count)
    assert real <= estimated * 1.25, f"{shape}: {real:.0f} bytes held, {estimated:.0f} counted"
