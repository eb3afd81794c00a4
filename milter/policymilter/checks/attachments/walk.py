"""The files in a message: MIME parts, uuencoded blocks and archive members, walked over raw bytes.

`files()` yields every file a recipient could open (with the names it gives itself and its
content, or the first bytes of it) and every place the walk could not look into; deciding what
is dangerous is the caller's business (the check, in __init__.py). The MIME structure is read
by mimeparts.py, file names by names.py, uuencoded blocks by uuencode.py.

Signed data (S/MIME opaque signing, ".p7m" files: by type, by name or by content) is opened
wherever a file can be, its own content included, each level one deeper (smime.py); its
content is a MIME entity only when it clearly is one, else a file that is also searched for
uuencoded blocks.

Archives: zip (nested, encrypted member names included; its layout read as every extractor may
read it, ziplayout.py), tar (old-style ones too; every name a header gives judged; sparse
members refused), gzip / bzip2 / xz / lzma streams (.tar.gz and friends; the decompressors open
at once share one memory budget), from the standard library; TNEF (winmail.dat) and OLE
files (Outlook .msg attachments, VBA projects) through tnefparse and olefile (msoffice.py). A
hostile archive stays cheap (archives.py): a zip's central directory is counted before zipfile
parses it; members are streamed through once, their first 64 KiB judged and the rest searched
for the signatures of other formats with a bounded window (containers.Search). Zip members
compressed with bzip2 or LZMA are not opened: zipfile decompresses those without an output
bound (113 bytes of bzip2 make 100 MB). Every other container or disk image is recognised by
its signature wherever its format puts it (containers.py: start, end, anywhere) and reported
as not inspected: its reader is not pure pip or not sane to run on hostile input here.
"""

from __future__ import annotations

import dataclasses
import io
import lzma
import re
import tarfile
import tempfile
import zipfile
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from typing import IO, cast

from policymilter import sniff
from policymilter.checks.attachments import containers, msoffice, smime, ziplayout
from policymilter.checks.attachments.archives import (
    CHUNK,
    DECODER_MEMORY,
    LZMA_MEMORY_LIMIT,
    MAX_DECOMPRESSOR_MEMORY,
    MAX_PE_HEADER_OFFSET,
    MAX_TNEF,
    MIN_LZMA_MEMORY,
    OPENERS,
    SNIFF_BYTES,
    SPOOL_THRESHOLD,
    UNREADABLE,
    Allowance,
    Corrupt,
    Exhausted,
    GuardedTarInfo,
    Metered,
    Prefixed,
    Readable,
    Uninspectable,
    count_signature,
    gzip_name,
    read_up_to,
    unpacked_names,
)
from policymilter.checks.attachments.mimeparts import Body, Entity, Overflow, WalkBudget, walk, walk_entity
from policymilter.checks.attachments.uuencode import LineBudget, UuencodeTooLong, uuencoded
from policymilter.sniff import pe_header_offset


@dataclass(frozen=True)
class WalkLimits:
    max_depth: int = 10  # MIME and archive nesting levels, together
    max_parts: int = 1000  # MIME entities per message
    max_members: int = 1000  # archive members and uuencoded blocks per message, all archives together
    max_expanded: int = 100 * 1024 * 1024  # bytes unpacked per message: declared or actual, the larger


@dataclass(frozen=True)
class File:
    """A file a recipient could open, or a named container (`content` None)."""

    names: tuple[str, ...]  # decoded, as the message or archive gives them
    path: str  # MIME part number, then archive members: "2/inner.zip/evil.exe"
    attachment: str  # name of the MIME attachment holding it ("" for a MIME part itself)
    # The whole content (MIME parts, uuencoded blocks) or its first SNIFF_BYTES, extended to
    # the PE header an "MZ" header points at (archive members, unpacked streams).
    content: bytes | memoryview | None
    # Content kinds established from the container's structure rather than its first bytes
    # ("macro": an OLE file with a VBA project, OOXML with vbaProject.bin or macro sheets).
    kinds: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return self.names[0] if self.names else ""


