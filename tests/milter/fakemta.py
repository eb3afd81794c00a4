"""A small fake Postfix around pymilter's TestCtx.

TestCtx shows every macro at every stage, which hides the classic bug of reading
{auth_authen} at CONNECT. This fake hands out each macro only at the stage Postfix sends it:
the milter's own list for that stage if it asked for one (Postfix honours it), else Postfix's
default `milter_*_macros`; a macro whose value is undefined in the SMTP state (no TLS, no
AUTH yet) is not sent at all. Like libmilter, macros of earlier stages stay visible and a new
stage's macros clear those of later stages.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import Milter
from Milter.testctx import TestCtx

from policymilter.adapter import install
from policymilter.service import Service

STAGES = (Milter.M_CONNECT, Milter.M_HELO, Milter.M_ENVFROM, Milter.M_ENVRCPT, Milter.M_DATA,
          Milter.M_EOH, Milter.M_EOM)

# Postfix 3.7 defaults (postconf -d milter_connect_macros ...).
POSTFIX_DEFAULT_MACROS = {
    Milter.M_CONNECT: ("j", "{daemon_name}", "{daemon_addr}", "v", "_"),
    Milter.M_HELO: ("{tls_version}", "{cipher}", "{cipher_bits}", "{cert_subject}", "{cert_issuer}"),
    Milter.M_ENVFROM: ("i", "{auth_type}", "{auth_authen}", "{auth_author}", "{mail_addr}", "{mail_host}",
                       "{mail_mailer}"),
    Milter.M_ENVRCPT: ("i", "{rcpt_addr}", "{rcpt_host}", "{rcpt_mailer}"),
    Milter.M_DATA: ("i",),
    Milter.M_EOH: (),
    Milter.M_EOM: ("i",),
}


@dataclass
class SmtpState:
    """What Postfix knows about the session; macros are evaluated from it."""

    myhostname: str = "mx.example.test"
    daemon_name: str | None = "smtp"
    daemon_port: int | None = 25
    daemon_addr: str = "192.0.2.25"
    tls_version: str | None = None
    cipher: str | None = None
    auth_login: str | None = None
    auth_mech: str | None = None
    mail_from: str | None = None
    rcpt: str | None = None
    queue_id: str | None = None
    queue_counter: int = 0

    def value(self, macro: str) -> str | None:
        match macro:
            case "j":
                return self.myhostname
            case "{daemon_name}":
                # Postfix sends $myhostname unless master.cf sets milter_macro_daemon_name.
                return self.daemon_name if self.daemon_name is not None else self.myhostname
            case "{daemon_port}":
                return str(self.daemon_port) if self.daemon_port is not None else None
            case "{daemon_addr}":
                return self.daemon_addr
            case "v":
                return "Postfix 3.7.11"
            case "{tls_version}":
                return self.tls_version
            case "{cipher}":
                return self.cipher
            case "{cipher_bits}":
                return "256" if self.tls_version else None
            case "{auth_type}":
                return self.auth_mech
            case "{auth_authen}":
                return self.auth_login
            case "{mail_addr}":
                return self.mail_from
            case "{rcpt_addr}":
                return self.rcpt
            case "i":
                return self.queue_id
        return None


class PostfixCtx(TestCtx):
    """TestCtx with libmilter's macro visibility and recorded modifications."""

    def __init__(self) -> None:
        super().__init__()
        self.stage_macros: dict[int, dict[str, str]] = {}
        self.added: list[tuple[str, str]] = []
        self.changed: list[tuple[str, int, str]] = []
        self.quarantined: str | None = None
        # Macros whose value pymilter cannot decode (8-bit, not UTF-8): getsymval raises.
        self.undecodable: set[str] = set()

    def getsymval(self, name: str) -> str | None:
        if name in self.undecodable:
            raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte")
        for stage in STAGES:
            value = self.stage_macros.get(stage, {}).get(name)
            if value is not None:
                return value
        return None

    def setsymlist(self, stage: int, macros: object) -> None:
        # Like pymilter's C extension: one space-separated str, nothing else.
        if not isinstance(macros, str):
            raise TypeError(f"setsymlist() argument 2 must be str, not {type(macros).__name__}")
        super().setsymlist(stage, macros)

    def addheader(self, field: str, value: str, idx: int) -> None:
        self.added.append((field, value))

    def chgheader(self, field: str, idx: int, value: str) -> None:
        self.changed.append((field, idx, value))

    def quarantine(self, reason: str) -> None:
        self.quarantined = reason


