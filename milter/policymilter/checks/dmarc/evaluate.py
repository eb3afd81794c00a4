"""DMARC evaluation: record parsing, policy discovery, identifier alignment, disposition.

Pure logic: no pymilter, no logging. RFC 7489 discovery with the Public Suffix List by default
(plus `np` from RFC 9091); the RFC 9989 (DMARCbis) DNS Tree Walk with `discovery="treewalk"`.
Every lookup goes through the project's resolver: a lookup without an answer (DnsError) makes
the result temperror, never a guess. RFC 9989 section numbers follow draft-ietf-dmarc-dmarcbis-41.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Literal, Protocol, TypeVar

from policymilter import domains
from policymilter.dns import Budget, DnsError
from policymilter.outcome import Findings

_TAG_NAME = re.compile(r"[a-z]+")
# RFC 7489 §6.4 dmarc-uri: a URI, optionally followed by the obsolete "!size" limit.
_URI = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*:[^\s,!]+)(![0-9]+[kmgtKMGT]?)?")
_WSP = " \t"


class Status(StrEnum):
    """The DMARC result, as Authentication-Results names it (RFC 7489 §11.2)."""

    PASS = "pass"
    FAIL = "fail"
    NONE = "none"
    TEMPERROR = "temperror"
    PERMERROR = "permerror"


class DomainPolicy(StrEnum):
    """A Domain Owner Assessment Policy (p, sp, np; RFC 9989) and the resulting disposition."""

    NONE = "none"
    QUARANTINE = "quarantine"
    REJECT = "reject"

    def lowered(self) -> DomainPolicy:
        """One level less strict: RFC 7489 §6.6.4 (pct sampling), RFC 9989 §4.7 (t=y)."""
        return DomainPolicy.QUARANTINE if self is DomainPolicy.REJECT else DomainPolicy.NONE


class Alignment(StrEnum):
    RELAXED = "r"
    STRICT = "s"


class DmarcResolver(Protocol):
    """What evaluate() needs of `policymilter.dns.Resolver`."""

    def txt(self, name: str, budget: Budget | None = None) -> list[str]: ...

    def query(self, name: str, rdtype: str, budget: Budget | None = None) -> Sequence[object]: ...


@dataclass(frozen=True)
class SpfIdentity:
    domain: str  # MAIL FROM domain, or HELO for a null MAIL FROM (the caller decides)
    result: str  # pyspf result: "pass", "fail", ...


@dataclass(frozen=True)
class DkimIdentity:
    domain: str  # d=
    selector: str  # s=
    result: str  # "pass", "fail", ...


@dataclass(frozen=True)
class DmarcRecord:
    p: DomainPolicy | None  # None: the record is ignored (RFC 7489 §6.6.3 step 6): evaluate() gives none
    sp: DomainPolicy | None = None
    np: DomainPolicy | None = None  # RFC 9091, RFC 9989 §4.7
    adkim: Alignment = Alignment.RELAXED
    aspf: Alignment = Alignment.RELAXED
    pct: int = 100
    testing: bool = False  # t=y (RFC 9989 §4.7)
    rua: tuple[str, ...] = ()
    raw: str = ""
    ruf: tuple[str, ...] = ()
    psd: Literal["y", "n", "u"] = "u"  # RFC 9989 §4.7; used by the tree walk only
    # The rua URIs as published, with any "!size" suffix: the aggregate reports we send honour it.
    rua_published: tuple[str, ...] = ()


@dataclass(frozen=True)
class DmarcResult(Findings):
    result: Status
    from_domain: str
    # p, sp or np as applies. np is only tested (DNS existence lookups) for a failing message:
    # for any other result this is the policy assuming the From domain exists.
    policy: DomainPolicy | None = None
    disposition: DomainPolicy = DomainPolicy.NONE  # what the domain asks for this message, after pct and t=y
    record_domain: str | None = None
    org_domain: str | None = None  # None: tree-walk mode never needed it (RFC 9989 §4.10.2 note)
    aligned_dkim: str | None = None
    aligned_spf: bool = False
    pct_applied: bool = False
    reason: str = ""
    record: DmarcRecord | None = None


def normalize_domain(domain: str) -> str:
    """Lower case, no trailing dot, IDNs as A-labels (RFC 9989 §5.3.1, IDNA2008); unencodable:
    lowered as is."""
    return domains.normalize(domain)


_valid_domain = domains.valid_ldh
organizational_domain = domains.organizational_domain  # the checks' and dns-records' one PSL reading


def aligned(from_domain: str, auth_domain: str, mode: Alignment | str) -> bool:
    """RFC 7489 §3.1: strict = identical; relaxed = same Organizational Domain (PSL)."""
    return _aligns(normalize_domain(from_domain), auth_domain, Alignment(mode), organizational_domain)


def _aligns(author: str, auth_domain: str, mode: Alignment, org_of: Callable[[str], str]) -> bool:
    auth = normalize_domain(auth_domain)
    if auth == author:
        return True
    return mode is Alignment.RELAXED and _valid_domain(auth) and org_of(author) == org_of(auth)


_E = TypeVar("_E", DomainPolicy, Alignment)


def _choice(enum: type[_E], value: str | None) -> _E | None:
    try:
        return enum(value.lower()) if value is not None else None
    except ValueError:
        return None


def _uris(value: str, sizes: bool = False) -> tuple[str, ...]:
    """The syntactically valid URIs of a dmarc-urilist, without their obsolete size limits
    (`sizes`: with them, as published)."""
    matches = (_URI.fullmatch(part.strip(_WSP)) for part in value.split(","))
    return tuple(match[0] if sizes else match[1] for match in matches if match)


def parse_record(text: str) -> DmarcRecord | None:
    """RFC 7489 §6.3/§6.4 and RFC 9989 §4.7; None when `text` is no DMARC record at all."""
    parts = text.split(";")
    name, equals, version = parts[0].partition("=")
    # v=DMARC1 first, value case-sensitive (RFC 7489 §6.3, RFC 9989 §4.7)
    if name.strip(_WSP).lower() != "v" or not equals or version.strip(_WSP) != "DMARC1":
        return None
    tags: dict[str, str] = {}
    for part in parts[1:]:
        name, equals, value = part.partition("=")
        name = name.strip(_WSP).lower()
        if equals and _TAG_NAME.fullmatch(name):  # unknown tags are kept here and never read
            tags.setdefault(name, value.strip(_WSP))
    rua = _uris(tags.get("rua", ""))
    p, sp, np = (_choice(DomainPolicy, tags.get(tag)) for tag in ("p", "sp", "np"))
    if p is None or ("sp" in tags and sp is None) or ("np" in tags and np is None):
        # RFC 7489 §6.6.3 step 6, RFC 9989 §4.10.1: a valid rua means "p=none", else ignore it
        p, sp, np = (DomainPolicy.NONE, None, None) if rua else (None, None, None)
    pct = tags.get("pct", "100")
    psd = tags.get("psd", "u").lower()
    return DmarcRecord(
        p=p, sp=sp, np=np,
        adkim=_choice(Alignment, tags.get("adkim")) or Alignment.RELAXED,
        aspf=_choice(Alignment, tags.get("aspf")) or Alignment.RELAXED,
        pct=int(pct) if re.fullmatch(r"[0-9]{1,3}", pct) and int(pct) <= 100 else 100,
        testing=tags.get("t", "n").lower() == "y",
        rua=rua, raw=text, ruf=_uris(tags.get("ruf", "")),
        psd="y" if psd == "y" else "n" if psd == "n" else "u",
        rua_published=_uris(tags.get("rua", ""), sizes=True),
    )


def _walk_names(domain: str) -> list[str]:
    """RFC 9989 §4.10 steps 3-4, 7: the domain, then its parents from at most 7 labels up to the
    TLD, so never more than 8 queries however long the name."""
    labels = domain.split(".")
    return [domain] + [".".join(labels[-count:]) for count in range(min(len(labels) - 1, 7), 0, -1)]


def _select_org(start: str, found: list[tuple[str, DmarcRecord]]) -> str:
    """RFC 9989 §4.10.2 rules 1-3, over the records of one walk, longest name first."""
    for name, record in found:
        if record.psd == "n":
            return name
        if record.psd == "y" and name != start:  # the name one label below the PSD
            return ".".join(start.split(".")[-(name.count(".") + 2):])
    return found[-1][0] if found else start


class _Lookups:
    """The DNS side of one evaluation: each name is queried at most once."""

    def __init__(self, resolver: DmarcResolver, budget: Budget | None) -> None:
        self._resolver = resolver
        self._budget = budget
        self._records: dict[str, list[DmarcRecord]] = {}
        self.orgs: dict[str, str] = {}

    def records(self, domain: str) -> list[DmarcRecord]:
        """The DMARC records at _dmarc.<domain>; other TXT records are discarded."""
        if domain not in self._records:
            texts = self._resolver.txt(f"_dmarc.{domain}", self._budget)
            self._records[domain] = [r for r in map(parse_record, texts) if r is not None]
        return self._records[domain]

    def walk(self, domain: str) -> list[tuple[str, DmarcRecord]]:
        """RFC 9989 §4.10: single records on the way up; stop at one with psd=y or psd=n."""
        found = []
        for name in _walk_names(domain):
            records = self.records(name)
            if len(records) == 1:  # several at one name are all discarded (steps 2 and 6)
                found.append((name, records[0]))
                if records[0].psd != "u":
                    break
        return found

    def tree_org(self, domain: str) -> str:
        if domain not in self.orgs:
            self.orgs[domain] = _select_org(domain, self.walk(domain))
        return self.orgs[domain]

    def exists(self, domain: str) -> bool:
        """RFC 9091: a domain is non-existent when A, AAAA and MX all get NXDOMAIN or NODATA.

        RFC 9989 §3.2.13 narrows this to NXDOMAIN alone; the Resolver answers [] for both."""
        return any(self._resolver.query(domain, rdtype, self._budget) for rdtype in ("A", "AAAA", "MX"))


_Found = tuple[str | None, DmarcRecord | None, str]  # record domain, record, reason when none


def _discover_rfc7489(author: str, lookups: _Lookups) -> _Found:
    """RFC 7489 §6.6.3 steps 1-5: the From domain, else its Organizational Domain."""
    where, records = author, lookups.records(author)
    org = organizational_domain(author)
    if not records and org != author:
        where, records = org, lookups.records(org)
    if len(records) > 1:
        return where, None, f"{len(records)} DMARC records at _dmarc.{where}: none applies"
    return (where, records[0], "") if records else (None, None, "no DMARC record")


def _discover_treewalk(author: str, lookups: _Lookups) -> _Found:
    """RFC 9989 §4.10.1: the Author Domain's record, else its Organizational Domain's (§4.10.2,
    found by the walk), else the PSD's (psd=y) record the walk stopped at."""
    records = lookups.records(author)
    if len(records) == 1:
        return author, records[0], ""
    found = lookups.walk(author)
    org = lookups.tree_org(author)
    for name, record in found:
        if name == org:
            return name, record, ""
    # only a psd=y stop leaves the Organizational Domain without a record: the PSD's applies
    return (*found[-1], "") if found else (None, None, "no DMARC record")


