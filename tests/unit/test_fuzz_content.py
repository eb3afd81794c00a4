"""Property-based fuzzing of the content walk and the header handling: a hostile input is a
verdict, never a crash, and never an unbounded cost.

Generated: MIME trees (nested multiparts; boundaries random, reused from a parent, a prefix of
a parent's or a parent's with a suffix; missing or malformed closing delimiters), random
Content-Type / Content-Transfer-Encoding / Content-Disposition headers and filename parameters
(plain, RFC 2231 with and without continuations, RFC 2047, raw 8-bit), base64 (clean and
damaged), quoted-printable and uuencoded bodies, zips written with zipfile (then maybe cut or
damaged), PE headers, message/rfc822 wrappers, truncations, NUL and 8-bit bytes sprinkled in.

Each example goes through what the milter does with a message at end of message: Message
(its header and body split, the raw header and body readers), the attachments check itself
(checks/attachments: Attachments.run -> scan_message -> find_executables -> walk.files), the
one-author rule (author.parse_from through Message.author) and the removal of forged
Authentication-Results (authresults.forged). And whole sessions through the adapter (pymilter
callbacks driven by tests/milter/fakemta.py, the shipped policy without its network checks):
no crash event (the logwatch fixture fails the test on any error logged), never a tempfail,
and header edits Postfix can apply. Asserted per example: no exception, the check's reply one
printable line, at most 2 s of CPU and 64 MiB of traced memory (both far above what any
example costs: they catch blowups, not speed). Fixed seed (derandomize) and a fixed
number of examples: the same inputs on every run, under a minute together.
"""

from __future__ import annotations

import base64
import binascii
import email.base64mime
import importlib.util
import io
import quopri
import time
import tracemalloc
import urllib.parse
import zipfile
from collections.abc import Callable, Iterator
from typing import Any

import Milter
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from policymilter import authresults
from policymilter.author import Author, BadFrom, parse_from
from policymilter.checks.attachments import Attachments
from policymilter.checks.attachments.names import decode_words
from policymilter.facts import Envelope, Session
from policymilter.listeners import listener_by_name
from policymilter.message import Message
from policymilter.outcome import CheckResult, Outcome
from policymilter.pipeline import CheckContext
from policymilter.policy.model import Policy
from policymilter.service import Service
from tests import attachment_corpus as corpus
from tests.conftest import DEFAULT_POLICY, OFFLINE
from tests.milter.fakemta import FakeMTA


@pytest.fixture(autouse=True, scope="module")
def stdlib_base64mime() -> Iterator[None]:
    """Run the walk with the stdlib's email.base64mime.decode, as the daemon does.

    pymilter's Milter.utils (imported by Milter.testctx, so by tests/milter/fakemta.py: in a
    full test run, before tests/unit) replaces email.base64mime.decode for the whole process
    with one that raises ValueError on a non-ASCII str, where the stdlib's encodes it first:
    email.header.decode_header then lets that ValueError out (it only catches binascii.Error).
    The daemon never imports Milter.utils; see test_decode_words_survives_pymilters_decode."""
    spec = importlib.util.find_spec("email.base64mime")
    assert spec is not None and spec.loader is not None
    stdlib = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stdlib)
    installed = email.base64mime.decode
    email.base64mime.decode = stdlib.decode
    try:
        yield
    finally:
        email.base64mime.decode = installed


# zipfile warns when a name is written twice: two members with one name are one of the tricks.
pytestmark = pytest.mark.filterwarnings("ignore:Duplicate name:UserWarning")

CHECK = Attachments()
AUTHSERV_ID = "mail.example.org"  # the shipped policy's site.authserv_id
CPU_LIMIT = 2.0  # seconds per example (time.process_time)
MEMORY_LIMIT = 64 * 1024 * 1024  # bytes per example (tracemalloc peak)
# About 15 s of CPU for both on this machine (2 cores, shared): the fixed counts are what fits
# well under a minute when the machine is loaded.
FUZZ = settings(max_examples=1000, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.large_base_example, HealthCheck.function_scoped_fixture])
FUZZ_HEADERS = settings(FUZZ, max_examples=1500)
FUZZ_SESSIONS = settings(FUZZ, max_examples=400)
CRLF = b"\r\n"


# --------------------------------------------------------------- strategies: names and parameters

