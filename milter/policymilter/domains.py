"""Domain names as DNS and DMARC see them: IDNA2008 with UTS #46 mapping (the `idna` package).

Python's built-in "idna" codec is IDNA2003, which folds `faß` to `fass`: a check would then
evaluate a different domain from the one a mail client shows and replies to. Every place that
normalises a domain goes through here.
"""

from __future__ import annotations

import re

import idna
from publicsuffixlist import PublicSuffixList

_LDH_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)", re.ASCII)
_ASCII_UPPER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


class DomainError(ValueError):
    """Not a domain name a mail client and DNS would agree on; the message says why."""


def ascii_lower(text: str) -> str:
    """Lower-case ASCII letters only (str.lower() maps non-ASCII too, e.g. U+0130)."""
    return text.translate(_ASCII_UPPER)


def to_ascii(domain: str, *, exact: bool = False) -> str:
    """The A-label form of `domain`, lower case, without a trailing dot.

    UTS #46 non-transitional mapping (IDNA2008): `faß` stays `faß` (xn--fa-hia), full-width
    letters map to ASCII. With `exact`, a name that the mapping changes in any way other than
    ASCII case is refused: the client showed one name and DNS would be asked another.
    Raises DomainError.
    """
    name = domain.strip().removesuffix(".")
    if not name:
        raise DomainError("empty domain")
    if name.isascii():
        lowered = ascii_lower(name)
        labels = lowered.split(".")
        if all(_LDH_LABEL.fullmatch(label) for label in labels) and len(lowered) <= 253:
            if any(label.startswith("xn--") for label in labels):
                _decode_a_labels(lowered)
            return lowered
    try:
        if exact:
            mapped = idna.uts46_remap(name, std3_rules=True, transitional=False)
            if mapped != ascii_lower(name):
                raise DomainError(f"{domain!r} changes under IDNA mapping (to {mapped!r})")
        encoded = idna.encode(name, uts46=True, std3_rules=True, transitional=False).decode("ascii")
    except idna.IDNAError as error:
        raise DomainError(f"{domain!r} is not a valid domain name ({error})") from None
    labels = encoded.split(".")
    if not all(_LDH_LABEL.fullmatch(label) for label in labels) or len(encoded) > 253:
        raise DomainError(f"{domain!r} is not a valid domain name")
    return encoded


def _decode_a_labels(name: str) -> None:
    """An A-label must be valid punycode of a valid IDNA2008 U-label (RFC 5891 §5.4)."""
    try:
        idna.decode(name)
    except (idna.IDNAError, UnicodeError) as error:
        raise DomainError(f"{name!r} holds an invalid A-label ({error})") from None


def valid_ldh(name: str) -> bool:
    """A lower-case host name of LDH labels (what A-labels look like), at most 253 characters."""
    return 0 < len(name) <= 253 and all(_LDH_LABEL.fullmatch(label) for label in name.split("."))


# The one global: loaded once at import (~40 ms, offline), read-only afterwards, so libmilter's
# worker threads share it safely.
_PSL = PublicSuffixList()


def organizational_domain(domain: str) -> str:
    """RFC 7489 §3.2 via the Public Suffix List: a public suffix, or a name under none, is its own."""
    name = normalize(domain)
    if not valid_ldh(name):
        return name
    return _PSL.privatesuffix(name) or name


def normalize(domain: str) -> str:
    """Lower case A-labels where possible; a name that cannot be encoded comes back lowered as is
    (a lookup for it simply finds nothing)."""
    try:
        return to_ascii(domain)
    except DomainError:
        return ascii_lower(domain.strip().removesuffix("."))
