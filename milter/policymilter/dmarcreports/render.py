"""The summaries as text (for a postmaster) or one JSON object (for a program; keys in read.py)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import idna

from policymilter.dmarcreports.model import Verdict
from policymilter.dmarcreports.summary import FAILING_SHARE, MIN_MESSAGES, SIGNIFICANT, DomainSummary, Source, percent
from policymilter.safetext import for_log

_CUT = 200
_MEANS = {Verdict.ALIGNED: "", Verdict.FAILS_SPF_ONLY: "; passes by DKIM, forwarding-safe",
          Verdict.FAILS_DKIM_ONLY: "; passes by SPF alone, breaks when forwarded",
          Verdict.FAILS_BOTH: "; fails DMARC, refused under p=reject"}


@dataclass(frozen=True)
class Duplicate:
    org_name: str
    report_id: str
    origin: str
    first: str  # where it was read first


@dataclass(frozen=True)
class Run:
    """What was read, beside the summaries."""

    documents: int
    reports: int  # valid and distinct
    skipped: Sequence[tuple[str, str]]  # (origin, reason)
    duplicates: Sequence[Duplicate]
    outside_since: int
    not_ours: Mapping[str, int]  # domain -> reports left out by --policy or --domain
    conflicts: Sequence[Duplicate] = ()  # a different report under a key read before
    selected_by: str = "--policy"  # the options that chose our domains


def when(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _counts(pairs: Mapping[str, int]) -> str:
    return ", ".join(f"{name} {count}" for name, count in sorted(pairs.items(), key=lambda item: (-item[1], item[0])))


def _spf(source: Source) -> str:
    shown = {f"{result} {for_log(domain, 80) or '(empty)'}" + (f" ({scope})" if scope and scope != "mfrom" else ""):
             count for (result, domain, scope), count in source.spf.items()}
    return _counts(shown) or "none reported"


def _dkim(source: Source) -> str:
    shown = {("none (unsigned)" if not domain else
              f"{result} {for_log(domain, 80)}" + (f" s={for_log(selector, 60)}" if selector else "")): count
             for (result, domain, selector), count in source.dkim.items()}
    return _counts(shown)


def text(run: Run, summaries: Sequence[DomainSummary]) -> str:
    lines = [f"read: {run.documents} document(s), {run.reports} report(s), {len(run.skipped)} skipped, "
             f"{len(run.duplicates)} duplicate(s), {run.outside_since} before --since"
             + (f", {len(run.conflicts)} conflict(s)" if run.conflicts else "")]
    for duplicate in run.duplicates:
        lines.append(f"  duplicate: {for_log(duplicate.org_name, 80)} report {for_log(duplicate.report_id, 80)} "
                     f"in {for_log(duplicate.origin, 1000)} (read first in {for_log(duplicate.first, 1000)}): "
                     "counted once")
    for conflict in run.conflicts:
        lines.append(f"  CONFLICT: {for_log(conflict.org_name, 80)} report {for_log(conflict.report_id, 80)} "
                     f"in {for_log(conflict.origin, 1000)} differs from the one in {for_log(conflict.first, 1000)}: "
                     "both counted, the domain is not READY until the wrong one is removed")
    if run.not_ours:
        lines.append(f"  not our domains ({run.selected_by}): "
                     f"{_counts({for_log(k, 80): v for k, v in run.not_ours.items()})} report(s)")
    if not summaries:
        lines.append("no reports about our domains")
    for summary in summaries:
        lines += ["", *_domain(summary)]
    lines += ["", f"rules: a source is significant above {SIGNIFICANT:.0%} of a domain's mail; failing mail together "
                  f"must stay under {FAILING_SHARE:.0%}; at least {MIN_MESSAGES} messages to judge "
                  "(see policymilter/dmarcreports/summary.py)"]
    return "\n".join(lines) + "\n"


def _domain(summary: DomainSummary) -> list[str]:
    policy = ", ".join(f"{key}={value}" for key, value in summary.policy.items() if value is not None)
    lines = [f"{_domain_name(summary.domain)}: {summary.messages} messages in {summary.reports} report(s), "
             f"{when(summary.begin)} .. {when(summary.end)}; published (latest report): {policy}",
             "  reporters: " + ", ".join(f"{for_log(r.org_name, 80)} ({r.reports} report(s), {r.messages} messages, "
                                         f"{percent(r.messages, summary.messages)})" for r in summary.reporters),
             "  verdicts: " + ", ".join(f"{verdict} {summary.verdicts[verdict]} "
                                        f"({percent(summary.verdicts[verdict], summary.messages)})"
                                        for verdict in Verdict if summary.verdicts.get(verdict)),
             f"  sources ({len(summary.sources)}, by messages):"]
    for source in summary.sources:
        mixed = (" (" + ", ".join(f"{verdict} {source.verdicts[verdict]}" for verdict in Verdict
                                  if source.verdicts.get(verdict)) + ")") if len(source.verdicts) > 1 else ""
        name = f" {source.ptr}" if source.ptr else ""
        lines += [f"    {source.ip}{name}: {source.messages} messages, {source.verdict}{mixed}{_MEANS[source.verdict]}",
                  f"      spf: {_spf(source)}; dkim: {_dkim(source)}",
                  f"      disposition: {_counts(source.dispositions)}; header_from: "
                  f"{_counts({for_log(k, 80): v for k, v in source.header_from.items()})}"]
    lines.append(f"  {summary.readiness.line}")
    lines += [f"    {reason}" for reason in summary.readiness.why]
    return lines


def _domain_name(domain: str) -> str:
    """The A-label name, and the U-label one beside it when they differ (a reader knows that one)."""
    try:
        unicode = idna.decode(domain)
    except (idna.IDNAError, UnicodeError):
        unicode = domain
    return for_log(domain, _CUT) + (f" ({for_log(unicode, _CUT)})" if unicode != domain else "")


def as_json(run: Run, summaries: Sequence[DomainSummary]) -> dict[str, Any]:
    return {
        "input": {"documents": run.documents, "reports": run.reports,
                  "skipped": [{"origin": origin, "reason": reason} for origin, reason in run.skipped],
                  "duplicates": [{"org_name": d.org_name, "report_id": d.report_id, "origin": d.origin,
                                  "first": d.first} for d in run.duplicates],
                  "conflicts": [{"org_name": d.org_name, "report_id": d.report_id, "origin": d.origin,
                                 "first": d.first} for d in run.conflicts],
                  "outside_since": run.outside_since, "not_ours": dict(run.not_ours)},
        "rules": {"significant_share": SIGNIFICANT, "failing_share": FAILING_SHARE, "min_messages": MIN_MESSAGES},
        "domains": [_domain_json(summary) for summary in summaries],
    }


def _domain_json(summary: DomainSummary) -> dict[str, Any]:
    return {
        "domain": summary.domain, "policy": dict(summary.policy), "reports": summary.reports,
        "reporters": [{"org_name": r.org_name, "reports": r.reports, "messages": r.messages}
                      for r in summary.reporters],
        "begin": when(summary.begin), "end": when(summary.end), "messages": summary.messages,
        "verdicts": {str(verdict): summary.verdicts.get(verdict, 0) for verdict in Verdict},
        "sources": [{
            "ip": source.ip, "ptr": source.ptr, "messages": source.messages, "verdict": str(source.verdict),
            "verdicts": {str(verdict): count for verdict, count in source.verdicts.items()},
            "dispositions": dict(source.dispositions),
            "spf": [{"result": result, "domain": domain, "scope": scope or None, "messages": count}
                    for (result, domain, scope), count in sorted(source.spf.items(), key=lambda i: (-i[1], i[0]))],
            "dkim": [{"result": result, "domain": domain or None, "selector": selector or None, "messages": count}
                     for (result, domain, selector), count in sorted(source.dkim.items(),
                                                                     key=lambda i: (-i[1], i[0]))],
            "header_from": dict(source.header_from), "reporters": list(source.reporters),
        } for source in summary.sources],
        "readiness": {"status": str(summary.readiness.status), "line": summary.readiness.line,
                      "why": list(summary.readiness.why)},
    }
