"""summary.py: the readiness rules, one row per situation a postmaster meets on the way to p=reject."""

from __future__ import annotations

from dataclasses import replace

import pytest

from policymilter.dmarcreports.model import Format, PolicyPublished, Record, Report, Verdict
from policymilter.dmarcreports.summary import Status, date_problem, summarise

# verdict -> (policy_evaluated dkim aligned, spf aligned)
ALIGNMENT = {Verdict.ALIGNED: (True, True), Verdict.FAILS_SPF_ONLY: (True, False),
             Verdict.FAILS_DKIM_ONLY: (False, True), Verdict.FAILS_BOTH: (False, False)}
A, S, D, B = Verdict.ALIGNED, Verdict.FAILS_SPF_ONLY, Verdict.FAILS_DKIM_ONLY, Verdict.FAILS_BOTH


def report(p: str, rows: list[tuple[str, int, Verdict]], end: int = 86399) -> Report:
    records = tuple(Record(ip, count, "none", *ALIGNMENT[verdict], (), "example.org", None, (), ())
                    for ip, count, verdict in rows)
    return Report(Format.RFC7489, "r.example", "noreply@r.example", f"id-{end}", 0, end, None,
                  PolicyPublished("example.org", p), records)


FORGERS = [(f"203.0.113.{n}", 3, B) for n in range(1, 6)]  # 15 messages from five small addresses

CASES = [
    ("too few messages", "none", [("192.0.2.1", 99, A)], Status.NOT_READY,
     "NOT READY: only 99 messages reported, too few to judge"),
    ("p=none, forgers only fail", "none", [("192.0.2.1", 985, A), *FORGERS], Status.READY_QUARANTINE,
     "READY for p=quarantine"),
    ("p=none, a big source fails both", "none", [("192.0.2.1", 900, A), ("198.51.100.9", 30, B), *FORGERS],
     Status.NOT_READY, "NOT READY: 30 messages from 1 source fail both (largest: 198.51.100.9, 30 messages)"),
    ("p=none, 2% exactly is not above it", "none", [("192.0.2.1", 980, A), ("198.51.100.9", 20, B)],
     Status.READY_QUARANTINE, "READY for p=quarantine"),
    ("p=none, many small failing add up to 10%", "none",
     [("192.0.2.1", 900, A), *[(f"198.51.100.{n}", 10, B) for n in range(10)]], Status.NOT_READY,
     "NOT READY: 100 messages from 10 sources fail both (largest: 198.51.100.9, 10 messages)"),
    ("p=none, SPF-only is fine for quarantine", "none", [("192.0.2.1", 500, A), ("192.0.2.2", 500, D)],
     Status.READY_QUARANTINE, "READY for p=quarantine"),
    ("p=quarantine, a big source passes by SPF only", "quarantine", [("192.0.2.1", 500, A), ("192.0.2.2", 500, D)],
     Status.NOT_READY, "NOT READY for p=reject: 500 messages from 1 source pass by SPF only (largest: 192.0.2.2, "
                       "500 messages)"),
    ("p=quarantine, DKIM-aligned is forwarding-safe", "quarantine", [("192.0.2.1", 500, A), ("192.0.2.2", 500, S),
                                                                    *FORGERS],
     Status.READY_REJECT, "READY for p=reject"),
    ("p=reject, forgers refused", "reject", [("192.0.2.1", 985, A), *FORGERS], Status.AT_REJECT,
     "AT p=reject: 15 messages (1.5%) from 5 sources fail both, under 10% with none above 2%: likely forgeries"),
    ("p=reject, a big source refused", "reject", [("192.0.2.1", 900, A), ("198.51.100.9", 100, B)], Status.AT_REJECT,
     "AT p=reject: 100 messages from 1 source fail both (largest: 198.51.100.9, 100 messages), and is refused"),
]


@pytest.mark.parametrize(("name", "p", "rows", "status", "line"), CASES, ids=[case[0] for case in CASES])
def test_readiness(name: str, p: str, rows: list[tuple[str, int, Verdict]], status: Status, line: str) -> None:
    summary = summarise("example.org", [report(p, rows)])
    assert (summary.readiness.status, summary.readiness.line) == (status, line)
    assert summary.readiness.why  # always says why


def test_the_latest_report_gives_the_policy_and_a_source_sums_over_reports() -> None:
    summary = summarise("example.org", [report("quarantine", [("192.0.2.1", 600, A), ("192.0.2.2", 50, B)], 86399),
                                        report("none", [("192.0.2.1", 400, A), ("192.0.2.2", 60, A)], 3600)])
    assert summary.p == "quarantine"
    assert [(s.ip, s.messages, s.verdict, dict(s.verdicts)) for s in summary.sources] == [
        ("192.0.2.1", 1000, A, {A: 1000}), ("192.0.2.2", 110, A, {B: 50, A: 60})]  # most of its mail decides
    assert summary.readiness.line == "NOT READY: 50 messages from 1 source fail both (largest: 192.0.2.2, 50 messages)"


def test_a_tie_goes_to_the_worse_verdict() -> None:
    summary = summarise("example.org", [report("none", [("192.0.2.1", 50, A), ("192.0.2.1", 50, B)])])
    assert summary.sources[0].verdict is B


def test_a_short_period_is_said() -> None:
    summary = summarise("example.org", [report("none", [("192.0.2.1", 500, A)])])
    assert summary.readiness.why[-1].startswith("the reports cover only 1 day(s): dns-records advises reading them "
                                                "for a few weeks")


