"""`--resolve`: each source IP's PTR name (RFC 1035 §3.5), looked up once, within bounds.

Aggregate reports carry no host names (neither RFC 7489 nor RFC 9990 has one), so a name comes
from DNS: through the project's `dns.Resolver` (per-query timeout; its breaker stops asking
servers that do not answer at all), several lookups at a time, and the whole resolution within
`deadline` seconds: what is not answered by then is shown "(lookup skipped)". Never forever.
"""

from __future__ import annotations

import concurrent.futures
import ipaddress
from collections.abc import Iterable

import dns.reversename
from dns.rdtypes.ANY.PTR import PTR

from policymilter.dns import DnsError, Resolver
from policymilter.safetext import for_log

NO_PTR = "(no PTR)"
FAILED = "(lookup failed)"
SKIPPED = "(lookup skipped)"
_PARALLEL = 8


def ptr_names(resolver: Resolver, addresses: Iterable[str], deadline: float) -> dict[str, str]:
    """address -> its first PTR name (no trailing dot), NO_PTR, FAILED or SKIPPED."""
    unique = list(dict.fromkeys(addresses))
    names = dict.fromkeys(unique, SKIPPED)
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=_PARALLEL, thread_name_prefix="ptr")
    try:
        futures = {pool.submit(_ptr, resolver, address): address for address in unique}
        done, _ = concurrent.futures.wait(futures, timeout=deadline)
        for future in done:
            names[futures[future]] = future.result()
    finally:
        # Lookups still running end within the resolver's timeout; nothing waits for them.
        pool.shutdown(wait=False, cancel_futures=True)
    return names


def _ptr(resolver: Resolver, address: str) -> str:
    name = dns.reversename.from_address(str(ipaddress.ip_address(address))).to_text()
    try:
        records = resolver.query(name, "PTR")
    except DnsError:
        return FAILED
    targets = sorted(record.target.to_text(omit_final_dot=True) for record in records if isinstance(record, PTR))
    return for_log(targets[0], 120) if targets else NO_PTR
