"""The test DNS server: real nsd answers the records the tests write, reloads them, never
rate-limits, and its front leaves chosen names unanswered.
"""

from __future__ import annotations

import base64
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.resolver
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.integration import dns_server
from tests.integration.dns_server import DnsServer, Zone, quote_txt

pytestmark = pytest.mark.integration

SPF = "v=spf1 ip4:192.0.2.0/24 -all"
DMARC = "v=DMARC1; p=reject"
SILENT = "timeout.example.test"


def dkim_record() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode()}"


DKIM = dkim_record()


def example_zone(spf: str = SPF) -> Zone:
    return (
        Zone("example.test")
        .txt("@", spf)
        .txt("_dmarc", DMARC)
        .txt("sel._domainkey", DKIM)
        .add("mail", "A", "192.0.2.25")
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DnsServer]:
    with DnsServer(tmp_path_factory.mktemp("dns"), [example_zone()], silent_suffixes=[SILENT]) as running:
        yield running


def resolver(server: DnsServer, lifetime: float = 5.0) -> dns.resolver.Resolver:
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = ["127.0.0.1"]
    resolver.port = server.port
    resolver.lifetime = lifetime
    return resolver


def txt(server: DnsServer, name: str) -> list[str]:
    """Each TXT record's strings joined, as SPF, DKIM and DMARC read them."""
    answer = resolver(server).resolve(name, "TXT")
    return [b"".join(rdata.strings).decode() for rdata in answer]


def test_addresses(server: DnsServer) -> None:
    assert server.address == "127.0.0.1"
    assert server.nameserver == f"127.0.0.1:{server.port}"
    assert server.front_nameserver == f"127.0.0.1:{server.front_port}"
    assert server.front_port != server.port


def test_spf_dmarc_and_a_records(server: DnsServer) -> None:
    assert txt(server, "example.test") == [SPF]
    assert txt(server, "_dmarc.example.test") == [DMARC]
    assert [r.address for r in resolver(server).resolve("mail.example.test", "A")] == ["192.0.2.25"]


