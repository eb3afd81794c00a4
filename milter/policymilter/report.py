"""`policy-milter report`: what the summary lines say about a time window.

Streaming: each line is read, judged and folded into counters, never kept. What can grow with
the log is bounded: the tables keyed by names from the lines (listener x verdict, check x
outcome, senders, clients, reasons, a login's senders) keep at most `capacity` keys each
(Space-Saving with batched eviction: a count may then be over by at most its shown error, and
the report says whether every count is exact); the time percentiles are exact on up to
EXACT_SAMPLES values per listener, then read from a log histogram (2% relative error), kept for
the listeners the listener table keeps. Per-login hourly counts grow with logins × hours in
which they sent. The text is bounded too: a name is shown cut to SHOWN characters, and no
column is wider than that.
"""

from __future__ import annotations

import argparse
import bisect
import json
import math
import re
import statistics
import sys
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import IO, Any, Generic, TypeVar

from policymilter.logread import Malformed, SourceError, Summary, open_lines, parse_line
from policymilter.safetext import for_log

REFUSALS = ("reject", "tempfail")
# what decided (a check, or `milter`) is few keys; reasons may name logins and addresses: many
REFUSED_TABLES = ("deciders", "reasons", "senders", "clients")
VERDICTS = ("accept", "reject", "tempfail", "discard", "quarantine")
EXACT_SAMPLES = 10_000
HISTOGRAM_RATIO = 1.02  # bucket width of the time histogram: a percentile read from it is within 2%
MALFORMED_EXAMPLES = 5
SHOWN = 200  # characters of a name from the log shown in the text report (and the widest column)
_RELATIVE = re.compile(r"^(\d+)\s*([mhdw])$")
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


# --- bounded structures --------------------------------------------------------------------------


K = TypeVar("K", str, tuple[str, str])


