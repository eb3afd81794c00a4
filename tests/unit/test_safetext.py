"""The one sanitiser for text from a message or a server: what each destination can carry."""

import pytest

from policymilter import safetext


@pytest.mark.parametrize(("text", "expected"), [
    ("plain text", "plain text"),
    ("évil\r\n250 ok", "?vil??250 ok"),
    ("tab\there", "tab?here"),
    ("\u202eexe.txt", "?exe.txt"),
    ("", ""),
])
def test_for_reply_is_printable_ascii(text: str, expected: str) -> None:
    assert safetext.for_reply(text) == expected


def test_for_reply_bounds_and_marks_a_cut() -> None:
    assert safetext.for_reply("x" * 500) == "x" * 120
    assert safetext.for_reply("x" * 500, 10, shorten=True) == "xxxxxxx..."
    assert safetext.for_reply("x" * 10, 10, shorten=True) == "x" * 10


def test_for_reply_forbids_what_would_end_a_quoted_name() -> None:
    assert safetext.for_reply('a"b\\c', forbid='"\\') == "a?b?c"


@pytest.mark.parametrize("text", ['a(b)c', 'quote"', "back\\slash", "new\nline", "ünï"])
def test_for_header_never_ends_or_escapes_a_comment(text: str) -> None:
    shown = safetext.for_header(text)
    assert not set(shown) & set('()\\"\r\n')
    assert shown.isascii() and shown.isprintable()


def test_for_log_keeps_unicode_but_not_controls() -> None:
    assert safetext.for_log("naïve\x1b[31m\u200b") == "naïve?[31m?"
    assert len(safetext.for_log("y" * 10_000)) == 200


def test_long_input_is_cut_before_work() -> None:
    # a 10 MB name costs no more than its first `limit` characters
    assert safetext.for_reply("\x00" * 10_000_000, 5) == "?????"
