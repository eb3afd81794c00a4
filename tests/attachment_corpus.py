"""Test messages for the attachments check, built in code: no real malware anywhere.

"Executables" here are the few header bytes our sniffers look at (an MZ header whose e_lfanew
points at PE\\0\\0, an ELF identification, Mach-O magics) followed by filler. Messages are
assembled by hand, not with `email.message`, so each header is exactly the trick under test.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import io
import struct
import tarfile
import zipfile
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

# --- file contents ---------------------------------------------------------------------------


def pe(size: int = 512, e_lfanew: int = 0x80) -> bytes:
    """A minimal PE image header: DOS header, e_lfanew -> "PE\\0\\0", a COFF header for i386."""
    dos = bytearray(b"MZ" + b"\0" * (e_lfanew - 2))
    dos[0x3C:0x40] = struct.pack("<I", e_lfanew)
    coff = b"PE\0\0" + struct.pack("<HHIIIHH", 0x14C, 1, 0, 0, 0, 0xE0, 0x0102)
    return (bytes(dos) + coff).ljust(size, b"\0")


def mz_not_pe() -> bytes:
    """Starts with "MZ" but is no PE (text that happens to begin so; e_lfanew points nowhere)."""
    return b"MZ is the abbreviation we use for the Mozambique office.\n" * 4


def elf() -> bytes:
    # e_ident: magic, ELFCLASS64, ELFDATA2LSB, EV_CURRENT; then e_type ET_EXEC, e_machine x86-64
    return b"\x7fELF\x02\x01\x01" + b"\0" * 9 + struct.pack("<HHI", 2, 0x3E, 1) + b"\0" * 100


def macho(kind: str = "64le") -> bytes:
    match kind:
        case "32be":
            return struct.pack(">IiiI", 0xFEEDFACE, 18, 0, 2) + b"\0" * 64  # ppc, MH_EXECUTE
        case "32le":
            return struct.pack("<IiiI", 0xFEEDFACE, 7, 3, 2) + b"\0" * 64  # i386
        case "64be":
            return struct.pack(">IiiI", 0xFEEDFACF, 0x01000012, 0, 2) + b"\0" * 64
        case "64le":
            return struct.pack("<IiiI", 0xFEEDFACF, 0x0100000C, 0, 2) + b"\0" * 64  # arm64
        case "fat":
            return struct.pack(">II", 0xCAFEBABE, 2) + struct.pack(">iiIII", 7, 3, 4096, 100, 12) + b"\0" * 64
        case "fat64":
            arch = struct.pack(">iiQQII", 0x0100000C, 0, 4096, 100, 14, 0)
            return struct.pack(">II", 0xCAFEBABF, 1) + arch + b"\0" * 64
    raise ValueError(kind)


def java_class() -> bytes:
    """0xCAFEBABE, then minor 0, major 52 (Java 8): not a Mach-O universal binary."""
    return struct.pack(">IHH", 0xCAFEBABE, 0, 52) + b"\0" * 64


def pdf() -> bytes:
    return (b"%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj\n"
            b"2 0 obj<</Type/Pages/Kids[3 0 R]/Count 1>>endobj\n"
            b"3 0 obj<</Type/Page/Parent 2 0 R/MediaBox[0 0 612 792]>>endobj\n"
            b"trailer<</Root 1 0 R>>\n%%EOF\n")


def png() -> bytes:
    """A real 1x1 grey PNG."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0\x80")) + chunk(b"IEND", b""))


def jpeg() -> bytes:
    """SOI, a JFIF APP0 segment, a comment, EOI: what a sniffer sees of a JPEG."""
    app0 = b"JFIF\0\x01\x01\0\0\x01\0\x01\0\0"
    comment = b"test image"
    return (b"\xff\xd8" + b"\xff\xe0" + struct.pack(">H", len(app0) + 2) + app0
            + b"\xff\xfe" + struct.pack(">H", len(comment) + 2) + comment + b"\xff\xd9")


