"""The longest each stage of a transaction may take, by the policy, against Postfix's timeouts.

Every check that waits has its own budget: SPF, DKIM, ARC and DMARC `dns.lifetime` each (the
pipeline starts one per check), clamd `antivirus.timeout`, spamd `spam.timeout` (one deadline
per scan across all servers, a turn among the scans in flight included); at end of message a
message may first wait `site.queue_timeout` for its turn (admission.py). A stage's worst case
is the sum of these waits.
Postfix gives the milter `milter_command_timeout` for MAIL FROM and `milter_content_timeout`
for the end of message; a policy whose worst case does not fit would let Postfix give up
first and apply milter_default_action to mail the milter was still checking.
"""

from __future__ import annotations

from dataclasses import dataclass

from policymilter.policy.model import STRICTEST, CheckName, Listener, Policy

# What the milter needs besides the waiting: CPU for the checks, the reply's round trip.
MARGIN = 2.0

# The stage each listable check runs at (sender runs at both; it never waits; ratelimit waits
# for its store at each RCPT, twice: the lock and the reservation, see rcpt_time; and once at
# end of message).
MAIL_CHECKS = frozenset({CheckName.SPF})
RCPT_CHECKS = frozenset({CheckName.RATELIMIT})


@dataclass(frozen=True)
class StageTime:
    stage: str  # "mail" or "eom"
    limit_key: str  # the [postfix] key that bounds it
    limit: float
    parts: tuple[tuple[str, float], ...]  # (check, seconds it may wait)

    @property
    def total(self) -> float:
        return sum(seconds for _, seconds in self.parts)

    @property
    def fits(self) -> bool:
        return self.total + MARGIN <= self.limit

    def explain(self) -> str:
        listed = " + ".join(f"{check} {seconds:g}" for check, seconds in self.parts)
        return f"{self.total:g} s ({listed})"


def waits(policy: Policy, check: CheckName) -> float:
    """The longest `check` may wait for the network (0 for checks that never do)."""
    match check:
        case CheckName.DMARC if policy.dmarc_reports.record:
            return policy.dns.lifetime + policy.state.timeout  # then its report row: one store write
        case CheckName.SPF | CheckName.DKIM | CheckName.ARC | CheckName.DMARC:
            return policy.dns.lifetime
        case CheckName.ANTIVIRUS:
            return policy.antivirus.timeout
        case CheckName.SPAM:
            return policy.spam.timeout
        case CheckName.RATELIMIT:
            return policy.state.timeout
        case _:
            return 0.0


def stage_times(policy: Policy, listener: Listener, authenticated: bool) -> tuple[StageTime, StageTime]:
    """The worst case at MAIL FROM and at end of message for one listener and traffic class."""
    running = [check for check in listener.traffic(authenticated).checks
               if (table := policy.check_table(check)) is None or table.enabled]
    mail = tuple((str(c), waits(policy, c)) for c in running if c in MAIL_CHECKS and waits(policy, c))
    eom = (("queue", policy.site.queue_timeout),
           *((str(c), waits(policy, c)) for c in running if c not in MAIL_CHECKS and waits(policy, c)))
    return (StageTime("mail", "milter_command_timeout", policy.postfix.milter_command_timeout, mail),
            StageTime("eom", "milter_content_timeout", policy.postfix.milter_content_timeout, eom))


def rcpt_time(policy: Policy, listener: Listener, authenticated: bool) -> StageTime:
    """The worst case of one RCPT: the rate limits' lock read and reservation."""
    running = [check for check in listener.traffic(authenticated).checks
               if check in RCPT_CHECKS and ((table := policy.check_table(check)) is None or table.enabled)]
    parts = tuple(part for check in running for part in ((f"{check} lock", waits(policy, check)),
                                                         (f"{check} reservation", waits(policy, check))))
    return StageTime("rcpt", "milter_command_timeout", policy.postfix.milter_command_timeout, parts)


def too_slow(policy: Policy) -> list[tuple[tuple[str | int, ...], str]]:
    """(key path, message) for every listener and traffic class whose worst case does not fit."""
    problems: list[tuple[tuple[str | int, ...], str]] = []
    doors = [*((("listeners", name), name, listener) for name, listener in policy.listeners.items()),
             ((), "unknown (the strictest profile, for sessions no listener matches)", STRICTEST)]
    for path, name, listener in doors:
        for authenticated, traffic in ((False, "unauthenticated"), (True, "authenticated")):
            for time in (*stage_times(policy, listener, authenticated), rcpt_time(policy, listener, authenticated)):
                if time.fits:
                    continue
                where = {"mail": "at MAIL FROM", "rcpt": "at each RCPT"}.get(time.stage, "at end of message")
                problems.append(((*path, traffic, "checks") if path else ("postfix", time.limit_key),
                                 f"listener {name}, {traffic} mail: {where} the milter may wait up to "
                                 f"{time.explain()}; with {MARGIN:g} s for the milter's own work that is more "
                                 f"than postfix.{time.limit_key} ({time.limit:g} s) allows: lower those timeouts, "
                                 f"or raise {time.limit_key} in Postfix's main.cf and in [postfix] here"))
    return problems
