"""The DNS world of the sender-authentication tests: domains with every SPF, DKIM and DMARC shape."""

from __future__ import annotations

from tests import authkit
from tests.integration.dns_server import Zone

AUTHSERV_ID = "mx.example.test"
CLIENT = "127.0.0.1"
KEYS = {
    "rsa": authkit.rsa_key("pass.test", "rsa"),
    "ed": authkit.ed25519_key("pass.test", "ed"),
    "list": authkit.rsa_key("list.test", "arc"),
    "site": authkit.rsa_key("example.org", "s1"),
}


def zones() -> list[Zone]:
    def spf(origin: str, record: str | None, dmarc: str | None = None) -> Zone:
        zone = Zone(origin).add("@", "A", "127.0.0.1")
        if record is not None:
            zone.txt("@", record)
        if dmarc is not None:
            zone.txt("_dmarc", dmarc)
        return zone

    passing = spf("pass.test", "v=spf1 ip4:127.0.0.1 -all", "v=DMARC1; p=reject")
    for key in (KEYS["rsa"], KEYS["ed"]):
        passing.txt(key.owner, key.record)
    perm = spf("perm.test", "v=spf1 ip4:127.0.0.1 -all").txt("@", "v=spf1 -all")
    return [
        passing,
        spf("fail.test", "v=spf1 ip4:192.0.2.1 -all", "v=DMARC1; p=reject"),
        spf("soft.test", "v=spf1 ~all", "v=DMARC1; p=none"),
        spf("neutral.test", "v=spf1 ?all"),
        spf("none.test", None),
        perm,
        spf("quarantine.test", "v=spf1 -all", "v=DMARC1; p=quarantine"),
        spf("example.org", "v=spf1 ip4:192.0.2.10 -all", "v=DMARC1; p=none").txt(KEYS["site"].owner,
                                                                                 KEYS["site"].record),
        spf("list.test", "v=spf1 ip4:127.0.0.1 -all").txt(KEYS["list"].owner, KEYS["list"].record),
        spf("slow.test", "v=spf1 ip4:127.0.0.1 -all", "v=DMARC1; p=reject"),
    ]
