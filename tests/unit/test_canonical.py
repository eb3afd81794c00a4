"""canonical: dkimpy's message split and relaxed body canonicalisation, byte for byte, faster."""

from __future__ import annotations

import dkim
import pytest
from dkim.canonicalization import CanonicalizationPolicy, Relaxed
from hypothesis import given, settings
from hypothesis import strategies as st

from policymilter import canonical

# Bodies made of the bytes the rules are about, and others.
PIECES = st.sampled_from([b" ", b"\t", b"\r\n", b"\r", b"\n", b"x", b"  ", b" \t ", b"\x00", b"\xa0", b"="])
BODIES = st.lists(PIECES, max_size=60).map(b"".join)


@given(BODIES)
@settings(max_examples=2000)
def test_relaxed_body_is_dkimpys(body):
    assert canonical.relaxed_body(body) == Relaxed.canonicalize_body(body)


@pytest.mark.parametrize("body", [
    b"", b"\r\n", b"\r\n\r\n", b"a", b"a\r\n", b"a \r\n", b"a\t\r\n", b"a  b\r\n", b"a\t\tb \t\r\n\r\n\r\n",
    b" \r\n", b"\t", b"line\r\n \r\n", (b"x" * 76 + b"\r\n") * 64, b"trailing spaces   ", b"mixed \t \t end\r\n",
])
def test_fixed_cases(body):
    assert canonical.relaxed_body(body) == Relaxed.canonicalize_body(body)


def test_simple_goes_through_dkimpy():
    policy = CanonicalizationPolicy.from_c_value(b"relaxed/simple")
    assert canonical.body(policy, b"a  b\r\n\r\n") == b"a  b\r\n"
    assert canonical.body(CanonicalizationPolicy.from_c_value(b"simple/relaxed"), b"a  b\r\n\r\n") == b"a b\r\n"


HEADER_PIECES = st.sampled_from([b"From: a@b\r\n", b"Subject: x\r\n", b" folded\r\n", b"\tfolded\n", b"To:c\n",
                                 b"\r\n", b"\n", b"From x\r\n", b"bad line\r\n", b"X-A: \r\r\n", b"Y: v\r",
                                 b"body text\r\n", b"lone\nlf", b"", b"Z:"])
MESSAGES = st.lists(HEADER_PIECES, max_size=14).map(b"".join)


def _outcome(parse, message):
    try:
        return parse(message)
    except Exception as error:  # the same exceptions count as the same result
        return type(error)


@given(MESSAGES)
@settings(max_examples=3000)
def test_rfc822_parse_is_dkimpys(message):
    assert _outcome(canonical.rfc822_parse, message) == _outcome(dkim.rfc822_parse, message)


@pytest.mark.parametrize("message", [
    b"", b"\r\n", b"A: 1\r\n\r\nbody\r\n", b"A: 1\n\nbody\nline\r\n", b"A: 1\r\n", b"A: 1", b" lead\r\n",
    b"From someone\r\nA: 1\r\n\r\nb", b"A: 1\r\n B\r\n\tC\r\n\r\n\r\n\r\nb\r\r\nc\rd\n",
])
def test_rfc822_parse_fixed_cases(message):
    assert _outcome(canonical.rfc822_parse, message) == _outcome(dkim.rfc822_parse, message)


@pytest.mark.parametrize(("body", "expected"), [
    (b"a \r\n" + b"\t" * 300_000 + b"x\r\n", b"a\r\n x\r\n"),  # a run not followed by CRLF, a " \r\n" elsewhere
    (b" " * 1_000_000 + b"\r\n", b""),
    ((b" \t" * 200_000 + b"y") * 3 + b" \r\n", b" y y y\r\n"),
])
def test_long_runs_of_white_space_cost_linear_time(body, expected):
    # dkimpy's own pattern backtracks over such runs (seconds at 100 KB; this would take hours if
    # ours did too). The same shapes, small, are compared with dkimpy's result.
    assert canonical.relaxed_body(body) == expected
    small = body[:40] + body[-40:]
    assert canonical.relaxed_body(small) == Relaxed.canonicalize_body(small)


def test_bytes_like_input_is_read_as_bytes():
    message = b"A: 1\r\n\r\nbody\r\n"
    assert canonical.rfc822_parse(memoryview(message)) == dkim.rfc822_parse(message)  # type: ignore[arg-type]
    headers, _ = canonical.rfc822_parse(bytearray(message))  # type: ignore[arg-type]
    assert all(type(value) is bytes for _, value in headers)


def _split_outcome(head, body):
    try:
        parts = canonical.split(head, body)
    except Exception as error:
        return type(error)
    return parts.headers, parts.body


BODY_PIECES = st.sampled_from([b"line\r\n", b"lf only\n", b"\r\n", b"\n", b"cr\r", b"A: 1\r\n", b" \t\r\n", b""])


@given(MESSAGES, st.lists(BODY_PIECES, max_size=8).map(b"".join))
@settings(max_examples=3000)
def test_split_is_rfc822_parse_of_the_joined_message(head, body):
    """Issue 11 item 4: DKIM and ARC take the header block and the spooled body apart, never
    joined; the result must be dkimpy's for the joined message, whatever the header block holds."""
    assert _split_outcome(head, body) == _outcome(dkim.rfc822_parse, head + body)


@pytest.mark.parametrize(("head", "body"), [
    (b"A: 1\r\n\r\n", b"body\r\n"), (b"\r\n", b"x\r\n"), (b"A: 1\r\n\r\nB: 2\r\n\r\n", b"tail\r\n"),
    (b"A: 1\r\n", b"\r\nbody\r\n"), (b"A: 1\r\n\r\n", b"bare\nlf\r\n"), (b"A: 1\r\r\n", b"\r\nb"),
])
def test_split_fixed_cases(head, body):
    assert _split_outcome(head, body) == _outcome(dkim.rfc822_parse, head + body)


def test_split_keeps_a_crlf_body_itself_no_copy():
    body = b"line one\r\nline two\r\n" * 1000
    assert canonical.split(b"From: a@b\r\n\r\n", body).body is body
