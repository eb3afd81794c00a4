"""The throughput benchmark still runs end to end: in its smoke mode it prints every table.

Figures are not asserted (this machine is shared and noisy); the shape of the report is, and
the benchmark's own check that each path did what it claims (its check message's summary).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
PATH_TITLES = {
    "a": "port 25, DKIM-signed 5 KB",
    "b": "port 25, 5 KB plain text",
    "c": "port 25, 100 KB attachments",
    "d": "587 STARTTLS+AUTH",
}
# msg/s, x alone, x null, p50, p99, CPU ms/msg, RSS, PSS, max MiB, processes ("-" where it does not apply)
ROW = r"^    {label}( +(\d+(\.\d+)?|-)){{10}}$"


def test_throughput_quick_prints_every_table() -> None:
    done = subprocess.run([sys.executable, "-m", "benchmarks.throughput", "--quick"], cwd=REPO,
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-4000:]
    out = done.stdout
    sections = re.split(r"^\((?=[abcd]\) )", out, flags=re.MULTILINE)
    paths = sections[1:5]  # then "(c) size growth ...", then the targets
    titles = {section[0]: section.splitlines()[0] for section in paths}
    for key, title in PATH_TITLES.items():
        assert title in titles.get(key, ""), out
    for section in paths:
        assert "check message: " in section and "verdict=accept" in section, section
        for label in ("Postfix alone", "do-nothing milter", "policy-milter --workers 1",
                      r"policy-milter \(default workers\)"):
            assert re.search(ROW.format(label=label), section, re.MULTILINE), f"no {label} row:\n{section}"
    assert re.search(r"^\(c\) size growth", out, re.MULTILINE), out
    assert re.search(r"^    policy-milter \(default workers\)( +\d+\.\d){6}$", out, re.MULTILINE), out
    targets = out.split("targets (policy-milter configurations):\n", 1)[1]
    assert len(re.findall(r"^    (PASS|MISS)  policy-milter", targets, re.MULTILINE)) >= 7, targets
