"""Which container or compressed stream some bytes are, by signature, wherever the format puts it.

Three places (an extractor, a mail client or Windows finds each format where its reader looks):

- the start: most formats; ISO 9660 and UDF volume descriptors at 32 KiB (ECMA-119 §8,
  ECMA-167 2/8.3); LZH at offset 2; OneNote's file-type GUID (MS-ONESTORE §2.3.1);
- the end: a zip's end-of-central-directory record in the last 64 KiB (APPNOTE 4.3.16: the
  comment may be 65535 bytes), the UDIF "koly" trailer of a DMG and a fixed VHD's footer, both
  512 bytes before the end;
- anywhere: RAR 4 and 5, 7z and CAB, the formats self-extracting stubs and polyglots (a JPEG
  with a RAR appended) put behind a prefix, and which 7-Zip and WinRAR find there. Their
  signatures are 6-8 bytes, binary: a chance match in other data is negligible.

A signature of a few printable bytes ("MSCF", "LZIP", "sqsh", cpio's "070707", ar's "!<arch>")
also starts everyday text: those formats count only when the rest of their header is plausible
too (reserved fields zero, sizes and versions in range, digits where the format has digits).

Formats we open are named by the constants below; any other name is a format we recognise and
do not open (its reader is not pure Python, or not sane to run on hostile input here).
"""

from __future__ import annotations

import re
import struct

from policymilter import sniff
from policymilter.sniff import SIGNATURE_BYTES

ZIP, TAR, GZIP, BZIP2, XZ, LZMA, OLE, TNEF = "zip", "tar", "gzip", "bzip2", "xz", "lzma", "ole", "tnef"
STREAMS = (GZIP, BZIP2, XZ, LZMA)  # single-file compressors we unpack
OPENED = (ZIP, TAR, OLE, TNEF, *STREAMS)
# Single-file compressors we only recognise: what they unpack to is still named after them.
UNOPENED_STREAMS = ("zst", "lz4", "lz", "lzo", "compress", "pack")

# What a format we do not open is called in a reply ("... cannot be inspected: rar archive").
_LABELS = {"ole": "OLE file", "tnef": "TNEF file", "onenote": "OneNote document",
           "dmg": "disk image (dmg)", "iso": "iso archive", "udf": "udf disk image",
           "vhd": "vhd disk image", "vhdx": "vhdx disk image", "wim": "wim disk image",
           "squashfs": "squashfs image"}

# Matched by filetype: binary magics of 4 bytes or more (its cab, ar and lz matchers test four to
# seven printable bytes: ours below check the header).
_FILETYPE_KINDS = ("rar", "7z", "deb", "rpm", "lz4", "lzo", "zst")
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08")  # APPNOTE 4.3.7, 4.3.16, 8.5.4
_BZIP2 = re.compile(rb"BZh[1-9](1AY&SY|\x17\x72\x45\x38\x50\x90)")
_OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"  # MS-CFB §2.2 header signature
_TNEF_MAGIC = b"\x78\x9f\x3e\x22"  # MS-OXTNEF §2.1.3.1 TNEFSignature 0x223E9F78, little-endian
# MS-ONESTORE §2.3.1: guidFileType of .one and .onetoc2, and guidFileFormat (at 16) of both.
_ONENOTE = (b"\xe4\x52\x5c\x7b\x8c\xd8\xa7\x4d\xae\xb1\x53\x78\xd0\x29\x96\xd3",
            b"\xa1\x2f\xff\x43\xd9\xef\x76\x4c\x9e\xe2\x10\xea\x57\x22\x76\x5f")