def zip_of(members: Mapping[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def docx() -> bytes:
    """A minimal OOXML word-processing document: a zip with [Content_Types].xml."""
    return zip_of({
        "[Content_Types].xml": b'<?xml version="1.0"?><Types xmlns="http://schemas.openxmlformats.org/'
                               b'package/2006/content-types"><Override PartName="/word/document.xml" '
                               b'ContentType="application/vnd.openxmlformats-officedocument.'
                               b'wordprocessingml.document.main+xml"/></Types>',
        "_rels/.rels": b'<?xml version="1.0"?><Relationships/>',
        "word/document.xml": b'<?xml version="1.0"?><w:document><w:body><w:p><w:r><w:t>Hello</w:t>'
                             b"</w:r></w:p></w:body></w:document>",
    })


def nested_zip(inner_name: str, data: bytes, levels: int) -> bytes:
    """`data` as `inner_name`, zipped `levels` times (level-1.zip holds level-2.zip ...)."""
    blob, name = data, inner_name
    for level in range(levels, 0, -1):
        blob, name = zip_of({name: blob}), f"level-{level}.zip"
    return blob


def encrypted_zip(members: Mapping[str, bytes]) -> bytes:
    """A zip whose members are marked encrypted (APPNOTE 4.4.4 general purpose bit 0).

    zipfile cannot write encrypted archives: write a stored one and set the bit in every local
    and central header, the way a real one looks to a reader that has no password.
    """
    data = bytearray(zip_of(members, zipfile.ZIP_STORED))
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as archive:
        infos = archive.infolist()
        central = archive.start_dir
    for info in infos:
        data[info.header_offset + 6] |= 0x01  # local file header: flags at +6
    offset = central
    for _ in infos:
        assert data[offset:offset + 4] == b"PK\x01\x02"
        data[offset + 8] |= 0x01  # central directory header: flags at +8
        name_length, extra_length, comment_length = struct.unpack_from("<HHH", data, offset + 28)
        offset += 46 + name_length + extra_length + comment_length
    return bytes(data)


def zip_bomb(size: int = 200 * 1024 * 1024, name: str = "zeros.bin") -> bytes:
    """One member of `size` zero bytes (about 200 KB compressed), written in chunks."""
    buffer = io.BytesIO()
    chunk = bytes(1024 * 1024)
    with (zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive,
          archive.open(name, "w", force_zip64=True) as out):
        for _ in range(size // len(chunk)):
            out.write(chunk)
    return buffer.getvalue()


def lying_zip_bomb(size: int = 200 * 1024 * 1024, declared: int = 1000) -> bytes:
    """zip_bomb() whose headers claim the member is only `declared` bytes."""
    data = bytearray(zip_of({"small.txt": bytes(size)}))
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as archive:
        info = archive.infolist()[0]
        central = archive.start_dir
    struct.pack_into("<I", data, info.header_offset + 22, declared)  # local header uncompressed size
    struct.pack_into("<I", data, central + 24, declared)  # central directory uncompressed size
    return bytes(data)


def zip_declaring(size: int, name: str = "big.bin") -> bytes:
    """A small zip whose member claims to unpack to `size` bytes."""
    return lying_zip_bomb(16, size).replace(b"small.txt", name.encode().ljust(9)[:9])


def tar_declaring(size: int, name: str = "big.bin") -> bytes:
    """An uncompressed tar whose only member claims `size` bytes and has none of them."""
    info = tarfile.TarInfo(name)
    info.size = size
    return info.tobuf(format=tarfile.GNU_FORMAT) + bytes(1024)


def many_parts(count: int, boundary: str = "p") -> bytes:
    """A multipart/mixed body of `count` tiny text parts (the boundary is one letter)."""
    body = b"".join(f"--{boundary}\r\nContent-Type: text/plain\r\n\r\n{index}\r\n".encode() for index in range(count))
    head = f'Content-Type: multipart/mixed; boundary="{boundary}"'
    return message(Part([head], body + f"--{boundary}--\r\n".encode()))


def many_members_zip(count: int) -> bytes:
    return zip_of({f"file-{index:05}.txt": b"x" for index in range(count)}, zipfile.ZIP_STORED)


def tar_of(members: Mapping[str, bytes], mode: str = "w:gz") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as archive:  # type: ignore[call-overload]
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def tar_bomb(size: int = 200 * 1024 * 1024) -> bytes:
    """A .tar.gz with one member of `size` zero bytes, streamed (about 200 KB)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        info = tarfile.TarInfo("zeros.bin")
        info.size = size
        archive.addfile(info, _Zeros(size))
    return buffer.getvalue()


class _Zeros(io.RawIOBase):
    def __init__(self, size: int) -> None:
        self.left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        count = min(len(buffer), self.left)
        buffer[:count] = bytes(count)
        self.left -= count
        return count


def gzip_of(data: bytes, name: str | None = None) -> bytes:
    buffer = io.BytesIO()
    with gzip.GzipFile(filename=name or "", mode="wb", fileobj=buffer, mtime=0) as out:
        out.write(data)
    return buffer.getvalue()


SEVEN_Z = b"7z\xbc\xaf\x27\x1c\x00\x04" + b"\0" * 56
RAR = b"Rar!\x1a\x07\x01\x00" + b"\0" * 56


def uuencode(data: bytes, name: str, mode: str = "644") -> bytes:
    lines = [f"begin {mode} {name}".encode()]
    lines += [binascii.b2a_uu(data[pos:pos + 45]).rstrip(b"\n") for pos in range(0, len(data), 45)]
    lines += [b"`", b"end"]
    return b"\r\n".join(lines) + b"\r\n"


# --- MIME ------------------------------------------------------------------------------------


@dataclass
class Part:
    """One MIME entity: header lines exactly as written, and its (already encoded) body."""

    headers: list[str | bytes]
    body: bytes

    def render(self) -> bytes:
        lines = [h.encode("utf-8") if isinstance(h, str) else h for h in self.headers]
        return b"\r\n".join(lines) + b"\r\n\r\n" + self.body


def _base64(data: bytes) -> bytes:
    return base64.encodebytes(data).replace(b"\n", b"\r\n")


def attachment(data: bytes, filename: str | None = "file.bin", *, content_type: str = "application/octet-stream",
               name: str | None = None, disposition: str | bytes | None = None, encoding: str = "base64",
               extra: Iterable[str | bytes] = ()) -> Part:
    """An attachment. `filename` goes in Content-Disposition, `name` in Content-Type; pass a
    whole `disposition` (str or raw bytes) to write the header yourself."""
    content = f"Content-Type: {content_type}" + (f'; name="{name}"' if name is not None else "")
    if disposition is None:
        disposition = "attachment" + (f'; filename="{filename}"' if filename is not None else "")
    disposition_line = (b"Content-Disposition: " + disposition if isinstance(disposition, bytes)
                        else f"Content-Disposition: {disposition}")
    body = _base64(data) if encoding == "base64" else data
    return Part([content, disposition_line, f"Content-Transfer-Encoding: {encoding}", *extra], body)


def raw_part(headers: list[str | bytes], body: bytes) -> Part:
    return Part(headers, body)


def text(body: str | bytes, subtype: str = "plain") -> Part:
    data = body.encode("utf-8") if isinstance(body, str) else body
    return Part([f"Content-Type: text/{subtype}; charset=utf-8", "Content-Transfer-Encoding: 8bit"],
                data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"))


def multipart(*parts: Part, subtype: str = "mixed", boundary: str = "=_boundary") -> Part:
    """A multipart entity; like a real generator, it picks a boundary its parts do not contain
    (a forwarded message built here keeps its own "=_boundary": this one becomes "=_boundary1")."""
    rendered = [part.render() for part in parts]
    chosen, suffix = boundary, 0
    while any(f"--{chosen}".encode() in data for data in rendered):
        suffix += 1
        chosen = f"{boundary}{suffix}"
    boundary = chosen
    body = b"This is a multi-part message in MIME format.\r\n"
    for data in rendered:
        body += f"\r\n--{boundary}\r\n".encode() + data
    body += f"\r\n--{boundary}--\r\n".encode()
    return Part([f'Content-Type: multipart/{subtype}; boundary="{boundary}"'], body)


def nested_multipart(levels: int, innermost: Part) -> Part:
    part = innermost
    for level in range(levels, 0, -1):
        part = multipart(part, boundary=f"=_level{level}")
    return part


def rfc822(message_bytes: bytes, filename: str = "forwarded.eml") -> Part:
    return Part(["Content-Type: message/rfc822", f'Content-Disposition: attachment; filename="{filename}"'],
                message_bytes)


def message(*parts: Part, subject: str = "Test") -> bytes:
    """A whole message: one part is the message body itself, several go in a multipart/mixed."""
    top = parts[0] if len(parts) == 1 else multipart(*parts)
    head = [b"From: Alice <alice@example.org>", b"To: Bob <bob@example.net>", f"Subject: {subject}".encode(),
            b"Date: Mon, 1 Jan 2024 00:00:00 +0000", b"Message-ID: <test@example.org>", b"MIME-Version: 1.0"]
    return b"\r\n".join(head) + b"\r\n" + top.render()


def with_attachment(part: Part, subject: str = "Test") -> bytes:
    """The usual shape: a short text and one attachment in a multipart/mixed."""
    return message(text("Please see attached.\n"), part, subject=subject)


# --- MIME tricks: headers given twice, loose transfer encodings, yEnc, BinHex ------------------


def pe_part(cte: str, name: str = "a.dat") -> Part:
    """A PE in base64 under a Content-Transfer-Encoding value written as given."""
    return raw_part([f'Content-Type: application/octet-stream; name="{name}"',
                     f"Content-Transfer-Encoding: {cte}"], _base64(pe()))


def yenc(data: bytes, name: str) -> bytes:
    """yEnc 1.3 (yenc.org): bytes + 42 mod 256; NUL, LF, CR and "=" escaped as "=" + (c + 64)."""
    out = bytearray()
    for byte in data:
        coded = (byte + 42) % 256
        if coded in (0x00, 0x0A, 0x0D, 0x3D):
            out += b"=" + bytes([(coded + 64) % 256])
        else:
            out.append(coded)
    lines = [bytes(out[pos:pos + 128]) for pos in range(0, len(out), 128)]
    return (f"=ybegin line=128 size={len(data)} name={name}\r\n".encode() + b"\r\n".join(lines)
            + f"\r\n=yend size={len(data)}\r\n".encode())


# What a BinHex 4.0 file looks like to a mail client: the marker line, then ":"-framed data
# (the payload here is filler, not a real BinHex encoding).
BINHEX_TEXT = (b"(This file must be converted with BinHex 4.0)\r\n"
               b":#'9cE'8ZFfPd!&0SGA*TEQpXC!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!:\r\n")


# --- single-file compressors ---------------------------------------------------------------------


def bzip2_of(data: bytes) -> bytes:
    import bz2
    return bz2.compress(data)


def xz_of(data: bytes) -> bytes:
    import lzma
    return lzma.compress(data)


def lzma_alone_of(data: bytes) -> bytes:
    """The legacy .lzma container (LZMA SDK "lzma_alone"): props 0x5D, dictionary, size."""
    import lzma
    return lzma.compress(data, format=lzma.FORMAT_ALONE)


# Frame headers of formats the standard library cannot unpack (what `file` recognises them by).
ZSTD = b"\x28\xb5\x2f\xfd\x24\x05\x29\x00\x00hello" + bytes(32)  # RFC 8878 §3.1.1 frame magic
LZ4 = b"\x04\x22\x4d\x18\x64\x40\xa7" + bytes(32)  # LZ4 frame format 1.6.x magic, FLG, BD, HC
LZIP = b"LZIP\x01\x0c" + bytes(32)
COMPRESS_Z = b"\x1f\x9d\x90" + bytes(32)  # ncompress: magic, block mode with 16-bit codes


# --- zip layouts that readers read differently (APPNOTE.TXT 6.3.x section numbers) --------------


def _zip_parts(data: bytes) -> tuple[list[zipfile.ZipInfo], int, int]:
    """The members, where the central directory starts and how long it is."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        infos = archive.infolist()
        start = archive.start_dir
    end = data.rindex(b"PK\x05\x06")
    return infos, start, end - start


def _central_entries(data: bytes) -> list[bytes]:
    """The central directory headers of `data`, each whole (4.3.12)."""
    infos, offset, _ = _zip_parts(data)
    entries = []
    for _ in infos:
        name_length, extra_length, comment_length = struct.unpack_from("<HHH", data, offset + 28)
        size = 46 + name_length + extra_length + comment_length
        entries.append(data[offset:offset + size])
        offset += size
    return entries


def _with_central(data: bytes, entries: list[bytes]) -> bytes:
    """`data` with its central directory replaced by `entries` and the end record fixed."""
    _, start, _ = _zip_parts(data)
    directory = b"".join(entries)
    end = struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, len(entries), len(entries), len(directory), start, 0)
    return data[:start] + directory + end


def unicode_path_extra(header_name: bytes, unicode_name: str, crc: int | None = None) -> bytes:
    """The Info-ZIP Unicode Path extra field (4.6.9): version 1, CRC-32 of the header name, UTF-8."""
    body = b"\x01" + struct.pack("<I", zlib.crc32(header_name) if crc is None else crc) + unicode_name.encode()
    return struct.pack("<HH", 0x7075, len(body)) + body


def zip_with_unicode_path(header_name: str, unicode_name: str, data: bytes = b"hello", *, local: bool = True,
                          central: bool = True, crc: int | None = None) -> bytes:
    """One member called `header_name` in its headers and `unicode_name` in a 0x7075 field, in
    the local header, the central one or both (elsewhere the field's id is changed to 0xCAFE)."""
    info = zipfile.ZipInfo(header_name)
    info.extra = unicode_path_extra(header_name.encode(), unicode_name, crc)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(info, data)
    blob = bytearray(buffer.getvalue())
    name_length = len(header_name.encode())
    if not local:
        blob[30 + name_length:32 + name_length] = b"\xfe\xca"
    if not central:
        _, start, _ = _zip_parts(bytes(blob))
        blob[start + 46 + name_length:start + 48 + name_length] = b"\xfe\xca"
    return bytes(blob)


def zip_with_raw_name(raw: bytes, data: bytes = b"hello", local_raw: bytes | None = None) -> bytes:
    """A member whose stored name is the bytes `raw`, without the UTF-8 flag (bit 11); the local
    header may say `local_raw` instead (same length)."""
    placeholder = "n" * len(raw)
    blob = bytearray(zip_of({placeholder: data}, zipfile.ZIP_STORED))
    _, start, _ = _zip_parts(bytes(blob))
    blob[30:30 + len(raw)] = local_raw if local_raw is not None else raw
    blob[start + 46:start + 46 + len(raw)] = raw
    return bytes(blob)


def zip_with_file_comment(name: str, comment: bytes) -> bytes:
    info = zipfile.ZipInfo(name)
    info.comment = comment
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(info, b"hello")
    return buffer.getvalue()


def zip_with_unlisted_member(listed: Mapping[str, bytes], hidden: str) -> bytes:
    """The members of `listed` plus a local header and data for `hidden` that the central
    directory does not list (a streaming reader extracts it, zipfile never sees it)."""
    blob = zip_of({**listed, hidden: b"@echo off\r\n"}, zipfile.ZIP_STORED)
    entries = [entry for entry in _central_entries(blob) if hidden.encode() not in entry]
    return _with_central(blob, entries)


def zip_with_overlap(name: str = "a.txt") -> bytes:
    """Two central directory entries for one local header (members that share their data)."""
    blob = zip_of({name: b"hello"}, zipfile.ZIP_STORED)
    entry = _central_entries(blob)[0]
    return _with_central(blob, [entry, entry])


def zip_with_data_descriptors(members: Mapping[str, bytes]) -> bytes:
    """What zipfile writes to a stream it cannot seek: sizes in data descriptors (4.3.9)."""
    class Unseekable(io.RawIOBase):
        def __init__(self) -> None:
            self.data = bytearray()

        def writable(self) -> bool:
            return True

        def write(self, chunk) -> int:  # type: ignore[override]
            self.data += chunk
            return len(chunk)

    out = Unseekable()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            with archive.open(name, "w") as member:
                member.write(data)
    return bytes(out.data)


# --- containers found by signature wherever their format puts it ---------------------------------


def vhd_fixed(size: int = 8192) -> bytes:
    """A fixed VHD: the disk's sectors, then the 512-byte footer ("conectix", MS VHD spec §3)."""
    footer = b"conectix" + struct.pack(">IIQI", 2, 0x10000, 0xFFFFFFFFFFFFFFFF, 0) + b"win \0\x0a\0\0Wi2k"
    return bytes(size) + footer.ljust(512, b"\0")


def dmg(size: int = 8192) -> bytes:
    """Data, then the UDIF "koly" trailer (version 4, header size 512) 512 bytes before the end."""
    return bytes(size) + (b"koly" + struct.pack(">II", 4, 512)).ljust(512, b"\0")


def udf_nsr(offset: int = 0x9001) -> bytes:
    return bytes(offset) + b"NSR03" + bytes(2048)


ONENOTE = b"\xe4\x52\x5c\x7b\x8c\xd8\xa7\x4d\xae\xb1\x53\x78\xd0\x29\x96\xd3" + bytes(1024)
CAB = b"MSCF\0\0\0\0" + struct.pack("<I", 100) + bytes(88)
# squashfs 4.0 superblock: magic, inodes, mkfs time, block size 128 KiB, fragments, gzip (1),
# block_log 17, flags, ids, version 4.0
SQUASHFS = b"hsqs" + struct.pack("<IIIIHHHHHH", 1, 0, 1 << 17, 0, 1, 17, 0, 1, 4, 0) + bytes(1024)
XAR = b"xar!\x00\x1c\x00\x01" + bytes(64)
CPIO = b"070701" + b"0" * 104
ARJ = b"\x60\xea" + struct.pack("<H", 40) + bytes([30]) + bytes(60)
LZH = b"\x00\x00-lh5-" + bytes(40)


def filler(size: int) -> bytes:
    """Deterministic bytes that contain no signature (a stand-in for a photo's pixels)."""
    return bytes((index * 7 + index // 256) % 251 for index in range(size))


# --- TNEF (MS-OXTNEF) ---------------------------------------------------------------------------


def _tnef_attribute(level: int, ident: int, kind: int, data: bytes) -> bytes:
    """§2.1.3.3: AttributeLevel, AttributeID (id, then type), Length, Data, Checksum."""
    return (struct.pack("<BHHI", level, ident, kind, len(data)) + data
            + struct.pack("<H", sum(data) & 0xFFFF))


def _mapi_unicode(ident: int, text: str) -> bytes:
    """One PtypString (0x001F) property in an attribute's property list (§2.1.3.4)."""
    value = (text + "\0").encode("utf-16-le")
    return struct.pack("<HHII", 0x001F, ident, 1, len(value)) + value + bytes(-len(value) % 4)


def tnef(*attachments: tuple[str, bytes, str | None]) -> bytes:
    """A winmail.dat: TNEF version and OEM code page, then for each attachment (8.3 title,
    data, long file name or None) attAttachRendData, attAttachTitle, attAttachData and, with a
    long name, attAttachment carrying PidTagAttachLongFilename (0x3707)."""
    out = struct.pack("<IH", 0x223E9F78, 0x0101)
    out += _tnef_attribute(1, 0x9006, 0x0008, struct.pack("<I", 0x00010000))  # attTnefVersion
    out += _tnef_attribute(1, 0x9007, 0x0006, struct.pack("<II", 1252, 0))  # attOemCodepage
    out += _tnef_attribute(1, 0x8008, 0x0007, b"IPM.Microsoft Mail.Note\0")  # attMessageClass
    for title, data, long_name in attachments:
        out += _tnef_attribute(2, 0x9002, 0x0006, struct.pack("<HIHHI", 1, 0xFFFFFFFF, 0, 0, 0))
        out += _tnef_attribute(2, 0x8010, 0x0001, title.encode("ascii") + b"\0")
        out += _tnef_attribute(2, 0x800F, 0x0006, data)
        if long_name is not None:
            out += _tnef_attribute(2, 0x9005, 0x0006, struct.pack("<I", 1) + _mapi_unicode(0x3707, long_name))
    return out


def tnef_part(data: bytes, name: str = "winmail.dat") -> Part:
    return attachment(data, name, content_type="application/ms-tnef")


# --- OLE compound files (MS-CFB), written by a small writer of our own -----------------------------

# olefile reads these files but cannot create them. This writer is the least MS-CFB allows:
# version 3 (512-byte sectors), every stream padded to the 4096-byte mini-stream cutoff so that
# none lives in the mini stream, children of a storage in a balanced binary tree of siblings
# (MS-CFB §2.6.4 wants a red-black tree; readers only walk it).
_FREE, _END, _FATSECT, _NOSTREAM = 0xFFFFFFFF, 0xFFFFFFFE, 0xFFFFFFFD, 0xFFFFFFFF


def ole_file(tree: Mapping[str, object]) -> bytes:
    """An OLE file from a tree: a key maps to bytes (a stream) or to a mapping (a storage)."""
    entries: list[dict] = [{"name": "Root Entry", "type": 5, "children": [], "data": b""}]

    def add(parent: int, node: Mapping[str, object]) -> None:
        for name in sorted(node, key=lambda n: (len(n), n.upper())):  # MS-CFB §2.6.4 order
            value = node[name]
            index = len(entries)
            entries.append({"name": name, "type": 2 if isinstance(value, bytes) else 1, "children": [],
                            "data": value if isinstance(value, bytes) else b""})
            entries[parent]["children"].append(index)
            if not isinstance(value, bytes):
                add(index, value)  # type: ignore[arg-type]

    add(0, tree)
    sectors: list[bytes] = []
    fat: list[int] = []

    def chain(data: bytes) -> int:
        if not data:
            return _END
        first = len(sectors)
        for pos in range(0, len(data), 512):
            sectors.append(data[pos:pos + 512].ljust(512, b"\0"))
            fat.append(len(sectors))
        fat[-1] = _END
        return first

    for entry in entries:
        if entry["type"] == 2:
            entry["data"] = entry["data"].ljust(4096, b"\0")
            entry["start"] = chain(entry["data"])
        else:
            entry["start"] = _END if entry["type"] == 5 else 0
    def siblings(children: list[int]) -> int:
        """The middle child, with the ones before it on its left and the ones after on its right."""
        if not children:
            return _NOSTREAM
        middle = len(children) // 2
        entries[children[middle]]["left"] = siblings(children[:middle])
        entries[children[middle]]["right"] = siblings(children[middle + 1:])
        return children[middle]

    for entry in entries:
        entry["child"] = siblings(entry["children"])
    directory = b""
    for entry in entries:
        name = entry["name"].encode("utf-16-le") + b"\0\0"
        directory += (name.ljust(64, b"\0") + struct.pack("<HBBIII", len(name), entry["type"], 1,
                                                            entry.get("left", _NOSTREAM), entry.get("right", _NOSTREAM),
                                                            entry["child"])
                      + bytes(16 + 4 + 16) + struct.pack("<IQ", entry["start"], len(entry["data"])))
    directory = directory.ljust(-(-len(directory) // 512) * 512, b"\0")
    first_directory = chain(directory)
    # FAT sectors: each holds 128 entries, and must cover itself.
    count = 1
    while (len(sectors) + count) > count * 128:
        count += 1
    fat_start = len(sectors)
    fat += [_FATSECT] * count
    table = b"".join(struct.pack("<I", value) for value in fat).ljust(count * 512, b"\xff")
    sectors += [table[pos:pos + 512] for pos in range(0, len(table), 512)]
    difat = [fat_start + index for index in range(count)] + [_FREE] * (109 - count)
    header = (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(16) + struct.pack("<HHHHH", 0x3E, 3, 0xFFFE, 9, 6)
              + bytes(6) + struct.pack("<IIIIIIIII", 0, count, first_directory, 0, 4096, _END, 0, _END, 0)
              + b"".join(struct.pack("<I", value) for value in difat))
    return header + b"".join(sectors)


def ole_with_vba(main_stream: str = "Workbook", project: str = "_VBA_PROJECT_CUR") -> bytes:
    """An Office 97-2003 document with a VBA project (MS-OVBA §2.2.1: PROJECT stream, VBA storage)."""
    vba = {"VBA": {"_VBA_PROJECT": b"\xcc\x61\xff\xff\x00", "dir": b"\x01", "Module1": b"Attribute VB_Name"},
           "PROJECT": b'ID="{00000000-0000-0000-0000-000000000000}"\r\n'}
    return ole_file({main_stream: b"\x09\x08", project: vba})


def ole_plain_doc() -> bytes:
    return ole_file({"WordDocument": b"\xec\xa5", "\x05SummaryInformation": b"\xfe\xff", "1Table": b"\x00"})


def vba_project_bin() -> bytes:
    """word/vbaProject.bin: the VBA storage at the root."""
    return ole_file({"VBA": {"_VBA_PROJECT": b"\xcc\x61\xff\xff\x00", "dir": b"\x01"}, "PROJECT": b"ID=\r\n"})


def docm_as_docx() -> bytes:
    """A macro-enabled Word document (word/vbaProject.bin) under a .docx-looking zip."""
    return zip_of({
        "[Content_Types].xml": b'<?xml version="1.0"?><Types/>',
        "word/document.xml": b'<?xml version="1.0"?><w:document/>',
        "word/vbaProject.bin": vba_project_bin(),
    })


def outlook_msg(*attachments: tuple[str, bytes]) -> bytes:
    """An Outlook .msg (MS-OXMSG §2.2): properties stream, one storage per attachment with
    PidTagAttachLongFilename (UTF-16) and PidTagAttachDataBinary."""
    tree: dict[str, object] = {"__properties_version1.0": bytes(32),
                               "__substg1.0_0037001F": "Invoice".encode("utf-16-le")}
    for index, (name, data) in enumerate(attachments):
        tree[f"__attach_version1.0_#{index:08X}"] = {
            "__properties_version1.0": bytes(16),
            "__substg1.0_3707001F": name.encode("utf-16-le"),
            "__substg1.0_37010102": data,
        }
    return ole_file(tree)


def ole_with_package() -> bytes:
    """An OLE file embedding a package (\\x01Ole10Native: any file, with its name and bytes)."""
    return ole_file({"WordDocument": b"\xec\xa5",
                     "ObjectPool": {"_1234": {"\x01Ole10Native": b"\x10\x00\x00\x00\x02\x00a.exe\x00"}}})


def tnef_hostile(kind: str) -> bytes:
    """TNEF that a trusting parser would read for ever: counts far past the data, a flood of
    tiny attributes (each one copies the rest of the file in tnefparse), deep nesting."""
    head = struct.pack("<IH", 0x223E9F78, 0x0101) + _tnef_attribute(1, 0x9007, 0x0006, struct.pack("<II", 1252, 0))
    render = _tnef_attribute(2, 0x9002, 0x0006, struct.pack("<HIHHI", 1, 0xFFFFFFFF, 0, 0, 0))
    match kind:
        case "property-count":
            return head + render + _tnef_attribute(2, 0x9005, 0x0006, struct.pack("<I", 0xFFFFFFFF))
        case "multi-valued-shorts":  # PT_MV_SHORT (0x1002) claiming 2^32 - 1 values
            props = struct.pack("<I", 1) + struct.pack("<HHI", 0x1002, 0x3000, 0xFFFFFFFF)
            return head + render + _tnef_attribute(2, 0x9005, 0x0006, props)
        case "attribute-flood":
            return head + _tnef_attribute(1, 0x0001, 0x0000, b"") * 200_000
        case "deep-nesting":
            blob = tnef(("A.TXT", b"x", None))
            for _ in range(200):
                value = b"\x07\x03\x02\x00\x00\x00\x00\x00\xc0\x00\x00\x00\x00\x00\x00\x46" + blob
                props = struct.pack("<IHHII", 1, 0x000D, 0x3701, 1, len(value)) + value + bytes(-len(value) % 4)
                blob = head + render + _tnef_attribute(2, 0x9005, 0x0006, props)
            return blob
    raise ValueError(kind)


def zip_pair_with_odd_last_end_record() -> bytes:
    """zip(evil.exe) + zip(a.txt) where the second end record claims 2 entries on this disk and
    1 in all: zipfile reads the second archive anyway, a reader that checks finds the first."""
    second = bytearray(zip_of({"a.txt": b"x"}))
    struct.pack_into("<H", second, len(second) - 22 + 8, 2)
    return zip_of({"evil.exe": b"x"}) + bytes(second)


# --- review 2: TNEF properties of the wrong type, titles in the OEM code page, OLE objects ---------

IID_ISTORAGE = b"\x0b\x00\x00\x00\x00\x00\x00\x00\xc0\x00\x00\x00\x00\x00\x00\x46"  # MS-OXTNEF §2.1.3.4.1


def mapi_long(ident: int, value: int) -> bytes:
    """One PtypInteger32 (0x0003) property."""
    return struct.pack("<HHI", 0x0003, ident, value)


def mapi_binary(ident: int, data: bytes, kind: int = 0x0102) -> bytes:
    """One PtypBinary (0x0102) or PtypObject (0x000D) property: count 1, length, data padded to 4."""
    return struct.pack("<HHII", kind, ident, 1, len(data)) + data + bytes(-len(data) % 4)


def tnef_with_properties(*properties: bytes, title: bytes | None = b"DATA.BIN", data: bytes | None = b"data",
                         code_page: int = 1252) -> bytes:
    """A winmail.dat with one attachment: an 8.3 title written as the bytes given (MS-OXTNEF
    says: in the OEM code page) unless None, attAttachData unless `data` is None, and an attAttachment
    attribute carrying `properties`."""
    out = struct.pack("<IH", 0x223E9F78, 0x0101)
    out += _tnef_attribute(1, 0x9006, 0x0008, struct.pack("<I", 0x00010000))
    out += _tnef_attribute(1, 0x9007, 0x0006, struct.pack("<II", code_page, 0))
    out += _tnef_attribute(1, 0x8008, 0x0007, b"IPM.Microsoft Mail.Note\0")
    out += _tnef_attribute(2, 0x9002, 0x0006, struct.pack("<HIHHI", 1, 0xFFFFFFFF, 0, 0, 0))
    if title is not None:
        out += _tnef_attribute(2, 0x8010, 0x0001, title + b"\0")
    if data is not None:
        out += _tnef_attribute(2, 0x800F, 0x0006, data)
    if properties:
        out += _tnef_attribute(2, 0x9005, 0x0006, struct.pack("<I", len(properties)) + b"".join(properties))
    return out


def tnef_ole_object(title: str, storage: bytes, iid: bytes = IID_ISTORAGE) -> bytes:
    """An attachment by OLE (PidTagAttachMethod 6): PidTagAttachDataObject holds the IStorage
    interface id, then the compound file."""
    return tnef_with_properties(mapi_long(0x3705, 6), _mapi_unicode(0x3707, title),
                                mapi_binary(0x3701, iid + storage, kind=0x000D), title=title.encode(), data=None)


def cab(files: int = 1) -> bytes:
    """A CAB header as makecab writes it (MS-CAB 2.1 CFHEADER): reserved fields zero, sizes that
    fit, version 1.3, one folder, `files` files."""
    size = 36 + 8 + 16 * files
    return (b"MSCF" + struct.pack("<IIIIIBBHHHHH", 0, size, 0, 44, 0, 3, 1, 1, files, 0, 0x1234, 0)
            + bytes(size - 36))


# An ACE main header: CRC, header size, type 0 (main), flags, then "**ACE**" at 7.
ACE = b"\x12\x34" + struct.pack("<HBH", 31, 0, 0) + b"**ACE**" + bytes(40)


# --- review 2: MIME structure --------------------------------------------------------------------


def many_header_fields(parts: int, fields: int, folded: bool = False) -> bytes:
    """A multipart/mixed of `parts` parts, each with `fields` header fields ("X:a"), or with one
    field folded over `fields` continuation lines."""
    block = b"X-H: a\r\n" + b" \r\n" * fields if folded else b"X:a\r\n" * fields
    body = b"".join(b"--xx\r\n" + block + b"\r\nbody\r\n" for _ in range(parts))
    return message(Part(['Content-Type: multipart/mixed; boundary="xx"'], body + b"--xx--\r\n"))


def pe_attachment_lines(name: str = "a.exe") -> bytes:
    """The header block and base64 body of a PE attachment, as raw lines (CRLF)."""
    return (f'Content-Type: application/octet-stream; name="{name}"\r\n'.encode()
            + b"Content-Transfer-Encoding: base64\r\n\r\n" + _base64(pe()))


def nested_same_boundary(outer: str = "a", inner: str = "a", hidden: bytes | None = None) -> bytes:
    """A multipart/mixed whose first part is a multipart/mixed with boundary `inner`. Read
    parent first (the stdlib, and us), the inner part ends at the second "--a" and the
    attachment after the inner close delimiter is epilogue; read child first (Thunderbird),
    it is the outer multipart's second part."""
    hidden = pe_attachment_lines() if hidden is None else hidden
    body = (f'--{outer}\r\nContent-Type: multipart/mixed; boundary="{inner}"\r\n\r\n'
            f"--{inner}\r\nContent-Type: text/plain\r\n\r\nhi\r\n--{inner}--\r\n"
            f"--{outer}\r\n").encode() + hidden + f"--{outer}--\r\n".encode()
    return message(Part([f'Content-Type: multipart/mixed; boundary="{outer}"'], body))


def delimited(trailer: bytes, hidden: bytes | None = None, boundary: str = "xx") -> bytes:
    """A multipart/mixed whose delimiter lines all end in `trailer` before the line break."""
    hidden = pe_attachment_lines("invoice.exe") if hidden is None else hidden
    line = b"--" + boundary.encode()
    body = (line + trailer + b"\r\nContent-Type: text/plain\r\n\r\nInvoice attached.\r\n" + line + trailer + b"\r\n"
            + hidden + line + b"--" + trailer + b"\r\n")
    return message(Part([f'Content-Type: multipart/mixed; boundary="{boundary}"'], body))


TEXT_PART_LINES = b"Content-Type: text/plain\r\n\r\nnothing to see\r\n"


# --- review 2: base64 with "=" inside a quantum (Thunderbird reads it as a zero digit) -----------

_B64_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def base64_zero_digits(data: bytes) -> bytes:
    """Base64 that Thunderbird decodes to `data` and the stdlib (or a reader that realigns after
    a "=") to something else: the first quantum carries one byte as "x=A=" (Thunderbird: "="
    is a zero digit, two of them leave one byte), the rest is ordinary base64 of data[1:]."""
    assert data[0] & 3 == 0, "the second digit is a zero: the first byte's low bits must be too"
    rest = base64.b64encode(data[1:])
    lines = [rest[pos:pos + 76] for pos in range(0, len(rest), 76)]
    return bytes([_B64_ALPHABET[data[0] >> 2]]) + b"=A=" + b"\r\n".join(lines) + b"\r\n"


def base64_zero_digits_pe() -> bytes:
    """pe() as Thunderbird reads "TVqQ" "AA=A" ...: bytes 3-4 of the DOS header are zero."""
    data = pe(1024)
    assert data[3:5] == b"\0\0"
    rest = base64.b64encode(data[5:])
    return base64.b64encode(data[:3]) + b"AA=A\r\n" + b"\r\n".join(rest[pos:pos + 76]
                                                                   for pos in range(0, len(rest), 76)) + b"\r\n"


def base64_part(encoded: bytes, name: str) -> Part:
    return raw_part([f'Content-Type: application/octet-stream; name="{name}"',
                     f'Content-Disposition: attachment; filename="{name}"', "Content-Transfer-Encoding: base64"],
                    encoded)


def enclosed(message_bytes: bytes, content_type: str, filename: str | None = None) -> Part:
    """A message/* part of any subtype (message/news, message/global...)."""
    headers = [f"Content-Type: {content_type}"]
    if filename is not None:
        headers.append(f'Content-Disposition: attachment; filename="{filename}"')
    return Part(headers, message_bytes)


def delivery_report() -> bytes:
    """A bounce as MTAs write it (RFC 3464): multipart/report with the human-readable text, the
    message/delivery-status fields and the returned headers."""
    status = (b"Reporting-MTA: dns; mail.example.org\r\nArrival-Date: Mon, 1 Jan 2024 00:00:00 +0000\r\n\r\n"
              b"Final-Recipient: rfc822; bob@example.net\r\nAction: failed\r\nStatus: 5.1.1\r\n"
              b"Diagnostic-Code: smtp; 550 5.1.1 no such user\r\n")
    returned = b"From: Alice <alice@example.org>\r\nTo: bob@example.net\r\nSubject: Test\r\n"
    return message(multipart(text("Your message could not be delivered.\n"),
                             Part(["Content-Type: message/delivery-status"], status),
                             Part(["Content-Type: text/rfc822-headers"], returned),
                             subtype="report; report-type=delivery-status"))


# --- review 2: S/MIME (RFC 8551), CMS structures (RFC 5652) built with asn1crypto, unsigned -------


def cms_signed(content: bytes | None) -> bytes:
    """A signed-data ContentInfo carrying `content` (opaque signing), or none (detached). No
    signer: a client shows the content whether or not the signature verifies."""
    from asn1crypto import cms

    encapsulated: dict[str, object] = {"content_type": "data"}
    if content is not None:
        encapsulated["content"] = content
    signed = cms.SignedData({"version": "v1", "digest_algorithms": [], "encap_content_info": encapsulated,
                             "signer_infos": []})
    return cms.ContentInfo({"content_type": "signed_data", "content": signed}).dump()


def cms_enveloped() -> bytes:
    """An enveloped-data ContentInfo (encrypted for a recipient we do not know)."""
    from asn1crypto import cms

    enveloped = cms.EnvelopedData({
        "version": "v0", "recipient_infos": [],
        "encrypted_content_info": {"content_type": "data",
                                   "content_encryption_algorithm": {"algorithm": "aes128_cbc",
                                                                    "parameters": bytes(16)},
                                   "encrypted_content": bytes(32)}})
    return cms.ContentInfo({"content_type": "enveloped_data", "content": enveloped}).dump()


def cms_compressed(content: bytes) -> bytes:
    """A compressed-data ContentInfo (RFC 3274, zlib)."""
    from asn1crypto import cms

    compressed = cms.CompressedData({"version": "v0", "compression_algorithm": {"algorithm": "zlib"},
                                     "encap_content_info": {"content_type": "data",
                                                            "content": zlib.compress(content)}})
    return cms.ContentInfo({"content_type": "compressed_data", "content": compressed}).dump()


def smime_part(der: bytes, smime_type: str | None = "signed-data", name: str = "smime.p7m",
               content_type: str = "application/pkcs7-mime") -> Part:
    parameter = f"; smime-type={smime_type}" if smime_type else ""
    return raw_part([f'Content-Type: {content_type}{parameter}; name="{name}"',
                     f'Content-Disposition: attachment; filename="{name}"', "Content-Transfer-Encoding: base64"],
                    _base64(der))


def smime_entity(*parts: Part) -> bytes:
    """The MIME entity an S/MIME sender signs: the parts in a multipart/mixed, as raw bytes."""
    return multipart(*parts).render()


def smime_multipart_signed(signed: Part) -> bytes:
    """An everyday signed message: multipart/signed with a detached signature (RFC 8551 §3.5.3)."""
    signature = raw_part(['Content-Type: application/pkcs7-signature; name="smime.p7s"',
                          'Content-Disposition: attachment; filename="smime.p7s"',
                          "Content-Transfer-Encoding: base64"], _base64(cms_signed(None)))
    return message(multipart(signed, signature,
                             subtype='signed; protocol="application/pkcs7-signature"; micalg=sha-256'))


# --- review 2: zip local and central headers that disagree ---------------------------------------


def zip_raw(name: str, payload: bytes, *, local: Mapping[str, int], central: Mapping[str, int]) -> bytes:
    """One member whose local header (APPNOTE 4.3.7) and central directory header (4.3.12) are
    written with the fields given (method, flags, crc, compressed, size); `payload` is what
    follows the local header."""
    encoded = name.encode()

    def fields(given: Mapping[str, int]) -> tuple[int, ...]:
        return (given.get("flags", 0), given.get("method", 0), given.get("crc", zlib.crc32(payload)),
                given.get("compressed", len(payload)), given.get("size", len(payload)))

    flags, method, crc, compressed, size = fields(local)
    head = struct.pack("<4sHHHHHIIIHH", b"PK\x03\x04", 20, flags, method, 0, 0, crc, compressed, size,
                       len(encoded), 0) + encoded
    flags, method, crc, compressed, size = fields(central)
    directory = struct.pack("<4sHHHHHHIIIHHHHHII", b"PK\x01\x02", 20, 20, flags, method, 0, 0, crc, compressed, size,
                            len(encoded), 0, 0, 0, 0, 0, 0) + encoded
    body = head + payload
    return body + directory + struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, 1, 1, len(directory), len(body), 0)


def deflated(data: bytes) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    return compressor.compress(data) + compressor.flush()


def zip_method_mismatch(name: str, data: bytes) -> bytes:
    """The local header says deflate (what unzip and libarchive follow), the central directory
    says stored, with the CRC and size of the compressed bytes (what zipfile follows)."""
    raw = deflated(data)
    return zip_raw(name, raw, local={"method": 8, "crc": zlib.crc32(data), "size": len(data)},
                   central={"method": 0, "crc": zlib.crc32(raw), "size": len(raw)})


def zip64_of(members: Mapping[str, bytes]) -> bytes:
    """A zip whose members carry zip64 extra fields (sizes 0xFFFFFFFF in the local header)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            with archive.open(name, "w", force_zip64=True) as out:
                out.write(data)
    return buffer.getvalue()


# --- review 2: tar headers read differently ------------------------------------------------------


def _tar_blocks(info: tarfile.TarInfo, data: bytes, tar_format: int = tarfile.GNU_FORMAT) -> bytes:
    info.size = len(data)
    return info.tobuf(format=tar_format) + data + bytes(-len(data) % 512)


def tar_v7(members: Mapping[str, bytes]) -> bytes:
    """An old-style (Unix V7) tar: no "ustar" magic, only the header checksum to go by."""
    out = b""
    for name, data in members.items():
        header = bytearray(_tar_blocks(tarfile.TarInfo(name), data, tarfile.USTAR_FORMAT))
        header[257:265] = bytes(8)  # magic and version
        header[148:156] = b" " * 8
        header[148:156] = b"%06o\0 " % sum(header[:512])
        out += bytes(header)
    return out + bytes(1024)


def tar_pax_path(header_name: str, path: str, data: bytes) -> bytes:
    """A pax archive whose extended header's `path` (what tarfile, GNU tar and libarchive use)
    differs from the ustar header's name (what a reader without pax support uses)."""
    info = tarfile.TarInfo(header_name)
    info.pax_headers = {"path": path}
    return _tar_blocks(info, data, tarfile.PAX_FORMAT) + bytes(1024)


def tar_gnu_long_name(header_name: str, long_name: str, data: bytes) -> bytes:
    """A GNU long-name record (type L) naming `long_name`, then a header named `header_name`."""
    record = tarfile.TarInfo("././@LongLink")
    record.type = tarfile.GNUTYPE_LONGNAME
    return (_tar_blocks(record, long_name.encode() + b"\0") + _tar_blocks(tarfile.TarInfo(header_name), data)
            + bytes(1024))


def tar_gnu_sparse_10(entries: int) -> bytes:
    """A GNU sparse 1.0 member (pax GNU.sparse.major 1, minor 0) whose map, read by tarfile
    before anything else, has `entries` entries."""
    sparse_map = b"%d\n" % entries + b"0\n0\n" * entries
    info = tarfile.TarInfo("sparse.txt")
    info.pax_headers = {"GNU.sparse.major": "1", "GNU.sparse.minor": "0", "GNU.sparse.name": "readme.txt",
                        "GNU.sparse.realsize": "10"}
    return _tar_blocks(info, sparse_map, tarfile.PAX_FORMAT) + bytes(1024)


def tar_old_gnu_sparse() -> bytes:
    """An old GNU sparse member (type S)."""
    info = tarfile.TarInfo("readme.txt")
    info.type = tarfile.GNUTYPE_SPARSE
    return _tar_blocks(info, b"hello") + bytes(1024)


def outlook_msg_with_storages(count: int) -> bytes:
    """An Outlook .msg with `count` attachment storages, all empty."""
    tree: dict[str, object] = {"__properties_version1.0": bytes(32)}
    for index in range(count):
        tree[f"__attach_version1.0_#{index:08X}"] = {}
    return ole_file(tree)


# --- review 2: uuencode and yEnc as text --------------------------------------------------------


def uuencode_with_trailing(data: bytes, name: str, trailer: bytes = b"~~") -> bytes:
    """uuencode() with `trailer` after each data line: Thunderbird decodes each line by its
    length character and ignores the rest."""
    lines = [binascii.b2a_uu(data[pos:pos + 45]).rstrip(b"\n") + trailer for pos in range(0, len(data), 45)]
    return b"\r\n".join([f"begin 644 {name}".encode(), *lines, b"`", b"end"]) + b"\r\n"


def uuencoded_text(size: int, name: str = "a.txt", line: bytes | None = None) -> bytes:
    """One uuencoded block of about `size` bytes of text, every data line `line` (by default a
    full line: 45 bytes of "A")."""
    line = binascii.b2a_uu(b"A" * 45).rstrip(b"\n") if line is None else line
    return f"begin 644 {name}\r\n".encode() + b"\r\n".join([line] * (size // (len(line) + 2))) + b"\r\nend\r\n"


# --- review 2: long names ------------------------------------------------------------------------


def zip_long_raw_names(members: int, name_length: int = 64_000, comment_length: int = 60_000) -> bytes:
    """`members` members named with bytes that decode under every code page an extractor may
    pick (so each name has many readings), each with a long file comment too."""
    raw = bytes([0xE9, 0x81]) * (name_length // 2)
    body = directory = b""
    for index in range(members):
        name, data = raw + b"%d.txt" % index, b"x"
        local = struct.pack("<4sHHHHHIIIHH", b"PK\x03\x04", 20, 0, 0, 0, 0, zlib.crc32(data), 1, 1, len(name), 0)
        directory += struct.pack("<4sHHHHHHIIIHHHHHII", b"PK\x01\x02", 20, 20, 0, 0, 0, 0, zlib.crc32(data), 1, 1,
                                 len(name), 0, comment_length, 0, 0, 0, len(body)) + name + raw[:comment_length]
        body += local + name + data
    return body + directory + struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, members, members, len(directory),
                                          len(body), 0)


def long_named_parts(parts: int, length: int) -> bytes:
    """`parts` attachments, each named with `length` characters of "é" (UTF-8, raw)."""
    body = b"".join(b'--xx\r\nContent-Type: application/octet-stream\r\nContent-Disposition: attachment; filename="'
                    + ("é" * length + f"{index}.txt").encode() + b'"\r\n\r\nx\r\n' for index in range(parts))
    return message(Part(['Content-Type: multipart/mixed; boundary="xx"'], body + b"--xx--\r\n"))


# --- review 2: decompressor memory -------------------------------------------------------------


def xz_with_dictionary(data: bytes, dict_bits: int = 26) -> bytes:
    """xz of `data` whose LZMA2 filter asks for a 2**dict_bits byte dictionary (64 MiB, what
    xz -9 uses): compressed with a small one, the dictionary property and the block header's
    CRC rewritten. The decoder allocates what the header asks, whatever the data's size."""
    import lzma

    blob = bytearray(lzma.compress(data, preset=0))
    size = (blob[12] + 1) * 4  # block header (xz file format 3.1.1)
    flags, pos = blob[13], 14
    for present in (0x40, 0x80):  # compressed and uncompressed sizes, multibyte integers
        if flags & present:
            while blob[pos] & 0x80:
                pos += 1
            pos += 1
    assert blob[pos:pos + 2] == b"\x21\x01", "one LZMA2 filter, one property byte"
    blob[pos + 2] = (dict_bits - 12) * 2  # dictionary size 2 ** (byte / 2 + 12)
    blob[12 + size - 4:12 + size] = struct.pack("<I", zlib.crc32(blob[12:12 + size - 4]))
    return bytes(blob)


def nested_xz(levels: int, data: bytes = b"hello") -> bytes:
    """`data` xz-compressed `levels` times, each level asking for a 64 MiB dictionary."""
    for _ in range(levels):
        data = xz_with_dictionary(data)
    return data


def quoted_printable_lone_cr(data: bytes) -> bytes:
    """Quoted-printable of `data` with a soft line break written "=" CR (no LF) after the first
    two bytes: Thunderbird (mimeenc.cpp) takes "=" CR as a soft break and decodes on; binascii,
    and so the stdlib, stops reading there."""
    import quopri

    encoded = quopri.encodestring(data, quotetabs=True).replace(b"\n", b"\r\n")
    return encoded[:2] + b"=\r" + encoded[2:]


# --- review 3: S/MIME nested, anywhere, BER; hostile DER ------------------------------------------


def _der_length(size: int) -> bytes:
    if size < 0x80:
        return bytes([size])
    octets = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(octets)]) + octets


def tlv(tag: int, content: bytes) -> bytes:
    return bytes([tag]) + _der_length(len(content)) + content


OID_SIGNED_DATA = bytes.fromhex("06092a864886f70d010702")  # 1.2.840.113549.1.7.2
OID_DATA = bytes.fromhex("06092a864886f70d010701")  # 1.2.840.113549.1.7.1


def cms_signed_ber(content: bytes, chunk: int = 4096) -> bytes:
    """Signed data as `openssl cms -sign -stream` writes it (RFC 5652 in BER): indefinite lengths
    all the way down and the content as a constructed OCTET STRING of `chunk`-byte pieces."""
    chunks = b"".join(tlv(0x04, content[pos:pos + chunk]) for pos in range(0, len(content), chunk))
    return signed_with_econtent(b"\x24\x80" + chunks + b"\0\0")


def signed_with_econtent(econtent: bytes, indefinite: bool = True, econtent_type: bytes = OID_DATA) -> bytes:
    """A ContentInfo of signed data whose eContent ([0] EXPLICIT) is the encoding given."""
    def wrap(tag: int, content: bytes) -> bytes:
        return bytes([tag, 0x80]) + content + b"\0\0" if indefinite else tlv(tag, content)
    version, digests = tlv(0x02, b"\x01"), tlv(0x31, b"")
    encapsulated = wrap(0x30, econtent_type + wrap(0xA0, econtent))
    return wrap(0x30, OID_SIGNED_DATA + wrap(0xA0, wrap(0x30, version + digests + encapsulated + tlv(0x31, b""))))


def cms_long_tag(digits: int) -> bytes:
    """A ContentInfo whose first element inside has a tag number `digits` base-128 digits long."""
    return tlv(0x30, OID_SIGNED_DATA + b"\xbf" + b"\xff" * digits + b"\x01\x00")


def cms_long_oid_arc(digits: int) -> bytes:
    """Signed data whose eContentType OID has an arc of `digits` base-128 digits."""
    oid = tlv(0x06, b"\x2a" + b"\xff" * digits + b"\x01")
    return signed_with_econtent(tlv(0x04, b"x"), indefinite=False, econtent_type=oid)


def fattura_xml() -> bytes:
    """An Italian FatturaPA e-invoice as SdI intermediaries write it (namespace prefix, CRLF)."""
    return (b'<ns2:FatturaElettronica xmlns:ns2="http://ivaservizi.agenziaentrate.gov.it/docs/xsd/fatture/v1.2" '
            b'versione="FPR12">\r\n<FatturaElettronicaHeader>\r\n<DatiTrasmissione><IdTrasmittente>'
            b"<IdPaese>IT</IdPaese><IdCodice>01234567890</IdCodice></IdTrasmittente></DatiTrasmissione>\r\n"
            b"</FatturaElettronicaHeader>\r\n</ns2:FatturaElettronica>\r\n")


def pe_with_ole_magic_at_16() -> bytes:
    """A PE whose bytes 16-24 happen to be the OLE signature (the DOS header's free fields)."""
    data = bytearray(pe(4096))
    data[16:24] = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
    return bytes(data)


def base64_with_inner_padding(size: int) -> bytes:
    """`size` random bytes in base64 with a "=" pad inside the data twice: every reading differs."""
    import os

    lines = base64.encodebytes(os.urandom(size)).split(b"\n")
    middle = len(lines) // 2
    lines[middle] = lines[middle][:-2] + b"=="
    lines[middle + 3] = lines[middle + 3][:-3] + b"=A="
    return b"\r\n".join(lines)
