"""summary.py: the readiness rules, one row per situation a postmaster meets on the way to p=reject."""

from __future__ import annotations

import pytest

from policymilter.dmarcreports.model import Format, PolicyPublished, Record, Report, Verdict
from policymilter.dmarcreports.summary import Status, summarise

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
