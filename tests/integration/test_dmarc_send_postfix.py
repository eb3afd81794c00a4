"""DMARC aggregate reports end to end: mail from several sender domains reaches the real Postfix
(port 25, the milter with dmarc_reports.record = true, nsd), the dmarc check records its rows;
`dmarc-reports send --dry-run --archive DIR` makes schema-valid reports with exactly those rows;
`dmarc-reports send` mails them through Postfix's milter-free relay port to the sink, each to its
rua, gzip attached, DKIM-signed with the site key. A domain whose rua is another organisation's
gets its report only where that organisation publishes the `_report._dmarc` record."""

from __future__ import annotations

import gzip
import io
import os
import pwd
import smtplib
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from policymilter.cli import build_parser
from policymilter.dmarcreports import send
from tests import authkit
from tests.conftest import DEFAULT_POLICY
from tests.dmarckit import Received, archived, received, verifies
from tests.integration.dns_server import DnsServer, Zone
from tests.integration.stack import MILTER_USER, MailStack, transaction

pytestmark = pytest.mark.integration

RCPT = "user@example.test"
CLIENT = "127.0.0.1"
SITE_KEY = authkit.rsa_key("example.org", "s1")  # signs our reports
PASS_KEY = authkit.rsa_key("pass.test", "s2026")  # signs pass.test's mail
REPORTS = "dmarc-noreply@example.org"
DAY = 86400


def zones() -> list[Zone]:
    def domain(origin: str, spf: str, dmarc: str) -> Zone:
        return Zone(origin).add("@", "A", CLIENT).txt("@", spf).txt("_dmarc", dmarc)

    return [
        domain("pass.test", f"v=spf1 ip4:{CLIENT} -all", "v=DMARC1; p=reject; rua=mailto:dmarc@pass.test").txt(
            PASS_KEY.owner, PASS_KEY.record),
        domain("fail.test", "v=spf1 ip4:192.0.2.1 -all", "v=DMARC1; p=reject; rua=mailto:agg@fail.test!10m"),
        # external destinations: collector.test takes soft.test's reports, not unauth.test's
        domain("soft.test", "v=spf1 ~all", "v=DMARC1; p=none; rua=mailto:reports@collector.test"),
        domain("unauth.test", f"v=spf1 ip4:{CLIENT} -all", "v=DMARC1; p=none; rua=mailto:reports@collector.test"),
        Zone("collector.test").txt("soft.test._report._dmarc", "v=DMARC1"),
        domain("example.org", "v=spf1 ip4:192.0.2.10 -all", "v=DMARC1; p=none").txt(SITE_KEY.owner,
                                                                                   SITE_KEY.record),
        Zone("example.test"),
    ]


# (From, MAIL FROM, DKIM-signed, times, expected SMTP code): the mail the site receives.
TRAFFIC = [
    ("alice@pass.test", "alice@pass.test", True, 2, 250),
    ("bob@pass.test", "bob@pass.test", False, 1, 250),  # SPF aligned only
    ("ceo@fail.test", "ceo@fail.test", False, 2, 550),  # p=reject and nothing passes: refused, still reported
    ("news@soft.test", "news@soft.test", False, 1, 250),
    ("info@unauth.test", "info@unauth.test", False, 3, 250),
]
# rua address -> report domain -> {(source_ip, header_from, envelope_from, disposition): count}
EXPECTED = {
    "dmarc@pass.test": {"pass.test": {(CLIENT, "pass.test", "pass.test", "pass"): 3}},
    "agg@fail.test": {"fail.test": {(CLIENT, "fail.test", "fail.test", "reject"): 2}},
    "reports@collector.test": {"soft.test": {(CLIENT, "soft.test", "soft.test", "none"): 1}},
}


@pytest.fixture(scope="module")
def dns_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DnsServer]:
    with DnsServer(tmp_path_factory.mktemp("dns"), zones()) as server:
        yield server


def options(dns_server: DnsServer, key_file: Path) -> list[str]:
    values = [f'dns.nameservers=["{dns_server.nameserver}"]', "dns.timeout=1", "dns.lifetime=3",
              'site.domains=["example.org"]', "site.authserv_id=mx.example.test",
              f'signing.keys={{"example.org" = [{{ selector = "s1", key_file = "{key_file}" }}]}}',
              "dmarc_reports.record=true", 'dmarc_reports.org_name="Example Org"', f'dmarc_reports.email="{REPORTS}"',
              "antivirus.enabled=false", "spam.enabled=false"]  # scanning has its own end-to-end tests
    return [part for value in values for part in ("-o", value)]


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory, dns_server: DnsServer) -> Iterator[tuple[MailStack, Path]]:
    """The milter as deployed (two workers, its own user, which owns the state store and the site's
    key); `send` then runs as root, as an admin would, and acts as that user where it must."""
    with MailStack(tmp_path_factory.mktemp("stack")) as stack:
        milter_user = pwd.getpwnam(MILTER_USER)
        keys = stack.directory / "keys"
        keys.mkdir(mode=0o700)
        key_file = keys / "example.org.s1.key"
        key_file.write_bytes(SITE_KEY.private)
        os.chmod(key_file, 0o600)
        for path in (keys, key_file):
            os.chown(path, milter_user.pw_uid, milter_user.pw_gid)
        stack.start_milter([sys.executable, "-m", "policymilter", "run", "--policy", str(DEFAULT_POLICY),
                            "--socket", f"unix:{stack.milter_socket}", "--workers", "2",
                            "--user", MILTER_USER, "--group", "postfix", *options(dns_server, key_file)])
        yield stack, key_file


