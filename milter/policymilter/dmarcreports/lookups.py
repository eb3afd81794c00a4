"""The DNS one `dmarc-reports send` run asks for external destinations (destinations.py), bounded.

A destination host whose authorising lookup got no answer makes every later report to a host of
the same Organizational Domain wait without asking again in that run: a nameserver that never
answers (or a wildcard zone of such hosts) costs one dns.lifetime per run, not one per report.
Past the run's deadline (dmarc_reports.max_run_seconds) nothing is asked at all: the report waits.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from policymilter.dns import Budget, DnsError
from policymilter.domains import organizational_domain

AUTHORISING = "._report._dmarc."  # destinations.authorising_name: <report-domain>._report._dmarc.<host>


class TxtLookup(Protocol):
    """What destinations.decide asks of DNS (policymilter.dns.Resolver, or RunLookups)."""

    def budget(self) -> Budget: ...

    def txt(self, name: str, budget: Budget | None = None) -> list[str]: ...


class RunLookups:
    """`resolver` for one run: failures remembered per Organizational Domain of the host asked."""

    def __init__(self, resolver: TxtLookup, over: Callable[[], bool]) -> None:
        self.resolver = resolver
        self.over = over  # True once the run's deadline has passed
        self.failed: dict[str, str] = {}  # organizational domain -> the error its lookup got
        self.asked = 0

    def budget(self) -> Budget:
        return self.resolver.budget()

    def txt(self, name: str, budget: Budget | None = None) -> list[str]:
        host = name.rpartition(AUTHORISING)[2] or name
        organisation = organizational_domain(host)
        if organisation in self.failed:
            raise DnsError(f"{self.failed[organisation]}; not asked again this run")
        if self.over():
            raise DnsError("the run's time is up (dmarc_reports.max_run_seconds): not asked")
        self.asked += 1
        try:
            return self.resolver.txt(name, budget)
        except DnsError as error:
            self.failed[organisation] = f"{error} (hosts under {organisation})"
            raise