# File names as attackers write them: extensions that matter, path tricks, bidi controls,
# Windows' trailing dots and spaces, NUL, combining and full-width forms.
_NAME_PIECES = st.sampled_from([
    "invoice", "report", ".pdf", ".exe", ".EXE", ".zip", ".txt", ".scr", ".", " ", "..", "../", "/", "\\", "C:",
    "\u202e", "\u202c", "\u200b", "\0", "é", "ｅｘｅ", "\u0301", "%00", "%2e", "\t", '"', ";", "=", "*", "'",
])
NAMES = st.one_of(st.lists(_NAME_PIECES, min_size=1, max_size=6).map("".join),
                  st.text(st.characters(exclude_categories=("Cs",)), min_size=0, max_size=30))


@st.composite
def filename_param(draw: Callable[..., Any], key: str) -> bytes:
    """`key` (filename or name) with a value in one of the encodings clients write or accept."""
    name = draw(NAMES)
    data = name.encode("utf-8", "surrogatepass")
    match draw(st.sampled_from(["quoted", "token", "rfc2231", "rfc2231-parts", "rfc2047-b", "rfc2047-q", "raw8",
                                "broken"])):
        case "quoted":
            return f'{key}="'.encode() + data.replace(b'"', b'\\"') + b'"'
        case "token":
            return key.encode() + b"=" + data
        case "rfc2231":
            charset = draw(st.sampled_from(["utf-8", "UTF-8", "iso-8859-1", "x-unknown", ""]))
            return f"{key}*={charset}''{urllib.parse.quote(data)}".encode()
        case "rfc2231-parts":
            quoted = urllib.parse.quote(data)
            cuts = sorted(draw(st.lists(st.integers(0, len(quoted)), max_size=3)))
            pieces = [quoted[a:b] for a, b in zip([0, *cuts], [*cuts, len(quoted)], strict=True)]
            order = draw(st.permutations(range(len(pieces)))) if draw(st.booleans()) else range(len(pieces))
            return b"; ".join(f"{key}*{index}*={'utf-8' + chr(39) * 2 if index == 0 else ''}{pieces[index]}".encode()
                              for index in order)
        case "rfc2047-b":
            return f'{key}="=?utf-8?B?{base64.b64encode(data).decode()}?="'.encode()
        case "rfc2047-q":
            return f'{key}="=?utf-8?Q?{quopri.encodestring(data, header=True).decode(errors="replace")}?="'.encode()
        case "raw8":
            return f'{key}="'.encode() + name.encode("latin-1", "replace") + b"\xff\xfe" + b'"'
        case _:
            return key.encode() + draw(st.sampled_from([b"*=utf-8'", b'="unterminated', b"*0*=%", b"*=''%zz",
                                                        b"==", b"*99999999999*=x"]))


CONTENT_TYPES = st.sampled_from([
    b"application/octet-stream", b"text/plain; charset=utf-8", b"text/html", b"application/zip",
    b"application/x-msdownload", b"application/pdf", b"image/png", b"message/rfc822", b"multipart/mixed",
    b"application/pkcs7-mime; smime-type=signed-data", b"application/ms-tnef", b"text/plain; charset=\"x-\xff\"",
    b"", b"garbage", b"text/plain; charset=utf-7", b"application/x-uuencode",
])
ENCODINGS = st.sampled_from(["", "base64", "BASE64", " base64 ", "quoted-printable", "7bit", "8bit", "binary",
                             "x-uuencode", "uuencode", "x-uue", "gzip64", "b\0ase64", "base64; x"])
DISPOSITIONS = st.sampled_from([b"", b"attachment", b"inline", b"ATTACHMENT", b"form-data", b"attachment;;;",
                                b"\xff"])


# --------------------------------------------------------------- strategies: content


@st.composite
def a_zip(draw: Callable[..., Any], depth: int = 0) -> bytes:
    members = draw(st.lists(st.tuples(NAMES.filter(bool), st.sampled_from(["bytes", "pe", "zeros", "zip"])),
                            min_size=0, max_size=4))
    buffer = io.BytesIO()
    method = draw(st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED]))
    with zipfile.ZipFile(buffer, "w", method) as archive:
        for name, kind in members:
            match kind:
                case "pe":
                    data = corpus.pe()
                case "zeros":
                    data = bytes(draw(st.integers(0, 2 * 1024 * 1024)))
                case "zip" if depth < 3:
                    data = draw(a_zip(depth + 1))
                case _:
                    data = draw(st.binary(max_size=300))
            info = zipfile.ZipInfo(name, date_time=(2026, 1, 1, 0, 0, 0))  # cuts the name at a NUL
            info.compress_type = method
            if info.filename:  # zipfile cannot write an empty name ("\0x", "/"); raw names: ziplayout's tests
                archive.writestr(info, data)
    blob = buffer.getvalue()
    return draw(damaged(blob))


