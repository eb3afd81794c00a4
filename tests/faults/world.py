"""The world the fault suite runs in: sender zones and keys, the messages, the services and the milter.

One job: build and run what every scenario shares. `World` starts one nsd (with its Blackhole
front), one clamd, one spamd and one MailStack, copies the shipped policy into a directory of its
own (a scenario may write a broken file beside it), makes the site's signing key, and starts the
milter as deployed (`--user policy-milter --group postfix`, default worker count) with `-o`
overrides that point the shipped policy at these services. It also runs one Redis (Debian's
redis-server) for the scenarios whose rate-limit store is Redis; every other scenario keeps the
stack's private SQLite file, the shipped kind of store.

Senders: every inbound message comes from a host name of its own under `fault.test`
(`h17.fault.test`), each with an SPF record authorising 127.0.0.1, so SPF really asks DNS for
most messages (the milter's cache would otherwise answer after the first few). The From domain
is that host, DKIM-signed with `d=fault.test` (relaxed alignment: DMARC passes on both SPF and
DKIM), and `_dmarc.fault.test` says p=reject: a message whose checks did not run cannot pass
DMARC by accident.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from tests import authkit
from tests.conftest import DEFAULT_POLICY
from tests.integration.dns_server import DnsServer, Zone
from tests.integration.postfix_config import HOSTNAME
from tests.integration.processes import find_program
from tests.integration.redis_server import RedisServer
from tests.integration.scanners import Clamd, Spamd
from tests.integration.stack import MILTER_USER, MailStack

SENDER_ZONE = "fault.test"
SENDER_HOSTS = 3000  # h0 .. h2999: answers live 60 s (the zone TTL), so reuse after that asks DNS again
HELO = f"mail.{SENDER_ZONE}"
AUTHSERV_ID = HOSTNAME
SITE_DOMAIN = "example.org"
SIGNING_SELECTOR = "f2026"
INBOUND_RCPT_DOMAIN = "example.test"  # relay_domains of the stack: port 25 relays it to the sink
OUTBOUND_RCPT = "friend@elsewhere.test"
LOGIN, PASSWORD = "alice", "alice-secret"
SUBMISSION_EVERY = 10  # one message in ten goes through 587 (AUTH, STARTTLS, signed)
ATTACHMENT_EVERY = 4  # one in four carries a (harmless) attachment: the content walk has work

# Time budgets of the suite (the shipped defaults are 5/20 s for DNS and 60 s per scanner): short
# enough that a fault shows within seconds, long enough for a loaded 2-core machine.
DNS_TIMEOUT = 1.0
DNS_LIFETIME = 3.0
SCANNER_TIMEOUT = 10.0
CLAMD_THREADS = 10  # clamd's MaxThreads default (scanners.Clamd sets none)
SPAMD_CHILDREN = 2  # scanners.Spamd: --max-children=2
LOAD_LIMITS = {"smtpd_client_connection_count_limit": "0", "default_process_limit": "250"}
# The shipped [[ratelimit.limits]] (200 messages and 1,000 recipients an hour, tempfail; 1,000
# messages, 3,000 recipients and 20 clients a day, hold) with numbers no run reaches: the load and
# --long send thousands of 587 messages as one login, and every scenario of a World shares one
# store. Two limits, the same windows, dimensions and actions: the counting costs what it costs
# as deployed. (Every test sender is 127.0.0.1: one client address, never 20.)
RATELIMIT_LIMITS = ('[{ key = "login", messages = 1000000, recipients = 5000000, per = 3600, action = "tempfail" }, '
                    '{ key = "login", messages = 5000000, recipients = 15000000, clients = 20, per = 86400, '
                    'action = "hold" }]')
STORES = ("sqlite", "sqlite-unwritable", "redis")  # what Scenario.store may name (World.store_override)


@dataclass
class Outgoing:
    """One message the driver has to deliver: where, from whom, and the bytes."""

    token: str  # unique, in the Subject and the Message-ID
    msgid: str  # without angle brackets
    door: str  # "smtp" (25) or "submission" (587)
    mail_from: str
    rcpt: str
    raw: bytes


def sender_zone(key: authkit.DkimKey) -> Zone:
    zone = Zone(SENDER_ZONE).add("@", "A", "127.0.0.1")
    zone.txt("@", "v=spf1 ip4:127.0.0.1 -all").txt("_dmarc", "v=DMARC1; p=reject")
    zone.txt(key.owner, key.record)
    zone.add("mail", "A", "127.0.0.1").txt("mail", "v=spf1 ip4:127.0.0.1 -all")
    for host in range(SENDER_HOSTS):
        zone.add(f"h{host}", "A", "127.0.0.1").txt(f"h{host}", "v=spf1 ip4:127.0.0.1 -all")
    return zone


def _body(token: str, attachment: bool) -> tuple[str, str]:
    """(extra headers, body) of a plain or multipart message."""
    text = f"Fault suite message {token}.\r\nNothing to see here; a few lines of ordinary text.\r\n" * 3
    if not attachment:
        return "Content-Type: text/plain; charset=us-ascii\r\n", text
    boundary = f"b-{token}"
    csv = "".join(f"{n},{n * n},row {n}\r\n" for n in range(40))
    body = (f"--{boundary}\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n{text}\r\n"
            f"--{boundary}\r\nContent-Type: text/csv; name=\"report.csv\"\r\n"
            f"Content-Disposition: attachment; filename=\"report.csv\"\r\n\r\n{csv}\r\n--{boundary}--\r\n")
    return f"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"{boundary}\"\r\n", body


def make_messages(scenario: str, count: int, key: authkit.DkimKey, first_host: int = 0) -> list[Outgoing]:
    """`count` messages with unique tokens; inbound ones DKIM-signed by `key` (done here, before any clock runs)."""
    run = uuid.uuid4().hex[:8]
    messages = []
    for n in range(count):
        token = f"{scenario}-{run}-{n:05d}"
        msgid = f"{token}@faults.test"
        extra, body = _body(token, n % ATTACHMENT_EVERY == ATTACHMENT_EVERY - 1)
        if n % SUBMISSION_EVERY == SUBMISSION_EVERY - 1:
            sender, rcpt, door = f"{LOGIN}@{SITE_DOMAIN}", OUTBOUND_RCPT, "submission"
        else:
            host = (first_host + n) % SENDER_HOSTS
            sender, rcpt, door = f"n{n}@h{host}.{SENDER_ZONE}", f"user{n}@{INBOUND_RCPT_DOMAIN}", "smtp"
        raw = (f"From: {sender}\r\nTo: {rcpt}\r\nSubject: fault suite {token}\r\n"
               f"Date: {time.strftime('%a, %d %b %Y %H:%M:%S +0000', time.gmtime())}\r\n"
               f"Message-ID: <{msgid}>\r\n{extra}\r\n{body}").encode()
        if door == "smtp":
            raw = authkit.sign(raw, key)
        messages.append(Outgoing(token, msgid, door, sender, rcpt, raw))
    return messages


def keygen(directory: Path, owner: str) -> Path:
    """The site's signing key, made by the real `policy-milter dkim-keygen`, owned by the milter's user."""
    subprocess.run([sys.executable, "-m", "policymilter", "dkim-keygen", "--domain", SITE_DOMAIN,
                    "--selector", SIGNING_SELECTOR, "--type", "rsa", "--out", str(directory)],
                   capture_output=True, text=True, check=True)
    path = directory / f"{SITE_DOMAIN}.{SIGNING_SELECTOR}.key"
    user = pwd.getpwnam(owner)
    os.chown(path, user.pw_uid, user.pw_gid)
    os.chmod(directory, 0o711)
    return path


class World:
    """nsd + clamd + spamd + MailStack + the policy directory and keys; the milter started on demand."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.inbound_key = authkit.rsa_key(SENDER_ZONE, "s1")
        self.dns = DnsServer(directory / "dns", [sender_zone(self.inbound_key), Zone(SITE_DOMAIN),
                                                 Zone(INBOUND_RCPT_DOMAIN), Zone("elsewhere.test")])
        self.clamd = Clamd(directory / "clamd")
        self.spamd = Spamd(directory / "spamd")
        self.stack = MailStack(directory / "stack")
        self.redis = RedisServer(directory / "redis")
        self.unwritable_state = directory / "unwritable-state"  # root's, 0755: the milter's user cannot write it
        self.policy_dir = directory / "policy"
        self.keys_dir = directory / "keys"
        self.signing_key: Path | None = None
        self.next_host = 0
        self._command: list[str] = []

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> World:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            os.chmod(self.directory, 0o755)
            self.dns.start()
            self.clamd.start()
            self.spamd.start()
            self.redis.start()
            self.stack.start()
            # Every test sender is 127.0.0.1, where the Internet's would be many addresses: Postfix's
            # per-client limit (50 sessions) and its 100 processes per service would cap the load
            # scenario's 100 sessions before the milter sees them.
            self.postconf(LOAD_LIMITS)
            self.policy_dir.mkdir(exist_ok=True)
            os.chmod(self.policy_dir, 0o755)
            for shipped in sorted(DEFAULT_POLICY.glob("*.toml")):  # the shipped policy, as shipped
                shutil.copy(shipped, self.policy_dir / shipped.name)
            self.keys_dir.mkdir(exist_ok=True)
            self.signing_key = keygen(self.keys_dir, MILTER_USER)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.stack.milter_running:
            self.stack.stop_milter()
        self.stack.stop()
        self.redis.stop()
        self.spamd.stop()
        self.clamd.stop()
        self.dns.stop()

    def __enter__(self) -> World:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # -- messages ----------------------------------------------------------------------------

    def messages(self, scenario: str, count: int) -> list[Outgoing]:
        batch = make_messages(scenario, count, self.inbound_key, self.next_host)
        self.next_host = (self.next_host + count) % SENDER_HOSTS
        return batch

    # -- the milter --------------------------------------------------------------------------

    def overrides(self, *, dns_front: bool = False, dns_timeout: float = DNS_TIMEOUT,
                  dns_lifetime: float = DNS_LIFETIME, scanner_timeout: float = SCANNER_TIMEOUT,
                  postfix_timeouts: tuple[float, float] | None = None,
                  queue_timeout: float | None = None) -> list[str]:
        """The -o list: the shipped policy pointed at this world's services, every check on."""
        nameserver = self.dns.front_nameserver if dns_front else self.dns.nameserver
        keys = f'{{ "{SITE_DOMAIN}" = [{{ selector = "{SIGNING_SELECTOR}", key_file = "{self.signing_key}" }}] }}'
        options = [f'site.authserv_id="{AUTHSERV_ID}"', f'site.domains=["{SITE_DOMAIN}"]',
                   f'dns.nameservers=["{nameserver}"]', f"dns.timeout={dns_timeout}",
                   f"dns.lifetime={dns_lifetime}",
                   f'antivirus.servers=["{self.clamd.endpoint}"]', f"antivirus.timeout={scanner_timeout}",
                   f'spam.servers=["{self.spamd.endpoint}"]', f"spam.timeout={scanner_timeout}",
                   f"signing.keys={keys}",
                   # What these daemons take at once, as the shipped comments ask: clamd's default
                   # MaxThreads, and the --max-children the harness gives spamd.
                   f"antivirus.max_in_flight={CLAMD_THREADS}", f"spam.max_in_flight={SPAMD_CHILDREN}",
                   f"ratelimit.limits={RATELIMIT_LIMITS}"]
        if queue_timeout is not None:
            options.append(f"site.queue_timeout={queue_timeout}")
        if postfix_timeouts is not None:
            command, content = postfix_timeouts
            options += [f"postfix.milter_command_timeout={command}", f"postfix.milter_content_timeout={content}"]
        return options

    # -- the rate-limit store -----------------------------------------------------------------

    def store_override(self, kind: str) -> list[str]:
        """Make the store `kind` ready (empty) and return the -o that names it; [] for "sqlite": the
        stack's private file (MailStack.with_private_state adds it to a command that names none)."""
        match kind:
            case "sqlite":
                return []
            case "redis":
                self.redis.start()  # a scenario may have left it stopped
                self.redis.flush()
                return [f'state.store="{self.redis.url}"']
            case "sqlite-unwritable":
                # The state directory as a wrong install leaves it: root's, 0755, no file yet. The
                # milter's user can open nothing there (neither state.db nor state.db.lock).
                shutil.rmtree(self.unwritable_state, ignore_errors=True)
                self.unwritable_state.mkdir()
                os.chmod(self.unwritable_state, 0o755)
                return [f'state.store="sqlite:{self.unwritable_state}/state.db"']
        raise ValueError(f"unknown store {kind!r}: one of {', '.join(STORES)}")

    def make_store_writable(self) -> None:
        """What the admin does about the unwritable directory: give it to the milter's user."""
        user = pwd.getpwnam(MILTER_USER)
        os.chown(self.unwritable_state, user.pw_uid, user.pw_gid)

    def milter_command(self, overrides: list[str]) -> list[str]:
        # As deployed: the unprivileged user, Postfix's group, one worker per CPU (no --workers).
        command = [sys.executable, "-m", "policymilter", "run", "--policy", str(self.policy_dir),
                   "--socket", f"unix:{self.stack.milter_socket}", "--user", MILTER_USER, "--group", "postfix"]
        for option in overrides:
            command += ["-o", option]
        return command

    def start_milter(self, overrides: list[str]) -> None:
        self._command = self.milter_command(overrides)
        self.stack.start_milter(self._command)
        self.wait_workers()

    def restart_milter(self) -> None:
        """Start the last command again (after the milter was killed)."""
        if self.stack.milter_running:
            raise RuntimeError("the milter is still running")
        self.stack.stop_milter()  # reaps it
        self.stack.start_milter(self._command)
        self.wait_workers()

    def stop_milter(self) -> int:
        return self.stack.stop_milter()

    def worker_pids(self) -> list[int]:
        parent = self.stack.milter_pid
        if parent is None:
            return []
        try:
            return [int(pid) for pid in Path(f"/proc/{parent}/task/{parent}/children").read_text().split()]
        except FileNotFoundError:
            return []

    def wait_workers(self, timeout: float = 30.0) -> list[int]:
        """The workers, once one per CPU runs (the default count)."""
        wanted = os.cpu_count() or 1
        deadline = time.monotonic() + timeout
        while True:
            pids = self.worker_pids()
            if len(pids) == wanted:
                return pids
            if time.monotonic() > deadline:
                raise RuntimeError(f"{len(pids)} workers, not {wanted}:\n{self.stack.milter_log()[-2000:]}")
            time.sleep(0.05)

    # -- Postfix's milter timeouts -----------------------------------------------------------

    def set_postfix_milter_timeouts(self, command: float, content: float) -> None:
        self.postconf({"milter_command_timeout": f"{command:g}s", "milter_content_timeout": f"{content:g}s"})

    def postconf(self, settings: dict[str, str]) -> None:
        """Change main.cf as an admin would (postconf -e) and reload Postfix."""
        config = str(self.stack.config_dir)
        postconf, postfix = find_program("postconf", "postfix"), find_program("postfix", "postfix")
        subprocess.run([postconf, "-c", config, "-e", *(f"{k}={v}" for k, v in settings.items())], check=True,
                       capture_output=True)
        main_cf = self.stack.config_dir / "main.cf"
        settled = time.time() - 60  # Postfix stalls ~2 s on a main.cf younger than that (postfix_config.py)
        os.utime(main_cf, (settled, settled))
        subprocess.run([postfix, "-c", config, "reload"], check=True, capture_output=True)
        shown = subprocess.run([postconf, "-c", config, "-h", *settings], check=True, capture_output=True,
                               text=True).stdout.split()
        if shown != list(settings.values()):
            raise RuntimeError(f"main.cf says {shown} after postconf -e {settings}")

    def milter_log_since(self, offset: int) -> str:
        return self.stack.milter_log()[offset:]


QUEUE_ID = re.compile(rb"by " + re.escape(HOSTNAME.encode()) + rb" \(Postfix\) with \S+ id ([0-9A-Za-z]+)")
