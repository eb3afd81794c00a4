"""MIME structure, walked over raw bytes: the entities of a message, their header fields and
their bodies with the transfer encoding undone, one at a time.

Why not `email.parser`? It builds the whole tree as text, line by line, and peaks at
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
a quantum (base64_decoding.py), quoted-printable "=" CR soft breaks, irregular RFC 2231
continuations and the Content-Name and X-Sun-Data-Name fields (names.py)) or uninspectable (a
nested multipart whose delimiter lines match its parent's, a non-header line among a part's
headers). Every message/* but partial and external-body is an enclosed message.
"""

from __future__ import annotations

import binascii
import dataclasses
import email.errors
import email.header
import email.message
import email.parser
import email.policy
import email.utils
import itertools
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import pairwise

from policymilter.checks.attachments import smime
from policymilter.checks.attachments.base64_decoding import (
    base64_problem,
    base64_readings,
    cleaned,
    has_inner_padding,
    stdlib_base64,
)
from policymilter.checks.attachments.names import (
    decode_params,
    filenames,
    header_params,
    irregular_continuations,
    param_text,
    split_params,
)
from policymilter.checks.attachments.uuencode import LineBudget, UuencodeTooLong, uuencoded

# A part whose header block is larger than this is not parsed (Postfix's own
# header_size_limit is 100 KiB per header).
MAX_PART_HEADER = 256 * 1024

# RFC 5322 §2.2 field name, as the stdlib feedparser recognises a header line (a "From "
# envelope line and continuation lines count as header lines too).
_HEADER_LINE = re.compile(rb"From |[\x21-\x39\x3b-\x7e]*:|[\t ]")
# Every message/* but partial and external-body is an enclosed message: rfc822 (RFC 2046
# §5.2.1), global (RFC 6532 §3.5), news (Thunderbird), and any other, as the stdlib parses them.

Body = bytes | memoryview

_UNFOLD = re.compile(r"\r?\n(?=[ \t])")


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


def boundary_of(headers: Headers, strip: bool = True) -> str | None:
    """The boundary parameter of the (first) Content-Type, as get_boundary() reads it (which
    strips trailing white space; `strip` False keeps it)."""
    values = headers.get("content-type")
    for param, raw in header_params(values[0]) if values else ():
        if param == "boundary":
            value = param_text(raw)[0]
            return value.rstrip() if strip else value
    return None


def _smime_type(headers: Headers) -> str:
    values = headers.get("content-type")
    for param, raw in header_params(values[0]) if values else ():
        if param == "smime-type":
            return param_text(raw)[0].strip().lower()
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
        params = split_params(value)
        if any(name.startswith("boundary*") for name, _ in params):
            # RFC 2231 for a boundary: readers that do not decode it split on other lines.
            problems.append("multipart boundary in RFC 2231 form")
        if [name for name, _ in decode_params(params)].count("boundary") > 1:  # which one splits depends on the reader
            problems.append("Content-Type boundary given twice")
    for field in ("content-type", "content-disposition"):
        for value in headers.get(field):
            for base in irregular_continuations(split_params(value)):
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
        if not has_inner_padding(buf, start, end):
            try:
                return binascii.a2b_base64(memoryview(buf)[start:end]), None, ()
            except binascii.Error:
                pass  # a truncated last quantum: readers drop it or pad it
        problem = base64_problem(buf, start, end)
        if problem is not None:
            return stdlib_base64(cleaned(buf, start, end)), None, (problem,)
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