@st.composite
def damaged(draw: Callable[..., Any], blob: bytes) -> bytes:
    """The bytes as they are, cut short, or with a few bytes overwritten."""
    match draw(st.sampled_from(["intact", "intact", "cut", "flip"])):
        case "cut":
            return blob[:draw(st.integers(0, len(blob)))]
        case "flip" if blob:
            data = bytearray(blob)
            for _ in range(draw(st.integers(1, 4))):
                data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
            return bytes(data)
    return blob


PAYLOADS = st.one_of(
    st.binary(max_size=600),
    st.just(corpus.pe()), st.just(corpus.elf()), st.just(corpus.pdf()), st.just(corpus.docx()),
    a_zip(),
    st.text(max_size=200).map(lambda text: text.encode("utf-8", "surrogatepass")),
)


@st.composite
def encoded(draw: Callable[..., Any], data: bytes, encoding: str, name: str) -> bytes:
    key = encoding.strip().lower()
    if key == "base64":
        text = base64.encodebytes(data).replace(b"\n", CRLF)
        match draw(st.sampled_from(["clean", "clean", "no-newlines", "garbage", "padding"])):
            case "no-newlines":
                return text.replace(CRLF, b"")
            case "garbage":
                position = draw(st.integers(0, len(text)))
                return text[:position] + draw(st.sampled_from([b"!!", b"=", b"\0", b"\xff", b"-- ", b"===="])) \
                    + text[position:]
            case "padding":
                return text.replace(b"=", b"") + b"=" * draw(st.integers(0, 5))
        return text
    if key == "quoted-printable":
        return quopri.encodestring(data).replace(b"\n", CRLF)
    if key in ("x-uuencode", "uuencode", "x-uue"):
        lines = [b"begin 644 " + name.encode("utf-8", "replace")]
        lines += [binascii.b2a_uu(data[i:i + 45]).rstrip(b"\n") for i in range(0, len(data), 45)]
        return CRLF.join([*lines, b"`", b"end"]) + CRLF
    return data


@st.composite
def leaf(draw: Callable[..., Any]) -> tuple[list[bytes], bytes]:
    """One non-multipart entity: header lines and body."""
    encoding = draw(ENCODINGS)
    headers = [b"Content-Type: " + draw(CONTENT_TYPES)]
    if draw(st.booleans()):
        headers[0] += b"; " + draw(filename_param("name"))
    disposition = draw(DISPOSITIONS)
    if disposition or draw(st.booleans()):
        headers.append(b"Content-Disposition: " + disposition + (b"; " + draw(filename_param("filename"))
                                                                 if draw(st.booleans()) else b""))
    if encoding:
        headers.append(b"Content-Transfer-Encoding: " + encoding.encode())
    if draw(st.integers(0, 9)) == 0:  # a MIME header given twice
        headers.append(draw(st.sampled_from(headers)))
    data = draw(PAYLOADS)
    body = draw(encoded(data, encoding, draw(NAMES)))
    if draw(st.integers(0, 5)) == 0:  # a text part carrying a uuencoded block
        body = b"see below" + CRLF + draw(encoded(corpus.pe(), "x-uuencode", draw(NAMES))) + body
    return headers, draw(damaged(body))


BOUNDARY_CHARS = st.sampled_from(list("abcXYZ0129'()+_,-./:=? "))


@st.composite
def boundary(draw: Callable[..., Any], parents: tuple[str, ...]) -> str:
    choices = ["random", "random"] + (["reuse", "prefix", "extend"] if parents else [])
    match draw(st.sampled_from([*choices, "long", "empty"])):
        case "reuse":
            return draw(st.sampled_from(parents))
        case "prefix":
            parent = draw(st.sampled_from(parents))
            return parent[:draw(st.integers(1, max(1, len(parent))))]
        case "extend":
            return draw(st.sampled_from(parents)) + draw(st.text(BOUNDARY_CHARS, min_size=1, max_size=4))
        case "long":
            return "L" * draw(st.integers(70, 300))
        case "empty":
            return ""
    return draw(st.text(BOUNDARY_CHARS, min_size=1, max_size=12))


