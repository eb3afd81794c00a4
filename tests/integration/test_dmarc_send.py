"""`policy-milter dmarc-reports send` against a real SQLite store (filled through the store's API),
a real nsd (the external-destination check) and an aiosmtpd relay that can be told to refuse.
The run through the real Postfix, with rows the dmarc check recorded, is test_dmarc_send_postfix.py."""

from __future__ import annotations

import calendar
import gzip
import io
import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from policymilter.cli import build_parser
from policymilter.cli import main as cli_main
from policymilter.dmarcreports import send
from policymilter.dmarcreports.destinations import Status, decide
from policymilter.dmarcreports.rows import DkimAuth, Published, Row, SpfAuth
from policymilter.dns import Resolver
from policymilter.policy.model import Policy
from policymilter.state import open_store
from policymilter.state.model import Store
from tests import authkit
from tests.conftest import DEFAULT_POLICY
from tests.dmarckit import NS, Sink, received, verifies
from tests.integration.dns_server import DnsServer, Zone

pytestmark = pytest.mark.integration

DAY = 86400
PERIOD = calendar.timegm((2026, 12, 1, 0, 0, 0))
NOW = PERIOD + DAY + 3600  # 01:00 the next day: PERIOD is over
KEY = authkit.rsa_key("example.org", "s1")
REPORTS = "dmarc-noreply@example.org"


def published(domain: str, *rua: str) -> Published:
    return Published(domain, "reject", rua=rua)


def row(domain: str, *rua: str, ip: str = "192.0.2.1", disposition: str = "pass") -> Row:
    aligned = disposition == "pass"
    return Row(ip, domain, domain, "example.org", published(domain, *rua), disposition, aligned, aligned,  # type: ignore[arg-type]
               dkim=(DkimAuth(domain, "s1", "pass" if aligned else "fail"),),
               spf=(SpfAuth(domain, "mfrom", "pass" if aligned else "fail"),))


SENDER = row("sender.test", "mailto:agg@sender.test")
EXTERNAL = row("ext.test", "mailto:reports@collector.test")  # collector.test publishes ext.test's authorisation
UNAUTHORISED = row("unauth.test", "mailto:reports@collector.test")  # ... but not unauth.test's
NOT_DMARC = row("notdmarc.test", "mailto:reports@collector.test")  # a TXT there, but not v=DMARC1


@pytest.fixture(scope="module")
def dns_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DnsServer]:
    collector = (Zone("collector.test").txt("ext.test._report._dmarc", "v=DMARC1;")
                 .txt("notdmarc.test._report._dmarc", "v=spf1 -all")
                 .txt("moved.test._report._dmarc",
                      "v=DMARC1; rua=mailto:new@collector.test!5m,mailto:two@collector.test")
                 .txt("away.test._report._dmarc", "v=DMARC1; rua=mailto:new@collector.test,mailto:x@victim.test"))
    with DnsServer(tmp_path_factory.mktemp("dns"), [collector, Zone("sender.test")],
                   silent_suffixes=["silent.test", "silent.example"]) as server:
        yield server


@pytest.fixture
def sink() -> Iterator[Sink]:
    server = Sink()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "example.org.s1.key"
    path.write_bytes(KEY.private)
    os.chmod(path, 0o600)
    return path


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = open_store(f"sqlite:{tmp_path}/state.db")
    yield opened
    opened.close()


def record(store: Store, report_row: Row, times: int = 1, period: int = PERIOD) -> None:
    for _ in range(times):
        assert store.dmarc_record(period, report_row.published.domain, report_row.key(), period + 60, 10000,
                                  period + DAY + 7 * DAY)


class Run:
    """One `dmarc-reports send` through the real argument parser; its exit status and output."""

    def __init__(self, tmp_path: Path, dns_server: DnsServer, relay: str, key_file: Path | None) -> None:
        self.tmp_path, self.dns_server, self.relay, self.key_file = tmp_path, dns_server, relay, key_file

    def options(self, *extra: str) -> list[str]:
        values = [f'state.store="sqlite:{self.tmp_path}/state.db"',
                  f'dns.nameservers=["{self.dns_server.front_nameserver}"]', "dns.timeout=1", "dns.lifetime=2",
                  'dmarc_reports.org_name="Example Org"', f'dmarc_reports.email="{REPORTS}"',
                  f'dmarc_reports.relay="{self.relay}"', 'site.domains=["example.org"]', *extra]
        if self.key_file is not None:
            values.append(f'signing.keys={{"example.org" = [{{ selector = "s1", key_file = "{self.key_file}" }}]}}')
        return [part for value in values for part in ("-o", value)]

    def __call__(self, *argv: str, options: tuple[str, ...] = (), now: float = NOW) -> tuple[int, str]:
        args = build_parser().parse_args(["dmarc-reports", "send", "--policy", str(DEFAULT_POLICY), "--user", "root",
                                          *self.options(*options), *argv])
        out = io.StringIO()
        return send.main(args, out, now=now), out.getvalue()


