"""Prometheus metrics: off by default, `run --metrics HOST:PORT` or the policy's `[metrics] listen`.

The only module that imports prometheus_client, and only once the metrics are turned on
(`enable`): its multi-process mode is chosen by PROMETHEUS_MULTIPROC_DIR when it is imported, so
the parent sets that to a fresh private directory first, before it forks anything. Each process
(the parent, every worker) then writes its own values to mmap files there; a small exporter
process forked by the parent serves `/metrics` from them with MultiProcessCollector (the parent
starts no thread: it forks). One scrape shows the sum over the workers, the dead ones
included: a counter made by a worker that was killed stays in its file. Live gauges (sessions
and transactions in progress) of a dead worker are dropped by the parent (mark_process_dead).

Elsewhere the product calls the functions below (`message_done`, `dns_error`, ...). With the
metrics off they return at once: nothing is recorded, prometheus_client is never imported.

LABELS NEVER CARRY UNBOUNDED VALUES. Every label value comes from a closed set: a fixed enum
(verdict, outcome, traffic class, reply class 4xx/5xx, error kind), a check name of the
registry (or "milter"), or a name the policy itself lists (listener, scanner endpoint, signing
domain and selector). Never an address, an IP, a login, a host name a client chose, a queue id,
nor a reason text: each label value is a time series kept for ever, and values an SMTP client
chooses would let anyone grow them without bound. Add a label only with its closed set.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import TYPE_CHECKING, Any, NoReturn, ParamSpec
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from policymilter.logs import LOGGER, event
from policymilter.outcome import CheckResult, Disposition, Verdict

if TYPE_CHECKING:
    from prometheus_client import Counter, Gauge, Histogram
    from prometheus_client.core import Metric

    from policymilter.snapshot import Snapshot

PREFIX = "policy_milter"
POLICY_STATE = "policy.json"  # the parent's policy facts, for the exporter (not a *.db: not collected)
# Seconds: from a cached lookup (well under a millisecond) to a scanner's time limit.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                   30.0, 60.0, 120.0)
_NAME_LABEL = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")  # a check name, "milter"
QUICK_DEATH = 10.0  # seconds: an exporter that dies sooner counts towards giving up
GIVE_UP_AFTER = 5  # quick deaths in a row: the metrics stay off until the milter restarts
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


@dataclass(frozen=True)
class Listen:
    """Where /metrics is served: HOST:PORT ([v6]:PORT)."""

    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Listen:
        host, sep, port = text.rpartition(":")
        host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{text!r}: expected HOST:PORT (IPv6: [ADDRESS]:PORT), PORT 1-65535")
        return cls(host, int(port))

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def needs_root(self) -> bool:
        """Whether binding the port needs privileges (Linux: below ip_unprivileged_port_start)."""
        try:
            start = int(Path("/proc/sys/net/ipv4/ip_unprivileged_port_start").read_text())
        except (OSError, ValueError):
            start = 1024
        return self.port < start

    def bind(self) -> socket.socket:
        try:
            family, kind, proto, _, address = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)[0]
            sock = socket.socket(family, kind, proto)
        except OSError as error:
            raise OSError(f"--metrics {self}: {error}") from None
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
            sock.listen(16)
        except OSError as error:
            sock.close()
            raise OSError(f"--metrics {self}: cannot listen: {error.strerror or error}") from None
        return sock


def policy_hash(snapshot: Snapshot) -> str:
    """The policy in force, as loaded (every file, the -o overrides): 16 hex digits of SHA-256."""
    return hashlib.sha256(snapshot.policy.model_dump_json().encode()).hexdigest()[:16]


def reply_class(verdict: Verdict) -> str:
    """4xx or 5xx: a refusal's reply class (a discard has no reply)."""
    if verdict.reply is not None:
        return verdict.reply.code[0] + "xx"
    return "5xx" if verdict.disposition is Disposition.REJECT else "4xx"


def name_label(value: str) -> str:
    """A check name or "milter"; anything else (never expected) becomes "other"."""
    return value if _NAME_LABEL.match(value) else "other"


