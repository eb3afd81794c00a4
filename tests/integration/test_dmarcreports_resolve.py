"""dmarc-reports read --resolve against a real DNS server (nsd): a PTR name, no PTR, and a server that
does not answer, each shown for what it is, within the timeout."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from policymilter.cli import main
from tests.dmarcreportkit import Row, Spec, report_xml
from tests.integration.dns_server import DnsServer, Zone

pytestmark = pytest.mark.integration

SILENT = "100.51.198.in-addr.arpa"  # the front never answers these: a reverse zone whose server is down
REPORT = Spec("r.example", "r-1", "example.org", "none", (
    Row("192.0.2.10", 500, "pass", "pass"),
    Row("192.0.2.11", 20, "fail", "fail"),
    Row("198.51.100.7", 10, "fail", "fail"),
    Row("192.0.2.10", 1, "pass", "fail"),  # the same address again: looked up once
))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DnsServer]:
    zones = [Zone("2.0.192.in-addr.arpa").add("10", "PTR", "mail.example.org."),
             Zone(SILENT).add("7", "PTR", "never.example.")]
    with DnsServer(tmp_path_factory.mktemp("dns"), zones, silent_suffixes=[SILENT]) as running:
        yield running


def test_ptr_names(server: DnsServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "r.xml").write_bytes(report_xml(REPORT))
    started = time.monotonic()
    status = main(["dmarc-reports", "read", "--json", "--resolve", "--nameserver", server.front_nameserver,
                   "--resolve-timeout", "1", str(tmp_path / "r.xml")])
    assert time.monotonic() - started < 10
    assert status == 0
    sources = json.loads(capsys.readouterr().out)["domains"][0]["sources"]
    assert [(source["ip"], source["ptr"]) for source in sources] == [
        ("192.0.2.10", "mail.example.org"), ("192.0.2.11", "(no PTR)"), ("198.51.100.7", "(lookup failed)")]
    assert sorted(server.asked) == ["10.2.0.192.in-addr.arpa/PTR", "11.2.0.192.in-addr.arpa/PTR",
                                    "7.100.51.198.in-addr.arpa/PTR"]  # each address once


def test_the_text_shows_the_name(server: DnsServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "r.xml").write_bytes(report_xml(REPORT))
    assert main(["dmarc-reports", "read", "--resolve", "--nameserver", server.nameserver, str(tmp_path / "r.xml")]) == 0
    out = capsys.readouterr().out
    assert "    192.0.2.10 mail.example.org: 501 messages, aligned (aligned 500, fails SPF only 1)\n" in out
    assert "  NOT READY: 20 messages from 1 source fail both (largest: 192.0.2.11 (no PTR), 20 messages)\n" in out
