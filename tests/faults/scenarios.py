"""The fault scenarios: each sends a burst, injects one fault mid-burst, clears it, and counts at the sink.

One job: run a scenario end to end and account for every message. The milter is started fresh
for each scenario (the shipped policy, every check on, the default worker count); the driver
delivers the burst; the fault is injected once a quarter of the burst is acknowledged; after it
is cleared the driver keeps retrying until every message is acknowledged or refused (or a
deadline passes); then Postfix's queue is flushed and every Message-ID counted at the sink, each
delivered copy checked for the milter's evidence (its headers and its `accept` summary line).
"""

from __future__ import annotations

import os
import re
import signal
import statistics
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from tests.faults.driver import Driver, SinkWatch, Tracked, reason
from tests.faults.proctree import Sample, Sampler, sample
from tests.faults.world import AUTHSERV_ID, QUEUE_ID, SCANNER_TIMEOUT, SITE_DOMAIN, World

SESSIONS = 20
LOAD_SESSIONS = 100
RETRY_WINDOW = 90.0  # seconds after the fault is cleared for the driver's queue to drain
DELIVERY_WINDOW = 60.0  # seconds after the flush for Postfix to hand everything to the sink
TRIGGER = 0.25  # the fault is injected once this share of the burst is acknowledged
SOAK_SECONDS = 3600.0
WARMUP = 20
POSTFIX_DEFAULT_TIMEOUTS = (30.0, 300.0)  # contrib/postfix/main.cf (Postfix's own defaults)
# The tight case: Postfix's limits low, the policy's budgets just inside them. At MAIL FROM SPF may
# wait dns.lifetime (5) + 2 s of the milter's own <= 8; at end of message the admission queue 1 +
# antivirus 6 + spam 6 + DKIM, ARC, DMARC 5 each + 2 = 30 <= 30 (check-policy refuses anything more).
TIGHT_POSTFIX = (8.0, 30.0)
TIGHT_DNS = (2.0, 5.0)
TIGHT_SCANNER = 6.0
TIGHT_QUEUE = 1.0  # site.queue_timeout, counted in the end-of-message budget too
SHIPPED_DNS = (5.0, 20.0)  # the shipped [dns] timeout and lifetime
SHIPPED_SCANNER = 60.0
# The Redis scenarios' burst: 80 messages take about 5 s here, less than the fault plus its
# clearing, and some 587 messages must still be on their way once the store is back. The scanners
# are not the fault there: they keep the shipped 60 s, or on a busy machine a scan's wait for one
# of spamd's 2 children would be charged to a 10 s spam.timeout and the copy go out unscanned.
STORE_BURST = 320

EVENT = re.compile(r"^\S+ (warning|error|critical) (?:conn=\S+ )?(\w+) ", re.MULTILINE)
SUMMARY = re.compile(r" info conn=\S+ summary (.*)$", re.MULTILINE)
FIELD = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S+)')
HEADER = re.compile(r"^([!-9;-~]+):[ \t]*(.*)$")
NOT_SCANNED = "Unknown, not scanned: the spam scanner was unavailable"
MILTER_TROUBLE = re.compile(r"warning: milter \S+: .*|milter-reject: .*")


# ---------------------------------------------------------------- evidence


def summaries(log: str) -> dict[str, dict[str, str]]:
    """The milter's summary lines by queue id."""
    found = {}
    for line in SUMMARY.finditer(log):
        fields = {key: value.strip('"') for key, value in FIELD.findall(line.group(1))}
        found[fields.get("queue_id", "-")] = fields
    return found


def headers(data: bytes) -> list[tuple[str, str]]:
    head = data.split(b"\r\n\r\n", 1)[0]
    unfolded = re.sub(rb"\r\n[ \t]+", b" ", head).decode(errors="replace")
    result = []
    for line in unfolded.split("\r\n"):
        match = HEADER.match(line)
        if match:
            result.append((match.group(1).lower(), match.group(2)))
    return result


def _queue_id(data: bytes) -> str:
    found = QUEUE_ID.search(data.split(b"\r\n\r\n", 1)[0])
    return found.group(1).decode() if found else ""


