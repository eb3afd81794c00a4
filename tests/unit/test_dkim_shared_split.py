"""canonical.split and the Split shared by DKIM and ARC, against dkimpy itself (from the attack review of issue 11).

Every message is built the way the adapter builds it (add_header / write_body, in chunks), then
judged three ways: the milter's DKIM verifier and ARC verifier on the transaction's one Split
(in both orders, so either one fills the shared caches first), and dkimpy's own dkim.DKIM /
dkim.ARC verify on the joined raw message (Message.raw_bytes()).
"""

from __future__ import annotations

import functools
import time

import dkim
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from policymilter import canonical
from policymilter.checks.arc import verify_chain
from policymilter.checks.dkim import KeyLookup, Verifier, verify_one
from policymilter.dns import Budget
from policymilter.facts import Envelope, Session
from policymilter.listeners import listener_by_name
from policymilter.message import Message
from policymilter.pipeline import CheckContext
from policymilter.policy import load_policy
from policymilter.policy.model import Policy
from tests import authkit
from tests.conftest import DEFAULT_POLICY, OFFLINE
from tests.zonefake import ZoneResolver

KEY = authkit.ed25519_key("sender.test", "ed")
SEALER = authkit.rsa_key("list.test", "arc")


def zone() -> ZoneResolver:
    return (ZoneResolver().txt_record(f"{KEY.owner}.sender.test", KEY.record)
            .txt_record(f"{SEALER.owner}.list.test", SEALER.record))


def lookup(name: bytes, timeout: float = 5) -> bytes | None:
    records = zone().txt(name.decode().rstrip("."))
    return records[0].encode() if records else None


@functools.cache
def _policy() -> Policy:
    return load_policy(DEFAULT_POLICY, [*OFFLINE, "arc.enabled=true"]).policy


def build(headers: list[tuple[str, bytes]], body_chunks: list[bytes]) -> Message:
    message = Message(spool_threshold=64)  # small: the body goes to disk, as a big one does
    for name, value in headers:
        message.add_header(name, value)
    for chunk in body_chunks:
        message.write_body(chunk)
    return message


# --- split() on structured input (the exhaustive run is exhaust_split.py) -------------------------

LINE = st.sampled_from([b"A: b", b"From x", b"From: a", b" cont", b"\tcont", b"", b"\r", b"bad line", b"x:",
                        b"a\rb: c"])
END = st.sampled_from([b"\r\n", b"\n", b"\r\r\n", b""])


@settings(max_examples=3000, deadline=None, derandomize=True)
@given(st.lists(st.tuples(LINE, END), max_size=8), st.binary(max_size=40), st.data())
def test_split_is_rfc822_parse_of_the_whole(lines, tail, data):
    whole = b"".join(line + end for line, end in lines) + tail
    cut = data.draw(st.integers(0, len(whole)))

    def outcome(fn):
        try:
            headers, body = fn()
            return "ok", [list(h) for h in headers], bytes(body)
        except Exception as error:
            return "error", type(error), str(error)

    split = outcome(lambda: (lambda s: (s.headers, s.body))(canonical.split(whole[:cut], whole[cut:])))
    assert split == outcome(lambda: dkim.rfc822_parse(whole))


# --- DKIM and ARC on one shared Split, against dkimpy on the joined message -------------------------

VALUE = st.sampled_from([b" x", b" a  b\t", b" folded\n\tline", b" two\n  spaces  ", b" cr\rinside", b"",
                         b" trailing\n \t"])
BODY_LINE = st.sampled_from([b"", b"text", b" lead", b"trail \t", b"a  \t b", b"\t", b" ", b"cr\rmid",
                             b"x" * 80])
CANON = st.sampled_from([(b"relaxed", b"relaxed"), (b"simple", b"simple"), (b"relaxed", b"simple"),
                         (b"simple", b"relaxed")])
MUTATION = st.sampled_from(["none", "append-blank-lines", "append-space-line", "trailing-space", "append-text",
                            "double-space", "tab-for-space", "drop-last-crlf", "header-added", "subject-space"])


