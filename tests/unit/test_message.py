"""The message as an MTA hands it over: raw header bytes, folding kept, CRLF body."""

from __future__ import annotations

from policymilter.message import Message


def test_headers_keep_bytes_and_folding():
    message = Message.from_bytes(b"Subject: caf\xc3\xa9\n\tand more\nX-A: 1\n\nbody\nline\n")
    assert [(h.name, h.value) for h in message.headers] == [
        ("Subject", b" caf\xc3\xa9\r\n\tand more"), ("X-A", b" 1")]
    assert message.raw_bytes().startswith(b"Subject: caf\xc3\xa9\r\n\tand more\r\nX-A: 1\r\n\r\n")
    assert message.raw_bytes().endswith(b"\r\n\r\nbody\r\nline\r\n")
    assert message.header_values("X-A") == ["1"]


def test_a_line_that_is_no_header_starts_the_body():
    message = Message.from_bytes(b"Subject: x\nthis is not a header\n\nrest\n")
    assert [h.name for h in message.headers] == ["Subject"]
    assert message.raw_bytes().endswith(b"this is not a header\r\n\r\nrest\r\n")


def test_large_bodies_are_spooled_and_sized():
    message = Message(spool_threshold=1024)
    for _ in range(100):
        message.write_body(b"x" * 1000 + b"\r\n")
    assert message.body_size == 100_200
    assert message._body._rolled  # on disk, not in memory
    message.close()


def test_a_message_without_headers_keeps_its_body():
    message = Message.from_bytes(b"just text\nmore\n\nsecond paragraph\n")
    assert message.headers == []
    assert message.body_bytes() == b"just text\r\nmore\r\n\r\nsecond paragraph\r\n"


def test_headers_only_message_has_an_empty_body():
    message = Message.from_bytes(b"Subject: x\n")
    assert message.body_bytes() == b"" and [h.name for h in message.headers] == ["Subject"]