class TopCounter(Generic[K]):
    """Counts per key, keeping at most `capacity` keys (2 × capacity between prunes). A pruned
    key that comes back starts at the largest count ever dropped (`floor`) plus one, so its
    count is an upper bound over by at most its `error` (Space-Saving, Metwally et al. 2005)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.floor = 0
        self.prunes = 0
        self.counts: dict[K, int] = {}
        self.errors: dict[K, int] = {}

    def add(self, key: K) -> None:
        if key in self.counts:
            self.counts[key] += 1
            return
        self.counts[key] = self.floor + 1
        if self.floor:
            self.errors[key] = self.floor
        if len(self.counts) > 2 * self.capacity:
            ranked = sorted(self.counts.items(), key=lambda item: -item[1])
            self.prunes += 1
            self.floor = max(self.floor, ranked[self.capacity][1])
            self.counts = dict(ranked[: self.capacity])
            self.errors = {key: error for key, error in self.errors.items() if key in self.counts}

    @property
    def exact(self) -> bool:
        return self.floor == 0

    def ranked(self) -> list[tuple[K, int]]:
        """Every key kept, highest count first (ties: first seen first)."""
        return sorted(self.counts.items(), key=lambda item: -item[1])

    def top(self, n: int) -> list[dict[str, Any]]:
        ranked = sorted(self.counts.items(), key=lambda item: (-item[1], item[0]))[:n]
        return [{"key": key, "count": count, "error": self.errors.get(key, 0)} for key, count in ranked]


class Quantiles:
    """Exact percentiles on the first EXACT_SAMPLES values; past that, from a log histogram."""

    def __init__(self, exact_limit: int = EXACT_SAMPLES) -> None:
        self.exact_limit = exact_limit
        self.samples: list[float] | None = []
        self.buckets: Counter[int] = Counter()
        self.count = 0
        self.maximum = 0.0

    @staticmethod
    def _bucket(value: float) -> int:
        return -1 if value <= 0 else math.floor(math.log(value) / math.log(HISTOGRAM_RATIO))

    def add(self, value: float) -> None:
        self.count += 1
        self.maximum = max(self.maximum, value)
        if self.samples is not None:
            self.samples.append(value)
            if len(self.samples) <= self.exact_limit:
                return
            values, self.samples = self.samples, None
            for old in values:
                self.buckets[self._bucket(old)] += 1
            return
        self.buckets[self._bucket(value)] += 1

    @property
    def exact(self) -> bool:
        return self.samples is not None

    def percentile(self, p: float) -> float | None:
        """Nearest rank: the smallest value with at least p% of the values at or below it."""
        if not self.count:
            return None
        rank = max(1, math.ceil(p / 100 * self.count))
        if self.samples is not None:
            return sorted(self.samples)[rank - 1]
        seen = 0
        for bucket in sorted(self.buckets):
            seen += self.buckets[bucket]
            if seen >= rank:
                # the bucket's upper edge, never above the largest value seen
                if bucket < 0:
                    return 0.0
                try:
                    return min(self.maximum, round(HISTOGRAM_RATIO ** (bucket + 1), 1))
                except OverflowError:  # the bucket of a value near the largest float
                    return self.maximum
        return self.maximum  # pragma: no cover - the ranks add up to count


# --- the window ----------------------------------------------------------------------------------


def parse_when(text: str, now: datetime) -> datetime:
    """`--since`/`--until`: an ISO 8601 time (no zone: UTC, as the log is) or `N` m/h/d/w ago."""
    shown = for_log(text, 60)
    relative = _RELATIVE.match(text.strip())
    try:
        if relative:
            return now - timedelta(**{_UNITS[relative[2]]: int(relative[1])})
        when = datetime.fromisoformat(text.strip())
        return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)
    except OverflowError:
        raise argparse.ArgumentTypeError(f"{shown!r}: out of the range of times") from None
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{shown!r}: expected an ISO time (2026-12-01, 2026-12-01T10:00, ...Z) or an age like 30m, 24h, 7d, 2w"
        ) from None


@dataclass(frozen=True)
class Window:
    since: datetime | None = None
    until: datetime | None = None

    @property
    def bounded(self) -> bool:
        return self.since is not None or self.until is not None

    def holds(self, when: datetime) -> bool:
        return (self.since is None or when >= self.since) and (self.until is None or when < self.until)


@dataclass(frozen=True)
class SpikeRule:
    """A login's hour is a spike when it has more than `minimum` messages and more than `factor`
    times the median of the login's other hours in which it sent (no other hour: median 0)."""

    factor: float = 10.0
    minimum: int = 50

    def describe(self) -> str:
        return (f"an hour with more than {self.minimum} messages and more than {self.factor:g} x the median "
                "of the login's other active hours")


# --- the report ----------------------------------------------------------------------------------


def _iso(when: datetime | None) -> str | None:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if when else None


def _hour(when: datetime) -> datetime:
    return when.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


@dataclass
class _Login:
    messages: int = 0
    refused: int = 0
    hours: Counter[datetime] = field(default_factory=Counter)
    untimed: int = 0
    senders: TopCounter[str] = field(default_factory=lambda: TopCounter[str](100))


