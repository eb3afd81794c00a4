"""`policy-milter dmarc-reports read PATH...`: summarise the aggregate reports receivers send about our
domains (RFC 7489 §7.2, RFC 9990), per site domain and sending source, with a verdict per source
and whether the domain is ready for the next policy step.

The parts: `sources.py` finds the report documents in mbox files, Maildirs, messages, .xml,
.gz and .zip (bounded: `archives.Limits`), `parse.py` reads each strictly and safely,
`summary.py` groups them and judges (its docstring has the rules), `resolve.py` finds PTR names
(`--resolve`), `render.py` prints. A document that cannot be used is one line on stderr,
`ORIGIN: skipped: REASON (where: ELEMENT PATH, line N)`, and the run goes on.

The same report often arrives twice (in the mailbox and saved as an attachment): reports are
counted once per (org_name, report_id) (RFC 7489 §7.2.1.1: unique per reporter), the others
listed as duplicates, when their contents are the same; different contents under one key are a
conflict: both counted, listed, and the domains involved are not READY (summary.py). A report
ending in the future or spanning more than a month is a skip (summary.date_problem). `--since`
keeps reports whose date_range ends after that time. By default
every domain found in the reports is summarised; with `--policy` only `site.domains` and their
subdomains (the others are counted in `not_ours`), and `--resolve` asks the policy's
`dns.nameservers`.

Exit status: 0 when every input was read; 1 when something was skipped (the rest is still
summarised); 2 for bad arguments or an invalid policy.

`--json` prints one object with these keys (stable; a rename is a breaking change):
- `input`: `documents` (XML documents found), `reports` (valid, distinct, counted),
  `skipped` (list of `{origin, reason}`), `duplicates` (list of `{org_name, report_id, origin,
  first}`), `conflicts` (the same, for a different report under a key read before), `outside_since`
  (reports ending before --since), `not_ours` ({domain: reports}).
- `rules`: `significant_share`, `failing_share`, `min_messages` (summary.py).
- `domains`: one per policy domain, by name: `domain` (A-labels), `policy` (`p`, `sp`, `np`, `pct`,
  `adkim`, `aspf`, `testing` from the latest report; null when not given), `reports`, `reporters`
  (list of `{org_name, reports, messages}`), `begin`, `end` (ISO 8601 UTC), `messages`,
  `verdicts` ({verdict: messages}, every verdict), `sources` (by messages: `ip`, `ptr` (null
  without --resolve; else the name, "(no PTR)", "(lookup failed)" or "(lookup skipped)"),
  `messages`, `verdict`, `verdicts`, `dispositions`, `spf` (list of
  `{result, domain, scope, messages}`), `dkim` (list of `{result, domain, selector, messages}`;
  domain null: unsigned), `header_from` ({domain: messages}), `reporters`), `readiness`
  (`status`: ready for p=quarantine | ready for p=reject | not ready | at p=reject; `line`; `why`).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime

from policymilter.dmarcreports.archives import Limits
from policymilter.dmarcreports.model import Report
from policymilter.dmarcreports.parse import ReportError, parse_report
from policymilter.dmarcreports.render import Duplicate, Run, as_json, text
from policymilter.dmarcreports.resolve import ptr_names
from policymilter.dmarcreports.sources import Document, Finder
from policymilter.dmarcreports.summary import DomainSummary, date_problem, summarise
from policymilter.dns import Resolver, parse_nameserver
from policymilter.domains import normalize
from policymilter.policy import PolicyError, load_policy
from policymilter.report import parse_when
from policymilter.safetext import for_log

RESOLVE_DEADLINE = 60.0  # seconds for all PTR lookups of a run


def _count(text: str) -> int:
    from policymilter.cli import _positive  # cli imports this package: the function is there by now

    return _positive(text)


def _mebibytes(text: str) -> int:
    return _count(text) << 20


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < value <= 60:
        raise argparse.ArgumentTypeError(f"{value:g} must be above 0 and at most 60")
    return value


def _nameserver(text: str) -> str:
    try:
        host, port = parse_nameserver(text)
        ipaddress.ip_address(host)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected an IP address, optionally :PORT "
                                         "(127.0.0.1:5353, [::1]:53)") from None
    if not 0 < port < 65536:
        raise argparse.ArgumentTypeError(f"{text!r}: port {port} is not between 1 and 65535")
    return text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = Limits()
    parser.add_argument("paths", nargs="+", metavar="PATH",
                        help="mbox files, Maildirs, directories of saved reports, .eml messages, .xml, .xml.gz, .zip")
    parser.add_argument("--json", action="store_true", help="print one JSON object (keys: policymilter/dmarcreports/"
                                                            "read.py)")
    parser.add_argument("--since", help="only reports whose period ends after this time: ISO 8601 (UTC unless it "
                                        "says otherwise) or an age: 30m, 24h, 7d, 2w")
    parser.add_argument("--policy", help="policy file or directory: only site.domains and their subdomains "
                                         "(default: every domain in the reports); --resolve asks its dns.nameservers")
    parser.add_argument("-o", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                        help="override one policy key (as for run), e.g. -o 'site.domains=[\"example.org\"]'")
    parser.add_argument("--domain", action="append", default=[], metavar="DOMAIN",
                        help="only this domain and its subdomains; repeatable")
    parser.add_argument("--resolve", action="store_true", help="look up each source IP's PTR name in DNS")
    parser.add_argument("--nameserver", type=_nameserver, action="append", default=[], metavar="HOST[:PORT]",
                        help="for --resolve: ask this server (repeatable; default: the policy's, else "
                             "/etc/resolv.conf)")
    parser.add_argument("--resolve-timeout", type=_seconds, default=3.0, metavar="SECONDS",
                        help=f"for --resolve: per lookup (default 3; all lookups within {RESOLVE_DEADLINE:g} s)")
    parser.add_argument("--max-input", type=_mebibytes, default=defaults.max_input, metavar="MIB",
                        help=f"largest file, message or attachment read (default {defaults.max_input >> 20})")
    parser.add_argument("--max-xml", type=_mebibytes, default=defaults.max_xml, metavar="MIB",
                        help=f"largest report XML, decompressed (default {defaults.max_xml >> 20})")
    parser.add_argument("--max-members", type=_count, default=defaults.max_members, metavar="N",
                        help=f"most files in one zip (default {defaults.max_members})")
    parser.add_argument("--max-records", type=_count, default=defaults.max_records, metavar="N",
                        help=f"most records in one report (default {defaults.max_records})")
    parser.add_argument("--max-depth", type=_count, default=defaults.max_depth, metavar="N",
                        help=f"deepest nesting of messages and archives (default {defaults.max_depth})")
    parser.add_argument("--max-total", type=_mebibytes, default=defaults.max_total, metavar="MIB",
                        help="most bytes decompressed from one file or message, every archive layer counted "
                             f"(default {defaults.max_total >> 20})")
    parser.add_argument("--max-documents", type=_count, default=defaults.max_documents, metavar="N",
                        help=f"most report documents in one file or message (default {defaults.max_documents})")


def _ours(domain: str, site: Sequence[str]) -> bool:
    return not site or any(domain == name or domain.endswith(f".{name}") for name in site)


def main(args: argparse.Namespace, now: datetime | None = None) -> int:
    now = now or datetime.now(UTC)
    try:
        since = parse_when(args.since, now) if args.since else None
    except argparse.ArgumentTypeError as error:
        print(f"dmarc-reports read: --since {for_log(str(error), 300)}", file=sys.stderr)
        return 2
    site = [normalize(name) for name in args.domain]
    nameservers: Sequence[str] = args.nameserver
    if args.overrides and not args.policy:
        print("dmarc-reports read: -o needs --policy", file=sys.stderr)
        return 2
    if args.policy:
        try:
            policy = load_policy(args.policy, args.overrides).policy
        except PolicyError as error:
            for issue in error.issues:
                print(issue, file=sys.stderr)
            return 2
        site += [normalize(name) for name in policy.site.domains]
        nameservers = nameservers or policy.dns.nameservers
    limits = Limits(max_input=args.max_input, max_xml=args.max_xml, max_members=args.max_members,
                    max_records=args.max_records, max_depth=args.max_depth, max_total=args.max_total,
                    max_documents=args.max_documents)

    skipped: list[tuple[str, str]] = []
    # Every distinct content read under a key, with where it was read first.
    versions: dict[tuple[str, str], list[tuple[Report, str]]] = {}
    duplicates: list[Duplicate] = []
    conflicts: list[Duplicate] = []
    disputed: dict[str, list[str]] = {}  # domain -> the conflicting reports about it
    kept: dict[str, list[Report]] = {}
    not_ours: dict[str, int] = {}
    documents = outside = 0
    now_seconds = int(now.timestamp())

    def skip(origin: str, reason: str) -> None:
        skipped.append((origin, reason))
        # Both are made printable where they are made; again here, where they reach a terminal.
        print(f"{for_log(origin, 2000)}: skipped: {for_log(reason, 2000)}", file=sys.stderr)

    for found in Finder(limits).find(args.paths):
        if not isinstance(found, Document):
            skip(found.origin, found.reason)
            continue
        documents += 1
        try:
            report = parse_report(found.data, limits.max_records)
        except ReportError as error:
            skip(found.origin, str(error))
            continue
        problem = date_problem(report, now_seconds)
        if problem:
            skip(found.origin, problem)
            continue
        seen = versions.setdefault(report.key, [])
        same = next((origin for version, origin in seen if version == report), None)
        if same is not None:
            duplicates.append(Duplicate(report.org_name, report.report_id, found.origin, same))
            continue
        if seen:
            conflicts.append(Duplicate(report.org_name, report.report_id, found.origin, seen[0][1]))
            name = f"{for_log(report.org_name, 80)} report {for_log(report.report_id, 80)}"
            for domain in {report.policy.domain, *(version.policy.domain for version, _ in seen)}:
                disputed.setdefault(domain, []).append(name)
        seen.append((report, found.origin))
        if since is not None and report.end <= since.timestamp():
            outside += 1
        elif not _ours(report.policy.domain, site):
            not_ours[report.policy.domain] = not_ours.get(report.policy.domain, 0) + 1
        else:
            kept.setdefault(report.policy.domain, []).append(report)

    ptrs: dict[str, str] | None = None
    if args.resolve and kept:
        resolver = Resolver(nameservers, timeout=args.resolve_timeout, lifetime=args.resolve_timeout)
        ptrs = ptr_names(resolver, dict.fromkeys(record.source_ip for reports in kept.values()
                                                 for report in reports for record in report.records),
                         RESOLVE_DEADLINE)
    summaries = [summarise(domain, reports, ptrs, disputed.get(domain, ())) for domain, reports in sorted(kept.items())]
    selected_by = ", ".join(option for option, given in (("--policy", args.policy), ("--domain", args.domain)) if given)
    _print(Run(documents, sum(len(reports) for reports in kept.values()), skipped, duplicates, outside, not_ours,
               conflicts, selected_by), summaries, args.json)
    return 1 if skipped else 0


def _print(run: Run, summaries: Sequence[DomainSummary], as_object: bool) -> None:
    if as_object:
        print(json.dumps(as_json(run, summaries), indent=2, ensure_ascii=False))
    else:
        sys.stdout.write(text(run, summaries))