@pytest.fixture
def run(tmp_path: Path, dns_server: DnsServer, sink: Sink, key_file: Path) -> Run:
    return Run(tmp_path, dns_server, sink.relay, key_file)


def line_of(output: str, domain: str) -> str:
    [found] = [line for line in output.splitlines() if line.startswith(domain + " ")]
    return found


# --- the external destination check, against nsd ------------------------------------------------

@pytest.mark.parametrize("domain, status, reason", [
    ("sender.test", Status.SEND, ""),
    ("ext.test", Status.SEND, "external destination authorised by ext.test._report._dmarc.collector.test"),
    ("unauth.test", Status.SKIP, "external destination not authorised: no v=DMARC1 TXT record at "
                                 "unauth.test._report._dmarc.collector.test"),
    ("notdmarc.test", Status.SKIP, "external destination not authorised: no v=DMARC1 TXT record at "
                                   "notdmarc.test._report._dmarc.collector.test"),
])
def test_external_destinations_need_the_authorising_record(dns_server, domain, status, reason):
    resolver = Resolver([dns_server.nameserver], timeout=1, lifetime=2)
    uri = "mailto:agg@sender.test" if domain == "sender.test" else "mailto:reports@collector.test"
    [decision] = decide(domain, [uri], (), resolver)
    assert (decision.status, decision.reason) == (status, reason)


@pytest.mark.parametrize("domain, expected", [
    # RFC 9990 §4 step 9: the authorising record's rua= replaces the URI, on the same host only
    ("moved.test", [("new@collector.test", 5 * 2**20, Status.SEND), ("two@collector.test", None, Status.SEND)]),
    ("away.test", [("reports@collector.test", None, Status.SKIP)]),
])
def test_the_authorising_record_may_redirect_to_its_own_host_only(dns_server, domain, expected):
    resolver = Resolver([dns_server.nameserver], timeout=1, lifetime=2)
    decisions = decide(domain, ["mailto:reports@collector.test"], (), resolver)
    assert [(d.destination.address, d.destination.limit, d.status) for d in decisions] == expected
    if domain == "away.test":
        assert "redirects to 'mailto:x@victim.test', not on collector.test: no report to either" in decisions[0].reason


def test_a_dns_server_that_does_not_answer_makes_the_report_wait_within_the_lifetime(dns_server):
    resolver = Resolver([dns_server.front_nameserver], timeout=0.5, lifetime=1)
    [decision] = decide("sender.test", ["mailto:reports@collector.silent.test"], (), resolver)
    assert decision.status is Status.WAIT
    assert "no DNS answer for sender.test._report._dmarc.collector.silent.test TXT" in decision.reason


# --- sending -------------------------------------------------------------------------------------

def test_reports_go_to_each_authorised_rua_signed_and_valid_and_the_rows_are_forgotten(run, sink, store):
    record(store, SENDER, 3)
    record(store, row("sender.test", "mailto:agg@sender.test", ip="198.51.100.9", disposition="reject"), 2)
    record(store, EXTERNAL)
    record(store, UNAUTHORISED, 4)
    status, output = run()
    assert status == 0, output
    by_rcpt = {tuple(message.rcpts): received(message) for message in sink.messages}
    assert sorted(by_rcpt) == [("agg@sender.test",), ("reports@collector.test",)]
    ours = by_rcpt[("agg@sender.test",)]
    assert ours.counts() == {("192.0.2.1", "sender.test", "sender.test", "pass"): 3,
                             ("198.51.100.9", "sender.test", "sender.test", "reject"): 2}
    assert by_rcpt[("reports@collector.test",)].domain == "ext.test"
    for report in by_rcpt.values():
        assert report.delivered.mail_from == REPORTS
        assert verifies(report.delivered.data, KEY)
        assert report.message["From"] == f"Example Org <{REPORTS}>"
        assert report.message["To"] == report.delivered.rcpts[0]
        report_id = report.root().findtext("d:report_metadata/d:report_id", namespaces=NS)
        assert report.message["Subject"] == (f"Report Domain: {report.domain} Submitter: example.org "
                                             f"Report-ID: <{report_id}>")
        assert report.file_name.startswith(f"example.org!{report.domain}!{PERIOD}!{PERIOD + DAY - 1}!")
    assert "sent" in line_of(output, "sender.test") and "5 message(s)" in line_of(output, "sender.test")
    assert "not authorised" in line_of(output, "unauth.test")
    assert store.dmarc_pending(before=PERIOD + DAY, now=NOW) == []  # unauthorised is given up: forgotten too


