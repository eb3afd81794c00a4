"""Real content scanners on loopback for the integration tests: ClamAV's clamd and SpamAssassin's spamd.

Both come from Debian's packages and run from a directory the test gives, started by the test
suite itself: nothing of the system's own services (/etc/clamav, /run/clamav, the spamd init
script, freshclam) is used or started. A missing binary or a daemon that does not come up is a
RuntimeError carrying the end of its log, never a skip.

clamd: freshclam cannot download here, and a real database costs ~1 GB and tens of seconds to
load. A one-signature database made with `sigtool --md5` from the 68-byte EICAR test string
(a harmless industry-standard test file, not malware) loads in about a second. sigtool names a
hash signature after the file it hashed, and clamd appends ".UNOFFICIAL" to every signature
from an unsigned database, so EICAR is reported as `Eicar-Test-Signature.UNOFFICIAL`.

spamd: Debian ships compiled-in rules in /usr/share/spamassassin, so no sa-update is needed;
`--local` keeps it off the network (no DNSBL, Razor, Pyzor, DCC). spamd refuses to scan as root
("still running as root! dying"), so its parent stays root (it binds and writes the pidfile)
while its children drop to Debian's `debian-spamd` user; their config, HOME and TMPDIR live in
a subdirectory that user owns, and the test directory's ancestors get the search bit it needs.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import re
import shutil
import signal
import socket
import stat
import struct
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Self

from tests.integration.processes import find_program, session_processes, stop_session

LOOPBACK = "127.0.0.1"
# The standard EICAR anti-virus test string (https://www.eicar.org), exactly 68 bytes.
EICAR = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
# The hashed file's name becomes the signature name (the third field of the .hdb line).
EICAR_FILE_NAME = "Eicar-Test-Signature"
# clamd marks signatures from databases without a digital signature (.hdb, .ndb...) this way.
UNOFFICIAL_SUFFIX = ".UNOFFICIAL"
# GTUBE, SpamAssassin's test string: a body containing it scores 1000.
GTUBE = b"XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"

SPAMD_USER = "debian-spamd"  # created by Debian's spamassassin package
SPAMASSASSIN_RULES = Path("/usr/share/spamassassin")  # the rules Debian ships (no sa-update)
SPAMASSASSIN_SITE = Path("/etc/spamassassin")  # its *.pre files load the plugins the rules need
UNIX_PATH_MAX = 107  # sun_path is 108 bytes including the terminating NUL

CLAMD_READY_TIMEOUT = 30.0  # measured ~1 s with the one-signature database
SPAMD_READY_TIMEOUT = 60.0  # measured ~1 s, but rule compilation can take seconds on a busy machine
STOP_TIMEOUT = 10.0
PROBE_TIMEOUT = 2.0
PROBE_BACKOFF = 0.02
IO_TIMEOUT = 30.0
INSTREAM_CHUNK = 64 * 1024
START_ATTEMPTS = 3  # a free port can be taken between choosing it and the daemon binding it
LOG_TAIL_LINES = 40


def free_port() -> int:
    """A loopback TCP port free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK, 0))
        return probe.getsockname()[1]


