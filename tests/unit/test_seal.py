"""seal: the ARC set we add at the border (RFC 8617 §5.1), through the whole pymilter-free
conversation on the port-25 door, judged by dkimpy's own arc_verify against an in-memory zone;
and arcsign's headers byte for byte what dkim.arc_sign makes for the same inputs and time."""

from __future__ import annotations

import functools
import inspect
import re
import time
from pathlib import Path
from typing import Any, NoReturn
from unittest import mock

import authres.arc
import dkim
import pytest
from cryptography.hazmat.primitives import serialization

from policymilter import canonical, metrics, signing_keys
from policymilter.checks.seal import Seal
from policymilter.checks.signing import arcsign, final_headers
from policymilter.conversation import Conversation
from policymilter.facts import Envelope, Session
from policymilter.listeners import listener_by_name
from policymilter.message import Message
from policymilter.outcome import CheckResult, Disposition, Outcome, Verdict
from policymilter.pipeline import CheckContext, Stage
from policymilter.policy import PolicyError
from policymilter.service import Snapshot, load_checked, load_snapshot
from tests import authkit
from tests.conftest import DEFAULT_POLICY, OFFLINE
from tests.zonefake import ZoneResolver

AUTHSERV_ID = "mx.example.org"
SITE = "example.org"
SELECTOR = "arc1"
LIST = authkit.rsa_key("list.test", "arc")  # a mailing list that sealed before us
HOP = authkit.rsa_key("hop.test", "fwd")  # the forwarder after us
INBOUND = Session(conn_id="t", client_ip="192.0.2.7", client_name="mail.pass.test", helo="mail.pass.test",
                  daemon_name="smtp", daemon_port=25)
RCPT = "bob@example.org"
NOW = 1_796_000_000.5


@functools.cache
def site_key(directory: str) -> tuple[Path, str]:
    """A key file as `dkim-keygen` writes it, and its DNS record."""
    path = Path(directory) / f"{SITE}.{SELECTOR}.key"
    signing_keys.write_key_file(path, signing_keys.generate_private_key(signing_keys.KeyType.RSA, 2048))
    return path, signing_keys.public_record(signing_keys.parse_private_key(path.read_bytes()))


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    return site_key(str(tmp_path_factory.mktemp("keys")))


def zone(record: str, failing: tuple[str, ...] = ()) -> ZoneResolver:
    return (ZoneResolver(failing=failing)
            .txt_record(f"{SELECTOR}._domainkey.{SITE}", record)
            .txt_record(f"{LIST.owner}.list.test", LIST.record)
            .txt_record(f"{HOP.owner}.hop.test", HOP.record)
            .txt_record("pass.test", "v=spf1 ip4:192.0.2.7 -all").txt_record("_dmarc.pass.test", "v=DMARC1; p=reject")
            .txt_record("list.test", "v=spf1 ip4:192.0.2.7 -all")
            .txt_record("bank.test", "v=spf1 -all").txt_record("_dmarc.bank.test", "v=DMARC1; p=reject"))


def options(key_file: Path, *extra: str) -> list[str]:
    return [*OFFLINE, "spf.enabled=true", "dkim.enabled=true", "arc.enabled=true", "dmarc.enabled=true",
            f"site.authserv_id={AUTHSERV_ID}", f'site.domains=["{SITE}"]',
            f'signing.keys={{"{SITE}" = [{{selector = "{SELECTOR}", key_file = "{key_file}"}}]}}',
            'arc.trusted_sealers=["list.test"]', f'seal.domain="{SITE}"', f'seal.selector="{SELECTOR}"', *extra]


def snapshot(keys: tuple[Path, str], *extra: str, failing: tuple[str, ...] = ()) -> Snapshot:
    from dataclasses import replace
    return replace(load_snapshot(DEFAULT_POLICY, options(keys[0], *extra)), resolver=zone(keys[1], failing))


def lookup(record: str) -> Any:
    records = zone(record)

    def txt(name: bytes, timeout: float = 5) -> bytes | None:
        found = records.txt(name.decode().rstrip("."))
        return found[0].encode() if found else None
    return txt


