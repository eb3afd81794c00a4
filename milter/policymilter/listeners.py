"""Which door of the MTA a session came through: a policy listener, or the strictest profile."""

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
class Door:
    """The listener a session came through."""

    name: str
    listener: Listener
    matched_by: MatchedBy

    @property
    def known(self) -> bool:
        return self.matched_by is not MatchedBy.NOTHING


def resolve(policy: Policy, session: Session) -> Door:
    """Match by `{daemon_name}` first, then by `{daemon_port}`; else the strictest profile.

    The daemon name wins over the port: it is what the admin wrote in master.cf, while the
    port is only a fallback for a Postfix that leaves the name at its default ($myhostname).
    """
    if session.daemon_name is not None:
        for key, listener in policy.listeners.items():
            name = listener.daemon_name if listener.daemon_name is not None else key
            if name == session.daemon_name:
                return Door(key, listener, MatchedBy.DAEMON_NAME)
    if session.daemon_port is not None:
        for key, listener in policy.listeners.items():
            if session.daemon_port in listener.ports:
                return Door(key, listener, MatchedBy.PORT)
    return Door(UNKNOWN_LISTENER, STRICTEST, MatchedBy.NOTHING)


def door_by_name(policy: Policy, name: str) -> Door:
    """The listener a policy calls `name` (for `explain --listener`)."""
    listener = policy.listeners.get(name)
    if listener is None:
        return Door(UNKNOWN_LISTENER, STRICTEST, MatchedBy.NOTHING)
    return Door(name, listener, MatchedBy.DAEMON_NAME)
