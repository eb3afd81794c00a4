"""The resolver's cache against a real authoritative server (nsd): the zone changes and nsd
reloads, and the cache keeps the old answer exactly as long as its TTL (positive) or the SOA's
negative TTL (NXDOMAIN, NODATA) says. What reached the server is counted at the DnsServer's
front, which records every query it relays.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from policymilter.cli import explain
from policymilter.dns import DnsError, Resolver
from policymilter.facts import Session
from policymilter.listeners import listener_by_name
from policymilter.service import load_snapshot
from tests import authkit
from tests.conftest import DEFAULT_POLICY
from tests.integration.authzones import AUTHSERV_ID, CLIENT, KEYS, zones
from tests.integration.dns_server import DnsServer, Zone

pytestmark = pytest.mark.integration

TTL = 3  # every record's TTL in the test zone
SOA_MINIMUM = 2  # so NXDOMAIN and NODATA hold for min(TTL, SOA_MINIMUM) = 2 s (RFC 2308 §5)
SLACK = 1.5  # seconds after expiry within which the next poll must see the new answer
POLL = 0.05


def cache_zone(*records: tuple[str, str]) -> Zone:
    zone = Zone("cache.test", ttl=TTL, soa_minimum=SOA_MINIMUM).add("mail", "A", "192.0.2.25")
    for owner, text in records:
        zone.txt(owner, text)
    return zone


@pytest.fixture
def server(tmp_path: Path) -> Iterator[DnsServer]:
    # One server per test: each test changes the zone.
    with DnsServer(tmp_path, [cache_zone(("@", "v=spf1 -all"))]) as running:
        yield running


def cached_resolver(server: DnsServer, cache_size: int = 100) -> Resolver:
    return Resolver([server.front_nameserver], timeout=2, lifetime=5, cache_size=cache_size)


def asked(server: DnsServer, query: str) -> int:
    return server.asked.count(query)


def watch_until_changed(ask: Callable[[], list[str]], before: list[str], expires: float) -> float:
    """Poll `ask` until it stops answering `before`; the time it changed. Fails if it changed
    before `expires` or did not change within SLACK seconds after it."""
    while True:
        answer = ask()
        now = time.monotonic()
        if answer != before:
            assert now >= expires, f"answer changed {expires - now:.3f} s before the TTL ran out"
            return now
        assert now < expires + SLACK, f"still {before} {now - expires:.3f} s after the TTL ran out"
        time.sleep(POLL)


def test_an_answer_is_served_from_the_cache_until_its_ttl_runs_out(server: DnsServer) -> None:
    resolver = cached_resolver(server)
    started = time.monotonic()
    assert resolver.txt("cache.test") == ["v=spf1 -all"]
    server.set_zones([cache_zone(("@", "v=spf1 ip4:192.0.2.0/24 -all"))])
    assert time.monotonic() < started + TTL, "nsd took the whole TTL to reload: nothing was shown"
    assert server.resolver().resolve("cache.test", "TXT")[0].strings == (b"v=spf1 ip4:192.0.2.0/24 -all",)
    watch_until_changed(lambda: resolver.txt("cache.test"), ["v=spf1 -all"], started + TTL)
    assert resolver.txt("cache.test") == ["v=spf1 ip4:192.0.2.0/24 -all"]
    assert asked(server, "cache.test/TXT") == 2  # once before, once after the TTL: never while cached
    stats = resolver.cache.stats() if resolver.cache else None
    assert stats is not None and stats.misses == 2 and stats.hits > 2 and stats.expired == 1


@pytest.mark.parametrize(
    ("owner", "kind"),
    [
        ("new.cache.test", "NXDOMAIN"),  # the name does not exist yet
        ("mail.cache.test", "NODATA"),  # the name exists (an A record), without TXT
    ],
)
def test_a_negative_answer_is_cached_for_the_soa_negative_ttl(server: DnsServer, owner: str, kind: str) -> None:
    resolver = cached_resolver(server)
    started = time.monotonic()
    assert resolver.txt(owner) == []
    server.set_zones([cache_zone(("@", "v=spf1 -all"), (owner.removesuffix(".cache.test"), "now here"))])
    assert time.monotonic() < started + SOA_MINIMUM, "nsd took the whole negative TTL to reload"
    changed = watch_until_changed(lambda: resolver.txt(owner), [], started + SOA_MINIMUM)
    assert changed < started + TTL, "kept for the record TTL, not the SOA's negative TTL"
    assert asked(server, f"{owner}/TXT") == 2


def test_nxdomain_holds_for_every_type_of_the_name(server: DnsServer) -> None:
    resolver = cached_resolver(server)
    assert resolver.query("nowhere.cache.test", "TXT") == []
    assert resolver.query("nowhere.cache.test", "A") == []
    assert resolver.query("nowhere.cache.test", "MX") == []
    assert [q for q in server.asked if q.startswith("nowhere.")] == ["nowhere.cache.test/TXT"]


def test_cache_size_0_sends_every_query_to_the_server(server: DnsServer) -> None:
    snapshot = load_snapshot(DEFAULT_POLICY, [f'dns.nameservers=["{server.front_nameserver}"]', "dns.cache_size=0"])
    assert snapshot.resolver.cache is None
    for _ in range(5):
        assert snapshot.resolver.txt("cache.test") == ["v=spf1 -all"]
        assert snapshot.resolver.txt("nowhere.cache.test") == []
    assert (asked(server, "cache.test/TXT"), asked(server, "nowhere.cache.test/TXT")) == (5, 5)


def test_a_server_that_does_not_answer_is_asked_again(tmp_path: Path) -> None:
    with DnsServer(tmp_path, [cache_zone()], silent_suffixes=["slow.cache.test"]) as server:
        resolver = Resolver([server.front_nameserver], timeout=0.3, lifetime=1, cache_size=100)
        for _ in range(2):
            with pytest.raises(DnsError, match=r"slow\.cache\.test/TXT"):
                resolver.query("slow.cache.test", "TXT")
        assert server.swallowed.count("slow.cache.test") >= 2  # a timeout is never cached
        server.silent_suffixes.clear()
        assert resolver.query("slow.cache.test", "TXT") == []  # NXDOMAIN now, from the server


# --- the checks share one cache ----------------------------------------------------------------


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DnsServer]:
    with DnsServer(tmp_path_factory.mktemp("dns"), zones()) as running:
        yield running


def message_checks(server: DnsServer, *extra: str) -> Callable[[], dict]:
    """`explain` for one DKIM-signed message, on one snapshot (one resolver, one cache)."""
    snapshot = load_snapshot(DEFAULT_POLICY, [
        f'dns.nameservers=["{server.front_nameserver}"]', f'site.authserv_id="{AUTHSERV_ID}"',
        'site.domains=["example.org"]', "antivirus.enabled=false", "spam.enabled=false", *extra])
    raw = authkit.sign(authkit.message("Alice <alice@pass.test>", "user@example.test"), KEYS["rsa"])
    session = Session(conn_id="t", client_ip=CLIENT, client_name="unknown", helo="mail.pass.test",
                      daemon_name="smtp", daemon_port=25)
    listener = listener_by_name(snapshot.policy, "smtp")
    return lambda: explain(snapshot, session, listener, raw, "alice@pass.test", ["user@example.test"])


def outcomes(report: dict) -> dict[str, str]:
    return {c["check"]: c["outcome"] for c in report["checks"] if c["check"] in ("spf", "dkim", "dmarc")}


def test_a_repeated_message_is_checked_from_the_cache(auth_server: DnsServer) -> None:
    checks = message_checks(auth_server)
    first_seen = len(auth_server.asked)
    first = checks()
    sent = auth_server.asked[first_seen:]
    assert outcomes(first) == {"spf": "pass", "dkim": "pass", "dmarc": "pass"}
    assert {"pass.test/TXT", "rsa._domainkey.pass.test/TXT", "_dmarc.pass.test/TXT"} <= set(sent)
    second_seen = len(auth_server.asked)
    assert outcomes(checks()) == outcomes(first)
    assert auth_server.asked[second_seen:] == []  # SPF, DKIM and DMARC all answered by the cache


def test_without_the_cache_a_repeated_message_asks_everything_again(auth_server: DnsServer) -> None:
    checks = message_checks(auth_server, "dns.cache_size=0")
    first_seen = len(auth_server.asked)
    checks()
    second_seen = len(auth_server.asked)
    checks()
    assert auth_server.asked[second_seen:] == auth_server.asked[first_seen:second_seen]
