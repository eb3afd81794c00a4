"""What a transaction counts under its key: the key, the counters of the limits that apply, and
the members a reservation adds (one message, its normalised recipients, their domains, the
client). Pure functions of the context and the policy.

Normalised so that one account and one mailbox are counted once whatever the client writes,
and never two mailboxes as one: the login is lower-cased (most SASL back ends, LDAP and PAM
among them, accept any case, and each spelling would otherwise get limits of its own); a
recipient of the site's own domains is lower-cased, unquoted and loses its +detail, any other
only its domain's case (see `recipient`); the address counted is the one Postfix parsed
(`{rcpt_addr}`), not the raw RCPT text; an IPv6 client counts by its /64 (one host owns a whole
/64 and can use a new address for every connection).
"""

from __future__ import annotations

import functools
import ipaddress
import re
from dataclasses import dataclass

from policymilter.facts import Envelope, Session
from policymilter.policy.model import Limit, Policy
from policymilter.state import Counter, Dimension, Reservation
from policymilter.state.model import SEPARATOR

DIMENSIONS = (Dimension.MESSAGES, Dimension.RECIPIENTS, Dimension.DOMAINS, Dimension.CLIENTS)


@dataclass(frozen=True)
class Applicable:
    """The key a transaction counts under and the limits that apply to it."""

    key: str
    who: str  # the login or the client network, for replies and logs
    limits: tuple[Limit, ...]

    @property
    def counters(self) -> tuple[Counter, ...]:
        return _counters(self.limits)

    @property
    def keep(self) -> float:
        return float(max((limit.per for limit in self.limits), default=0))

    def limit(self, label: str) -> Limit:
        return next(limit for limit in self.limits if limit.label == label)


@functools.lru_cache(maxsize=64)  # per policy: its limits are frozen
def _counters(limits: tuple[Limit, ...]) -> tuple[Counter, ...]:
    return tuple(Counter(limit.label, dimension, value, float(limit.per))
                 for limit in limits for dimension in DIMENSIONS
                 if (value := getattr(limit, str(dimension))) is not None)


@functools.lru_cache(maxsize=64)
def _limits(limits: tuple[Limit, ...], key: str) -> tuple[Limit, ...]:
    return tuple(limit for limit in limits if limit.key == key)


def login_key(login: str) -> str:
    # lower(), not casefold(): casefold also merges distinct letters ("ſ" and "s"), which a
    # case-sensitive back end (sasldb) keeps apart as two accounts.
    return "login:" + login.lower()


def client_network(address: str | None) -> str:
    """The address a client counts by: itself (IPv4), its /64 (IPv6), or "unknown"."""
    try:
        ip = ipaddress.ip_address(address or "")
    except ValueError:
        return "unknown"
    if ip.version == 6 and ip.ipv4_mapped is None:
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip.ipv4_mapped if ip.version == 6 and ip.ipv4_mapped else ip)


def applicable(policy: Policy, session: Session) -> Applicable | None:
    """Login limits for an authenticated session, client limits for any other; None if none."""
    if session.authenticated:
        limits = _limits(policy.ratelimit.limits, "login")
        login = str(session.auth_login)
        return Applicable(login_key(login), login, limits)
    limits = _limits(policy.ratelimit.limits, "client")
    network = client_network(session.client_ip)
    return Applicable("client:" + network, network, limits) if limits else None


# Outside a quoted local part, these make an address Postfix reads differently from its text
# (comments, source routes, lists, literals): such a recipient is counted as written, never
# merged with another (merging is what a sender would abuse: "(+)a@x(@y)" once looked like "(@y)").
_UNUSUAL = re.compile(r'[()<>,;:\[\]\\\s"]')


def recipient(address: str, delimiters: str, local_domains: frozenset[str] = frozenset()) -> str:
    """How a recipient is counted. A mailbox of one of `local_domains` (site.domains: we know
    their rules) is counted once however it is spelt: `"Bob+news"@Example.ORG.` is
    `bob@example.org` (case, quotes, the +detail of Postfix's recipient_delimiter). Any other
    recipient loses only its domain's case and trailing dot: a remote site's local parts may be
    case-sensitive and its delimiter is unknown, and Postfix delivers each spelling separately,
    so each is a recipient. Anything unusual is counted exactly as written."""
    local, at, domain = address.rpartition("@")
    if not at or not local or _UNUSUAL.search(domain):
        return address
    domain = domain.lower().rstrip(".")
    if len(local) >= 2 and local.startswith('"') and local.endswith('"'):
        inner = local[1:-1]
        if re.search(r'[\\"\s]', inner):
            return address  # escapes or spaces inside quotes: as written
        local = inner
    elif _UNUSUAL.search(local):
        return address
    if domain not in local_domains:
        return f"{local}@{domain}"
    cut = min((i for i in (local.find(d) for d in delimiters) if i > 0), default=-1)
    if cut > 0:
        local = local[:cut]
    return f"{local.lower()}@{domain}"


def recipient_domain(counted: str) -> str:
    """The domain a counted recipient counts in; an unusual one is a domain of its own."""
    local, at, domain = counted.rpartition("@")
    return domain if at and local and not _UNUSUAL.search(counted) else counted


def storable(text: str) -> str:
    """Bytes that are not UTF-8 (pymilter hands them over as lone surrogates, with Postfix's
    smtputf8_enable = no) as backslash escapes: each such address is still one member, and the
    store can write it (it could not, and a store error must never be the way past a limit)."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def reservation(policy: Policy, session: Session, envelope: Envelope, which: Applicable) -> Reservation:
    local = frozenset(policy.site.domains)
    rcpts = sorted({storable(recipient(r, policy.ratelimit.recipient_delimiter, local)) for r in envelope.rcpts})
    txn = envelope.txn_id
    members = {
        Dimension.MESSAGES: (txn,),
        Dimension.RECIPIENTS: tuple(f"{txn}{SEPARATOR}{r}" for r in rcpts),
        Dimension.DOMAINS: tuple(sorted({recipient_domain(r) for r in rcpts})),
        Dimension.CLIENTS: (client_network(session.client_ip),),
    }
    return Reservation(which.key, txn, members, which.counters, which.keep)
