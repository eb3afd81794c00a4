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
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace

from policymilter import metrics
from policymilter.checks.dkim import DkimFindings
from policymilter.checks.dmarc.evaluate import DmarcResult, DomainPolicy, Status
from policymilter.checks.spf import SpfFindings
from policymilter.dmarcreports.rows import ActionDisposition, DkimAuth, Override, Published, Row, SpfAuth
from policymilter.outcome import CheckResult, Disposition, Notice, Outcome
from policymilter.pipeline import CheckContext
from policymilter.state import StoreError

# RFC 9990 DKIMResultType and SPFResultType (RFC 8601 §2.7.1, §2.7.2); pyspf's older names too.
DKIM_RESULTS = frozenset({"none", "pass", "fail", "policy", "neutral", "temperror", "permerror"})
SPF_RESULTS = {"none": "none", "neutral": "neutral", "pass": "pass", "fail": "fail", "softfail": "softfail",
               "temperror": "temperror", "permerror": "permerror", "error": "temperror", "unknown": "permerror",
               "ambiguous": "permerror"}
_ENFORCING = (DomainPolicy.QUARANTINE, DomainPolicy.REJECT)


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
    try:
        if store is None:
            raise StoreError("no state store was opened for this policy")
        counted = store.dmarc_record(period, domain, row.key(), now, settings.max_rows,
                                     period + settings.interval + settings.keep_days * 86400)
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
                                     f"the DMARC report for {domain} has dmarc_reports.max_rows = {settings.max_rows} "
                                     "distinct rows: this message's row is not counted", (("domain", domain),)))
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
    published = Published(
        domain=result.record_domain, p=str(record.p), sp=str(record.sp) if record.sp else None,
        np=str(record.np) if record.np else None, adkim=str(record.adkim), aspf=str(record.aspf),
        testing="y" if record.testing else "n",
        discovery_method="treewalk" if context.policy.dmarc.discovery == "treewalk" else "psl",
        rua=record.rua_published)
    disposition = _disposition(context, verdict, result)
    return Row(source_ip=context.session.client_ip, header_from=result.from_domain,
               envelope_from=_envelope_from(context), envelope_to=_envelope_to(context.envelope.rcpts),
               published=published, disposition=disposition, dkim_aligned=result.aligned_dkim is not None,
               spf_aligned=result.aligned_spf, reasons=_reasons(context, result, disposition, override),
               dkim=_dkim(context), spf=_spf(context))


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
        return main.domain
    sender = context.envelope.mail_from
    return (sender.rpartition("@")[2] if sender else (context.session.helo or "")).lower().rstrip(".")


def _envelope_to(rcpts: tuple[str, ...]) -> str:
    """The recipients' domain when they all share one, else "" (RFC 9990 envelope_to is one domain)."""
    found = {rcpt.rpartition("@")[2].lower().rstrip(".") for rcpt in rcpts}
    return found.pop() if len(found) == 1 else ""


def _dkim(context: CheckContext) -> tuple[DkimAuth, ...]:
    found = context.findings("dkim", DkimFindings)
    if not isinstance(found, DkimFindings):
        return ()
    return tuple(DkimAuth(s.domain.lower(), s.selector,
                          s.result.lower() if s.result.lower() in DKIM_RESULTS else "permerror")
                 for s in found.signatures)


def _spf(context: CheckContext) -> tuple[SpfAuth, ...]:
    """The identity DMARC used (RFC 9990 §2.1: its domain, scope and result)."""
    found = context.findings("spf", SpfFindings)
    main = found.main if isinstance(found, SpfFindings) else None
    if main is None:
        return ()
    return (SpfAuth(main.domain, "mfrom", SPF_RESULTS.get(main.result.lower(), "permerror")),)


def _with(verdict: CheckResult, notice: Notice) -> CheckResult:
    return replace(verdict, notices=(*verdict.notices, notice))
