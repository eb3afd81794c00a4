"""Header text as a lenient reader shows it: what checks compare against what users see.

RFC 2047 allows encoded words only between white space, in phrases and comments; mail clients
(Thunderbird's jsmime among them) decode them anywhere, glued to other text or inside
quotes, and so does software that reads Authentication-Results. Checks that must not be
fooled by what a reader sees decode the same way, then fold compatibility forms (NFKC: a
full-width "＠" is "@") and drop the invisible format characters that can split a word.
"""

from __future__ import annotations

import codecs
import email.errors
import email.header
import functools
import re
import unicodedata

# An encoded word anywhere, however it is surrounded (RFC 2047 §2 syntax, not §5 placement).
_ENCODED_WORD = re.compile(r"=\?[^?\s]{1,75}\?[bBqQ]\?[^?\s]{0,2000}\?=")


# Where Unicode puts format and control characters: the Basic and Supplementary Multilingual
# planes and plane 14 (tags, variation selectors). A test checks this Python's database agrees.
INVISIBLE_PLANES = (range(0x20000), range(0xE0000, 0xF0000))


@functools.cache
def invisible_characters(*categories: str) -> re.Pattern[str]:
    """A character class of the format (Cf) and/or control (Cc) characters, so that removing
    them is one regex pass in C, not a loop per character. Built on first use from this
    Python's Unicode database (about 20 ms, once)."""
    ranges: list[list[int]] = []
    for code in (code for plane in INVISIBLE_PLANES for code in plane):
        if unicodedata.category(chr(code)) in categories:
            if ranges and ranges[-1][1] == code - 1:
                ranges[-1][1] = code
            else:
                ranges.append([code, code])
    return re.compile("[" + "".join(re.escape(chr(low)) + (f"-{re.escape(chr(high))}" if high > low else "")
                                    for low, high in ranges) + "]")


def decode_anywhere(text: str) -> str:
    """Every encoded word in `text` replaced by what it decodes to (unknown charsets: UTF-8).

    As clients do (RFC 2047 §6.2), white space between two encoded words is dropped, and the
    bytes of adjacent words in one charset are decoded together: a UTF-16 or UTF-8 character
    may be split across two words."""
    if "=?" not in text:
        return text
    out: list[str] = []
    run: list[bytes] = []
    run_charset = ""
    pos = 0
    for match in _ENCODED_WORD.finditer(text):
        between = text[pos:match.start()]
        pos = match.end()
        word = _word(match.group())
        adjacent = run and not between.strip()
        if word is None:  # not decodable: it stays as written
            out.append(_text(b"".join(run), run_charset))
            run = []
            out.append(between + match.group())
            continue
        data, charset = word
        if adjacent and charset == run_charset:
            run.append(data)
            continue
        out.append(_text(b"".join(run), run_charset))
        out.append("" if adjacent else between)
        run, run_charset = [data], charset
    out.append(_text(b"".join(run), run_charset))
    out.append(text[pos:])
    return "".join(out)


def _word(word: str) -> tuple[bytes, str] | None:
    """An encoded word's bytes and (lower case) charset; None if it does not decode."""
    try:
        [(data, charset)] = email.header.decode_header(word)
    except (email.errors.HeaderParseError, ValueError):
        return None
    if isinstance(data, str):
        return None
    return data, (charset or "").lower()


def _text(data: bytes, charset: str) -> str:
    if not data:
        return ""
    try:
        # Only text encodings: Python also has codecs like "idna", "undefined" or "rot13".
        if codecs.lookup(charset)._is_text_encoding:
            return data.decode(charset, "replace")
    except (LookupError, UnicodeError, ValueError):
        pass
    return data.decode("utf-8", "replace")


def visible(text: str) -> str:
    """What a reader sees: encoded words decoded, compatibility forms folded, format characters
    (zero-width, direction marks, BOM) gone."""
    if text.isascii() and "=?" not in text:
        return text  # nothing to decode, fold or drop
    return invisible_characters("Cf").sub("", unicodedata.normalize("NFKC", decode_anywhere(text)))
