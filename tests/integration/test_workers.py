"""Worker processes end to end: a parent and N libmilter workers on one socket, through a real Postfix.

What is shown: the workers share the sessions; a reload reaches every worker; a worker that is
killed, or stopped by libmilter itself, is replaced and leaves the shared socket in place (the
next message is delivered); a worker retires after --recycle-after messages without refusing
anything; the parent's death takes its workers with it.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import smtplib
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.conftest import DEFAULT_POLICY
from tests.integration.dns_server import DnsServer, Zone
from tests.integration.stack import MailStack, transaction

pytestmark = pytest.mark.integration

DOMAINS = ("example.org", "example.net", "example.test")
SESSIONS = 20
CONN = re.compile(r" info conn=(\d+)\.\d+ summary .*from=<(\S+)>")


@pytest.fixture(scope="module")
def dns_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DnsServer]:
    with DnsServer(tmp_path_factory.mktemp("dns"), [Zone(domain) for domain in DOMAINS]) as server:
        yield server


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("policy")
    shutil.copy(DEFAULT_POLICY / "00-default.toml", directory / "00-default.toml")
    return directory


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MailStack]:
    with MailStack(tmp_path_factory.mktemp("stack")) as running:
        yield running


def command(stack: MailStack, policy: Path, dns: DnsServer, *extra: str) -> list[str]:
    return [sys.executable, "-m", "policymilter", "run", "--policy", str(policy),
            "--socket", f"unix:{stack.milter_socket}", "--log-level", "debug",
            "-o", f'dns.nameservers=["{dns.nameserver}"]', "-o", "antivirus.enabled=false",
            "-o", "spam.enabled=false", *extra]


@pytest.fixture
def milter(stack: MailStack, policy_dir: Path, dns_server: DnsServer) -> Iterator[Callable[..., None]]:
    """Start the milter with extra arguments; stopped (SIGTERM, exit 0) after the test."""

    def start(*extra: str) -> None:
        stack.start_milter(command(stack, policy_dir, dns_server, *extra))

    yield start
    if stack.milter_running:
        assert stack.stop_milter(signal.SIGTERM) == 0


def unique(local: str = "t", domain: str = "example.net") -> str:
    return f"{local}-{uuid.uuid4().hex[:10]}@{domain}"


def send_one(stack: MailStack, sender: str, size: int = 0) -> int:
    """One inbound message in its own SMTP session; the reply code of DATA (or the refusal)."""
    rcpt = unique("user", "example.test")
    body = "hello\r\n" + "x" * size
    raw = (f"From: {sender}\r\nTo: {rcpt}\r\nSubject: workers\r\nMessage-ID: <{uuid.uuid4().hex}@example.net>"
           f"\r\n\r\n{body}\r\n").encode()
    with smtplib.SMTP("127.0.0.1", stack.ports["smtp"], timeout=60) as client:
        client.ehlo("mail.example.net")
        return transaction(client, sender, rcpt, raw)[0]


def send_many(stack: MailStack, count: int = SESSIONS, size: int = 0) -> dict[str, int]:
    """`count` concurrent sessions, one message each: sender -> reply code."""
    senders = [unique("w") for _ in range(count)]
    with ThreadPoolExecutor(count) as pool:
        codes = list(pool.map(lambda sender: send_one(stack, sender, size), senders))
    return dict(zip(senders, codes, strict=True))


def workers_of(senders: set[str], log: str) -> set[str]:
    """The worker numbers whose summary lines name these senders (conn=WORKER.N)."""
    return {match.group(1) for match in CONN.finditer(log) if match.group(2) in senders}


def worker_pids(stack: MailStack, count: int, timeout: float = 20.0) -> list[int]:
    """The parent's worker processes, once there are `count` of them."""
    parent = stack.milter_pid
    deadline = time.monotonic() + timeout
    while True:
        children = [int(pid) for pid in Path(f"/proc/{parent}/task/{parent}/children").read_text().split()]
        if len(children) == count:
            return children
        assert time.monotonic() < deadline, f"{len(children)} workers, not {count}:\n{stack.milter_log()[-2000:]}"
        time.sleep(0.05)


def this_run(stack: MailStack) -> str:
    """The log of the milter started last (the stack appends every start to one file)."""
    return stack.milter_log().rsplit("\n=== ", 1)[-1]


