"""The harness that runs a loopback mail stack for end-to-end tests of policy-milter.

One job: start, observe and stop the stack. ``MailStack`` builds, in one
directory, a private Postfix instance whose main.cf and master.cf
postfix_config.py generates from ``contrib/postfix/`` (so the tests prove the
shipped configuration), Cyrus SASL users in a sasldb file (sasl.py), a
self-signed certificate (certificates.py), and an aiosmtpd "sink" that plays
the next hop and keeps every message Postfix relays to it. The milter under
test is started and stopped by the test with ``start_milter`` /
``stop_milter``; ``transaction`` and ``unverified_tls_context`` are the
tests' SMTP client helpers.

Needs root (Postfix's master runs as root) and Debian's postfix, sasl2-bin,
libsasl2-modules and openssl. Anything missing raises RuntimeError: in CI a
missing service must fail the run, never skip it.

Try it by hand (the CLI is tryit.py)::

    python -m tests.integration.stack [--dir DIR] [--policy PATH]
"""

from __future__ import annotations

import asyncio
import atexit
import grp
import json
import os
import pwd
import re
import select
import shutil
import signal
import smtplib
import socket
import ssl
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from aiosmtpd.smtp import SMTP, Envelope, Session

from tests.integration import certificates, postfix_config, sasl
from tests.integration.postfix_config import HOSTNAME, LISTENERS, LOOPBACK, PostfixInstance
from tests.integration.processes import run_checked

DEFAULT_USERS: Mapping[str, str] = {
    "alice": "alice-secret",
    "bob.smith": "bob-secret",
    "carol": "carol-secret",
}
MILTER_USER = "policy-milter"  # the account scripts/install and scripts/test create
POLL_INTERVAL = 0.05
SUN_PATH_MAX = 107  # bytes in a unix socket path (sun_path is 108 with the NUL)
LOG_TAIL_LINES = 40


@dataclass(frozen=True)
class Delivered:
    """One message as the sink received it from Postfix."""

    mail_from: str
    rcpts: list[str]
    data: bytes


# ---------------------------------------------------------------- the sink


class _SinkHandler:
    """aiosmtpd handler that stores every message and accepts it."""

    def __init__(self) -> None:
        self.messages: list[Delivered] = []
        self.changed = threading.Condition()

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.content
        data = content if isinstance(content, bytes) else str(content).encode()
        message = Delivered(str(envelope.mail_from), list(envelope.rcpt_tos), data)
        with self.changed:
            self.messages.append(message)
            self.changed.notify_all()
        return "250 2.0.0 Ok: stored by sink"


class _Sink:
    """An aiosmtpd server on 127.0.0.1 with its event loop in a daemon thread."""

    def __init__(self) -> None:
        self.handler = _SinkHandler()
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="mail-sink", daemon=True)
        self._server: asyncio.base_events.Server | None = None

    def start(self) -> None:
        self._thread.start()

        def factory() -> SMTP:
            return SMTP(self.handler, loop=self._loop, hostname="sink.example.test", enable_SMTPUTF8=True)

        # Port 0: the kernel picks a free port, no race with other tests.
        create = self._loop.create_server(factory, LOOPBACK, 0)
        self._server = asyncio.run_coroutine_threadsafe(create, self._loop).result(timeout=10)
        self.port = self._server.sockets[0].getsockname()[1]

    def stop(self) -> None:
        if self._server is not None:
            server = self._server
            self._server = None

            async def close() -> None:
                server.close()
                await server.wait_closed()

            asyncio.run_coroutine_threadsafe(close(), self._loop).result(timeout=10)
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
        if not self._thread.is_alive() and not self._loop.is_closed():
            self._loop.close()


# ---------------------------------------------------------------- helpers


def _tail(text: str, lines: int = LOG_TAIL_LINES) -> str:
    return "\n".join(text.splitlines()[-lines:])


def _read_text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


