"""The mail that carries one report to one rua address (RFC 9990 §3.1), DKIM-signed.

A short text part says what it is; the report is an application/gzip attachment named as
RFC 9990 §3.1 names it. The signature is the site's own (checks/signing/sign.py), with every
usable key of signing.keys for the domain of dmarc_reports.email (or its nearest parent there):
receivers are asked to trust our reports as they trust our mail, and unsigned reports are
widely discarded, so without a key there is no sending at all (`Signer.load` says why).
"""

from __future__ import annotations

from dataclasses import dataclass
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import formatdate, make_msgid

from policymilter.checks.signing import sign
from policymilter.dmarcreports.compose import Report
from policymilter.policy.model import Policy
from policymilter.resources import load_keys
from policymilter.signing_keys import PrivateKey


class SignerError(Exception):
    """No usable DKIM key for the reports' domain; the message says which and what to do."""


@dataclass(frozen=True)
class Signer:
    domain: str  # d=
    keys: tuple[tuple[str, PrivateKey], ...]  # (selector, key)
    canonicalization: str

    @classmethod
    def load(cls, policy: Policy) -> Signer:
        """The keys of signing.keys for dmarc_reports.email's domain, read as this process's user
        (who must own them, as the milter does); SignerError when there is none usable."""
        email = policy.dmarc_reports.email
        domain = email.rpartition("@")[2].lower()
        candidates = [d for d in policy.signing.keys if domain == d or domain.endswith("." + d)]
        if not candidates:
            raise SignerError(f"no DKIM key for {domain} (dmarc_reports.email = {email!r}) in signing.keys: reports "
                              f"are sent DKIM-signed only; add a key for {domain} (policy-milter dkim-keygen)")
        signing_domain = max(candidates, key=len)
        entries = load_keys(policy).get(signing_domain, [])
        problems = [problem for _, _, problem in entries if problem]
        if problems:
            raise SignerError(f"cannot sign the reports for {signing_domain}: " + "; ".join(problems))
        keys = tuple((key.selector, private) for key, private, _ in entries if private is not None)
        if not keys:
            raise SignerError(f"signing.keys has no key for {signing_domain}: reports are sent DKIM-signed only")
        return cls(signing_domain, keys, policy.signing.canonicalization)

    def signed(self, message: bytes) -> bytes:
        """`message` (CRLF line ends) with one DKIM-Signature per key prepended."""
        headers = b"".join(b"DKIM-Signature: "
                           + sign.sign(message, self.domain, selector, key, self.canonicalization)
                           .replace("\n", "\r\n").encode("ascii") + b"\r\n"
                           for selector, key in self.keys)
        return headers + message


def text_part(report: Report) -> str:
    return (f"This is a DMARC aggregate report (RFC 9990) from {report.reporter.org_name} about mail from "
            f"{report.domain} that {report.reporter.domain} received from {report.period_text()} (UTC): "
            f"{report.messages} message(s) in {len(report.records)} record(s).\n\n"
            f"Report-ID: {report.report_id}\n"
            f"Questions: {report.reporter.email}\n")


def build(report: Report, attachment: bytes, to: str, now: float) -> bytes:
    """The unsigned message, CRLF line ends."""
    message = EmailMessage(policy=SMTP)
    message["From"] = Address(display_name=report.reporter.org_name, addr_spec=report.reporter.email)
    message["To"] = Address(addr_spec=to)
    message["Subject"] = report.subject
    message["Date"] = formatdate(now, usegmt=True)
    message["Message-ID"] = make_msgid(domain=report.reporter.domain)
    message.set_content(text_part(report))
    message.add_attachment(attachment, maintype="application", subtype="gzip", filename=report.file_name)
    return message.as_bytes()
