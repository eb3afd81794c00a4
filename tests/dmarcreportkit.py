"""Aggregate reports made for the tests (RFC 7489 Appendix C, RFC 9990 §3), and the ways they arrive:
.xml, .xml.gz, .zip, a message with an attachment, an mbox, a Maildir."""

from __future__ import annotations

import gzip
import io
import zipfile
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from xml.sax.saxutils import escape

NAMESPACES = {"rfc7489": None, "draft": "http://dmarc.org/dmarc-xml/0.1", "rfc9990": "urn:ietf:params:xml:ns:dmarc-2.0"}
DAY = 86400
BEGIN = 1_764_547_200  # 2025-12-01T00:00:00Z


@dataclass(frozen=True)
class Row:
    ip: str
    count: int
    dkim: str  # policy_evaluated: pass | fail
    spf: str
    disposition: str = "none"
    header_from: str = ""  # default: the report's domain
    signatures: tuple[tuple[str, str, str], ...] = ()  # (domain, selector, result)
    spf_results: tuple[tuple[str, str], ...] = ()  # (domain, result); default: from dkim/spf above
    reason: str | None = None


@dataclass(frozen=True)
class Spec:
    org_name: str
    report_id: str
    domain: str
    p: str
    rows: tuple[Row, ...]
    format: str = "rfc7489"
    begin: int = BEGIN
    end: int = BEGIN + DAY - 1
    email: str = ""
    policy_extra: str = ""
    record_extra: str = ""  # inside every <record>, after auth_results
    top_extra: str = ""  # after policy_published
    overrides: dict[str, str] = field(default_factory=dict)  # raw text replacements, applied last


def report_xml(spec: Spec) -> bytes:
    namespace = NAMESPACES[spec.format]
    bis = spec.format == "rfc9990"
    xmlns = f' xmlns="{namespace}"' if namespace else ""
    parts = [f'<?xml version="1.0" encoding="UTF-8"?>\n<feedback{xmlns}>\n']
    if bis:
        parts.append("  <version>1.0</version>\n")
    parts.append(f"""  <report_metadata>
    <org_name>{escape(spec.org_name)}</org_name>
    <email>{escape(spec.email or f"noreply-dmarc@{spec.org_name}")}</email>
    <report_id>{escape(spec.report_id)}</report_id>
    <date_range>
      <begin>{spec.begin}</begin>
      <end>{spec.end}</end>
    </date_range>{"<generator>testkit 1.0</generator>" if bis else ""}
  </report_metadata>
  <policy_published>
    <domain>{spec.domain}</domain>
    <adkim>r</adkim>
    <aspf>r</aspf>
    <p>{spec.p}</p>
    <sp>{spec.p}</sp>{"<np>reject</np><discovery_method>treewalk</discovery_method><testing>n</testing>" if bis
                      else "<pct>100</pct>"}{spec.policy_extra}
  </policy_published>
{spec.top_extra}""")
    for row in spec.rows:
        header_from = row.header_from or spec.domain
        reason = (f"<reason><type>{row.reason}</type><comment>seen</comment></reason>" if row.reason else "")
        parts.append(f"""  <record>
    <row>
      <source_ip>{row.ip}</source_ip>
      <count>{row.count}</count>
      <policy_evaluated>
        <disposition>{row.disposition}</disposition>
        <dkim>{row.dkim}</dkim>
        <spf>{row.spf}</spf>{reason}
      </policy_evaluated>
    </row>
    <identifiers>
      {"<envelope_from>" + header_from + "</envelope_from>" if bis else ""}
      <header_from>{header_from}</header_from>
    </identifiers>
    <auth_results>
""")
        signatures = row.signatures or ((spec.domain, "s1", "pass" if row.dkim == "pass" else "fail"),)
        for domain, selector, result in signatures:
            selector_element = f"<selector>{selector}</selector>" if selector else ""
            human = "<human_result>checked</human_result>" if bis else ""
            parts.append(f"      <dkim><domain>{domain}</domain>{selector_element}<result>{result}</result>"
                         f"{human}</dkim>\n")
        spf_results = row.spf_results or ((header_from if row.spf == "pass" else "bounce.elsewhere.test",
                                           "pass" if row.spf == "pass" else "softfail"),)
        for domain, result in spf_results:
            parts.append(f"      <spf><domain>{domain}</domain><scope>mfrom</scope><result>{result}</result></spf>\n")
        parts.append(f"    </auth_results>\n{spec.record_extra}  </record>\n")
    parts.append("</feedback>\n")
    text = "".join(parts)
    for old, new in spec.overrides.items():
        assert old in text, old
        text = text.replace(old, new)
    return text.encode("utf-8")


def gz(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


def zipped(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def report_mail(spec: Spec, attachment: bytes, filename: str, content_type: str) -> EmailMessage:
    """A report mail as receivers send them (RFC 7489 §7.2.1.1): a short text and the attachment."""
    message = EmailMessage()
    message["From"] = f"noreply-dmarc@{spec.org_name}"
    message["To"] = "dmarc-rua@example.org"
    message["Subject"] = f"Report Domain: {spec.domain} Submitter: {spec.org_name} Report-ID: {spec.report_id}"
    message["Date"] = "Tue, 02 Dec 2025 01:00:00 +0000"
    message.set_content(f"This is an aggregate report from {spec.org_name}.\n")
    maintype, subtype = content_type.split("/")
    message.add_attachment(attachment, maintype=maintype, subtype=subtype, filename=filename)
    return message


def forwarded(inner: EmailMessage) -> EmailMessage:
    """A user forwarding a report mail as an attachment (message/rfc822)."""
    message = EmailMessage()
    message["From"] = "postmaster@example.org"
    message["To"] = "dmarc-rua@example.org"
    message["Subject"] = "Fwd: " + str(inner["Subject"])
    message.set_content("Forwarded report.\n")
    message.add_attachment(inner)
    return message


def mbox(messages: list[EmailMessage]) -> bytes:
    out = bytearray()
    for message in messages:
        out += b"From MAILER-DAEMON Tue Dec  2 01:00:00 2025\n"
        body = message.as_bytes().replace(b"\r\n", b"\n")
        out += b"\n".join(b">" + line if line.startswith(b"From ") else line for line in body.split(b"\n"))
        out += b"\n\n"
    return bytes(out)


def maildir(root: Path, cur: list[EmailMessage], new: list[EmailMessage]) -> Path:
    for sub in ("cur", "new", "tmp"):
        (root / sub).mkdir(parents=True)
    for number, message in enumerate(cur, start=1):
        (root / "cur" / f"1764637200.{number}.host:2,S").write_bytes(message.as_bytes())
    for number, message in enumerate(new, start=1):
        (root / "new" / f"1764637300.{number}.host").write_bytes(message.as_bytes())
    return root


XXE = b"""<?xml version="1.0"?>
<!DOCTYPE feedback [<!ENTITY x SYSTEM "file:///etc/passwd">]>
<feedback><report_metadata><org_name>&x;</org_name></report_metadata></feedback>
"""


def billion_laughs() -> bytes:
    entities = '<!ENTITY lol0 "lol">' + "".join(
        f'<!ENTITY lol{level} "{f"&lol{level - 1};" * 10}">' for level in range(1, 10))
    return f'<?xml version="1.0"?>\n<!DOCTYPE feedback [{entities}]>\n<feedback>&lol9;</feedback>\n'.encode()
