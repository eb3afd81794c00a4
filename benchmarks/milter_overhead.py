"""What the milter costs per message: Postfix with and without it, interleaved in one run.

    sudo .venv/bin/python -m benchmarks.milter_overhead [--messages 200] [--rounds 3]

Two private Postfix instances (one with the milter attached over a unix socket, one without)
receive the same messages on port 25 (SPF, DKIM, ARC, DMARC against a real nsd) and on
authenticated submission (ownership check and RSA-2048 DKIM signing), batch by batch in
alternation, so machine noise hits both alike. Prints per-message latency (SMTP MAIL..DATA
reply), throughput, the milter's CPU per message and its memory, and the ratios.
"""

from __future__ import annotations

import argparse
import smtplib
import statistics
import sys
import tempfile
import time
from pathlib import Path

from tests.integration.dns_server import DnsServer, Zone
from tests.integration.stack import MailStack, unverified_tls_context

from policymilter import signing_keys

REPO = Path(__file__).resolve().parent.parent
BODY = ("x" * 76 + "\r\n") * 64  # ~5 KB


def message(index: int) -> bytes:
    return (f"From: alice@example.org\r\nTo: user@example.test\r\nSubject: bench {index}\r\n"
            f"Message-ID: <bench-{index}-{time.monotonic_ns()}@example.org>\r\n\r\n{BODY}").encode()


def cpu_seconds(pid: int) -> float:
    """User+system CPU of a process, its exited threads included (libmilter's workers come and go)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100


def milter_workers(pid: int, timeout: float = 20.0) -> list[int]:
    """The worker processes of the milter's parent. The socket is bound (and connectable)
    before the policy is loaded as the milter user and the workers forked, so wait for them."""
    deadline = time.monotonic() + timeout
    while True:
        children = [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
        if children:
            return children
        if time.monotonic() > deadline:
            raise RuntimeError(f"milter {pid} forked no worker within {timeout} s")
        time.sleep(0.05)


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def batch(stack: MailStack, listener: str, count: int) -> list[float]:
    """Send `count` messages in one session; latency of each transaction in ms."""
    context = unverified_tls_context()
    latencies = []
    with smtplib.SMTP("127.0.0.1", stack.ports[listener], timeout=60) as client:
        client.ehlo("bench.example.net")
        if listener == "submission":
            client.starttls(context=context)
            client.ehlo("bench.example.net")
            client.login("alice", stack.users["alice"])
        for index in range(count):
            started = time.perf_counter()
            client.sendmail("alice@example.org", ["user@example.test"], message(index))
            latencies.append((time.perf_counter() - started) * 1000)
    return latencies


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=200, help="messages per batch")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    with (
        tempfile.TemporaryDirectory(prefix="pmbench-") as root,
        DnsServer(Path(root) / "dns", [Zone("example.org").txt("@", "v=spf1 ip4:127.0.0.1 -all")
                                       .txt("_dmarc", "v=DMARC1; p=reject"), Zone("example.test"),
                                       Zone("example.net")]) as dns_server,
        MailStack(Path(root) / "with") as milter,
        MailStack(Path(root) / "without", milter=False) as bare,
    ):
        # Port 25 runs the inbound checks (SPF, DKIM, ARC, DMARC against a real nsd); scanning is
        # measured by benchmarks/content_scan.py.
        # Submission signs with an RSA-2048 key (dkimpy, pure Python: the largest cost there).
        key_file = Path(root) / "keys" / "example.org.bench.key"
        signing_keys.write_key_file(key_file, signing_keys.generate_private_key(signing_keys.KeyType.RSA, 2048))
        milter.start_milter([sys.executable, "-m", "policymilter", "run", "--policy", str(REPO / "policies"),
                             "--socket", f"unix:{milter.milter_socket}", "--log-level", "warning",
                             "-o", f'dns.nameservers=["{dns_server.nameserver}"]',
                             "-o", "antivirus.enabled=false", "-o", "spam.enabled=false",
                             "-o", f'signing.keys={{"example.org" = [{{selector = "bench", '
                                   f'key_file = "{key_file}"}}]}}'])
        parent = milter.milter_pid
        assert parent is not None
        workers = milter_workers(parent)
        results: dict[tuple[str, str], list[float]] = {}
        cpu: dict[str, float] = {}
        for listener in ("smtp", "submission"):
            batch(milter, listener, 20)  # warm up both
            batch(bare, listener, 20)
            cpu_before = sum(cpu_seconds(pid) for pid in workers)
            for _ in range(args.rounds):
                for name, stack in (("with", milter), ("without", bare)):
                    results.setdefault((listener, name), []).extend(batch(stack, listener, args.messages))
            spent = sum(cpu_seconds(pid) for pid in workers) - cpu_before
            cpu[listener] = spent / (args.rounds * args.messages) * 1000
        peak = sum(rss_mib(pid) for pid in workers)
    total = args.rounds * args.messages
    print(f"{total} messages of ~5 KB per configuration and listener, {args.rounds} interleaved rounds\n")
    print(f"{'listener':<11} {'milter':<8} {'median ms':>9} {'p95 ms':>8} {'msg/s':>7}")
    for (listener, name), values in results.items():
        values.sort()
        median, p95 = statistics.median(values), values[int(len(values) * 0.95)]
        print(f"{listener:<11} {name:<8} {median:>9.2f} {p95:>8.2f} {1000 / statistics.mean(values):>7.0f}")
    print()
    for listener in ("smtp", "submission"):
        with_ms = statistics.median(results[(listener, "with")])
        without_ms = statistics.median(results[(listener, "without")])
        print(f"{listener}: latency ratio with/without milter {with_ms / without_ms:.2f}; "
              f"milter CPU {cpu[listener]:.2f} ms per message")
    print(f"milter peak RSS ({len(workers)} workers, summed; pages shared after fork counted in each): {peak:.1f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
