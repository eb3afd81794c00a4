"""Runs hostile messages through the real stack, one at a time, and measures each.

The stack: MailStack's private Postfix (port 25 door), clamd and spamd from
tests/integration/scanners.py, nsd from tests/integration/dns_server.py serving the sender's
domain, and the milter with the shipped policy (policies/), every check on, its default
worker count (one per CPU), `-o` pointing the checks at those servers and
`site.max_message_size` at 25 MiB; Postfix's message_size_limit is contrib's, 64 KiB above it.

Per case: the decisive SMTP reply (or what happened to the connection), who decided (Postfix,
or the milter check named in the summary line), whether the workers are the same processes
and alive and the log holds no crash event, the workers' peak RSS during the message (VmHWM,
reset through /proc/PID/clear_refs first), the CPU seconds the milter's processes used
(utime + stime of the parent and the workers) and the message's size.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from tests.conftest import DEFAULT_POLICY
from tests.hostile import smtp
from tests.hostile.cases import MAX_MESSAGE_SIZE, POSTFIX_SIZE_LIMIT, SENDER_DOMAIN, Case
from tests.integration.dns_server import DnsServer, Zone
from tests.integration.scanners import Clamd, Spamd
from tests.integration.stack import MailStack

# Events the milter logs when a callback or a check raised (adapter.py / conversation.py's
# _crash_verdict, pipeline.py's _run_one), and when the supervisor saw a worker die.
CRASH_EVENTS = ("callback_crashed", "check_crashed", "worker_exited", "workers_failing")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024
SETTLE_INTERVAL = 0.1  # the milter is idle when its CPU counters stop moving for this long
SETTLE_TIMEOUT = 60.0
WORKER_TIMEOUT = 20.0


@dataclass(frozen=True)
class CaseResult:
    case: Case
    size: int  # bytes of the message as sent (before dot-stuffing)
    outcome: smtp.Outcome
    decided_by: str  # "postfix", "milter:CHECK", "accepted" (every check passed)
    verdict: str  # the milter's summary verdict, "" when it logged none
    milter_reason: str
    crash_events: tuple[str, ...]  # crash lines the milter logged during this case
    workers_before: tuple[int, ...]
    workers_after: tuple[int, ...]
    workers_alive: bool
    peak_rss_kib: int  # highest VmHWM of a worker during the message
    growth_kib: int  # the most any one worker's peak rose above its RSS before the message
    cpu_seconds: float  # parent + workers

    @property
    def workers_unchanged(self) -> bool:
        return self.workers_alive and self.workers_before == self.workers_after

    @property
    def deliberate(self) -> bool:
        """A clear answer: a 2xx or a 5xx, or a 4xx the milter's policy chose (no crash)."""
        code = self.outcome.code
        if code is None or self.crash_events:
            return False
        if 200 <= code < 300 or 500 <= code < 600:
            return True
        # a 4xx: only the milter's own answer after a check decided to tempfail (not "milter",
        # its crash path, and not Postfix's milter_default_action)
        return self.verdict == "tempfail" and self.decided_by.startswith("milter:") and \
            self.decided_by != "milter:milter"


# --------------------------------------------------------------- /proc


def _stat_fields(pid: int) -> list[str]:
    text = Path(f"/proc/{pid}/stat").read_text()
    return text.rsplit(")", 1)[1].split()  # the name may hold spaces and parentheses


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of these processes (all their threads), in seconds."""
    ticks = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = _stat_fields(pid)
            ticks += int(fields[11]) + int(fields[12])  # fields 14 and 15 of proc(5)
    return ticks / CLOCK_TICKS


def _status_kib(pid: int, key: str) -> int:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def reset_peak(pid: int) -> None:
    """Reset VmHWM to the current RSS (proc(5), clear_refs "5")."""
    with contextlib.suppress(OSError):
        Path(f"/proc/{pid}/clear_refs").write_text("5")


def alive(pid: int) -> bool:
    try:
        state = _stat_fields(pid)[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def children(pid: int) -> list[int]:
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            found += [int(child) for child in (task / "children").read_text().split()]
    return sorted(found)


# --------------------------------------------------------------- the stack


def zones() -> list[Zone]:
    """The sender's domain: SPF passes for the loopback client, DMARC p=none."""
    zone = (Zone(SENDER_DOMAIN).add("@", "A", "127.0.0.1").add("mail", "A", "127.0.0.1")
            .txt("@", "v=spf1 ip4:127.0.0.1 -all").txt("_dmarc", "v=DMARC1; p=none"))
    return [zone, Zone("example.test").add("@", "A", "127.0.0.1")]