class Passage:
    """One message through the conversation, and the copy Postfix would deliver."""

    def __init__(self, snap: Snapshot, raw: bytes, mail_from: str, session: Session = INBOUND) -> None:
        message = Message.from_bytes(raw)
        listener = listener_by_name(snap.policy, session.daemon_name or "")
        self.conversation = Conversation(snap, session, listener=listener)
        self.conversation.connected()
        verdict = self.conversation.mail(session, f"<{mail_from}>")
        if not verdict.stops:
            self.conversation.rcpt(f"<{RCPT}>")
            self.conversation.data(None)
            for header in message.headers:
                self.conversation.header(header.name, header.value)
            self.conversation.body(message.body_bytes())
            verdict = self.conversation.end_of_message(None)
        self.verdict: Verdict = verdict
        self.results = {result.check: result for result in self.conversation.results}
        self.summary = self.conversation.summary_fields(verdict, Stage.EOM)
        headers = final_headers(message, list(verdict.actions))
        self.delivered = b"".join(name.encode() + b":" + value.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
                                  + b"\r\n" for name, value in headers) + b"\r\n" + message.body_bytes()

    @property
    def seal(self) -> str:
        return str(self.summary["seal"])

    def values(self, name: str) -> list[str]:
        return Message.from_bytes(self.delivered).header_values(name)


def verify(raw: bytes, record: str) -> tuple[bytes | None, list[dict[str, Any]], str]:
    cv, sets, reason = dkim.ARC(raw, minkey=1024).verify(dnsfunc=lookup(record))
    return cv, sets, reason


def squash(text: str) -> str:
    return " ".join(text.split())


def plain() -> bytes:
    return authkit.sign(authkit.message("Alice <alice@pass.test>", RCPT, "hello"), authkit.rsa_key("x.test", "x"))


def listed(sets: int = 1) -> bytes:
    """What a mailing list forwards: its ARC chain, SPF now failing for its author."""
    raw = authkit.message("Alice <alice@none.test>", RCPT, "via the list")  # none.test: no DMARC policy
    for _ in range(sets):
        raw = authkit.arc_seal(raw, LIST, "mx.list.test", "arc=pass; dmarc=none header.from=none.test"
                               if b"ARC-Seal" in raw else "dmarc=none header.from=none.test")
    return raw


# --- what is sealed, with which instance and cv ---------------------------------------------------


def test_a_message_without_a_chain_is_sealed_i1_cv_none_and_verifies(keys):
    passage = Passage(snapshot(keys), authkit.message("Alice <alice@pass.test>", RCPT, "hello"), "alice@pass.test")
    assert passage.verdict.disposition is Disposition.ACCEPT and passage.seal == "sealed:i1:none"
    cv, sets, reason = verify(passage.delivered, keys[1])
    assert cv == dkim.CV_Pass, reason
    assert [s["instance"] for s in sets] == [1] and sets[0]["as-domain"] == SITE.encode()
    seal = passage.values("ARC-Seal")[0]
    assert re.search(r"i=1;\s*cv=none;\s*a=rsa-sha256;\s*d=example.org;\s*s=arc1", seal)


def test_the_aar_is_our_authentication_results_header_with_the_instance_in_front(keys):
    passage = Passage(snapshot(keys), plain(), "alice@pass.test")
    [ours] = [v for v in passage.values("Authentication-Results") if v.split(";")[0].strip() == AUTHSERV_ID]
    [aar] = passage.values("ARC-Authentication-Results")
    prefix, _, rest = aar.partition(";")
    assert prefix.strip() == "i=1"
    assert squash(rest) == squash(ours)
    assert "dmarc=pass" in ours and "arc=none" in ours and "spf=pass" in ours


def test_the_set_goes_on_top_seal_first(keys):
    passage = Passage(snapshot(keys), plain(), "alice@pass.test")
    names = [line.split(b":")[0] for line in passage.delivered.split(b"\r\n")[:40] if line and line[:1] not in b" \t"]
    assert names[:3] == [b"ARC-Seal", b"ARC-Message-Signature", b"ARC-Authentication-Results"]


@pytest.mark.parametrize("where, raw", [
    ("header", authkit.message("Alice <alice@pass.test>", RCPT, "x" * 1200)),
    ("body", authkit.message("Alice <alice@pass.test>", RCPT, "long", body="y" * 999 + "\n")),
])
def test_a_line_over_998_characters_is_not_sealed_the_next_hop_would_break_it(keys, where, raw):
    passage = Passage(snapshot(keys), raw, "alice@pass.test")
    assert passage.verdict.disposition is Disposition.ACCEPT, where
    assert passage.seal == "skipped:long-line" and not passage.values("ARC-Seal")


