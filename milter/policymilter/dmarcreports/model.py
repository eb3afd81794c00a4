"""What an aggregate report says, once parsed (RFC 7489 Appendix C, RFC 9990 §3): plain frozen data.

Only what `dmarc-reports read` uses is kept; values are the report's own, validated by `parse.py`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Format(StrEnum):
    """Which schema a report follows, from the root element's namespace."""

    RFC7489 = "rfc7489"  # no namespace (RFC 7489 Appendix C)
    DRAFT01 = "dmarc-xml-0.1"  # http://dmarc.org/dmarc-xml/0.1, the pre-RFC schema many still send
    RFC9990 = "rfc9990"  # urn:ietf:params:xml:ns:dmarc-2.0


class Verdict(StrEnum):
    """Of a set of messages, from the reporter's policy_evaluated (the DMARC alignment results)."""

    ALIGNED = "aligned"  # DKIM and SPF aligned
    FAILS_SPF_ONLY = "fails SPF only"  # DKIM aligned: passes, and survives forwarding
    FAILS_DKIM_ONLY = "fails DKIM only"  # passes by SPF alone: breaks when forwarded
    FAILS_BOTH = "fails both"  # fails DMARC: refused under p=reject

    @classmethod
    def of(cls, dkim_aligned: bool, spf_aligned: bool) -> Verdict:
        match dkim_aligned, spf_aligned:
            case True, True:
                return cls.ALIGNED
            case True, False:
                return cls.FAILS_SPF_ONLY
            case False, True:
                return cls.FAILS_DKIM_ONLY
            case _:
                return cls.FAILS_BOTH

    @property
    def rank(self) -> int:
        """Worse is higher (sorting, ties)."""
        return list(Verdict).index(self)


@dataclass(frozen=True)
class DkimResult:
    domain: str
    selector: str  # "" when the report has none (RFC 7489 makes it optional)
    result: str  # RFC 8601 §2.7.1


@dataclass(frozen=True)
class SpfResult:
    domain: str
    scope: str  # "mfrom", "helo" or "" (not given)
    result: str  # RFC 8601 §2.7.2


@dataclass(frozen=True)
class Record:
    source_ip: str  # normalised (ipaddress)
    count: int
    disposition: str  # none | pass | quarantine | reject
    dkim_aligned: bool  # policy_evaluated/dkim == pass
    spf_aligned: bool  # policy_evaluated/spf == pass
    reasons: tuple[str, ...]  # policy override types (RFC 7489 §7.2.1.1 PolicyOverrideType)
    header_from: str
    envelope_from: str | None
    dkim: tuple[DkimResult, ...]
    spf: tuple[SpfResult, ...]

    @property
    def verdict(self) -> Verdict:
        return Verdict.of(self.dkim_aligned, self.spf_aligned)


@dataclass(frozen=True)
class PolicyPublished:
    domain: str  # lower case, no trailing dot
    p: str
    sp: str | None = None
    np: str | None = None  # RFC 9990: non-existent subdomains
    pct: int | None = None  # RFC 7489 only
    adkim: str | None = None
    aspf: str | None = None
    testing: str | None = None  # RFC 9990 t= (y: the policy is not applied)


@dataclass(frozen=True)
class Report:
    format: Format
    org_name: str
    email: str
    report_id: str
    begin: int  # seconds since the epoch, UTC (RFC 7489 §7.2.1.1 date_range)
    end: int
    generator: str | None
    policy: PolicyPublished
    records: tuple[Record, ...]

    @property
    def key(self) -> tuple[str, str]:
        """RFC 7489 §7.2.1.1: report_id is unique per reporting organisation."""
        return self.org_name, self.report_id
