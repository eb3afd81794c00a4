"""dmarc-reports send, composing: the exact XML of a report from given Rows, its name, its Subject;
and the schema every report is checked against (it must also reject what RFC 9990 does not allow)."""

from __future__ import annotations

import calendar
import dataclasses
import gzip
import json
import re

import pytest
from lxml import etree

from policymilter.dmarcreports import compose, schema
from policymilter.dmarcreports.rows import DkimAuth, Override, Published, Row, SpfAuth

DAY = 86400
PERIOD = calendar.timegm((2026, 12, 1, 0, 0, 0))  # 2026-12-01T00:00:00Z
US = compose.Reporter("Example Org", "dmarc-noreply@example.org", "https://example.org/dmarc")
REJECT = Published("sender.test", "reject", sp="quarantine", adkim="s", rua=("mailto:agg@sender.test",))
NONE = Published("sender.test", "none", rua=("mailto:agg@sender.test",))
PASSING = Row("192.0.2.1", "sender.test", "sender.test", "example.org", REJECT, "pass", True, True,
              dkim=(DkimAuth("sender.test", "s1", "pass"),), spf=(SpfAuth("sender.test", "mfrom", "pass"),))
FORGED = Row("2001:db8::25", "sender.test", "other.test", "", REJECT, "reject", False, False,
             dkim=(DkimAuth("other.test", "x", "fail"), DkimAuth("sender.test", "s1", "permerror")),
             spf=(SpfAuth("other.test", "mfrom", "softfail"),))
FORWARDED = Row("198.51.100.7", "sender.test", "", "example.org", REJECT, "none", False, False,
                reasons=(Override("trusted_forwarder", "list.example & co"),),
                spf=(SpfAuth("fwd.example", "mfrom", "pass"),))


def report(*rows: tuple[Row, int], domain: str = "sender.test") -> compose.Report:
    """A composed report, already checked against the schema (every report a test makes is)."""
    made = compose.compose(US, domain, PERIOD, DAY, rows)
    schema.validate(compose.to_xml(made))
    return made


def records(document: bytes) -> list[str]:
    """Each <record> of a serialized report, whitespace squeezed out."""
    text = document.decode()
    return [re.sub(r">\s+<", "><", found) for found in re.findall(r"<record>.*?</record>", text, re.S)]


EXPECTED = {
    "aligned pass": (PASSING, 3,
                     "<record><row><source_ip>192.0.2.1</source_ip><count>3</count><policy_evaluated>"
                     "<disposition>pass</disposition><dkim>pass</dkim><spf>pass</spf></policy_evaluated></row>"
                     "<identifiers><envelope_to>example.org</envelope_to><envelope_from>sender.test</envelope_from>"
                     "<header_from>sender.test</header_from></identifiers><auth_results><dkim>"
                     "<domain>sender.test</domain><selector>s1</selector><result>pass</result></dkim><spf>"
                     "<domain>sender.test</domain><scope>mfrom</scope><result>pass</result></spf></auth_results>"
                     "</record>"),
    "forged, two signatures, no envelope_to": (
        FORGED, 1,
        "<record><row><source_ip>2001:db8::25</source_ip><count>1</count><policy_evaluated>"
        "<disposition>reject</disposition><dkim>fail</dkim><spf>fail</spf></policy_evaluated></row>"
        "<identifiers><envelope_from>other.test</envelope_from><header_from>sender.test</header_from>"
        "</identifiers><auth_results><dkim><domain>other.test</domain><selector>x</selector><result>fail</result>"
        "</dkim><dkim><domain>sender.test</domain><selector>s1</selector><result>permerror</result></dkim><spf>"
        "<domain>other.test</domain><scope>mfrom</scope><result>softfail</result></spf></auth_results></record>"),
    "override reason, null sender (HELO as MAIL FROM), escaped comment": (
        FORWARDED, 2,
        "<record><row><source_ip>198.51.100.7</source_ip><count>2</count><policy_evaluated>"
        "<disposition>none</disposition><dkim>fail</dkim><spf>fail</spf><reason><type>trusted_forwarder</type>"
        "<comment>list.example &amp; co</comment></reason></policy_evaluated></row><identifiers>"
        "<envelope_to>example.org</envelope_to><envelope_from></envelope_from><header_from>sender.test</header_from>"
        "</identifiers><auth_results><spf><domain>fwd.example</domain><scope>mfrom</scope><result>pass</result>"
        "</spf></auth_results></record>"),
    "no SPF result: none for the envelope domain": (
        Row("192.0.2.9", "sender.test", "bounce.sender.test", "", REJECT, "quarantine", False, False), 5,
        "<record><row><source_ip>192.0.2.9</source_ip><count>5</count><policy_evaluated>"
        "<disposition>quarantine</disposition><dkim>fail</dkim><spf>fail</spf></policy_evaluated></row>"
        "<identifiers><envelope_from>bounce.sender.test</envelope_from><header_from>sender.test</header_from>"
        "</identifiers><auth_results><spf><domain>bounce.sender.test</domain><scope>mfrom</scope>"
        "<result>none</result></spf></auth_results></record>"),
}


