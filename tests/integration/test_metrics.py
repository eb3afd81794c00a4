"""Metrics end to end: two workers behind the real Postfix, /metrics scraped over HTTP.

What is shown: the counters of one scrape are the sum over both workers and match the messages
sent (accepted and refused, by listener, traffic class, verdict, check and reason); the scrape
parses as OpenMetrics and as the classic text format; a worker killed with SIGKILL keeps the
counts it made, and its live gauges (the sessions it held) go; a killed exporter is replaced;
the Grafana dashboard queries only metrics a scrape has; the private directory goes at exit.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import smtplib
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics_families
from prometheus_client.parser import text_string_to_metric_families as text_families

from tests.conftest import DEFAULT_POLICY, OFFLINE, REPO
from tests.integration.stack import MailStack, _free_ports, transaction, unverified_tls_context

pytestmark = pytest.mark.integration

LIMIT = 2000  # site.max_message_size: a bigger message gets 552 5.3.4 from sizelimit
ACCEPTED, REFUSED = 14, 6
OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"
SUMMARY = re.compile(r" info conn=(\d+)\.\d+ summary ")
SELECTOR = "m1"
DASHBOARD = REPO / "contrib" / "grafana" / "policy-milter.json"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MailStack]:
    with MailStack(tmp_path_factory.mktemp("stack")) as running:
        yield running


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("policy")
    shutil.copy(DEFAULT_POLICY / "00-default.toml", directory / "00-default.toml")
    return directory


@pytest.fixture
def port() -> int:
    return _free_ports(1)[0]


@pytest.fixture
def milter(stack: MailStack, policy_dir: Path, port: int) -> Iterator[Callable[..., None]]:
    def start(*extra: str) -> None:
        overrides = [arg for override in (*OFFLINE, f"site.max_message_size={LIMIT}") for arg in ("-o", override)]
        stack.start_milter([sys.executable, "-m", "policymilter", "run", "--policy", str(policy_dir),
                            "--socket", f"unix:{stack.milter_socket}", "--log-level", "debug",
                            "--metrics", f"127.0.0.1:{port}", *overrides, *extra])

    yield start
    if stack.milter_running:
        assert stack.stop_milter(signal.SIGTERM) == 0


def this_run(stack: MailStack) -> str:
    return stack.milter_log().rsplit("\n=== ", 1)[-1]


def wait_for(what: str, ready: Callable[[], bool], stack: MailStack, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s\n{this_run(stack)[-3000:]}"
        time.sleep(0.05)


def scrape(port: int, accept: str | None = None) -> str:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/metrics", headers={"Accept": accept} if accept else {})
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.read().decode()


def samples(port: int) -> Samples:
    """One scrape, OpenMetrics, parsed; (sample name, labels) -> value."""
    found: Samples = {}
    for family in openmetrics_families(scrape(port, OPENMETRICS)):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def total(found: Samples, name: str, **labels: str) -> float:
    """The sum of the samples of `name` whose labels include `labels`."""
    wanted = set(labels.items())
    return sum(value for (sample, have), value in found.items() if sample == name and wanted <= have)


def exporter_pid(stack: MailStack) -> int:
    wait_for("metrics_serving", lambda: " metrics_serving " in this_run(stack), stack)
    return int(re.findall(r" metrics_serving .*?pid=(\d+)", this_run(stack))[-1])


def worker_pids(stack: MailStack) -> dict[str, int]:
    """worker number -> pid of the workers started in this run (the latest of each number)."""
    return {number: int(pid) for pid, number in re.findall(r" worker_started pid=(\d+) worker=(\d+)", this_run(stack))}


def alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists() and "zombie" not in Path(f"/proc/{pid}/status").read_text()


def message(size: int) -> tuple[str, str, bytes]:
    sender, rcpt = f"m-{uuid.uuid4().hex[:10]}@example.net", f"user-{uuid.uuid4().hex[:8]}@example.test"
    raw = (f"From: {sender}\r\nTo: {rcpt}\r\nSubject: metrics\r\nMessage-ID: <{uuid.uuid4().hex}@example.net>"
           f"\r\n\r\nhello\r\n{'x' * size}\r\n").encode()
    return sender, rcpt, raw


def send_one(stack: MailStack, size: int) -> int:
    sender, rcpt, raw = message(size)
    with smtplib.SMTP("127.0.0.1", stack.ports["smtp"], timeout=60) as client:
        client.ehlo("mail.example.net")
        return transaction(client, sender, rcpt, raw)[0]


def send(stack: MailStack, accepted: int, refused: int) -> list[int]:
    """Concurrent sessions (so both workers get some), one message each: the DATA replies."""
    sizes = [0] * accepted + [2 * LIMIT] * refused
    with ThreadPoolExecutor(len(sizes)) as pool:
        return list(pool.map(lambda size: send_one(stack, size), sizes))


def sockets_of(pid: int) -> int:
    fd = Path(f"/proc/{pid}/fd")
    count = 0
    for entry in fd.iterdir():
        try:
            count += entry.readlink().name.startswith("socket:")
        except OSError:
            continue
    return count


def test_counters_match_the_mail_sent_summed_over_two_workers(stack, milter, port):
    milter("--workers", "2")
    exporter_pid(stack)
    wait_for("two workers", lambda: len(worker_pids(stack)) == 2, stack)
    codes = send(stack, ACCEPTED, REFUSED)
    assert sorted(codes) == [250] * ACCEPTED + [552] * REFUSED
    wait_for("summary lines", lambda: len(SUMMARY.findall(this_run(stack))) == ACCEPTED + REFUSED, stack)
    by_worker = {number: SUMMARY.findall(this_run(stack)).count(number) for number in ("1", "2")}
    assert min(by_worker.values()) > 0, by_worker  # 20 concurrent sessions: both workers took some

    found = samples(port)
    smtp = {"listener": "smtp", "traffic": "unauthenticated"}
    assert total(found, "policy_milter_messages_total", verdict="accept", **smtp) == ACCEPTED
    assert total(found, "policy_milter_messages_total", verdict="reject", **smtp) == REFUSED
    assert total(found, "policy_milter_messages_total") == ACCEPTED + REFUSED
    assert total(found, "policy_milter_refused_messages_total", decided_by="sizelimit", reply_class="5xx") == REFUSED
    assert total(found, "policy_milter_refused_messages_total") == REFUSED
    # sizelimit runs twice per message (MAIL FROM's SIZE=, then the content); each result's
    # latency is observed once.
    assert total(found, "policy_milter_check_results_total", check="sizelimit") == 2 * (ACCEPTED + REFUSED)
    assert total(found, "policy_milter_check_results_total", check="sizelimit", outcome="blocked") == REFUSED
    for check in {dict(labels)["check"] for name, labels in found if name == "policy_milter_check_results_total"}:
        count = total(found, "policy_milter_check_duration_seconds_count", check=check)
        assert count == total(found, "policy_milter_check_results_total", check=check), check
        assert total(found, "policy_milter_check_duration_seconds_bucket", check=check, le="+Inf") == count
    assert total(found, "policy_milter_workers_alive") == 2
    assert total(found, "policy_milter_policy_info") == 1  # one hash at a time
    assert total(found, "policy_milter_policy_generation") == 1
    assert total(found, "policy_milter_dns_cache_lookups_total") == 0  # the DNS checks are off
    wait_for("sessions closed", lambda: total(samples(port), "policy_milter_sessions_in_progress") == 0, stack)
    assert total(samples(port), "policy_milter_transactions_in_progress") == 0

    # The classic text format (what Prometheus asks for without OpenMetrics) parses and agrees.
    classic = {(s.name, frozenset(s.labels.items())): s.value
               for family in text_families(scrape(port)) for s in family.samples}
    assert total(classic, "policy_milter_messages_total") == ACCEPTED + REFUSED

    # A reload that works and one that does not: counted by the parent, the hash follows.
    hash_before = {dict(labels)["hash"] for name, labels in found if name == "policy_milter_policy_info"}
    stack.signal_milter(signal.SIGUSR1)
    wait_for("reload counted", lambda: total(samples(port), "policy_milter_policy_reloads_total",
                                             result="success") == 1, stack)
    after = samples(port)
    assert total(after, "policy_milter_policy_generation") == 2
    assert {dict(labels)["hash"] for name, labels in after if name == "policy_milter_policy_info"} == hash_before


def test_a_killed_worker_keeps_its_counts_and_its_gauges_go(stack, milter, port):
    milter("--workers", "2")
    exporter_pid(stack)
    wait_for("two workers", lambda: len(worker_pids(stack)) == 2, stack)
    assert send(stack, ACCEPTED, REFUSED).count(250) == ACCEPTED
    wait_for("summary lines", lambda: len(SUMMARY.findall(this_run(stack))) == ACCEPTED + REFUSED, stack)
    workers = worker_pids(stack)
    idle = {number: sockets_of(pid) for number, pid in workers.items()}

    # Sessions held open: each is a milter connection to one worker, counted in its gauge.
    held = 6
    clients = []
    try:
        for _ in range(held):
            client = smtplib.SMTP("127.0.0.1", stack.ports["smtp"], timeout=60)
            client.ehlo("mail.example.net")
            clients.append(client)
            # Postfix opens its milter session on the first transaction, not at the greeting.
            assert client.mail(f"held-{uuid.uuid4().hex[:8]}@example.net")[0] == 250
        def open_everywhere() -> bool:
            found = samples(port)
            return (total(found, "policy_milter_sessions_in_progress"),
                    total(found, "policy_milter_transactions_in_progress")) == (held, held)

        wait_for("sessions and transactions open", open_everywhere, stack)
        holding = {number: sockets_of(pid) - idle[number] for number, pid in workers.items()}
        victim = max(holding, key=lambda number: holding[number])  # holds at least one session
        assert holding[victim] > 0, holding
        made_by_victim = SUMMARY.findall(this_run(stack)).count(victim)
        assert made_by_victim > 0
        before = samples(port)

        restarts = this_run(stack).count(" worker_exited ")
        os.kill(workers[victim], signal.SIGKILL)
        wait_for("worker_exited", lambda: this_run(stack).count(" worker_exited ") == restarts + 1, stack)
        wait_for("the replacement", lambda: worker_pids(stack)[victim] != workers[victim], stack)
        after = samples(port)
        # What the dead worker counted is still there: its file stays, only live gauges go.
        for name in ("policy_milter_messages_total", "policy_milter_check_results_total",
                     "policy_milter_check_duration_seconds_count", "policy_milter_refused_messages_total"):
            assert total(after, name) == total(before, name), name
        assert total(after, "policy_milter_messages_total") == ACCEPTED + REFUSED
        assert total(after, "policy_milter_refused_messages_total") == REFUSED
        # The sessions the dead worker held are no longer counted; the survivor's still are.
        assert total(after, "policy_milter_sessions_in_progress") == held - holding[victim]
        assert total(after, "policy_milter_transactions_in_progress") == held - holding[victim]
        assert total(after, "policy_milter_worker_restarts_total", reason="exited") == 1
        wait_for("two workers alive", lambda: total(samples(port), "policy_milter_workers_alive") == 2, stack)
    finally:
        for client in clients:
            try:
                client.quit()
            except (smtplib.SMTPException, OSError):
                client.close()
    wait_for("sessions closed", lambda: total(samples(port), "policy_milter_sessions_in_progress") == 0, stack)


def test_a_killed_exporter_is_replaced_and_nothing_is_lost(stack, milter, port):
    milter("--workers", "2")
    first = exporter_pid(stack)
    assert send(stack, 3, 1).count(250) == 3
    wait_for("summary lines", lambda: len(SUMMARY.findall(this_run(stack))) == 4, stack)
    assert total(samples(port), "policy_milter_messages_total") == 4
    os.kill(first, signal.SIGKILL)
    wait_for("a new exporter", lambda: exporter_pid(stack) != first, stack)
    wait_for("scrape answers", lambda: _answers(port), stack)
    assert total(samples(port), "policy_milter_messages_total") == 4
    directory = _private_directory(stack)
    assert directory.is_dir() and directory.stat().st_mode & 0o077 == 0
    assert stack.stop_milter(signal.SIGTERM) == 0
    assert not directory.exists()  # removed at exit
    assert not alive(exporter_pid(stack))


def _answers(port: int) -> bool:
    try:
        scrape(port)
    except OSError:
        return False
    return True


def _private_directory(stack: MailStack) -> Path:
    """The exporter's PROMETHEUS_MULTIPROC_DIR, as the parent logged it."""
    return Path(re.findall(r" metrics_serving .*?directory=(\S+)", this_run(stack))[-1])


