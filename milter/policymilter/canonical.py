"""DKIM canonicalisation (RFC 6376 §3.4), dkimpy's, at the cost of a few byte scans.

dkimpy's relaxed body canonicalisation is two regular-expression substitutions over the whole
body with the character class `[\\t ]`, which the regex engine tries at every byte: about 100 µs
for a 5 KB body, 30 ms for 1 MB, on these machines, twice per message that is verified and
signed. Here tabs become spaces first (`bytes.translate`, in C), and each substitution runs
only when its literal (" \\r\\n", "  ") occurs at all, with a pattern that starts with that
literal (the engine then searches for it in C): the same bytes, in about 3 µs for a 5 KB body
without runs of white space. Tests compare every result with dkimpy's own on generated bodies.
Headers go through dkimpy unchanged (they are short), and so does simple canonicalisation.
"""

from __future__ import annotations

import re

from dkim.canonicalization import CanonicalizationPolicy, Relaxed, correct_empty_body, strip_trailing_lines

_TAB_TO_SPACE = bytes.maketrans(b"\t", b" ")
_TRAILING_SPACES = re.compile(rb" +\r\n")
_SPACE_RUNS = re.compile(rb"  +")


def relaxed_body(body: bytes) -> bytes:
    """RFC 6376 §3.4.4, as dkimpy's Relaxed.canonicalize_body computes it."""
    text = body.translate(_TAB_TO_SPACE) if b"\t" in body else body
    if b" \r\n" in text:
        text = _TRAILING_SPACES.sub(b"\r\n", text)
    if b"  " in text:
        text = _SPACE_RUNS.sub(b" ", text)
    return bytes(correct_empty_body(strip_trailing_lines(text)))


def body(policy: CanonicalizationPolicy, content: bytes) -> bytes:
    """The body as `policy` (a c= value's) canonicalises it."""
    if policy.body_algorithm is Relaxed:
        return relaxed_body(content)
    return bytes(policy.canonicalize_body(content))
