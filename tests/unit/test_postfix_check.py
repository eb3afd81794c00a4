"""check-postfix's logic on canned `postconf` output (the real postconf: tests/integration/test_check_postfix.py)."""

from __future__ import annotations

import logging
import os
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path

import pytest

from policymilter import postfix_check
from policymilter.listeners import MatchedBy
from policymilter.logs import LOGGER
from policymilter.policy import load_policy
from policymilter.policy.model import Policy
from policymilter.postfix_check import (
    MasterService,
    MilterEntry,
    OurSocket,
    PostfixConfig,
    Report,
    Severity,
    check,
    parse_milters,
    read_config,
    seconds,
    service_port,
    warn_at_start,
)
from tests.conftest import DEFAULT_POLICY, LogWatch

# What `postconf -x NAME...` prints on a Debian set-up from contrib/postfix (chrooted smtpd).
MAIN = {
    "smtpd_milters": "unix:/policy-milter/milter.sock",
    "milter_default_action": "tempfail",
    "milter_protocol": "6",
    "milter_connect_timeout": "30s",
    "milter_command_timeout": "30s",
    "milter_content_timeout": "300s",
    "milter_macro_daemon_name": "mx.example.org",
    "myhostname": "mx.example.org",
    "queue_directory": "/var/spool/postfix",
    "smtpd_sasl_auth_enable": "no",
    "milter_connect_macros": "j {daemon_name} {daemon_port} {daemon_addr} v _",
    "milter_helo_macros": "{tls_version} {cipher} {cipher_bits} {cert_subject} {cert_issuer}",
    "milter_mail_macros": "i {auth_type} {auth_authen} {auth_author} {mail_addr} {mail_host} {mail_mailer}",
    "milter_end_of_data_macros": "i",
}

# `postconf -F` (the columns that matter) and `postconf -P -x`.
SERVICES = {
    ("smtp", "inet"): ("y", "smtpd", {"milter_macro_daemon_name": "smtp", "smtpd_sasl_auth_enable": "yes"}),
    ("submission", "inet"): ("y", "smtpd", {"milter_macro_daemon_name": "submission",
                                            "smtpd_sasl_auth_enable": "yes"}),
    ("submissions", "inet"): ("y", "smtpd", {"milter_macro_daemon_name": "submissions",
                                             "smtpd_sasl_auth_enable": "yes"}),
    # A content filter's way back in: no milter there, and rightly so.
    ("127.0.0.1:10025", "inet"): ("n", "smtpd", {"smtpd_milters": ""}),
    ("pickup", "unix"): ("y", "pickup", {}),
    ("cleanup", "unix"): ("y", "cleanup", {}),
}


def postconf_text(main: Mapping[str, str], services: Mapping[tuple[str, str], tuple[str, str, dict[str, str]]]
                  ) -> tuple[str, str, str]:
    main_text = "\n".join(f"{name} = {value}".rstrip() for name, value in main.items())
    fields, overrides = [], []
    for (name, kind), (chroot, command, options) in services.items():
        args = "".join(f" -o {key}={value}" for key, value in options.items())
        fields += [f"{name}/{kind}/service = {name}", f"{name}/{kind}/type = {kind}",
                   f"{name}/{kind}/private = n", f"{name}/{kind}/chroot = {chroot}",
                   f"{name}/{kind}/command = {command}{args}"]
        overrides += [f"{name}/{kind}/{key} = {value}".rstrip() for key, value in options.items()]
    return main_text, "\n".join(fields), "\n".join(overrides)


def config(main: Mapping[str, str] | None = None,
           services: Mapping[tuple[str, str], tuple[str, str, dict[str, str]]] | None = None,
           **changes: str) -> PostfixConfig:
    values = {**MAIN, **(main or {}), **changes}
    return PostfixConfig.from_postconf("/etc/postfix", *postconf_text(values, SERVICES if services is None
                                                                      else services))