def evidence(data: bytes, door: str, lines: dict[str, dict[str, str]]) -> str:
    """'checked', 'not-spam-scanned' (accepted under spam's on_error=accept), or 'unchecked: why'."""
    queue_id = _queue_id(data)
    if not queue_id:
        return "unchecked: no Received header from our Postfix"
    fields = lines.get(queue_id)
    if fields is None:
        return "unchecked: no summary line for its queue id"
    if fields.get("verdict") != "accept":
        return f"unchecked: summary verdict={fields.get('verdict')}"
    found = headers(data)
    ours = [v for n, v in found if n == "authentication-results" and v.split(";")[0].strip() == AUTHSERV_ID]
    if len(ours) != 1:
        return f"unchecked: {len(ours)} Authentication-Results headers of {AUTHSERV_ID}"
    if door == "submission":
        signed = [v for n, v in found if n == "dkim-signature" and f"d={SITE_DOMAIN};" in v.replace(" ", "")]
        if "auth=pass smtp.auth=alice" not in ours[0] or not signed:
            return "unchecked: no auth=pass or no signature of the site"
        if not (fields.get("sender", "").startswith("pass") and fields.get("signing", "").startswith("pass")):
            return f"unchecked: sender={fields.get('sender')} signing={fields.get('signing')}"
        return "checked"
    # DMARC passes on an aligned SPF pass or an aligned DKIM pass (RFC 7489 §4.2): with DNS down at
    # MAIL FROM, SPF may be temperror and the message still pass DMARC on its DKIM signature.
    for check in ("spf", "dkim", "dmarc"):
        if f"{check}=" not in ours[0] or not fields.get(check):
            return f"unchecked: no {check} result"
    if "dmarc=pass" not in ours[0] or not fields["dmarc"].startswith("pass"):
        return f"unchecked: dmarc={fields['dmarc']}"
    if not any(f"{check}=pass" in ours[0] and fields[check].startswith("pass") for check in ("spf", "dkim")):
        return "unchecked: DMARC pass without an SPF or DKIM pass"
    if fields.get("antivirus") != "clean" or not fields.get("attachments", "").startswith("clean"):
        return f"unchecked: antivirus={fields.get('antivirus')} attachments={fields.get('attachments')}"
    status = [v for n, v in found if n == "x-spam-status"]
    if len(status) != 1:
        return f"unchecked: {len(status)} X-Spam-Status headers"
    spam = fields.get("spam", "")
    if status[0].startswith(("No,", "Yes,")) and spam.startswith(("ham", "spam")):
        return "checked"
    if status[0] == NOT_SCANNED and spam.startswith("error"):
        return "not-spam-scanned"
    return f"unchecked: X-Spam-Status {status[0]!r}, spam={spam}"


# ---------------------------------------------------------------- results


@dataclass
class Result:
    name: str
    sent: int = 0
    delivered: int = 0  # exactly once
    deferrals: int = 0  # 4xx replies and failed connections, every try counted
    deferred_messages: int = 0  # messages deferred at least once
    reasons: Counter[str] = field(default_factory=Counter)
    refused: int = 0
    refusals: Counter[str] = field(default_factory=Counter)
    lost: int = 0
    lost_acknowledged: int = 0  # of the lost: Postfix had said 250
    duplicated: int = 0
    unchecked: int = 0
    unchecked_why: Counter[str] = field(default_factory=Counter)
    not_spam_scanned: int = 0
    degraded: Counter[str] = field(default_factory=Counter)  # checked copies with an SPF or DKIM temperror
    p50: float = 0.0
    p99: float = 0.0
    longest_wait: float = 0.0
    longest_stage: str = ""
    seconds: float = 0.0
    events: Counter[str] = field(default_factory=Counter)  # milter log events worth showing
    postfix_warnings: Counter[str] = field(default_factory=Counter)
    tree: tuple[Sample, Sample, Sample] | None = None  # start, peak, end
    ratelimit: Counter[str] = field(default_factory=Counter)  # 587 summary lines by their ratelimit= value
    slow: Counter[str] = field(default_factory=Counter)  # SMTP commands that waited over 1 s, by stage
    slowest: dict[str, float] = field(default_factory=dict)  # the longest of those, by stage
    notes: list[str] = field(default_factory=list)