@pytest.mark.parametrize("row, count, expected", EXPECTED.values(), ids=EXPECTED.keys())
def test_one_row_is_one_record_with_its_count(row, count, expected):
    document = compose.to_xml(report((row, count)))
    schema.validate(document)
    assert records(document) == [expected]


def test_the_whole_report_is_valid_and_says_who_when_and_what_policy():
    made = report((PASSING, 3), (FORGED, 1), (FORWARDED, 2))
    document = compose.to_xml(made)
    schema.validate(document)
    root = etree.fromstring(document)
    ns = {"d": schema.NAMESPACE}

    def text(path: str) -> list[str]:
        return [element.text or "" for element in root.findall(path, ns)]

    assert text("d:version") == ["1.0"]
    assert text("d:report_metadata/d:org_name") == ["Example Org"]
    assert text("d:report_metadata/d:email") == ["dmarc-noreply@example.org"]
    assert text("d:report_metadata/d:extra_contact_info") == ["https://example.org/dmarc"]
    assert text("d:report_metadata/d:date_range/d:begin") == [str(PERIOD)]
    assert text("d:report_metadata/d:date_range/d:end") == [str(PERIOD + DAY - 1)]
    assert text("d:report_metadata/d:generator") == [compose.GENERATOR]
    assert text("d:report_metadata/d:report_id") == [made.report_id]
    assert [(child.tag.split("}")[1], child.text) for child in root.find("d:policy_published", ns)] == [
        ("domain", "sender.test"), ("discovery_method", "psl"), ("p", "reject"), ("sp", "quarantine"),
        ("adkim", "s"), ("aspf", "r"), ("testing", "n")]
    # most messages first
    assert text("d:record/d:row/d:count") == ["3", "2", "1"]
    assert made.messages == 6


def test_rows_differing_only_in_the_record_that_applied_are_one_record():
    made = report((PASSING, 3), (dataclasses.replace(PASSING, published=NONE), 2))
    assert [count for _, count in made.records] == [5]
    assert made.published == REJECT  # the record that applied to the most messages


@pytest.mark.parametrize("weights, expected", [
    ((3, 5), NONE),
    ((5, 3), REJECT),
    ((4, 4), max((REJECT, NONE), key=lambda p: json.dumps(dataclasses.asdict(p), sort_keys=True))),
], ids=["more under p=none", "more under p=reject", "a tie: always the same one"])
def test_policy_published_is_the_record_most_messages_met(weights, expected):
    other = Row("192.0.2.2", "sender.test", "sender.test", "", NONE, "none", True, False)
    assert report((PASSING, weights[0]), (other, weights[1])).published == expected


def test_report_id_file_name_and_subject_follow_rfc_9990():
    made = report((PASSING, 1))
    again = report((FORGED, 7))
    other_domain = report((PASSING, 1), domain="other.test")
    assert made.report_id == again.report_id  # stable per (reporter, domain, period): a resend is the same report
    assert made.report_id != other_domain.report_id
    assert re.fullmatch(rf"{PERIOD}\.[0-9a-f]{{20}}@example\.org", made.report_id)
    assert made.file_name == f"example.org!sender.test!{PERIOD}!{PERIOD + DAY - 1}!{made.unique_id}.xml.gz"
    assert re.fullmatch(r"[A-Za-z0-9]+", made.unique_id)  # RFC 9990 unique-id = 1*(ALPHA / DIGIT)
    assert made.subject == f"Report Domain: sender.test Submitter: example.org Report-ID: <{made.report_id}>"
    assert made.period_text() == "2026-12-01T00:00:00Z..2026-12-02T00:00:00Z"


def test_the_gzip_is_the_document_and_the_same_each_time():
    document = compose.to_xml(report((PASSING, 1)))
    assert gzip.decompress(compose.compress(document)) == document
    assert compose.compress(document) == compose.compress(document)


@pytest.mark.parametrize("sent, shown", [
    ("a<b>&c", "a&lt;b&gt;&amp;c"),
    ("ctl\x00\x01\x1f.test", "ctl\ufffd\ufffd\ufffd.test"),
    ("lone\ud800surrogate", "lone\ufffdsurrogate"),
    ("tab\tok", "tab\tok"),
    ("\ufffe\uffff", "\ufffd\ufffd"),
])
def test_what_a_sender_chose_is_escaped_or_replaced_never_breaks_the_xml(sent, shown):
    row = Row("192.0.2.1", "sender.test", sent, "", REJECT, "none", False, False,
              dkim=(DkimAuth(sent, sent, "fail"),))
    document = compose.to_xml(report((row, 1)))
    schema.validate(document)
    assert f"<selector>{shown}</selector>" in document.decode()


