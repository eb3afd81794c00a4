"""A sending MTA for the fault suite: N concurrent SMTP sessions, its own queue, retries on 4xx.

One job: deliver a known set of messages to the stack's Postfix the way a sending MTA would, and
record what every command answered and how long it took. A 4xx reply (or a connection that
fails, breaks or times out) keeps the message in the driver's queue and it is tried again after a
backoff, in a new session; a 5xx is a final refusal; a 250 after DATA is Postfix's
acknowledgement, after which the message is Postfix's to deliver. `SinkWatch` notes when each
Message-ID reaches the sink, so latency is end to end (first try to delivered copy).
"""

from __future__ import annotations

import heapq
import re
import smtplib
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from tests.faults.world import HELO, LOGIN, PASSWORD, Outgoing
from tests.integration.postfix_config import LOOPBACK
from tests.integration.stack import Delivered, MailStack, unverified_tls_context

SMTP_TIMEOUT = 400.0  # above Postfix's milter_content_timeout (300 s): Postfix gives up first
RETRY_FIRST = 0.5  # seconds before the first retry of a deferred message; doubles up to RETRY_MAX
RETRY_MAX = 4.0
MESSAGE_ID = re.compile(rb"^Message-ID:[ \t]*<([^>\r\n]+)>", re.IGNORECASE | re.MULTILINE)
T = TypeVar("T")


@dataclass
class Attempt:
    at: float  # monotonic start of the try
    stage: str  # connect, ehlo, starttls, auth, mail, rcpt, data
    code: int  # 0: no SMTP reply (connection refused, broken, timed out)
    text: str


@dataclass
class Tracked:
    """A message in the driver's queue, and what happened to it."""

    message: Outgoing
    attempts: list[Attempt] = field(default_factory=list)
    first_try: float | None = None
    acknowledged: float | None = None  # 250 after DATA
    refused: Attempt | None = None  # a 5xx: final

    @property
    def final(self) -> bool:
        return self.acknowledged is not None or self.refused is not None

    @property
    def deferrals(self) -> list[Attempt]:
        return [a for a in self.attempts if a.code == 0 or 400 <= a.code < 500]


class Deferred(Exception):
    """A 4xx or a failed connection: the message stays queued."""

    def __init__(self, attempt: Attempt) -> None:
        super().__init__(f"{attempt.stage}: {attempt.code} {attempt.text}")
        self.attempt = attempt


class Refused(Exception):
    def __init__(self, attempt: Attempt) -> None:
        super().__init__(f"{attempt.stage}: {attempt.code} {attempt.text}")
        self.attempt = attempt


def reason(attempt: Attempt) -> str:
    """A deferral's reply as one stable line (its queue id or address, if any, left out)."""
    text = " ".join(attempt.text.split())
    text = re.sub(r"<[^>]*>", "<...>", text)
    text = re.sub(r"(?<=[a-z])\d+(?=\.)", "N", text)  # the sender's host (h17.fault.test -> hN.fault.test)
    prefix = f"{attempt.code} " if attempt.code else "no reply: "
    return f"{attempt.stage}: {prefix}{text}"[:140]


class SinkWatch:
    """Polls the stack's sink and notes, per Message-ID, each copy and when it arrived."""

    def __init__(self, stack: MailStack) -> None:
        self.stack = stack
        self.copies: dict[str, list[tuple[float, Delivered]]] = {}
        self._seen = len(stack.delivered())  # copies from earlier scenarios are not ours
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sink-watch", daemon=True)

    def start(self) -> SinkWatch:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self.poll()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.poll()

    def poll(self) -> None:
        delivered = self.stack.delivered()
        now = time.monotonic()
        with self._lock:
            for copy in delivered[self._seen:]:
                head = copy.data.split(b"\r\n\r\n", 1)[0]
                found = MESSAGE_ID.search(head)
                key = found.group(1).decode(errors="replace") if found else ""
                self.copies.setdefault(key, []).append((now, copy))
            self._seen = len(delivered)

    def count(self, msgid: str) -> int:
        with self._lock:
            return len(self.copies.get(msgid, []))

    def first_arrival(self, msgid: str) -> float | None:
        with self._lock:
            found = self.copies.get(msgid)
            return found[0][0] if found else None


