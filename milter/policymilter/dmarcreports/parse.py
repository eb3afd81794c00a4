"""One aggregate report's XML -> `model.Report`, strictly (RFC 7489 Appendix C, RFC 9990 §3 and its schema).

Safety first: lxml parses with entities unresolved, no network, no DTD loading and libxml2's
default size and depth limits (`huge_tree=False`), and a document with a DOCTYPE at all is
refused, by a look at its first 64 KiB and again when the parser reaches the root element: no
report has one (neither schema allows it), and one is how
external entities (XXE) and entity expansion (billion laughs) arrive.

Strict means: every element the schema requires is present (`missing <x>`), nothing appears more
often than it may, no element of the report's own namespace is unknown, values are checked
against their types and enumerations, and order is checked where both schemas fix it (the
children of feedback, record, row, policy_evaluated and auth_results). Lenient only where a
schema is: optional elements, whitespace around values, the order of children that RFC 9990
declares `xs:all` (report_metadata, date_range, policy_published, identifiers, dkim, spf, reason),
and elements of another namespace where RFC 9990 allows extensions (inside `extension`, at the end
of a `record`). Reporters mix the two vocabularies during the transition (an RFC 7489 report
with RFC 9990's `np` or `generator`, a disposition of `pass`): a name or an enumerated value that
either RFC defines is accepted in both formats; what each format requires stays per format (RFC
9990 requires a DKIM `selector` and makes the SPF result optional; RFC 7489 the reverse). The
RFC 7489 schema's `sp`, `pct` and `fo` are required there but omitted by most reporters: optional.

Bounded: besides libxml2's own limits, elements are counted as the parser meets them: at most
MAX_OUTSIDE elements outside the records (metadata, policy, extension contents), MAX_IN_RECORD in
one record, and ELEMENTS_PER_RECORD times max-records in all, so a document of tiny elements is a
named error early, not a tree of millions held until its end. A record's count is at most
MAX_COUNT (a thousand million messages from one address in one report is not a report, it is a
lie or a bug). An IPv4 sender written as IPv6 (::ffff:a.b.c.d, RFC 4291 §2.5.5.2; the RFC 2765
and RFC 6052 well-known NAT64 prefixes) is folded into IPv4: one sender, one source. The policy
domain is normalised to A-labels, IDNA2008 with UTS #46 mapping (`policymilter.domains`): full-width
letters are the ASCII name, a look-alike in another script stays its own (xn--) name.

Every problem raises `ReportError` naming the element path and the line.
"""

from __future__ import annotations

import io
import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass

from lxml import etree

from policymilter.dmarcreports.model import DkimResult, Format, PolicyPublished, Record, Report, SpfResult
from policymilter.domains import DomainError, to_ascii
from policymilter.safetext import for_log

NAMESPACES = {None: Format.RFC7489, "http://dmarc.org/dmarc-xml/0.1": Format.DRAFT01,
              "urn:ietf:params:xml:ns:dmarc-2.0": Format.RFC9990}
DOCTYPE_REFUSED = "has a DOCTYPE (entities are not allowed)"
# The prolog (where a DOCTYPE must be) is searched in the encodings XML allows without a
# declaration (XML 1.0 §4.3.3, Appendix F); lxml's own docinfo is the second look, after parsing.
_DOCTYPE_MARKS = tuple("<!DOCTYPE".encode(codec) for codec in ("ascii", "utf-16-le", "utf-16-be"))
_PROLOG = 1 << 16

_DISPOSITIONS = frozenset({"none", "quarantine", "reject"})  # p, sp, np
_APPLIED = _DISPOSITIONS | {"pass"}  # policy_evaluated/disposition: RFC 9990 adds "pass"
_ALIGNMENT = frozenset({"pass", "fail"})
_DKIM_RESULTS = frozenset({"none", "pass", "fail", "policy", "neutral", "temperror", "permerror"})
_SPF_RESULTS = frozenset({"none", "neutral", "pass", "fail", "softfail", "temperror", "permerror"})
_OVERRIDES = frozenset({"forwarded", "sampled_out", "trusted_forwarder", "mailing_list", "local_policy", "other",
                        "policy_test_mode"})
