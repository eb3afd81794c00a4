"""The process: bind the socket as the milter's user, drop privileges, fork, supervise, signals.

`run` is two processes: a small supervisor parent (the PID systemd and admins signal) and the
libmilter child it forks after binding the socket and dropping privileges. libmilter's own
signal thread stops a milter at once on SIGTERM and then no longer serves the sessions it has
open; the parent turns SIGTERM/SIGINT/SIGHUP into a drain of the child instead (SIGUSR2), and
passes reloads on (SIGUSR1). libmilter itself is reached only through adapter.Libmilter.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import stat
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from policymilter.adapter import Libmilter, install
from policymilter.logs import LOGGER, event
from policymilter.privileges import Identity, acting_as, drop_privileges, group_name, user_name
from policymilter.service import Service

RELOAD_SIGNAL = signal.SIGUSR1  # libmilter's own thread takes SIGHUP/SIGTERM/SIGINT
DRAIN_SIGNAL = signal.SIGUSR2  # parent -> child: stop gracefully
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


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


def _open_socket(libmilter: Libmilter, socket_spec: str, identity: Identity | None) -> SocketFile | None:
    """Bind the listening socket; a unix socket is created by the user the milter runs as.

    With the effective uid, gid and groups of `identity` and a umask giving 0660, the socket is
    born with its final owner, group and mode: nothing is chowned or chmodded afterwards, and
    root never acts by path in the socket directory, which that user controls (it could swap
    the socket for a link to any file between creation and a chown). libmilter's own checks run
    as that user too: an existing socket is stat()ed and unlinked before bind().
    """
    path = _unix_path(socket_spec)
    if path is None:
        libmilter.opensocket(socket_spec)  # inet: nothing in the file system; ports < 1024 need root
        return None
    with acting_as(identity):
        _check_socket_path(path, identity)
        previous = os.umask(0o117)
        try:
            libmilter.opensocket(socket_spec)
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
    libmilter = Libmilter()

    # Block these in every thread before any starts (threads and the child inherit the mask):
    # they are taken with sigwait by the parent, by our control thread and by libmilter's own
    # signal thread. A thread that left one unblocked would die of its default action.
    signal.pthread_sigmask(signal.SIG_BLOCK, {RELOAD_SIGNAL, DRAIN_SIGNAL, signal.SIGHUP, signal.SIGTERM,
                                              signal.SIGINT, signal.SIGCHLD})
    libmilter.configure(socket_spec, timeout)
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
    code = libmilter.main(log)
    logging.shutdown()
    os._exit(code)  # the child never returns into the parent's code (atexit, CLI)