def evaluate(
    from_domain: str,
    spf: SpfIdentity | None,
    dkim: Sequence[DkimIdentity],
    resolver: DmarcResolver,
    budget: Budget | None,
    *,
    discovery: Literal["rfc7489", "treewalk"] = "rfc7489",
    sample: Callable[[], float] = random.random,
) -> DmarcResult:
    """DMARC for one message's RFC5322.From domain and its SPF and DKIM results."""
    author = normalize_domain(from_domain)
    if not _valid_domain(author):
        return DmarcResult(Status.PERMERROR, author, reason=f"From domain {from_domain!r} is not a domain name")
    if discovery not in ("rfc7489", "treewalk"):
        raise ValueError(f"unknown DMARC discovery {discovery!r}")
    lookups = _Lookups(resolver, budget)
    treewalk = discovery == "treewalk"
    try:
        where, record, reason = (_discover_treewalk if treewalk else _discover_rfc7489)(author, lookups)
    except DnsError as failed:
        return DmarcResult(Status.TEMPERROR, author, reason=f"DMARC record lookup failed: {failed}")
    org_of = lookups.tree_org if treewalk else organizational_domain
    base = DmarcResult(Status.NONE, author, record_domain=where, record=record,
                       org_domain=None if treewalk else org_of(author))
    if record is None:
        return replace(base, reason=reason)
    if record.p is None:
        return replace(base, reason=f"DMARC record at _dmarc.{where} has no valid p and no rua: ignored")

    # RFC 7489 §3.1, §6.6.2; RFC 9989 §4.10.2, §5.3.5: pass if any pass result is aligned.
    aligned_dkim: str | None = None
    aligned_spf = False
    lookup_error: DnsError | None = None
    for identity in dkim:
        if identity.result.lower() == "pass" and aligned_dkim is None:
            try:
                if _aligns(author, identity.domain, record.adkim, org_of):
                    aligned_dkim = normalize_domain(identity.domain)
            except DnsError as failure:
                lookup_error = failure
    if spf is not None and spf.result.lower() == "pass":
        try:
            aligned_spf = _aligns(author, spf.domain, record.aspf, org_of)
        except DnsError as failure:
            lookup_error = failure
    status = Status.PASS if aligned_dkim or aligned_spf else Status.FAIL
    base = replace(base, aligned_dkim=aligned_dkim, aligned_spf=aligned_spf,
                   org_domain=lookups.orgs.get(author) if treewalk else base.org_domain)
    if status is Status.FAIL and lookup_error is not None:
        return replace(base, result=Status.TEMPERROR, reason=f"alignment lookup failed: {lookup_error}")

    # RFC 7489 §6.3 p/sp, RFC 9091 np, RFC 9989 §4.10.1: p at the From domain itself,
    # else sp for an existing subdomain, np for a non-existent one.
    policy = record.p
    if where != author:
        policy = record.sp or record.p
        if record.np is not None and status is Status.FAIL:
            try:
                policy = policy if lookups.exists(author) else record.np
            except DnsError as failure:
                return replace(base, result=Status.TEMPERROR, reason=f"existence lookup failed: {failure}")
    base = replace(base, result=status, policy=policy)
    if status is Status.PASS:
        return replace(base, reason=f"aligned DKIM d={aligned_dkim}" if aligned_dkim else "aligned SPF")
    if policy is DomainPolicy.NONE:
        return replace(base, reason="no aligned DKIM or SPF pass")
    if record.testing:  # RFC 9989 §4.7 t=y: the policy one level lower (as pct=0 was used)
        return replace(base, disposition=policy.lowered(), reason=f"no aligned pass; t=y: {policy} in test")
    if record.pct < 100 and sample() >= record.pct / 100:  # RFC 7489 §6.6.4
        return replace(base, disposition=policy.lowered(), pct_applied=True,
                       reason=f"no aligned pass; pct={record.pct} sampled this message out")
    return replace(base, disposition=policy, reason="no aligned DKIM or SPF pass")
