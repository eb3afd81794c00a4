"""The bypasses of issue 8, end to end: real Postfix, real nsd, the milter as deployed.

Each test sends the attack the way an attacker would (raw bytes over SMTP) and asserts what
Postfix answered and what it delivered; each has a benign control that must still pass.
"""

from __future__ import annotations

import email
import email.policy
import os
import re
import smtplib
import sys
from collections.abc import Iterator

import pytest

from tests import authkit
from tests.conftest import DEFAULT_POLICY
from tests.integration.authzones import AUTHSERV_ID, KEYS, zones
from tests.integration.dns_server import DnsServer, Zone
from tests.integration.stack import MailStack, transaction, unverified_tls_context

pytestmark = pytest.mark.integration

RCPT = "user@example.test"
EXTERNAL = "friend@elsewhere.test"


@pytest.fixture(scope="module")
def dns_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DnsServer]:
    with DnsServer(tmp_path_factory.mktemp("dns"), [*zones(), Zone("example.test"), Zone("elsewhere.test")]) as server:
        yield server


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, dns_server: DnsServer) -> Iterator[MailStack]:
    keys = tmp_path_factory.mktemp("keys")
    key_file = keys / "example.org.s1.key"
    key_file.write_bytes(KEYS["site"].private)
    os.chmod(key_file, 0o600)
    options = [f'dns.nameservers=["{dns_server.front_nameserver}"]', "dns.timeout=1", "dns.lifetime=3",
               f"site.authserv_id={AUTHSERV_ID}", 'site.domains=["example.org"]',
               f'signing.keys={{"example.org" = [{{ selector = "s1", key_file = "{key_file}" }}]}}',
               "antivirus.enabled=false", "spam.enabled=false"]  # scanning has its own end-to-end tests
    with MailStack(tmp_path_factory.mktemp("stack")) as running:
        running.start_milter([sys.executable, "-m", "policymilter", "run", "--policy", str(DEFAULT_POLICY),
                              "--socket", f"unix:{running.milter_socket}",
                              *[part for value in options for part in ("-o", value)]])
        yield running


def inbound(stack: MailStack, sender: str, raw: bytes) -> tuple[int, str]:
    """MAIL/RCPT/DATA on port 25 from 127.0.0.1 (pass.test's SPF allows it; fail.test's does not)."""
    with smtplib.SMTP("127.0.0.1", stack.ports["smtp"], timeout=30) as client:
        client.ehlo("mail.pass.test")
        return transaction(client, sender, RCPT, raw)


def submit(stack: MailStack, sender: str, raw: bytes, login: str = "alice") -> tuple[int, str]:
    with smtplib.SMTP("127.0.0.1", stack.ports["submission"], timeout=30) as client:
        client.starttls(context=unverified_tls_context())
        client.login(login, stack.users[login])
        return transaction(client, sender, EXTERNAL, raw)


def delivered(stack: MailStack, subject: str) -> email.message.Message:
    found = stack.wait_delivered(lambda d: f"Subject: {subject}".encode() in d.data)
    return email.message_from_bytes(found.data, policy=email.policy.compat32)


def never_delivered(stack: MailStack, subject: str) -> None:
    assert not [d for d in stack.delivered() if f"Subject: {subject}".encode() in d.data]


# --- 1. one From, two readings ----------------------------------------------------------------

AMBIGUOUS = [
    "attacker@pass.test <ceo@fail.test>",  # the example: DMARC judged pass.test
    "attacker@pass.test\n <ceo@fail.test>",  # folded
    "<attacker@pass.test> <ceo@fail.test>",  # two angle-addrs
    "=?utf-8?q?ceo@fail.test?= <attacker@pass.test>",  # encoded word
    '"ceo@fail.test" <attacker@pass.test>',  # the address clients show is not the one judged
]


@pytest.mark.parametrize("header_from", AMBIGUOUS)
def test_an_ambiguous_from_is_refused_on_port_25(stack, header_from):
    subject = f"ambiguous {AMBIGUOUS.index(header_from)}"
    code, text = inbound(stack, "attacker@pass.test", authkit.message(header_from, RCPT, subject))
    assert code == 550, text
    assert text.startswith("5.7.1 Message refused: the From ") and "exactly one From address" in text
    never_delivered(stack, subject)


def test_the_benign_from_is_delivered(stack):
    code, _ = inbound(stack, "alice@pass.test", authkit.message('"Alice Doe" <alice@pass.test>', RCPT, "benign"))
    assert code == 250
    [ours] = delivered(stack, "benign").get_all("Authentication-Results")
    assert "dmarc=pass" in ours and "header.from=pass.test" in ours


# --- 2. the same trick on 587 -----------------------------------------------------------------