def test_a_line_of_998_characters_is_sealed(keys):
    raw = authkit.message("Alice <alice@pass.test>", RCPT, "long", body="y" * 998 + "\n")
    assert Passage(snapshot(keys), raw, "alice@pass.test").seal == "sealed:i1:none"


def test_a_verified_chain_is_continued_with_cv_pass(keys):
    passage = Passage(snapshot(keys), listed(), "list@list.test")
    assert passage.results["arc"].outcome is Outcome.PASS
    assert passage.seal == "sealed:i2:pass"
    cv, sets, reason = verify(passage.delivered, keys[1])
    assert cv == dkim.CV_Pass, reason
    assert [(s["instance"], s["as-domain"]) for s in sets] == [(2, b"example.org"), (1, b"list.test")]


@pytest.mark.parametrize("sets", [3, 49])
def test_the_instance_is_the_chain_length_plus_one(keys, sets):
    raw = authkit.arc_chain(authkit.message("Alice <alice@pass.test>", RCPT, f"chain {sets}"), LIST, "mx.list.test",
                            sets)
    passage = Passage(snapshot(keys), raw, "list@list.test")
    assert passage.seal == f"sealed:i{sets + 1}:pass"
    assert verify(passage.delivered, keys[1])[0] == dkim.CV_Pass


def test_a_chain_of_50_sets_is_not_sealed(keys):
    raw = authkit.arc_chain(authkit.message("Alice <alice@pass.test>", RCPT, "chain 50"), LIST, "mx.list.test", 50)
    passage = Passage(snapshot(keys), raw, "list@list.test")
    assert passage.results["arc"].outcome is Outcome.PASS
    assert passage.seal == "skipped:limit"
    assert passage.values("ARC-Seal") == Message.from_bytes(raw).header_values("ARC-Seal")


def broken() -> bytes:
    """The list's chain, with the body changed after it sealed: its AMS no longer verifies."""
    return listed().replace(b"hello\r\n", b"hello, changed on the way\r\n")


def test_a_broken_chain_is_sealed_cv_fail_over_our_set_alone(keys):
    passage = Passage(snapshot(keys), broken(), "list@list.test")
    assert passage.results["arc"].outcome is Outcome.FAIL
    assert passage.seal == "sealed:i2:fail"
    cv, sets, reason = verify(passage.delivered, keys[1])
    assert cv is None and "terminated" in reason  # dkimpy: the newest seal reports the failure
    assert sets[0]["instance"] == 2 and sets[0]["ams-valid"] and sets[0]["cv"] == b"fail"
    # Our seal covers our set alone (§5.1.2; dkimpy's arc_sign does the same), while dkimpy's
    # verifier hashes every set whatever cv= says: it verifies ours once the list's set is gone.
    alone = _drop_instance(passage.delivered, 1)
    [ours] = verify(alone, keys[1])[1]
    assert ours["instance"] == 2 and ours["as-valid"] and ours["ams-valid"]


def _drop_instance(raw: bytes, instance: int) -> bytes:
    lines, out, skipping = raw.split(b"\r\n"), [], False
    for line in lines:
        if line[:1] in (b" ", b"\t"):
            if not skipping:
                out.append(line)
            continue
        skipping = line.lower().startswith(b"arc-") and re.match(rb"[^:]+:\s*i=%d;" % instance, line) is not None
        if not skipping:
            out.append(line)
    return b"\r\n".join(out)


def test_a_chain_that_failed_at_an_earlier_seal_is_not_continued(keys):
    failed = Passage(snapshot(keys), broken(), "list@list.test").delivered
    passage = Passage(snapshot(keys), failed, "list@list.test")
    assert passage.results["arc"].outcome is Outcome.FAIL
    assert passage.seal == "skipped:chain-failed"
    assert len(passage.values("ARC-Seal")) == 2


def test_when_arc_cannot_say_nothing_is_sealed(keys):
    passage = Passage(snapshot(keys, failing=(f"{LIST.owner}.list.test",)), listed(), "list@list.test")
    assert passage.results["arc"].outcome is Outcome.TEMPERROR
    assert passage.seal == "skipped:arc-unknown"
    assert len(passage.values("ARC-Seal")) == 1


def test_stray_arc_headers_without_a_seal_are_not_sealed_over(keys):
    raw = b"ARC-Authentication-Results: i=1; mx.other.test; spf=pass\r\n" + plain()
    passage = Passage(snapshot(keys), raw, "alice@pass.test")
    assert passage.results["arc"].outcome is Outcome.NONE
    assert passage.seal == "skipped:inconsistent" and passage.values("ARC-Seal") == []