_WHOLE = re.compile(r"\d{1,15}", re.ASCII)
_DECIMAL = re.compile(r"\d{1,6}(\.\d{1,6})?", re.ASCII)
_POSITION = re.compile(r", line \d+, column \d+$")
LAST_TIME = 253402300799  # 9999-12-31T23:59:59Z: what a datetime can show
MAX_COUNT = 10**9  # messages in one record
MAX_OUTSIDE = 10_000  # elements outside the records
MAX_IN_RECORD = 1_000  # elements in one record (a real one has about 20)
ELEMENTS_PER_RECORD = 40  # times max-records: the elements of a whole document
# IPv4 in IPv6 clothing: mapped (RFC 4291), translated (RFC 2765), NAT64 well-known prefix (RFC 6052).
_IPV4_IN_IPV6 = tuple(ipaddress.IPv6Network(prefix) for prefix in ("::ffff:0:0/96", "::ffff:0:0:0/96",
                                                                   "64:ff9b::/96"))


class ReportError(Exception):
    """Why a document is not a valid aggregate report, and where."""

    def __init__(self, reason: str, where: str | None = None, line: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.where = where
        self.line = line

    def __str__(self) -> str:
        place = ", ".join(part for part in (self.where, f"line {self.line}" if self.line else None) if part)
        return f"{self.reason} (where: {place})" if place else self.reason


@dataclass(frozen=True)
class Field:
    name: str
    least: int = 1
    most: int | None = 1  # None: unbounded


# lxml's iterparse takes the XMLParser options: entities unresolved, no network, no DTD.
_OPTIONS: dict[str, bool] = {"resolve_entities": False, "no_network": True, "load_dtd": False,
                             "dtd_validation": False, "huge_tree": False, "remove_comments": True,
                             "remove_pis": True}


def parse_report(data: bytes, max_records: int) -> Report:
    """The report in `data`, or ReportError. Never anything else, whatever `data` holds.

    Records are read as the parser reaches the end of each and then emptied, so memory follows
    the records kept, not the size of the tree (a 50 MiB report would be ~10 times that in lxml).
    """
    if any(mark in data[:_PROLOG] for mark in _DOCTYPE_MARKS):
        raise ReportError(DOCTYPE_REFUSED)
    reader: _Reader | None = None
    records: list[Record] = []
    most = MAX_OUTSIDE + ELEMENTS_PER_RECORD * max_records
    total = outside = in_record = 0
    record: etree._Element | None = None
    try:
        for event, element in etree.iterparse(io.BytesIO(data), events=("start", "end"), **_OPTIONS):
            if reader is None:  # the root's start: the prolog, with any DOCTYPE, is behind us
                if getattr(element.getroottree().docinfo, "doctype", None):  # lxml-stubs lack DocInfo.doctype
                    raise ReportError(DOCTYPE_REFUSED)
                reader = _Reader(element, max_records)
            elif event == "start":
                total += 1
                if total > most:
                    raise ReportError(f"more than {most} elements ({ELEMENTS_PER_RECORD} per record of "
                                      "max-records)", None, _line(element))
                if record is not None:
                    in_record += 1
                    if in_record > MAX_IN_RECORD:
                        raise ReportError(f"a record with more than {MAX_IN_RECORD} elements",
                                          f"feedback/record[{len(records) + 1}]", _line(element))
                elif element.getparent() is reader.root and reader.is_record(element):
                    record, in_record = element, 0
                else:
                    outside += 1
                    if outside > MAX_OUTSIDE:
                        raise ReportError(f"more than {MAX_OUTSIDE} elements outside the records", None,
                                          _line(element))
            elif record is not None and element is record:
                if len(records) == max_records:
                    raise ReportError(f"more than {max_records} records (limit max-records)", "feedback",
                                      _line(element))
                records.append(reader.record(element, f"feedback/record[{len(records) + 1}]"))
                element.clear()  # an empty <record> stays: the order of feedback's children is checked at the end
                record = None
    except etree.XMLSyntaxError as error:
        raise _syntax_error(data, error) from None
    except ValueError as error:  # lxml: e.g. an encoding it cannot use
        raise ReportError(f"not readable XML: {for_log(str(error), 160)}") from None
    if reader is None:
        raise ReportError("not well-formed XML: no root element")
    return reader.report(records)


def _syntax_error(data: bytes, error: etree.XMLSyntaxError) -> ReportError:
    """iterparse sometimes says only "no element found" (an undefined entity, for one): the same safe
    options in one piece name the first error, at the cost of a second parse of a broken document."""
    try:
        etree.fromstring(data, etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False,
                                               dtd_validation=False, huge_tree=False))
    except etree.XMLSyntaxError as first:
        error = first
    reason = _POSITION.sub("", str(error.msg))  # libxml2 repeats the position the error carries
    return ReportError(f"not well-formed XML: {for_log(reason, 160)}", line=error.lineno or None)


