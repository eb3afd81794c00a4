"""Plain data about one SMTP session (Session) and one mail transaction (Envelope).

Both are immutable: a new object replaces the old one as facts arrive. A value of None means
the MTA never told us (unknown) — never "trusted" and never "no".
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from policymilter.frozen import evolve


class Callback(StrEnum):
    """The milter callbacks, by the names pymilter gives them (and our log's `callback=`)."""

    CONNECT = "connect"
    HELLO = "hello"
    ENVFROM = "envfrom"
    ENVRCPT = "envrcpt"
    DATA = "data"
    HEADER = "header"
    EOH = "eoh"
    BODY = "body"
    EOM = "eom"
    ABORT = "abort"
    CLOSE = "close"


# Where each macro comes from in Postfix: the callback it arrives at and the parameter that
# lists it. The milter asks for these itself at negotiation (at most 5 per stage); the parameter
# is what an admin must set when the MTA ignores the milter's own list.
MACRO_SOURCES: dict[str, tuple[Callback, str]] = {
    "{daemon_name}": (Callback.CONNECT, "milter_connect_macros"),
    "{daemon_port}": (Callback.CONNECT, "milter_connect_macros"),
    "{daemon_addr}": (Callback.CONNECT, "milter_connect_macros"),
    "j": (Callback.CONNECT, "milter_connect_macros"),
    "_": (Callback.CONNECT, "milter_connect_macros"),
    "{tls_version}": (Callback.HELLO, "milter_helo_macros"),
    "{cipher}": (Callback.HELLO, "milter_helo_macros"),
    "{cipher_bits}": (Callback.HELLO, "milter_helo_macros"),
    "{auth_type}": (Callback.ENVFROM, "milter_mail_macros"),
    "{auth_authen}": (Callback.ENVFROM, "milter_mail_macros"),
    "{mail_addr}": (Callback.ENVFROM, "milter_mail_macros"),
    "i": (Callback.EOM, "milter_end_of_data_macros"),
}


def normalise_ip(hostaddr: Any) -> str | None:
    """Client IP from pymilter's `hostaddr`.

    libmilter passes a tuple (ip, port[, flow, scope]) for inet/inet6, a path string for
    AF_UNIX, None for an unknown client; pymilter's TestCtx passes a bare IP string.
    """
    if hostaddr is None:
        return None
    candidate = hostaddr[0] if isinstance(hostaddr, tuple) and hostaddr else hostaddr
    if not isinstance(candidate, str):
        return None
    try:
        address = ipaddress.ip_address(candidate.removeprefix("IPv6:"))
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    return str(address)


def parse_port(value: str | None) -> int | None:
    if value is None or not value.strip().isdigit():
        return None
    port = int(value)
    return port if 0 < port < 65536 else None


@dataclass(frozen=True)
class Session:
    """Facts about one SMTP connection, as the MTA reported them."""

    conn_id: str
    client_ip: str | None = None
    client_name: str | None = None
    helo: str | None = None
    daemon_name: str | None = None
    daemon_port: int | None = None
    daemon_addr: str | None = None
    mta_name: str | None = None
    auth_login: str | None = None
    auth_mech: str | None = None
    tls_version: str | None = None
    tls_cipher: str | None = None
    # Macros the MTA did not send although the milter asked for them.
    missing_macros: frozenset[str] = frozenset()

    @property
    def authenticated(self) -> bool:
        # Postfix defines {auth_authen} only after a successful AUTH; absent means not proven.
        return bool(self.auth_login)

    @property
    def tls(self) -> bool:
        # Postfix defines {tls_version} only on a TLS session.
        return bool(self.tls_version)

    @property
    def tls_summary(self) -> str:
        if not self.tls:
            return "none"
        return f"{self.tls_version}/{self.tls_cipher}" if self.tls_cipher else str(self.tls_version)

    def evolve(self, **changes: Any) -> Session:
        return evolve(self, **changes)


@dataclass(frozen=True)
class Envelope:
    """One mail transaction: from MAIL FROM to end of message (or abort)."""

    mail_from: str = ""
    mail_params: tuple[str, ...] = ()
    rcpts: tuple[str, ...] = field(default=())
    queue_id: str | None = None
    # Unique per transaction across processes and hosts (the rate limits' reservations).
    txn_id: str = ""

    def with_rcpt(self, rcpt: str) -> Envelope:
        return evolve(self, rcpts=(*self.rcpts, rcpt))

    def with_queue_id(self, queue_id: str | None) -> Envelope:
        return evolve(self, queue_id=queue_id) if queue_id else self


def strip_brackets(address: str) -> str:
    """`<user@example.org>` -> `user@example.org`; `<>` -> `` (the null sender)."""
    address = address.strip()
    if address.startswith("<") and address.endswith(">"):
        return address[1:-1]
    return address
