"""The only module that speaks pymilter: callbacks in, Verdicts out.

Each callback reads the macros of its stage into plain facts, hands them to the session's
Conversation, and turns the Verdict into milter calls in one place (`_apply`). Callbacks that
cannot decide anything are `@noreply` (half the protocol round trips); an error there is kept
and answered at the next callback that can reply.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import os
import signal
import stat
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import Milter

from policymilter.facts import Session, normalise_ip, parse_port
from policymilter.logs import LOGGER, event
from policymilter.outcome import AddHeader, ChangeHeader, Disposition, RemoveHeader, Verdict
from policymilter.privileges import Identity, acting_as, drop_privileges, group_name, user_name
from policymilter.service import Service

# What the milter asks Postfix for at negotiation (at most 5 per stage). Postfix honours a
# milter's own list over its milter_*_macros parameters, so a stock Postfix works too.
CONNECT_MACROS = ("{daemon_name}", "{daemon_port}", "{daemon_addr}", "j")
HELO_MACROS = ("{tls_version}", "{cipher}", "{cipher_bits}")
# TLS again at MAIL: a client may skip EHLO after STARTTLS, and auth exists only from MAIL on.
MAIL_MACROS = ("{auth_type}", "{auth_authen}", "{mail_addr}", "{tls_version}", "{cipher}")
QUEUE_ID_MACROS = ("i",)

RELOAD_SIGNAL = signal.SIGUSR1  # libmilter's own thread takes SIGHUP/SIGTERM/SIGINT
DRAIN_SIGNAL = signal.SIGUSR2  # parent -> child: stop gracefully
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>

F = TypeVar("F", bound=Callable[..., Any])


def _guarded(*, replies: bool) -> Callable[[F], F]:
    """Turn an exception in a callback into one logged traceback and the error action."""

    def decorate(func: F) -> F:
        @functools.wraps(func)
        def wrapper(self: PolicyMilter, *args: Any) -> Any:
            try:
                return func(self, *args)
            except Exception as error:  # the daemon must keep serving, whatever broke
                return self._crashed(func.__name__, error, args, replies=replies)

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
        if final and verdict.disposition in (Disposition.CONTINUE, Disposition.QUARANTINE):
            for action in verdict.actions:
                match action:
                    case RemoveHeader(name=name, index=index):
                        self.chgheader(name, index, "")
                    case ChangeHeader(name=name, index=index, value=value):
                        self.chgheader(name, index, self._header_value(value))
                    case AddHeader(name=name, value=value):
                        self.addheader(name, self._header_value(value))
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

    def _crashed(self, where: str, error: Exception, args: tuple[Any, ...], *, replies: bool) -> int:
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
        if where == "envfrom" and self.conversation.envelope is None:
            self.conversation.begin(args[0] if args else "")
        verdict = self.conversation.crashed(where, error, deferred=not replies)
        if not replies:
            return Milter.CONTINUE
        stage = {"envfrom": "mail", "eom": "eom"}.get(where)
        # One summary line per message, also for one accepted unchecked; at MAIL FROM an accept
        # lets the transaction go on, and its end of message logs it.
        if stage == "eom" or (stage and verdict.disposition is not Disposition.CONTINUE):
            self.conversation.finish_crash(verdict, stage)
        answer = self._apply(verdict, final=where == "eom")
        if where == "eom" or verdict.stops:
            self._end_transaction()
        return answer

    # --- callbacks ------------------------------------------------------------------------

    @Milter.symlist(*CONNECT_MACROS)
    @Milter.noreply
    @_guarded(replies=False)
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
    @_guarded(replies=False)
    def hello(self, hostname: str) -> int:
        values, _ = self._read(HELO_MACROS)
        self.conversation.update(self.conversation.session.evolve(
            helo=hostname, tls_version=values["{tls_version}"], tls_cipher=values["{cipher}"]))
        return Milter.CONTINUE

    @Milter.symlist(*MAIL_MACROS)
    @_guarded(replies=True)
    def envfrom(self, mail_from: str, *params: str) -> int:
        self._begin_transaction()
        verdict = self.conversation.mail(self._session_with_mail_macros(), mail_from, params,
                                         draining=self.service.draining.is_set())
        if verdict.stops:
            self._end_transaction()
        return self._apply(verdict, final=False)

    @Milter.symlist(*QUEUE_ID_MACROS)
    @Milter.noreply
    @_guarded(replies=False)
    def envrcpt(self, rcpt: str, *params: str) -> int:
        self.conversation.rcpt(rcpt, self._macro("i"))
        return Milter.CONTINUE

    @Milter.symlist(*QUEUE_ID_MACROS)
    @Milter.noreply
    @_guarded(replies=False)
    def data(self) -> int:
        self.conversation.data(self._macro("i"))
        return Milter.CONTINUE

    @Milter.decode("bytes")
    @Milter.noreply
    @_guarded(replies=False)
    def header(self, name: str, value: bytes) -> int:
        self.conversation.header(name, value)
        return Milter.CONTINUE

    @Milter.noreply
    @_guarded(replies=False)
    def eoh(self) -> int:
        return Milter.CONTINUE

    @Milter.noreply
    @_guarded(replies=False)
    def body(self, chunk: bytes) -> int:
        self.conversation.body(chunk)
        return Milter.CONTINUE

    @Milter.symlist(*QUEUE_ID_MACROS)
    @_guarded(replies=True)
    def eom(self) -> int:
        verdict = self.conversation.end_of_message(self._macro("i"))
        answer = self._apply(verdict, final=True)
        self._end_transaction()  # only now may a drain finish: the header changes are made
        return answer

    @_guarded(replies=True)
    def abort(self) -> int:
        if self.conversation is not None:
            self.conversation.abort()
        self._end_transaction()
        return Milter.CONTINUE

    @_guarded(replies=True)
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


@dataclass(frozen=True)
class SocketFile:
    """The unix socket file this process created: removed at exit if it is still that file."""

    path: Path
    directory_fd: int  # O_PATH: names are looked up in this directory, whatever its path becomes
    device: int
    inode: int

    def remove(self) -> None:
        """Unlink our socket and nothing else, never following a link.

        As root, only in a directory no one else may write: there a path can only be what we
        left. Elsewhere the file stays (the next start replaces it); as the milter's user it goes.
        """
        with contextlib.suppress(OSError):
            if os.geteuid() == 0 and not _only_root_writes(os.fstat(self.directory_fd)):
                return
            info = os.stat(self.path.name, dir_fd=self.directory_fd, follow_symlinks=False)
            if stat.S_ISSOCK(info.st_mode) and (info.st_dev, info.st_ino) == (self.device, self.inode):
                os.unlink(self.path.name, dir_fd=self.directory_fd)


def _only_root_writes(info: os.stat_result) -> bool:
    return info.st_uid == 0 and not info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def _unix_path(socket_spec: str) -> Path | None:
    return Path(socket_spec.split(":", 1)[1]) if socket_spec.startswith(("unix:", "local:")) else None


def _check_socket_path(path: Path, identity: Identity | None) -> None:
    """What libmilter would trip over, said with the fix; runs as the user creating the socket."""
    directory = path.parent
    user = identity.name if identity else user_name(os.geteuid())
    fix = f"install -d -o {identity.name} -g {identity.group} -m 0750 {directory}" if identity else ""
    try:
        info = os.stat(directory)
    except FileNotFoundError:
        raise OSError(f"{directory}: no such directory; create it" + (f": {fix}" if fix else "")) from None
    except OSError as error:
        raise OSError(f"{directory}: {user} cannot reach the socket directory ({error.strerror})"
                      + (f"; the directories above it must let {user} search them, and then {fix}" if fix else "")
                      ) from None
    if identity is not None and not os.access(directory, os.W_OK | os.X_OK, effective_ids=True):
        raise OSError(f"{directory}: {user} cannot create the socket here (the directory belongs to "
                      f"{user_name(info.st_uid)}:{group_name(info.st_gid)}, mode {stat.S_IMODE(info.st_mode):04o}). "
                      f"The milter creates its socket as {user}, never as root, so the directory must be "
                      f"{user}'s: {fix}")
    try:
        existing = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(existing.st_mode):
        raise OSError(f"{path} is a symbolic link, not a socket; the milter never follows a link at its socket "
                      f"path: remove it (rm {path})")
    if not stat.S_ISSOCK(existing.st_mode):
        raise OSError(f"{path} exists and is not a socket: remove it, or choose another --socket path")


def _socket_problem(path: Path, info: os.stat_result, identity: Identity | None) -> str | None:
    directory = path.parent
    if not stat.S_ISSOCK(info.st_mode) or info.st_uid != os.geteuid():
        return f"{path} was replaced while the milter created it: who else can write {directory}?"
    mode = stat.S_IMODE(info.st_mode)
    if mode != 0o660:
        return (f"{path} was created with mode {mode:04o}, not 0660: does a default ACL on {directory} override "
                f"the umask? (remove it: setfacl -k {directory})")
    if identity is not None and info.st_gid != identity.gid:
        return (f"{path} got group {group_name(info.st_gid)} from its set-group-ID directory, not {identity.group}, "
                f"so Postfix may not connect: chgrp {identity.group} {directory}")
    return None


def _open_socket(libmilter: Any, socket_spec: str, identity: Identity | None) -> SocketFile | None:
    """Bind the listening socket; a unix socket is created by the user the milter runs as.

    With the effective uid, gid and groups of `identity` and a umask giving 0660, the socket is
    born with its final owner, group and mode: nothing is chowned or chmodded afterwards, and
    root never acts by path in the socket directory, which that user controls (it could swap
    the socket for a link to any file between creation and a chown). libmilter's own checks run
    as that user too: an existing socket is stat()ed and unlinked before bind().
    """
    path = _unix_path(socket_spec)
    if path is None:
        _opensocket(libmilter, socket_spec)  # inet: nothing in the file system; ports < 1024 need root
        return None
    with acting_as(identity):
        _check_socket_path(path, identity)
        previous = os.umask(0o117)
        try:
            _opensocket(libmilter, socket_spec)
        finally:
            os.umask(previous)
        directory_fd = os.open(path.parent, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        info = os.stat(path.name, dir_fd=directory_fd, follow_symlinks=False)
        created = SocketFile(path, directory_fd, info.st_dev, info.st_ino)
        problem = _socket_problem(path, info, identity)
        if problem is not None:
            created.remove()
            raise OSError(problem)
    return created


def _opensocket(libmilter: Any, socket_spec: str) -> None:
    try:
        libmilter.opensocket(True)
    except libmilter.error as error:
        raise OSError(f"libmilter cannot open {socket_spec}: {error} (is the address in use?)") from None


def _die_with_parent(parent: int) -> None:
    """If the supervisor dies (even by SIGKILL), the kernel asks this child to drain."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, int(DRAIN_SIGNAL), 0, 0, 0)
    if os.getppid() != parent:  # it died before prctl took effect
        os.kill(os.getpid(), DRAIN_SIGNAL)