class Recorder:
    """The metrics of this process (created once, in the parent, before any fork)."""

    def __init__(self) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        def counter(name: str, text: str, labels: Sequence[str] = ()) -> Counter:
            return Counter(f"{PREFIX}_{name}", text, labels, registry=None)

        def gauge(name: str, text: str) -> Gauge:
            return Gauge(f"{PREFIX}_{name}", text, registry=None, multiprocess_mode="livesum")

        self.messages = counter("messages", "Messages (summary lines) by listener, traffic class and verdict",
                                ("listener", "traffic", "verdict"))
        self.refused = counter("refused_messages", "Messages refused (reject, tempfail), by the check that "
                               "decided (or milter) and the reply class", ("decided_by", "reply_class"))
        self.check_results = counter("check_results", "Check results by check and outcome", ("check", "outcome"))
        self.check_seconds: Histogram = Histogram(f"{PREFIX}_check_duration_seconds", "Time each check took",
                                                  ("check",), registry=None, buckets=LATENCY_BUCKETS)
        self.scanner_errors = counter("scanner_errors", "Scanner servers that gave no answer, by scanner, server "
                                      "(from the policy) and kind (timeout, error, busy)",
                                      ("scanner", "server", "kind"))
        self.dns_errors = counter("dns_errors", "DNS lookups that got no answer, by kind (timeout; error: "
                                  "SERVFAIL, REFUSED, unreachable; fast_fail: servers found silent)", ("kind",))
        self.dns_cache = counter("dns_cache_lookups", "DNS cache lookups by result (hit, miss)", ("result",))
        self.signatures = counter("dkim_signatures", "DKIM signatures made, by domain and selector",
                                  ("domain", "selector"))
        self.limits_exceeded = counter("limits_exceeded", "Transactions a rate limit stopped, by limit (its "
                                       "label in the policy) and action (tempfail, hold, lock, report)",
                                       ("limit", "action"))
        self.store_errors = counter("state_store_errors", "State store operations that failed, by check", ("check",))
        self.dmarc_report_rows = counter("dmarc_report_messages", "Messages the dmarc check recorded for the "
                                         "aggregate reports, by result (counted; dropped: the report had "
                                         "dmarc_reports.max_rows rows; store_error)", ("result",))
        self.sessions = gauge("sessions_in_progress", "SMTP sessions open (summed over the live workers)")
        self.transactions = gauge("transactions_in_progress", "Transactions open (summed over the live workers)")
        self.workers = gauge("workers_alive", "Worker processes running")
        self.worker_restarts = counter("worker_restarts", "Workers replaced, by reason (recycled, exited)",
                                       ("reason",))
        self.reloads = counter("policy_reloads", "Policy reloads (SIGUSR1) by result (success, failure)", ("result",))
        # Known before the first event, so a dashboard shows 0 rather than no data.
        for result in ("success", "failure"):
            self.reloads.labels(result)
        for result in ("hit", "miss"):
            self.dns_cache.labels(result)
        for reason in ("recycled", "exited"):
            self.worker_restarts.labels(reason)


