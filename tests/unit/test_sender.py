"""sender: which addresses an authenticated login may use (patterns + map file)."""

from __future__ import annotations

from pathlib import Path

import pytest

from policymilter.cli import explain
from policymilter.facts import Session
from policymilter.listeners import listener_by_name
from policymilter.policy import PolicyError
from policymilter.service import load_snapshot
from tests.conftest import DEFAULT_POLICY, OFFLINE

MAP = """\
# login   addresses
alice     alice.smith@example.org, postmaster@example.org
bob:      @bobs-shop.example   # a whole domain
"""


def report(tmp_path: Path, login: str, mail_from: str, header_from: str | None = None, *extra: str) -> dict:
    map_file = tmp_path / "senders"
    map_file.write_text(MAP)
    snapshot = load_snapshot(DEFAULT_POLICY, [*OFFLINE, 'site.domains=["example.org", "example.net"]',
                                              f'sender.map_file="{map_file}"', *extra])
    session = Session(conn_id="t", client_ip="192.0.2.9", helo="laptop", daemon_name="submission", daemon_port=587,
                      auth_login=login, auth_mech="PLAIN", tls_version="TLSv1.3")
    raw = f"From: {header_from or mail_from}\nTo: x@elsewhere.test\nSubject: s\n\nbody\n".encode()
    return explain(snapshot, session, listener_by_name(snapshot.policy, "submission"), raw, mail_from,
                   ["x@elsewhere.test"])


@pytest.mark.parametrize(
    ("login", "mail_from", "header_from", "verdict"),
    [
        ("alice", "alice@example.org", None, "accept"),  # the {login}@{domain} pattern
        ("alice", "ALICE@Example.NET", None, "accept"),  # every site domain, any case
        ("alice", "alice.smith@example.org", None, "accept"),  # an alias from the map
        ("alice", "", "alice@example.org", "accept"),  # the null sender claims nothing
        ("bob", "anyone@bobs-shop.example", None, "accept"),  # a whole domain from the map
        ("alice", "bob@example.org", None, "reject"),  # somebody else's address
        ("alice", "alice@example.org", "ceo@example.org", "reject"),  # a foreign From header
        # issue 8: one From that parsers (and mail clients) read as different addresses
        ("alice", "alice@example.org", "alice@example.org <ceo@example.org>", "reject"),
        ("alice", "alice@example.org", "alice@example.org\n <ceo@example.org>", "reject"),  # folded
        ("alice", "alice@example.org", "=?utf-8?q?alice@example.org?= <ceo@example.org>", "reject"),
        ("alice", "alice@example.org", '"ceo@example.org" <alice@example.org>', "reject"),  # shown: ceo
        ("alice", "alice@example.org", "alice@example.org, ceo@example.org", "reject"),
        ("alice", "alice@example.org", "Alice <alice@example.org>", "accept"),  # the benign control
        ("alice", "alice@example.org", '"alice@example.org" <alice@example.org>', "accept"),
        ("carol", "carol.x@example.org", None, "reject"),
    ],
)
def test_ownership(tmp_path, login, mail_from, header_from, verdict):
    assert report(tmp_path, login, mail_from, header_from)["verdict"] == verdict


def test_a_mismatch_names_the_address_and_the_login(tmp_path):
    result = report(tmp_path, "alice", "bob@example.org")
    assert result["smtp_reply"].startswith("550 5.7.1 You are logged in as alice, which may not send as "
                                           "bob@example.org")
    assert result["stage"] == "mail"
    from_header = report(tmp_path, "alice", "alice@example.org", "ceo@example.org")
    assert "may not send as ceo@example.org" in from_header["smtp_reply"] and from_header["stage"] == "eom"


