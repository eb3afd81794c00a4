"""Outbound end to end: authenticated mail leaves DKIM-signed and owned by its sender.

Real Postfix (587 with STARTTLS and AUTH PLAIN), real nsd serving the key records that
`policy-milter dkim-keygen` printed, the milter with the shipped policy plus a local file.
"""

from __future__ import annotations

import re
import shutil
import signal
import smtplib
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import dkim
import pytest

from policymilter.cli import explain
from policymilter.dns import Resolver
from policymilter.facts import Session
from policymilter.listeners import listener_by_name
from policymilter.service import load_snapshot
from tests.conftest import DEFAULT_POLICY
from tests.integration.dns_server import DnsServer, Zone
from tests.integration.stack import MailStack, transaction, unverified_tls_context

pytestmark = pytest.mark.integration

EXTERNAL = "friend@elsewhere.test"
MAP = "alice  alice.smith@example.org\n"


def keygen(directory: Path, selector: str, kind: str) -> tuple[Path, str]:
    """Run the real `policy-milter dkim-keygen`; return the key file and the TXT record it printed."""
    run = subprocess.run([sys.executable, "-m", "policymilter", "dkim-keygen", "--domain", "example.org",
                          "--selector", selector, "--type", kind, "--out", str(directory)],
                         capture_output=True, text=True, check=True)
    record = "".join(re.findall(r'"([^"]*)"', run.stdout))
    return directory / f"example.org.{selector}.key", record


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    keys = tmp_path_factory.mktemp("keys")
    rsa_file, rsa_record = keygen(keys, "s2026", "rsa")
    ed_file, ed_record = keygen(keys, "ed2026", "ed25519")
    zone = (Zone("example.org").txt("@", "v=spf1 ip4:192.0.2.10 -all").txt("_dmarc", "v=DMARC1; p=reject")
            .txt("s2026._domainkey", rsa_record).txt("ed2026._domainkey", ed_record))
    policy = tmp_path_factory.mktemp("policy")
    shutil.copy(DEFAULT_POLICY / "00-default.toml", policy / "00-default.toml")
    senders = policy / "senders"
    senders.write_text(MAP)
    with DnsServer(tmp_path_factory.mktemp("dns"), [zone, Zone("example.test"), Zone("elsewhere.test")]) as server:
        (policy / "50-local.toml").write_text(f"""\
[site]
domains = ["example.org"]
authserv_id = "mx.example.org"

[dns]
nameservers = ["{server.nameserver}"]

[antivirus]
enabled = false   # scanning has its own end-to-end tests

[spam]
enabled = false

[sender]
map_file = "{senders}"

[signing.keys]
"example.org" = [{{ selector = "s2026", key_file = "{rsa_file}" }},
                 {{ selector = "ed2026", key_file = "{ed_file}", algorithm = "ed25519-sha256" }}]
""")
        yield {"dns": server, "policy": policy, "senders": senders}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, world: dict) -> Iterator[MailStack]:
    with MailStack(tmp_path_factory.mktemp("stack")) as running:
        running.start_milter([sys.executable, "-m", "policymilter", "run", "--policy", str(world["policy"]),
                              "--socket", f"unix:{running.milter_socket}"])
        yield running


def submit(stack: MailStack, sender: str, header_from: str, subject: str, login: str = "alice") -> tuple[int, str]:
    raw = (f"From: {header_from}\r\nTo: {EXTERNAL}\r\nSubject: {subject}\r\n"
           f"Date: Sat, 28 Nov 2026 10:00:00 +0000\r\nMessage-ID: <{subject.replace(' ', '-')}@example.org>\r\n\r\n"
           "Hello from the submission port.\r\n").encode()
    with smtplib.SMTP("127.0.0.1", stack.ports["submission"], timeout=30) as client:
        client.starttls(context=unverified_tls_context())
        client.user, client.password = login, stack.users[login]
        client.auth("PLAIN", client.auth_plain)
        return transaction(client, sender, EXTERNAL, raw)


def delivered(stack: MailStack, subject: str) -> bytes:
    return stack.wait_delivered(lambda d: f"Subject: {subject}".encode() in d.data).data