def with_option(service: str, **options: str) -> dict[tuple[str, str], tuple[str, str, dict[str, str]]]:
    changed = dict(SERVICES)
    chroot, command, current = changed[(service, "inet")]
    changed[(service, "inet")] = (chroot, command, {**current, **options})
    return changed


@pytest.fixture(scope="module")
def policy() -> Policy:
    return load_policy(DEFAULT_POLICY).policy


def lines(report: Report) -> list[str]:
    return [text for _, text in report.finding_lines()]


# ---------------------------------------------------------------- parsing


@pytest.mark.parametrize(("value", "entries"), [
    ("", []),
    ("unix:/policy-milter/milter.sock", [MilterEntry("unix:/policy-milter/milter.sock")]),
    ("inet:127.0.0.1:8891, unix:/a.sock", [MilterEntry("inet:127.0.0.1:8891"), MilterEntry("unix:/a.sock")]),
    ("inet:127.0.0.1:8891 unix:/a.sock", [MilterEntry("inet:127.0.0.1:8891"), MilterEntry("unix:/a.sock")]),
    ("{ unix:/a.sock, command_timeout = 10s, default_action=accept }, inet:[::1]:8891",
     [MilterEntry("unix:/a.sock", {"command_timeout": "10s", "default_action": "accept"}),
      MilterEntry("inet:[::1]:8891")]),
])
def test_smtpd_milters(value: str, entries: list[MilterEntry]) -> None:
    assert parse_milters(value) == entries


@pytest.mark.parametrize(("value", "expected"), [
    ("30s", 30.0), ("300", 300.0), ("5m", 300.0), ("1h", 3600.0), ("0.5s", 0.5), ("soon", None), ("", None),
])
def test_time_values(value: str, expected: float | None) -> None:
    assert seconds(value) == expected


@pytest.mark.parametrize(("spec", "endpoint", "chroot", "ours"), [
    # default: any socket path ending in policy-milter/milter.sock, chrooted or not
    (None, "unix:/policy-milter/milter.sock", True, True),
    (None, "unix:/run/policy-milter/milter.sock", False, True),
    (None, "unix:/run/opendkim/opendkim.sock", False, False),
    (None, "inet:127.0.0.1:8891", False, False),
    # a chrooted smtpd looks the path up below the queue directory
    ("unix:/var/spool/postfix/policy-milter/milter.sock", "unix:/policy-milter/milter.sock", True, True),
    ("unix:/var/spool/postfix/policy-milter/milter.sock", "unix:/policy-milter/milter.sock", False, False),
    ("unix:/srv/m.sock", "unix:/srv/m.sock", False, True),
    ("local:/srv/m.sock", "unix:/srv/m.sock", False, True),
    # libmilter's inet:PORT@HOST against Postfix's inet:HOST:PORT
    ("inet:8891@127.0.0.1", "inet:127.0.0.1:8891", False, True),
    ("inet:8891@localhost", "inet:127.0.0.1:8891", False, True),
    ("inet:8891", "inet:127.0.0.1:8891", False, True),
    ("inet:8892@127.0.0.1", "inet:127.0.0.1:8891", False, False),
    ("inet:8891@192.0.2.1", "inet:127.0.0.1:8891", False, False),
])
def test_which_milter_is_ours(spec: str | None, endpoint: str, chroot: bool, ours: bool) -> None:
    assert OurSocket(spec).matches(endpoint, chroot, "/var/spool/postfix") is ours


def test_postconf_lines_are_read_into_services() -> None:
    parsed = config()
    smtp = next(service for service in parsed.services if service.name == "smtp")
    assert (smtp.type, smtp.chroot, smtp.command) == ("inet", True, "smtpd")
    assert parsed.value(smtp, "milter_macro_daemon_name") == ("smtp", postfix_check.Where.MASTER)
    assert parsed.value(smtp, "milter_protocol") == ("6", postfix_check.Where.MAIN)
    assert parsed.value(next(s for s in parsed.services if s.name == "127.0.0.1:10025"), "smtpd_milters")[0] == ""


