"""`python -m policymilter dmarc-reports read` as a program: output streams and exit status."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO
from tests.unit.dmarc_corpus import build


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "policymilter", "dmarc-reports", "read", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120, check=False)


def test_the_corpus_through_the_command(tmp_path: Path) -> None:
    paths = [str(path) for path in build(tmp_path)]
    done = run("--json", *paths)
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        f"{tmp_path}/bad-count.xml: skipped: 'abc' is not a non-negative integer (where: "
        "feedback/record[1]/row/count, line 22)",
        f"{tmp_path}/no-id.xml.gz: skipped: missing <report_id> (where: feedback/report_metadata, line 3)",
        f"{tmp_path}/cut.xml.gz: skipped: gzip stream cut short (truncated)",
        f"{tmp_path}/xxe.xml: skipped: has a DOCTYPE (entities are not allowed)",
        f"{tmp_path}/lol.xml: skipped: has a DOCTYPE (entities are not allowed)",
    ]
    result = json.loads(done.stdout)
    assert {d["domain"]: (d["messages"], d["readiness"]["line"]) for d in result["domains"]} == {
        "example.com": (192, "READY for p=quarantine"),
        "example.net": (203, "READY for p=reject"),
        "example.org": (1155, "NOT READY: 40 messages from 1 source fail both (largest: 203.0.113.5, 40 messages)"),
    }
    assert "passwd" not in done.stdout + done.stderr and "root:" not in done.stdout + done.stderr


def test_exit_status(tmp_path: Path) -> None:
    paths = build(tmp_path)
    clean = run(str(tmp_path / "yahoo.xml"))
    assert (clean.returncode, clean.stderr) == (0, "")
    assert clean.stdout.splitlines()[0] == ("read: 1 document(s), 1 report(s), 0 skipped, 0 duplicate(s), "
                                            "0 before --since")
    assert run().returncode == 2  # no PATH
    assert run("--max-xml", "0", str(paths[0])).returncode == 2
    assert "Traceback" not in run(str(tmp_path / "lol.xml")).stderr


def test_a_bad_nameserver_is_a_bad_argument(tmp_path: Path) -> None:
    done = run("--resolve", "--nameserver", "bogus", str(tmp_path))
    assert done.returncode == 2
    assert done.stderr.splitlines()[-1] == ("policy-milter dmarc-reports read: error: argument --nameserver: 'bogus': "
                                            "expected an IP address, optionally :PORT (127.0.0.1:5353, [::1]:53)")