def keygen(directory: Path) -> Path:
    """The real `policy-milter dkim-keygen` (run as root, it makes the file the milter's user's)."""
    subprocess.run([sys.executable, "-m", "policymilter", "dkim-keygen", "--domain", "example.org", "--selector",
                    SELECTOR, "--out", str(directory)], capture_output=True, text=True, check=True)
    return directory / f"example.org.{SELECTOR}.key"


def submit(stack: MailStack) -> int:
    """One message from alice@example.org, authenticated on the submission port."""
    raw = (f"From: alice@example.org\r\nTo: friend@elsewhere.test\r\nSubject: signed\r\n"
           f"Message-ID: <{uuid.uuid4().hex}@example.org>\r\n\r\nHello.\r\n").encode()
    with smtplib.SMTP("127.0.0.1", stack.ports["submission"], timeout=30) as client:
        client.starttls(context=unverified_tls_context())
        client.user, client.password = "alice", stack.users["alice"]
        client.auth("PLAIN", client.auth_plain)
        return transaction(client, "alice@example.org", "friend@elsewhere.test", raw)[0]


def test_signatures_and_the_dashboard_queries_only_metrics_a_scrape_has(stack, milter, port, tmp_path):
    key_file = keygen(tmp_path)
    milter("--workers", "2", "-o", 'site.domains=["example.org"]',
           "-o", f'signing.keys={{"example.org" = [{{selector = "{SELECTOR}", key_file = "{key_file}"}}]}}')
    exporter_pid(stack)
    assert [submit(stack) for _ in range(2)] == [250, 250]
    assert send(stack, 2, 1).count(250) == 2
    wait_for("summary lines", lambda: len(SUMMARY.findall(this_run(stack))) == 5, stack)
    found = samples(port)
    assert total(found, "policy_milter_dkim_signatures_total", domain="example.org", selector=SELECTOR) == 2
    assert total(found, "policy_milter_messages_total", listener="submission", traffic="authenticated",
                 verdict="accept") == 2
    assert total(found, "policy_milter_check_results_total", check="signing", outcome="pass") == 2

    names = {name for name, _ in found}
    dashboard = json.loads(DASHBOARD.read_text())
    queried = {metric for panel in dashboard["panels"] for target in panel["targets"]
               for metric in re.findall(r"\bpolicy_milter_[a-z_]+", target["expr"])}
    queried |= set(re.findall(r"\bpolicy_milter_[a-z_]+", json.dumps(dashboard["templating"])))
    assert len(queried) >= 15
    assert queried - names == set()
