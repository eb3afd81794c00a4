"""dmarc (the check): which author domain is judged, and what a bad From gets.

The evaluation itself is tested in test_dmarc_evaluate.py; here, on an in-memory zone, the
tricks that made the check judge a domain other than the one a mail client shows.
"""

from __future__ import annotations

import functools
import time
from dataclasses import replace

import pytest

from policymilter.checks import ALWAYS, REGISTRY
from policymilter.checks.dkim import DkimFindings
from policymilter.checks.dmarc import Dmarc
from policymilter.checks.spf import SpfFindings, SpfResult
from policymilter.cli import explain
from policymilter.dns import Budget
from policymilter.facts import Envelope, Session
from policymilter.listeners import listener_by_name
from policymilter.message import Message
from policymilter.outcome import CheckResult, Disposition, Outcome
from policymilter.pipeline import CheckContext, Pipeline, Stage
from policymilter.policy import PolicyError, load_policy
from policymilter.policy.model import Policy
from policymilter.service import load_checked, snapshot_for
from tests import authkit
from tests.conftest import DEFAULT_POLICY, OFFLINE
from tests.zonefake import ZoneResolver


@functools.cache
def _policy(*extra: str) -> Policy:
    return load_policy(DEFAULT_POLICY, [*OFFLINE, "dmarc.enabled=true", *extra]).policy


ZONE = (ZoneResolver()
        .txt_record("_dmarc.bank.example", "v=DMARC1; p=reject")
        .txt_record("_dmarc.evil.example", "v=DMARC1; p=none")
        .txt_record("_dmarc.xn--fa-hia.example", "v=DMARC1; p=reject")  # faß.example
        .txt_record("_dmarc.fass.example", "v=DMARC1; p=none"))


def run(header_from: str, spf_domain: str, *extra: str) -> CheckResult:
    """DMARC for a message whose MAIL FROM domain (`spf_domain`) passed SPF."""
    policy = _policy(*extra)
    raw = f"From: {header_from}\nTo: bob@example.test\nSubject: s\n\nbody\n".encode()
    spf = CheckResult("spf", Outcome.PASS, findings=SpfFindings(SpfResult("mailfrom", spf_domain, "pass")))
    dkim = CheckResult("dkim", Outcome.NONE, findings=DkimFindings())
    context = CheckContext(policy, listener_by_name(policy, "smtp"), Session(conn_id="t", client_ip="192.0.2.66"),
                           Envelope(f"x@{spf_domain}"), Message.from_bytes(raw), ZONE, Budget(time.monotonic() + 9),
                           (spf, dkim))
    return Dmarc().run(context)


@pytest.mark.parametrize(
    "header_from",
    [
        "attacker@evil.example <service@bank.example>",  # the issue's example
        "attacker@evil.example\n <service@bank.example>",
        "<attacker@evil.example> <service@bank.example>",
        "=?utf-8?q?service@bank.example?= <attacker@evil.example>",
        '"service@bank.example" <attacker@evil.example>',
        "attacker@evil.example, service@bank.example",
    ],
)
def test_a_from_readers_disagree_on_is_refused_not_passed(header_from):
    result = run(header_from, "evil.example")
    assert result.outcome is Outcome.PERMERROR and result.disposition is Disposition.REJECT
    assert result.reply is not None and result.reply.code == "550"
    assert result.reply.text.isascii() and "exactly one From address" in result.reply.text


def test_on_bad_from_accept_only_records_it():
    result = run("attacker@evil.example <service@bank.example>", "evil.example", 'dmarc.on_bad_from="accept"')
    assert result.outcome is Outcome.PERMERROR and result.disposition is Disposition.ACCEPT


def test_the_benign_control_passes():
    result = run("Service <service@evil.example>", "evil.example")
    assert result.outcome is Outcome.PASS and result.detail == "evil.example"


def test_idna2008_judges_the_domain_the_reader_sees():
    """IDNA2003 folds faß to fass: DMARC would ask fass.example (the attacker's, p=none, SPF
    aligned) about mail that shows faß.example (p=reject)."""
    result = run("CEO <ceo@faß.example>", "fass.example")
    assert result.outcome is Outcome.FAIL and result.disposition is Disposition.REJECT
    assert "xn--fa-hia.example" in result.reason


def test_a_from_domain_that_changes_under_mapping_is_a_bad_from():
    result = run("ceo@\uff42ank.example", "bank.example")  # full-width b: shown as bank, looked up as bank
    assert result.outcome is Outcome.PERMERROR and result.detail == "from-domain"


# --- issue 9: DMARC never reads "DKIM did not run" or "DKIM errored" as "no signature" --------

class Broken:
    """A DKIM check that cannot answer (a library bug, say)."""

    name = "dkim"
    stage = Stage.EOM
    requires: tuple[str, ...] = ()

    def run(self, context: CheckContext) -> CheckResult:
        raise RuntimeError("dkim library bug")


SIGNER = authkit.rsa_key("pass.test", "s1")
SIGNED = authkit.sign(authkit.message("Alice <alice@pass.test>", "bob@example.test", "aligned"), SIGNER)


def _explain(*overrides: str, dkim_check: object = None) -> dict:
    zone = (ZoneResolver().txt_record("pass.test", "v=spf1 -all").txt_record("_dmarc.pass.test", "v=DMARC1; p=reject")
            .txt_record(f"{SIGNER.owner}.pass.test", SIGNER.record))
    policy = load_policy(DEFAULT_POLICY, ["antivirus.enabled=false", "spam.enabled=false", *overrides]).policy
    checks = tuple(dkim_check if dkim_check is not None and c.name == "dkim" else c for c in REGISTRY)
    snapshot = replace(snapshot_for(policy, pipeline=Pipeline(checks, ALWAYS)), resolver=zone)
    session = Session(conn_id="t", client_ip="192.0.2.66", helo="mail.pass.test", daemon_name="smtp", daemon_port=25)
    return explain(snapshot, session, listener_by_name(policy, "smtp"), SIGNED, "alice@pass.test", ["bob@example.test"])


def test_an_aligned_dkim_signature_passes_dmarc_although_spf_fails():
    report = _explain()
    assert report["verdict"] == "accept"
    assert {c["check"]: c["outcome"] for c in report["checks"]}["dmarc"] == "pass"


def test_dkim_errored_is_a_temporary_failure_never_a_rejection(logwatch):
    logwatch.expect("check_crashed")
    report = _explain('listeners.smtp.unauthenticated.on_error={spam = "accept", dkim = "accept"}',
                      dkim_check=Broken())
    assert report["verdict"] == "tempfail", report["smtp_reply"]
    assert report["smtp_reply"].startswith("451 4.7.1 Temporary problem checking the sender's DMARC policy")
    assert "the DKIM check could not answer" in report["smtp_reply"]


@pytest.mark.parametrize("override", ['listeners.smtp.unauthenticated.checks=["spf","dmarc"]', "dkim.enabled=false"])
def test_a_policy_running_dmarc_without_dkim_is_refused_at_load(override):
    """The issue's example: with checks = ["spf","dmarc"] DMARC refused DKIM-aligned mail."""
    with pytest.raises(PolicyError) as caught:
        load_checked(DEFAULT_POLICY, [override])
    text = "\n".join(str(issue) for issue in caught.value.issues)
    assert text.startswith("-o:1: ")
    assert "dmarc reads what dkim found" in text or "dkim is disabled, but listeners.smtp runs dmarc" in text