class _PolicyCollector:
    """The loaded policy's facts, read from the parent's state file at each scrape: exactly one
    policy_info sample (the hash in force), unlike a gauge per hash that would keep the old ones."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily

        try:
            state = json.loads((self.directory / POLICY_STATE).read_text())
        except (OSError, ValueError):
            return
        info = InfoMetricFamily(f"{PREFIX}_policy", "The policy in force: hash of its loaded form")
        info.add_metric([], {"hash": str(state["hash"])})
        yield info
        yield GaugeMetricFamily(f"{PREFIX}_policy_loaded_timestamp_seconds", "When the policy in force was loaded "
                                "(Unix time)", value=float(state["loaded"]))
        yield GaugeMetricFamily(f"{PREFIX}_policy_generation", "Loads of the policy since the start (1: the first)",
                                value=float(state["generation"]))


MAX_SCRAPES = 4  # connections served at once; the exporter closes any more at once
SCRAPE_TIMEOUT = 10.0  # seconds a connection may stay silent


class _QuietHandler(WSGIRequestHandler):
    timeout = SCRAPE_TIMEOUT  # StreamRequestHandler sets it on the connection

    def log_message(self, format: str, *args: Any) -> None:
        """A scrape every few seconds is not news."""


class _Server(ThreadingMixIn, WSGIServer):
    """Anyone who reaches the port may connect: at most MAX_SCRAPES threads, each connection
    cut after SCRAPE_TIMEOUT of silence, and an accept that fails for want of descriptors or
    memory waits before the next (the listening socket stays readable: serve_forever would
    spin a CPU the milter needs)."""

    daemon_threads = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._scrapes = threading.BoundedSemaphore(MAX_SCRAPES)
        super().__init__(*args, **kwargs)

    def get_request(self) -> tuple[socket.socket, Any]:
        try:
            return super().get_request()
        except OSError as error:
            if error.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                time.sleep(0.1)
            raise

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._scrapes.acquire(blocking=False):
            self.shutdown_request(request)  # too many at once: this one is closed, unanswered
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._scrapes.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._scrapes.release()


def _serve(sock: socket.socket, directory: Path) -> NoReturn:
    """The exporter process: /metrics (and anything else: the same page), until SIGTERM."""
    from prometheus_client import CollectorRegistry, make_wsgi_app
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(directory))  # type: ignore[no-untyped-call]
    registry.register(_PolicyCollector(directory))
    server = _Server(sock.getsockname()[:2], _QuietHandler, bind_and_activate=False)
    server.socket.close()
    server.socket = sock
    server.server_name, server.server_port = socket.getfqdn(), sock.getsockname()[1]
    server.setup_environ()
    server.set_app(make_wsgi_app(registry))
    server.serve_forever()
    os._exit(0)


class Exporter:
    """The metrics of a running milter: the private directory, the listening socket, the
    exporter process (restarted by the parent when it dies, like a worker)."""

    def __init__(self, listen: Listen, sock: socket.socket, directory: Path) -> None:
        self.listen, self.sock, self.directory = listen, sock, directory
        self.log = logging.getLogger(LOGGER)
        self.pid: int | None = None
        self.started = 0.0
        self.quick_deaths = 0

    def start(self) -> None:
        """Fork the exporter (from the parent, which has no thread)."""
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:
            try:
                os.setpgid(0, 0)  # a Ctrl-C reaches the parent only
                for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                    signal.signal(sig, signal.SIG_DFL)
                signal.pthread_sigmask(signal.SIG_SETMASK, ())  # the parent blocks what it sigwaits for
                libc = ctypes.CDLL(None, use_errno=True)
                libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
                if os.getppid() != parent:
                    os._exit(0)
                _serve(self.sock, self.directory)
            except BaseException:
                event(self.log, logging.ERROR, "metrics_failed", "the metrics exporter failed", exc_info=True)
            finally:
                os._exit(70)
        self.pid, self.started = pid, time.monotonic()
        event(self.log, logging.INFO, "metrics_serving", f"metrics on http://{self.listen}/metrics",
              listen=str(self.listen), pid=pid, directory=str(self.directory))

    def exited(self, pid: int, code: int, restart: bool = True) -> None:
        """The parent reaped a child that is not a worker: if it is the exporter, start another."""
        if pid != self.pid:
            return
        self.pid = None
        if not restart:
            return
        lived = time.monotonic() - self.started
        self.quick_deaths = self.quick_deaths + 1 if lived < QUICK_DEATH else 1
        how = f"was killed by signal {-code}" if code < 0 else f"exited with {code}"
        if self.quick_deaths >= GIVE_UP_AFTER:
            event(self.log, logging.ERROR, "metrics_exited", f"the metrics exporter (pid {pid}) {how}, "
                  f"{GIVE_UP_AFTER} times in a row within {QUICK_DEATH:g} s of starting: no more metrics until the "
                  "milter restarts (mail is not affected)", pid=pid, code=code)
            return
        event(self.log, logging.ERROR, "metrics_exited", f"the metrics exporter (pid {pid}) {how} after "
              f"{lived:.1f} s: starting another (no count is lost: they are in the workers' files)",
              pid=pid, code=code)
        self.start()

    def forget(self) -> None:
        """In a worker: the exporter's socket is not ours (it would keep the port after the parent)."""
        self.sock.close()

    def stop(self) -> None:
        """At the parent's exit: the exporter goes, and the directory with it."""
        if self.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self.pid, 0)
            self.pid = None
        self.close()

    def close(self) -> None:
        self.sock.close()
        shutil.rmtree(self.directory, ignore_errors=True)
        _ACTIVE.recorder = None


