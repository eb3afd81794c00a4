"""Our Authentication-Results header (RFC 8601), and the forged ones to remove first.

Entries are authres objects proposed by the checks; this module only assembles them under our
authserv-id. Any existing Authentication-Results header that claims our authserv-id did not
come from us (RFC 8601 §5: a border MTA removes them), so it is removed before ours is added.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import authres

from policymilter.facts import Session
from policymilter.message import Message
from policymilter.outcome import AddHeader, RemoveHeader

HEADER = "Authentication-Results"


def claimed_authserv_id(value: str) -> str:
    """The authserv-id a header value claims (unquoted, lower case, no trailing dot); a header
    authres cannot parse still names one."""
    try:
        claimed = str(authres.AuthenticationResultsHeader.parse_value(value).authserv_id)
    except authres.AuthResError:
        claimed = value.strip().split(";", 1)[0].split(None, 1)[0] if value.strip() else ""
    return claimed.strip().strip('"').rstrip(".").lower()


def forged(message: Message, authserv_id: str) -> tuple[RemoveHeader, ...]:
    """Every A-R header carrying our authserv-id, last first (indexes of the rest stay valid)."""
    ours = authserv_id.lower()
    indexes = [index for index, value in enumerate(message.header_values(HEADER), start=1)
               if claimed_authserv_id(value) == ours]
    return tuple(RemoveHeader(HEADER, index) for index in reversed(indexes))


def session_entries(session: Session) -> list[Any]:
    """RFC 8601 §2.7.4: the SMTP AUTH result of an authenticated session."""
    if not session.authenticated:
        return []
    return [authres.SMTPAUTHAuthenticationResult(result="pass", smtp_auth=session.auth_login)]


def header(authserv_id: str, entries: Sequence[Any]) -> AddHeader:
    """One header; folded after each result so no line nears RFC 5322's 998-character limit."""
    value = authres.AuthenticationResultsHeader(authserv_id=authserv_id, results=list(entries)).header_value()
    return AddHeader(HEADER, value.replace("; ", ";\n\t"))
