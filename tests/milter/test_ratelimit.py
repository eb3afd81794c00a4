"""ratelimit through the adapter (TestCtx, macros per stage as Postfix sends them), on SQLite.

The end-to-end proofs (parallel sessions through Postfix with two workers, Redis shared by two
milters, the store stopped) are in tests/integration/test_ratelimit_postfix.py."""

from __future__ import annotations

from pathlib import Path

import Milter
import pytest

from policymilter.service import Service
from policymilter.state import open_store
from tests.conftest import DEFAULT_POLICY, OFFLINE
from tests.milter.fakemta import FakeMTA, SmtpState

MESSAGE = b"From: Alice <alice@example.org>\nTo: bob@elsewhere.test\nSubject: hi\n\nhello\n"


def limits(*rows: str) -> list[str]:
    return [f"ratelimit.limits=[{', '.join(rows)}]"]


def service(tmp_path: Path, *overrides: str) -> Service:
    return Service(DEFAULT_POLICY, [*OFFLINE, "site.domains=[\"example.org\"]",
                                    f"state.store=\"sqlite:{tmp_path}/s.db\"", *overrides])


def submission(svc: Service, login: str = "alice", ip: str = "198.51.100.7") -> FakeMTA:
    mta = FakeMTA(svc, SmtpState(daemon_name="submission", daemon_port=587))
    mta.connect(ip)
    mta.starttls()
    mta.helo()
    mta.auth(login)
    return mta


def send(mta: FakeMTA, *rcpts: str, sender: str = "<alice@example.org>") -> tuple[int, list[str]]:
    """MAIL, every RCPT (a refused one does not end the transaction, as in Postfix), then the
    message if any recipient was accepted; the final answer and each refused RCPT's reply."""
    refused: list[str] = []
    answer = mta.mail(sender)
    if answer != Milter.CONTINUE:
        return answer, [str(mta.reply)]
    accepted = 0
    for rcpt in rcpts:
        if mta.rcpt(f"<{rcpt}>") == Milter.CONTINUE:
            accepted += 1
        else:
            refused.append(str(mta.reply))
    if not accepted:
        mta.abort()
        return Milter.TEMPFAIL, refused
    return mta.data(MESSAGE), refused


def test_a_limit_of_three_lets_three_through(tmp_path, logwatch):
    svc = service(tmp_path, *limits('{key = "login", messages = 3, per = 3600, name = "hourly"}'))
    mta = submission(svc)
    answers = [send(mta, "bob@elsewhere.test") for _ in range(5)]
    assert [a for a, _ in answers] == [Milter.ACCEPT] * 3 + [Milter.TEMPFAIL] * 2
    assert answers[3][1] == ["451 4.7.1 Sending limit reached for alice: 3 messages per 3600 s (limit hourly); "
                             "please try again later"]
    logwatch.expect("limit_exceeded")
    [first, *_] = logwatch.fields("limit_exceeded")
    assert {k: first[k] for k in ("login", "limit", "count", "max", "window", "action")} == {
        "login": "alice", "limit": "hourly", "count": 4, "max": 3, "window": 3600, "action": "tempfail"}
    summaries = logwatch.fields("summary")
    assert [s["verdict"] for s in summaries] == ["accept"] * 3 + ["tempfail"] * 2
    assert summaries[3]["stage"] == "rcpt" and summaries[3]["decided_by"] == "ratelimit"
    assert summaries[0]["ratelimit"] == "pass" and summaries[3]["ratelimit"] == "fail:tempfail:hourly"


def test_recipients_counted_once_after_case_and_detail(tmp_path, logwatch):
    """A mailbox of the site's domains is one recipient however it is spelt; a remote one loses
    only its domain's case (Postfix delivers each spelling separately, and the remote site's
    rules are unknown); an unusual address is never merged with another."""
    svc = service(tmp_path, *limits('{messages = 100, recipients = 5}'))
    mta = submission(svc)
    answer, refused = send(mta, "Bob@Example.ORG", "bob+news@example.org", "BOB+x@EXAMPLE.ORG.", "\"bob\"@example.org",
                           "carol@example.org", "dave@elsewhere.test", "dave@ELSEWHERE.test", "Dave@elsewhere.test",
                           "dave+x@elsewhere.test", "erin@other.test")
    assert answer == Milter.ACCEPT
    assert len(refused) == 1 and refused[0].startswith("451 4.7.1 Sending limit reached for alice: 5 recipients")
    logwatch.expect("limit_exceeded")
    store = open_store(f"sqlite:{tmp_path}/s.db")
    usage = store.usage("login:alice", __import__("time").time(), (3600.0,))
    assert sorted(r for r, _ in usage.recipients) == [
        "Dave@elsewhere.test", "bob@example.org", "carol@example.org", "dave+x@elsewhere.test", "dave@elsewhere.test"]


