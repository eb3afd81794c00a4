"""The process: bind the socket as the milter's user, drop privileges, fork workers, supervise, signals.

`run` is a small supervisor parent (the PID systemd and admins signal) and N worker processes
(default: one per CPU) that it forks after binding the socket and dropping privileges; each
runs libmilter on the inherited listening socket (Python runs one thread at a time per
process: CPU-bound checks scale across processes only). libmilter's own signal thread stops a
milter at once on SIGTERM and then no longer serves the sessions it has open; the parent turns
SIGTERM/SIGINT/SIGHUP into a drain of every worker instead (SIGUSR2), validates a reload once
and passes it on (SIGUSR1), replaces a worker that dies, and one that retires after
`--recycle-after` messages. libmilter itself is reached only through adapter.Libmilter.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
import os
import secrets
import signal
import socket
import stat
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from policymilter import metrics, slots
from policymilter.adapter import Libmilter, install
from policymilter.logs import LOGGER, event, set_worker
from policymilter.postfix_check import warn_at_start
from policymilter.privileges import Identity, acting_as, drop_privileges, group_name, user_name
from policymilter.service import Service

RELOAD_SIGNAL = signal.SIGUSR1  # libmilter's own thread takes SIGHUP/SIGTERM/SIGINT
DRAIN_SIGNAL = signal.SIGUSR2  # parent -> worker: stop gracefully
RETIRE_SIGNAL = signal.SIGALRM  # within a worker: its message count is reached (nothing here uses alarm())
# worker -> parent: "I am retiring, start my replacement". A real-time signal: two workers
# retiring at once queue two, each with its sender's pid (two SIGUSR2 would merge into one).
RETIRING_SIGNAL = signal.SIGRTMIN + 1
STOP_SIGNALS = {signal.SIGTERM, signal.SIGHUP, signal.SIGINT}
SUPERVISED = {*STOP_SIGNALS, RELOAD_SIGNAL, RETIRING_SIGNAL, signal.SIGCHLD}
FINAL_REPLY_GRACE = 0.5  # seconds: libmilter sends a callback's reply after the callback returns
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
QUICK_DEATH = 10.0  # seconds: a worker that dies sooner is restarted with a growing delay
GIVE_UP_AFTER = 5  # quick deaths in a row of one worker: the milter stops (exit 1)


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


def _open_socket(libmilter: Libmilter, socket_spec: str, identity: Identity | None, timeout: int
                 ) -> SocketFile | None:
    """Configure libmilter and bind the listening socket; a unix socket is created by the user
    the milter runs as.

    With the effective uid, gid and groups of `identity` and a umask giving 0660, the socket is
    born with its final owner, group and mode: nothing is chowned or chmodded afterwards, and
    root never acts by path in the socket directory, which that user controls (it could swap
    the socket for a link to any file between creation and a chown). libmilter's own checks run
    as that user too: an existing socket is stat()ed and unlinked before bind().

    libmilter binds a temporary name, which is then renamed to the path (replacing a stale
    socket atomically): at exit libmilter unlinks whatever socket sits at the name it bound
    (listener.c, mi_closener), and a worker that exits must not take the path the others still
    serve on with it. Only the parent removes the path, at the very end (SocketFile.remove).
    """
    path = _unix_path(socket_spec)
    if path is None:
        libmilter.configure(socket_spec, timeout)
        libmilter.opensocket(socket_spec)  # inet: nothing in the file system; ports < 1024 need root
        return None
    bound = f".{secrets.token_hex(4)}"  # unpredictable, and short: sun_path holds 107 bytes
    libmilter.configure(f"unix:{path.parent / bound}", timeout)
    with acting_as(identity):
        _check_socket_path(path, identity)
        previous = os.umask(0o117)
        try:
            libmilter.opensocket(socket_spec)
        finally:
            os.umask(previous)
        directory_fd = os.open(path.parent, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.rename(bound, path.name, src_dir_fd=directory_fd, dst_dir_fd=directory_fd)
        except OSError:
            os.unlink(bound, dir_fd=directory_fd)
            os.close(directory_fd)
            raise
        info = os.stat(path.name, dir_fd=directory_fd, follow_symlinks=False)
        created = SocketFile(path, directory_fd, info.st_dev, info.st_ino)
        problem = _socket_problem(path, info, identity)
        if problem is not None:
            created.remove()
            raise OSError(problem)
    return created


def _listening_fds() -> set[int]:
    """This process's listening sockets, by descriptor."""
    found = set()
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        try:
            if not stat.S_ISSOCK(os.fstat(fd).st_mode):
                continue
            probe = socket.socket(fileno=os.dup(fd))
        except OSError:
            continue  # the directory listing's own descriptor, gone by now
        with probe:
            if probe.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
                found.add(fd)
    return found


