"""Content policy end to end: real Postfix, real clamd and spamd, the milter with the shipped policy."""

from __future__ import annotations

import email
import email.policy
import smtplib
import sys
from collections.abc import Iterator

import pytest

from tests import attachment_corpus as corpus
from tests.conftest import DEFAULT_POLICY
from tests.integration.scanners import EICAR, GTUBE, Clamd, Spamd
from tests.integration.stack import MailStack, transaction, unverified_tls_context
from tests.integration.test_scanning import nested, with_attachment, zipped

pytestmark = pytest.mark.integration

PE = b"MZ" + b"\0" * 58 + (64).to_bytes(4, "little") + b"PE\0\0" + b"\0" * 200  # a minimal PE header
LOCAL = "user@example.test"
EXTERNAL = "friend@elsewhere.test"


@pytest.fixture(scope="module")
def scanners(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Clamd, Spamd]]:
    with Clamd(tmp_path_factory.mktemp("clamd")) as clamd, Spamd(tmp_path_factory.mktemp("spamd")) as spamd:
        yield clamd, spamd


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, scanners: tuple[Clamd, Spamd]) -> Iterator[MailStack]:
    clamd, spamd = scanners
    options = [f'antivirus.servers=["{clamd.endpoint}"]', f'spam.servers=["{spamd.endpoint}"]',
               # sender authentication and ownership have their own end-to-end tests
               "spf.enabled=false", "dkim.enabled=false", "arc.enabled=false", "dmarc.enabled=false",
               "sender.enabled=false"]
    with MailStack(tmp_path_factory.mktemp("stack")) as running:
        running.start_milter([sys.executable, "-m", "policymilter", "run", "--policy", str(DEFAULT_POLICY),
                              "--socket", f"unix:{running.milter_socket}",
                              *(part for option in options for part in ("-o", option))])
        yield running


def send(stack: MailStack, door: str, raw: bytes, rcpt: str, login: str | None = None) -> tuple[int, str]:
    """One message through a door; (code, text) of the DATA reply (or of the first refusal)."""
    if door == "submissions":
        client: smtplib.SMTP = smtplib.SMTP_SSL("127.0.0.1", stack.ports[door], context=unverified_tls_context(),
                                                timeout=30)
        client.ehlo("laptop.example.net")
    else:
        client = smtplib.SMTP("127.0.0.1", stack.ports[door], timeout=30)
        client.ehlo("laptop.example.net")
        if login:
            client.starttls(context=unverified_tls_context())
            client.ehlo("laptop.example.net")
    with client:
        if login:
            client.login(login, stack.users[login])
        return transaction(client, "a@example.org", rcpt, raw)


def delivered(stack: MailStack, subject: str) -> email.message.Message:
    found = stack.wait_delivered(lambda d: f"Subject: {subject}".encode() in d.data)
    return email.message_from_bytes(found.data, policy=email.policy.compat32)


def message(subject: str, body: bytes) -> bytes:
    return f"From: a@example.org\nTo: {LOCAL}\nSubject: {subject}\n\n".encode() + body + b"\n"


def test_an_exe_on_port_25_is_refused_with_the_587_hint(stack):
    code, text = send(stack, "smtp", with_attachment("setup.exe", PE, "exe on 25"), LOCAL)
    assert code == 550
    assert text.startswith('5.7.1 Attachment "setup.exe" is blocked')
    assert "587" in text


def test_the_same_exe_authenticated_on_587_is_delivered(stack):
    code, _ = send(stack, "submission", with_attachment("setup.exe", PE, "exe on 587"), EXTERNAL, login="alice")
    assert code == 250
    copy = delivered(stack, "exe on 587")
    assert copy["X-Spam-Status"] is None  # not scanned on 587: no scanner headers


# 7-Zip, WinRAR, Info-ZIP and libarchive extract this member as invoice.js; zipfile sees invoice.txt.
UNICODE_PATH_ZIP = corpus.zip_with_unicode_path("invoice.txt", "invoice.js", b"WScript.Echo(1)\r\n")


def test_a_zip_whose_unicode_path_names_a_script_is_refused_on_25_and_delivered_on_587(stack):
    code, text = send(stack, "smtp", with_attachment("invoice.zip", UNICODE_PATH_ZIP, "unicode path 25"), LOCAL)
    assert code == 550
    assert text.startswith('5.7.1 Attachment "invoice.js" in "invoice.zip" is blocked (extension .js)')
    assert "authenticated submission on port 587" in text
    code, _ = send(stack, "submission", with_attachment("invoice.zip", UNICODE_PATH_ZIP, "unicode path 587"),
                   EXTERNAL, login="alice")
    assert code == 250
    delivered(stack, "unicode path 587")


# unzip and libarchive follow the local header (deflate: a PE), zipfile the central one
# (stored: bytes that are no PE).
METHOD_MISMATCH_ZIP = corpus.zip_method_mismatch("report.dat", PE * 8)


