"""author: the one From address every check judges, or a bad From.

The attacks come from one observation: mail clients and Python's three address parsers read
some From headers differently (TESTING-NOTES: Debian's strict getaddresses returns nothing
for `a@x <b@y>`, the header registry takes the first token, the lenient parser both). Each
row is a trick or a benign control; the property test generates the rest.
"""

from __future__ import annotations

import email.policy
import email.utils
import functools
import time
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policymilter.author import Author, BadFrom, parse_from
from policymilter.checks.dmarc import Dmarc
from policymilter.checks.sender import SenderFrom
from policymilter.checks.signing import Signing, signing_domain
from policymilter.dns import Budget
from policymilter.domains import normalize
from policymilter.facts import Envelope, Session
from policymilter.listeners import listener_by_name
from policymilter.message import Message
from policymilter.outcome import Disposition, Outcome
from policymilter.pipeline import CheckContext
from policymilter.policy import load_policy
from policymilter.policy.model import Policy
from tests import authkit
from tests.conftest import DEFAULT_POLICY, OFFLINE
from tests.unit.test_dmarc_evaluate import FakeResolver


@dataclass(frozen=True)
class Row:
    value: str
    address: str | None  # None: a bad From
    detail: str = ""  # the BadFrom detail expected


ROWS = [
    # benign controls: what real clients write
    Row("Alice <alice@example.org>", "alice@example.org"),
    Row("alice@example.org", "alice@example.org"),
    Row("<alice@example.org>", "alice@example.org"),
    Row('"Doe, John" <john@example.com>', "john@example.com"),
    Row("john@example.com (John Doe)", "john@example.com"),
    Row("Alice Smith <alice@example.org> (work)", "alice@example.org"),
    Row("=?utf-8?q?J=C3=B6rg?= <jorg@example.de>", "jorg@example.de"),
    Row("Jörg <jorg@example.de>", "jorg@example.de"),  # RFC 6532 UTF-8 display name
    Row('"alice@example.org" <alice@example.org>', "alice@example.org"),  # Outlook: the address as its name
    Row("Alice <alice@EXAMPLE.ORG>", "alice@example.org"),  # ASCII case is no mapping
    Row("Alice <alice@example.org>\r\n (folded comment)", "alice@example.org"),
    Row("x@faß.example", "x@xn--fa-hia.example"),  # IDNA2008: ß stays ß (IDNA2003 made it fass)
    Row("x@xn--fa-hia.example", "x@xn--fa-hia.example"),
    # the example and its variants: two readings of one header
    Row("attacker@evil.example <service@bank.example>", None, "several"),
    Row("attacker@evil.example\r\n <service@bank.example>", None, "several"),  # folded
    Row("a <attacker@evil.example> <service@bank.example>", None, "several"),  # two angle-addrs
    Row("<service@bank.example> attacker@evil.example", None, "several"),
    Row("=?utf-8?q?service@bank.example?= <attacker@evil.example>", None, "several"),  # encoded word
    Row("=?utf-8?b?c2VydmljZUBiYW5rLmV4YW1wbGU=?= <attacker@evil.example>", None, "display-address"),
    Row('"service@bank.example" <attacker@evil.example>', None, "display-address"),  # quoted
    Row('"service@bank\u200b.example" <attacker@evil.example>', None, "display-address"),  # zero-width
    Row('"service\uff20bank.example" <attacker@evil.example>', None, "display-address"),  # full-width @
    Row("attacker@evil.example (service@bank.example)", None, "display-address"),  # in a comment
    # review: Thunderbird shows comments as part of the name and decodes encoded words anywhere
    Row("Bank Security (service@bank.example) <a@evil.example>", None, "display-address"),
    Row("Bank <a@evil.example> (service@bank.example)", None, "display-address"),
    Row("Bank (<service@bank.example>) <a@evil.example>", None, "display-address"),
    Row("a@evil.example (=?utf-8?b?c2VydmljZUBiYW5rLmV4YW1wbGU=?=)", None, "display-address"),
    Row("Bank=?utf-8?b?c2VydmljZUBiYW5rLmV4YW1wbGU=?= <a@evil.example>", None, "display-address"),
    # second review: UTF-16 split across encoded words (clients join adjacent words' bytes),
    # dots NFKC leaves alone (U+3002 is a label separator to UTS #46), quoted local parts
    Row("=?utf-16le?b?cwBlAHIA?= =?utf-16le?b?dgBpAGMAZQBAAGIAYQBuAGsALgBlAHgAYQBtAHAAbABlAA==?= <a@evil.example>",
        None, "display-address"),
    Row('"service@bank\u3002example" <a@evil.example>', None, "display-address"),
    Row('"service@bank\uff61example" <a@evil.example>', None, "display-address"),
    Row('"service@bank\u00b7example" <a@evil.example>', None, "display-address"),
    Row("(service@paypal\u3002com) a@evil.example", None, "display-address"),
    Row('"\\"service\\"@bank.example" <a@evil.example>', None, "display-address"),
    Row("=?undefined?q?x?= <service@bank.example>", "service@bank.example"),  # a codec that is no charset
    Row("=?idna?q?Bob?= <bob@example.org>", "bob@example.org"),
    Row(":" * 1000, None, "unparsable"),  # the lenient parser recurses once per colon
    Row("Bank <service@bank.example>" + ":" * 990, None, "unparsable"),
    Row("service\uff20bank.example <attacker@evil.example>", None, "ambiguous"),
    # several authors, groups, nothing at all
    Row("a@x.example, b@y.example", None, "several"),
    Row("a@x.example, a@x.example", None, "several"),
    Row("Doe, John <john@example.com>", None, "several"),
    Row("group: a@x.example;", None, "ambiguous"),
    Row("undisclosed-recipients:;", None, "missing"),
    Row("", None, "missing"),
    Row("   ", None, "missing"),
    # defective syntax a lenient reader repairs its own way
    Row("John <john@example.com", None, "ambiguous"),
    Row("John <john@[192.0.2.1]>", None, "ambiguous"),
    Row("<@relay.example:john@example.com>", None, "ambiguous"),
    Row("=?utf-8?b?YUBiLmM=?=@evil.example", None, "ambiguous"),  # "Mailsploit": an encoded local part
    Row("x@example.com.", None, "ambiguous"),
    # what the reader sees is reordered or hidden
    Row("Bob \u202e <bob@example.com>", None, "ambiguous"),
    Row("Bob\x07 <bob@example.com>", None, "ambiguous"),
    # domains that become another domain under mapping
    Row("x@\uff45xample.com", None, "domain"),  # full-width e
    Row("x@xn--zz.example", None, "domain"),  # invalid A-label
]


