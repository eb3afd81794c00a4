"""Uuencoded files inside a text body (POSIX uuencode and sharutils' begin-base64): found,
named and decoded within a budget of odd lines, as the clients that decode them read them."""

from __future__ import annotations

import binascii
import re
from collections.abc import Iterator

# POSIX uuencode: "begin MODE NAME" ... "end"; sharutils' base64 form: "begin-base64" ... "====".
# The line-start test ("^" in MULTILINE mode: the start, or after LF) comes after the fixed text,
# as a lookbehind, so the engine scans for "begin" in C: a leading "^" costs a step per byte
# (36 ms for 7 MB of binary S/MIME content, searched at every signing level).
_UU_BEGIN = re.compile(rb"begin(?<![^\n]begin)(-base64)?[ \t]+[0-7]{1,4}[ \t]+([^\r\n]+)")
_LINE = re.compile(rb"([^\r\n]*)(?:\r\n|\n|\r|$)")
_UU_CHARS = re.compile(rb"[\x20-\x60]+")


MAX_UU_LINES = 20_000


class LineBudget:
    """Uuencoded lines a message may still have decoded one at a time (the lines every encoder
    writes, 45 bytes each, are decoded in bulk and cost nothing here)."""

    def __init__(self, lines: int = MAX_UU_LINES) -> None:
        self.lines = lines

    def spend(self) -> None:
        self.lines -= 1
        if self.lines < 0:
            raise UuencodeTooLong(f"uuencode with over {MAX_UU_LINES} odd lines")


class UuencodeTooLong(Exception):
    """More odd uuencoded lines than the budget: the caller makes it uninspectable."""


def uuencoded(text: bytes | memoryview, limit: int = 1000, budget: LineBudget | None = None
              ) -> Iterator[tuple[str, bytes]]:
    """(name, decoded data) of each uuencoded block in a text body, at most `limit` blocks;
    UuencodeTooLong past the budget of odd lines.

    A "begin" line counts only when a data line or the end line follows it, so prose that
    merely mentions `begin 644 setup.exe` is not a block.
    """
    budget = LineBudget() if budget is None else budget
    pos = 0
    for _ in range(limit):
        begin = _UU_BEGIN.search(text, pos)
        if begin is None:
            return
        name = begin.group(2).strip().decode("utf-8", "replace")
        data, pos, valid = _uu_block(text, begin.end(), begin.group(1) is not None, budget)
        if valid:
            yield name, data
        pos = max(pos, begin.end())


# Runs of the lines encoders write for 45 bytes ("M" and 60 characters), and of base64 lines
# without padding: decoded a run at a time, in C. uuencode is base64 with another alphabet
# (each character is 32 + six bits, "`" for zero).
# Runs of full lines are decoded at most RUN_LINES at a time: each step makes a few copies of its
# run, and a whole 25 MiB block in one run cost 4-6 times its size (hostile suite).
RUN_LINES = 16384
_UU_FULL_LINES = re.compile(rb"(?:M[\x20-\x60]{60}(?:\r\n|\r|\n)){1,%d}" % RUN_LINES)
_UU_TO_BASE64 = bytes.maketrans(bytes(range(0x20, 0x61)), b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                                                       b"0123456789+/A")
_BASE64_FULL_LINES = re.compile(rb"(?:(?:[A-Za-z0-9+/]{4})+(?:\r\n|\r|\n)){1,%d}" % RUN_LINES)


def _uu_block(text: bytes | memoryview, pos: int, base64: bool, budget: LineBudget) -> tuple[bytes, int, bool]:
    """Decode from `pos` to the end line; valid when the end line or a full data line was seen."""
    chunks: list[bytes] = []
    valid = False
    end_line = b"====" if base64 else b"end"
    line = _LINE.match(text, pos)
    pos = line.end() if line is not None else len(text)  # the rest of the begin line (its line break)
    while pos < len(text):
        run = (_BASE64_FULL_LINES if base64 else _UU_FULL_LINES).match(text, pos)
        if run is not None:
            lines = run.group()
            if not base64:  # "M", 60 characters, one line end, each: the characters alone, in base64
                lines = lines.replace(b"\r\n", b"\n").replace(b"\r", b"\n")[1:-1].replace(b"\nM", b"")
                lines = lines.translate(_UU_TO_BASE64)
            chunks.append(binascii.a2b_base64(lines))
            valid, pos = True, run.end()
            continue
        line = _LINE.match(text, pos)
        if line is None:
            break
        content = line.group(1)
        if content.strip() == end_line:
            return b"".join(chunks), line.end(), True
        decoded = _base64_line(content) if base64 else _uu_line(content)
        if decoded is None:
            return b"".join(chunks), pos, valid
        budget.spend()
        chunks.append(decoded[0])
        valid = valid or decoded[1]
        if line.end() == pos:
            break
        pos = line.end()
    return b"".join(chunks), len(text), valid


def _uu_line(line: bytes) -> tuple[bytes, bool] | None:
    """One uuencoded line and whether it had exactly its announced length.

    A length character, then 4 characters per 3 bytes, all in 0x20-0x60. Transports strip
    trailing spaces (zero bits), so a short line is padded, as binascii does; characters past
    the announced length are ignored, whatever they are (encoders pad differently; Thunderbird
    decodes a line by its length character and ignores the rest).
    """
    if not line or not 0x20 <= line[0] <= 0x60:
        return None
    need = 1 + (((line[0] - 32) & 63) + 2) // 3 * 4
    if not _UU_CHARS.fullmatch(line, 0, min(need, len(line))):
        return None
    try:
        return binascii.a2b_uu(line[:need].ljust(need)), len(line) == need
    except binascii.Error:
        return None


def _base64_line(line: bytes) -> tuple[bytes, bool] | None:
    if not line.strip():
        return None
    try:
        return binascii.a2b_base64(line.strip(), strict_mode=True), True
    except binascii.Error:
        return None
