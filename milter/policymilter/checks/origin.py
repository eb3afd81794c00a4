"""origin: which listener the mail came through, and that listener's rules for authentication.

Runs at MAIL FROM: Postfix sends the SASL macros from MAIL on (never at CONNECT), so
"authenticated" is decided per transaction.
"""

from __future__ import annotations

from policymilter import safetext
from policymilter.facts import Session
from policymilter.listeners import ListenerMatch
from policymilter.outcome import CheckResult, Disposition, Outcome, SmtpReply
from policymilter.pipeline import CheckContext, Stage
from policymilter.policy.model import Listener

NAME = "origin"


def _refuse(detail: str, reply: SmtpReply, reason: str) -> CheckResult:
    return CheckResult(NAME, Outcome.FAIL, Disposition.REJECT, reply, reason, detail)


def _mechanisms_text(listener: Listener) -> str:
    return " or ".join(listener.auth_mechanisms)


def check(matched: ListenerMatch, session: Session) -> CheckResult:
    """The listener's authentication rules for this transaction."""
    listener = matched.settings
    if listener.auth == "required" and not session.authenticated:
        how = f"AUTH {_mechanisms_text(listener)}" if listener.auth_mechanisms else "AUTH"
        tls = " over TLS" if listener.auth_requires_tls else ""
        return _refuse(
            "auth-required",
            # RFC 4954 §6: 530 5.7.0 Authentication required
            SmtpReply("530", "5.7.0", f"Authentication required: log in with your login name and "
                                      f"password ({how}{tls}) before sending mail on this port"),
            f"listener {matched.name} requires authentication",
        )
    if not session.authenticated:
        return CheckResult(NAME, Outcome.PASS, reason="unauthenticated", detail="anonymous")
    login = session.auth_login or ""
    if listener.auth_requires_tls and not session.tls:
        return _refuse(
            "auth-without-tls",
            # RFC 4954 §6: 538 5.7.11 Encryption required for requested authentication mechanism
            SmtpReply("538", "5.7.11", "Authentication is only allowed over TLS: use STARTTLS "
                                       "(or port 465) before AUTH; your password was sent unencrypted"),
            f"login {login} authenticated without TLS",
        )
    mechanism = (session.auth_mech or "").upper()
    if listener.auth_mechanisms and mechanism not in listener.auth_mechanisms:
        shown = mechanism or "unknown"
        return _refuse(
            "mechanism",
            # RFC 4954 §6: 534 5.7.9 Authentication mechanism is too weak
            SmtpReply("534", "5.7.9", f"Authentication mechanism {shown} is not allowed here: "
                                      f"use {_mechanisms_text(listener)}"),
            f"login {login} used mechanism {shown}",
        )
    bad = sorted({char for char in login if char in listener.login_forbidden_chars})
    if bad:
        rule = " or ".join(f'"{char}"' for char in listener.login_forbidden_chars)
        return _refuse(
            "login-name",
            SmtpReply("550", "5.7.1", f'Use your login name (without {rule}) to log in, not '
                                      f'"{safetext.for_reply(login, 64, forbid=chr(34))}"'),
            f"login {login} contains {''.join(bad)}",
        )
    return CheckResult(NAME, Outcome.PASS, reason="authenticated", detail="auth")


class Origin:
    """The listener's own rules; runs on every listener, before any listed check."""

    name = NAME
    stage = Stage.MAIL
    requires: tuple[str, ...] = ()

    def run(self, context: CheckContext) -> CheckResult:
        return check(context.listener, context.session)
