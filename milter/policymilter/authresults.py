"""Our Authentication-Results header (RFC 8601), and the forged ones to remove first.

Entries are authres objects proposed by the checks; this module only assembles them under our
authserv-id. Any existing Authentication-Results header that claims our authserv-id did not
come from us (RFC 8601 §5: a border MTA removes them), so it is removed before ours is added.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import authres

from policymilter import readable, safetext
from policymilter.facts import Session
from policymilter.message import Message
from policymilter.outcome import Action, AddHeader, CheckResult, RemoveHeader

HEADER = "Authentication-Results"

# Every token a reader might take for the authserv-id: runs of characters that are not white
# space, comment or quoting punctuation, or the ";" that ends the id.
_ID_TOKEN = re.compile(r'[^\s;()"\\]+')
# What a property value of ours may be: a domain, an address, an IP, a login, a base64 prefix
# (which may start with "+" or "/"; authres quotes a value with "/" in it). Anything else
# (attacker text, 8-bit bytes) is left out, so the header always parses and stays ASCII.
_PROPERTY = re.compile(r"[A-Za-z0-9+/][A-Za-z0-9._@+=:/-]{0,252}", re.ASCII)
# Longer than any Authentication-Results a real server writes: not worth reading closely.
MAX_PARSED_LENGTH = 8192
MAX_COMMENT_NESTING = 10


def claims(value: str, authserv_id: str) -> bool:
    """Could a reader take this A-R header value for one carrying `authserv_id`?

    Found without parsing the rest of the header (RFC 8601 §5 wants every such header gone,
    and a header that does not parse is still read by someone): in any case, with or without
    a trailing dot, quoted, escaped, behind comments, followed by a version or by garbage. A
    value that does not contain the id at all is dismissed with one substring search, so a
    megabyte of headers costs microseconds, not a parse each.
    """
    ours = authserv_id.lower().rstrip(".")
    if not value.isascii() or "=?" in value:
        if len(value) > MAX_PARSED_LENGTH:
            return True  # folding it (NFKC can grow it 18-fold) costs more than it can be worth
        # encoded words (=?us-ascii?q?mail.example.org?=), which Python's email package and
        # mail clients decode here too; full-width forms; invisible characters
        value = readable.visible(value)
    unescaped = value.lower().replace("\\", "")  # quoted-pairs: mail\.example\.org
    squashed = _squash(unescaped)
    if ours not in unescaped and ours not in squashed:
        return False
    if len(unescaped) > MAX_PARSED_LENGTH:
        return True  # our id somewhere in a value no server of ours writes: gone, unparsed
    # The id, its version and comments come before the first ";" — unless a comment holds one,
    # which is why the RFC reading below skips comments properly.
    for head in (unescaped.split(";", 1)[0], squashed.split(";", 1)[0]):
        if any(token.rstrip(".") == ours for token in _ID_TOKEN.findall(head)):
            return True
    return _first_token(unescaped).rstrip(".") == ours


_COMMENT = re.compile(r"\([^()]*\)")
_AROUND_DOT = re.compile(r"\s*\.\s*")


def _squash(text: str) -> str:
    """The value as OpenDMARC's tokenizer reads an authserv-id: comments dropped, quote marks
    dropped, white space around dots dropped (`mx . example . test`, `mx (c).example.test`,
    `"mx"."example"."test"` are all mx.example.test there)."""
    for _ in range(MAX_COMMENT_NESTING):
        text, found = _COMMENT.subn(" ", text)
        if not found:
            break
    return _AROUND_DOT.sub(".", text.replace("(", " ").replace(")", " ").replace('"', ""))


def _first_token(text: str) -> str:
    """RFC 8601 §2.2: the authserv-id after leading CFWS (nested comments), unquoted."""
    pos, depth = 0, 0
    while pos < len(text):
        char = text[pos]
        if depth:
            depth += {"(": 1, ")": -1}.get(char, 0)
        elif char == "(":
            depth = 1
        elif not char.isspace():
            break
        pos += 1
    rest = text[pos:]
    if rest.startswith('"'):
        return rest[1:].split('"', 1)[0].strip()
    match = _ID_TOKEN.match(rest)
    return match.group() if match else ""


def forged(message: Message, authserv_id: str) -> tuple[RemoveHeader, ...]:
    """Every A-R header carrying our authserv-id, last first (indexes of the rest stay valid)."""
    indexes = [index for index, value in enumerate(message.header_values(HEADER), start=1)
               if claims(value, authserv_id)]
    return tuple(RemoveHeader(HEADER, index) for index in reversed(indexes))


def session_entries(session: Session) -> list[Any]:
    """RFC 8601 §2.7.4: the SMTP AUTH result of an authenticated session."""
    if not session.authenticated:
        return []
    return [authres.SMTPAUTHAuthenticationResult(result="pass", smtp_auth=session.auth_login)]


def _clean(entry: Any) -> Any:
    """Only validated tokens as property values, only safe ASCII in comments and reasons."""
    entry.properties = [p for p in entry.properties if p.value is not None and _PROPERTY.fullmatch(str(p.value))]
    for attribute in ("result_comment", "reason", "reason_comment"):
        text = getattr(entry, attribute, None)
        if text:
            # authres keeps these as its own str subclasses (they know how to quote themselves)
            setattr(entry, attribute, type(text)(safetext.for_header(str(text))))
    return entry


def header(authserv_id: str, entries: Sequence[Any]) -> AddHeader:
    """One header; folded after each result so no line nears RFC 5322's 998-character limit."""
    value = authres.AuthenticationResultsHeader(authserv_id=authserv_id,
                                                results=[_clean(entry) for entry in entries]).header_value()
    value.encode("ascii")  # our header is ASCII (RFC 8601 §2.2): anything else is a bug in _clean
    return AddHeader(HEADER, value.replace("; ", ";\n\t"))


def ours(session: Session, results: Sequence[CheckResult], authserv_id: str) -> AddHeader | None:
    """Our header for these results (None when nothing was checked). The seal check copies its
    value into ARC-Authentication-Results: both are made here, from the same results."""
    entries = [*session_entries(session), *(entry for result in results for entry in result.authres)]
    return header(authserv_id, entries) if entries else None


def actions(message: Message, session: Session, results: Sequence[CheckResult],
            authserv_id: str) -> tuple[Action, ...]:
    """Remove A-R headers forged with our authserv-id, then add ours (applied before the checks'
    own header changes)."""
    added = ours(session, results, authserv_id)
    return (*forged(message, authserv_id), *((added,) if added is not None else ()))
