"""ratelimit: per-login (and per-client) limits on what is sent, exact across workers and hosts.

Two steps of one transaction (state/model.py explains the sliding window):
- each RCPT: a locked login is refused (550 5.7.1; one locked meanwhile too); then
  the transaction's members so far (one message, its recipients as counting.py counts them,
  their domains, the client) are reserved in the store, atomically, if every limit still has
  room; the recipient that does not fit gets the limit's action: `tempfail` (451 4.7.1 naming
  the limit, for this recipient: a runaway client is stopped before it sends data), `lock`
  (the login is locked: 550 5.7.1) or `hold` (the message will go to Postfix's hold queue; the
  other limits still apply to it, and it counts against them: a hold limit never lifts the
  others, and the hold queue fills no faster than they allow).
- end of message, after every other check: an accepted (or held) message's reservation is
  committed (counted); one refused, quarantined by another check, aborted or cut is released
  (`finish`), so only accepted transactions count.
A store that fails applies `ratelimit.on_store_error`; the next step of the transaction asks it
again, and a transaction that met a failure is checked again in full when it is committed.
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
from policymilter.state import Exceeded, LockInfo, Reservation, Store, StoreError

NAME = "ratelimit"
# RFC 3463: 4.7.1 / 5.7.1 delivery not authorized (by local policy).
HELPDESK = "contact the helpdesk to have it unlocked"


@dataclass(frozen=True)
class RatelimitFindings(Findings):
    """Where this transaction stands with the limits (read by the later steps of the check)."""

    key: str
    reserved: bool = False  # the store holds a reservation for this transaction
    hold: str = ""  # why the message goes to the hold queue (a hold limit tripped)
    held_limits: tuple[str, ...] = ()  # the hold limits it tripped: not asked again for it
    committed: bool = False
    store_failed: bool = False  # the store failed during this transaction: checked in full at commit
    reported: bool = False  # report mode: a limit would have refused it (logged once, never counted)


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


def _store_failed(context: CheckContext, findings: RatelimitFindings, error: StoreError) -> CheckResult:
    metrics.store_error(NAME)
    policy, url = context.policy.ratelimit, context.policy.state.store
    # One warning per transaction; its later steps ask again, and say so at debug level.
    notice = Notice("store_failed", logging.DEBUG if findings.store_failed else logging.WARNING,
                    f"rate-limit store {url} failed ({error}); ratelimit.on_store_error = "
                    f"{policy.on_store_error}", (("store", url), ("action", policy.on_store_error)))
    findings = replace(findings, store_failed=True)
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


def _locked(which: Applicable, lock: LockInfo, findings: RatelimitFindings) -> CheckResult:
    who = safetext.for_reply(which.who, 64)
    since = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(lock.since))
    reply = SmtpReply("550", "5.7.1", f"Your account {who} is locked since {since}; {HELPDESK}")
    return CheckResult(NAME, Outcome.FAIL, Disposition.REJECT, reply, reason=f"login locked: {lock.reason}",
                       detail="locked", findings=findings)


def _exceeded(context: CheckContext, which: Applicable, exceeded: Exceeded, store: Store, now: float,
              findings: RatelimitFindings) -> CheckResult:
    """A limit is reached: its action, the limit_exceeded event, the metric, the admin's mail.
    `findings`: the transaction's so far (a reservation of earlier recipients stays theirs)."""
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
    if report:  # what enforcement would do is logged (and in the summary's mode=); nothing else happens
        findings = replace(findings, reported=True)
        would = {"hold": Disposition.QUARANTINE, "lock": Disposition.REJECT}.get(limit.action, Disposition.TEMPFAIL)
        return CheckResult(NAME, Outcome.FAIL, would, reason=reason, detail=f"{limit.action}:{limit.label}",
                           notices=notices, findings=findings)
    match limit.action:
        case "hold":
            held = replace(findings, hold=findings.hold or reason, held_limits=(*findings.held_limits, limit.label))
            return CheckResult(NAME, Outcome.FAIL, reason=reason + ": the message is held for review",
                               detail=f"hold:{limit.label}", notices=notices, findings=held)
        case "lock":
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


def _counted(context: CheckContext, which: Applicable, findings: RatelimitFindings) -> Reservation:
    """The transaction's reservation, without the counters of the hold limits it tripped."""
    full = replace(reservation(context.policy, context.session, context.envelope, which), renew=findings.reserved)
    labels = set(findings.held_limits)
    return replace(full, counters=tuple(c for c in full.counters if c.name not in labels)) if labels else full


