"""What content checks cost per message size: attachment inspection, clamd, spamd.

    sudo .venv/bin/python -m benchmarks.content_scan [--repeat 3]

Messages of about 5 KB, 100 KB, 5 MB and 25 MB (a text part plus a base64 attachment of random
bytes, inside a zip for half of its size) go through each check as the daemon runs it, against a
real clamd and spamd started here. Prints the median time per check and size, the share of the
total, and the peak Python memory while the largest message is held and checked (tracemalloc),
as a ratio to the message size.
"""

from __future__ import annotations

import argparse
import base64
import io
import os
import statistics
import tempfile
import time
import tracemalloc
import zipfile
from collections.abc import Callable
from pathlib import Path

from tests.integration.scanners import Clamd, Spamd

from policymilter.checks.antivirus import Antivirus
from policymilter.checks.spam import Spam
from policymilter.facts import Envelope, Session
from policymilter.listeners import listener_by_name
from policymilter.message import Message
from policymilter.pipeline import CheckContext
from policymilter.policy import load_policy

REPO = Path(__file__).resolve().parent.parent
SIZES = {"5 KB": 5_000, "100 KB": 100_000, "5 MB": 5_000_000, "25 MB": 25_000_000}


def build(size: int) -> bytes:
    payload = os.urandom(size * 3 // 8)  # base64 grows it by 4/3
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("data.bin", payload[: len(payload) // 2])
    parts = [("report.zip", buffer.getvalue()), ("data.bin", payload[len(payload) // 2:])]
    body = [b"From: a@example.net\r\nTo: u@example.test\r\nSubject: bench\r\nMIME-Version: 1.0\r\n"
            b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nhello\r\n']
    for name, data in parts:
        body.append(f'--b\r\nContent-Type: application/octet-stream; name="{name}"\r\n'
                    f"Content-Transfer-Encoding: base64\r\n\r\n".encode())
        body.append(base64.encodebytes(data).replace(b"\n", b"\r\n"))
    body.append(b"--b--\r\n")
    return b"".join(body)


def checks() -> dict[str, Callable[[CheckContext], object]]:
    found: dict[str, Callable[[CheckContext], object]] = {}
    try:
        from policymilter.checks.attachments import Attachments
    except ImportError:
        pass
    else:
        found["attachments"] = Attachments().run
    found["antivirus"] = Antivirus().run
    found["spam"] = Spam().run
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="pmscan-") as root, \
            Clamd(Path(root) / "clamd") as clamd, Spamd(Path(root) / "spamd") as spamd:
        overrides = [f'antivirus.servers=["{clamd.endpoint}"]', f'spam.servers=["{spamd.endpoint}"]',
                     "spam.max_size=30000000"]
        policy = load_policy(REPO / "policies", overrides).policy
        listener = listener_by_name(policy, "smtp")
        runs = checks()
        table: dict[str, dict[str, float]] = {}
        for label, size in SIZES.items():
            raw = build(size)
            message = Message.from_bytes(raw)
            context = CheckContext(policy, listener, Session(conn_id="b"), Envelope(), message)
            for name, run in runs.items():
                timings = []
                for _ in range(args.repeat):
                    started = time.perf_counter()
                    run(context)
                    timings.append((time.perf_counter() - started) * 1000)
                table.setdefault(label, {})[name] = statistics.median(timings)
            message.close()
        raw = build(SIZES["25 MB"])
        tracemalloc.start()
        message = Message.from_bytes(raw)
        context = CheckContext(policy, listener, Session(conn_id="b"), Envelope(), message)
        for run in runs.values():
            run(context)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    print(f"median of {args.repeat} runs, ms per message (real clamd with a one-signature database, real spamd)\n")
    print(f"{'size':>7} " + " ".join(f"{name:>12}" for name in runs) + f" {'total':>9}")
    for label, row in table.items():
        total = sum(row.values())
        print(f"{label:>7} " + " ".join(f"{row[name]:>12.1f}" for name in runs) + f" {total:>9.1f}")
    print("\nshare of the total per check:")
    for label, row in table.items():
        total = sum(row.values())
        print(f"{label:>7} " + "  ".join(f"{name} {row[name] / total:.0%}" for name in runs))
    print(f"\npeak Python memory checking the 25 MB message (raw copy held by the benchmark included): "
          f"{peak / 2**20:.1f} MiB = {peak / len(raw):.2f} x the message size")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
