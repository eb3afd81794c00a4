"""`policy-milter check-postfix` against the test suite's real Postfix configuration.

MailStack builds a private instance from contrib/postfix; each test copies its config directory,
changes one thing with the real `postconf -e` / `postconf -P`, and runs check-postfix on the
copy with `-c` (the real postconf reads it).
"""

from __future__ import annotations

import logging
import os
import shutil
import smtplib
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from policymilter import postfix_check
from policymilter.policy import load_policy
from tests.conftest import DEFAULT_POLICY, OFFLINE, LogWatch
from tests.integration.stack import MailStack

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class Run:
    code: int
    lines: list[str]
    stderr: str

    def finding(self, text: str) -> str:
        """The one finding line that contains text."""
        found = [line for line in self.lines if text in line and line.startswith(("error: ", "warning: "))]
        assert len(found) == 1, f"{text!r} in {len(found)} finding lines:\n" + "\n".join(self.lines)
        return found[0]

    @property
    def findings(self) -> list[str]:
        return [line for line in self.lines if line.startswith(("error: ", "warning: "))]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MailStack]:
    # The instance runs (so its configuration is one Postfix accepts); no milter is needed to read it.
    with MailStack(tmp_path_factory.mktemp("stack")) as running:
        yield running


def service(stack: MailStack, door: str) -> str:
    """A door's master.cf service name: the stack moves contrib's doors to 127.0.0.1:PORT."""
    return f"127.0.0.1:{stack.ports[door]}"


@pytest.fixture
def config_dir(stack: MailStack, tmp_path: Path) -> Path:
    """A copy of the stack's Postfix configuration directory, for one test to change."""
    copy = tmp_path / "postfix"
    shutil.copytree(stack.config_dir, copy, symlinks=True)
    return copy


def postconf(config_dir: Path, *args: str) -> None:
    subprocess.run(["postconf", "-c", str(config_dir), *args], check=True, capture_output=True, timeout=30)
    # Postfix waits for a main.cf changed in the last seconds to settle (postfix_config.py).
    settled = time.time() - 60
    os.utime(config_dir / "main.cf", (settled, settled))


def check_postfix(stack: MailStack, config_dir: Path, *extra: str) -> Run:
    done = subprocess.run(
        [sys.executable, "-m", "policymilter", "check-postfix", "-c", str(config_dir), "--policy", str(DEFAULT_POLICY),
         "--socket", f"unix:{stack.milter_socket}", *extra],
        capture_output=True, text=True, timeout=60, check=False)
    return Run(done.returncode, done.stdout.splitlines(), done.stderr)


def test_the_stack_configuration_passes(stack: MailStack, config_dir: Path) -> None:
    run = check_postfix(stack, config_dir)
    assert (run.code, run.findings, run.stderr) == (0, [], "")
    for door, listener in (("smtp", "smtp"), ("submission", "submission"), ("submissions", "submissions"),
                           ("loose", "submission")):
        [line] = [line for line in run.lines if line.startswith(f"{service(stack, door)} (master.cf")]
        assert f"milter attached (unix:{stack.milter_socket})" in line
        assert f"listener {listener} (by {{daemon_name}} = {listener})" in line
    # contrib's milter-free 127.0.0.1:10027 service for the milter's own mail is no door of the policy
    [notify] = [line for line in run.lines if line.startswith(f"{service(stack, 'notify')} (master.cf")]
    assert "not a door of the policy" in notify
    assert run.lines[-1] == (f"check-postfix: {config_dir}: 5 smtpd service(s), 4 with the milter; "
                             "0 error(s), 0 warning(s): OK")


def test_daemon_port_missing(stack: MailStack, config_dir: Path) -> None:
    postconf(config_dir, "-e", "milter_connect_macros = j {daemon_name} {daemon_addr} v _")
    run = check_postfix(stack, config_dir)
    # A warning, not an error: Postfix sends the milter the macros it asks for at negotiation,
    # whatever this list says (milter8.c); the list is the fallback.
    assert run.code == 1
    line = run.finding("milter_connect_macros lacks {daemon_port}")
    assert line.startswith(f"warning: {service(stack, 'smtp')} (master.cf), ")
    assert line.endswith(": set milter_connect_macros = j {daemon_name} {daemon_addr} {daemon_port} v _ in main.cf")
    assert len(run.findings) == 1


def test_default_action_accept(stack: MailStack, config_dir: Path) -> None:
    postconf(config_dir, "-e", "milter_default_action = accept")
    run = check_postfix(stack, config_dir)
    assert run.code == 1
    line = run.finding("milter_default_action = accept: mail passes unchecked")
    assert line.endswith(": set milter_default_action = tempfail in main.cf")
    assert all(f"{service(stack, door)} (master.cf)" in line for door in ("smtp", "submission", "submissions"))
    assert len(run.findings) == 1


def test_a_service_not_attached(stack: MailStack, config_dir: Path) -> None:
    submissions = service(stack, "submissions")
    postconf(config_dir, "-P", f"{submissions}/inet/smtpd_milters=")
    run = check_postfix(stack, config_dir)
    assert run.code == 2
    line = run.finding("does not include the policy-milter")
    assert line == (f"error: {submissions} (master.cf): smtpd_milters = (empty) does not include the policy-milter "
                    f"(unix:{stack.milter_socket}), but this is the policy's listener submissions: its mail is not "
                    f"checked: set -o smtpd_milters=unix:{stack.milter_socket} on {submissions} in master.cf")
    assert len(run.findings) == 1
    assert run.lines[-1].endswith("5 smtpd service(s), 3 with the milter; 1 error(s), 0 warning(s): errors")


