"""The message of one transaction: headers as received and a body spooled to disk."""

from __future__ import annotations

import contextlib
import email.parser
import email.policy
import email.utils
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import EmailMessage
from typing import BinaryIO

_HEADERS = email.policy.default.header_factory

# Bodies up to this size stay in memory; larger ones go to a temporary file.
SPOOL_THRESHOLD = 256 * 1024


@dataclass(frozen=True)
class Header:
    """One header field exactly as received: `value` is everything after the colon, leading
    white space and folding included (the milter negotiates SMFIP_HDR_LEADSPC), because DKIM
    hashes those bytes."""

    name: str
    value: bytes

    @property
    def text(self) -> str:
        return self.value.decode("utf-8", errors="replace").strip()

    def raw(self) -> bytes:
        # Postfix passes folded lines with bare LF; on the wire (and for DKIM) they are CRLF.
        value = self.value.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        return self.name.encode("ascii", "replace") + b":" + value + b"\r\n"


class Message:
    """Headers in arrival order and a spooled body; the parsed view is built once, on demand."""

    def __init__(self, spool_threshold: int = SPOOL_THRESHOLD, cap: int | None = None) -> None:
        self.cap = cap
        self.truncated = False
        self.headers: list[Header] = []
        # Owned by the message for its whole life; closed by close() at end of transaction.
        self._body: BinaryIO = tempfile.SpooledTemporaryFile(max_size=spool_threshold)  # noqa: SIM115
        self.body_size = 0
        self._parsed: EmailMessage | None = None

    @classmethod
    def from_bytes(cls, raw: bytes) -> Message:
        """Split an RFC 5322 message (LF or CRLF line ends) the way an MTA hands it over."""
        message = cls()
        raw = raw.replace(b"\r\n", b"\n")
        if raw.startswith(b"\n"):
            head, separator, body = b"", b"\n", raw[1:]
        else:
            head, separator, body = raw.partition(b"\n\n")
        lines = head.split(b"\n") if head else []
        name: str | None = None
        value = b""
        for position, line in enumerate(lines):
            if line[:1] in (b" ", b"\t") and name is not None:
                value += b"\r\n" + line  # keep the folding: DKIM hashes it
                continue
            if name is not None:
                message.add_header(name, value)
                name = None
            field_name, colon, rest = line.partition(b":")
            if not colon or not field_name or b" " in field_name:
                # Like Postfix: the first line that is not a header starts the body.
                body = b"\n".join(lines[position:]) + (b"\n\n" + body if separator else b"")
                break
            name, value = field_name.decode("ascii", errors="replace"), rest
        if name is not None:
            message.add_header(name, value)
        message.write_body(body.replace(b"\n", b"\r\n"))
        return message

    def add_header(self, name: str, value: bytes) -> None:
        self.headers.append(Header(name, value))
        self._parsed = None

    def write_body(self, chunk: bytes) -> None:
        # Past the cap the bytes are counted, not kept: an oversized message is refused anyway,
        # and must not fill the disk first.
        if self.cap is None or self.body_size + len(chunk) <= self.cap:
            self._body.write(chunk)
        else:
            self.truncated = True
        self.body_size += len(chunk)
        self._parsed = None

    def iter_raw(self, chunk_size: int = 65536) -> Iterator[bytes]:
        """The whole message (CRLF line ends) in chunks, straight from the spool."""
        yield b"".join(h.raw() for h in self.headers) + b"\r\n"
        self._body.seek(0)
        try:
            while chunk := self._body.read(chunk_size):
                yield chunk
        finally:
            self._body.seek(0, 2)

    @property
    def size(self) -> int:
        """Approximate size as queued: headers plus body, CRLF line ends."""
        head = sum(len(h.name) + 1 + len(h.value) + 2 for h in self.headers)
        return head + 2 + self.body_size

    def from_addresses(self) -> list[str]:
        """Every RFC5322.From address (addr-spec, lower case), parsed leniently the way mail
        clients display them (comments, display names, encoded words)."""
        found: list[str] = []
        for value in self.header_values("From"):
            # unparsable by the modern parser: the classic one below may still read it
            with contextlib.suppress(ValueError, IndexError, TypeError):
                found.extend(address.addr_spec for address in getattr(_HEADERS("from", value), "addresses", ())
                             if address.domain)
            # The union with the classic parser: an address one parser drops must still count,
            # or a crafted From could show one domain to the reader and another to DMARC.
            found.extend(address for _, address in email.utils.getaddresses([value]) if "@" in address)
        return list(dict.fromkeys(address.strip().lower().rstrip(".") for address in found if address.strip()))

    def from_domains(self) -> set[str]:
        """Domains of every RFC5322.From address (RFC 7489 §6.6.1)."""
        return {address.rpartition("@")[2] for address in self.from_addresses() if address.rpartition("@")[2]}

    def header_values(self, name: str) -> list[str]:
        wanted = name.lower()
        return [h.text for h in self.headers if h.name.lower() == wanted]

    def body_bytes(self) -> bytes:
        self._body.seek(0)
        body = self._body.read()
        self._body.seek(0, 2)
        return body

    def raw_bytes(self) -> bytes:
        """The whole message with CRLF line ends (for checks that need it all)."""
        return b"".join(h.raw() for h in self.headers) + b"\r\n" + self.body_bytes()

    def parsed(self) -> EmailMessage:
        if self._parsed is None:
            parser = email.parser.BytesParser(policy=email.policy.default)
            parsed = parser.parsebytes(self.raw_bytes())
            assert isinstance(parsed, EmailMessage)
            self._parsed = parsed
        return self._parsed

    def close(self) -> None:
        self._body.close()
