"""dmarc_reports.record end to end: real Postfix on port 25, real nsd, the milter as deployed (two
workers, its own user); mail from three sender domains with different DMARC results, then the
rows the store holds, exactly."""

from __future__ import annotations

import smtplib
import sys
from collections.abc import Iterator

import pytest

from policymilter.dmarcreports.rows import DkimAuth, Published, Row, SpfAuth
from policymilter.state import open_store
from tests import authkit
from tests.conftest import DEFAULT_POLICY
from tests.integration.authzones import AUTHSERV_ID, CLIENT, KEYS, zones
from tests.integration.dns_server import DnsServer, Zone
from tests.integration.stack import MailStack, transaction

pytestmark = pytest.mark.integration

RCPT = "user@example.test"


@pytest.fixture(scope="module")
def dns_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DnsServer]:
    with DnsServer(tmp_path_factory.mktemp("dns"), [*zones(), Zone("example.test")]) as server:
        yield server


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, dns_server: DnsServer) -> Iterator[MailStack]:
    values = [f'dns.nameservers=["{dns_server.front_nameserver}"]', "dns.timeout=1", "dns.lifetime=3",
              f"site.authserv_id={AUTHSERV_ID}", 'site.domains=["example.org"]',
              "antivirus.enabled=false", "spam.enabled=false",
              "dmarc_reports.record=true", 'dmarc_reports.org_name="Example Receiver"',
              'dmarc_reports.email="dmarc-noreply@example.org"']
    with MailStack(tmp_path_factory.mktemp("stack")) as running:
        running.start_milter([sys.executable, "-m", "policymilter", "run", "--policy", str(DEFAULT_POLICY),
                              "--socket", f"unix:{running.milter_socket}", "--workers", "2",
                              "--user", "policy-milter", "--group", "postfix",
                              *(part for value in values for part in ("-o", value))])
        yield running


def send(stack: MailStack, sender: str, raw: bytes) -> int:
    with smtplib.SMTP("127.0.0.1", stack.ports["smtp"], timeout=30) as client:
        client.ehlo("mail.pass.test")
        return transaction(client, sender, RCPT, raw)[0]


def row(domain: str, p: str, disposition: str, spf_result: str, *dkim: DkimAuth, aligned: bool = False) -> Row:
    return Row(source_ip=CLIENT, header_from=domain, envelope_from=domain, envelope_to="example.test",
               published=Published(domain, p), disposition=disposition,  # type: ignore[arg-type]
               dkim_aligned=aligned, spf_aligned=aligned, dkim=dkim, spf=(SpfAuth(domain, "mfrom", spf_result),))


def test_three_sender_domains_become_exact_rows(stack):
    sent = []
    for n in range(3):  # aligned DKIM and SPF: delivered
        raw = authkit.sign(authkit.message("Alice <alice@pass.test>", RCPT, f"pass {n}"), KEYS["rsa"])
        sent.append(send(stack, "alice@pass.test", raw))
    for n in range(2):  # p=reject, SPF fail, unsigned: refused
        sent.append(send(stack, "ceo@fail.test", authkit.message("CEO <ceo@fail.test>", RCPT, f"forged {n}")))
    sent.append(send(stack, "x@soft.test", authkit.message("X <x@soft.test>", RCPT, "monitored")))  # p=none
    assert sent == [250, 250, 250, 550, 550, 250]
    store = open_store(stack.state_store)
    try:
        pending = store.dmarc_pending(2**40)
        assert [domain for _, domain in pending] == ["fail.test", "pass.test", "soft.test"]
        [period] = {period for period, _ in pending}
        assert period % 86400 == 0
        found = {domain: [(Row.from_key(key), count) for key, count in store.dmarc_rows(period, domain)]
                 for domain in ("pass.test", "fail.test", "soft.test")}
    finally:
        store.close()
    assert found == {
        "pass.test": [(row("pass.test", "reject", "pass", "pass", DkimAuth("pass.test", "rsa", "pass"),
                           aligned=True), 3)],
        "fail.test": [(row("fail.test", "reject", "reject", "fail"), 2)],
        "soft.test": [(row("soft.test", "none", "none", "softfail"), 1)],
    }