def test_submitted_mail_is_dual_signed_and_both_signatures_verify(stack, world):
    assert submit(stack, "alice@example.org", "Alice <alice@example.org>", "signed twice")[0] == 250
    data = delivered(stack, "signed twice")
    assert data.count(b"DKIM-Signature:") == 2
    resolver = Resolver([world["dns"].nameserver])

    def lookup(name: bytes, timeout: float = 5) -> bytes | None:
        records = resolver.txt(name.decode().rstrip("."))
        return records[0].encode() if records else None

    verifier = dkim.DKIM(data)
    assert verifier.verify(idx=0, dnsfunc=lookup) and verifier.verify(idx=1, dnsfunc=lookup)
    assert {b"a=rsa-sha256", b"a=ed25519-sha256"} <= {m.group() for m in re.finditer(rb"a=[a-z0-9-]+", data)}
    assert b"h=from:from:" in re.sub(rb"\s+", b"", data)  # From is over-signed


def test_the_signed_copy_passes_dmarc_at_a_receiver(stack, world):
    """Our own inbound pipeline, as if the delivered copy arrived on port 25 from our server."""
    assert submit(stack, "alice@example.org", "alice@example.org", "dmarc at receiver")[0] == 250
    data = delivered(stack, "dmarc at receiver")
    snapshot = load_snapshot(world["policy"])
    session = Session(conn_id="r", client_ip="203.0.113.50", helo="mx.example.org", daemon_name="smtp",
                      daemon_port=25)
    report = explain(snapshot, session, listener_by_name(snapshot.policy, "smtp"), data, "alice@example.org",
                     [EXTERNAL])
    outcomes = {c["check"]: c["outcome"] for c in report["checks"]}
    assert outcomes["spf"] == "fail"  # 203.0.113.50 is not in example.org's SPF: DKIM alone carries DMARC
    assert outcomes["dkim"] == "pass" and outcomes["dmarc"] == "pass"
    assert report["verdict"] == "accept"


def test_sending_as_another_user_is_refused_naming_address_and_login(stack):
    code, text = submit(stack, "bob@example.org", "bob@example.org", "not mine")
    assert code == 550
    assert text.startswith("5.7.1 You are logged in as alice, which may not send as bob@example.org")


def test_an_alias_from_the_map_works_and_a_reloaded_map_takes_effect(stack, world):
    assert submit(stack, "alice.smith@example.org", "alice.smith@example.org", "alias ok")[0] == 250
    delivered(stack, "alias ok")
    senders: Path = world["senders"]
    before = stack.milter_log().count(" reloaded ")
    senders.write_text("# alias withdrawn\n")
    try:
        stack.signal_milter(signal.SIGUSR1)
        deadline = time.monotonic() + 20
        while stack.milter_log().count(" reloaded ") <= before:
            assert time.monotonic() < deadline, stack.milter_log()[-2000:]
            time.sleep(0.05)
        # The parent logs `reloaded`, then passes the reload on to its workers: a message may
        # still meet a worker with the old map for a moment. Poll by behaviour, not by time.
        attempt = 0
        while True:
            attempt += 1
            code, text = submit(stack, "alice.smith@example.org", "alice.smith@example.org", f"alias gone {attempt}")
            if code != 250 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert code == 550 and "may not send as alice.smith@example.org" in text
    finally:
        senders.write_text(MAP)
        stack.signal_milter(signal.SIGUSR1)


def test_mail_on_587_gets_no_scanner_headers_and_only_an_auth_result(stack):
    assert submit(stack, "alice@example.org", "alice@example.org", "plain headers")[0] == 250
    data = delivered(stack, "plain headers")
    head = data.split(b"\r\n\r\n", 1)[0]
    assert b"X-Spam-" not in head
    [result] = re.findall(rb"Authentication-Results:[^\r]*(?:\r\n[ \t][^\r]*)*", head)
    assert b"auth=pass smtp.auth=alice" in re.sub(rb"\s+", b" ", result)
    assert b"dkim=" not in result and b"spf=" not in result
