"""signing: our signatures, as a receiver verifies them (dkimpy against an in-memory zone).

Over-signing (RFC 6376 §8.15): every header we sign is listed once more than the message has
it, so a replayed copy of a site-signed message with another Subject, To or From put on top
— which mail clients show, while verifiers read from the bottom — no longer verifies.
"""

from __future__ import annotations

from pathlib import Path
from typing import NoReturn

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from policymilter import signing_keys
from policymilter.checks.signing.sign import signed_headers
from policymilter.cli import explain
from policymilter.facts import Session
from policymilter.listeners import listener_by_name
from policymilter.service import Snapshot, load_snapshot
from tests.conftest import DEFAULT_POLICY, OFFLINE
from tests.zonefake import ZoneResolver

RAW = (b"From: Alice <alice@example.org>\r\nTo: bob@elsewhere.test\r\nSubject: invoice 42\r\n"
       b"Date: Tue, 01 Dec 2026 10:00:00 +0000\r\nMessage-ID: <m1@example.org>\r\n\r\nPlease pay 10 EUR.\r\n")


SESSION = Session(conn_id="t", client_ip="192.0.2.9", daemon_name="submission", daemon_port=587,
                  auth_login="alice", auth_mech="PLAIN", tls_version="TLSv1.3")


def site_snapshot(tmp_path: Path) -> tuple[Snapshot, ZoneResolver]:
    """A policy signing for example.org with a new RSA-2048 key; and the zone with its record."""
    key = tmp_path / "example.org.s1.key"
    signing_keys.write_key_file(key, signing_keys.generate_private_key(signing_keys.KeyType.RSA, 2048))
    snapshot = load_snapshot(DEFAULT_POLICY, [*OFFLINE, 'site.domains=["example.org"]',
                                              f'signing.keys={{"example.org" = [{{selector = "s1", '
                                              f'key_file = "{key}"}}]}}'])
    record = signing_keys.public_record(signing_keys.parse_private_key(key.read_bytes()))
    return snapshot, ZoneResolver().txt_record("s1._domainkey.example.org", record)


def signed(snapshot: Snapshot, raw: bytes = RAW) -> bytes:
    """The message as it leaves: our DKIM-Signature on top."""
    report = explain(snapshot, SESSION, listener_by_name(snapshot.policy, "submission"), raw, "alice@example.org",
                     ["bob@elsewhere.test"])
    [value] = [h["value"] for h in report["headers_added"] if h["name"] == "DKIM-Signature"]
    return b"DKIM-Signature: " + value.replace("\n", "\r\n").encode() + b"\r\n" + raw


def sign(tmp_path: Path, raw: bytes = RAW) -> tuple[bytes, ZoneResolver]:
    snapshot, zone = site_snapshot(tmp_path)
    return signed(snapshot, raw), zone


def verifies(message: bytes, zone: ZoneResolver) -> bool:
    def lookup(name: bytes, timeout: float = 5) -> bytes | None:
        records = zone.txt(name.decode().rstrip("."))
        return records[0].encode() if records else None
    return bool(dkim.DKIM(message).verify(dnsfunc=lookup))


def test_the_signed_message_verifies(tmp_path):
    message, zone = sign(tmp_path)
    assert verifies(message, zone)


@pytest.mark.parametrize("added", [b"Subject: URGENT: new bank account\r\n", b"To: victim@elsewhere.test\r\n",
                                   b"From: ceo@example.org\r\n", b"Reply-To: attacker@evil.example\r\n",
                                   b"Date: Wed, 02 Dec 2026 09:00:00 +0000\r\n", b"Cc: more@elsewhere.test\r\n",
                                   b"Content-Type: text/html\r\n", b"Sender: ceo@example.org\r\n"])
def test_a_replayed_copy_with_a_header_added_on_top_does_not_verify(tmp_path, added):
    message, zone = sign(tmp_path)
    signature_end = message.index(b"\r\nFrom:") + 2
    replayed = message[:signature_end] + added + message[signature_end:]
    assert not verifies(replayed, zone)


def test_the_key_is_read_and_parsed_with_the_policy_not_per_message(tmp_path, monkeypatch):
    snapshot, zone = site_snapshot(tmp_path)
    [(_, private, problem)] = snapshot.resources.keys["example.org"]
    assert isinstance(private, rsa.RSAPrivateKey) and problem == ""

    def no_parsing(*args: object, **kwargs: object) -> NoReturn:
        raise AssertionError("a key was read or parsed while signing")

    for module, name in [(signing_keys, "load_private_key"), (signing_keys, "parse_private_key"),
                         (serialization, "load_pem_private_key"), (dkim, "parse_pem_private_key")]:
        monkeypatch.setattr(module, name, no_parsing)
    assert all(verifies(signed(snapshot, RAW.replace(b"42", str(n).encode())), zone) for n in range(3))


def test_every_signed_header_is_listed_once_more_than_present():
    names = signed_headers(RAW.replace(b"To: bob", b"To: a@x.test\r\nTo: bob"))
    assert names.count(b"to") == 3 and names.count(b"from") == 2 and names.count(b"subject") == 2
    assert names.count(b"cc") == 1 and names.count(b"reply-to") == 1  # absent: signed as absent


def test_a_rewritten_subject_is_signed_as_postfix_writes_it():
    """Attack review F5: a header value is cleaned where the action is made (a bare CR becomes a
    space), so what signing hashes is what the adapter hands Postfix."""
    from policymilter.checks.signing import final_headers
    from policymilter.message import Message
    from policymilter.outcome import AddHeader, ChangeHeader

    message = Message()
    message.add_header("From", b" user@site.test")
    message.add_header("Subject", b" cheap\rpills")
    tagged = ChangeHeader("Subject", 1, "[SPAM] cheap\rpills")
    assert tagged.value == "[SPAM] cheap pills" and AddHeader("X", "a\nB: c").value == "a B: c"
    signed = dict(final_headers(message, [tagged]))["Subject"]
    assert signed.strip() == b"[SPAM] cheap pills"
