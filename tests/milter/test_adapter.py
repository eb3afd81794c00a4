"""The adapter through pymilter's TestCtx, with macros handed out per stage as Postfix does."""

from __future__ import annotations

import Milter
import pytest

from policymilter.outcome import AddHeader, CheckResult, Disposition, Outcome
from policymilter.pipeline import CheckContext, Pipeline, Stage
from policymilter.service import ALWAYS, Service, snapshot_for
from tests.conftest import DEFAULT_POLICY, OFFLINE
from tests.milter.fakemta import FakeMTA, SmtpState

GOOD_MESSAGE = b"From: Alice <alice@example.org>\nTo: bob@elsewhere.test\nSubject: hi\n\nhello\n"


def make_service(policy_path=DEFAULT_POLICY, checks=(), overrides=()) -> Service:
    # The adapter tests need no DNS: SPF (and the other DNS checks) have their own tests
    # against a real DNS server.
    service = Service(policy_path, [*OFFLINE, *overrides])
    if checks:
        service.snapshot = snapshot_for(service.snapshot.policy, pipeline=Pipeline(checks, ALWAYS))
    return service


def mta_for(listener: str, port: int, **state) -> FakeMTA:
    return FakeMTA(make_service(), SmtpState(daemon_name=listener, daemon_port=port, **state))


def test_negotiation_asks_for_the_macros_the_milter_needs():
    mta = mta_for("smtp", 25)
    mta.connect()
    requested = {stage: {m.decode() for m in (names or ())} for stage, names in enumerate(mta.ctx._symlist)}
    assert {"{daemon_name}", "{daemon_port}"} <= requested[Milter.M_CONNECT]
    assert {"{auth_authen}", "{auth_type}", "{tls_version}"} <= requested[Milter.M_ENVFROM]
    assert all(len(names) <= 5 for names in requested.values())


def test_submission_without_auth_is_refused_at_mail_from(logwatch):
    mta = mta_for("submission", 587)
    mta.connect()
    mta.helo()
    assert mta.mail("<alice@example.org>") == Milter.REJECT
    assert mta.reply.startswith("530 5.7.0 Authentication required")
    [summary] = logwatch.fields("summary")
    assert summary["verdict"] == "reject" and summary["stage"] == "mail"
    assert summary["listener"] == "submission" and summary["origin"] == "fail:auth-required"


def test_auth_macros_are_read_per_transaction_not_at_connect(logwatch):
    """AUTH after a first transaction: the second MAIL sees the login."""
    mta = mta_for("submission", 587)
    mta.connect()
    mta.starttls()
    mta.helo()
    assert mta.mail() == Milter.REJECT
    mta.abort()
    mta.auth("alice", "PLAIN")
    assert mta.send("<alice@example.org>", message=GOOD_MESSAGE) == Milter.ACCEPT
    summaries = logwatch.fields("summary")
    assert [s["verdict"] for s in summaries] == ["reject", "accept"]
    assert summaries[1]["auth"] == "alice" and summaries[1]["mech"] == "PLAIN"
    assert summaries[1]["tls"] == "TLSv1.3/TLS_AES_256_GCM_SHA384"


@pytest.mark.parametrize(
    ("login", "mech", "tls", "expected"),
    [
        ("alice", "PLAIN", True, None),
        ("alice", "LOGIN", True, None),
        ("alice", "CRAM-MD5", True, "534 5.7.9"),
        ("alice", "PLAIN", False, "538 5.7.11"),
        ("bob.smith", "PLAIN", True, "550 5.7.1 Use your login name"),
        ("carol@example.org", "LOGIN", True, "550 5.7.1 Use your login name"),
    ],
)
def test_submission_rules(login, mech, tls, expected):
    mta = mta_for("submission", 587)
    mta.connect()
    if tls:
        mta.starttls()
    mta.helo()
    mta.auth(login, mech)
    rc = mta.send("<alice@example.org>", message=GOOD_MESSAGE)
    if expected is None:
        assert rc == Milter.ACCEPT
    else:
        assert rc == Milter.REJECT
        assert mta.reply.startswith(expected)