class _Active:
    """This process's recorder; None while the metrics are off (the default)."""

    recorder: Recorder | None = None
    directory: Path | None = None


_ACTIVE = _Active()


def bind_early(listen: Listen | None) -> socket.socket | None:
    """Before the privilege drop: the socket, when only root may bind its port (else None, and
    `enable` binds it as the milter's user)."""
    if listen is None or not listen.needs_root() or os.geteuid() != 0:
        return None
    return listen.bind()


def enable(listen: Listen, sock: socket.socket | None = None, base: str = "") -> Exporter:
    """Turn the metrics on in this process (the parent, after the privilege drop, before any
    fork): the private directory (in `base`, else the system's temporary directory), then
    prometheus_client, then the metrics."""
    directory = Path(tempfile.mkdtemp(prefix="policy-milter-metrics-", dir=base or None))  # 0700, ours
    try:
        if "prometheus_client" in sys.modules:
            raise RuntimeError("prometheus_client was imported before its multi-process directory was set")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)
        recorder = Recorder()
        sock = sock or listen.bind()
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)
        raise
    _ACTIVE.recorder, _ACTIVE.directory = recorder, directory
    return Exporter(listen, sock, directory)


# --- what the product records (each returns at once while the metrics are off) ---------------

P = ParamSpec("P")
_failed = threading.Event()  # a recording failed once (logged once)


def _never_affects_mail(record: Callable[P, None]) -> Callable[P, None]:
    """A recording that fails (a full or removed directory, a prometheus_client error) is
    logged once and otherwise ignored: metrics never change what happens to a message."""

    @functools.wraps(record)
    def guarded(*args: P.args, **kwargs: P.kwargs) -> None:
        try:
            record(*args, **kwargs)
        except Exception as error:
            if not _failed.is_set():
                _failed.set()
                event(logging.getLogger(LOGGER), logging.WARNING, "metrics_failed",
                      f"recording a metric failed ({error!r}); mail is not affected, the metrics may be incomplete")

    return guarded


@_never_affects_mail
def message_done(listener: str, authenticated: bool, verdict: Verdict, results: Iterable[CheckResult]) -> None:
    """One summary line: the message, its checks' outcomes and times, a refusal's reason."""
    recorder = _ACTIVE.recorder
    if recorder is None:
        return
    traffic = "authenticated" if authenticated else "unauthenticated"
    recorder.messages.labels(listener, traffic, verdict.name).inc()
    if verdict.disposition in (Disposition.REJECT, Disposition.TEMPFAIL):
        recorder.refused.labels(name_label(verdict.decided_by), reply_class(verdict)).inc()
    for result in results:
        check = name_label(result.check)
        recorder.check_results.labels(check, str(result.outcome)).inc()
        recorder.check_seconds.labels(check).observe(result.elapsed_ms / 1000)


@_never_affects_mail
def session_opened() -> None:
    if _ACTIVE.recorder is not None:
        _ACTIVE.recorder.sessions.inc()


@_never_affects_mail
def session_closed() -> None:
    if _ACTIVE.recorder is not None:
        _ACTIVE.recorder.sessions.dec()


@_never_affects_mail
def transaction_started() -> None:
    if _ACTIVE.recorder is not None:
        _ACTIVE.recorder.transactions.inc()


@_never_affects_mail
def transaction_ended() -> None:
    if _ACTIVE.recorder is not None:
        _ACTIVE.recorder.transactions.dec()


@_never_affects_mail
def dns_cache(hit: bool) -> None:
    if _ACTIVE.recorder is not None:
        _ACTIVE.recorder.dns_cache.labels("hit" if hit else "miss").inc()


@_never_affects_mail
def dns_error(kind: str) -> None:
    """kind: timeout, error, fast_fail."""
    if _ACTIVE.recorder is not None:
        _ACTIVE.recorder.dns_errors.labels(kind).inc()


@_never_affects_mail
def scanner_error(scanner: str, server: str, kind: str) -> None:
    """scanner: clamd, spamd; server: an endpoint of the policy ("none" when none was tried);
    kind: timeout, error, busy."""
    if _ACTIVE.recorder is not None:
        _ACTIVE.recorder.scanner_errors.labels(scanner, server, kind).inc()