def _stop_accepting(listen_fd: int) -> socket.socket:
    """Put a socket that never becomes readable where libmilter listens, in this process only.

    libmilter polls its listening descriptor and accepts when it is readable; after this, this
    worker is given no new connection (the other workers take them) while its open sessions go
    on. One end of a socket pair, its peer kept open and silent (returned: keep it): nobody can
    connect to it, and it never polls readable or hung up. Non-blocking, should anything call
    accept() on it anyway."""
    quiet, peer = socket.socketpair()
    quiet.setblocking(False)
    os.dup2(quiet.fileno(), listen_fd, inheritable=False)
    quiet.close()
    return peer


def _die_with_parent(parent: int) -> None:
    """If the supervisor dies (even by SIGKILL), the kernel asks this worker to drain."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, int(DRAIN_SIGNAL), 0, 0, 0)
    if os.getppid() != parent:  # it died before prctl took effect
        os.kill(os.getpid(), DRAIN_SIGNAL)


def _drain(service: Service, drain_timeout: float, log: logging.Logger) -> None:
    service.draining.set()
    event(log, logging.INFO, "stopping", "new transactions get 451 4.3.2; waiting for open ones",
          transactions=service.transactions, sessions=service.sessions)
    drained = service.drain(drain_timeout)
    event(log, logging.INFO if drained else logging.WARNING, "stopped",
          "all transactions finished" if drained else "drain timeout: open transactions will be "
          "retried by their senders (Postfix answers them with milter_default_action)",
          transactions=service.transactions)


def _retire(service: Service, drain_timeout: float, listen_fd: int, parent: int, log: logging.Logger) -> None:
    """Recycling: the parent starts a replacement, this worker takes no new connection, and its
    open sessions end as their clients finish (up to drain_timeout, or until told to stop)."""
    event(log, logging.INFO, "worker_retiring", f"recycled after {service.messages} messages: taking no new "
          "connections, finishing open sessions", messages=service.messages, sessions=service.sessions)
    if os.getppid() == parent:  # else the parent is gone (and its pid may be someone else's)
        with contextlib.suppress(ProcessLookupError):
            os.kill(parent, RETIRING_SIGNAL)
    _stop_accepting(listen_fd)  # its silent peer stays open until the process exits
    deadline = time.monotonic() + drain_timeout
    while service.sessions > 0 and time.monotonic() < deadline:
        if signal.sigtimedwait({DRAIN_SIGNAL}, 0.2) is not None:
            break  # the whole milter stops: drain now
    _drain(service, drain_timeout, log)  # a transaction still open gets its full drain time


def _exit_worker(code: int) -> NoReturn:
    """End this worker from its control thread, libmilter's threads and all. Not through
    smfi_stop(): that closes the listening descriptor, and a libmilter whose main loop has not
    opened it yet would bind a second socket; nor through libmilter's exit path at all."""
    time.sleep(FINAL_REPLY_GRACE)  # the last transactions' replies leave after their callbacks
    logging.shutdown()
    os._exit(code)


