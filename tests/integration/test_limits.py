"""Issue 11 item 4 end to end: the limits that keep a loaded or stalled milter answering cleanly.

Through the real Postfix: a worker whose turns are all taken by messages that cost CPU answers
`451 4.3.2 Too busy` after site.queue_timeout (three ends of message sent at once); with a real
clamd stopped with SIGSTOP (it accepts connections and never answers, as a hung scanner does),
a message waiting for it gives its turn up, and a scan beyond antivirus.max_in_flight waits for
a slot and says so; once clamd answers again the senders' retries are delivered. The events
only need the order the test gives them (a stalled message waits many seconds).
"""

from __future__ import annotations

import base64
import contextlib
import os
import random
import signal
import smtplib
import socket
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

STALL = 8.0  # antivirus.timeout: how long the stalled scan holds its turn and its slot
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


def send(stack: MailStack, message: bytes) -> tuple[int, str]:
    with smtplib.SMTP("127.0.0.1", stack.ports["smtp"], timeout=60) as client:
        client.ehlo("mail.example.net")
        return transaction(client, "a@example.org", LOCAL, message)


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


class HeldSession:
    """An SMTP session whose message is sent up to, not including, the final dot: its end of
    message reaches the milter when `finish` sends the dot."""

    def __init__(self, stack: MailStack, message: bytes) -> None:
        self.sock = socket.create_connection(("127.0.0.1", stack.ports["smtp"]), timeout=120)
        self.file = self.sock.makefile("rb")
        self._reply()
        for command in (b"EHLO mail.example.net", b"MAIL FROM:<a@example.org>", f"RCPT TO:<{LOCAL}>".encode(),
                        b"DATA"):
            self.sock.sendall(command + b"\r\n")
            self._reply()
        self.sock.sendall(message)  # lines never start with "." here: no dot-stuffing needed

    def _reply(self) -> str:
        while True:
            line = self.file.readline().decode()
            if line[3:4] != "-":
                return line.strip()

    def finish(self) -> None:
        self.sock.sendall(b".\r\n")

    def answer(self) -> str:
        try:
            return self._reply()
        finally:
            self.sock.close()


def heavy(subject: str) -> bytes:
    """A message whose end-of-message checks cost CPU: an 8 MB attachment to decode and inspect."""
    data = base64.encodebytes(random.randbytes(6_000_000)).replace(b"\n", b"\r\n")
    return (f"From: a@example.org\r\nTo: {LOCAL}\r\nSubject: {subject}\r\nMIME-Version: 1.0\r\n"
            f"Message-ID: <{uuid.uuid4().hex}@example.org>\r\n"
            "Content-Type: multipart/mixed; boundary=XX\r\n\r\n--XX\r\nContent-Type: application/octet-stream; "
            "name=data.bin\r\nContent-Transfer-Encoding: base64\r\n\r\n").encode() + data + b"--XX--\r\n"


def test_a_worker_with_every_turn_taken_answers_busy_and_the_retry_is_delivered(stack, milter):
    milter("site.max_concurrent_messages=1", "site.queue_timeout=0.01", "antivirus.enabled=false")
    sessions = [HeldSession(stack, heavy(f"heavy {n}")) for n in range(3)]
    for session in sessions:  # three ends of message at once; each costs the milter CPU
        session.finish()
    answers = [session.answer() for session in sessions]
    busy = [a for a in answers if a.startswith("451 4.3.2 Too busy to check this message now")]
    assert busy and len(busy) < 3, answers
    assert all(a.startswith("250 ") for a in answers if a not in busy), answers
    log = stack.milter_log()
    assert 'reason="busy: 1 messages in progress in this worker for 0.01 s (site.max_concurrent_messages)"' in log
    for number, answer in enumerate(answers):  # the senders retry
        if answer in busy:
            retry = HeldSession(stack, heavy(f"heavy {number}"))
            retry.finish()
            assert retry.answer().startswith("250 ")
    for number in range(3):
        stack.wait_delivered(lambda d, n=number: f"Subject: heavy {n}\r\n".encode() in d.data)


def test_a_message_waiting_for_a_hung_scanner_gives_its_turn_up(stack, clamd, milter):
    """A turn bounds the CPU, not the waiting: one message stuck on clamd does not make the
    next one "busy" (a sender's never-answering DNS could otherwise hold every turn)."""
    milter("site.max_concurrent_messages=1", "site.queue_timeout=1")
    with stalled(clamd):
        first, first_answer = in_background(stack, raw("stalled"))
        wait_scanning(stack, clamd, 1)
        code, text = send(stack, raw("not busy"))  # admitted at once; then it waits for clamd too
        first.join()
    assert code == 451 and text.startswith("4.7.1 Temporary problem scanning"), text
    assert first_answer[0][0] == 451 and first_answer[0][1].startswith("4.7.1 Temporary problem scanning")
    assert "busy:" not in stack.milter_log().rsplit("\n=== ", 1)[-1]
    for subject in ("stalled", "not busy"):  # clamd answers again: the senders' retries go through
        assert send(stack, raw(subject))[0] == 250
        stack.wait_delivered(lambda d, s=subject: f"Subject: {s}\r\n".encode() in d.data)


def test_a_scan_beyond_max_in_flight_waits_for_a_slot_and_says_which_setting_bounds_it(stack, clamd, milter):
    milter("antivirus.max_in_flight=1")
    with stalled(clamd):
        first, first_answer = in_background(stack, raw("holds the slot"))
        wait_scanning(stack, clamd, 1)
        code, text = send(stack, raw("waits for the slot"))
        first.join()
    assert code == 451 and text.startswith("4.7.1 Temporary problem scanning this message for viruses")
    assert first_answer[0][0] == 451
    # Both scans have the same time limit, so the second gets the slot when the first gives up,
    # with almost no time left: its reason says what it waited for.
    second = [line for line in stack.milter_log().splitlines() if " summary " in line][-1]  # it ends last
    assert "antivirus=error:clamd" in second and "scans in flight: antivirus.max_in_flight" in second, second
    assert send(stack, raw("slot free again"))[0] == 250
