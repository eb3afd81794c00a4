"""gzip and zip, opened within limits: bytes are counted while they are inflated, and inflating
stops at the limit, whatever the archive declares (a zip's sizes and a gzip's ISIZE are the
sender's word). A bomb is a `LimitExceeded`, named by its limit, never memory spent.

Limits per layer are not enough: they multiply across nesting (a zip of zips of gzip). Every
layer of one top-level input (a file, or one message of an mbox or a Maildir) also draws from
one `Budget`: decompressed bytes (`max-total`) and documents (`max-documents`) in all. Spending
past it is `BudgetExhausted`, which ends that input, not only the layer.

What the standard library's readers raise on hostile bytes is not only their documented error
(zipfile alone raises BadZipFile, NotImplementedError, IndexError, struct.error, lzma.LZMAError,
zlib.error, OSError, EOFError...): `ZIP_ERRORS` names every one met, each becomes an
`ArchiveError` or a member's `problem`, never a traceback.
"""

from __future__ import annotations

import io
import lzma
import struct
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

from policymilter.safetext import for_log

GZIP_MAGIC = b"\x1f\x8b"
ZIP_MAGIC = b"PK\x03\x04"
_CHUNK = 1 << 16
# What zipfile (and the decompressors under it) raise on a broken or hostile archive.
ZIP_ERRORS: tuple[type[Exception], ...] = (
    zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, lzma.LZMAError, EOFError, OSError, ValueError,
    NotImplementedError, IndexError, KeyError, struct.error, OverflowError, RuntimeError, TypeError)


class ArchiveError(Exception):
    """Not a readable archive: cut short, corrupt, encrypted, an unsupported method."""


class LimitExceeded(Exception):
    """A limit of `Limits` was reached; the message names it."""


class BudgetExhausted(Exception):
    """The `Budget` of one top-level input is spent; the message names the limit. Not a
    LimitExceeded: it ends the whole input, it is not caught per layer."""


@dataclass(frozen=True)
class Limits:
    """Each but max-parts is a command-line option of `dmarc-reports read` (names as in the errors)."""

    max_input: int = 64 << 20  # bytes of one file, message or attachment (compressed) (max-input)
    max_xml: int = 50 << 20  # bytes of one report's XML, decompressed (max-xml)
    max_members: int = 100  # files in one zip, members of one gzip stream (max-members)
    max_records: int = 100_000  # records in one report (max-records)
    max_depth: int = 5  # messages in messages, archives in archives (max-depth)
    max_parts: int = 500  # MIME parts of one message (max-parts)
    max_total: int = 200 << 20  # bytes decompressed from one top-level input, all layers (max-total)
    max_documents: int = 1000  # report documents in one top-level input (max-documents)


class Budget:
    """What one top-level input may still spend (see the module docstring). Mutable, one per input."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.inflated = 0
        self.documents = 0

    def inflate(self, size: int) -> None:
        self.inflated += size
        if self.inflated > self.limits.max_total:
            raise BudgetExhausted(f"decompresses to more than {mib(self.limits.max_total)} in all, every archive "
                                  f"layer counted (limit max-total); {self.documents} document(s) read before")

    def document(self) -> None:
        self.documents += 1
        if self.documents > self.limits.max_documents:
            raise BudgetExhausted(f"more than {self.limits.max_documents} report documents (limit max-documents); "
                                  "the rest not read")


def mib(size: int) -> str:
    return f"{size / (1 << 20):g} MiB" if size >= 1 << 20 else f"{size} bytes"


def gunzip(data: bytes, limit: int, budget: Budget | None = None, max_members: int = 100) -> bytes:
    """Every member of a gzip stream (RFC 1952 §2.2: members may follow each other), at most `limit`
    bytes in all and at most `max_members` members. The input is read through a view at an offset:
    what follows a member is never copied (many tiny members would make that quadratic)."""
    view = memoryview(data)
    out = bytearray()
    position = 0
    members = 0
    while True:
        members += 1
        if members > max_members:
            raise LimitExceeded(f"more than {max_members} gzip members (limit max-members)")
        inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        try:
            while not inflater.eof:
                chunk = view[position:position + _CHUNK]
                if not chunk:
                    raise ArchiveError("gzip stream cut short (truncated)")
                # max_length: never more than what is still allowed (+1 to notice going over).
                piece = inflater.decompress(chunk, limit - len(out) + 1)
                # What was not used (after the member's end, or over max_length) is read again from the view.
                position += len(chunk) - len(inflater.unconsumed_tail) - len(inflater.unused_data)
                out += piece
                if len(out) > limit:
                    raise LimitExceeded(f"decompresses to more than {mib(limit)} (limit max-xml)")
                if budget is not None:
                    budget.inflate(len(piece))
        except zlib.error as error:
            raise ArchiveError(f"corrupt gzip data: {for_log(str(error), 120)}") from None
        rest = view[position:]
        if not rest:
            return bytes(out)
        if rest[:2] != GZIP_MAGIC:
            if bytes(rest).strip(b"\x00"):  # trailing NULs (tape padding) are what gzip(1) ignores too
                raise ArchiveError(f"{len(rest)} bytes of trailing data after the gzip stream")
            return bytes(out)


@dataclass(frozen=True)
class Member:
    name: str  # as shown (made printable)
    data: bytes | None  # None: `problem` says why it was not read
    problem: str | None = None


def unzip(data: bytes, limits: Limits, budget: Budget | None = None) -> Iterator[Member]:
    """The files of a zip archive, each at most `limits.max_xml` bytes inflated, one at a time."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        # ZipInfo.is_dir() fails on an empty name (IndexError): such a member is named, not read.
        files = [info for info in archive.infolist() if not info.filename or not info.is_dir()]
    except ZIP_ERRORS as error:
        raise ArchiveError(f"not a readable zip archive: {_named(error)}") from None
    with archive:
        if len(files) > limits.max_members:
            raise LimitExceeded(f"{len(files)} files in the zip archive (limit max-members: {limits.max_members})")
        if not files:
            raise ArchiveError("an empty zip archive")
        for info in files:
            name = for_log(info.filename, 120)
            if not name:
                yield Member("(no name)", None, "a zip member without a name")
                continue
            try:
                member = Member(name, _read_member(archive, info, limits.max_xml, budget))
            except LimitExceeded as error:
                member = Member(name, None, str(error))
            except NotImplementedError as error:  # a compression method zipfile lacks
                member = Member(name, None, f"unsupported zip member: {_named(error)}")
            except RuntimeError as error:  # zipfile: encrypted, no password
                member = Member(name, None, f"unreadable zip member: {_named(error)}")
            except ZIP_ERRORS as error:
                member = Member(name, None, f"corrupt zip member: {_named(error)}")
            yield member


def _named(error: Exception) -> str:
    """The library's message, or its type where it has none."""
    return for_log(str(error) or type(error).__name__, 120)


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int, budget: Budget | None) -> bytes:
    out = bytearray()
    with archive.open(info) as stream:
        while True:
            piece = stream.read(min(_CHUNK, limit - len(out) + 1))
            if not piece:
                return bytes(out)
            out += piece
            if len(out) > limit:
                raise LimitExceeded(f"decompresses to more than {mib(limit)} (limit max-xml)")
            if budget is not None:
                budget.inflate(len(piece))
