"""The files in a message: MIME parts, uuencoded blocks and archive members, walked over raw bytes.

`files()` yields every file a recipient could open (with the names it gives itself and its
content, or the first bytes of it) and every place the walk could not look into; deciding what
is dangerous is the caller's business (checks/attachments.py).

MIME: why not `email.parser`? It builds the whole tree as text, line by line, and peaks at
about eight times the message's size (measured: 277 MB for a 36 MB message, and as much again
to decode the parts). This walk keeps the raw body once, finds part boundaries with
`bytes.find` and decodes one part at a time: the peak is the body plus the largest decoded
part. It reads the structure the way the stdlib parser does (same header/body split, same
delimiter rule, a missing close delimiter ends the last part at the end), so what we inspect
is what the email package — and MUAs as lenient as it is — would show. Each entity's header
fields are parsed by the stdlib (`compat32`: plain strings, no header-registry surprises), when
the walk reaches the entity and within limits.

Where Thunderbird (the lenient reader we measure against: its mimemult.cpp, mimehdrs.cpp,
mimeenc.cpp and nsMIMEHeaderParamImpl.cpp) reads the same bytes otherwise, the entity is
either judged in every reading (delimiter lines ending in a form feed, base64 with "=" inside
a quantum, quoted-printable "=" CR soft breaks, irregular RFC 2231 continuations, the
Content-Name and X-Sun-Data-Name fields) or uninspectable (a nested multipart whose delimiter
lines match its parent's, a non-header line among a part's headers). Every message/* but
partial and external-body is an enclosed message. Signed data (S/MIME opaque signing, ".p7m"
files: by type, by name or by content) is opened wherever a file can be, its own content
included, each level one deeper (smime.py); its content is a MIME entity only when it clearly
is one, else a file that is also searched for uuencoded blocks.

Archives: zip (nested, encrypted member names included; its layout read as every extractor may
read it, ziplayout.py), tar (old-style ones too; every name a header gives judged; sparse
members refused), gzip / bzip2 / xz / lzma streams (.tar.gz and friends; the decompressors open
at once share one memory budget), from the standard library; TNEF (winmail.dat) and OLE
files (Outlook .msg attachments, VBA projects) through tnefparse and olefile (msoffice.py). A
hostile archive stays cheap: a zip's central directory is counted before zipfile parses it;
declared sizes count against the unpacked-bytes
allowance (they may only lie low: what is actually decompressed is metered too); members are
streamed through once, their first 64 KiB judged and the rest searched for the signatures of
other formats with a bounded window (containers.Search). Zip members compressed with bzip2 or
LZMA are not opened: zipfile decompresses those without an output bound (113 bytes of bzip2
make 100 MB). Every other container or disk image is recognised by its signature wherever its
format puts it (containers.py: start, end, anywhere) and reported as not inspected: its reader
is not pure pip or not sane to run on hostile input here.
"""

from __future__ import annotations

import _compression  # lzma.LZMAFile's reader, for a memory limit (see _OPENERS)
import binascii
import bz2
import dataclasses
import email.errors
import email.header
import email.message
import email.parser
import email.policy
import email.utils
import gzip
import hashlib
import io
import itertools
import lzma
import re
import struct
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from itertools import pairwise
from typing import IO, Any, Protocol, cast

from policymilter import containers, msoffice, smime, sniff, ziplayout
from policymilter.sniff import pe_header_offset

# A part whose header block is larger than this is not parsed (Postfix's own
# header_size_limit is 100 KiB per header).
MAX_PART_HEADER = 256 * 1024

# RFC 5322 §2.2 field name, as the stdlib feedparser recognises a header line (a "From "
# envelope line and continuation lines count as header lines too).
_HEADER_LINE = re.compile(rb"From |[\x21-\x39\x3b-\x7e]*:|[\t ]")
# Every message/* but partial and external-body is an enclosed message: rfc822 (RFC 2046
# §5.2.1), global (RFC 6532 §3.5), news (Thunderbird), and any other, as the stdlib parses them.

Body = bytes | memoryview


@dataclass(frozen=True)
class Entity:
    """One MIME entity: a leaf has a decoded `body`; containers have None."""

    number: str  # IMAP-style part number (RFC 3501 §6.4.5): "" for the message, "2.1" ...
    depth: int  # containers above it: 0 for the message itself
    content_type: str  # lower case "type/subtype"
    names: tuple[str, ...]  # decoded file names (Content-Disposition filename, Content-Type name)
    body: Body | None
    # Why readers may see this entity differently from us (a MIME header given twice, an
    # unknown transfer encoding...): each one makes the entity uninspectable.
    problems: tuple[str, ...] = ()
    # Whether a recipient would save it as a file (it has a name, a type other than text, or
    # asks to be an attachment), rather than read it as the message's text.
    saved: bool = True
    # The other decodings of `body` that clients make (base64_readings), made one at a time when
    # asked for: each as large as the body.
    readings: Callable[[], Iterator[bytes]] | None = None
    smime_type: str = ""  # RFC 8551 §3.2.2 smime-type parameter, lower case


@dataclass(frozen=True)
class Overflow:
    """The walk stopped short: nesting or part count over the limit, or an oversized header."""

    number: str
    reason: str


@dataclass(frozen=True)
class _Span:
    """An entity not parsed yet: where its header block and its body are."""

    head_buf: bytes  # holds the header block (the body's buffer, or the top-level header)
    head_start: int
    head_end: int
    buf: bytes  # holds the body
    start: int
    end: int
    depth: int
    number: str
    problems: tuple[str, ...] = ()
    default_type: str = "text/plain"
    oversized: bool = False  # header block over MAX_PART_HEADER: not parsed
    boundaries: tuple[str, ...] = ()  # of the multiparts it is nested in, up to a message/*
    located: bool = True  # False: the header block is not located yet (_locate)


class Headers:
    """An entity's header fields, parsed once (the stdlib's compat32 reading) and indexed by
    lower-case name: raw values (8-bit bytes as surrogate escapes), unfolded (RFC 5322 §2.2.3)."""

    def __init__(self, message: email.message.Message) -> None:
        self.message = message
        # raw_items(): compat32's get() turns 8-bit bytes into U+FFFD.
        self.values: dict[str, list[str]] = {}
        for key, value in message.raw_items():
            self.values.setdefault(key.lower(), []).append(_UNFOLD.sub("", str(value)))

    def get(self, field: str) -> list[str]:
        return self.values.get(field, [])


class WalkBudget:
    """What the MIME walks of one message may still cost, the message's own and those of the
    MIME entities signed inside it (S/MIME) together: parts, header lines, odd uuencoded lines."""

    def __init__(self, max_parts: int) -> None:
        self.max_parts, self.parts, self.lines = max_parts, max_parts, MAX_HEADER_LINES
        self.uu = LineBudget()


def walk(header: bytes, body: bytes, max_depth: int, max_parts: int,
         budget: WalkBudget | None = None) -> Iterator[Entity | Overflow]:
    """Every entity of the message in document order, leaves decoded one at a time.

    `header` is the top-level header block, `body` the body (CRLF or LF line ends). Entities
    deeper than `max_depth` are not visited; after `max_parts` entities the walk stops. A part's
    header block is parsed when the walk reaches it, and only within the limits: at most
    MAX_PART_FIELDS fields in a part, MAX_HEADER_LINES lines in all.
    """
    # Postfix and lenient readers take "Content-Type : x" as a header; the stdlib parser would
    # end the header block there and lose the fields after it. Read it the lenient way.
    header = _OBSOLETE_FIELD_LINE.sub(rb"\1\2:", header)
    root = _Span(header, 0, len(header), body, 0, len(body), 0, "")
    return _walk(root, max_depth, budget or WalkBudget(max_parts))