# ---------------------------------------------------------------- the findings


def test_the_shipped_setup_passes(policy: Policy) -> None:
    report = check(config(), policy)
    assert report.severity is Severity.OK, lines(report)
    assert lines(report) == []
    by_name = {service.service.name: service for service in report.services}
    assert set(by_name) == {"smtp", "submission", "submissions", "127.0.0.1:10025"}  # smtpd only
    assert {name: by_name[name].listener.name for name in ("smtp", "submission", "submissions")} == {
        "smtp": "smtp", "submission": "submission", "submissions": "submissions"}
    assert by_name["127.0.0.1:10025"].attached is None and not by_name["127.0.0.1:10025"].listener.known
    assert "worst case at MAIL FROM 22 s of 30 s" in by_name["smtp"].line()
    assert report.summary().endswith("4 smtpd service(s), 3 with the milter; 0 error(s), 0 warning(s): OK")


FINDINGS = [
    # (what changes, severity, text the one line must contain)
    ({"milter_connect_macros": "j {daemon_name} {daemon_addr} v _"}, Severity.WARNING,
     "smtp (master.cf), submission (master.cf), submissions (master.cf): milter_connect_macros lacks "
     "{daemon_port}; "),
    ({"milter_connect_macros": "j {daemon_name} {daemon_addr} v _"}, Severity.WARNING,
     "set milter_connect_macros = j {daemon_name} {daemon_addr} {daemon_port} v _ in main.cf"),
    ({"milter_mail_macros": "i {mail_addr}", "milter_connect_macros": MAIN["milter_connect_macros"] + " {auth_authen}"},
     Severity.WARNING, "{auth_authen} is in milter_connect_macros, but Postfix defines it only from MAIL FROM on"),
    ({"milter_default_action": "accept"}, Severity.WARNING,
     "milter_default_action = accept: mail passes unchecked"),
    ({"milter_default_action": "accept"}, Severity.WARNING, "set milter_default_action = tempfail in main.cf"),
    ({"milter_default_action": "reject"}, Severity.WARNING, "mail is refused for good"),
    ({"milter_protocol": "4"}, Severity.WARNING, "milter_protocol = 4: below 6 Postfix offers neither no-reply"),
    ({"milter_protocol": "2,no_header_reply"}, Severity.WARNING, "set milter_protocol = 6 in main.cf"),
    ({"milter_command_timeout": "10s"}, Severity.ERROR,
     "smtp (master.cf): milter_command_timeout = 10s is shorter than the milter's worst case at MAIL FROM for "
     "listener smtp: 20 s (spf 20) + 2 s"),
    ({"milter_command_timeout": "10s"}, Severity.ERROR, "set milter_command_timeout = 30s in main.cf"),
    ({"milter_content_timeout": "2m"}, Severity.ERROR,
     "milter_content_timeout = 2m is shorter than the milter's worst case at end of message for listener smtp: "
     "210 s (queue 30 + antivirus 60 + spam 60 + dkim 20 + arc 20 + dmarc 20) + 2 s"),
    ({"milter_connect_timeout": "1s"}, Severity.ERROR, "set milter_connect_timeout = 2s in main.cf"),
    ({"milter_command_timeout": "soon"}, Severity.ERROR, "milter_command_timeout = soon is not a time value"),
    ({"milter_command_timeout": "60s"}, Severity.WARNING,
     "the policy's postfix.milter_command_timeout = 30 is not Postfix's milter_command_timeout (60 s)"),
    ({"milter_command_timeout": "60s"}, Severity.WARNING, "set postfix.milter_command_timeout = 60 in the policy"),
    ({"smtpd_milters": "unix:/run/opendkim/opendkim.sock"}, Severity.ERROR,
     "no smtpd service has the policy-milter (a unix socket whose path ends in policy-milter/milter.sock) in "
     "smtpd_milters (milters found: unix:/run/opendkim/opendkim.sock; doors of the policy not checked: smtp, "
     "submission, submissions)"),
    ({"smtpd_milters": "{ unix:/policy-milter/milter.sock, default_action = accept }"}, Severity.WARNING,
     "set default_action=tempfail in smtpd_milters' { unix:/policy-milter/milter.sock, ... } entry"),
    ({"smtpd_milters": "{ unix:/policy-milter/milter.sock, command_timeout=5s }"}, Severity.ERROR,
     "milter_command_timeout = 5s is shorter"),
]