def _control_loop(service: Service, drain_timeout: float, listen_fd: int, parent: int,
                  log: logging.Logger) -> None:
    """A worker's control thread: reload on SIGUSR1, drain and exit on SIGUSR2, retire when its
    message count is reached."""
    while True:
        sig = signal.sigwait({RELOAD_SIGNAL, DRAIN_SIGNAL, RETIRE_SIGNAL})
        if sig == RELOAD_SIGNAL:
            service.reload(announce=False)  # the parent announced it (and validated it first)
            continue
        code = 0
        try:
            if sig == RETIRE_SIGNAL:
                _retire(service, drain_timeout, listen_fd, parent, log)
            else:
                _drain(service, drain_timeout, log)
        except BaseException:
            event(log, logging.ERROR, "worker_failed", "the control thread failed while stopping", exc_info=True)
            code = 70
        _exit_worker(code)


def _worker(number: int, service: Service, libmilter: Libmilter, listen_fd: int, parent: int,
            drain_timeout: float, recycle_after: int, log: logging.Logger) -> NoReturn:
    """One worker process: libmilter on the inherited listening socket, until told to stop."""
    # Own process group: a Ctrl-C in a terminal reaches the parent only, which drains us.
    os.setpgid(0, 0)
    _die_with_parent(parent)
    set_worker(number)
    service.worker = number
    if recycle_after:
        me = os.getpid()
        service.on_transaction_end = lambda count: os.kill(me, RETIRE_SIGNAL) if count == recycle_after else None
    threading.Thread(target=_control_loop, args=(service, drain_timeout, listen_fd, parent, log),
                     name="control", daemon=True).start()
    event(log, logging.DEBUG, "worker_started", f"worker {number} serving", pid=os.getpid())
    # Returns only when libmilter stopped by itself (its own signal thread got SIGTERM/SIGHUP/SIGINT,
    # or it gave up on the socket): the parent replaces this worker.
    code = libmilter.main(log)
    logging.shutdown()
    os._exit(code)


@dataclass
class _Child:
    number: int
    started: float
    retiring: bool = False


