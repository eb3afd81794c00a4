"""One resolver for every check, built from the policy's [dns] table.

pyspf, dkimpy and the DMARC lookups all go through a `Resolver`, so a site (or a test) points
every lookup at its own server with `dns.nameservers`. A lookup that cannot be answered
(timeout, SERVFAIL, no server reachable, the message's time budget spent) raises `DnsError`:
checks turn it into `temperror`, never a crash. NXDOMAIN and NODATA are answers: empty.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import dns.exception
import dns.name
import dns.rdata
import dns.rdatatype
import dns.resolver
from dns.rdtypes.ANY.MX import MX
from dns.rdtypes.ANY.PTR import PTR
from dns.rdtypes.ANY.TXT import TXT
from dns.rdtypes.IN.A import A


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


class Resolver:
    """A stub resolver with a per-query timeout and a per-message lifetime budget."""

    def __init__(self, nameservers: Sequence[str] = (), timeout: float = 5.0, lifetime: float = 20.0) -> None:
        self.timeout = timeout
        self.lifetime = lifetime
        self._resolvers = self._build(nameservers)

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
        """Records of `rdtype` at `name`; [] for NXDOMAIN/NODATA; DnsError when unanswered."""
        try:
            qname = dns.name.from_text(name)
        except dns.exception.DNSException:
            return []  # not a valid name: nothing can be published there
        last: Exception | None = None
        for resolver in self._resolvers:
            try:
                answer = resolver.resolve(qname, rdtype, lifetime=self._lifetime(budget), search=False,
                                          raise_on_no_answer=False)
            except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
                return []
            except (dns.resolver.NoNameservers, dns.exception.Timeout, dns.resolver.YXDOMAIN) as error:
                last = error
                continue
            return list(answer.rrset or [])
        raise DnsError(f"{name}/{rdtype}: {last}")

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
