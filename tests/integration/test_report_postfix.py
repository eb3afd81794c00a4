"""`policy-milter report` on the log the milter wrote while a known set of messages went through
the real Postfix: first with key=value lines, then (restarted) with --log-format json, in one file."""

from __future__ import annotations

import gzip
import json
import smtplib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import DEFAULT_POLICY, OFFLINE
from tests.integration.stack import MailStack, transaction, unverified_tls_context

pytestmark = pytest.mark.integration

INSECURE = unverified_tls_context()
INBOUND = 3          # port 25, anonymous, accepted
UNAUTHENTICATED = 2  # port 587 without AUTH: 530 at MAIL FROM
ALICE_OK = 4         # port 587 as alice, her own address
# and one message as alice claiming bob@example.org (550 at MAIL FROM), one as carol on 465


def message(sender: str, rcpt: str) -> bytes:
    return f"From: {sender}\r\nTo: {rcpt}\r\nSubject: report test\r\n\r\nhello\r\n".encode()


def send(client: smtplib.SMTP, sender: str, rcpt: str = "friend@elsewhere.test") -> int:
    return transaction(client, sender, rcpt, message(sender, rcpt))[0]


def logged_in(stack: MailStack, login: str) -> smtplib.SMTP:
    client = smtplib.SMTP("127.0.0.1", stack.ports["submission"], timeout=30)
    client.starttls(context=INSECURE)
    client.login(login, stack.users[login])
    return client


def report(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "policymilter", "report", *args], input=stdin,
                          capture_output=True, timeout=60, check=False)