def test_the_current_period_is_not_reported_yet(run, sink, store):
    record(store, SENDER, period=PERIOD + DAY)
    status, output = run()
    assert (status, output, sink.messages) == (0, "", [])
    assert store.dmarc_pending(before=PERIOD + 2 * DAY, now=NOW) == [(PERIOD + DAY, "sender.test")]


@pytest.mark.parametrize("reply, status, kept, said", [
    ("451 4.3.0 try later", 1, True, "deferred by the relay (451 4.3.0 try later); kept for the next run"),
    # our own relay refusing the message after DATA is ours to fix, not the destination's: kept
    ("550 5.7.1 no thanks", 1, True, "held: our relay refused the message itself (550 5.7.1 no thanks); kept for "
                                     "the next run"),
    ("552 5.3.4 Message size exceeds fixed limit", 1, True, "bytes: raise its message_size_limit or lower "
                                                            "dmarc_reports.max_report_bytes); kept for the next run"),
    ("250 2.0.0 Ok", 0, False, "sent (250 2.0.0 Ok); done, rows forgotten"),
])
def test_rows_are_forgotten_only_after_the_relay_accepted_or_refused_for_good(run, sink, store, reply, status, kept,
                                                                               said):
    record(store, SENDER, 2)
    sink.answering.reply = reply
    code, output = run()
    assert code == status, output
    assert line_of(output, "sender.test").endswith(said)
    assert store.dmarc_pending(before=PERIOD + DAY, now=NOW) == ([(PERIOD, "sender.test")] if kept else [])
    if kept:  # the next run sends it, the same report again
        sink.answering.reply = "250 2.0.0 Ok"
        assert run()[0] == 0
        [message] = sink.messages
        assert received(message).counts() == {("192.0.2.1", "sender.test", "sender.test", "pass"): 2}
        assert store.dmarc_pending(before=PERIOD + DAY, now=NOW) == []


def test_a_refused_recipient_is_given_up_and_a_deferred_one_kept(run, sink, store):
    record(store, SENDER)
    sink.answering.rcpt_reply = "450 4.2.0 mailbox busy"
    assert run()[0] == 1
    sink.answering.rcpt_reply = "550 5.1.1 no such user"
    code, output = run()
    assert code == 0
    assert "refused by the relay, given up (550 5.1.1 no such user)" in output
    assert store.dmarc_pending(before=PERIOD + DAY, now=NOW) == []


def test_no_relay_keeps_every_report(tmp_path, dns_server, key_file, store):
    record(store, SENDER)
    record(store, EXTERNAL)
    code, output = Run(tmp_path, dns_server, "127.0.0.1:9", key_file)()  # discard port: nothing listens
    assert code == 1
    assert all("kept for the next run" in line for line in output.splitlines())
    assert len(store.dmarc_pending(before=PERIOD + DAY, now=NOW)) == 2


def test_dns_without_answer_keeps_the_report(run, sink, store):
    record(store, row("sender.test", "mailto:reports@collector.silent.test"))
    code, output = run()
    assert code == 1
    assert "waits: external destination: no DNS answer" in output and "kept for the next run" in output
    assert store.dmarc_pending(before=PERIOD + DAY, now=NOW) == [(PERIOD, "sender.test")]