def wait_log(stack: MailStack, needle: str, count: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while this_run(stack).count(needle) < count:
        assert time.monotonic() < deadline, f"{needle!r} x{count} not in the milter log:\n{this_run(stack)[-3000:]}"
        time.sleep(0.05)


def test_workers_share_the_sessions(stack, milter):
    milter("--workers", "2")
    pids = worker_pids(stack, 2)
    assert len(set(pids)) == 2 and stack.milter_pid not in pids
    codes = send_many(stack)
    assert set(codes.values()) == {250}
    # 20 concurrent sessions: both workers took some (all to one: 2 in a million).
    assert workers_of(set(codes), stack.milter_log()) == {"1", "2"}
    assert " started " in stack.milter_log() and "workers=2" in stack.milter_log()


def test_a_reload_reaches_every_worker(stack, milter, policy_dir):
    local = policy_dir / "50-local.toml"  # read after 00-default.toml: its keys win
    milter("--workers", "2")
    worker_pids(stack, 2)
    announced = this_run(stack).count(" info reloaded ")
    try:
        local.write_text("[site]\nmax_message_size = 2000\n")
        stack.signal_milter(signal.SIGUSR1)
        wait_log(stack, " info reloaded ", announced + 1)  # announced once, by the parent
        wait_log(stack, " debug reloaded ", 2)  # and followed by each worker
        assert {m.group(1) for m in re.finditer(r" debug reloaded .*worker=(\d+)", this_run(stack))} == {"1", "2"}
        codes = send_many(stack, size=4000)
        assert set(codes.values()) == {552}  # every worker refuses what the new policy refuses
        assert workers_of(set(codes), stack.milter_log()) == {"1", "2"}
    finally:
        local.unlink(missing_ok=True)


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM])
def test_a_worker_that_dies_is_replaced_and_the_socket_stays(stack, milter, how):
    """SIGKILL: no cleanup at all. SIGTERM sent to the worker itself: libmilter's own signal
    thread stops it, and libmilter unlinks the socket it bound at exit (mi_closener): the path
    the other workers serve on must survive that."""
    milter("--workers", "2")
    before = worker_pids(stack, 2)
    exited = this_run(stack).count(" worker_exited ")
    socket_inode = os.stat(stack.milter_socket).st_ino
    os.kill(before[0], how)
    wait_log(stack, " worker_exited ", exited + 1)
    after = worker_pids(stack, 2)
    assert before[0] not in after and before[1] in after
    assert os.stat(stack.milter_socket).st_ino == socket_inode
    codes = send_many(stack)
    assert set(codes.values()) == {250}
    for sender in codes:
        stack.wait_delivered(lambda d, sender=sender: d.mail_from == sender)


def test_a_worker_retires_after_its_messages_and_nothing_is_refused(stack, milter):
    milter("--workers", "1", "--recycle-after", "3")
    first = worker_pids(stack, 1)[0]
    codes = [send_one(stack, unique("r")) for _ in range(10)]
    assert codes == [250] * 10  # sessions arriving while a worker retires go to its replacement
    wait_log(stack, " worker_recycled ", 3)
    assert first not in worker_pids(stack, 1)
    assert os.path.exists(stack.milter_socket)
    log = this_run(stack)
    assert " worker_exited " not in log and " error " not in log


def test_concurrent_sessions_survive_recycling(stack, milter):
    milter("--workers", "2", "--recycle-after", "5")
    worker_pids(stack, 2)
    codes = send_many(stack, 30)
    assert set(codes.values()) == {250}
    wait_log(stack, " worker_recycled ", 2)
    assert " error " not in this_run(stack)


def test_the_workers_do_not_outlive_a_killed_parent(stack, milter):
    milter("--workers", "2")
    pids = worker_pids(stack, 2)
    stack.signal_milter(signal.SIGKILL)
    deadline = time.monotonic() + 20
    while any(Path(f"/proc/{pid}").exists() and "zombie" not in Path(f"/proc/{pid}/status").read_text()
              for pid in pids):
        assert time.monotonic() < deadline, "workers still running 20 s after their parent was killed"
        time.sleep(0.05)
    stack.stop_milter()  # reaps the parent
    milter("--workers", "2")  # and the next start replaces the stale socket
    assert send_one(stack, unique()) == 250