@pytest.fixture(scope="module")
def milter_log(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with MailStack(tmp_path_factory.mktemp("stack")) as stack:
        command = [sys.executable, "-m", "policymilter", "run", "--policy", str(DEFAULT_POLICY),
                   "--socket", f"unix:{stack.milter_socket}", "--workers", "2",
                   *(part for override in OFFLINE for part in ("-o", override))]
        stack.start_milter(command)  # key=value lines
        for n in range(INBOUND):
            with smtplib.SMTP("127.0.0.1", stack.ports["smtp"], timeout=30) as client:
                assert send(client, f"in-{n}@example.net", "user@example.test") == 250
        with smtplib.SMTP("127.0.0.1", stack.ports["submission"], timeout=30) as client:
            client.starttls(context=INSECURE)
            for _ in range(UNAUTHENTICATED):
                assert send(client, "nobody@example.net") == 530
                client.rset()
        assert stack.stop_milter() == 0

        stack.start_milter([*command, "--log-format", "json"])  # the same file goes on in JSON
        with logged_in(stack, "alice") as client:
            for _ in range(ALICE_OK):
                assert send(client, "alice@example.org") == 250
            assert send(client, "bob@example.org") == 550
        with smtplib.SMTP_SSL("127.0.0.1", stack.ports["submissions"], context=INSECURE, timeout=30) as client:
            client.login("carol", stack.users["carol"])
            assert send(client, "carol@example.org") == 250
        assert stack.stop_milter() == 0
        yield stack.milter_log_path


def counted(entries: list[dict[str, Any]]) -> dict[str, int]:
    return {entry["key"]: entry["count"] for entry in entries}


def test_the_report_counts_the_messages_sent(milter_log: Path):
    text = milter_log.read_text()
    kv_lines = [line for line in text.splitlines() if " summary " in line and not line.startswith("{")]
    json_lines = [line for line in text.splitlines() if line.startswith("{") and '"event": "summary"' in line]
    assert (len(kv_lines), len(json_lines)) == (INBOUND + UNAUTHENTICATED, ALICE_OK + 2)  # both formats

    run = report("--json", "--spike-min", "3", str(milter_log))
    assert run.returncode == 0, run.stderr.decode()
    result = json.loads(run.stdout)
    total = INBOUND + UNAUTHENTICATED + ALICE_OK + 2
    assert (result["input"]["summaries"], result["input"]["malformed"]) == (total, 0)
    assert result["messages"] == {
        "total": total,
        "by_verdict": {"accept": INBOUND + ALICE_OK + 1, "reject": UNAUTHENTICATED + 1},
        "by_listener": {
            "smtp": {"total": INBOUND, "accept": INBOUND},
            "submission": {"total": UNAUTHENTICATED + ALICE_OK + 1, "accept": ALICE_OK, "reject": UNAUTHENTICATED + 1},
            "submissions": {"total": 1, "accept": 1},
        },
    }
    reject = result["refused"]["reject"]
    assert counted(reject["senders"]) == {"<nobody@example.net>": UNAUTHENTICATED, "<bob@example.org>": 1}
    assert counted(reject["deciders"]) == {"origin": UNAUTHENTICATED, "sender": 1}
    assert counted(reject["clients"]) == {"127.0.0.1": UNAUTHENTICATED + 1}
    assert counted(reject["reasons"]) == {
        "origin: listener submission requires authentication": UNAUTHENTICATED,
        "sender: login alice may not use envelope bob@example.org": 1,
    }
    assert result["refused"]["tempfail"]["total"] == 0
    checks = result["checks"]
    assert checks["origin"] == {"pass": total - UNAUTHENTICATED, "fail": UNAUTHENTICATED}
    assert checks["sender"]["fail"] == 1 and checks["sender"]["pass"] == ALICE_OK + 1
    # off (-o spf.enabled=false): `-` where the listener would run it, else skipped:listener
    assert checks["spf"] == {"not-run": INBOUND, "skipped": total - INBOUND}
    times = result["times"]["by_listener"]
    assert {listener: kinds["ms"]["count"] for listener, kinds in times.items()} == {
        "smtp": INBOUND, "submission": UNAUTHENTICATED + ALICE_OK + 1, "submissions": 1}
    assert all(k["ms"]["p50"] <= k["ms"]["p99"] <= k["ms"]["max"] for k in times.values())

    logins = {row["login"]: row for row in result["logins"]["top"]}
    assert set(logins) == {"alice", "carol"}
    alice = logins["alice"]
    assert (alice["messages"], alice["refused"]) == (ALICE_OK + 1, 1)
    assert counted(alice["top_senders"]) == {"<alice@example.org>": ALICE_OK, "<bob@example.org>": 1}
    # --spike-min 3: alice's 5 messages are a spike if they fell in one hour (no other hour to
    # compare with); split across an hour boundary, no part is above 3 and 10 x the other
    hours = alice["hours"]
    assert sum(hours.values()) == ALICE_OK + 1
    spikes = [(s["login"], s["hour"]) for s in result["logins"]["spikes"]]
    assert spikes == ([("alice", next(iter(hours)))] if len(hours) == 1 else [])


def test_the_report_reads_the_log_gzipped_on_standard_input_and_filters_by_time(milter_log: Path):
    whole = json.loads(report("--json", str(milter_log)).stdout)
    packed = report("--json", "-", stdin=gzip.compress(milter_log.read_bytes()))
    assert packed.returncode == 0 and json.loads(packed.stdout)["messages"] == whole["messages"]
    later = json.loads(report("--json", "--since", whole["window"]["last"], str(milter_log)).stdout)
    # the last message's second and after (the log has milliseconds, the window seconds)
    assert 1 <= later["messages"]["total"] <= whole["messages"]["total"]
    assert later["messages"]["total"] + later["input"]["outside_window"] == whole["messages"]["total"]
    none = json.loads(report("--json", "--until", whole["window"]["first"], str(milter_log)).stdout)
    assert none["messages"]["total"] == 0 and none["input"]["outside_window"] == whole["messages"]["total"]


def test_the_text_report(milter_log: Path):
    run = report("--spike-min", "3", str(milter_log))
    assert run.returncode == 0
    out = run.stdout.decode()
    print(out)  # the README's example comes from this run
    assert f"Messages by listener and verdict ({INBOUND + UNAUTHENTICATED + ALICE_OK + 2})" in out
    assert f"        {UNAUTHENTICATED}  <nobody@example.net>\n" in out
    assert "per-check times are not in the summary line" in out