def test_an_ambiguous_from_is_refused_on_587_and_nothing_is_signed(stack):
    raw = authkit.message("alice@example.org <ceo@example.org>", EXTERNAL, "ceo wires")
    code, text = submit(stack, "alice@example.org", raw)
    assert code == 550
    assert text.startswith("5.7.1 Your message's From header is not acceptable")
    never_delivered(stack, "ceo wires")


def test_the_users_own_from_is_signed_on_587(stack):
    code, _ = submit(stack, "alice@example.org", authkit.message("Alice <alice@example.org>", EXTERNAL, "own from"))
    assert code == 250
    assert "d=example.org" in delivered(stack, "own from")["DKIM-Signature"].replace(" ", "")


# --- 8. forged results that do not parse ------------------------------------------------------

FORGED = [
    f"(relay) {AUTHSERV_ID}; dkim=pass header.d=bank.test;",  # the example
    f"{AUTHSERV_ID.upper()}.; dkim=pass header.d=bank.test",
    f'"{AUTHSERV_ID}" 1; dmarc=pass header.from=bank.test',
    f"(a; b) {AUTHSERV_ID}(x);dkim=pass header.d=bank.test",
    f"{AUTHSERV_ID} garbage garbage; arc=pass header.d=bank.test",
]


def test_forged_results_are_removed_however_they_are_written(stack):
    extra = "".join(f"Authentication-Results: {value}\n" for value in FORGED)
    extra += "Authentication-Results: other.example; spf=pass smtp.mailfrom=pass.test\n"
    raw = authkit.message("alice@pass.test", RCPT, "forged variants", extra=extra)
    assert inbound(stack, "alice@pass.test", raw)[0] == 250
    values = delivered(stack, "forged variants").get_all("Authentication-Results")
    assert not [value for value in values if "bank.test" in value]
    assert len(values) == 2 and values[0].startswith("other.example;")  # others' headers are kept
    assert values[1].startswith(f"{AUTHSERV_ID};")  # and ours is the one added


# --- 9. DKIM l= -------------------------------------------------------------------------------


def test_content_appended_to_an_l_signed_message_is_not_authenticated(stack):
    original = authkit.sign(authkit.message("CEO <ceo@pass.test>", RCPT, "l tag", body="Lunch at noon?\n"),
                            KEYS["rsa"], length=True)
    tampered = original + b"\r\nPS: pay the invoice at https://evil.example/ today.\r\n"
    # from a host pass.test's SPF does not list: only the DKIM signature could carry DMARC
    code, text = inbound(stack, "attacker@fail.test", tampered)
    assert code == 550 and "pass.test publishes a DMARC policy of reject" in text
    never_delivered(stack, "l tag")


def test_an_l_signed_message_arriving_whole_still_passes(stack):
    raw = authkit.sign(authkit.message("CEO <ceo@pass.test>", RCPT, "l whole", body="Lunch at noon?\n"),
                       KEYS["rsa"], length=True)
    assert inbound(stack, "attacker@fail.test", raw)[0] == 250
    [ours] = delivered(stack, "l whole").get_all("Authentication-Results")
    assert "dkim=pass" in ours and "dmarc=pass" in ours


# --- 18. NUL bytes: the milter sees what Postfix delivers -------------------------------------


def test_a_nul_in_from_never_makes_two_views(stack):
    """libmilter hands values over as C strings. Postfix 3.7 cuts each header line at its first
    NUL before milters see it and before it stores it (measured), so what the milter judged is
    what the recipient gets; a From cut to nothing is a bad From."""
    raw = authkit.message("<alice@pass.test>\0<ceo@fail.test>", RCPT, "nul tail")
    assert inbound(stack, "alice@pass.test", raw)[0] == 250
    copy = delivered(stack, "nul tail")
    assert copy["From"] == "<alice@pass.test>"
    assert "header.from=pass.test" in copy["Authentication-Results"]
    hidden = authkit.message("\0<ceo@fail.test>", RCPT, "nul head")
    code, text = inbound(stack, "alice@pass.test", hidden)
    assert code == 550 and "From header is empty" in text
    never_delivered(stack, "nul head")


def test_a_nul_cannot_hide_a_forged_result(stack):
    extra = f"Authentication-Results: \0{AUTHSERV_ID}; dkim=pass header.d=bank.test\n"
    assert inbound(stack, "alice@pass.test", authkit.message("alice@pass.test", RCPT, "nul ar", extra=extra))[0] == 250
    raw = stack.wait_delivered(lambda d: b"Subject: nul ar" in d.data).data
    head = raw.split(b"\r\n\r\n", 1)[0]
    assert b"bank.test" not in head and b"\0" not in head
    assert len(re.findall(rb"Authentication-Results: " + AUTHSERV_ID.encode() + rb";", head)) == 1

