"""Inbound sender authentication end to end: real Postfix on the port-25 door, real nsd, the milter."""

from __future__ import annotations

import email
import email.policy
import json
import re
import smtplib
import sys
from collections.abc import Iterator

import pytest

from policymilter.cli import main as cli_main
from tests import authkit
from tests.conftest import DEFAULT_POLICY
from tests.integration.authzones import AUTHSERV_ID, KEYS, zones
from tests.integration.dns_server import DnsServer, Zone
from tests.integration.stack import MailStack, transaction

pytestmark = pytest.mark.integration

RCPT = "user@example.test"


def options(server: DnsServer) -> list[str]:
    values = [f'dns.nameservers=["{server.front_nameserver}"]', "dns.timeout=1", "dns.lifetime=3",
              f"site.authserv_id={AUTHSERV_ID}", 'site.domains=["example.org"]', 'arc.trusted_sealers=["list.test"]',
              # scanning has its own end-to-end tests with real clamd and spamd
              "antivirus.enabled=false", "spam.enabled=false"]
    return [part for value in values for part in ("-o", value)]


@pytest.fixture(scope="module")
def dns_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DnsServer]:
    with DnsServer(tmp_path_factory.mktemp("dns"), [*zones(), Zone("example.test")],
                   silent_suffixes=["slow.test"]) as server:
        yield server


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, dns_server: DnsServer) -> Iterator[MailStack]:
    with MailStack(tmp_path_factory.mktemp("stack")) as running:
        running.start_milter([sys.executable, "-m", "policymilter", "run", "--policy", str(DEFAULT_POLICY),
                              "--socket", f"unix:{running.milter_socket}", *options(dns_server)])
        yield running


def send(stack: MailStack, sender: str, raw: bytes, rcpt: str = RCPT) -> tuple[int, str]:
    """MAIL/RCPT/DATA on port 25; (code, text) of the DATA reply."""
    with smtplib.SMTP("127.0.0.1", stack.ports["smtp"], timeout=30) as client:
        client.ehlo("mail.pass.test")
        return transaction(client, sender, rcpt, raw)


def delivered_headers(stack: MailStack, rcpt: str, subject: str) -> email.message.Message:
    found = stack.wait_delivered(lambda d: rcpt in d.rcpts and subject.encode() in d.data)
    return email.message_from_bytes(found.data, policy=email.policy.compat32)


def test_spoof_of_a_p_reject_domain_is_refused_with_5_7_1(stack):
    code, text = send(stack, "ceo@fail.test", authkit.message("CEO <ceo@fail.test>", RCPT, "pay now"))
    assert code == 550
    assert text.startswith("5.7.1 Message rejected: fail.test publishes a DMARC policy of reject")


def test_aligned_dkim_message_is_delivered_with_one_authentication_results(stack):
    raw = authkit.sign(authkit.message("Alice <alice@pass.test>", RCPT, "signed hello"), KEYS["rsa"])
    code, _ = send(stack, "alice@pass.test", raw)
    assert code == 250
    headers = delivered_headers(stack, RCPT, "signed hello")
    [ours] = headers.get_all("Authentication-Results")
    assert ours.startswith(f"{AUTHSERV_ID};")
    assert "dkim=pass" in ours and "header.d=pass.test" in ours and "dmarc=pass" in ours
    assert "spf=pass smtp.mailfrom=pass.test" in ours


def test_forged_authentication_results_are_gone_from_the_delivered_copy(stack):
    forged = (f"Authentication-Results: {AUTHSERV_ID}; dkim=pass header.d=bank.test; dmarc=pass\n"
              "Authentication-Results: elsewhere.example; spf=pass smtp.mailfrom=pass.test\n")
    raw = authkit.message("alice@pass.test", RCPT, "forged results", extra=forged)
    assert send(stack, "alice@pass.test", raw)[0] == 250
    values = delivered_headers(stack, RCPT, "forged results").get_all("Authentication-Results")
    assert not any("bank.test" in value for value in values)
    assert [v.split(";")[0] for v in values].count(AUTHSERV_ID) == 1
    assert any(v.startswith("elsewhere.example;") for v in values)  # others' headers are kept


def test_dns_timeout_gives_a_temporary_failure(stack):
    code, text = send(stack, "x@pass.test", authkit.message("x@slow.test", RCPT, "slow"))
    assert code == 451
    assert text.startswith("4.7.1 Temporary DNS failure")


def test_p_quarantine_failure_lands_in_the_hold_queue(stack):
    code, text = send(stack, "x@quarantine.test", authkit.message("x@quarantine.test", RCPT, "held"))
    assert code == 250
    queue_id = re.search(r"queued as (\w+)", text).group(1)
    stack.wait_maillog(rf"{queue_id}: milter-hold: END-OF-MESSAGE")
    assert any(entry.get("queue_id") == queue_id and entry.get("queue_name") == "hold" for entry in stack.queue())


def test_explain_shows_the_same_results_for_the_same_message(stack, dns_server, tmp_path, capsys):
    raw = authkit.sign(authkit.message("Alice <alice@pass.test>", RCPT, "explained"), KEYS["ed"])
    assert send(stack, "alice@pass.test", raw)[0] == 250
    delivered = delivered_headers(stack, RCPT, "explained")["Authentication-Results"]
    eml = tmp_path / "m.eml"
    eml.write_bytes(raw)
    assert cli_main(["explain", "--policy", str(DEFAULT_POLICY), *options(dns_server), "--listener", "smtp",
                     "--client", "127.0.0.1", "--helo", "mail.pass.test", "--mail-from", "alice@pass.test",
                     "--json", str(eml)]) == 0
    report = json.loads(capsys.readouterr().out)
    outcomes = {c["check"]: c["outcome"] for c in report["checks"]}
    assert outcomes["dkim"] == "pass" and outcomes["dmarc"] == "pass" and outcomes["spf"] == "pass"
    [explained] = [h["value"] for h in report["headers_added"] if h["name"] == "Authentication-Results"]
    assert " ".join(explained.split()) == " ".join(delivered.split())


def test_simple_canonicalization_and_raw_header_layout_survive_postfix(stack):
    """Byte-exact headers need SMFIP_HDR_LEADSPC negotiated; our own header gets its one space."""
    raw = authkit.sign(authkit.message("alice@pass.test", RCPT, "simple canon"), KEYS["rsa"],
                       canonicalize=(b"simple", b"simple"))
    assert send(stack, "alice@pass.test", raw)[0] == 250
    found = stack.wait_delivered(lambda d: b"simple canon" in d.data)
    [line] = [line for line in found.data.split(b"\r\n") if line.startswith(b"Authentication-Results:")]
    assert line == f"Authentication-Results: {AUTHSERV_ID};".encode()  # folded after each result
    assert b"dkim=pass" in found.data.split(b"\r\n\r\n")[0]


def test_mail_forwarded_by_a_trusted_list_passes_through_postfix(stack):
    original = authkit.sign(authkit.message("a@pass.test", RCPT, "list post"), KEYS["rsa"])
    forwarded = authkit.arc_seal(original.replace(b"Subject: list post", b"Subject: [list] list post"),
                                 KEYS["list"], "mx.list.test",
                                 "dkim=pass header.d=pass.test; dmarc=pass header.from=pass.test")
    code, _ = send(stack, "bounces@list.test", forwarded)
    assert code == 250
    values = delivered_headers(stack, RCPT, "[list] list post").get_all("Authentication-Results")
    [ours] = [value for value in values if value.startswith(f"{AUTHSERV_ID};")]
    assert "arc=pass" in ours and "dmarc=fail" in ours  # DKIM broke in the list; ARC vouches