_ONENOTE_FORMAT = b"\x3f\xdd\x9a\x10\x1b\x91\xf5\x49\xa5\xd0\x17\x91\xed\xc8\xae\xd8"
# Volume recognition sequence: 2 KiB descriptors from 32 KiB (ISO 9660 "CD001"; UDF/ECMA-167
# "BEA01", "NSR02", "NSR03", "TEA01"); some writers use 4 KiB sectors.
_VOLUME_OFFSETS = tuple(sorted({0x8001 + step * index for step in (0x800, 0x1000) for index in range(8)}))
_VOLUME_IDS = {b"CD001": "iso", b"BEA01": "udf", b"NSR02": "udf", b"NSR03": "udf", b"TEA01": "udf"}
_LZH_METHOD = re.compile(rb"-(?:l[hz][0-9a-z]|pm[0-2s])-")  # LHA level 0-2 headers, at offset 2
_START_MAGICS = (  # (offset, magic, kind): exact bytes at a fixed place
    (0, b"vhdxfile", "vhdx"),  # MS-VHDX §2.2.1
    (0, b"conectix", "vhd"),  # a dynamic VHD's copy of its footer
    (0, b"MSWIM\0\0\0", "wim"),
    (0, b"\x89LZO\x00\r\n\x1a\n", "lzo"),
    (0, b"\x1f\x1e", "pack"),  # gunzip unpacks these too
)
# One pattern per format, each starting with fixed text so the engine scans for it in C (one
# alternation of all of them is twice as slow: 80 ms for 20 MB). ACE's "**ACE**" is printable
# and short: it counts only where the format puts it (at_start).
_ANYWHERE = (
    (re.compile(re.escape(b"Rar!\x1a\x07") + b"(?:\x00|\x01\x00)"), "rar", 8),  # RAR 4 marker block, RAR 5
    (re.compile(re.escape(b"7z\xbc\xaf\x27\x1c")), "7z", 6),
    (re.compile(re.escape(b"MSCF\0\0\0\0")), "cab", 8),  # signature and reserved1 (MS-CAB 2.1 CFHEADER)
)
LONGEST_SIGNATURE = max(length for _, _, length in _ANYWHERE)
# APPNOTE 4.3.16: a 22-byte record and up to 65535 bytes of comment; 4.3.15: the zip64
# locator (20 bytes) just before it.
TAIL_BYTES = 22 + 0xFFFF + 20
_EOCD = re.compile(re.escape(b"PK\x05\x06"))


def label(kind: str) -> str:
    return _LABELS.get(kind, f"{kind} archive")


def at_start(head: bytes) -> str | None:
    """The format whose signature sits at the start of `head` (its first 64 KiB), or None."""
    if head.startswith(_ZIP_MAGIC):
        return ZIP
    if head.startswith(b"\x1f\x8b\x08"):  # RFC 1952 §2.3.1, deflate
        return GZIP
    if _BZIP2.match(head):
        return BZIP2
    if head.startswith(b"\xfd7zXZ\x00"):
        return XZ
    if head[257:262] == b"ustar" or _is_v7_tar(head):  # POSIX.1-1988 and GNU tar magic, or none (V7)
        return TAR
    if head.startswith(_OLE_MAGIC):
        return OLE
    if head.startswith(_TNEF_MAGIC):
        return TNEF
    if _is_lzma_alone(head):
        return LZMA
    if head[:16] in _ONENOTE or head[16:32] == _ONENOTE_FORMAT:
        return "onenote"
    if _is_compress(head):
        return "compress"
    if _is_arj(head):
        return "arj"
    if _LZH_METHOD.match(head, 2) and len(head) >= 22 and head[20] in (0, 1, 2):  # the header level at 20
        return "lzh"
    signature = head[:SIGNATURE_BYTES]
    for kind in _FILETYPE_KINDS:
        found = sniff.matcher(kind)
        if found is not None and found.match(signature):
            return kind
    for offset, magic, kind in _START_MAGICS:
        if head.startswith(magic, offset):
            return kind
    for plausible, kind in _CHECKED:
        if plausible(head):
            return kind
    for offset in _VOLUME_OFFSETS:
        volume = _VOLUME_IDS.get(head[offset:offset + 5])
        if volume is not None:
            return volume
    return None


def _is_lzma_alone(head: bytes) -> bool:
    # LZMA SDK .lzma header: properties byte (lc=3 lp=0 pb=2, what every encoder writes),
    # dictionary size (a power of two, or 3 times one, 4 KiB..1.5 GiB), uncompressed size
    # (all ones when unknown).
    if len(head) < 13 or head[0] != 0x5D:
        return False
    dictionary, size = struct.unpack_from("<IQ", head, 1)
    return dictionary in _LZMA_DICTIONARIES and (size == 2**64 - 1 or size < 2**48)