def test_command_timeout_too_short(stack: MailStack, config_dir: Path) -> None:
    postconf(config_dir, "-e", "milter_command_timeout = 10s")
    run = check_postfix(stack, config_dir)
    assert run.code == 2
    line = run.finding("milter_command_timeout = 10s is shorter")
    assert line == (f"error: {service(stack, 'smtp')} (master.cf): milter_command_timeout = 10s is shorter than the "
                    "milter's worst case at MAIL FROM for listener smtp: 20 s (spf 20) + 2 s for its own work, so "
                    "Postfix would give up first and apply milter_default_action: set milter_command_timeout = 30s "
                    "in main.cf")
    # 587 and 465 wait for nothing at MAIL FROM: 10 s is enough there
    assert len(run.findings) == 1


def test_without_socket_the_default_name_is_looked_for(stack: MailStack, config_dir: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "policymilter", "check-postfix", "-c", str(config_dir),
                           "--policy", str(DEFAULT_POLICY)], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2
    assert (f"no smtpd service has the policy-milter (a unix socket whose path ends in policy-milter/milter.sock) "
            f"in smtpd_milters (milters found: unix:{stack.milter_socket}") in done.stdout


def test_no_postfix_configuration(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "policymilter", "check-postfix", "-c", str(tmp_path),
                           "--policy", str(DEFAULT_POLICY)], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2
    assert done.stderr.startswith("check-postfix: cannot read Postfix's configuration: ")
    assert "main.cf" in done.stderr


def test_warn_at_start_logs_each_finding_once(stack: MailStack, config_dir: Path, logwatch: LogWatch) -> None:
    postconf(config_dir, "-e", "milter_default_action = accept", "milter_command_timeout = 10s")
    logwatch.expect("postfix_config")
    policy = load_policy(DEFAULT_POLICY).policy
    postfix_check.warn_at_start(policy, logging.getLogger("policymilter"), f"unix:{stack.milter_socket}",
                                str(config_dir))
    records = logwatch.events("postfix_config")
    assert [record.levelno for record in records] == [logging.ERROR, logging.WARNING]
    assert "milter_command_timeout = 10s is shorter" in records[0].getMessage()
    assert "milter_default_action = accept" in records[1].getMessage()


def test_warn_at_start_is_quiet_for_another_postfix(stack: MailStack, config_dir: Path, tmp_path: Path,
                                                    logwatch: LogWatch) -> None:
    policy = load_policy(DEFAULT_POLICY).policy
    log = logging.getLogger("policymilter")
    postfix_check.warn_at_start(policy, log, "unix:/run/policy-milter/milter.sock", str(config_dir))
    postfix_check.warn_at_start(policy, log, None, str(tmp_path / "nowhere"))  # postconf fails
    assert len(logwatch.events("postfix_check_skipped")) == 2
    assert logwatch.events("postfix_config") == []



def _banner(port: int) -> bytes:
    client = smtplib.SMTP(timeout=10)
    try:
        _, banner = client.connect("127.0.0.1", port)
        client.quit()
    finally:
        client.close()
    return banner


def test_postfix_sends_the_milters_own_macro_list(tmp_path: Path) -> None:
    """Why a gap in milter_*_macros is a warning: with Postfix's lists stripped of what the milter
    needs, it still gets {daemon_port} (its listener matched by port alone) and the MAIL-stage
    macros (no macro_missing), because Postfix takes the lists the milter sends at negotiation."""
    with MailStack(tmp_path / "s") as own:
        postconf(own.config_dir, "-e", "milter_connect_macros = j v _", "milter_mail_macros = i",
                 "smtpd_banner = $myhostname ESMTP macros-stripped")
        subprocess.run(["postfix", "-c", str(own.config_dir), "reload"], check=True, capture_output=True, timeout=60)
        port = own.ports["smtp"]
        deadline = time.monotonic() + 30
        while b"macros-stripped" not in _banner(port):  # new smtpd processes: the reload is in force
            assert time.monotonic() < deadline, "postfix reload did not take effect"
            time.sleep(0.1)
        run = check_postfix(own, own.config_dir)
        assert run.code == 1
        run.finding("milter_connect_macros lacks {daemon_name} {daemon_port} {daemon_addr}")
        # The listener is found by {daemon_port} only: its name matches nothing the session sends.
        overrides = [argument for option in OFFLINE for argument in ("-o", option)]
        own.start_milter([sys.executable, "-m", "policymilter", "run", "--policy", str(DEFAULT_POLICY),
                          "--socket", f"unix:{own.milter_socket}", *overrides,
                          "-o", 'listeners.smtp.daemon_name="no-such-name"', "-o", f"listeners.smtp.ports=[{port}]"])
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
            client.sendmail("someone@elsewhere.test", ["friend@example.test"],
                            b"From: someone@elsewhere.test\r\nTo: friend@example.test\r\nSubject: macros\r\n\r\nhi\r\n")
        own.wait_delivered(lambda message: "friend@example.test" in message.rcpts)
        own.stop_milter()
        log = own.milter_log()
        assert " listener=smtp " in log, log
        assert "macro_missing" not in log and "unknown_listener" not in log, log
