"""dkim: verify every DKIM-Signature (up to `dkim.max_signatures`) with dkimpy, at end of message.

The message is rebuilt exactly as Postfix holds it (header bytes with their original white
space and folding, CRLF line ends): DKIM fails on any byte that differs from what the signer
hashed. A result never refuses mail by itself; DMARC decides.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import authres
import dkim as dkimpy

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


class KeyLookup:
    """dkimpy's TXT lookup hook, on the policy's resolver within the message's budget.

    It remembers whether the last key existed: dkimpy reports a missing key as a plain
    verification failure, but RFC 6376 §6.1.2 makes it a permanent error, not a bad signature.
    """

    def __init__(self, resolver: Resolver, budget: Budget | None) -> None:
        self.resolver, self.budget = resolver, budget
        self.found = True

    def __call__(self, name: bytes | str, timeout: float = 5) -> bytes | None:
        text = name.decode("ascii", "replace") if isinstance(name, bytes) else name
        records = self.resolver.txt(text.rstrip("."), self.budget)  # DnsError propagates: temperror
        self.found = bool(records)
        return records[0].encode() if records else None


def _tag(signature: bytes, tag: bytes) -> str:
    for part in signature.split(b";"):
        key, _, value = part.strip().partition(b"=")
        if key.strip() == tag:
            return b"".join(value.split()).decode("ascii", "replace")
    return ""


def verify(message: Message, resolver: Resolver, budget: Budget | None, limit: int) -> list[Signature]:
    raw = message.raw_bytes()
    values = [h.value for h in message.headers if h.name.lower() == SIGNATURE]
    results = []
    lookup = KeyLookup(resolver, budget)
    for index, value in enumerate(values[:limit]):
        domain, selector, b = _tag(value, b"d").lower(), _tag(value, b"s"), _tag(value, b"b")[:8]
        verifier = dkimpy.DKIM(raw, logger=_QUIET, minkey=1024, timeout=resolver.timeout)
        try:
            ok = verifier.verify(idx=index, dnsfunc=lookup)
        except DnsError as error:
            results.append(Signature(domain, selector, "temperror", b, f"key lookup failed: {error}"))
            continue
        except (dkimpy.KeyFormatError, dkimpy.UnknownKeyTypeError) as error:
            # RFC 8601 §2.7.1: permerror, the key record is missing or malformed
            results.append(Signature(domain, selector, "permerror", b, f"bad or missing key: {error}"))
            continue
        except dkimpy.ValidationError as error:
            # dkimpy raises this both for a changed body and for a malformed signature: the
            # first is a verification failure (fail), the second could not be processed (neutral).
            result = "fail" if "body hash mismatch" in str(error) else "neutral"
            results.append(Signature(domain, selector, result, b, str(error).split(" (got", 1)[0]))
            continue
        except dkimpy.DKIMException as error:
            results.append(Signature(domain, selector, "neutral", b, f"signature not usable: {error}"))
            continue
        if not ok and not lookup.found:
            results.append(Signature(domain, selector, "permerror", b, f"no key at {selector}._domainkey.{domain}"))
            continue
        reason = "" if ok else "signature did not verify (message or key changed?)"
        results.append(Signature(domain, selector, "pass" if ok else "fail", b, reason))
    return results


def _overall(signatures: list[Signature]) -> Outcome:
    for wanted in ("pass", "fail", "temperror", "permerror", "neutral"):
        if any(s.result == wanted for s in signatures):
            return Outcome(wanted)
    return Outcome.NONE


def _entry(signature: Signature) -> object:
    properties = [authres.AuthenticationResultProperty("header", "b", signature.b)] if signature.b else []
    return authres.DKIMAuthenticationResult(result=signature.result, header_d=signature.domain,
                                            header_s=signature.selector, properties=properties,
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
