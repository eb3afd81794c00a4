"""spf: both identities through pyspf on an in-memory zone, and what the check proposes.

The zone answers as an authoritative server would (tests/zonefake.py); the real nsd is in
tests/integration/test_sender_auth.py. The findings DMARC reads are typed (SpfFindings), also
when there was nothing to check.
"""

from __future__ import annotations

import functools
import time

import pytest

from policymilter.checks.spf import Spf, SpfFindings
from policymilter.dns import Budget
from policymilter.facts import Envelope, Session
from policymilter.listeners import listener_by_name
from policymilter.outcome import Disposition, Outcome
from policymilter.pipeline import CheckContext
from policymilter.policy import load_policy
from policymilter.policy.model import Policy
from tests.conftest import DEFAULT_POLICY, OFFLINE
from tests.zonefake import ZoneResolver

CLIENT = "192.0.2.25"


def zone() -> ZoneResolver:
    records = {
        "pass.test": "v=spf1 ip4:192.0.2.25 -all",
        "fail.test": "v=spf1 ip4:198.51.100.1 -all",
        "soft.test": "v=spf1 ~all",
        "neutral.test": "v=spf1 ?all",
        "mail.pass.test": "v=spf1 a -all",
        "xn--bcher-kva.test": "v=spf1 ip4:192.0.2.25 -all",  # bücher.test
    }
    resolver = ZoneResolver(failing=("slow.test",))
    for name, text in records.items():
        resolver.txt_record(name, text)
    resolver.add("mail.pass.test", "A", CLIENT)
    resolver.txt_record("perm.test", "v=spf1 -all").txt_record("perm.test", "v=spf1 +all")  # two records
    return resolver


@functools.cache
def _policy(*overrides: str) -> Policy:
    return load_policy(DEFAULT_POLICY, [*OFFLINE, "spf.enabled=true", *overrides]).policy


def run(mail_from: str, helo: str = "mail.pass.test", ip: str | None = CLIENT, *overrides: str):
    policy = _policy(*overrides)
    context = CheckContext(policy, listener_by_name(policy, "smtp"), Session(conn_id="t", client_ip=ip, helo=helo),
                           Envelope(mail_from), None, zone(), Budget(time.monotonic() + 10))
    return Spf().run(context)


@pytest.mark.parametrize(
    ("mail_from", "outcome", "detail", "domain"),
    [
        ("a@pass.test", Outcome.PASS, "mailfrom", "pass.test"),
        ("a@fail.test", Outcome.FAIL, "mailfrom", "fail.test"),
        ("a@soft.test", Outcome.SOFTFAIL, "mailfrom", "soft.test"),
        ("a@neutral.test", Outcome.NEUTRAL, "mailfrom", "neutral.test"),
        ("a@none.test", Outcome.NONE, "mailfrom", "none.test"),
        ("a@perm.test", Outcome.PERMERROR, "mailfrom", "perm.test"),  # RFC 7208 §4.5: two records
        ("a@slow.test", Outcome.TEMPERROR, "mailfrom", "slow.test"),
        ("a@bücher.test", Outcome.PASS, "mailfrom", "xn--bcher-kva.test"),  # IDNA2008 A-label
        ("", Outcome.PASS, "helo", "mail.pass.test"),  # RFC 7208 §2.4: the null sender is postmaster@HELO
        ("a@not a domain", Outcome.NONE, "mailfrom", "not a domain"),
    ],
)
def test_identities(mail_from, outcome, detail, domain):
    result = run(mail_from)
    assert (result.outcome, result.detail) == (outcome, detail), result.reason
    assert isinstance(result.findings, SpfFindings) and result.findings.main is not None
    assert result.findings.main.domain == domain
    assert result.disposition is Disposition.ACCEPT  # DMARC decides (spf.on_fail = "dmarc")


def test_helo_is_checked_as_well():
    findings = run("a@fail.test").findings
    assert isinstance(findings, SpfFindings) and findings.helo is not None
    assert (findings.helo.domain, findings.helo.result) == ("mail.pass.test", "pass")


def test_nothing_to_check_still_hands_over_findings():
    for result in (run("a@pass.test", ip=None), run("", helo="")):
        assert result.outcome is Outcome.NONE
        assert result.findings == SpfFindings()  # found nothing, which is not "did not run"


def test_on_fail_reject_refuses_at_mail_from_with_a_safe_explanation():
    result = run("a@fail.test", "mail.pass.test", CLIENT, 'spf.on_fail="reject"')
    assert result.disposition is Disposition.REJECT
    assert str(result.reply).startswith("550 5.7.23 SPF check failed: fail.test does not allow 192.0.2.25")
    assert run("a@soft.test", "mail.pass.test", CLIENT, 'spf.on_fail="reject"').disposition is Disposition.ACCEPT