_LZMA_DICTIONARIES = frozenset(size for bits in range(12, 31) for size in (1 << bits, 3 << (bits - 1)))


_OCTAL_FIELD = re.compile(rb"[0-7 ]*\0?[ \0]*")


def _is_v7_tar(head: bytes) -> bool:
    # An old-style header (no magic), as tarfile accepts one: the checksum at 148 (octal) is
    # the sum of the header's bytes, unsigned or signed, with the checksum field as spaces; a
    # name; mode, sizes and times in octal.
    if len(head) < 512 or head[0] == 0:
        return False
    fields = (head[100:108], head[108:116], head[116:124], head[124:136], head[136:148], head[148:156])
    if not all(_OCTAL_FIELD.fullmatch(field) for field in fields) or not head[148:156].strip(b" \0"):
        return False
    checksum = int(head[148:156].strip(b" \0"), 8)
    unsigned = 256 + sum(head[:148]) + sum(head[156:512])
    signed = 256 + sum(struct.unpack_from("148b8x356b", head))
    return checksum in (unsigned, signed)


def _is_cab(head: bytes) -> bool:
    # MS-CAB 2.1 CFHEADER: "MSCF", reserved1, cbCabinet, reserved2, coffFiles, reserved3 (zero),
    # version 1.3, at least one folder and one file, flags in the three defined bits.
    if len(head) < 36 or head[:4] != b"MSCF":
        return False
    reserved1, size, reserved2, files_at, reserved3, minor, major, folders, files, flags = struct.unpack_from(
        "<IIIIIBBHHH", head, 4)
    return ((reserved1, reserved2, reserved3, major, minor) == (0, 0, 0, 1, 3) and 36 <= files_at < size
            and folders >= 1 and files >= 1 and flags < 8)


def _is_ar(head: bytes) -> bool:
    # "!<arch>\n", then the first member header: 60 bytes ending in "`\n" (or nothing: empty).
    return head.startswith(b"!<arch>\n") and (len(head) == 8 or head[66:68] == b"`\n")


def _is_lzip(head: bytes) -> bool:
    # lzip: "LZIP", version 0 or 1, coded dictionary size (base-2 log 12..29 in the low 5 bits).
    return len(head) >= 6 and head[:4] == b"LZIP" and head[4] in (0, 1) and 12 <= head[5] & 0x1F <= 29


_CPIO_ODC = re.compile(rb"070707[0-7]{70}")  # POSIX odc: 6 magic, 70 octal digits
_CPIO_NEWC = re.compile(rb"07070[12][0-9A-Fa-f]{104}")  # SVR4 newc and crc: 6 magic, 104 hex digits


def _is_cpio(head: bytes) -> bool:
    if _CPIO_ODC.match(head) or _CPIO_NEWC.match(head):
        return True
    # Old binary header (26 bytes), either byte order: a name size that fits, the name NUL-ended.
    for order in ("<", ">"):
        if len(head) >= 26 and struct.unpack_from(f"{order}H", head)[0] == 0o70707:
            name_size = struct.unpack_from(f"{order}H", head, 20)[0]
            return bool(1 <= name_size <= 4096 and len(head) >= 26 + name_size and head[26 + name_size - 1] == 0)
    return False


def _is_squashfs(head: bytes) -> bool:
    # squashfs 4 ("hsqs", little-endian): version 4.0, block size 2^block_log (4 KiB..1 MiB), a
    # known compressor. Versions 1-3 ("sqsh" big-endian, or "hsqs"): the major version at 28.
    if len(head) < 32 or head[:4] not in (b"hsqs", b"sqsh"):
        return False
    order = "<" if head[:4] == b"hsqs" else ">"
    if order == "<":
        block_size, _, compression, block_log = struct.unpack_from("<IIHH", head, 12)
        major, minor = struct.unpack_from("<HH", head, 28)
        if (major, minor) == (4, 0):
            return bool(12 <= block_log <= 20 and block_size == 1 << block_log and 1 <= compression <= 6)
    return bool(1 <= struct.unpack_from(f"{order}H", head, 28)[0] <= 3)