@pytest.mark.parametrize("suffix, sent", [("!100", False), ("!1k", True), ("!10m", True), ("", True)])
def test_the_size_limit_of_a_rua(run, sink, store, suffix, sent):
    record(store, row("sender.test", f"mailto:agg@sender.test{suffix}"))
    code, output = run()
    assert code == 0
    assert bool(sink.messages) == sent
    if not sent:
        assert "skipped: too big (" in output and "bytes gzipped, the record allows 100)" in output
    assert store.dmarc_pending(before=PERIOD + DAY, now=NOW) == []


def test_suppressed_domains_and_addresses_get_nothing(run, sink, store):
    record(store, SENDER)
    record(store, EXTERNAL)
    code, output = run(options=('dmarc_reports.suppress=["sender.test", "REPORTS@collector.test"]',))
    assert (code, sink.messages) == (0, [])
    assert line_of(output, "sender.test").endswith("suppressed (dmarc_reports.suppress 'sender.test'): no report")
    assert "mailto:reports@collector.test skipped: suppressed" in line_of(output, "ext.test")
    assert store.dmarc_pending(before=PERIOD + DAY, now=NOW) == []


def test_the_per_run_cap_leaves_the_rest_for_the_next_run(run, sink, store):
    for domain in ("a.sender.test", "b.sender.test", "c.sender.test"):
        record(store, row(domain, "mailto:agg@sender.test"))
    code, output = run(options=("dmarc_reports.max_reports_per_run=2",))
    assert code == 1
    assert output.splitlines()[-1] == "1 more report(s) wait for the next run (dmarc_reports.max_reports_per_run = 2)"
    assert len(sink.messages) == 2
    assert store.dmarc_pending(before=PERIOD + DAY, now=NOW) == [(PERIOD, "c.sender.test")]
    assert run(options=("dmarc_reports.max_reports_per_run=2",))[0] == 0
    assert sorted(received(m).domain for m in sink.messages) == ["a.sender.test", "b.sender.test", "c.sender.test"]


def test_periods_older_than_keep_days_are_dropped_with_a_line(run, sink, store):
    record(store, SENDER, period=PERIOD - 3 * DAY)
    record(store, SENDER)
    code, output = run(options=("dmarc_reports.keep_days=2",))
    assert code == 0
    assert output.splitlines()[0] == ("sender.test 2026-11-28T00:00:00Z..2026-11-29T00:00:00Z: dropped: older than "
                                      "dmarc_reports.keep_days = 2")
    [message] = sink.messages
    assert received(message).root().findtext("d:report_metadata/d:date_range/d:begin",
                                             namespaces={"d": "urn:ietf:params:xml:ns:dmarc-2.0"}) == str(PERIOD)


def test_dry_run_archives_valid_reports_sends_and_forgets_nothing(tmp_path, run, sink, store):
    record(store, SENDER, 3)
    record(store, EXTERNAL, 2)
    record(store, UNAUTHORISED)
    archive = tmp_path / "archive"
    code, output = run("--dry-run", "--archive", str(archive))
    assert code == 0, output
    assert sink.messages == []
    assert len(store.dmarc_pending(before=PERIOD + DAY, now=NOW)) == 3
    files = sorted(archive.iterdir())
    assert [path.name.split("!")[1] for path in files] == ["ext.test", "sender.test", "unauth.test"]
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o640
        assert path.name in output
    assert "mailto:agg@sender.test would be sent; dry run: nothing sent, rows kept" in line_of(output, "sender.test")
    assert "skipped: external destination not authorised" in line_of(output, "unauth.test")
    # the same rows give the same files; then the real run sends what was archived
    assert run("--dry-run", "--archive", str(archive))[0] == 0
    assert sorted(archive.iterdir()) == files
    assert run()[0] == 0
    sent = {received(m).file_name: received(m).document for m in sink.messages}
    assert sent == {path.name: gzip.decompress(path.read_bytes()) for path in files if "unauth" not in path.name}


def test_without_a_signing_key_nothing_is_sent(tmp_path, dns_server, sink, store, capsys):
    record(store, SENDER)
    code, output = Run(tmp_path, dns_server, sink.relay, None)()
    assert code == 2
    assert "no DKIM key for example.org (dmarc_reports.email = 'dmarc-noreply@example.org') in signing.keys" in (
        capsys.readouterr().err)
    assert (output, sink.messages) == ("", [])
    assert store.dmarc_pending(before=PERIOD + DAY, now=NOW) == [(PERIOD, "sender.test")]
    # a dry run needs no key, and says so
    code, output = Run(tmp_path, dns_server, sink.relay, None)("--dry-run")
    assert code == 0 and output.startswith("note: no DKIM key for example.org")