class Report:
    """Folds summaries into counters; `result()` is the report as plain data (the --json output)."""

    def __init__(self, window: Window = Window(), *, capacity: int = 10_000, spike: SpikeRule = SpikeRule()) -> None:
        self.window = window
        self.spike = spike
        self.capacity = capacity
        self.files: list[dict[str, Any]] = []
        self.lines = 0
        self.summaries = 0
        self.outside = 0
        self.untimed_excluded = 0
        self.malformed = 0
        self.malformed_examples: list[dict[str, Any]] = []
        self.first: datetime | None = None
        self.last: datetime | None = None
        self.counted = 0  # messages in the window
        self.verdicts: Counter[str] = Counter()  # the writer's VERDICTS: exact
        self.other_verdicts = TopCounter[str](capacity)  # any other word a line may carry
        self.by_listener = TopCounter[tuple[str, str]](capacity)  # (listener, verdict)
        self.refused: dict[str, dict[str, TopCounter[str]]] = {
            verdict: {what: TopCounter[str](capacity) for what in REFUSED_TABLES}
            for verdict in REFUSALS
        }
        self.checks = TopCounter[tuple[str, str]](capacity)  # (check, OUTCOME)
        self.times: dict[str, dict[str, Quantiles]] = defaultdict(lambda: {"ms": Quantiles(), "check_ms": Quantiles()})
        self.logins: dict[str, _Login] = defaultdict(_Login)

    # reading

    def read(self, names: Sequence[str], stdin: IO[bytes] | None = None, now: datetime | None = None) -> None:
        for name in names:
            entry: dict[str, Any] = {"name": name, "lines": 0, "error": None}
            self.files.append(entry)
            try:
                for line in open_lines(name, stdin):
                    entry["lines"] += 1
                    self.read_line(line, name, entry["lines"], now)
            except SourceError as error:
                entry["error"] = str(error)

    def read_line(self, line: str, source: str = "-", number: int = 0, now: datetime | None = None) -> None:
        self.lines += 1
        try:
            summary = parse_line(line, now)
        except Malformed as error:
            self.malformed += 1
            if len(self.malformed_examples) < MALFORMED_EXAMPLES:
                self.malformed_examples.append({"file": for_log(source, SHOWN), "line": number,
                                                "problem": for_log(str(error), SHOWN),
                                                "text": for_log(line.rstrip("\r\n"), 120)})
            return
        if summary is not None:
            self.add(summary)

    def add(self, summary: Summary) -> None:
        self.summaries += 1
        if summary.time is None:
            if self.window.bounded:
                self.untimed_excluded += 1
                return
        elif not self.window.holds(summary.time):
            self.outside += 1
            return
        else:
            self.first = min(self.first or summary.time, summary.time)
            self.last = max(self.last or summary.time, summary.time)
        self.counted += 1
        if summary.verdict in VERDICTS:
            self.verdicts[summary.verdict] += 1
        else:
            self.other_verdicts.add(summary.verdict)
        prunes = self.by_listener.prunes
        self.by_listener.add((summary.listener, summary.verdict))
        if self.by_listener.prunes != prunes:  # the times of listeners no longer kept go too
            kept = {listener for listener, _ in self.by_listener.counts}
            for listener in [name for name in self.times if name not in kept]:
                del self.times[listener]
        if summary.verdict in self.refused:
            tables = self.refused[summary.verdict]
            tables["senders"].add(summary.sender or "-")
            tables["clients"].add(summary.client or "-")
            tables["reasons"].add(f"{summary.decided_by or '-'}: {summary.reason or '-'}")
            tables["deciders"].add(summary.decided_by or "-")
        for check, value in summary.checks:
            self.checks.add((check, value.partition(":")[0] if value else "not-run"))
        for kind, elapsed in (("ms", summary.ms), ("check_ms", summary.check_ms)):
            if elapsed is not None:
                self.times[summary.listener][kind].add(elapsed)
        if summary.auth:
            login = self.logins[summary.auth]
            login.messages += 1
            login.refused += summary.verdict in REFUSALS
            login.senders.add(summary.sender or "-")
            if summary.time is None:
                login.untimed += 1
            else:
                login.hours[_hour(summary.time)] += 1

    # the result

    def result(self, top: int = 10) -> dict[str, Any]:
        totals: Counter[str] = Counter(self.verdicts)
        totals.update(dict(self.other_verdicts.counts))
        listeners: dict[str, Counter[str]] = defaultdict(Counter)
        for (listener, verdict), count in self.by_listener.counts.items():
            listeners[listener][verdict] += count
        checks: dict[str, dict[str, int]] = defaultdict(dict)
        for (check, outcome), count in self.checks.ranked():
            checks[check][outcome] = count
        return {
            "input": {
                "files": self.files, "lines": self.lines, "summaries": self.summaries,
                "malformed": self.malformed, "malformed_examples": self.malformed_examples,
                "outside_window": self.outside, "without_time_excluded": self.untimed_excluded,
            },
            "window": {"since": _iso(self.window.since), "until": _iso(self.window.until),
                       "first": _iso(self.first), "last": _iso(self.last)},
            "messages": {
                "total": self.counted,
                "by_verdict": dict(sorted(totals.items())),
                "by_listener": {listener: {"total": sum(verdicts.values()), **dict(sorted(verdicts.items()))}
                                for listener, verdicts in sorted(listeners.items())},
            },
            # False: more distinct names than `capacity` (a crafted log): a table was pruned, its
            # counts may be over (Space-Saving) and a pruned listener's times are partial
            "exact": {"verdicts": self.other_verdicts.exact, "listeners": self.by_listener.exact,
                      "checks": self.checks.exact},
            "refused": {
                verdict: {"total": totals[verdict],
                          **{what: table.top(top) for what, table in tables.items()},
                          "exact": all(table.exact for table in tables.values())}
                for verdict, tables in self.refused.items()
            },
            "checks": dict(sorted(checks.items())),
            "times": {
                "per_check": None,
                "per_check_note": "the summary line carries only ms and check_ms per message; per-check "
                                  "latency needs the metrics (issue 12 item 1)",
                "by_listener": {
                    listener: {key: {"count": q.count, "p50": q.percentile(50), "p99": q.percentile(99),
                                     "max": q.maximum if q.count else None, "exact": q.exact}
                               for key, q in kinds.items()}
                    for listener, kinds in sorted(self.times.items())
                },
            },
            "logins": self._logins(top),
        }

    def _logins(self, top: int) -> dict[str, Any]:
        rows: list[dict[str, Any]] = []
        spikes: list[dict[str, Any]] = []
        for name, login in self.logins.items():
            counts = sorted(login.hours.values())
            peak_hour, peak = max(login.hours.items(), key=lambda item: (item[1], item[0]), default=(None, 0))
            for hour, count in sorted(login.hours.items()):
                baseline = _median_without(counts, bisect.bisect_left(counts, count))
                if count > self.spike.minimum and count > self.spike.factor * baseline:
                    spikes.append({"login": name, "hour": _iso(hour), "messages": count,
                                   "other_active_hours": len(counts) - 1, "median_other_hours": baseline})
            rows.append({
                "login": name, "messages": login.messages, "refused": login.refused, "active_hours": len(counts),
                "median_per_hour": statistics.median(counts) if counts else None,
                "peak_per_hour": peak, "peak_hour": _iso(peak_hour), "without_time": login.untimed,
                "top_senders": login.senders.top(3),
                "hours": {_iso(hour): count for hour, count in sorted(login.hours.items())},
            })
        rows.sort(key=lambda row: (-row["messages"], row["login"]))
        spikes.sort(key=lambda spike: (-spike["messages"], spike["login"], spike["hour"]))
        return {"spike_rule": self.spike.describe(), "total": len(rows), "top": rows[:top], "spikes": spikes}