def test_a_report_domain_that_cannot_name_a_file_is_refused():
    with pytest.raises(schema.ReportInvalid, match="not a domain name"):
        report((PASSING, 1), domain="../../etc")


# --- the schema is not vacuous: it refuses what RFC 9990 does not allow --------------------------

def valid() -> str:
    return compose.to_xml(report((PASSING, 3), (FORGED, 1))).decode()


BROKEN = {
    "wrong namespace": (lambda d: d.replace(schema.NAMESPACE, "urn:example:other"), "No matching global declaration"),
    "RFC 7489 namespace-less report": (lambda d: d.replace(f' xmlns="{schema.NAMESPACE}"', ""),
                                       "No matching global declaration"),
    "no record": (lambda d: re.sub(r"<record>.*</record>", "", d, flags=re.S), "Missing child element"),
    "unknown disposition": (lambda d: d.replace("<disposition>pass</disposition>",
                                                "<disposition>bounce</disposition>"), "disposition"),
    "p=pass is not a published policy": (lambda d: d.replace("<p>reject</p>", "<p>pass</p>"), "dmarc-2.0}p'"),
    "not an IP address": (lambda d: d.replace("<source_ip>192.0.2.1</source_ip>",
                                              "<source_ip>mail.example</source_ip>"), "source_ip"),
    "IPv4 octet too large": (lambda d: d.replace("192.0.2.1<", "192.0.2.256<"), "source_ip"),
    "negative count": (lambda d: d.replace("<count>3</count>", "<count>-3</count>"), "count"),
    "no SPF result": (lambda d: re.sub(r"<spf>\s*<domain>other.test.*?</spf>", "", d, flags=re.S),
                      "Missing child element"),
    "unknown SPF scope": (lambda d: d.replace("<scope>mfrom</scope>", "<scope>rcpt</scope>", 1), "scope"),
    "helo scope (RFC 9990: mfrom only)": (lambda d: d.replace("<scope>mfrom</scope>", "<scope>helo</scope>", 1),
                                          "scope"),
    "two SPF results": (lambda d: re.sub(r"(<spf>.*?</spf>)", r"\1\1", d, count=1, flags=re.S), "spf"),
    "RFC 7489's sampled_out": (lambda d: re.sub(r"(</spf>\s*)(</policy_evaluated>)",
                                                r"\1<reason><type>sampled_out</type></reason>\2", d, count=1),
                               "sampled_out"),
    "DKIM result without selector": (lambda d: d.replace("<selector>x</selector>", ""), "selector"),
    "DKIM result 'unknown'": (lambda d: d.replace("<result>permerror</result>", "<result>unknown</result>"), "result"),
    "no header_from": (lambda d: d.replace("<header_from>sender.test</header_from>", "", 1), "header_from"),
    "metadata out of order": (lambda d: re.sub(r"(<org_name>.*?</org_name>)(\s*)(<email>.*?</email>)",
                                               r"\3\2\1", d), "email"),
    "no report_id": (lambda d: re.sub(r"<report_id>.*?</report_id>", "", d), "report_id"),
    "unknown element": (lambda d: d.replace("<version>1.0</version>", "<version>1.0</version><x>1</x>"), "x"),
}


@pytest.mark.parametrize("change, problem", BROKEN.values(), ids=BROKEN.keys())
def test_the_schema_rejects_a_broken_report(change, problem):
    document = change(valid())
    assert document != valid()
    with pytest.raises(schema.ReportInvalid, match=r"not valid against dmarc-2\.0\.xsd: line \d+: .*" + problem):
        schema.validate(document.encode())


def test_extensions_of_other_namespaces_are_allowed():
    document = valid().replace("</record>", '<x:note xmlns:x="urn:example:ext">hi</x:note></record>', 1)
    schema.validate(document.encode())


def test_not_well_formed_xml_is_named_as_such():
    with pytest.raises(schema.ReportInvalid, match="not well-formed XML"):
        schema.validate(b"<feedback><record>")


def test_an_entity_is_never_expanded():
    document = valid().replace("<?xml version='1.0' encoding='UTF-8'?>",
                               '<?xml version="1.0"?><!DOCTYPE feedback [<!ENTITY e SYSTEM "file:///etc/passwd">]>')
    document = document.replace("<org_name>Example Org</org_name>", "<org_name>&e;</org_name>")
    with pytest.raises(schema.ReportInvalid, match="has a DOCTYPE"):
        schema.validate(document.encode())