def walk_entity(data: bytes, depth: int, number: str, max_depth: int, budget: WalkBudget
                ) -> Iterator[Entity | Overflow]:
    """A MIME entity inside something else (S/MIME content), read as the walk reads an enclosed
    message (RFC 2046 §5.2.1): header fields optional, text/plain by default."""
    return _walk(_span(data, 0, len(data), depth, number), max_depth, budget)


def _walk(root: _Span, max_depth: int, budget: WalkBudget) -> Iterator[Entity | Overflow]:
    stack = [root]
    while stack:
        span = _locate(stack.pop())
        budget.parts -= 1
        if budget.parts < 0:
            yield Overflow(span.number, f"more than {budget.max_parts} MIME parts")
            return
        if span.oversized:
            yield Overflow(span.number, f"part headers over {MAX_PART_HEADER} bytes")
            continue
        block = bytes(span.head_buf[span.head_start:span.head_end])
        lines, fields = _count_lines(block)
        budget.lines -= lines
        if budget.lines < 0:
            yield Overflow(span.number, f"more than {MAX_HEADER_LINES} header lines in the message")
            return
        if fields > MAX_PART_FIELDS:
            yield Overflow(span.number, f"more than {MAX_PART_FIELDS} header fields in a part")
            continue
        parsed = _parse_headers(block)
        parsed.set_default_type(span.default_type)
        headers = Headers(parsed)
        content_type = parsed.get_content_type()
        names = filenames(headers)
        problems = span.problems + header_problems(headers)
        encoding = transfer_encoding(headers)
        children: list[_Span] = []
        if parsed.get_content_maintype() == "multipart":
            if encoding not in _IDENTITY_ENCODINGS:
                # RFC 2045 §6.4: never encoded. Clients differ (some decode, most do not): we
                # read it as written and call it uninspectable.
                problems += (f"multipart with Content-Transfer-Encoding {encoding}",)
            children, found = _multipart_children(span, headers, budget.max_parts)
            problems += found
            if not children:
                # RFC 2046 §5.1.1 structure missing (no boundary parameter or no delimiter
                # line): like the stdlib, the body is plain text.
                yield Entity(span.number, span.depth, "text/plain", names, _decode(headers, span), problems)
                continue
        elif content_type == "message/external-body":
            # RFC 2046 §5.2.3: the body is elsewhere (a URL, an FTP site, a mail server), fetched
            # by the client; what is here is only its header.
            problems += ("message/external-body (content elsewhere)",)
        elif parsed.get_content_maintype() == "message" and content_type != "message/partial":
            if encoding not in (*_IDENTITY_ENCODINGS, "base64", "quoted-printable"):
                problems += (f"{content_type} with Content-Transfer-Encoding {encoding}",)
            children = [_enclosed_message(span, headers)]
        if not children:
            others: Callable[[], Iterator[bytes]] | None = None
            if encoding in _UUENCODINGS:
                # The "begin" lines name the files a client saves; the body is the first block.
                body, block_names, found = _uudecoded(span, budget.uu)
                names += tuple(name for name in block_names if name not in names)
            else:
                body, others, found = _decoded(headers, span)
            if others is not None and smime.declared(content_type, names) and any(True for _ in others()):
                found += ("S/MIME in base64 that clients decode differently",)  # the structure could be another
            saved = bool(names) or not content_type.startswith("text/") or _disposition(headers) == "attachment"
            yield Entity(span.number, span.depth, content_type, names, body, problems + found, saved, others,
                         _smime_type(headers) if content_type in smime.SMIME_TYPES else "")
            continue
        yield Entity(span.number, span.depth, content_type, names, None, problems)
        if span.depth + 1 > max_depth:
            yield Overflow(span.number, f"MIME nested deeper than {max_depth} levels")
            continue
        stack.extend(reversed(children))


def _smime_type(headers: Headers) -> str:
    values = headers.get("content-type")
    for param, raw in header_params(values[0]) if values else ():
        if param == "smime-type":
            return _collapse(raw)[0].strip().lower()
    return ""


# Limits on header blocks: bytes in one (Postfix's own header_size_limit is 100 KiB per
# header), fields in one, lines in the whole message. A legitimate part has a dozen fields, a
# forwarded message a few hundred lines.
MAX_PART_FIELDS = 1000
MAX_HEADER_LINES = 50_000


def _count_lines(block: bytes) -> tuple[int, int]:
    """Lines and fields (lines that do not continue a folded one) in a header block, counted
    in C: lines end at CRLF, LF or a lone CR, as the stdlib parser splits them."""
    lines = block.count(b"\n") + block.count(b"\r") - block.count(b"\r\n")
    folded = sum(block.count(ending + blank) for ending in (b"\n", b"\r") for blank in (b" ", b"\t"))
    return lines, lines - folded


def _parse_headers(block: bytes) -> email.message.Message:
    parser = email.parser.BytesHeaderParser(policy=email.policy.compat32)
    return parser.parsebytes(block)


# A run of header lines as the stdlib feedparser recognises them (RFC 5322 §2.2 field name
# and colon, a "From " envelope line, a continuation line), each with its line end; possessive,
# so the engine never backtracks into a line (a field name cannot contain ":").
_HEADER_LINES = re.compile(rb"(?:(?:From |[\x21-\x39\x3b-\x7e]*+:|[\t ])[^\r\n]*+(?:\r\n|\r|\n))*+")
_NON_HEADER_LINE = "non-header line among a part's headers"


def _split_head(buf: bytes, start: int, end: int) -> tuple[int, int, tuple[str, ...]] | None:
    """Where an entity's header block ends, where its body starts and any problem; None when
    the block is larger than MAX_PART_HEADER. One regex match, in C.

    Like the stdlib feedparser: lines end at CRLF, LF or a lone CR; headers end at the first
    empty line, or at the first line that is not a header (which then starts the body). Readers
    that read headers up to the empty line whatever comes before it (Thunderbird) take the rest
    as headers: such a line makes the entity uninspectable.
    """
    pos = _HEADER_LINES.match(buf, start, end).end()  # type: ignore[union-attr]  # matches the empty run too
    if pos - start > MAX_PART_HEADER:
        return None
    if pos >= end:
        return end, end, ()
    if buf[pos] in (0x0A, 0x0D):  # the empty line
        return pos, pos + (2 if buf.startswith(b"\r\n", pos, end) else 1), ()
    if _HEADER_LINE.match(buf, pos, end) and _LINE_END.search(buf, pos, end) is None:
        return (end, end, ()) if end - start <= MAX_PART_HEADER else None  # the last line, unterminated
    return pos, pos, (_OBSOLETE_FIELD_MESSAGE if _OBSOLETE_FIELD.match(buf, pos, end) else _NON_HEADER_LINE,)


# RFC 5322 §4.5.3 obs-optional: white space between a field name and its colon. The stdlib (and
# so this walk) ends the header block there; lenient readers take it as the header it names.
_OBSOLETE_FIELD = re.compile(rb"[\x21-\x39\x3b-\x7e]+[\t ]+:")
_OBSOLETE_FIELD_LINE = re.compile(rb"(^|\n)([\x21-\x39\x3b-\x7e]+)[\t ]+:")
_OBSOLETE_FIELD_MESSAGE = "header field with white space before its colon"
_LINE_END = re.compile(rb"\r\n|\r|\n")


