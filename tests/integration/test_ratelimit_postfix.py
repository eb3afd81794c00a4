"""ratelimit end to end: Postfix's submission port, the milter as deployed (two workers, its own
user), parallel sessions of one login, and the store it names (SQLite; a real Redis shared by
two milters in front of two Postfix instances; the store stopped mid-test).

Each scenario starts the milter with its own limit and its own empty store, sends 30 messages
at once (each session waits at a barrier, so all of them reach RCPT together) and counts what
the sink received, what was refused and how, and what waits in the hold queue.
"""

from __future__ import annotations

import re
import shutil
import smtplib
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from policymilter.state import Dimension, open_store
from tests.conftest import DEFAULT_POLICY
from tests.integration.redis_server import RedisServer
from tests.integration.stack import MailStack, unverified_tls_context

pytestmark = pytest.mark.integration

EXTERNAL = "friend@elsewhere.test"
PARALLEL = 30
LIMIT = 20


@dataclass
class Outcome:
    accepted: list[str] = field(default_factory=list)  # subjects
    refused: list[tuple[int, str]] = field(default_factory=list)  # (code, text) of the first refusal


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("policy")
    shutil.copy(DEFAULT_POLICY / "00-default.toml", directory / "00-default.toml")
    (directory / "50-local.toml").write_text('[site]\ndomains = ["example.org"]\nauthserv_id = "mx.example.org"\n')
    return directory


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MailStack]:
    with MailStack(tmp_path_factory.mktemp("stack")) as running:
        yield running


def milter(stack: MailStack, policy: Path, store: str, *limits: str, extra: tuple[str, ...] = ()) -> None:
    """The milter as deployed, with `limits` as ratelimit.limits and its own store."""
    if stack.milter_running:
        stack.stop_milter()
    stack.start_milter([sys.executable, "-m", "policymilter", "run", "--policy", str(policy),
                        "--socket", f"unix:{stack.milter_socket}", "--workers", "2",
                        "--user", "policy-milter", "--group", "postfix",
                        "-o", f'state.store="{store}"', "-o", f"ratelimit.limits=[{', '.join(limits)}]", *extra])


def fresh_store(stack: MailStack) -> str:
    return f"sqlite:{stack.state_dir}/{uuid.uuid4().hex[:8]}.db"


def message(subject: str, rcpts: list[str]) -> bytes:
    return (f"From: Alice <alice@example.org>\r\nTo: {', '.join(rcpts)}\r\nSubject: {subject}\r\n"
            f"Message-ID: <{subject}@example.org>\r\n\r\nHello.\r\n").encode()


def session(stack: MailStack, subject: str, rcpts: list[str], outcome: Outcome, lock: threading.Lock,
            barrier: threading.Barrier | None = None, port: str = "submission") -> None:
    with smtplib.SMTP("127.0.0.1", stack.ports[port], timeout=60) as client:
        client.starttls(context=unverified_tls_context())
        client.login("alice", stack.users["alice"])
        if barrier is not None:
            barrier.wait(timeout=60)
        try:
            refused = client.sendmail("alice@example.org", rcpts, message(subject, rcpts))
        except smtplib.SMTPRecipientsRefused as error:  # every recipient refused: one entry each
            with lock:
                outcome.refused.extend((code, text.decode()) for code, text in error.recipients.values())
            return
        except smtplib.SMTPSenderRefused as error:
            with lock:
                outcome.refused.append((error.smtp_code, error.smtp_error.decode()))
            return
        with lock:
            outcome.accepted.append(subject)
            outcome.refused.extend((code, text.decode()) for code, text in refused.values())


def burst(stack: MailStack, tag: str, count: int = PARALLEL, rcpts: int = 1, port: str = "submission",
          stacks: list[MailStack] | None = None) -> Outcome:
    """`count` sessions at once (spread over `stacks` if given), each one message to `rcpts`
    recipients; returns once every session is done."""
    outcome, lock = Outcome(), threading.Lock()
    targets = stacks or [stack]
    barrier = threading.Barrier(count)
    with ThreadPoolExecutor(count) as pool:
        futures = [pool.submit(session, targets[n % len(targets)], f"{tag}-{n}",
                               [f"user{n}-{r}@elsewhere.test" for r in range(rcpts)], outcome, lock, barrier, port)
                   for n in range(count)]
        for future in futures:
            future.result()
    return outcome