def test_only_accepted_messages_count(tmp_path, logwatch):
    """A transaction refused by another check, or aborted, releases what it reserved."""
    svc = service(tmp_path, *limits('{messages = 1}'))
    mta = submission(svc)
    assert send(mta, "bob@elsewhere.test", sender="<mallory@example.org>")[0] == Milter.REJECT  # sender check
    mta.mail("<alice@example.org>")
    assert mta.rcpt("<bob@elsewhere.test>") == Milter.CONTINUE
    mta.abort()
    assert send(mta, "bob@elsewhere.test")[0] == Milter.ACCEPT
    assert send(mta, "bob@elsewhere.test")[0] == Milter.TEMPFAIL
    logwatch.expect("limit_exceeded")


def test_login_spellings_share_one_count(tmp_path, logwatch):
    svc = service(tmp_path, "sender.enabled=false", *limits('{messages = 2}'))
    assert send(submission(svc, "alice"), "bob@elsewhere.test")[0] == Milter.ACCEPT
    assert send(submission(svc, "ALICE"), "bob@elsewhere.test")[0] == Milter.ACCEPT
    assert send(submission(svc, "Alice"), "bob@elsewhere.test")[0] == Milter.TEMPFAIL
    logwatch.expect("limit_exceeded")


def test_hold_accepts_into_the_hold_queue_and_counts_it(tmp_path, logwatch):
    svc = service(tmp_path, *limits('{messages = 1, action = "hold", name = "hold1"}'))
    mta = submission(svc)
    assert send(mta, "bob@elsewhere.test")[0] == Milter.ACCEPT and mta.ctx.quarantined is None
    assert send(mta, "bob@elsewhere.test")[0] == Milter.ACCEPT
    assert mta.ctx.quarantined == "held: limit hold1: 1 of 1 messages per 3600 s already used"
    summary = logwatch.fields("summary")[-1]
    assert summary["verdict"] == "quarantine" and summary["decided_by"] == "ratelimit"
    usage = open_store(f"sqlite:{tmp_path}/s.db").usage("login:alice", __import__("time").time(), (3600.0,))
    # held, and counted: a hold limit never lifts the others, nor lets the hold queue fill faster
    assert len(usage.held) == 1 and usage.counts[(__import__("policymilter.state").state.Dimension.MESSAGES,
                                                   3600.0)] == 2
    logwatch.expect("limit_exceeded")


def test_lock_refuses_every_later_transaction_until_cleared(tmp_path, logwatch):
    svc = service(tmp_path, *limits('{messages = 1, action = "lock"}'))
    mta = submission(svc)
    assert send(mta, "bob@elsewhere.test")[0] == Milter.ACCEPT
    answer, refused = send(mta, "bob@elsewhere.test")
    assert refused[0].startswith("550 5.7.1 Your account alice is locked: it reached its sending limit of 1 messages")
    assert "contact the helpdesk" in refused[0]
    answer, replies = send(submission(svc), "bob@elsewhere.test")
    # refused at each RCPT (a lock set during a transaction applies at its next RCPT too)
    assert answer != Milter.ACCEPT and replies[0].startswith("550 5.7.1 Your account alice is locked since")
    assert open_store(f"sqlite:{tmp_path}/s.db").clear("login:alice")
    assert send(submission(svc), "bob@elsewhere.test")[0] == Milter.ACCEPT
    logwatch.expect("limit_exceeded")


