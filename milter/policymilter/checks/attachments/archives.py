"""The plumbing for reading archives and compressed streams from hostile input cheaply.

Declared sizes count against the message's unpacked-bytes allowance (they may only lie low:
what is actually decompressed is metered too); the decompressors open at once share one memory
budget (liblzma gets a limit; LZMAFile takes none); tar's extended and sparse headers are
refused before tarfile reads them whole; a compressed file's names (stored and implied by its
suffix) are all judged. The walk (walk.py) decides what to open; this module keeps it bounded.
"""

from __future__ import annotations

import _compression  # lzma.LZMAFile's reader, for a memory limit (see OPENERS)
import bz2
import gzip
import lzma
import struct
import tarfile
import zipfile
import zlib
from collections.abc import Callable
from typing import IO, Any, Protocol

from policymilter.checks.attachments.containers import BZIP2, GZIP, LZMA, XZ

SNIFF_BYTES = 64 * 1024  # read from each archive member: enough for every magic we test
CHUNK = 64 * 1024
SPOOL_THRESHOLD = 1024 * 1024  # a nested zip larger than this is unpacked to a temporary file
MAX_PE_HEADER_OFFSET = 16 * 1024 * 1024  # a member's "MZ" header pointing further: not inspected
MAX_TAR_EXTENDED_HEADER = 64 * 1024  # tarfile reads pax / GNU long-name headers whole
LZMA_MEMORY_LIMIT = 80 * 1024 * 1024  # one xz or lzma stream (xz -9 needs 65 MiB)
MIN_LZMA_MEMORY = 2 * 1024 * 1024  # what xz -0 needs to decompress
# All the decompressors open at once (nested streams are): xz and lzma are granted what is left
# of this, up to LZMA_MEMORY_LIMIT, as liblzma's memory limit; bzip2 and gzip cost what their
# decoders allocate at most.
MAX_DECOMPRESSOR_MEMORY = 128 * 1024 * 1024
MAX_TNEF = 64 * 1024 * 1024  # tnefparse holds the whole file, and copies of it, in memory



def gzip_name(head: bytes) -> str:
    """RFC 1952 §2.3.1 FNAME: the original file name, ISO 8859-1, zero-terminated."""
    if len(head) < 10 or not head[3] & 0x08:
        return ""
    pos = 10
    if head[3] & 0x04:  # FEXTRA
        pos = 12 + int.from_bytes(head[10:12], "little")
    end = head.find(b"\0", pos)
    return head[pos:end].decode("latin-1") if end > pos else ""


# What single-file compressors name their output: the input's name without the suffix
# (gzip(1) -d, bzip2, xz, zstd, lz4, lzip, lzop, uncompress; .tgz and friends become .tar).
_UNPACKED_SUFFIX = {"gz": "", "gzip": "", "z": "", "tgz": ".tar", "taz": ".tar", "bz2": "", "bz": "", "tbz": ".tar",
                    "tbz2": ".tar", "tb2": ".tar", "xz": "", "txz": ".tar", "lzma": "", "tlz": ".tar", "zst": "",
                    "tzst": ".tar", "lz4": "", "lz": "", "lzo": "", "tzo": ".tar"}


def _unpacked_name(name: str) -> str:
    """What "x.exe.gz" unpacks to, or "" when the name has no compressor suffix."""
    stem, dot, suffix = name.rpartition(".")
    replacement = _UNPACKED_SUFFIX.get(suffix.lower().strip()) if dot and stem else None
    return "" if replacement is None else stem + replacement


def unpacked_names(names: tuple[str, ...], stored: str = "") -> tuple[str, ...]:
    """Every name a single compressed file may be saved under: the name stored inside (gzip's
    FNAME, used by `gunzip -N` and 7-Zip) and each outer name without its suffix (what
    `gunzip x.js.gz` writes). Both are judged: the tools disagree."""
    found = [stored] if stored else []
    found += [unpacked for name in names if (unpacked := _unpacked_name(name))]
    return tuple(dict.fromkeys(found))


# Bounded readers: their read(n) passes n to the decompressor as max_length. Each is given the
# memory it may use (liblzma's limit; the others need no more than DECODER_MEMORY).
OPENERS: dict[str, Callable[[IO[bytes], int], _Stream]] = {
    GZIP: lambda source, _: gzip.GzipFile(fileobj=source, mode="rb"),
    BZIP2: lambda source, _: bz2.BZ2File(source),
    # lzma.LZMAFile takes no memory limit, and liblzma allocates the dictionary a header asks
    # for (up to 4 GiB): the same reader LZMAFile builds, with a limit.
    XZ: lambda source, memory: _compression.DecompressReader(source, lzma.LZMADecompressor,
                                                             trailing_error=lzma.LZMAError, memlimit=memory),
    LZMA: lambda source, memory: _compression.DecompressReader(source, lzma.LZMADecompressor,
                                                               trailing_error=lzma.LZMAError, format=lzma.FORMAT_ALONE,
                                                               memlimit=memory),
}
# zlib's inflate state and window; bzip2's tables for 900k blocks.
DECODER_MEMORY = {GZIP: 64 * 1024, BZIP2: 4 * 1024 * 1024}


class Uninspectable(Exception):
    """An archive, or part of one, that cannot be inspected; the message says why."""


class Corrupt(Uninspectable):
    """A library could not read a container; the message is its complaint."""


class Exhausted(Uninspectable):
    """The message's allowance of archive members or unpacked bytes is spent."""


