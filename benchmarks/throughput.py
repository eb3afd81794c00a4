"""Throughput through the real Postfix: Postfix alone, a do-nothing milter, policy-milter.

    sudo .venv/bin/python -m benchmarks.throughput [--rounds 5] [--messages 600] [--sessions 20]
        [--paths a,b,c,d] [--configs postfix,null,pm1,pm] [--quick]

One private Postfix instance per configuration (tests/integration/stack.py), all relaying to
one Postfix `smtp-sink` (C, throws the mail away), all asking one nsd; clamd for the
attachments path. The configurations:

  postfix   Postfix alone (no smtpd_milters)
  null      benchmarks/nullmilter.py: pymilter, no-reply callbacks, one header added at the end
  pm1       policy-milter run --workers 1
  pm        policy-milter run with its default workers (the CPU count)
  pmm       pm with --metrics (the metrics' cost)
  pmn       pm with ratelimit.enabled=false (the rate limits' cost: pm counts every message of
            path d in its SQLite store, under limits no batch reaches)
  pmr       pm with dmarc_reports.record = true (the report rows' cost on paths a-c: one SQLite
            upsert per message; pm, as shipped, records nothing)

Every milter runs as the policy-milter user on a unix socket. The paths:

  a  port 25, DKIM-signed 5 KB: SPF + DKIM + ARC + DMARC (all pass; no ARC set: arc=none)
  b  port 25, 5 KB plain text, the same checks (DKIM none, DMARC passes on SPF)
  c  port 25, 100 KB with a PDF and a zip attached: the checks above + attachments + clamd
  d  587, STARTTLS + AUTH alice: sender ownership + RSA-2048 DKIM signing

Load on port 25 is Postfix's smtp-source (one message per connection, as MX traffic comes,
the message read from a file with -F) plus a few Python probe sessions sending the same bytes
that time each transaction; on 587 a pool of smtplib threads (one STARTTLS + AUTH session
each, reused for the batch). Each batch of a round runs on every configuration in turn (the
order rotates between rounds), so noise on this shared machine hits all of them alike; the
figures are medians over rounds. See benchmarks/README.md for what each column means.
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures
import contextlib
import io
import os
import pwd
import random
import re
import smtplib
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests import authkit
from tests.integration.dns_server import DnsServer, Zone
from tests.integration.processes import find_program, run_checked, wait_until
from tests.integration.scanners import Clamd, free_port
from tests.integration.stack import MILTER_USER, MailStack, _free_ports, transaction, unverified_tls_context

from policymilter import signing_keys
from policymilter.state import open_store

REPO = Path(__file__).resolve().parent.parent
MILTER_GROUP = "postfix"  # the socket's group: Postfix's smtpd connects through it
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
SAMPLE_INTERVAL = 0.05  # seconds between RSS samples
DRAIN_TIMEOUT = 600.0
MB = 1_000_000

SENDER_DOMAIN = "example.net"  # the Internet sender of paths a-c
SENDER = f"bench@{SENDER_DOMAIN}"
HELO = f"mail.{SENDER_DOMAIN}"
RECIPIENT = "user@example.test"  # relayed to the sink
HOLD_RECIPIENT = "hold@example.test"  # the stack's hold queue: the check message is read back
SITE_DOMAIN = "example.org"  # the policy's site.domains: alice submits as alice@example.org
SUBMITTER = "alice"
SIGNING_SELECTOR = "bench"
SENDER_SELECTOR = "s1"

CONFIG_LABELS = {
    "postfix": "Postfix alone",
    "null": "do-nothing milter",
    "pm1": "policy-milter --workers 1",
    "pm": "policy-milter (default workers)",
    "pmm": "policy-milter, --metrics on",
    "pmn": "policy-milter, ratelimit off",
    "pmr": "policy-milter, DMARC rows on",
}
MILTER_CONFIGS = ("null", "pm1", "pm", "pmm", "pmn", "pmr")
RECORD_ROWS = ("dmarc_reports.record=true", 'dmarc_reports.org_name="Bench Receiver"',
               'dmarc_reports.email="dmarc-noreply@example.org"')
# The shipped limits, raised so that no batch reaches them: every policy-milter configuration but
# pmn counts each authenticated message (path d) in its store as deployed (SQLite, two limits),
# and pmn shows what that costs.
UNREACHABLE_LIMITS = ("ratelimit.limits=[{messages = 100000000, recipients = 100000000, per = 3600}, "
                      "{messages = 100000000, recipients = 100000000, clients = 100000, per = 86400, "
                      "action = \"hold\"}]")
SIZES = {"100 KB": 100_000, "1 MB": MB, "10 MB": 10 * MB}
SIZE_MESSAGES = {"100 KB": 40, "1 MB": 12, "10 MB": 4}
QUICK_SIZE_MESSAGES = {"100 KB": 1, "1 MB": 1, "10 MB": 1}


# ---------------------------------------------------------------- messages


WORDS = ("the", "quarterly", "figures", "are", "attached", "as", "promised", "and", "meeting", "moves", "to",
         "thursday", "at", "ten", "please", "confirm", "that", "room", "is", "booked", "everyone", "has", "read",
         "draft", "before")


def _prose(size: int) -> str:
    """About `size` bytes of plain text in lines of 72 characters or so."""
    rng = random.Random(size)
    lines, total = [], 0
    while total < size:
        line = " ".join(rng.choice(WORDS) for _ in range(12))[:72]
        lines.append(line)
        total += len(line) + 2
    return "\r\n".join(lines) + "\r\n"


def _headers(sender: str, rcpt: str, subject: str) -> str:
    message_id = f"<{subject.replace(' ', '.')}@{sender.split('@')[1]}>"
    return (f"From: Bench <{sender}>\r\nTo: <{rcpt}>\r\nSubject: {subject}\r\n"
            f"Date: Tue, 01 Dec 2026 10:00:00 +0000\r\nMessage-ID: {message_id}\r\nMIME-Version: 1.0\r\n")


def plain_message(size: int, sender: str = SENDER, rcpt: str = RECIPIENT) -> bytes:
    head = _headers(sender, rcpt, f"bench plain {size}") + "Content-Type: text/plain; charset=us-ascii\r\n\r\n"
    return (head + _prose(size - len(head))).encode()


def attachment_message(size: int) -> bytes:
    """A text part, a PDF and a zip (a text file and another PDF): about `size` bytes in all."""
    rng = random.Random(size)
    payload = size * 3 // 4 - 2000  # base64 grows the attachments by 4/3
    pdf = b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n" + rng.randbytes(payload // 2) + b"\n%%EOF\n"
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("minutes.txt", _prose(4000), zipfile.ZIP_DEFLATED)
        zipped.writestr("scan.pdf", b"%PDF-1.4\n" + rng.randbytes(payload // 2) + b"\n%%EOF\n", zipfile.ZIP_STORED)
    parts = [_headers(SENDER, RECIPIENT, f"bench attachments {size}")
             + 'Content-Type: multipart/mixed; boundary="=-bench"\r\n\r\n'
             + "--=-bench\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n" + _prose(800)]
    for name, kind, data in (("report.pdf", "application/pdf", pdf),
                             ("documents.zip", "application/zip", archive.getvalue())):
        encoded = base64.encodebytes(data).decode().replace("\n", "\r\n")
        parts.append(f'--=-bench\r\nContent-Type: {kind}; name="{name}"\r\n'
                     f'Content-Disposition: attachment; filename="{name}"\r\n'
                     f"Content-Transfer-Encoding: base64\r\n\r\n{encoded}")
    parts.append("--=-bench--\r\n")
    return "".join(parts).encode()


@dataclass(frozen=True)
class Prepared:
    """A message as the wire carries it (CRLF) and as a file smtp-source -F sends (LF lines:
    smtp-source appends CRLF to each line and dot-stuffs)."""

    wire: bytes
    file: Path

    @classmethod
    def write(cls, wire: bytes, file: Path) -> Prepared:
        assert b"\r" not in wire.replace(b"\r\n", b""), "a bare CR would not survive smtp-source"
        file.write_bytes(wire.replace(b"\r\n", b"\n"))
        return cls(wire, file)


# ---------------------------------------------------------------- the milter's process tree


def _stat(pid: int) -> list[str]:
    # The name (field 2) is in parentheses and may hold anything: split after the last ")".
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def _status_kib(pid: int, key: str, file: str = "status") -> int:
    for line in Path(f"/proc/{pid}/{file}").read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1])
    return 0


class ProcessTree:
    """A daemon and every process below it (a supervisor and its libmilter workers, 1 or N).

    CPU: utime+stime of each live process (a process's figures include its exited threads, and
    libmilter runs a thread per connection) plus cutime+cstime (its children that exited and were
    reaped: policy-milter's supervisor reaps its workers). The sum only grows, whatever forks or
    exits between two readings, so a difference of two readings is the tree's CPU in between.
    """

    def __init__(self, root: int) -> None:
        self.root = root

    def pids(self) -> list[int]:
        found, todo = [], [self.root]
        while todo:
            pid = todo.pop()
            found.append(pid)
            with contextlib.suppress(OSError):
                for task in Path(f"/proc/{pid}/task").iterdir():  # children of every thread
                    todo.extend(int(child) for child in (task / "children").read_text().split())
        return found

    def cpu_seconds(self) -> float:
        # A worker reaped between reading its parent and reading it would be missed (or, the other
        # way round, counted twice): read again until the tree held still during a whole reading.
        for _ in range(10):
            pids = self.pids()
            ticks = 0
            for pid in pids:
                with contextlib.suppress(OSError):
                    ticks += sum(int(value) for value in _stat(pid)[11:15])  # utime stime cutime cstime
            if self.pids() == pids:
                break
        return ticks / CLOCK_TICKS

    def memory_kib(self) -> tuple[int, int, int, int]:
        """(sum of VmRSS, sum of Pss, largest VmHWM of one process, number of processes) right now.

        VmRSS counts the pages the workers share with their parent (the interpreter, the modules
        and the policy loaded before the fork) once in each process; Pss splits them among them."""
        rss = pss = hwm = count = 0
        for pid in self.pids():
            with contextlib.suppress(OSError):
                rss += _status_kib(pid, "VmRSS:")
                hwm = max(hwm, _status_kib(pid, "VmHWM:"))
                pss += _status_kib(pid, "Pss:", "smaps_rollup")
                count += 1
        return rss, pss, hwm, count


@dataclass
class MemoryPeak:
    tree_rss_kib: int = 0  # peak of the sampled sum of VmRSS over the tree
    tree_pss_kib: int = 0  # peak of the sampled sum of Pss (shared pages split between processes)
    process_hwm_kib: int = 0  # largest VmHWM (the kernel's own peak) of any one process
    processes: int = 0


class Sampler:
    """Samples the memory of some trees every SAMPLE_INTERVAL in a thread."""

    def __init__(self, trees: dict[str, ProcessTree]) -> None:
        self.trees = trees
        self.peaks = {name: MemoryPeak() for name in trees}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()  # VmHWM keeps the peak between samples

    def sample(self) -> None:
        for name, tree in self.trees.items():
            rss, pss, hwm, count = tree.memory_kib()
            peak = self.peaks[name]
            peak.tree_rss_kib = max(peak.tree_rss_kib, rss)
            peak.tree_pss_kib = max(peak.tree_pss_kib, pss)
            peak.process_hwm_kib = max(peak.process_hwm_kib, hwm)
            peak.processes = max(peak.processes, count)

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_INTERVAL):
            self.sample()


# ---------------------------------------------------------------- the stacks


class Sink:
    """Postfix's smtp-sink: the next hop of every stack (C, event-driven; it discards the mail)."""

    def __init__(self) -> None:
        self.port = free_port()
        self._process = subprocess.Popen(
            [find_program("smtp-sink", "postfix"), "-u", "postfix", "-m", "1000", f"127.0.0.1:{self.port}", "1024"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        if not wait_until(self._answers, 10):
            self.stop()
            raise RuntimeError(f"smtp-sink did not answer on port {self.port}")

    def _answers(self) -> bool:
        try:
            with smtplib.SMTP("127.0.0.1", self.port, timeout=2) as client:
                return client.noop()[0] == 250
        except OSError:
            return False

    def stop(self) -> None:
        if self._process.poll() is None:
            self._process.terminate()
            self._process.wait(10)


def relay_to(stack: MailStack, sink: Sink) -> None:
    """Point the stack's Postfix at smtp-sink instead of the harness's Python sink (whose CPU would
    land in this process), and lift the 10 MB size limit for the 10 MB messages."""
    hop = f"smtp:[127.0.0.1]:{sink.port}"
    postconf = find_program("postconf", "postfix")
    run_checked([postconf, "-c", str(stack.config_dir), "-e", f"default_transport = {hop}",
                 f"relay_transport = {hop}", "message_size_limit = 52428800"], what="postconf -e")
    # Postfix waits ~2 s for a main.cf modified just now to settle (as postfix_config.write_config notes).
    settled = time.time() - 60
    os.utime(stack.config_dir / "main.cf", (settled, settled))
    run_checked([find_program("postfix", "postfix"), "-c", str(stack.config_dir), "reload"], what="postfix reload")


QUEUES = ("maildrop", "incoming", "active", "deferred")  # "hold" keeps the check messages


def queued(stack: MailStack) -> tuple[int, int]:
    """(messages in the queue, of which deferred), counted from the queue directories."""
    counts = {}
    for queue in QUEUES:
        counts[queue] = sum(len(files) for _, _, files in os.walk(stack.queue_dir / queue))
    return sum(counts.values()), counts["deferred"]


def wait_drained(stack: MailStack) -> None:
    deadline = time.monotonic() + DRAIN_TIMEOUT
    while True:
        total, deferred = queued(stack)
        if deferred:
            raise RuntimeError(f"{deferred} messages deferred: delivery to smtp-sink failed\n"
                               + "\n".join(stack.maillog().splitlines()[-20:]))
        if not total:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{total} messages still queued after {DRAIN_TIMEOUT:.0f} s")
        time.sleep(0.005)


def held(stack: MailStack, timeout: float = 30) -> tuple[str, str]:
    """The one message in the hold queue: (queue id, postcat's text); it is deleted."""
    found: list[str] = []

    def arrived() -> bool:
        found[:] = [str(m["queue_id"]) for m in stack.queue() if m.get("queue_name") == "hold"]
        return bool(found)

    if not wait_until(arrived, timeout, 0.05):
        raise RuntimeError(f"the check message was not held\n{stack.maillog()[-2000:]}")
    queue_id = found[0]
    text = stack.postcat(queue_id)
    run_checked([find_program("postsuper", "postfix"), "-c", str(stack.config_dir), "-d", queue_id, "hold"],
                what="postsuper -d")
    return queue_id, text


def summary_of(stack: MailStack, queue_id: str, timeout: float = 20) -> dict[str, str]:
    """policy-milter's summary log line for one queue id, as key=value pairs."""
    pattern = re.compile(rf"^.* summary .*queue_id={queue_id}\b.*$", re.MULTILINE)
    line: list[str] = []

    def logged() -> bool:
        match = pattern.search(stack.milter_log())
        if match:
            line.append(match.group(0))
        return match is not None

    if not wait_until(logged, timeout, 0.05):
        raise RuntimeError(f"no summary for {queue_id} in the milter log:\n{stack.milter_log()[-2000:]}")
    return {key: value.strip('"') for key, value in re.findall(r'(\w+)=("(?:[^"\\]|\\.)*"|\S+)', line[0])}


# ---------------------------------------------------------------- load


@dataclass
class Batch:
    messages: int
    seconds: float  # first connection until the last message left the queue
    latencies_ms: list[float]
    cpu_seconds: float = 0.0  # the milter's process tree

    @property
    def rate(self) -> float:
        return self.messages / self.seconds


def _probe(port: int, wire: bytes, rcpt: str, stop: threading.Event, latencies: list[float],
           failures: list[str]) -> None:
    """A session per message like smtp-source's: connect, EHLO, MAIL, RCPT, DATA (timed), QUIT."""
    while not stop.is_set():
        started = time.perf_counter()
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=120, local_hostname=HELO) as client:
                code, text = transaction(client, SENDER, rcpt, wire)
                latencies.append((time.perf_counter() - started) * 1000)
        except (OSError, smtplib.SMTPException) as error:
            failures.append(repr(error))
            return
        if code != 250:
            failures.append(f"{code} {text}")
            return


def source_batch(stack: MailStack, message: Prepared, count: int, sessions: int, rcpt: str = RECIPIENT) -> Batch:
    """smtp-source with `count` messages on sessions - probes connections, plus the probes."""
    probes = max(1, sessions // 10) if sessions > 1 else 0
    port = stack.ports["smtp"]
    latencies: list[float] = []
    failures: list[str] = []
    stop = threading.Event()
    started = time.perf_counter()
    source = subprocess.Popen(
        [find_program("smtp-source", "postfix"), "-s", str(sessions - probes), "-m", str(count), "-f", SENDER,
         "-t", rcpt, "-M", HELO, "-F", str(message.file), f"127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    threads = [threading.Thread(target=_probe, args=(port, message.wire, rcpt, stop, latencies, failures))
               for _ in range(probes)]
    for thread in threads:
        thread.start()
    _, errors = source.communicate()
    stop.set()
    for thread in threads:
        thread.join()
    if source.returncode != 0 or failures:
        raise RuntimeError(f"smtp-source exit {source.returncode}: {errors.decode(errors='replace')[-500:]}; "
                           f"probes: {failures[:3]}\n{stack.maillog()[-1500:]}")
    wait_drained(stack)
    return Batch(count + len(latencies), time.perf_counter() - started, latencies)


def submission_batch(stack: MailStack, message: Prepared, count: int, sessions: int,
                     rcpt: str = RECIPIENT) -> Batch:
    """`sessions` threads, each one STARTTLS + AUTH session sending until `count` are sent."""
    tickets = iter(range(count))
    lock = threading.Lock()
    latencies: list[float] = []
    failures: list[str] = []

    def client() -> None:
        context = unverified_tls_context()
        try:
            with smtplib.SMTP("127.0.0.1", stack.ports["submission"], timeout=120, local_hostname=HELO) as smtp:
                smtp.starttls(context=context)
                smtp.ehlo(HELO)
                smtp.login(SUBMITTER, stack.users[SUBMITTER])
                while True:
                    with lock:
                        ticket = next(tickets, None)
                    if ticket is None:
                        return
                    begun = time.perf_counter()
                    code, text = transaction(smtp, f"{SUBMITTER}@{SITE_DOMAIN}", rcpt, message.wire)
                    if code != 250:
                        failures.append(f"{code} {text}")
                        return
                    latencies.append((time.perf_counter() - begun) * 1000)
        except (OSError, smtplib.SMTPException) as error:
            failures.append(repr(error))

    started = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(min(sessions, count))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise RuntimeError(f"submission failed: {failures[:3]}\n{stack.maillog()[-1500:]}")
    wait_drained(stack)
    return Batch(len(latencies), time.perf_counter() - started, latencies)


# ---------------------------------------------------------------- paths


@dataclass(frozen=True)
class BenchPath:
    key: str
    title: str
    listener: str  # smtp (smtp-source + probes) or submission (smtplib pool)
    scan: bool  # attachments + clamd: antivirus on in the policy
    expect: dict[str, str]  # policy-milter's summary for the check message: field -> value prefix

    def send(self, stack: MailStack, message: Prepared, count: int, sessions: int, rcpt: str = RECIPIENT) -> Batch:
        batch = source_batch if self.listener == "smtp" else submission_batch
        return batch(stack, message, count, sessions, rcpt)


PATHS = {
    "a": BenchPath("a", "port 25, DKIM-signed 5 KB: SPF+DKIM+ARC+DMARC", "smtp", False,
                   {"spf": "pass", "dkim": "pass", "arc": "none", "dmarc": "pass", "verdict": "accept"}),
    "b": BenchPath("b", "port 25, 5 KB plain text: SPF+DKIM+ARC+DMARC", "smtp", False,
                   {"spf": "pass", "dkim": "none", "arc": "none", "dmarc": "pass", "verdict": "accept"}),
    "c": BenchPath("c", "port 25, 100 KB attachments: + attachments + clamd", "smtp", True,
                   {"spf": "pass", "attachments": "clean", "antivirus": "clean", "dmarc": "pass",
                    "verdict": "accept"}),
    "d": BenchPath("d", "587 STARTTLS+AUTH: sender + RSA-2048 signing", "submission", False,
                   {"sender": "pass", "ratelimit": "pass", "signing": "pass", "verdict": "accept"}),
}


def path_message(key: str, directory: Path, sender_key: authkit.DkimKey) -> Prepared:
    match key:
        case "a":
            wire = authkit.sign(plain_message(5000), sender_key)
        case "b":
            wire = plain_message(5000)
        case "c":
            wire = attachment_message(100_000)
        case _:
            wire = plain_message(5000, f"{SUBMITTER}@{SITE_DOMAIN}", "friend@elsewhere.test")
    return Prepared.write(wire, directory / f"path-{key}.eml")


# ---------------------------------------------------------------- milters


def milter_command(config: str, stack: MailStack, overrides: Sequence[str]) -> list[str]:
    socket = f"unix:{stack.milter_socket}"
    identity = ["--user", MILTER_USER, "--group", MILTER_GROUP]
    if config == "null":
        return [sys.executable, str(REPO / "benchmarks" / "nullmilter.py"), "--socket", socket, *identity]
    command = [sys.executable, "-m", "policymilter", "run", "--policy", str(REPO / "policies"), "--socket", socket,
               *identity]
    if config == "pm1":
        command += ["--workers", "1"]
    if config == "pmm":  # the metrics' cost: pm with /metrics served (not scraped during the batches)
        command += ["--metrics", f"127.0.0.1:{_free_ports(1)[0]}"]
    if config == "pmn":  # the rate limits' cost: pm without them
        command += ["-o", "ratelimit.enabled=false"]
    if config == "pmr":  # the DMARC report rows' cost: pm recording them
        command += [part for override in RECORD_ROWS for part in ("-o", override)]
    for override in overrides:
        command += ["-o", override]
    return command


def signing_key(directory: Path) -> tuple[Path, str]:
    """An RSA-2048 key for example.org that the milter's user owns; and its DNS record."""
    directory.mkdir(mode=0o711)
    os.chmod(directory, 0o711)
    private = signing_keys.generate_private_key(signing_keys.KeyType.RSA, 2048)
    path = directory / signing_keys.key_file_name(SITE_DOMAIN, SIGNING_SELECTOR)
    signing_keys.write_key_file(path, private)
    account = pwd.getpwnam(MILTER_USER)
    os.chown(path, account.pw_uid, account.pw_gid)
    return path, signing_keys.public_record(signing_keys.parse_private_key(private))


def zones(sender_key: authkit.DkimKey, signing_record: str) -> list[Zone]:
    sender = (Zone(SENDER_DOMAIN).add("mail", "A", "127.0.0.1").txt("@", "v=spf1 ip4:127.0.0.1 -all")
              .txt("_dmarc", "v=DMARC1; p=reject").txt(sender_key.owner, sender_key.record))
    site = (Zone(SITE_DOMAIN).txt("@", "v=spf1 ip4:127.0.0.1 -all").txt("_dmarc", "v=DMARC1; p=reject")
            .txt(f"{SIGNING_SELECTOR}._domainkey", signing_record))
    return [sender, site, Zone("example.test"), Zone("elsewhere.test")]


def recorded_messages(stack: MailStack) -> int:
    """The messages the milter counted in its DMARC report rows (pmr: proof that it records)."""
    store = open_store(stack.state_store)
    try:
        return sum(count for period, domain in store.dmarc_pending(2**40)
                   for _, count in store.dmarc_rows(period, domain))
    finally:
        store.close()


# ---------------------------------------------------------------- results


@dataclass
class Cell:
    """One path and configuration: a batch per round, the latencies of all, the memory peak."""

    batches: list[Batch] = field(default_factory=list)
    memory: MemoryPeak | None = None

    def rate(self) -> float:
        return statistics.median(b.rate for b in self.batches)

    def cpu_ms(self) -> float:
        return statistics.median(b.cpu_seconds * 1000 / b.messages for b in self.batches)

    def latency(self, share: float) -> float:
        values = sorted(v for b in self.batches for v in b.latencies_ms)
        return values[min(len(values) - 1, int(len(values) * share))] if values else float("nan")


def ratio(cells: dict[str, Cell], config: str, base: str) -> float | None:
    """Median over rounds of the paired ratio (the same round's batches: same machine noise)."""
    if config not in cells or base not in cells:
        return None
    pairs = zip(cells[config].batches, cells[base].batches, strict=True)
    return statistics.median(mine.rate / theirs.rate for mine, theirs in pairs)


@dataclass
class Results:
    cells: dict[str, dict[str, Cell]] = field(default_factory=dict)  # path -> config -> cell
    sizes: dict[str, dict[str, tuple[float, float]]] = field(default_factory=dict)  # config -> size -> ms/msg, ms/MB
    checks: dict[str, str] = field(default_factory=dict)  # path -> what policy-milter logged for the check message
    sessions: int = 0


def _fmt(value: float | None, spec: str, width: int) -> str:
    return f"{'-':>{width}}" if value is None or value != value else f"{value:>{width}{spec}}"


def report(results: Results, configs: Sequence[str], args: argparse.Namespace) -> str:
    out = io.StringIO()

    def say(text: str = "") -> None:
        out.write(text + "\n")

    say(f"{args.rounds} interleaved rounds of {args.messages} messages per path and configuration, "
        f"{args.sessions} concurrent sessions; {os.cpu_count()} CPUs; medians over rounds")
    say("policy-milter's DNS cache: " + ("on (the default; one sender: its answers are cached after the first "
                                         "message)" if args.dns_cache else "off (dns.cache_size=0)"))
    say("CPU: the milter's whole process tree (utime+stime of every process, reaped children included)")
    say("memory of the tree: RSS = peak of the sampled sum of VmRSS (every 50 ms), PSS = the same for Pss")
    say("(shared pages split between processes), max = largest VmHWM of one process, procs = processes")
    for path_key, cells in results.cells.items():
        say()
        say(f"({path_key}) {PATHS[path_key].title}")
        if path_key in results.checks:
            say(f"    check message: {results.checks[path_key]}")
        say(f"    {'configuration':<31} {'msg/s':>6} {'x alone':>7} {'x null':>6} {'p50 ms':>7} {'p99 ms':>7}"
            f" {'CPU ms/msg':>10} {'RSS MiB':>7} {'PSS MiB':>7} {'max MiB':>7} {'procs':>5}")
        for config in configs:
            if config not in cells:
                continue
            cell = cells[config]
            memory = cell.memory
            say(f"    {CONFIG_LABELS[config]:<31} {cell.rate():>6.0f} {_fmt(ratio(cells, config, 'postfix'), '.2f', 7)}"
                f" {_fmt(ratio(cells, config, 'null') if config != 'null' else None, '.2f', 6)}"
                f" {cell.latency(0.5):>7.1f} {cell.latency(0.99):>7.1f}"
                f" {_fmt(cell.cpu_ms() if config != 'postfix' else None, '.2f', 10)}"
                f" {_fmt(memory.tree_rss_kib / 1024 if memory else None, '.1f', 7)}"
                f" {_fmt(memory.tree_pss_kib / 1024 if memory else None, '.1f', 7)}"
                f" {_fmt(memory.process_hwm_kib / 1024 if memory else None, '.1f', 7)}"
                f" {_fmt(memory.processes if memory else None, 'd', 5)}")
        if "pm" in cells and "pmr" in cells:
            # the same rounds' batches paired: the recording's cost, as a ratio and in CPU
            say(f"    DMARC rows on / off: {_fmt(ratio(cells, 'pmr', 'pm'), '.2f', 4)} x msg/s, "
                f"CPU {cells['pmr'].cpu_ms() - cells['pm'].cpu_ms():+.2f} ms/msg")
    if results.sizes:
        say()
        say("(c) size growth on the attachments path (clamd): milter CPU per message and per MB (10^6 bytes)")
        say(f"    {'configuration':<31} " + " ".join(f"{label + ' ms/msg':>14} {'ms/MB':>6}" for label in SIZES))
        for config, row in results.sizes.items():
            say(f"    {CONFIG_LABELS[config]:<31} "
                + " ".join(f"{row[label][0]:>14.1f} {row[label][1]:>6.1f}" for label in SIZES if label in row))
    say()
    say("targets (policy-milter configurations):")
    for line in targets(results):
        say("    " + line)
    return out.getvalue()


def targets(results: Results) -> Iterator[str]:
    def verdict(ok: bool) -> str:
        return "PASS" if ok else "MISS"

    for config in ("pm1", "pm"):
        label = CONFIG_LABELS[config]
        for path_key, share, what in (("a", 0.9, "inbound SPF+DKIM+ARC+DMARC, DKIM-signed 5 KB"),
                                      ("c", 0.8, "attachments+clamd 100 KB"), ("d", 0.9, "587 signing")):
            cells = results.cells.get(path_key, {})
            value = ratio(cells, config, "null")
            if value is not None:
                yield f"{verdict(value >= share)}  {label}: {what}: {value:.2f}x do-nothing (target >= {share}x)"
        for path_key, limit in (("a", 1.0), ("b", 1.0), ("c", 2.0)):
            cell = results.cells.get(path_key, {}).get(config)
            if cell is not None:
                cpu = cell.cpu_ms()
                kind = "inbound" if path_key != "c" else "attachments+clamd"
                yield f"{verdict(cpu <= limit)}  {label}: {kind} ({path_key}) CPU {cpu:.2f} ms/msg (target <= {limit})"
        cell = results.cells.get("c", {}).get(config)
        if cell is not None and cell.memory is not None:
            peak = cell.memory.process_hwm_kib / 1024
            yield (f"{verdict(peak <= 60)}  {label}: peak RSS {peak:.1f} MiB per process at "
                   f"{results.sessions} sessions x 100 KB (target <= 60 MiB per worker)")


# ---------------------------------------------------------------- the run


class Bench:
    """The stacks, the shared services, the messages; runs the paths."""

    def __init__(self, root: Path, configs: Sequence[str], args: argparse.Namespace,
                 exits: contextlib.ExitStack) -> None:
        self.root, self.configs, self.args = root, list(configs), args
        self.sender_key = authkit.rsa_key(SENDER_DOMAIN, SENDER_SELECTOR)  # RSA-2048, as most signers use
        key_file, record = signing_key(root / "keys")
        self.dns = exits.enter_context(DnsServer(root / "dns", zones(self.sender_key, record)))
        self.clamd = exits.enter_context(Clamd(root / "clamd")) if "c" in args.paths else None
        self.sink = Sink()
        exits.callback(self.sink.stop)
        # One after the other: MailStack picks its ports free, then lets Postfix bind them.
        self.stacks = {config: self._stack(config, exits) for config in self.configs}
        self.base_overrides = [
            f'dns.nameservers=["{self.dns.nameserver}"]', "spam.enabled=false",
            f'signing.keys={{"{SITE_DOMAIN}" = [{{selector = "{SIGNING_SELECTOR}", key_file = "{key_file}"}}]}}',
            *([] if args.dns_cache else ["dns.cache_size=0"]), UNREACHABLE_LIMITS]
        self.harness_deliveries = {config: 0 for config in self.configs}

    def _stack(self, config: str, exits: contextlib.ExitStack) -> MailStack:
        stack = MailStack(self.root / config, milter=config != "postfix").start()
        exits.callback(stack.stop)
        relay_to(stack, self.sink)
        return stack

    def overrides(self, path: BenchPath) -> list[str]:
        if path.scan:
            assert self.clamd is not None
            return [*self.base_overrides, "antivirus.enabled=true", f'antivirus.servers=["{self.clamd.endpoint}"]']
        return [*self.base_overrides, "antivirus.enabled=false"]

    @contextlib.contextmanager
    def milters(self, path: BenchPath) -> Iterator[dict[str, ProcessTree]]:
        """A fresh milter per configuration for this path (its policy, a fresh memory peak)."""
        running = [config for config in self.configs if config in MILTER_CONFIGS]
        overrides = self.overrides(path)

        def start(config: str) -> ProcessTree:
            stack = self.stacks[config]
            stack.start_milter(milter_command(config, stack, overrides), timeout=60)
            assert stack.milter_pid is not None
            return ProcessTree(stack.milter_pid)

        def stop(config: str) -> None:
            if self.stacks[config].milter_running:
                self.stacks[config].stop_milter()

        try:
            with concurrent.futures.ThreadPoolExecutor(max(1, len(running))) as pool:
                trees = dict(zip(running, pool.map(start, running), strict=True))
            yield trees
        finally:
            with concurrent.futures.ThreadPoolExecutor(max(1, len(running))) as pool:
                list(pool.map(stop, running))

    def check(self, path: BenchPath, message: Prepared) -> str:
        """Send one copy to the hold queue of each stack and read back what the milter did."""
        seen = []
        for config, stack in self.stacks.items():
            if path.listener == "smtp":
                source_batch(stack, message, 1, 1, HOLD_RECIPIENT)
            else:
                submission_batch(stack, message, 1, 1, HOLD_RECIPIENT)
            queue_id, text = held(stack)
            if config == "null" and "X-Null-Milter: seen" not in text:
                raise RuntimeError(f"the do-nothing milter added no header:\n{text[:2000]}")
            if config in ("pm1", "pm"):
                summary = summary_of(stack, queue_id)
                wrong = {key: summary.get(key) for key, prefix in path.expect.items()
                         if not str(summary.get(key)).startswith(prefix)}
                if wrong:
                    raise RuntimeError(f"path {path.key}, {config}: expected {path.expect}, got {wrong}: {summary}")
                if path.key == "d" and f"s={SIGNING_SELECTOR};" not in text.replace(" ", ""):
                    raise RuntimeError(f"the submitted message was not signed:\n{text[:2000]}")
                seen.append(" ".join(f"{key}={summary.get(key)}" for key in path.expect))
        return seen[0] if seen else ""

    def run_path(self, path: BenchPath, results: Results) -> None:
        message = path_message(path.key, self.root, self.sender_key)
        args = self.args
        with self.milters(path) as trees:
            for stack in self.stacks.values():  # warm up: imports, libmilter threads, smtpd processes
                path.send(stack, message, args.warmup, args.sessions)
            results.checks[path.key] = self.check(path, message)
            for config, stack in self.stacks.items():
                self.harness_deliveries[config] = len(stack.delivered())
            cells = results.cells.setdefault(path.key, {config: Cell() for config in self.configs})
            with Sampler(trees) as sampler:
                for round_index in range(args.rounds):
                    shift = round_index % len(self.configs)
                    for config in self.configs[shift:] + self.configs[:shift]:
                        tree = trees.get(config)
                        before = tree.cpu_seconds() if tree else 0.0
                        batch = path.send(self.stacks[config], message, args.messages, args.sessions)
                        batch.cpu_seconds = tree.cpu_seconds() - before if tree else 0.0
                        cells[config].batches.append(batch)
                        print(f"  ({path.key}) round {round_index + 1} {config:<8} {batch.rate:7.0f} msg/s"
                              f"  {batch.cpu_seconds * 1000 / batch.messages:6.2f} ms CPU/msg", file=sys.stderr)
            for config, peak in sampler.peaks.items():
                cells[config].memory = peak
            if "pmr" in self.stacks and path.listener == "smtp":
                recorded = recorded_messages(self.stacks["pmr"])
                if recorded < args.rounds * args.messages:
                    raise RuntimeError(f"pmr recorded {recorded} messages in its DMARC rows, fewer than it was sent")
            if path.scan and args.sizes:
                self.size_growth(trees, results)
        for config, stack in self.stacks.items():
            if len(stack.delivered()) != self.harness_deliveries[config]:
                raise RuntimeError(f"{config}: measured mail reached the harness's sink, not smtp-sink")

    def size_growth(self, trees: dict[str, ProcessTree], results: Results) -> None:
        counts = QUICK_SIZE_MESSAGES if self.args.quick else SIZE_MESSAGES
        for label, size in SIZES.items():
            message = Prepared.write(attachment_message(size), self.root / f"size-{size}.eml")
            megabytes = len(message.wire) / MB
            for config, tree in trees.items():
                stack = self.stacks[config]
                if not self.args.quick:
                    source_batch(stack, message, 1, 1)  # warm: the first large message grows the heap
                before = tree.cpu_seconds()
                batch = source_batch(stack, message, counts[label], min(self.args.sessions, counts[label]))
                per_message = (tree.cpu_seconds() - before) * 1000 / batch.messages
                results.sizes.setdefault(config, {})[label] = (per_message, per_message / megabytes)
                print(f"  (c) size {label:<6} {config:<8} {per_message:8.1f} ms CPU/msg", file=sys.stderr)


DEFAULTS = {"rounds": 5, "messages": 600, "sessions": 20, "warmup": 100}
QUICK = {"rounds": 1, "messages": 20, "sessions": 4, "warmup": 4}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, help=f"interleaved rounds (default {DEFAULTS['rounds']})")
    parser.add_argument("--messages", type=int, help=f"messages per batch (default {DEFAULTS['messages']})")
    parser.add_argument("--sessions", type=int, help=f"concurrent SMTP sessions (default {DEFAULTS['sessions']})")
    parser.add_argument("--warmup", type=int,
                        help=f"unmeasured messages per path and configuration (default {DEFAULTS['warmup']})")
    parser.add_argument("--paths", default="a,b,c,d", help="comma-separated, of a,b,c,d")
    parser.add_argument("--configs", default="postfix,null,pm1,pm",
                        help="comma-separated, of postfix,null,pm1,pm,pmm,pmn,pmr (pmm: pm with --metrics; "
                             "pmn: ratelimit off; pmr: dmarc_reports.record on)")
    parser.add_argument("--no-sizes", dest="sizes", action="store_false", help="skip the size-growth table")
    parser.add_argument("--no-dns-cache", dest="dns_cache", action="store_false",
                        help="policy-milter with dns.cache_size=0: every message is from one sender, so with "
                             "the cache (the default) its lookups are answered from memory after the first")
    parser.add_argument("--quick", action="store_true",
                        help="smoke mode: 1 round of 20 messages on 4 sessions, one message per size "
                             "(options given explicitly still win)")
    args = parser.parse_args(argv)
    for name, value in (QUICK if args.quick else DEFAULTS).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.paths = [p for p in args.paths.split(",") if p]
    args.configs = [c for c in args.configs.split(",") if c]
    unknown = [p for p in args.paths if p not in PATHS] + [c for c in args.configs if c not in CONFIG_LABELS]
    if unknown:
        parser.error(f"unknown paths or configurations: {', '.join(unknown)}")
    if args.sessions < 2 or args.rounds < 1 or args.messages < 1:
        parser.error("--sessions must be at least 2 (smtp-source and a probe), --rounds and --messages at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    configs = [c for c in CONFIG_LABELS if c in args.configs]  # always in the table's order
    results = Results(sessions=args.sessions)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="pmtp-") as temp, contextlib.ExitStack() as exits:
        root = Path(temp)
        bench = Bench(root, configs, args, exits)
        print(f"stacks up in {time.monotonic() - started:.0f} s", file=sys.stderr)
        for key in args.paths:
            begun = time.monotonic()
            bench.run_path(PATHS[key], results)
            print(f"path {key} done in {time.monotonic() - begun:.0f} s", file=sys.stderr)
    print(report(results, configs, args), end="")
    print(f"({time.monotonic() - started:.0f} s in all)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
