"""ratelimit: per-login (and per-client) limits on what is sent, exact across workers and hosts.

Three steps of one transaction (state/model.py explains the sliding window):
- MAIL FROM: a locked login is refused (550 5.7.1) before anything else is counted.
- each RCPT: the transaction's members so far (one message, its normalised recipients, their
  domains, the client) are reserved in the store, atomically, if every limit still has room; the
  recipient that does not fit gets the limit's action: `tempfail` (451 4.7.1 naming the limit,
  for this recipient: a runaway client is stopped before it sends data), `lock` (the login is
  locked: 550 5.7.1) or `hold` (accepted, and at end of message the message goes to Postfix's
  hold queue, not counted).
- end of message, after every other check: an accepted message's reservation is committed
  (counted); one refused, held or aborted is released (`finish`), so only accepted
  transactions count.
A store that fails applies `ratelimit.on_store_error` to the whole transaction.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace

from policymilter import metrics, safetext
from policymilter.checks.ratelimit import notify
from policymilter.checks.ratelimit.counting import Applicable, applicable, reservation
from policymilter.outcome import CheckResult, Disposition, Findings, Notice, Outcome, SmtpReply
from policymilter.pipeline import CheckContext, Stage
from policymilter.policy.model import Limit
from policymilter.state import Exceeded, Store, StoreError

NAME = "ratelimit"
# RFC 3463: 4.7.1 / 5.7.1 delivery not authorized (by local policy).
HELPDESK = "contact the helpdesk to have it unlocked"


@dataclass(frozen=True)
class RatelimitFindings(Findings):
    """Where this transaction stands with the limits (read by the later steps of the check)."""

    key: str
    reserved: bool = False  # the store holds a reservation for this transaction
    hold: str = ""  # why the message goes to the hold queue (a hold limit tripped)
    committed: bool = False
    store_failed: bool = False  # the store failed earlier in this transaction: not asked again


def _earlier(context: CheckContext) -> RatelimitFindings | None:
    for result in reversed(context.results):
        if result.check == NAME and isinstance(result.findings, RatelimitFindings):
            return result.findings
    return None


def _store(context: CheckContext) -> Store:
    store = context.resources.store
    if store is None:
        raise StoreError("no state store was opened for this policy")
    return store


def _store_failed(context: CheckContext, key: str, error: StoreError) -> CheckResult:
    metrics.store_error(NAME)
    policy = context.policy.ratelimit
    notice = Notice("store_failed", logging.WARNING,
                    f"rate-limit store {policy.store} failed ({error}); ratelimit.on_store_error = "
                    f"{policy.on_store_error}", (("store", policy.store), ("action", policy.on_store_error)))
    findings = RatelimitFindings(key, store_failed=True)
    reason = f"state store unavailable: {error}"[:300]
    if policy.on_store_error == "tempfail":
        reply = SmtpReply("451", "4.3.0", "Temporary local problem checking the sending limits: please try again "
                                          "later")
        return CheckResult(NAME, Outcome.TEMPERROR, Disposition.TEMPFAIL, reply, reason=reason, detail="store",
                           findings=findings, notices=(notice,))
    return CheckResult(NAME, Outcome.TEMPERROR, reason=reason + " (accepted: ratelimit.on_store_error = accept)",
                       detail="store", findings=findings, notices=(notice,))


def _what(exceeded: Exceeded) -> str:
    counter = exceeded.counter
    return f"{counter.limit} {counter.dimension} per {counter.per:g} s"


def _exceeded(context: CheckContext, which: Applicable, exceeded: Exceeded, store: Store, now: float,
              reserved: bool) -> CheckResult:
    """A limit is reached: its action, the limit_exceeded event, the metric, the admin's mail.
    `reserved`: earlier recipients of this transaction hold a reservation (it stays theirs)."""
    limit: Limit = which.limit(exceeded.counter.name)
    report = context.policy.ratelimit.mode == "report"
    who = safetext.for_reply(which.who, 64)
    reason = f"limit {limit.label}: {exceeded.count} of {_what(exceeded)} already used"
    notice = Notice("limit_exceeded", logging.WARNING, f"{which.key} is over limit {limit.label} "
                    f"({_what(exceeded)}): {'report only, would ' if report else ''}{limit.action}", (
        ("login", context.session.auth_login), ("client", context.session.client_ip), ("limit", limit.label),
        ("count", exceeded.count + exceeded.adding), ("max", exceeded.counter.limit),
        ("dimension", str(exceeded.counter.dimension)), ("window", limit.per),
        ("action", "report:" + limit.action if report else limit.action)))
    metrics.limit_exceeded(limit.label, "report" if report else limit.action)
    notices = (notice, *notify.maybe_send(context, which, limit, reason, store, now))
    findings = RatelimitFindings(which.key, reserved=reserved)
    match limit.action:
        case "hold":
            if not report:
                store.release(which.key, context.envelope.txn_id)
            return CheckResult(NAME, Outcome.FAIL, reason=reason + ": the message is held for review",
                               detail=f"hold:{limit.label}", notices=notices,
                               findings=RatelimitFindings(which.key, hold=reason))
        case "lock":
            if not report:
                store.lock(which.key, reason, now)
            reply = SmtpReply("550", "5.7.1", f"Your account {who} is locked: it reached its sending limit of "
                                              f"{_what(exceeded)} ({limit.label}); {HELPDESK}")
            return CheckResult(NAME, Outcome.FAIL, Disposition.REJECT, reply, reason=reason + ": login locked",
                               detail=f"lock:{limit.label}", notices=notices, findings=findings)
        case _:
            reply = SmtpReply("451", "4.7.1", f"Sending limit reached for {who}: {_what(exceeded)} (limit "
                                              f"{limit.label}); please try again later")
            return CheckResult(NAME, Outcome.FAIL, Disposition.TEMPFAIL, reply, reason=reason,
                               detail=f"tempfail:{limit.label}", notices=notices, findings=findings)


class RatelimitMail:
    """MAIL FROM: a locked login is refused; nothing is counted yet."""

    name = NAME
    stage = Stage.MAIL
    requires: tuple[str, ...] = ()

    def run(self, context: CheckContext) -> CheckResult:
        which = applicable(context.policy, context.session)
        if which is None:
            return CheckResult(NAME, Outcome.SKIPPED, reason="no limit for this traffic", detail="no-limit")
        if not context.session.authenticated:
            return CheckResult(NAME, Outcome.PASS, findings=RatelimitFindings(which.key))
        try:
            lock = _store(context).lock_info(which.key)
        except StoreError as error:
            return _store_failed(context, which.key, error)
        if lock is None:
            return CheckResult(NAME, Outcome.PASS, findings=RatelimitFindings(which.key))
        who = safetext.for_reply(which.who, 64)
        since = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(lock.since))
        reply = SmtpReply("550", "5.7.1", f"Your account {who} is locked since {since}; {HELPDESK}")
        return CheckResult(NAME, Outcome.FAIL, Disposition.REJECT, reply, reason=f"login locked: {lock.reason}",
                           detail="locked", findings=RatelimitFindings(which.key))


class RatelimitRcpt:
    """Each RCPT: reserve the transaction's members, or apply the limit that has no room."""

    name = NAME
    stage = Stage.RCPT
    requires: tuple[str, ...] = ()

    def run(self, context: CheckContext) -> CheckResult:
        which = applicable(context.policy, context.session)
        earlier = _earlier(context)
        if which is None or not which.limits:
            return CheckResult(NAME, Outcome.SKIPPED, reason="no limit for this traffic", detail="no-limit")
        if earlier is not None and (earlier.store_failed or earlier.hold):
            return CheckResult(NAME, Outcome.SKIPPED, findings=earlier,
                               detail="store" if earlier.store_failed else "hold")
        now = time.time()
        try:
            store = _store(context)
            exceeded = store.reserve(reservation(context.policy, context.session, context.envelope, which), now)
            if exceeded is not None:
                return _exceeded(context, which, exceeded, store, now, bool(earlier and earlier.reserved))
        except StoreError as error:
            return _store_failed(context, which.key, error)
        return CheckResult(NAME, Outcome.PASS, findings=RatelimitFindings(which.key, reserved=True))

    def finish(self, context: CheckContext) -> None:
        """The transaction ended: what it reserved and did not commit is released."""
        findings = _earlier(context)
        if findings is None or not findings.reserved or findings.committed:
            return
        try:
            _store(context).release(findings.key, context.envelope.txn_id)
        except StoreError:
            metrics.store_error(NAME)  # the reservation expires by itself (RESERVATION_SECONDS)