@pytest.mark.parametrize("row", ROWS, ids=[row.value[:40] or "(empty)" for row in ROWS])
def test_parse_from(row):
    found = parse_from([row.value.encode()])
    if row.address is None:
        assert isinstance(found, BadFrom), found
        assert found.detail == row.detail, found
    else:
        assert isinstance(found, Author), found
        assert found.address == row.address


def test_several_from_headers_and_none_are_bad():
    assert parse_from([]) == BadFrom("the message has no From header", "missing")
    assert parse_from([b"a@x.example", b"a@x.example"]).detail == "several"


@pytest.mark.parametrize(
    "raw",
    [
        b"Bank (\x81\\) <service@bank.example> ) <a@evil.example>",  # Shift_JIS: 0x81 swallows the backslash
        "Bank (\u3041\\) <service@bank.example> ) <a@evil.example>".encode(),  # valid UTF-8 ending in 0x81
        b"J\xf6rg <jorg@example.de>",  # Latin-1: which charset is it?
        "x\u3041@example.de".encode(),  # an 8-bit byte the next @ would join
    ],
)
def test_8bit_bytes_readers_may_decode_differently_are_a_bad_from(raw):
    assert parse_from([raw]).detail == "8bit"


def test_utf8_display_names_are_fine():
    assert parse_from(["Jörg Müller <jorg@example.de>".encode()]) == Author("jorg@example.de", "jorg", "example.de",
                                                                           "Jörg Müller")


def test_a_nul_is_a_bad_from():
    # libmilter hands header values over as C strings: a NUL hides the rest from one reader.
    assert parse_from([b"<attacker@evil.example>\0<service@bank.example>"]).detail == "nul"


# --- every check reads the same author --------------------------------------------------------

SITE = "bank.example"


@functools.cache
def _policy() -> Policy:
    # a key in the policy (never loaded here): signing gets as far as choosing the domain
    key = f'signing.keys={{"{SITE}" = [{{ selector = "s", key_file = "/nonexistent" }}]}}'
    return load_policy(DEFAULT_POLICY, [*OFFLINE, "dmarc.enabled=true", f'site.domains=["{SITE}"]', key]).policy


def _context(raw: bytes, login: str | None, resolver: object = None) -> CheckContext:
    policy = _policy()
    session = Session(conn_id="t", client_ip="192.0.2.9", auth_login=login, auth_mech="PLAIN" if login else None,
                      tls_version="TLSv1.3" if login else None)
    return CheckContext(policy, listener_by_name(policy, "submission" if login else "smtp"), session, Envelope(),
                        Message.from_bytes(raw), resolver, Budget(time.monotonic() + 60),  # type: ignore[arg-type]
                        authkit.nothing_found())


def _views(value: str) -> tuple[str | None, str | None, str | None]:
    """(DMARC's author domain, the address the sender check judged, the signing domain)."""
    raw = f"From: {value}\nTo: x@elsewhere.test\nSubject: s\n\nbody\n".encode()
    everyone_rejects = FakeResolver(txt={f"_dmarc.{d}": ["v=DMARC1; p=reject"]
                                         for d in ("bank.example", "evil.example", "example.org", "x.example",
                                                   "y.example", "xn--fa-hia.example")})
    dmarc = Dmarc().run(_context(raw, None, everyone_rejects))
    sender = SenderFrom().run(_context(raw, "service"))
    signing = Signing().run(_context(raw, "service"))
    if dmarc.outcome is Outcome.PERMERROR:
        assert dmarc.detail.startswith("from-") and dmarc.disposition is Disposition.REJECT
        assert sender.outcome is Outcome.FAIL and sender.disposition is Disposition.REJECT
        assert signing.detail == "bad-from"
        return None, None, None
    judged = sender.reason.partition(" owns ")[2] or sender.reason.partition(" may not use From ")[2]
    domain = signing_domain(_context(raw, "service"), _context(raw, "service").message.author())  # type: ignore[union-attr]
    return dmarc.findings.from_domain, judged, domain


