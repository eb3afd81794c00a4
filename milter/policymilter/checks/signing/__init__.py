"""signing: authenticated mail from one of site.domains leaves DKIM-signed (RSA, optionally also
Ed25519), so that it passes DMARC wherever it goes. Runs last, over the final headers.

A site domain without a usable key follows `signing.on_missing_key` (default tempfail, with a
log line naming the domain): the site asked for signing, so unsigned mail never leaves silently.
"""

from __future__ import annotations

from policymilter import metrics
from policymilter.author import Author, BadFrom
from policymilter.checks.signing import sign
from policymilter.message import Message
from policymilter.outcome import (
    Action,
    AddHeader,
    ChangeHeader,
    CheckResult,
    Disposition,
    Outcome,
    RemoveHeader,
    SmtpReply,
)
from policymilter.pipeline import CheckContext, Stage

NAME = "signing"
RETRY = SmtpReply("451", "4.7.1", "Temporary problem signing this message: please try again later")


def final_headers(message: Message, actions: list[Action]) -> list[tuple[str, bytes]]:
    """The header list as Postfix will hold it once the earlier checks' changes are applied."""
    headers = [(h.name, h.value) for h in message.headers]

    def position(name: str, index: int) -> int | None:
        seen = 0
        for at, (current, _) in enumerate(headers):
            if current.lower() == name.lower():
                seen += 1
                if seen == index:
                    return at
        return None

    for action in actions:
        match action:
            case RemoveHeader(name=name, index=index):
                at = position(name, index)
                if at is not None:
                    del headers[at]
            case ChangeHeader(name=name, index=index, value=value):
                at = position(name, index)
                if at is not None:
                    headers[at] = (name, b" " + value.encode())
            case AddHeader(name=name, value=value, first=first):
                headers.insert(0 if first else len(headers), (name, b" " + value.encode()))
    return headers


def signing_domain(context: CheckContext, written_by: Author | BadFrom) -> str | None:
    """The site domain to sign for: the From domain itself or its nearest site parent. Never for
    a From that readers may read differently (we would sign whatever address they see)."""
    if isinstance(written_by, BadFrom):
        return None
    author = written_by.domain
    candidates = [d for d in context.policy.site.domains if author == d or author.endswith("." + d)]
    return max(candidates, key=len) if candidates else None


class Signing:
    name = NAME
    stage = Stage.EOM
    requires: tuple[str, ...] = ()

    def run(self, context: CheckContext) -> CheckResult:
        message = context.content
        if not context.session.authenticated:
            return CheckResult(NAME, Outcome.SKIPPED, reason="not an authenticated message", detail="anonymous")
        if not context.policy.signing.keys:
            # No keys at all: the admin has not set signing up yet (the shipped default).
            return CheckResult(NAME, Outcome.SKIPPED, reason="signing.keys is empty: not set up", detail="no-keys")
        written_by = message.author()
        if isinstance(written_by, BadFrom):
            return CheckResult(NAME, Outcome.SKIPPED, reason=f"not signed: {written_by.reason}", detail="bad-from")
        domain = signing_domain(context, written_by)
        if domain is None:
            return CheckResult(NAME, Outcome.SKIPPED, reason="From is not one of site.domains", detail="not-ours")
        keys = context.resources.keys.get(domain, [])
        problems = [problem for _, _, problem in keys if problem]
        usable = [(key, private) for key, private, _ in keys if private is not None]
        if not usable or problems:
            why = "; ".join(problems) or f"no key for {domain} in signing.keys"
            if context.policy.signing.on_missing_key == "accept":
                return CheckResult(NAME, Outcome.SKIPPED, reason=f"not signed: {why}", detail=f"no-key:{domain}")
            # Not an `error` for the on_error matrix: the site asked for signing, and
            # signing.on_missing_key is its answer for this case.
            return CheckResult(NAME, Outcome.SKIPPED, Disposition.TEMPFAIL, RETRY,
                               reason=f"cannot sign for {domain}: {why}", detail=f"no-key:{domain}")
        earlier = [action for result in context.results for action in result.actions]
        head = b"".join(name.encode("ascii", "replace") + b":" + value.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
                        + b"\r\n" for name, value in final_headers(message, earlier))
        body = message.body_bytes()
        actions = tuple(
            AddHeader("DKIM-Signature", sign.sign_parts(head + b"\r\n", body, domain, key.selector, private,
                                                        context.policy.signing.canonicalization))
            for key, private in usable)
        selectors = ",".join(key.selector for key, _ in usable)
        for key, _ in usable:
            metrics.signed(domain, key.selector)
        return CheckResult(NAME, Outcome.PASS, reason=f"signed d={domain} s={selectors}", detail=domain,
                           actions=actions)
