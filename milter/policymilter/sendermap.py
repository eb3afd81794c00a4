"""Which addresses each login owns: the policy's patterns plus a map file (reloaded with the policy).

Map file, one login per line, `#` comments:

    alice   alice.smith@example.org, postmaster@example.org
    bob:    bob@example.net  @bobs-shop.example     # "@domain": every address of that domain
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from policymilter.policy.load import PolicyIssue
from policymilter.policy.model import Policy

_LOGIN = re.compile(r"^[^\s:#]+$")
_ADDRESS = re.compile(r"^([^@\s,]+)?@[A-Za-z0-9.-]+\.[A-Za-z0-9-]+$")


@dataclass(frozen=True)
class SenderMap:
    """login -> owned addresses ("user@domain") and whole domains ("@domain"), lower case."""

    entries: dict[str, frozenset[str]] = field(default_factory=dict)
    source: str = ""

    def owned_by(self, login: str) -> frozenset[str]:
        return self.entries.get(login.lower(), frozenset())


def parse(text: str, source: str) -> tuple[SenderMap, list[PolicyIssue]]:
    entries: dict[str, set[str]] = {}
    issues = []
    for number, line in enumerate(text.splitlines(), start=1):
        content = line.split("#", 1)[0].strip()
        if not content:
            continue
        # "login addr", "login: addr", "login<TAB>addr" (Postfix-style maps use tabs)
        parts = re.split(r"\s*:\s*|\s+", content, maxsplit=1)
        login, rest = parts[0], parts[1] if len(parts) > 1 else ""
        addresses = [a for a in re.split(r"[\s,]+", rest.strip()) if a]
        if not _LOGIN.match(login) or not addresses:
            issues.append(PolicyIssue(source, number, "(sender map)", "expected: LOGIN ADDRESS[, ADDRESS...]"))
            continue
        bad = [a for a in addresses if not _ADDRESS.match(a)]
        if bad:
            issues.append(PolicyIssue(source, number, "(sender map)",
                                      f"{', '.join(bad)}: not an address (user@domain) or a domain (@domain)"))
            continue
        entries.setdefault(login.lower(), set()).update(a.lower() for a in addresses)
    return SenderMap({login: frozenset(owned) for login, owned in entries.items()}, source), issues


def load(policy: Policy) -> tuple[SenderMap, list[PolicyIssue]]:
    path = policy.sender.map_file
    if not path:
        return SenderMap(), []
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        return SenderMap(source=path), [PolicyIssue(path, None, "sender.map_file", f"cannot read: {error}")]
    return parse(text, path)


def owns(policy: Policy, senders: SenderMap, login: str, address: str) -> bool:
    """Does `login` own `address`: a policy pattern for a site domain, or the map file?"""
    address = address.lower()
    local, _, domain = address.rpartition("@")
    if not local or not domain:
        return False
    login = login.lower()
    for site_domain in policy.site.domains:
        for pattern in policy.sender.patterns:
            if address == pattern.format(login=login, domain=site_domain).lower():
                return True
    owned = senders.owned_by(login)
    return address in owned or f"@{domain}" in owned
