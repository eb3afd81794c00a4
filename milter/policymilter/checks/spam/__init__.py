"""spam: score the message with SpamAssassin's spamd; the policy's thresholds decide.

tag_score: X-Spam-Status/X-Spam-Score headers (and the optional subject tag);
quarantine_score: Postfix's hold queue; reject_score: 550 5.7.1. Headers of these names that
arrived with the message are removed first (a sender could forge "No").

Postfix hands a milter the message without the Received header it adds itself, so spamd would
never see the connecting client: its network rules (DNS blocklists on the last relay, trusted
networks, NO_RELAYS) need that line. spamd gets one written from the session as Postfix writes
it, in front of the message (only in what is streamed to spamd: the message is not changed).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from email.utils import formatdate

from policymilter.checks.spam import spamd
from policymilter.facts import Envelope, Session
from policymilter.message import Message
from policymilter.outcome import (
    Action,
    AddHeader,
    ChangeHeader,
    CheckResult,
    Disposition,
    Outcome,
    RemoveHeader,
    SmtpReply,
)
from policymilter.pipeline import CheckContext, Stage
from policymilter.policy.model import Spam as SpamPolicy
from policymilter.scanning import ScannerError

NAME = "spam"
OUR_HEADERS = ("X-Spam-Status", "X-Spam-Score", "X-Spam-Flag")


_TOKEN = re.compile(r"[^A-Za-z0-9.:\[\]_-]")


def _token(text: str | None, default: str) -> str:
    """A host name, address or id from the session, as a Received token (a HELO is the client's
    words: only the characters a host name or address literal has, at most 255)."""
    return _TOKEN.sub("_", text[:255]) if text else default


def received(session: Session, envelope: Envelope) -> bytes:
    """The Received header Postfix adds for this session (RFC 5321 §4.4), for spamd."""
    protocol = "ESMTP" + ("S" if session.tls else "") + ("A" if session.authenticated else "")
    client = f"{_token(session.client_name, 'unknown')} [{_token(session.client_ip, 'unknown')}]"
    return (f"Received: from {_token(session.helo, 'unknown')} ({client})\r\n"
            f"\tby {_token(session.mta_name, 'localhost')} (Postfix) with {protocol} id "
            f"{_token(envelope.queue_id, 'unknown')};\r\n\t{formatdate(localtime=True)}\r\n").encode("ascii")


def _with_received(message: Message, line: bytes) -> Iterator[bytes]:
    return itertools.chain((line,), message.iter_raw())


def _remove_arrived(message: Message) -> list[Action]:
    actions: list[Action] = []
    for name in OUR_HEADERS:
        count = len(message.header_values(name))
        actions.extend(RemoveHeader(name, index) for index in range(count, 0, -1))
    return actions


def _headers(message: Message, policy: SpamPolicy, result: spamd.SpamResult, spam: bool) -> list[Action]:
    tests = ",".join(result.symbols[:40]) or "none"
    status = f"{'Yes' if spam else 'No'}, score={result.score:.1f} required={policy.tag_score:.1f} tests={tests}"
    actions = [*_remove_arrived(message), AddHeader("X-Spam-Status", status),
               AddHeader("X-Spam-Score", f"{result.score:.1f}")]
    if spam:
        actions.append(AddHeader("X-Spam-Flag", "YES"))
        if policy.subject_tag:
            raw = [h.value for h in message.headers if h.name.lower() == "subject"]
            if not raw:
                actions.append(AddHeader("Subject", policy.subject_tag))
            else:
                try:
                    subject = raw[0].decode("utf-8").strip()
                except UnicodeDecodeError:
                    subject = None  # 8-bit, not UTF-8: rewriting it would corrupt it; the flag says spam
                if subject is not None and not subject.startswith(policy.subject_tag):
                    actions.append(ChangeHeader("Subject", 1, f"{policy.subject_tag} {subject}"))
    return actions


class Spam:
    name = NAME
    stage = Stage.EOM
    requires: tuple[str, ...] = ()

    def run(self, context: CheckContext) -> CheckResult:
        message, policy = context.content, context.policy.spam
        if message.size > policy.max_size:
            # Not scanned, but a sender's own "X-Spam-Status: No" must not survive either.
            return CheckResult(NAME, Outcome.SKIPPED, reason=f"{message.size} bytes is over spam.max_size",
                               detail="size", actions=(*_remove_arrived(message), AddHeader(
                                   "X-Spam-Status", "Unknown, not scanned: too large")))
        try:
            line = received(context.session, context.envelope)
            result = spamd.scan(policy.servers, lambda: _with_received(message, line), policy.timeout,
                                policy.max_in_flight)
        except ScannerError as error:
            skipped = [*_remove_arrived(message),
                       AddHeader("X-Spam-Status", "Unknown, not scanned: the spam scanner was unavailable")]
            return CheckResult(NAME, Outcome.ERROR, reason=str(error), detail="spamd", actions=tuple(skipped))
        score = f"{result.score:.1f}"
        if policy.reject_score is not None and result.score >= policy.reject_score:
            reply = SmtpReply("550", "5.7.1", f"Message refused: it looks like spam (score {score})")
            return CheckResult(NAME, Outcome.SPAM, Disposition.REJECT, reply, reason=f"score {score}", detail=score)
        spam = result.score >= policy.tag_score
        actions = tuple(_headers(message, policy, result, spam))
        if spam and policy.quarantine_score is not None and result.score >= policy.quarantine_score:
            return CheckResult(NAME, Outcome.SPAM, Disposition.QUARANTINE, reason=f"score {score}", detail=score,
                               actions=actions)
        return CheckResult(NAME, Outcome.SPAM if spam else Outcome.HAM, reason=f"score {score} by {result.server}",
                           detail=score, actions=actions)