@_never_affects_mail
def signed(domain: str, selector: str) -> None:
    """A DKIM signature made (domain and selector are signing.keys entries)."""
    if _ACTIVE.recorder is not None:
        _ACTIVE.recorder.signatures.labels(domain, selector).inc()


@_never_affects_mail
def limit_exceeded(limit: str, action: str) -> None:
    """A rate limit stopped a transaction (limit: a label from the policy; action: its action or
    "report")."""
    if _ACTIVE.recorder is not None:
        _ACTIVE.recorder.limits_exceeded.labels(limit, action).inc()


@_never_affects_mail
def store_error(check: str) -> None:
    if _ACTIVE.recorder is not None:
        _ACTIVE.recorder.store_errors.labels(check).inc()


@_never_affects_mail
def dmarc_report_row(result: str) -> None:
    """result: counted, dropped, store_error."""
    if _ACTIVE.recorder is not None:
        _ACTIVE.recorder.dmarc_report_rows.labels(result).inc()


@_never_affects_mail
def policy_loaded(snapshot: Snapshot) -> None:
    """In the parent: the policy now in force (the exporter reads it at each scrape)."""
    directory = _ACTIVE.directory
    if _ACTIVE.recorder is None or directory is None:
        return
    _known_labels(_ACTIVE.recorder, snapshot)
    state = {"hash": policy_hash(snapshot), "loaded": time.time(), "generation": snapshot.generation}
    temporary = directory / f".{POLICY_STATE}.{os.getpid()}"
    temporary.write_text(json.dumps(state))
    temporary.replace(directory / POLICY_STATE)  # a scrape reads the old file or the new, never half


VERDICTS = tuple(disposition.verdict_name for disposition in Disposition)
SCANNER_ERRORS = ("timeout", "error", "busy")
DNS_ERRORS = ("timeout", "error", "fast_fail")
UNKNOWN_LISTENER = "unknown"  # listeners.UNKNOWN_LISTENER


def _known_labels(recorder: Recorder, snapshot: Snapshot) -> None:
    """The label sets this policy can produce, at 0: a dashboard shows "none yet", not "no
    data", and a scrape names every metric from the start. All of them bounded by the policy."""
    policy = snapshot.policy
    for listener in (*policy.listeners, UNKNOWN_LISTENER):
        for traffic in ("authenticated", "unauthenticated"):
            for verdict in VERDICTS:
                recorder.messages.labels(listener, traffic, verdict)
    for check in {check.name for check in (*snapshot.pipeline.always, *snapshot.pipeline.checks)} | {"milter"}:
        for reply in ("4xx", "5xx"):
            recorder.refused.labels(name_label(check), reply)
    for scanner, servers in (("antivirus", policy.antivirus.servers), ("spam", policy.spam.servers)):
        for server in servers:
            for kind in SCANNER_ERRORS:
                recorder.scanner_errors.labels(scanner, server, kind)
        recorder.scanner_errors.labels(scanner, "none", "busy")
    for kind in DNS_ERRORS:
        recorder.dns_errors.labels(kind)
    for domain, keys in policy.signing.keys.items():
        for key in keys:
            recorder.signatures.labels(domain, key.selector)
    for limit in policy.ratelimit.limits:
        recorder.limits_exceeded.labels(limit.label, limit.action)
    recorder.store_errors.labels("ratelimit")


@_never_affects_mail
def reloaded(ok: bool) -> None:
    if _ACTIVE.recorder is not None:
        _ACTIVE.recorder.reloads.labels("success" if ok else "failure").inc()


@_never_affects_mail
def workers_alive(count: int) -> None:
    if _ACTIVE.recorder is not None:
        _ACTIVE.recorder.workers.set(count)


@_never_affects_mail
def worker_exited(pid: int, recycled: bool) -> None:
    """In the parent, for a worker it reaped: its live gauges go (its counters stay)."""
    recorder, directory = _ACTIVE.recorder, _ACTIVE.directory
    if recorder is None or directory is None:
        return
    from prometheus_client.multiprocess import mark_process_dead

    mark_process_dead(pid, str(directory))  # type: ignore[no-untyped-call]
    recorder.worker_restarts.labels("recycled" if recycled else "exited").inc()