def _is_xar(head: bytes) -> bool:
    # xar header: "xar!", header size (28 or more), version 1, big-endian.
    if len(head) < 8 or head[:4] != b"xar!":
        return False
    size, version = struct.unpack_from(">HH", head, 4)
    return bool(size >= 28 and version == 1)


def _is_ace(head: bytes) -> bool:
    # ACE main header: CRC, size, type 0 (main), flags, "**ACE**" at 7.
    return len(head) >= 14 and head[4] == 0 and head[7:14] == b"**ACE**"


_CHECKED = ((_is_cab, "cab"), (_is_ar, "ar"), (_is_lzip, "lz"), (_is_cpio, "cpio"),
            (_is_squashfs, "squashfs"), (_is_xar, "xar"), (_is_ace, "ace"))


def _is_compress(head: bytes) -> bool:
    # ncompress: 1F 9D, then the maximum code width (9..16) in the low 5 bits, bits 5-6 unused.
    return len(head) >= 3 and head[:2] == b"\x1f\x9d" and 9 <= head[2] & 0x1F <= 16 and not head[2] & 0x60


def _is_arj(head: bytes) -> bool:
    # ARJ main header: 60 EA, basic header size (<= 2600), first header size 30 or more.
    if len(head) < 11 or head[:2] != b"\x60\xea":
        return False
    size = int.from_bytes(head[2:4], "little")
    return 0 < size <= 2600 and head[4] >= 30


def anywhere(data: bytes | memoryview) -> list[str]:
    """The formats whose signatures occur anywhere in `data`, in order of first occurrence."""
    found = sorted((match.start(), kind) for pattern, kind, _ in _ANYWHERE if (match := pattern.search(data)))
    return [kind for _, kind in found]


def at_end(tail: bytes | memoryview, complete: bool = True) -> list[str]:
    """The formats that announce themselves at the end of a file. `tail` is the whole file
    (`complete`) or its last TAIL_BYTES."""
    kinds = []
    if zip_end(tail, complete) is not None:
        kinds.append(ZIP)
    trailer = tail[-512:]
    if len(trailer) == 512 and trailer[:12] == b"koly\0\0\0\x04\0\0\x02\0":  # UDIF trailer, version 4
        kinds.append("dmg")
    if len(trailer) == 512 and b"conectix" in (trailer[:8], trailer[1:9]):  # VHD footer (older ones: 511 bytes)
        kinds.append("vhd")
    return kinds


def zip_end(tail: bytes | memoryview, complete: bool = True) -> int | None:
    """Where in `tail` the last plausible end-of-central-directory record starts, or None.

    Found the way lenient readers find it (the last signature in the last 64 KiB, whatever
    follows it), but only a record that could be real counts: one disk (APPNOTE 4.4.19-4.4.20),
    as many entries on it as in all, and a central directory header where it says the central
    directory starts (or a zip64 locator before it). Random data passes all that once in 2^48.
    """
    for found in reversed(list(_EOCD.finditer(tail, max(0, len(tail) - TAIL_BYTES)))):
        pos = found.start()
        if len(tail) - pos < 22:
            continue
        disk, cd_disk, here, total, size = struct.unpack_from("<HHHHI", tail, pos + 4)
        if (disk, cd_disk) != (0, 0) or here != total:
            continue
        if pos >= 20 and tail[pos - 20:pos - 16] == b"PK\x06\x07":
            return pos
        if total == 0 or (pos >= size and tail[pos - size:pos - size + 4] == b"PK\x01\x02"):
            return pos
        if pos < size and not complete:  # the central directory starts before the tail we hold
            return pos
    return None


class Search:
    """The anywhere and end signatures of a file read in chunks: a rolling overlap for the
    first, the last TAIL_BYTES for the second (memory: about 130 KiB whatever the size)."""

    def __init__(self) -> None:
        self.kinds: list[str] = []
        self.tail = b""

    def feed(self, chunk: bytes) -> None:
        window = self.tail[-(LONGEST_SIGNATURE - 1):] + chunk
        for kind in anywhere(window):
            if kind not in self.kinds:
                self.kinds.append(kind)
        self.tail = (self.tail + chunk)[-TAIL_BYTES:]

    def at_end(self, size: int) -> list[str]:
        return at_end(self.tail, complete=size <= len(self.tail))
