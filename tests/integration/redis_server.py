"""A real Redis on loopback for the integration tests: Debian's redis-server, run by the test.

Nothing of the system's service is used (no /etc/redis/redis.conf, no /var/lib/redis, no
systemd): every setting is on the command line, the process stays in the foreground in a
session of its own, writes nothing but its log in the test's directory (no RDB snapshot, no
AOF, so a restart starts empty), and is stopped at exit if a test forgot to. A missing binary
is a RuntimeError naming the package, never a skip.
"""

from __future__ import annotations

import atexit
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Self

from tests.integration.processes import find_program, stop_session
from tests.integration.scanners import free_port

LOOPBACK = "127.0.0.1"
READY_TIMEOUT = 30.0  # measured ~10 ms; generous for a busy machine
STOP_TIMEOUT = 10.0
PROBE_TIMEOUT = 1.0
PROBE_INTERVAL = 0.01
START_ATTEMPTS = 3  # a free port can be taken between choosing it and redis binding it
LOG_TAIL_LINES = 30


class RedisServer:
    """`with RedisServer(tmp_path) as redis: ... redis.url`; stop()/start() again on the same port
    (empty again: no persistence), pause()/resume() (SIGSTOP/SIGCONT: a hung server)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = 0
        self.binary = find_program("redis-server", "redis-server")
        self._process: subprocess.Popen[bytes] | None = None
        self._paused = False

    @property
    def url(self) -> str:
        return f"redis://{LOOPBACK}:{self.port}/0"

    @property
    def log(self) -> Path:
        return self.directory / "redis.log"

    def start(self) -> Self:
        """Start (or start again, on the same port); ready (answers PING) on return."""
        if self._process is not None and self._process.poll() is None:
            return self
        self.directory.mkdir(parents=True, exist_ok=True)
        atexit.register(self.stop)  # never leave a redis-server behind
        attempts = 1 if self.port else START_ATTEMPTS
        for attempt in range(attempts):
            if not self.port or attempt:
                self.port = free_port()
            if self._launch():
                return self
        raise RuntimeError(f"redis-server did not start on {LOOPBACK}:{self.port}:\n{self._tail()}")

    def _launch(self) -> bool:
        command = [
            self.binary, "--port", str(self.port), "--bind", LOOPBACK, "--save", "", "--appendonly", "no",
            "--dir", str(self.directory), "--daemonize", "no", "--supervised", "no", "--logfile", "",
            "--databases", "16", "--protected-mode", "yes"]
        with self.log.open("ab") as log:
            self._process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                             cwd=self.directory, start_new_session=True)
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                return False  # exited: most likely the port was taken meanwhile
            if self.ping():
                return True
            time.sleep(PROBE_INTERVAL)
        self.stop()
        raise RuntimeError(f"redis-server on {LOOPBACK}:{self.port} did not answer PING in {READY_TIMEOUT:g}s:\n"
                           f"{self._tail()}")

    def ping(self) -> bool:
        """Whether the server answers PING now."""
        try:
            with socket.create_connection((LOOPBACK, self.port), timeout=PROBE_TIMEOUT) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def flush(self) -> None:
        """Empty every database (a test's own state, without a restart)."""
        with socket.create_connection((LOOPBACK, self.port), timeout=PROBE_TIMEOUT * 10) as sock:
            sock.sendall(b"FLUSHALL\r\n")
            reply = sock.recv(64)
        if not reply.startswith(b"+OK"):
            raise RuntimeError(f"redis-server on {LOOPBACK}:{self.port}: FLUSHALL answered {reply!r}")

    def stop(self) -> None:
        """Stop the server (its data is gone: no persistence). Idempotent."""
        atexit.unregister(self.stop)
        process, self._process = self._process, None
        if process is None:
            return
        if self._paused:
            self.resume(process)  # a stopped process would keep SIGTERM pending
        stop_session(process, STOP_TIMEOUT)
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()

    def pause(self) -> None:
        """SIGSTOP: the port still accepts connections (the kernel's backlog), nothing answers."""
        if self._process is None:
            raise RuntimeError("redis-server is not running")
        os.kill(self._process.pid, signal.SIGSTOP)
        self._paused = True

    def resume(self, process: subprocess.Popen[bytes] | None = None) -> None:
        target = process or self._process
        if target is None:
            raise RuntimeError("redis-server is not running")
        os.kill(target.pid, signal.SIGCONT)
        self._paused = False

    def _tail(self) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-LOG_TAIL_LINES:]) or "(redis-server logged nothing)"

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.stop()