def _percentile(values: list[float], share: float) -> float:
    if not values:
        return 0.0
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[round(share * 100) - 1]


def door_values(log: str, listener: str, check: str) -> Counter[str]:
    """Every summary line of `listener` (deferred and refused transactions too) by `check`'s value."""
    values: Counter[str] = Counter()
    for line in SUMMARY.finditer(log):
        fields = {key: value.strip('"') for key, value in FIELD.findall(line.group(1))}
        if fields.get("listener") == listener:
            values[fields.get(check, "-")] += 1
    return values


def account(result: Result, tracked: list[Tracked], watch: SinkWatch, log: str) -> None:
    lines = summaries(log)
    latencies = []
    for item in tracked:
        message = item.message
        result.sent += 1
        deferrals = item.deferrals
        result.deferrals += len(deferrals)
        result.deferred_messages += bool(deferrals)
        result.reasons.update(reason(a) for a in deferrals)
        copies = watch.copies.get(message.msgid, [])
        if item.refused is not None:
            result.refused += 1
            result.refusals[reason(item.refused)] += 1
        if not copies:
            if item.refused is None:
                result.lost += 1
                result.lost_acknowledged += item.acknowledged is not None
            continue
        if len(copies) > 1:
            result.duplicated += 1
        else:
            result.delivered += 1
        for _, copy in copies:
            verdict = evidence(copy.data, message.door, lines)
            fields = lines.get(_queue_id(copy.data), {})
            for check in ("spf", "dkim"):
                if message.door == "smtp" and fields and not fields.get(check, "").startswith("pass"):
                    result.degraded[f"{check}={fields.get(check)} (DMARC passed on the other)"] += 1
            if verdict == "not-spam-scanned":
                result.not_spam_scanned += 1
            elif verdict != "checked":
                result.unchecked += 1
                result.unchecked_why[verdict] += 1
        if item.first_try is not None:
            latencies.append(copies[0][0] - item.first_try)
    result.p50 = _percentile(latencies, 0.50)
    result.p99 = _percentile(latencies, 0.99)
    result.events.update(f"{level} {name}" for level, name in EVENT.findall(log))
    result.ratelimit = door_values(log, "submission", "ratelimit")
    shown = ", ".join(f"{value} x{count}" for value, count in sorted(result.ratelimit.items()))
    result.notes.append(f"587 summary lines by ratelimit=: {shown or 'none'}")
    result.events["info reloaded"] += log.count(" info reloaded ")
    if not result.events["info reloaded"]:
        del result.events["info reloaded"]


# ---------------------------------------------------------------- running one scenario


class Run:
    """What a scenario's fault function gets: the world, the driver, and small helpers."""

    def __init__(self, world: World, driver: Driver, result: Result) -> None:
        self.world = world
        self.driver = driver
        self.result = result
        self.log_offset = len(world.stack.milter_log())

    def after(self, share: float = TRIGGER, timeout: float = 120.0) -> None:
        """Wait until this share of the burst is acknowledged by Postfix."""
        wanted = max(1, int(len(self.driver.tracked) * share))
        if not self.driver.wait(lambda: self.driver.acknowledged() >= wanted, timeout):
            raise RuntimeError(f"{self.result.name}: only {self.driver.acknowledged()} of {wanted} acknowledged")

    def hold(self, seconds: float) -> None:
        """Keep the fault in place while the driver goes on (the fault's duration, not a readiness wait)."""
        time.sleep(seconds)

    def log(self) -> str:
        return self.world.milter_log_since(self.log_offset)

    def wait_log(self, needle: str, count: int, timeout: float = 30.0) -> None:
        if not self.driver.wait(lambda: self.log().count(needle) >= count, timeout):
            raise RuntimeError(f"{needle!r} x{count} not in the milter log:\n{self.log()[-3000:]}")

    def note(self, text: str) -> None:
        self.result.notes.append(text)


