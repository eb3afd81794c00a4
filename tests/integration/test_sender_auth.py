"""SPF, DKIM, ARC and DMARC against a real authoritative DNS server (nsd) on loopback.

The whole pipeline runs in-process (as `explain` does, and through the adapter with the fake
Postfix for byte-exact headers); the Postfix end-to-end cases are in test_postfix_auth.py.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import authres
import Milter
import pytest

from policymilter.cli import explain
from policymilter.conversation import Conversation
from policymilter.facts import Session
from policymilter.listeners import listener_by_name
from policymilter.message import Message
from policymilter.service import Service, load_snapshot
from tests import authkit
from tests.conftest import DEFAULT_POLICY
from tests.integration.authzones import AUTHSERV_ID, CLIENT, KEYS, zones
from tests.integration.dns_server import DnsServer
from tests.milter.fakemta import FakeMTA, SmtpState

pytestmark = pytest.mark.integration

@pytest.fixture(scope="module")
def dns_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DnsServer]:
    with DnsServer(tmp_path_factory.mktemp("dns"), zones(), silent_suffixes=["slow.test"]) as server:
        yield server


def overrides(server: DnsServer, *extra: str) -> list[str]:
    return [f'dns.nameservers=["{server.front_nameserver}"]', "dns.timeout=1", "dns.lifetime=3",
            f'site.authserv_id="{AUTHSERV_ID}"', 'site.domains=["example.org"]',
            'arc.trusted_sealers=["list.test"]', "antivirus.enabled=false", "spam.enabled=false", *extra]


def run(server: DnsServer, raw: bytes, mail_from: str, *extra: str, helo: str = "mail.pass.test") -> dict:
    snapshot = load_snapshot(DEFAULT_POLICY, overrides(server, *extra))
    session = Session(conn_id="t", client_ip=CLIENT, client_name="unknown", helo=helo, daemon_name="smtp",
                      daemon_port=25)
    return explain(snapshot, session, listener_by_name(snapshot.policy, "smtp"), raw, mail_from,
                   ["user@example.test"])


def check(report: dict, name: str) -> dict:
    return next(c for c in report["checks"] if c["check"] == name)


def auth_results(report: dict) -> list[str]:
    """Our headers, unfolded (they are folded after each result)."""
    return [" ".join(h["value"].split()) for h in report["headers_added"] if h["name"] == "Authentication-Results"]


@pytest.mark.parametrize(
    ("sender", "expected"),
    [
        ("a@pass.test", "pass"),
        ("a@fail.test", "fail"),
        ("a@soft.test", "softfail"),
        ("a@neutral.test", "neutral"),
        ("a@none.test", "none"),
        ("a@perm.test", "permerror"),
        ("a@slow.test", "temperror"),
    ],
)
def test_spf_results(dns_server, sender, expected):
    # DMARC in report mode: nothing is refused, so the header is always there to read.
    report = run(dns_server, authkit.message(sender, "user@example.test"), sender, 'dmarc.mode="report"')
    assert check(report, "spf")["outcome"] == expected
    assert f"spf={expected} smtp.mailfrom={sender.split('@')[1]}" in auth_results(report)[0]


def test_null_sender_is_checked_as_postmaster_at_helo(dns_server):
    report = run(dns_server, authkit.message("a@pass.test", "user@example.test"), "", 'dmarc.mode="report"',
                 helo="fail.test")
    spf = check(report, "spf")
    assert (spf["outcome"], spf["detail"]) == ("fail", "helo")
    assert "spf=fail smtp.helo=fail.test" in auth_results(report)[0]


@pytest.mark.parametrize("key", ["rsa", "ed"])
def test_aligned_dkim_signature_passes_dkim_and_dmarc(dns_server, key):
    raw = authkit.sign(authkit.message("Alice <alice@pass.test>", "user@example.test"), KEYS[key])
    report = run(dns_server, raw, "bounce@soft.test")  # SPF not aligned: DKIM alone carries DMARC
    assert report["verdict"] == "accept"
    [header] = auth_results(report)
    assert header.startswith(f"{AUTHSERV_ID}; ")
    b = re.search(rb"\bb=([A-Za-z0-9+/\s]+)", raw.split(b"\r\n\r\n")[0]).group(1)
    prefix = re.sub(rb"\s", b"", b)[:8].decode()  # RFC 8601 header.b: the first 8 characters
    assert f"dkim=pass header.b={prefix} " in header or f'dkim=pass header.b="{prefix}" ' in header
    assert f"header.d=pass.test header.s={key}" in header
    assert "dmarc=pass" in header and "header.from=pass.test" in header


def test_dual_signatures_one_broken_still_pass(dns_server):
    signed = authkit.sign(authkit.sign(authkit.message("a@pass.test", "u@example.test"), KEYS["rsa"]), KEYS["ed"])
    tampered = signed.replace(b"hello", b"hullo")
    report = run(dns_server, tampered, "a@pass.test")
    dkim = check(report, "dkim")
    assert dkim["outcome"] == "fail"
    assert report["verdict"] == "accept"  # SPF pass is aligned
    assert "dmarc=pass" in auth_results(report)[0]


def test_spoof_of_a_p_reject_domain_is_refused(dns_server):
    report = run(dns_server, authkit.message("CEO <ceo@fail.test>", "user@example.test"), "ceo@fail.test")
    assert report["verdict"] == "reject"
    assert report["smtp_reply"].startswith("550 5.7.1 Message rejected: fail.test publishes a DMARC policy")
    assert report["decided_by"] == "dmarc"


def test_p_quarantine_failure_is_held(dns_server):
    report = run(dns_server, authkit.message("x@quarantine.test", "user@example.test"), "x@quarantine.test")
    assert report["verdict"] == "quarantine"


def test_dmarc_lookup_timeout_is_a_temporary_failure(dns_server):
    report = run(dns_server, authkit.message("x@slow.test", "user@example.test"), "x@pass.test")
    assert report["verdict"] == "tempfail"
    assert report["smtp_reply"].startswith("451 4.7.1 Temporary DNS failure")


def test_forged_authentication_results_with_our_id_are_removed(dns_server):
    raw = authkit.message("a@pass.test", "user@example.test",
                          extra=f"Authentication-Results: {AUTHSERV_ID}; dkim=pass header.d=bank.test\n"
                                "Authentication-Results: other.example; spf=pass\n"
                                f"Authentication-Results: {AUTHSERV_ID.upper()}; dmarc=pass\n")
    report = run(dns_server, raw, "a@pass.test")
    assert report["headers_removed"] == [{"name": "Authentication-Results", "index": 3},
                                         {"name": "Authentication-Results", "index": 1}]
    assert len(auth_results(report)) == 1


def test_spoofing_our_own_domain_is_named_and_can_always_be_refused(dns_server):
    raw = authkit.message("boss@example.org", "user@example.test")
    report = run(dns_server, raw, "boss@example.org")
    assert report["verdict"] == "accept"  # example.org publishes p=none
    assert check(report, "dmarc")["detail"] == "spoofed-site-domain"
    strict = run(dns_server, raw, "boss@example.org", "dmarc.always_reject_site_domains=true")
    assert strict["verdict"] == "reject"


def test_trusted_arc_sealer_overrides_a_dmarc_failure(dns_server):
    original = authkit.sign(authkit.message("a@pass.test", "list@list.test"), KEYS["rsa"])
    # The list rewrites the subject (breaking DKIM) and seals what it saw.
    forwarded = authkit.arc_seal(original.replace(b"Subject: test", b"Subject: [list] test"), KEYS["list"],
                                 "mx.list.test", "dkim=pass header.d=pass.test; dmarc=pass header.from=pass.test")
    report = run(dns_server, forwarded, "bounces@list.test")
    assert check(report, "arc")["outcome"] == "pass"
    assert check(report, "dmarc")["outcome"] == "fail"
    assert check(report, "dmarc")["detail"] == "override:arc:list.test"
    assert report["verdict"] == "accept"
    untrusted = run(dns_server, forwarded, "bounces@list.test", "arc.trusted_sealers=[]")
    assert untrusted["verdict"] == "reject"


def test_eight_bit_folded_headers_verify_through_the_milter_adapter(dns_server, tmp_path: Path):
    body = "Grüße\n".encode()
    raw = (b"From: =?utf-8?q?J=C3=B6rg?= <jorg@pass.test>\nTo: user@example.test\n"
           b"Subject: caf\xc3\xa9 au lait,\n\tfolded  with   spaces\nDate: Sat, 28 Nov 2026 10:00:00 +0000\n"
           b"Message-ID: <8bit@test>\n\n" + body)
    signed = authkit.sign(raw, KEYS["rsa"], canonicalize=(b"simple", b"simple"))
    service = Service(DEFAULT_POLICY, overrides(dns_server))
    mta = FakeMTA(service, SmtpState(daemon_name="smtp", daemon_port=25))
    mta.connect(ip=CLIENT, hostname="unknown")
    mta.helo("mail.pass.test")
    assert mta.send("<jorg@pass.test>", message=signed) == Milter.ACCEPT
    [(_, value)] = [added for added in mta.ctx.added if added[0] == "Authentication-Results"]
    assert "dkim=pass" in value and "dmarc=pass" in value


def test_spf_fail_can_be_refused_at_mail_from(dns_server):
    report = run(dns_server, authkit.message("a@fail.test", "user@example.test"), "a@fail.test",
                 'spf.on_fail="reject"')
    assert (report["verdict"], report["stage"]) == ("reject", "mail")
    assert report["smtp_reply"].startswith("550 5.7.23 SPF check failed: fail.test does not allow 127.0.0.1")


def test_temperror_of_an_identity_that_could_align_is_retried_not_refused(dns_server):
    slow_key = authkit.rsa_key("pass.test", "slowkey")  # its key lookup never answers
    dns_server.silent_suffixes.append("slowkey._domainkey.pass.test")
    try:
        raw = authkit.sign(authkit.message("x@pass.test", "user@example.test"), slow_key)
        report = run(dns_server, raw, "x@soft.test")
    finally:
        dns_server.silent_suffixes.remove("slowkey._domainkey.pass.test")
    assert check(report, "dkim")["outcome"] == "temperror"
    assert report["verdict"] == "tempfail" and report["smtp_reply"].startswith("451 4.7.1")


def test_temperror_of_an_unrelated_identity_does_not_save_a_spoof(dns_server):
    report = run(dns_server, authkit.message("x@pass.test", "user@example.test"), "x@slow.test")
    assert check(report, "spf")["outcome"] == "temperror"
    assert report["verdict"] == "reject"  # slow.test could never align with pass.test


@pytest.mark.parametrize(
    "exception",
    ['dmarc.never_reject_domains=["fail.test"]', 'dmarc.trusted_forwarders=["127.0.0.0/8"]'],
)
def test_local_exceptions_keep_a_failing_message_with_the_reason_logged(dns_server, exception):
    report = run(dns_server, authkit.message("ceo@fail.test", "user@example.test"), "ceo@fail.test", exception)
    assert report["verdict"] == "accept"
    assert "policy.override=" in check(report, "dmarc")["reason"]
    assert "dmarc=fail" in auth_results(report)[0]


def test_authenticated_sessions_get_auth_pass_and_no_inbound_checks(dns_server):
    snapshot = load_snapshot(DEFAULT_POLICY, overrides(dns_server))
    session = Session(conn_id="t", client_ip=CLIENT, helo="laptop", daemon_name="submission", daemon_port=587,
                      auth_login="alice", auth_mech="PLAIN", tls_version="TLSv1.3")
    report = explain(snapshot, session, listener_by_name(snapshot.policy, "submission"),
                     authkit.message("alice@example.org", "friend@elsewhere.test"), "alice@example.org",
                     ["friend@elsewhere.test"])
    assert not {"spf", "dkim", "arc", "dmarc"} & {c["check"] for c in report["checks"]}  # no inbound checks
    assert auth_results(report) == [f"{AUTHSERV_ID}; auth=pass smtp.auth=alice"]


@pytest.mark.parametrize(
    ("mangle", "expected"),
    [
        (lambda sig: re.sub(rb"bh=[^;]+", b"bh=A=AA", sig), {"neutral", "fail"}),
        (lambda sig: re.sub(rb" b=[^;]+", b" b=AAAA", sig), {"fail", "neutral"}),
        (lambda sig: sig.replace(b"d=pass.test", b'd=a@b"c.test'), {"permerror", "neutral", "fail"}),
        (lambda sig: sig.replace(b"s=ed", b"s=n\xc3\xa9"), {"permerror", "neutral", "fail"}),
    ],
    ids=["bad-bh-base64", "short-ed25519-b", "d-with-at-and-quote", "non-ascii-selector"],
)
def test_hostile_signatures_never_crash_and_keep_the_header_parseable(dns_server, mangle, expected):
    signed = authkit.sign(authkit.message("a@pass.test", "user@example.test"), KEYS["ed"])
    header, _, rest = signed.partition(b"\r\nFrom:")
    raw = mangle(header) + b"\r\nFrom:" + rest
    report = run(dns_server, raw, "a@pass.test", 'dmarc.mode="report"')
    assert check(report, "dkim")["outcome"] in expected
    [value] = auth_results(report)
    assert authres.AuthenticationResultsHeader.parse_value(value).authserv_id == AUTHSERV_ID


def test_forged_header_with_a_quoted_authserv_id_is_removed(dns_server):
    raw = authkit.message("a@pass.test", "user@example.test",
                          extra=f'Authentication-Results: "{AUTHSERV_ID}."; dkim=pass header.d=bank.test\n')
    report = run(dns_server, raw, "a@pass.test")
    assert report["headers_removed"] == [{"name": "Authentication-Results", "index": 1}]


def test_trusted_sealer_that_saw_a_dmarc_failure_does_not_override(dns_server):
    spoof = authkit.arc_seal(authkit.message("ceo@fail.test", "list@list.test"), KEYS["list"], "mx.list.test",
                             "spf=fail smtp.mailfrom=fail.test; dmarc=fail header.from=fail.test")
    report = run(dns_server, spoof, "bounces@list.test")
    assert check(report, "arc")["outcome"] == "pass"
    assert report["verdict"] == "reject"


def test_spoof_of_a_site_domain_without_dmarc_record_is_still_named(dns_server):
    snapshot_overrides = ('site.domains=["example.org", "none.test"]', "dmarc.always_reject_site_domains=true")
    report = run(dns_server, authkit.message("boss@none.test", "user@example.test"), "boss@none.test",
                 *snapshot_overrides)
    assert check(report, "dmarc")["detail"] == "spoofed-site-domain"
    assert report["verdict"] == "reject"


def test_the_dns_budget_is_per_stage_not_eaten_by_a_slow_client(dns_server):
    """dns.lifetime bounds each stage's lookups; time the client spends sending DATA is not counted."""
    raw = authkit.sign(authkit.message("a@pass.test", "user@example.test"), KEYS["rsa"])
    snapshot = load_snapshot(DEFAULT_POLICY, overrides(dns_server, "dns.timeout=0.5", "dns.lifetime=0.6"))
    session = Session(conn_id="t", client_ip=CLIENT, helo="mail.pass.test", daemon_name="smtp", daemon_port=25)
    conversation = Conversation(snapshot, session)
    assert not conversation.mail(session, "<a@pass.test>").stops
    conversation.rcpt("<user@example.test>")
    time.sleep(0.8)  # a slow client: longer than the whole lifetime
    message = Message.from_bytes(raw)
    for header in message.headers:
        conversation.header(header.name, header.value)
    conversation.body(message.body_bytes())
    verdict = conversation.end_of_message("Q1")
    assert verdict.name == "accept"
    assert {r.check: str(r.outcome) for r in conversation.results}["dkim"] == "pass"