def _span(buf: bytes, start: int, end: int, depth: int, number: str, default_type: str = "text/plain",
          boundaries: tuple[str, ...] = ()) -> _Span:
    """The entity in buf[start:end], its header block to be located when the walk reaches it."""
    return _Span(buf, start, start, buf, start, end, depth, number, (), default_type, boundaries=boundaries,
                 located=False)


def _locate(span: _Span) -> _Span:
    if span.located:
        return span
    split = _split_head(span.buf, span.start, span.end)
    if split is None:
        return dataclasses.replace(span, oversized=True, located=True)
    head_end, body, found = split
    return dataclasses.replace(span, head_end=head_end, start=body, problems=span.problems + found, located=True)


def _multipart_children(span: _Span, headers: Headers, limit: int) -> tuple[list[_Span], tuple[str, ...]]:
    """The body parts of a multipart entity, and why readers may split it differently."""
    raw = boundary_of(headers, strip=False)
    if raw is None:
        return [], ()
    boundary = raw.rstrip()
    problems: tuple[str, ...] = ()
    if boundary != raw:
        # RFC 2046 §5.1.1 bcharsnospace: the stdlib strips it, Thunderbird compares with it.
        problems += ("multipart boundary ends in white space",)
    if any(_boundaries_collide(boundary, outer) for outer in span.boundaries):
        problems += ("nested boundary clashes with its parent's",)
    split = split_multipart(span.buf, span.start, span.end, boundary.encode("utf-8", "surrogateescape"), limit + 1)
    if not split.delimiters:
        problems += ("multipart body with no delimiter line",)
    if split.lenient:
        problems += ("form feed or VT after a delimiter",)
    # RFC 2046 §5.1.5
    default = "message/rfc822" if headers.message.get_content_subtype() == "digest" else "text/plain"
    prefix = f"{span.number}." if span.number else ""
    boundaries = (*span.boundaries, boundary)
    return [_span(span.buf, start, end, span.depth + 1, f"{prefix}{index}", default, boundaries=boundaries)
            for index, (start, end) in enumerate(split.parts, 1)], problems


def _boundaries_collide(inner: str, outer: str) -> bool:
    """Whether one line can delimit both a multipart and one nested in it: "--a--" closes "a"
    and separates "a--". The stdlib (and this walk) gives such a line to the outer multipart,
    Thunderbird to the inner one while it is open (mimemult.cpp: the last child is asked
    first). Across a message/* the outer wins for both, so only multiparts nested directly
    count (`_Span.boundaries` starts afresh inside an enclosed message)."""
    return inner in (outer, outer + "--") or outer == inner + "--"


@dataclass(frozen=True)
class Split:
    parts: list[tuple[int, int]]  # (start, end) of each body part
    delimiters: int  # delimiter lines found
    # A delimiter line ends in a form feed or vertical tab: Thunderbird strips every trailing
    # C isspace() character and takes it (so do we); the stdlib does not.
    lenient: bool


def split_multipart(buf: bytes, start: int, end: int, boundary: bytes, limit: int = 10_000) -> Split:
    """Body parts of a multipart body as (start, end) offsets; none when there is no delimiter.

    RFC 2046 §5.1.1: a delimiter is a line "--" boundary, then "--" for the close delimiter,
    optional white space, then the line end; the line break before it belongs to it. As in
    the stdlib: text after the close delimiter is the epilogue; without one, the last part
    runs to the end. At most `limit` parts are returned (a caller that must know whether there
    were more asks for one more than it accepts).
    """
    marker = b"--" + re.escape(boundary)
    tail = rb"(--)?([ \t\f\v]*)(?:\r\n|\r|\n|\Z)"
    # The pattern starts with fixed text so the engine scans for it in C; the line-start test
    # comes after, as a lookbehind (a leading one defeats the scan: 0.5 s for a 25 MB part).
    anywhere = re.compile(marker + rb"(?<=[\r\n]" + marker + rb")" + tail)
    lines: list[tuple[int, int]] = []  # (delimiter line start, first byte after its line end)
    match = re.compile(marker + tail).match(buf, start, end)  # no preamble: the body starts with one
    closed = lenient = False
    if match is not None:
        lines.append((start, match.end()))
        closed = match.group(1) is not None
        lenient = bool(match.group(2).strip(b" \t"))
    pos = lines[-1][1] if lines else start
    while not closed and len(lines) <= limit:
        match = anywhere.search(buf, pos, end)
        if match is None:
            break
        lines.append((match.start(), match.end()))
        closed = match.group(1) is not None
        lenient = lenient or bool(match.group(2).strip(b" \t"))
        pos = match.end()
    # Delimiter lines that follow one another enclose no part (the stdlib skips them too).
    parts = [(body_start, _before_line_break(buf, body_start, following))
             for (_, body_start), (following, _) in pairwise(lines) if following != body_start]
    if lines and not closed and len(lines) <= limit:
        parts.append((lines[-1][1], _before_line_break(buf, lines[-1][1], end)))
    return Split(parts, len(lines), lenient)


def _before_line_break(buf: bytes, start: int, delimiter: int) -> int:
    if delimiter - 2 >= start and buf.startswith(b"\r\n", delimiter - 2, delimiter):
        return delimiter - 2
    if delimiter - 1 >= start and buf[delimiter - 1] in (0x0A, 0x0D):
        return delimiter - 1
    return delimiter


def _enclosed_message(span: _Span, headers: Headers) -> _Span:
    # RFC 2046 §5.2.1 allows only 7bit/8bit/binary here; some senders base64 it anyway, and
    # MUAs decode it, so we do too.
    buf, start, end = span.buf, span.start, span.end
    problems: tuple[str, ...] = ()
    if transfer_encoding(headers) in ("base64", "quoted-printable"):
        body, others, problems = _decoded(headers, span)
        if others is not None and any(True for _ in others()):
            problems += ("enclosed message: base64 read several ways",)
        buf, start, end = bytes(body), 0, len(body)
    return dataclasses.replace(_span(buf, start, end, span.depth + 1, span.number or "1"), problems=problems)


# RFC 2045 §6.1 mechanisms, and the uuencode names clients accept (Content-Transfer-Encoding
# x-uuencode is common, the rest are seen).
_IDENTITY_ENCODINGS = ("", "7bit", "8bit", "binary")
_UUENCODINGS = ("x-uuencode", "uuencode", "x-uue", "uue")
_KNOWN_ENCODINGS = (*_IDENTITY_ENCODINGS, "base64", "quoted-printable", *_UUENCODINGS)
# The fields whose reading decides what a part is: readers that take the first, the last or
# a merge of two disagree (RFC 2045 §3, RFC 2183 §2 allow each once).
_SINGLE_FIELDS = ("Content-Type", "Content-Transfer-Encoding", "Content-Disposition")
_COMMENT_TOKEN = re.compile(r"\\.|[()]", re.DOTALL)


