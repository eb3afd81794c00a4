"""What the dmarc check records of each message for the aggregate reports we send (RFC 9990 §2.1).

With `dmarc_reports.record`, every message the check judged against a DMARC record (result pass
or fail) counts once in the state store, under the domain whose record applied and the report
period it arrived in: one upsert of its Row (dmarcreports/rows.py), whatever the verdict, so a
refused message counts as well as an accepted one. Not recorded: mail without a record (none),
results we could not complete (temperror: the sender retries, and the retry counts),
permerror, and authenticated mail (our own users' is not ours to report).

The row says what we did, not what the domain asked: the disposition after the site's choices,
and each reason we did otherwise as an RFC 9990 PolicyOverrideType. A store that fails never
changes the message's fate: the check logs it once and goes on (`dmarc_report_failed`).

Everything a message or DNS put in a row is checked and bounded here, before it is stored:
domains are A-labels of at most 253 characters and selectors LDH labels of at most 63 (any other
text is recorded as INVALID, so a forger's variations collapse into one row); at most
MAX_DKIM_RESULTS signatures, passes and From-aligned ones first; at most MAX_RUA rua URIs of at
most MAX_RUA_LENGTH characters. A row of mail failing DMARC (what anyone can forge) counts in two
capped groups of the report: all failing rows (dmarc_reports.max_failing_rows) and its source's
(max_rows_per_source, per IPv4 address or IPv6 /64), so that forged mail cannot take the rows of
mail that passes, nor one source the rows of all others.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import time
from dataclasses import replace

from policymilter import metrics
from policymilter.checks.dkim import DkimFindings
from policymilter.checks.dmarc.evaluate import DmarcResult, DomainPolicy, Status
from policymilter.checks.spf import SpfFindings
from policymilter.dmarcreports.rows import ActionDisposition, DkimAuth, Override, Published, Row, SpfAuth
from policymilter.domains import DomainError, organizational_domain, to_ascii
from policymilter.outcome import CheckResult, Disposition, Notice, Outcome
from policymilter.pipeline import CheckContext
from policymilter.state import StoreError

# RFC 9990 DKIMResultType and SPFResultType (RFC 8601 §2.7.1, §2.7.2); pyspf's older names too.
DKIM_RESULTS = frozenset({"none", "pass", "fail", "policy", "neutral", "temperror", "permerror"})
SPF_RESULTS = {"none": "none", "neutral": "neutral", "pass": "pass", "fail": "fail", "softfail": "softfail",
               "temperror": "temperror", "permerror": "permerror", "error": "temperror", "unknown": "permerror",
               "ambiguous": "permerror"}
_ENFORCING = (DomainPolicy.QUARANTINE, DomainPolicy.REJECT)
INVALID = "(invalid)"  # a domain or selector that is not one (module doc)
MAX_DKIM_RESULTS = 10  # RFC 9990 §2.1 allows up to 100 per record; 10 is more than real mail carries
MAX_RUA = 10  # destinations.MAX_DESTINATIONS are used; a few more, for duplicates and unusable ones
MAX_RUA_LENGTH = 256
MAX_SELECTOR = 63
# RFC 6376 §3.1 selector: sub-domain, LDH labels (underscores are seen in the wild).
_SELECTOR = re.compile(r"[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)*", re.ASCII)


def period_of(now: float, interval: int) -> int:
    """The start of the report period `now` falls in: periods are `interval` seconds from the
    epoch, so in UTC, and since the interval divides a day a daily one starts at 00:00 UTC
    (RFC 9990 §2.1.1 asks for report periods on UTC day or hour boundaries)."""
    return int(now // interval) * interval


def recorded(context: CheckContext, verdict: CheckResult, override: str) -> CheckResult:
    """`verdict`, the check's own result, once its message is counted in the report rows (with a
    notice added when the store could not take it); `override`: the check's local reason not to
    enforce a failure ("" for none)."""
    result = verdict.findings
    if not isinstance(result, DmarcResult) or not wanted(context, verdict, result):
        return verdict
    row = row_of(context, verdict, result, override)
    if row is None:
        return verdict
    settings = context.policy.dmarc_reports
    now = time.time()
    period = period_of(now, settings.interval)
    domain = row.published.domain
    store = context.resources.store
    groups = () if row.dkim_aligned or row.spf_aligned else (
        ("fail", settings.max_failing_rows), (f"src:{source_of(row.source_ip)}", settings.max_rows_per_source))
    try:
        if store is None:
            raise StoreError("no state store was opened for this policy")
        counted = store.dmarc_record(period, domain, row.key(), now, settings.max_rows,
                                     period + settings.interval + settings.keep_days * 86400,
                                     groups=groups, max_domains=settings.max_domains)
    except StoreError as error:
        metrics.store_error("dmarc")
        metrics.dmarc_report_row("store_error")
        notice = Notice("dmarc_report_failed", logging.WARNING,
                        f"the DMARC report row for {domain} could not be recorded ({error}); the message is not "
                        "affected, the report will miss it",
                        # the error names the store as the store shows it (never a Redis password)
                        (("domain", domain),))
        return _with(verdict, notice)
    if not counted:
        metrics.dmarc_report_row("dropped")
        # Debug only: a full report would say so for every further new row; the metric counts them.
        return _with(verdict, Notice("dmarc_report_full", logging.DEBUG,
                                     f"the DMARC report for {domain} is full (dmarc_reports.max_rows = "
                                     f"{settings.max_rows}, max_failing_rows, max_rows_per_source, or max_domains "
                                     "for the period): this message's row is not counted", (("domain", domain),)))
    metrics.dmarc_report_row("counted")
    return verdict


def wanted(context: CheckContext, verdict: CheckResult, result: DmarcResult) -> bool:
    """Whether this message belongs in a report (module doc)."""
    return (context.policy.dmarc_reports.record and not context.session.authenticated
            and verdict.outcome in (Outcome.PASS, Outcome.FAIL) and result.result in (Status.PASS, Status.FAIL)
            and result.record is not None and result.record.p is not None and bool(result.record_domain)
            and verdict.disposition is not Disposition.TEMPFAIL and context.session.client_ip is not None)


def row_of(context: CheckContext, verdict: CheckResult, result: DmarcResult, override: str) -> Row | None:
    record = result.record
    if record is None or record.p is None or result.record_domain is None or context.session.client_ip is None:
        return None
    report_domain = bounded_domain(result.record_domain)
    if report_domain in ("", INVALID):
        return None  # no report could be named for it (compose.py)
    published = Published(
        domain=report_domain, p=str(record.p), sp=str(record.sp) if record.sp else None,
        np=str(record.np) if record.np else None, adkim=str(record.adkim), aspf=str(record.aspf),
        testing="y" if record.testing else "n",
        discovery_method="treewalk" if context.policy.dmarc.discovery == "treewalk" else "psl",
        rua=tuple(uri for uri in record.rua_published if len(uri) <= MAX_RUA_LENGTH)[:MAX_RUA])
    disposition = _disposition(context, verdict, result)
    header_from = bounded_domain(result.from_domain)
    return Row(source_ip=context.session.client_ip, header_from=header_from,
               envelope_from=_envelope_from(context), envelope_to=_envelope_to(context.envelope.rcpts),
               published=published, disposition=disposition, dkim_aligned=result.aligned_dkim is not None,
               spf_aligned=result.aligned_spf, reasons=_reasons(context, result, disposition, override),
               dkim=_dkim(context, header_from), spf=_spf(context))


def bounded_domain(text: str) -> str:
    """`text` as a lower-case A-label domain of at most 253 characters; "" stays ""; any other
    text (an address literal, a name too long, bytes no domain has) is INVALID."""
    name = text.strip().removesuffix(".")
    if not name:
        return ""
    try:
        return to_ascii(name)
    except DomainError:
        return INVALID


def bounded_selector(text: str) -> str:
    """A DKIM selector, lower case (DNS compares names so), or INVALID."""
    name = text.strip().lower()
    return name if len(name) <= MAX_SELECTOR and _SELECTOR.fullmatch(name) else INVALID


def source_of(ip: str) -> str:
    """The source a row's max_rows_per_source counts: the IPv4 address, or the IPv6 /64 (one
    host is given a /64 at least, RFC 6177)."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return ip
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is None:
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) else address)


