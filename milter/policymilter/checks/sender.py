"""sender: an authenticated login may only use envelope senders and From addresses it owns.

Owned: `sender.patterns` (default `{login}@{domain}` for each of site.domains) and the map file
(`sender.map_file`). The envelope sender is checked at MAIL FROM, the From header at end of
message. A mismatch is refused naming the address and the login (or only logged).
"""

from __future__ import annotations

from policymilter import safetext, sendermap
from policymilter.author import BadFrom, parse_from
from policymilter.outcome import CheckResult, Disposition, Outcome, SmtpReply
from policymilter.pipeline import CheckContext, Stage

NAME = "sender"
OTHER_AUTHOR_FIELDS = ("Sender", "Resent-From", "Resent-Sender")


def _judge(context: CheckContext, addresses: list[str], what: str) -> CheckResult:
    login = context.session.auth_login
    if not login:
        return CheckResult(NAME, Outcome.SKIPPED, reason="not authenticated", detail="anonymous")
    senders = context.resources.senders
    foreign = [a for a in addresses if not sendermap.owns(context.policy, senders, login, a)]
    if not foreign:
        return CheckResult(NAME, Outcome.PASS, reason=f"{login} owns {', '.join(addresses) or 'the null sender'}",
                           detail=what)
    address = foreign[0]
    reason = f"login {login} may not use {what} {address}"
    if context.policy.sender.on_mismatch == "log":
        return CheckResult(NAME, Outcome.FAIL, reason=reason + " (logged only)", detail=f"{what}-mismatch")
    shown, who = safetext.for_reply(address), safetext.for_reply(login, 64)
    reply = SmtpReply("550", "5.7.1", f"You are logged in as {who}, which may not send as {shown}: use one of "
                                      "your own addresses, or ask the postmaster to add this one to your account")
    return CheckResult(NAME, Outcome.FAIL, Disposition.REJECT, reply, reason=reason, detail=f"{what}-mismatch")


class SenderEnvelope:
    name = NAME
    stage = Stage.MAIL
    requires: tuple[str, ...] = ()

    def run(self, context: CheckContext) -> CheckResult:
        sender = context.envelope.mail_from
        # The null sender owns nothing and claims nothing (bounces, receipts).
        return _judge(context, [sender] if sender else [], "envelope")


class SenderFrom:
    name = NAME
    stage = Stage.EOM
    requires: tuple[str, ...] = ()

    def run(self, context: CheckContext) -> CheckResult:
        message = context.content
        written_by = message.author()
        if isinstance(written_by, BadFrom):
            return _bad_from(context, written_by)
        claimed = [written_by.address]
        # Outlook shows Sender as "SENDER on behalf of FROM", and Resent-* as who forwarded it:
        # addresses a login may put there are its own too (RFC 5322 §3.6.2, §3.6.6).
        for field in OTHER_AUTHOR_FIELDS:
            values = [h.value for h in message.headers if h.name.strip().lower() == field.lower()]
            if not values:
                continue
            found = parse_from(values, field)
            if isinstance(found, BadFrom):
                return _bad_from(context, found)
            claimed.append(found.address)
        return _judge(context, claimed, "From")


def _bad_from(context: CheckContext, bad: BadFrom) -> CheckResult:
    """A From that readers may read differently can claim an address the login does not own."""
    login = context.session.auth_login
    if not login:
        return CheckResult(NAME, Outcome.SKIPPED, reason="not authenticated", detail="anonymous")
    reason = f"login {login}: {bad.reason}"
    if context.policy.sender.on_mismatch == "log":
        return CheckResult(NAME, Outcome.FAIL, reason=reason + " (logged only)", detail=f"from-{bad.detail}")
    shown = safetext.for_reply(bad.reason, 140)
    reply = SmtpReply("550", "5.7.1", f"Your message's From header is not acceptable ({shown}): "
                                      "write exactly one From address, one of your own")
    return CheckResult(NAME, Outcome.FAIL, Disposition.REJECT, reply, reason=reason, detail=f"from-{bad.detail}")
