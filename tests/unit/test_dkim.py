"""dkim: every signature's result, on an in-memory zone, compared with dkimpy's own verifier.

The check verifies with one parse of the message and each canonical form made once
(checks/dkim.py Hashing); dkimpy's plain DKIM.verify is the reference for pass and fail. Rows
where we deliberately differ say so: a signature whose l= leaves part of the body unsigned,
and rsa-sha1 (RFC 8301), are "policy", never "pass".
"""

from __future__ import annotations

import base64
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass

import dkim
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policymilter.checks.dkim import Dkim, verify, without_b_value
from policymilter.dns import Budget
from policymilter.facts import Envelope, Session
from policymilter.listeners import listener_by_name
from policymilter.message import Message
from policymilter.outcome import Outcome
from policymilter.pipeline import CheckContext
from tests import authkit
from tests.conftest import DEFAULT_POLICY, OFFLINE
from tests.zonefake import ZoneResolver

RSA = authkit.rsa_key("sender.test", "rsa")
ED = authkit.ed25519_key("sender.test", "ed")
OTHER = authkit.rsa_key("other.test", "o1")


def zone(*, failing: tuple[str, ...] = ()) -> ZoneResolver:
    resolver = ZoneResolver(failing=failing)
    for key in (RSA, ED, OTHER):
        resolver.txt_record(f"{key.owner}.{key.domain}", key.record)
    resolver.txt_record("broken._domainkey.sender.test", "v=DKIM1; k=rsa; p=not-base64!")
    return resolver


def message(body: str = "hello\r\n", subject: str = "hi") -> bytes:
    return authkit.message("Alice <alice@sender.test>", "bob@example.test", subject, body).replace(b"\n", b"\r\n")


def signed(raw: bytes, key: authkit.DkimKey = RSA, *, canon: tuple[bytes, bytes] = (b"relaxed", b"relaxed"),
           length: bool = False, algorithm: bytes | None = None, selector: str | None = None) -> bytes:
    header = dkim.sign(raw, (selector or key.selector).encode(), key.domain.encode(), key.private,
                       canonicalize=canon, include_headers=authkit.SIGNED_HEADERS, length=length,
                       signature_algorithm=algorithm or key.algorithm.encode())
    return header + raw


@dataclass(frozen=True)
class Case:
    id: str
    build: Callable[[], bytes]
    result: str
    reason: str = ""  # a fragment of the reason
    dkimpy_agrees: bool = True  # whether dkimpy's own verify gives the same pass/not-pass


CASES = [
    Case("rsa relaxed", lambda: signed(message()), "pass"),
    Case("rsa simple", lambda: signed(message(), canon=(b"simple", b"simple")), "pass"),
    Case("rsa relaxed/simple", lambda: signed(message(), canon=(b"relaxed", b"simple")), "pass"),
    Case("ed25519", lambda: signed(message(), ED), "pass"),
    Case("body changed", lambda: signed(message()).replace(b"hello", b"hullo"), "fail", "body hash"),
    Case("header changed", lambda: signed(message()).replace(b"Subject: hi", b"Subject: ho"), "fail",
         "did not verify"),
    Case("l= covering all of it", lambda: signed(message(), length=True), "pass"),
    # RFC 6376 §8.2: what was appended after signing is not authenticated
    Case("l= then content appended", lambda: signed(message(), length=True) + b"click here\r\n", "policy",
         "not authenticated", dkimpy_agrees=False),
    Case("l= with simple body, appended", lambda: signed(message(), canon=(b"simple", b"simple"), length=True)
         + b"more\r\n", "policy", "not authenticated", dkimpy_agrees=False),
    Case("l= larger than the body", lambda: signed(message("a long body\r\n"), length=True)
         .replace(b"a long body", b"short"), "fail"),
    Case("rsa-sha1", lambda: signed(message(), algorithm=b"rsa-sha1"), "policy", "RFC 8301", dkimpy_agrees=False),
    Case("no key published", lambda: signed(message(), selector="missing"), "permerror", "key record"),
    Case("broken key record", lambda: signed(message(), selector="broken"), "permerror", "key record"),
    Case("garbage signature", lambda: b"DKIM-Signature: v=1; a=rsa-sha256; d=sender.test; s=rsa; b=!!!\r\n"
         + message(), "neutral"),
]


def _lookup(resolver: ZoneResolver) -> Callable[..., bytes | None]:
    def lookup(name: bytes, timeout: float = 5) -> bytes | None:
        records = resolver.txt(name.decode().rstrip("."))
        return records[0].encode() if records else None
    return lookup


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_signature_result(case):
    raw = case.build()
    [signature] = verify(Message.from_bytes(raw), zone(), None, 5)
    assert signature.result == case.result, signature
    assert case.reason in signature.reason
    try:
        reference = dkim.DKIM(raw, minkey=1024).verify(dnsfunc=_lookup(zone()))
    except dkim.DKIMException:
        reference = False
    assert (reference == (signature.result == "pass")) is case.dkimpy_agrees


