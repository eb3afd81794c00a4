"""What checks found and what the milter decides: results, replies, actions, verdicts.

A check only *proposes* (a CheckResult); the pipeline picks the strictest proposal into a
Verdict; the adapter applies the Verdict in one place.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum, StrEnum
from typing import Any

from policymilter import safetext


class Outcome(StrEnum):
    """What a check found (never what to do about it)."""

    PASS = "pass"
    FAIL = "fail"
    SOFTFAIL = "softfail"
    NEUTRAL = "neutral"
    POLICY = "policy"  # RFC 8601 §2.7.1: signed, but not acceptable here (DKIM l=, rsa-sha1)
    NONE = "none"
    TEMPERROR = "temperror"
    PERMERROR = "permerror"
    CLEAN = "clean"
    INFECTED = "infected"
    SPAM = "spam"
    HAM = "ham"
    BLOCKED = "blocked"
    SEALED = "sealed"  # seal: an ARC set was added
    SKIPPED = "skipped"
    ERROR = "error"


class Disposition(IntEnum):
    """What happens to the transaction; a higher value is stricter and wins.

    ACCEPT is "no objection": at end of message the message is accepted; at MAIL FROM the
    transaction goes on to the checks of the next stage."""

    ACCEPT = 0
    QUARANTINE = 1
    DISCARD = 2
    TEMPFAIL = 3
    REJECT = 4

    @property
    def verdict_name(self) -> str:
        return self.name.lower()


class ErrorAction(StrEnum):
    """What a listener does when a check cannot give an answer (policy `on_error`)."""

    TEMPFAIL = "tempfail"
    ACCEPT = "accept"
    REJECT = "reject"


@dataclass(frozen=True)
class SmtpReply:
    """An SMTP reply: basic code (RFC 5321), enhanced code (RFC 3463), text."""

    code: str
    xcode: str
    text: str

    def __post_init__(self) -> None:
        if not (len(self.code) == 3 and self.code.isdigit() and self.code[0] in "45"):
            raise ValueError(f"SMTP reply code must be 4xx or 5xx, not {self.code!r}")
        if self.xcode and self.xcode[0] != self.code[0]:
            raise ValueError(f"enhanced code {self.xcode} does not match {self.code}")

    def __str__(self) -> str:
        return " ".join(part for part in (self.code, self.xcode, self.text) if part)



TEMPFAIL_ERROR = SmtpReply("451", "4.3.0", "Temporary local problem checking this message: please try again later")
REJECT_ERROR = SmtpReply("550", "5.3.0", "This message could not be checked and is refused by local policy")


@dataclass(frozen=True)
class AddHeader:
    name: str
    value: str
    # At the top of the header block instead of the bottom: ARC sets (RFC 8617 §4.2, each new
    # set above the older ones, which verifiers such as dkimpy's read from the bottom up).
    first: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "value", safetext.header_value(self.value))


@dataclass(frozen=True)
class RemoveHeader:
    """Remove the `index`-th (1-based, per name) occurrence of header `name`."""

    name: str
    index: int


@dataclass(frozen=True)
class ChangeHeader:
    """Replace the `index`-th (1-based, per name) occurrence of header `name` with `value`."""

    name: str
    index: int
    value: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "value", safetext.header_value(self.value))


Action = AddHeader | RemoveHeader | ChangeHeader


@dataclass(frozen=True)
class Notice:
    """An event a check asks the session to log (with the connection id), beside its result:
    `limit_exceeded` is one line an operator greps for, not a field of the summary."""

    name: str
    level: int
    message: str
    fields: tuple[tuple[str, Any], ...] = ()


class Findings:
    """What a check found, typed, for the checks that read it (`requires`). A check that ran
    and found nothing still hands over its (empty) findings: "did not run" and "errored" are
    told apart by the reader (pipeline.Missing), never taken for "nothing"."""


@dataclass(frozen=True)
class CheckResult:
    """One check's finding and its proposal."""

    check: str
    outcome: Outcome
    disposition: Disposition = Disposition.ACCEPT
    reply: SmtpReply | None = None
    reason: str = ""
    detail: str = ""
    actions: tuple[Action, ...] = ()
    elapsed_ms: float = 0.0
    # Set by the pipeline when the policy's mode is "report": what enforcement would have done.
    would: Disposition | None = None
    # authres result objects for our Authentication-Results header (RFC 8601).
    authres: tuple[Any, ...] = ()
    # What later checks read (DMARC reads SPF's and DKIM's identities, ARC's chain).
    findings: Findings | None = None
    notices: tuple[Notice, ...] = ()

    @property
    def log_value(self) -> str:
        """The value of this check's key in the summary line (`pass`, `fail:auth-required`)."""
        return f"{self.outcome}:{self.detail}" if self.detail else str(self.outcome)


@dataclass(frozen=True)
class Verdict:
    """The pipeline's decision for one stage or one message."""

    disposition: Disposition = Disposition.ACCEPT
    reply: SmtpReply | None = None
    decided_by: str = ""
    reason: str = ""
    results: tuple[CheckResult, ...] = ()
    actions: tuple[Action, ...] = field(default=())

    @property
    def name(self) -> str:
        return self.disposition.verdict_name

    @property
    def stops(self) -> bool:
        """True when the transaction ends here (nothing after this stage runs)."""
        return self.disposition in (Disposition.REJECT, Disposition.TEMPFAIL, Disposition.DISCARD)


def decide(results: tuple[CheckResult, ...] | list[CheckResult]) -> Verdict:
    """Keep the strictest proposal: reject > tempfail > discard > quarantine > accept.

    Ties go to the earlier check, so the cheaper check that ran first names the reason.
    """
    results = tuple(results)
    winner: CheckResult | None = None
    for result in results:
        if result.disposition > (winner.disposition if winner else Disposition.ACCEPT):
            winner = result
    actions = tuple(action for result in results for action in result.actions)
    if winner is None:
        # Accepted although a check could not answer (its on_error said accept): the summary
        # line says why it could not, or an operator sees only "spam=error:spamd".
        unanswered = "; ".join(f"{r.check} not answered: {r.reason}" for r in results
                               if r.outcome is Outcome.ERROR and r.reason)
        return Verdict(reason=unanswered, results=results, actions=actions)
    return Verdict(
        disposition=winner.disposition,
        reply=winner.reply,
        decided_by=winner.check,
        reason=winner.reason,
        results=results,
        actions=actions,
    )
