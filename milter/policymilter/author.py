"""Who wrote a message: the one RFC5322.From address every check uses, or why there is none.

DMARC (inbound), sender ownership and signing (outbound) must judge the address a mail client
shows and replies to. Mail clients, Python's three address parsers and our checks can read
the same bytes differently: `From: attacker@evil.example <service@bank.example>` is one
address to the header registry, none to the strict `getaddresses` and two to the lenient
one. So a From is accepted only when it is unambiguous: one From header, one mailbox, and
every parser yields the same address without complaint. Anything else is a bad From
(RFC 7489 §6.6.1), which each check refuses in its own words. There is no "most likely"
reading: the attacker chooses which reading a victim's client makes.
"""

from __future__ import annotations

import email.errors
import email.policy
import email.utils
import inspect
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

from policymilter import readable, safetext
from policymilter.domains import DomainError, ascii_lower, to_ascii

_REGISTRY = email.policy.default.header_factory
# Debian's Python carries the CVE-2023-27043 fix (a `strict` mode, on by default); a Python
# without it has only the lenient parser.
_HAS_STRICT = "strict" in inspect.signature(email.utils.getaddresses).parameters
# Something a reader would take for an address: local@domain.tld, after NFKC (full-width
# "＠" is "@") and without invisible format characters.
_ADDRESS_LIKE = re.compile(r"[^\s<>'()@,;:]+@[^\s<>'()@,;:]*[^\s<>'()@,;:.]")
# Explicit embeddings, overrides and isolates (UAX #9): they reorder what the reader sees.
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_UNFOLD = re.compile(r"\r?\n(?=[ \t])")
# An 8-bit byte followed by address punctuation that a double-byte charset's trail byte range
# (0x40-0x7E in Shift_JIS, GBK, Big5) would swallow; "(", "<", '"', "," and ":" lie below it.
_SWALLOWED = re.compile(rb"[\x80-\xff][@\[\\\]]")
# Far above anything a mail client writes (RFC 5322 lines stop at 998 characters), far below
# what makes the stdlib's parsers slow.
MAX_FROM_LENGTH = 1024
MAX_COMMENT_NESTING = 8


@dataclass(frozen=True)
class Author:
    """The message's single author."""

    address: str  # local@domain as written, the domain part in A-labels, lower case
    local: str
    domain: str  # A-labels, lower case, no trailing dot
    display_name: str = ""

    @property
    def ok(self) -> bool:
        return True


@dataclass(frozen=True)
class BadFrom:
    """No author every reader agrees on."""

    reason: str  # for logs and replies: what is wrong with the From header
    detail: str  # one word for the summary line: missing, several, ambiguous, ...

    @property
    def ok(self) -> bool:
        return False


def parse_from(values: Sequence[bytes], field: str = "From") -> Author | BadFrom:
    """The author from the raw values of every From header (as received, folding included).

    `field` names another single-mailbox field read the same way (Sender, Resent-From)."""
    if not values:
        return BadFrom(f"the message has no {field} header", "missing")
    if len(values) > 1:
        return BadFrom(f"the message has {len(values)} {field} headers (RFC 5322 §3.6 allows one)", "several")
    raw = values[0]
    if b"\0" in raw:
        # C-string readers (libmilter, many clients) stop at the NUL, others do not.
        return BadFrom(f"the {field} header contains a NUL byte", "nul")
    try:
        decoded = raw.decode("utf-8")
    except UnicodeDecodeError:
        # Raw 8-bit bytes that are not UTF-8 (RFC 6532): each reader picks its own charset, and
        # in Shift_JIS, GBK or Big5 a lead byte swallows the next character ("\x81\\" ends a
        # quoted-pair early), so readers can disagree on where a comment or a name ends.
        return BadFrom(f"the {field} header has 8-bit characters that are not UTF-8", "8bit")
    if _SWALLOWED.search(raw):
        return BadFrom(f"the {field} header has an 8-bit character next to @, [, \\ or ]: in a multi-byte "
                       "charset a reader would join them", "8bit")
    text = _UNFOLD.sub("", decoded).strip()
    if not text:
        return BadFrom(f"the {field} header is empty", "missing")
    if len(text) > MAX_FROM_LENGTH or _nesting(text) > MAX_COMMENT_NESTING:
        # The stdlib's parsers recurse per comment level and slow down on long values: a From
        # no client writes is refused before they see it.
        return BadFrom(f"the {field} header is {len(text)} characters long or its comments nest too deeply", "too-long")
    return _single(text, field)