# --- a second hop --------------------------------------------------------------------------------------


def test_a_second_hop_seals_again_and_the_chain_still_verifies(keys):
    ours = Passage(snapshot(keys), plain(), "alice@pass.test").delivered
    forwarded = authkit.arc_seal(ours, HOP, "mx.hop.test", "arc=pass; spf=fail smtp.mailfrom=pass.test")
    cv, sets, reason = verify(forwarded, keys[1])
    assert cv == dkim.CV_Pass, reason
    assert [(s["instance"], s["as-domain"]) for s in sets] == [(2, b"hop.test"), (1, b"example.org")]


def test_after_a_list_and_us_a_third_hop_still_verifies(keys):
    ours = Passage(snapshot(keys), listed(), "list@list.test").delivered
    forwarded = authkit.arc_seal(ours, HOP, "mx.hop.test", "arc=pass")
    cv, sets, reason = verify(forwarded, keys[1])
    assert cv == dkim.CV_Pass and len(sets) == 3, reason


# --- what is never sealed ----------------------------------------------------------------------------


def test_refused_mail_is_not_sealed(keys):
    passage = Passage(snapshot(keys), authkit.message("CEO <ceo@bank.test>", RCPT, "wire money"), "ceo@bank.test")
    assert passage.verdict.disposition is Disposition.REJECT and passage.verdict.decided_by == "dmarc"
    assert "seal" not in passage.results and passage.summary["seal"] is None
    assert not [action for action in passage.verdict.actions if action.name.startswith("ARC-")]


@pytest.mark.parametrize(("disposition", "sealed"), [(Disposition.DISCARD, False), (Disposition.QUARANTINE, True),
                                                     (Disposition.ACCEPT, True)])
def test_discarded_mail_is_not_sealed_held_mail_is(keys, disposition, sealed):
    snap = snapshot(keys)
    message = Message.from_bytes(plain())
    arc = CheckResult("arc", Outcome.NONE, findings=arcverified("none"),
                      authres=(authres.arc.ARCAuthenticationResult(result="none"),))
    earlier = CheckResult("antivirus", Outcome.INFECTED, disposition)
    context = CheckContext(snap.policy, listener_by_name(snap.policy, "smtp"), INBOUND, Envelope("a@pass.test"),
                           message, snap.resolver, None, (arc, earlier), snap.resources)
    result = Seal().run(context)
    assert (result.outcome is Outcome.SEALED) is sealed, result
    assert bool(result.actions) is sealed


@pytest.mark.parametrize("arc", [None, CheckResult("arc", Outcome.ERROR, reason="a bug"),
                                 CheckResult("arc", Outcome.TEMPERROR, findings=None)])
def test_an_arc_check_that_did_not_run_or_erred_is_not_read_as_no_chain(keys, arc):
    snap = snapshot(keys)
    context = CheckContext(snap.policy, listener_by_name(snap.policy, "smtp"), INBOUND, Envelope("a@pass.test"),
                           Message.from_bytes(plain()), snap.resolver, None, (arc,) if arc else (), snap.resources)
    result = Seal().run(context)
    assert (result.outcome, result.detail, result.actions) == (Outcome.SKIPPED, "arc-unknown", ())


def arcverified(result: str) -> Any:
    from policymilter.checks.arc import Chain
    return Chain(result, "")


def test_without_a_key_nothing_is_sealed_and_the_log_says_why(keys):
    from dataclasses import replace
    snap = replace(load_snapshot(DEFAULT_POLICY, [*OFFLINE, "arc.enabled=true"]), resolver=zone(keys[1]))
    passage = Passage(snap, plain(), "alice@pass.test")
    assert passage.seal == "skipped:no-key" and passage.values("ARC-Seal") == []
    assert "not set up" in passage.results["seal"].reason


def test_an_unusable_key_file_skips_sealing_with_its_reason(keys, tmp_path):
    loose = tmp_path / "loose.key"
    loose.write_bytes(keys[0].read_bytes())
    loose.chmod(0o644)
    from dataclasses import replace
    snap = replace(load_snapshot(DEFAULT_POLICY, options(loose)), resolver=zone(keys[1]))
    passage = Passage(snap, plain(), "alice@pass.test")
    assert passage.verdict.disposition is Disposition.ACCEPT
    assert passage.seal == "skipped:key-problem" and "mode 0644" in passage.results["seal"].reason