def postfix_version() -> str:
    out = subprocess.run(["/usr/sbin/postconf", "-d", "-h", "mail_version"], capture_output=True, text=True,
                         check=True)
    return out.stdout.strip()


class HostileStack:
    """Everything the cases go through, started once; `run(case)` sends one and measures it."""

    def __init__(self, directory: Path, workers: int | None = None) -> None:
        self.directory = Path(directory)
        self.workers = workers
        self._exit = contextlib.ExitStack()
        self.stack: MailStack | None = None
        self.clamd: Clamd | None = None
        self.spamd: Spamd | None = None
        self.dns: DnsServer | None = None
        self.postfix_settings: dict[str, str] = {}

    # -- lifecycle ------------------------------------------------------------------------

    def __enter__(self) -> HostileStack:
        try:
            self.start()
        except BaseException:
            self._exit.close()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._exit.close()

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        os.chmod(self.directory, 0o755)
        self.clamd = self._exit.enter_context(Clamd(self.directory / "clamd"))
        self.spamd = self._exit.enter_context(Spamd(self.directory / "spamd"))
        self.dns = self._exit.enter_context(DnsServer(self.directory / "dns", zones()))
        self.stack = self._exit.enter_context(MailStack(self.directory / "stack"))
        self.stack.start_milter(self.milter_command())
        self._exit.callback(self._stop_milter)
        self._set_postfix_size_limit()  # after the milter: without it Postfix answers EHLO with 451
        self.worker_pids()

    def _stop_milter(self) -> None:
        if self.stack is not None and self.stack.milter_running:
            self.stack.stop_milter()

    def milter_command(self) -> list[str]:
        assert self.stack and self.clamd and self.spamd and self.dns
        options = [f'antivirus.servers=["{self.clamd.endpoint}"]', f'spam.servers=["{self.spamd.endpoint}"]',
                   f'dns.nameservers=["{self.dns.nameserver}"]', f"site.max_message_size={MAX_MESSAGE_SIZE}"]
        command = [sys.executable, "-m", "policymilter", "run", "--policy", str(DEFAULT_POLICY),
                   "--socket", f"unix:{self.stack.milter_socket}", "--log-format", "json",
                   *(part for option in options for part in ("-o", option))]
        if self.workers is not None:
            command += ["--workers", str(self.workers)]
        return command

    def _postconf(self, *args: str) -> str:
        assert self.stack is not None
        out = subprocess.run(["/usr/sbin/postconf", "-c", str(self.stack.config_dir), *args], capture_output=True,
                             text=True, check=True)
        return out.stdout.strip()

    def _set_postfix_size_limit(self) -> None:
        """Postfix's message_size_limit is contrib/postfix/main.cf's: the policy's maximum plus
        room for the headers Postfix and the milter add. Recorded with the other limits."""
        assert self.stack is not None
        if self._postconf("-h", "message_size_limit") != str(POSTFIX_SIZE_LIMIT):
            raise RuntimeError(f"contrib/postfix/main.cf's message_size_limit is not {POSTFIX_SIZE_LIMIT}: "
                               "update tests/hostile/cases.py with it")
        for name in ("message_size_limit", "header_size_limit", "line_length_limit", "mime_nesting_limit",
                     "mime_boundary_length_limit", "smtputf8_enable", "milter_content_timeout"):
            self.postfix_settings[name] = self._postconf("-x", "-h", name)

    # -- observing ------------------------------------------------------------------------

    @property
    def parent(self) -> int:
        assert self.stack is not None and self.stack.milter_pid is not None
        return self.stack.milter_pid

    def worker_pids(self) -> list[int]:
        """The parent's workers, once all of them are up."""
        count = self.workers or os.cpu_count() or 1
        deadline = time.monotonic() + WORKER_TIMEOUT
        while True:
            pids = children(self.parent)
            if len(pids) == count:
                return pids
            if time.monotonic() > deadline:
                raise RuntimeError(f"{len(pids)} milter workers, not {count}")
            time.sleep(0.05)

    def _log_size(self) -> int:
        assert self.stack is not None
        return self.stack.milter_log_path.stat().st_size

    def _log_since(self, offset: int) -> list[str]:
        assert self.stack is not None
        with open(self.stack.milter_log_path, "rb") as log:
            log.seek(offset)
            return log.read().decode("utf-8", "replace").splitlines()

    def _settle(self, pids: list[int]) -> None:
        """Wait until the milter's processes stop using CPU (work after the reply included)."""
        deadline = time.monotonic() + SETTLE_TIMEOUT
        previous = cpu_seconds(pids)
        while time.monotonic() < deadline:
            time.sleep(SETTLE_INTERVAL)
            current = cpu_seconds(pids)
            if current == previous:
                return
            previous = current

    # -- one case -------------------------------------------------------------------------

    def run(self, case: Case) -> CaseResult:
        assert self.stack is not None
        message = case.build()
        workers = self.worker_pids()
        processes = [self.parent, *workers]
        self._settle(processes)
        base_rss = {pid: _status_kib(pid, "VmRSS") for pid in workers}
        for pid in workers:
            reset_peak(pid)
        offset = self._log_size()
        cpu_before = cpu_seconds(processes)
        outcome = smtp.send(self.stack.ports["smtp"], case.envelope, message)
        self._settle(processes)
        cpu = cpu_seconds(processes) - cpu_before
        peaks = {pid: _status_kib(pid, "VmHWM") for pid in workers}
        lines = self._log_since(offset)
        after = children(self.parent)
        summary = _last_summary(lines)
        return CaseResult(
            case=case, size=len(message), outcome=outcome,
            decided_by=_decided_by(outcome, summary), verdict=str(summary.get("verdict") or ""),
            milter_reason=str(summary.get("reason") or ""),
            crash_events=tuple(line for line in lines if any(f'"event": "{name}"' in line for name in CRASH_EVENTS)
                               or line.startswith("Traceback")),
            workers_before=tuple(workers), workers_after=tuple(after),
            workers_alive=all(alive(pid) for pid in workers), peak_rss_kib=max(peaks.values()),
            growth_kib=max(max(peaks[pid] - base_rss[pid], 0) for pid in workers),
            cpu_seconds=cpu,
        )

    def run_all(self, cases: list[Case]) -> Iterator[CaseResult]:
        for case in cases:
            yield self.run(case)


def _last_summary(lines: list[str]) -> dict[str, object]:
    found: dict[str, object] = {}
    for line in lines:
        if '"event": "summary"' not in line:
            continue
        with contextlib.suppress(ValueError):
            document = json.loads(line)
            if isinstance(document, dict):
                found = document
    return found


def _decided_by(outcome: smtp.Outcome, summary: dict[str, object]) -> str:
    """Who gave the decisive answer: the milter (its summary line refused with that code), or
    Postfix (a refusal the milter did not make, or no milter answer at all)."""
    if outcome.code is None:
        return "connection"
    reply = str(summary.get("reply") or "")
    verdict = summary.get("verdict")
    if verdict in ("reject", "tempfail") and reply.startswith(str(outcome.code)):
        return f"milter:{summary.get('decided_by')}"
    if 200 <= outcome.code < 300:
        return "accepted" if verdict == "accept" else f"accepted ({verdict or 'no milter summary'})"
    if verdict == "accept":
        return "postfix (after milter accept)"  # e.g. the milter's header edits broke a Postfix limit
    return "postfix"