def test_a_zip_whose_headers_disagree_on_the_method_is_refused_on_25_and_delivered_on_587(stack):
    code, text = send(stack, "smtp", with_attachment("report.zip", METHOD_MISMATCH_ZIP, "method mismatch 25"), LOCAL)
    assert code == 550
    assert text.startswith('5.7.1 Attachment "report.zip" is blocked (cannot be inspected: zip headers disagree: '
                           "compression method)")
    assert "authenticated submission on port 587" in text
    code, _ = send(stack, "submission", with_attachment("report.zip", METHOD_MISMATCH_ZIP, "method mismatch 587"),
                   EXTERNAL, login="alice")
    assert code == 250
    delivered(stack, "method mismatch 587")


def test_a_nested_multipart_reusing_its_parents_boundary_is_refused_on_25(stack):
    # Thunderbird shows the attachment after the inner close delimiter; the stdlib reads it as
    # the outer multipart's epilogue. Postfix passes the bytes on as they are.
    raw = corpus.nested_same_boundary().replace(b"Subject: Test", b"Subject: same boundary 25")
    code, text = send(stack, "smtp", raw, LOCAL)
    assert code == 550
    assert text.startswith("5.7.1 Message part 1 is blocked (cannot be inspected: nested boundary clashes with its "
                           "parent's)")


# A signed file signed again ("firma matrioska"): signature tools open both layers and save a PE.
DOUBLE_P7M = corpus.cms_signed(corpus.cms_signed(PE * 8))


def test_a_pe_signed_twice_as_p7m_is_refused_on_25(stack):
    code, text = send(stack, "smtp", with_attachment("invoice.pdf.p7m.p7m", DOUBLE_P7M, "double p7m 25"), LOCAL)
    assert code == 550
    assert text.startswith('5.7.1 Attachment "invoice.pdf" in "invoice.pdf.p7m.p7m" is blocked (content is a '
                           "Windows executable (PE))")


def test_a_signed_fatturapa_invoice_is_delivered_on_25(stack):
    # Its first line ("<ns2:FatturaElettronica ...") has the shape of a header field: still a file.
    raw = with_attachment("IT01234567890_FPR01.xml.p7m", corpus.cms_signed(corpus.fattura_xml()), "fattura 25")
    assert send(stack, "smtp", raw, LOCAL)[0] == 250
    delivered(stack, "fattura 25")


@pytest.mark.parametrize(
    ("case", "raw"),
    [("plain", with_attachment("eicar.com.txt", EICAR, "eicar plain")),
     ("zipped", with_attachment("eicar.zip", zipped("eicar.com.txt", EICAR), "eicar zipped")),
     ("nested", nested(with_attachment("eicar.txt", EICAR, "eicar nested")))],
)
def test_eicar_is_refused_on_25_and_465_and_delivered_on_587(stack, scanners, case, raw):
    signature = scanners[0].signature_name
    code, text = send(stack, "smtp", raw, LOCAL)
    assert (code, text) == (550, f"5.7.1 Message refused: it contains a virus ({signature})")
    code, text = send(stack, "submissions", raw, EXTERNAL, login="carol")
    assert (code, text) == (550, f"5.7.1 Message refused: it contains a virus ({signature})")
    code, _ = send(stack, "submission", raw, EXTERNAL, login="alice")
    assert code == 250


def test_gtube_is_refused_on_25_and_not_scanned_on_587(stack):
    code, text = send(stack, "smtp", message("gtube 25", GTUBE), LOCAL)
    assert code == 550 and text.startswith("5.7.1 Message refused: it looks like spam")
    code, _ = send(stack, "submission", message("gtube 587", GTUBE), EXTERNAL, login="alice")
    assert code == 250
    assert delivered(stack, "gtube 587")["X-Spam-Status"] is None


def test_clean_mail_on_25_is_delivered_with_spam_headers(stack):
    assert send(stack, "smtp", message("clean 25", b"see you at ten"), LOCAL)[0] == 250
    copy = delivered(stack, "clean 25")
    assert copy["X-Spam-Status"].startswith("No, score=")
    assert copy["X-Spam-Score"] is not None


def test_clamd_killed_means_tempfail_and_the_retry_is_delivered(stack, scanners):
    clamd = scanners[0]
    raw = message("retry after clamd", b"nothing to see")
    clamd.kill()
    try:
        code, text = send(stack, "smtp", raw, LOCAL)
        assert code == 451 and text.startswith("4.7.1 Temporary problem scanning this message for viruses")
    finally:
        clamd.restart()
    assert send(stack, "smtp", raw, LOCAL)[0] == 250
    delivered(stack, "retry after clamd")



def test_spamd_sees_the_client_as_postfix_received_it(stack):
    """Postfix does not hand a milter its own Received header; the milter writes one for spamd
    (hostile-suite finding: every message was scored NO_RECEIVED,NO_RELAYS)."""
    code, _ = send(stack, "smtp", message("received for spamd", b"hello\n"), LOCAL)
    assert code == 250
    status = delivered(stack, "received for spamd")["X-Spam-Status"]
    assert status.startswith("No, score=") and "NO_RECEIVED" not in status and "NO_RELAYS" not in status, status