def test_authenticated_submission_is_not_sealed(keys):
    session = Session(conn_id="t", client_ip="192.0.2.9", daemon_name="submission", daemon_port=587,
                      auth_login="alice", auth_mech="PLAIN", tls_version="TLSv1.3")
    passage = Passage(snapshot(keys), authkit.message("alice@example.org", "x@elsewhere.test", "out"),
                      "alice@example.org", session)
    assert passage.seal == "skipped:listener" and passage.values("ARC-Seal") == []
    assert passage.values("DKIM-Signature")  # signed instead


def test_report_mode_seals_nothing_and_says_what_it_would_do(keys):
    passage = Passage(snapshot(keys, "seal.mode=report"), plain(), "alice@pass.test")
    assert passage.seal == "skipped:report:i1:none" and passage.values("ARC-Seal") == []


def test_sealing_counts_in_the_metrics(keys, monkeypatch):
    seen: list[str] = []
    monkeypatch.setattr(metrics, "sealed", seen.append)
    Passage(snapshot(keys), listed(), "list@list.test")
    assert seen == ["pass"]


def test_the_key_is_not_read_or_parsed_per_message(keys, monkeypatch):
    snap, raw = snapshot(keys), plain()

    def no_parsing(*args: object, **kwargs: object) -> NoReturn:
        raise AssertionError("a key was read or parsed while sealing")

    for module, name in [(signing_keys, "load_private_key"), (signing_keys, "parse_private_key"),
                         (serialization, "load_pem_private_key"), (dkim, "parse_pem_private_key")]:
        monkeypatch.setattr(module, name, no_parsing)
    assert Passage(snap, raw, "alice@pass.test").seal == "sealed:i1:none"


# --- the policy ---------------------------------------------------------------------------------------


def issues(tmp_path: Path, *overrides: str) -> list[str]:
    try:
        load_checked(DEFAULT_POLICY, list(overrides))
    except PolicyError as error:
        return [f"{issue.key}: {issue.message}" for issue in error.issues]
    return []


def test_the_shipped_policy_seals_on_port_25_once_a_key_is_named():
    policy = load_checked(DEFAULT_POLICY).policy
    assert "seal" in policy.listeners["smtp"].unauthenticated.checks
    assert "seal" not in policy.listeners["smtp"].authenticated.checks
    assert not policy.seal.set_up


def test_a_seal_key_must_be_one_of_signing_keys(keys, tmp_path):
    ed = f'{{selector = "ed", key_file = "{keys[0]}", algorithm = "ed25519-sha256"}}'
    base = [f'signing.keys={{"{SITE}" = [{{selector = "{SELECTOR}", key_file = "{keys[0]}"}}, {ed}]}}']
    assert issues(tmp_path, *base, f'seal.domain="{SITE}"', 'seal.selector="nope"') == [
        f"seal.selector: signing.keys has no key for {SITE} with selector 'nope' (selectors listed there: arc1, ed): "
        f'add it to signing.keys, e.g. "{SITE}" = [{{ selector = "nope", key_file = "..." }}]']
    assert issues(tmp_path, *base, 'seal.domain="other.test"', f'seal.selector="{SELECTOR}"')[0].startswith(
        "seal.selector: signing.keys has no key for other.test")
    assert issues(tmp_path, *base, f'seal.domain="{SITE}"') == [
        "seal.selector: seal.selector is empty: name both seal.domain and seal.selector (a key in signing.keys), "
        "or neither to leave sealing off"]
    assert issues(tmp_path, *base, f'seal.domain="{SITE}"', 'seal.selector="ed"') == [
        f"seal.selector: the key {SITE}/ed is ed25519-sha256: ARC seals are rsa-sha256 (what ARC verifiers check); "
        "name an RSA key"]
    assert issues(tmp_path, *base, f'seal.domain="{SITE}"', f'seal.selector="{SELECTOR}"') == []


def test_a_seal_set_up_needs_arc_on_its_listener(keys, tmp_path):
    keyed = options(keys[0])
    assert any("seal reads what arc found" in line for line in issues(tmp_path, *keyed, "arc.enabled=true",
               'listeners.smtp.unauthenticated.checks=["spf", "dkim", "dmarc", "seal"]'))
    assert any("arc is disabled" in line for line in issues(tmp_path, *keyed, "arc.enabled=false"))
    # not set up, it reads nothing: turning arc off stays valid (the offline test policies do)
    assert issues(tmp_path, *OFFLINE) == []


