"""The hostile messages: each built with the stdlib, or byte by byte where the stdlib would repair it.

Every case is a complete session from a stranger on port 25: an envelope (EHLO name, MAIL FROM
and its parameters, one recipient), all bytes, and a message builder. Builders are functions, so
the list costs nothing until a case runs (the zip bomb takes a few seconds to deflate).
README.md beside this file says, for each case, why it is hostile.
"""

from __future__ import annotations

import base64
import functools
import io
import random
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field

from tests import attachment_corpus as corpus
from tests.hostile.smtp import Envelope

SENDER_DOMAIN = "sender.test"
# site.max_message_size as the policy ships it (25 MiB); contrib/postfix/main.cf sets Postfix's
# message_size_limit 64 KiB above it, room for the headers Postfix and the milter add.
MAX_MESSAGE_SIZE = 26214400
POSTFIX_SIZE_LIMIT = MAX_MESSAGE_SIZE + 65536
CRLF = b"\r\n"


@dataclass(frozen=True)
class Case:
    name: str
    what: str  # one line for the table's legend
    build: Callable[[], bytes] = field(repr=False)
    envelope: Envelope = field(default_factory=Envelope)
    # The answer measured on the dated run in README.md: (reply code, who decided), or None
    # where it depends on byte counts Postfix adds (the cases at the size limit's edge).
    expect: tuple[int, str] | None = None
    # The most a worker's RSS may grow per byte of message (plus test_hostile's slack): 2 for
    # every path measured at 1.7 or less, more where the milter is known to hold more copies.
    rss_per_byte: float = 2.0


# --------------------------------------------------------------- building blocks


def head(name: str, *extra: bytes, sender: bytes = b"Alice <alice@sender.test>") -> bytes:
    """The usual header block of a case (no blank line): From, To, Subject, Date, Message-ID."""
    lines = [b"From: " + sender, b"To: <user@example.test>", b"Subject: hostile " + name.encode(),
             b"Date: Tue, 01 Dec 2026 10:00:00 +0000", b"Message-ID: <" + name.encode() + b"@sender.test>",
             b"MIME-Version: 1.0", *extra]
    return CRLF.join(lines) + CRLF


def plain(name: str, body: bytes = b"hello\r\n", *extra: bytes) -> bytes:
    return head(name, b"Content-Type: text/plain; charset=utf-8", *extra) + CRLF + body


def with_attachment(name: str, filename: str, data: bytes) -> bytes:
    """A text part and one base64 attachment (attachment_corpus's usual shape, our header block)."""
    top = corpus.multipart(corpus.text("see the attachment\n"), corpus.attachment(data, filename))
    return head(name) + top.render()


def zip_attachment(name: str, filename: str, archive: Callable[[], bytes]) -> Callable[[], bytes]:
    return lambda: with_attachment(name, filename, archive())


# --------------------------------------------------------------- structure


def many_headers(count: int = 10_000) -> bytes:
    fields = b"".join(b"X-Filler-%05d: value %05d of a long run of header fields\r\n" % (i, i) for i in range(count))
    return head("headers-10k") + fields + CRLF + b"hello\r\n"


def deep_nesting(levels: int = 1000) -> bytes:
    """`levels` multiparts, each the only part of its parent, a text part at the bottom.

    Fixed-width boundaries: none is a prefix of another (b1 would be a prefix of b10)."""
    def boundary(level: int) -> bytes:
        return b"nest-%04d-x" % level

    opening = b"".join(b"--" + boundary(level) + CRLF + b'Content-Type: multipart/mixed; boundary="'
                       + boundary(level + 1) + b'"' + CRLF + CRLF for level in range(levels - 1))
    innermost = (b"--" + boundary(levels - 1) + CRLF + b"Content-Type: text/plain" + CRLF + CRLF + b"bottom"
                 + CRLF + b"--" + boundary(levels - 1) + b"--" + CRLF)
    closing = b"".join(b"--" + boundary(level) + b"--" + CRLF for level in range(levels - 2, -1, -1))
    top = b'Content-Type: multipart/mixed; boundary="' + boundary(0) + b'"'
    return head("nesting-1000", top) + CRLF + opening + innermost + closing