def rss_kib(pids: list[int]) -> int:
    """Summed resident set size (KiB) of the given processes (shared pages counted in each)."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total


def _tail(*paths: Path) -> str:
    text = ""
    for path in paths:
        if path.exists():
            text += f"--- {path.name}\n" + path.read_text(errors="replace")
    return "\n".join(text.splitlines()[-LOG_TAIL_LINES:]) or "(the daemon logged nothing)"


def _clean_env() -> dict[str, str]:
    # Inherited systemd socket-activation variables would make clamd adopt foreign descriptors.
    return {k: v for k, v in os.environ.items() if k not in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES")}


def _open_for_traversal(path: Path, uid: int = -1, gids: frozenset[int] = frozenset()) -> None:
    """Add o+x (search, not list) to every ancestor of path that the user could not pass.

    pytest makes its temporary directories 0700; spamd's children, running as debian-spamd,
    must reach their config and HOME below them, and the unprivileged milter clamd's socket.
    The default uid (-1) stands for any user: every directory gets o+x.
    """
    for directory in reversed([path, *path.parents]):
        st = directory.stat()
        if st.st_uid == uid:
            bit = stat.S_IXUSR
        elif st.st_gid in gids:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not st.st_mode & bit:
            os.chmod(directory, stat.S_IMODE(st.st_mode) | stat.S_IXOTH)


def _connect(endpoint: str, timeout: float) -> socket.socket:
    """A connected socket to "unix:/path" or "HOST:PORT"."""
    if endpoint.startswith("unix:"):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(endpoint.removeprefix("unix:"))
        except OSError:
            sock.close()
            raise
        return sock
    host, _, port = endpoint.rpartition(":")
    return socket.create_connection((host, int(port)), timeout=timeout)


def _read_all(sock: socket.socket) -> bytes:
    """Everything until the peer closes.

    A reset after some data still returns that data: a unix-socket peer that closes with our
    unread bytes in its queue (clamd past StreamMaxLength) makes the recv *after* its reply fail.
    """
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except ConnectionResetError:
        if not chunks:
            raise
    return b"".join(chunks)


class _Daemon:
    """A foreground daemon in its own session, with a log to quote when it fails."""

    name = "daemon"

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory).resolve()
        self.stderr_path = self.directory / f"{self.name}.stderr"
        self.startup_seconds: float | None = None  # Popen to first good readiness answer
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def pids(self) -> list[int]:
        """The daemon's live processes (itself and any children)."""
        return sorted(session_processes(self._process.pid)) if self._process else []

    def log_tail(self) -> str:
        return _tail(self.stderr_path)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        """SIGTERM, wait for every process of the session to be gone, SIGKILL what lingers."""
        process, self._process = self._process, None
        if process is None:
            return
        # spamd's preforked children outlive their parent for a moment after SIGTERM.
        stop_session(process, STOP_TIMEOUT, PROBE_BACKOFF)

    def _launch(self, argv: list[str], env: dict[str, str] | None = None) -> None:
        with self.stderr_path.open("ab") as log:
            self._process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.directory,
                env=env or _clean_env(),
                start_new_session=True,  # no terminal signals; stop() can reach every child
            )

    def _wait_ready(self, ready: Callable[[], bool], timeout: float, what: str) -> None:
        started = time.monotonic()
        deadline = started + timeout
        while True:
            if self._process is None or self._process.poll() is not None:
                code = self._process.returncode if self._process else None
                self.stop()
                raise RuntimeError(f"{self.name} exited (status {code}) before {what}:\n{self.log_tail()}")
            if ready():
                self.startup_seconds = time.monotonic() - started
                return
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{self.name}: no {what} within {timeout:.0f} s:\n{self.log_tail()}")
            time.sleep(PROBE_BACKOFF)


