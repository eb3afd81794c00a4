"""The command line: check-policy, explain, and -o overrides."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from policymilter.cli import main
from tests.conftest import DEFAULT_POLICY

# Hermetic: DNS checks in these tests ask a closed loopback port (fast temperror), never the
# machine's resolver. The DNS checks have their own tests against a real DNS server.
NO_DNS = ("-o", 'dns.nameservers=["127.0.0.1:9"]', "-o", "dns.timeout=0.1", "-o", "dns.lifetime=0.3",
          "-o", "antivirus.enabled=false", "-o", "spam.enabled=false")
MESSAGE = b"From: Alice <alice@example.org>\nTo: bob@elsewhere.test\nSubject: hi\n\nhello\n"


def test_check_policy_ok(capsys):
    assert main(["check-policy", str(DEFAULT_POLICY)]) == 0
    assert "OK (3 listeners: smtp, submission, submissions" in capsys.readouterr().out


def test_check_policy_broken_prints_file_line_errors_and_exits_2(tmp_path):
    broken = tmp_path / "broken.toml"
    broken.write_text('[listeners.smtp]\nports = [25]\naut = "required"\n\n[dns]\ntimeout = -1\n')
    run = subprocess.run([sys.executable, "-m", "policymilter", "check-policy", str(broken)],
                         capture_output=True, text=True, check=False)
    assert run.returncode == 2
    assert run.stderr.splitlines()[:2] == [
        f"{broken}:3: listeners.smtp.aut: unknown key; did you mean 'auth'?",
        f"{broken}:6: dns.timeout: Input should be greater than 0",
    ]


def test_check_policy_with_override(capsys):
    assert main(["check-policy", str(DEFAULT_POLICY), "-o", "dns.timeout=never"]) == 2
    assert capsys.readouterr().err.startswith('-o:1: dns.timeout: Input should be a valid number, not "never"')


def explain_json(tmp_path: Path, capsys, *args: str) -> dict:
    eml = tmp_path / "m.eml"
    eml.write_bytes(MESSAGE)
    assert main(["explain", "--policy", str(DEFAULT_POLICY), *NO_DNS, *args, "--json", str(eml)]) == 0
    return json.loads(capsys.readouterr().out)


def test_explain_submission_without_auth(tmp_path, capsys):
    report = explain_json(tmp_path, capsys, "--listener", "submission")
    assert report["verdict"] == "reject" and report["smtp_reply"].startswith("530 5.7.0")
    assert report["checks"][0]["check"] == "origin" and report["headers_added"] == []


def test_explain_submission_with_auth_over_tls(tmp_path, capsys):
    report = explain_json(tmp_path, capsys, "--listener", "submission", "--auth", "alice:LOGIN", "--tls")
    assert report["verdict"] == "accept" and report["smtp_reply"].startswith("250")


def test_explain_override_changes_the_verdict(tmp_path, capsys):
    report = explain_json(tmp_path, capsys, "--listener", "submission", "-o", 'listeners.submission.auth="optional"')
    assert report["verdict"] == "accept"


def test_explain_unknown_listener_name_is_a_clear_error(tmp_path, capsys):
    eml = tmp_path / "m.eml"
    eml.write_bytes(MESSAGE)
    assert main(["explain", "--policy", str(DEFAULT_POLICY), "--listener", "smpt", str(eml)]) == 2
    assert "no such listener (listeners: smtp, submission, submissions)" in capsys.readouterr().err


def test_run_refuses_a_bad_socket_spec(capsys):
    assert main(["run", "--policy", str(DEFAULT_POLICY), "--socket", "/tmp/x.sock"]) == 2
    assert "expected unix:/path" in capsys.readouterr().err


def test_run_with_syslog_but_no_syslog_socket_says_so(capsys, monkeypatch, tmp_path):
    monkeypatch.setattr("policymilter.logs.SYSLOG_SOCKET", str(tmp_path / "no-log"))
    assert main(["run", "--policy", str(DEFAULT_POLICY), "--socket", "unix:/tmp/x.sock", "--syslog"]) == 1
    assert "--syslog: cannot reach the syslog socket" in capsys.readouterr().err


def test_explain_picks_the_named_listener_even_if_another_claims_its_daemon_name(tmp_path, capsys):
    policy = tmp_path / "p.toml"
    policy.write_text('[listeners.a]\nports = [25]\n[listeners.b]\ndaemon_name = "a"\nauth = "required"\n'
                      '[listeners.b.authenticated]\n')
    eml = tmp_path / "m.eml"
    eml.write_bytes(b"no headers at all\n")
    assert main(["check-policy", str(policy)]) == 2  # two listeners claim daemon name "a"
    assert "already matched by listeners.a" in capsys.readouterr().err


def test_explain_survives_binary_garbage(tmp_path, capsys):
    eml = tmp_path / "m.eml"
    eml.write_bytes(bytes(range(256)) * 4)
    assert main(["explain", "--policy", str(DEFAULT_POLICY), *NO_DNS, "--listener", "smtp", "--json", str(eml)]) == 0
    report = json.loads(capsys.readouterr().out)
    # no From header at all: DMARC cannot be evaluated, and the policy refuses such mail
    assert report["verdict"] == "reject" and "exactly one From" in report["smtp_reply"]


def test_run_refuses_group_without_user_and_unknown_users(capsys):
    assert main(["run", "--policy", str(DEFAULT_POLICY), "--socket", "unix:/tmp/x.sock", "--group", "postfix"]) == 2
    assert "--group needs --user too" in capsys.readouterr().err
    assert main(["run", "--policy", str(DEFAULT_POLICY), "--socket", "unix:/tmp/x.sock", "--user", "nosuchuser"]) == 2
    assert "--user 'nosuchuser': no such user" in capsys.readouterr().err


def test_run_refuses_an_impossible_port(capsys):
    assert main(["run", "--policy", str(DEFAULT_POLICY), "--socket", "inet:99999@127.0.0.1"]) == 2
    assert "PORT 1-65535" in capsys.readouterr().err
