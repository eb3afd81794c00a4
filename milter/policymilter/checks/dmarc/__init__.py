"""dmarc: evaluate the RFC5322.From domain's DMARC policy against SPF, DKIM and ARC, and enforce it.

The evaluation itself is `checks/dmarc/evaluate.py`; this check turns its result into what the site wants:
the policy's `on_reject`/`on_quarantine`, local exceptions (never-reject domains, trusted
forwarders, trusted ARC sealers), spoofing of our own domains, and DNS trouble. With
`dmarc_reports.record`, each message it judged also counts in the aggregate reports we send
(`checks/dmarc/record.py`): here, at the end of its run, so that a message counts once, its own
refusal included (a refusal by a check after this one is not seen: dmarc runs last by default).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, replace

import authres
import authres.dmarc

from policymilter import safetext
from policymilter.author import BadFrom
from policymilter.checks.arc import Chain
from policymilter.checks.dkim import DkimFindings
from policymilter.checks.dmarc import evaluate, record
from policymilter.checks.dmarc.evaluate import Alignment, DkimIdentity, DmarcResult, DomainPolicy, SpfIdentity, Status
from policymilter.checks.spf import SpfFindings
from policymilter.outcome import CheckResult, Disposition, ErrorAction, Outcome, SmtpReply
from policymilter.pipeline import CheckContext, Missing, Stage

NAME = "dmarc"
_SAFE = re.compile(r"^[A-Za-z0-9._-]{1,253}$", re.ASCII)


@dataclass(frozen=True)
class Inputs:
    """What SPF and DKIM found for DMARC, and what could not be known."""

    spf: SpfIdentity | None
    dkim: list[DkimIdentity]
    temperror: bool  # an identity that could align with the From domain had a temperror
    unknown: tuple[str, ...]  # the checks that errored or never ran: their answer may have been a pass


def _inputs(context: CheckContext, author: str) -> Inputs:
    spf = context.findings("spf", SpfFindings)
    dkim = context.findings("dkim", DkimFindings)
    unknown = tuple(name for name, found in (("spf", spf), ("dkim", dkim)) if isinstance(found, Missing))
    main = spf.main if isinstance(spf, SpfFindings) else None
    signatures = dkim.signatures if isinstance(dkim, DkimFindings) else ()
    relevant = [(main.domain, main.result)] if main else []
    relevant += [(s.domain, s.result) for s in signatures]
    return Inputs(SpfIdentity(main.domain, main.result) if main else None,
                  [DkimIdentity(s.domain, s.selector, s.result) for s in signatures],
                  any(result == "temperror" and _could_align(author, domain) for domain, result in relevant),
                  unknown)


def _arc_unknown(context: CheckContext) -> bool:
    """ARC errored where a trusted sealer could have vouched for the message."""
    return context.findings("arc", Chain) is Missing.ERRORED and bool(context.policy.arc.trusted_sealers)


def _could_align(author: str, domain: str) -> bool:
    try:
        return evaluate.aligned(author, domain, Alignment.RELAXED)
    except ValueError:
        return False


def _entry(result: DmarcResult, override: str = "") -> object:
    # policy.dmarc (RFC 7489 §11.2) is the domain's policy that applies to this message (p, sp or
    # np); what was done, and why not, goes in the comment.
    comment = f"dis={result.disposition}" + (f" override={override}" if override else "")
    domain = result.from_domain if _SAFE.match(result.from_domain) else None
    return authres.dmarc.DMARCAuthenticationResult(result=str(result.result), result_comment=comment,
                                                   header_from=domain, policy=str(result.policy or "none"))


def _override(context: CheckContext, result: DmarcResult) -> str:
    """A local reason not to enforce this failure ("" when there is none)."""
    policy = context.policy.dmarc
    if result.from_domain in policy.never_reject_domains or (
            result.org_domain and result.org_domain in policy.never_reject_domains):
        return "local_policy:never_reject_domains"
    ip = context.session.client_ip
    if ip and any(ipaddress.ip_address(ip) in ipaddress.ip_network(net, strict=False)
                  for net in policy.trusted_forwarders):
        return "trusted_forwarder"
    chain = context.findings("arc", Chain)  # not required: without ARC, no sealer vouches
    # A trusted sealer only vouches for what it saw: DMARC must have passed when it got the message.
    if isinstance(chain, Chain) and chain.result == "pass" and chain.sealer_saw_dmarc_pass \
            and chain.sealer in context.policy.arc.trusted_sealers:
        return f"arc:{chain.sealer}"
    return ""


def _ours(context: CheckContext, domain: str) -> bool:
    return any(domain == own or domain.endswith("." + own) for own in context.policy.site.domains)


class Dmarc:
    name = NAME
    stage = Stage.EOM
    # ARC is read when it ran (a trusted sealer's override), not required: without it no sealer
    # vouches, which is the strict answer.
    requires: tuple[str, ...] = ("spf", "dkim")

    def run(self, context: CheckContext) -> CheckResult:
        verdict = self._judge(context)
        if not context.policy.dmarc_reports.record or not isinstance(verdict.findings, DmarcResult):
            return verdict
        return record.recorded(context, verdict, _override(context, verdict.findings)
                               if verdict.findings.result is Status.FAIL else "")

    def _judge(self, context: CheckContext) -> CheckResult:
        written_by = context.content.author()
        if isinstance(written_by, BadFrom):
            return self._bad_from(context, written_by)
        author = written_by.domain
        inputs = _inputs(context, author)
        resolver, budget = context.dns()
        result = evaluate.evaluate(author, inputs.spf, inputs.dkim, resolver, budget,
                             discovery=context.policy.dmarc.discovery)
        if result.result is Status.TEMPERROR:
            if _override(context, result):
                return CheckResult(NAME, Outcome.TEMPERROR, reason=f"{result.reason}; locally exempt",
                                   detail=author, authres=(_entry(result),), findings=result)
            return self._temporary(context, result, f"DMARC record of {author} could not be looked up")
        if result.result is Status.FAIL:
            return self._enforce(context, result, inputs)
        if result.result is not Status.PASS and self._spoofs_site(context, author, inputs.spf, inputs.dkim):
            # Our own domain without a usable DMARC record: still spoofing, and the site may refuse it.
            return self._enforce(context, replace(result, result=Status.FAIL, policy=DomainPolicy.NONE,
                                                  disposition=DomainPolicy.NONE), inputs)
        return CheckResult(NAME, Outcome(str(result.result)), reason=result.reason, detail=author,
                           authres=(_entry(result),), findings=result)

    def _spoofs_site(self, context: CheckContext, author: str, spf: SpfIdentity | None,
                     dkim: list[DkimIdentity]) -> bool:
        if context.session.authenticated or not _ours(context, author):
            return False
        passes = [d.domain for d in dkim if d.result == "pass"] + ([spf.domain] if spf and spf.result == "pass" else [])
        return not any(_could_align(author, domain) for domain in passes)

    def _enforce(self, context: CheckContext, result: DmarcResult, inputs: Inputs) -> CheckResult:
        author, policy = result.from_domain, context.policy.dmarc
        spoofed_site = _ours(context, author) and not context.session.authenticated
        override = _override(context, result)
        asked = result.disposition
        if spoofed_site and policy.always_reject_site_domains and not override:
            asked = DomainPolicy.REJECT
        actions = {DomainPolicy.REJECT: policy.on_reject, DomainPolicy.QUARANTINE: policy.on_quarantine}
        action = actions.get(asked, "tag")
        if override:
            action = "tag"
        reason = (f"{author} fails DMARC ({result.reason}); domain asks {result.disposition}"
                  + ("; spoofing one of our own domains" if spoofed_site else "")
                  + (f"; policy.override={override}" if override else ""))
        disposition, reply = Disposition.ACCEPT, None
        if action in ("reject", "quarantine") and inputs.unknown:
            # A check that could not answer may have held the aligned pass: never refuse (or hold)
            # mail for authentication that was not checked. The sender retries.
            done = "refused" if action == "reject" else "held"
            return self._temporary(context, result, f"{author} would be {done}, but the "
                                                    f"{' and '.join(inputs.unknown).upper()} check could not answer",
                                   dns=False)
        if action in ("reject", "quarantine") and _arc_unknown(context):
            done = "refused" if action == "reject" else "held"
            return self._temporary(context, result, f"{author} would be {done}, but the ARC check, which a trusted "
                                                    "sealer's chain could have passed, could not answer", dns=False)
        if action == "reject" and inputs.temperror:
            # The failure may be DNS trouble with an identity that could have aligned: retry.
            return self._temporary(context, result, f"{author} would be refused, but an SPF or DKIM lookup for it "
                                                    "failed temporarily")
        if action == "reject":
            disposition = Disposition.REJECT
            reply = SmtpReply("550", "5.7.1", f"Message rejected: {author} publishes a DMARC policy of reject and "
                                              "this message failed its SPF and DKIM checks (it may be forged)")
        elif action == "quarantine":
            disposition = Disposition.QUARANTINE
        detail = "spoofed-site-domain" if spoofed_site else (f"override:{override}" if override else author)
        return CheckResult(NAME, Outcome.FAIL, disposition, reply, reason=reason, detail=detail,
                           authres=(_entry(result, override),), findings=result)

    def _temporary(self, context: CheckContext, result: DmarcResult, why: str, dns: bool = True) -> CheckResult:
        action = context.listener.settings.error_action(NAME, context.session.authenticated)
        disposition = {ErrorAction.TEMPFAIL: Disposition.TEMPFAIL, ErrorAction.REJECT: Disposition.REJECT}.get(
            action, Disposition.ACCEPT)
        reply = None
        if disposition is Disposition.TEMPFAIL:
            trouble = "Temporary DNS failure" if dns else "Temporary problem"
            reply = SmtpReply("451", "4.7.1", f"{trouble} checking the sender's DMARC policy ({why}): "
                                              "please try again later")
        elif disposition is Disposition.REJECT:
            reply = SmtpReply("550", "5.7.1", f"Sender authentication could not be completed ({why})")
        return CheckResult(NAME, Outcome.TEMPERROR, disposition, reply, reason=why, detail=result.from_domain,
                           authres=(_entry(result),), findings=result)

    def _bad_from(self, context: CheckContext, bad: BadFrom) -> CheckResult:
        reason = f"{bad.reason}; DMARC needs exactly one unambiguous author domain (RFC 7489 §6.6.1)"
        # The comment is ours, not the attacker's text: the header stays parseable.
        entry = authres.dmarc.DMARCAuthenticationResult(result="permerror", result_comment=f"bad From: {bad.detail}")
        if context.policy.dmarc.on_bad_from == "accept":
            return CheckResult(NAME, Outcome.PERMERROR, reason=reason, detail=f"from-{bad.detail}", authres=(entry,))
        shown = safetext.for_reply(bad.reason, 160)
        return CheckResult(NAME, Outcome.PERMERROR, Disposition.REJECT,
                           SmtpReply("550", "5.7.1", f"Message refused: {shown}; a message "
                                                     "must have exactly one From address, written so that every "
                                                     "reader sees the same one (RFC 5322 section 3.6.2)"),
                           reason=reason, detail=f"from-{bad.detail}", authres=(entry,))