def _supervise(child: int, log: logging.Logger) -> int:
    """The parent: turn SIGTERM/SIGHUP/SIGINT into a graceful stop of the child; pass on reloads.

    libmilter's own signal thread stops the milter at once on SIGTERM, and from then on it no
    longer serves the sessions it has open. So the process that receives the service manager's
    SIGTERM is this small parent, and the child (libmilter) is asked to drain with SIGUSR2.
    """
    while True:
        sig = signal.sigwait({signal.SIGTERM, signal.SIGHUP, signal.SIGINT, RELOAD_SIGNAL, signal.SIGCHLD})
        if sig == signal.SIGCHLD:
            pid, status = os.waitpid(child, os.WNOHANG)
            if pid == child:
                code = os.waitstatus_to_exitcode(status)
                if code != 0:
                    event(log, logging.ERROR, "child_exited", f"milter process exited with {code}", code=code)
                return code if code >= 0 else 128 - code
            continue
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, RELOAD_SIGNAL if sig == RELOAD_SIGNAL else DRAIN_SIGNAL)


def _control_loop(service: Service, drain_timeout: float, stop: Callable[[], None], log: logging.Logger) -> None:
    """The child's control thread: reload on SIGUSR1, drain and stop on SIGUSR2. Never dies."""
    while True:
        sig = signal.sigwait({RELOAD_SIGNAL, DRAIN_SIGNAL})
        if sig == RELOAD_SIGNAL:
            service.reload()
            continue
        try:
            service.draining.set()
            event(log, logging.INFO, "stopping", "new transactions get 451 4.3.2; waiting for open ones",
                  transactions=service.transactions, sessions=service.sessions)
            drained = service.drain(drain_timeout)
            event(log, logging.INFO if drained else logging.WARNING, "stopped",
                  "all transactions finished" if drained else "drain timeout: open transactions will be "
                  "retried by their senders (Postfix answers them with milter_default_action)",
                  transactions=service.transactions)
        finally:
            stop()
        return


