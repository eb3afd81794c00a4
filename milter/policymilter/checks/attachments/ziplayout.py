"""A zip file's layout as every extractor may read it: the names each member may be saved
under, and the ways readers could disagree about what the archive holds.

zipfile reads the central directory named by the last end record, and the header name only.
Other readers differ (measured: TESTING-NOTES.md): 7-Zip, WinRAR, Info-ZIP and libarchive
honour the Info-ZIP Unicode Path field, 7-Zip shows the first of two concatenated archives,
streaming readers walk the local headers from the start. So:

- every name counts: central and local header names, the Unicode Path (0x7075) and Unicode
  Comment (0x6375) extra fields, the file comment; a name with bytes >= 0x80 and no UTF-8 flag
  (APPNOTE 4.4.4 bit 11) under each code page an extractor may pick;
- anything readers may resolve differently is a problem (the caller makes it uninspectable):
  data before the first local header, between members or after the end record, a second end
  record, members that overlap, local headers the central directory does not list, local and
  central headers that disagree on any field both carry (name, flags, compression method, and
  CRC and sizes unless the local header defers them to a data descriptor: unzip and libarchive
  follow the local header, zipfile and 7-Zip the central one), extra fields whose CRC does not
  match the name they translate, data descriptors that contradict the central directory.

The local headers are walked in the order of their offsets, using the central directory's
compressed sizes (APPNOTE 4.3.6: local header, data, optional data descriptor), zip64 included.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field
from typing import IO

from policymilter.checks.attachments import containers

# Code pages extractors use for names without the UTF-8 flag: cp437 (APPNOTE appendix D, and
# zipfile), UTF-8 (Info-ZIP on Unix, macOS, 7-Zip when it decodes), the OEM and ANSI pages
# Windows and WinRAR take from the locale (multi-byte ones swallow bytes: "x.\x82\x85..." is
# "x.ｅ..." in cp932).
CODE_PAGES = ("cp437", "utf-8", "cp932", "cp936", "cp949", "cp950", "cp1252", "cp866")
_UNICODE_PATH, _UNICODE_COMMENT, _ZIP64 = 0x7075, 0x6375, 0x0001
_LOCAL, _CENTRAL, _DESCRIPTOR = b"PK\x03\x04", b"PK\x01\x02", b"PK\x07\x08"
_ZIP64_END, _ZIP64_LOCATOR = b"PK\x06\x06", b"PK\x06\x07"


@dataclass
class Layout:
    members: list[tuple[str, ...]] = field(default_factory=list)  # names, in central directory order
    problems: list[str] = field(default_factory=list)
    prefix: int = 0  # bytes before the first local header
    directory: int = -1  # where the central directory starts (absolute), -1 when not found
    hidden: list[tuple[str, ...]] = field(default_factory=list)  # names of unlisted local headers

    def problem(self, text: str) -> None:
        if text not in self.problems:
            self.problems.append(text)


def readings(raw: bytes, utf8: bool) -> list[str]:
    """Every way an extractor may decode a stored name."""
    if utf8 or raw.isascii():
        return [raw.decode("utf-8", "replace")]
    found = []
    for code_page in CODE_PAGES:
        try:
            text = raw.decode(code_page)
        except UnicodeDecodeError:
            continue
        if text not in found:
            found.append(text)
    return found


def _extras(blob: bytes) -> list[tuple[int, bytes]]:
    fields, pos = [], 0
    while pos + 4 <= len(blob):
        kind, size = struct.unpack_from("<HH", blob, pos)
        fields.append((kind, blob[pos + 4:pos + 4 + size]))
        pos += 4 + size
    return fields


def _unicode_fields(extra: bytes, name: bytes, comment: bytes, layout: Layout) -> list[str]:
    """Names from the Info-ZIP Unicode Path and Unicode Comment fields (APPNOTE 4.6.8-4.6.9:
    version 1, the CRC-32 of the header field they translate, UTF-8 text)."""
    found = []
    for kind, data in _extras(extra):
        if kind not in (_UNICODE_PATH, _UNICODE_COMMENT) or len(data) < 5:
            continue
        original = name if kind == _UNICODE_PATH else comment
        what = "Unicode Path" if kind == _UNICODE_PATH else "Unicode Comment"
        if data[0] != 1 or struct.unpack_from("<I", data, 1)[0] != zlib.crc32(original):
            # Info-ZIP then ignores the field, 7-Zip and others use it anyway.
            layout.problem(f"zip {what} field does not match the name it translates")
        found.append(data[5:].decode("utf-8", "replace"))
    return found


@dataclass(frozen=True)
class _Entry:
    index: int
    raw_name: bytes
    flags: int
    method: int
    crc: int
    compressed: int
    size: int
    offset: int
    unicode_paths: tuple[str, ...]


def read(source: IO[bytes], total: int) -> Layout:
    """The layout of the zip in `source` (seekable, `total` bytes)."""
    layout = Layout()
    tail_start = max(0, total - containers.TAIL_BYTES)
    source.seek(tail_start)
    tail = source.read()
    found = containers.zip_end(tail, complete=tail_start == 0)
    if found is None:
        layout.problem("corrupt zip archive: no end-of-central-directory record")
        return layout
    end = tail_start + found
    entries_total, cd_size, cd_offset, comment_length = struct.unpack_from("<10xHIIH", tail, found)
    if end + 22 + comment_length != total:
        layout.problem("data after the end of the zip archive" if end + 22 + comment_length < total
                       else "zip end record cut short")
    directory_end = end
    if found >= 20 and tail[found - 20:found - 16] == _ZIP64_LOCATOR:
        record = _read_at(source, end - 20 - 56, 56)
        if record[:4] != _ZIP64_END:
            layout.problem("zip64 end record missing")
            return layout
        entries_total, cd_size, cd_offset = struct.unpack_from("<32xQQQ", record)
        directory_end = end - 20 - 56
    cd_start = directory_end - cd_size
    layout.directory = cd_start
    base = cd_start - cd_offset
    if cd_start < 0 or base < 0:
        layout.problem("zip central directory outside the file")
        return layout
    if base:
        layout.prefix = base
        layout.problem("data before the first zip local header")
    entries = _central_directory(source, cd_start, cd_size, entries_total, layout)
    _walk_local_headers(source, entries, base, cd_start, layout)
    return layout


def _read_at(source: IO[bytes], offset: int, size: int) -> bytes:
    if offset < 0:
        return b""
    source.seek(offset)
    return source.read(size)


def _central_directory(source: IO[bytes], start: int, size: int, count: int, layout: Layout) -> list[_Entry]:
    directory = _read_at(source, start, size)
    entries: list[_Entry] = []
    pos = 0
    while pos + 46 <= len(directory) and directory[pos:pos + 4] == _CENTRAL:
        (flags, method, crc, compressed, plain, name_length, extra_length, comment_length, disk,
         offset) = struct.unpack_from("<8xHH4xIIIHHHH6xI", directory, pos)
        name = directory[pos + 46:pos + 46 + name_length]
        extra = directory[pos + 46 + name_length:pos + 46 + name_length + extra_length]
        comment = directory[pos + 46 + name_length + extra_length:pos + 46 + name_length + extra_length
                            + comment_length]
        pos += 46 + name_length + extra_length + comment_length
        if disk:
            layout.problem("zip archive spans several disks")
        compressed, plain, offset = _zip64_sizes(extra, compressed, plain, offset)
        unicode_paths = tuple(_unicode_fields(extra, name, comment, layout))
        names = readings(name, bool(flags & 0x800)) + list(unicode_paths)
        if comment:
            names += readings(comment, bool(flags & 0x800))
        layout.members.append(tuple(dict.fromkeys(names)))
        entries.append(_Entry(len(entries), name, flags, method, crc, compressed, plain, offset, unicode_paths))
    if pos != len(directory) or len(entries) != count:
        layout.problem("zip central directory does not match its end record")
    return entries


def _zip64_sizes(extra: bytes, compressed: int, plain: int, offset: int) -> tuple[int, int, int]:
    """APPNOTE 4.5.3: the zip64 field holds, in this order, each of these that is 0xFFFFFFFF."""
    for kind, data in _extras(extra):
        if kind != _ZIP64:
            continue
        values, pos = [], 0
        for value in (plain, compressed, offset):
            if value == 0xFFFFFFFF and pos + 8 <= len(data):
                value = struct.unpack_from("<Q", data, pos)[0]
                pos += 8
            values.append(value)
        plain, compressed, offset = values
    return compressed, plain, offset


def _walk_local_headers(source: IO[bytes], entries: list[_Entry], base: int, cd_start: int, layout: Layout) -> None:
    cursor = base
    for entry in sorted(entries, key=lambda entry: entry.offset):
        at = base + entry.offset
        if at > cursor:
            _gap(source, cursor, at, layout)
        elif at < cursor:
            layout.problem("zip members overlap")
        header = _read_at(source, at, 30)
        if len(header) < 30 or header[:4] != _LOCAL:
            layout.problem("no zip local header where the central directory points")
            cursor = max(cursor, at)
            continue
        flags, method, crc, compressed, plain, name_length, extra_length = struct.unpack_from("<6xHH4xIIIHH", header)
        rest = _read_at(source, at + 30, name_length + extra_length)
        name, extra = rest[:name_length], rest[name_length:]
        if name != entry.raw_name or (flags ^ entry.flags) & 0x800:
            layout.problem("zip local and central names differ")
            layout.members[entry.index] += tuple(readings(name, bool(flags & 0x800)))
        _compare_headers(entry, flags, method, crc, *_local_zip64_sizes(extra, compressed, plain), layout)
        local_unicode = tuple(_unicode_fields(extra, name, b"", layout))
        if local_unicode and local_unicode != entry.unicode_paths:
            # Streaming readers (libarchive) take the local one, 7-Zip the central one.
            layout.problem("zip local and central Unicode Path fields differ")
            layout.members[entry.index] += tuple(text for text in local_unicode
                                                 if text not in layout.members[entry.index])
        data_end = at + 30 + name_length + extra_length + entry.compressed
        if flags & 0x08:  # APPNOTE 4.3.9 data descriptor
            data_end += _descriptor_length(source, data_end, entry, layout)
        cursor = max(cursor, data_end)
    if cursor < cd_start:
        _gap(source, cursor, cd_start, layout)
    elif cursor > cd_start:
        layout.problem("zip members overlap the central directory")


def _local_zip64_sizes(extra: bytes, compressed: int, plain: int) -> tuple[int, int]:
    """APPNOTE 4.5.3: in a local header the zip64 field holds both sizes, uncompressed first."""
    if 0xFFFFFFFF not in (compressed, plain):
        return compressed, plain
    for kind, data in _extras(extra):
        if kind == _ZIP64 and len(data) >= 16:
            plain, compressed = struct.unpack_from("<QQ", data)
    return compressed, plain


def _compare_headers(entry: _Entry, flags: int, method: int, crc: int, compressed: int, plain: int,
                     layout: Layout) -> None:
    if flags != entry.flags:
        layout.problem("zip headers disagree: flags")
    if method != entry.method:
        layout.problem("zip headers disagree: compression method")
    if flags & 0x08:  # APPNOTE 4.4.4 bit 3: CRC and sizes follow the data (checked there)
        return
    if crc != entry.crc:
        layout.problem("zip headers disagree: CRC")
    if (compressed, plain) != (entry.compressed, entry.size):
        layout.problem("zip headers disagree: sizes")


def _descriptor_length(source: IO[bytes], at: int, entry: _Entry, layout: Layout) -> int:
    data = _read_at(source, at, 24)
    for signed in (True, False):
        start = 4 if signed else 0
        if signed and data[:4] != _DESCRIPTOR:
            continue
        for width in ("I", "Q"):
            size = 4 + 2 * struct.calcsize(width)
            if len(data) >= start + size and struct.unpack_from(f"<I{width}{width}", data, start) == (
                    entry.crc, entry.compressed, entry.size):
                return start + size
    layout.problem("zip data descriptor does not match the central directory")
    return 0


def _gap(source: IO[bytes], start: int, end: int, layout: Layout) -> None:
    header = _read_at(source, start, 30)
    if len(header) == 30 and header[:4] == _LOCAL:
        # A streaming reader extracts it; zipfile and 7-Zip never list it.
        flags, name_length = struct.unpack_from("<6xH18xH", header)
        name = _read_at(source, start + 30, min(name_length, end - start - 30))
        layout.problem("zip local header not in the central directory")
        layout.hidden.append(tuple(readings(name, bool(flags & 0x800))))
    else:
        layout.problem("data between zip members")
