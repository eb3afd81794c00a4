"""S/MIME (RFC 8551) and signed files: what a reader shows of a CMS structure without a key.

An opaque signed message (smime-type=signed-data) carries its content inside the CMS structure
(RFC 5652 §5.2 encapContentInfo): Thunderbird and Outlook show it, attachments included, whether
or not the signature verifies. A ".p7m" file is the same structure around a file (CAdES, the
signed invoices and documents of Italian PEC mail), which signature tools save without the
suffix; signed again ("invoice.pdf.p7m.p7m"), they open it again. Encrypted or compressed content
cannot be inspected here.

asn1crypto reads the structure; the `cryptography` package has no CMS content reader. It is not
given hostile BER as it is: it reads a long tag number or object identifier arc as a growing
integer (quadratic: 13 s for 410 KB) and merges a chunked string by concatenation (quadratic in
the chunks: a legitimate 25 MB `openssl cms -stream` file costs minutes). So `framed()` first
walks the framing (X.690 §8.1) once, in bounded steps, refuses what no CMS writer produces, and
rewrites BER's indefinite lengths and chunked OCTET STRINGs as definite lengths and one string
(the bytes a BER reader concatenates, X.690 §8.7.3): asn1crypto sees DER-shaped input only.
"""

from __future__ import annotations

import re

from asn1crypto import cms

from policymilter.checks.attachments.names import TRAILING, extension, normalise_name

# What hostile input makes asn1crypto raise: ValueError for malformed encodings (lengths past
# the data, bad tags), TypeError and OverflowError for absurd values.
SMIME_UNREADABLE = (ValueError, TypeError, OverflowError)
SMIME_TYPES = ("application/pkcs7-mime", "application/x-pkcs7-mime")  # RFC 8551 §3.2.1
# RFC 8551 §3.2.1 file extensions: signed or enveloped data (p7m), a signature (p7s),
# certificates only (p7c). Signature tools save the content of any of them without it.
SIGNED_SUFFIXES = ("p7m", "p7s", "p7c")
_ENCRYPTED = ("enveloped_data", "authenticated_enveloped_data", "encrypted_data")

# Framing limits: far beyond what CMS writers produce, low enough to keep every step cheap.
MAX_TAG_BYTES = 3  # tag numbers up to 2**21 (CMS uses 0-31): asn1crypto builds them digit by digit
MAX_LENGTH_BYTES = 4  # lengths up to 4 GiB (the data is capped far lower)
MAX_OID_BYTES = 256  # a whole object identifier (real ones are under 40 bytes)
MAX_ARC_BYTES = 19  # one arc: 128 bits, the UUID arcs of X.667 (2.25.x)
MAX_NESTING = 64  # certificates nest about 12 deep inside signed data
# Elements (tag-length-value) walked per message, all S/MIME structures together: each costs a
# Python step. openssl writes 4 KiB chunks (6400 for 25 MB); a certificate is ~100 elements.
MAX_ELEMENTS = 50_000

_LONG_ARC = re.compile(rb"[\x80-\xff]{%d}" % MAX_ARC_BYTES)
# RFC 5652 §3 ContentInfo: SEQUENCE, any length form, then the content type: PKCS #7's
# 1.2.840.113549.1.7.1-6 or S/MIME's 1.2.840.113549.1.9.16.1.x (compressed, authenticated...).
_CONTENT_INFO = re.compile(rb"\x30(?:[\x00-\x80]|\x81.|\x82..|\x83...|\x84....)\x06(?:\x09\x2a\x86\x48\x86\xf7"
                           rb"\x0d\x01\x07[\x01-\x06]|\x0b\x2a\x86\x48\x86\xf7\x0d\x01\x09\x10\x01[\x00-\x7f])",
                           re.DOTALL)
# After the structure: what a transport or a careless writer may leave (nothing a reader shows).
_PADDING = b"\0\r\n\t "
# RFC 8551 §3.1 content that is a MIME entity starts with its MIME header fields (RFC 2045 §3).
_MIME_FIELD = re.compile(rb"(?i)(?:content-[\x21-\x39\x3b-\x7e]+|mime-version)[\t ]*:")


