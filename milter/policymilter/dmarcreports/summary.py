"""Reports -> per site domain: reporters, period, sending sources with verdicts, and readiness.

A source is a sending IP address, over all reports about the domain. Its verdict is that of most
of its messages (a tie goes to the worse): `aligned` (DKIM and SPF aligned), `fails SPF only`
(DKIM aligned: passes DMARC and survives forwarding), `fails DKIM only` (passes by SPF alone:
breaks when forwarded), `fails both` (fails DMARC: refused under p=reject). The verdicts are the
reporters' own (policy_evaluated, RFC 7489 §7.2.1.1), not recomputed.

Readiness for the next step of the rollout `dns-records` advises (none -> quarantine -> reject),
judged from the policy the latest report saw (`p`), on the messages (not the sources):
- fewer than MIN_MESSAGES messages reported: NOT READY (too few to judge);
- a source sending more than SIGNIFICANT (2 %) of the domain's mail that fails both is not an
  obvious forger (a forger sends little from each address): while there is one, NOT READY;
- failing mail from many small sources adds up: at FAILING_SHARE (10 %) or more of all mail,
  NOT READY (rarely all forgery: often one service sending from many addresses);
- otherwise, at p=none: READY for p=quarantine;
- at p=quarantine, READY for p=reject when, in addition, no source sending more than SIGNIFICANT
  of the mail passes by SPF alone (`fails DKIM only`): every forward breaks SPF, and under
  p=reject that mail would be refused; only a DKIM signature carries it;
- at p=reject there is no next step: AT p=reject, with what still fails.
A READY over reports covering fewer than SHORT_PERIOD_DAYS days says so: a source that sends
weekly or monthly (invoices, newsletters) may not be in them yet.

Which reports are believed. Anyone can mail a report to the rua address, and every count in it
is the reporter's word. The rule is strict: a forged or conflicting report must never turn real
failing mail into a READY. So:
- dates (`date_problem`, a skip in `read`): a report ending more than MAX_FUTURE_SECONDS after
  now, or covering more than MAX_SPAN_DAYS days, is refused, never counted: it would otherwise
  decide the policy (`p` comes from the latest report) and escape `--since`;
- the same (org_name, report_id) twice: identical contents are one report counted once; different
  contents are a conflict (RFC 7489 §7.2.1.1: the id names one report): both copies are counted,
  so no failure disappears, and neither domain involved can be READY until one copy is removed;
- one reporter's word never decides alone: a READY must also hold (the same rules, the same `p`)
  on the mail of each reporter (org_name) with at least MIN_MESSAGES messages when there are
  several, and, when one report carries more than half of the messages, on the others without it
  (again, up to MAX_VIEWS reports deep) when they have MIN_MESSAGES; when they have fewer and the
  one report carries more than OUTWEIGHS times their messages, it is its word alone: NOT READY.
  A view that fails makes the domain NOT READY, and its line names the view. A record's count is
  at most parse.MAX_COUNT;
- a domain whose labels mix scripts (exаmple.org with a Cyrillic a: its own xn-- name) is
  summarised as what it is and is never READY.
What no rule can catch: many forged reports, each of ordinary size, under a real reporter's name.
Read reports from a mailbox that only receives authenticated (DKIM-verified) report mail.
"""

from __future__ import annotations

import unicodedata
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum

import idna

from policymilter.dmarcreports.model import Record, Report, Verdict

MIN_MESSAGES = 100
SIGNIFICANT = 0.02
FAILING_SHARE = 0.10
SHORT_PERIOD_DAYS = 14  # below: a READY says the period is short
MAX_FUTURE_SECONDS = 86400  # a report may end this long after now (clocks, a period ending at midnight)
MAX_SPAN_DAYS = 31  # RFC 7489 §7.2: reports are daily by default; a month is the most a reporter does
MAX_VIEWS = 10  # reports removed one after another while one carries more than half of the rest
OUTWEIGHS = 10  # one report with this many times the messages of all others, too few to judge, decides nothing


class Status(StrEnum):
    READY_QUARANTINE = "ready for p=quarantine"
    READY_REJECT = "ready for p=reject"
    NOT_READY = "not ready"
    AT_REJECT = "at p=reject"


@dataclass(frozen=True)
class Reporter:
    org_name: str
    reports: int
    messages: int


@dataclass(frozen=True)
class Source:
    ip: str
    messages: int
    verdict: Verdict
    verdicts: Mapping[Verdict, int]
    dispositions: Mapping[str, int]
    spf: Mapping[tuple[str, str, str], int]  # (result, domain, scope) -> messages
    dkim: Mapping[tuple[str, str, str], int]  # (result, domain, selector) -> messages; ("none", "", "") unsigned
    header_from: Mapping[str, int]
    reporters: tuple[str, ...]
    ptr: str | None = None  # None: not looked up (without --resolve)

    def failing(self, verdict: Verdict) -> int:
        return self.verdicts.get(verdict, 0)