def test_an_ambiguous_from_is_refused_and_never_signed(tmp_path):
    key = tmp_path / "k.key"
    from policymilter.signing_keys import KeyType, generate_private_key, write_key_file

    write_key_file(key, generate_private_key(KeyType.ED25519))
    result = report(tmp_path, "alice", "alice@example.org", "alice@example.org <ceo@example.org>",
                    f'signing.keys={{"example.org" = [{{selector = "s", key_file = "{key}", '
                    'algorithm = "ed25519-sha256"}]}', 'sender.on_mismatch="log"')
    # even when the sender check only logs, signing never vouches for a From it cannot read
    checks = {c["check"]: c for c in result["checks"]}
    assert checks["sender"]["outcome"] == "fail" and checks["sender"]["detail"] == "from-several"
    assert checks["signing"]["detail"] == "bad-from"
    assert not [h for h in result["headers_added"] if h["name"] == "DKIM-Signature"]
    refused = report(tmp_path, "alice", "alice@example.org", "alice@example.org <ceo@example.org>")
    assert refused["smtp_reply"].startswith("550 5.7.1 Your message's From header is not acceptable")


def test_log_only_mode_lets_it_through_and_says_so(tmp_path):
    result = report(tmp_path, "alice", "bob@example.org", None, 'sender.on_mismatch="log"')
    assert result["verdict"] == "accept"
    [check] = [c for c in result["checks"] if c["check"] == "sender"][:1]
    assert check["outcome"] == "fail" and "logged only" in check["reason"]


def test_a_broken_map_file_is_a_policy_error_with_file_and_line(tmp_path):
    map_file = tmp_path / "senders"
    map_file.write_text("alice alice@example.org\nbob\ncarol not-an-address\n")
    with pytest.raises(PolicyError) as caught:
        load_snapshot(DEFAULT_POLICY, [f'sender.map_file="{map_file}"'])
    assert [str(issue) for issue in caught.value.issues] == [
        f"{map_file}:2: (sender map): expected: LOGIN ADDRESS[, ADDRESS...]",
        f"{map_file}:3: (sender map): not-an-address: not an address (user@domain) or a domain (@domain)",
    ]


def test_tabs_and_colons_separate_the_login(tmp_path):
    from policymilter.sendermap import parse

    senders, issues = parse("alice\ta@example.org\nbob\t: b@example.org, c@example.org\r\n", "m")
    assert issues == []
    assert senders.owned_by("alice") == {"a@example.org"}
    assert senders.owned_by("BOB") == {"b@example.org", "c@example.org"}


def test_a_pattern_with_an_unknown_placeholder_is_a_policy_error():
    with pytest.raises(PolicyError) as caught:
        load_snapshot(DEFAULT_POLICY, ['sender.patterns=["{user}@{domain}"]'])
    assert "only {login} and {domain} may be used" in str(caught.value)


def test_signing_key_domains_are_spelled_like_site_domains():
    snapshot = load_snapshot(DEFAULT_POLICY, ['signing.keys={"Example.ORG." = [{selector = "s1", key_file = "/x"}]}'])
    assert list(snapshot.policy.signing.keys) == ["example.org"]


@pytest.mark.parametrize(
    ("extra", "verdict"),
    [
        ("Sender: ceo@example.org", "reject"),  # Outlook: "ceo@example.org on behalf of alice@..."
        ("Resent-From: ceo@example.org", "reject"),
        ("Sender: alice@example.org <ceo@example.org>", "reject"),  # ambiguous there too
        ("Sender: Alice <alice@example.org>", "accept"),
        ("Resent-From: alice.smith@example.org", "accept"),  # an alias the map grants
    ],
)
def test_sender_and_resent_fields_are_the_logins_own_too(tmp_path, extra, verdict):
    map_file = tmp_path / "senders"
    map_file.write_text(MAP)
    snapshot = load_snapshot(DEFAULT_POLICY, [*OFFLINE, 'site.domains=["example.org"]',
                                              f'sender.map_file="{map_file}"'])
    session = Session(conn_id="t", client_ip="192.0.2.9", daemon_name="submission", daemon_port=587,
                      auth_login="alice", auth_mech="PLAIN", tls_version="TLSv1.3")
    raw = f"From: alice@example.org\n{extra}\nTo: x@elsewhere.test\nSubject: s\n\nbody\n".encode()
    result = explain(snapshot, session, listener_by_name(snapshot.policy, "submission"), raw, "alice@example.org",
                     ["x@elsewhere.test"])
    assert result["verdict"] == verdict
