"""spam: spamd's score against the policy's thresholds, and the headers it leaves, as a table.

A stand-in spamd (tests/scannerfake.py) gives the score; the real spamd is in the integration
tests. Only the policy's thresholds decide (spamd's own required score is informational).
"""

from __future__ import annotations

import functools

import pytest

from policymilter.checks.spam import Spam
from policymilter.facts import Envelope, Session
from policymilter.listeners import listener_by_name
from policymilter.message import Message
from policymilter.outcome import AddHeader, ChangeHeader, Disposition, Outcome, RemoveHeader
from policymilter.pipeline import CheckContext
from policymilter.policy import load_policy
from policymilter.policy.model import Policy
from tests.conftest import DEFAULT_POLICY, OFFLINE
from tests.scannerfake import serving, spamd_answer, unused_endpoint

RAW = b"From: a@example.net\nTo: b@example.test\nSubject: offer\nX-Spam-Status: No, forged\n\nbuy now\n"


@functools.cache
def _policy(*overrides: str) -> Policy:
    return load_policy(DEFAULT_POLICY, [*OFFLINE, *overrides]).policy


def run(endpoint: str, *overrides: str, session: Session | None = None):
    policy = _policy(f'spam.servers=["{endpoint}"]', "spam.timeout=5", *overrides)
    context = CheckContext(policy, listener_by_name(policy, "smtp"), session or Session(conn_id="t"),
                           Envelope(queue_id="4Q1234"), Message.from_bytes(RAW))
    return Spam().run(context)


def added(result) -> dict[str, str]:
    return {a.name: a.value for a in result.actions if isinstance(a, AddHeader)}


@pytest.mark.parametrize(
    ("score", "overrides", "outcome", "disposition", "flag"),
    [
        (1.0, (), Outcome.HAM, Disposition.ACCEPT, None),
        (4.9, (), Outcome.HAM, Disposition.ACCEPT, None),
        (5.0, (), Outcome.SPAM, Disposition.ACCEPT, "YES"),  # tag_score 5.0: tagged
        (14.9, (), Outcome.SPAM, Disposition.ACCEPT, "YES"),
        (15.0, (), Outcome.SPAM, Disposition.REJECT, None),  # reject_score 15.0
        (9.0, ("spam.quarantine_score=8.0",), Outcome.SPAM, Disposition.QUARANTINE, "YES"),
        (1000.0, ("spam.reject_score=1000.0",), Outcome.SPAM, Disposition.REJECT, None),  # GTUBE
        (-3.5, (), Outcome.HAM, Disposition.ACCEPT, None),
    ],
)
def test_scores_against_the_policys_thresholds(score, overrides, outcome, disposition, flag):
    with serving("spamd", spamd_answer(score, threshold=99.0)) as endpoint:  # spamd's own threshold ignored
        result = run(endpoint, *overrides)
    assert (result.outcome, result.disposition) == (outcome, disposition)
    if disposition is Disposition.REJECT:
        assert str(result.reply).startswith("550 5.7.1 Message refused: it looks like spam (score")
        return
    headers = added(result)
    assert headers["X-Spam-Score"] == f"{score:.1f}" and headers.get("X-Spam-Flag") == flag
    assert RemoveHeader("X-Spam-Status", 1) in result.actions  # the sender's own is gone


def test_the_subject_tag_is_prefixed_to_tagged_spam_only():
    with serving("spamd", spamd_answer(7.0)) as endpoint:
        result = run(endpoint, 'spam.subject_tag="[SPAM]"')
    [change] = [a for a in result.actions if isinstance(a, ChangeHeader)]
    assert (change.name, change.value) == ("Subject", "[SPAM] offer")
    with serving("spamd", spamd_answer(1.0)) as endpoint:
        assert not [a for a in run(endpoint, 'spam.subject_tag="[SPAM]"').actions if isinstance(a, ChangeHeader)]


def test_spamd_down_is_an_error_that_still_says_not_scanned():
    result = run(unused_endpoint())
    assert result.outcome is Outcome.ERROR and result.detail == "spamd"
    assert added(result)["X-Spam-Status"].startswith("Unknown, not scanned")


def test_a_message_over_max_size_is_not_scanned_and_forged_headers_go():
    result = run(unused_endpoint(), "spam.max_size=10")
    assert (result.outcome, result.detail) == (Outcome.SKIPPED, "size")
    assert RemoveHeader("X-Spam-Status", 1) in result.actions
    assert added(result)["X-Spam-Status"] == "Unknown, not scanned: too large"


@pytest.mark.parametrize("answer", [b"SPAMD/1.1 76 EX_PROTOCOL\r\n\r\n",
                                    b"SPAMD/1.1 0 EX_OK\r\nSpam: True ; lots / 5\r\n\r\n", b"garbage"])
def test_a_malformed_answer_is_an_error(answer):
    with serving("spamd", answer) as endpoint:
        assert run(endpoint).outcome is Outcome.ERROR


def test_only_rule_names_from_spamd_reach_our_header():
    """What answers at spam.servers cannot write into X-Spam-Status (a line break would start a
    header of its choosing): symbols that are not SpamAssassin rule names are dropped."""
    answer = spamd_answer(1.0, symbols="BAYES_00,X\nX-Injected: yes,\u00dcBER,URIBL_BLOCKED")
    with serving("spamd", answer) as endpoint:
        result = run(endpoint)
    assert added(result)["X-Spam-Status"] == "No, score=1.0 required=5.0 tests=BAYES_00,URIBL_BLOCKED"


def test_spamd_sees_the_received_header_postfix_adds_but_does_not_pass_to_milters():
    """Hostile-suite finding: without it spamd's network rules never see the client."""
    seen: list[bytes] = []
    session = Session(conn_id="t", client_ip="203.0.113.7", client_name="client.example.net",
                      helo="mail (evil) [x]\r\nX-Injected: 1", mta_name="mx.example.org", tls_version="TLSv1.3")
    with serving("spamd", spamd_answer(1.0), seen) as endpoint:
        result = run(endpoint, session=session)
    assert result.outcome is Outcome.HAM
    [request] = seen
    head, _, rest = request.partition(b"\r\n\t")
    assert head == b"Received: from mail__evil__[x]__X-Injected:_1 (client.example.net [203.0.113.7])"
    assert rest.startswith(b"by mx.example.org (Postfix) with ESMTPS id 4Q1234;\r\n\t")
    assert request.split(b"\r\n", 3)[3].startswith(b"From: a@example.net\r\n")  # then the message itself
