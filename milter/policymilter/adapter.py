"""The only module that speaks pymilter: callbacks in, Verdicts out (the process around it is
daemon.py).

Each callback reads the macros of its stage into the Session (facts.py), hands them to the session's
Conversation, and turns the Verdict into milter calls in one place (`_apply`). Callbacks that
cannot decide anything are `@noreply` (half the protocol round trips); an error there is kept
and answered at the next callback that can reply.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import Milter

from policymilter.facts import Callback, Session, normalise_ip, parse_port
from policymilter.logs import LOGGER, event
from policymilter.outcome import AddHeader, ChangeHeader, Disposition, RemoveHeader, Verdict
from policymilter.service import Service

# What the milter asks Postfix for at negotiation (at most 5 per stage). Postfix honours a
# milter's own list over its milter_*_macros parameters, so a stock Postfix works too.
CONNECT_MACROS = ("{daemon_name}", "{daemon_port}", "{daemon_addr}", "j")
HELO_MACROS = ("{tls_version}", "{cipher}", "{cipher_bits}")
# TLS again at MAIL: a client may skip EHLO after STARTTLS, and auth exists only from MAIL on.
MAIL_MACROS = ("{auth_type}", "{auth_authen}", "{mail_addr}", "{tls_version}", "{cipher}")
QUEUE_ID_MACROS = ("i",)
# At RCPT also the address as Postfix parsed it (comments, source route and trailing dot gone):
# what Postfix delivers to, which the rate limits count, not the text the client wrote.
RCPT_MACROS = ("i", "{rcpt_addr}")


F = TypeVar("F", bound=Callable[..., Any])


def _guarded(callback: Callback, *, replies: bool) -> Callable[[F], F]:
    """Turn an exception in a callback into one logged traceback and the error action."""

    def decorate(func: F) -> F:
        @functools.wraps(func)
        def wrapper(self: PolicyMilter, *args: Any) -> Any:
            try:
                return func(self, *args)
            except Exception as error:  # the daemon must keep serving, whatever broke
                return self._crashed(callback, error, args, replies=replies)

        return wrapper  # type: ignore[return-value]

    return decorate


def _escape(text: str) -> str:
    # libmilter treats % in a reply as a format character.
    return text.replace("%", "%%")


@Milter.header_leading_space  # header values arrive with their leading white space (DKIM)
class PolicyMilter(Milter.Base):
    """One instance per SMTP connection (libmilter calls it from a worker thread)."""

    service: Service

    def __init__(self, service: Service) -> None:
        self.service = service
        self.conversation: Any = None
        self._in_transaction = False
        self._broken = False

    # --- negotiation ----------------------------------------------------------------------

    def setsymlist(self, stage: int, *macros: str) -> Any:
        # pymilter 1.0.5's Base.setsymlist hands the C extension bytes, which it refuses with a
        # TypeError that Base.negotiate swallows: no macro list and no option would be
        # negotiated at all. The C function takes one space-separated str.
        if not self._actions & Milter.SETSYMLIST:
            raise Milter.DisabledAction("SETSYMLIST")
        return self._ctx.setsymlist(stage, " ".join(macros))

    def negotiate(self, opts: list[int]) -> int:
        answer = super().negotiate(opts)
        if answer != Milter.CONTINUE:
            event(logging.getLogger(LOGGER), logging.ERROR, "negotiation_failed",
                  "option negotiation with the MTA failed: no macro lists and no header leading space; "
                  "DKIM on simple-canonicalized mail and the listener rules may go wrong")
        return answer

    def _header_value(self, value: str) -> str:
        # The value is clean already: AddHeader/ChangeHeader clean theirs when made
        # (safetext.header_value), so what signing hashes is what Postfix writes.
        # With SMFIP_HDR_LEADSPC negotiated Postfix writes "Name:" + value exactly as given.
        return " " + value if value and self._protocol & Milter.P_HDR_LEADSPC else value

    # --- helpers ------------------------------------------------------------------------

    def _macro(self, name: str) -> str | None:
        try:
            value = self.getsymval(name)
        except UnicodeDecodeError:
            return None  # not UTF-8 (Postfix with smtputf8_enable = no): unknown, never trusted
        return value if isinstance(value, str) else None

    def _read(self, names: tuple[str, ...]) -> tuple[dict[str, str | None], frozenset[str]]:
        values = {name: self._macro(name) for name in names}
        return values, frozenset(name for name, value in values.items() if value is None)

    def _session_with_mail_macros(self) -> Session:
        values, missing = self._read(MAIL_MACROS)
        session: Session = self.conversation.session
        tls_version = values["{tls_version}"] or session.tls_version
        return session.evolve(
            auth_login=values["{auth_authen}"] or None,
            auth_mech=values["{auth_type}"] or None,
            tls_version=tls_version,
            tls_cipher=values["{cipher}"] or session.tls_cipher,
            missing_macros=(session.missing_macros - {"{mail_addr}"}) | (missing & {"{mail_addr}"}),
        )

    def _begin_transaction(self) -> None:
        if not self._in_transaction:
            self._in_transaction = True
            self.service.transaction_started()

    def _end_transaction(self) -> None:
        if self._in_transaction:
            self._in_transaction = False
            self.service.transaction_ended()

    def _apply(self, verdict: Verdict, *, final: bool) -> int:
        """The one place a Verdict becomes milter calls."""
        if final and verdict.disposition in (Disposition.ACCEPT, Disposition.QUARANTINE):
            for action in verdict.actions:
                match action:
                    case RemoveHeader(name=name, index=index):
                        self.chgheader(name, index, "")
                    case ChangeHeader(name=name, index=index, value=value):
                        self.chgheader(name, index, self._header_value(value))
                    case AddHeader(name=name, value=value, first=first):
                        # smfi_insheader at index 0 when first: above every other header
                        self.addheader(name, self._header_value(value), 0 if first else -1)
            if verdict.disposition is Disposition.QUARANTINE:
                # Postfix: the message goes to the hold queue with this reason.
                self.quarantine(verdict.reason or f"held by {verdict.decided_by}")
        if verdict.reply is not None and verdict.disposition in (Disposition.REJECT, Disposition.TEMPFAIL):
            reply = verdict.reply
            self.setreply(reply.code, reply.xcode, _escape(reply.text))
        match verdict.disposition:
            case Disposition.REJECT:
                return Milter.REJECT
            case Disposition.TEMPFAIL:
                return Milter.TEMPFAIL
            case Disposition.DISCARD:
                return Milter.DISCARD
            case _:
                return Milter.ACCEPT if final else Milter.CONTINUE

    def _crashed(self, where: Callback, error: Exception, args: tuple[Any, ...], *, replies: bool) -> int:
        if self.conversation is None:
            # Nothing to attach the failure to (connect itself broke): log it once per
            # connection and answer every later command with a temporary failure.
            if not self._broken:
                self._broken = True
                event(logging.getLogger(LOGGER), logging.ERROR, "callback_crashed",
                      f"{where} raised {error!r} before the session existed", exc_info=True, callback=where)
            if not replies:
                return Milter.CONTINUE
            self.setreply("451", "4.3.0", "Temporary local problem: please try again later")
            return Milter.TEMPFAIL
        mail_from = args[0] if where is Callback.ENVFROM and args else None
        verdict = self.conversation.crashed(where, error, replies=replies, mail_from=mail_from)
        if not replies:
            return Milter.CONTINUE
        answer = self._apply(verdict, final=where is Callback.EOM)
        # A refused recipient ends only itself; anything else that stops, stops the transaction.
        if where is Callback.EOM or (verdict.stops and where is not Callback.ENVRCPT):
            self.conversation.reset()
            self._end_transaction()
        return answer

    # --- callbacks ------------------------------------------------------------------------

    @Milter.symlist(*CONNECT_MACROS)
    @Milter.noreply
    @_guarded(Callback.CONNECT, replies=False)
    def connect(self, hostname: str, family: int, hostaddr: Any) -> int:
        values, missing = self._read(CONNECT_MACROS)
        self.conversation = self.service.open_conversation(lambda conn_id: Session(
            conn_id=conn_id,
            client_ip=normalise_ip(hostaddr),
            client_name=hostname or None,
            daemon_name=values["{daemon_name}"],
            daemon_port=parse_port(values["{daemon_port}"]),
            daemon_addr=values["{daemon_addr}"],
            mta_name=values["j"],
            missing_macros=missing,
        ))
        self.conversation.connected()
        return Milter.CONTINUE

    @Milter.symlist(*HELO_MACROS)
    @Milter.noreply
    @_guarded(Callback.HELLO, replies=False)
    def hello(self, hostname: str) -> int:
        values, _ = self._read(HELO_MACROS)
        self.conversation.update(self.conversation.session.evolve(
            helo=hostname, tls_version=values["{tls_version}"], tls_cipher=values["{cipher}"]))
        return Milter.CONTINUE

    @Milter.symlist(*MAIL_MACROS)
    @_guarded(Callback.ENVFROM, replies=True)
    def envfrom(self, mail_from: str, *params: str) -> int:
        self._begin_transaction()
        verdict = self.conversation.mail(self._session_with_mail_macros(), mail_from, params,
                                         draining=self.service.draining.is_set())
        if verdict.stops:
            self._end_transaction()
        return self._apply(verdict, final=False)

    @Milter.symlist(*RCPT_MACROS)
    @_guarded(Callback.ENVRCPT, replies=True)
    def envrcpt(self, rcpt: str, *params: str) -> int:
        # Replies (the rate limits refuse a recipient here, before any data is sent): a
        # refusal refuses this recipient only, and the transaction goes on.
        parsed = self._macro("{rcpt_addr}")
        return self._apply(self.conversation.rcpt(parsed if parsed else rcpt, self._macro("i")), final=False)

    @Milter.symlist(*QUEUE_ID_MACROS)
    @Milter.noreply
    @_guarded(Callback.DATA, replies=False)
    def data(self) -> int:
        self.conversation.data(self._macro("i"))
        return Milter.CONTINUE

    @Milter.decode("bytes")
    @Milter.noreply
    @_guarded(Callback.HEADER, replies=False)
    def header(self, name: str, value: bytes) -> int:
        self.conversation.header(name, value)
        return Milter.CONTINUE

    @Milter.noreply
    @_guarded(Callback.EOH, replies=False)
    def eoh(self) -> int:
        return Milter.CONTINUE

    @Milter.noreply
    @_guarded(Callback.BODY, replies=False)
    def body(self, chunk: bytes) -> int:
        self.conversation.body(chunk)
        return Milter.CONTINUE

    @Milter.symlist(*QUEUE_ID_MACROS)
    @_guarded(Callback.EOM, replies=True)
    def eom(self) -> int:
        verdict = self.conversation.end_of_message(self._macro("i"))
        answer = self._apply(verdict, final=True)
        self.conversation.reset()  # the spool and the results go now, not at the session's next MAIL
        self._end_transaction()  # only now may a drain finish: the header changes are made
        return answer

    @_guarded(Callback.ABORT, replies=True)
    def abort(self) -> int:
        if self.conversation is not None:
            self.conversation.abort()
        self._end_transaction()
        return Milter.CONTINUE

    @_guarded(Callback.CLOSE, replies=True)
    def close(self) -> int:
        self._end_transaction()
        if self.conversation is not None:
            self.conversation.close()
            self.conversation = None
            self.service.session_closed()
        return Milter.CONTINUE


def install(service: Service) -> None:
    """Make libmilter create a PolicyMilter per connection (also used by the tests)."""
    Milter.factory = lambda: PolicyMilter(service)


class Libmilter:
    """libmilter, as pymilter's C extension offers it: configure, bind, serve."""

    def __init__(self) -> None:
        self._milter: Any = Milter.milter  # the C extension (the module named "milter")

    def configure(self, socket_spec: str, timeout: int) -> None:
        """Flags, callbacks and the socket address; nothing is bound yet."""
        Milter.set_flags(Milter.ADDHDRS | Milter.CHGHDRS | Milter.QUARANTINE | Milter.SETSYMLIST)
        for name, callback in (
            ("connect", Milter.connect_callback),
            ("helo", lambda ctx, host: ctx.getpriv().hello(host)),
            ("envfrom", lambda ctx, *b: ctx.getpriv().envfrom_bytes(*b)),
            ("envrcpt", lambda ctx, *b: ctx.getpriv().envrcpt_bytes(*b)),
            ("header", lambda ctx, f, v: ctx.getpriv().header_bytes(f, v)),
            ("eoh", lambda ctx: ctx.getpriv().eoh()),
            ("body", lambda ctx, chunk: ctx.getpriv().body(chunk)),
            ("eom", lambda ctx: ctx.getpriv().eom()),
            ("abort", lambda ctx: ctx.getpriv().abort()),
            ("close", Milter.close_callback),
        ):
            getattr(self._milter, f"set_{name}_callback")(callback)
        self._milter.setconn(socket_spec)
        self._milter.settimeout(timeout)
        self._milter.register("policy-milter", data=lambda ctx: ctx.getpriv().data(),
                              unknown=lambda ctx, cmd: Milter.CONTINUE, negotiate=Milter.negotiate_callback)

    def opensocket(self, socket_spec: str) -> None:
        """Bind and listen (an existing unix socket is replaced); OSError says what failed."""
        try:
            self._milter.opensocket(True)
        except self._milter.error as error:
            raise OSError(f"libmilter cannot open {socket_spec}: {error} (is the address in use?)") from None

    def main(self, log: logging.Logger) -> int:
        """Serve; 0 when libmilter was stopped by a signal, or 1 after logging why it gave up."""
        try:
            self._milter.main()  # returns when libmilter stops by itself (a SIGTERM sent to this process)
        except self._milter.error as error:
            event(log, logging.ERROR, "milter_failed", f"libmilter stopped: {error}")
            return 1
        return 0