@dataclass(frozen=True)
class Readiness:
    status: Status
    line: str  # the final line
    why: tuple[str, ...]


@dataclass(frozen=True)
class DomainSummary:
    domain: str
    p: str  # from the latest report
    policy: Mapping[str, str | int | None]
    reports: int
    reporters: tuple[Reporter, ...]
    begin: int
    end: int
    messages: int
    verdicts: Mapping[Verdict, int]
    sources: tuple[Source, ...]
    readiness: Readiness = field(default=Readiness(Status.NOT_READY, "", ()))


def summarise(domain: str, reports: Sequence[Report], ptrs: Mapping[str, str] | None = None,
              conflicts: Sequence[str] = ()) -> DomainSummary:
    """The summary of one domain's reports (all with that policy_published domain). `conflicts`:
    the reports about it that another report contradicts (same org_name and report_id)."""
    summary = _tally(domain, reports, ptrs)
    judged = _confirmed(readiness(summary), summary, reports, 0)
    return replace(summary, readiness=_distrusted(judged, domain, conflicts))


def _tally(domain: str, reports: Sequence[Report], ptrs: Mapping[str, str] | None) -> DomainSummary:
    latest = max(reports, key=lambda report: (report.end, report.begin))
    rows: dict[str, list[tuple[Record, str]]] = {}
    reporters: dict[str, list[int]] = {}
    for report in reports:
        counts = reporters.setdefault(report.org_name, [0, 0])
        counts[0] += 1
        for record in report.records:
            counts[1] += record.count
            rows.setdefault(record.source_ip, []).append((record, report.org_name))
    sources = tuple(sorted((_source(ip, records, ptrs) for ip, records in rows.items()),
                           key=lambda source: (-source.messages, -source.verdict.rank, source.ip)))
    verdicts: Counter[Verdict] = Counter()
    for source in sources:
        verdicts.update(source.verdicts)
    policy = latest.policy
    return DomainSummary(
        domain=domain, p=policy.p,
        policy={"p": policy.p, "sp": policy.sp, "np": policy.np, "pct": policy.pct, "adkim": policy.adkim,
                "aspf": policy.aspf, "testing": policy.testing},
        reports=len(reports),
        reporters=tuple(sorted((Reporter(name, counts[0], counts[1]) for name, counts in reporters.items()),
                               key=lambda reporter: (-reporter.messages, reporter.org_name))),
        begin=min(report.begin for report in reports), end=max(report.end for report in reports),
        messages=sum(source.messages for source in sources), verdicts=dict(verdicts), sources=sources,
    )


def date_problem(report: Report, now: int) -> str | None:
    """Why `report`'s date_range is not believed (see the module docstring), or None."""
    if report.end > now + MAX_FUTURE_SECONDS:
        return (f"date_range ends {_iso(report.end)}, in the future (now {_iso(now)}): a forged or broken "
                "report, not counted")
    span = (report.end + 1 - report.begin) / 86400
    if span > MAX_SPAN_DAYS:
        return (f"date_range covers {span:.0f} days ({_iso(report.begin)} .. {_iso(report.end)}), more than "
                f"{MAX_SPAN_DAYS}: a forged or broken report, not counted")
    return None