Fault = Callable[[Run], None]


@dataclass(frozen=True)
class Scenario:
    name: str
    what: str
    fault: Fault | None = None
    messages: int = 80
    sessions: int = SESSIONS
    dns_front: bool = False  # the milter asks the Blackhole front (which forwards to nsd) instead of nsd
    tight: bool = False  # Postfix's milter timeouts low, the policy's budgets just inside them
    expect_reasons: tuple[str, ...] = ()  # a deferral reason containing each must appear
    expect_deferrals: bool = False  # False: any deferral is unexpected
    expect_not_scanned: bool = False
    expect_events: tuple[str, ...] = ()  # warning/error events of the milter log this fault causes
    load: bool = False
    # The rate-limit store (world.STORES): "sqlite", the stack's private file (the shipped kind);
    # "redis", the world's Redis, emptied first; "sqlite-unwritable", a file in a root-owned directory.
    store: str = "sqlite"
    scanner_timeout: float = SCANNER_TIMEOUT  # antivirus.timeout and spam.timeout
    expect_ratelimit: tuple[str, ...] = ()  # if set: the 587 summaries' ratelimit= values, each seen, no other


@dataclass(frozen=True)
class Options:
    long: bool = False  # 4x the bursts; the load repeated for soak_seconds
    soak_seconds: float = SOAK_SECONDS
    load_scanner_timeout: float = SHIPPED_SCANNER  # the load's antivirus.timeout and spam.timeout


def run_scenario(world: World, scenario: Scenario, options: Options = Options()) -> Result:
    result = Result(scenario.name)
    started = time.monotonic()
    if scenario.tight:
        world.set_postfix_milter_timeouts(*TIGHT_POSTFIX)
        overrides = world.overrides(dns_front=scenario.dns_front, dns_timeout=TIGHT_DNS[0],
                                    dns_lifetime=TIGHT_DNS[1], scanner_timeout=TIGHT_SCANNER,
                                    postfix_timeouts=TIGHT_POSTFIX, queue_timeout=TIGHT_QUEUE)
    elif scenario.load:
        # The shipped budgets: under load a scan waits its turn in the scanner's queue (see README).
        overrides = world.overrides(dns_timeout=SHIPPED_DNS[0], dns_lifetime=SHIPPED_DNS[1],
                                    scanner_timeout=options.load_scanner_timeout)
    else:
        overrides = world.overrides(dns_front=scenario.dns_front, scanner_timeout=scenario.scanner_timeout)
    overrides += world.store_override(scenario.store)
    maillog_offset = len(world.stack.maillog())
    offset = len(world.stack.milter_log())
    try:
        world.start_milter(overrides)
        if scenario.load:
            _run_load(world, scenario, result, options)
        else:
            count = scenario.messages * (4 if options.long else 1)
            _run_burst(world, scenario, result, world.messages(scenario.name, count), offset)
    finally:
        if world.stack.milter_running:
            code = world.stop_milter()
            if code != 0:
                result.notes.append(f"milter exited {code} at the end")
        if scenario.tight:
            world.set_postfix_milter_timeouts(*POSTFIX_DEFAULT_TIMEOUTS)
    for line in MILTER_TROUBLE.findall(world.stack.maillog()[maillog_offset:]):
        result.postfix_warnings[re.sub(r"[0-9A-F]{8,}|\[[0-9.]+\]|<[^>]*>|\d+", "#", line)[:120]] += 1
    result.seconds = time.monotonic() - started
    return result


def _drain(world: World, driver: Driver, watch: SinkWatch, result: Result) -> None:
    """After the fault: retries until all is acknowledged or refused, then flush and wait for the sink."""
    driver.finish(RETRY_WINDOW)
    world.stack.flush()
    acknowledged = [t.message.msgid for t in driver.tracked if t.acknowledged is not None]
    if not driver.wait(lambda: all(watch.count(m) for m in acknowledged) and not world.stack.queue(),
                       DELIVERY_WINDOW):
        result.notes.append(f"queue not empty after {DELIVERY_WINDOW:.0f} s: {len(world.stack.queue())}")
    time.sleep(0.5)  # a duplicate would arrive now, if ever: the queue is empty, the sink is all there is
    watch.stop()
    result.longest_wait, result.longest_stage = driver.longest_wait, driver.longest_stage
    _note_waits(result, driver)


