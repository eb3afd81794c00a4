"""The admin's mail when a limit trips: who, from where, to whom, and how to clear it.

At most one per key and limit per window (`Store.notify_once`, so across workers and hosts),
sent in a thread of its own through the local MTA at `ratelimit.notify_relay` (SMTP, null
envelope sender so that a failure never bounces back to us): the SMTP reply to the client never
waits for it. Nothing from the session reaches a shell; what reaches the mail is made printable.
"""

from __future__ import annotations

import logging
import smtplib
import socket
import threading
import time
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

from policymilter import safetext
from policymilter.checks.ratelimit.counting import Applicable
from policymilter.logs import LOGGER, event
from policymilter.outcome import Notice
from policymilter.pipeline import CheckContext
from policymilter.policy.model import Limit, Policy
from policymilter.state import Store, StoreError, Usage

SEND_TIMEOUT = 20.0  # seconds for the whole SMTP conversation with the local MTA


def maybe_send(context: CheckContext, which: Applicable, limit: Limit, reason: str, store: Store,
               now: float) -> tuple[Notice, ...]:
    """Start the admin's mail if one is configured and none went for this limit in its window."""
    policy = context.policy
    if not policy.ratelimit.notify or policy.ratelimit.mode == "report":
        return ()
    try:
        if not store.notify_once(which.key, limit.label, now, float(limit.per)):
            return ()
    except StoreError:
        return ()  # the limit's own reply still applies; the store's failure is logged by the check
    thread = threading.Thread(target=_send, args=(policy, store, which, limit, reason, context.session.client_ip, now),
                              name="ratelimit-notify", daemon=True)
    thread.start()
    return (Notice("limit_notified", logging.INFO, f"mailing {policy.ratelimit.notify} about {which.key}",
                   (("to", policy.ratelimit.notify), ("limit", limit.label))),)


def sender_address(policy: Policy) -> str:
    if policy.ratelimit.notify_from:
        return policy.ratelimit.notify_from
    domain = policy.site.domains[0] if policy.site.domains else socket.getfqdn()
    return f"postmaster@{domain}"


def compose(policy: Policy, which: Applicable, limit: Limit, reason: str, client: str | None, usage: Usage | None,
            now: float) -> EmailMessage:
    who = safetext.for_log(which.who, 100)
    message = EmailMessage()
    message["From"] = f"policy-milter <{sender_address(policy)}>"
    message["To"] = policy.ratelimit.notify
    message["Subject"] = safetext.header_value(
        f"[policy-milter] sending limit reached: {safetext.for_reply(which.who, 64)} ({limit.label}, {limit.action})")
    message["Date"] = formatdate(now, localtime=False)
    message["Message-ID"] = make_msgid("ratelimit")
    message["Auto-Submitted"] = "auto-generated"  # RFC 3834: never answered automatically
    account = which.key.partition(":")[2]
    lines = [
        f"{which.key.partition(':')[0]}: {who}",
        f"limit:  {limit.label} ({reason})",
        f"action: {limit.action}" + {"tempfail": " (the client is told to try again later)",
                                     "hold": " (its messages over the limit wait in Postfix's hold queue: "
                                             "postqueue -p, then postsuper -H ID to release or -d ID to delete)",
                                     "lock": " (every further message is refused until cleared)"}[limit.action],
        f"when:   {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(now))}",
        f"client: {safetext.for_log(client or 'unknown', 60)}",
        "",
    ]
    if usage is not None:
        lines.append("Client addresses (newest first):")
        lines.extend(f"  {safetext.for_log(address, 60)}  {_ago(now, when)}" for address, when in usage.clients[:20])
        lines.append("Recent recipients (newest first):")
        lines.extend(f"  {safetext.for_log(rcpt, 120)}  {_ago(now, when)}" for rcpt, when in usage.recipients)
        lines.append("")
    lines += [
        "If this is not the user's own doing, the password is probably stolen: change it first.",
        "See the account:   policy-milter accounts show " + safetext.for_log(account, 100),
        "Then clear it:     policy-milter accounts clear " + safetext.for_log(account, 100),
        "(lets it send again: removes the lock and forgets its counts)",
    ]
    message.set_content("\n".join(lines) + "\n")
    return message


def _ago(now: float, when: float) -> str:
    return f"{max(now - when, 0):.0f} s ago"


def _send(policy: Policy, store: Store, which: Applicable, limit: Limit, reason: str, client: str | None,
          now: float) -> None:
    log = logging.getLogger(LOGGER)
    try:
        usage = store.usage(which.key, now, (float(limit.per),))
    except StoreError:
        usage = None
    relay = policy.ratelimit.notify_relay
    host, _, port = relay.rpartition(":")
    try:
        message = compose(policy, which, limit, reason, client, usage, now)
        with smtplib.SMTP(host.strip("[]"), int(port), timeout=SEND_TIMEOUT) as smtp:
            smtp.send_message(message, from_addr="", to_addrs=[policy.ratelimit.notify])
    except (OSError, smtplib.SMTPException, ValueError) as error:
        event(log, logging.WARNING, "limit_notify_failed",
              f"could not mail {policy.ratelimit.notify} about {which.key} through {relay}: {error}",
              relay=relay, to=policy.ratelimit.notify)
        return
    event(log, logging.INFO, "limit_notify_sent", f"mailed {policy.ratelimit.notify} about {which.key}",
          to=policy.ratelimit.notify, limit=limit.label)
