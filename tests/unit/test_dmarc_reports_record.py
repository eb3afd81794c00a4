"""dmarc_reports.record: the row the dmarc check counts per message (checks/dmarc/record.py),
through the whole pipeline (explain feeds a Conversation) into a real SQLite store."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import pytest

from policymilter.checks.dmarc.record import period_of
from policymilter.cli import explain
from policymilter.dmarcreports.rows import DkimAuth, Override, Published, Row, SpfAuth
from policymilter.facts import Session
from policymilter.listeners import listener_by_name
from policymilter.policy.model import Policy
from policymilter.resources import load_resources
from policymilter.service import load_checked, snapshot_for
from policymilter.state import open_store
from policymilter.state.sqlitestore import SqliteStore
from tests import authkit
from tests.conftest import DEFAULT_POLICY
from tests.zonefake import ZoneResolver

CLIENT = "192.0.2.66"
PASS_KEY = authkit.rsa_key("pass.test", "s1")
OTHER_KEY = authkit.rsa_key("other.test", "s2")
SEALER = authkit.rsa_key("list.test", "arc")
RECORDING = ("antivirus.enabled=false", "spam.enabled=false", "dmarc_reports.record=true",
             'dmarc_reports.org_name="Example Receiver"', 'dmarc_reports.email="dmarc-noreply@example.org"')


@functools.cache
def zone() -> ZoneResolver:
    z = ZoneResolver()
    for key in (PASS_KEY, OTHER_KEY, SEALER):
        z = z.txt_record(f"{key.owner}.{key.domain}", key.record)
    for domain, dmarc in (("pass.test", "v=DMARC1; p=reject; rua=mailto:agg@pass.test!10m,mailto:b@pass.test"),
                          ("reject.test", "v=DMARC1; p=reject; adkim=s; aspf=s"),
                          ("quarantine.test", "v=DMARC1; p=quarantine; sp=none; np=reject"),
                          ("monitor.test", "v=DMARC1; p=none; rua=mailto:m@monitor.test"),
                          ("sampled.test", "v=DMARC1; p=reject; pct=0"),
                          ("testing.test", "v=DMARC1; p=reject; t=y"),
                          ("manyrua.test", "v=DMARC1; p=none; rua=" + ",".join(
                              [f"mailto:x@{'a' * 300}.test", *(f"mailto:r{n}@manyrua.test" for n in range(15))]))):
        z = z.txt_record(f"_dmarc.{domain}", dmarc)
    for domain in ("pass.test", "other.test", "mail.pass.test"):
        z = z.txt_record(domain, f"v=spf1 ip4:{CLIENT} -all")
    for domain in ("reject.test", "quarantine.test", "sampled.test", "testing.test", "norecord.test",
                   "monitor.test", "forged.test", "manyrua.test"):
        z = z.txt_record(domain, "v=spf1 -all")
    return z


def policy(tmp_path: Path, *overrides: str) -> Policy:
    return load_checked(DEFAULT_POLICY, [*RECORDING, f'state.store="sqlite:{tmp_path}/state.db"', *overrides]).policy


def send(tmp_path: Path, raw: bytes, mail_from: str, rcpts: Sequence[str] = ("bob@example.test",),
         *overrides: str, helo: str = "mail.pass.test", session: Session | None = None) -> str:
    """One message through the pipeline; its verdict."""
    loaded = policy(tmp_path, *overrides)
    snapshot = replace(snapshot_for(loaded), resolver=zone())
    session = session or Session(conn_id="t", client_ip=CLIENT, helo=helo, daemon_name="smtp", daemon_port=25)
    try:
        report = explain(snapshot, session, listener_by_name(loaded, session.daemon_name or "smtp"), raw, mail_from,
                         list(rcpts))
    finally:
        if snapshot.resources.store is not None:
            snapshot.resources.store.close()
    return str(report["verdict"])


def rows(tmp_path: Path) -> list[tuple[int, str, Row, int]]:
    """Every recorded row: (period, domain, row, count)."""
    store = open_store(f"sqlite:{tmp_path}/state.db")
    try:
        return [(period, domain, Row.from_key(key), count)
                for period, domain in store.dmarc_pending(2**40, now=0)
                for key, count in store.dmarc_rows(period, domain)]
    finally:
        store.close()


def mail(sender: str, *keys: authkit.DkimKey, rcpt: str = "bob@example.test") -> bytes:
    raw = authkit.message(sender, rcpt, "report me")
    for key in keys:
        raw = authkit.sign(raw, key)
    return raw


PASS_PUBLISHED = Published("pass.test", "reject", rua=("mailto:agg@pass.test!10m", "mailto:b@pass.test"))
REJECT_PUBLISHED = Published("reject.test", "reject", adkim="s", aspf="s")
QUARANTINE_PUBLISHED = Published("quarantine.test", "quarantine", sp="none", np="reject")


def spf(domain: str, result: str, scope: str = "mfrom") -> tuple[SpfAuth, ...]:
    return (SpfAuth(domain, scope, result),)  # type: ignore[arg-type]


# name, From, MAIL FROM, DKIM keys, overrides -> verdict, the row (envelope_to example.test, client CLIENT)
CASES = [
    ("pass", "alice@pass.test", "alice@pass.test", (PASS_KEY,), (),
     "accept", dict(header_from="pass.test", envelope_from="pass.test", published=PASS_PUBLISHED,
                    disposition="pass", dkim_aligned=True, spf_aligned=True,
                    dkim=(DkimAuth("pass.test", "s1", "pass"),), spf=spf("pass.test", "pass"))),
    ("fail and reject", "ceo@reject.test", "ceo@reject.test", (), (),
     "reject", dict(header_from="reject.test", envelope_from="reject.test", published=REJECT_PUBLISHED,
                    disposition="reject", dkim_aligned=False, spf_aligned=False, spf=spf("reject.test", "fail"))),
    ("quarantine", "x@quarantine.test", "x@quarantine.test", (), (),
     "quarantine", dict(header_from="quarantine.test", envelope_from="quarantine.test",
                        published=QUARANTINE_PUBLISHED, disposition="quarantine", dkim_aligned=False,
                        spf_aligned=False, spf=spf("quarantine.test", "fail"))),
    ("p=none fails: none", "m@monitor.test", "alice@pass.test", (OTHER_KEY,), (),
     "accept", dict(header_from="monitor.test", envelope_from="pass.test",
                    published=Published("monitor.test", "none", rua=("mailto:m@monitor.test",)),
                    disposition="none", dkim_aligned=False, spf_aligned=False,
                    dkim=(DkimAuth("other.test", "s2", "pass"),), spf=spf("pass.test", "pass"))),
    ("two signatures, the second aligned", "alice@pass.test", "", (OTHER_KEY, PASS_KEY), (),
     # a null sender: SPF's identity (and envelope_from) is the HELO name
     "accept", dict(header_from="pass.test", envelope_from="mail.pass.test", published=PASS_PUBLISHED,
                    disposition="pass", dkim_aligned=True, spf_aligned=True,
                    dkim=(DkimAuth("pass.test", "s1", "pass"), DkimAuth("other.test", "s2", "pass")),
                    spf=spf("mail.pass.test", "pass", "mfrom"))),
    ("never_reject_domains", "ceo@reject.test", "ceo@reject.test", (), ('dmarc.never_reject_domains=["reject.test"]',),
     "accept", dict(header_from="reject.test", envelope_from="reject.test", published=REJECT_PUBLISHED,
                    disposition="none", dkim_aligned=False, spf_aligned=False, spf=spf("reject.test", "fail"),
                    reasons=(Override("local_policy", "dmarc.never_reject_domains"),))),
    ("trusted forwarder", "ceo@reject.test", "ceo@reject.test", (), (f'dmarc.trusted_forwarders=["{CLIENT}/32"]',),
     "accept", dict(header_from="reject.test", envelope_from="reject.test", published=REJECT_PUBLISHED,
                    disposition="none", dkim_aligned=False, spf_aligned=False, spf=spf("reject.test", "fail"),
                    reasons=(Override("trusted_forwarder", "dmarc.trusted_forwarders"),))),
    ("on_reject = tag", "ceo@reject.test", "ceo@reject.test", (), ('dmarc.on_reject="tag"',),
     "accept", dict(header_from="reject.test", envelope_from="reject.test", published=REJECT_PUBLISHED,
                    disposition="none", dkim_aligned=False, spf_aligned=False, spf=spf("reject.test", "fail"),
                    reasons=(Override("local_policy", "dmarc.on_reject = tag"),))),
    ("on_reject = quarantine", "ceo@reject.test", "ceo@reject.test", (), ('dmarc.on_reject="quarantine"',),
     "quarantine", dict(header_from="reject.test", envelope_from="reject.test", published=REJECT_PUBLISHED,
                        disposition="quarantine", dkim_aligned=False, spf_aligned=False,
                        spf=spf("reject.test", "fail"),
                        reasons=(Override("local_policy", "dmarc.on_reject = quarantine"),))),
    ("report mode", "ceo@reject.test", "ceo@reject.test", (), ('dmarc.mode="report"',),
     "accept", dict(header_from="reject.test", envelope_from="reject.test", published=REJECT_PUBLISHED,
                    disposition="none", dkim_aligned=False, spf_aligned=False, spf=spf("reject.test", "fail"),
                    reasons=(Override("local_policy", "dmarc.mode = report"),))),
    ("pct=0 samples every message out", "x@sampled.test", "x@sampled.test", (), (),
     "quarantine", dict(header_from="sampled.test", envelope_from="sampled.test",
                        published=Published("sampled.test", "reject"), disposition="quarantine",
                        dkim_aligned=False, spf_aligned=False, spf=spf("sampled.test", "fail"),
                        reasons=(Override("other", "sampled out: pct=0"),))),
    ("t=y", "x@testing.test", "x@testing.test", (), (),
     "quarantine", dict(header_from="testing.test", envelope_from="testing.test",
                        published=Published("testing.test", "reject", testing="y"), disposition="quarantine",
                        dkim_aligned=False, spf_aligned=False, spf=spf("testing.test", "fail"),
                        reasons=(Override("policy_test_mode", "t=y: reject applied as quarantine"),))),
    ("tree walk", "alice@pass.test", "alice@pass.test", (PASS_KEY,), ('dmarc.discovery="treewalk"',),
     "accept", dict(header_from="pass.test", envelope_from="pass.test",
                    published=replace(PASS_PUBLISHED, discovery_method="treewalk"),
                    disposition="pass", dkim_aligned=True, spf_aligned=True,
                    dkim=(DkimAuth("pass.test", "s1", "pass"),), spf=spf("pass.test", "pass"))),
]


@pytest.mark.parametrize(("name", "author", "mail_from", "keys", "overrides", "verdict", "row"), CASES,
                         ids=[case[0] for case in CASES])
def test_the_row_of_one_message(tmp_path, name, author, mail_from, keys, overrides, verdict, row):
    del name
    assert send(tmp_path, mail(f"Someone <{author}>", *keys), mail_from, ("bob@example.test",), *overrides) == verdict
    [(period, domain, found, count)] = rows(tmp_path)
    expected = Row(source_ip=CLIENT, envelope_to="example.test", **row)
    assert (domain, found, count) == (expected.published.domain, expected, 1)
    assert period % 86400 == 0


def test_a_mailing_list_sealer_we_trust(tmp_path):
    raw = authkit.arc_chain(authkit.message("ceo@reject.test", "bob@example.test", "via a list"), SEALER,
                            "mx.list.test", 1)
    assert send(tmp_path, raw, "list-bounces@forged.test", ("bob@example.test",),
                'arc.trusted_sealers=["list.test"]') == "accept"
    [(_, _, found, _)] = rows(tmp_path)
    assert (found.disposition, found.reasons) == ("none", (Override("mailing_list", "trusted ARC sealer list.test"),))


def test_recipients_in_several_domains_have_no_envelope_to(tmp_path):
    raw = mail("Alice <alice@pass.test>", PASS_KEY)
    send(tmp_path, raw, "alice@pass.test", ("bob@example.test", "carol@EXAMPLE.test"))
    send(tmp_path, raw, "alice@pass.test", ("bob@example.test", "dave@example.net"))
    assert sorted((row.envelope_to, count) for _, _, row, count in rows(tmp_path)) == [("", 1), ("example.test", 1)]


def test_equal_messages_add_up_in_one_row(tmp_path):
    raw = mail("Alice <alice@pass.test>", PASS_KEY)
    for _ in range(3):
        send(tmp_path, raw, "alice@pass.test")
    send(tmp_path, mail("Someone <ceo@reject.test>"), "ceo@reject.test")
    assert sorted((domain, count) for _, domain, _, count in rows(tmp_path)) == [("pass.test", 3), ("reject.test", 1)]


@pytest.mark.parametrize(("what", "author", "mail_from", "overrides"), [
    ("no DMARC record", "x@norecord.test", "x@norecord.test", ()),
    ("recording off", "ceo@reject.test", "ceo@reject.test", ("dmarc_reports.record=false",)),
])
def test_nothing_recorded(tmp_path, what, author, mail_from, overrides):
    del what
    send(tmp_path, mail(author), mail_from, ("bob@example.test",), *overrides)
    assert rows(tmp_path) == []


def test_recording_off_opens_no_store_for_reports():
    base = ["ratelimit.enabled=false", *RECORDING[:2]]
    assert load_resources(load_checked(DEFAULT_POLICY, base).policy).store is None
    assert load_resources(load_checked(DEFAULT_POLICY, [*base, *RECORDING[2:]]).policy).store is not None


def test_authenticated_mail_is_never_recorded(tmp_path):
    """Even where a listener runs dmarc for authenticated traffic: our users' mail is not ours
    to report."""
    session = Session(conn_id="t", client_ip=CLIENT, helo="mail.pass.test", daemon_name="smtp", daemon_port=25,
                      auth_login="alice", auth_mech="PLAIN", tls_version="TLSv1.3", tls_cipher="x")
    send(tmp_path, mail("Someone <ceo@reject.test>"), "ceo@reject.test", ("bob@example.test",),
         'listeners.smtp.authenticated.checks=["spf", "dkim", "dmarc"]', "sender.enabled=false",
         session=session)
    assert rows(tmp_path) == []


@pytest.mark.parametrize(("author", "verdict"), [("ceo@reject.test", "reject"), ("alice@pass.test", "accept")])
def test_a_store_error_changes_no_verdict(tmp_path, logwatch, author, verdict):
    logwatch.expect("dmarc_report_failed")
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    keys = (PASS_KEY,) if author.endswith("pass.test") else ()
    assert send(tmp_path, mail(f"X <{author}>", *keys), author, ("bob@example.test",),
                f'state.store="sqlite:{blocked}/state.db"') == verdict
    [failed] = logwatch.fields("dmarc_report_failed")
    assert failed["domain"] == author.rpartition("@")[2]


def test_a_full_report_counts_its_rows_and_drops_new_ones(tmp_path):
    for sender in ("a@pass.test", "b@pass.test"):  # one row: From and envelope domains are the same
        send(tmp_path, mail(f"X <{sender}>", PASS_KEY), sender, ("bob@example.test",), "dmarc_reports.max_rows=1")
    send(tmp_path, mail("X <a@pass.test>", PASS_KEY), "a@other.test", ("bob@example.test",), "dmarc_reports.max_rows=1")
    assert [(row.envelope_from, count) for _, _, row, count in rows(tmp_path)] == [("pass.test", 2)]


@pytest.mark.parametrize(("now", "interval", "period"), [
    (86400 * 20000 + 5, 86400, 86400 * 20000),  # 2024-10-04T00:00:05Z: that day, from 00:00 UTC
    (86400 * 20000 - 1, 86400, 86400 * 19999),
    (86400 * 20000 + 7199.5, 3600, 86400 * 20000 + 3600),
    (86400 * 20000 + 7200, 7200, 86400 * 20000 + 7200),
])
def test_the_period_starts_on_a_utc_boundary(now, interval, period):
    assert period_of(now, interval) == period


def test_one_record_costs_one_upsert(tmp_path):
    """A new row: one transaction; a known one: one UPDATE (measured in benchmarks/throughput.py)."""
    store = SqliteStore(str(tmp_path / "state.db"))
    key = Row("192.0.2.1", "a.test", "a.test", "b.test", Published("a.test", "reject"), "pass", True, True).key()
    assert store.dmarc_record(0, "a.test", key, 10.0, 5, 86400 * 8) is True
    statements: list[str] = []
    db = store._connection()
    db.set_trace_callback(statements.append)
    assert store.dmarc_record(0, "a.test", key, 11.0, 5, 86400 * 8) is True
    writes = [s for s in statements if s.split()[0] in ("UPDATE", "INSERT", "DELETE")]
    assert len(writes) == 1 and writes[0].startswith("UPDATE dmarc_row")
    store.close()


@pytest.mark.parametrize(("record", "extra"), [("false", 0.0), ("true", 2.0)])
def test_the_row_write_counts_in_the_end_of_message_budget(record, extra):
    from policymilter.policy.timing import stage_times

    loaded = load_checked(DEFAULT_POLICY, [*RECORDING, f"dmarc_reports.record={record}", "state.timeout=2"]).policy
    _, eom = stage_times(loaded, loaded.listeners["smtp"], False)
    assert dict(eom.parts)["dmarc"] == loaded.dns.lifetime + extra


# --- what a forger controls is bounded at recording (attack review findings 2, 4, 5) ---------------

def forged(author: str, *selectors: str, d: str = "") -> bytes:
    """From: `author`, with one unverifiable DKIM-Signature per selector (d= the From domain)."""
    domain = d or author.rpartition("@")[2]
    signatures = "".join(f"DKIM-Signature: v=1; a=rsa-sha256; d={domain}; s={selector}; h=from; bh=AAAA; b=AAAA\n"
                         for selector in selectors)
    return signatures.encode() + authkit.message(f"X <{author}>", "bob@example.test", "forged")


def from_ip(ip: str) -> Session:
    return Session(conn_id="t", client_ip=ip, helo="mail.pass.test", daemon_name="smtp", daemon_port=25)


# selectors (d=) -> the (domain, selector) pairs recorded
@pytest.mark.parametrize(("selectors", "d", "recorded"), [
    (("a" * 80000,), "", [("reject.test", "(invalid)")]),  # 80 KB of s=: one placeholder
    (("a" * 64,), "", [("reject.test", "(invalid)")]),  # over a DNS label
    (("x y<z>",), "", [("reject.test", "(invalid)")]),
    (("S1.Sub",), "", [("reject.test", "s1.sub")]),  # DNS compares names in any case: one row
    (("s1",), "a" * 250 + ".test", [("(invalid)", "s1")]),  # d= over 253 characters
    (("s1",), "[192.0.2.1]", [("(invalid)", "s1")]),
    (tuple(f"s{n}" for n in range(30)), "", [("reject.test", f"s{n}") for n in range(10)]),  # MAX_DKIM_RESULTS
])
def test_what_a_message_puts_in_a_row_is_bounded(tmp_path, selectors, d, recorded):
    send(tmp_path, forged("ceo@reject.test", *selectors, d=d), "ceo@reject.test", ("bob@example.test",),
         "dkim.max_signatures=50")
    [(_, _, row, _)] = rows(tmp_path)
    assert [(auth.domain, auth.selector) for auth in row.dkim] == recorded
    assert len(row.key()) < 2000


def test_the_published_rua_list_is_bounded(tmp_path):
    send(tmp_path, forged("x@manyrua.test", "s1"), "x@manyrua.test")
    [(_, _, row, _)] = rows(tmp_path)
    assert row.published.rua == tuple(f"mailto:r{n}@manyrua.test" for n in range(10))  # the 300-character one dropped


# overrides, (client, selector) of forged pass.test mail -> selectors counted; real mail always counts
@pytest.mark.parametrize(("overrides", "forgeries", "counted"), [
    # one source cannot fill the report with its variations (an IPv6 /64 is one source)
    (("dmarc_reports.max_rows_per_source=2",),
     [("203.0.113.1", "s0"), ("203.0.113.1", "s1"), ("203.0.113.1", "s2"), ("203.0.113.2", "s3"),
      ("2001:db8::1", "s4"), ("2001:db8::2", "s5"), ("2001:db8::3", "s6"), ("2001:db8:0:1::1", "s7")],
     ["s0", "s1", "s3", "s4", "s5", "s7"]),
    # failing rows, however many sources, leave the rest of max_rows to mail that passes
    (("dmarc_reports.max_failing_rows=2", "dmarc_reports.max_rows=3"),
     [("203.0.113.1", "s0"), ("203.0.113.2", "s1"), ("203.0.113.3", "s2"), ("203.0.113.4", "s3")],
     ["s0", "s1"]),
])
def test_forged_rows_cannot_crowd_out_real_mail(tmp_path, overrides, forgeries, counted):
    for ip, selector in forgeries:
        send(tmp_path, forged("ceo@pass.test", selector), "ceo@pass.test", ("bob@example.test",), *overrides,
             session=from_ip(ip))
    send(tmp_path, mail("X <alice@pass.test>", PASS_KEY), "alice@pass.test", ("bob@example.test",), *overrides)
    found = rows(tmp_path)
    assert sorted(row.dkim[0].selector for _, _, row, _ in found if not row.dkim_aligned) == counted
    assert [(row.source_ip, count) for _, _, row, count in found if row.dkim_aligned] == [(CLIENT, 1)]


def test_report_domains_per_period_are_capped(tmp_path):
    for author in ("ceo@reject.test", "x@quarantine.test", "ceo@reject.test"):
        send(tmp_path, forged(author, "s1"), author, ("bob@example.test",), "dmarc_reports.max_domains=1")
    assert [(domain, count) for _, domain, _, count in rows(tmp_path)] == [("reject.test", 2)]
