"""dmarc-reports read on a generated corpus: what each domain and source adds up to, what is skipped
and why, duplicates, --since, the domain filter, and the exit status."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from policymilter.cli import main
from tests.conftest import DEFAULT_POLICY
from tests.dmarcreportkit import BEGIN, DAY, Row, Spec, report_mail, report_xml, zipped
from tests.unit.dmarc_corpus import build


@pytest.fixture
def corpus(tmp_path: Path) -> list[str]:
    return [str(path) for path in build(tmp_path)]


def run_json(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, Any], list[str]]:
    status = main(["dmarc-reports", "read", "--json", *args])
    captured = capsys.readouterr()
    return status, json.loads(captured.out), captured.err.splitlines()


def _domains(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {domain["domain"]: domain for domain in result["domains"]}


# domain -> (messages, reports, reporters, verdicts, readiness status, final line)
DOMAINS = {
    "example.com": (192, 4, ["outlook.example", "gmx.example", "web.example"],
                    {"aligned": 160, "fails SPF only": 30, "fails DKIM only": 0, "fails both": 2},
                    "ready for p=quarantine", "READY for p=quarantine"),
    "example.net": (203, 1, ["yahoo.example"],
                    {"aligned": 200, "fails SPF only": 0, "fails DKIM only": 0, "fails both": 3},
                    "ready for p=reject", "READY for p=reject"),
    "example.org": (1155, 2, ["google.com", "mail.example"],
                    {"aligned": 900, "fails SPF only": 150, "fails DKIM only": 60, "fails both": 45},
                    "not ready", "NOT READY: 40 messages from 1 source fail both (largest: 203.0.113.5, 40 messages)"),
}

# domain -> [(ip, messages, verdict, dispositions)], in the order shown (by messages)
SOURCES = {
    "example.com": [("192.0.2.10", 150, "aligned", {"none": 150}),
                    ("192.0.2.11", 40, "fails SPF only", {"none": 40}),
                    ("203.0.113.7", 2, "fails both", {"none": 2})],
    "example.net": [("192.0.2.10", 200, "aligned", {"none": 200}),
                    ("203.0.113.50", 3, "fails both", {"quarantine": 3})],
    "example.org": [("192.0.2.10", 900, "aligned", {"none": 900}),
                    ("198.51.100.7", 150, "fails SPF only", {"none": 150}),
                    ("2001:db8::25", 60, "fails DKIM only", {"none": 60}),
                    ("203.0.113.5", 40, "fails both", {"none": 40}),
                    ("203.0.113.99", 5, "fails both", {"none": 5})],
}

# (file, reason): every broken or hostile input, in the order given
SKIPPED = [
    ("bad-count.xml", "'abc' is not a non-negative integer (where: feedback/record[1]/row/count, line 22)"),
    ("no-id.xml.gz", "missing <report_id> (where: feedback/report_metadata, line 3)"),
    ("cut.xml.gz", "gzip stream cut short (truncated)"),
    ("xxe.xml", "has a DOCTYPE (entities are not allowed)"),
    ("lol.xml", "has a DOCTYPE (entities are not allowed)"),
]


def test_every_domain_adds_up(corpus: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    status, result, _ = run_json(capsys, *corpus)
    assert status == 1  # some input was skipped
    domains = _domains(result)
    assert sorted(domains) == sorted(DOMAINS)
    for name, (messages, reports, reporters, verdicts, readiness, line) in DOMAINS.items():
        domain = domains[name]
        assert (domain["messages"], domain["reports"], [r["org_name"] for r in domain["reporters"]],
                domain["verdicts"], domain["readiness"]["status"], domain["readiness"]["line"]) == (
                    messages, reports, reporters, verdicts, readiness, line), name
        assert [(s["ip"], s["messages"], s["verdict"], s["dispositions"]) for s in domain["sources"]] == SOURCES[name]
        assert all(source["ptr"] is None for source in domain["sources"])  # not looked up without --resolve


def test_the_period_policy_and_auth_results_are_the_reports(corpus: list[str],
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    _, result, _ = run_json(capsys, *corpus)
    org = _domains(result)["example.org"]
    assert (org["begin"], org["end"]) == ("2025-12-01T00:00:00Z", "2025-12-02T23:59:59Z")
    # The latest report (RFC 9990, day 2) gives the policy: np and testing are its elements.
    assert org["policy"] == {"p": "none", "sp": "none", "np": "reject", "pct": None, "adkim": "r", "aspf": "r",
                             "testing": "n"}
    com = {source["ip"]: source for source in _domains(result)["example.com"]["sources"]}
    assert com["192.0.2.11"]["verdicts"] == {"fails SPF only": 30, "aligned": 10}
    assert com["192.0.2.11"]["dkim"] == [
        {"result": "pass", "domain": "example.com", "selector": "s1", "messages": 40},
        {"result": "pass", "domain": "lists.example", "selector": "l1", "messages": 30}]
    assert com["192.0.2.11"]["spf"] == [
        {"result": "softfail", "domain": "bounce.elsewhere.test", "scope": "mfrom", "messages": 30},
        {"result": "pass", "domain": "example.com", "scope": "mfrom", "messages": 10}]
    assert com["192.0.2.11"]["reporters"] == ["gmx.example", "web.example"]


def test_skips_are_named_with_the_reason_and_the_run_goes_on(corpus: list[str],
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    _, result, stderr = run_json(capsys, *corpus)
    skipped = [(Path(item["origin"]).name, item["reason"]) for item in result["input"]["skipped"]]
    assert skipped == SKIPPED
    assert stderr == [f"{Path(corpus[0]).parent / name}: skipped: {reason}" for name, reason in SKIPPED]
    assert (result["input"]["documents"], result["input"]["reports"]) == (12, 7)


def test_a_report_read_twice_counts_once(corpus: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    _, result, _ = run_json(capsys, *corpus)
    root = Path(corpus[0]).parent
    assert result["input"]["duplicates"] == [{
        "org_name": "google.com", "report_id": "g-1", "origin": f"{root}/rua.mbox: message 2: g-1.xml.gz",
        "first": f"{root}/google.xml.gz"}]


def test_text_output(corpus: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["dmarc-reports", "read", *corpus]) == 1
    out = capsys.readouterr().out.splitlines()
    root = Path(corpus[0]).parent
    assert out[:2] == [
        "read: 12 document(s), 7 report(s), 5 skipped, 1 duplicate(s), 0 before --since",
        f"  duplicate: google.com report g-1 in {root}/rua.mbox: message 2: g-1.xml.gz (read first in "
        f"{root}/google.xml.gz): counted once"]
    for line in [
        "example.org: 1155 messages in 2 report(s), 2025-12-01T00:00:00Z .. 2025-12-02T23:59:59Z; published (latest "
        "report): p=none, sp=none, np=reject, adkim=r, aspf=r, testing=n",
        "  reporters: google.com (1 report(s), 790 messages, 68%), mail.example (1 report(s), 365 messages, 32%)",
        "  verdicts: aligned 900 (78%), fails SPF only 150 (13%), fails DKIM only 60 (5.2%), fails both 45 (3.9%)",
        "    2001:db8::25: 60 messages, fails DKIM only; passes by SPF alone, breaks when forwarded",
        "      spf: pass example.org 60; dkim: fail example.org s=s1 60",
        "    192.0.2.11: 40 messages, fails SPF only (aligned 10, fails SPF only 30); passes by DKIM, forwarding-safe",
        "  NOT READY: 40 messages from 1 source fail both (largest: 203.0.113.5, 40 messages)",
        "    under p=quarantine that mail would be quarantined",
        "  READY for p=reject",
        "    3 messages (1.5%) from 1 source fail both, under 10% with none above 2%: likely forgeries",
        "  READY for p=quarantine",
    ]:
        assert line in out


@pytest.mark.parametrize(("since", "domains", "outside"), [
    ("2025-12-02", {"example.org": 365, "example.com": 72}, 5),  # only the reports of the second day
    ("2025-11-01", {"example.org": 1155, "example.com": 192, "example.net": 203}, 0),
    ("2026-01-01T00:00Z", {}, 7),
])
def test_since_keeps_reports_ending_after_it(corpus: list[str], capsys: pytest.CaptureFixture[str], since: str,
                                             domains: dict[str, int], outside: int) -> None:
    _, result, _ = run_json(capsys, "--since", since, *corpus)
    assert {name: domain["messages"] for name, domain in _domains(result).items()} == domains
    assert result["input"]["outside_since"] == outside


def test_policy_limits_the_summary_to_site_domains(corpus: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    _, result, _ = run_json(capsys, "--policy", str(DEFAULT_POLICY), "-o", 'site.domains=["example.org", "com"]',
                            *corpus)
    # "com" holds example.com as a subdomain; example.net is not ours.
    assert sorted(_domains(result)) == ["example.com", "example.org"]
    assert result["input"]["not_ours"] == {"example.net": 1}
    _, result, _ = run_json(capsys, "--domain", "example.net", *corpus)
    assert sorted(_domains(result)) == ["example.net"]


@pytest.mark.parametrize(("args", "message"), [
    (["--since", "yesterday"], "dmarc-reports read: --since 'yesterday': expected an ISO time"),
    (["-o", "site.domains=[]"], "dmarc-reports read: -o needs --policy"),
    (["--policy", "/nonexistent/policy"], "/nonexistent/policy:0: (policy): no such file or directory"),
])
def test_bad_arguments_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str],
                              message: str) -> None:
    assert main(["dmarc-reports", "read", *args, str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith(message)


def test_all_read_exits_0(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    paths = build(tmp_path)
    good = [str(path) for path in paths if path.name in ("google.xml.gz", "yahoo.xml", "rua.mbox", "Maildir")]
    status, result, stderr = run_json(capsys, *good)
    assert (status, stderr, result["input"]["skipped"]) == (0, [], [])
    assert len(result["input"]["duplicates"]) == 1


def test_a_missing_file_is_a_skip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, result, _ = run_json(capsys, str(tmp_path / "nope.xml"))
    assert status == 1
    assert result["input"]["skipped"] == [{"origin": str(tmp_path / "nope.xml"),
                                           "reason": "cannot read: No such file or directory"}]


# -- the attack review (notes/attack-read.md), through the command ---------------------------------------------

REAL_DAYS = [Spec("google.com", f"real{n}", "example.org", "none", begin=BEGIN + n * DAY, end=BEGIN + (n + 1) * DAY - 1,
                  rows=(Row("192.0.2.1", 50, "pass", "pass"), Row("198.51.100.7", 15, "fail", "fail")))
             for n in range(21)]
FAILING = "NOT READY: 315 messages from 1 source fail both (largest: 198.51.100.7, 315 messages)"
FORGED_FUTURE = Spec("Yahoo", "f2", "example.org", "quarantine", begin=0, end=253402300799,
                     rows=(Row("203.0.113.9", 10**6, "pass", "pass"),))
FORGED_COPY = Spec("google.com", "real0", "example.org", "none", begin=BEGIN, end=BEGIN + DAY - 1,
                   rows=(Row("192.0.2.1", 50, "pass", "pass"),))


def write(root: Path, specs: dict[str, Spec]) -> list[str]:
    for name, spec in specs.items():
        (root / name).write_bytes(report_xml(spec))
    return [str(root / name) for name in specs]


@pytest.mark.parametrize(("name", "forged", "args", "line", "skipped", "conflicts"), [
    # 6: the forgery's end (9999) made it "latest" (its p=quarantine) and escaped --since.
    ("future", {"z.xml": FORGED_FUTURE}, [], FAILING, 1, 0),
    ("future with --since", {"z.xml": FORGED_FUTURE}, ["--since", "2025-12-15"],
     "NOT READY: 105 messages from 1 source fail both (largest: 198.51.100.7, 105 messages)", 1, 0),
    # 7: the same key read first, all aligned: the real failures used to vanish as its "duplicate".
    ("conflict read first", {"0.xml": FORGED_COPY}, [], FAILING, 0, 1),
    ("a true duplicate", {"0.xml": REAL_DAYS[0]}, [], FAILING, 0, 0),
])
def test_forged_reports_never_hide_failing_mail(tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str,
                                                forged: dict[str, Spec], args: list[str], line: str, skipped: int,
                                                conflicts: int) -> None:
    first = write(tmp_path, forged)
    real = write(tmp_path, {f"real{n:02}.xml": spec for n, spec in enumerate(REAL_DAYS)})
    _, result, _ = run_json(capsys, *args, *first, *real)
    (domain,) = result["domains"]
    assert (domain["readiness"]["line"], len(result["input"]["skipped"]), len(result["input"]["conflicts"])) == (
        line, skipped, conflicts)
    assert domain["policy"]["p"] == "none"  # never the forgery's
    if name == "a true duplicate":
        assert [d["report_id"] for d in result["input"]["duplicates"]] == ["real0"]


def test_input_text_reaches_the_terminal_printable(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """9: a content type, a file name, a member name with escape sequences: printed as '?'."""
    spec = REAL_DAYS[0]
    message = report_mail(spec, b"\x1f\x8bjunk", "r.gz", "application/gzip")
    message.get_payload()[1].replace_header("Content-Type", "application/x-\x1b[2J\x1b]0;title\x07")
    (tmp_path / "c.eml").write_bytes(message.as_bytes())
    (tmp_path / "z.zip").write_bytes(zipped({"\x1b[31mred.xml": b"hello"}))
    assert main(["dmarc-reports", "read", str(tmp_path / "c.eml"), str(tmp_path / "z.zip")]) == 1
    captured = capsys.readouterr()
    assert not any(char in captured.out + captured.err for char in "\x1b\x07\x9b")
    assert captured.err.splitlines()[-1] == f"{tmp_path}/z.zip: member ?[31mred.xml: skipped: not XML"


def test_the_filter_is_named_by_the_option_given(corpus: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """11: "not our domains (--policy)" was printed under --domain too."""
    main(["dmarc-reports", "read", "--domain", "example.net", *corpus])
    out = capsys.readouterr().out.splitlines()
    assert "  not our domains (--domain): example.com 4, example.org 2 report(s)" in out