# -- the attack review (notes/attack-read.md): forged or conflicting reports never make a READY ----------------

DAY = 86400
NOW = 1_800_000_000


def dated(begin: int, end: int) -> Report:
    return replace(report("none", [("192.0.2.1", 1, A)]), begin=begin, end=end)


@pytest.mark.parametrize(("begin", "end", "problem"), [
    # 6: a report from the future would decide the policy and escape --since.
    (NOW - DAY, NOW, None),
    (NOW, NOW + DAY, None),  # a clock a little ahead, a period ending tonight
    (NOW, NOW + DAY + 1, "date_range ends 2027-01-16T08:00:01Z, in the future (now 2027-01-15T08:00:00Z): a forged "
                         "or broken report, not counted"),
    (0, 253402300799, "date_range ends 9999-12-31T23:59:59Z, in the future (now 2027-01-15T08:00:00Z): a forged or "
                      "broken report, not counted"),
    (NOW - 31 * DAY, NOW - 1, None),
    (NOW - 32 * DAY, NOW - 1, "date_range covers 32 days (2026-12-14T08:00:00Z .. 2027-01-15T07:59:59Z), more than "
                              "31: a forged or broken report, not counted"),
])
def test_dates_are_believed_or_refused(begin: int, end: int, problem: str | None) -> None:
    assert date_problem(dated(begin, end), NOW) == problem


REAL = [("192.0.2.1", 1000, A), ("198.51.100.7", 300, B)]  # a big source fails both: NOT READY


def by(org: str, rows: list[tuple[str, int, Verdict]], report_id: str) -> Report:
    return replace(report("none", rows), org_name=org, report_id=report_id)


# (name, reports, conflicts, status, line)
TRUST = [
    ("the real reports alone", [by("google.com", REAL, "1")], (), Status.NOT_READY,
     "NOT READY: 300 messages from 1 source fail both (largest: 198.51.100.7, 300 messages)"),
    # 8: one inflated report dilutes the failing share to nothing; under the real reporter's name ...
    ("inflated, same reporter", [by("google.com", REAL, "1"), by("google.com", [("203.0.113.9", 10**9, A)], "f")],
     (), Status.NOT_READY, "NOT READY (without google.com report f, which carries 100% of the messages): 300 "
                           "messages from 1 source fail both (largest: 198.51.100.7, 300 messages)"),
    # ... or as a reporter of its own, in as many reports as it likes.
    ("inflated, another reporter", [by("google.com", REAL, "1"),
                                    *[by("yahoo.com", [("203.0.113.9", 10**8, A)], f"f{n}") for n in range(5)]],
     (), Status.NOT_READY, "NOT READY (google.com's reports alone): 300 messages from 1 source fail both (largest: "
                           "198.51.100.7, 300 messages)"),
    ("inflated over real mail too few to judge", [by("google.com", [("198.51.100.7", 50, B)], "1"),
                                                  by("google.com", [("203.0.113.9", 10**6, A)], "f")], (),
     Status.NOT_READY, "NOT READY (without google.com report f, which carries 100% of the messages): only 50 "
                       "messages, too few to confirm the rest"),
    ("honest reporters agreeing", [by("google.com", [("192.0.2.1", 5000, A)], "1"),
                                   by("yahoo.com", [("192.0.2.1", 300, A), ("203.0.113.9", 3, B)], "2")], (),
     Status.READY_QUARANTINE, "READY for p=quarantine"),
    ("one report a little over half", [by("outlook.com", [("192.0.2.1", 80, A)], "1"),
                                       by("outlook.com", [("192.0.2.1", 72, A)], "2")], (),
     Status.READY_QUARANTINE, "READY for p=quarantine"),
    # 7: two contents under one report id: both counted, and no READY.
    ("a conflict", [by("google.com", [("192.0.2.1", 1000, A)], "1")], ("google.com report 1",), Status.NOT_READY,
     "NOT READY: 1 conflicting report(s) (google.com report 1: the same org_name and report_id with different "
     "contents)"),
    ("a conflict where it already fails", [by("google.com", REAL, "1")], ("google.com report 1",), Status.NOT_READY,
     "NOT READY: 300 messages from 1 source fail both (largest: 198.51.100.7, 300 messages)"),
]


@pytest.mark.parametrize(("name", "reports", "conflicts", "status", "line"), TRUST, ids=[case[0] for case in TRUST])
def test_no_single_report_or_reporter_decides(name: str, reports: list[Report], conflicts: tuple[str, ...],
                                              status: Status, line: str) -> None:
    summary = summarise("example.org", reports, conflicts=conflicts)
    assert (summary.readiness.status, summary.readiness.line) == (status, line)
    if conflicts:
        assert any(why.startswith("a report_id names one report") for why in summary.readiness.why)


@pytest.mark.parametrize(("domain", "line"), [
    # 11: a look-alike name in another script is summarised, never READY beside the real one.
    ("xn--exmple-4nf.org", "NOT READY: ex\u0430mple.org mixes CYRILLIC and LATIN letters in one label"),
    ("xn--bcher-kva.example", "READY for p=quarantine"),  # one script: an ordinary IDN
    ("example.org", "READY for p=quarantine"),
])
def test_a_lookalike_domain_is_never_ready(domain: str, line: str) -> None:
    summary = summarise(domain, [replace(report("none", [("192.0.2.1", 500, A)]),
                                         policy=PolicyPublished(domain, "none"))])
    assert summary.readiness.line == line
