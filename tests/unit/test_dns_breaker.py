"""dns.Breaker: while the DNS servers answer nothing, queries fail at once instead of waiting."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import dns.message
import dns.rcode
import pytest

from policymilter.dns import Breaker, DnsError, Resolver


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_it_opens_after_the_threshold_and_lets_one_probe_through_after_the_cooldown():
    clock = Clock()
    breaker = Breaker(threshold=3, cooldown=2.0, max_cooldown=8.0, clock=clock)
    for _ in range(3):
        assert breaker.allow()
        breaker.timed_out()
    assert breaker.is_open and not breaker.allow()
    clock.now += 2.0
    assert breaker.allow()  # the probe
    assert not breaker.allow()  # only one at a time
    breaker.timed_out()  # still silent: open twice as long
    clock.now += 2.0
    assert not breaker.allow()
    clock.now += 2.0
    assert breaker.allow()
    breaker.answered()
    assert not breaker.is_open and breaker.allow() and breaker.allow()
    assert breaker.opened == 2


def test_an_answer_between_timeouts_keeps_it_closed():
    breaker = Breaker(threshold=3, clock=Clock())
    for _ in range(10):
        breaker.timed_out()
        breaker.timed_out()
        breaker.answered()
    assert not breaker.is_open


def test_a_probe_that_never_asked_does_not_keep_it_open():
    clock = Clock()
    breaker = Breaker(threshold=1, cooldown=1.0, clock=clock)
    breaker.timed_out()
    clock.now += 1.0
    assert breaker.allow()
    breaker.released()  # e.g. the message's budget was spent before the query went out
    assert breaker.allow()


def test_the_cooldown_is_capped():
    clock = Clock()
    breaker = Breaker(threshold=1, cooldown=1.0, max_cooldown=4.0, clock=clock)
    breaker.timed_out()
    for _ in range(6):
        clock.now += 100
        assert breaker.allow()
        breaker.timed_out()
    clock.now += 4.0
    assert breaker.allow()


# --- against a UDP server that can go silent ------------------------------------------------------


class Server:
    """A DNS server on loopback UDP: silent (a black hole) or answering NXDOMAIN; counts queries."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.05)
        self.port = self.sock.getsockname()[1]
        self.silent = True
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
            if not self.silent:
                reply = dns.message.make_response(dns.message.from_wire(data))
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


def test_a_black_holed_server_is_asked_three_times_then_not_waited_for(server):
    resolver = Resolver([f"127.0.0.1:{server.port}"], timeout=0.2, lifetime=1.0)
    resolver.breaker = Breaker(threshold=3, cooldown=0.3)
    for index in range(3):
        with pytest.raises(DnsError):
            resolver.query(f"q{index}.example.net", "TXT", resolver.budget())
    asked = server.queries
    assert asked >= 3
    for index in range(5):
        with pytest.raises(DnsError, match="not waiting for them"):
            resolver.query(f"fast{index}.example.net", "TXT", resolver.budget())
    assert server.queries == asked  # nothing was sent while open
    server.silent = False  # the server is back
    time.sleep(0.35)  # past the cooldown: the next query is the probe
    assert resolver.query("back.example.net", "TXT", resolver.budget()) == []  # NXDOMAIN: an answer
    assert not resolver.breaker.is_open
    assert resolver.query("again.example.net", "TXT", resolver.budget()) == []