def header_problems(headers: Headers) -> tuple[str, ...]:
    """Why readers may disagree about an entity's MIME header fields."""
    problems = []
    for field in _SINGLE_FIELDS:
        values = headers.get(field.lower())
        if len(values) > 1:
            problems.append(f"{field} given twice")
        if any("\0" in value for value in values):
            # C-string readers stop at the NUL, others read on.
            problems.append(f"NUL byte in the {field} header")
    for value in headers.get("content-type")[:1]:
        params = _split_params(value)
        if any(name.startswith("boundary*") for name, _ in params):
            # RFC 2231 for a boundary: readers that do not decode it split on other lines.
            problems.append("multipart boundary in RFC 2231 form")
        if [name for name, _ in _decode_params(params)].count("boundary") > 1:  # which one splits depends on the reader
            problems.append("Content-Type boundary given twice")
    for field in ("content-type", "content-disposition"):
        for value in headers.get(field):
            for base in irregular_continuations(_split_params(value)):
                if base in ("filename", "name"):
                    problems.append(f"irregular RFC 2231 {base} sections")
    encoding = transfer_encoding(headers)
    if encoding not in _KNOWN_ENCODINGS:
        problems.append(f"unknown Content-Transfer-Encoding {encoding!r}")
    return tuple(problems)


def _disposition(headers: Headers) -> str:
    values = headers.get("content-disposition")
    return values[0].partition(";")[0].strip().lower() if values else ""


def transfer_encoding(headers: Headers) -> str:
    """The (first) Content-Transfer-Encoding as lenient clients read it: RFC 5322 §3.2.2
    comments dropped, quotes dropped, anything after ";" ignored, white space and case too."""
    values = headers.get("content-transfer-encoding")
    if not values:
        return ""
    value, kept, depth, start = values[0], [], 0, 0
    for token in _COMMENT_TOKEN.finditer(value):
        if token.group() == "(":
            if depth == 0:
                kept.append(value[start:token.start()])
            depth += 1
        elif token.group() == ")" and depth:
            depth -= 1
            start = token.end()
    if depth == 0:
        kept.append(value[start:])
    return "".join(kept).replace('"', "").partition(";")[0].strip().lower()


def _decode(headers: Headers, span: _Span) -> Body:
    """The entity body with its Content-Transfer-Encoding undone (RFC 2045 §6)."""
    return _decoded(headers, span)[0]


def _decoded(headers: Headers, span: _Span) -> tuple[Body, Callable[[], Iterator[bytes]] | None, tuple[str, ...]]:
    """The entity body decoded, how to make its other readings (base64 or quoted-printable that
    clients decode differently; None when there are none) and why it is uninspectable, if it is."""
    if transfer_encoding(headers) == "base64":
        buf, start, end = span.buf, span.start, span.end
        if not _has_inner_padding(buf, start, end):
            try:
                return binascii.a2b_base64(memoryview(buf)[start:end]), None, ()
            except binascii.Error:
                pass  # a truncated last quantum: readers drop it or pad it
        problem = base64_problem(buf, start, end)
        if problem is not None:
            return _stdlib_base64(_cleaned(buf, start, end)), None, (problem,)
        readings = base64_readings(buf, start, end)
        first = next(readings)
        readings.close()
        return first, lambda: itertools.islice(base64_readings(buf, start, end), 1, None), ()
    body = _undone(headers, span)
    if transfer_encoding(headers) == "quoted-printable":
        view = memoryview(span.buf)[span.start:span.end]
        if _QP_LONE_CR_BREAK.search(view):
            # "=" CR without LF: Thunderbird's decoder (mimeenc.cpp) takes it for a soft line
            # break and decodes what follows; binascii (the stdlib) stops there.
            other = binascii.a2b_qp(_QP_LONE_CR_BREAK.sub(b"", view))
            return body, (lambda: iter([other])) if other != body else None, ()
    return body, None, ()


_QP_LONE_CR_BREAK = re.compile(rb"=\r(?!\n)")


def _undone(headers: Headers, span: _Span) -> Body:
    view = memoryview(span.buf)[span.start:span.end]
    match transfer_encoding(headers):
        case "quoted-printable":
            return binascii.a2b_qp(view)
        case encoding if encoding in _UUENCODINGS:
            return _uudecoded(span, LineBudget())[0]
        case _:
            return view


def _uudecoded(span: _Span, budget: LineBudget) -> tuple[Body, tuple[str, ...], tuple[str, ...]]:
    """A uuencoded part, decoded once: its first block (or the text when there is none), the
    names of its blocks, and why it is uninspectable, if it is."""
    view = memoryview(span.buf)[span.start:span.end]
    blocks: list[tuple[str, bytes]] = []
    problems: tuple[str, ...] = ()
    try:
        blocks.extend(uuencoded(view, limit=100, budget=budget))
    except UuencodeTooLong as error:
        problems += (str(error),)
    if len(blocks) > 1:
        problems += ("uuencoded part with more than one block",)
    return (blocks[0][1] if blocks else view), tuple(dict.fromkeys(name for name, _ in blocks)), problems


def decode_base64(buf: bytes, start: int = 0, end: int | None = None) -> bytes:
    """Lenient base64 of buf[start:end]: the first of base64_readings()."""
    readings = base64_readings(buf, start, end)
    try:
        return next(readings)
    finally:
        readings.close()


# A "=" followed by more data: each one costs the readings below a step in Python.
MAX_BASE64_INNER_PADDING = 10_000


def base64_problem(buf: bytes, start: int = 0, end: int | None = None) -> str | None:
    """Why base64_readings() would not be made: too many "=" inside the data."""
    end = len(buf) if end is None else end
    if not _has_inner_padding(buf, start, end):
        return None
    data = _digits(buf, start, end)
    tail = bytes(data[-3:])
    completion = len(tail) - len(tail.rstrip(b"="))  # the last quantum's own padding
    if data.count(b"=") - completion > MAX_BASE64_INNER_PADDING:
        return f"base64 with over {MAX_BASE64_INNER_PADDING} '=' inside the data"
    return None


def _has_inner_padding(buf: bytes, start: int, end: int) -> bool:
    padding = buf.find(b"=", start, end)
    return padding >= 0 and _B64_DATA.search(buf, padding, end) is not None


def base64_readings(buf: bytes, start: int = 0, end: int | None = None) -> Generator[bytes, None, None]:
    """Every way clients decode buf[start:end] as base64 (RFC 2045 §6.8: characters outside the
    alphabet are ignored), one at a time: the caller judges each and lets it go before asking
    for the next (each is as large as the body). A reading the same as an earlier one is not
    made again (compared by digest, so none is kept for the comparison).

    With "=" only at the end there is one reading. A "=" before more data is read four ways:
    realigned after each "=" (concatenated encodings decoded in turn, a truncated quantum
    dropped: what this walk always did), "=" as a zero digit inside its quantum (Thunderbird's
    mimeenc.cpp: a quantum with one "=" gives two bytes, with more one), "=" ignored, and
    binascii's (the stdlib's: skipped, or the end of the data once a quantum is complete).
    Check base64_problem() first: past MAX_BASE64_INNER_PADDING of them only the stdlib's
    reading should be made.
    """
    end = len(buf) if end is None else end
    if not _has_inner_padding(buf, start, end):
        try:
            yield binascii.a2b_base64(memoryview(buf)[start:end])
            return
        except binascii.Error:
            pass  # a truncated last quantum: the readings below drop it
    seen: set[bytes] = set()
    for reader in (_realigned, _zero_digits, _padding_ignored, _stdlib_reading):
        reading = reader(buf, start, end)
        digest = hashlib.blake2b(reading, digest_size=32).digest()
        if digest not in seen:
            seen.add(digest)
            yield reading
        del reading


# Base64 text is cleaned a window at a time into one growing buffer: no copy of the whole text
# beside it (each reading is made from a fresh one and lets it go before it returns).
_CLEAN_WINDOW = 1024 * 1024


