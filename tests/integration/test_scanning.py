"""antivirus and spam against a real clamd (one-signature EICAR database) and a real spamd.

The pipeline runs in-process, as `explain` runs it; Postfix end to end is test_postfix_scan.py.
"""

from __future__ import annotations

import base64
import io
import zipfile
from collections.abc import Iterator

import pytest

from policymilter.cli import explain
from policymilter.facts import Session
from policymilter.listeners import listener_by_name
from policymilter.service import load_snapshot
from tests.conftest import DEFAULT_POLICY
from tests.integration.scanners import EICAR, GTUBE, Clamd, Spamd

pytestmark = pytest.mark.integration

# Not about DNS or sender ownership here: those have their own tests.
NO_DNS_CHECKS = ("spf.enabled=false", "dkim.enabled=false", "arc.enabled=false", "dmarc.enabled=false",
                 "sender.enabled=false")


@pytest.fixture(scope="module")
def clamd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Clamd]:
    with Clamd(tmp_path_factory.mktemp("clamd")) as running:
        yield running


@pytest.fixture(scope="module")
def spamd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Spamd]:
    with Spamd(tmp_path_factory.mktemp("spamd")) as running:
        yield running


def zipped(name: str, data: bytes) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(name, data)
    return buffer.getvalue()


def with_attachment(name: str, data: bytes, subject: str = "files") -> bytes:
    encoded = base64.encodebytes(data).decode()
    return (f"From: a@example.net\nTo: u@example.test\nSubject: {subject}\nMIME-Version: 1.0\n"
            f'Content-Type: multipart/mixed; boundary="b1"\n\n--b1\nContent-Type: text/plain\n\nsee attached\n'
            f'--b1\nContent-Type: application/octet-stream; name="{name}"\nContent-Transfer-Encoding: base64\n'
            f'Content-Disposition: attachment; filename="{name}"\n\n{encoded}--b1--\n').encode()


def nested(inner: bytes) -> bytes:
    return (b'From: a@example.net\nTo: u@example.test\nSubject: fwd\nMIME-Version: 1.0\n'
            b'Content-Type: multipart/mixed; boundary="outer"\n\n--outer\nContent-Type: text/plain\n\nfwd\n'
            b"--outer\nContent-Type: message/rfc822\n\n" + inner + b"\n--outer--\n")


EICAR_CASES = {
    # a hash signature matches a whole file: EICAR as an attachment, as a zip member, in a forward
    "plain": with_attachment("eicar.com.txt", EICAR),
    "zipped": with_attachment("test.zip", zipped("eicar.com.txt", EICAR)),
    "nested-part": nested(with_attachment("eicar.txt", EICAR)),
}


def run(raw: bytes, listener: str, *overrides: str, auth: bool = False) -> dict:
    # attachments off: these tests are about the scanners (EICAR in a .com would be blocked by name first)
    snapshot = load_snapshot(DEFAULT_POLICY, [*NO_DNS_CHECKS, "attachments.enabled=false", *overrides])
    listener_policy = snapshot.policy.listeners[listener]
    # A loopback client, as the stack's: spamd now sees a Received line for it, and scores a
    # documentation address (192.0.2.x: RCVD_ILLEGAL_IP) or a client without rDNS as a real relay.
    session = Session(conn_id="t", client_ip="127.0.0.1", client_name="localhost", helo="mail.example.net",
                      daemon_name=listener,
                      daemon_port=listener_policy.ports[0], tls_version="TLSv1.3" if auth else None,
                      auth_login="alice" if auth else None, auth_mech="PLAIN" if auth else None)
    return explain(snapshot, session, listener_by_name(snapshot.policy, listener), raw, "a@example.net",
                   ["u@example.test"])


def outcome(report: dict, check: str) -> str | None:
    found = [c for c in report["checks"] if c["check"] == check]
    return (found[0]["outcome"] + (f":{found[0]['detail']}" if found[0]["detail"] else "")) if found else None


def servers(clamd: Clamd, spamd: Spamd) -> tuple[str, str]:
    return f'antivirus.servers=["{clamd.endpoint}"]', f'spam.servers=["{spamd.endpoint}"]'


@pytest.mark.parametrize("case", EICAR_CASES)
@pytest.mark.parametrize(("listener", "auth"), [("smtp", False), ("submissions", True)])
def test_eicar_is_refused_on_the_scanning_doors(clamd, spamd, case, listener, auth):
    report = run(EICAR_CASES[case], listener, *servers(clamd, spamd), auth=auth)
    assert report["verdict"] == "reject"
    assert report["smtp_reply"] == f"550 5.7.1 Message refused: it contains a virus ({clamd.signature_name})"
    assert outcome(report, "antivirus") == f"infected:{clamd.signature_name}"


@pytest.mark.parametrize("case", EICAR_CASES)
def test_eicar_passes_authenticated_submission_unscanned(clamd, spamd, case):
    report = run(EICAR_CASES[case], "submission", *servers(clamd, spamd), auth=True)
    assert report["verdict"] == "accept"
    assert outcome(report, "antivirus") is None and outcome(report, "spam") is None