@pytest.mark.parametrize(("changes", "severity", "text"), FINDINGS)
def test_findings(policy: Policy, changes: dict[str, str], severity: Severity, text: str) -> None:
    report = check(config(changes), policy)
    assert report.severity is severity
    assert any(text in line for line in lines(report)), "\n".join(lines(report))


SERVICE_FINDINGS = [
    # (service, -o options, severity, text)
    ("submissions", {"smtpd_milters": ""}, Severity.ERROR,
     "submissions (master.cf): smtpd_milters = (empty) does not include the policy-milter"),
    ("submissions", {"smtpd_milters": ""}, Severity.ERROR,
     "set -o smtpd_milters=unix:/policy-milter/milter.sock on submissions in master.cf"),
    ("submission", {"milter_macro_daemon_name": "mx.example.org"}, Severity.WARNING,
     "{daemon_name} is Postfix's default, $myhostname = mx.example.org, so listener submission is matched by "
     "port 587 only: set -o milter_macro_daemon_name=submission on submission in master.cf"),
    ("submission", {"milter_macro_daemon_name": "msa"}, Severity.WARNING,
     "{daemon_name} = msa is no listener's name"),
    ("smtp", {"milter_command_timeout": "5s"}, Severity.ERROR,
     "set -o milter_command_timeout=30s on smtp in master.cf"),
    # 587's worst case at MAIL FROM is the milter's own work only: 5 s fit, but the policy says 30
    ("submission", {"milter_command_timeout": "5s"}, Severity.WARNING,
     "submission (master.cf): milter_command_timeout = 5 s here, but the policy's postfix.milter_command_timeout "
     "= 30, which check-policy validates the time budgets against, and other services have 30 s: "
     "set -o milter_command_timeout=30s on submission in master.cf"),
    ("submission", {"milter_connect_macros": "j v _"}, Severity.WARNING,
     "set -o { milter_connect_macros = j {daemon_name} {daemon_port} {daemon_addr} v _ } on submission in master.cf"),
]


@pytest.mark.parametrize(("service", "options", "severity", "text"), SERVICE_FINDINGS)
def test_service_findings(policy: Policy, service: str, options: dict[str, str], severity: Severity,
                          text: str) -> None:
    report = check(config(services=with_option(service, **options)), policy)
    assert report.severity is severity
    assert any(text in line for line in lines(report)), "\n".join(lines(report))


def test_a_door_no_listener_matches_is_an_error(policy: Policy) -> None:
    services = {**SERVICES, ("2525", "inet"): ("y", "smtpd", {})}
    report = check(config(services=services), policy)
    assert report.severity is Severity.ERROR
    [door] = [service for service in report.services if service.service.name == "2525"]
    assert door.attached is not None and door.listener.matched_by is MatchedBy.NOTHING
    assert any(line.startswith("error: 2525 (master.cf): {daemon_name} = mx.example.org and port 2525 match no "
                               "listener") for line in lines(report)), lines(report)
    # its worst case is the strictest profile's
    assert "worst case at end of message 212 s of 300 s" in door.line()


def test_listeners_no_service_serves_are_listed(policy: Policy) -> None:
    services = {key: value for key, value in SERVICES.items() if key[0] != "submissions"}
    report = check(config(services=services), policy)
    assert report.severity is Severity.OK
    assert "listeners of the policy no smtpd service maps to: submissions" in report.lines()