def _run_burst(world: World, scenario: Scenario, result: Result, messages: list, offset: int) -> None:
    watch = SinkWatch(world.stack).start()
    driver = Driver(world.stack, messages, scenario.sessions).start()
    run = Run(world, driver, result)
    run.log_offset = offset
    try:
        if scenario.fault is not None:
            scenario.fault(run)
    finally:
        _drain(world, driver, watch, result)
    account(result, driver.tracked, watch, world.milter_log_since(offset))


def _run_load(world: World, scenario: Scenario, result: Result, options: Options) -> None:
    """Rounds of `messages` over LOAD_SESSIONS sessions: one round, or rounds for an hour (--long)."""
    offset = len(world.stack.milter_log())
    parent = world.stack.milter_pid
    assert parent is not None
    watch = SinkWatch(world.stack).start()
    # A warm-up round first: the workers' threads, DNS cache and spamd connections that exist once
    # mail has flowed are not what "start" should be compared with.
    warmup = Driver(world.stack, world.messages(f"{scenario.name}-warmup", WARMUP), SESSIONS).start()
    warmup.finish(RETRY_WINDOW)
    tracked: list[Tracked] = list(warmup.tracked)
    if not _wait(lambda: all(watch.count(t.message.msgid) for t in tracked) and not world.stack.queue(), 30):
        result.notes.append("warm-up not delivered within 30 s")
    sampler = Sampler(parent)
    deadline = time.monotonic() + options.soak_seconds
    rounds = 0
    longest = (warmup.longest_wait, warmup.longest_stage)
    while True:
        driver = Driver(world.stack, world.messages(scenario.name, scenario.messages), scenario.sessions).start()
        driver.finish(RETRY_WINDOW + 600.0)
        tracked += driver.tracked
        longest = max(longest, (driver.longest_wait, driver.longest_stage))
        _note_waits(result, driver)
        rounds += 1
        if options.long and rounds % 10 == 1:  # a plateau or a leak: the tree every 10 rounds
            result.notes.append(f"after round {rounds}: {sample(parent)}")
        if not options.long or time.monotonic() > deadline:
            break
    world.stack.flush()
    acknowledged = [t.message.msgid for t in tracked if t.acknowledged is not None]
    if not _wait(lambda: all(watch.count(m) for m in acknowledged) and not world.stack.queue(), DELIVERY_WINDOW):
        result.notes.append("queue not empty after the load")
    time.sleep(2.0)  # let the last sessions close (Postfix's smtpd keeps its milter connection per session)
    watch.stop()
    end = sampler.stop()
    result.tree = (sampler.start, sampler.peak, end)
    result.longest_wait, result.longest_stage = longest
    if options.long:
        result.notes.append(f"{rounds} rounds of {scenario.messages} after a warm-up of {WARMUP}")
    account(result, tracked, watch, world.milter_log_since(offset))


def _note_waits(result: Result, driver: Driver) -> None:
    result.slow.update(driver.waits)
    for stage, waited in driver.longest_by_stage.items():
        result.slowest[stage] = max(waited, result.slowest.get(stage, 0.0))