@st.composite
def entity(draw: Callable[..., Any], depth: int, parents: tuple[str, ...] = ()) -> tuple[list[bytes], bytes]:
    """A MIME entity: a leaf, a message/rfc822 around a message, or a multipart of entities."""
    kind = draw(st.sampled_from(["leaf", "multipart", "multipart", "rfc822"])) if depth > 0 else "leaf"
    if kind == "leaf":
        return draw(leaf())
    if kind == "rfc822":
        headers, body = draw(entity(depth - 1, parents))
        inner = CRLF.join([b"From: <inner@example.net>", b"Subject: inner", *headers]) + CRLF + CRLF + body
        outer = [b"Content-Type: message/rfc822"]
        if draw(st.booleans()):
            outer.append(b"Content-Disposition: attachment; " + draw(filename_param("filename")))
        return outer, inner
    mark = draw(boundary(parents))
    subtype = draw(st.sampled_from(["mixed", "alternative", "related", "signed", "digest", "report"]))
    quoted = draw(st.booleans())
    headers = [f'Content-Type: multipart/{subtype}; boundary={chr(34) if quoted else ""}{mark}'
               f'{chr(34) if quoted else ""}'.encode()]
    delimiter = b"--" + mark.encode()
    body = draw(st.sampled_from([b"", b"preamble" + CRLF, delimiter + b"x" + CRLF]))
    for _ in range(draw(st.integers(0, 4))):
        child_headers, child_body = draw(entity(depth - 1, (*parents, mark)))
        padding = draw(st.sampled_from([b"", b" ", b"\t ", b"--"]))
        body += delimiter + padding + CRLF + CRLF.join(child_headers) + CRLF + CRLF + child_body + CRLF
    body += draw(st.sampled_from([delimiter + b"--" + CRLF, delimiter + b"--" + CRLF + b"epilogue" + CRLF,
                                  b"", delimiter + b"-" + CRLF, delimiter + b" --" + CRLF]))
    return headers, body


# --------------------------------------------------------------- strategies: header blocks

FROM_VALUES = st.one_of(
    st.sampled_from([b"Alice <alice@sender.test>", b"alice@sender.test", b"<a@x.test>, <b@y.test>",
                     b"attacker@evil.test <service@bank.test>", b'"a@b.test" <c@d.test>',
                     b"=?utf-8?B?QWxpY2U=?= <a@x.test>",
                     b"(comment (nested (deep))) a@x.test", b"a@x.test\0<b@y.test>", b"\xc3\x28 <a@x.test>",
                     "jösé@x.test".encode(), b"a@[127.0.0.1]", b"", b"<>", b"a@x.test (", b'"unterminated <a@x.test>',
                     b"group: a@x.test, b@y.test;", b"a@\xef\xbc\xa0x.test", b"a\xe2\x80\xae@x.test"]),
    st.binary(max_size=120),
    st.text(max_size=80).map(lambda text: text.encode("utf-8", "surrogatepass")),
)
AR_VALUES = st.one_of(
    st.sampled_from([f" {AUTHSERV_ID}; spf=pass", f' "{AUTHSERV_ID}"; dkim=pass', f" (c) {AUTHSERV_ID}. 1; none",
                     f" {AUTHSERV_ID.upper()} ; dmarc=pass", " mail\\.example\\.org; spf=pass",
                     " =?us-ascii?q?mail.example.org?=; spf=pass", " mail . example . org; x=y",
                     " ｍａｉｌ.example.org; spf=pass", " other.example; spf=pass", " " + "(" * 50 + AUTHSERV_ID]),
    st.text(max_size=120),
).map(lambda text: text.encode("utf-8", "surrogatepass"))


@st.composite
def header_block(draw: Callable[..., Any]) -> list[bytes]:
    lines = [b"From:" + draw(st.sampled_from([b" ", b"", b"\t"])) + draw(FROM_VALUES)]
    if draw(st.integers(0, 4)) == 0:
        lines.append(b"From: " + draw(FROM_VALUES))  # a second From
    lines += [b"To: <user@example.test>", b"Subject: " + draw(st.binary(max_size=60))]
    for _ in range(draw(st.integers(0, 4))):
        lines.append(b"Authentication-Results:" + draw(AR_VALUES))
    for _ in range(draw(st.integers(0, 3))):
        name = draw(st.sampled_from([b"X-Fuzz", b"Received", b"DKIM-Signature", b"ARC-Seal", b"MIME-Version",
                                     b"X-Bad Name", b"\xff"]))
        lines.append(name + b": " + draw(st.binary(max_size=80)).replace(b"\n", b"\n "))
    if draw(st.booleans()):  # folded somewhere
        index = draw(st.integers(0, len(lines) - 1))
        lines[index] += CRLF + draw(st.sampled_from([b" ", b"\t"])) + b"folded"
    return lines


