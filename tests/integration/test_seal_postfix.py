"""ARC sealing end to end: real Postfix on the port-25 door, real nsd, the milter as deployed.

What arrives at the sink is checked as a receiver downstream of a forward would: dkimpy's
arc_verify with every key looked up in nsd; then a second hop seals it again with dkimpy's
arc_sign and the chain still verifies.
"""

from __future__ import annotations

import email
import email.policy
import os
import re
import smtplib
import sys
from collections.abc import Callable, Iterator
from typing import Any

import dkim
import dns.exception
import dns.resolver
import pytest

from tests import authkit
from tests.conftest import DEFAULT_POLICY
from tests.integration.authzones import AUTHSERV_ID, KEYS, zones
from tests.integration.dns_server import DnsServer, Zone
from tests.integration.stack import MailStack, transaction

pytestmark = pytest.mark.integration

RCPT = "user@example.test"
SITE_KEY = KEYS["site"]  # example.org, selector s1: the site's DKIM key seals too
LIST_KEY = KEYS["list"]  # list.test: a mailing list before us, or the forwarder after us


@pytest.fixture(scope="module")
def dns_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DnsServer]:
    with DnsServer(tmp_path_factory.mktemp("dns"), [*zones(), Zone("example.test")]) as server:
        yield server


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, dns_server: DnsServer) -> Iterator[MailStack]:
    keys = tmp_path_factory.mktemp("keys")
    key_file = keys / "example.org.s1.key"
    key_file.write_bytes(SITE_KEY.private)
    os.chmod(key_file, 0o600)
    options = [f'dns.nameservers=["{dns_server.front_nameserver}"]', "dns.timeout=1", "dns.lifetime=3",
               f"site.authserv_id={AUTHSERV_ID}", 'site.domains=["example.org"]', 'arc.trusted_sealers=["list.test"]',
               f'signing.keys={{"example.org" = [{{ selector = "s1", key_file = "{key_file}" }}]}}',
               'seal.domain="example.org"', 'seal.selector="s1"',
               "antivirus.enabled=false", "spam.enabled=false"]  # scanning has its own end-to-end tests
    with MailStack(tmp_path_factory.mktemp("stack")) as running:
        running.start_milter([sys.executable, "-m", "policymilter", "run", "--policy", str(DEFAULT_POLICY),
                              "--socket", f"unix:{running.milter_socket}",
                              *[part for value in options for part in ("-o", value)]])
        yield running


def keys_in(server: DnsServer) -> Callable[..., bytes | None]:
    """dkimpy's dnsfunc, answered by nsd (what a receiver's resolver would get)."""
    resolver = server.resolver()

    def txt(name: bytes, timeout: float = 5) -> bytes | None:
        try:
            answer = resolver.resolve(name.decode().rstrip("."), "TXT")
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer, dns.exception.Timeout):
            return None
        return b"".join(b"".join(record.strings) for record in answer[:1])
    return txt


def inbound(stack: MailStack, sender: str, raw: bytes) -> tuple[int, str]:
    with smtplib.SMTP("127.0.0.1", stack.ports["smtp"], timeout=30) as client:
        client.ehlo("mail.pass.test")
        return transaction(client, sender, RCPT, raw)


def delivered(stack: MailStack, subject: str) -> bytes:
    found = stack.wait_delivered(lambda d: f"Subject: {subject}".encode() in d.data)
    return found.data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def arc_verify(raw: bytes, server: DnsServer) -> tuple[Any, list[dict[str, Any]], str]:
    cv, sets, reason = dkim.arc_verify(raw, dnsfunc=keys_in(server))
    return cv, sets, reason


def headers(raw: bytes) -> email.message.Message:
    return email.message_from_bytes(raw, policy=email.policy.compat32)


def squash(text: str) -> str:
    return " ".join(text.split())


def test_an_inbound_message_arrives_sealed_and_the_chain_verifies(stack, dns_server):
    raw = authkit.sign(authkit.message("Alice <alice@pass.test>", RCPT, "sealed hello"), KEYS["rsa"])
    code, _ = inbound(stack, "alice@pass.test", raw)
    assert code == 250
    copy = delivered(stack, "sealed hello")
    cv, sets, reason = arc_verify(copy, dns_server)
    assert cv == dkim.CV_Pass, reason
    assert [(s["instance"], s["as-domain"], s["as-selector"]) for s in sets] == [(1, b"example.org", b"s1")]
    found = headers(copy)
    [ours] = [v for v in found.get_all("Authentication-Results") if v.split(";")[0].strip() == AUTHSERV_ID]
    [aar] = found.get_all("ARC-Authentication-Results")
    prefix, _, rest = aar.partition(";")
    assert prefix.strip() == "i=1" and squash(rest) == squash(ours)
    assert "dkim=pass" in ours and "dmarc=pass" in ours and "arc=none" in ours
    assert "cv=none" in squash(found["ARC-Seal"]).replace(" ", "")
    assert re.search(rb"seal=sealed:i1:none", stack.milter_log().encode())

    # A forwarder after us (its own key and domain) seals again: two sets, still a passing chain.
    hop = authkit.arc_seal(copy, LIST_KEY, "mx.list.test", "arc=pass; spf=fail smtp.mailfrom=pass.test")
    cv, sets, reason = arc_verify(hop, dns_server)
    assert cv == dkim.CV_Pass, reason
    assert [(s["instance"], s["as-domain"]) for s in sets] == [(2, b"list.test"), (1, b"example.org")]


def test_a_chain_that_came_in_is_continued_and_verifies(stack, dns_server):
    """A list's chain: ours must go above it (dkimpy reads sets from the bottom up)."""
    raw = authkit.arc_seal(authkit.message("Alice <alice@pass.test>", RCPT, "list post"), LIST_KEY, "mx.list.test",
                           "dkim=pass header.d=pass.test; dmarc=pass header.from=pass.test")
    code, _ = inbound(stack, "list@list.test", raw)
    assert code == 250  # SPF and DKIM fail for pass.test here: the trusted list's chain overrides DMARC
    copy = delivered(stack, "list post")
    cv, sets, reason = arc_verify(copy, dns_server)
    assert cv == dkim.CV_Pass, reason
    assert [(s["instance"], s["as-domain"]) for s in sets] == [(2, b"example.org"), (1, b"list.test")]
    names = [line.split(b":")[0].lower() for line in copy.split(b"\r\n\r\n")[0].split(b"\r\n")
             if line[:1] not in (b" ", b"\t")]
    arc = [(name, index) for index, name in enumerate(names) if name.startswith(b"arc-")]
    assert [name for name, _ in arc][:3] == [b"arc-seal", b"arc-message-signature", b"arc-authentication-results"]
    hop = authkit.arc_seal(copy, LIST_KEY, "mx.list.test", "arc=pass")
    assert arc_verify(hop, dns_server)[0] == dkim.CV_Pass


def test_a_refused_message_is_not_sealed(stack):
    raw = authkit.message("CEO <ceo@fail.test>", RCPT, "seal a spoof")
    code, text = inbound(stack, "ceo@fail.test", raw)
    assert code == 550 and "DMARC policy of reject" in text
    stack.flush()
    assert not [d for d in stack.delivered() if b"Subject: seal a spoof" in d.data]
    [line] = [line for line in stack.milter_log().splitlines() if "from=<ceo@fail.test>" in line and "summary" in line]
    assert "verdict=reject" in line and "seal=-" in line
