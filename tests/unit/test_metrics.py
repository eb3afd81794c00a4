"""metrics.py: its bounded labels, off by default, and the multi-process sum in a fresh interpreter.

prometheus_client picks its multi-process mode when it is imported, so what needs it runs in a
new Python process (the way the daemon's parent runs it: directory first, then the import)."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics_families
from prometheus_client.parser import text_string_to_metric_families as text_families

from policymilter import metrics
from policymilter.metrics import Listen, name_label, reply_class
from policymilter.outcome import Disposition, SmtpReply, Verdict
from policymilter.policy import PolicyError, load_policy
from tests.conftest import DEFAULT_POLICY, REPO


@pytest.mark.parametrize(("text", "host", "port"), [
    ("127.0.0.1:9101", "127.0.0.1", 9101),
    ("localhost:80", "localhost", 80),
    ("[::1]:9101", "::1", 9101),
])
def test_listen_parses(text, host, port):
    listen = Listen.parse(text)
    assert (listen.host, listen.port) == (host, port)
    assert str(listen) == text


@pytest.mark.parametrize("text", ["9101", "127.0.0.1", "127.0.0.1:0", "127.0.0.1:65536", ":9101", "host:port",
                                  "[]:9101"])
def test_listen_refuses(text):
    with pytest.raises(ValueError, match="expected HOST:PORT"):
        Listen.parse(text)


@pytest.mark.parametrize(("verdict", "expected"), [
    (Verdict(Disposition.REJECT, SmtpReply("552", "5.3.4", "too big")), "5xx"),
    (Verdict(Disposition.TEMPFAIL, SmtpReply("451", "4.3.2", "busy")), "4xx"),
    (Verdict(Disposition.REJECT), "5xx"),
    (Verdict(Disposition.TEMPFAIL), "4xx"),
])
def test_reply_class(verdict, expected):
    assert reply_class(verdict) == expected


@pytest.mark.parametrize(("value", "expected"), [
    ("sizelimit", "sizelimit"), ("milter", "milter"), ("free text: 4198 > 2000 bytes", "other"),
    ("alice@example.org", "other"), ("192.0.2.1", "other"), ("x" * 40, "other"),
])
def test_labels_take_names_only(value, expected):
    assert name_label(value) == expected


def test_the_policy_key_is_checked(tmp_path):
    assert load_policy(DEFAULT_POLICY).policy.metrics.listen == ""  # off by default
    assert load_policy(DEFAULT_POLICY, ['metrics.listen="127.0.0.1:9101"']).policy.metrics.listen == "127.0.0.1:9101"
    with pytest.raises(PolicyError, match=r"metrics\.listen"):
        load_policy(DEFAULT_POLICY, ['metrics.listen="9101"'])


def run_python(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_off_nothing_imports_prometheus_client():
    out = run_python("""
        import sys
        from policymilter import cli, daemon, metrics, service
        from policymilter.outcome import Verdict
        metrics.message_done("smtp", False, Verdict(), ())
        metrics.session_opened(); metrics.dns_cache(hit=True); metrics.worker_exited(1, recycled=False)
        print("prometheus_client" in sys.modules)
    """)
    assert out.strip() == "False"


def test_workers_sum_and_a_dead_workers_live_gauges_go():
    """Two forked "workers" count; one dies with a session open: its counts stay, its gauge goes."""
    out = run_python("""
        import json, os, signal, time, urllib.request
        from policymilter import metrics
        from policymilter.outcome import CheckResult, Disposition, Outcome, SmtpReply, Verdict
        import socket
        sock = socket.socket(); sock.bind(("127.0.0.1", 0)); sock.listen(8)
        exporter = metrics.enable(metrics.Listen("127.0.0.1", sock.getsockname()[1]), sock)
        refused = Verdict(Disposition.REJECT, SmtpReply("552", "5.3.4", "too big"), decided_by="sizelimit")
        results = (CheckResult("sizelimit", Outcome.PASS, elapsed_ms=0.3),)
        pids = []
        for number, (accepted, rejected) in enumerate([(3, 1), (2, 2)]):
            pid = os.fork()
            if pid == 0:
                for _ in range(accepted):
                    metrics.message_done("smtp", False, Verdict(), results)
                for _ in range(rejected):
                    metrics.message_done("smtp", False, refused, results)
                metrics.session_opened()
                if number == 0:
                    os.kill(os.getpid(), signal.SIGKILL)  # dies with its session open
                os._exit(0)
            pids.append(pid)
        for pid in pids:
            os.waitpid(pid, 0)
        metrics.worker_exited(pids[0], recycled=False)
        exporter.start()
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/metrics"
        for _ in range(200):
            try:
                accept = {"Accept": "application/openmetrics-text; version=1.0.0"}
                with urllib.request.urlopen(urllib.request.Request(url, headers=accept)) as r:
                    om = r.read().decode()
                with urllib.request.urlopen(url) as r:
                    text = r.read().decode()
                break
            except OSError:
                time.sleep(0.05)
        directory = exporter.directory
        exporter.stop()
        print(json.dumps({"om": om, "text": text, "gone": not directory.exists()}))
    """)
    scraped = json.loads(out)
    assert scraped["gone"]

    def values(families):
        return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families for s in f.samples}

    for found in (values(openmetrics_families(scraped["om"])), values(text_families(scraped["text"]))):
        smtp = (("listener", "smtp"), ("traffic", "unauthenticated"))
        assert found[("policy_milter_messages_total", (*smtp, ("verdict", "accept")))] == 5
        assert found[("policy_milter_messages_total", (*smtp, ("verdict", "reject")))] == 3
        refused = ("policy_milter_refused_messages_total", (("decided_by", "sizelimit"), ("reply_class", "5xx")))
        assert found[refused] == 3
        assert found[("policy_milter_check_duration_seconds_count", (("check", "sizelimit"),))] == 8
        assert found[("policy_milter_check_results_total", (("check", "sizelimit"), ("outcome", "pass")))] == 8
        assert found[("policy_milter_sessions_in_progress", ())] == 1  # the survivor's only
        assert found[("policy_milter_worker_restarts_total", (("reason", "exited"),))] == 1


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_idle_connections_to_the_exporter_neither_pile_up_nor_spin_it(tmp_path):
    """Attack review: anyone who reaches the port opened connections and sent nothing; each held
    a thread for ever, and once out of descriptors accept() failed with EMFILE while the socket
    stayed readable: serve_forever spun a CPU. RLIMIT_NOFILE 64 stands for systemd's 1024."""
    code = (
        "import os, resource, socket, sys\n"
        f"os.environ['PROMETHEUS_MULTIPROC_DIR'] = {str(tmp_path)!r}\n"
        "from policymilter import metrics\n"
        "s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen(16)\n"
        "print(s.getsockname()[1], flush=True)\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))\n"
        "metrics._serve(s, __import__('pathlib').Path(sys.argv[1]))\n"
    )
    exporter = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                                env={**os.environ, "PYTHONPATH": str(REPO / "milter")})
    connections: list[socket.socket] = []
    try:
        assert exporter.stdout is not None
        port = int(exporter.stdout.readline())
        for _ in range(80):
            with contextlib.suppress(OSError):
                connections.append(socket.create_connection(("127.0.0.1", port), timeout=0.5))
        threads = len(os.listdir(f"/proc/{exporter.pid}/task"))
        before = _cpu_seconds(exporter.pid)
        time.sleep(2)
        spent = _cpu_seconds(exporter.pid) - before
        assert threads <= 1 + metrics.MAX_SCRAPES and spent < 0.5, f"{threads} threads; {spent:.2f} s of CPU"
        for connection in connections:
            connection.close()
        connections.clear()
        with socket.create_connection(("127.0.0.1", port), timeout=5) as scrape:  # still serving
            scrape.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
            assert scrape.recv(12).startswith(b"HTTP/1.0 200")
    finally:
        for connection in connections:
            connection.close()
        exporter.kill()
        exporter.wait()


def test_a_failing_recording_is_logged_once_and_never_reaches_the_mail(logwatch, monkeypatch):
    logwatch.expect("metrics_failed")

    class Broken:
        def __getattr__(self, name: str) -> object:
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(metrics._ACTIVE, "recorder", Broken())
    monkeypatch.setattr(metrics, "_failed", threading.Event())
    metrics.session_opened()
    metrics.dns_cache(hit=True)
    metrics.message_done("smtp", False, Verdict(Disposition.ACCEPT), [])
    [failed] = logwatch.events("metrics_failed")
    assert "No space left on device" in failed.getMessage()
