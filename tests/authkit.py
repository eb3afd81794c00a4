"""Test-time DKIM keys and signed messages (keys are made per run; nothing secret is stored)."""

from __future__ import annotations

import base64
import re
import types
from collections.abc import Callable
from dataclasses import dataclass

import dkim
import nacl.signing
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from policymilter.checks.dkim import DkimFindings
from policymilter.checks.spf import SpfFindings
from policymilter.outcome import CheckResult, Outcome

SIGNED_HEADERS = [b"from", b"to", b"subject", b"date", b"message-id"]


@dataclass(frozen=True)
class DkimKey:
    domain: str
    selector: str
    algorithm: str  # "rsa-sha256" | "ed25519-sha256"
    private: bytes  # what dkimpy's sign() takes: PEM for RSA, base64 seed for Ed25519
    record: str  # the TXT record at SELECTOR._domainkey.DOMAIN

    @property
    def owner(self) -> str:
        return f"{self.selector}._domainkey"


def rsa_key(domain: str, selector: str, bits: int = 2048) -> DkimKey:
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return DkimKey(domain, selector, "rsa-sha256", private, f"v=DKIM1; k=rsa; p={base64.b64encode(public).decode()}")


def ed25519_key(domain: str, selector: str) -> DkimKey:
    signing = nacl.signing.SigningKey.generate()
    public = base64.b64encode(bytes(signing.verify_key)).decode()
    return DkimKey(domain, selector, "ed25519-sha256", base64.b64encode(bytes(signing)),
                   f"v=DKIM1; k=ed25519; p={public}")


def sign(message: bytes, key: DkimKey, canonicalize: tuple[bytes, bytes] = (b"relaxed", b"relaxed"),
         length: bool = False) -> bytes:
    """The message with a DKIM-Signature header prepended (CRLF line ends); `length`: with l=."""
    message = message.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    header = dkim.sign(message, key.selector.encode(), key.domain.encode(), key.private,
                       include_headers=SIGNED_HEADERS, canonicalize=canonicalize,
                       signature_algorithm=key.algorithm.encode(), length=length)
    return header + message


def arc_seal(message: bytes, key: DkimKey, authserv_id: str, results: str) -> bytes:
    """Add one ARC set, as a forwarder (mailing list) whose A-R said `results`, would."""
    message = message.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    message = f"Authentication-Results: {authserv_id}; {results}\r\n".encode() + message
    headers = dkim.arc_sign(message, key.selector.encode(), key.domain.encode(), key.private,
                            authserv_id.encode(), include_headers=SIGNED_HEADERS)
    return b"".join(headers) + message


def message(sender: str, rcpt: str, subject: str = "test", body: str = "hello\n", extra: str = "") -> bytes:
    return (f"From: {sender}\nTo: {rcpt}\nSubject: {subject}\nDate: Sat, 28 Nov 2026 10:00:00 +0000\n"
            f"Message-ID: <{abs(hash((sender, rcpt, subject)))}@test>\n{extra}\n{body}").encode()


def _sealer_without_instance_limit() -> Callable[..., list[bytes]]:
    """dkimpy's ARC.sign with its i<=50 limit (RFC 8617 §4.2.1) lifted, as an attacker's sealer
    would have it: the one constant 50 in its code becomes 1000. Everything else is dkimpy's."""
    code = dkim.ARC.sign.__code__
    assert code.co_consts.count(50) == 1, "dkimpy's ARC.sign changed: review this helper"
    patched = code.replace(co_consts=tuple(1000 if value == 50 else value for value in code.co_consts))
    return types.FunctionType(patched, dkim.ARC.sign.__globals__, "sign", dkim.ARC.sign.__defaults__)


def arc_chain(message: bytes, key: DkimKey, authserv_id: str, sets: int, vouched: str | None = None) -> bytes:
    """`sets` valid ARC sets by one sealer whose A-R always said dkim and dmarc passed, for the
    message's From domain (or for `vouched`)."""
    sign = _sealer_without_instance_limit()
    message = message.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    author = vouched or re.search(rb"^From:[^\r]*@([A-Za-z0-9.-]+)", message, re.M).group(1).decode()  # type: ignore[union-attr]
    for instance in range(1, sets + 1):
        arc = "" if instance == 1 else "arc=pass; "
        hop = f"hop{instance}.{authserv_id}"  # each hop reads only its own A-R header
        message = f"Authentication-Results: {hop}; {arc}dkim=pass; dmarc=pass header.from={author}\r\n".encode() \
            + message
        headers = sign(dkim.ARC(message), key.selector.encode(), key.domain.encode(), key.private,
                       hop.encode(), include_headers=SIGNED_HEADERS)
        message = b"".join(headers) + message
    return message


def nothing_found() -> tuple[CheckResult, ...]:
    """SPF and DKIM results that found nothing (no identity, no signature): what DMARC reads
    when it is run alone in a unit test; without them it would see checks that never ran."""
    return (CheckResult("spf", Outcome.NONE, findings=SpfFindings()),
            CheckResult("dkim", Outcome.NONE, findings=DkimFindings()))
