"""Microsoft containers a mail client opens: TNEF (winmail.dat) and OLE compound files (Outlook
.msg, Office 97-2003 documents, vbaProject.bin).

Parsing is the libraries' (tnefparse, olefile); this module asks them what a recipient could
open: each attachment's names and bytes, nested messages, and whether a VBA project is there.
What they cannot answer safely is reported as a reason the caller makes uninspectable.
"""

from __future__ import annotations

import contextvars
import logging
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO

import olefile
from tnefparse import properties as mapi
from tnefparse.tnef import TNEF, TNEFAttachment

# --- TNEF -------------------------------------------------------------------------------------

# tnefparse reports trouble only through its logger and carries on (decode_mapi catches every
# exception, logs it and drops the rest of the property list: an attachment's long name or data
# may be among what it dropped). Each warning it logs while we parse ends the parse as
# uninspectable; the records stay out of the site's logs (we report them ourselves).
_TNEF_LOGGER = logging.getLogger("tnefparse")
_complaints: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar("tnef_complaints", default=None)


class _Collect(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        collected = _complaints.get()
        if collected is None:
            return True
        if record.levelno >= logging.WARNING:
            collected.append(record.getMessage())
        return False


_TNEF_LOGGER.addFilter(_Collect())
if _TNEF_LOGGER.getEffectiveLevel() > logging.WARNING:
    _TNEF_LOGGER.setLevel(logging.WARNING)  # warnings must be created for the filter to see them

# What hostile TNEF makes tnefparse raise: struct.error (short data), ValueError (bad signature,
# bad UTF-16, unpacking in triples()), UnicodeDecodeError, LookupError (a code page Python has
# not), TypeError (a string before the OEM code page: decode(None)), AssertionError (triples()
# checks the From attribute with assert), IndexError, OverflowError (dates).
TNEF_UNREADABLE = (struct.error, ValueError, LookupError, TypeError, AssertionError, IndexError, OverflowError)

# MS-OXTNEF §2.1.3.3: level(1) id(2) type(2) length(4) data checksum(2).
_ATTRIBUTE = struct.Struct("<BHHI")
_ATT_RENDDATA, _ATT_RECIPIENTS, _ATT_MAPI_PROPS, _ATT_ATTACHMENT = 0x9002, 0x9004, 0x9003, 0x9005
_IMESSAGE = b"\x07\x03\x02\x00\x00\x00\x00\x00\xc0\x00\x00\x00\x00\x00\x00\x46"  # IID_IMessage
_ISTORAGE = b"\x0b\x00\x00\x00\x00\x00\x00\x00\xc0\x00\x00\x00\x00\x00\x00\x46"  # IID_IStorage
_OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"  # MS-CFB §2.2
_FIXED_SIZES = {0x0002: 2, 0x000B: 2, 0x0003: 4, 0x0004: 4, 0x000A: 4, 0x0005: 8, 0x0006: 8, 0x0007: 8,
                0x0014: 8, 0x0040: 8, 0x0048: 16}  # MS-OXCDATA §2.11.1 property types
_VARIABLE_TYPES = (0x0000, 0x000D, 0x001E, 0x001F, 0x0102)
# tnefparse copies the rest of the file for each attribute (data[offset:]): what that may cost.
TNEF_COPY_BUDGET_FACTOR = 64
TNEF_COPY_BUDGET_FLOOR = 64 * 1024 * 1024
_NAME_PROPERTIES = (mapi.MAPI_ATTACH_LONG_FILENAME, mapi.MAPI_ATTACH_FILENAME, mapi.MAPI_DISPLAY_NAME,
                    mapi.MAPI_ATTACH_EXTENSION, mapi.MAPI_ATTACH_PATHNAME, mapi.MAPI_ATTACH_LONG_PATHNAME)
# The attachment properties tnefparse uses as text or bytes (TNEFAttachment.add_attr: the data
# object's .startswith, the file and display names' .strip), with the types that give it those:
# any other type hands it an int or a float, and it raises AttributeError.
_TYPED_PROPERTIES = {mapi.MAPI_ATTACH_DATA_OBJ: (0x0000, 0x000D, 0x0102),
                     mapi.MAPI_ATTACH_FILENAME: (0x0000, 0x000D, 0x001E, 0x001F, 0x0102),
                     mapi.MAPI_DISPLAY_NAME: (0x0000, 0x000D, 0x001E, 0x001F, 0x0102)}


class Unsafe(Exception):
    """Input a library would read unboundedly or wrongly; the message says why."""


@dataclass(frozen=True)
class Attachment:
    names: tuple[str, ...]
    data: bytes
    embedded: TNEF | None  # an attached message (MS-OXTNEF §2.1.3.4.1: IMessage data object)


def tnef_attachments(tnef: TNEF) -> Iterator[Attachment]:
    for attachment in tnef.attachments:
        data = _ole_object(bytes(attachment.data))
        yield Attachment(_tnef_names(attachment), data, getattr(attachment, "embed", None))


def _ole_object(data: bytes) -> bytes:
    """An attachment by OLE (PidTagAttachMethod 6, MS-OXTNEF §2.1.3.4.1): PidTagAttachDataObject
    is the IStorage interface id, then the compound file Outlook opens. tnefparse leaves the id
    on and strips trailing NULs (the last sectors of the file): take the id off, pad the sectors.
    Only the id followed by a compound file is that: any other data (a PE whose bytes 16-24
    happen to be the OLE signature) is an attachment by value and judged whole."""
    if data[:16] != _ISTORAGE or data[16:24] != _OLE_MAGIC:
        return data
    compound = data[16:]
    return compound + bytes(-len(compound) % 512)


def _tnef_names(attachment: TNEFAttachment) -> tuple[str, ...]:
    # The title (attAttachTitle, or the PidTagAttachFilename / PidTagDisplayName that replaces
    # it) as tnefparse keeps it, raw: its `name` decodes bytes as strict UTF-8, where Outlook
    # writes them in the OEM code page (attOemCodepage, MS-OXTNEF §2.1.3.3.12).
    names = _title_readings(getattr(attachment, "_name", b""), attachment.codepage)
    for attribute in attachment.mapi_attrs:
        if attribute.name in _NAME_PROPERTIES and attribute.attr_type in (0x001E, 0x001F):
            text = attribute.data
            names.append("x" + text if attribute.name == mapi.MAPI_ATTACH_EXTENSION else text)
    return tuple(dict.fromkeys(name for name in names if isinstance(name, str) and name))


# What a title in bytes may be read as besides the OEM code page: Windows' ANSI page, UTF-8.
_TITLE_CODE_PAGES = ("cp1252", "utf-8")


def _title_readings(raw: object, code_page: str | None) -> list[str]:
    if isinstance(raw, str):
        return [raw.strip("\0")]
    if not isinstance(raw, bytes):
        return []
    readings = []
    for candidate in dict.fromkeys(page for page in (code_page, *_TITLE_CODE_PAGES) if page):
        try:
            readings.append(raw.decode(candidate).strip("\0"))
        except (LookupError, UnicodeDecodeError):  # a code page Python has not; bytes it does not map
            continue
    return readings or [raw.decode("utf-8", "replace").strip("\0")]


def parse_tnef(data: bytes, max_depth: int) -> TNEF:
    """tnefparse's reading of `data`, after checking that it stays cheap; Unsafe otherwise."""
    check_tnef(data, max_depth)
    collected: list[str] = []
    token = _complaints.set(collected)
    try:
        tnef = TNEF(data, do_checksum=False)
    finally:
        _complaints.reset(token)
    if collected:
        raise Unsafe(f"TNEF that tnefparse reads only in part ({collected[0][:80]})")
    return tnef


def check_tnef(data: bytes, levels: int) -> None:
    """Refuse TNEF whose parse would not be bounded by its size.

    tnefparse trusts the counts it reads: a property list claiming 2^32 entries, or a
    multi-valued property of 2^32 fixed-size values, loops that many times past the end of the
    data; every attribute copies the rest of the file; attached messages recurse without limit.
    So the framing (MS-OXTNEF §2.1.3), the property lists (§2.1.3.4) and the nesting are checked
    against the bytes present first. This reads nothing out of the file.
    """
    if levels < 0:
        raise Unsafe("TNEF messages nested too deep")
    pos, cost, attachment_started = 6, 0, False
    while pos + 12 < len(data):  # tnefparse's loop condition (MIN_OBJ_SIZE)
        level, ident, _, length = _ATTRIBUTE.unpack_from(data, pos)
        cost += len(data) - pos
        body = data[pos + 9:pos + 9 + length]
        if ident == _ATT_RENDDATA:
            attachment_started = True
        elif level == 2 and not attachment_started:
            raise Unsafe("TNEF attachment attribute before any attachment")
        if ident in (_ATT_MAPI_PROPS, _ATT_ATTACHMENT):
            _check_properties(body, 0, levels, attachment=ident == _ATT_ATTACHMENT)
        elif ident == _ATT_RECIPIENTS:
            rows, offset = _u32(body, 0), 4
            if rows > len(body) // 4:
                raise Unsafe("TNEF recipient table longer than its attribute")
            for _ in range(rows):
                offset = _check_properties(body, offset, levels, attachment=False)
        pos += min(len(data) - pos, length + 11)
    if cost > max(TNEF_COPY_BUDGET_FACTOR * len(data), TNEF_COPY_BUDGET_FLOOR):
        raise Unsafe("TNEF with too many attributes to parse")


def _u32(data: bytes, offset: int) -> int:
    if offset + 4 > len(data):
        raise Unsafe("TNEF property list cut short")
    return int(struct.unpack_from("<I", data, offset)[0])


def _check_properties(data: bytes, offset: int, levels: int, attachment: bool) -> int:
    """Walk one property list as tnefparse's decode_mapi does; where it ends."""
    count, offset = _u32(data, offset), offset + 4
    if count > (len(data) - offset) // 4:
        raise Unsafe("TNEF property count larger than its data")
    for _ in range(count):
        if offset + 4 > len(data):
            raise Unsafe("TNEF property list cut short")
        kind, ident = struct.unpack_from("<HH", data, offset)
        offset += 4
        if ident >= 0x8000:  # named property: GUID, kind, id or name
            offset += 16
            offset += 8 if _u32(data, offset) == 0 else 8 + (_u32(data, offset + 4) + 3) // 4 * 4
        # decode_mapi: a multi-valued property (MS-OXTNEF §2.1.3.4.1) has a count, then that
        # many values, each read without its own count; a count of 0 reads one ordinary value.
        multi = 0
        if kind & 0x1000:
            kind ^= 0x1000
            multi, offset = _u32(data, offset), offset + 4
            if multi > len(data) - offset:
                raise Unsafe("TNEF multi-valued property larger than its data")
        if attachment and ident in _TYPED_PROPERTIES and kind not in _TYPED_PROPERTIES[ident]:
            raise Unsafe(f"TNEF property {ident:#06x} of type {kind:#06x}")
        rounds = multi or 1
        if kind in _FIXED_SIZES:
            size = _FIXED_SIZES[kind]
            offset += rounds * size + (2 if rounds % 2 and size == 2 else 0)
        elif kind in _VARIABLE_TYPES:
            for _ in range(rounds):
                items = 1
                if not multi:
                    items, offset = _u32(data, offset), offset + 4
                    if items > (len(data) - offset) // 4:
                        raise Unsafe("TNEF property with more values than its data")
                for _ in range(items):
                    length, offset = _u32(data, offset), offset + 4
                    if length > len(data) - offset:
                        raise Unsafe("TNEF property value longer than its data")
                    if data.startswith(_IMESSAGE, offset):  # an attached message: tnefparse recurses
                        check_tnef(data[offset + len(_IMESSAGE):offset + length], levels - 1)
                    offset += (length + 3) // 4 * 4
        else:
            raise Unsafe(f"TNEF property of unknown type {kind:#06x}")
        if offset > len(data):
            raise Unsafe("TNEF property list cut short")
    return offset


# --- OLE compound files -------------------------------------------------------------------------

# MS-OVBA §2.2: the VBA project storage ("VBA", with "_VBA_PROJECT" and "dir" streams) sits in
# "_VBA_PROJECT_CUR" (Excel), "Macros" (Word) or at the root (vbaProject.bin).
_VBA_STORAGES = frozenset({"_vba_project_cur", "macros", "vba"})
_ATTACH_PREFIX = "__attach_version1.0_"  # MS-OXMSG §2.2.2 attachment object storage
_EMBEDDED = "__substg1.0_3701000D"  # PidTagAttachDataObject as a storage: a message or OLE object
_ATTACH_DATA = "__substg1.0_37010102"  # PidTagAttachDataBinary
# MS-OXMSG §2.1.3: "__substg1.0_" + property id + type (001F UTF-16LE, 001E 8-bit).
_MSG_NAME_IDS = {"3707": "long file name", "3704": "file name", "3001": "display name", "3703": "extension",
                 "370D": "long path name", "3708": "path name"}
# olefile raises OleFileError (an OSError) for what it recognises as broken (DEFECT_INCORRECT
# and worse: we accept no repaired reading); hostile input also gets struct.error, IndexError,
# KeyError, ValueError, TypeError, OverflowError, and RecursionError from a deep directory tree.
OLE_UNREADABLE = (OSError, struct.error, IndexError, KeyError, ValueError, TypeError, OverflowError, RecursionError)


@dataclass(frozen=True)
class OleContents:
    macros: bool
    packages: int  # embedded OLE packages (\x01Ole10Native: any file, not opened)
    attachments: tuple[tuple[str, tuple[str, ...], str | None, int], ...]  # storage path, names, data stream, depth
    is_message: bool


class _IndexedOleFile(olefile.OleFileIO):  # type: ignore[misc]
    """olefile finds a path by scanning every child of each storage on it (exists(), get_type()
    and openstream() all do): an Outlook message with 2000 attachment storages cost 23 s. Each
    storage also indexes its children by lower-case name (kids_dict, filled while the directory
    is read, a duplicate name refused): find them there, with the same result."""

    def _find(self, filename: str | list[str]) -> int:
        node = self.root
        for name in filename.split("/") if isinstance(filename, str) else filename:
            node = node.kids_dict.get(name.lower())
            if node is None:
                raise OSError("file not found")
        return int(node.sid)


class TooManyAttachments(Exception):
    """More attachment storages than the caller allows."""


def open_ole(source: IO[bytes]) -> olefile.OleFileIO:
    return _IndexedOleFile(source, raise_defects=olefile.DEFECT_INCORRECT)


# A name stream longer than this is read only this far (the caller refuses names that long).
MAX_NAME_STREAM = 8192


def ole_contents(ole: olefile.OleFileIO, max_attachments: int) -> OleContents:
    """What an OLE file holds; TooManyAttachments, before any of them is read, when an Outlook
    message has more than `max_attachments`."""
    entries = ole.listdir(streams=True, storages=True)
    macros = any(part.lower() in _VBA_STORAGES for path in entries for part in path[:-1]) or any(
        path[-1].lower() in ("_vba_project", "vba") for path in entries)
    packages = sum(1 for path in entries if path[-1] == "\x01Ole10Native")
    storages = [path for path in entries
                if path[-1].startswith(_ATTACH_PREFIX) and ole.get_type(path) == olefile.STGTY_STORAGE]
    if len(storages) > max_attachments:
        raise TooManyAttachments(len(storages))
    attachments = []
    for path in storages:
        names = []
        for ident, _ in _MSG_NAME_IDS.items():
            for kind, codec in (("001F", "utf-16-le"), ("001E", "cp1252")):
                stream = [*path, f"__substg1.0_{ident}{kind}"]
                if ole.exists(stream) and ole.get_type(stream) == olefile.STGTY_STREAM:
                    text = ole.openstream(stream).read(MAX_NAME_STREAM).decode(codec, "replace").rstrip("\0")
                    names.append("x" + text if ident == "3703" else text)
        data = [*path, _ATTACH_DATA]
        data_path = "/".join(data) if ole.exists(data) and ole.get_type(data) == olefile.STGTY_STREAM else None
        depth = sum(1 for part in path if part == _EMBEDDED)
        attachments.append(("/".join(path), tuple(dict.fromkeys(n for n in names if n)), data_path, depth))
    is_message = any(len(path) == 1 and path[0].startswith("__properties_version1.0") for path in entries)
    return OleContents(macros, packages, tuple(attachments), is_message)