def test_smtpd_behind_postscreen_gets_its_port(policy: Policy) -> None:
    services = {("smtp", "inet"): ("y", "postscreen", {}),
                ("smtpd", "pass"): ("y", "smtpd", {"milter_macro_daemon_name": "mx.example.org"})}
    report = check(config(services=services), policy)
    [smtpd] = report.services
    assert (smtpd.port, smtpd.listener.name, smtpd.listener.matched_by) == (25, "smtp", MatchedBy.PORT)
    assert smtpd.service.label == "smtpd/pass"


def test_a_macro_only_sasl_fills_is_not_asked_for_without_sasl(policy: Policy) -> None:
    services = with_option("smtp", smtpd_sasl_auth_enable="no")
    services = {key: value for key, value in services.items() if key[0] in ("smtp", "127.0.0.1:10025")}
    report = check(config(services=services, milter_mail_macros="i {mail_addr}"), policy)
    assert report.severity is Severity.OK, lines(report)


# --- found by the attack review (tests/unit/test_attack12.py on branch attack12) ----------------------------


@pytest.mark.parametrize(("where", "options"), [
    ("master.cf", {"receive_override_options": "no_milters"}),
    ("master.cf", {"receive_override_options": "no_header_body_checks, NO_MILTERS"}),
    ("main.cf", {}),
])
def test_no_milters_on_a_door_is_not_attached(policy: Policy, where: str, options: dict[str, str]) -> None:
    """receive_override_options = no_milters turns every milter of the service off."""
    main = {"receive_override_options": "no_milters"} if where == "main.cf" else {}
    report = check(config(main, services=with_option("smtp", **options)), policy)
    assert report.severity is Severity.ERROR
    [smtp] = [service for service in report.services if service.service.name == "smtp"]
    assert smtp.attached is None and smtp.named is not None
    assert "smtp (master.cf, inet, smtpd): milter not attached (receive_override_options = " in smtp.line()
    errors = [line for line in lines(report) if line.startswith("error: ") and "receive_override_options" in line]
    assert errors and "milter not attached, its mail is not checked" in errors[0], lines(report)
    if where == "master.cf":
        rest = "no_header_body_checks" if "NO_MILTERS" in options["receive_override_options"] else ""
        assert errors[0].endswith(f"set -o receive_override_options={rest} on smtp in master.cf"), errors
    else:  # every smtpd inherits it: each door has the error, the fix in main.cf
        assert [line.split(" (master.cf)")[0] for line in errors] == [
            "error: smtp", "error: submission", "error: submissions"], errors
        assert all("set receive_override_options = (empty) in main.cf, or override it with "
                   "-o receive_override_options= on each door in master.cf" in line for line in errors), errors
    # the milter is named in smtpd_milters: no "not in smtpd_milters" error on top
    assert not any("does not include the policy-milter" in line or "no smtpd service has" in line
                   for line in lines(report)), lines(report)


def test_no_milters_on_a_content_filters_way_back_is_right(policy: Policy) -> None:
    """The usual content-filter return path (-o receive_override_options=...,no_milters) is no door."""
    services = with_option("127.0.0.1:10025", receive_override_options="no_unknown_recipient_checks,no_milters",
                           smtpd_milters="unix:/policy-milter/milter.sock")
    report = check(config(services=services), policy)
    assert report.severity is Severity.OK, lines(report)


@pytest.mark.parametrize(("main", "options", "fix"), [
    ({"smtpd_milter_maps": "cidr:/etc/postfix/smtpd_milter_map"}, {},
     "set smtpd_milter_maps = (empty) in main.cf"),
    ({}, {"smtpd_milter_maps": "cidr:/etc/postfix/smtpd_milter_map"}, "set -o smtpd_milter_maps= on smtp in master.cf"),
])
def test_smtpd_milter_maps_is_a_warning(policy: Policy, main: dict[str, str], options: dict[str, str],
                                        fix: str) -> None:
    """smtpd_milter_maps (Postfix >= 3.2) replaces or disables (DISABLE) the milters per client."""
    report = check(config(main, services=with_option("smtp", **options)), policy)
    assert report.severity is Severity.WARNING, lines(report)
    [line] = [line for line in lines(report) if "smtpd_milter_maps =" in line]
    assert line.startswith("warning: smtp (master.cf)" if options else
                           "warning: smtp (master.cf), submission (master.cf), submissions (master.cf)"), line
    assert "this check cannot know which clients match" in line and line.endswith(fix), line


