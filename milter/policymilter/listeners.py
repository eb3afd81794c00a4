"""Which listener of the MTA a session came through: one of the policy's, or the strictest profile."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from policymilter.facts import Session
from policymilter.policy.model import STRICTEST, Listener, Policy

UNKNOWN_LISTENER = "unknown"


class MatchedBy(StrEnum):
    DAEMON_NAME = "daemon_name"
    PORT = "port"
    NOTHING = "nothing"


@dataclass(frozen=True)
class ListenerMatch:
    """The listener a session came through: its name in the policy, its settings, how it was
    matched (by the {daemon_name} macro, by the port, or not at all: the strictest profile)."""

    name: str
    settings: Listener
    matched_by: MatchedBy

    @property
    def known(self) -> bool:
        return self.matched_by is not MatchedBy.NOTHING


def resolve(policy: Policy, session: Session) -> ListenerMatch:
    """Match by `{daemon_name}` first, then by `{daemon_port}`; else the strictest profile.

    The daemon name wins over the port: it is what the admin wrote in master.cf, while the
    port is only a fallback for a Postfix that leaves the name at its default ($myhostname).
    """
    if session.daemon_name is not None:
        for key, listener in policy.listeners.items():
            name = listener.daemon_name if listener.daemon_name is not None else key
            if name == session.daemon_name:
                return ListenerMatch(key, listener, MatchedBy.DAEMON_NAME)
    if session.daemon_port is not None:
        for key, listener in policy.listeners.items():
            if session.daemon_port in listener.ports:
                return ListenerMatch(key, listener, MatchedBy.PORT)
    return ListenerMatch(UNKNOWN_LISTENER, STRICTEST, MatchedBy.NOTHING)


def listener_by_name(policy: Policy, name: str) -> ListenerMatch:
    """The listener a policy calls `name` (for `explain --listener`)."""
    listener = policy.listeners.get(name)
    if listener is None:
        return ListenerMatch(UNKNOWN_LISTENER, STRICTEST, MatchedBy.NOTHING)
    return ListenerMatch(name, listener, MatchedBy.DAEMON_NAME)
