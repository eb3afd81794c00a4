"""dns.Breaker: while the DNS servers answer nothing, queries fail at once instead of waiting."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import dns.message
import dns.rcode
import pytest

from policymilter.dns import Breaker, DnsError, Gate, Resolver


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_servers_are_checked_after_the_threshold_and_only_silence_opens_it():
    clock = Clock()
    breaker = Breaker(threshold=3, cooldown=2.0, max_cooldown=8.0, clock=clock)
    assert not breaker.timed_out() and not breaker.timed_out()
    assert breaker.timed_out()  # the third: the caller checks the servers
    assert not breaker.timed_out()  # one check at a time
    breaker.settle(True)  # they answer: it was a slow zone, not a dead server
    assert not breaker.is_open and breaker.gate() is Gate.GO
    for _ in range(2):
        breaker.timed_out()
    assert breaker.timed_out()
    breaker.settle(False)  # silence
    assert breaker.is_open and breaker.gate() is Gate.REFUSE
    clock.now += 2.0
    assert breaker.gate() is Gate.CHECK  # after the cooldown: check again
    assert breaker.gate() is Gate.REFUSE  # the others still fail fast meanwhile
    breaker.settle(False)  # still silent: twice as long
    clock.now += 2.0
    assert breaker.gate() is Gate.REFUSE
    clock.now += 2.0
    assert breaker.gate() is Gate.CHECK
    breaker.settle(True)
    assert breaker.gate() is Gate.GO and breaker.opened == 2


def test_an_answer_between_timeouts_keeps_it_closed():
    breaker = Breaker(threshold=3, clock=Clock())
    for _ in range(10):
        assert not breaker.timed_out() and not breaker.timed_out()
        breaker.answered()
    assert not breaker.is_open


def test_the_cooldown_is_capped():
    clock = Clock()
    breaker = Breaker(threshold=1, cooldown=1.0, max_cooldown=4.0, clock=clock)
    assert breaker.timed_out()
    breaker.settle(False)
    for _ in range(6):
        clock.now += 100
        assert breaker.gate() is Gate.CHECK
        breaker.settle(False)
    clock.now += 4.0
    assert breaker.gate() is Gate.CHECK


# --- against a UDP server that can go silent ------------------------------------------------------


class Server:
    """A DNS server on loopback UDP: silent (a black hole), answering NXDOMAIN, or silent only
    for one zone (a sender's black-holed zone behind a working resolver); counts queries."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.05)
        self.port = self.sock.getsockname()[1]
        self.silent = True
        self.silent_zone: str | None = None
        self.queries = 0
        self.stopping = False
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        while not self.stopping:
            try:
                data, peer = self.sock.recvfrom(4096)
            except TimeoutError:
                continue
            self.queries += 1
            query = dns.message.from_wire(data)
            name = query.question[0].name.to_text()
            if not self.silent and not (self.silent_zone and name.endswith(self.silent_zone)):
                reply = dns.message.make_response(query)
                reply.set_rcode(dns.rcode.NXDOMAIN)
                self.sock.sendto(reply.to_wire(), peer)

    def close(self) -> None:
        self.stopping = True
        self.thread.join()
        self.sock.close()


@pytest.fixture
def server() -> Iterator[Server]:
    running = Server()
    yield running
    running.close()


def test_a_black_holed_server_is_checked_then_not_waited_for(server):
    resolver = Resolver([f"127.0.0.1:{server.port}"], timeout=0.2, lifetime=1.0)
    resolver.breaker = Breaker(threshold=3, cooldown=0.3)
    for index in range(3):
        with pytest.raises(DnsError):
            resolver.query(f"q{index}.example.net", "TXT", resolver.budget())
    assert resolver.breaker.is_open  # the root SOA went unanswered too
    asked = server.queries
    for index in range(5):
        with pytest.raises(DnsError, match="not answering at all"):
            resolver.query(f"fast{index}.example.net", "TXT", resolver.budget())
    assert server.queries == asked  # nothing was sent while open
    server.silent = False  # the server is back
    time.sleep(0.35)  # past the cooldown: the next query checks first
    assert resolver.query("back.example.net", "TXT", resolver.budget()) == []  # NXDOMAIN: an answer
    assert not resolver.breaker.is_open
    assert resolver.query("again.example.net", "TXT", resolver.budget()) == []


def test_a_senders_black_holed_zone_never_stops_other_lookups(server):
    # The attacker's zone times out (an SPF include pointing at a dead server); ours answers.
    server.silent, server.silent_zone = False, "attacker.example."
    resolver = Resolver([f"127.0.0.1:{server.port}"], timeout=0.2, lifetime=1.0)
    resolver.breaker = Breaker(threshold=3, cooldown=30)
    for round_ in range(3):
        for index in range(4):
            with pytest.raises(DnsError):
                resolver.query(f"x{round_}-{index}.attacker.example", "TXT", resolver.budget())
        assert not resolver.breaker.is_open
        assert resolver.query("example.org", "TXT", resolver.budget()) == []  # answered, at once


def test_a_check_that_fails_unexpectedly_leaves_it_working():
    clock = Clock()
    resolver = Resolver(["127.0.0.1:9"], timeout=0.1, lifetime=0.5)
    resolver.breaker = Breaker(threshold=1, cooldown=1.0, clock=clock)
    assert resolver.breaker.timed_out()
    resolver.breaker.settle(False)
    clock.now += 1.0

    def broken() -> bool:
        raise RuntimeError("a bug in the check")

    resolver.answers = broken  # type: ignore[method-assign]
    with pytest.raises(RuntimeError):
        resolver.query("example.net", "TXT", resolver.budget())
    assert resolver.breaker.gate() is Gate.REFUSE  # counted as silence: open again...
    clock.now += 2.0
    assert resolver.breaker.gate() is Gate.CHECK  # ...and checked again later, not stuck