def test_clean_mail_is_scanned_and_gets_spam_headers(clamd, spamd):
    report = run(with_attachment("notes.txt", b"meeting at 10\n"), "smtp", *servers(clamd, spamd))
    assert report["verdict"] == "accept"
    assert outcome(report, "antivirus") == "clean"
    assert outcome(report, "spam").startswith("ham:")
    names = [h["name"] for h in report["headers_added"]]
    assert "X-Spam-Status" in names and "X-Spam-Score" in names


GTUBE_MESSAGE = b"From: a@example.net\nTo: u@example.test\nSubject: cheap\n\n" + GTUBE + b"\n"


def test_gtube_is_refused_over_the_reject_score(clamd, spamd):
    report = run(GTUBE_MESSAGE, "smtp", *servers(clamd, spamd))
    assert report["verdict"] == "reject"
    assert report["smtp_reply"].startswith("550 5.7.1 Message refused: it looks like spam (score 100")


def test_gtube_is_tagged_when_the_policy_only_tags(clamd, spamd):
    report = run(GTUBE_MESSAGE, "smtp", *servers(clamd, spamd), "spam.reject_score=2000.0",
                 'spam.subject_tag="[SPAM]"')
    assert report["verdict"] == "accept"
    headers = {h["name"]: h["value"] for h in report["headers_added"]}
    assert headers["X-Spam-Status"].startswith("Yes, score=100") and "GTUBE" in headers["X-Spam-Status"]
    assert headers["X-Spam-Flag"] == "YES"
    assert report["headers_changed"] == [{"name": "Subject", "index": 1, "value": "[SPAM] cheap"}]


def test_gtube_is_held_over_the_quarantine_score(clamd, spamd):
    report = run(GTUBE_MESSAGE, "smtp", *servers(clamd, spamd), "spam.quarantine_score=100.0",
                 "spam.reject_score=2000.0")
    assert report["verdict"] == "quarantine"


def test_forged_spam_headers_are_replaced(clamd, spamd):
    raw = b"From: a@example.net\nTo: u@example.test\nX-Spam-Status: No, trust me\nSubject: x\n\n" + GTUBE + b"\n"
    report = run(raw, "smtp", *servers(clamd, spamd), "spam.reject_score=2000.0")
    assert {"name": "X-Spam-Status", "index": 1} in report["headers_removed"]


def test_a_dead_clamd_fails_over_to_the_next_and_all_dead_is_a_tempfail(clamd, spamd, tmp_path):
    dead = f"unix:{tmp_path}/no-such.sock"
    report = run(EICAR_CASES["plain"], "smtp", f'antivirus.servers=["{dead}", "{clamd.endpoint}"]',
                 servers(clamd, spamd)[1])
    assert report["verdict"] == "reject"  # the second server answered
    report = run(EICAR_CASES["plain"], "smtp", f'antivirus.servers=["{dead}"]', servers(clamd, spamd)[1])
    assert report["verdict"] == "tempfail"
    assert report["smtp_reply"].startswith("451 4.7.1 Temporary problem scanning this message for viruses")
    assert outcome(report, "antivirus") == "error:clamd"


def test_a_dead_spamd_lets_mail_through_with_a_header_saying_so(clamd, tmp_path):
    report = run(GTUBE_MESSAGE, "smtp", f'antivirus.servers=["{clamd.endpoint}"]', 'spam.servers=["127.0.0.1:9"]')
    assert report["verdict"] == "accept"  # the default policy: spam errors accept on port 25
    headers = {h["name"]: h["value"] for h in report["headers_added"]}
    assert headers["X-Spam-Status"].startswith("Unknown, not scanned")


def test_messages_over_the_scanner_limit_are_skipped_or_refused_per_policy(clamd, spamd):
    big = b"From: a@example.net\nTo: u@example.test\nSubject: big\n\n" + b"x" * 200_000 + b"\n"
    report = run(big, "smtp", *servers(clamd, spamd), "antivirus.max_size=100000")
    assert outcome(report, "antivirus") == "skipped:size" and report["verdict"] == "accept"
    report = run(big, "smtp", *servers(clamd, spamd), "antivirus.max_size=100000", 'antivirus.on_oversize="reject"')
    assert report["smtp_reply"].startswith("552 5.3.4")


def test_clamd_killed_then_restarted(clamd, spamd):
    clamd.kill()
    try:
        report = run(EICAR_CASES["plain"], "smtp", *servers(clamd, spamd))
        assert report["verdict"] == "tempfail"
    finally:
        clamd.restart()
    assert run(EICAR_CASES["plain"], "smtp", *servers(clamd, spamd))["verdict"] == "reject"


def test_forged_spam_headers_are_removed_even_when_too_big_to_scan(clamd, spamd):
    raw = b"From: a@example.net\nTo: u@example.test\nX-Spam-Status: No\nX-Spam-Flag: NO\nSubject: big\n\n" + \
        b"y" * 50_000 + b"\n"
    report = run(raw, "smtp", *servers(clamd, spamd), "spam.max_size=10000")
    assert outcome(report, "spam") == "skipped:size"
    assert {"name": "X-Spam-Status", "index": 1} in report["headers_removed"]
    assert {"name": "X-Spam-Flag", "index": 1} in report["headers_removed"]