class Uninspectable(Exception):
    """Content we cannot read; the message says why."""


class Budget:
    """Elements the message's S/MIME structures may still have walked (MAX_ELEMENTS)."""

    def __init__(self, elements: int = MAX_ELEMENTS) -> None:
        self.elements = elements


def declared(content_type: str, names: tuple[str, ...]) -> bool:
    """Whether a part says it is S/MIME: its type, or a name that Windows saves as ".p7m"
    (trailing dots, spaces, invisible characters, "::$DATA" and case as normalise_name reads them)."""
    return content_type in SMIME_TYPES or any(extension(normalise_name(name)) == "p7m" for name in names)


def looks_like_cms(head: bytes | memoryview) -> bool:
    """Whether data starts like a CMS ContentInfo, whatever it is called: one anchored match."""
    return _CONTENT_INFO.match(head) is not None


def mime_content(content: bytes) -> bool:
    """Whether S/MIME content is clearly a MIME entity (RFC 8551 §3.1): it starts with a MIME
    header field. A signed file that merely looks like a header line ("From the accounts...",
    "<ns2:FatturaElettronica ...") is a file."""
    return _MIME_FIELD.match(content) is not None


def unsigned_names(names: tuple[str, ...]) -> tuple[str, ...]:
    """What signature tools save "invoice.pdf.p7m" (and "invoice.pdf.p7m.p7s.", "INVOICE.P7M")
    as: every signed-file suffix off, the name normalised the way Windows reads it. A name too
    long to strip cheaply stays (the walk refuses such names anyway)."""
    stripped = []
    for name in names:
        base = normalise_name(name) if len(name) <= 4096 else name
        while extension(base) in SIGNED_SUFFIXES and len(base) > 4:
            base = normalise_name(base[:-4].rstrip(TRAILING))
        stripped.append(base)
    return tuple(dict.fromkeys(name for name in stripped if name))


def encapsulated(data: bytes, budget: Budget | None = None) -> bytes | None:
    """The content an S/MIME structure carries for any reader (None: a detached signature, or a
    certificates-only message); Uninspectable when only a key holder could read it, or when it
    is not a structure we read safely (framed())."""
    der = framed(data, budget or Budget())
    try:
        info = cms.ContentInfo.load(der)
        kind = info["content_type"].native
        if kind == "signed_data":
            content = info["content"]["encap_content_info"]
            if content["content_type"].native != "data":
                raise Uninspectable("S/MIME signed non-data content")
            inner = content["content"].native
            return None if inner is None else bytes(inner)
    except SMIME_UNREADABLE as error:
        raise Uninspectable(f"S/MIME that cannot be read ({type(error).__name__})") from error
    if kind in _ENCRYPTED:
        raise Uninspectable("encrypted S/MIME (not inspected)")
    if kind == "compressed_data":
        raise Uninspectable("compressed S/MIME (not inspected)")
    raise Uninspectable("S/MIME of an unknown content type")


def framed(data: bytes, budget: Budget) -> bytes:
    """`data` checked element by element (bounded: MAX_ELEMENTS per message, no step per byte)
    and, when it is BER, rewritten with definite lengths and unchunked OCTET STRINGs; the data
    itself when it already is."""
    writer = _Writer(data, budget)
    end, _ = writer.element(0, len(data), 0, merge=False)
    if data[end:].strip(_PADDING):
        raise Uninspectable("S/MIME with data after its structure")
    if not writer.changed:
        return data if end == len(data) else data[:end]
    return b"".join(writer.pieces)