def _disposition(context: CheckContext, verdict: CheckResult, result: DmarcResult) -> ActionDisposition:
    """What we did: RFC 9990's "pass" is a pass under an enforcing policy; report mode does nothing."""
    done = Disposition.ACCEPT if context.policy.dmarc.mode == "report" else verdict.disposition
    if done is Disposition.REJECT:
        return "reject"
    if done is Disposition.QUARANTINE:
        return "quarantine"
    return "pass" if result.result is Status.PASS and result.policy in _ENFORCING else "none"


def _reasons(context: CheckContext, result: DmarcResult, done: ActionDisposition,
             override: str) -> tuple[Override, ...]:
    """RFC 9990 PolicyOverrideType for each reason what we did differs from the domain's policy."""
    if result.result is not Status.FAIL:
        return ()
    reasons: list[Override] = []
    if result.record is not None and result.record.testing and result.policy in _ENFORCING:
        reasons.append(Override("policy_test_mode", f"t=y: {result.policy} applied as {result.disposition}"))
    if result.pct_applied:
        reasons.append(Override("other", f"sampled out: pct={result.record.pct if result.record else 100}"))
    policy = context.policy.dmarc
    if override.startswith("local_policy:"):
        reasons.append(Override("local_policy", f"dmarc.{override.removeprefix('local_policy:')}"))
    elif override == "trusted_forwarder":
        reasons.append(Override("trusted_forwarder", "dmarc.trusted_forwarders"))
    elif override.startswith("arc:"):
        reasons.append(Override("mailing_list", f"trusted ARC sealer {override.removeprefix('arc:')}"))
    elif done != str(result.disposition):
        if policy.mode == "report":
            why = "dmarc.mode = report"
        elif done == "reject" and result.disposition is not DomainPolicy.REJECT:
            why = "dmarc.always_reject_site_domains"  # the only way we refuse more than asked
        else:
            site = policy.on_reject if result.disposition is DomainPolicy.REJECT else policy.on_quarantine
            why = f"dmarc.on_{result.disposition} = {site}"
        reasons.append(Override("local_policy", why))
    return tuple(reasons)