def serve(start: Callable[[], Service], socket_spec: str, *, identity: Identity | None = None,
          timeout: int = 600, drain_timeout: float = 30.0) -> int:
    """Bind, drop privileges, then build the Service with `start` and serve until SIGTERM.

    `start` runs after the drop, so the resources of the policy (signing keys, the sender map)
    are read by the user that reads them again on every SIGUSR1: a file works at start exactly
    when it works at reload. Its PolicyError comes out of serve() (the socket is removed first).
    """
    log = logging.getLogger(LOGGER)
    libmilter: Any = Milter.milter  # pymilter's C extension (the module named "milter")

    # Block these in every thread before any starts (threads and the child inherit the mask):
    # they are taken with sigwait by the parent, by our control thread and by libmilter's own
    # signal thread. A thread that left one unblocked would die of its default action.
    signal.pthread_sigmask(signal.SIG_BLOCK, {RELOAD_SIGNAL, DRAIN_SIGNAL, signal.SIGHUP, signal.SIGTERM,
                                              signal.SIGINT, signal.SIGCHLD})
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
        getattr(libmilter, f"set_{name}_callback")(callback)
    libmilter.setconn(socket_spec)
    libmilter.settimeout(timeout)
    libmilter.register("policy-milter", data=lambda ctx: ctx.getpriv().data(),
                       unknown=lambda ctx, cmd: Milter.CONTINUE, negotiate=Milter.negotiate_callback)
    socket_file = _open_socket(libmilter, socket_spec, identity)
    try:
        drop_privileges(identity)
        service = start()
    except BaseException:
        if socket_file is not None:
            socket_file.remove()
        raise
    install(service)

    # No thread exists yet, so forking is safe; the child inherits the bound socket.
    parent = os.getpid()
    child = os.fork()
    if child:
        code = _supervise(child, log)
        if socket_file is not None:
            # libmilter removes it only when not root (and by path); this covers the rest.
            socket_file.remove()
        return code
    # Own process group: a Ctrl-C in a terminal reaches the parent only, which drains us.
    os.setpgid(0, 0)
    _die_with_parent(parent)
    threading.Thread(target=_control_loop, args=(service, drain_timeout, libmilter.stop, log),
                     name="control", daemon=True).start()
    event(log, logging.INFO, "started", f"listening on {socket_spec}", socket=socket_spec,
          uid=os.getuid(), gid=os.getgid(), policy=str(service.path), pid=os.getppid())
    code = 0
    try:
        libmilter.main()  # returns after libmilter.stop(), or at once on a SIGTERM sent to this child
    except libmilter.error as error:
        event(log, logging.ERROR, "milter_failed", f"libmilter stopped: {error}")
        code = 1
    logging.shutdown()
    os._exit(code)  # the child never returns into the parent's code (atexit, CLI)