def _apply(context: CheckContext, which: Applicable, findings: RatelimitFindings, store: Store, now: float,
           step: str) -> CheckResult:
    """Reserve (step "reserve") or commit ("commit") the transaction; a hold limit that trips
    is set aside and the others asked again, until one refuses or all have room."""
    results: list[CheckResult] = []
    while True:
        counted = _counted(context, which, findings)
        if step == "reserve":
            exceeded = store.reserve(counted, now)
        else:
            exceeded = store.commit(counted, now, recheck=findings.store_failed or not findings.reserved)
        if exceeded is None:
            break
        result = _exceeded(context, which, exceeded, store, now, findings)
        assert isinstance(result.findings, RatelimitFindings)
        if result.disposition is not Disposition.ACCEPT or result.findings.held_limits == findings.held_limits:
            return _merged(results, result)
        results.append(result)
        findings = result.findings
    done = replace(findings, reserved=True, committed=step == "commit")
    if results:
        return _merged(results, replace(results[-1], findings=done))
    return CheckResult(NAME, Outcome.PASS, findings=done)


def _merged(earlier: list[CheckResult], last: CheckResult) -> CheckResult:
    """One result for the step: the last, with the notices of the hold limits set aside before it."""
    notices = tuple(notice for result in earlier for notice in result.notices)
    return replace(last, notices=(*notices, *last.notices)) if notices else last


class RatelimitRcpt:
    """Each RCPT: a locked login is refused (the lock is checked here, not at MAIL FROM: a lock
    set during a transaction applies at its next RCPT too); then reserve the transaction's
    members, or apply the limit that has no room."""

    name = NAME
    stage = Stage.RCPT
    requires: tuple[str, ...] = ()

    def run(self, context: CheckContext) -> CheckResult:
        which = applicable(context.policy, context.session)
        if which is None:
            return CheckResult(NAME, Outcome.SKIPPED, reason="no limit for this traffic", detail="no-limit")
        findings = _earlier(context) or RatelimitFindings(which.key)
        if findings.reported:
            return CheckResult(NAME, Outcome.SKIPPED, reason="report mode: over a limit already", detail="reported",
                               findings=findings)
        now = time.time()
        try:
            store = _store(context)
            if context.session.authenticated and (lock := store.lock_info(which.key)) is not None:
                return _locked(which, lock, findings)
            if not which.limits:
                return CheckResult(NAME, Outcome.PASS, findings=findings)
            return _apply(context, which, findings, store, now, "reserve")
        except StoreError as error:
            return _store_failed(context, findings, error)

    def finish(self, context: CheckContext) -> None:
        """The transaction ended: what it reserved and did not commit is released."""
        findings = _earlier(context)
        if findings is None or not findings.reserved or findings.committed:
            return
        try:
            _store(context).release(findings.key, context.envelope.txn_id)
        except StoreError:
            metrics.store_error(NAME)  # the reservation expires by itself (state.RESERVATION_SECONDS)


class RatelimitEom:
    """End of message, after every other check: count an accepted message; hold one over a
    hold limit (counted against the others)."""

    name = NAME
    stage = Stage.EOM
    requires: tuple[str, ...] = ()

    def run(self, context: CheckContext) -> CheckResult:
        findings = _earlier(context)
        which = applicable(context.policy, context.session)
        if findings is None or which is None or not which.limits:
            return CheckResult(NAME, Outcome.SKIPPED, reason="no limit for this traffic", detail="no-limit")
        if findings.reported:  # report mode: it would have been refused, so it is not counted
            return CheckResult(NAME, Outcome.SKIPPED, reason="report mode: not counted", detail="reported",
                               findings=findings)
        held_by = [r.check for r in context.results if r.disposition in (Disposition.QUARANTINE, Disposition.DISCARD)
                   and r.check != NAME]
        if held_by:  # not sent: not counted (finish releases the reservation)
            return CheckResult(NAME, Outcome.SKIPPED, reason=f"not counted: held by {held_by[0]}", detail="not-sent",
                               findings=findings)
        now = time.time()
        try:
            store = _store(context)
            result = _apply(context, which, findings, store, now, "commit")
            final = result.findings if isinstance(result.findings, RatelimitFindings) else findings
            if result.disposition is Disposition.ACCEPT and final.hold:
                store.hold(which.key, final.hold, now)
                return replace(result, outcome=Outcome.FAIL, disposition=Disposition.QUARANTINE,
                               reason=f"held: {final.hold}", detail="hold")
            return result
        except StoreError as error:
            failed = _store_failed(context, findings, error)
            if findings.hold and failed.disposition is Disposition.ACCEPT:
                # the limits set it aside already: a store that fails now does not let it out
                return replace(failed, disposition=Disposition.QUARANTINE, reason=f"held: {findings.hold}; "
                               f"{failed.reason}")
            return failed
