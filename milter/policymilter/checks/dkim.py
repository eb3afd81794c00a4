"""dkim: verify every DKIM-Signature (up to `dkim.max_signatures`) with dkimpy, at end of message.

The message is rebuilt exactly as Postfix holds it (header bytes with their original white
space and folding, CRLF line ends): DKIM fails on any byte that differs from what the signer
hashed. A result never refuses mail by itself; DMARC decides.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

import authres
import dkim as dkimpy

from policymilter.dmarc_policy import organizational_domain
from policymilter.dns import Budget, DnsError, Resolver
from policymilter.message import Message
from policymilter.outcome import CheckResult, Outcome
from policymilter.pipeline import CheckContext, Stage

NAME = "dkim"
SIGNATURE = "dkim-signature"
_QUIET = logging.getLogger("policymilter.dkimpy")  # dkimpy logs every bad signature at ERROR
_QUIET.addHandler(logging.NullHandler())
_QUIET.propagate = False


@dataclass(frozen=True)
class Signature:
    """One signature's result, with RFC 8601 properties (header.d, header.s, header.b)."""

    domain: str
    selector: str
    result: str  # pass fail neutral temperror permerror
    b: str = ""
    reason: str = ""


_SAFE = re.compile(r"^[A-Za-z0-9._-]{1,253}$", re.ASCII)


class KeyLookup:
    """dkimpy's TXT lookup hook, on the policy's resolver within the message's budget.

    It remembers whether the last key existed and parsed: dkimpy reports a missing or broken
    key as a plain verification failure, but RFC 8601 §2.7.1 makes it a permerror.
    """

    def __init__(self, resolver: Resolver, budget: Budget | None) -> None:
        self.resolver, self.budget = resolver, budget
        self.key_error = ""

    def __call__(self, name: bytes | str, timeout: float = 5) -> bytes | None:
        text = name.decode("ascii", "replace") if isinstance(name, bytes) else name
        records = self.resolver.txt(text.rstrip("."), self.budget)  # DnsError propagates: temperror
        record = records[0].encode() if records else None
        self.key_error = ""
        try:
            dkimpy.evaluate_pk(text, record)
        except dkimpy.DKIMException as error:
            self.key_error = str(error) or "unusable key record"
        return record


def _tag(signature: bytes, tag: bytes) -> str:
    for part in signature.split(b";"):
        key, _, value = part.strip().partition(b"=")
        if key.strip() == tag:
            return b"".join(value.split()).decode("ascii", "replace")
    return ""


def _classify(error: Exception) -> tuple[str, str]:
    """(result, reason) for an exception dkimpy (or a crypto library under it) raised."""
    if isinstance(error, (dkimpy.KeyFormatError, dkimpy.UnknownKeyTypeError)):
        return "permerror", "key record missing or malformed"  # RFC 8601 §2.7.1
    if isinstance(error, dkimpy.ValidationError) and "body hash mismatch" in str(error):
        return "fail", "body hash mismatch (message changed after signing)"
    return "neutral", "signature could not be processed"


def verify_one(raw: bytes, index: int, lookup: KeyLookup, timeout: float) -> tuple[str, str]:
    try:
        verifier = dkimpy.DKIM(raw, logger=_QUIET, minkey=1024, timeout=timeout)
        ok = verifier.verify(idx=index, dnsfunc=lookup)
    except DnsError:
        return "temperror", "key lookup failed"
    except Exception as error:  # hostile signatures reach deep into dkimpy, nacl and base64
        return _classify(error)
    if ok:
        return "pass", ""
    if lookup.key_error:
        return "permerror", "key record missing or malformed"
    return "fail", "signature did not verify"


def verify(message: Message, resolver: Resolver, budget: Budget | None, limit: int) -> list[Signature]:
    """Verify up to `limit` signatures, those aligned with the From domain first (DMARC needs
    them; a message may carry many unrelated forwarder signatures)."""
    raw = message.raw_bytes()
    authors = {organizational_domain(domain) for domain in message.from_domains()}
    values = [(index, h.value) for index, h in enumerate(h for h in message.headers if h.name.lower() == SIGNATURE)]
    values.sort(key=lambda item: organizational_domain(_tag(item[1], b"d").lower() or "-") not in authors)
    lookup = KeyLookup(resolver, budget)
    results = []
    for index, value in values[:limit]:
        domain, selector, b = _tag(value, b"d").lower(), _tag(value, b"s"), _tag(value, b"b")[:8]
        result, reason = verify_one(raw, index, lookup, resolver.timeout)
        results.append(Signature(domain, selector, result, b, reason))
    return results


def _overall(signatures: list[Signature]) -> Outcome:
    for wanted in ("pass", "fail", "temperror", "permerror", "neutral"):
        if any(s.result == wanted for s in signatures):
            return Outcome(wanted)
    return Outcome.NONE


def _safe(value: str) -> str | None:
    """Only values that need no quoting go into our header (a signature is attacker text)."""
    return value if _SAFE.match(value) else None


def _entry(signature: Signature) -> object:
    b = signature.b if re.fullmatch(r"[A-Za-z0-9+/]{1,8}", signature.b, re.ASCII) else ""
    properties = [authres.AuthenticationResultProperty("header", "b", b)] if b else []
    return authres.DKIMAuthenticationResult(result=signature.result, header_d=_safe(signature.domain),
                                            header_s=_safe(signature.selector), properties=properties,
                                            reason=signature.reason or None)


class Dkim:
    name = NAME
    stage = Stage.EOM

    def run(self, context: CheckContext) -> CheckResult:
        if context.message is None:
            return CheckResult(NAME, Outcome.NONE, reason="no message")
        resolver, budget = context.dns()
        signatures = verify(context.message, resolver, budget, context.policy.dkim.max_signatures)
        if not signatures:
            return CheckResult(NAME, Outcome.NONE, reason="no DKIM-Signature",
                               authres=(authres.DKIMAuthenticationResult(result="none"),), facts=())
        outcome = _overall(signatures)
        passed = [s.domain for s in signatures if s.result == "pass"]
        reason = "; ".join(f"d={s.domain} s={s.selector}: {s.result}" for s in signatures)
        return CheckResult(NAME, outcome, reason=reason, detail=passed[0] if passed else "",
                           authres=tuple(_entry(s) for s in signatures), facts=tuple(signatures))
