"""Helpers for the programs the tests start (Postfix's tools, openssl, nsd, clamd, spamd): find them, run them,
wait for them, stop them."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

# Debian's daemons live in sbin, often not on a venv's PATH.
SBIN_DIRS = ("/usr/sbin", "/sbin")


def find_program(name: str, package: str) -> str:
    """Absolute path of a Debian tool; RuntimeError (never a skip) if it is not installed."""
    path = os.pathsep.join([os.environ.get("PATH", ""), *SBIN_DIRS])
    found = shutil.which(name, path=path)
    if found is None:
        raise RuntimeError(f"{name} not found: install Debian's {package} (apt-get install -y {package})")
    return found


def run_checked(cmd: Sequence[str], *, what: str, input_data: bytes | None = None, timeout: float = 60) -> str:
    """Run a command and return its stdout; on failure raise RuntimeError with its output."""
    proc = subprocess.run(list(cmd), input=input_data, capture_output=True, timeout=timeout, check=False)
    output = (proc.stdout + proc.stderr).decode(errors="replace")
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed (exit {proc.returncode}): {' '.join(cmd)}\n{output}")
    return proc.stdout.decode(errors="replace")


def session_processes(sid: int) -> dict[int, str]:
    """Live processes (pid -> name) in session `sid`; zombies are left out.

    Every daemon is started in its own session, so this finds the children it forked too
    (spamd's preforked children outlive their parent for a moment after SIGTERM, and as orphans
    of this machine's PID 1 they are reaped only after a while).
    """
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "stat").read_text()
        except OSError:
            continue  # exited while we looked
        head, _, tail = text.rpartition(")")  # the name is in parentheses and may hold spaces
        state, _ppid, _pgrp, session = tail.split()[:4]
        if state not in ("Z", "X") and int(session) == sid:
            found[int(entry.name)] = head.partition("(")[2]
    return found


def wait_until(condition: Callable[[], bool], timeout: float, interval: float = 0.02) -> bool:
    """Poll `condition` until it holds (True) or `timeout` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True


def stop_session(process: subprocess.Popen[bytes], timeout: float, interval: float = 0.02) -> None:
    """SIGTERM a daemon started in a session of its own, wait until every process of that
    session is gone (forked children may outlive the leader), SIGKILL whatever lingers."""
    if process.poll() is None:
        process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout)

    def gone() -> bool:
        return not session_processes(process.pid)

    if not wait_until(gone, timeout, interval):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # own session, so also its own process group
        wait_until(gone, timeout, interval)
    if process.poll() is None:
        process.kill()
        process.wait(timeout)
