"""A byte-exact SMTP client for hostile input: every command and the message go out as given.

smtplib encodes commands as ASCII (or UTF-8 with SMTPUTF8) and would refuse or repair the
bytes these cases are about (NUL or invalid UTF-8 in EHLO and MAIL FROM). Here a command is
bytes, the message is sent with dot-stuffing only, and a connection Postfix drops is an
outcome of its own, not an exception.
"""

from __future__ import annotations

import contextlib
import re
import socket
from dataclasses import dataclass

from tests.integration.postfix_config import LOOPBACK

IO_TIMEOUT = 360.0  # above Postfix's milter_content_timeout (300 s): Postfix answers first
_ENHANCED = re.compile(r"^([245]\.\d{1,3}\.\d{1,3})\s+")


@dataclass(frozen=True)
class Envelope:
    """What the client says before DATA, as bytes (None: the default of the case list)."""

    helo: bytes = b"mail.sender.test"
    mail_from: bytes = b"alice@sender.test"
    mail_params: bytes = b""  # e.g. b" SMTPUTF8" or b" SIZE=26214401"
    rcpt: bytes = b"user@example.test"


@dataclass(frozen=True)
class Outcome:
    """The decisive answer of one session: the first refusal, or the reply to the message."""

    stage: str  # GREETING, EHLO, MAIL, RCPT, DATA, END (the reply after the final dot)
    code: int | None  # None: the connection ended without a reply
    text: str  # reply text without code and enhanced code; or what happened to the connection
    enhanced: str = ""

    @property
    def clear(self) -> bool:
        """A 2xx or 5xx, or a 4xx (whether it is deliberate the caller decides from the log)."""
        return self.code is not None

    def describe(self) -> str:
        if self.code is None:
            return f"{self.stage}: {self.text}"
        return " ".join(part for part in (str(self.code), self.enhanced, self.text) if part)


class Closed(Exception):
    """The server hung up, or sent something that is not an SMTP reply."""


class Conversation:
    """One connection: bytes out, (code, text) replies in."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection((LOOPBACK, port), timeout=IO_TIMEOUT)
        self.reader = self.sock.makefile("rb")

    def close(self) -> None:
        self.reader.close()
        self.sock.close()

    def reply(self) -> tuple[int, str]:
        lines: list[bytes] = []
        while True:
            line = self.reader.readline(65536)
            if not line:
                raise Closed("connection closed by the server")
            lines.append(line.rstrip(b"\r\n"))
            if len(line) < 4 or line[3:4] != b"-":
                break
        first = lines[0]
        if not first[:3].isdigit():
            raise Closed(f"not an SMTP reply: {first[:80]!r}")
        text = " ".join(line[4:].decode("utf-8", "replace") for line in lines)
        return int(first[:3]), text

    def command(self, line: bytes) -> tuple[int, str]:
        self.sock.sendall(line + b"\r\n")
        return self.reply()


def dot_stuff(message: bytes) -> bytes:
    """RFC 5321 4.5.2: a line starting with "." gets another; the data ends with CRLF . CRLF."""
    data = (b"." + message if message.startswith(b".") else message).replace(b"\r\n.", b"\r\n..")
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    return data + b".\r\n"


def _outcome(stage: str, code: int, text: str) -> Outcome:
    match = _ENHANCED.match(text)
    if match:
        return Outcome(stage, code, text[match.end():], match.group(1))
    return Outcome(stage, code, text)


def send(port: int, envelope: Envelope, message: bytes) -> Outcome:
    """One session: EHLO, MAIL, RCPT, DATA, the message, QUIT; the decisive Outcome."""
    stage = "CONNECT"
    try:
        conversation = Conversation(port)
    except OSError as error:
        return Outcome(stage, None, f"connect failed: {error}")
    try:
        stage = "GREETING"
        code, text = conversation.reply()
        if code != 220:
            return _outcome(stage, code, text)
        steps = [("EHLO", b"EHLO " + envelope.helo, 250),
                 ("MAIL", b"MAIL FROM:<" + envelope.mail_from + b">" + envelope.mail_params, 250),
                 ("RCPT", b"RCPT TO:<" + envelope.rcpt + b">", 250),
                 ("DATA", b"DATA", 354)]
        for stage, line, wanted in steps:
            code, text = conversation.command(line)
            if code != wanted:
                return _outcome(stage, code, text)
        stage = "END"
        try:
            conversation.sock.sendall(dot_stuff(message))
        except OSError as error:  # Postfix may answer and hang up before it read everything
            try:
                code, text = conversation.reply()
            except (OSError, Closed):
                return Outcome(stage, None, f"connection lost while sending the message: {error}")
            return _outcome(stage, code, text)
        code, text = conversation.reply()
        outcome = _outcome(stage, code, text)
        with contextlib.suppress(OSError, Closed):
            conversation.command(b"QUIT")
        return outcome
    except Closed as closed:
        return Outcome(stage, None, str(closed))
    except OSError as error:
        return Outcome(stage, None, f"{type(error).__name__}: {error}")
    finally:
        conversation.close()
