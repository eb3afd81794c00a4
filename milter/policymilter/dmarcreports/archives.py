"""gzip and zip, opened within limits: bytes are counted while they are inflated, and inflating
stops at the limit, whatever the archive declares (a zip's sizes and a gzip's ISIZE are the
sender's word). A bomb is a `LimitExceeded`, named by its limit, never memory spent.
"""

from __future__ import annotations

import io
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

from policymilter.safetext import for_log

GZIP_MAGIC = b"\x1f\x8b"
ZIP_MAGIC = b"PK\x03\x04"
_CHUNK = 1 << 16


class ArchiveError(Exception):
    """Not a readable archive: cut short, corrupt, encrypted, an unsupported method."""


class LimitExceeded(Exception):
    """A limit of `Limits` was reached; the message names it."""


@dataclass(frozen=True)
class Limits:
    """Each is a command-line option of `dmarc-reports read` (names as in the errors)."""

    max_input: int = 64 << 20  # bytes of one file, message or attachment (compressed) (max-input)
    max_xml: int = 50 << 20  # bytes of one report's XML, decompressed (max-xml)
    max_members: int = 100  # files in one zip (max-members)
    max_records: int = 100_000  # records in one report (max-records)
    max_depth: int = 5  # messages in messages, archives in archives (max-depth)
    max_parts: int = 500  # MIME parts of one message (max-parts)


def mib(size: int) -> str:
    return f"{size / (1 << 20):g} MiB" if size >= 1 << 20 else f"{size} bytes"


def gunzip(data: bytes, limit: int) -> bytes:
    """Every member of a gzip stream (RFC 1952 §2.2: members may follow each other), at most `limit`
    bytes in all."""
    out = bytearray()
    rest = data
    while True:
        inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        pending = rest
        try:
            while pending or not inflater.eof:
                # max_length: never more than what is still allowed (+1 to notice going over).
                piece = inflater.decompress(pending, limit - len(out) + 1)
                out += piece
                if len(out) > limit:
                    raise LimitExceeded(f"decompresses to more than {mib(limit)} (limit max-xml)")
                pending = inflater.unconsumed_tail
                if inflater.eof or (not piece and not pending):
                    break
        except zlib.error as error:
            raise ArchiveError(f"corrupt gzip data: {for_log(str(error), 120)}") from None
        if not inflater.eof:
            raise ArchiveError("gzip stream cut short (truncated)")
        rest = inflater.unused_data
        if not rest:
            return bytes(out)
        if not rest.startswith(GZIP_MAGIC):
            if rest.strip(b"\x00"):  # trailing NULs (tape padding) are what gzip(1) ignores too
                raise ArchiveError(f"{len(rest)} bytes of trailing data after the gzip stream")
            return bytes(out)


@dataclass(frozen=True)
class Member:
    name: str  # as shown (made printable)
    data: bytes | None  # None: `problem` says why it was not read
    problem: str | None = None


def unzip(data: bytes, limits: Limits) -> Iterator[Member]:
    """The files of a zip archive, each at most `limits.max_xml` bytes inflated."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, OSError, EOFError) as error:
        raise ArchiveError(f"not a readable zip archive: {for_log(str(error), 120)}") from None
    with archive:
        files = [info for info in archive.infolist() if not info.is_dir()]
        if len(files) > limits.max_members:
            raise LimitExceeded(f"{len(files)} files in the zip archive (limit max-members: {limits.max_members})")
        if not files:
            raise ArchiveError("an empty zip archive")
        for info in files:
            name = for_log(info.filename, 120)
            try:
                yield Member(name, _read_member(archive, info, limits.max_xml))
            except LimitExceeded as error:
                yield Member(name, None, str(error))
            except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError) as error:
                yield Member(name, None, f"corrupt zip member: {for_log(str(error), 120)}")
            except NotImplementedError as error:  # a compression method zipfile lacks
                yield Member(name, None, f"unsupported zip member: {for_log(str(error), 120)}")
            except RuntimeError as error:  # zipfile: encrypted, no password
                yield Member(name, None, f"unreadable zip member: {for_log(str(error), 120)}")


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int) -> bytes:
    out = bytearray()
    with archive.open(info) as stream:
        while True:
            piece = stream.read(min(_CHUNK, limit - len(out) + 1))
            if not piece:
                return bytes(out)
            out += piece
            if len(out) > limit:
                raise LimitExceeded(f"decompresses to more than {mib(limit)} (limit max-xml)")