def _find_tool(name: str, package: str) -> str:
    # CI may run without /usr/sbin on PATH; Postfix and SASL tools live there.
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin", "/usr/bin"])
    found = shutil.which(name, path=search)
    if found is None:
        raise RuntimeError(f"MailStack needs {name!r}: apt-get install {package}")
    return found


def _free_ports(count: int) -> list[int]:
    """Distinct free TCP ports on loopback (small race until Postfix binds them)."""
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((LOOPBACK, 0))
            sockets.append(sock)  # held open until all are picked: no duplicates
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _drain_fd(fd: int) -> str:
    """What is readable from fd right now (a pty master: EIO means no writer left)."""
    chunks = []
    while select.select([fd], [], [], 0)[0]:
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace").replace("\r\n", "\n")


def _user_can_traverse(path: Path, uid: int, gids: Sequence[int]) -> bool:
    """Whether a user may search every directory from / down to path."""
    for directory in [path, *path.parents]:
        st = directory.stat()
        if st.st_uid == uid:
            bit = stat.S_IXUSR
        elif st.st_gid in gids:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not st.st_mode & bit:
            return False
    return True


def _open_for_traversal(path: Path, uid: int, gids: Sequence[int]) -> None:
    """Add o+x (search, not list) to the ancestors the postfix user cannot pass.

    Postfix reads the sasldb and connects to the milter socket as the postfix
    user, so a stack under a root-only 0700 directory such as
    /tmp/pytest-of-root would fail with "permission denied" deep inside smtpd.
    """
    for directory in reversed([path, *path.parents]):
        if not _user_can_traverse(directory, uid, gids):
            os.chmod(directory, stat.S_IMODE(directory.stat().st_mode) | stat.S_IXOTH)


def _probe_unix_socket_as(path: Path, uid: int, gids: Sequence[int]) -> OSError | None:
    """Connect to a unix socket from a child running as uid/gids.

    Returns None on success, else the child's error (errno kept) - this is
    exactly what Postfix's smtpd, running as the postfix user, will meet.
    """
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: plain syscalls only, and never return into the caller
        status = 1
        try:
            os.close(read_end)
            os.setgroups(list(gids))
            os.setgid(gids[0])
            os.setuid(uid)
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(5)
                sock.connect(str(path))
            status = 0
        except OSError as exc:
            os.write(write_end, f"{exc.errno or 0} {exc.strerror or exc}".encode()[:512])
        finally:
            os._exit(status)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as reader:
        report = reader.read().decode(errors="replace")
    _, wait_status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(wait_status) == 0:
        return None
    errno_text, _, message = report.partition(" ")
    return OSError(int(errno_text) if errno_text.isdigit() else 0, message or "probe failed")


# ---------------------------------------------------------------- the stack