def many_parts(count: int = 5000) -> bytes:
    parts = b"".join(b"--p" + CRLF + b"Content-Type: text/plain" + CRLF + CRLF + b"%d" % i + CRLF for i in range(count))
    return head("parts-5000", b'Content-Type: multipart/mixed; boundary="p"') + CRLF + parts + b"--p--" + CRLF


def unterminated_boundary() -> bytes:
    """A multipart whose closing delimiter never comes: the last part runs to the end."""
    attachment = corpus.attachment(corpus.pdf() * 20, "report.pdf", content_type="application/pdf").render()
    body = (b"--open" + CRLF + b"Content-Type: text/plain" + CRLF + CRLF + b"see the report" + CRLF
            + b"--open" + CRLF + attachment + CRLF)
    return head("unterminated-boundary", b'Content-Type: multipart/mixed; boundary="open"') + CRLF + body


def single_line(size: int = 20_000_000) -> bytes:
    """20 MB of body without a single line break (the session ends it with CRLF . CRLF)."""
    pattern = b"NoLineBreaksAnywhere0123456789+/"
    body = (pattern * (size // len(pattern) + 1))[:size]
    return plain("single-line-20mb", body)


def base64_one_line(size: int = 15_000_000) -> bytes:
    """A 15 MB attachment in base64 without line breaks (20 MB on one line)."""
    data = random.Random(11).randbytes(size)
    part = corpus.Part(['Content-Type: application/octet-stream; name="data.bin"',
                        'Content-Disposition: attachment; filename="data.bin"', "Content-Transfer-Encoding: base64"],
                       base64.b64encode(data) + CRLF)
    return head("base64-one-line-20mb") + corpus.multipart(corpus.text("data attached\n"), part).render()


def uuencoded_block(name: str, size: int) -> Callable[[], bytes]:
    """A text part carrying a uuencoded file of `size` bytes (63 bytes of lines per 45)."""
    def build() -> bytes:
        data = random.Random(12).randbytes(size)
        return plain(name, b"the file follows" + CRLF + corpus.uuencode(data, "data.bin"))
    return build


def nul_in_body() -> bytes:
    return plain("body-nul", (b"text with\x00NUL bytes\x00\x00 and \x80\xff 8-bit ones" + CRLF) * 1000)


def header_flood(name: str, field: bytes, count: int) -> Callable[[], bytes]:
    """`count` copies of one header field (under the 1,000 fields a part may have)."""
    return lambda: plain(name, b"hello\r\n", *[field % index for index in range(count)])


# --------------------------------------------------------------- bytes in headers and macros


def eight_bit_header_name() -> bytes:
    """A field name with an 8-bit byte: not a header line at all (RFC 5322 2.2: printable ASCII)."""
    return plain("header-name-8bit", b"hello\r\n", b"X-Caf\xe9: value", b"X-After: still a header?")


def eight_bit_encoded_word() -> bytes:
    """An RFC 2047 B-word with an 8-bit byte in its base64 naming a PE (see the fuzz test's note
    on pymilter's email.base64mime.decode: the daemon must run the stdlib's)."""
    part = corpus.Part([b'Content-Type: application/octet-stream; name="=?utf-8?B?\x80aW52b2ljZS5leGU=?="',
                        "Content-Transfer-Encoding: base64"], base64.encodebytes(corpus.pe()).replace(b"\n", CRLF))
    return head("rfc2047-8bit-name") + corpus.multipart(corpus.text("see attached\n"), part).render()


def nul_in_headers() -> bytes:
    return head("header-nul", b"X-Nul: before\x00after", b"Content-Type: text/plain") + CRLF + b"hello\r\n"


def nul_in_from() -> bytes:
    """A From that is one mailbox up to the NUL and two after it."""
    return (head("header-nul-from", b"Content-Type: text/plain",
                 sender=b"<alice@sender.test>\x00, <ceo@example.org>") + CRLF + b"hello\r\n")


def eight_bit_headers() -> bytes:
    """Latin-1 bytes (invalid UTF-8) in Subject and in the From display name, raw UTF-8 elsewhere."""
    return (head("header-8bit", b"X-Latin1: caf\xe9 cr\xe8me \xff\xfe", "X-Utf8: café crème".encode(),
                 b"Content-Type: text/plain", sender=b"\xc3\x28Al\xe9ce <alice@sender.test>")
            + CRLF + b"hello\r\n")


def long_header(size: int = 200_000) -> bytes:
    """One Subject line twice Postfix's header_size_limit (102400), never folded."""
    return plain("header-200kb", b"hello\r\n").replace(b"Subject: hostile header-200kb",
                                                        b"Subject: hostile header-200kb " + b"s" * size)


def eight_bit_elsewhere() -> bytes:
    """The same bytes in Subject and an X- header only: the From is plain ASCII."""
    return head("header-8bit-other", b"X-Latin1: caf\xe9 cr\xe8me \xff\xfe", "X-Utf8: café crème".encode(),
                b"Content-Type: text/plain").replace(b"Subject: hostile header-8bit-other",
                                                    b"Subject: hostile header-8bit-other caf\xe9") + CRLF + b"hi\r\n"


def utf8_message(name: str, sender: str) -> Callable[[], bytes]:
    return lambda: head(name, b"Content-Type: text/plain; charset=utf-8", sender=b"<" + sender.encode() + b">") \
        + CRLF + b"hello\r\n"


# --------------------------------------------------------------- archives


def _zip_stored(members: list[str]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for member in members:
            archive.writestr(member, b"")
    return buffer.getvalue()


@functools.cache
def zip_ratio_bomb() -> bytes:
    """1 GiB of zeros, deflated: about 1 MB (deflate's best ratio is about 1:1000)."""
    return corpus.zip_bomb(1024 * 1024 * 1024)


def zip_many_members(count: int = 100_000) -> bytes:
    return _zip_stored([f"{index:05x}" for index in range(count)])


def zip_named(name: str) -> Callable[[], bytes]:
    return lambda: corpus.zip_of({name: b"hello"})


def zip_raw_name(raw: bytes, local_raw: bytes | None = None) -> Callable[[], bytes]:
    return lambda: corpus.zip_with_raw_name(raw, b"hello", local_raw)


# --------------------------------------------------------------- sizes


def sized(name: str, total: int) -> bytes:
    """A text message of exactly `total` bytes as sent: 78-byte lines filling the body."""
    start = plain(name, b"")
    line = b"x" * 76 + CRLF
    remaining = total - len(start)
    lines, rest = divmod(remaining, len(line))
    tail = b"y" * max(rest - 2, 0) + CRLF if rest >= 2 else b""
    body = line * lines + tail
    if len(start) + len(body) < total:  # rest == 1: lengthen one line by a byte
        body = b"x" + body
    message = start + body
    assert len(message) == total, (len(message), total)
    return message


ATT, DMARC, SIZE, POSTFIX, OK = "milter:attachments", "milter:dmarc", "milter:sizelimit", "postfix", "accepted"

CASES: list[Case] = [
    Case("headers-10k", "10,000 header fields", many_headers, expect=(550, ATT)),
    Case("header-200kb", "one 200 KB Subject line (header_size_limit is 100 KB)", long_header),
    Case("nesting-1000", "multipart nested 1,000 deep", deep_nesting, expect=(550, ATT)),
    Case("parts-5000", "5,000 MIME parts", many_parts, expect=(550, ATT)),
    Case("unterminated-boundary", "multipart without its closing delimiter", unterminated_boundary, expect=(250, OK)),
    Case("single-line-20mb", "20 MB body, no line break", single_line, expect=(250, OK)),
    Case("base64-one-line-20mb", "15 MB attachment, base64 on one 20 MB line", base64_one_line, expect=(250, OK)),
    # uuencode: the body, the block's transient copies (uuencode._uu_block) and the decoded file
    Case("uuencode-10mb", "10 MB uuencoded in a text part", uuencoded_block("uuencode-10mb", 10_000_000),
         expect=(250, OK), rss_per_byte=6.0),
    Case("uuencode-near-max", "18.6 MB uuencoded: a 25 MiB - 64 KiB message",
         uuencoded_block("uuencode-near-max", (MAX_MESSAGE_SIZE - 65536) // 63 * 45), expect=(250, OK),
         rss_per_byte=6.0),
    Case("body-nul", "NUL and 8-bit bytes in a text body", nul_in_body, expect=(250, OK)),
    Case("dkim-signatures-900", "900 DKIM-Signature fields (dkim.max_signatures is 5)",
         header_flood("dkim-signatures-900", b"DKIM-Signature: v=1; a=rsa-sha256; d=sender.test; s=s%d; "
                      b"h=from; bh=AAAA; b=AAAA", 900), expect=(250, OK)),
    Case("authresults-900", "900 Authentication-Results claiming our authserv-id",
         header_flood("authresults-900", b"Authentication-Results: mail.example.org; spf=pass (%d)", 900),
         expect=(250, OK)),
    Case("received-60", "60 Received fields (Postfix's hopcount_limit is 50)",
         header_flood("received-60", b"Received: from hop%d.sender.test by relay.sender.test; "
                      b"Tue, 01 Dec 2026 09:00:00 +0000", 60), expect=(554, POSTFIX)),
    Case("header-name-8bit", "a field name with an 8-bit byte", eight_bit_header_name, expect=(250, OK)),
    Case("header-nul", "NUL in a header value", nul_in_headers, expect=(250, OK)),
    Case("rfc2047-8bit-name", "8-bit byte inside an RFC 2047 B-word naming a PE", eight_bit_encoded_word,
         expect=(550, ATT)),
    Case("header-nul-from", "From: one mailbox before a NUL, two after", nul_in_from, expect=(250, OK)),
    Case("header-8bit", "Latin-1 in the From display name and a header, raw UTF-8 in another", eight_bit_headers,
         expect=(550, DMARC)),
    Case("header-8bit-other", "Latin-1 in Subject and an X- header, From plain ASCII", eight_bit_elsewhere,
         expect=(250, OK)),
    Case("helo-8bit", "EHLO name in Latin-1 (invalid UTF-8)", lambda: plain("helo-8bit"),
         Envelope(helo=b"h\xe9lo.sender.test"), expect=(500, POSTFIX)),
    Case("helo-utf8", "EHLO name in UTF-8", lambda: plain("helo-utf8"),
         Envelope(helo="hélo.sender.test".encode()), expect=(250, OK)),
    Case("helo-nul", "NUL in the EHLO name", lambda: plain("helo-nul"), Envelope(helo=b"mail\x00.sender.test"),
         expect=(250, OK)),
    Case("mailfrom-utf8", "MAIL FROM and From jösé@ (UTF-8), SMTPUTF8", utf8_message("mailfrom-utf8",
                                                                                     "jösé@sender.test"),
         Envelope(mail_from="jösé@sender.test".encode(), mail_params=b" SMTPUTF8"), expect=(550, DMARC)),
    Case("mailfrom-utf8-inner", "MAIL FROM and From jöse@ (UTF-8 not before @), SMTPUTF8",
         utf8_message("mailfrom-utf8-inner", "jöse@sender.test"),
         Envelope(mail_from="jöse@sender.test".encode(), mail_params=b" SMTPUTF8"), expect=(250, OK)),
    Case("mailfrom-8bit", "MAIL FROM Latin-1 local part, SMTPUTF8", lambda: plain("mailfrom-8bit"),
         Envelope(mail_from=b"j\xf6s\xe9@sender.test", mail_params=b" SMTPUTF8"), expect=(500, POSTFIX)),
    Case("mailfrom-nul", "NUL in MAIL FROM", lambda: plain("mailfrom-nul"),
         Envelope(mail_from=b"alice\x00evil@sender.test"), expect=(501, POSTFIX)),
    Case("zip-ratio-1gib", "zip: 1 GiB of zeros deflated to ~1 MB",
         zip_attachment("zip-ratio-1gib", "zeros.zip", zip_ratio_bomb), expect=(550, ATT)),
    Case("zip-nested-20", "zip in zip ... 20 deep",
         zip_attachment("zip-nested-20", "nested.zip", lambda: corpus.nested_zip("readme.txt", b"hello", 20)),
         expect=(550, ATT)),
    Case("zip-members-100k", "zip of 100,000 empty members",
         zip_attachment("zip-members-100k", "many.zip", zip_many_members), expect=(550, ATT)),
    Case("zipname-dotdot", "member ../../../../tmp/readme.txt",
         zip_attachment("zipname-dotdot", "a.zip", zip_named("../../../../tmp/readme.txt")), expect=(250, OK)),
    Case("zipname-absolute", "member /etc/cron.d/readme.txt",
         zip_attachment("zipname-absolute", "a.zip", zip_named("/etc/cron.d/readme.txt")), expect=(250, OK)),
    Case("zipname-backslash", "member ..\\..\\Startup\\update.exe",
         zip_attachment("zipname-backslash", "a.zip", zip_named("..\\..\\Startup\\update.exe")),
         expect=(550, ATT)),
    Case("zipname-nul", "member evil.exe<NUL>.txt",
         zip_attachment("zipname-nul", "a.zip", zip_raw_name(b"evil.exe\x00.txt")), expect=(550, ATT)),
    Case("zipname-rlo", "member invoice<RLO>txt.exe (shows invoiceexe.txt)",
         zip_attachment("zipname-rlo", "a.zip", zip_named("invoice\u202etxt.exe")), expect=(550, ATT)),
    Case("zipname-trailing", "member 'evil.exe. . ' (Windows drops the dots and spaces)",
         zip_attachment("zipname-trailing", "a.zip", zip_named("evil.exe. . ")), expect=(550, ATT)),
    Case("zipname-mismatch", "local header evilxx.exe, central directory readme.txt",
         zip_attachment("zipname-mismatch", "a.zip", zip_raw_name(b"readme.txt", b"evilxx.exe")), expect=(550, ATT)),
    Case("size-max-minus-64k", f"{MAX_MESSAGE_SIZE - 65536} bytes: 64 KiB under the maximum",
         lambda: sized("size-max-minus-64k", MAX_MESSAGE_SIZE - 65536), expect=(250, OK)),
    Case("size-max-minus-1k", f"{MAX_MESSAGE_SIZE - 1000} bytes: the added headers still fit Postfix's limit",
         lambda: sized("size-max-minus-1k", MAX_MESSAGE_SIZE - 1000), expect=(250, OK)),
    Case("size-at-max", f"{MAX_MESSAGE_SIZE} bytes (site.max_message_size)",
         lambda: sized("size-at-max", MAX_MESSAGE_SIZE), expect=(250, OK)),
    Case("size-over-max", f"{MAX_MESSAGE_SIZE + 1} bytes: the milter's limit, not Postfix's, answers",
         lambda: sized("size-over-max", MAX_MESSAGE_SIZE + 1), expect=(552, SIZE)),
    Case("size-declared-over", f"MAIL FROM SIZE={MAX_MESSAGE_SIZE + 1}, small message",
         lambda: plain("size-declared-over"), Envelope(mail_params=b" SIZE=%d" % (MAX_MESSAGE_SIZE + 1)),
         expect=(552, SIZE)),
    Case("size-over-postfix", f"{POSTFIX_SIZE_LIMIT + 1} bytes: over Postfix's message_size_limit too",
         lambda: sized("size-over-postfix", POSTFIX_SIZE_LIMIT + 1), expect=(552, POSTFIX)),
]


def by_name(name: str) -> Case:
    for case in CASES:
        if case.name == name:
            return case
    raise KeyError(name)