class _Supervisor:
    """The parent: N workers kept running; stop, reload and recycling passed on to them.

    libmilter's own signal thread stops a milter at once on SIGTERM, and from then on it no
    longer serves the sessions it has open. So the process that receives the service manager's
    SIGTERM is this small parent, which asks each worker to drain (SIGUSR2)."""

    def __init__(self, spawn: Callable[[int], int], count: int, service: Service, drain_timeout: float,
                 log: logging.Logger, exporter: metrics.Exporter | None = None) -> None:
        self.spawn, self.count, self.service, self.drain_timeout, self.log = spawn, count, service, drain_timeout, log
        self.exporter = exporter  # the metrics process: not a worker, restarted by its own rules
        self.children: dict[int, _Child] = {}
        self.due: dict[int, float] = {}  # worker number -> when to start it again
        self.failures: dict[int, int] = {}  # worker number -> quick deaths in a row

    def start(self, number: int) -> None:
        try:
            pid = self.spawn(number)
        except OSError as error:  # out of processes or memory: try again shortly
            event(self.log, logging.ERROR, "worker_not_started", f"cannot start worker {number}: {error}; "
                  "trying again in 5 s", worker=number)
            self.due[number] = time.monotonic() + 5.0
            return
        self.children[pid] = _Child(number, time.monotonic())
        self.due.pop(number, None)
        metrics.workers_alive(len(self.children))

    def run(self) -> int:
        for number in range(1, self.count + 1):
            self.start(number)
        while True:
            wait = min(self.due.values()) - time.monotonic() if self.due else None
            info = (signal.sigtimedwait(SUPERVISED, max(wait, 0.0)) if wait is not None
                    else signal.sigwaitinfo(SUPERVISED))
            if info is None:
                for number, when in list(self.due.items()):
                    if when <= time.monotonic():
                        self.start(number)
                continue
            sig = info.si_signo
            if sig in STOP_SIGNALS:
                return self.stop(0)
            if sig == RELOAD_SIGNAL:
                self.reload()
            elif sig == RETIRING_SIGNAL and info.si_pid in self.children:
                retiring = self.children[info.si_pid]
                if not retiring.retiring:
                    retiring.retiring = True
                    self.start(retiring.number)  # its replacement takes new connections now
            elif sig == signal.SIGCHLD and not self.reap():
                event(self.log, logging.ERROR, "workers_failing", f"workers died {GIVE_UP_AFTER} times in a row within "
                      f"{QUICK_DEATH} s of starting: stopping (the service manager may restart the milter)")
                return self.stop(1)

    def reload(self) -> None:
        """Validated once, here; only a policy that loaded is passed on to every worker."""
        if not self.service.reload():
            return
        for pid, child in self.children.items():
            if not child.retiring:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, RELOAD_SIGNAL)

    def reap(self) -> bool:
        """Collect exited workers and schedule replacements; False when they keep dying."""
        for pid, child, code in self._exited():
            metrics.worker_exited(pid, recycled=child.retiring and code == 0)
            metrics.workers_alive(len(self.children))
            if child.retiring and code == 0:
                event(self.log, logging.INFO, "worker_recycled", f"worker {child.number} (pid {pid}) exited after "
                      "recycling", worker=child.number, pid=pid)
                continue
            lived = time.monotonic() - child.started
            quick = self.failures.get(child.number, 0) + 1 if lived < QUICK_DEATH else 1
            self.failures[child.number] = quick
            how = f"was killed by signal {-code}" if code < 0 else f"exited with {code}"
            event(self.log, logging.ERROR, "worker_exited", f"worker {child.number} (pid {pid}) {how} after "
                  f"{lived:.1f} s: starting another; mail in its open sessions is tempfailed by Postfix and retried",
                  worker=child.number, pid=pid, code=code)
            if child.retiring:
                continue  # its replacement runs already
            if quick >= GIVE_UP_AFTER:
                return False
            self.due[child.number] = time.monotonic() + (0.0 if quick == 1 else min(2.0 ** (quick - 2), 30.0))
        return True

    def _exited(self, stopping: bool = False) -> Iterator[tuple[int, _Child, int]]:
        """(pid, worker, exit code) of every worker that has exited since the last call; a
        worker's code is negative for the signal that killed it."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:  # no child left at all
                if stopping:
                    self.children.clear()  # nothing more to wait for
                return
            if pid == 0:
                return
            child = self.children.pop(pid, None)
            if child is not None:
                yield pid, child, os.waitstatus_to_exitcode(status)
            elif self.exporter is not None:
                self.exporter.exited(pid, os.waitstatus_to_exitcode(status), restart=not stopping)

    def stop(self, code: int) -> int:
        """Every worker drains; whatever is still running after its time is killed."""
        self.due.clear()
        for pid in self.children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, DRAIN_SIGNAL)
        deadline = time.monotonic() + 2 * self.drain_timeout + 5  # a retiring worker may wait twice
        while self.children:
            left = deadline - time.monotonic()
            if left <= 0:
                for pid in self.children:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                left = 10.0
                deadline = time.monotonic() + left
            signal.sigtimedwait({signal.SIGCHLD}, left)
            for pid, child, exit_code in self._exited(stopping=True):
                if exit_code != 0:
                    event(self.log, logging.ERROR, "worker_exited", f"worker {child.number} (pid {pid}) exited "
                          f"with {exit_code} while stopping", worker=child.number, pid=pid, code=exit_code)
                    code = code or 1
        return code


def _warn_exposed(socket_spec: str, log: logging.Logger) -> None:
    """Say so when the milter runs as root or listens beyond this host: who can talk to the
    socket can have mail signed as the site's domains (SECURITY.md, "Who may connect")."""
    if os.getuid() == 0:
        event(log, logging.WARNING, "running_as_root", "the milter runs as root: start it with --user "
              "policy-milter (and --group postfix), so that a fault in a parser is not a fault as root")
    if socket_spec.startswith(("inet:", "inet6:")):
        host = socket_spec.partition("@")[2].strip("[]")
        if host.lower() not in ("localhost", "::1") and not host.startswith("127."):
            event(log, logging.WARNING, "socket_exposed",
                  f"the milter listens on {socket_spec}, which other hosts can reach: anyone who connects can "
                  "have mail signed for the site's domains; bind it to 127.0.0.1 (inet:PORT@127.0.0.1) or use "
                  "a unix socket", socket=socket_spec)


def default_workers() -> int:
    """One worker per CPU this process may run on."""
    return max(len(os.sched_getaffinity(0)), 1)