class MailStack:
    """Postfix + SASL + TLS + sink (+ the milter under test) on loopback.

    Usage::

        with MailStack(tmp_dir) as stack:
            stack.start_milter([sys.executable, "-m", "policymilter", "run",
                                "--policy", str(policy_dir),
                                "--socket", f"unix:{stack.milter_socket}"])
            ...  # SMTP to 127.0.0.1:stack.ports["submission"]
            stack.wait_delivered(lambda d: "friend@elsewhere.test" in d.rcpts)

    ``milter=False`` leaves smtpd_milters empty (with it set and no milter
    running, Postfix would answer every message with 451).
    """

    def __init__(
        self,
        directory: Path | str,
        *,
        users: Mapping[str, str] | None = None,
        milter: bool = True,
        start_timeout: float = 30.0,
    ) -> None:
        self.directory = Path(directory).resolve()
        self.users: dict[str, str] = dict(DEFAULT_USERS if users is None else users)
        self.use_milter = milter
        self.start_timeout = start_timeout

        self.config_dir = self.directory / "postfix"
        self.queue_dir = self.directory / "queue"
        self.data_dir = self.directory / "data"
        # Debian's Postfix reads Cyrus app configs (smtpd.conf) only from
        # $config_directory/sasl/; cyrus_sasl_config_path is ignored.
        self.sasl_dir = self.config_dir / "sasl"
        self.sasldb_path = self.sasl_dir / "sasldb2"
        self.tls_dir = self.directory / "tls"
        self.cert_path = self.tls_dir / "cert.pem"
        self.key_path = self.tls_dir / "key.pem"
        self.maillog_path = self.directory / "maillog"
        self.milter_log_path = self.directory / "milter.log"
        self.milter_socket = self.directory / "milter" / "milter.sock"
        self.state_dir = self.directory / "state"  # the milter's rate-limit store (state_store)
        self.ports: dict[str, int] = {}
        self.sasl_realm = ""

        self._sink: _Sink | None = None
        self._milter: subprocess.Popen[bytes] | None = None
        self._starts = 0  # milters started (each gets its own rate-limit store)
        self._postfix_started = False
        self._tools: dict[str, str] = {}
        pw = pwd.getpwnam("postfix") if self._has_user("postfix") else None
        self._postfix_uid = pw.pw_uid if pw else -1
        self._postfix_gids = os.getgrouplist("postfix", pw.pw_gid) if pw else []

    # -- lifecycle ----------------------------------------------------------

    def start(self) -> MailStack:
        """Build everything and start the sink and Postfix; ready on return."""
        self._check_prerequisites()
        atexit.register(self.stop)  # never leave a Postfix master behind
        try:
            self._make_directories()
            self._start_sink()
            self.ports.update(zip(LISTENERS, _free_ports(len(LISTENERS)), strict=True))
            self._make_certificate()
            self._write_postfix_config()
            self._make_sasl()
            self._start_postfix()
            self._wait_postfix_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop the milter (if running), Postfix and the sink. Idempotent."""
        atexit.unregister(self.stop)
        if self._milter is not None and self._milter.poll() is None:
            self._terminate_milter()
        if self._postfix_started:
            self._stop_postfix()
        if self._sink is not None:
            self._sink.stop()
            self._sink = None

    def __enter__(self) -> MailStack:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- observing ----------------------------------------------------------

    def maillog(self) -> str:
        """Postfix's log so far (postlogd writes it; there is no syslog here)."""
        return _read_text(self.maillog_path)

    def delivered(self) -> list[Delivered]:
        """A copy of every message the sink has received so far."""
        if self._sink is None:
            return []
        with self._sink.handler.changed:
            return list(self._sink.handler.messages)

    def wait_delivered(
        self,
        predicate: Callable[[Delivered], bool] = lambda _message: True,
        timeout: float = 20.0,
    ) -> Delivered:
        """The first delivered message (earlier ones included) matching predicate.

        Raises AssertionError after timeout, with the Postfix log tail and queue.
        """
        if self._sink is None:
            raise RuntimeError("the stack is not running")
        handler = self._sink.handler
        deadline = time.monotonic() + timeout
        with handler.changed:
            while True:
                for message in handler.messages:
                    if predicate(message):
                        return message
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                handler.changed.wait(min(POLL_INTERVAL, remaining))
            count = len(handler.messages)
        raise AssertionError(
            f"no matching message reached the sink within {timeout:.0f}s ({count} delivered in all)\n"
            f"--- postqueue -p ---\n{self._safe_postqueue()}\n"
            f"--- maillog (tail) ---\n{_tail(self.maillog())}\n"
            f"--- milter.log (tail) ---\n{_tail(self.milter_log(), 15)}"
        )

    def wait_maillog(self, pattern: str, timeout: float = 20.0) -> re.Match[str]:
        """The first match of a regex in the Postfix log, waiting for it to appear.

        postlogd writes asynchronously, so a line may land shortly after the
        SMTP reply that caused it.
        """
        regex = re.compile(pattern, re.MULTILINE)
        deadline = time.monotonic() + timeout
        while True:
            found = regex.search(self.maillog())
            if found is not None:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"{pattern!r} not in the maillog after {timeout:.0f}s\n{_tail(self.maillog())}")
            time.sleep(POLL_INTERVAL)

    def postqueue(self) -> str:
        """`postqueue -p`: the queue listing ("Mail queue is empty" when empty)."""
        return run_checked([self._tools["postqueue"], "-c", str(self.config_dir), "-p"], what="postqueue -p")

    def queue(self) -> list[dict[str, object]]:
        """`postqueue -j`: one dict per queued message (queue_name, queue_id, sender, recipients...)."""
        out = run_checked([self._tools["postqueue"], "-c", str(self.config_dir), "-j"], what="postqueue -j")
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def flush(self) -> None:
        """`postqueue -f`: retry deferred mail now instead of after the backoff."""
        run_checked([self._tools["postqueue"], "-c", str(self.config_dir), "-f"], what="postqueue -f")

    def postcat(self, queue_id: str) -> str:
        """`postcat -q ID`: a queued (e.g. held) message, headers as milters left them."""
        return run_checked(
            [self._tools["postcat"], "-c", str(self.config_dir), "-q", queue_id],
            what=f"postcat -q {queue_id}",
        )

    # -- the milter ---------------------------------------------------------

    @property
    def milter_pid(self) -> int | None:
        return self._milter.pid if self._milter is not None else None

    @property
    def milter_running(self) -> bool:
        return self._milter is not None and self._milter.poll() is None

    def start_milter(self, cmd: Sequence[str], env: Mapping[str, str] | None = None, timeout: float = 20.0) -> None:
        """Start the milter; return once the postfix user can connect to its socket.

        env is added to (and overrides) this process's environment. Output goes
        to milter.log (appended). A stale socket file is left for the milter
        to replace.
        """
        if self._milter is not None and self._milter.poll() is None:
            raise RuntimeError(f"a milter is already running (pid {self._milter.pid})")
        self._starts += 1
        cmd = self.with_private_state(cmd)
        full_env = {**os.environ, **(env or {})}
        with open(self.milter_log_path, "ab") as log:
            log.write(f"=== {time.strftime('%H:%M:%S')} start: {' '.join(cmd)}\n".encode())
            log.flush()
            # Own session: a Ctrl-C at the terminal must not reach it (libmilter
            # aborts on SIGINT); the stack stops it with SIGTERM.
            self._milter = subprocess.Popen(
                list(cmd), stdout=log, stderr=subprocess.STDOUT, env=full_env, start_new_session=True
            )
        self._wait_milter_socket(timeout)

    @property
    def state_store(self) -> str:
        """The state store of the milter started last: never the host's
        /var/lib/policy-milter, and a new file for each start (a milter started as root would
        leave files a later one running as policy-milter could not write)."""
        return f"sqlite:{self.state_dir}/state-{self._starts}.db"

    def with_private_state(self, cmd: Sequence[str]) -> list[str]:
        """`policymilter run` without a state.store of its own gets this stack's store, and
        its admin notices go to this instance's notification service."""
        cmd = list(cmd)
        if "policymilter" not in cmd or "run" not in cmd:
            return cmd
        if not any("state.store=" in arg for arg in cmd):
            cmd += ["-o", f'state.store="{self.state_store}"']
        if not any("ratelimit.notify_relay=" in arg for arg in cmd):
            cmd += ["-o", f'ratelimit.notify_relay="{LOOPBACK}:{self.ports["notify"]}"']
        return cmd

    def signal_milter(self, sig: int) -> None:
        if self._milter is None:
            raise RuntimeError("no milter was started")
        self._milter.send_signal(sig)

    def stop_milter(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        """Send sig and wait for exit; returns the exit code (negative: killed by a signal).

        A milter that does not exit within timeout is killed and RuntimeError raised.
        """
        if self._milter is None:
            raise RuntimeError("no milter was started")
        if self._milter.poll() is None:
            self._milter.send_signal(sig)
            try:
                self._milter.wait(timeout)
            except subprocess.TimeoutExpired:
                self._milter.kill()
                self._milter.wait(10)
                raise RuntimeError(
                    f"milter did not exit within {timeout}s of signal {sig}; killed\n{_tail(self.milter_log())}"
                ) from None
        return self._milter.returncode

    def milter_log(self) -> str:
        return _read_text(self.milter_log_path)

    # -- internals: prerequisites and files ---------------------------------

    @staticmethod
    def _has_user(name: str) -> bool:
        try:
            pwd.getpwnam(name)
        except KeyError:
            return False
        return True

    def _check_prerequisites(self) -> None:
        if os.geteuid() != 0:
            raise RuntimeError("MailStack must run as root (Postfix's master and its set-uid daemons)")
        tools = {
            "postfix": "postfix",
            "postconf": "postfix",
            "postqueue": "postfix",
            "postcat": "postfix",
            "saslpasswd2": "sasl2-bin",
            "openssl": "openssl",
        }
        self._tools = {name: _find_tool(name, package) for name, package in tools.items()}
        if self._postfix_uid < 0:
            raise RuntimeError("no 'postfix' user: install Debian's postfix package")
        try:
            grp.getgrnam("postdrop")
        except KeyError:
            raise RuntimeError("no 'postdrop' group: install Debian's postfix package") from None
        sasl.check_plugins()

    def _check_path_lengths(self) -> None:
        # Postfix connects to $queue_directory/public/postlog by absolute path:
        # a deep stack directory fails `postfix start` with only a syslog line.
        for path in (self.queue_dir / "public" / "postlog", self.milter_socket):
            if len(str(path).encode()) > SUN_PATH_MAX:
                raise RuntimeError(
                    f"stack directory {self.directory} is too deep: unix socket path {path} "
                    f"exceeds {SUN_PATH_MAX} bytes; use a shorter directory"
                )

    def _make_directories(self) -> None:
        self._check_path_lengths()
        self.directory.mkdir(parents=True, exist_ok=True)
        os.chmod(self.directory, 0o755)
        _open_for_traversal(self.directory, self._postfix_uid, self._postfix_gids)
        # Postfix wants these owned by root and not group/other writable. The
        # queue's subdirectories and data_directory are made by `postfix start`
        # (post-install create-missing) with the owners Postfix wants, but
        # postfix chdirs to queue_directory before that.
        for path in (self.config_dir, self.sasl_dir, self.queue_dir, self.tls_dir):
            path.mkdir(exist_ok=True)
            os.chmod(path, 0o755)
        self._make_socket_dir()
        # Like /var/lib/policy-milter: the milter's user writes the SQLite file and its journal.
        self.state_dir.mkdir(exist_ok=True)
        if self._has_user(MILTER_USER):
            os.chown(self.state_dir, pwd.getpwnam(MILTER_USER).pw_uid, -1)
        os.chmod(self.state_dir, 0o700)

    def _make_socket_dir(self) -> None:
        """A directory for the milter socket that the postfix user can enter.

        Owned by the milter's account when it exists, as in production: a milter
        started with --user creates its socket as that user, never as root.
        Setgid, group postfix: the socket a milter running as root creates
        inherits group postfix, so its mode 0660 is enough then too.
        """
        socket_dir = self.milter_socket.parent
        socket_dir.mkdir(exist_ok=True)
        owner = pwd.getpwnam(MILTER_USER).pw_uid if self._has_user(MILTER_USER) else 0
        os.chown(socket_dir, owner, grp.getgrnam("postfix").gr_gid)
        os.chmod(socket_dir, 0o2750)

    def _start_sink(self) -> None:
        self._sink = _Sink()
        self._sink.start()
        self.ports["sink"] = self._sink.port

    def _make_certificate(self) -> None:
        certificates.make_self_signed(self._tools["openssl"], HOSTNAME, self.cert_path, self.key_path)

    def _make_sasl(self) -> None:
        """sasldb users and the two Cyrus app configs (strict and loose)."""
        # Cyrus looks a bare login name up in smtpd_sasl_local_domain or, when
        # that is empty (contrib's choice: {auth_authen} stays "alice"), in
        # $myhostname, which Postfix hands it as the server name.
        self.sasl_realm = self._postconf_expanded("smtpd_sasl_local_domain") or self._postconf_expanded("myhostname")
        sasl.write_sasldb(self._tools["saslpasswd2"], self.sasldb_path, self.sasl_realm, self.users)
        sasl.write_app_configs(self.sasl_dir, self.sasldb_path)

    def _postconf_expanded(self, name: str) -> str:
        out = run_checked(
            [self._tools["postconf"], "-c", str(self.config_dir), "-x", "-h", name], what=f"postconf {name}"
        )
        return out.strip()

    def _write_postfix_config(self) -> None:
        instance = PostfixInstance(
            directory=self.directory,
            config_dir=self.config_dir,
            queue_dir=self.queue_dir,
            data_dir=self.data_dir,
            maillog_path=self.maillog_path,
            cert_path=self.cert_path,
            key_path=self.key_path,
            milter_socket=self.milter_socket if self.use_milter else None,
            ports=dict(self.ports),
        )
        postfix_config.write_config(instance)

    # -- internals: running Postfix -----------------------------------------

    def _postfix(self, command: str, timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [self._tools["postfix"], "-c", str(self.config_dir), command],
            capture_output=True,
            timeout=timeout,
            check=False,
        )

    def _start_postfix(self) -> None:
        # The postfix command prints its fatal errors only to a terminal (else
        # to syslog, absent here): give it a pty for stderr to catch them.
        pty_master, pty_slave = os.openpty()
        try:
            proc = subprocess.run(
                [self._tools["postfix"], "-c", str(self.config_dir), "start"],
                stdout=subprocess.PIPE,
                stderr=pty_slave,
                timeout=60,
                check=False,
            )
        finally:
            os.close(pty_slave)
        errors = _drain_fd(pty_master)
        os.close(pty_master)
        self._postfix_started = proc.returncode == 0
        if not self._postfix_started:
            output = proc.stdout.decode(errors="replace") + errors
            raise RuntimeError(f"postfix start failed:\n{output}\n--- maillog ---\n{_tail(self.maillog())}")

    def _stop_postfix(self) -> None:
        # `postfix stop` waits up to 5 s, then kills the process group itself.
        proc = self._postfix("stop", timeout=30)
        if proc.returncode != 0:
            self._postfix("abort", timeout=30)
            self._kill_master()
        self._postfix_started = False

    def _kill_master(self) -> None:
        pid_file = self.queue_dir / "pid" / "master.pid"
        try:
            pid = int(pid_file.read_text().split()[0])
            os.killpg(pid, signal.SIGKILL)
        except (FileNotFoundError, IndexError, ValueError, ProcessLookupError, PermissionError):
            pass

    def _wait_postfix_ready(self) -> None:
        """Poll every listener until it greets with 220 (465: after the TLS handshake)."""
        deadline = time.monotonic() + self.start_timeout
        for name in LISTENERS:
            wrap_tls = name == "submissions"
            while True:
                error = _smtp_greeting_error(self.ports[name], wrap_tls)
                if error is None:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"Postfix listener {name} (port {self.ports[name]}) not ready after "
                        f"{self.start_timeout:.0f}s: {error}\n--- maillog ---\n{_tail(self.maillog())}"
                    )
                time.sleep(POLL_INTERVAL)

    def _safe_postqueue(self) -> str:
        try:
            return self.postqueue()
        except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
            return f"(postqueue failed: {exc})"

    # -- internals: the milter ----------------------------------------------

    def _wait_milter_socket(self, timeout: float) -> None:
        assert self._milter is not None
        deadline = time.monotonic() + timeout
        last_error: OSError | None = None
        while time.monotonic() < deadline:
            if self._milter.poll() is not None:
                raise RuntimeError(
                    f"milter exited with code {self._milter.returncode} before its socket was ready\n"
                    f"--- milter.log (tail) ---\n{_tail(self.milter_log())}"
                )
            if self.milter_socket.exists():
                # Probe as the postfix user: root could connect where smtpd cannot.
                last_error = _probe_unix_socket_as(self.milter_socket, self._postfix_uid, self._postfix_gids)
                if last_error is None:
                    return
                if last_error.errno == 13:  # EACCES: waiting will not fix it
                    break
            time.sleep(POLL_INTERVAL)
        detail = self._socket_detail()
        self._terminate_milter()
        raise RuntimeError(
            f"milter socket {self.milter_socket} not connectable by the postfix user within {timeout:.0f}s: "
            f"{last_error or 'socket never appeared'} ({detail})\n"
            f"--- milter.log (tail) ---\n{_tail(self.milter_log())}"
        )

    def _socket_detail(self) -> str:
        try:
            st = self.milter_socket.stat()
        except FileNotFoundError:
            return "no socket file"
        group = grp.getgrgid(st.st_gid).gr_name
        return f"mode {stat.filemode(st.st_mode)} owner uid {st.st_uid} group {group}"

    def _terminate_milter(self) -> None:
        assert self._milter is not None
        if self._milter.poll() is None:
            self._milter.terminate()
            try:
                self._milter.wait(20)
            except subprocess.TimeoutExpired:
                self._milter.kill()
                self._milter.wait(10)


