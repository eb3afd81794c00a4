"""sizelimit: the site's maximum message size (`site.max_message_size`), on every listener.

Checked twice: at MAIL FROM against the client's SIZE= declaration (RFC 1870), so a big
message is refused before it is sent, and at end of message against what arrived.
"""

from __future__ import annotations

from policymilter.outcome import CheckResult, Disposition, Outcome, SmtpReply
from policymilter.pipeline import CheckContext, Stage

NAME = "sizelimit"


def _refuse(size: int, limit: int) -> CheckResult:
    # RFC 3463: 5.3.4 message too big for system
    reply = SmtpReply("552", "5.3.4", f"Message too big: {size} bytes, this site accepts at most {limit} bytes")
    return CheckResult(NAME, Outcome.BLOCKED, Disposition.REJECT, reply, reason=f"{size} > {limit} bytes",
                       detail=str(size))


def declared_size(params: tuple[str, ...]) -> int | None:
    for param in params:
        key, _, value = param.partition("=")
        if key.upper() == "SIZE" and value.isdigit():
            return int(value)
    return None


class SizeDeclared:
    name = NAME
    stage = Stage.MAIL
    requires: tuple[str, ...] = ()

    def run(self, context: CheckContext) -> CheckResult:
        limit = context.policy.site.max_message_size
        size = declared_size(context.envelope.mail_params)
        if limit and size is not None and size > limit:
            return _refuse(size, limit)
        return CheckResult(NAME, Outcome.PASS)


class SizeReceived:
    name = NAME
    stage = Stage.EOM
    requires: tuple[str, ...] = ()

    def run(self, context: CheckContext) -> CheckResult:
        limit = context.policy.site.max_message_size
        size = context.message.size if context.message else 0
        if limit and size > limit:
            return _refuse(size, limit)
        return CheckResult(NAME, Outcome.PASS, detail=str(size))