def _cleaned(buf: bytes, start: int, end: int) -> bytearray:
    cleaned = bytearray()
    for pos in range(start, end, _CLEAN_WINDOW):
        cleaned += buf[pos:min(end, pos + _CLEAN_WINDOW)].translate(None, _B64_NOISE_BYTES)
    return cleaned


def _digits(buf: bytes, start: int, end: int) -> bytearray:
    """The base64 characters, trailing "=" off but for the padding that completes the last
    quantum; Thunderbird makes a zero byte of each further "====", which changes nothing a
    signature could tell. Trimmed in place."""
    data = _cleaned(buf, start, end)
    keep = len(data)
    while keep:  # the trailing "=" run, a window at a time (a step per 4 KiB)
        window = bytes(data[max(0, keep - 4096):keep])
        stripped = len(window.rstrip(b"="))
        keep -= len(window) - stripped
        if stripped:
            break
    del data[min(len(data), keep + -keep % 4):]
    return data


def _quantum(digits: bytes | bytearray | memoryview) -> bytes:
    """Decode base64 digits (no "="), a truncated last quantum dropped or padded."""
    return b"".join(_quanta(digits))


def _quanta(digits: bytes | bytearray | memoryview) -> list[bytes]:
    """_quantum() in two pieces, the whole quanta and the last one: the digits are not copied
    to pad the last."""
    whole = len(digits) - len(digits) % 4
    pieces = [binascii.a2b_base64(digits[:whole])]
    match len(digits) % 4:
        case 2 | 3 as rest:  # a lone character (1) carries no whole byte
            pieces.append(binascii.a2b_base64(bytes(digits[whole:]) + b"=" * (4 - rest)))
    return pieces


def _segments(data: bytearray) -> Iterator[tuple[int, int]]:
    """(start, end) of the runs between "=" signs: one step per "=" (at most
    MAX_BASE64_INNER_PADDING and the last quantum's)."""
    pos = 0
    while pos < len(data):
        found = data.find(b"=", pos)
        stop = len(data) if found < 0 else found
        if stop > pos:
            yield pos, stop
        pos = stop + 1


def _realigned(buf: bytes, start: int, end: int) -> bytes:
    data = _digits(buf, start, end)
    view = memoryview(data)
    pieces = [piece for pos, stop in _segments(data) for piece in _quanta(view[pos:stop])]
    view.release()
    del data  # before the join: the decoded pieces and the result are all that is left
    return b"".join(pieces)


def _zero_digits(buf: bytes, start: int, end: int) -> bytes:
    data = _digits(buf, start, end)
    usable = len(data) - len(data) % 4  # Thunderbird drops a truncated last quantum
    quanta, found = [], data.find(b"=", 0, usable)
    while found >= 0:
        quantum = found - found % 4
        quanta.append((quantum, data.count(b"=", quantum, quantum + 4)))
        for pos in range(quantum, quantum + 4):
            if data[pos] == 0x3D:
                data[pos] = 0x41  # "A": a zero digit, in place
        found = data.find(b"=", quantum + 4, usable)
    with memoryview(data) as view:
        decoded = binascii.a2b_base64(view[:usable])
    del data
    pieces, kept = [], 0
    with memoryview(decoded) as view:
        for quantum, pads in quanta:
            out = quantum // 4 * 3
            pieces.append(view[kept:out + (2 if pads == 1 else 1)])
            kept = out + 3
        pieces.append(view[kept:])
        joined = b"".join(pieces)
        pieces.clear()
    return joined


def _padding_ignored(buf: bytes, start: int, end: int) -> bytes:
    """The digits with every "=" dropped, decoded a window at a time (whole quanta)."""
    data = _digits(buf, start, end)
    decoded, pending = [], bytearray()
    with memoryview(data) as view:
        for pos, stop in _segments(data):
            for window in range(pos, stop, _CLEAN_WINDOW):
                pending += view[window:min(stop, window + _CLEAN_WINDOW)]
                whole = len(pending) - len(pending) % 4
                decoded.append(binascii.a2b_base64(memoryview(pending)[:whole]))
                del pending[:whole]
    del data
    decoded.append(_quantum(pending))
    return b"".join(decoded)


def _stdlib_reading(buf: bytes, start: int, end: int) -> bytes:
    return _stdlib_base64(_cleaned(buf, start, end))


def _stdlib_base64(cleaned: bytearray) -> bytes:
    """What email.message.Message.get_payload(decode=True) makes of it (_encoded_words.decode_b)."""
    for attempt in range(2):
        try:
            return binascii.a2b_base64(cleaned)
        except binascii.Error:  # a truncated last quantum
            if attempt == 0:
                cleaned += b"=="  # in place
    return bytes(cleaned[:-2])  # decode_b gives up and returns the text


_B64_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_B64_NOISE_BYTES = bytes(byte for byte in range(256) if byte not in _B64_ALPHABET + b"=")
_B64_DATA = re.compile(rb"[A-Za-z0-9+/]")


# --- file names ------------------------------------------------------------------------------


def filenames(headers: Headers) -> tuple[str, ...]:
    """Every file name a part gives itself, decoded, in header order, without duplicates.

    Both Content-Disposition `filename` (RFC 2183) and Content-Type `name` (RFC 2046, legacy),
    in every occurrence of either header, and Content-Name and X-Sun-Data-Name: a MUA may pick
    any of them, so each one counts.
    """
    names: list[str] = []
    for field in ("content-disposition", "content-type"):  # the order the stdlib's get_filename() prefers
        for value in headers.get(field):
            # Raw 8-bit bytes arrive as surrogate escapes: read them as UTF-8 (RFC 6532).
            for param, raw in header_params(_from_surrogates(value)):
                if param in ("filename", "name"):
                    names += [name for name in decode_name(raw) if name and name not in names]
    # Thunderbird's MimeHeaders_get_name falls back on two more fields ("no RFC, but seen to
    # occur", "used by MailTool"): the whole value, backslash escapes removed, RFC 2047 decoded.
    for field in _NAME_FIELDS:
        for value in headers.get(field):
            text = _from_surrogates(value).strip()
            for reading in dict.fromkeys((text, text.replace("\\", ""), email.utils.unquote(text))):
                name = decode_words(reading) if "=?" in reading and "?=" in reading else reading
                if name and name not in names:
                    names.append(name)
    return tuple(names)


_NAME_FIELDS = ("content-name", "x-sun-data-name")


def boundary_of(headers: Headers, strip: bool = True) -> str | None:
    """The boundary parameter of the (first) Content-Type, as get_boundary() reads it (which
    strips trailing white space; `strip` False keeps it)."""
    values = headers.get("content-type")
    for param, raw in header_params(values[0]) if values else ():
        if param == "boundary":
            value = _collapse(raw)[0]
            return value.rstrip() if strip else value
    return None


_UNFOLD = re.compile(r"\r?\n(?=[ \t])")
_PARAM_TOKEN = re.compile(r'\\"|"|;')
_SECTION_NUMBER = re.compile(r"\*[0-9]+(?=\*?$)")

Param = tuple[str, str | tuple[str | None, str | None, str]]