# --- arcsign is dkimpy's arc_sign, with OpenSSL's arithmetic ----------------------------------------


def dkimpy_set(raw: bytes, key: authkit.DkimKey, include: list[bytes]) -> list[bytes]:
    with mock.patch("time.time", return_value=NOW):
        return [bytes(line) for line in dkim.arc_sign(raw, key.selector.encode(), key.domain.encode(), key.private,
                                                      AUTHSERV_ID.encode(), include_headers=include)]


def our_set(raw: bytes, key: authkit.DkimKey, include: list[bytes], aar: bytes, cv: bytes) -> list[bytes]:
    private = serialization.load_pem_private_key(key.private, password=None)
    results = aar.partition(b";")[2].lstrip()
    with mock.patch("time.time", return_value=NOW):
        return arcsign.arc_set(canonical.Split(*canonical.rfc822_parse(raw)), key.domain.encode(),
                               key.selector.encode(), private, results, cv, include)  # type: ignore[arg-type]


SEALER = authkit.rsa_key("example.org", "arc1")


def with_results(raw: bytes, results: str) -> bytes:
    return f"Authentication-Results: {AUTHSERV_ID}; {results}\r\n".encode() + raw.replace(b"\r\n", b"\n").replace(
        b"\n", b"\r\n")


CASES: dict[str, tuple[bytes, bytes]] = {
    "no chain": (with_results(authkit.message("a@pass.test", RCPT, "one"), "spf=pass smtp.mailfrom=pass.test"),
                 dkim.CV_None),
    "a valid chain": (with_results(listed(), "arc=pass; dmarc=pass header.from=pass.test"), dkim.CV_Pass),
    "two sets": (with_results(listed(2), "arc=pass"), dkim.CV_Pass),
    "a failed chain": (with_results(broken(), "arc=fail"), dkim.CV_Fail),
    "folded, repeated headers": (with_results(b"Received: a\r\nReceived: b\r\nTo: x@y.test,\r\n\tz@y.test\r\n"
                                              + authkit.message("a@pass.test", RCPT, "two", body="  spaced \t\n\n\n"),
                                              "spf=none"), dkim.CV_None),
}


@pytest.mark.parametrize("case", list(CASES))
def test_the_set_is_dkimpys_arc_sign_byte_for_byte(case):
    raw, cv = CASES[case]
    include = [b"from", b"to", b"subject", b"date", b"message-id", b"from", b"reply-to"]
    theirs = dkimpy_set(raw, SEALER, include)
    assert len(theirs) == 3 and theirs[2].startswith(b"ARC-Authentication-Results:")
    assert our_set(raw, SEALER, include, theirs[2], cv) == theirs
    sealed = b"".join(theirs) + raw
    verdict = dkim.ARC(sealed).verify(dnsfunc=lambda name, timeout=5: SEALER.record.encode()
                                      if name.startswith(b"arc1.") else LIST.record.encode())[0]
    assert verdict == (None if cv == dkim.CV_Fail else dkim.CV_Pass)


def test_the_dkimpy_steps_arcsign_mirrors_are_the_ones_it_was_written_against():
    """arcsign repeats ARC.sign's steps after the A-R extraction and DomainSigner.gen_header's
    signing step: fail here when dkimpy changes them, and review arcsign against the new code."""
    sign_source = inspect.getsource(dkim.ARC.sign)
    for step in (b"arc_headers.insert(0, (b\"ARC-Authentication-Results\", aar_value))",
                 b"(b'b', b'0'*60)", b"as_include_headers.reverse()", b"self.headers.reverse()",
                 b"canon_policy.canonicalize_headers(arc_headers[:1]) + self.headers"):
        assert step.decode() in sign_source
    assert "hash_headers(\n        h, canon_policy, headers, include_headers, header, sig)" in inspect.getsource(
        dkim.DomainSigner.gen_header)
    assert list(inspect.signature(dkim.ARC.sorted_arc_headers).parameters) == ["self"]


def test_sealing_costs_well_under_a_millisecond_of_rsa_each(keys):
    """Two RSA-2048 signatures through OpenSSL, the rest dkimpy's: far below dkim.arc_sign's."""
    snap = snapshot(keys)
    raw = listed()
    Passage(snap, raw, "list@list.test")
    started = time.process_time()
    for _ in range(5):
        Passage(snap, raw, "list@list.test")
    per_message = (time.process_time() - started) / 5
    assert per_message < 0.1, per_message  # the whole conversation, verification included