@pytest.mark.parametrize("command", ["./smtpd", "/usr/lib/postfix/sbin/smtpd", "sbin/../smtpd"])
def test_smtpd_named_by_a_path_is_smtpd(policy: Policy, command: str) -> None:
    """master(8) runs daemon_directory/COMMAND: any path whose last part is smtpd is smtpd."""
    services = {**SERVICES, ("submission", "inet"): ("y", command, {"milter_macro_daemon_name": "submission",
                                                                    "smtpd_milters": ""})}
    report = check(config(services=services), policy)
    assert report.severity is Severity.ERROR
    assert any(line.startswith("error: submission (master.cf): smtpd_milters = (empty) does not include")
               for line in lines(report)), lines(report)
    [submission] = [service for service in report.services if service.service.name == "submission"]
    assert f"(master.cf, inet, {command})" in submission.line()


def test_postscreen_named_by_a_path_gives_its_port(policy: Policy) -> None:
    services = {("smtp", "inet"): ("y", "./postscreen", {}),
                ("smtpd", "pass"): ("y", "./smtpd", {"milter_macro_daemon_name": "mx.example.org"})}
    [smtpd] = check(config(services=services), policy).services
    assert (smtpd.port, smtpd.listener.name) == (25, "smtp")


@pytest.mark.parametrize(("name", "port"), [("2525", 2525), ("127.0.0.1:2525", 2525), ("[::1]:smtp", 25),
                                            ("\u00b2", None), ("127.0.0.1:\u0663", None), ("a\x00b", None)])
def test_service_ports_are_ascii_numbers(name: str, port: int | None) -> None:
    service = MasterService(name, "inet", False, "smtpd")
    assert service_port(service, config(services={})) == port


@pytest.mark.parametrize("protocol", ["\u00b2", "\u0663", "6,\u00b2"])
def test_a_non_ascii_digit_in_milter_protocol_is_no_version(policy: Policy, protocol: str) -> None:
    report = check(config(milter_protocol=protocol), policy)
    assert not any("below 6" in line for line in lines(report)), lines(report)


def test_a_non_ascii_digit_is_no_time_value() -> None:
    assert seconds("\u0663\u0660s") is None


# The real postconf on a private configuration directory.
MAIN_CF = """\
queue_directory = /var/spool/postfix
myhostname = mx.example.org
smtpd_milters = unix:/policy-milter/milter.sock
milter_default_action = tempfail
milter_protocol = 6
milter_command_timeout = 30s
milter_content_timeout = 300s
milter_connect_macros = j {daemon_name} {daemon_port} {daemon_addr} v _
compatibility_level = 3.6
"""
SUBMISSIONS = b"submissions inet n - y - - smtpd -o milter_macro_daemon_name=submissions\n"


def _postfix(tmp_path: Path, master: bytes) -> Path:
    (tmp_path / "main.cf").write_text(MAIN_CF)
    (tmp_path / "master.cf").write_bytes(master)
    subprocess.run(["postconf", "-c", str(tmp_path), "mail_version"], check=True, capture_output=True)
    return tmp_path


def test_receive_override_no_milters_is_not_attached(tmp_path: Path, policy: Policy) -> None:
    master = b"smtp inet n - y - - smtpd -o milter_macro_daemon_name=smtp -o receive_override_options=no_milters\n"
    report = check(read_config(str(_postfix(tmp_path, master + SUBMISSIONS))), policy)
    assert report.severity is Severity.ERROR, "\n".join(report.lines())
    assert any("smtp (master.cf, inet, smtpd): milter not attached (receive_override_options = no_milters)" in line
               for line in report.lines()), report.lines()


