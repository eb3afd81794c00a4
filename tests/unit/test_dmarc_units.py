"""contrib/systemd's DMARC report units: the command they run is one the CLI takes, as the
user that owns the store and keys, once a day after the daily period is over."""

from __future__ import annotations

import configparser
import shlex

from policymilter.cli import DEFAULT_POLICY, build_parser
from tests.conftest import REPO

UNITS = REPO / "contrib" / "systemd"


def unit(name: str) -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(strict=False, interpolation=None)  # systemd repeats some keys
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string((UNITS / name).read_text())
    return parser


def test_the_service_runs_send_as_the_milter_user_once():
    service = unit("policy-milter-dmarc-reports.service")["Service"]
    assert (service["Type"], service["User"]) == ("oneshot", "policy-milter")
    program, *argv = shlex.split(service["ExecStart"])
    assert program == "/opt/policy-milter/bin/policy-milter"
    args = build_parser().parse_args(argv)
    assert (args.command, args.verb, args.policy, args.dry_run, args.archive) == (
        "dmarc-reports", "send", DEFAULT_POLICY, False, None)
    assert service["CapabilityBoundingSet"] == ""
    assert service["StateDirectory"] == "policy-milter"  # the SQLite store's directory, writable


def test_the_timer_fires_daily_after_midnight_utc_spread_and_catching_up():
    timer = unit("policy-milter-dmarc-reports.timer")["Timer"]
    assert timer["OnCalendar"] == "*-*-* 00:20:00 UTC"
    assert timer["Persistent"] == "true"
    assert timer["RandomizedDelaySec"] == "40min"
    assert unit("policy-milter-dmarc-reports.timer")["Install"]["WantedBy"] == "timers.target"
