"""File names as Windows saves them: what the attachment check compares extensions on and what
the walk recognises a signed file (".p7m") by. Kept apart from both so that neither imports
the other (the check sits above the walk)."""

from __future__ import annotations

import functools
import re
import unicodedata

# Dots and every Unicode white space character (all below U+3001): str.rstrip takes them in
# one linear pass, where a regex like [\s.]+$ is quadratic on a long run that does not end the name.
TRAILING = "." + "".join(char for char in map(chr, range(0x3001)) if char.isspace())
_SEPARATORS = re.compile(r"[/\\]")


# Where Unicode puts format and control characters: the Basic and Supplementary Multilingual
# planes and plane 14 (tags, variation selectors). A test checks this Python's database agrees.
INVISIBLE_PLANES = (range(0x20000), range(0xE0000, 0xF0000))


@functools.cache
def _invisible() -> re.Pattern[str]:
    """Format (Cf) and control (Cc) characters, as one character class: removed in C. Built on
    first use from this Python's Unicode database (about 20 ms, once)."""
    ranges: list[list[int]] = []
    for code in (code for plane in INVISIBLE_PLANES for code in plane):
        if unicodedata.category(chr(code)) in ("Cf", "Cc"):
            if ranges and ranges[-1][1] == code - 1:
                ranges[-1][1] = code
            else:
                ranges.append([code, code])
    return re.compile("[" + "".join(re.escape(chr(low)) + (f"-{re.escape(chr(high))}" if high > low else "")
                                    for low, high in ranges) + "]")


def normalise_name(name: str) -> str:
    """The name as Windows would save it, for comparing extensions.

    Format (Cf: direction overrides, zero-width marks, BOM) and control characters (Cc, NUL
    included) are dropped: MUAs strip or ignore them, and they are how a name hides what it
    is. NFKC folds compatibility look-alikes. Only the last path component counts; Win32
    drops trailing dots and spaces ("x.exe. " is x.exe) and the default NTFS stream
    ("x.exe::$DATA"); extensions compare case-insensitively.
    """
    kept = name if name.isprintable() else _invisible().sub("", name)  # isprintable(): no Cc, no Cf
    base = _SEPARATORS.split(unicodedata.normalize("NFKC", kept))[-1].casefold().rstrip(TRAILING)
    return base.removesuffix("::$data").rstrip(TRAILING)


def extension(name: str) -> str:
    """The final extension of a normalised name, without the dot ("" when there is none)."""
    _, dot, suffix = name.rpartition(".")
    return suffix if dot else ""
