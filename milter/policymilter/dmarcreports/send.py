"""`policy-milter dmarc-reports send [--dry-run] [--archive DIR]`: mail the aggregate reports
(RFC 9990) of the periods that are over, one per report domain and period, to each rua.

For each (period, domain) the store holds rows of:
- a period older than dmarc_reports.keep_days is dropped (its rows forgotten), said so;
- a report domain in dmarc_reports.suppress gets nothing (its rows forgotten);
- the others in order of their messages, most first (one-message reports, what anyone can make
  by the thousand, come last); beyond dmarc_reports.max_reports_per_run reports handed to the
  relay, or once the run has taken dmarc_reports.max_run_seconds, the rest wait, said so (a
  report that only waits for DNS does not count towards the cap; lookups.py bounds its DNS);
- otherwise the report is composed (compose.py), validated against the RFC 9990 schema
  (schema.py: an invalid report is an error, never sent, its rows kept), gzipped (beyond
  dmarc_reports.max_report_bytes: the rows of most messages, passing DMARC first, the rest named
  and left out), archived with --archive, and mailed to each destination (destinations.py)
  through the local MTA (relay.py), DKIM-signed (mail.py).
The rows are forgotten only when every destination accepted the report (250 after DATA) or
was given up for good (not a mailto: URI, suppressed, too big, an external destination that
does not authorise us, a 5xx to RCPT). A 4xx, no connection, DNS without an answer, or our own
relay refusing the message itself (a 5xx to MAIL or after DATA: its size limit, a content rule)
keeps them: the next run sends the report again, with the same Report-ID, to every destination
(one that had accepted it gets it twice and can tell). One report failing in any way never
stops the others: an unforeseen error is its ERROR line, its rows kept.

--dry-run composes, validates and archives, and sends and forgets nothing (no DKIM key needed).

One line per report on standard output; exit 0 when everything is done, 1 when something was
kept for a later run (a temporary failure, an invalid report, the per-run cap or time, the
store), 2 for bad arguments or a policy that cannot send reports, 3 when an unforeseen error
failed a report (or the run): a bug to report, not a deferral.

Run as root or as the milter's user (the systemd timer runs it as policy-milter): as root the
SQLite store is used as its owner (OwnersStore) and the signing keys are read as --user, as the
milter reads them; the archive is written as whoever runs it.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO

from policymilter.checks.dmarc.record import period_of
from policymilter.dmarcreports import compose, destinations, mail
from policymilter.dmarcreports.destinations import Decision, Status
from policymilter.dmarcreports.lookups import RunLookups, TxtLookup
from policymilter.dmarcreports.relay import Handed, Relay
from policymilter.dmarcreports.rows import Row
from policymilter.dmarcreports.schema import ReportInvalid, validate
from policymilter.dns import Resolver
from policymilter.policy import PolicyError
from policymilter.policy.model import Policy
from policymilter.privileges import acting_as, milter_identity
from policymilter.safetext import for_log
from policymilter.state import Store, StoreError, open_store

PROG = "policy-milter dmarc-reports send"
EXIT_DONE = 0
EXIT_KEPT = 1
EXIT_INVALID = 2
EXIT_FAILED = 3
ARCHIVE_MODE = 0o640
DAY = 86400
RESOLVER_CACHE = 1000  # answers kept for the run (the same authorising record, many periods)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from policymilter.cli import _common, _milter_user  # cli imports this package: its functions exist by now

    _common(parser)
    parser.add_argument("--dry-run", action="store_true",
                        help="compose, validate and (with --archive) archive the reports; send and forget nothing")
    parser.add_argument("--archive", metavar="DIR",
                        help="write each report's .xml.gz (mode 0640) into DIR, created if missing")
    _milter_user(parser, "the signing keys are read as that user")


def store_url(policy: Policy) -> tuple[str, float]:
    """The state store the dmarc check records into (state.store), and its timeout."""
    return policy.state.store, policy.state.timeout


@dataclass
class Outcome:
    """What happened to the reports of one run."""

    kept: int = 0  # reports kept for a later run
    failed: int = 0  # reports an unforeseen error stopped (kept too)

    def say(self, out: IO[str], line: str) -> None:
        out.write(line + "\n")
        out.flush()


@dataclass(frozen=True)
class Settings:
    policy: Policy
    dry_run: bool = False
    archive: Path | None = None


class Sender:
    """One run of `send` over a store; the clock, resolver, signer and relay are given
    (`clock`: seconds, for the run's deadline only)."""

    def __init__(self, settings: Settings, store: Store | OwnersStore, resolver: TxtLookup, signer: mail.Signer | None,
                 relay: Relay | None, out: IO[str], now: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.reports = settings.policy.dmarc_reports
        self.reporter = compose.Reporter(self.reports.org_name, self.reports.email, self.reports.extra_contact_info)
        self.clock = clock
        self.deadline = clock() + self.reports.max_run_seconds
        self.store, self.signer, self.relay = store, signer, relay
        self.resolver = RunLookups(resolver, self.over)
        self.out, self.now = out, now
        self.outcome = Outcome()

    @property
    def current_period(self) -> int:
        """The period still open: the dmarc check may be counting into it."""
        return period_of(self.now, self.reports.interval)

    def over(self) -> bool:
        """The run's time (dmarc_reports.max_run_seconds) is up."""
        return self.clock() >= self.deadline

    def label(self, period: int, domain: str) -> str:
        return f"{for_log(domain, 253)} {compose.period_text(period, period + self.reports.interval - 1)}"

    def run(self) -> Outcome:
        oldest = self.current_period - self.reports.keep_days * DAY
        pending = self.store.dmarc_pending(before=self.current_period, now=self.now)
        due: list[tuple[int, int, str]] = []
        for period, domain in pending:
            label = self.label(period, domain)
            if period < oldest:
                self._forget(period, domain)
                self.outcome.say(self.out, f"{label}: dropped: older than dmarc_reports.keep_days = "
                                           f"{self.reports.keep_days}{self._dry()}")
                continue
            entry = destinations.suppressed_domain(domain, self.reports.suppress)
            if entry is not None:
                self._forget(period, domain)
                self.outcome.say(self.out, f"{label}: suppressed (dmarc_reports.suppress {entry!r}): no report"
                                           f"{self._dry()}")
                continue
            due.append((-sum(count for _, count in self.store.dmarc_rows(period, domain)), period, domain))
        handed, capped, late = 0, 0, 0
        for _, period, domain in sorted(due):
            if handed >= self.reports.max_reports_per_run:
                capped += 1
                continue
            if self.over():
                late += 1
                continue
            handed += self._guarded(self.label(period, domain), period, domain)
        if capped:
            self.outcome.kept += capped
            self.outcome.say(self.out, f"{capped} more report(s) wait for the next run "
                                       f"(dmarc_reports.max_reports_per_run = {self.reports.max_reports_per_run})")
        if late:
            self.outcome.kept += late
            self.outcome.say(self.out, f"{late} more report(s) wait for the next run (the run took "
                                       f"dmarc_reports.max_run_seconds = {self.reports.max_run_seconds})")
        return self.outcome

    def _guarded(self, label: str, period: int, domain: str) -> bool:
        """`_report`, where an unforeseen error fails this report only (StoreError stops the run:
        every other report needs the store too)."""
        try:
            return self._report(label, period, domain)
        except StoreError:
            raise
        except Exception as error:  # one report's failure of any kind never stops the others
            self.outcome.kept += 1
            self.outcome.failed += 1
            where = traceback.extract_tb(error.__traceback__)[-1]
            self.outcome.say(self.out, f"{label}: ERROR: unexpected {type(error).__name__} "
                                       f"({for_log(str(error), 300)}) at {Path(where.filename).name}:{where.lineno}; "
                                       "not sent, rows kept (please report this)")
            return False

    def _dry(self) -> str:
        return " (dry run: rows kept)" if self.settings.dry_run else ""

    def _forget(self, period: int, domain: str) -> None:
        if not self.settings.dry_run:
            self.store.dmarc_forget(period, domain)

    def _rows(self, period: int, domain: str) -> tuple[list[tuple[Row, int]], int]:
        rows, unreadable = [], 0
        for key, count in self.store.dmarc_rows(period, domain):
            try:
                rows.append((Row.from_key(key), count))
            except (ValueError, KeyError, TypeError):
                unreadable += 1
        return rows, unreadable

    def _fitted(self, report: compose.Report) -> tuple[compose.Report, bytes, str]:
        """The report as sent, its gzip at most dmarc_reports.max_report_bytes: when the whole one
        is larger, the records of most messages, those passing DMARC first (what a forger cannot
        add to), and a note of what was left out. Raises ReportInvalid."""
        limit = self.reports.max_report_bytes
        document = compose.to_xml(report)
        attachment = compose.compress(document)
        if len(attachment) <= limit:
            validate(document)
            return report, attachment, ""
        ranked = sorted(range(len(report.records)), key=lambda n: (
            not (report.records[n][0].dkim_aligned or report.records[n][0].spf_aligned), n))  # n: most messages first
        keep = len(ranked)
        fitted = report
        while len(attachment) > limit and keep > 1:
            # gzip's size is near proportional to the records: a few rounds at most
            keep = max(1, min(keep - 1, int(keep * limit / len(attachment) * 0.95)))
            chosen = sorted(ranked[:keep])
            fitted = replace(report, records=tuple(report.records[n] for n in chosen))
            document = compose.to_xml(fitted)
            attachment = compose.compress(document)
        left = [report.records[n][1] for n in ranked[keep:]]
        validate(document)
        return fitted, attachment, (f" ({len(left)} row(s) of {sum(left)} message(s) left out: over "
                                    f"dmarc_reports.max_report_bytes = {limit})")

    def _report(self, label: str, period: int, domain: str) -> bool:
        """One report; True when it was handed to the relay (or would be, in a dry run): what
        dmarc_reports.max_reports_per_run counts."""
        rows, unreadable = self._rows(period, domain)
        skipped = f" ({unreadable} unreadable row(s) left out)" if unreadable else ""
        if not rows:
            self._forget(period, domain)
            self.outcome.say(self.out, f"{label}: no readable rows{skipped}: nothing to report{self._dry()}")
            return False
        try:
            report, attachment, trimmed = self._fitted(
                compose.compose(self.reporter, domain, period, self.reports.interval, rows))
        except ReportInvalid as error:
            self.outcome.kept += 1
            self.outcome.say(self.out, f"{label}: ERROR: the report is invalid, not sent (rows kept): "
                                       f"{for_log(str(error), 600)}")
            return False
        head = (f"{label}: {len(report.records)} row(s), {report.messages} message(s), "
                f"{len(attachment)} bytes gzipped{skipped}{trimmed}")
        try:
            archived = self._archive(report, attachment)
        except OSError as error:
            self.outcome.kept += 1
            self.outcome.say(self.out, f"{head}: ERROR: cannot archive it in {self.settings.archive}: "
                                       f"{error.strerror or error}; not sent (rows kept)")
            return False
        if archived:
            head += f", archived {archived}"
        decisions = destinations.decide(domain, report.published.rua, self.reports.suppress, self.resolver)
        handed = False
        parts = []
        for decision in decisions:
            status, text, tried = self._deliver(report, attachment, decision)
            parts.append((status, text))
            handed = handed or tried
        if not parts:
            parts = [(Status.SKIP, "no mailto: rua in the DMARC record: nobody to send it to")]
        kept = any(status is Status.WAIT for status, _ in parts)
        if self.settings.dry_run:
            verdict = "dry run: nothing sent, rows kept"
        elif kept:
            self.outcome.kept += 1
            verdict = "kept for the next run"
        else:
            self.store.dmarc_forget(period, domain)
            verdict = "done, rows forgotten"
        self.outcome.say(self.out, f"{head}: " + "; ".join(text for _, text in parts) + f"; {verdict}")
        return handed

    def _deliver(self, report: compose.Report, attachment: bytes, decision: Decision) -> tuple[Status, str, bool]:
        """What became of one destination, and whether the relay was asked (or would be)."""
        destination = decision.destination
        uri = for_log(destination.uri, 300)
        if decision.status is not Status.SEND:
            verb = "skipped" if decision.status is Status.SKIP else "waits"
            return decision.status, f"{uri} {verb}: {decision.reason}", False
        if destination.limit is not None and len(attachment) > destination.limit:
            return Status.SKIP, (f"{uri} skipped: too big ({len(attachment)} bytes gzipped, the record allows "
                                 f"{destination.limit})"), False
        note = f" ({decision.reason})" if decision.reason else ""
        if self.settings.dry_run or self.signer is None or self.relay is None:
            return Status.SEND, f"{uri} would be sent{note}", True
        message = self.signer.signed(mail.build(report, attachment, destination.address, self.now))
        handoff = self.relay.deliver(self.reports.email, destination.address, message)
        reply = for_log(handoff.reply, 200)
        match handoff.result:
            case Handed.ACCEPTED:
                return Status.SEND, f"{uri} sent{note} ({reply})", True
            case Handed.REFUSED:
                return Status.SKIP, f"{uri} refused by the relay, given up ({reply})", True
            case Handed.HELD:
                # RFC 3463 5.3.4 "message too big for system", RFC 5321 552: its size limit
                size = (f"; {len(message)} bytes: raise its message_size_limit or lower dmarc_reports.max_report_bytes"
                        if handoff.reply.startswith("552") or " 5.3.4 " in f" {handoff.reply} " else "")
                return Status.WAIT, f"{uri} held: our relay refused the message itself ({reply}{size})", True
        return Status.WAIT, f"{uri} deferred by the relay ({reply})", True

    def _archive(self, report: compose.Report, attachment: bytes) -> str:
        directory = self.settings.archive
        if directory is None:
            return ""
        target = directory / report.file_name
        # Written whole, then renamed: a reader never sees half a report.
        handle, temporary = tempfile.mkstemp(dir=directory, prefix=".report-", suffix=".tmp")
        try:
            with os.fdopen(handle, "wb") as file:
                os.fchmod(file.fileno(), ARCHIVE_MODE)
                file.write(attachment)
            os.replace(temporary, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise
        return str(target)


class OwnersStore:
    """The state store, every call made as the SQLite file's owner when run as root
    (accounts.as_store_owner: the -wal/-shm files stay the milter's, root never acts by path in
    its directory); everything else (the archive, DNS, SMTP) stays the caller's."""

    def __init__(self, url: str, timeout: float) -> None:
        self.url = url
        self._store = open_store(url, timeout)  # connects on first use, as the owner then

    def _owner(self) -> contextlib.AbstractContextManager[None]:
        from policymilter.accounts import as_store_owner  # accounts imports the cli: not at import time

        return as_store_owner(self.url)

    def dmarc_pending(self, before: int, now: float | None = None) -> list[tuple[int, str]]:
        with self._owner():
            return self._store.dmarc_pending(before, now)

    def dmarc_rows(self, period: int, domain: str) -> list[tuple[str, int]]:
        with self._owner():
            return self._store.dmarc_rows(period, domain)

    def dmarc_forget(self, period: int, domain: str) -> None:
        with self._owner():
            self._store.dmarc_forget(period, domain)

    def close(self) -> None:
        with self._owner():
            self._store.close()


def _usage(problem: str) -> int:
    print(f"{PROG}: {problem}", file=sys.stderr)
    return EXIT_INVALID


def _archive_directory(text: str) -> Path:
    path = Path(text)
    path.mkdir(mode=0o750, parents=True, exist_ok=True)
    if not os.access(path, os.W_OK | os.X_OK):
        raise PermissionError(errno.EACCES, "cannot write there")
    return path


def main(args: argparse.Namespace, stdout: IO[str] | None = None, now: float | None = None) -> int:
    from policymilter.service import load_checked

    out = stdout or sys.stdout
    try:
        policy = load_checked(args.policy, args.overrides).policy
    except PolicyError as error:
        for issue in error.issues:
            print(issue, file=sys.stderr)
        return _usage(f"{args.policy}: {len(error.issues)} error(s); the policy was not accepted")
    reports = policy.dmarc_reports
    if not (reports.org_name and reports.email):
        return _usage(f"{args.policy}: dmarc_reports.org_name and dmarc_reports.email must say who sends the reports")
    try:
        identity = milter_identity(args.user)
    except ValueError as error:
        return _usage(str(error))
    archive = None
    if args.archive is not None:
        try:
            archive = _archive_directory(args.archive)
        except OSError as error:
            return _usage(f"--archive {args.archive}: {error.strerror or error}")
    signer: mail.Signer | None = None
    try:
        with acting_as(identity):
            signer = mail.Signer.load(policy)
    except mail.SignerError as error:
        if not args.dry_run:
            return _usage(f"{error}; nothing was sent")
        out.write(f"note: {error} (a dry run signs nothing)\n")
    url, timeout = store_url(policy)
    if url.startswith("sqlite:") and not os.path.lexists(url.removeprefix("sqlite:")):
        out.write(f"no reports: {url.removeprefix('sqlite:')} does not exist yet (the dmarc check creates it when it "
                  "first records a message)\n")
        return EXIT_DONE
    resolver = Resolver(policy.dns.nameservers, policy.dns.timeout, policy.dns.lifetime, cache_size=RESOLVER_CACHE)
    settings = Settings(policy, args.dry_run, archive)
    try:
        with contextlib.ExitStack() as stack:
            relay = None if args.dry_run else stack.enter_context(Relay(reports.relay))
            store = OwnersStore(url, timeout)
            stack.callback(store.close)
            outcome = Sender(settings, store, resolver, signer, relay, out, time.time() if now is None else now).run()
    except StoreError as error:
        print(f"{PROG}: cannot use the state store {url}: {for_log(str(error), 400)}; the reports wait for the "
              "next run", file=sys.stderr)
        return EXIT_KEPT
    except Exception as error:  # never exit 1 ("kept") for an error nobody foresaw
        traceback.print_exc(file=sys.stderr)
        print(f"{PROG}: unexpected {type(error).__name__}: {for_log(str(error), 400)}; the run stopped, the rows "
              "not yet sent are kept (please report this)", file=sys.stderr)
        return EXIT_FAILED
    if outcome.failed:
        return EXIT_FAILED
    return EXIT_KEPT if outcome.kept else EXIT_DONE