def test_a_dns_failure_is_temperror():
    [signature] = verify(Message.from_bytes(signed(message())), zone(failing=("rsa._domainkey.sender.test",)),
                         None, 5)
    assert signature.result == "temperror"


def test_many_signatures_share_one_parse_and_one_body_hash_per_canonicalization():
    raw = message(("x" * 70 + " \r\n") * 3000)
    signatures = b"".join(signed(raw, canon=canon)[: -len(raw)]
                          for canon in [(b"relaxed", b"relaxed"), (b"simple", b"simple")] * 10)
    started = time.process_time()
    results = verify(Message.from_bytes(signatures + raw), zone(), None, 20)
    elapsed = time.process_time() - started
    assert [s.result for s in results] == ["pass"] * 20
    assert elapsed < 2.0  # generous: the hostile_cpu benchmark has the real figure


def test_aligned_signatures_are_verified_first_and_the_rest_bounded():
    raw = message()
    unrelated = b"".join(signed(raw, OTHER)[: -len(raw)] for _ in range(6))
    results = verify(Message.from_bytes(unrelated + signed(raw)), zone(), None, 3)
    assert [s.domain for s in results] == ["sender.test", "other.test", "other.test"]


def test_the_check_reports_policy_and_dmarc_sees_no_pass():
    raw = signed(message(), length=True) + b"appended\r\n"
    policy_ = _policy()
    context = CheckContext(policy_, listener_by_name(policy_, "smtp"), Session(conn_id="t", client_ip="192.0.2.1"),
                           Envelope(), Message.from_bytes(raw), zone(), Budget(time.monotonic() + 30))
    result = Dkim().run(context)
    assert result.outcome is Outcome.POLICY and result.detail == ""
    assert "dkim=policy" in str(result.authres[0])


def _policy():
    from policymilter.policy import load_policy

    return load_policy(DEFAULT_POLICY, OFFLINE).policy


# --- review: dkimpy's own header hashing was quadratic on hostile signatures -----------------

_BODY = b"hello\r\n"
_BH = base64.b64encode(hashlib.sha256(_BODY).digest()).decode()


def _forged_signature(**tags: str) -> bytes:
    """A signature with a correct bh= (anyone can compute it) and a key of the attacker's own."""
    fields = {"v": "1", "a": "rsa-sha256", "c": "relaxed/relaxed", "d": "other.test", "s": "o1", "h": "from:subject",
              "bh": _BH, "b": "AAAA", **tags}
    value = "; ".join(f"{name}={text}" for name, text in fields.items())
    return (f"DKIM-Signature: {value}\r\nFrom: a@other.test\r\nTo: b@example.test\r\nSubject: hi\r\n\r\n").encode() \
        + _BODY


@pytest.mark.parametrize(
    "raw",
    [
        _forged_signature(b="AAAA" + "\r\n " * 2600),  # blank continuation lines after b= (RE_BTAG)
        _forged_signature(h=":".join(["from"] + [f"n{i}" for i in range(600)]))  # absent names ...
        .replace(b"Subject: hi\r\n", b"Subject: hi\r\n" + b"".join(b"X%d: y\r\n" % i for i in range(6000))),
    ],
    ids=["blank-lines-after-b", "h-absent-names-times-fields"],
)
def test_hostile_signatures_cost_milliseconds(raw):
    started = time.process_time()
    [signature] = verify(Message.from_bytes(raw), zone(), None, 5)
    assert time.process_time() - started < 0.5  # seconds with dkimpy's hash_headers
    assert signature.result == "fail"


def test_an_oversized_signature_is_not_even_parsed():
    [signature] = verify(Message.from_bytes(_forged_signature(b="AAAA" + "\r\n " * 4000)), zone(), None, 5)
    assert signature.result == "permerror" and "over 8192 bytes" in signature.reason


_WS = st.sampled_from([" ", "\t", "\r\n ", "\n\t", "\r\n", "\n", "  "])
_TAG_TEXT = st.lists(st.one_of(_WS, st.sampled_from(["b", "=", ";", "bh", "a", "Z", "+", "/", "0", "x", "h"])),
                     max_size=30).map("".join)


@settings(max_examples=600, deadline=None)
@given(st.lists(st.one_of(_TAG_TEXT, st.sampled_from(["; b=", " b =", ";b\r\n =", "b=AB+/=", " b="])),
                max_size=8).map("".join))
def test_emptying_b_matches_dkimpy_exactly(value):
    data = value.encode()
    assert without_b_value(data) == dkim.RE_BTAG.sub(b"\\1", data)
