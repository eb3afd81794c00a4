"""seal: add an ARC set (RFC 8617 §5.1) to mail this door accepts, after every other check, so
that receivers downstream of a forward (aliases, lists, users' forwards) can trust the results
we saw although SPF, and perhaps DKIM, no longer pass there.

The set covers the message as it leaves us: the final header list after the other checks'
changes, our own Authentication-Results header included. Its ARC-Authentication-Results is
`i=N; ` and our A-R value, verbatim. cv= is what the arc check found of the chain that came in:
- no chain: i=1, cv=none;
- a chain that verified: i=N+1, cv=pass;
- a broken chain: i=N+1 (N its highest instance), cv=fail, the seal covering our set alone
  (§5.1.2) — unless its latest seal says cv=fail already: a failed chain is not continued
  (§5.1, first step), and the message is not sealed;
- the arc check could not say (temperror, error, did not run): not sealed. cv=pass would claim
  what we did not verify, cv=fail would end a chain that may be valid.
Never past i=50 (§4.2.1). Never mail we refuse: a reject or tempfail ends the stage before
this check; a discard is not sealed either. Held mail (quarantine) is sealed: a seal adds
nothing anyone downstream sees unless the message is released, and then it leaves as checked.

The key is one of signing.keys (seal.domain and seal.selector name it), read once per policy
load; a key that cannot be used skips sealing with its reason (the mail still goes through:
the site asked for a seal, not for the mail to wait for one).
"""

from __future__ import annotations

import re

import dkim
from cryptography.hazmat.primitives.asymmetric import rsa

from policymilter import authresults, canonical, metrics
from policymilter.checks.arc import NAME as ARC
from policymilter.checks.arc import Chain as Verified
from policymilter.checks.signing import arcsign, final_headers, sign
from policymilter.outcome import AddHeader, CheckResult, Disposition, Outcome, decide
from policymilter.pipeline import CheckContext, Missing, Stage

NAME = "seal"
_CV = {"none": dkim.CV_None, "pass": dkim.CV_Pass, "fail": dkim.CV_Fail}
# RFC 5321 §4.5.3.1.6 / RFC 5322 §2.1.1: 998 characters a line. Postfix breaks longer lines when
# it sends the message on (smtp_line_length_limit), and a seal over the unbroken line then fails
# at the next hop: a set that cannot verify there is not added.
_LONG_LINE = re.compile(rb"[^\r\n]{999}")


def _skipped(reason: str, detail: str) -> CheckResult:
    return CheckResult(NAME, Outcome.SKIPPED, reason=f"not sealed: {reason}", detail=detail)


class Seal:
    name = NAME
    stage = Stage.EOM
    requires: tuple[str, ...] = (ARC,)

    def run(self, context: CheckContext) -> CheckResult:
        settings = context.policy.seal
        if not settings.set_up:
            return _skipped("seal.domain and seal.selector are empty: not set up", "no-key")
        if decide(context.results).disposition >= Disposition.DISCARD:
            return _skipped("the message is not delivered", "not-delivered")
        entries = context.resources.keys.get(settings.domain, [])
        found = next(((private, problem) for key, private, problem in entries if key.selector == settings.selector),
                     None)
        if found is None or not isinstance(found[0], rsa.RSAPrivateKey):
            why = found[1] if found is not None and found[1] else f"no RSA key {settings.selector} in signing.keys"
            return _skipped(f"key {settings.domain}/{settings.selector}: {why}", "key-problem")
        verified = context.findings(ARC, Verified)
        if isinstance(verified, Missing) or verified.result not in _CV:
            what = verified.value if isinstance(verified, Missing) else verified.result
            return _skipped(f"the incoming ARC chain is unknown (arc {what})", "arc-unknown")

        message = context.content
        authserv_id = context.policy.site.authserv_id
        ours = authresults.ours(context.session, context.results, authserv_id)
        if ours is None:
            return _skipped("no results to seal", "no-results")
        # As the conversation applies them: forged A-R headers removed, ours added, then the
        # other checks' changes (authresults.actions, then the verdict's actions).
        earlier = [action for result in context.results for action in result.actions]
        headers = final_headers(message, [*authresults.forged(message, authserv_id), ours, *earlier])
        head = b"".join(name.encode("ascii", "replace") + b":" + value.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
                        + b"\r\n" for name, value in headers) + b"\r\n"
        received = message.split()
        if _LONG_LINE.search(head) or _LONG_LINE.search(received.body):
            return _skipped("a line is over 998 characters (RFC 5322 §2.1.1): relays break it, and a seal over it "
                            "would not verify at the next hop", "long-line")
        try:
            # The body is the one received (checks change headers only): its digests are shared.
            split = canonical.Split(canonical.split(head, b"").headers, received.body, received.bodies,
                                    received.digests)
            chain = arcsign.chain(split)
        except (dkim.DKIMException, IndexError, ValueError) as error:
            return _skipped(f"the header block cannot be sealed ({type(error).__name__})", "unparsable")
        instance = chain.instance + 1
        cv = verified.result
        if cv == "fail" and chain.latest_cv == "fail":
            return _skipped(f"the chain failed at i={chain.instance} already (RFC 8617 §5.1)", "chain-failed")
        if instance > arcsign.MAX_INSTANCE:
            return _skipped(f"the chain has {chain.instance} sets, the most there may be (RFC 8617 §4.2.1)", "limit")
        if (instance == 1) != (cv == "none"):
            # e.g. stray ARC headers without an ARC-Seal (arc found "none"), or a "fail" whose
            # headers name no instance: no set would be valid
            return _skipped(f"arc found {cv}, but the next instance is {instance}", "inconsistent")
        try:
            lines = arcsign.arc_set(split, settings.domain.encode(), settings.selector.encode(), found[0],
                                    ours.value.replace("\n", "\r\n").encode("ascii"), _CV[cv],
                                    sign.signed_headers(head))
        except (dkim.DKIMException, ValueError) as error:
            return _skipped(f"sealing failed: {error}", "failed")
        detail = f"i{instance}:{cv}"
        if settings.mode == "report":
            return CheckResult(NAME, Outcome.SKIPPED, reason=f"report mode: would seal i={instance} cv={cv}",
                               detail=f"report:{detail}")
        metrics.sealed(cv)
        # Each inserted at the top: the seal ends up first, then the AMS, then the AAR.
        actions = tuple(AddHeader(line.split(b":", 1)[0].decode("ascii"), arcsign.value(line), first=True)
                        for line in reversed(lines))
        return CheckResult(NAME, Outcome.SEALED, reason=f"sealed i={instance} cv={cv} d={settings.domain} "
                           f"s={settings.selector}", detail=detail, actions=actions)
