"""Handing a report's mail to the local MTA (dmarc_reports.relay) by SMTP.

Only what the MTA said counts: 250 after DATA is accepted (the MTA has it, and retries it
itself from now on); a 5xx to RCPT refuses that recipient for good; a 4xx, a timeout or no
connection at all leaves it with us, for the next run. A 5xx to MAIL or after DATA is our own
MTA refusing the message itself (message_size_limit's 552 5.3.4, a content rule): the
destination never saw it, so it is held, not given up (a report lost is worse than one sent
twice). Every wait is bounded by TIMEOUT.
"""

from __future__ import annotations

import smtplib
import socket
from dataclasses import dataclass
from enum import StrEnum
from types import TracebackType

TIMEOUT = 30.0  # seconds per SMTP command


class Handed(StrEnum):
    ACCEPTED = "accepted"
    REFUSED = "refused"  # 5xx to RCPT: permanent for that recipient
    HELD = "held"  # 5xx to MAIL or after DATA: our MTA will not take this message; ours to fix
    DEFERRED = "deferred"  # 4xx, or no answer: temporary


@dataclass(frozen=True)
class Handoff:
    result: Handed
    reply: str  # "250 2.0.0 Ok: queued as ...", or what went wrong


def split_relay(relay: str) -> tuple[str, int]:
    """`127.0.0.1:10027`, `[::1]:10027` -> (host, port) (the policy validated the form)."""
    host, _, port = relay.rpartition(":")
    return host.removeprefix("[").removesuffix("]"), int(port)


def _reply(code: int, text: bytes | str) -> str:
    words = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
    return f"{code} {' '.join(words.split())}"


class Relay:
    """One SMTP session with the MTA for the whole run, opened at the first delivery. After a
    connection failure every later delivery is deferred at once: the run never waits twice."""

    def __init__(self, relay: str, timeout: float = TIMEOUT) -> None:
        self.host, self.port = split_relay(relay)
        self.timeout = timeout
        self._client: smtplib.SMTP | None = None
        self._broken = ""

    def __enter__(self) -> Relay:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        if self._client is not None:
            try:
                self._client.quit()
            except (smtplib.SMTPException, OSError):
                self._client.close()
            self._client = None

    def _connect(self) -> smtplib.SMTP:
        if self._client is None:
            client = smtplib.SMTP(timeout=self.timeout, local_hostname=socket.gethostname())
            client.connect(self.host, self.port)
            client.ehlo_or_helo_if_needed()
            self._client = client
        return self._client

    def deliver(self, sender: str, recipient: str, data: bytes) -> Handoff:
        if self._broken:
            return Handoff(Handed.DEFERRED, self._broken)
        try:
            client = self._connect()
            for stage, permanent in (("mail", Handed.HELD), ("rcpt", Handed.REFUSED)):
                code, text = client.mail(sender) if stage == "mail" else client.rcpt(recipient)
                if code >= 300:
                    client.rset()
                    return Handoff(permanent if code >= 500 else Handed.DEFERRED, _reply(code, text))
            reply: bytes | str
            try:
                code, reply = client.data(data)
            except smtplib.SMTPDataError as error:  # DATA itself (354) refused
                client.rset()
                code, reply = error.smtp_code, error.smtp_error
        except (smtplib.SMTPException, OSError) as error:
            self._broken = f"relay {self.host}:{self.port}: {type(error).__name__}: {error}".strip()
            if self._client is not None:
                self._client.close()
                self._client = None
            return Handoff(Handed.DEFERRED, self._broken)
        if code == 250:
            return Handoff(Handed.ACCEPTED, _reply(code, reply))
        return Handoff(Handed.HELD if code >= 500 else Handed.DEFERRED, _reply(code, reply))