def header_params(value: str) -> list[Param]:
    """The parameters of a MIME header value (RFC 2045 §5.1), RFC 2231 sections joined and
    values unquoted, as email.message.Message.get_params() returns them (without the first).

    The stdlib's splitter is quadratic in the number of ";" inside quotes (seconds for a
    100 KB header) and its RFC 2231 joiner raises TypeError or ValueError on some input
    (numbered and unnumbered sections mixed; a 5000-digit section number). This splits the
    same way in one pass; when the joiner refuses, each section is decoded on its own.

    Continuations out of the ordinary (irregular_continuations) have a second reading,
    Thunderbird's, listed after the stdlib's under the same name: a caller judging names
    judges both.
    """
    params = _split_params(value)
    decoded = _decode_params(params)
    for base in irregular_continuations(params):
        decoded += [param for param in _decode_params(_thunderbird_sections(params, base)) if param[0] == base]
    return [(name, (text[0], text[1], email.utils.unquote(text[2])) if isinstance(text, tuple)
             else email.utils.unquote(text)) for name, text in decoded]


def _split_params(value: str) -> list[tuple[str, str]]:
    fields, start, quoted = [], 0, False
    for token in _PARAM_TOKEN.finditer(value):
        if token.group() == '"':
            quoted = not quoted
        elif token.group() == ";" and not quoted:
            fields.append(value[start:token.start()])
            start = token.end()
    fields.append(value[start:])
    params = []
    for field in fields[1:]:
        name, equals, text = field.partition("=")
        params.append((name.strip().lower(), text.strip()) if equals else (field.strip(), ""))
    return params


def _decode_params(params: list[tuple[str, str]]) -> list[tuple[str, str | tuple[str | None, str | None, str]]]:
    try:
        return email.utils.decode_params([("", ""), *params])[1:]
    except (TypeError, ValueError):
        return [param for name, text in params
                for param in email.utils.decode_params([("", ""), (_SECTION_NUMBER.sub("", name), text)])[1:]]


# RFC 2231 §3: "name*N" or "name*N*"; Thunderbird (nsMIMEHeaderParamImpl.cpp) ignores a section
# number with a leading zero or above 999 and a section it has seen, and stops at the first gap.
_SECTION = re.compile(r"(.+?)\*([0-9]+)\*?")
_MAX_SECTION = 999


def _sections(params: list[tuple[str, str]]) -> dict[str, list[tuple[str, int]]]:
    """Each continued parameter's section numbers (as written), with their index in `params`."""
    found: dict[str, list[tuple[str, int]]] = {}
    for index, (name, _) in enumerate(params):
        if (section := _SECTION.fullmatch(name)) is not None:
            found.setdefault(section.group(1), []).append((section.group(2), index))
    return found


def _valid_section(number: str) -> bool:
    return (number == "0" or not number.startswith("0")) and len(number) <= 3 and int(number) <= _MAX_SECTION


def irregular_continuations(params: list[tuple[str, str]]) -> list[str]:
    """The parameters whose RFC 2231 sections are not exactly 0, 1, 2... once each: a gap, a
    repeated section, a leading zero, a number past 999. Readers join those differently."""
    irregular = []
    for base, sections in _sections(params).items():
        numbers = [number for number, _ in sections]
        if not all(_valid_section(number) for number in numbers) or sorted(map(int, numbers)) != list(
                range(len(numbers))):
            irregular.append(base)
    return irregular


def _thunderbird_sections(params: list[tuple[str, str]], base: str) -> list[tuple[str, str]]:
    """The sections of `base` Thunderbird joins: from 0 while contiguous, first of each number."""
    chosen: dict[int, int] = {}
    for number, index in _sections(params)[base]:
        if _valid_section(number):
            chosen.setdefault(int(number), index)
    kept: list[tuple[str, str]] = []
    while len(kept) in chosen:
        kept.append(params[chosen[len(kept)]])
    return kept


def decode_name(raw: str | tuple[str | None, str | None, str]) -> list[str]:
    """A parameter value as text: RFC 2231 §3-4 (continuations, charset) then RFC 2047; every
    reading when readers may differ (a charset that cannot decode it).

    `email.utils.decode_params` has already joined RFC 2231 continuations; collapsing applies
    the charset. RFC 2047 §5 forbids encoded-words inside a quoted parameter, but Outlook and
    others write `name="=?utf-8?b?...?="`, and MUAs show it decoded, so we decode it too.
    """
    texts = [_from_surrogates(text) for text in _collapse(raw)]
    return [decode_words(text) if "=?" in text and "?=" in text else text for text in texts]


def _collapse(raw: str | tuple[str | None, str | None, str]) -> list[str]:
    """email.utils.collapse_rfc2231_value, without its UnicodeError: codecs Python has but
    cannot decode with ("undefined", "idna" with replacement, "punycode" on 8-bit bytes) raise
    it. Such a value is read both the way the stdlib reads an unknown charset (bytes as
    Latin-1) and as UTF-8."""
    if not isinstance(raw, tuple):
        return [email.utils.unquote(raw)]
    charset, _, text = raw
    data = text.encode("raw-unicode-escape")
    try:
        return [data.decode(charset or "us-ascii", "replace")]
    except LookupError:  # unknown, or not a text encoding: the stdlib's fallback
        return [email.utils.unquote(text)]
    except ValueError:  # UnicodeError and its kin
        return list(dict.fromkeys((email.utils.unquote(text), data.decode("utf-8", "replace"))))


def decode_words(text: str) -> str:
    """RFC 2047 encoded-words; unknown charsets fall back to UTF-8 with replacement."""
    try:
        chunks = email.header.decode_header(text)
    except email.errors.HeaderParseError:
        return text
    decoded = []
    for chunk, charset in chunks:
        if isinstance(chunk, str):
            decoded.append(chunk)
        elif charset is None:
            decoded.append(chunk.decode("raw-unicode-escape", "replace"))  # how decode_header encoded it
        else:
            decoded.append(_text(chunk, charset))
    return "".join(decoded)


def _text(data: bytes, charset: str) -> str:
    try:
        return data.decode(charset, "replace")
    except (LookupError, ValueError):  # unknown, or not a text encoding ("rot13", "base64")
        return data.decode("utf-8", "replace")


def _from_surrogates(text: str) -> str:
    """Raw 8-bit header bytes (RFC 6532 or plain sloppiness) arrive as surrogate escapes."""
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode("utf-8")


# --- uuencode --------------------------------------------------------------------------------

# POSIX uuencode: "begin MODE NAME" ... "end"; sharutils' base64 form: "begin-base64" ... "====".
# The line-start test ("^" in MULTILINE mode: the start, or after LF) comes after the fixed text,
# as a lookbehind, so the engine scans for "begin" in C: a leading "^" costs a step per byte
# (36 ms for 7 MB of binary S/MIME content, searched at every signing level).
_UU_BEGIN = re.compile(rb"begin(?<![^\n]begin)(-base64)?[ \t]+[0-7]{1,4}[ \t]+([^\r\n]+)")
_LINE = re.compile(rb"([^\r\n]*)(?:\r\n|\n|\r|$)")
_UU_CHARS = re.compile(rb"[\x20-\x60]+")


MAX_UU_LINES = 20_000


class LineBudget:
    """Uuencoded lines a message may still have decoded one at a time (the lines every encoder
    writes, 45 bytes each, are decoded in bulk and cost nothing here)."""

    def __init__(self, lines: int = MAX_UU_LINES) -> None:
        self.lines = lines

    def spend(self) -> None:
        self.lines -= 1
        if self.lines < 0:
            raise UuencodeTooLong(f"uuencode with over {MAX_UU_LINES} odd lines")


class UuencodeTooLong(Exception):
    """More odd uuencoded lines than the budget: the caller makes it uninspectable."""