def test_smtpd_named_by_a_relative_path_is_still_a_door(tmp_path: Path, policy: Policy) -> None:
    master = b"submission inet n - y - - ./smtpd -o smtpd_milters= -o milter_macro_daemon_name=submission\n"
    report = check(read_config(str(_postfix(tmp_path, master + SUBMISSIONS))), policy)
    assert report.severity is Severity.ERROR, "\n".join(report.lines())
    assert any(line.startswith("error: submission (master.cf): smtpd_milters = (empty)") for line in report.lines())


def test_a_latin1_byte_in_master_cf_does_not_stop_the_daemon(tmp_path: Path, policy: Policy,
                                                              logwatch: LogWatch) -> None:
    master = b"smtp inet n - y - - smtpd -o milter_macro_daemon_name=smtp -o smtpd_banner=caf\xe9\n"
    directory = _postfix(tmp_path, master + SUBMISSIONS)
    report = warn_at_start(policy, logging.getLogger(LOGGER), config_dir=str(directory))
    assert report is not None and not logwatch.events("postfix_check_skipped")
    [smtp] = [service for service in report.config.services if service.name == "smtp"]
    assert smtp.overrides["smtpd_banner"] == "caf\ufffd"


def test_a_unicode_digit_in_milter_protocol_does_not_crash(tmp_path: Path, policy: Policy,
                                                           logwatch: LogWatch) -> None:
    master = b"smtp inet n - y - - smtpd -o milter_macro_daemon_name=smtp -o milter_protocol=\xc2\xb2\n"
    directory = _postfix(tmp_path, master + SUBMISSIONS)
    report = warn_at_start(policy, logging.getLogger(LOGGER), config_dir=str(directory))
    assert report is not None and not logwatch.events("postfix_check_skipped")


def test_a_hanging_postconf_does_not_hold_up_the_start(tmp_path: Path, policy: Policy,
                                                       logwatch: LogWatch) -> None:
    """main.cf a FIFO: postconf blocks opening it. warn_at_start gives all its postconf runs
    START_DEADLINE seconds together (not POSTCONF_TIMEOUT each), then logs why it skipped."""
    (tmp_path / "master.cf").write_bytes(SUBMISSIONS)
    os.mkfifo(tmp_path / "main.cf")
    cpu, wall = time.process_time(), time.monotonic()
    report = warn_at_start(policy, logging.getLogger(LOGGER), config_dir=str(tmp_path))
    cpu, wall = time.process_time() - cpu, time.monotonic() - wall
    assert report is None
    [skipped] = logwatch.fields("postfix_check_skipped")
    assert "timed out" in skipped["reason"], skipped
    assert cpu < 2.0  # waited, did not spin
    assert wall < 20.0  # START_DEADLINE is 5 s; three runs at POSTCONF_TIMEOUT would be 90 s


def test_no_time_left_runs_no_postconf(tmp_path: Path) -> None:
    directory = _postfix(tmp_path, SUBMISSIONS)
    with pytest.raises(postfix_check.PostconfError, match="no time left"):
        read_config(str(directory), deadline=time.monotonic() - 1)


def test_warn_at_start_never_raises(tmp_path: Path, policy: Policy, logwatch: LogWatch,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever goes wrong in the check (here a bug stood in for by a check that raises), the
    daemon starts: postfix_check_skipped with the error."""
    def broken(*args: object, **kwargs: object) -> Report:
        raise KeyError("a bug")

    monkeypatch.setattr(postfix_check, "check", broken)
    logwatch.expect("postfix_check_skipped")
    directory = _postfix(tmp_path, SUBMISSIONS)
    assert warn_at_start(policy, logging.getLogger(LOGGER), config_dir=str(directory)) is None
    [skipped] = logwatch.fields("postfix_check_skipped")
    assert skipped["reason"] == "KeyError: 'a bug'"
