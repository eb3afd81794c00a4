"""arc: chain results on an in-memory zone, the RFC 8617 limits, and the DMARC override they feed.

dkimpy's own ARC.verify is the reference for chains within the rules; where the rules say a
chain fails before any signature matters (more than 50 sets, sets missing or doubled), the
check says fail without verifying, and dkimpy (which verifies any length) disagrees.
"""

from __future__ import annotations

import functools
import re
import time

import dkim
import pytest

from policymilter.checks.arc import Arc, verify_chain
from policymilter.checks.dmarc import Dmarc
from policymilter.dns import Budget
from policymilter.facts import Envelope, Session
from policymilter.listeners import listener_by_name
from policymilter.message import Message
from policymilter.outcome import Disposition, Outcome
from policymilter.pipeline import CheckContext
from policymilter.policy import load_policy
from policymilter.policy.model import Policy
from tests import authkit
from tests.conftest import DEFAULT_POLICY, OFFLINE
from tests.zonefake import ZoneResolver

SEALER = authkit.rsa_key("list.test", "arc")


@functools.cache
def _policy() -> Policy:
    return load_policy(DEFAULT_POLICY, [*OFFLINE, "arc.enabled=true", "dmarc.enabled=true",
                                        'arc.trusted_sealers=["list.test"]']).policy


def zone() -> ZoneResolver:
    return (ZoneResolver().txt_record(f"{SEALER.owner}.list.test", SEALER.record)
            .txt_record("_dmarc.bank.test", "v=DMARC1; p=reject"))


@functools.cache
def chain(sets: int) -> bytes:
    # a forged From of a p=reject domain, "vouched for" by a trusted sealer's chain
    return authkit.arc_chain(authkit.message("ceo@bank.test", "bob@example.test", "wire money"), SEALER,
                             "mx.list.test", sets)


def context(raw: bytes) -> CheckContext:
    policy = _policy()
    return CheckContext(policy, listener_by_name(policy, "smtp"), Session(conn_id="t", client_ip="192.0.2.7"),
                        Envelope("x@elsewhere.test"), Message.from_bytes(raw), zone(), Budget(time.monotonic() + 30))


def dkimpy_verdict(raw: bytes) -> bytes | None:
    def lookup(name: bytes, timeout: float = 5) -> bytes | None:
        records = zone().txt(name.decode().rstrip("."))
        return records[0].encode() if records else None
    return dkim.ARC(raw, minkey=1024).verify(dnsfunc=lookup)[0]


@pytest.mark.parametrize("sets", [1, 2, 5, 50])
def test_valid_chains_pass_like_dkimpy(sets):
    raw = chain(sets)
    found = verify_chain(context(raw))
    assert (found.result, found.sealer) == ("pass", "list.test")
    assert dkimpy_verdict(raw) == dkim.CV_Pass


@pytest.mark.parametrize("sets", [51, 60])
def test_a_validly_sealed_chain_longer_than_50_sets_fails(sets):
    raw = chain(sets)
    assert dkimpy_verdict(raw) == dkim.CV_Pass  # the library alone would trust it
    found = verify_chain(context(raw))
    assert found.result == "fail" and "50" in found.reason


def test_a_long_chain_cannot_override_dmarc():
    """RFC 8617 §5.2: 51 sets is a failed chain, so the trusted sealer vouches for nothing."""
    for sets, disposition in ((3, Disposition.ACCEPT), (51, Disposition.REJECT)):
        ctx = context(chain(sets))
        arc = Arc().run(ctx)
        dmarc = Dmarc().run(CheckContext(ctx.policy, ctx.listener, ctx.session, ctx.envelope, ctx.message, ctx.resolver,
                                         ctx.budget, (*authkit.nothing_found(), arc)))
        assert dmarc.outcome is Outcome.FAIL and dmarc.disposition is disposition, (sets, dmarc)


def test_a_sealer_vouches_only_for_the_author_domain_it_evaluated():
    """The sealer's AAR says dmarc=pass for evil.test; the From we see is bank.test's."""
    raw = authkit.arc_chain(authkit.message("ceo@bank.test", "bob@example.test", "wire money"), SEALER,
                            "mx.list.test", 2, vouched="evil.test")
    ctx = context(raw)
    arc = Arc().run(ctx)
    assert arc.outcome is Outcome.PASS and not arc.findings.sealer_saw_dmarc_pass
    dmarc = Dmarc().run(CheckContext(ctx.policy, ctx.listener, ctx.session, ctx.envelope, ctx.message, ctx.resolver,
                                     ctx.budget, (*authkit.nothing_found(), arc)))
    assert dmarc.disposition is Disposition.REJECT


def _drop_set(raw: bytes, instance: int, name: bytes) -> bytes:
    lines = raw.split(b"\r\n")
    out, skipping = [], False
    for line in lines:
        if line[:1] in (b" ", b"\t"):
            if not skipping:
                out.append(line)
            continue
        skipping = line.lower().startswith(name + b":") and re.search(rb"i=%d;" % instance, line) is not None
        if not skipping:
            out.append(line)
    return b"\r\n".join(out)


@pytest.mark.parametrize(
    ("mangle", "reason"),
    [
        (lambda raw: _drop_set(raw, 2, b"arc-message-signature"), "incomplete"),
        (lambda raw: _drop_set(raw, 1, b"arc-seal"), "incomplete"),
        (lambda raw: b"ARC-Seal: i=9; a=rsa-sha256; cv=pass; d=list.test; s=arc; b=AAAA\r\n" + raw, "incomplete"),
        (lambda raw: b"ARC-Seal: a=rsa-sha256; cv=pass; d=list.test; s=arc; b=AAAA\r\n" + raw, "i="),
        (lambda raw: b"ARC-Seal: i=0; cv=none; d=list.test; s=arc; b=AAAA\r\n" + raw, "outside"),
        (lambda raw: raw.replace(b"ARC-Seal: i=3;", b"ARC-Seal: i=3;\r\nARC-Seal: i=3;", 1), "twice"),
        # review: blank continuation lines made dkimpy's b= regex quadratic
        (lambda raw: raw.replace(b"ARC-Message-Signature: i=3;", b"ARC-Message-Signature: i=3;" + b"\r\n " * 4000,
                                 1), "over 8192 bytes"),
    ],
)
def test_broken_structure_fails_before_any_signature_is_checked(mangle, reason):
    found = verify_chain(context(mangle(chain(3))))
    assert found.result == "fail" and reason in found.reason, found


def test_a_chain_of_50_costs_milliseconds():
    raw = chain(50)
    verify_chain(context(raw))
    started = time.process_time()
    verify_chain(context(raw))
    assert time.process_time() - started < 1.0  # generous: the hostile_cpu benchmark has the figure
