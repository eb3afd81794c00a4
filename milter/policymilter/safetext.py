"""Text from a message or a remote server, made safe for where it goes: one sanitiser.

Anything an attacker or a misbehaving server wrote (a file name, a signature name, an
address, an SPF explanation) reaches SMTP replies, our own headers and log lines only
through here: bounded first (no work in proportion to the input), then reduced to what the
destination can carry.
"""

from __future__ import annotations

import re

_NOT_PRINTABLE_ASCII = re.compile(r"[^ -~]")
_UNFOLDED_BREAK = re.compile(r"\r|\n(?![ \t])|\x00")


def for_reply(text: str, limit: int = 120, *, forbid: str = "", shorten: bool = False) -> str:
    """For an SMTP reply (RFC 5321 §4.2: printable ASCII): anything else, and the characters in
    `forbid`, become "?". At most `limit` characters; `shorten` marks a cut with "..."."""
    cut = len(text) > limit
    text = _NOT_PRINTABLE_ASCII.sub("?", text[:limit])
    if forbid:
        text = re.sub(f"[{re.escape(forbid)}]", "?", text)
    if cut and shorten:
        text = text[: max(limit - 3, 0)] + "..."
    return text


def for_header(text: str, limit: int = 200) -> str:
    """For a comment or quoted value in a header of ours: printable ASCII without the characters
    that would end or escape it (parentheses, quotes, backslash)."""
    return for_reply(text, limit, forbid='()\\"')


def for_log(text: str, limit: int = 200) -> str:
    """For a log line: printable text (Unicode kept), control and format characters as "?"."""
    return "".join(char if char.isprintable() else "?" for char in text[:limit])


def header_value(value: str) -> str:
    """A value for a header we add or change: a line break that does not fold, a CR or a NUL
    would end the header and start one the sender chose; each becomes a space. Applied where
    the action is made (outcome.AddHeader/ChangeHeader), so what is signed is what is written."""
    return _UNFOLDED_BREAK.sub(" ", value)