def _nesting(text: str) -> int:
    depth = deepest = 0
    for char in text:
        if char == "(":
            depth += 1
            deepest = max(deepest, depth)
        elif char == ")" and depth:
            depth -= 1
    return deepest


def _single(text: str, field: str) -> Author | BadFrom:
    try:
        header = _REGISTRY("from", text)
        mailboxes = list(getattr(header, "addresses", ()))
        groups = list(getattr(header, "groups", ()))
        # A UTF-8 local part is RFC 6532's (SMTPUTF8 mail), not a defect in what readers agree on:
        # the parsers below must still read the same address, and _SWALLOWED has refused an
        # 8-bit character next to @ (where a GBK or Shift_JIS reader would join them).
        defects = [defect for defect in getattr(header, "defects", ())
                   if not isinstance(defect, email.errors.NonASCIILocalPartDefect)]
    except (ValueError, IndexError, TypeError, AttributeError, RecursionError):  # its parser on hostile input
        return BadFrom(f"the {field} header cannot be parsed", "unparsable")
    try:
        lenient = [pair for pair in _getaddresses(text, strict=False) if any(pair)]
        strict = [pair for pair in _getaddresses(text, strict=True) if any(pair)] if _HAS_STRICT else lenient
    except (ValueError, IndexError, TypeError, RecursionError):  # the lenient one recurses per ":"
        return BadFrom(f"the {field} header cannot be parsed", "unparsable")
    counts = {len(mailboxes), len(lenient), len(strict)}
    if counts == {0}:
        return BadFrom(f"the {field} header holds no address", "missing")
    if max(counts) > 1:
        return BadFrom(f"the {field} header holds several addresses, or parsers disagree on how many", "several")
    if counts != {1} or defects or any(group.display_name is not None for group in groups):
        return BadFrom(f"the {field} header is ambiguous: mail clients and parsers read different addresses from it",
                       "ambiguous")
    mailbox = mailboxes[0]
    spellings = {mailbox.addr_spec, lenient[0][1], strict[0][1]}
    if len(spellings) != 1:
        return BadFrom(f"the {field} header is ambiguous: parsers read different addresses from it", "ambiguous")
    address = spellings.pop()
    return _author(address, mailbox.display_name or lenient[0][0], text, field)


def _getaddresses(text: str, *, strict: bool) -> list[tuple[str, str]]:
    if _HAS_STRICT:
        return email.utils.getaddresses([text], strict=strict)
    return email.utils.getaddresses([text])


def _author(address: str, display_name: str, text: str, field: str) -> Author | BadFrom:
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain:
        return BadFrom(f"the {field} address {_shown(address)} has no domain", "ambiguous")
    if "=?" in address or any(not char.isprintable() for char in address):
        # Encoded words are not allowed in an addr-spec (RFC 2047 §5), yet some clients decode
        # them there ("Mailsploit"), showing an address the checks never saw.
        return BadFrom(f"the {field} address {_shown(address)} contains encoded or control characters", "ambiguous")
    if domain.startswith("["):
        return BadFrom(f"the {field} address has an address literal, not a domain", "ambiguous")
    try:
        ascii_domain = to_ascii(domain, exact=True)
    except DomainError as error:
        return BadFrom(f"the {field} domain is not usable: {error}", "domain")
    shown = readable.visible(text)
    seen = display_name + readable.decode_anywhere(text)
    if any(char in _BIDI_CONTROLS or (unicodedata.category(char) == "Cc" and char != "\t") for char in seen):
        return BadFrom(f"the {field} header contains direction overrides or control characters", "ambiguous")
    normalised = f"{local}@{ascii_domain}".lower().replace('"', "")
    # The whole value, as a reader shows it: display name, comments (Thunderbird shows them
    # as part of the name), encoded words wherever they are.
    # Quotes out (a reader shows "service"@bank.example as an address); any "@" with text on
    # both sides counts, dotted or not: "bank。example" is bank.example to UTS #46.
    for found in _ADDRESS_LIKE.findall(shown.replace('"', "")):
        if _comparable(found) != normalised:
            return BadFrom(f"the {field} header shows another address ({_shown(found)}) than the one it "
                           f"has ({_shown(address)})", "display-address")
    return Author(f"{local}@{ascii_domain}", local, ascii_domain, display_name)


def _comparable(address: str) -> str:
    local, _, domain = address.replace('"', "").rpartition("@")
    try:
        domain = to_ascii(domain)
    except DomainError:
        domain = ascii_lower(domain)
    return f"{local}@{domain}".lower()


def _shown(text: str) -> str:
    return safetext.for_log(text, 80)