# The exceptions hostile input makes the libraries raise (zipfile: BadZipFile,
# NotImplementedError for a compression method, RuntimeError for encryption, ValueError for
# bad UTF-8 names, struct.error and OverflowError for absurd fields; tarfile: TarError; gzip:
# BadGzipFile, an OSError; all three decompressors: EOFError when truncated). Anything else is
# a bug and goes to the pipeline's error handling.
UNREADABLE = (zipfile.BadZipFile, zipfile.LargeZipFile, tarfile.TarError, zlib.error, lzma.LZMAError, EOFError,
               OSError, NotImplementedError, RuntimeError, ValueError, struct.error, OverflowError)


class Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


class _Stream(Readable, Protocol):
    """A decompressing reader, closed when done."""

    def __enter__(self) -> Any: ...

    def __exit__(self, *exc_info: Any) -> Any: ...


class Allowance:
    """What one message may still cost: archive members and unpacked bytes."""

    def __init__(self, max_members: int, max_expanded: int) -> None:
        self.max_members, self.max_expanded = max_members, max_expanded
        self.members = max_members
        self.bytes = max_expanded
        self.memory = MAX_DECOMPRESSOR_MEMORY  # for the decompressors open now

    def member(self) -> None:
        self.members -= 1
        if self.members < 0:
            raise Exhausted(f"more than {self.max_members} archive members")

    def unpack(self, size: int) -> None:
        self.bytes -= size
        if self.bytes < 0:
            raise Exhausted(f"unpacks to more than {self.max_expanded} bytes")


class Metered:
    """A decompressing reader whose output is charged to the allowance as it comes; the first
    `prepaid` bytes (a declared size, already charged) are free."""

    def __init__(self, source: Readable, allowance: Allowance, prepaid: int = 0) -> None:
        self.source, self.allowance, self.prepaid = source, allowance, prepaid

    def read(self, size: int = -1, /) -> bytes:
        data = self.source.read(CHUNK if size is None or size < 0 else size)
        free = min(self.prepaid, len(data))
        self.prepaid -= free
        self.allowance.unpack(len(data) - free)
        return data


class Prefixed:
    """`head` (already read for sniffing), then the rest of `source`."""

    def __init__(self, head: bytes, source: Readable) -> None:
        self.head, self.source = head, source

    def read(self, size: int = -1, /) -> bytes:
        size = CHUNK if size is None or size < 0 else size
        if self.head:
            data, self.head = self.head[:size], self.head[size:]
            return data
        return self.source.read(size)


def read_up_to(source: Readable, size: int) -> bytes:
    """Up to `size` bytes (decompressors return short reads before the end)."""
    pieces, wanted = [], size
    while wanted > 0:
        piece = source.read(min(wanted, CHUNK))
        if not piece:
            break
        pieces.append(piece)
        wanted -= len(piece)
    return b"".join(pieces)


def count_signature(file: IO[bytes], signature: bytes) -> int:
    file.seek(0)
    count, tail = 0, b""
    while chunk := file.read(CHUNK):
        window = tail + chunk
        count += window.count(signature)
        tail = window[-(len(signature) - 1):]
    file.seek(0)
    return count


class GuardedTarInfo(tarfile.TarInfo):
    """tarfile reads a pax or GNU long-name header whole into memory (and an unpatched 3.11
    parses pax headers with a quadratic regex, CVE-2024-6232): refuse big ones first. Sparse
    members are refused before tarfile reads their map (a GNU 1.0 map sits in the data, one
    line per Python step: 11 KB of gzip cost 33 s) or applies it.

    Each member also keeps the names its own header gives (`header_names`): a pax `path` or a
    GNU long name replaces the name, for tarfile, GNU tar and libarchive; readers without them
    use the header's; the ustar prefix counts for some readers and not for others.
    """

    _EXTENDED = (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE, tarfile.GNUTYPE_LONGNAME,
                 tarfile.GNUTYPE_LONGLINK)
    header_names: tuple[str, ...] = ()

    @classmethod
    def frombuf(cls, buf: bytes, encoding: str, errors: str) -> GuardedTarInfo:  # type: ignore[override]
        info = super().frombuf(buf, encoding, errors)
        name = tarfile.nts(buf[0:100], encoding, errors)  # type: ignore[attr-defined]  # stdlib helper
        prefix = tarfile.nts(buf[345:500], encoding, errors)  # type: ignore[attr-defined]
        info.header_names = tuple(dict.fromkeys(names for names in (name, f"{prefix}/{name}" if prefix else "")
                                                if names))
        return info

    def _proc_member(self, archive: tarfile.TarFile) -> tarfile.TarInfo:
        if self.type in self._EXTENDED and self.size > MAX_TAR_EXTENDED_HEADER:
            raise tarfile.HeaderError(f"extended header of {self.size} bytes")
        if self.type == tarfile.GNUTYPE_SPARSE:
            raise Uninspectable("sparse tar member (not inspected)")
        return super()._proc_member(archive)  # type: ignore[misc,no-any-return]  # private, stable since 2.x

    def _proc_gnusparse_00(self, *_: object) -> None:
        raise Uninspectable("sparse tar member (not inspected)")

    _proc_gnusparse_01 = _proc_gnusparse_10 = _proc_gnusparse_00

    def _apply_pax_info(self, pax_headers: dict[str, str], encoding: str, errors: str) -> None:
        if any(key.startswith("GNU.sparse.") for key in pax_headers):  # a sparse format tarfile does not know
            raise Uninspectable("sparse tar member (not inspected)")
        super()._apply_pax_info(pax_headers, encoding, errors)  # type: ignore[misc]
