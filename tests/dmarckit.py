"""What the dmarc-reports send tests share: a sink that can be told to refuse, the report a
delivered mail carries, and its records read back as (source_ip, header_from, disposition) -> count."""

from __future__ import annotations

import email
import email.policy
import gzip
import threading
from dataclasses import dataclass
from email.message import EmailMessage
from typing import cast

import dkim
from aiosmtpd.smtp import SMTP, Envelope, Session
from lxml import etree

from policymilter.dmarcreports import schema
from tests.authkit import DkimKey
from tests.integration.stack import Delivered, _Sink

NS = {"d": schema.NAMESPACE}


class _Answering:
    """aiosmtpd handler: stores what it accepts; `reply` is what it answers after DATA."""

    def __init__(self) -> None:
        self.messages: list[Delivered] = []
        self.changed = threading.Condition()
        self.reply = "250 2.0.0 Ok: stored"
        self.rcpt_reply = ""  # "" accepts every RCPT

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          options: list[str]) -> str:
        if self.rcpt_reply:
            return self.rcpt_reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.reply.startswith("250"):
            content = envelope.content
            data = content if isinstance(content, bytes) else str(content).encode()
            with self.changed:
                self.messages.append(Delivered(str(envelope.mail_from), list(envelope.rcpt_tos), data))
                self.changed.notify_all()
        return self.reply


class Sink(_Sink):
    """The stack's aiosmtpd sink, with a handler the test can make answer 4xx or 5xx."""

    def __init__(self) -> None:
        super().__init__()
        self.answering = _Answering()
        self.handler = self.answering  # type: ignore[assignment]

    @property
    def relay(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def messages(self) -> list[Delivered]:
        with self.answering.changed:
            return list(self.answering.messages)


@dataclass(frozen=True)
class Received:
    """One report mail as a destination got it."""

    delivered: Delivered
    message: EmailMessage
    file_name: str
    document: bytes  # the XML, decompressed (and schema-validated)

    @property
    def domain(self) -> str:
        return self.root().findtext("d:policy_published/d:domain", namespaces=NS) or ""

    def root(self) -> etree._Element:
        return etree.fromstring(self.document)

    def counts(self) -> dict[tuple[str, str, str, str], int]:
        """(source_ip, header_from, envelope_from, disposition) -> count, over the report's records."""
        found: dict[tuple[str, str, str, str], int] = {}
        for record in self.root().findall("d:record", NS):
            key = (record.findtext("d:row/d:source_ip", namespaces=NS) or "",
                   record.findtext("d:identifiers/d:header_from", namespaces=NS) or "",
                   record.findtext("d:identifiers/d:envelope_from", namespaces=NS) or "",
                   record.findtext("d:row/d:policy_evaluated/d:disposition", namespaces=NS) or "")
            found[key] = found.get(key, 0) + int(record.findtext("d:row/d:count", namespaces=NS) or "0")
        return found


def received(delivered: Delivered) -> Received:
    """Parse a report mail: one application/gzip attachment, its XML valid against the schema."""
    message = cast(EmailMessage, email.message_from_bytes(delivered.data, policy=email.policy.default))
    [attachment] = [part for part in message.iter_attachments() if part.get_content_type() == "application/gzip"]
    payload = attachment.get_payload(decode=True)
    assert isinstance(payload, bytes)
    document = gzip.decompress(payload)
    schema.validate(document)
    return Received(delivered, message, attachment.get_filename() or "", document)


def archived(document: bytes) -> Received:
    """An archived report (its XML, validated), read like a received one."""
    schema.validate(document)
    return Received(Delivered("", [], b""), EmailMessage(), "", document)


def verifies(raw: bytes, key: DkimKey) -> bool:
    """The mail's DKIM signature verifies with dkimpy against `key`'s published record."""
    def lookup(name: bytes, timeout: int = 5) -> bytes:
        assert name.decode().rstrip(".") == f"{key.selector}._domainkey.{key.domain}"
        return key.record.encode()

    return bool(dkim.verify(raw, dnsfunc=lookup))
