"""The pipeline: strictest proposal wins, errors follow the on_error matrix, report mode."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import pytest

from policymilter.cli import explain
from policymilter.facts import Envelope, Session
from policymilter.listeners import listener_by_name
from policymilter.logs import SessionLog
from policymilter.outcome import CheckResult, Disposition, Outcome, SmtpReply
from policymilter.pipeline import CheckContext, Pipeline, Stage
from policymilter.policy import load_policy
from policymilter.service import snapshot_for
from tests.conftest import DEFAULT_POLICY
from tests.zonefake import ZoneResolver

REJECT = SmtpReply("550", "5.7.1", "no")


@dataclass
class Fixed:
    name: str
    outcome: Outcome
    disposition: Disposition = Disposition.ACCEPT
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
    return CheckContext(policy, listener_by_name(policy, listener), Session(conn_id="t", **facts), Envelope())


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
    assert run([spam], context(listener="submission", authenticated=True)).disposition is Disposition.ACCEPT
    assert spam.calls == 0


def test_disabled_table_turns_a_check_off_everywhere():
    spam = Fixed("spam", Outcome.SPAM, Disposition.REJECT)
    assert run([spam], context(["spam.enabled=false"])).disposition is Disposition.ACCEPT
    assert spam.calls == 0


@pytest.mark.parametrize(
    ("overrides", "check", "expected"),
    [
        ((), "antivirus", Disposition.TEMPFAIL),  # listener default: tempfail
        ((), "spam", Disposition.ACCEPT),  # default policy: spam errors accept on port 25
        (('listeners.smtp.unauthenticated.on_error={antivirus="reject"}',), "antivirus", Disposition.REJECT),
        (('listeners.smtp.on_error="accept"',), "antivirus", Disposition.ACCEPT),
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
    assert verdict.disposition is Disposition.ACCEPT
    assert verdict.results[0].would is Disposition.REJECT


@dataclass
class Slow:
    """A scanner that takes its time (a clean but slow virus scan)."""

    name: str = "antivirus"
    stage: Stage = Stage.EOM
    seconds: float = 0.4

    def run(self, context: CheckContext) -> CheckResult:
        time.sleep(self.seconds)
        return CheckResult(self.name, Outcome.CLEAN)


@dataclass
class BudgetProbe:
    """Records how much DNS time it was given when it started."""

    name: str = "dmarc"
    stage: Stage = Stage.EOM
    left: float = -1.0

    def run(self, context: CheckContext) -> CheckResult:
        _, budget = context.dns()
        self.left = budget.remaining()
        return CheckResult(self.name, Outcome.PASS)


def test_each_check_gets_its_own_dns_budget_a_slow_scan_cannot_spend_dmarcs():
    """Issue 8 item 10: the end-of-message budget used to start before clamd ran, so a slow
    clean scan left DMARC a spent budget (temperror, 451, on every retry)."""
    probe = BudgetProbe()
    policy = load_policy(DEFAULT_POLICY, ["dns.lifetime=0.3", "dns.timeout=0.3"]).policy
    snapshot = replace(snapshot_for(policy, pipeline=Pipeline([Slow(seconds=0.4), probe])),
                       resolver=ZoneResolver(lifetime=0.3, timeout=0.3))
    session = Session(conn_id="t", client_ip="192.0.2.1", daemon_name="smtp", daemon_port=25)
    explain(snapshot, session, listener_by_name(policy, "smtp"), b"From: a@b.example\n\nhi\n", "a@b.example",
            ["c@d.example"])
    assert probe.left > 0.25  # all of dns.lifetime, although the scan took longer than that