def test_long_dkim_key_is_split_and_joined_back(server: DnsServer) -> None:
    assert len(DKIM) > 255
    answer = resolver(server).resolve("sel._domainkey.example.test", "TXT")
    (rdata,) = answer
    assert len(rdata.strings) == -(-len(DKIM) // 255)
    assert all(len(s) <= 255 for s in rdata.strings)
    assert b"".join(rdata.strings).decode() == DKIM


def test_soa_ns_and_missing_names(server: DnsServer) -> None:
    soa = resolver(server).resolve("example.test", "SOA")[0]
    assert soa.serial == server.serial
    assert [r.target.to_text() for r in resolver(server).resolve("example.test", "NS")] == ["ns.example.test."]
    with pytest.raises(dns.resolver.NXDOMAIN):
        resolver(server).resolve("nowhere.example.test", "TXT")
    with pytest.raises(dns.resolver.NoAnswer):
        resolver(server).resolve("mail.example.test", "TXT")


def test_set_zones_changes_answers_on_the_same_port(server: DnsServer) -> None:
    port, serial = server.port, server.serial
    try:
        server.set_zones([example_zone(spf="v=spf1 -all")])  # same zones: SIGHUP reload
        assert txt(server, "example.test") == ["v=spf1 -all"]
        assert server.serial == serial + 1
        server.set_zones([example_zone(), Zone("other.test").txt("@", "hello")])  # new zone: restart
        assert txt(server, "other.test") == ["hello"]
        assert txt(server, "example.test") == [SPF]
        assert server.port == port
    finally:
        server.set_zones([example_zone()])
    with pytest.raises(dns.resolver.NoNameservers):  # nsd REFUSEs a zone it no longer serves
        resolver(server, lifetime=2).resolve("other.test", "TXT")
    assert txt(server, "example.test") == [SPF]


def test_rapid_reloads_are_all_seen(server: DnsServer) -> None:
    try:
        for n in range(20):
            server.set_zones([example_zone(spf=f"v=spf1 exists:n{n}.example.test -all")])
            # several queries: nsd's old server process must be gone, not just the new one up
            for _ in range(10):
                assert txt(server, "example.test") == [f"v=spf1 exists:n{n}.example.test -all"]
    finally:
        server.set_zones([example_zone()])


def test_front_forwards_udp_and_tcp(server: DnsServer) -> None:
    front = server.resolver(front=True, lifetime=5)
    assert [b"".join(r.strings).decode() for r in front.resolve("example.test", "TXT")] == [SPF]
    answer = front.resolve("sel._domainkey.example.test", "TXT", tcp=True)
    assert [b"".join(r.strings).decode() for r in answer] == [DKIM]


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_front_never_answers_silent_names(server: DnsServer, tcp: bool) -> None:
    front = server.resolver(front=True, lifetime=1)
    started = time.monotonic()
    with pytest.raises(dns.resolver.LifetimeTimeout):
        front.resolve("x.timeout.example.test", "TXT", tcp=tcp)
    assert time.monotonic() - started >= 0.9
    assert "x.timeout.example.test" in server.swallowed
    # the suffix itself is silent, a sibling name is not
    with pytest.raises(dns.resolver.LifetimeTimeout):
        front.resolve(SILENT, "A", tcp=tcp)
    with pytest.raises(dns.resolver.NXDOMAIN):
        front.resolve("notimeout.example.test", "A", tcp=tcp)


def test_500_queries_in_a_tight_loop_all_answer(server: DnsServer) -> None:
    # Without RRL off, nsd drops or truncates about 1 in 50 of these (measured with defaults).
    for _ in range(500):
        response = dns.query.udp(
            dns.message.make_query("example.test", "TXT"), "127.0.0.1", port=server.port, timeout=1
        )
        assert response.rcode() == dns.rcode.NOERROR
        assert not response.flags & dns.flags.TC
        assert len(response.answer) == 1


def test_txt_quoting_escapes_quotes_backslashes_and_bytes() -> None:
    assert quote_txt('a "b" \\ c') == r'"a \034b\034 \092 c"'
    assert quote_txt("é") == r'"\195\169"'
    assert quote_txt("") == '""'
    assert quote_txt("x" * 256) == f'"{"x" * 255}" "x"'


def test_odd_txt_content_round_trips(tmp_path: Path) -> None:
    text = 'semi; colon (paren) "quoted" back\\slash $dollar'
    with DnsServer(tmp_path, [Zone("odd.test").txt("@", text)]) as server:
        assert txt(server, "odd.test") == [text]


def test_bad_record_fails_with_nsd_message(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="nsd-checkzone"):
        DnsServer(tmp_path, [Zone("bad.test").add("@", "A", "not-an-address")]).start()


def test_nsd_failing_to_start_raises_with_its_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        monkeypatch.setattr(dns_server, "free_port", lambda: taken.getsockname()[1])
        with pytest.raises(RuntimeError, match="Address already in use"):
            DnsServer(tmp_path, [Zone("busy.test")]).start()
    assert nsd_processes(tmp_path) == []


def test_bad_set_zones_keeps_serving_the_old_zones(server: DnsServer) -> None:
    serial = server.serial
    with pytest.raises(ValueError, match="nsd-checkzone"):
        server.set_zones([example_zone().add("mail", "MX", "not a priority")])
    assert server.serial == serial
    server.set_zones([example_zone()])  # a later reload must not pick up the rejected file
    assert txt(server, "example.test") == [SPF]


def nsd_processes(directory: Path) -> list[int]:
    """Pids of processes running nsd with the config in `directory`."""
    config = str(directory / "nsd.conf").encode()
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and config in (proc / "cmdline").read_bytes():
                pids.append(int(proc.name))
        except OSError:
            continue  # exited while we looked
    return pids


def test_stop_is_idempotent_and_ends_nsd(tmp_path: Path) -> None:
    server = DnsServer(tmp_path, [Zone("stop.test")]).start()
    assert nsd_processes(tmp_path)  # xfrd, main and one server process
    server.stop()
    server.stop()
    assert nsd_processes(tmp_path) == []
    with pytest.raises(dns.exception.Timeout):
        dns.query.udp(dns.message.make_query("stop.test", "SOA"), "127.0.0.1", port=server.port, timeout=0.5)