class Clamd(_Daemon):
    """clamd with a database holding only the EICAR signature, on a unix socket (and TCP on request)."""

    name = "clamd"
    signature_name = EICAR_FILE_NAME + UNOFFICIAL_SUFFIX

    def __init__(self, directory: Path, *, tcp: bool = False, stream_max_length: str = "30M") -> None:
        """stream_max_length: clamd's StreamMaxLength (e.g. "1M" to provoke its size-limit error).

        The default 30M (MiB) is above the policy's antivirus.max_size (25 MiB): every stream the
        milter is allowed to send fits, and clamd does not cut it off with
        "INSTREAM size limit exceeded. ERROR".
        """
        super().__init__(directory)
        self._clamd = ""  # the binary, looked up at start() so a missing package fails loudly there
        self.tcp = tcp
        self.stream_max_length = stream_max_length
        self.socket_path = self.directory / "clamd.sock"
        self.port: int | None = None
        self.config_path = self.directory / "clamd.conf"
        self.log_path = self.directory / "clamd.log"
        self.database_dir = self.directory / "db"
        if len(str(self.socket_path)) > UNIX_PATH_MAX:
            raise RuntimeError(f"clamd socket path too long for a unix socket: {self.socket_path}")

    @property
    def endpoint(self) -> str:
        """The policy's antivirus.servers form: "unix:/path", or "127.0.0.1:PORT" when tcp."""
        if self.tcp:
            if self.port is None:
                raise RuntimeError("clamd has no TCP port before start()")
            return f"{LOOPBACK}:{self.port}"
        return f"unix:{self.socket_path}"

    def log_tail(self) -> str:
        return _tail(self.log_path, self.stderr_path)

    def start(self) -> Clamd:
        self._clamd = find_program("clamd", "clamav-daemon")
        if self._process is not None:
            raise RuntimeError("clamd already started")
        self.directory.mkdir(parents=True, exist_ok=True)
        # LocalSocketMode 666 is not enough if the milter's user cannot reach the socket.
        _open_for_traversal(self.directory)
        (self.directory / "tmp").mkdir(exist_ok=True)
        self._write_database()
        for attempt in range(START_ATTEMPTS):
            if self.tcp and (self.port is None or attempt > 0):
                self.port = free_port()
            self._write_config()
            try:
                self._launch_and_wait()
                return self
            except RuntimeError:
                # Only a TCP port taken between free_port() and clamd's bind is worth another try.
                if not self.tcp or attempt == START_ATTEMPTS - 1 or "bind" not in self.log_tail().lower():
                    raise
        raise AssertionError("unreachable")

    def kill(self) -> None:
        """SIGKILL, as a crash: the unix socket file stays behind (connecting then gives ECONNREFUSED)."""
        if self._process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._process.pid, signal.SIGKILL)
        self._process.wait(STOP_TIMEOUT)

    def restart(self) -> None:
        """Stop (or reap after kill()) and start again on the same socket path and TCP port."""
        self.stop()
        self._launch_and_wait()

    def scan(self, data: bytes) -> str:
        """INSTREAM `data` and return clamd's reply, e.g. "stream: OK" or "stream: <name> FOUND"."""
        chunks = [data[i:i + INSTREAM_CHUNK] for i in range(0, len(data), INSTREAM_CHUNK)]
        frames = [struct.pack("!I", len(chunk)) + chunk for chunk in chunks]
        return self.command(b"zINSTREAM\0" + b"".join(frames) + struct.pack("!I", 0))

    def ping(self) -> str:
        return self.command(b"zPING\0", timeout=PROBE_TIMEOUT)

    def command(self, request: bytes, *, timeout: float = IO_TIMEOUT, endpoint: str | None = None) -> str:
        """Send one raw clamd request ("z" form: NUL-terminated) and return the reply without its NUL."""
        with _connect(endpoint or self.endpoint, timeout) as sock:
            # Past StreamMaxLength clamd answers "INSTREAM size limit exceeded. ERROR" and closes
            # while the client is still sending: the reply is there to read all the same.
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                sock.sendall(request)
            reply = _read_all(sock)  # clamd closes the connection after a "z" command's reply
        return reply.rstrip(b"\0\n").decode(errors="replace")

    def _write_database(self) -> None:
        sigtool = find_program("sigtool", "clamav")
        if self.database_dir.exists():
            shutil.rmtree(self.database_dir)
        self.database_dir.mkdir()
        work = self.directory / "eicar"
        work.mkdir(exist_ok=True)
        sample = work / EICAR_FILE_NAME
        sample.write_bytes(EICAR)
        done = subprocess.run([sigtool, "--md5", str(sample)], capture_output=True, cwd=work, timeout=60, check=False)
        line = done.stdout.decode(errors="replace").strip()
        if done.returncode != 0 or not re.fullmatch(rf"[0-9a-f]{{32}}:{len(EICAR)}:{EICAR_FILE_NAME}", line):
            raise RuntimeError(f"sigtool --md5 failed (exit {done.returncode}): {line}\n{done.stderr.decode()}")
        (self.database_dir / "test.hdb").write_text(line + "\n")
        sample.unlink()  # the string stays only in this source file and the tests' memory

    def _write_config(self) -> None:
        lines = [
            "Foreground yes",
            f"DatabaseDirectory {self.database_dir}",
            f"LocalSocket {self.socket_path}",
            # Any local user may connect (the milter runs unprivileged); the directories above the
            # socket must still be searchable by that user.
            "LocalSocketMode 666",
            f"PidFile {self.directory / 'clamd.pid'}",
            f"LogFile {self.log_path}",
            "LogTime yes",
            f"TemporaryDirectory {self.directory / 'tmp'}",
            # No `User` line: clamd only drops privileges when told to (Debian's own clamd.conf says
            # `User clamav`), so it stays root and can use this root-owned directory.
            f"StreamMaxLength {self.stream_max_length}",
            # MaxFileSize below StreamMaxLength would make clamd skip the rest of a large stream and
            # still answer "OK"; MaxScanSize bounds what archives may expand to.
            f"MaxFileSize {self.stream_max_length}",
            "MaxScanSize 100M",
            "ScanArchive yes",  # a zipped EICAR must be found
            "ScanMail yes",  # a whole message is streamed: clamd decodes its MIME parts
            "SelfCheck 0",  # the database never changes during a run: no reloads mid-test
        ]
        if self.tcp:
            lines += [f"TCPSocket {self.port}", f"TCPAddr {LOOPBACK}"]
        self.config_path.write_text("\n".join(lines) + "\n")

    def _ready(self) -> bool:
        endpoints = [f"unix:{self.socket_path}"] + ([f"{LOOPBACK}:{self.port}"] if self.tcp else [])
        try:
            return all(self.command(b"zPING\0", timeout=PROBE_TIMEOUT, endpoint=e) == "PONG" for e in endpoints)
        except OSError:
            return False  # not listening yet

    def _launch_and_wait(self) -> None:
        self._launch([self._clamd, "-c", str(self.config_path)])
        self._wait_ready(self._ready, CLAMD_READY_TIMEOUT, "PONG")