@pytest.fixture(scope="module")
def stack(running: tuple[MailStack, Path]) -> MailStack:
    return running[0]


@pytest.fixture(scope="module")
def key_file(running: tuple[MailStack, Path]) -> Path:
    return running[1]


@pytest.fixture(scope="module")
def traffic(stack: MailStack) -> None:
    """Every message of TRAFFIC through port 25, each answered as expected."""
    for number, (author, sender, signed, times, expected) in enumerate(TRAFFIC):
        for copy in range(times):
            raw = authkit.message(author, RCPT, f"traffic {number}.{copy}")
            if signed:
                raw = authkit.sign(raw, PASS_KEY)
            with smtplib.SMTP(CLIENT, stack.ports["smtp"], timeout=30) as client:
                client.ehlo("mail.pass.test")
                code, text = transaction(client, sender, RCPT, raw)
            assert code == expected, (author, text)


def run_send(stack: MailStack, dns_server: DnsServer, key_file: Path, *argv: str) -> tuple[int, str]:
    """`dmarc-reports send` as root on the milter's store, relaying through Postfix's milter-free
    port, a day later (the rows' period is over by then)."""
    args = build_parser().parse_args(["dmarc-reports", "send", "--policy", str(DEFAULT_POLICY),
                                      *options(dns_server, key_file), "-o", f'state.store="{stack.state_store}"',
                                      "-o", f'dmarc_reports.relay="127.0.0.1:{stack.ports["notify"]}"', *argv])
    out = io.StringIO()
    return send.main(args, out, now=time.time() + DAY), out.getvalue()


def by_domain(reports: list[Received]) -> dict[str, Received]:
    return {report.domain: report for report in reports}


def test_dry_run_archives_reports_with_exactly_the_recorded_rows(stack, dns_server, key_file, traffic, tmp_path):
    archive = tmp_path / "archive"
    code, output = run_send(stack, dns_server, key_file, "--dry-run", "--archive", str(archive))
    assert code == 0, output
    files = sorted(archive.iterdir())
    assert [path.name.split("!")[1] for path in files] == ["fail.test", "pass.test", "soft.test", "unauth.test"]
    reports = by_domain([archived(gzip.decompress(path.read_bytes())) for path in files])  # each schema-valid
    for expected in EXPECTED.values():
        for domain, counts in expected.items():
            assert reports[domain].counts() == counts
    assert reports["unauth.test"].counts() == {(CLIENT, "unauth.test", "unauth.test", "none"): 3}
    assert len(reports["pass.test"].root().findall("{urn:ietf:params:xml:ns:dmarc-2.0}record")) == 2  # DKIM, SPF only
    assert "not authorised" in output and "would be sent" in output
    assert [message for message in stack.delivered() if message.mail_from == REPORTS] == []


def test_send_mails_each_report_to_its_rua_through_postfix_signed(stack, dns_server, key_file, traffic):
    code, output = run_send(stack, dns_server, key_file)
    assert code == 0, output
    arrived: dict[str, dict[str, Received]] = {}
    for address in EXPECTED:
        delivered = stack.wait_delivered(lambda d, a=address: d.mail_from == REPORTS and d.rcpts == [a])
        arrived[address] = by_domain([received(delivered)])
    for address, reports in arrived.items():
        assert {domain: report.counts() for domain, report in reports.items()} == EXPECTED[address]
        for report in reports.values():
            assert verifies(report.delivered.data, SITE_KEY), address
            assert report.message["To"] == address
            assert report.file_name.startswith(f"example.org!{report.domain}!")
    assert ("mailto:reports@collector.test skipped: external destination not authorised: no v=DMARC1 TXT record at "
            "unauth.test._report._dmarc.collector.test") in output
    # everything handed over was delivered: exactly one report to collector.test (soft.test's)
    deadline = time.monotonic() + 20
    while "Mail queue is empty" not in stack.postqueue() and time.monotonic() < deadline:
        time.sleep(0.05)
    to_collector = [d for d in stack.delivered() if d.rcpts == ["reports@collector.test"]]
    assert [received(d).domain for d in to_collector] == ["soft.test"]
    # and every row was forgotten: a second run has nothing to do
    assert run_send(stack, dns_server, key_file) == (0, "")