def _iso(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


_READY = (Status.READY_QUARANTINE, Status.READY_REJECT)


def _messages(report: Report) -> int:
    return sum(record.count for record in report.records)


def _views(summary: DomainSummary, reports: Sequence[Report], depth: int) -> Iterator[tuple[str, list[Report],
                                                                                          bool]]:
    """(label, the reports of the view, whether it must have MIN_MESSAGES to be believed)."""
    if depth == 0 and len(summary.reporters) > 1:
        for reporter in summary.reporters:
            if reporter.messages >= MIN_MESSAGES:
                yield (f"{reporter.org_name}'s reports alone",
                       [report for report in reports if report.org_name == reporter.org_name], False)
    if len(reports) > 1:
        largest = max(reports, key=_messages)
        if 2 * _messages(largest) > summary.messages:
            rest = summary.messages - _messages(largest)
            yield (f"without {largest.org_name} report {largest.report_id}, which carries "
                   f"{percent(_messages(largest), summary.messages)} of the messages",
                   [report for report in reports if report is not largest], _messages(largest) > OUTWEIGHS * rest)


def _confirmed(judged: Readiness, summary: DomainSummary, reports: Sequence[Report], depth: int) -> Readiness:
    """A READY that every view confirms, or the first view's NOT READY."""
    if judged.status not in _READY:
        return judged
    for label, subset, needed in _views(summary, reports, depth):
        view = replace(_tally(summary.domain, subset, None), p=summary.p)  # the step asked about is the domain's
        shown = _shown(label)
        if view.messages < MIN_MESSAGES:
            if not needed:
                continue
            return Readiness(Status.NOT_READY, f"NOT READY ({shown}): only {view.messages} messages, too few to "
                                               "confirm the rest",
                             ("one report's word alone never decides: the other reports must confirm it with at "
                              f"least {MIN_MESSAGES} messages (summary.py)",))
        if depth + 1 > MAX_VIEWS:
            return Readiness(Status.NOT_READY, f"NOT READY: more than {MAX_VIEWS} reports each carry more than half "
                                               "of the messages of the rest", ("a forged set of reports, or one "
                                                                               "reporter dwarfing all others: read "
                                                                               "them one by one",))
        seen = _confirmed(_readiness(view), view, subset, depth + 1)
        if seen.status is not judged.status:
            line = seen.line.removeprefix("NOT READY")
            return Readiness(Status.NOT_READY, f"NOT READY ({shown}){line}",
                             (f"all reports together: {judged.line}; {shown}: not so. One reporter's word never "
                              "decides alone (summary.py)", *seen.why))
    return judged


def _shown(text: str) -> str:
    return "".join(char if char.isprintable() else "?" for char in text[:200])


def lookalike(domain: str) -> str | None:
    """Why the U-label form of `domain` (A-labels) looks like another name: a label mixing scripts."""
    try:
        unicode = idna.decode(domain)
    except (idna.IDNAError, UnicodeError):
        return None
    for label in unicode.split("."):
        scripts = {unicodedata.name(char, "UNKNOWN").split(" ")[0] for char in label if char.isalpha()}
        if len(scripts) > 1:
            return f"{_shown(unicode)} mixes {' and '.join(sorted(scripts))} letters in one label"
    return None


def _distrusted(judged: Readiness, domain: str, conflicts: Sequence[str]) -> Readiness:
    problems = []
    if conflicts:
        problems.append((f"{len(conflicts)} conflicting report(s) ({_shown(', '.join(conflicts))}: the same "
                         "org_name and report_id with different contents)",
                         "a report_id names one report (RFC 7489 §7.2.1.1): two contents are a forgery or a "
                         "reporter's bug; both copies are counted until the wrong file is removed"))
    look = lookalike(domain)
    if look:
        problems.append((look, "a look-alike of another name (IDNA2008): not a domain to advance"))
    if not problems:
        return judged
    whys = tuple(why for _, why in problems)
    if judged.status in _READY:
        return Readiness(Status.NOT_READY, f"NOT READY: {'; '.join(what for what, _ in problems)}",
                         (*whys, f"without that: {judged.line}"))
    return replace(judged, why=(*judged.why, *(what for what, _ in problems), *whys))


def _source(ip: str, rows: Iterable[tuple[Record, str]], ptrs: Mapping[str, str] | None) -> Source:
    verdicts: Counter[Verdict] = Counter()
    dispositions: Counter[str] = Counter()
    spf: Counter[tuple[str, str, str]] = Counter()
    dkim: Counter[tuple[str, str, str]] = Counter()
    header_from: Counter[str] = Counter()
    reporters: dict[str, None] = {}
    for record, reporter in rows:
        verdicts[record.verdict] += record.count
        dispositions[record.disposition] += record.count
        header_from[record.header_from] += record.count
        for result in record.spf:
            spf[(result.result, result.domain, result.scope)] += record.count
        for signature in record.dkim or ():
            dkim[(signature.result, signature.domain, signature.selector)] += record.count
        if not record.dkim:
            dkim[("none", "", "")] += record.count
        reporters[reporter] = None
    messages = sum(verdicts.values())
    verdict = max(verdicts, key=lambda each: (verdicts[each], each.rank))
    return Source(ip, messages, verdict, dict(verdicts), dict(dispositions), dict(spf), dict(dkim), dict(header_from),
                  tuple(reporters), None if ptrs is None else ptrs.get(ip, "(lookup skipped)"))


def percent(part: int, whole: int) -> str:
    share = 100 * part / whole if whole else 0.0
    return f"{share:.1f}%" if share < 10 else f"{share:.0f}%"


def source_name(source: Source) -> str:
    return f"{source.ip} {source.ptr}" if source.ptr else source.ip


def days(summary: DomainSummary) -> int:
    return max(1, round((summary.end + 1 - summary.begin) / 86400))


def _largest(sources: Sequence[Source], verdict: Verdict) -> str:
    top = max(sources, key=lambda source: (source.failing(verdict), source.ip))
    return f"{source_name(top)}, {top.failing(verdict)} messages"


def _from(sources: Sequence[Source]) -> str:
    return f"{len(sources)} source" + ("" if len(sources) == 1 else "s")


def readiness(summary: DomainSummary) -> Readiness:
    judged = _readiness(summary)
    covered = days(summary)
    if judged.status in (Status.READY_QUARANTINE, Status.READY_REJECT) and covered < SHORT_PERIOD_DAYS:
        return replace(judged, why=(*judged.why, f"the reports cover only {covered} day(s): dns-records advises "
                                                 "reading them for a few weeks; a source that sends weekly or "
                                                 "monthly may not be in them yet"))
    return judged


def _readiness(summary: DomainSummary) -> Readiness:
    total = summary.messages
    if total < MIN_MESSAGES:
        return Readiness(Status.NOT_READY, f"NOT READY: only {total} messages reported, too few to judge",
                         (f"wait for reports covering at least {MIN_MESSAGES} messages (dns-records advises reading "
                          "them for a few weeks) before changing p=",))
    floor = SIGNIFICANT * total
    failing = [source for source in summary.sources if source.failing(Verdict.FAILS_BOTH)]
    failing_messages = sum(source.failing(Verdict.FAILS_BOTH) for source in failing)
    big = [source for source in failing if source.failing(Verdict.FAILS_BOTH) > floor]
    spf_only = [source for source in summary.sources if source.failing(Verdict.FAILS_DKIM_ONLY) > floor]
    at_reject = summary.p == "reject"
    if big:
        messages = sum(source.failing(Verdict.FAILS_BOTH) for source in big)
        counted = (f"{messages} messages from {_from(big)} fail both "
                   f"(largest: {_largest(big, Verdict.FAILS_BOTH)})")
        why = (f"each of these sends more than {SIGNIFICANT:.0%} of the domain's mail and fails DMARC: that is "
               "rarely a forger; if it is yours, give it a DKIM signature (or list it in publish.spf_senders), "
               "if it is not, it is a forger worth knowing",)
        if at_reject:
            return Readiness(Status.AT_REJECT, f"AT p=reject: {counted}, and is refused",
                             (*why, "under p=reject that mail is refused now"))
        return Readiness(Status.NOT_READY, f"NOT READY: {counted}",
                         (*why, f"under p={_next(summary.p)} that mail would be "
                                f"{'quarantined' if _next(summary.p) == 'quarantine' else 'refused'}"))
    if failing_messages >= FAILING_SHARE * total:
        counted = (f"{failing_messages} messages from {_from(failing)} fail both "
                   f"(largest: {_largest(failing, Verdict.FAILS_BOTH)})")
        why = (f"no source sending more than {SIGNIFICANT:.0%} of the mail fails, but together the failing mail is "
               f"{percent(failing_messages, total)} (at least {FAILING_SHARE:.0%}): rarely all forgery; look for a "
               "service that sends from many addresses",)
        if at_reject:
            return Readiness(Status.AT_REJECT, f"AT p=reject: {counted}, and is refused", why)
        return Readiness(Status.NOT_READY, f"NOT READY: {counted}", why)
    small = (f"{failing_messages} messages ({percent(failing_messages, total)}) from {_from(failing)} fail "
             f"both, under {FAILING_SHARE:.0%} with none above {SIGNIFICANT:.0%}: likely forgeries"
             if failing else "no message fails both")
    if at_reject:
        return Readiness(Status.AT_REJECT, f"AT p=reject: {small}", ("there is no further step; keep reading the "
                                                                    "reports for new sources",))
    if summary.p == "quarantine" and spf_only:
        messages = sum(source.failing(Verdict.FAILS_DKIM_ONLY) for source in spf_only)
        return Readiness(Status.NOT_READY,
                         f"NOT READY for p=reject: {messages} messages from {_from(spf_only)} pass by SPF only "
                         f"(largest: {_largest(spf_only, Verdict.FAILS_DKIM_ONLY)})",
                         ("forwarders and mailing lists break SPF, so only a DKIM signature carries that mail: under "
                          "p=reject it would be refused when forwarded; sign it with DKIM first", small))
    if summary.p == "quarantine":
        return Readiness(Status.READY_REJECT, "READY for p=reject",
                         (f"every source sending more than {SIGNIFICANT:.0%} of the mail passes DMARC with DKIM "
                          "aligned", small))
    later: tuple[str, ...] = ()
    if spf_only:
        messages = sum(source.failing(Verdict.FAILS_DKIM_ONLY) for source in spf_only)
        later = (f"before p=reject: {messages} messages from {_from(spf_only)} pass by SPF only (largest: "
                 f"{_largest(spf_only, Verdict.FAILS_DKIM_ONLY)}); forwarding breaks SPF: sign them with DKIM",)
    return Readiness(Status.READY_QUARANTINE, "READY for p=quarantine",
                     (f"every source sending more than {SIGNIFICANT:.0%} of the mail passes DMARC", small, *later,
                      "publish p=quarantine (pct=N applies it to N% of failing mail at first); then p=reject"))


def _next(p: str) -> str:
    return "quarantine" if p == "none" else "reject"
