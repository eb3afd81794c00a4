"""antivirus: clamd's answer and the policy's on_infected / on_oversize, as a table.

A stand-in clamd (tests/scannerfake.py) answers as told; the real clamd is in the integration
tests. What an error does (on_error) is the pipeline's business: here the check says `error`.
"""

from __future__ import annotations

import functools

import pytest

from policymilter.checks.antivirus import Antivirus
from policymilter.facts import Envelope, Session
from policymilter.listeners import listener_by_name
from policymilter.message import Message
from policymilter.outcome import Disposition, Outcome
from policymilter.pipeline import CheckContext
from policymilter.policy import load_policy
from policymilter.policy.model import Policy
from tests.conftest import DEFAULT_POLICY, OFFLINE
from tests.scannerfake import serving, unused_endpoint

RAW = b"From: a@example.net\nTo: b@example.test\nSubject: s\n\nhello\n"


@functools.cache
def _policy(*overrides: str) -> Policy:
    return load_policy(DEFAULT_POLICY, [*OFFLINE, *overrides]).policy


def run(endpoint: str, *overrides: str, raw: bytes = RAW):
    policy = _policy(f'antivirus.servers=["{endpoint}"]', "antivirus.timeout=5", *overrides)
    context = CheckContext(policy, listener_by_name(policy, "smtp"), Session(conn_id="t"), Envelope(),
                           Message.from_bytes(raw))
    return Antivirus().run(context)


@pytest.mark.parametrize(
    ("answer", "overrides", "outcome", "disposition", "reply"),
    [
        (b"stream: OK\0", (), Outcome.CLEAN, Disposition.ACCEPT, None),
        (b"stream: Eicar-Signature FOUND\0", (), Outcome.INFECTED, Disposition.REJECT,
         "550 5.7.1 Message refused: it contains a virus (Eicar-Signature)"),
        (b"stream: Eicar-Signature FOUND\0", ('antivirus.on_infected="quarantine"',), Outcome.INFECTED,
         Disposition.QUARANTINE, None),
        (b"stream: Eicar-Signature FOUND\0", ('antivirus.on_infected="discard"',), Outcome.INFECTED,
         Disposition.DISCARD, None),
        (b"stream: Evil\r\n550 x FOUND\0", (), Outcome.INFECTED, Disposition.REJECT,
         "550 5.7.1 Message refused: it contains a virus (Evil??550 x)"),  # a name never breaks the reply
        (b"INSTREAM size limit exceeded. ERROR\0", (), Outcome.ERROR, Disposition.ACCEPT,
         "451 4.7.1 Temporary problem scanning this message for viruses: please try again later"),
    ],
    ids=["clean", "infected", "quarantine", "discard", "hostile-name", "clamd-error"],
)
def test_verdicts(answer, overrides, outcome, disposition, reply):
    with serving("clamd", answer) as endpoint:
        result = run(endpoint, *overrides)
    assert (result.outcome, result.disposition) == (outcome, disposition)
    assert (str(result.reply) if result.reply else None) == reply


def test_a_dead_clamd_is_an_error_the_pipeline_answers():
    result = run(unused_endpoint())
    assert result.outcome is Outcome.ERROR and result.detail == "clamd"


def test_failover_to_the_next_server():
    with serving("clamd", b"stream: OK\0") as good:
        policy_servers = f'antivirus.servers=["{unused_endpoint()}", "{good}"]'
        result = run(good, policy_servers)
    assert result.outcome is Outcome.CLEAN and good in result.reason


@pytest.mark.parametrize(
    ("on_oversize", "disposition", "reply"),
    [("skip", Disposition.ACCEPT, None), ("reject", Disposition.REJECT, "552 5.3.4"),
     ("tempfail", Disposition.TEMPFAIL, "451 4.7.1")],
)
def test_oversized_messages_follow_on_oversize(on_oversize, disposition, reply):
    result = run(unused_endpoint(), "antivirus.max_size=10", f'antivirus.on_oversize="{on_oversize}"')
    assert (result.outcome, result.detail, result.disposition) == (Outcome.SKIPPED, "size", disposition)
    assert (str(result.reply)[:9] if result.reply else None) == reply