class _Writer:
    """One pass over the framing, writing it anew as it goes (`pieces`: headers and slices of
    the input, joined once at the end)."""

    def __init__(self, data: bytes, budget: Budget) -> None:
        self.data, self.view, self.budget = data, memoryview(data), budget
        self.pieces: list[bytes | memoryview] = []
        self.changed = False

    def element(self, pos: int, end: int, depth: int, merge: bool) -> tuple[int, int]:
        """Write the element at `pos` (inside data[:end]): where it ends and how many bytes were
        written. `merge`: inside a chunked OCTET STRING, where only the contents are written."""
        self.budget.elements -= 1
        if self.budget.elements < 0:
            raise Uninspectable(f"S/MIME with over {MAX_ELEMENTS} elements")
        if depth > MAX_NESTING:
            raise Uninspectable(f"S/MIME nested over {MAX_NESTING} levels")
        data = self.data
        if pos >= end:
            raise Uninspectable("S/MIME structure cut short")
        identifier = data[pos]
        constructed = bool(identifier & 0x20)
        universal = identifier & 0xC0 == 0
        number, head = identifier & 0x1F, pos + 1
        if number == 0x1F:  # X.690 §8.1.2.4 high tag number: base-128 digits, the last < 0x80
            if universal:
                raise Uninspectable("S/MIME with a universal high tag number")
            digits = data[head:min(end, head + MAX_TAG_BYTES)]
            last = next((index for index, digit in enumerate(digits) if digit < 0x80), None)
            if last is None:
                raise Uninspectable(f"S/MIME tag number over {MAX_TAG_BYTES} bytes" if len(digits) == MAX_TAG_BYTES
                                    else "S/MIME structure cut short")
            head += last + 1
        tag = self.view[pos:head]
        if merge and identifier & 0xDF != 0x04:
            raise Uninspectable("S/MIME chunked string of other elements")
        if head >= end:
            raise Uninspectable("S/MIME structure cut short")
        first = data[head]
        head += 1
        length: int | None
        if first < 0x80:
            length = first
        elif first == 0x80:  # X.690 §8.1.3.6 indefinite form: constructed only, ends at 00 00
            if not constructed:
                raise Uninspectable("S/MIME primitive element of indefinite length")
            length = None
            self.changed = True
        else:
            count = first & 0x7F
            if count > MAX_LENGTH_BYTES:
                raise Uninspectable(f"S/MIME length over {MAX_LENGTH_BYTES} bytes")
            if head + count > end:
                raise Uninspectable("S/MIME structure cut short")
            length = int.from_bytes(data[head:head + count], "big")
            head += count
            self.changed = self.changed or length < 0x80 or length.bit_length() <= 8 * (count - 1)  # not minimal
        if length is not None and length > end - head:
            raise Uninspectable("S/MIME length past its container")
        if not constructed:
            assert length is not None
            stop = head + length
            if universal and number in (6, 13):  # OBJECT IDENTIFIER, RELATIVE-OID (X.690 §8.19-20)
                if length > MAX_OID_BYTES:
                    raise Uninspectable(f"S/MIME object identifier over {MAX_OID_BYTES} bytes")
                if _LONG_ARC.search(data, head, stop):
                    raise Uninspectable(f"S/MIME object identifier arc over {MAX_ARC_BYTES} bytes")
            if universal and number in (16, 17):
                raise Uninspectable("S/MIME primitive SEQUENCE or SET")
            written = length
            if not merge:
                header = bytes(tag) + _length(length)
                self.pieces.append(header)
                written += len(header)
            self.pieces.append(self.view[head:stop])
            return stop, written
        if universal and number not in (4, 16, 17):
            # X.690 allows other strings in chunks; no CMS writer makes them (and asn1crypto
            # merges them by concatenation)
            raise Uninspectable("S/MIME chunked string other than OCTET STRING")
        chunked = universal and number == 4
        self.changed = self.changed or chunked  # written as one primitive OCTET STRING
        slot = len(self.pieces)
        if not merge:
            self.pieces.append(b"")  # the header, once the length is known
        inner, size = head, 0
        stop = end if length is None else head + length
        while True:
            if length is None:
                if data[inner:inner + 2] == b"\0\0":
                    inner += 2
                    break
                if inner >= end:
                    raise Uninspectable("S/MIME indefinite length without its end")
            elif inner >= stop:
                break
            inner, written = self.element(inner, stop, depth + 1, merge or chunked)
            size += written
        if not merge:
            header = (b"\x04" if chunked else bytes(tag)) + _length(size)
            self.pieces[slot] = header
            size += len(header)
        return inner, size


def _length(size: int) -> bytes:
    """X.690 §8.1.3 definite length, shortest form."""
    if size < 0x80:
        return bytes([size])
    octets = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(octets)]) + octets
