"""spf: RFC 7208 for the MAIL FROM and HELO identities, with pyspf, at MAIL FROM.

What the result means for the message is mostly DMARC's business (at end of message); this
check refuses on its own only when the policy says `spf.on_fail = "reject"`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import authres
import spf as pyspf

from policymilter import domains, safetext
from policymilter.dns import Budget, Resolver, for_pyspf
from policymilter.outcome import CheckResult, Disposition, Findings, Outcome, SmtpReply
from policymilter.pipeline import CheckContext, Stage

NAME = "spf"
# A-labels only; the last label may be an IDN TLD (xn--...) but not all digits.
_DOMAIN = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9])?\.)+(?!\d+\.?$)"
                     r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.?$", re.ASCII)


def a_label(domain: str) -> str:
    """`bücher.example` -> `xn--bcher-kva.example` (IDNA2008); lowered when it cannot be encoded."""
    return domains.normalize(domain)


@dataclass(frozen=True)
class SpfResult:
    """One identity's evaluation."""

    identity: str  # "mailfrom" or "helo"
    domain: str
    result: str  # pass fail softfail neutral none temperror permerror
    explanation: str = ""


@dataclass(frozen=True)
class SpfFindings(Findings):
    """Both identities' results (None: that identity was not checked: no IP, no HELO name)."""

    mailfrom: SpfResult | None = None
    helo: SpfResult | None = None

    @property
    def main(self) -> SpfResult | None:
        """The identity DMARC aligns (RFC 7489 §4.1): MAIL FROM, or HELO for the null sender."""
        return self.mailfrom or self.helo


def evaluate(ip: str, sender: str, helo: str, resolver: Resolver, budget: Budget | None) -> tuple[str, str]:
    """pyspf's (result, explanation) for one identity, within the message's DNS budget."""
    querytime = max(budget.remaining(), 0.001) if budget else resolver.lifetime
    with for_pyspf(resolver, budget):
        result, _code, explanation = pyspf.query(i=ip, s=sender, h=helo, timeout=resolver.timeout,
                                                querytime=querytime).check()
    return str(result), str(explanation)


def check_identities(ip: str, mail_from: str, helo: str, resolver: Resolver,
                     budget: Budget | None) -> tuple[SpfResult | None, SpfResult | None]:
    """(MAIL FROM result, HELO result). RFC 7208 §2.4: a null sender is checked as
    postmaster@HELO, so then the MAIL FROM identity *is* the HELO identity."""
    helo_result = None
    helo = a_label(helo)
    if _DOMAIN.match(helo):
        result, explanation = evaluate(ip, f"postmaster@{helo}", helo, resolver, budget)
        helo_result = SpfResult("helo", helo.lower().rstrip("."), result, explanation)
    if not mail_from:
        return helo_result, helo_result
    local, _, domain = mail_from.rpartition("@")
    domain = a_label(domain)
    if not _DOMAIN.match(domain):
        return SpfResult("mailfrom", domain, "none", "MAIL FROM domain is not a domain name"), helo_result
    result, explanation = evaluate(ip, f"{local}@{domain}", helo, resolver, budget)
    return SpfResult("mailfrom", domain, result, explanation), helo_result


def _entries(mailfrom: SpfResult | None, helo: SpfResult | None) -> tuple[object, ...]:
    entries: list[object] = []
    if mailfrom is not None and mailfrom is not helo:
        entries.append(authres.SPFAuthenticationResult(result=mailfrom.result, smtp_mailfrom=mailfrom.domain))
    if helo is not None:
        entries.append(authres.SPFAuthenticationResult(result=helo.result, smtp_helo=helo.domain))
    return tuple(entries)


class Spf:
    name = NAME
    stage = Stage.MAIL
    requires: tuple[str, ...] = ()

    def run(self, context: CheckContext) -> CheckResult:
        ip = context.session.client_ip
        if ip is None:
            return CheckResult(NAME, Outcome.NONE, reason="client address unknown", detail="no-ip",
                               findings=SpfFindings())
        resolver, budget = context.dns()
        mailfrom, helo = check_identities(ip, context.envelope.mail_from, context.session.helo or "",
                                          resolver, budget)
        main = mailfrom or helo
        if main is None:
            return CheckResult(NAME, Outcome.NONE, reason="no identity to check", detail="no-identity",
                               findings=SpfFindings())
        outcome = Outcome(main.result)
        disposition, reply = Disposition.ACCEPT, None
        if outcome is Outcome.FAIL and context.policy.spf.on_fail == "reject":
            disposition = Disposition.REJECT
            # RFC 7372 §3.2: 5.7.23 SPF validation failed
            # The domain's exp= text goes into our reply: printable ASCII, bounded.
            explanation = safetext.for_reply(main.explanation, 160) or "see its SPF record"
            reply = SmtpReply("550", "5.7.23", f"SPF check failed: {main.domain} does not allow {ip} to send "
                                               f"its mail ({explanation})")
        reason = f"{main.identity} {main.domain}: {main.result}"
        return CheckResult(NAME, outcome, disposition, reply, reason=reason, detail=main.identity,
                           authres=_entries(mailfrom, helo), findings=SpfFindings(mailfrom, helo))
