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
from policymilter.outcome import CheckResult, Outcome
from policymilter.pipeline import CheckContext, Stage

NAME = "arc"


@dataclass(frozen=True)
class Chain:
    result: str  # pass fail none temperror
    sealer: str  # d= of the most recent ARC-Seal ("" if none)
    reason: str = ""


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
    except dkimpy.DKIMException as error:
        return Chain("fail", "", str(error))
    sealer = sets[0].get("as-domain", b"").decode("ascii", "replace").lower() if sets else ""
    result = {dkimpy.CV_Pass: "pass", dkimpy.CV_None: "none"}.get(verdict, "fail")
    return Chain(result, sealer, str(comment))


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
