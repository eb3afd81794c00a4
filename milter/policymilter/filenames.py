"""File names as Windows saves them: what the attachment check compares extensions on and what
the walk recognises a signed file (".p7m") by. Kept apart from both so that neither imports
the other (the check sits above the walk)."""

from __future__ import annotations

import re
import unicodedata

from policymilter.readable import INVISIBLE_PLANES, invisible_characters

__all__ = ["INVISIBLE_PLANES", "TRAILING", "extension", "normalise_name"]

# Dots and every Unicode white space character (all below U+3001): str.rstrip takes them in
# one linear pass, where a regex like [\s.]+$ is quadratic on a long run that does not end the name.
TRAILING = "." + "".join(char for char in map(chr, range(0x3001)) if char.isspace())
_SEPARATORS = re.compile(r"[/\\]")


def _invisible() -> re.Pattern[str]:
    """Format (Cf) and control (Cc) characters, as one character class: removed in C."""
    return invisible_characters("Cf", "Cc")


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