def _median_without(ordered: Sequence[int], index: int) -> float:
    """The median of `ordered` (sorted) without its element at `index`; 0 when nothing is left."""
    size = len(ordered) - 1
    if size <= 0:
        return 0.0

    def at(k: int) -> int:
        return ordered[k] if k < index else ordered[k + 1]

    return (at((size - 1) // 2) + at(size // 2)) / 2


# --- text ----------------------------------------------------------------------------------------


def _show(text: str | None, width: int = 0) -> str:
    """A value from the log (client data) made printable for a terminal, cut to SHOWN characters."""
    shown = for_log(text if text is not None else "-", SHOWN)
    return f"{shown:<{width}}" if width else shown


def _width(heading: str, names: Iterable[str]) -> int:
    """A column as wide as the widest name *as shown* (so never wider than SHOWN)."""
    return max([len(heading), *(len(_show(name)) for name in names)])


def _count(entry: dict[str, Any]) -> str:
    return f"{entry['count']}" if not entry["error"] else f"{entry['count']}(-{entry['error']})"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def render_text(result: dict[str, Any]) -> str:
    out: list[str] = []
    source, window = result["input"], result["window"]
    errors = [f for f in source["files"] if f["error"]]
    out.append(f"read: {len(source['files'])} file(s), {source['lines']} lines, {source['summaries']} summary lines, "
               f"{source['malformed']} malformed, {source['outside_window']} outside the window"
               + (f", {source['without_time_excluded']} without a time (left out: a window is set)"
                  if source["without_time_excluded"] else ""))
    for entry in errors:
        out.append(f"  unreadable: {_show(entry['error'])} (after {entry['lines']} lines)")
    for example in source["malformed_examples"]:
        out.append(f"  malformed: {_show(example['file'])}:{example['line']}: {_show(example['problem'])}: "
                   f"{_show(example['text'])}")
    out.append(f"window: {window['since'] or 'start'} .. {window['until'] or 'end'}; "
               f"messages from {window['first'] or '-'} to {window['last'] or '-'}")

    messages = result["messages"]
    out += ["", f"Messages by listener and verdict ({messages['total']})"]
    verdicts = [v for v in VERDICTS if v in messages["by_verdict"]] or ["accept"]
    others = sorted(set(messages["by_verdict"]) - set(VERDICTS))  # not the writer's: one column (see --json)
    exact = result["exact"]
    notes = [what for what in ("verdicts", "listeners", "checks") if not exact[what]]
    if notes:
        out.append(f"  more distinct {', '.join(notes)} than the report keeps: those tables were pruned, "
                   "their counts may be over")
    width = _width("listener", messages["by_listener"])
    out.append(f"  {'listener':<{width}} {'total':>7}" + "".join(f" {v:>10}" for v in verdicts)
               + (f" {'other':>10}" if others else ""))
    rows = [*messages["by_listener"].items(), ("all", {"total": messages["total"], **messages["by_verdict"]})]
    for listener, counts in rows:
        other = f" {sum(counts.get(v, 0) for v in others):>10}" if others else ""
        out.append(f"  {_show(listener, width)} {counts['total']:>7}" + "".join(f" {counts.get(v, 0):>10}"
                                                                               for v in verdicts) + other)
    if others:
        out.append(f"  other verdicts: {', '.join(_show(v) for v in others[:10])}"
                   + (f" and {len(others) - 10} more" if len(others) > 10 else ""))

    for verdict, refused in result["refused"].items():
        note = "" if refused["exact"] else " (counts marked (-E) may be over by up to E: the table was pruned)"
        out += ["", f"Refused: {verdict} ({refused['total']}){note}"]
        if not refused["total"]:
            out.append("  none")
            continue
        for what in REFUSED_TABLES:
            out.append(f"  top {what}:" if what != "deciders" else "  decided by:")
            out += [f"    {_count(entry):>7}  {_show(entry['key'])}" for entry in refused[what]]

    out += ["", "Check outcomes (OUTCOME of OUTCOME:DETAIL; not-run: `-`)"]
    width = _width("check", result["checks"])
    for check, outcomes in result["checks"].items():
        out.append(f"  {_show(check, width)} " + ", ".join(f"{_show(o)} {n}" for o, n in outcomes.items()))

    times = result["times"]
    out += ["", "Time per message, ms (p50 / p99 / max; * = from the histogram, within 2%)",
            "  per-check times are not in the summary line: they need the metrics (issue 12 item 1)"]
    width = _width("listener", times["by_listener"])
    out.append(f"  {'listener':<{width}} {'messages':>8}  {'ms p50':>8} {'p99':>8} {'max':>8}   "
               f"{'check_ms p50':>12} {'p99':>8} {'max':>8}")
    for listener, kinds in times["by_listener"].items():
        cells = []
        for key, first_width in (("ms", 8), ("check_ms", 12)):
            q = kinds[key]
            star = "" if q["exact"] else "*"
            cells.append(f"{_ms(q['p50']) + star:>{first_width}} {_ms(q['p99']) + star:>8} {_ms(q['max']):>8}")
        out.append(f"  {_show(listener, width)} {kinds['ms']['count']:>8}  {cells[0]}   {cells[1]}")

    logins = result["logins"]
    out += ["", f"Authenticated logins ({logins['total']}; messages per hour, UTC)"]
    if logins["top"]:
        width = _width("login", (row["login"] for row in logins["top"]))
        out.append(f"  {'login':<{width}} {'messages':>8} {'refused':>7} {'hours':>5} {'median/h':>8} {'peak/h':>6}  "
                   f"{'peak hour':<20} top senders")
        for row in logins["top"]:
            senders = ", ".join(f"{_show(s['key'])} {_count(s)}" for s in row["top_senders"])
            median = "-" if row["median_per_hour"] is None else f"{row['median_per_hour']:g}"
            out.append(f"  {_show(row['login'], width)} {row['messages']:>8} {row['refused']:>7} "
                       f"{row['active_hours']:>5} {median:>8} {row['peak_per_hour']:>6}  "
                       f"{row['peak_hour'] or '-':<20} {senders}")
    else:
        out.append("  none")
    out.append(f"  spike rule: {logins['spike_rule']}")
    if logins["spikes"]:
        out.append(f"  SPIKES ({len(logins['spikes'])}): check these accounts")
        for spike in logins["spikes"]:
            baseline = (f"median of its {spike['other_active_hours']} other active hours: "
                        f"{spike['median_other_hours']:g}" if spike["other_active_hours"] else "no other active hour")
            out.append(f"    {_show(spike['login'])} {spike['hour']}: {spike['messages']} messages ({baseline})")
    else:
        out.append("  spikes: none")
    return "\n".join(out) + "\n"


# --- the command ---------------------------------------------------------------------------------


def add_report_command(commands: Any) -> None:
    """The `report` subcommand's arguments (`commands` is build_parser's subparsers)."""
    report = commands.add_parser("report", help="summarise the summary lines of milter logs (kv or JSON, "
                                                "plain or gzip) for a time window")
    report.add_argument("logs", nargs="*", default=["-"], metavar="LOGFILE",
                        help="log files, plain or gzip (rotated), in any order; - for standard input (default)")
    report.add_argument("--since", help="from this time: ISO 8601 (UTC unless it says otherwise) or an age: "
                                        "30m, 24h, 7d, 2w")
    report.add_argument("--until", help="up to (not including) this time; same forms")
    from policymilter.cli import _positive  # cli imports this module: the function is there by now

    report.add_argument("--top", type=_positive, default=10, metavar="N", help="rows per top table (default 10)")
    report.add_argument("--json", action="store_true", help="print one JSON object")
    report.add_argument("--spike-factor", type=float, default=SpikeRule.factor, metavar="X",
                        help="a login's hour is a spike above X times its median hour (default 10)")
    report.add_argument("--spike-min", type=int, default=SpikeRule.minimum, metavar="M",
                        help="... and above M messages (default 50)")


def cmd_report(args: argparse.Namespace, stdin: IO[bytes] | None = None, stdout: IO[str] | None = None,
               now: datetime | None = None) -> int:
    """Exit 0; 1 when a file could not be read to its end (the rest is still reported); 2 for bad arguments."""
    now = now or datetime.now(UTC)
    out = stdout or sys.stdout
    try:
        window = Window(parse_when(args.since, now) if args.since else None,
                        parse_when(args.until, now) if args.until else None)
    except argparse.ArgumentTypeError as error:
        print(f"report: {for_log(str(error), 300)}", file=sys.stderr)
        return 2
    report = Report(window, spike=SpikeRule(args.spike_factor, args.spike_min))
    report.read(args.logs, stdin, now)
    result = report.result(args.top)
    out.write(json.dumps(result, indent=2) + "\n" if args.json else render_text(result))
    failed = [entry for entry in report.files if entry["error"]]
    for entry in failed:
        print(f"report: {for_log(entry['error'], 300)}", file=sys.stderr)
    return 1 if failed else 0


def summarise(lines: Iterable[str], window: Window = Window(), now: datetime | None = None) -> Report:
    """A report over lines already in memory (tests, other tools)."""
    report = Report(window)
    for number, line in enumerate(lines, 1):
        report.read_line(line, "-", number, now)
    return report