def mutate(headers: list[tuple[str, bytes]], body: bytes, how: str) -> tuple[list[tuple[str, bytes]], bytes]:
    if how == "append-blank-lines":
        return headers, body + b"\r\n\r\n\r\n"
    if how == "append-space-line":
        return headers, body + b" \r\n"
    if how == "trailing-space":
        return headers, body.replace(b"\r\n", b" \r\n", 1)
    if how == "append-text":
        return headers, body + b"appended\r\n"
    if how == "double-space":
        return headers, body.replace(b" ", b"  ", 1)
    if how == "tab-for-space":
        return headers, body.replace(b" ", b"\t", 1)
    if how == "drop-last-crlf":
        return headers, body[:-2] if body.endswith(b"\r\n") else body
    if how == "header-added":
        return [("Subject", b" another"), *headers], body
    if how == "subject-space":
        return [(n, v + b" " if n == "Subject" else v) for n, v in headers], body
    return headers, body


def dkimpy_passes(raw: bytes, index: int) -> bool:
    try:
        return bool(dkim.DKIM(raw, minkey=1024).verify(idx=index, dnsfunc=lookup))
    except dkim.DKIMException:
        return False


def arc_context(message: Message) -> CheckContext:
    policy = _policy()
    return CheckContext(policy, listener_by_name(policy, "smtp"), Session(conn_id="t", client_ip="192.0.2.7"),
                        Envelope("x@elsewhere.test"), message, zone(), Budget(time.monotonic() + 30))


@settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(["X-A", "Cc", "Keywords"]), VALUE), max_size=3),
       st.lists(BODY_LINE, max_size=6), st.lists(st.tuples(CANON, st.booleans()), min_size=1, max_size=3),
       MUTATION, st.booleans(), st.booleans(), st.integers(1, 200))
def test_dkim_and_arc_on_one_split_judge_as_dkimpy(extra, body_lines, signatures, how, sealed, arc_first, chunk):
    headers = [("From", b" Alice <alice@sender.test>"), ("To", b" bob@example.test"), ("Subject", b" hi there"),
               *extra]
    body = b"".join(line + b"\r\n" for line in body_lines)
    raw = build(headers, [body]).raw_bytes()
    for canon, length in signatures:  # each signs what is there, the earlier signatures included
        raw = dkim.sign(raw, KEY.selector.encode(), b"sender.test", KEY.private, canonicalize=canon,
                        include_headers=[b"from", b"to", b"subject", b"cc"], length=length,
                        signature_algorithm=b"ed25519-sha256") + raw
    if sealed:
        raw = authkit.arc_seal(raw, SEALER, "mx.list.test", "dkim=pass")
    parsed = Message.from_bytes(raw)
    head = [(h.name, h.value) for h in parsed.headers]
    head, body = mutate(head, parsed.body_bytes(), how)
    message = build(head, [body[i:i + chunk] for i in range(0, len(body), chunk)])
    whole = message.raw_bytes()

    def arc() -> str:
        return verify_chain(arc_context(message)).result if sealed else "none"

    arc_result = arc() if arc_first else ""
    verifier = Verifier.of(message, minkey=1024)
    values = [h.value for h in message.headers if h.name.lower() == "dkim-signature"]
    for index, value in enumerate(values):
        result, reason = verify_one(verifier, value, index, KeyLookup(zone(), None))
        reference = dkimpy_passes(whole, index)
        if result == "policy":  # l= shorter than the body: the milter refuses what dkimpy passes
            assert "not authenticated" in reason
            continue
        event(f"dkim {result}")
        assert (result == "pass") == reference, (index, result, reason, how)
    if not arc_first:
        arc_result = arc()
    if sealed:
        event(f"arc {arc_result}")
        reference_arc = dkim.ARC(whole, minkey=1024).verify(dnsfunc=lookup)[0]
        assert (arc_result == "pass") == (reference_arc == dkim.CV_Pass), (arc_result, reference_arc, how)
    # the shared canonical bodies are the canonical bodies of this body
    split = message.split()
    for name, canonical_body in split.bodies.items():
        policy = dkim.canonicalization.CanonicalizationPolicy.from_c_value(b"simple/" + name)
        assert canonical_body == policy.canonicalize_body(dkim.rfc822_parse(whole)[1])


def test_head_bytes_and_body_bytes_are_the_old_raw_bytes():
    message = build([("Subject", b" a\n b"), ("X", b" cr\r"), ("Y", b"")], [b"one\r\n", b"two", b"\r\n"])
    old = b"".join(h.raw() for h in message.headers) + b"\r\n" + message.body_bytes()
    assert message.head_bytes() + message.body_bytes() == old == message.raw_bytes()
