"""The pipeline: strictest proposal wins, errors follow the on_error matrix, report mode."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from policymilter.facts import Envelope, Session
from policymilter.listeners import door_by_name
from policymilter.logs import SessionLog
from policymilter.outcome import CheckResult, Disposition, Outcome, SmtpReply
from policymilter.pipeline import CheckContext, Pipeline, Stage
from policymilter.policy import load_policy
from tests.conftest import DEFAULT_POLICY

REJECT = SmtpReply("550", "5.7.1", "no")


@dataclass
class Fixed:
    name: str
    outcome: Outcome
    disposition: Disposition = Disposition.CONTINUE
    stage: Stage = Stage.EOM
    calls: int = 0

    def run(self, context: CheckContext) -> CheckResult:
        self.calls += 1
        if self.outcome is Outcome.ERROR and self.disposition is Disposition.REJECT:
            raise OSError("connection refused")
        reply = REJECT if self.disposition is Disposition.REJECT else None
        return CheckResult(self.name, self.outcome, self.disposition, reply, reason=f"{self.name} said so")


def context(overrides=(), listener="smtp", authenticated=False) -> CheckContext:
    policy = load_policy(DEFAULT_POLICY, overrides).policy
    facts = {"auth_login": "alice", "auth_mech": "PLAIN", "tls_version": "TLSv1.3"} if authenticated else {}
    return CheckContext(policy, door_by_name(policy, listener), Session(conn_id="t", **facts), Envelope())


def run(checks, ctx):
    return Pipeline(checks).run(Stage.EOM, ctx, SessionLog("t"))


def test_strictest_wins_and_later_checks_do_not_run():
    quarantine = Fixed("attachments", Outcome.BLOCKED, Disposition.QUARANTINE)
    reject = Fixed("antivirus", Outcome.INFECTED, Disposition.REJECT)
    spam = Fixed("spam", Outcome.HAM)
    verdict = run([quarantine, reject, spam], context())
    assert verdict.disposition is Disposition.REJECT and verdict.decided_by == "antivirus"
    assert spam.calls == 0


def test_checks_not_listed_for_the_traffic_class_do_not_run():
    spam = Fixed("spam", Outcome.SPAM, Disposition.REJECT)
    assert run([spam], context(listener="submission", authenticated=True)).disposition is Disposition.CONTINUE
    assert spam.calls == 0


def test_disabled_table_turns_a_check_off_everywhere():
    spam = Fixed("spam", Outcome.SPAM, Disposition.REJECT)
    assert run([spam], context(["spam.enabled=false"])).disposition is Disposition.CONTINUE
    assert spam.calls == 0


@pytest.mark.parametrize(
    ("overrides", "check", "expected"),
    [
        ((), "antivirus", Disposition.TEMPFAIL),  # listener default: tempfail
        ((), "spam", Disposition.CONTINUE),  # default policy: spam errors accept on port 25
        (('listeners.smtp.unauthenticated.on_error={antivirus="reject"}',), "antivirus", Disposition.REJECT),
        (('listeners.smtp.on_error="accept"',), "antivirus", Disposition.CONTINUE),
    ],
)
def test_error_matrix(logwatch, overrides, check, expected):
    logwatch.expect("check_crashed")
    broken = Fixed(check, Outcome.ERROR, Disposition.REJECT)  # raises
    verdict = run([broken], context(overrides))
    assert verdict.disposition is expected
    [result] = verdict.results
    assert result.outcome is Outcome.ERROR and result.log_value == "error:OSError"


def test_report_mode_logs_what_would_happen_and_does_nothing():
    spam = Fixed("spam", Outcome.SPAM, Disposition.REJECT)
    verdict = run([spam], context(['spam.mode="report"']))
    assert verdict.disposition is Disposition.CONTINUE
    assert verdict.results[0].would is Disposition.REJECT