class Driver:
    """`sessions` threads delivering `messages`; each thread keeps its session open while all goes well."""

    def __init__(self, stack: MailStack, messages: list[Outgoing], sessions: int) -> None:
        self.stack = stack
        self.tracked = [Tracked(m) for m in messages]
        self.sessions = sessions
        self.longest_wait = 0.0  # the longest any SMTP command (or connect + banner) waited for its reply
        self.longest_stage = ""
        self.waits: Counter[str] = Counter()  # commands that waited over 1 s, by stage
        self.longest_by_stage: dict[str, float] = {}
        self._queue: list[tuple[float, int, Tracked]] = [(0.0, n, t) for n, t in enumerate(self.tracked)]
        self._seq = len(self._queue)
        self._lock = threading.Condition()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._worker, name=f"mta-{n}", daemon=True) for n in range(sessions)]
        self.started = 0.0

    # -- control ---------------------------------------------------------------------------

    def start(self) -> Driver:
        self.started = time.monotonic()
        for thread in self._threads:
            thread.start()
        return self

    def acknowledged(self) -> int:
        return sum(1 for t in self.tracked if t.acknowledged is not None)

    def pending(self) -> int:
        return sum(1 for t in self.tracked if not t.final)

    def wait(self, condition: Callable[[], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def finish(self, timeout: float) -> None:
        """Go on retrying until every message is acknowledged or refused, or `timeout` passes; then stop."""
        self.wait(lambda: self.pending() == 0, timeout)
        self._stop.set()
        with self._lock:
            self._lock.notify_all()
        for thread in self._threads:
            thread.join(SMTP_TIMEOUT)

    # -- the queue -------------------------------------------------------------------------

    def _take(self) -> Tracked | None:
        with self._lock:
            while not self._stop.is_set():
                if self._queue:
                    ready, _, item = self._queue[0]
                    delay = ready - time.monotonic()
                    if delay <= 0:
                        heapq.heappop(self._queue)
                        return item
                    self._lock.wait(min(delay, 0.2))
                elif self.pending() == 0:
                    return None
                else:
                    self._lock.wait(0.2)
            return None

    def _requeue(self, item: Tracked) -> None:
        tries = len(item.deferrals)
        delay = min(RETRY_FIRST * 2 ** (tries - 1), RETRY_MAX)
        with self._lock:
            heapq.heappush(self._queue, (time.monotonic() + delay, self._seq, item))
            self._seq += 1
            self._lock.notify()

    # -- one session thread ----------------------------------------------------------------

    def _worker(self) -> None:
        sessions: dict[str, smtplib.SMTP] = {}
        try:
            while (item := self._take()) is not None:
                self._deliver(item, sessions)
        finally:
            for client in sessions.values():
                _close(client)

    def _deliver(self, item: Tracked, sessions: dict[str, smtplib.SMTP]) -> None:
        now = time.monotonic()
        if item.first_try is None:
            item.first_try = now
        message = item.message
        try:
            client = sessions.get(message.door)
            if client is None:
                client = sessions[message.door] = self._open(message.door, now)
            self._transaction(client, message, now)
        except Deferred as deferred:
            item.attempts.append(deferred.attempt)
            client = sessions.pop(message.door, None)
            if client is not None:
                _close(client)  # as an MTA does after a temporary failure: the next try gets a new session
            self._requeue(item)
        except Refused as refused:
            item.attempts.append(refused.attempt)
            item.refused = refused.attempt
        else:
            item.attempts.append(Attempt(now, "data", 250, "queued"))
            item.acknowledged = time.monotonic()

    def _timed(self, stage: str, started: float, call: Callable[[], T]) -> T:
        """Run one SMTP step; its wait is noted; a broken connection is a Deferred at that stage."""
        begin = time.monotonic()
        try:
            return call()
        except smtplib.SMTPResponseException as error:
            raise _classify(stage, started, error.smtp_code, error.smtp_error) from None
        except (OSError, smtplib.SMTPException, ssl.SSLError) as error:
            raise Deferred(Attempt(started, stage, 0, f"{type(error).__name__}: {error}")) from None
        finally:
            waited = time.monotonic() - begin
            with self._lock:
                if waited > self.longest_wait:
                    self.longest_wait, self.longest_stage = waited, stage
                if waited > 1.0:
                    self.waits[stage] += 1
                    self.longest_by_stage[stage] = max(waited, self.longest_by_stage.get(stage, 0.0))

    def _open(self, door: str, started: float) -> smtplib.SMTP:
        port = self.stack.ports[door]
        client = self._timed("connect", started, lambda: smtplib.SMTP(LOOPBACK, port, timeout=SMTP_TIMEOUT))
        try:
            self._reply("ehlo", started, lambda: client.ehlo(HELO))
            if door == "submission":
                self._reply("starttls", started, lambda: client.starttls(context=unverified_tls_context()))
                self._reply("ehlo", started, lambda: client.ehlo(HELO))
                client.user, client.password = LOGIN, PASSWORD
                self._reply("auth", started, lambda: client.auth("PLAIN", client.auth_plain))
        except (Deferred, Refused):
            _close(client)
            raise
        return client

    def _reply(self, stage: str, started: float, call: Callable[[], tuple[int, bytes]]) -> None:
        code, text = self._timed(stage, started, call)
        if code >= 400:
            raise _classify(stage, started, code, text)

    def _transaction(self, client: smtplib.SMTP, message: Outgoing, started: float) -> None:
        self._reply("mail", started, lambda: client.mail(message.mail_from))
        try:
            self._reply("rcpt", started, lambda: client.rcpt(message.rcpt))
            self._reply("data", started, lambda: client.data(message.raw))
        except Refused:
            self._timed("rset", started, client.rset)  # the session stays usable after a 5xx
            raise


def _classify(stage: str, started: float, code: int, text: bytes | str) -> Deferred | Refused:
    line = text.decode(errors="replace") if isinstance(text, bytes) else str(text)
    attempt = Attempt(started, stage, code, line)
    return Refused(attempt) if code >= 500 else Deferred(attempt)


def _close(client: smtplib.SMTP) -> None:
    try:
        client.quit()
    except (OSError, smtplib.SMTPException, ssl.SSLError):
        client.close()
