"""Run the checks of one stage in order and keep the strictest proposal.

The pipeline owns the policy around checks: which run (listener and traffic class), the
report mode, and what an error does (the listener's `on_error` matrix). A check that raises is
logged once with its traceback and becomes `error`; the matrix decides what that means.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any, Protocol, TypeVar

from policymilter.dns import Budget, Resolver
from policymilter.facts import Envelope, Session
from policymilter.frozen import evolve
from policymilter.listeners import ListenerMatch
from policymilter.logs import SUMMARY_KEYS, SUMMARY_TAIL, event
from policymilter.message import Message
from policymilter.outcome import (
    REJECT_ERROR,
    TEMPFAIL_ERROR,
    CheckResult,
    Disposition,
    ErrorAction,
    Findings,
    Outcome,
    Verdict,
    decide,
)
from policymilter.policy.model import Policy
from policymilter.resources import Resources

F = TypeVar("F", bound=Findings)


class Missing(StrEnum):
    """Why a check's findings are not there: never to be read as "it found nothing"."""

    NOT_RUN = "did not run"  # not listed, disabled, or an earlier check ended the stage
    ERRORED = "errored"  # it could not answer (scanner down, DNS gone, a bug)


class Stage(StrEnum):
    MAIL = "mail"
    RCPT = "rcpt"  # once per recipient; a refusal refuses that recipient only
    EOM = "eom"


@dataclass(frozen=True)
class CheckContext:
    """Everything a check may look at; checks keep no state of their own."""

    policy: Policy
    listener: ListenerMatch
    session: Session
    envelope: Envelope
    message: Message | None = None
    resolver: Resolver | None = None
    budget: Budget | None = None  # this check's DNS time (the pipeline starts one per check)
    # What earlier checks of this transaction found (MAIL stage ones included).
    results: tuple[CheckResult, ...] = ()
    # Loaded with the policy: the sender map, the signing keys.
    resources: Resources = field(default_factory=Resources)

    def result_of(self, check: str) -> CheckResult | None:
        return next((result for result in self.results if result.check == check), None)

    @property
    def content(self) -> Message:
        """The message, for checks at end of message: the Conversation always has one then (an
        empty one for a client that sent nothing)."""
        if self.message is None:
            raise RuntimeError("an end-of-message check ran without the message")
        return self.message

    def findings(self, check: str, kind: type[F]) -> F | Missing:
        """What an earlier check (one this check `requires`) found, or why it is not there."""
        result = self.result_of(check)
        if result is None:
            return Missing.NOT_RUN
        if result.outcome is Outcome.ERROR or not isinstance(result.findings, kind):
            # An answer without its findings is a check that failed somewhere: not "nothing".
            return Missing.ERRORED
        return result.findings

    def dns(self) -> tuple[Resolver, Budget]:
        """The policy's resolver and this check's lookup budget (checks that need DNS)."""
        resolver = self.resolver or Resolver()
        return resolver, self.budget or resolver.budget()


class Check(Protocol):
    """A check: its one word, the stage it runs at, and the checks whose findings it reads
    (they must run before it: checks/__init__.py orders them, and the policy loader refuses a
    listener that runs it without them)."""

    name: str
    stage: Stage
    requires: tuple[str, ...]

    def run(self, context: CheckContext) -> CheckResult: ...


def error_verdict(action: ErrorAction) -> tuple[Disposition, Any]:
    match action:
        case ErrorAction.TEMPFAIL:
            return Disposition.TEMPFAIL, TEMPFAIL_ERROR
        case ErrorAction.REJECT:
            return Disposition.REJECT, REJECT_ERROR
        case _:
            return Disposition.ACCEPT, None


class Pipeline:
    """An ordered list of checks; `always` ones run on every listener (origin)."""

    def __init__(self, checks: Sequence[Check], always: Sequence[Check] = ()) -> None:
        self.checks = tuple(checks)
        self.always = tuple(always)
        clash = {c.name for c in (*self.checks, *self.always)} & {*SUMMARY_KEYS, *SUMMARY_TAIL}
        if clash:
            raise ValueError(f"check names {sorted(clash)} collide with summary line keys")

    def selected(self, stage: Stage, context: CheckContext) -> list[Check]:
        wanted = set(context.listener.settings.traffic(context.session.authenticated).checks)
        chosen = [check for check in self.always if check.stage == stage]
        for check in self.checks:
            if check.stage != stage or check.name not in wanted:
                continue
            table = context.policy.check_table(check.name)
            if table is None or table.enabled:
                chosen.append(check)
        return chosen

    def run(self, stage: Stage, context: CheckContext, log: logging.LoggerAdapter[Any]) -> Verdict:
        results: list[CheckResult] = []
        for check in self.selected(stage, context):
            result = self._run_one(check, evolve(context, results=(*context.results, *results)), log)
            results.append(result)
            if result.disposition in (Disposition.REJECT, Disposition.TEMPFAIL):
                break  # cheap checks run first: no need to pay for the rest
        return decide(results)

    def finish(self, context: CheckContext, log: logging.LoggerAdapter[Any]) -> None:
        """The transaction ended (accepted, refused, aborted or cut): each check that ran and has
        a `finish` tidies up. Never raises: the next transaction must not pay for it."""
        ran = {result.check for result in context.results}
        for check in self.checks:
            finish = getattr(check, "finish", None)
            if finish is None or check.name not in ran:
                continue
            try:
                finish(context)
            except Exception as error:
                event(log, logging.ERROR, "check_crashed", f"check {check.name} raised {error!r} at the end of "
                      "the transaction", exc_info=True, check=check.name)

    def _run_one(self, check: Check, context: CheckContext, log: logging.LoggerAdapter[Any]) -> CheckResult:
        started = time.perf_counter()
        if context.resolver is not None:
            # Each check's DNS lookups get their own dns.lifetime, from when the check starts: a
            # slow virus scan must not spend DMARC's time (policy/timing.py adds the budgets up
            # against Postfix's milter timeouts when the policy loads).
            context = evolve(context, budget=context.resolver.budget())
        try:
            result = check.run(context)
        except Exception as error:  # any bug in a check becomes `error`, never a crash
            event(log, logging.ERROR, "check_crashed", f"check {check.name} raised {error!r}",
                  exc_info=True, check=check.name)
            result = CheckResult(check.name, Outcome.ERROR, reason=f"{type(error).__name__}: {error}"[:300],
                                 detail=type(error).__name__)
        elapsed = (time.perf_counter() - started) * 1000
        if result.outcome is Outcome.ERROR:
            action = context.listener.settings.error_action(check.name, context.session.authenticated)
            disposition, reply = error_verdict(action)
            if disposition is Disposition.TEMPFAIL and result.reply is not None and result.reply.code.startswith("4"):
                reply = result.reply  # the check's own words for "try again later"
            result = replace(result, disposition=disposition, reply=reply,
                             reason=result.reason or f"{check.name} failed", detail=result.detail or action.value,
                             # headers an erroring check proposes ("scan skipped") only make sense if
                             # the message is accepted anyway
                             actions=result.actions if disposition is Disposition.ACCEPT else ())
        table = context.policy.check_table(check.name)
        if table is not None and table.mode == "report" and result.disposition is not Disposition.ACCEPT:
            result = replace(result, would=result.disposition, disposition=Disposition.ACCEPT,
                             reply=None, actions=())
        return evolve(result, elapsed_ms=elapsed)
