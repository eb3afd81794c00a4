"""Where a report goes: the rua URIs of the report domain's record, judged one by one.

- Only `mailto:` URIs are used (RFC 7489 §6.2 and RFC 9990 §3 define no other transport we
  implement); any other is skipped, named.
- `!SIZE` (RFC 7489 §6.2: digits and an optional k, m, g or t, powers of two): a report whose
  gzip is larger is not sent to that URI (RFC 7489 §7.2.1 allows a short notice instead; we send
  none — the record asked for no more than that size, and a notice is one more mail it did not
  ask for). RFC 9989 drops the suffix; records still carry it, and honouring it is the safe way.
- External destinations (RFC 7489 §7.1, RFC 9990 §3): a URI whose host is not within the report
  domain's Organizational Domain needs `<report-domain>._report._dmarc.<host>` TXT to hold a
  record starting `v=DMARC1`; without one, that URI gets no report. A rua= in that record
  replaces the URI (RFC 9990 §4 step 9: the Report Consumer redirects its own reports), but only
  to the same host: an override naming another host means no report to either. A lookup that
  gets no answer is temporary: the report waits for the next run.
- The policy's `dmarc_reports.suppress`: report domains (and their subdomains) or rua addresses
  that never get a report.
- At most MAX_DESTINATIONS distinct addresses per report: a record listing many would make us
  send as many copies.
"""

from __future__ import annotations

import re
import smtplib
from collections.abc import Sequence
from dataclasses import dataclass
from email.errors import HeaderParseError
from email.headerregistry import Address
from enum import StrEnum
from urllib.parse import unquote

from policymilter.checks.dmarc.evaluate import parse_record
from policymilter.dmarcreports.lookups import TxtLookup
from policymilter.dns import DnsError
from policymilter.domains import DomainError, ascii_lower, organizational_domain, to_ascii

MAX_DESTINATIONS = 5
_SIZE = re.compile(r"(\d{1,15})([kmgt]?)", re.ASCII | re.IGNORECASE)
_UNITS = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}
_AUTHORISING = re.compile(r"\s*v\s*=\s*DMARC1\s*(;|$)")
# RFC 5322 §3.2.3 dot-atom-text, ASCII only: the one local-part form that reads the same in
# RCPT TO, in the To: header and in the URI. A quoted local part is refused, never unquoted: the
# text inside the quotes is another address ("a@b"@host) or, quoted by smtplib, a local mailbox.
_DOT_ATOM = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*", re.ASCII)
MAX_LOCAL_PART = 64  # RFC 5321 §4.5.3.1.1


def parse_size(text: str) -> int:
    """`10m` -> 10485760 (RFC 7489 §6.2: k, m, g, t are powers of two; none: bytes). ValueError."""
    found = _SIZE.fullmatch(text.strip())
    if found is None:
        raise ValueError(f"{text!r} is not a size (digits, then k, m, g or t)")
    return int(found[1]) * _UNITS[found[2].lower()]


@dataclass(frozen=True)
class Destination:
    """One rua URI as published, and what we make of it."""

    uri: str
    address: str = ""  # the mailto: address ("" when the URI cannot be used)
    limit: int | None = None  # bytes, from the !SIZE suffix
    problem: str = ""  # why it cannot be used

    @property
    def domain(self) -> str:
        return self.address.rpartition("@")[2]


def parse_uri(uri: str) -> Destination:
    """A rua URI (RFC 7489 §6.2: `mailto:ADDRESS[!SIZE]`, the address %-encoded as RFC 6068 says)."""
    text = uri.strip()
    body, bang, size = text.rpartition("!")
    limit = None
    if bang and _SIZE.fullmatch(size.strip()):
        limit, text = parse_size(size), body
    scheme, colon, rest = text.partition(":")
    if not colon or ascii_lower(scheme) != "mailto":
        return Destination(uri, problem="not a mailto: URI (the only kind we send reports to)")
    address = unquote(rest.partition("?")[0])  # RFC 6068 hfields (?subject=...) are not ours to follow
    local, at, host = address.rpartition("@")
    if not at or len(local) > MAX_LOCAL_PART or not _DOT_ATOM.fullmatch(local):
        return Destination(uri, problem=f"{address!r} is not a mail address (a plain local part, RFC 5322 dot-atom)")
    try:
        domain = to_ascii(host, exact=True)
    except DomainError:
        return Destination(uri, problem=f"{address!r} is not a mail address")
    found = f"{local}@{domain}"
    if not _same_everywhere(found):
        return Destination(uri, problem=f"{address!r} is not a mail address")
    return Destination(uri, found, limit)