def _envelope_from(context: CheckContext) -> str:
    """RFC 9990 envelope_from: the RFC5321.MailFrom domain; for the null sender, the HELO domain
    SPF checked (RFC 7208 §2.4), as the spf check found them."""
    spf = context.findings("spf", SpfFindings)
    main = spf.main if isinstance(spf, SpfFindings) else None
    if main is not None:
        return bounded_domain(main.domain)
    sender = context.envelope.mail_from
    return bounded_domain(sender.rpartition("@")[2] if sender else (context.session.helo or ""))


def _envelope_to(rcpts: tuple[str, ...]) -> str:
    """The recipients' domain when they all share one, else "" (RFC 9990 envelope_to is one domain)."""
    found = {bounded_domain(rcpt.rpartition("@")[2]) for rcpt in rcpts}
    return found.pop() if len(found) == 1 else ""


def _dkim(context: CheckContext, header_from: str) -> tuple[DkimAuth, ...]:
    """The signatures' results (module doc): passes first, then those of the From's
    Organizational Domain, at most MAX_DKIM_RESULTS."""
    found = context.findings("dkim", DkimFindings)
    if not isinstance(found, DkimFindings):
        return ()
    author = organizational_domain(header_from)
    results = [(bounded_domain(s.domain) or INVALID, bounded_selector(s.selector),
                s.result.lower() if s.result.lower() in DKIM_RESULTS else "permerror") for s in found.signatures]
    results.sort(key=lambda item: (item[2] != "pass", organizational_domain(item[0]) != author))
    return tuple(DkimAuth(domain, selector, outcome) for domain, selector, outcome in results[:MAX_DKIM_RESULTS])


def _spf(context: CheckContext) -> tuple[SpfAuth, ...]:
    """The identity DMARC used (RFC 9990 §2.1: its domain, scope and result)."""
    found = context.findings("spf", SpfFindings)
    main = found.main if isinstance(found, SpfFindings) else None
    if main is None:
        return ()
    return (SpfAuth(bounded_domain(main.domain), "mfrom", SPF_RESULTS.get(main.result.lower(), "permerror")),)


def _with(verdict: CheckResult, notice: Notice) -> CheckResult:
    return replace(verdict, notices=(*verdict.notices, notice))