def send_one(stack: MailStack, subject: str, rcpts: list[str] | None = None) -> Outcome:
    outcome = Outcome()
    session(stack, subject, rcpts or [EXTERNAL], outcome, threading.Lock())
    return outcome


def delivered(stacks: list[MailStack], tag: str, expected: int) -> list[str]:
    """Subjects of `tag` the sinks received, once `expected` arrived and every queue is empty of
    anything but held mail (so nothing more can come)."""
    def subjects() -> list[str]:
        return sorted(s for st in stacks for d in st.delivered() for s in _subjects(d.data) if s.startswith(tag + "-"))

    deadline = time.monotonic() + 60
    while len(subjects()) < expected and time.monotonic() < deadline:
        time.sleep(0.05)
    while any(q["queue_name"] != "hold" for st in stacks for q in st.queue()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return subjects()


def _subjects(data: bytes) -> list[str]:
    return [line.split(b":", 1)[1].strip().decode() for line in data.split(b"\r\n") if line.startswith(b"Subject:")]


def held(stack: MailStack) -> list[dict[str, object]]:
    return [q for q in stack.queue() if q["queue_name"] == "hold"]


def accounts(policy: Path, store: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "policymilter", "accounts", "--policy", str(policy),
                           "-o", f'state.store="{store}"', *args], capture_output=True, text=True, timeout=60)


def test_messages_limit_lets_exactly_twenty_of_thirty_through_then_the_window_slides(stack, policy_dir):
    milter(stack, policy_dir, fresh_store(stack), f'{{messages = {LIMIT}, per = 12, name = "burst"}}')
    outcome = burst(stack, "m")
    assert len(outcome.accepted) == LIMIT and len(outcome.refused) == PARALLEL - LIMIT
    assert {text for _, text in outcome.refused} == {
        "4.7.1 Sending limit reached for alice: 20 messages per 12 s (limit burst); please try again later"}
    assert {code for code, _ in outcome.refused} == {451}
    assert delivered([stack], "m", LIMIT) == sorted(outcome.accepted)
    finished = time.time()
    assert send_one(stack, "m-early").refused[0][0] == 451  # still inside the window
    time.sleep(max(finished + 12.5 - time.time(), 0))
    assert send_one(stack, "m-after").accepted == ["m-after"]
    assert stack.milter_log().count("limit_exceeded") >= PARALLEL - LIMIT + 1


def test_the_admin_is_mailed_once_per_window_through_the_milter_free_service(stack, policy_dir):
    milter(stack, policy_dir, fresh_store(stack), '{messages = 5, per = 3600, name = "five"}',
           extra=("-o", 'ratelimit.notify="postmaster@example.test"'))
    outcome = burst(stack, "n", count=12)
    assert len(outcome.accepted) == 5 and len(outcome.refused) == 7
    notice = stack.wait_delivered(lambda d: b"sending limit reached: alice" in d.data, timeout=30)
    text = notice.data.decode()
    assert notice.rcpts == ["postmaster@example.test"] and notice.mail_from == "<>"  # null sender: never bounced
    assert "Subject: [policy-milter] sending limit reached: alice (five, tempfail)" in text
    assert "Auto-Submitted: auto-generated" in text
    assert "limit:  five (limit five: 5 of 5 messages per 3600 s already used)" in text
    assert "  127.0.0.1  " in text  # the client address
    assert sum(f"user{n}-0@elsewhere.test" in text for n in range(12)) == 5  # the recipients of the 5 sent
    assert "policy-milter accounts clear alice" in text
    # The notice went through the 10027 service (no milter there), not through port 25.
    assert re.search(r"postfix/policy-milter/smtpd\[\d+\]: connect from", stack.maillog())
    # One per login and limit per window, however many refusals: a second burst sends none.
    assert len(burst(stack, "n2", count=3).refused) == 3
    time.sleep(2)
    assert sum(b"sending limit reached: alice" in d.data for d in stack.delivered()) == 1
    assert stack.milter_log().count("limit_notify_sent") == 1