class Spamd(_Daemon):
    """Debian's spamd with its shipped rules, local tests only, on 127.0.0.1:PORT."""

    name = "spamd"

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        self.port = 0
        self.pidfile = self.directory / "spamd.pid"
        # Owned by debian-spamd: the site config it reads, and the HOME and TMPDIR it writes.
        self.runtime_dir = self.directory / "spamd-user"
        self.site_dir = self.runtime_dir / "site"

    @property
    def endpoint(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    def start(self) -> Spamd:
        if self._process is not None:
            raise RuntimeError("spamd already started")
        spamd = find_program("spamd", "spamd")
        if not any(SPAMASSASSIN_RULES.glob("*.cf")):
            raise RuntimeError(f"no SpamAssassin rules in {SPAMASSASSIN_RULES}: install Debian's spamassassin")
        try:
            user = pwd.getpwnam(SPAMD_USER)
        except KeyError:
            raise RuntimeError(f"user {SPAMD_USER} missing: install Debian's spamassassin") from None
        self.directory.mkdir(parents=True, exist_ok=True)
        self._prepare_runtime(user)
        env = _clean_env()
        # File::Spec->tmpdir() falls back to /tmp, which is 0755 on these machines: spamd's
        # start-up temp HOME must be somewhere debian-spamd can write.
        env["TMPDIR"] = str(self.runtime_dir / "tmp")
        for attempt in range(START_ATTEMPTS):
            if attempt > 0 or not self.port:  # a restart keeps its port: clients point at it
                self.port = free_port()
            self._launch(
                [
                    spamd,
                    f"--listen={LOOPBACK}:{self.port}",
                    f"--allowed-ips={LOOPBACK}",
                    f"--username={SPAMD_USER}",  # children scan as this user; spamd will not scan as root
                    f"--pidfile={self.pidfile}",
                    "--syslog=stderr",  # no syslog daemon here; stderr goes to spamd.stderr
                    "--max-children=2",
                    "--min-children=1",
                    "--nouser-config",
                    "--local",  # no DNSBL, URIBL, Razor, Pyzor or DCC: nothing but loopback
                    # The shipped rules, not whatever an sa-update left in /var/lib/spamassassin.
                    f"--configpath={SPAMASSASSIN_RULES}",
                    f"--siteconfigpath={self.site_dir}",
                    f"--helper-home-dir={self.runtime_dir / 'home'}",
                ],
                env,
            )
            try:
                self._wait_ready(self._ready, SPAMD_READY_TIMEOUT, "PONG")
                return self
            except RuntimeError:
                if attempt == START_ATTEMPTS - 1 or "address already in use" not in self.log_tail().lower():
                    raise
        raise AssertionError("unreachable")

    def restart(self) -> None:
        """Stop and start again on the same port (RuntimeError if that port was taken meanwhile)."""
        port = self.port
        self.stop()
        self.start()
        if self.port != port:
            raise RuntimeError(f"spamd restarted on port {self.port}, not {port}")

    def ping(self) -> str:
        return self.request(b"PING SPAMC/1.5\r\n\r\n", timeout=PROBE_TIMEOUT).strip()

    def request(self, raw: bytes, *, timeout: float = IO_TIMEOUT) -> str:
        """Send one raw spamc request, half-close, and return spamd's whole reply."""
        with _connect(self.endpoint, timeout) as sock:
            sock.sendall(raw)
            sock.shutdown(socket.SHUT_WR)
            return _read_all(sock).decode(errors="replace")

    def _ready(self) -> bool:
        try:
            return self.ping() == "SPAMD/1.5 0 PONG"
        except OSError:
            return False  # still loading its rules, not listening yet

    def _prepare_runtime(self, user: pwd.struct_passwd) -> None:
        if self.runtime_dir.exists():
            shutil.rmtree(self.runtime_dir)
        for sub in (self.runtime_dir, self.site_dir, self.runtime_dir / "home", self.runtime_dir / "tmp"):
            sub.mkdir(mode=0o700)
        # The Debian *.pre files load the plugins the shipped rules need (Check, HTMLEval...);
        # local.cf is ours, so the system's own local.cf cannot change the threshold.
        for pre in SPAMASSASSIN_SITE.glob("*.pre"):
            shutil.copyfile(pre, self.site_dir / pre.name)
        (self.site_dir / "local.cf").write_text(
            "# policy-milter test spamd: GTUBE scores 1000, the threshold is the default 5.0\n"
            "required_score 5.0\n"
            "# Deterministic verdicts: no Bayes database to learn into.\n"
            "use_bayes 0\n"
            "bayes_auto_learn 0\n"
        )
        for path in [self.runtime_dir, *self.runtime_dir.rglob("*")]:
            os.chown(path, user.pw_uid, user.pw_gid)
        gids = frozenset({user.pw_gid, *(g.gr_gid for g in grp.getgrall() if user.pw_name in g.gr_mem)})
        _open_for_traversal(self.directory, user.pw_uid, gids)
