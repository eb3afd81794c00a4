"""The message of one transaction: headers as received and a body spooled to disk.

The checks that need the body whole (attachments, DKIM, ARC, signing) share one copy of it,
read from the spool on first use and dropped with the transaction (close); the scanners
stream the spool instead. A 25 MiB message costs one 25 MiB copy, not one per check.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from dataclasses import dataclass

from policymilter import canonical
from policymilter.author import Author, BadFrom, parse_from

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
    """Headers in arrival order and a spooled body."""

    def __init__(self, spool_threshold: int = SPOOL_THRESHOLD, cap: int | None = None) -> None:
        self.cap = cap
        self.headers: list[Header] = []
        # Owned by the message for its whole life; closed by close() at end of transaction.
        self._body: tempfile.SpooledTemporaryFile[bytes] = tempfile.SpooledTemporaryFile(  # noqa: SIM115
            max_size=spool_threshold)
        self.body_size = 0
        self._author: Author | BadFrom | None = None
        self._body_copy: bytes | None = None  # body_bytes(), once per transaction
        self._split: canonical.Split | None = None  # split(), once per transaction

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
        self._author = None
        self._split = None

    def write_body(self, chunk: bytes) -> None:
        # Past the cap the bytes are counted, not kept: an oversized message is refused anyway,
        # and must not fill the disk first.
        if self.cap is None or self.body_size + len(chunk) <= self.cap:
            self._body.write(chunk)
        self.body_size += len(chunk)
        self._body_copy = self._split = None

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

    def author(self) -> Author | BadFrom:
        """The one RFC5322.From address every check judges, or why there is none (author.py)."""
        if self._author is None:
            self._author = parse_from([h.value for h in self.headers if h.name.lower() == "from"])
        return self._author

    def header_values(self, name: str) -> list[str]:
        wanted = name.lower()
        return [h.text for h in self.headers if h.name.lower() == wanted]

    def head_bytes(self) -> bytes:
        """The header block as on the wire, its empty line included."""
        return b"".join(h.raw() for h in self.headers) + b"\r\n"

    def body_bytes(self) -> bytes:
        """The body, the one copy every check shares (read from the spool on first use)."""
        if self._body_copy is None:
            self._body.seek(0)
            self._body_copy = self._body.read()
            self._body.seek(0, 2)
        return self._body_copy

    def split(self) -> canonical.Split:
        """The message as DKIM reads it (canonical.split), made once: DKIM and ARC share it,
        and its body is body_bytes() itself (Postfix's line ends are CRLF)."""
        if self._split is None:
            self._split = canonical.split(self.head_bytes(), self.body_bytes())
        return self._split

    def raw_bytes(self) -> bytes:
        """The whole message with CRLF line ends (a new copy: for tools, not for checks)."""
        return self.head_bytes() + self.body_bytes()

    def close(self) -> None:
        self._body.close()
        self._body_copy = self._split = None