def _smtp_greeting_error(port: int, wrap_tls: bool) -> str | None:
    """None if the port answers 220 (after a TLS handshake if wrap_tls), else why not."""
    try:
        with socket.create_connection((LOOPBACK, port), timeout=5) as raw:
            conn: socket.socket = raw
            if wrap_tls:
                conn = unverified_tls_context().wrap_socket(raw, server_hostname=HOSTNAME)
            banner = conn.recv(512)
            if not banner.startswith(b"220"):
                return f"unexpected banner {banner!r}"
            conn.sendall(b"QUIT\r\n")  # polite exit: no "lost connection" noise in the log
            conn.recv(512)
    except (OSError, ssl.SSLError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def transaction(client: smtplib.SMTP, sender: str, rcpt: str, raw: bytes) -> tuple[int, str]:
    """MAIL, RCPT, DATA on an open session; (code, text) of the first refusal or of DATA's reply."""
    for code, text in (client.mail(sender), client.rcpt(rcpt)):
        if code >= 400:
            return code, text.decode()
    try:
        code, text = client.data(raw)
    except smtplib.SMTPDataError as error:  # DATA itself refused (no valid recipient, milter down)
        code, text = error.smtp_code, error.smtp_error
    return code, text.decode()


def unverified_tls_context() -> ssl.SSLContext:
    """A client TLS context that accepts the stack's self-signed certificate."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the stack's certificate is self-signed
    return context


def milter_command(policy: Path, socket_path: Path) -> list[str]:
    """The command the tests and the try-it CLI use to run the milter under test."""
    return [sys.executable, "-m", "policymilter", "run", "--policy", str(policy), "--socket", f"unix:{socket_path}"]


if __name__ == "__main__":
    # `python -m tests.integration.stack` (as both READMEs document) runs the try-it CLI. This
    # file then runs as __main__ while tryit imports tests.integration.stack afresh: tryit uses
    # that module's MailStack only, never this copy's.
    from tests.integration import tryit

    raise SystemExit(tryit.main())
