"""arc: verify the ARC chain (RFC 8617) with dkimpy, at end of message.

ARC only reports; DMARC reads it: a DMARC failure of a message whose chain passes and whose
latest sealer is in `arc.trusted_sealers` (a mailing list, a forwarder) is overridden.
"""

from __future__ import annotations

from dataclasses import dataclass

import authres
import authres.arc
import dkim as dkimpy

from policymilter.checks.dkim import _QUIET, KeyLookup
from policymilter.dns import DnsError
from policymilter.message import Message
from policymilter.outcome import CheckResult, Outcome
from policymilter.pipeline import CheckContext, Stage

NAME = "arc"


@dataclass(frozen=True)
class Chain:
    result: str  # pass fail none temperror
    sealer: str  # d= of the most recent ARC-Seal ("" if none)
    reason: str = ""
    # What the latest sealer recorded in its ARC-Authentication-Results: DMARC passed there.
    sealer_saw_dmarc_pass: bool = False


def _sealer_saw_dmarc_pass(message: Message, instance: int) -> bool:
    """RFC 8617 §4.1.1: the AAR of instance i carries the sealer's own authentication results."""
    for value in message.header_values("ARC-Authentication-Results"):
        tag, _, rest = value.partition(";")
        if tag.replace(" ", "").lower() != f"i={instance}":
            continue
        try:
            parsed = authres.AuthenticationResultsHeader.parse_value(rest.strip())
        except authres.AuthResError:
            return False
        return any(result.method == "dmarc" and result.result == "pass" for result in parsed.results)
    return False


def verify_chain(context: CheckContext) -> Chain:
    assert context.message is not None
    if not any(h.name.lower() == "arc-seal" for h in context.message.headers):
        return Chain("none", "", "no ARC headers")
    resolver, budget = context.dns()
    try:
        verdict, sets, comment = dkimpy.ARC(context.message.raw_bytes(), logger=_QUIET, minkey=1024).verify(
            dnsfunc=KeyLookup(resolver, budget))
    except DnsError as error:
        return Chain("temperror", "", f"key lookup failed: {error}")
    except Exception as error:  # hostile ARC headers reach deep into dkimpy: a broken chain fails
        return Chain("fail", "", f"chain could not be verified ({type(error).__name__})")
    sealer = sets[0].get("as-domain", b"").decode("ascii", "replace").lower() if sets else ""
    result = {dkimpy.CV_Pass: "pass", dkimpy.CV_None: "none"}.get(verdict, "fail")
    saw_pass = result == "pass" and _sealer_saw_dmarc_pass(context.message, int(sets[0].get("instance", 0)))
    return Chain(result, sealer, str(comment), saw_pass)


class Arc:
    name = NAME
    stage = Stage.EOM

    def run(self, context: CheckContext) -> CheckResult:
        if context.message is None:
            return CheckResult(NAME, Outcome.NONE, reason="no message")
        chain = verify_chain(context)
        entry = authres.arc.ARCAuthenticationResult(result=chain.result,
                                                    smtp_remote_ip=context.session.client_ip)
        return CheckResult(NAME, Outcome(chain.result), reason=f"{chain.reason} (sealer {chain.sealer or '-'})",
                           detail=chain.sealer, authres=(entry,), facts=chain)