@st.composite
def messages(draw: Callable[..., Any]) -> bytes:
    headers = [*draw(header_block()), b"MIME-Version: 1.0"]
    mime_headers, body = draw(entity(draw(st.integers(0, 4))))
    raw = CRLF.join([*headers, *mime_headers]) + CRLF + CRLF + body
    for _ in range(draw(st.integers(0, 3))):  # NUL, 8-bit, a stray CR or LF anywhere
        position = draw(st.integers(0, len(raw)))
        raw = raw[:position] + draw(st.sampled_from([b"\0", b"\x80", b"\xff", b"\r", b"\n", b"\xc3"])) + raw[position:]
    match draw(st.sampled_from(["as-is", "as-is", "lf", "cut"])):
        case "lf":
            raw = raw.replace(CRLF, b"\n")
        case "cut":
            raw = raw[:draw(st.integers(0, len(raw)))]
    return raw


# --------------------------------------------------------------- what the milter does with one


def context(policy: Policy, message: Message) -> CheckContext:
    return CheckContext(policy=policy, listener=listener_by_name(policy, "smtp"), session=Session(conn_id="fuzz"),
                        envelope=Envelope(), message=message)


def examine(raw: bytes, policy: Policy) -> tuple[CheckResult, Author | BadFrom]:
    """The end-of-message work on one message, as the daemon does it (Message from the bytes
    an MTA hands over; the check; the author; forged results)."""
    message = Message.from_bytes(raw)
    try:
        b"".join(message.iter_raw())
        message.raw_bytes()
        result = CHECK.run(context(policy, message))
        author = message.author()
        authresults.forged(message, AUTHSERV_ID)
        for header in message.headers:
            header.raw()
            _ = header.text
        return result, author
    finally:
        message.close()


def measured(work: Callable[[], Any]) -> tuple[Any, float, int]:
    tracemalloc.start()
    started = time.process_time()
    try:
        value = work()
        elapsed = time.process_time() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return value, elapsed, peak


def assert_one_printable_line(text: str) -> None:
    assert text.isprintable() and len(text) < 250, repr(text)


@FUZZ
@given(raw=messages())
def test_any_mime_structure_gets_a_verdict_within_bounds(raw, default_policy):
    (result, author), elapsed, peak = measured(lambda: examine(raw, default_policy))
    event(f"attachments: {result.outcome} {result.detail if result.outcome is Outcome.BLOCKED else ''}")
    event(f"author: {'one' if isinstance(author, Author) else author.detail}")
    assert result.outcome in (Outcome.CLEAN, Outcome.BLOCKED), result.reason
    if result.reply is not None:
        assert (result.reply.code, result.reply.xcode) == ("550", "5.7.1")
        assert_one_printable_line(result.reply.text)
    assert isinstance(author, Author | BadFrom)
    assert elapsed < CPU_LIMIT, f"{elapsed:.2f} s of CPU for {len(raw)} bytes"
    assert peak < MEMORY_LIMIT, f"{peak / 2**20:.1f} MiB traced for {len(raw)} bytes"


@FUZZ_HEADERS
@given(headers=header_block(), body=st.binary(max_size=200))
def test_any_header_block_gets_an_author_or_a_reason(headers, body):
    raw = CRLF.join(headers) + CRLF + CRLF + body
    message = Message.from_bytes(raw)
    try:
        values = [h.value for h in message.headers if h.name.lower() == "from"]
        (author, removals), elapsed, peak = measured(
            lambda: (parse_from(values), authresults.forged(message, AUTHSERV_ID)))
        assert message.author() == author  # the Message's cached reading is the same reading
    finally:
        message.close()
    if isinstance(author, Author):
        assert len(values) == 1
        assert author.address == f"{author.local}@{author.domain}"
        assert author.domain.isascii() and author.domain == author.domain.lower()
        assert all(char.isprintable() and not char.isspace() for char in author.address), author
    else:
        assert_one_printable_line(author.reason)
    count = len(message.header_values(authresults.HEADER))
    assert sorted((r.index for r in removals), reverse=True) == [r.index for r in removals]
    assert all(1 <= r.index <= count for r in removals)
    assert elapsed < CPU_LIMIT and peak < MEMORY_LIMIT, (elapsed, peak)