def uuencoded(text: Body, limit: int = 1000, budget: LineBudget | None = None) -> Iterator[tuple[str, bytes]]:
    """(name, decoded data) of each uuencoded block in a text body, at most `limit` blocks;
    UuencodeTooLong past the budget of odd lines.

    A "begin" line counts only when a data line or the end line follows it, so prose that
    merely mentions `begin 644 setup.exe` is not a block.
    """
    budget = LineBudget() if budget is None else budget
    pos = 0
    for _ in range(limit):
        begin = _UU_BEGIN.search(text, pos)
        if begin is None:
            return
        name = begin.group(2).strip().decode("utf-8", "replace")
        data, pos, valid = _uu_block(text, begin.end(), begin.group(1) is not None, budget)
        if valid:
            yield name, data
        pos = max(pos, begin.end())


# Runs of the lines encoders write for 45 bytes ("M" and 60 characters), and of base64 lines
# without padding: decoded a run at a time, in C. uuencode is base64 with another alphabet
# (each character is 32 + six bits, "`" for zero).
_UU_FULL_LINES = re.compile(rb"(?:M[\x20-\x60]{60}(?:\r\n|\r|\n))+")
_UU_TO_BASE64 = bytes.maketrans(bytes(range(0x20, 0x61)), b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                                                       b"0123456789+/A")
_BASE64_FULL_LINES = re.compile(rb"(?:(?:[A-Za-z0-9+/]{4})+(?:\r\n|\r|\n))+")


def _uu_block(text: Body, pos: int, base64: bool, budget: LineBudget) -> tuple[bytes, int, bool]:
    """Decode from `pos` to the end line; valid when the end line or a full data line was seen."""
    chunks: list[bytes] = []
    valid = False
    end_line = b"====" if base64 else b"end"
    line = _LINE.match(text, pos)
    pos = line.end() if line is not None else len(text)  # the rest of the begin line (its line break)
    while pos < len(text):
        run = (_BASE64_FULL_LINES if base64 else _UU_FULL_LINES).match(text, pos)
        if run is not None:
            lines = run.group()
            if not base64:  # "M", 60 characters, one line end, each: the characters alone, in base64
                lines = lines.replace(b"\r\n", b"\n").replace(b"\r", b"\n")[1:-1].replace(b"\nM", b"")
                lines = lines.translate(_UU_TO_BASE64)
            chunks.append(binascii.a2b_base64(lines))
            valid, pos = True, run.end()
            continue
        line = _LINE.match(text, pos)
        if line is None:
            break
        content = line.group(1)
        if content.strip() == end_line:
            return b"".join(chunks), line.end(), True
        decoded = _base64_line(content) if base64 else _uu_line(content)
        if decoded is None:
            return b"".join(chunks), pos, valid
        budget.spend()
        chunks.append(decoded[0])
        valid = valid or decoded[1]
        if line.end() == pos:
            break
        pos = line.end()
    return b"".join(chunks), len(text), valid


def _uu_line(line: bytes) -> tuple[bytes, bool] | None:
    """One uuencoded line and whether it had exactly its announced length.

    A length character, then 4 characters per 3 bytes, all in 0x20-0x60. Transports strip
    trailing spaces (zero bits), so a short line is padded, as binascii does; characters past
    the announced length are ignored, whatever they are (encoders pad differently; Thunderbird
    decodes a line by its length character and ignores the rest).
    """
    if not line or not 0x20 <= line[0] <= 0x60:
        return None
    need = 1 + (((line[0] - 32) & 63) + 2) // 3 * 4
    if not _UU_CHARS.fullmatch(line, 0, min(need, len(line))):
        return None
    try:
        return binascii.a2b_uu(line[:need].ljust(need)), len(line) == need
    except binascii.Error:
        return None


def _base64_line(line: bytes) -> tuple[bytes, bool] | None:
    if not line.strip():
        return None
    try:
        return binascii.a2b_base64(line.strip(), strict_mode=True), True
    except binascii.Error:
        return None


# --- files: MIME leaves, uuencoded blocks, archive members ------------------------------------

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


