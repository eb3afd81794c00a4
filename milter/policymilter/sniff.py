"""What a file's bytes say it is: executables by exact header checks, other kinds by `filetype`.

A low module: the attachments check judges files with it, and the policy validator asks it
which kinds `attachments.blocked_content` may list (the policy layer never imports a check).

PE, ELF and Mach-O are decided by our own exact header checks: the libraries evaluated
(filetype, puremagic) both call any file starting with "MZ" an executable and neither knows
Mach-O. `filetype` (pure Python) serves every other kind a policy lists, by its matcher of
that name.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

import filetype

# filetype's zstd matcher recurses once per 8-byte skippable frame: give matchers no more than
# they need.
SIGNATURE_BYTES = 4096
# Kinds the walk establishes from a container's structure rather than from a file's first
# bytes (checks/attachments/walk.py: File.kinds).
STRUCTURAL_KINDS = ("macro",)

_MACHO_THIN = {b"\xfe\xed\xfa\xce": ">", b"\xce\xfa\xed\xfe": "<", b"\xfe\xed\xfa\xcf": ">", b"\xcf\xfa\xed\xfe": "<"}
_MACHO_FAT = {b"\xca\xfe\xba\xbe": ">", b"\xca\xfe\xba\xbf": ">", b"\xbe\xba\xfe\xca": "<", b"\xbf\xba\xfe\xca": "<"}


def pe_header_offset(data: bytes | memoryview) -> int | None:
    """e_lfanew of a DOS "MZ" header (where a PE header would be), else None."""
    if len(data) < 0x40 or bytes(data[:2]) != b"MZ":
        return None
    return int.from_bytes(data[0x3C:0x40], "little")


def is_pe(data: bytes | memoryview) -> bool:
    # PE/COFF specification §2: the MS-DOS stub's e_lfanew (offset 0x3C) points at "PE\0\0".
    offset = pe_header_offset(data)
    return offset is not None and bytes(data[offset:offset + 4]) == b"PE\0\0"


def is_elf(data: bytes | memoryview) -> bool:
    # System V ABI: magic, EI_CLASS 32/64-bit, EI_DATA little/big endian, EI_VERSION current.
    head = bytes(data[:7])
    return len(head) == 7 and head[:4] == b"\x7fELF" and head[4] in (1, 2) and head[5] in (1, 2) and head[6] == 1


def is_macho(data: bytes | memoryview) -> bool:
    head = bytes(data[:16])
    if len(head) < 16:
        return False
    if (order := _MACHO_THIN.get(head[:4])) is not None:
        # <mach-o/loader.h> filetype: MH_OBJECT (1) .. MH_FILESET (12)
        return 1 <= int(struct.unpack_from(f"{order}I", head, 12)[0]) <= 12
    if (order := _MACHO_FAT.get(head[:4])) is not None:
        # <mach-o/fat.h> nfat_arch. 0xCAFEBABE also starts Java class files, where this word is
        # the class version (major >= 45); a universal binary has a handful of slices.
        return 1 <= int(struct.unpack_from(f"{order}I", head, 4)[0]) < 45
    return False


_EXACT = {"pe": is_pe, "elf": is_elf, "macho": is_macho}


def matcher(kind: str) -> filetype.Type | None:
    """filetype's matcher of that name (its own get_type() searches every type each call)."""
    return _MATCHERS.get(kind)


_MATCHERS: dict[str, filetype.Type] = {}
for _type in filetype.types:
    _MATCHERS.setdefault(_type.extension, _type)  # first wins, as filetype.get_type(ext=) picks


def executable_kind(data: bytes | memoryview, wanted: Iterable[str]) -> str | None:
    """The first kind in `wanted` that `data` is: pe, elf and macho by our exact checks, any
    other by filetype's matcher of that name ("swf", "crx", "wasm"...)."""
    head: bytes | None = None
    for kind in sorted(wanted):
        exact = _EXACT.get(kind)
        if exact is not None:
            if exact(data):
                return kind
            continue
        found = _MATCHERS.get(kind)
        if found is not None:
            if head is None:
                head = bytes(data[:SIGNATURE_BYTES])
            if found.match(head):
                return kind
    return None


def known_content_kinds() -> frozenset[str]:
    """What `blocked_content` may list (for the policy validator)."""
    return frozenset(_EXACT) | frozenset(STRUCTURAL_KINDS) | frozenset(kind.extension for kind in filetype.types)