@dataclass(frozen=True)
class Unreadable:
    """Somewhere the walk could not look: encrypted, corrupt, unsupported or over a limit."""

    name: str
    path: str
    attachment: str
    reason: str  # short, fit for an SMTP reply
    error: str = ""  # the library's complaint, for the log


_OOXML_MACRO = re.compile(r"(?i)(?:^|/)(?:vbaProject\.bin$|macrosheets/)")


def _complaint(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


Item = File | Unreadable


def files(header: bytes, body: bytes, limits: WalkLimits) -> Generator[Item, None, None]:
    """Every file in the message, in document order, and every place that could not be read.

    Stop iterating (and close the generator) as soon as you have your answer: nothing past
    the current file is decompressed.
    """
    walked = _Walker(limits).message(header, body)
    try:
        for item in walked:
            if isinstance(item, File) and any(len(name) > MAX_NAME_LENGTH for name in item.names):
                # What a client saves such a name as (Windows stops at 255 characters a
                # component, others cut elsewhere) is anyone's guess; judging it would cost a
                # step per character and code page.
                for name in item.names:
                    if len(name) > MAX_NAME_LENGTH:
                        yield Unreadable(name[:MAX_NAME_LENGTH], item.path[:MAX_NAME_LENGTH], item.attachment,
                                         f"file name over {MAX_NAME_LENGTH} characters")
                item = dataclasses.replace(item, names=tuple(name for name in item.names
                                                             if len(name) <= MAX_NAME_LENGTH))
            yield item
            del item  # the caller's copy is all that keeps its content (base64_readings)
    finally:
        walked.close()


MAX_NAME_LENGTH = 1024


ZIP, TAR, GZIP, BZIP2, XZ, LZMA, OLE, TNEF = (containers.ZIP, containers.TAR, containers.GZIP, containers.BZIP2,
                                             containers.XZ, containers.LZMA, containers.OLE, containers.TNEF)
SIGNATURE_BYTES = sniff.SIGNATURE_BYTES
container_of = containers.at_start


# RFC 1741 and the names clients also send it under; the marker line BinHex 4.0 writes.
_BINHEX_TYPES = ("application/mac-binhex40", "application/x-mac-binhex40", "application/binhex40",
                 "application/x-binhex40")
_BINHEX_MARKER = re.compile(re.escape(b"(This file must be converted with BinHex"))
_YENC_BEGIN = b"=ybegin "  # yEnc 1.3 header line
# The marker after a line break: fixed text first, so the engine scans for it in C, the line
# break tested after, as a lookbehind.
_YENC_LINE = re.compile(re.escape(_YENC_BEGIN) + rb"(?<=[\r\n]" + re.escape(_YENC_BEGIN) + rb")")


def _yenc_begins(text: Body) -> bool:
    """Whether a yEnc header line starts a line of `text`: one search in C, however often the
    marker occurs elsewhere in a line."""
    return bytes(text[:len(_YENC_BEGIN)]) == _YENC_BEGIN or _YENC_LINE.search(text) is not None



class _Walker:
    """One message's walk and what it may still cost."""

    def __init__(self, limits: WalkLimits) -> None:
        self.limits = limits
        self.allowance = Allowance(limits.max_members, limits.max_expanded)
        self.uu_budget = LineBudget()
        self.walk_budget = WalkBudget(limits.max_parts)
        self.der_budget = smime.Budget()

    def message(self, header: bytes, body: bytes) -> Generator[Item, None, None]:
        yield from self.entities(walk(header, body, self.limits.max_depth, self.limits.max_parts, self.walk_budget))

    def entities(self, walked: Iterator[Entity | Overflow], attachment: str = "") -> Iterator[Item]:
        """The files of MIME entities: the message's, or those of a MIME entity signed inside a
        file (`attachment`: that file's name, "" for the message's own parts)."""
        for entity in walked:
            if isinstance(entity, Overflow):
                yield Unreadable("", entity.number or "body", attachment, entity.reason)
                continue
            path = entity.number or "body"
            name = entity.names[0] if entity.names else ""
            for problem in entity.problems:
                yield Unreadable(name, path, attachment, problem)
            if entity.body is None or entity.content_type == "message/partial":
                yield File(entity.names, path, attachment, None)
                if entity.body is not None:  # RFC 2046 §5.2.2: only a fragment of something is here
                    yield Unreadable(name, path, attachment, "message/partial fragment")
                continue
            if entity.content_type in _BINHEX_TYPES:
                yield Unreadable(name, path, attachment, "BinHex-encoded file (not decoded)")
            # Every decoding a client may make, the others made one at a time, each let go
            # before the next (base64_readings).
            yield from self.reading(entity, entity.body, path, name, attachment)
            if entity.readings is not None:
                for body in entity.readings():
                    yield from self.reading(entity, body, path, name, attachment)
                    del body

    def reading(self, entity: Entity, body: Body, path: str, name: str, attachment: str) -> Iterator[Item]:
        yield File(entity.names, path, attachment, body)
        mime_hint = entity.content_type in smime.SMIME_TYPES and entity.smime_type == "signed-data"
        yield from self.inside(entity.names, body, entity.depth, path, attachment or name, at_start=entity.saved,
                               content_type=entity.content_type, smime_mime=mime_hint, number=entity.number)
        if entity.content_type.startswith("text/"):
            # Newsreaders and some mail clients decode these from the text itself.
            if _yenc_begins(body):
                yield Unreadable(name, path, attachment, "yEnc-encoded data (not decoded)")
            if _BINHEX_MARKER.search(body):
                yield Unreadable(name, path, attachment, "BinHex-encoded data (not decoded)")
            yield from self.uuencoded(body, entity.depth, path, attachment or name)

    def smime(self, names: tuple[str, ...], data: Body, depth: int, path: str, attachment: str, mime: bool = False,
              number: str | None = None) -> Iterator[Item]:
        """A CMS structure (smime.py) wherever a file can be: the content it carries is a file
        one level down, named without its ".p7m" (".p7s", ".p7c") suffixes, opened like any file
        (a signed .p7m again, an archive...); when it is clearly a MIME entity (`mime`: the part
        says smime-type=signed-data, or the content starts with MIME header fields, RFC 8551
        §3.1), its parts are walked too. Content that is a file is also searched for uuencoded
        blocks, as text: a MIME reader that takes it for a headerless entity shows them.
        `number`: the MIME part number of the S/MIME part, for its content's parts."""
        name = names[0] if names else ""
        if depth + 1 > self.limits.max_depth:
            yield Unreadable(name, path, attachment, f"nested deeper than {self.limits.max_depth} levels")
            return
        if len(data) > self.limits.max_expanded:  # asn1crypto holds it, and copies, in memory
            yield Unreadable(name, path, attachment, f"S/MIME larger than {self.limits.max_expanded} bytes")
            return
        try:
            content = smime.encapsulated(data if isinstance(data, bytes) else bytes(data), self.der_budget)
            if content is None:
                return
            self.allowance.unpack(len(content))
        except smime.Uninspectable as error:
            yield Unreadable(name, path, attachment, str(error))
            return
        except Exhausted as error:
            yield Unreadable(name, path, attachment, str(error))
            return
        unsigned = smime.unsigned_names(names)
        if number is not None:  # an S/MIME part: its content is the next part number down
            inner_path = f"{number}.1" if number else "1"
        else:
            inner_path = f"{path}/{unsigned[0] if unsigned else '(signed content)'}"
        inner = attachment or name
        yield File(unsigned, inner_path, inner, content)
        yield from self.inside(unsigned, content, depth + 1, inner_path, inner)
        if mime or smime.mime_content(content):
            yield from self.entities(walk_entity(content, depth + 1, inner_path, self.limits.max_depth,
                                                 self.walk_budget), attachment)
        else:
            yield from self.uuencoded(content, depth + 1, inner_path, inner)

    def uuencoded(self, text: Body, depth: int, path: str, attachment: str) -> Iterator[Item]:
        blocks = uuencoded(text, limit=self.limits.max_members + 1, budget=self.uu_budget)
        while True:
            try:
                name, data = next(blocks)
            except StopIteration:
                return
            except UuencodeTooLong as error:
                yield Unreadable(attachment, path, "", str(error))
                return
            block_path = f"{path}/{name}"
            try:
                self.allowance.member()
            except Exhausted as error:
                yield Unreadable(name, block_path, attachment, str(error))
                return
            yield File((name,), block_path, attachment, data)
            yield from self.inside((name,), data, depth + 1, block_path, attachment)

    def inside(self, names: tuple[str, ...], data: Body, depth: int, path: str, attachment: str,
               at_start: bool = True, content_type: str = "", smime_mime: bool = False,
               number: str | None = None) -> Iterator[Item]:
        """What a file held whole in memory contains, by the signatures of every format we know,
        wherever each format puts its own (containers.py). Text read as the message's text
        (`at_start` False) is no file to a recipient: what its first bytes look like is moot.
        A signed file (S/MIME, ".p7m": by its type, its name or its content) is opened instead:
        its content is what a reader shows."""
        if smime.declared(content_type, names) or (at_start and smime.looks_like_cms(data[:SNIFF_BYTES])):
            yield from self.smime(names, data, depth, path, attachment, smime_mime, number)
            return
        head = bytes(data[:SNIFF_BYTES])
        kind = container_of(head) if at_start else None
        name = names[0] if names else ""
        if kind is None or kind == OLE:
            # Not a format whose reading accounts for all its bytes: look for the others.
            found = [found for found in (*containers.anywhere(data), *containers.at_end(data)) if found != kind]
            if kind is None and ZIP in found:
                # A zip behind a prefix (self-extractor stub, polyglot): 7-Zip and others open it
                # whatever the file is called; so do we (and the prefix makes it uninspectable).
                kind = ZIP
                found.remove(ZIP)
            for other in found:
                yield Unreadable(name, path, attachment, f"{containers.label(other)} inside the file (not inspected)")
        if kind is not None:
            whole = data if isinstance(data, bytes) else bytes(data)
            yield from self.container(kind, names, io.BytesIO(whole), head, depth, path, attachment)

    def container(self, kind: str, names: tuple[str, ...], source: IO[bytes] | Readable, head: bytes, depth: int,
                  path: str, attachment: str) -> Iterator[Item]:
        """An archive or compressed stream; its members sit one level deeper. The `source` of a
        zip or an OLE file is seekable (in memory or a spooled file)."""
        name = names[0] if names else ""
        if kind in containers.UNOPENED_STREAMS:
            unpacked = unpacked_names(names)
            if unpacked:  # still judged by the name it unpacks to
                yield File(unpacked, f"{path}/{unpacked[0]}", attachment, None)
        if kind not in containers.OPENED:
            yield Unreadable(name, path, attachment, f"{containers.label(kind)} (format not inspected)")
            return
        if depth + 1 > self.limits.max_depth:
            yield Unreadable(name, path, attachment, f"nested deeper than {self.limits.max_depth} levels")
            return
        try:
            match kind:
                case "zip":
                    yield from self.zip(cast(IO[bytes], source), name, depth + 1, path, attachment)
                case "tar":
                    yield from self.tar(source, depth + 1, path, attachment)
                case "ole":
                    yield from self.ole(cast(IO[bytes], source), names, depth + 1, path, attachment)
                case "tnef":
                    yield from self.tnef(cast(IO[bytes], source), names, depth + 1, path, attachment)
                case _:
                    yield from self.stream(kind, names, head, source, depth + 1, path, attachment)
        except Uninspectable as error:
            yield Unreadable(name, path, attachment, str(error))
        except msoffice.Unsafe as error:
            yield Unreadable(name, path, attachment, str(error))
        except UNREADABLE as error:
            yield Unreadable(name, path, attachment, f"corrupt {kind} archive", _complaint(error))
        except Corrupt as error:
            yield Unreadable(name, path, attachment, f"corrupt {containers.label(kind)}", str(error))

    def zip(self, source: IO[bytes], name: str, depth: int, path: str, attachment: str) -> Iterator[Item]:
        # zipfile builds an object per central-directory entry, and a directory of a million
        # tiny entries fits in a few megabytes: count them first.
        if count_signature(source, b"PK\x01\x02") > self.allowance.members:
            raise Exhausted(f"more than {self.limits.max_members} archive members")
        total = source.seek(0, io.SEEK_END)
        layout = ziplayout.read(source, total)
        for problem in layout.problems:
            yield Unreadable(name, path, attachment, problem)
        for hidden in layout.hidden:
            self.allowance.member()
            yield File(hidden, f"{path}/{hidden[0]}", attachment, None)
        if layout.prefix:
            # What comes before is a file of its own to 7-Zip and others (the first of two
            # concatenated archives, a self-extractor's stub): inspect it as one.
            source.seek(0)
            yield from self.inside((), source.read(layout.prefix), depth, f"{path}/(prefix)", attachment)
        source.seek(0)
        with zipfile.ZipFile(source) as archive:
            if archive.start_dir != layout.directory:
                # zipfile found another end record than the one we read the layout from.
                yield Unreadable(name, path, attachment, "readers disagree on where the zip's central directory is")
            members = archive.infolist()
            readings = layout.members if len(layout.members) == len(members) else [() for _ in members]
            named = [(info, tuple(dict.fromkeys((info.filename, *extra)))) for info, extra in zip(members, readings,
                                                                                                 strict=True)]
            for info, names in named:  # names first: an encrypted or oversized archive still shows them
                self.allowance.member()
                yield File(names, f"{path}/{info.filename}", attachment, None)
                if _OOXML_MACRO.search(info.filename):
                    # ECMA-376 with a VBA project or Excel 4.0 macro sheets: Word and Excel run
                    # them whatever the extension says (a .docm renamed .docx still opens).
                    yield File((name,) if name else (), path, attachment, None, kinds=("macro",))
            # not is_dir(): it fails on a name ""
            regular = [(info, names) for info, names in named if not info.filename.endswith("/")]
            self.allowance.unpack(sum(info.file_size for info, _ in regular))
            for info, names in regular:
                yield from self.zip_member(archive, info, names, depth, f"{path}/{info.filename}", attachment)

    def zip_member(self, archive: zipfile.ZipFile, info: zipfile.ZipInfo, names: tuple[str, ...], depth: int,
                   path: str, attachment: str) -> Iterator[Item]:
        if info.flag_bits & 0x1:  # APPNOTE 4.4.4 bit 0: encrypted (traditional or AES)
            yield Unreadable(info.filename, path, attachment, "encrypted archive member")
            return
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            yield Unreadable(info.filename, path, attachment, f"zip compression method {info.compress_type}")
            return
        try:
            with archive.open(info) as member:
                metered = Metered(member, self.allowance, prepaid=info.file_size)
                yield from self.member(names, metered, info.file_size, depth, path, attachment)
        except Exhausted:
            raise
        except Uninspectable as error:
            yield Unreadable(info.filename, path, attachment, str(error))
        except UNREADABLE as error:
            # One bad member does not hide the others: go on with the next.
            yield Unreadable(info.filename, path, attachment, "corrupt archive member", _complaint(error))

    def ole(self, source: IO[bytes], names: tuple[str, ...], depth: int, path: str, attachment: str
            ) -> Iterator[Item]:
        """An OLE compound file (MS-CFB): a VBA project is content kind "macro"; an Outlook
        message's attachments are files one level down (each nested message one more)."""
        name = names[0] if names else ""
        try:
            ole = msoffice.open_ole(source)
            contents = msoffice.ole_contents(ole, self.allowance.members)
        except msoffice.TooManyAttachments as error:
            raise Exhausted(f"more than {self.limits.max_members} archive members") from error
        except msoffice.OLE_UNREADABLE as error:
            raise Corrupt(_complaint(error)) from error
        with ole:
            if contents.macros:
                yield File(names, path, attachment, None, kinds=("macro",))
            if contents.packages:
                yield Unreadable(name, path, attachment, "OLE embedded package (not inspected)")
            for storage, stored_names, data_stream, nesting in contents.attachments:
                member_path = f"{path}/{stored_names[0] if stored_names else storage}"
                if depth + nesting > self.limits.max_depth:
                    yield Unreadable(name, member_path, attachment,
                                     f"nested deeper than {self.limits.max_depth} levels")
                    continue
                self.allowance.member()
                inner = attachment or name
                if data_stream is None:
                    yield File(stored_names, member_path, inner, None)
                    continue
                try:
                    self.allowance.unpack(ole.get_size(data_stream))
                    data = ole.openstream(data_stream).read()
                except msoffice.OLE_UNREADABLE as error:
                    raise Corrupt(_complaint(error)) from error
                yield File(stored_names, member_path, inner, data)
                yield from self.inside(stored_names, data, depth + nesting, member_path, inner)

    def tnef(self, source: IO[bytes], names: tuple[str, ...], depth: int, path: str, attachment: str
             ) -> Iterator[Item]:
        """TNEF (MS-OXTNEF, winmail.dat): Outlook shows its attachments as files."""
        source.seek(0, io.SEEK_END)
        if source.tell() > MAX_TNEF:
            raise Uninspectable(f"TNEF larger than {MAX_TNEF} bytes")
        source.seek(0)
        try:
            parsed = msoffice.parse_tnef(source.read(), self.limits.max_depth - depth)
            found = list(msoffice.tnef_attachments(parsed))
        except msoffice.TNEF_UNREADABLE as error:
            raise Corrupt(_complaint(error)) from error
        yield from self.tnef_attachments(found, names[0] if names else "", depth, path, attachment)

    def tnef_attachments(self, found: list[msoffice.Attachment], name: str, depth: int, path: str,
                         attachment: str) -> Iterator[Item]:
        inner = attachment or name
        for each in found:
            self.allowance.member()
            self.allowance.unpack(len(each.data))
            member_path = f"{path}/{each.names[0] if each.names else '-'}"
            yield File(each.names, member_path, inner, each.data)
            yield from self.inside(each.names, each.data, depth, member_path, inner)
            if each.embedded is not None:  # an attached message: its attachments one level down
                if depth + 1 > self.limits.max_depth:
                    yield Unreadable(name, member_path, inner, f"nested deeper than {self.limits.max_depth} levels")
                    continue
                try:
                    nested = list(msoffice.tnef_attachments(each.embedded))
                except msoffice.TNEF_UNREADABLE as error:
                    raise Corrupt(_complaint(error)) from error
                yield from self.tnef_attachments(nested, name, depth + 1, member_path, inner)

    def tar(self, source: Readable, depth: int, path: str, attachment: str) -> Iterator[Item]:
        # Stream mode ("r|") whatever the source: one pass, members in order, no seeking back.
        with tarfile.open(fileobj=cast(IO[bytes], source), mode="r|", tarinfo=GuardedTarInfo) as archive:
            for info in archive:
                self.allowance.member()
                member_path = f"{path}/{info.name}"
                names = tuple(dict.fromkeys((info.name, *getattr(info, "header_names", ()))))
                if not info.isreg():
                    yield File(names, member_path, attachment, None)
                    continue
                if info.size > self.limits.max_expanded:
                    raise Exhausted(f"member {info.name!r} declares {info.size} bytes")
                member = archive.extractfile(info)
                if member is not None:
                    yield from self.member(names, member, info.size, depth, member_path, attachment)

    def stream(self, kind: str, names: tuple[str, ...], head: bytes, source: Readable, depth: int, path: str,
               attachment: str) -> Iterator[Item]:
        """A single compressed file: what it unpacks to, under every name it may be saved as.
        Its decompressor's memory comes out of the message's budget until it is closed."""
        inner = unpacked_names(names, gzip_name(head) if kind == GZIP else "")
        memory = DECODER_MEMORY.get(kind) or min(LZMA_MEMORY_LIMIT, self.allowance.memory)
        if memory < DECODER_MEMORY.get(kind, MIN_LZMA_MEMORY) or memory > self.allowance.memory:
            raise Exhausted(f"nested streams need over {MAX_DECOMPRESSOR_MEMORY // 2**20} MiB")
        self.allowance.memory -= memory
        try:
            with OPENERS[kind](cast(IO[bytes], source), memory) as opened:
                metered = Metered(opened, self.allowance)
                yield from self.member(inner, metered, None, depth, f"{path}/{inner[0] if inner else '-'}",
                                       attachment)
        except lzma.LZMAError as error:
            if memory < LZMA_MEMORY_LIMIT and "memory usage limit" in str(error).lower():
                raise Exhausted(f"nested streams need over {MAX_DECOMPRESSOR_MEMORY // 2**20} MiB") from error
            raise
        finally:
            self.allowance.memory += memory

    def member(self, names: tuple[str, ...], source: Readable, declared: int | None, depth: int, path: str,
               attachment: str) -> Iterator[Item]:
        """An archive member or unpacked stream, read through once: its head is judged; an
        archive is opened; anything else is searched for the signatures of the others, keeping
        only a rolling window and its tail (containers.Search)."""
        head = read_up_to(source, SNIFF_BYTES)
        offset = pe_header_offset(head)
        if offset is not None and offset + 4 > len(head) and (declared is None or offset + 4 <= declared):
            if offset > MAX_PE_HEADER_OFFSET:
                raise Uninspectable(f"MZ header points past {MAX_PE_HEADER_OFFSET} bytes")
            head += read_up_to(source, offset + 4 - len(head))
        yield File(names, path, attachment, head)
        if smime.declared("", names) or smime.looks_like_cms(head):
            # A signed file: asn1crypto reads it whole (what is read is metered, and capped).
            whole = head + read_up_to(source, self.limits.max_expanded + 1 - len(head))
            yield from self.smime(names, whole, depth, path, attachment)
            return
        kind = container_of(head)
        if kind is None:
            search = containers.Search()
            search.feed(head)
            size = len(head)
            while chunk := source.read(CHUNK):
                search.feed(chunk)
                size += len(chunk)
            name = names[0] if names else ""
            for found in (*search.kinds, *search.at_end(size)):
                what = "behind other data" if found == ZIP else "inside the file"
                yield Unreadable(name, path, attachment, f"{containers.label(found)} {what} (not inspected)")
            return
        if kind not in (ZIP, OLE, TNEF):
            yield from self.container(kind, names, Prefixed(head, source), head, depth, path, attachment)
            return
        # zip and OLE need random access, TNEF the whole: unpack the member (metered) to memory
        # or a temporary file.
        with tempfile.SpooledTemporaryFile(max_size=SPOOL_THRESHOLD) as spool:
            spool.write(head)
            while chunk := source.read(CHUNK):
                spool.write(chunk)
            yield from self.container(kind, names, spool, head, depth, path, attachment)