def test_a_report_that_fails_the_schema_is_never_sent(run, sink, store):
    bad = row("sender.test", "mailto:agg@sender.test", disposition="bounced")  # not an RFC 9990 disposition
    record(store, bad)
    code, output = run()
    assert code == 1
    assert line_of(output, "sender.test").startswith(
        "sender.test 2026-12-01T00:00:00Z..2026-12-02T00:00:00Z: ERROR: the report is invalid, not sent (rows kept): "
        "not valid against dmarc-2.0.xsd: line ")
    assert "'bounced' is not an element of the set" in output
    assert sink.messages == []
    assert store.dmarc_pending(before=PERIOD + DAY, now=NOW) == [(PERIOD, "sender.test")]


def test_who_sends_must_be_known(run, store, capsys):
    record(store, SENDER)
    assert run(options=('dmarc_reports.org_name=""',))[0] == 2
    assert "dmarc_reports.org_name and dmarc_reports.email must say who sends the reports" in capsys.readouterr().err


def test_no_store_yet_is_nothing_to_send(run, sink, tmp_path):
    code, output = run()
    assert (code, sink.messages) == (0, [])
    assert output == (f"no reports: {tmp_path}/state.db does not exist yet (the dmarc check creates it when it first "
                      "records a message)\n")


def test_an_archive_that_cannot_be_written_keeps_the_report(run, sink, store, tmp_path):
    record(store, SENDER)
    archive = tmp_path / "archive"
    assert run("--dry-run", "--archive", str(archive))[0] == 0
    [name] = [path.name for path in archive.iterdir()]
    (archive / name).unlink()
    (archive / name).mkdir()  # the report's file cannot replace a directory
    code, output = run("--archive", str(archive))
    assert code == 1
    assert f"ERROR: cannot archive it in {archive}: Is a directory; not sent (rows kept)" in output
    assert sink.messages == []
    assert store.dmarc_pending(before=PERIOD + DAY, now=NOW) == [(PERIOD, "sender.test")]


