"""origin: listener matching and each listener's authentication rules, as a table."""

from __future__ import annotations

import pytest

from policymilter import listeners
from policymilter.checks import origin
from policymilter.facts import Session
from policymilter.outcome import Disposition, Outcome

TLS = {"tls_version": "TLSv1.3", "tls_cipher": "TLS_AES_256_GCM_SHA384"}


def session(**facts) -> Session:
    return Session(conn_id="t", **facts)


@pytest.mark.parametrize(
    ("daemon_name", "port", "expected", "matched_by"),
    [
        ("smtp", 25, "smtp", "daemon_name"),
        ("submission", 587, "submission", "daemon_name"),
        ("submissions", 465, "submissions", "daemon_name"),
        ("submission", 25, "submission", "daemon_name"),  # the name an admin set wins over the port
        ("mx.example.test", 587, "submission", "port"),  # stock Postfix: name = $myhostname
        (None, 465, "submissions", "port"),
        ("mx.example.test", 2525, "unknown", "nothing"),
        (None, None, "unknown", "nothing"),
    ],
)
def test_listener_matching(default_policy, daemon_name, port, expected, matched_by):
    matched = listeners.resolve(default_policy, session(daemon_name=daemon_name, daemon_port=port))
    assert (matched.name, matched.matched_by.value) == (expected, matched_by)


def test_unknown_listener_gets_the_strictest_profile(default_policy):
    matched = listeners.resolve(default_policy, session(daemon_name="weird"))
    assert not matched.known
    assert matched.settings.auth_requires_tls and matched.settings.login_forbidden_chars == ".@"
    assert {c.value for c in matched.settings.authenticated.checks} >= {"attachments", "antivirus", "spam"}


# (listener, facts, outcome, reply prefix or None)
RULES = [
    ("smtp", {}, "pass", None),
    ("smtp", {"auth_login": "alice", "auth_mech": "PLAIN", **TLS}, "pass", None),
    ("smtp", {"auth_login": "alice", "auth_mech": "PLAIN"}, "fail", "538 5.7.11"),
    ("smtp", {"auth_login": "alice", "auth_mech": "CRAM-MD5", **TLS}, "fail", "534 5.7.9"),
    ("submission", {}, "fail", "530 5.7.0"),
    ("submission", {**TLS}, "fail", "530 5.7.0"),
    ("submission", {"auth_login": "alice", "auth_mech": "PLAIN", **TLS}, "pass", None),
    ("submission", {"auth_login": "alice", "auth_mech": "login", **TLS}, "pass", None),
    ("submission", {"auth_login": "alice", "auth_mech": "PLAIN"}, "fail", "538 5.7.11"),
    ("submission", {"auth_login": "alice", "auth_mech": "NTLM", **TLS}, "fail", "534 5.7.9"),
    ("submission", {"auth_login": "alice", **TLS}, "fail", "534 5.7.9 Authentication mechanism unknown"),
    ("submission", {"auth_login": "bob.smith", "auth_mech": "PLAIN", **TLS}, "fail", "550 5.7.1"),
    ("submission", {"auth_login": "bob@example.org", "auth_mech": "PLAIN", **TLS}, "fail", "550 5.7.1"),
    ("submission", {"auth_login": "", "auth_mech": "PLAIN", **TLS}, "fail", "530 5.7.0"),
    ("submissions", {**TLS}, "fail", "530 5.7.0"),
    ("submissions", {"auth_login": "alice", "auth_mech": "LOGIN", **TLS}, "pass", None),
]


@pytest.mark.parametrize(("listener", "facts", "outcome", "reply"), RULES)
def test_listener_rules(default_policy, listener, facts, outcome, reply):
    matched = listeners.listener_by_name(default_policy, listener)
    result = origin.check(matched, session(**facts))
    assert result.outcome is Outcome(outcome)
    if reply is None:
        assert result.disposition is Disposition.ACCEPT and result.reply is None
    else:
        assert result.disposition is Disposition.REJECT
        assert str(result.reply).startswith(reply)


def test_replies_tell_the_user_what_to_do(default_policy):
    submission = listeners.listener_by_name(default_policy, "submission")
    no_auth = origin.check(submission, session())
    assert "log in with your login name and password" in str(no_auth.reply)
    dotted = origin.check(submission, session(auth_login="bob.smith", auth_mech="PLAIN", **TLS))
    assert str(dotted.reply) == '550 5.7.1 Use your login name (without "." or "@") to log in, not "bob.smith"'
    plain = origin.check(submission, session(auth_login="alice", auth_mech="PLAIN"))
    assert "STARTTLS" in str(plain.reply)


def test_a_login_in_a_reply_is_printable_ascii_and_cannot_close_its_quotes(default_policy):
    submission = listeners.listener_by_name(default_policy, "submission")
    odd = origin.check(submission, session(auth_login='j\u00f6rg".x\r\n250 ok', auth_mech="PLAIN", **TLS))
    assert str(odd.reply) == '550 5.7.1 Use your login name (without "." or "@") to log in, not "j?rg?.x??250 ok"'