def test_port_25_accepts_anonymous_mail_and_reports_queue_id(logwatch):
    mta = mta_for("smtp", 25)
    mta.connect()
    mta.helo()
    assert mta.send(message=GOOD_MESSAGE) == Milter.ACCEPT
    [summary] = logwatch.fields("summary")
    assert summary["queue_id"] == "4Q000001"
    assert summary["origin"] == "pass:anonymous" and summary["client"] == "203.0.113.7"
    assert summary["helo"] == "client.example.net" and summary["rcpts"] == 1


def test_several_messages_in_one_session_each_get_a_summary(logwatch):
    mta = mta_for("smtp", 25)
    mta.connect()
    mta.helo()
    for _ in range(3):
        assert mta.send(message=GOOD_MESSAGE) == Milter.ACCEPT
    assert [s["queue_id"] for s in logwatch.fields("summary")] == ["4Q000001", "4Q000002", "4Q000003"]
    conns = {r.conn for r in logwatch.events("summary")}
    assert len(conns) == 1


def test_abort_between_transactions_resets_the_envelope(logwatch):
    mta = mta_for("smtp", 25)
    mta.connect()
    mta.helo()
    mta.mail("<first@example.net>")
    mta.rcpt("<a@example.test>")
    mta.rcpt("<b@example.test>")
    mta.abort()
    assert mta.send("<second@example.net>", message=GOOD_MESSAGE) == Milter.ACCEPT
    [summary] = logwatch.fields("summary")
    assert summary["from"] == "<second@example.net>" and summary["rcpts"] == 1
    assert mta.service.transactions == 0


def test_close_ends_the_session_and_the_transaction_count():
    mta = mta_for("smtp", 25)
    mta.connect()
    mta.helo()
    mta.mail()
    assert mta.service.transactions == 1 and mta.service.sessions == 1
    mta.close()
    assert mta.service.transactions == 0 and mta.service.sessions == 0


def test_port_matches_when_daemon_name_is_postfix_default(logwatch):
    """Stock Postfix sends {daemon_name} = $myhostname: the port still finds submission."""
    logwatch.expect("daemon_name_is_hostname")
    mta = mta_for(None, 587)
    mta.connect()
    mta.helo()
    assert mta.mail() == Milter.REJECT
    assert mta.reply.startswith("530 5.7.0")
    [warning] = logwatch.events("daemon_name_is_hostname")
    assert "milter_macro_daemon_name" in warning.getMessage()


def test_missing_port_macro_is_named_with_its_postfix_parameter(logwatch):
    """A Postfix that ignores the milter's macro list and lacks {daemon_port}: warn once."""
    logwatch.expect("macro_missing", "unknown_listener")
    service = make_service()
    for _ in range(2):
        mta = FakeMTA(service, SmtpState(daemon_name=None, daemon_port=None), honour_symlist=False)
        mta.connect()
        mta.starttls()
        mta.helo()
        mta.auth("alice")
        # unknown listener: the strictest profile (auth allowed, over TLS, PLAIN/LOGIN)
        assert mta.send("<alice@example.org>", message=GOOD_MESSAGE) == Milter.ACCEPT
        mta.close()
    warnings = logwatch.events("macro_missing")
    assert len(warnings) == 1
    assert "{daemon_port}" in warnings[0].getMessage() and "milter_connect_macros" in warnings[0].getMessage()
    assert len(logwatch.events("unknown_listener")) == 1
    assert {s["listener"] for s in logwatch.fields("summary")} == {"unknown"}


def test_missing_auth_macros_mean_unauthenticated_never_trusted(logwatch):
    """An MTA that ignores the milter's list and sends no MAIL macros: the login stays unknown."""
    logwatch.expect("macro_missing")
    mta = FakeMTA(make_service(), SmtpState(daemon_name="submission", daemon_port=587), honour_symlist=False)
    mta.postfix_macros[Milter.M_ENVFROM] = ("i",)
    mta.connect()
    mta.starttls()
    mta.helo()
    mta.auth("alice")
    assert mta.mail() == Milter.REJECT
    assert mta.reply.startswith("530 5.7.0")
    [warning] = [w for w in logwatch.events("macro_missing") if "{mail_addr}" in w.getMessage()]
    assert "milter_mail_macros" in warning.getMessage() and "{auth_authen}" in warning.getMessage()


