"""One aggregate report (RFC 9990 §2.1): its XML, its file name and its mail's Subject.

A report covers one report domain and one period. Its <record>s are the distinct rows the dmarc
check recorded, each with its count; rows that differ only in the DMARC record that applied
(the domain changed its record during the period) are one <record>, their counts summed, since a
<record> does not say which record applied.

policy_published is the record that applied to the most messages of the period (ties: the one
whose canonical text sorts last, so that the same rows always give the same report). The
report's destinations are that record's rua: what the domain asked for while we saw its mail.

The XML is built with lxml, never by joining strings: whatever a message's sender chose (a
domain, a DKIM selector) is escaped by the serializer. Characters XML 1.0 cannot carry at all
(C0 controls, lone surrogates, U+FFFE/U+FFFF) are replaced by U+FFFD before they reach it.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from lxml import etree

from policymilter import __version__
from policymilter.dmarcreports.rows import Published, Row, SpfAuth
from policymilter.dmarcreports.schema import NAMESPACE, ReportInvalid
from policymilter.domains import valid_ldh

VERSION = "1.0"  # RFC 9990 §2.1: the version of the format
GENERATOR = f"policy-milter {__version__}"
# XML 1.0 §2.2 Char: what a document may hold at all (escaping cannot help the rest).
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def xml_text(value: str) -> str:
    """`value` with the characters XML cannot represent replaced by U+FFFD."""
    return _NOT_XML.sub("\ufffd", value)


@dataclass(frozen=True)
class Reporter:
    """Who sends the reports (policy [dmarc_reports])."""

    org_name: str
    email: str
    extra_contact_info: str = ""

    @property
    def domain(self) -> str:
        """The submitter: the domain of our report address."""
        return self.email.rpartition("@")[2].lower()


@dataclass(frozen=True)
class Report:
    reporter: Reporter
    domain: str  # the report (policy) domain
    begin: int  # first second of the period (UTC epoch)
    end: int  # its last second
    published: Published
    records: tuple[tuple[Row, int], ...]  # most messages first

    @property
    def messages(self) -> int:
        return sum(count for _, count in self.records)

    @property
    def unique_id(self) -> str:
        """Stable for (reporter, domain, period): a report sent again (after a temporary failure)
        has the same id, so a receiver that got it twice can tell."""
        seed = "\n".join((self.reporter.org_name, self.reporter.domain, self.domain, str(self.begin), str(self.end)))
        return hashlib.sha256(seed.encode()).hexdigest()[:20]

    @property
    def report_id(self) -> str:
        return f"{self.begin}.{self.unique_id}@{self.reporter.domain}"

    @property
    def file_name(self) -> str:
        """RFC 9990 §3.1: receiver "!" policy-domain "!" begin "!" end "!" unique-id ".xml.gz"."""
        return f"{self.reporter.domain}!{self.domain}!{self.begin}!{self.end}!{self.unique_id}.xml.gz"

    @property
    def subject(self) -> str:
        """RFC 9990 §3.1 (RFC 7489 §7.2.1.1): the Subject of the report's mail."""
        return f"Report Domain: {self.domain} Submitter: {self.reporter.domain} Report-ID: <{self.report_id}>"

    def period_text(self) -> str:
        return period_text(self.begin, self.end)


