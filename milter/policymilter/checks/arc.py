"""arc: verify the ARC chain (RFC 8617) with dkimpy, at end of message.

ARC only reports; DMARC reads it: a DMARC failure of a message whose chain passes and whose
latest sealer is in `arc.trusted_sealers` (a mailing list, a forwarder) is overridden.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import authres
import authres.arc
import dkim as dkimpy

from policymilter.author import Author
from policymilter.checks.dkim import _QUIET, MAX_SIGNATURE_LENGTH, Hashing, KeyLookup
from policymilter.dns import DnsError
from policymilter.domains import normalize
from policymilter.message import Message
from policymilter.outcome import CheckResult, Findings, Outcome
from policymilter.pipeline import CheckContext, Stage

NAME = "arc"
MAX_AAR_LENGTH = 8192


@dataclass(frozen=True)
class Chain(Findings):
    result: str  # pass fail none temperror
    sealer: str  # d= of the most recent ARC-Seal ("" if none)
    reason: str = ""
    # What the latest sealer recorded in its ARC-Authentication-Results: DMARC passed there.
    sealer_saw_dmarc_pass: bool = False


def _sealer_saw_dmarc_pass(message: Message, instance: int) -> bool:
    """RFC 8617 §4.1.1: the AAR of instance i carries the sealer's own authentication results.

    It vouches for the author domain it evaluated (header.from): a pass for another domain (a
    From changed after sealing, where the seal did not cover it) vouches for nothing here."""
    written_by = message.author()
    if not isinstance(written_by, Author):
        return False
    for value in message.header_values("ARC-Authentication-Results"):
        tag, _, rest = value.partition(";")
        if tag.replace(" ", "").lower() != f"i={instance}":
            continue
        if len(rest) > MAX_AAR_LENGTH:
            return False  # a sealer's own results are short; a huge one is not worth parsing
        try:
            parsed = authres.AuthenticationResultsHeader.parse_value(rest.strip())
        except authres.AuthResError:
            return False
        return any(result.method == "dmarc" and result.result == "pass"
                   and written_by.domain in {normalize(str(p.value)) for p in result.properties
                                             if p.type == "header" and p.name == "from"}
                   for result in parsed.results)
    return False


class ArcVerifier(Hashing, dkimpy.ARC):
    """dkimpy's ARC chain validation, with each canonical form of the message made once."""


MAX_SETS = 50  # RFC 8617 §4.2.1: i= is 1..50
_ARC_HEADERS = ("arc-seal", "arc-message-signature", "arc-authentication-results")
_INSTANCE = re.compile(rb"(?:^|;)\s*i\s*=\s*([0-9]{1,9})\s*(?:;|$)")


def _structure_error(message: Message) -> str:
    """Why the chain fails before any signature is checked ("" if it may be verified).

    RFC 8617 §5.2 steps 1-3, done on the raw headers: every ARC header names its instance,
    there are at most 50 sets, and each set has exactly one header of each kind, numbered
    1..N without gaps. dkimpy verifies chains of any length (the cost grows with the square of
    it), and a validly sealed chain of 51 sets would pass: such a chain is "fail" (§5.2).
    """
    counts: dict[tuple[bytes, int], int] = {}
    for header in message.headers:
        name = header.name.lower()
        if name not in _ARC_HEADERS:
            continue
        if len(counts) > 3 * MAX_SETS:
            return f"more than {MAX_SETS} ARC sets (RFC 8617 §4.2.1)"
        if len(header.value) > MAX_SIGNATURE_LENGTH:
            return f"{header.name} over {MAX_SIGNATURE_LENGTH} bytes"
        found = _INSTANCE.search(b"".join(header.value.split()))
        if found is None:
            return f"{header.name} without a valid i= tag"
        instance = int(found.group(1))
        if not 1 <= instance <= MAX_SETS:
            return f"ARC instance i={instance} outside 1..{MAX_SETS} (RFC 8617 §4.2.1)"
        key = (name.encode(), instance)
        counts[key] = counts.get(key, 0) + 1
    instances = {instance for _, instance in counts}
    if any(count > 1 for count in counts.values()):
        return "an ARC set has a header twice"
    if instances != set(range(1, len(instances) + 1)) or len(counts) != 3 * len(instances):
        return "the ARC sets are incomplete or not numbered 1..N"
    return ""


def verify_chain(context: CheckContext) -> Chain:
    message = context.content
    if not any(h.name.lower() == "arc-seal" for h in message.headers):
        return Chain("none", "", "no ARC headers")
    broken = _structure_error(message)
    if broken:
        return Chain("fail", "", broken)
    resolver, budget = context.dns()
    try:
        verdict, sets, comment = ArcVerifier.of(message, logger=_QUIET, minkey=1024).verify(
            dnsfunc=KeyLookup(resolver, budget))
    except DnsError as error:
        return Chain("temperror", "", f"key lookup failed: {error}")
    except Exception as error:  # hostile ARC headers reach deep into dkimpy: a broken chain fails
        return Chain("fail", "", f"chain could not be verified ({type(error).__name__})")
    sealer = sets[0].get("as-domain", b"").decode("ascii", "replace").lower() if sets else ""
    result = {dkimpy.CV_Pass: "pass", dkimpy.CV_None: "none"}.get(verdict, "fail")
    saw_pass = result == "pass" and _sealer_saw_dmarc_pass(message, int(sets[0].get("instance", 0)))
    return Chain(result, sealer, str(comment), saw_pass)


class Arc:
    name = NAME
    stage = Stage.EOM
    requires: tuple[str, ...] = ()

    def run(self, context: CheckContext) -> CheckResult:
        chain = verify_chain(context)
        entry = authres.arc.ARCAuthenticationResult(result=chain.result,
                                                    smtp_remote_ip=context.session.client_ip)
        return CheckResult(NAME, Outcome(chain.result), reason=f"{chain.reason} (sealer {chain.sealer or '-'})",
                           detail=chain.sealer, authres=(entry,), findings=chain)