class Exploding:
    name = "spam"
    stage = Stage.EOM

    def run(self, context: CheckContext) -> CheckResult:
        raise RuntimeError("scanner library bug")


class Tagging:
    name = "attachments"
    stage = Stage.EOM

    def run(self, context: CheckContext) -> CheckResult:
        return CheckResult(self.name, Outcome.CLEAN, actions=(AddHeader("X-Checked", "yes"),))


def test_a_crash_inside_a_check_becomes_tempfail_and_the_daemon_keeps_serving(logwatch):
    logwatch.expect("check_crashed")
    service = make_service(checks=(Exploding(),), overrides=["spam.enabled=true",
                                                             "listeners.smtp.unauthenticated.on_error={}"])
    mta = FakeMTA(service, SmtpState(daemon_name="smtp", daemon_port=25))
    mta.connect()
    mta.helo()
    assert mta.send(message=GOOD_MESSAGE) == Milter.TEMPFAIL
    assert mta.reply.startswith("451 4.3.0")
    [crash] = logwatch.events("check_crashed")
    assert crash.exc_info is not None  # the traceback is logged, once
    [summary] = logwatch.fields("summary")
    assert summary["spam"] == "error:RuntimeError" and summary["verdict"] == "tempfail"
    # the next message of the same session is handled normally by the same daemon
    assert mta.send(message=GOOD_MESSAGE) == Milter.TEMPFAIL
    assert len(logwatch.events("check_crashed")) == 2


def test_on_error_matrix_accept_lets_mail_through(logwatch):
    logwatch.expect("check_crashed")
    # the default policy says spam = "accept" on errors for port 25
    service = make_service(checks=(Exploding(),), overrides=["spam.enabled=true"])
    mta = FakeMTA(service, SmtpState(daemon_name="smtp", daemon_port=25))
    mta.connect()
    mta.helo()
    assert mta.send(message=GOOD_MESSAGE) == Milter.ACCEPT
    assert len(logwatch.events("check_crashed")) == 1  # it did run, and its error was accepted


def test_a_crash_in_the_adapter_itself_becomes_the_listener_error_action(logwatch, monkeypatch):
    logwatch.expect("callback_crashed")
    mta = mta_for("smtp", 25)
    mta.connect()
    mta.helo()

    def broken(*args):
        raise ValueError("bad header handling")

    monkeypatch.setattr(mta.milter.conversation, "header", broken)
    assert mta.send(message=GOOD_MESSAGE) == Milter.TEMPFAIL
    assert mta.reply.startswith("451 4.3.0")
    assert len(logwatch.events("callback_crashed")) == 1
    [summary] = logwatch.fields("summary")
    assert summary["decided_by"] == "milter" and summary["verdict"] == "tempfail"


def test_headers_proposed_by_checks_are_added_at_end_of_message():
    service = make_service(checks=(Tagging(),))
    mta = FakeMTA(service, SmtpState(daemon_name="smtp", daemon_port=25))
    mta.connect()
    mta.helo()
    assert mta.send(message=GOOD_MESSAGE) == Milter.ACCEPT
    # with SMFIP_HDR_LEADSPC negotiated the milter supplies the space after the colon itself
    assert mta.ctx.added == [("X-Checked", " yes")]


def test_percent_in_a_login_cannot_break_the_reply():
    mta = mta_for("submission", 587)
    mta.connect()
    mta.starttls()
    mta.helo()
    mta.auth("bob.%s%n")
    assert mta.mail() == Milter.REJECT
    assert "bob.%%s%%n" in mta.reply


def test_header_bytes_reach_the_conversation_unchanged():
    mta = mta_for("smtp", 25)
    mta.connect()
    mta.helo()
    mta.mail()
    mta.rcpt()
    raw = "Subject: =?utf-8?q?h=C3=A9?= caf\u00e9\n\tfolded\n\nbody\n".encode()
    seen = []
    original = mta.milter.conversation.header
    mta.milter.conversation.header = lambda name, value: (seen.append((name, value)), original(name, value))
    assert mta.data(raw) == Milter.ACCEPT
    # the leading space too: the milter negotiates SMFIP_HDR_LEADSPC so DKIM sees every byte
    assert seen == [("Subject", " =?utf-8?q?h=C3=A9?= caf\u00e9\r\n\tfolded".encode())]