def serve(start: Callable[[], Service], socket_spec: str, *, identity: Identity | None = None,
          timeout: int = 600, drain_timeout: float = 30.0, workers: int | None = None,
          recycle_after: int = 0, metrics_listen: metrics.Listen | None = None, metrics_directory: str = "") -> int:
    """Bind, drop privileges, build the Service with `start`, fork the workers, serve until SIGTERM.

    `metrics_listen`: serve /metrics there (metrics.py). Its port is bound as the milter's user,
    after the drop, unless only root may bind it: then before, like a privileged milter port.

    `start` runs after the drop, so the resources of the policy (signing keys, the sender map)
    are read by the user that reads them again on every SIGUSR1: a file works at start exactly
    when it works at reload. Its PolicyError comes out of serve() (the socket is removed first).
    """
    log = logging.getLogger(LOGGER)
    libmilter = Libmilter()
    count = workers or default_workers()

    # Block these in every thread before any starts (threads and the workers inherit the mask):
    # they are taken with sigwait by the parent, by each worker's control thread and by
    # libmilter's own signal thread. A thread that left one unblocked would die of its default action.
    signal.pthread_sigmask(signal.SIG_BLOCK, {*SUPERVISED, DRAIN_SIGNAL, RETIRE_SIGNAL})
    before = _listening_fds()
    socket_file = _open_socket(libmilter, socket_spec, identity, timeout)
    exporter: metrics.Exporter | None = None
    try:
        opened = _listening_fds() - before
        if len(opened) != 1:
            raise OSError(f"libmilter opened {len(opened)} listening sockets, expected one")
        [listen_fd] = opened
        # Every worker polls the one socket and all wake for a connection that only one gets:
        # the others' accept() must return EAGAIN (libmilter then polls again), not block
        # holding the lock that libmilter's stop needs. (Accepted sockets stay blocking.)
        os.set_blocking(listen_fd, False)
        early = metrics.bind_early(metrics_listen)
        drop_privileges(identity)
        # Before any fork and before the Service (which records the policy it loads).
        exporter = (metrics.enable(metrics_listen, early, metrics_directory) if metrics_listen is not None
                    else None)
        slots.prepare()  # the scanners' slots, shared by the workers forked below
        service = start()
    except BaseException:
        if socket_file is not None:
            socket_file.remove()
        if exporter is not None:
            exporter.close()
        raise
    install(service)

    parent = os.getpid()

    def spawn(number: int) -> int:
        # The parent never starts a thread, so forking is safe; each worker inherits the bound socket.
        # What the parent has loaded (the policy, the libraries) goes to the permanent generation:
        # the workers' collections never walk it, so its pages stay shared and cost no CPU.
        gc.freeze()
        pid = os.fork()
        if pid == 0:
            try:
                if exporter is not None:
                    exporter.forget()
                _worker(number, service, libmilter, listen_fd, parent, drain_timeout, recycle_after, log)
            except BaseException:
                event(log, logging.ERROR, "worker_failed", f"worker {number} could not start", exc_info=True)
            finally:
                os._exit(70)  # never back into the parent's code (its loop, the CLI, atexit)
        return pid

    _warn_exposed(socket_spec, log)
    try:
        warn_at_start(service.snapshot.policy, log, socket_spec)  # check-postfix's findings, once
    except Exception as error:  # a check of Postfix's set-up never stops the milter's start
        event(log, logging.WARNING, "postfix_check_skipped", f"checking Postfix's configuration failed: {error!r}")
    supervisor = _Supervisor(spawn, count, service, drain_timeout, log, exporter)
    if exporter is not None:
        exporter.start()
    event(log, logging.INFO, "started", f"listening on {socket_spec} with {count} worker(s)", socket=socket_spec,
          uid=os.getuid(), gid=os.getgid(), policy=str(service.path), pid=parent, workers=count)
    try:
        code = supervisor.run()
    finally:
        if exporter is not None:
            exporter.stop()
    if socket_file is not None:
        # The workers' libmilter only knows the name it bound (see _open_socket): the path is ours.
        socket_file.remove()
    return code
