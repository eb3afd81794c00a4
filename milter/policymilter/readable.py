"""Header text as a lenient reader shows it: what checks compare against what users see.

RFC 2047 allows encoded words only between white space, in phrases and comments; mail clients
(Thunderbird's jsmime among them) decode them anywhere, glued to other text or inside
quotes, and so does software that reads Authentication-Results. Checks that must not be
fooled by what a reader sees decode the same way, then fold compatibility forms (NFKC: a
full-width "＠" is "@") and drop the invisible format characters that can split a word.
"""

from __future__ import annotations

import email.errors
import email.header
import functools
import re
import sys
import unicodedata

# An encoded word anywhere, however it is surrounded (RFC 2047 §2 syntax, not §5 placement).
_ENCODED_WORD = re.compile(r"=\?[^?\s]{1,75}\?[bBqQ]\?[^?\s]{0,2000}\?=")


@functools.cache
def _format_characters() -> re.Pattern[str]:
    """Every format character (Unicode category Cf), for one regex pass instead of a loop per
    character; built on first use (scanning the code space takes ~0.1 s)."""
    return re.compile("[" + "".join(re.escape(chr(code)) for code in range(sys.maxunicode + 1)
                                    if unicodedata.category(chr(code)) == "Cf") + "]")


def decode_anywhere(text: str) -> str:
    """Every encoded word in `text` replaced by what it decodes to (unknown charsets: UTF-8)."""
    if "=?" not in text:
        return text
    return _ENCODED_WORD.sub(lambda match: _decode(match.group()), text)


def _decode(word: str) -> str:
    try:
        [(data, charset)] = email.header.decode_header(word)
    except (email.errors.HeaderParseError, ValueError):
        return word
    if isinstance(data, str):
        return data
    try:
        return data.decode(charset or "utf-8", "replace")
    except LookupError:
        return data.decode("utf-8", "replace")


def visible(text: str) -> str:
    """What a reader sees: encoded words decoded, compatibility forms folded, format characters
    (zero-width, direction marks, BOM) gone."""
    if text.isascii() and "=?" not in text:
        return text  # nothing to decode, fold or drop
    return _format_characters().sub("", unicodedata.normalize("NFKC", decode_anywhere(text)))
