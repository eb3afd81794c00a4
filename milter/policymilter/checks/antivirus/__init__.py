"""antivirus: scan the message with ClamAV's clamd (INSTREAM from the spool), at end of message."""

from __future__ import annotations

from policymilter import safetext
from policymilter.checks.antivirus import clamd
from policymilter.outcome import CheckResult, Disposition, Outcome, SmtpReply
from policymilter.pipeline import CheckContext, Stage
from policymilter.scanning import ScannerError

NAME = "antivirus"
RETRY = SmtpReply("451", "4.7.1", "Temporary problem scanning this message for viruses: please try again later")


class Antivirus:
    name = NAME
    stage = Stage.EOM
    requires: tuple[str, ...] = ()

    def run(self, context: CheckContext) -> CheckResult:
        message, policy = context.content, context.policy.antivirus
        if message.size > policy.max_size:
            reason = f"{message.size} bytes is over antivirus.max_size ({policy.max_size})"
            if policy.on_oversize == "reject":
                return CheckResult(NAME, Outcome.SKIPPED, Disposition.REJECT, SmtpReply(
                    "552", "5.3.4", f"Message too big to scan for viruses ({message.size} bytes)"),
                    reason=reason, detail="size")
            if policy.on_oversize == "tempfail":
                return CheckResult(NAME, Outcome.SKIPPED, Disposition.TEMPFAIL, RETRY, reason=reason, detail="size")
            return CheckResult(NAME, Outcome.SKIPPED, reason=reason, detail="size")
        try:
            result = clamd.scan(policy.servers, message.iter_raw, policy.timeout, policy.max_in_flight)
        except ScannerError as error:
            # The pipeline applies the listener's on_error (default tempfail) with this reply.
            return CheckResult(NAME, Outcome.ERROR, reply=RETRY, reason=str(error), detail="clamd")
        if not result.infected:
            return CheckResult(NAME, Outcome.CLEAN, reason=f"scanned by {result.server}")
        signature = safetext.for_reply(result.signature)
        reason = f"virus {signature} found by {result.server}"
        match policy.on_infected:
            case "quarantine":
                return CheckResult(NAME, Outcome.INFECTED, Disposition.QUARANTINE, reason=reason, detail=signature)
            case "discard":
                return CheckResult(NAME, Outcome.INFECTED, Disposition.DISCARD, reason=reason, detail=signature)
        reply = SmtpReply("550", "5.7.1", f"Message refused: it contains a virus ({signature})")
        return CheckResult(NAME, Outcome.INFECTED, Disposition.REJECT, reply, reason=reason, detail=signature)