@dataclass
class FakeMTA:
    """Drives a PolicyMilter through one SMTP session the way Postfix does."""

    service: Service
    state: SmtpState = field(default_factory=SmtpState)
    honour_symlist: bool = True
    # Postfix's milter_*_macros parameters (used when the milter sent no list for a stage).
    postfix_macros: dict[int, tuple[str, ...]] = field(default_factory=lambda: dict(POSTFIX_DEFAULT_MACROS))
    ctx: PostfixCtx = field(default_factory=PostfixCtx)
    replies: list[tuple | None] = field(default_factory=list)

    def _send_macros(self, stage: int) -> None:
        requested = self.ctx._symlist[stage] if self.honour_symlist else None
        names = [m.decode() for m in requested] if requested is not None else self.postfix_macros[stage]
        macros = {name: value for name in names if (value := self.state.value(name)) is not None}
        self.ctx.stage_macros[stage] = macros
        for later in STAGES[STAGES.index(stage) + 1:]:
            self.ctx.stage_macros.pop(later, None)

    def _call(self, stage: int | None, callback: str, *args: object) -> int:
        if stage is not None:
            self._send_macros(stage)
        self.ctx._reply = None
        self.ctx._stage = stage
        rc = getattr(self.ctx.getpriv(), callback)(*args)
        self.ctx._stage = None
        self.replies.append(self.ctx._reply)
        return Milter.CONTINUE if rc == Milter.NOREPLY else rc

    @property
    def reply(self) -> str | None:
        """The last reply the milter set, as `code xcode text`."""
        last = self.replies[-1] if self.replies else None
        return " ".join(str(part) for part in last if part) if last else None

    @property
    def milter(self):
        return self.ctx.getpriv()

    # --- the SMTP conversation --------------------------------------------------------------

    def connect(self, ip: str = "203.0.113.7", hostname: str = "client.example.net") -> int:
        install(self.service)
        self.ctx._stage = -1
        opts = [Milter.CURR_ACTS, 0x1FFFFF, 0, 0]
        rc = Milter.negotiate_callback(self.ctx, opts)
        assert rc == Milter.CONTINUE, "negotiation failed (the milter fell back to ALL_OPTS)"
        self.ctx.getpriv()._protocol = opts[1]
        self._send_macros(Milter.M_CONNECT)
        self.ctx._stage = Milter.M_CONNECT
        rc = Milter.connect_callback(self.ctx, hostname, 2, (ip, 40000))
        self.ctx._stage = None
        return Milter.CONTINUE if rc == Milter.NOREPLY else rc

    def helo(self, name: str = "client.example.net") -> int:
        return self._call(Milter.M_HELO, "hello", name)

    def starttls(self, version: str = "TLSv1.3", cipher: str = "TLS_AES_256_GCM_SHA384") -> None:
        # Postfix resets the session state after STARTTLS; the client says EHLO again.
        self.state.tls_version, self.state.cipher = version, cipher

    def auth(self, login: str, mechanism: str = "PLAIN") -> None:
        self.state.auth_login, self.state.auth_mech = login, mechanism

    def mail(self, sender: str = "<sender@example.net>", *params: str) -> int:
        self.state.mail_from = sender.strip("<>")
        self.state.queue_id = None
        return self._call(Milter.M_ENVFROM, "envfrom_bytes", sender.encode(), *(p.encode() for p in params))

    def rcpt(self, rcpt: str = "<someone@example.test>") -> int:
        if self.state.queue_id is None:
            # smtpd_delay_open_until_valid_rcpt=yes: the queue file opens at the first good RCPT
            self.state.queue_counter += 1
            self.state.queue_id = f"4Q{self.state.queue_counter:06X}"
        self.state.rcpt = rcpt.strip("<>")
        return self._call(Milter.M_ENVRCPT, "envrcpt_bytes", rcpt.encode())

    def data(self, message: bytes) -> int:
        rc = self._call(Milter.M_DATA, "data")
        if rc != Milter.CONTINUE:
            return rc
        head, _, body = message.replace(b"\r\n", b"\n").partition(b"\n\n")
        fields: list[tuple[str, bytes]] = []
        for line in head.split(b"\n"):
            if line[:1] in (b" ", b"\t") and fields:
                name, value = fields[-1]
                fields[-1] = (name, value + b"\r\n" + line)
            else:
                name, _, value = line.partition(b":")
                if not self.ctx.getpriv()._protocol & Milter.P_HDR_LEADSPC:
                    value = value.lstrip()  # libmilter strips the space unless asked not to
                fields.append((name.decode(), value))
        for name, value in fields:
            rc = self._call(None, "header_bytes", name, value)
            if rc != Milter.CONTINUE:
                return rc
        rc = self._call(Milter.M_EOH, "eoh")
        if rc != Milter.CONTINUE:
            return rc
        rc = self._call(None, "body", body.replace(b"\n", b"\r\n"))
        if rc != Milter.CONTINUE:
            return rc
        return self._call(Milter.M_EOM, "eom")

    def send(self, sender: str = "<sender@example.net>", rcpts: tuple[str, ...] = ("<someone@example.test>",),
             message: bytes = b"Subject: test\n\nhello\n") -> int:
        """One whole transaction; returns the first non-continue answer."""
        rc = self.mail(sender)
        if rc != Milter.CONTINUE:
            return rc
        for rcpt in rcpts:
            rc = self.rcpt(rcpt)
            if rc != Milter.CONTINUE:
                return rc
        return self.data(message)

    def abort(self) -> int:
        """RSET, or a client that went away mid-transaction."""
        self.ctx._stage = None
        return self.ctx.getpriv().abort()

    def close(self) -> int:
        return Milter.close_callback(self.ctx)