@pytest.mark.parametrize("row", ROWS, ids=[row.value[:40] or "(empty)" for row in ROWS])
def test_every_check_reads_the_same_author(row):
    dmarc_domain, judged, signing = _views(row.value)
    if row.address is None:
        assert (dmarc_domain, judged, signing) == (None, None, None)
        return
    domain = row.address.rpartition("@")[2]
    assert dmarc_domain == domain
    assert judged == row.address
    assert signing == (SITE if domain == SITE else None)


# --- property: any From is either unambiguous to every reader, or bad --------------------------

_DOMAINS = ["bank.example", "evil.example", "Bank.Example", "faß.example", "xn--fa-hia.example", "x.example"]
_LOCALS = ["service", "ceo", "a.b", '"q u"', "x+tag"]
_ADDRESS = st.builds(lambda local, domain: f"{local}@{domain}", st.sampled_from(_LOCALS), st.sampled_from(_DOMAINS))
_TOKEN = st.one_of(
    _ADDRESS,
    _ADDRESS.map(lambda a: f"<{a}>"),
    _ADDRESS.map(lambda a: f'"{a}"'),
    _ADDRESS.map(lambda a: f"({a})"),
    _ADDRESS.map(lambda a: "=?utf-8?q?" + a.replace(" ", "_") + "?="),
    st.sampled_from(["Alice", '"Doe, John"', "Jörg", "(comment)", ",", ";", ":", "<", ">", '"', "\r\n ",
                     "=?utf-8?q?J=C3=B6rg?=", "\u202e", "\u200b", "\uff20", "group:", "@"]),
)
_FROM = st.lists(_TOKEN, min_size=1, max_size=5).map(" ".join)


def _parsers(value: str) -> list[list[str]]:
    """What three standard readers make of the value: every addr-spec each one yields."""
    registry = email.policy.default.header_factory("from", value)
    readings = [[a.addr_spec for a in registry.addresses]]
    for strict in (True, False):
        readings.append([addr for _, addr in email.utils.getaddresses([value], strict=strict) if addr])
    return readings


def _same_address(found: str, expected: str) -> bool:
    local, _, domain = found.rpartition("@")
    return f"{local}@{normalize(domain)}".lower() == expected.lower()


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_FROM)
def test_property_one_author_every_reader_agrees_on_or_bad_from(value):
    found = parse_from([value.encode()])
    if isinstance(found, BadFrom):
        return
    # exactly one author, and a standard parser in both modes (and the registry) yields it
    for reading in _parsers(value.replace("\r\n", "")):
        assert len(reading) == 1, (value, reading)
        assert _same_address(reading[0], found.address), (value, reading, found)
    # and every check judges that author
    dmarc_domain, judged, signing = _views(value)
    assert dmarc_domain == found.domain and judged == found.address
    assert signing == (SITE if found.domain == SITE else None)


@pytest.mark.parametrize("value", ["(" * 3000 + "a@b.example", "(a (b (c (d (e (f (g (h (i (j x) ) ) ) ) ) ) ) ) )"
                                   " <a@b.example>", "a" * 50_000 + "@b.example", "(a)" * 600 + " <a@b.example>"])
def test_a_from_built_to_exhaust_the_parsers_is_refused_cheaply(value):
    # the stdlib's parser recurses once per comment level (RecursionError at ~1000) and slows
    # down on long values: nothing a mail client writes is that long or that deep
    started = time.process_time()
    assert parse_from([value.encode()]).detail == "too-long"
    assert time.process_time() - started < 0.05


def test_the_interpreter_is_debians_as_deployed():
    """The daemon runs on Debian's Python (scripts/install); its email package carries the
    CVE-2023-27043 fix whose strict parser is one of the readers compared here."""
    import sys

    from policymilter import author

    assert sys.base_prefix == "/usr" and author._HAS_STRICT


def test_a_utf8_local_part_is_an_address_rfc_6532_allows():
    """Hostile-suite finding: SMTPUTF8 mail from jöse@ was refused as "ambiguous" because the
    header registry flags a non-ASCII local part; every parser reads the same address."""
    assert parse_from(["Jö <jöse@sender.test>".encode()]) == Author("jöse@sender.test", "jöse", "sender.test", "Jö")
    # but an 8-bit character next to @ stays refused: a GBK or Shift_JIS reader would join them
    assert isinstance(parse_from(["jösé@sender.test".encode()]), BadFrom)