class RatelimitEom:
    """End of message, after every other check: count an accepted message, hold one over a
    hold limit."""

    name = NAME
    stage = Stage.EOM
    requires: tuple[str, ...] = ()

    def run(self, context: CheckContext) -> CheckResult:
        findings = _earlier(context)
        which = applicable(context.policy, context.session)
        if findings is None or which is None:
            return CheckResult(NAME, Outcome.SKIPPED, reason="no limit for this traffic", detail="no-limit")
        if findings.store_failed:
            return CheckResult(NAME, Outcome.TEMPERROR, reason="state store unavailable (accepted: "
                               "ratelimit.on_store_error = accept)", detail="store", findings=findings)
        now = time.time()
        if findings.hold:
            try:
                _store(context).hold(which.key, findings.hold, now, which.keep)
            except StoreError:
                metrics.store_error(NAME)
            return CheckResult(NAME, Outcome.FAIL, Disposition.QUARANTINE, reason=f"held: {findings.hold}",
                               detail="hold", findings=findings)
        if not findings.reserved:
            return CheckResult(NAME, Outcome.PASS, findings=findings)
        held_by = [r.check for r in context.results if r.disposition in (Disposition.QUARANTINE, Disposition.DISCARD)]
        if held_by:  # not sent: not counted (finish releases the reservation)
            return CheckResult(NAME, Outcome.SKIPPED, reason=f"not counted: held by {held_by[0]}", detail="not-sent",
                               findings=findings)
        try:
            store = _store(context)
            exceeded = store.commit(reservation(context.policy, context.session, context.envelope, which), now)
            if exceeded is not None:  # the reservation expired and the room went to others
                result = _exceeded(context, which, exceeded, store, now, False)
                if isinstance(result.findings, RatelimitFindings) and result.findings.hold:
                    return replace(result, disposition=Disposition.QUARANTINE, reason=f"held: {result.reason}")
                return result
        except StoreError as error:
            return _store_failed(context, which.key, error)
        return CheckResult(NAME, Outcome.PASS, findings=RatelimitFindings(which.key, reserved=True, committed=True))