def test_report_mode_logs_and_refuses_nothing(tmp_path, logwatch):
    svc = service(tmp_path, "ratelimit.mode=\"report\"", *limits('{messages = 1, action = "lock"}'))
    mta = submission(svc)
    assert [send(mta, "bob@elsewhere.test")[0] for _ in range(3)] == [Milter.ACCEPT] * 3
    assert open_store(f"sqlite:{tmp_path}/s.db").lock_info("login:alice") is None
    assert [f["action"] for f in logwatch.fields("limit_exceeded")] == ["report:lock"] * 2
    assert logwatch.fields("summary")[-1]["mode"] == "report:ratelimit:reject"
    logwatch.expect("limit_exceeded")


@pytest.mark.parametrize(("on_error", "expected"), [("accept", Milter.ACCEPT), ("tempfail", Milter.TEMPFAIL)])
def test_store_unusable_applies_on_store_error(tmp_path, logwatch, on_error, expected):
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    svc = Service(DEFAULT_POLICY, [*OFFLINE, "site.domains=[\"example.org\"]",
                                   f"state.store=\"sqlite:{blocked}/s.db\"",
                                   f"ratelimit.on_store_error=\"{on_error}\""])
    mta = submission(svc)
    answer, replies = send(mta, "bob@elsewhere.test")
    assert answer == expected
    if expected == Milter.TEMPFAIL:
        assert replies == ["451 4.3.0 Temporary local problem checking the sending limits: please try again later"]
    summary = logwatch.fields("summary")[-1]
    assert summary["ratelimit"] == "temperror:store"
    logwatch.expect("store_failed", "store_unusable")
    [unusable] = logwatch.fields("store_unusable")  # said at start, before any mail
    assert unusable["action"] == on_error
    # one warning per transaction; its later steps ask the store again (at debug level)
    assert len([r for r in logwatch.events("store_failed") if r.levelname == "WARNING"]) == 1


def test_unauthenticated_traffic_gets_client_limits_only_where_listed(tmp_path, logwatch):
    svc = service(tmp_path, "listeners.smtp.unauthenticated.checks=[\"ratelimit\"]",
                  *limits('{key = "client", messages = 1}'))
    for ip, answers in (("2001:db8:1:2::1", [Milter.ACCEPT, Milter.TEMPFAIL]),
                        ("2001:db8:1:2::99", [Milter.TEMPFAIL]),  # the same /64
                        ("192.0.2.1", [Milter.ACCEPT])):
        mta = FakeMTA(svc, SmtpState(daemon_name="smtp", daemon_port=25))
        mta.connect(ip)
        mta.helo()
        assert [send(mta, "user@example.org", sender="<x@sender.test>")[0] for _ in answers] == answers
    logwatch.expect("limit_exceeded")


def test_check_policy_names_a_store_the_milters_user_cannot_write(capsys):
    import tempfile

    from policymilter.cli import main

    directory = Path(tempfile.mkdtemp(dir="/tmp", prefix="ratelimit-ro-"))
    directory.chmod(0o755)  # root's: policy-milter cannot write there
    status = main(["check-policy", "--user", "policy-milter", "-o", f'state.store="sqlite:{directory}/s.db"',
                   str(DEFAULT_POLICY)])
    err = capsys.readouterr().err
    assert status == 1
    assert f"cannot use the state store (state.store) sqlite:{directory}/s.db: {directory} is not writable" in err
    assert f"chown -R policy-milter {directory}" in err
    directory.chmod(0o777)
    assert main(["check-policy", "--user", "policy-milter", "-o", f'state.store="sqlite:{directory}/s.db"',
                 str(DEFAULT_POLICY)]) == 0
    directory.rmdir()


def test_a_store_timeout_postfix_would_not_wait_for_is_refused_at_load():
    """Each RCPT may wait for the store twice (the lock, the reservation): that must fit Postfix's
    milter_command_timeout, or Postfix would give up first."""
    from policymilter.policy import PolicyError
    from policymilter.service import load_checked

    with pytest.raises(PolicyError) as refused:
        load_checked(DEFAULT_POLICY, ["postfix.milter_command_timeout=5", "state.timeout=2"])
    assert any("at each RCPT the milter may wait up to 4 s (ratelimit lock 2 + ratelimit reservation 2)" in str(issue)
               for issue in refused.value.issues)
