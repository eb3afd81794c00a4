"""An in-memory zone behind the project's Resolver: fast unit tests and CPU benchmarks.

`ZoneResolver` is a real `policymilter.dns.Resolver` (budgets, pyspf routing, DnsError
semantics) whose network lookup is replaced by a dict: what it answers is exactly what an
authoritative server holding these records would answer. Names in `failing` get no answer
(a timeout: DnsError); everything else that is not listed is NXDOMAIN.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import dns.rdata
import dns.rdataclass
import dns.rdatatype

from policymilter.dns import Budget, DnsError, Resolver


def _txt_rdata(value: str) -> dns.rdata.Rdata:
    chunks = [value[i:i + 255] for i in range(0, len(value), 255)] or [""]
    text = " ".join('"' + chunk.replace("\\", "\\\\").replace('"', '\\"') + '"' for chunk in chunks)
    return dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.TXT, text)


class ZoneResolver(Resolver):
    def __init__(self, records: Mapping[str, Mapping[str, Sequence[str]]] | None = None,
                 failing: Iterable[str] = (), timeout: float = 5.0, lifetime: float = 20.0) -> None:
        super().__init__(("127.0.0.1:1",), timeout, lifetime)  # never contacted
        self.records: dict[tuple[str, str], list[dns.rdata.Rdata]] = {}
        self.failing = set(failing)
        self.queries: list[str] = []
        for name, by_type in (records or {}).items():
            for rdtype, values in by_type.items():
                self.add(name, rdtype, *values)

    def add(self, name: str, rdtype: str, *values: str) -> ZoneResolver:
        key = (name.lower().rstrip("."), rdtype.upper())
        parsed = [_txt_rdata(v) if rdtype.upper() == "TXT" else
                  dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.from_text(rdtype), v) for v in values]
        self.records.setdefault(key, []).extend(parsed)
        return self

    def txt_record(self, name: str, value: str) -> ZoneResolver:
        return self.add(name, "TXT", value)

    def query(self, name: str, rdtype: str, budget: Budget | None = None) -> list[dns.rdata.Rdata]:
        self._lifetime(budget)  # a spent budget fails here as it would with a server
        key = (name.lower().rstrip("."), rdtype.upper())
        self.queries.append(f"{key[0]}/{key[1]}")
        if key[0] in self.failing:
            raise DnsError(f"{name}/{rdtype}: timed out")
        return list(self.records.get(key, []))