def test_while_draining_new_transactions_are_told_to_retry(logwatch):
    mta = mta_for("smtp", 25)
    mta.connect()
    mta.helo()
    mta.service.draining.set()
    assert mta.mail() == Milter.TEMPFAIL
    assert mta.reply.startswith("451 4.3.2")
    assert mta.service.transactions == 0
    [summary] = logwatch.fields("summary")
    assert (summary["verdict"], summary["decided_by"], summary["reason"]) == ("tempfail", "milter", "shutting down")


def test_a_crash_at_mail_from_is_a_mail_stage_refusal_and_ends_the_transaction(logwatch, monkeypatch):
    logwatch.expect("callback_crashed")
    mta = mta_for("smtp", 25)
    mta.connect()
    mta.helo()
    monkeypatch.setattr(mta.milter, "_session_with_mail_macros", lambda: 1 / 0)
    assert mta.mail("<who@example.net>") == Milter.TEMPFAIL
    [summary] = logwatch.fields("summary")
    assert (summary["stage"], summary["from"], summary["verdict"]) == ("mail", "<who@example.net>", "tempfail")
    assert mta.service.transactions == 0


def test_a_crash_before_the_session_exists_is_logged_once(logwatch, monkeypatch):
    logwatch.expect("callback_crashed")
    service = make_service()
    monkeypatch.setattr(service, "open_conversation", lambda facts: 1 / 0)
    mta = FakeMTA(service, SmtpState(daemon_name="smtp", daemon_port=25))
    mta.connect()
    mta.helo()
    assert mta.mail() == Milter.TEMPFAIL
    assert mta.mail() == Milter.TEMPFAIL
    assert len(logwatch.events("callback_crashed")) == 1


def test_a_macro_that_is_not_utf8_is_unknown_never_trusted():
    mta = mta_for("submission", 587)
    mta.ctx.undecodable.add("{auth_authen}")
    mta.connect()
    mta.starttls()
    mta.helo()
    mta.auth("al\udcffice")
    assert mta.mail() == Milter.REJECT
    assert mta.reply.startswith("530 5.7.0")


class Holding:
    name = "attachments"
    stage = Stage.EOM

    def run(self, context: CheckContext) -> CheckResult:
        return CheckResult(self.name, Outcome.BLOCKED, Disposition.QUARANTINE, reason="looks odd")


def test_a_quarantine_verdict_puts_the_message_on_hold():
    service = make_service(checks=(Holding(),))
    mta = FakeMTA(service, SmtpState(daemon_name="smtp", daemon_port=25))
    mta.connect()
    mta.helo()
    assert mta.send(message=GOOD_MESSAGE) == Milter.ACCEPT
    assert mta.ctx.quarantined == "looks odd"


def test_a_crash_at_end_of_message_accepted_by_policy_still_removes_forged_results(logwatch, monkeypatch):
    """on_error = accept lets unchecked mail through; results forged with our id must still go."""
    logwatch.expect("callback_crashed")
    service = Service(DEFAULT_POLICY, [*OFFLINE, 'listeners.smtp.on_error="accept"'])
    mta = FakeMTA(service, SmtpState(daemon_name="smtp", daemon_port=25))
    mta.connect()
    mta.helo()
    monkeypatch.setattr(mta.milter.conversation.snapshot.pipeline, "run", lambda *args: 1 / 0)
    forged = (b"Authentication-Results: mail.example.org; dmarc=pass header.from=bank.example\n"
              b"Authentication-Results: other.example; spf=pass\n")
    assert mta.send(message=forged + GOOD_MESSAGE) == Milter.ACCEPT
    assert ("Authentication-Results", 1, "") in mta.ctx.changed  # removed: the first one (ours)
    assert len([c for c in mta.ctx.changed if c[0] == "Authentication-Results"]) == 1
    [summary] = logwatch.fields("summary")
    assert (summary["verdict"], summary["decided_by"]) == ("accept", "milter")