def period_text(begin: int, end: int) -> str:
    """`2026-12-01T00:00:00Z..2026-12-02T00:00:00Z` for a period's first and last second."""
    def moment(when: int) -> str:
        return datetime.fromtimestamp(when, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

    return f"{moment(begin)}..{moment(end + 1)}"


def choose_published(rows: Iterable[tuple[Row, int]]) -> Published:
    """The record that applied to the most messages (ties: the last in canonical order)."""
    weights: dict[str, tuple[int, Published]] = {}
    for row, count in rows:
        key = json.dumps(dataclasses.asdict(row.published), sort_keys=True)
        seen, _ = weights.get(key, (0, row.published))
        weights[key] = (seen + count, row.published)
    if not weights:
        raise ValueError("a report needs at least one row")
    return max(weights.items(), key=lambda item: (item[1][0], item[0]))[1][1]


def compose(reporter: Reporter, domain: str, period: int, interval: int, rows: Iterable[tuple[Row, int]]) -> Report:
    """The report of `domain` for the period starting at `period`, of `interval` seconds.

    Raises ReportInvalid for a report domain that could not be named in a file name or Subject.
    """
    if not valid_ldh(domain) or not valid_ldh(reporter.domain):
        raise ReportInvalid(f"{xml_text(domain)!r}: not a domain name a report can be named for")
    listed = list(rows)
    published = choose_published(listed)
    merged: dict[Row, int] = {}
    for row, count in listed:
        plain = dataclasses.replace(row, published=published)
        merged[plain] = merged.get(plain, 0) + count
    records = tuple(sorted(merged.items(), key=lambda item: (-item[1], item[0].key())))
    return Report(reporter, domain, period, period + interval - 1, published, records)


def _add(parent: etree._Element, tag: str, text: str | None = None) -> etree._Element:
    """A child element of the report's namespace; text through xml_text (lxml escapes it)."""
    child = etree.SubElement(parent, f"{{{NAMESPACE}}}{tag}")
    if text is not None:
        child.text = xml_text(text)
    return child


def _published(parent: etree._Element, published: Published, domain: str) -> None:
    element = _add(parent, "policy_published")
    _add(element, "domain", domain)
    _add(element, "discovery_method", published.discovery_method)
    _add(element, "p", published.p)
    for name, value in (("sp", published.sp), ("np", published.np)):
        if value is not None:
            _add(element, name, value)
    _add(element, "adkim", published.adkim)
    _add(element, "aspf", published.aspf)
    _add(element, "testing", published.testing)


def _record(parent: etree._Element, row: Row, count: int) -> None:
    record = _add(parent, "record")
    line = _add(record, "row")
    _add(line, "source_ip", row.source_ip)
    _add(line, "count", str(count))
    evaluated = _add(line, "policy_evaluated")
    _add(evaluated, "disposition", row.disposition)
    _add(evaluated, "dkim", "pass" if row.dkim_aligned else "fail")
    _add(evaluated, "spf", "pass" if row.spf_aligned else "fail")
    for reason in row.reasons:
        element = _add(evaluated, "reason")
        _add(element, "type", reason.type)
        if reason.comment:
            _add(element, "comment", reason.comment)
    identifiers = _add(record, "identifiers")
    if row.envelope_to:
        _add(identifiers, "envelope_to", row.envelope_to)
    _add(identifiers, "envelope_from", row.envelope_from)
    _add(identifiers, "header_from", row.header_from)
    results = _add(record, "auth_results")
    for dkim in row.dkim:
        element = _add(results, "dkim")
        _add(element, "domain", dkim.domain)
        _add(element, "selector", dkim.selector)
        _add(element, "result", dkim.result)
    # RFC 9990 §2.1: a record always has an SPF result; a message SPF said nothing about (not
    # checked, e.g. the check was off) is reported as "none" for its envelope domain.
    for spf in row.spf or (SpfAuth(row.envelope_from, "mfrom", "none"),):
        element = _add(results, "spf")
        _add(element, "domain", spf.domain)
        _add(element, "scope", spf.scope)
        _add(element, "result", spf.result)


def to_xml(report: Report) -> bytes:
    """The report as an XML document (UTF-8, with its declaration)."""
    # The default namespace (no prefix), as RFC 9990's examples write it; lxml-stubs type nsmap
    # keys as str only, where lxml takes None for the default.
    root = etree.Element(f"{{{NAMESPACE}}}feedback", nsmap={None: NAMESPACE})  # type: ignore[dict-item]
    _add(root, "version", VERSION)
    metadata = _add(root, "report_metadata")
    _add(metadata, "org_name", report.reporter.org_name)
    _add(metadata, "email", report.reporter.email)
    if report.reporter.extra_contact_info:
        _add(metadata, "extra_contact_info", report.reporter.extra_contact_info)
    _add(metadata, "report_id", report.report_id)
    dates = _add(metadata, "date_range")
    _add(dates, "begin", str(report.begin))
    _add(dates, "end", str(report.end))
    _add(metadata, "generator", GENERATOR)
    _published(root, report.published, report.domain)
    for row, count in report.records:
        _record(root, row, count)
    document: bytes = etree.tostring(root, xml_declaration=True, encoding="UTF-8", pretty_print=True)
    return document


def compress(document: bytes) -> bytes:
    """gzip, with no time or name in the header: the same report gives the same bytes."""
    return gzip.compress(document, compresslevel=9, mtime=0)