@pytest.mark.parametrize("value", [f" {AUTHSERV_ID}; spf=pass", f' "{AUTHSERV_ID}"; dkim=pass',
                                   f" (c) {AUTHSERV_ID}. 1; none", " mail\\.example\\.org; spf=pass",
                                   " =?us-ascii?q?mail.example.org?=; spf=pass"])
def test_the_fuzzer_s_forged_results_are_ones_the_milter_removes(value):
    """The fixed A-R spellings above are forgeries: a check that they are, so the fuzzer's
    removals property is not vacuous."""
    message = Message.from_bytes(b"From: a@x.test\r\nAuthentication-Results:" + value.encode() + b"\r\n\r\nhi\r\n")
    try:
        assert [r.index for r in authresults.forged(message, AUTHSERV_ID)] == [1]
    finally:
        message.close()


@pytest.fixture(scope="module")
def offline_service() -> Service:
    return Service(DEFAULT_POLICY, OFFLINE)


def transaction(mta: FakeMTA, raw: bytes) -> int:
    """MAIL, RCPT and the message, its header block split as Postfix splits it (Message.from_bytes:
    the first line that is not a header starts the body), one header callback per field; the
    fake MTA's own data() takes every line of the block for a field."""
    for answer in (mta.mail("<alice@sender.test>"), mta.rcpt("<user@example.test>"), mta._call(Milter.M_DATA, "data")):
        if answer != Milter.CONTINUE:
            return answer
    message = Message.from_bytes(raw)
    try:
        calls = [(None, "header_bytes", h.name, h.value) for h in message.headers]
        calls += [(Milter.M_EOH, "eoh"), (None, "body", message.body_bytes()), (Milter.M_EOM, "eom")]
    finally:
        message.close()
    for stage, callback, *args in calls:
        answer = mta._call(stage, callback, *args)
        if answer != Milter.CONTINUE:
            return answer
    return answer


def assert_postfix_can_apply(mta: FakeMTA, raw: bytes) -> None:
    for name, value in mta.ctx.added:
        assert name.isascii() and name.isprintable() and ":" not in name, name
        # folded lines only: a bare line break would start a header of the milter's choosing
        assert all(line[:1] in (" ", "\t") for line in value.split("\n")[1:]), repr(value)
        assert "\r" not in value and "\0" not in value and value.isascii(), repr(value)
    fields = Message.from_bytes(raw)
    try:
        for name, index, _ in mta.ctx.changed:
            assert 1 <= index <= len(fields.header_values(name)), (name, index)
    finally:
        fields.close()


@FUZZ_SESSIONS
@given(raw=messages())
def test_a_whole_session_with_any_message_ends_in_a_verdict(raw, offline_service, logwatch):
    mta = FakeMTA(offline_service)

    def session() -> int:
        mta.connect()
        mta.helo("mail.sender.test")
        return transaction(mta, raw)

    answer, elapsed, peak = measured(session)
    mta.close()
    event(f"session: {'accept' if answer == Milter.ACCEPT else 'reject' if answer == Milter.REJECT else answer}")
    assert answer in (Milter.ACCEPT, Milter.REJECT), (answer, mta.reply)
    if answer == Milter.REJECT:
        assert mta.reply is not None and mta.reply.startswith("550 5.7.1 "), mta.reply
        assert_one_printable_line(mta.reply)
    assert_postfix_can_apply(mta, raw)
    assert not logwatch.events("callback_crashed") and not logwatch.events("check_crashed")
    assert elapsed < CPU_LIMIT and peak < MEMORY_LIMIT, (elapsed, peak)


def test_decode_words_survives_pymilters_decode():
    """Found by this fuzzing: with pymilter's Milter.utils imported, an 8-bit byte in a B-word
    raised ValueError out of names.decode_words and the attachments check crashed (a 451 for
    every retry of `name="=?utf-8?B?<0x80>aW52b2ljZQ==?="`). The daemon does not import it."""
    from Milter import utils  # its import replaces email.base64mime.decode with utils.decode

    installed = email.base64mime.decode
    email.base64mime.decode = utils.decode  # as after that import (this module put the stdlib's back)
    try:
        assert decode_words("=?utf-8?B?\x80aW52b2ljZQ==?=")
    finally:
        email.base64mime.decode = installed
