"""The checks, in pipeline order, and what each needs from the others.

Each check is one word (its module, policy table, log key and tests) and declares `requires`:
the checks whose findings it reads. The order below puts every requirement first (refused at
import otherwise), and `requirement_issues` refuses a policy whose listener runs a check
without what it requires, or disables a required check — the daemon would otherwise read
"did not run" as "found nothing" (DMARC without DKIM refusing DKIM-signed mail).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from policymilter.checks.antivirus import Antivirus
from policymilter.checks.arc import Arc
from policymilter.checks.attachments import Attachments
from policymilter.checks.dkim import Dkim
from policymilter.checks.dmarc import Dmarc
from policymilter.checks.origin import Origin
from policymilter.checks.ratelimit import RatelimitEom, RatelimitRcpt
from policymilter.checks.seal import Seal
from policymilter.checks.sender import SenderEnvelope, SenderFrom
from policymilter.checks.signing import Signing
from policymilter.checks.sizelimit import SizeDeclared, SizeReceived
from policymilter.checks.spam import Spam
from policymilter.checks.spf import Spf
from policymilter.pipeline import Check, Pipeline
from policymilter.policy.model import STRICTEST, CheckName, Listener, Policy

# The listable checks, cheap before expensive; a stage runs those of its stage in this order.
# ratelimit counts last at end of message: only what every other check accepted is counted;
# seal comes after it: it seals the message as it leaves, and adds no result to our A-R header.
REGISTRY: tuple[Check, ...] = (SenderEnvelope(), RatelimitRcpt(), Spf(), SenderFrom(), Attachments(),
                               Antivirus(), Spam(), Dkim(), Arc(), Dmarc(), Signing(), RatelimitEom(), Seal())
# Run on every listener, whatever it lists.
ALWAYS: tuple[Check, ...] = (Origin(), SizeDeclared(), SizeReceived())


def _ordered(checks: Sequence[Check]) -> None:
    seen: set[str] = set()
    for check in checks:
        missing = [name for name in check.requires if name not in seen]
        if missing:
            raise RuntimeError(f"check {check.name} requires {missing}, which must come before it in REGISTRY")
        seen.add(check.name)


_ordered(REGISTRY)


def requires(name: str) -> tuple[str, ...]:
    """What the check named `name` requires (all its stages together)."""
    return tuple(dict.fromkeys(r for check in REGISTRY if check.name == name for r in check.requires))


def build_pipeline() -> Pipeline:
    return Pipeline(REGISTRY, ALWAYS)


def requirement_issues(policy: Policy) -> list[tuple[tuple[str | int, ...], str]]:
    """(key path, message) for every listener and traffic class that runs a check without a
    check it requires, or whose required check is disabled."""
    doors: list[tuple[tuple[str | int, ...], str, Listener]] = [
        *((("listeners", name), f"listeners.{name}", listener) for name, listener in policy.listeners.items()),
        ((), "the strictest profile (sessions no listener matches)", STRICTEST),
    ]
    return [issue for path, where, listener in doors for issue in _class_issues(policy, path, where, listener)]


def _class_issues(policy: Policy, path: tuple[str | int, ...], where: str,
                  listener: Listener) -> Iterator[tuple[tuple[str | int, ...], str]]:
    for traffic in ("unauthenticated", "authenticated"):
        listed = [str(check) for check in listener.traffic(traffic == "authenticated").checks]
        for check in listed:
            table = policy.check_table(check)
            if table is not None and (not table.enabled or not table.set_up):
                continue  # a disabled check needs nothing, nor one not set up (seal without a key)
            for needed in requires(check):
                if needed not in listed:
                    yield ((*path, traffic, "checks") if path else (check, "enabled"),
                           f"{where}, {traffic} mail: {check} reads what {needed} found, but {needed} is not in "
                           f"this list: add \"{needed}\" (or remove \"{check}\")")
                elif (needed_table := policy.check_table(needed)) is not None and not needed_table.enabled:
                    yield ((needed, "enabled"),
                           f"{needed} is disabled, but {where} runs {check} for {traffic} mail, which reads what "
                           f"{needed} found: enable {needed}, or disable {check} too")
        if CheckName.DMARC in listed and CheckName.ARC not in listed and policy.arc.trusted_sealers \
                and policy.dmarc.enabled:
            yield ((*path, traffic, "checks") if path else ("arc", "trusted_sealers"),
                   f"{where}, {traffic} mail: arc.trusted_sealers is set, but this list runs dmarc without arc, so "
                   "no sealer's override could apply: add \"arc\"")