def test_recipients_limit_counts_recipients_once_each(stack, policy_dir):
    store = fresh_store(stack)
    milter(stack, policy_dir, store, f'{{messages = 1000, recipients = {LIMIT}, per = 3600, name = "rcpts"}}')
    # One message to one of the site's mailboxes spelt five ways: one recipient. (A remote
    # mailbox's spellings are recipients each: Postfix delivers every one of them.)
    variants = ["bob@example.org", "Bob@Example.ORG", "bob+news@example.org", "BOB+x@EXAMPLE.ORG",
                '"bob"@example.org']
    assert send_one(stack, "r-variants", variants).accepted == ["r-variants"]
    usage = open_store(store).usage("login:alice", time.time(), (3600.0,))
    assert usage.counts[(Dimension.RECIPIENTS, 3600.0)] == 1 and usage.counts[(Dimension.MESSAGES, 3600.0)] == 1
    # 10 messages of 3 recipients at once: 19 recipients left, so exactly 19 are accepted.
    outcome = burst(stack, "r", count=10, rcpts=3)
    rcpt_refusals = [text for code, text in outcome.refused if code == 451]
    assert len(rcpt_refusals) == 30 - (LIMIT - 1)
    assert all("20 recipients per 3600 s (limit rcpts)" in text for text in rcpt_refusals)
    copies: list = []
    deadline = time.monotonic() + 30
    while sum(len(d.rcpts) for d in copies) < LIMIT - 1 and time.monotonic() < deadline:
        time.sleep(0.05)
        copies = [d for d in stack.delivered() if any(s.startswith("r-") and s != "r-variants"
                                                      for s in _subjects(d.data))]
    assert sum(len(d.rcpts) for d in copies) == LIMIT - 1


def test_what_a_client_writes_is_counted_as_postfix_parsed_it(stack, policy_dir):
    """RCPT arguments with comments (`(+)user3@d3.test(@x)` once looked like one recipient at
    domain "x)" to the limit, while Postfix delivered each to its own mailbox): the milter counts
    {rcpt_addr}, the address Postfix parsed, so each is a recipient and a domain of its own."""
    store = fresh_store(stack)
    milter(stack, policy_dir, store, '{messages = 100, recipients = 3, domains = 3, name = "few"}')
    rcpts = [f"(+)user{n}@d{n}.test(@x)" for n in range(6)]
    outcome = Outcome()
    with smtplib.SMTP("127.0.0.1", stack.ports["submission"], timeout=60) as client:
        client.starttls(context=unverified_tls_context())
        client.login("alice", stack.users["alice"])
        assert client.mail("alice@example.org")[0] == 250
        replies = [client.rcpt(rcpt) for rcpt in rcpts]
        code, _ = client.data(message("c-comments", ["hidden"]))
        if code == 250:
            outcome.accepted.append("c-comments")
    assert [code for code, _ in replies] == [250, 250, 250, 451, 451, 451], replies
    assert all(b"limit few" in text for code, text in replies if code == 451)
    got = stack.wait_delivered(lambda d: b"Subject: c-comments" in d.data)
    assert sorted(got.rcpts) == ["user0@d0.test", "user1@d1.test", "user2@d2.test"]
    usage = open_store(store).usage("login:alice", time.time(), (3600.0,))
    assert sorted(r for r, _ in usage.recipients) == ["user0@d0.test", "user1@d1.test", "user2@d2.test"]
    assert usage.counts[(Dimension.DOMAINS, 3600.0)] == 3


def test_hold_puts_the_messages_over_the_limit_in_the_hold_queue(stack, policy_dir):
    milter(stack, policy_dir, fresh_store(stack), f'{{messages = {LIMIT}, per = 3600, action = "hold", name = "h"}}')
    outcome = burst(stack, "h")
    assert len(outcome.accepted) == PARALLEL and not outcome.refused  # all accepted: 10 of them held
    assert len(delivered([stack], "h", LIMIT)) == LIMIT
    queue = held(stack)
    assert len(queue) == PARALLEL - LIMIT
    assert stack.maillog().count("milter triggers HOLD action") == PARALLEL - LIMIT
    # each held one counts against the other limits (here none) and in its own window: 20, 21, ... of 20
    assert stack.milter_log().count('reason="held: limit h: ') == PARALLEL - LIMIT
    for entry in queue:  # leave the queue empty for the next test
        subprocess.run(["postsuper", "-c", str(stack.config_dir), "-d", str(entry["queue_id"]), "hold"],
                       check=True, capture_output=True)