def test_the_adapter_tempfails_a_dkim_aligned_message_when_dkim_errors(logwatch):
    """Issue 9: DMARC read "DKIM errored" as "no signature" and refused legitimate mail."""
    from dataclasses import replace

    from policymilter.checks import REGISTRY
    from tests.unit.test_dmarc import SIGNED, SIGNER, Broken
    from tests.zonefake import ZoneResolver

    logwatch.expect("check_crashed")
    service = make_service(overrides=("spf.enabled=true", "dkim.enabled=true", "arc.enabled=true",
                                      "dmarc.enabled=true",
                                      'listeners.smtp.unauthenticated.on_error={spam = "accept", dkim = "accept"}'))
    zone = (ZoneResolver().txt_record("pass.test", "v=spf1 -all").txt_record("_dmarc.pass.test", "v=DMARC1; p=reject")
            .txt_record(f"{SIGNER.owner}.pass.test", SIGNER.record))
    checks = tuple(Broken() if c.name == "dkim" else c for c in REGISTRY)
    service.snapshot = replace(snapshot_for(service.snapshot.policy, pipeline=Pipeline(checks, ALWAYS)), resolver=zone)
    mta = FakeMTA(service, SmtpState(daemon_name="smtp", daemon_port=25))
    mta.connect("192.0.2.66")
    mta.helo("mail.pass.test")
    assert mta.send("<alice@pass.test>", message=SIGNED) == Milter.TEMPFAIL
    assert mta.reply.startswith("451 4.7.1") and "DKIM check could not answer" in mta.reply


def test_a_worker_with_every_turn_taken_answers_busy_and_the_turn_frees_for_the_next(logwatch):
    """Issue 11 item 4: beyond site.max_concurrent_messages a clean 451 4.3.2 after queue_timeout."""
    service = make_service(overrides=["site.max_concurrent_messages=1", "site.queue_timeout=0.05"])
    mta = FakeMTA(service, SmtpState(daemon_name="smtp", daemon_port=25))
    mta.connect()
    mta.helo()
    with service.admission.turn(1.0) as admitted:  # another session's message is being checked
        assert admitted
        assert mta.send(message=GOOD_MESSAGE) == Milter.TEMPFAIL
        assert mta.reply == "451 4.3.2 Too busy to check this message now: please try again later"
    [summary] = logwatch.fields("summary")
    assert summary["verdict"] == "tempfail" and summary["decided_by"] == "milter"
    assert summary["reason"] == ("busy: 1 messages in progress in this worker for 0.05 s "
                                 "(site.max_concurrent_messages)")
    assert service.transactions == 0 and service.admission.running == 0
    assert mta.send(message=GOOD_MESSAGE) == Milter.ACCEPT  # the sender's retry


def test_the_transaction_state_is_released_at_end_of_message_not_at_the_next_mail():
    """Issue 11 item 4: a session kept open after its message holds no spool file and no results."""
    mta = mta_for("smtp", 25)
    mta.connect()
    mta.helo()
    assert mta.send(message=GOOD_MESSAGE + b"x" * 300_000 + b"\n") == Milter.ACCEPT  # spooled to disk
    conversation = mta.milter.conversation
    assert conversation.message is None and conversation.results == [] and conversation.envelope is None


class Injecting:
    name = "attachments"
    stage = Stage.EOM

    def run(self, context: CheckContext) -> CheckResult:
        return CheckResult(self.name, Outcome.CLEAN, actions=(
            AddHeader("X-Checked", "a\nX-Injected: yes\r\n\tfolded\x00end\n continued"),))


def test_a_header_value_cannot_start_a_header_of_its_own_whatever_a_check_proposes():
    """Line breaks that do not fold, CR and NUL become spaces (the actions clean their values when made)."""
    mta = FakeMTA(make_service(checks=(Injecting(),)), SmtpState(daemon_name="smtp", daemon_port=25))
    mta.connect()
    mta.helo()
    assert mta.send(message=GOOD_MESSAGE) == Milter.ACCEPT
    assert mta.ctx.added == [("X-Checked", " a X-Injected: yes \n\tfolded end\n continued")]