class _Reader:
    def __init__(self, root: etree._Element, max_records: int) -> None:
        self.root = root
        self.max_records = max_records
        qname = etree.QName(root)
        if qname.localname != "feedback" or qname.namespace not in NAMESPACES:
            raise ReportError(f"not a DMARC aggregate report: the root element is <{_shown(root)}>, not <feedback> "
                              "(without a namespace, or RFC 9990's urn:ietf:params:xml:ns:dmarc-2.0)",
                              "/", _line(root))
        self.namespace = qname.namespace
        self.format = NAMESPACES[qname.namespace]

    # -- the tree --------------------------------------------------------------------------

    def _ours(self, element: etree._Element) -> bool:
        namespace = etree.QName(element).namespace
        # The 0.1 schema has no elementFormDefault: its children may come without a namespace.
        return namespace == self.namespace or (self.format is Format.DRAFT01 and namespace is None)

    def _group(self, element: etree._Element, path: str, fields: Sequence[Field], *, ordered: bool,
               extensions: bool = False) -> dict[str, list[etree._Element]]:
        """The children of `element` by name, checked against `fields`. `extensions`: elements of
        another namespace may follow (RFC 9990 record: `xs:any namespace="##other"`)."""
        names = [field.name for field in fields]
        found: dict[str, list[etree._Element]] = {name: [] for name in names}
        position = 0
        foreign_seen = False
        for child in element.iterchildren(tag=etree.Element):
            if not self._ours(child):
                if not extensions:
                    raise ReportError(f"unexpected element <{_shown(child)}> (extensions are allowed only inside "
                                      "<extension> and at the end of a <record>)", path, _line(child))
                foreign_seen = True
                continue
            name = etree.QName(child).localname
            if name not in found:
                raise ReportError(f"unexpected element <{for_log(name, 60)}>", path, _line(child))
            if foreign_seen:
                raise ReportError(f"<{name}> after an extension element (extensions come last)", path,
                                  _line(child))
            index = names.index(name)
            if ordered and index < position:
                raise ReportError(f"<{name}> out of order (it comes before <{names[position]}>)", path,
                                  _line(child))
            position = max(position, index)
            found[name].append(child)
        for field in fields:
            count = len(found[field.name])
            if count < field.least:
                raise ReportError(f"missing <{field.name}>", path, _line(element))
            if field.most is not None and count > field.most:
                raise ReportError(f"<{field.name}> appears {count} times (at most {field.most})", path,
                                  _line(found[field.name][field.most]))
        return found

    def _text(self, element: etree._Element, path: str, *, empty: bool = False) -> str:
        for child in element.iterchildren(tag=etree.Element):
            raise ReportError(f"unexpected element <{_shown(child)}> in a text value", path, _line(child))
        text = (element.text or "").strip()
        if not text and not empty:
            raise ReportError("empty value", path, _line(element))
        return text

    def _one(self, found: dict[str, list[etree._Element]], name: str, path: str, *, empty: bool = False) -> str:
        return self._text(found[name][0], f"{path}/{name}", empty=empty)

    def _maybe(self, found: dict[str, list[etree._Element]], name: str, path: str) -> str | None:
        return self._text(found[name][0], f"{path}/{name}", empty=True) if found[name] else None

    def _choice(self, element: etree._Element, path: str, allowed: frozenset[str]) -> str:
        value = self._text(element, path)
        if value not in allowed:
            raise ReportError(f"{for_log(value, 40)!r} is not one of {', '.join(sorted(allowed))}", path,
                              _line(element))
        return value

    def _opt_choice(self, found: dict[str, list[etree._Element]], name: str, path: str,
                    allowed: frozenset[str]) -> str | None:
        return self._choice(found[name][0], f"{path}/{name}", allowed) if found[name] else None

    def _whole(self, element: etree._Element, path: str, most: int | None = None) -> int:
        text = self._text(element, path)
        if not _WHOLE.fullmatch(text) or (most is not None and int(text) > most):
            bound = f" up to {most}" if most is not None else ""
            raise ReportError(f"{for_log(text, 40)!r} is not a non-negative integer{bound}", path, _line(element))
        return int(text)

    # -- the report ------------------------------------------------------------------------

    def is_record(self, element: etree._Element) -> bool:
        return self._ours(element) and etree.QName(element).localname == "record"

    def report(self, records: Sequence[Record]) -> Report:
        """The report around `records` (read already, by `record`)."""
        path = "feedback"
        top = self._group(self.root, path, [Field("version", 0), Field("report_metadata"),
                                            Field("policy_published"), Field("extension", 0),
                                            Field("record", 1, None)], ordered=True)
        if top["version"]:
            self._version(top["version"][0], f"{path}/version")
        org_name, email, report_id, begin, end, generator = self._metadata(top["report_metadata"][0],
                                                                             f"{path}/report_metadata")
        policy = self._policy(top["policy_published"][0], f"{path}/policy_published")
        return Report(self.format, org_name, email, report_id, begin, end, generator, policy, tuple(records))

    def _version(self, element: etree._Element, path: str) -> None:
        text = self._text(element, path)
        if not _DECIMAL.fullmatch(text):
            raise ReportError(f"{for_log(text, 40)!r} is not a decimal number", path, _line(element))
        if self.format is Format.RFC9990 and float(text) != 1.0:  # RFC 9990 §3.1.1: MUST be 1.0
            raise ReportError(f"version {text}: RFC 9990 reports are version 1.0", path, _line(element))

    def _metadata(self, element: etree._Element, path: str) -> tuple[str, str, str, int, int, str | None]:
        found = self._group(element, path, [Field("org_name"), Field("email"), Field("extra_contact_info", 0),
                                            Field("report_id"), Field("date_range"), Field("error", 0, None),
                                            Field("generator", 0)], ordered=False)
        for error in found["error"]:
            self._text(error, f"{path}/error", empty=True)
        extra = found["extra_contact_info"]
        if extra:
            self._text(extra[0], f"{path}/extra_contact_info", empty=True)
        dates = found["date_range"][0]
        dates_path = f"{path}/date_range"
        span = self._group(dates, dates_path, [Field("begin"), Field("end")], ordered=False)
        begin = self._whole(span["begin"][0], f"{dates_path}/begin", LAST_TIME)
        end = self._whole(span["end"][0], f"{dates_path}/end", LAST_TIME)
        if begin > end:
            raise ReportError(f"begin {begin} is after end {end}", dates_path, _line(dates))
        return (self._one(found, "org_name", path), self._one(found, "email", path),
                self._one(found, "report_id", path), begin, end, self._maybe(found, "generator", path))

    def _policy(self, element: etree._Element, path: str) -> PolicyPublished:
        found = self._group(element, path, [Field("domain"), Field("discovery_method", 0), Field("adkim", 0),
                                            Field("aspf", 0), Field("p"), Field("sp", 0), Field("np", 0),
                                            Field("pct", 0), Field("fo", 0), Field("testing", 0),
                                            Field("psd", 0)], ordered=False)
        self._opt_choice(found, "discovery_method", path, frozenset({"psl", "treewalk"}))
        self._opt_choice(found, "psd", path, frozenset({"y", "n", "u"}))
        self._maybe(found, "fo", path)
        pct = self._whole(found["pct"][0], f"{path}/pct", 100) if found["pct"] else None
        alignment = frozenset({"r", "s"})
        return PolicyPublished(
            domain=self._domain(found["domain"][0], f"{path}/domain"),
            p=self._choice(found["p"][0], f"{path}/p", _DISPOSITIONS),
            sp=self._opt_choice(found, "sp", path, _DISPOSITIONS),
            np=self._opt_choice(found, "np", path, _DISPOSITIONS),
            pct=pct,
            adkim=self._opt_choice(found, "adkim", path, alignment),
            aspf=self._opt_choice(found, "aspf", path, alignment),
            testing=self._opt_choice(found, "testing", path, frozenset({"n", "y"})),
        )

    def _domain(self, element: etree._Element, path: str) -> str:
        text = self._text(element, path)
        try:
            return to_ascii(text)
        except DomainError:
            raise ReportError(f"{for_log(text.lower().rstrip('.'), 80)!r} is not a domain name", path,
                              _line(element)) from None

    def record(self, element: etree._Element, path: str) -> Record:
        found = self._group(element, path, [Field("row"), Field("identifiers"), Field("auth_results")],
                            ordered=True, extensions=True)
        row_path = f"{path}/row"
        row = self._group(found["row"][0], row_path, [Field("source_ip"), Field("count"), Field("policy_evaluated")],
                          ordered=True)
        source_ip = self._address(row["source_ip"][0], f"{row_path}/source_ip")
        count = self._whole(row["count"][0], f"{row_path}/count")
        if count > MAX_COUNT:
            raise ReportError(f"count {count} is more than {MAX_COUNT} messages from one address in one report "
                              "(not plausible)", f"{row_path}/count", _line(row["count"][0]))
        evaluated_path = f"{row_path}/policy_evaluated"
        evaluated = self._group(row["policy_evaluated"][0], evaluated_path,
                                [Field("disposition"), Field("dkim"), Field("spf"), Field("reason", 0, None)],
                                ordered=True)
        reasons = []
        for index, reason in enumerate(evaluated["reason"], start=1):
            reason_path = f"{evaluated_path}/reason[{index}]"
            parts = self._group(reason, reason_path, [Field("type"), Field("comment", 0)], ordered=False)
            reasons.append(self._choice(parts["type"][0], f"{reason_path}/type", _OVERRIDES))
            self._maybe(parts, "comment", reason_path)
        ids_path = f"{path}/identifiers"
        ids = self._group(found["identifiers"][0], ids_path,
                          [Field("envelope_to", 0), Field("envelope_from", 0), Field("header_from")], ordered=False)
        self._maybe(ids, "envelope_to", ids_path)
        dkim, spf = self._auth_results(found["auth_results"][0], f"{path}/auth_results")
        return Record(
            source_ip=source_ip, count=count,
            disposition=self._choice(evaluated["disposition"][0], f"{evaluated_path}/disposition", _APPLIED),
            dkim_aligned=self._choice(evaluated["dkim"][0], f"{evaluated_path}/dkim", _ALIGNMENT) == "pass",
            spf_aligned=self._choice(evaluated["spf"][0], f"{evaluated_path}/spf", _ALIGNMENT) == "pass",
            reasons=tuple(reasons),
            header_from=self._one(ids, "header_from", ids_path).lower(),
            envelope_from=self._maybe(ids, "envelope_from", ids_path),  # RFC 9990: empty for a null reverse-path
            dkim=dkim, spf=spf,
        )

    def _address(self, element: etree._Element, path: str) -> str:
        text = self._text(element, path)
        try:
            if "%" in text:  # a zone index names an interface of the reporter, not a sender
                raise ValueError(text)
            address = ipaddress.ip_address(text)
            if isinstance(address, ipaddress.IPv6Address) and any(address in net for net in _IPV4_IN_IPV6):
                return str(ipaddress.IPv4Address(int(address) & 0xFFFF_FFFF))
            return str(address)
        except ValueError:
            raise ReportError(f"{for_log(text, 60)!r} is not an IPv4 or IPv6 address", path,
                              _line(element)) from None

    def _auth_results(self, element: etree._Element, path: str) -> tuple[tuple[DkimResult, ...],
                                                                           tuple[SpfResult, ...]]:
        # RFC 7489 Appendix C: at least one spf; RFC 9990 §3.1.9: spf optional.
        least_spf = 0 if self.format is Format.RFC9990 else 1
        found = self._group(element, path, [Field("dkim", 0, None), Field("spf", least_spf, None)], ordered=True)
        dkim = []
        for index, result in enumerate(found["dkim"], start=1):
            dkim_path = f"{path}/dkim[{index}]"
            # RFC 9990 §3.1.10: selector required; RFC 7489: optional.
            parts = self._group(result, dkim_path, [Field("domain"), Field("selector", int(self.format is
                                                                                         Format.RFC9990)),
                                                    Field("result"), Field("human_result", 0)], ordered=False)
            self._maybe(parts, "human_result", dkim_path)
            dkim.append(DkimResult(self._one(parts, "domain", dkim_path).lower(),
                                   self._maybe(parts, "selector", dkim_path) or "",
                                   self._choice(parts["result"][0], f"{dkim_path}/result", _DKIM_RESULTS)))
        spf = []
        for index, result in enumerate(found["spf"], start=1):
            spf_path = f"{path}/spf[{index}]"
            parts = self._group(result, spf_path, [Field("domain"), Field("scope", 0), Field("result"),
                                                   Field("human_result", 0)], ordered=False)
            self._maybe(parts, "human_result", spf_path)
            # The domain may be empty: a null reverse-path checked by its HELO name (RFC 7208 §2.4).
            spf.append(SpfResult(self._one(parts, "domain", spf_path, empty=True).lower(),
                                 self._opt_choice(parts, "scope", spf_path, frozenset({"mfrom", "helo"})) or "",
                                 self._choice(parts["result"][0], f"{spf_path}/result", _SPF_RESULTS)))
        return tuple(dkim), tuple(spf)


def _line(element: etree._Element) -> int | None:
    line: object = element.sourceline  # lxml-stubs type it as "..."
    return line if isinstance(line, int) else None


def _shown(element: etree._Element) -> str:
    qname = etree.QName(element)
    name = for_log(qname.localname, 60)
    return f"{{{for_log(qname.namespace, 80)}}}{name}" if qname.namespace else name