def _same_everywhere(address: str) -> bool:
    """The address the To: header and RCPT TO would carry is `address` itself, unchanged."""
    try:
        header = Address(addr_spec=address).addr_spec
    except (HeaderParseError, ValueError, IndexError):
        return False
    return header == address and smtplib.quoteaddr(address) == f"<{address}>"


class Status(StrEnum):
    SEND = "send"
    SKIP = "skip"  # never to this URI: the rows may go once the others are done
    WAIT = "wait"  # not now (DNS did not answer): the report is kept for the next run


@dataclass(frozen=True)
class Decision:
    destination: Destination
    status: Status
    reason: str = ""


def suppressed_domain(domain: str, suppress: Sequence[str]) -> str | None:
    """The suppress entry that covers reports about `domain` (itself or a parent), or None."""
    for entry in suppress:
        name = ascii_lower(entry.strip().removesuffix("."))
        if "@" not in name and (domain == name or domain.endswith("." + name)):
            return entry
    return None


def _suppressed_address(address: str, suppress: Sequence[str]) -> str | None:
    for entry in suppress:
        if "@" in entry and ascii_lower(entry.strip()) == ascii_lower(address):
            return entry
    return None


def authorising_name(report_domain: str, destination_domain: str) -> str:
    """RFC 7489 §7.1: where the destination's domain says it takes the report domain's reports."""
    return f"{report_domain}._report._dmarc.{destination_domain}"


def decide(report_domain: str, uris: Sequence[str], suppress: Sequence[str], resolver: TxtLookup) -> list[Decision]:
    """What to do with each rua URI of a report about `report_domain`."""
    decisions: list[Decision] = []
    seen: set[str] = set()
    organisation = organizational_domain(report_domain)
    for uri in uris:
        destination = parse_uri(uri)
        if destination.problem:
            decisions.append(Decision(destination, Status.SKIP, destination.problem))
            continue
        address = ascii_lower(destination.address)
        if address in seen:
            continue  # listed twice: one copy
        seen.add(address)
        if len(seen) > MAX_DESTINATIONS:
            decisions.append(Decision(destination, Status.SKIP, f"more than {MAX_DESTINATIONS} destinations"))
            continue
        entry = _suppressed_address(destination.address, suppress)
        if entry is not None:
            decisions.append(Decision(destination, Status.SKIP, f"suppressed (dmarc_reports.suppress {entry!r})"))
            continue
        sent_here: set[str] = set()
        for decision in _external_check(report_domain, organisation, destination, resolver):
            replaced = ascii_lower(decision.destination.address)
            if replaced in sent_here or (replaced != address and replaced in seen):
                continue  # an override naming an address already listed
            sent_here.add(replaced)
            seen.add(replaced)
            if len(seen) > MAX_DESTINATIONS:
                decision = Decision(decision.destination, Status.SKIP, f"more than {MAX_DESTINATIONS} destinations")
            decisions.append(decision)
    return decisions


def _external_check(report_domain: str, organisation: str, destination: Destination,
                    resolver: TxtLookup) -> list[Decision]:
    if organizational_domain(destination.domain) == organisation:
        return [Decision(destination, Status.SEND)]
    name = authorising_name(report_domain, destination.domain)
    try:
        records = resolver.txt(name, resolver.budget())
    except DnsError as error:
        return [Decision(destination, Status.WAIT, f"external destination: no DNS answer for {name} TXT ({error})")]
    authorising = [record for record in records if _AUTHORISING.match(record)]
    if not authorising:
        return [Decision(destination, Status.SKIP,
                         f"external destination not authorised: no v=DMARC1 TXT record at {name}")]
    return _overridden(destination, name, authorising)


def _overridden(destination: Destination, name: str, authorising: Sequence[str]) -> list[Decision]:
    """RFC 9990 §4 steps 8-9: authorised; a rua= in the authorising record replaces the URI, on
    the same destination host only (else: no report to the original or to the override)."""
    overrides = [uri for record in authorising for uri in _rua_of(record)]
    if not overrides:
        return [Decision(destination, Status.SEND, f"external destination authorised by {name}")]
    replaced = [parse_uri(uri) for uri in overrides]
    elsewhere = [d.uri for d in replaced if d.problem or ascii_lower(d.domain) != ascii_lower(destination.domain)]
    if elsewhere:
        return [Decision(destination, Status.SKIP,
                         f"external destination {name} redirects to {elsewhere[0]!r}, not on {destination.domain}: "
                         "no report to either (RFC 9990 §4)")]
    return [Decision(d, Status.SEND, f"external destination authorised by {name}, its rua= replacing {destination.uri}")
            for d in replaced]


def _rua_of(record: str) -> tuple[str, ...]:
    parsed = parse_record(record)
    return parsed.rua_published if parsed is not None else ()
