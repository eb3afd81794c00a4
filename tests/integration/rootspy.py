"""Run `python -m policymilter` under an audit hook that plays the owner of the socket directory.

Issue 8, item 15: whoever controls the directory the milter socket lives in can replace the
socket by a symbolic link between its creation and any later path-based call made as root,
and so point that call at any file. This wrapper makes that race deterministic: every
path-based file-system call the daemon makes *as root* on the socket directory or anything in
it is recorded in SPY_LOG, and just before the first one runs the socket is swapped for a
symbolic link to SPY_TARGET, as an attacker who won the race would have done. A daemon that
never makes such a call leaves SPY_LOG empty and SPY_TARGET untouched.

    SPY_SOCKET=/dir/milter.sock SPY_TARGET=/root/file SPY_LOG=/tmp/log \\
        python -m tests.integration.rootspy run --socket unix:/dir/milter.sock ...
"""

from __future__ import annotations

import os
import runpy
import sys
from typing import Any

SOCKET = os.path.abspath(os.environ["SPY_SOCKET"])
DIRECTORY = os.path.dirname(SOCKET)
TARGET = os.environ["SPY_TARGET"]
LOG = os.environ["SPY_LOG"]
# Python's audit events for calls that take a path: event -> (indices of the path arguments,
# index of the dir_fd argument or None). os.unlink raises os.remove, os.replace os.rename;
# fd-based variants raise the same events with an int instead of a path.
EVENTS: dict[str, tuple[tuple[int, ...], int | None]] = {
    "open": ((0,), None),
    "os.chmod": ((0,), 2),
    "os.chown": ((0,), 3),
    "os.remove": ((0,), 1),
    "os.rmdir": ((0,), 1),
    "os.mkdir": ((0,), 2),
    "os.rename": ((0, 1), 2),
    "os.link": ((0, 1), 2),
    "os.symlink": ((1,), 2),
    "os.truncate": ((0,), None),
    "os.utime": ((0,), 3),
}

_busy = False
_swapped = False


def _in_socket_directory(path: Any, dir_fd: Any) -> bool:
    if isinstance(path, int) or path is None:
        return False
    name = os.fsdecode(path)
    if isinstance(dir_fd, int) and dir_fd >= 0 and not os.path.isabs(name):
        # Relative to a directory fd: a call like fchmodat still follows the last component.
        name = os.path.join(os.readlink(f"/proc/self/fd/{dir_fd}"), name)
    absolute = os.path.abspath(name)
    return absolute == DIRECTORY or os.path.dirname(absolute) == DIRECTORY


def _swap_socket_for_link() -> None:
    global _swapped
    _swapped = True
    staging = os.path.join(DIRECTORY, ".spy-link")
    os.symlink(TARGET, staging)
    os.rename(staging, SOCKET)  # atomic: whoever looks next finds the link


def _hook(event: str, args: tuple[Any, ...]) -> None:
    global _busy
    if _busy or event not in EVENTS or os.geteuid() != 0:
        return
    path_at, dir_fd_at = EVENTS[event]
    dir_fd = args[dir_fd_at] if dir_fd_at is not None and dir_fd_at < len(args) else None
    if not any(_in_socket_directory(args[at], dir_fd) for at in path_at if at < len(args)):
        return
    _busy = True
    try:
        if not _swapped and os.path.lexists(SOCKET):
            _swap_socket_for_link()
        with open(LOG, "a", encoding="utf-8") as log:
            log.write(f"{event} {args!r}\n")
    finally:
        _busy = False


sys.addaudithook(_hook)
sys.argv = ["policymilter", *sys.argv[1:]]
runpy.run_module("policymilter", run_name="__main__", alter_sys=True)
