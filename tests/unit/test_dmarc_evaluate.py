"""dmarc_policy: records, organizational domains, alignment and evaluation, as tables.

A fake resolver stands in for `policymilter.dns.Resolver`; the examples come from RFC 7489
Appendix B and RFC 9989 (DMARCbis) Appendix B.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import pytest

from policymilter.checks.dmarc.evaluate import (
    Alignment,
    DkimIdentity,
    SpfIdentity,
    aligned,
    evaluate,
    organizational_domain,
    parse_record,
)
from policymilter.dns import Budget, DnsError


class FakeResolver:
    """TXT answers by name, names whose lookups get no answer, names that have A/AAAA/MX records."""

    def __init__(self, txt: Mapping[str, Sequence[str]] | None = None, failing: Iterable[str] = (),
                 existing: Iterable[str] = ()) -> None:
        self.answers = {name: list(texts) for name, texts in (txt or {}).items()}
        self.failing = set(failing)
        self.existing = set(existing)
        self.queries: list[str] = []

    def txt(self, name: str, budget: Budget | None = None) -> list[str]:
        return [str(text) for text in self.query(name, "TXT", budget)]

    def query(self, name: str, rdtype: str, budget: Budget | None = None) -> list[object]:
        self.queries.append(f"{name}/{rdtype}")
        if name in self.failing:
            raise DnsError(f"{name}/{rdtype}: timed out")
        if rdtype == "TXT":
            return list(self.answers.get(name, []))
        return ["192.0.2.1"] if name in self.existing else []


def published(**records: str | list[str]) -> dict[str, list[str]]:
    """`published(example_com="v=DMARC1; p=none")` -> {"_dmarc.example.com": [...]}."""
    return {f"_dmarc.{name.replace('_', '.')}": [text] if isinstance(text, str) else text
            for name, text in records.items()}


def passing(domain: str) -> DkimIdentity:
    return DkimIdentity(domain, "sel", "pass")


def failing(domain: str) -> DkimIdentity:
    return DkimIdentity(domain, "sel", "fail")


def spf_pass(domain: str) -> SpfIdentity:
    return SpfIdentity(domain, "pass")


def never() -> float:
    raise AssertionError("pct sampling without a pct below 100")


# --- organizational domains (RFC 7489 §3.2) --------------------------------------------------

@pytest.mark.parametrize(
    ("domain", "org"),
    [
        ("a.b.example.co.uk", "example.co.uk"),
        ("example.co.uk", "example.co.uk"),
        ("example.test", "example.test"),  # .test is not in the PSL: the default rule "*"
        ("mail.example.test", "example.test"),
        ("co.uk", "co.uk"),  # a public suffix is its own
        ("com", "com"),
        ("victim.github.io", "victim.github.io"),  # the PSL's private section counts
        ("github.io", "github.io"),
        ("Mail.EXAMPLE.com.", "example.com"),
        ("mail.bücher.example", "xn--bcher-kva.example"),
        ("\udcff.example.com", "\udcff.example.com"),  # no A-label: its own, no exception
        ("a..example.com", "a..example.com"),
    ],
)
def test_organizational_domain(domain, org):
    assert organizational_domain(domain) == org


# --- alignment (RFC 7489 §3.1, Appendix B.1) -------------------------------------------------

@pytest.mark.parametrize(
    ("from_domain", "auth_domain", "mode", "expected"),
    [
        ("example.com", "example.com", "s", True),  # B.1.1 ex. 1, B.1.2 ex. 1
        ("example.com", "child.example.com", "r", True),  # B.1.1 ex. 2: MAIL FROM below From
        ("example.com", "child.example.com", "s", False),
        ("child.example.com", "example.net", "r", False),  # B.1.1 ex. 3, B.1.2 ex. 3
        ("child.example.com", "example.com", "r", True),  # B.1.2 ex. 2: d= above From
        ("child.example.com", "example.com", "s", False),
        ("a.example.com", "b.example.com", "r", True),  # siblings share the org domain
        ("a.example.com", "b.example.com", "s", False),
        ("news.example.com", "foo.example.com", "r", True),  # RFC 9989 §4.4 Table 1
        ("news.example.com", "news.example.com", "s", True),
        ("news.example.com", "foo.example.net", "r", False),
        ("Example.COM.", "example.com", Alignment.STRICT, True),
        ("bücher.example", "xn--bcher-kva.example", "s", True),
        ("victim.github.io", "github.io", "r", False),  # a public suffix never aligns
        ("victim.github.io", "attacker.github.io", "r", False),
        ("victim.co.uk", "co.uk", "r", False),
        ("victim.com", "com", "r", False),
        ("mail.example.co.uk", "example.co.uk", "r", True),
        ("example.com", "\udcff.example.com", "r", False),
    ],
)
def test_aligned(from_domain, auth_domain, mode, expected):
    assert aligned(from_domain, auth_domain, mode) is expected


# --- records (RFC 7489 §6.3, §6.6.3; RFC 9989 §4.7) ------------------------------------------

RFC7489_B21 = "v=DMARC1; p=none; rua=mailto:dmarc-feedback@example.com"
RFC7489_B22 = "v=DMARC1; p=none; rua=mailto:dmarc-feedback@example.com; ruf=mailto:auth-reports@example.com"
RFC7489_B24 = ("v=DMARC1; p=quarantine; rua=mailto:dmarc-feedback@example.com,"
               "mailto:tld-test@thirdparty.example.net!10m; pct=25")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (RFC7489_B21, {"p": "none", "rua": ("mailto:dmarc-feedback@example.com",), "pct": 100}),
        (RFC7489_B22, {"p": "none", "ruf": ("mailto:auth-reports@example.com",)}),
        (RFC7489_B24, {"p": "quarantine", "pct": 25,
                       "rua": ("mailto:dmarc-feedback@example.com", "mailto:tld-test@thirdparty.example.net"),
                       # as published, for the reports we send (RFC 7489 §6.4's size limit)
                       "rua_published": ("mailto:dmarc-feedback@example.com",
                                         "mailto:tld-test@thirdparty.example.net!10m")}),
        ("v=DMARC1; p=reject; sp=quarantine; np=reject; adkim=s; aspf=s; t=y; psd=n",
         {"p": "reject", "sp": "quarantine", "np": "reject", "adkim": "s", "aspf": "s", "testing": True,
          "psd": "n"}),
        ("V = DMARC1 ;\tP = Reject ; SP=None; future = value;", {"p": "reject", "sp": "none"}),
        ("v=DMARC1; p=reject; adkim=x; aspf=; pct=101; t=maybe; psd=q",  # invalid: the defaults
         {"p": "reject", "adkim": "r", "aspf": "r", "pct": 100, "testing": False, "psd": "u"}),
        ("v=DMARC1; p=reject; pct=abc", {"pct": 100}),
        ("v=DMARC1; p=reject; pct=0", {"pct": 0}),
        ("v=DMARC1; p=bogus; rua=mailto:d@example.com", {"p": "none"}),  # §6.6.3 step 6: a rua -> p=none
        ("v=DMARC1; rua=mailto:d@example.com", {"p": "none"}),
        ("v=DMARC1; p=reject; sp=bogus; rua=mailto:d@example.com", {"p": "none", "sp": None}),
        ("v=DMARC1; p=bogus", {"p": None}),  # ... and without one the record is ignored
        ("v=DMARC1", {"p": None}),
        ("v=DMARC1; p=reject; np=bogus", {"p": None}),
        ("v=DMARC1; p=bogus; rua=not a uri", {"p": None, "rua": ()}),
        ("p=reject; v=DMARC1", None),  # v must come first
        ("v=dmarc1; p=reject", None),  # and its value is case-sensitive
        ("v=DMARC10; p=reject", None),
        ("v=spf1 -all", None),
        ("", None),
    ],
)
def test_parse_record(text, expected):
    record = parse_record(text)
    if expected is None:
        assert record is None
    else:
        assert record is not None and record.raw == text
        assert {key: getattr(record, key) for key in expected} == expected


# --- evaluation, RFC 7489 discovery -----------------------------------------------------------

B31 = "v=DMARC1; p=reject; aspf=r; rua=mailto:dmarc-feedback@example.com"  # RFC 7489 B.3.1
REJECT = "v=DMARC1; p=reject"

# (id, published records, From domain, SPF, DKIM, expected fields)
RFC7489_CASES = [
    ("B.3.1 both aligned", published(example_com=B31), "example.com",
     spf_pass("mail.example.com"), [passing("example.com")],
     {"result": "pass", "aligned_dkim": "example.com", "aligned_spf": True, "policy": "reject",
      "disposition": "none", "record_domain": "example.com", "org_domain": "example.com"}),
    ("B.3.1 nothing aligned", published(example_com=B31), "example.com",
     spf_pass("example.net"), [passing("example.net")],
     {"result": "fail", "policy": "reject", "disposition": "reject", "aligned_dkim": None,
      "aligned_spf": False}),
    ("strict SPF, MAIL FROM below From", published(example_com="v=DMARC1; p=reject; aspf=s"), "example.com",
     spf_pass("mail.example.com"), [], {"result": "fail", "aligned_spf": False}),
    ("relaxed SPF, MAIL FROM above From", published(example_com=REJECT), "mail.example.com",
     spf_pass("example.com"), [], {"result": "pass", "aligned_spf": True}),
    ("strict SPF, MAIL FROM above From", published(example_com="v=DMARC1; p=reject; aspf=s"), "mail.example.com",
     spf_pass("example.com"), [], {"result": "fail"}),
    ("strict DKIM, d= below From", published(example_com="v=DMARC1; p=reject; adkim=s"), "example.com",
     None, [passing("mail.example.com")], {"result": "fail", "aligned_dkim": None}),
    ("relaxed DKIM, d= below From", published(example_com=REJECT), "example.com",
     None, [passing("mail.example.com")], {"result": "pass", "aligned_dkim": "mail.example.com"}),
    ("relaxed DKIM, d= above From", published(example_com=REJECT), "child.example.com",
     None, [passing("example.com")], {"result": "pass", "aligned_dkim": "example.com"}),
    ("strict DKIM, d= above From", published(example_com="v=DMARC1; p=reject; adkim=s"), "child.example.com",
     None, [passing("example.com")], {"result": "fail"}),
    ("one of several signatures aligned", published(example_com=REJECT), "example.com",
     None, [passing("esp.example.net"), failing("example.com"), passing("Example.COM")],
     {"result": "pass", "aligned_dkim": "example.com"}),
    ("third-party pass, aligned signature fails", published(example_com=REJECT), "example.com",
     None, [passing("esp.example.net"), failing("example.com")],
     {"result": "fail", "aligned_dkim": None, "disposition": "reject"}),
    ("aligned SPF softfail", published(example_com=REJECT), "example.com",
     SpfIdentity("example.com", "softfail"), [], {"result": "fail"}),
    ("public suffix d= does not align", published(victim_github_io=REJECT), "victim.github.io",
     spf_pass("github.io"), [passing("github.io")], {"result": "fail", "org_domain": "victim.github.io"}),
    ("p=none still evaluates", published(example_com=RFC7489_B21), "example.com",
     None, [], {"result": "fail", "policy": "none", "disposition": "none"}),
    ("IDN From domain as A-labels", {"_dmarc.xn--bcher-kva.example": [REJECT]}, "Bücher.example",
     None, [passing("xn--bcher-kva.example")],
     {"result": "pass", "from_domain": "xn--bcher-kva.example", "record_domain": "xn--bcher-kva.example"}),
    # where the record is found and which policy applies
    ("record at org domain", published(example_com=REJECT), "mail.example.com", None, [],
     {"result": "fail", "record_domain": "example.com", "org_domain": "example.com", "policy": "reject"}),
    ("sp for a subdomain", published(example_com="v=DMARC1; p=reject; sp=quarantine"), "mail.example.com",
     None, [], {"policy": "quarantine", "disposition": "quarantine"}),
    ("p, not sp, at the org domain", published(example_com="v=DMARC1; p=reject; sp=none"), "example.com",
     None, [], {"policy": "reject", "disposition": "reject"}),
    ("the subdomain's own record wins", published(example_com=REJECT, mail_example_com="v=DMARC1; p=none"),
     "mail.example.com", None, [], {"record_domain": "mail.example.com", "policy": "none"}),
    ("no record at all", {}, "example.com", None, [],
     {"result": "none", "policy": None, "record_domain": None, "reason": "no DMARC record"}),
    ("org domain of a deep name", published(example_co_uk=REJECT), "a.b.example.co.uk", None, [],
     {"record_domain": "example.co.uk", "org_domain": "example.co.uk", "policy": "reject"}),
    ("mail.example.test under the default rule", published(example_test=REJECT), "mail.example.test",
     None, [passing("example.test")], {"result": "pass", "org_domain": "example.test"}),
    ("other TXT records are not DMARC", published(example_com=["v=spf1 -all", REJECT, "hello"]),
     "example.com", None, [], {"result": "fail", "policy": "reject"}),
    ("two DMARC records: none", published(example_com=[REJECT, "v=DMARC1; p=none"]), "example.com",
     None, [], {"result": "none", "policy": None, "record_domain": "example.com"}),
    ("two at From: no fallback to org", published(mail_example_com=[REJECT, REJECT], example_com=REJECT),
     "mail.example.com", None, [], {"result": "none"}),
    ("invalid p with rua: p=none", published(example_com="v=DMARC1; p=bogus; rua=mailto:d@example.com"),
     "example.com", None, [], {"result": "fail", "policy": "none", "disposition": "none"}),
    ("invalid p without rua: ignored", published(example_com="v=DMARC1; p=bogus"), "example.com",
     None, [], {"result": "none", "policy": None, "record_domain": "example.com"}),
    ("ignored record at From: no fallback", published(mail_example_com="v=DMARC1; p=bogus", example_com=REJECT),
     "mail.example.com", None, [], {"result": "none", "record_domain": "mail.example.com"}),
]


@pytest.mark.parametrize(("records", "from_domain", "spf", "dkim", "expected"),
                         [case[1:] for case in RFC7489_CASES], ids=[case[0] for case in RFC7489_CASES])
def test_evaluate(records, from_domain, spf, dkim, expected):
    result = evaluate(from_domain, spf, dkim, FakeResolver(records), None, sample=never)
    assert {key: getattr(result, key) for key in expected} == expected


# (record, From domain, existing names, expected policy, whether A/AAAA/MX were queried)
NP_CASES = [
    ("v=DMARC1; p=quarantine; np=reject", "nx.example.com", (), "reject", True),
    ("v=DMARC1; p=quarantine; np=reject", "www.example.com", ("www.example.com",), "quarantine", True),
    ("v=DMARC1; p=quarantine; sp=none; np=reject", "www.example.com", ("www.example.com",), "none", True),
    ("v=DMARC1; p=quarantine; sp=none", "nx.example.com", (), "none", False),  # no np: sp, no lookup
    ("v=DMARC1; p=quarantine; np=reject", "example.com", (), "quarantine", False),  # the org domain itself
]


@pytest.mark.parametrize(("record", "from_domain", "existing", "policy", "looked_up"), NP_CASES)
def test_np_for_non_existent_subdomains(record, from_domain, existing, policy, looked_up):
    resolver = FakeResolver(published(example_com=record), existing=existing)
    result = evaluate(from_domain, None, [], resolver, None, sample=never)
    assert (result.result, result.policy) == ("fail", policy)
    assert any(query.endswith(("/A", "/AAAA", "/MX")) for query in resolver.queries) is looked_up


def test_np_lookups_only_for_failing_messages():
    resolver = FakeResolver(published(example_com="v=DMARC1; p=quarantine; np=reject"))
    result = evaluate("nx.example.com", spf_pass("example.com"), [], resolver, None)
    assert result.result == "pass" and result.policy == "quarantine"
    assert resolver.queries == ["_dmarc.nx.example.com/TXT", "_dmarc.example.com/TXT"]


# (record, sample, disposition, pct_applied)
SAMPLING_CASES = [
    ("v=DMARC1; p=reject; pct=0", 0.0, "quarantine", True),
    ("v=DMARC1; p=quarantine; pct=0", 0.0, "none", True),
    ("v=DMARC1; p=reject; pct=50", 0.49, "reject", False),
    ("v=DMARC1; p=reject; pct=50", 0.5, "quarantine", True),
    (RFC7489_B24, 0.2, "quarantine", False),  # B.2.4: 25% of failures quarantined
    (RFC7489_B24, 0.3, "none", True),
    ("v=DMARC1; p=reject; t=y", 0.0, "quarantine", False),  # RFC 9989 §4.7: one level lower
    ("v=DMARC1; p=quarantine; t=y", 0.0, "none", False),
    ("v=DMARC1; p=reject; t=y; pct=0", 0.99, "quarantine", False),  # t=y is pct=0: one level, not two
    ("v=DMARC1; p=reject; t=n", 0.99, "reject", False),
]


@pytest.mark.parametrize(("record", "sample", "disposition", "pct_applied"), SAMPLING_CASES)
def test_pct_and_testing(record, sample, disposition, pct_applied):
    result = evaluate("example.com", None, [], FakeResolver(published(example_com=record)), None,
                      sample=lambda: sample)
    assert (result.result, result.policy) == ("fail", record.split("p=")[1].split(";")[0])
    assert (result.disposition, result.pct_applied) == (disposition, pct_applied)


# (failing names, From domain, SPF, DKIM, expected result)
DNS_ERROR_CASES = [
    (["_dmarc.example.com"], "example.com", None, [], "temperror"),  # the first lookup
    (["_dmarc.example.com"], "mail.example.com", None, [], "temperror"),  # the org domain lookup
    (["_dmarc.mail.example.com"], "mail.example.com", None, [], "temperror"),
    (["nx.example.com"], "nx.example.com", None, [], "temperror"),  # the np existence test
    (["nx.example.com"], "nx.example.com", spf_pass("example.com"), [], "pass"),  # not needed
]


@pytest.mark.parametrize(("failing_names", "from_domain", "spf", "dkim", "expected"), DNS_ERROR_CASES)
def test_dns_errors_are_temperror(failing_names, from_domain, spf, dkim, expected):
    resolver = FakeResolver(published(example_com="v=DMARC1; p=reject; np=reject"), failing=failing_names)
    result = evaluate(from_domain, spf, dkim, resolver, None)
    assert result.result == expected
    assert result.disposition == "none" or expected == "pass"


@pytest.mark.parametrize(
    "from_domain",
    ["", ".", "a..example.com", "ex ample.com", "[192.0.2.1]", "-bad.example", "bad-.example",
     "x" * 64 + ".example", "a." * 127 + "com", "user@example.com", "\udcff.example.com", "exa\x00mple.com",
     "ünïcödé\u200f.example"],
)
@pytest.mark.parametrize("discovery", ["rfc7489", "treewalk"])
def test_garbage_from_domain_is_permerror(from_domain, discovery):
    resolver = FakeResolver()
    result = evaluate(from_domain, spf_pass("example.com"), [passing("example.com")], resolver, None,
                      discovery=discovery)
    assert (result.result, result.disposition, resolver.queries) == ("permerror", "none", [])


def test_garbage_identities_never_raise():
    resolver = FakeResolver(published(example_com=REJECT))
    for discovery in ("rfc7489", "treewalk"):
        result = evaluate("example.com", SpfIdentity("\udcff..", "pass"), [passing("a..b"), passing("")],
                          resolver, None, discovery=discovery)
        assert result.result == "fail"


# --- evaluation, RFC 9989 DNS Tree Walk (§4.10) -----------------------------------------------

DEEP = "a.b.c.d.e.f.g.h.i.j.k.example.com"

# (id, published records, From domain, SPF, DKIM, expected fields)
TREEWALK_CASES = [
    ("B.4.1 simple", published(example_com=REJECT, signing_example_com="v=DMARC1; p=none"), "example.com",
     spf_pass("example.com"), [passing("signing.example.com")],
     {"result": "pass", "aligned_spf": True, "aligned_dkim": "signing.example.com",
      "record_domain": "example.com", "org_domain": "example.com"}),
    ("B.4.2 deep", published(example_com=REJECT, signing_example_com="v=DMARC1; p=none"), DEEP,
     spf_pass("example.com"), [passing("signing.example.com")],
     {"result": "pass", "aligned_spf": True, "aligned_dkim": "signing.example.com",
      "record_domain": "example.com", "org_domain": "example.com"}),
    ("B.4.2 deep, failing", published(example_com="v=DMARC1; p=reject; sp=quarantine"), DEEP, None, [],
     {"result": "fail", "record_domain": "example.com", "policy": "quarantine"}),
    ("B.4.3 PSD: SPF aligned", published(giant_bank_example=REJECT, bank_example="v=DMARC1; p=none; psd=y"),
     "giant.bank.example", spf_pass("mail.giant.bank.example"), [passing("mail.mega.bank.example")],
     {"result": "pass", "aligned_spf": True, "aligned_dkim": None, "record_domain": "giant.bank.example",
      "org_domain": "giant.bank.example"}),
    ("B.4.3 PSD: other registrant's d=", published(giant_bank_example=REJECT,
                                                     bank_example="v=DMARC1; p=none; psd=y"),
     "giant.bank.example", None, [passing("mail.mega.bank.example")],
     {"result": "fail", "policy": "reject", "disposition": "reject"}),
    ("PSD record applies when the org domain has none",
     published(bank_example="v=DMARC1; p=none; sp=quarantine; np=reject; psd=y"), "www.giant.bank.example",
     None, [], {"result": "fail", "record_domain": "bank.example", "org_domain": "giant.bank.example",
                "policy": "reject"}),  # np: www.giant.bank.example does not exist
    ("PSD d= does not align with a registrant", published(bank_example="v=DMARC1; p=reject; psd=y"),
     "giant.bank.example", spf_pass("bank.example"), [passing("bank.example")], {"result": "fail"}),
    ("psd=n makes its own org domain",
     published(dept_example_com="v=DMARC1; p=quarantine; psd=n", example_com=REJECT),
     "a.dept.example.com", None, [passing("example.com")],
     {"result": "fail", "record_domain": "dept.example.com", "org_domain": "dept.example.com",
      "policy": "quarantine"}),
    ("the org domain's record, not the first found",
     published(mail_example_com="v=DMARC1; p=none", example_com="v=DMARC1; p=reject; sp=quarantine"),
     "a.mail.example.com", None, [passing("example.com")],
     {"result": "pass", "record_domain": "example.com", "org_domain": "example.com", "policy": "quarantine"}),
    ("a subdomain with its own record and no parent record",
     published(sub_example_org=REJECT), "sub.example.org", spf_pass("example.org"), [passing("example.org")],
     {"result": "fail", "org_domain": "sub.example.org", "disposition": "reject"}),  # RFC 7489: pass
    ("two records at From: discarded, walk on",
     published(mail_example_com=[REJECT, REJECT], example_com="v=DMARC1; p=quarantine"),
     "mail.example.com", None, [], {"result": "fail", "record_domain": "example.com", "policy": "quarantine"}),
    ("no record anywhere", {}, "mail.example.com", None, [],
     {"result": "none", "record_domain": None, "policy": None}),
    ("strict alignment needs no walk", published(example_com="v=DMARC1; p=reject; adkim=s; aspf=s"),
     "example.com", spf_pass("example.com"), [passing("example.com")],
     {"result": "pass", "org_domain": None}),
]


@pytest.mark.parametrize(("records", "from_domain", "spf", "dkim", "expected"),
                         [case[1:] for case in TREEWALK_CASES], ids=[case[0] for case in TREEWALK_CASES])
def test_evaluate_treewalk(records, from_domain, spf, dkim, expected):
    result = evaluate(from_domain, spf, dkim, FakeResolver(records), None, discovery="treewalk", sample=never)
    assert {key: getattr(result, key) for key in expected} == expected


def test_deep_tree_walk_makes_the_rfc_queries():
    # RFC 9989 §4.10 / B.4.2: eight queries at most, skipping to the last seven labels
    resolver = FakeResolver(published(example_com=REJECT))
    evaluate(DEEP, None, [], resolver, None, discovery="treewalk")
    assert resolver.queries == [f"_dmarc.{name}/TXT" for name in (
        DEEP, "g.h.i.j.k.example.com", "h.i.j.k.example.com", "i.j.k.example.com", "j.k.example.com",
        "k.example.com", "example.com", "com")]


def test_psd_n_stops_the_walk():
    resolver = FakeResolver(published(dept_example_com="v=DMARC1; p=quarantine; psd=n", example_com=REJECT))
    evaluate("a.dept.example.com", None, [], resolver, None, discovery="treewalk")
    assert resolver.queries == ["_dmarc.a.dept.example.com/TXT", "_dmarc.dept.example.com/TXT"]


# (failing names, SPF, DKIM, expected result)
TREEWALK_DNS_ERRORS = [
    (["_dmarc.com"], None, [], "temperror"),  # during policy discovery
    (["_dmarc.example.net"], None, [passing("example.net")], "temperror"),  # alignment walk, nothing else
    (["_dmarc.example.net"], spf_pass("mail.example.com"), [passing("example.net")], "pass"),
]


@pytest.mark.parametrize(("failing_names", "spf", "dkim", "expected"), TREEWALK_DNS_ERRORS)
def test_treewalk_dns_errors(failing_names, spf, dkim, expected):
    resolver = FakeResolver(published(example_com=REJECT), failing=failing_names)
    result = evaluate("mail.example.com", spf, dkim, resolver, None, discovery="treewalk")
    assert result.result == expected
