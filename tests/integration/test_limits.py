"""Issue 11 item 4 end to end: the limits that keep a loaded or stalled milter answering cleanly.

Through the real Postfix, with a real clamd stopped with SIGSTOP (it accepts connections and
never answers, as a hung scanner does): a worker whose turns are all taken answers `451 4.3.2
Too busy` after site.queue_timeout (a message waiting for clamd keeps its turn), and a scan beyond
antivirus.max_in_flight waits for a slot and says so; once clamd answers again the senders'
retries are delivered. The events only need the order the test gives them (a stalled message
waits many seconds).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import smtplib
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator

import pytest

from tests.conftest import DEFAULT_POLICY
from tests.integration.scanners import Clamd
from tests.integration.stack import MailStack, transaction

pytestmark = pytest.mark.integration

STALL = 12.0  # antivirus.timeout: how long the stalled scan holds its turn and its slot
LOCAL = "user@example.test"


@pytest.fixture(scope="module")
def clamd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Clamd]:
    with Clamd(tmp_path_factory.mktemp("clamd")) as running:
        yield running


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MailStack]:
    with MailStack(tmp_path_factory.mktemp("stack")) as running:
        yield running


@pytest.fixture
def milter(stack: MailStack, clamd: Clamd) -> Iterator[Callable[..., None]]:
    def start(*options: str) -> None:
        settings = [f'antivirus.servers=["{clamd.endpoint}"]', f"antivirus.timeout={STALL}",
                    "spf.enabled=false", "dkim.enabled=false", "arc.enabled=false", "dmarc.enabled=false",
                    "spam.enabled=false", *options]
        stack.start_milter([sys.executable, "-m", "policymilter", "run", "--policy", str(DEFAULT_POLICY),
                            "--socket", f"unix:{stack.milter_socket}", "--workers", "1",
                            *(part for option in settings for part in ("-o", option))])

    yield start
    if stack.milter_running:
        assert stack.stop_milter(signal.SIGTERM) == 0


@contextlib.contextmanager
def stalled(clamd: Clamd) -> Iterator[None]:
    """clamd hung: its processes stopped, connections still accepted by the kernel."""
    pid = clamd.pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def raw(subject: str) -> bytes:
    return (f"From: a@example.org\r\nTo: {LOCAL}\r\nSubject: {subject}\r\n"
            f"Message-ID: <{uuid.uuid4().hex}@example.org>\r\n\r\nhello\r\n").encode()


def send(stack: MailStack, message: bytes, sender: str = "a@example.org") -> tuple[int, str]:
    with smtplib.SMTP("127.0.0.1", stack.ports["smtp"], timeout=60) as client:
        client.ehlo("mail.example.net")
        return transaction(client, sender, LOCAL, message)


def in_background(stack: MailStack, message: bytes) -> tuple[threading.Thread, list[tuple[int, str]]]:
    answer: list[tuple[int, str]] = []
    thread = threading.Thread(target=lambda: answer.append(send(stack, message)))
    thread.start()
    return thread, answer


def pending(path: str) -> int:
    """Connections waiting in the accept queue of the listening unix socket `path` (ss's Recv-Q)."""
    listing = subprocess.run(["ss", "-xlnH"], capture_output=True, text=True, check=True).stdout
    for line in listing.splitlines():
        fields = line.split()
        if len(fields) >= 5 and fields[4] == path:
            return int(fields[2])
    raise AssertionError(f"no listening socket {path}:\n{listing}")


def wait_scanning(stack: MailStack, clamd: Clamd, count: int) -> None:
    """Until `count` scans wait in the stopped clamd's accept queue (the stalled scans have begun)."""
    deadline = time.monotonic() + STALL / 2
    while pending(clamd.endpoint.removeprefix("unix:")) < count:
        assert time.monotonic() < deadline, f"{count} scans did not start:\n{stack.milter_log()[-2000:]}"
        time.sleep(0.02)


def test_a_message_waiting_for_a_hung_scanner_keeps_its_turn_and_the_next_is_told_busy(stack, clamd, milter):
    """A turn bounds the messages in progress (each holds its body), waiting ones included."""
    milter("site.max_concurrent_messages=1", "site.queue_timeout=1")
    with stalled(clamd):
        first, first_answer = in_background(stack, raw("stalled"))
        wait_scanning(stack, clamd, 1)
        code, text = send(stack, raw("busy"))  # waits its 1 s turn behind the stalled scan
        first.join()
    assert (code, text) == (451, "4.3.2 Too busy to check this message now: please try again later")
    assert first_answer[0][0] == 451 and first_answer[0][1].startswith("4.7.1 Temporary problem scanning")
    for subject in ("stalled", "busy"):  # clamd answers again: the senders' retries go through
        assert send(stack, raw(subject))[0] == 250
        stack.wait_delivered(lambda d, s=subject: f"Subject: {s}\r\n".encode() in d.data)


def test_a_scan_beyond_max_in_flight_waits_for_a_slot_and_says_which_setting_bounds_it(stack, clamd, milter):
    milter("antivirus.max_in_flight=1")
    with stalled(clamd):
        first, first_answer = in_background(stack, raw("holds the slot"))
        wait_scanning(stack, clamd, 1)
        code, text = send(stack, raw("waits for the slot"), sender="second@example.org")
        first.join()
    assert code == 451 and text.startswith("4.7.1 Temporary problem scanning this message for viruses")
    assert first_answer[0][0] == 451
    # Both scans have the same time limit, so the second gets the slot when the first gives up,
    # with almost no time left, or (on a loaded machine) not at all before its own time is up:
    # either way its reason names the setting that bounded it.
    [second] = [line for line in stack.milter_log().rsplit("\n=== ", 1)[-1].splitlines()
                if " summary " in line and "from=<second@example.org>" in line]
    assert "antivirus=error:clamd" in second, second
    assert re.search(r"scans in flight: antivirus\.max_in_flight|stayed busy .*the bound is antivirus\.max_in_flight",
                     second), second
    assert send(stack, raw("slot free again"))[0] == 250