def _gzip_name(head: bytes) -> str:
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
# memory it may use (liblzma's limit; the others need no more than _DECODER_MEMORY).
_OPENERS: dict[str, Callable[[IO[bytes], int], _Stream]] = {
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
_DECODER_MEMORY = {GZIP: 64 * 1024, BZIP2: 4 * 1024 * 1024}


class _Uninspectable(Exception):
    """An archive, or part of one, that cannot be inspected; the message says why."""


class _Corrupt(_Uninspectable):
    """A library could not read a container; the message is its complaint."""


class _Exhausted(_Uninspectable):
    """The message's allowance of archive members or unpacked bytes is spent."""


# The exceptions hostile input makes the libraries raise (zipfile: BadZipFile,
# NotImplementedError for a compression method, RuntimeError for encryption, ValueError for
# bad UTF-8 names, struct.error and OverflowError for absurd fields; tarfile: TarError; gzip:
# BadGzipFile, an OSError; all three decompressors: EOFError when truncated). Anything else is
# a bug and goes to the pipeline's error handling.
_UNREADABLE = (zipfile.BadZipFile, zipfile.LargeZipFile, tarfile.TarError, zlib.error, lzma.LZMAError, EOFError,
               OSError, NotImplementedError, RuntimeError, ValueError, struct.error, OverflowError)


class _Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


class _Stream(_Readable, Protocol):
    """A decompressing reader, closed when done."""

    def __enter__(self) -> Any: ...

    def __exit__(self, *exc_info: Any) -> Any: ...


class _Allowance:
    """What one message may still cost: archive members and unpacked bytes."""

    def __init__(self, limits: WalkLimits) -> None:
        self.limits = limits
        self.members = limits.max_members
        self.bytes = limits.max_expanded
        self.memory = MAX_DECOMPRESSOR_MEMORY  # for the decompressors open now

    def member(self) -> None:
        self.members -= 1
        if self.members < 0:
            raise _Exhausted(f"more than {self.limits.max_members} archive members")

    def unpack(self, size: int) -> None:
        self.bytes -= size
        if self.bytes < 0:
            raise _Exhausted(f"unpacks to more than {self.limits.max_expanded} bytes")


class _Metered:
    """A decompressing reader whose output is charged to the allowance as it comes; the first
    `prepaid` bytes (a declared size, already charged) are free."""

    def __init__(self, source: _Readable, allowance: _Allowance, prepaid: int = 0) -> None:
        self.source, self.allowance, self.prepaid = source, allowance, prepaid

    def read(self, size: int = -1, /) -> bytes:
        data = self.source.read(CHUNK if size is None or size < 0 else size)
        free = min(self.prepaid, len(data))
        self.prepaid -= free
        self.allowance.unpack(len(data) - free)
        return data


class _Prefixed:
    """`head` (already read for sniffing), then the rest of `source`."""

    def __init__(self, head: bytes, source: _Readable) -> None:
        self.head, self.source = head, source

    def read(self, size: int = -1, /) -> bytes:
        size = CHUNK if size is None or size < 0 else size
        if self.head:
            data, self.head = self.head[:size], self.head[size:]
            return data
        return self.source.read(size)


def _read_up_to(source: _Readable, size: int) -> bytes:
    """Up to `size` bytes (decompressors return short reads before the end)."""
    pieces, wanted = [], size
    while wanted > 0:
        piece = source.read(min(wanted, CHUNK))
        if not piece:
            break
        pieces.append(piece)
        wanted -= len(piece)
    return b"".join(pieces)


def _count(file: IO[bytes], signature: bytes) -> int:
    file.seek(0)
    count, tail = 0, b""
    while chunk := file.read(CHUNK):
        window = tail + chunk
        count += window.count(signature)
        tail = window[-(len(signature) - 1):]
    file.seek(0)
    return count


class _GuardedTarInfo(tarfile.TarInfo):
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
    def frombuf(cls, buf: bytes, encoding: str, errors: str) -> _GuardedTarInfo:  # type: ignore[override]
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
            raise _Uninspectable("sparse tar member (not inspected)")
        return super()._proc_member(archive)  # type: ignore[misc,no-any-return]  # private, stable since 2.x

    def _proc_gnusparse_00(self, *_: object) -> None:
        raise _Uninspectable("sparse tar member (not inspected)")

    _proc_gnusparse_01 = _proc_gnusparse_10 = _proc_gnusparse_00

    def _apply_pax_info(self, pax_headers: dict[str, str], encoding: str, errors: str) -> None:
        if any(key.startswith("GNU.sparse.") for key in pax_headers):  # a sparse format tarfile does not know
            raise _Uninspectable("sparse tar member (not inspected)")
        super()._apply_pax_info(pax_headers, encoding, errors)  # type: ignore[misc]


class _Walker:
    """One message's walk and what it may still cost."""

    def __init__(self, limits: WalkLimits) -> None:
        self.limits = limits
        self.allowance = _Allowance(limits)
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
        except _Exhausted as error:
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
            except _Exhausted as error:
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

    def container(self, kind: str, names: tuple[str, ...], source: IO[bytes] | _Readable, head: bytes, depth: int,
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
        except _Uninspectable as error:
            yield Unreadable(name, path, attachment, str(error))
        except msoffice.Unsafe as error:
            yield Unreadable(name, path, attachment, str(error))
        except _UNREADABLE as error:
            yield Unreadable(name, path, attachment, f"corrupt {kind} archive", _complaint(error))
        except _Corrupt as error:
            yield Unreadable(name, path, attachment, f"corrupt {containers.label(kind)}", str(error))

    def zip(self, source: IO[bytes], name: str, depth: int, path: str, attachment: str) -> Iterator[Item]:
        # zipfile builds an object per central-directory entry, and a directory of a million
        # tiny entries fits in a few megabytes: count them first.
        if _count(source, b"PK\x01\x02") > self.allowance.members:
            raise _Exhausted(f"more than {self.limits.max_members} archive members")
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
                metered = _Metered(member, self.allowance, prepaid=info.file_size)
                yield from self.member(names, metered, info.file_size, depth, path, attachment)
        except _Exhausted:
            raise
        except _Uninspectable as error:
            yield Unreadable(info.filename, path, attachment, str(error))
        except _UNREADABLE as error:
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
            raise _Exhausted(f"more than {self.limits.max_members} archive members") from error
        except msoffice.OLE_UNREADABLE as error:
            raise _Corrupt(_complaint(error)) from error
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
                    raise _Corrupt(_complaint(error)) from error
                yield File(stored_names, member_path, inner, data)
                yield from self.inside(stored_names, data, depth + nesting, member_path, inner)

    def tnef(self, source: IO[bytes], names: tuple[str, ...], depth: int, path: str, attachment: str
             ) -> Iterator[Item]:
        """TNEF (MS-OXTNEF, winmail.dat): Outlook shows its attachments as files."""
        source.seek(0, io.SEEK_END)
        if source.tell() > MAX_TNEF:
            raise _Uninspectable(f"TNEF larger than {MAX_TNEF} bytes")
        source.seek(0)
        try:
            parsed = msoffice.parse_tnef(source.read(), self.limits.max_depth - depth)
            found = list(msoffice.tnef_attachments(parsed))
        except msoffice.TNEF_UNREADABLE as error:
            raise _Corrupt(_complaint(error)) from error
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
                    raise _Corrupt(_complaint(error)) from error
                yield from self.tnef_attachments(nested, name, depth + 1, member_path, inner)

    def tar(self, source: _Readable, depth: int, path: str, attachment: str) -> Iterator[Item]:
        # Stream mode ("r|") whatever the source: one pass, members in order, no seeking back.
        with tarfile.open(fileobj=cast(IO[bytes], source), mode="r|", tarinfo=_GuardedTarInfo) as archive:
            for info in archive:
                self.allowance.member()
                member_path = f"{path}/{info.name}"
                names = tuple(dict.fromkeys((info.name, *getattr(info, "header_names", ()))))
                if not info.isreg():
                    yield File(names, member_path, attachment, None)
                    continue
                if info.size > self.limits.max_expanded:
                    raise _Exhausted(f"member {info.name!r} declares {info.size} bytes")
                member = archive.extractfile(info)
                if member is not None:
                    yield from self.member(names, member, info.size, depth, member_path, attachment)

    def stream(self, kind: str, names: tuple[str, ...], head: bytes, source: _Readable, depth: int, path: str,
               attachment: str) -> Iterator[Item]:
        """A single compressed file: what it unpacks to, under every name it may be saved as.
        Its decompressor's memory comes out of the message's budget until it is closed."""
        inner = unpacked_names(names, _gzip_name(head) if kind == GZIP else "")
        memory = _DECODER_MEMORY.get(kind) or min(LZMA_MEMORY_LIMIT, self.allowance.memory)
        if memory < _DECODER_MEMORY.get(kind, MIN_LZMA_MEMORY) or memory > self.allowance.memory:
            raise _Exhausted(f"nested streams need over {MAX_DECOMPRESSOR_MEMORY // 2**20} MiB")
        self.allowance.memory -= memory
        try:
            with _OPENERS[kind](cast(IO[bytes], source), memory) as opened:
                metered = _Metered(opened, self.allowance)
                yield from self.member(inner, metered, None, depth, f"{path}/{inner[0] if inner else '-'}",
                                       attachment)
        except lzma.LZMAError as error:
            if memory < LZMA_MEMORY_LIMIT and "memory usage limit" in str(error).lower():
                raise _Exhausted(f"nested streams need over {MAX_DECOMPRESSOR_MEMORY // 2**20} MiB") from error
            raise
        finally:
            self.allowance.memory += memory

    def member(self, names: tuple[str, ...], source: _Readable, declared: int | None, depth: int, path: str,
               attachment: str) -> Iterator[Item]:
        """An archive member or unpacked stream, read through once: its head is judged; an
        archive is opened; anything else is searched for the signatures of the others, keeping
        only a rolling window and its tail (containers.Search)."""
        head = _read_up_to(source, SNIFF_BYTES)
        offset = pe_header_offset(head)
        if offset is not None and offset + 4 > len(head) and (declared is None or offset + 4 <= declared):
            if offset > MAX_PE_HEADER_OFFSET:
                raise _Uninspectable(f"MZ header points past {MAX_PE_HEADER_OFFSET} bytes")
            head += _read_up_to(source, offset + 4 - len(head))
        yield File(names, path, attachment, head)
        if smime.declared("", names) or smime.looks_like_cms(head):
            # A signed file: asn1crypto reads it whole (what is read is metered, and capped).
            whole = head + _read_up_to(source, self.limits.max_expanded + 1 - len(head))
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
            yield from self.container(kind, names, _Prefixed(head, source), head, depth, path, attachment)
            return
        # zip and OLE need random access, TNEF the whole: unpack the member (metered) to memory
        # or a temporary file.
        with tempfile.SpooledTemporaryFile(max_size=SPOOL_THRESHOLD) as spool:
            spool.write(head)
            while chunk := source.read(CHUNK):
                spool.write(chunk)
            yield from self.container(kind, names, spool, head, depth, path, attachment)
