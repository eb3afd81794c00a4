"""sizelimit: site.max_message_size, at MAIL FROM (SIZE=) and at end of message."""

from __future__ import annotations

from policymilter.conversation import Conversation
from policymilter.facts import Session
from policymilter.service import load_snapshot
from tests.conftest import DEFAULT_POLICY, OFFLINE


def conversation(limit: int) -> tuple[Conversation, Session]:
    snapshot = load_snapshot(DEFAULT_POLICY, [*OFFLINE, f"site.max_message_size={limit}"])
    session = Session(conn_id="t", client_ip="192.0.2.1", helo="h.example", daemon_name="smtp", daemon_port=25)
    return Conversation(snapshot, session), session


def test_a_declared_size_over_the_limit_is_refused_at_mail_from():
    talk, session = conversation(1000)
    verdict = talk.mail(session, "<a@example.net>", ("SIZE=5000", "BODY=8BITMIME"))
    assert verdict.name == "reject" and str(verdict.reply).startswith("552 5.3.4 Message too big: 5000 bytes")


def test_a_received_message_over_the_limit_is_refused_and_not_kept_in_full():
    talk, session = conversation(1000)
    assert not talk.mail(session, "<a@example.net>").stops
    talk.rcpt("<u@example.test>")
    talk.data("Q1")
    talk.header("Subject", b" big")
    for _ in range(10):
        talk.body(b"x" * 998 + b"\r\n")
    assert talk.message is not None and talk.message.body_size == 10_000  # counted ...
    assert len(talk.message.body_bytes()) <= talk.message.cap  # ... but not spooled past the cap
    verdict = talk.end_of_message("Q1")
    assert verdict.name == "reject" and str(verdict.reply).startswith("552 5.3.4")


def test_no_limit_by_default():
    talk, session = conversation(0)
    assert not talk.mail(session, "<a@example.net>", ("SIZE=999999999",)).stops