def _wait(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


# ---------------------------------------------------------------- the faults


def kill_worker(run: Run) -> None:
    run.after()
    before = run.world.worker_pids()
    os.kill(before[0], signal.SIGKILL)
    if not run.driver.wait(lambda: len(after := run.world.worker_pids()) == len(before) and before[0] not in after,
                           30):
        raise RuntimeError(f"worker {before[0]} not replaced:\n{run.log()[-2000:]}")


def kill_milter(run: Run) -> None:
    run.after()
    workers = run.world.worker_pids()
    run.world.stack.signal_milter(signal.SIGKILL)
    if not run.driver.wait(lambda: not any(_alive(pid) for pid in workers), 30):
        raise RuntimeError("workers outlived their killed parent by 30 s")
    run.hold(3.0)  # Postfix answers milter_default_action (tempfail) meanwhile
    run.world.restart_milter()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


def stop_clamd(run: Run) -> None:
    run.after()
    run.world.clamd.stop()
    run.hold(6.0)
    run.world.clamd.restart()


def _pause(pids: list[int], sig: int) -> None:
    for pid in pids:
        os.kill(pid, sig)


def hang_clamd(run: Run) -> None:
    run.after()
    pids = run.world.clamd.pids()
    _pause(pids, signal.SIGSTOP)  # accepts (the kernel's backlog), never answers
    try:
        run.hold(14.0)  # longer than antivirus.timeout (10 s)
    finally:
        _pause(pids, signal.SIGCONT)


def stop_spamd(run: Run) -> None:
    run.after()
    run.world.spamd.stop()
    run.hold(5.0)
    run.world.spamd.restart()


def hang_spamd(run: Run) -> None:
    run.after()
    pids = run.world.spamd.pids()
    _pause(pids, signal.SIGSTOP)
    try:
        run.hold(14.0)  # longer than spam.timeout (10 s)
    finally:
        _pause(pids, signal.SIGCONT)


def stop_dns(run: Run) -> None:
    run.after()
    run.world.dns.stop_server()
    run.hold(8.0)
    run.world.dns.start_server()


def blackhole_dns(run: Run) -> None:
    run.after()
    run.world.dns.silent_suffixes.append(".")  # every name, the root's SOA probe included
    try:
        run.hold(10.0)
    finally:
        run.world.dns.silent_suffixes.remove(".")


def tight_timeouts(run: Run) -> None:
    run.after()
    pids = run.world.clamd.pids()
    run.world.dns.silent_suffixes.append(".")
    _pause(pids, signal.SIGSTOP)
    try:
        run.hold(15.0)
    finally:
        _pause(pids, signal.SIGCONT)
        run.world.dns.silent_suffixes.remove(".")


def reload_storm(run: Run) -> None:
    run.after(0.2)
    for _ in range(20):
        run.world.stack.signal_milter(signal.SIGUSR1)
        time.sleep(0.05)
    run.wait_log(" info reloaded ", 1)


def broken_policy(run: Run) -> None:
    run.after(0.2)
    broken = run.world.policy_dir / "60-broken.toml"
    broken.write_text("[site\nauthserv_id = \"broken\"\n")  # a TOML syntax error
    try:
        run.world.stack.signal_milter(signal.SIGUSR1)
        run.wait_log(" reload_failed ", 1)
        before = run.driver.acknowledged()
        run.hold(3.0)
        run.note(f"{run.driver.acknowledged() - before} acknowledged in the 3 s under the broken file")
    finally:
        broken.unlink()
    reloaded = run.log().count(" info reloaded ")
    run.world.stack.signal_milter(signal.SIGUSR1)
    run.wait_log(" info reloaded ", reloaded + 1)


def _submissions_left(run: Run) -> int:
    return sum(1 for t in run.driver.tracked if t.message.door == "submission" and not t.final)


def unwritable_store(run: Run) -> None:
    run.after()
    run.wait_log(" store_failed ", 1)  # at least one 587 message went through the failing store
    run.world.make_store_writable()
    run.note(f"directory given to the milter's user with {_submissions_left(run)} 587 messages left")


def stop_redis(run: Run) -> None:
    run.after()
    run.world.redis.stop()
    run.hold(5.0)
    run.world.redis.start()  # on its port, empty (no persistence)
    run.note(f"Redis back with {_submissions_left(run)} 587 messages left")


def hang_redis(run: Run) -> None:
    run.after()
    run.world.redis.pause()  # connections are accepted by the kernel, nothing answers
    try:
        run.hold(6.0)  # three times state.timeout (2 s)
    finally:
        run.world.redis.resume()
    run.note(f"Redis resumed with {_submissions_left(run)} 587 messages left")


SCENARIOS: tuple[Scenario, ...] = (
    # Scenarios whose fault is not a scanner keep the shipped scanner timeouts: on a loaded
    # two-core machine a scan can take over 10 s (a copy then counts as "not spam-scanned"), and
    # the fault under test is something else.
    Scenario("baseline", "no fault", expect_ratelimit=("pass",), scanner_timeout=SHIPPED_SCANNER),
    Scenario("worker-kill", "one worker SIGKILLed mid-burst; the parent replaces it", kill_worker,
             scanner_timeout=SHIPPED_SCANNER, expect_reasons=("Service unavailable",), expect_deferrals=True,
             expect_events=("error worker_exited",)),
    Scenario("milter-kill", "parent and workers SIGKILLed mid-burst, restarted 3 s later", kill_milter,
             scanner_timeout=SHIPPED_SCANNER, expect_reasons=("Service unavailable",), expect_deferrals=True),
    Scenario("clamd-stop", "clamd stopped for 6 s, then started again", stop_clamd,
             expect_reasons=("scanning this message for viruses",), expect_deferrals=True),
    Scenario("clamd-hang", "clamd SIGSTOPped for 14 s (accepts, never answers), then SIGCONT", hang_clamd,
             expect_reasons=("scanning this message for viruses",), expect_deferrals=True),
    Scenario("spamd-stop", "spamd stopped for 5 s, then started again on its port", stop_spamd,
             expect_not_scanned=True),
    Scenario("spamd-hang", "spamd SIGSTOPped for 14 s, then SIGCONT", hang_spamd, expect_not_scanned=True),
    Scenario("dns-stop", "nsd stopped for 8 s (the milter asks it directly), then started again", stop_dns,
             scanner_timeout=SHIPPED_SCANNER, expect_reasons=("DNS",), expect_deferrals=True),
    Scenario("dns-blackhole", "every DNS query swallowed for 10 s by the front the milter asks", blackhole_dns,
             scanner_timeout=SHIPPED_SCANNER, dns_front=True, expect_reasons=("DNS",), expect_deferrals=True),
    Scenario("tight-timeouts", "Postfix milter timeouts 8 s/30 s, budgets just inside; clamd hung and DNS "
             "black-holed together for 15 s", tight_timeouts, dns_front=True, tight=True, expect_deferrals=True),
    Scenario("reload-storm", "20 SIGUSR1 to the parent during the burst", reload_storm,
             scanner_timeout=SHIPPED_SCANNER),
    Scenario("broken-policy", "a TOML syntax error written into the policy and reloaded under load, then fixed",
             broken_policy, scanner_timeout=SHIPPED_SCANNER,
             expect_events=("error reload_error", "error reload_failed")),
    Scenario("sqlite-unwritable", "the SQLite store's directory root's (0755, no file): every store operation "
             "fails; mid-burst it is given to the milter's user", unwritable_store, store="sqlite-unwritable",
             scanner_timeout=SHIPPED_SCANNER,
             # store_unusable: said at start, before the first message
             expect_events=("warning store_unusable", "warning store_failed"),
             expect_ratelimit=("temperror:store", "pass")),
    Scenario("redis-stop", "the Redis store stopped for 5 s, then started again on its port", stop_redis,
             messages=STORE_BURST, store="redis", scanner_timeout=SHIPPED_SCANNER,
             expect_events=("warning store_failed",), expect_ratelimit=("temperror:store", "pass")),
    Scenario("redis-hang", "the Redis store SIGSTOPped for 6 s, then SIGCONT", hang_redis, messages=STORE_BURST,
             store="redis", scanner_timeout=SHIPPED_SCANNER, expect_events=("warning store_failed",),
             expect_ratelimit=("temperror:store", "pass")),
    Scenario("load", f"{LOAD_SESSIONS} concurrent sessions, no fault (--long: rounds for an hour)",
             messages=500, sessions=LOAD_SESSIONS, load=True, expect_ratelimit=("pass",)),
)
BY_NAME = {s.name: s for s in SCENARIOS}