def test_lock_refuses_the_login_until_accounts_clear(stack, policy_dir):
    store = fresh_store(stack)
    milter(stack, policy_dir, store, f'{{messages = {LIMIT}, per = 3600, action = "lock", name = "lk"}}')
    outcome = burst(stack, "l")
    assert len(outcome.accepted) == LIMIT and len(outcome.refused) == PARALLEL - LIMIT
    assert {code for code, _ in outcome.refused} == {550}
    # Refused at RCPT when over the limit, or at MAIL FROM once the first of them locked it.
    assert all(text.startswith("5.7.1 Your account alice is locked") for _, text in outcome.refused)
    assert any(text.startswith("5.7.1 Your account alice is locked: it reached its sending limit of 20 messages")
               for _, text in outcome.refused)
    later = send_one(stack, "l-later")
    assert later.refused[0][0] == 550 and "is locked since" in later.refused[0][1]
    listed = accounts(policy_dir, store, "list")
    assert listed.returncode == 0 and "alice" in listed.stdout and "locked" in listed.stdout
    cleared = accounts(policy_dir, store, "clear", "alice")
    assert cleared.returncode == 0, cleared.stderr
    assert send_one(stack, "l-cleared").accepted == ["l-cleared"]
    assert len(delivered([stack], "l", LIMIT + 1)) == LIMIT + 1


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture(scope="module")
def second_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MailStack]:
    with MailStack(tmp_path_factory.mktemp("stack2")) as running:
        yield running


def test_redis_shared_by_two_milters_holds_the_limit_across_both(stack, second_stack, policy_dir, redis):
    redis.flush()
    limit = f'{{messages = {LIMIT}, per = 3600, name = "shared"}}'
    milter(stack, policy_dir, redis.url, limit)
    milter(second_stack, policy_dir, redis.url, limit)
    outcome = burst(stack, "x", stacks=[stack, second_stack])
    assert len(outcome.accepted) == LIMIT and len(outcome.refused) == PARALLEL - LIMIT
    assert {code for code, _ in outcome.refused} == {451}
    got = delivered([stack, second_stack], "x", LIMIT)
    assert len(got) == LIMIT
    # Both instances took part (15 sessions each).
    assert all(any(s.startswith("x-") for d in st.delivered() for s in _subjects(d.data))
               for st in (stack, second_stack))


def test_store_stopped_mid_test_applies_on_store_error_then_the_limit_resumes(stack, second_stack, policy_dir,
                                                                              redis):
    redis.flush()
    limit = '{messages = 3, per = 3600, name = "three"}'
    milter(stack, policy_dir, redis.url, limit)  # on_store_error = "accept", the shipped default
    milter(second_stack, policy_dir, redis.url, limit, extra=("-o", 'ratelimit.on_store_error="tempfail"'))
    assert send_one(stack, "s-before").accepted == ["s-before"]
    redis.stop()
    try:
        assert send_one(stack, "s-down-accept").accepted == ["s-down-accept"]
        tempfailed = send_one(second_stack, "s-down-tempfail")
        assert tempfailed.refused == [(451, "4.3.0 Temporary local problem checking the sending limits: please try "
                                            "again later")]
    finally:
        redis.start()
    assert "store_failed" in stack.milter_log() and "store_failed" in second_stack.milter_log()
    # Back: the limit applies again (the restarted Redis kept nothing: it runs without persistence).
    results = [send_one(second_stack if n % 2 else stack, f"s-after-{n}") for n in range(4)]
    assert [bool(r.accepted) for r in results] == [True, True, True, False]
    assert results[3].refused[0][0] == 451 and "limit three" in results[3].refused[0][1]
    assert stack.milter_running and second_stack.milter_running