def test_what_send_archives_dmarc_reports_read_reads_back(tmp_path, run, store, capsys):
    record(store, SENDER, 3)
    record(store, row("sender.test", "mailto:agg@sender.test", ip="198.51.100.9", disposition="reject"), 2)
    record(store, EXTERNAL, 4)
    archive = tmp_path / "archive"
    assert run("--dry-run", "--archive", str(archive))[0] == 0
    capsys.readouterr()
    assert cli_main(["dmarc-reports", "read", "--json", str(archive)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["input"]["skipped"] == [] and summary["input"]["reports"] == 2
    assert {domain["domain"]: (domain["messages"], domain["verdicts"]["aligned"], domain["verdicts"]["fails both"])
            for domain in summary["domains"]} == {"sender.test": (5, 3, 2), "ext.test": (4, 4, 0)}


# --- the attack review's findings: one report never blocks, forgets or starves another ----------

@pytest.mark.parametrize("uri", [
    'mailto:"a@b"@attacker.test',  # was rebuilt as a@b@attacker.test: a crash for every later report
    'mailto:postmaster"@attacker.test',  # smtplib would quote it into <postmaster>: our own postmaster
    'mailto:"victim@other.test"@attacker.test', 'mailto:%22a%22@attacker.test', "mailto:a..b@attacker.test",
    "mailto:.a@attacker.test", "mailto:a(c)@attacker.test", f"mailto:{'a' * 65}@attacker.test",
])
def test_a_rua_that_is_no_plain_address_is_skipped_and_the_others_are_sent(run, sink, store, uri):
    record(store, row("0.attacker.test", uri))  # sorts first
    record(store, SENDER)
    code, output = run()
    assert code == 0, output
    assert "is not a mail address (a plain local part, RFC 5322 dot-atom)" in line_of(output, "0.attacker.test")
    assert [m.rcpts for m in sink.messages] == [["agg@sender.test"]]
    assert store.dmarc_pending(before=PERIOD + DAY, now=NOW) == []


def test_an_unforeseen_error_fails_its_report_only_and_exits_3(run, sink, store):
    # a row an older version (or a corrupted store) wrote: readable, but no text where text goes
    broken = json.loads(row("0.broken.test", "mailto:agg@broken.test").key()) | {"source_ip": 12345}
    assert store.dmarc_record(PERIOD, "0.broken.test", json.dumps(broken), PERIOD + 60, 10000, PERIOD + 8 * DAY)
    record(store, SENDER)
    code, output = run()
    assert code == 3, output
    assert "ERROR: unexpected TypeError" in line_of(output, "0.broken.test")
    assert line_of(output, "0.broken.test").endswith("not sent, rows kept (please report this)")
    assert [m.rcpts for m in sink.messages] == [["agg@sender.test"]]
    assert store.dmarc_pending(before=PERIOD + DAY, now=NOW) == [(PERIOD, "0.broken.test")]


def test_a_report_over_max_report_bytes_sends_its_rows_of_most_messages(run, sink, store):
    record(store, SENDER, 500)  # the real traffic: one row, 500 messages
    for n in range(300):  # a forger's rows, one message each, stored as an older version stored them
        forgery = Row(f"203.0.113.{n % 250}", "sender.test", "attacker.test", "example.org",
                      published("sender.test", "mailto:agg@sender.test"), "reject", False, False,
                      dkim=(DkimAuth("sender.test", os.urandom(300).hex(), "permerror"),))
        record(store, forgery)
    code, output = run(options=("dmarc_reports.max_report_bytes=60000",))
    assert code == 0, output
    [message] = sink.messages
    report = received(message)
    assert len(message.data) < 60000 * 4 // 3 + 10000
    assert report.counts()[("192.0.2.1", "sender.test", "sender.test", "pass")] == 500
    said = line_of(output, "sender.test")
    left = int(said.split(" row(s) of ")[0].rpartition("(")[2])
    assert left > 0 and said.count(f"{left} row(s) of {left} message(s) left out: over "
                                   "dmarc_reports.max_report_bytes = 60000") == 1
    assert len(report.root().findall("d:record", NS)) == 301 - left


def test_reports_waiting_for_dns_neither_count_towards_the_cap_nor_ask_again(run, sink, store):
    for n in range(5):  # wildcard report domains, their rua on hosts whose nameserver never answers
        record(store, row(f"0-{n}.attacker.test", *(f"mailto:r{k}@sink{n}.silent.example" for k in range(5))))
    record(store, SENDER)
    code, output = run(options=("dmarc_reports.max_reports_per_run=2",))
    assert code == 1
    lines = output.splitlines()
    assert output.count("waits: external destination: no DNS answer for") == 25
    assert output.count("not asked again this run") == 24  # one lookup for all of silent.example
    assert len(lines) == 6
    assert [m.rcpts for m in sink.messages] == [["agg@sender.test"]]
    assert "wait for the next run" not in output  # waiting reports took no place under the cap


def test_the_report_of_most_messages_goes_first_and_the_run_stops_at_its_deadline(tmp_path, dns_server, sink,
                                                                                 key_file, store):
    record(store, row("0.attacker.test", "mailto:agg@0.attacker.test"))
    record(store, SENDER, 3)
    ticks = iter([0.0, 1.0, 11.0, 11.0, 11.0])
    settings = send.Settings(load_policy(tmp_path, dns_server, sink, key_file, "dmarc_reports.max_run_seconds=10"))
    out = io.StringIO()
    from policymilter.dmarcreports.mail import Signer
    from policymilter.dmarcreports.relay import Relay
    with Relay(sink.relay) as relay:
        outcome = send.Sender(settings, store, Resolver([dns_server.nameserver], timeout=1, lifetime=2),
                              Signer.load(settings.policy), relay, out, NOW, clock=lambda: next(ticks)).run()
    assert outcome.kept == 1
    assert [received(m).domain for m in sink.messages] == ["sender.test"]
    assert out.getvalue().splitlines()[-1] == ("1 more report(s) wait for the next run (the run took "
                                               "dmarc_reports.max_run_seconds = 10)")
    assert store.dmarc_pending(before=PERIOD + DAY, now=NOW) == [(PERIOD, "0.attacker.test")]


def load_policy(tmp_path: Path, dns_server: DnsServer, sink: Sink, key_file: Path, *extra: str) -> Policy:
    from policymilter.service import load_checked

    options = Run(tmp_path, dns_server, sink.relay, key_file).options(*extra)
    return load_checked(str(DEFAULT_POLICY), options[1::2]).policy
