"""What a message built to burn CPU costs the milter: crafted headers against the inbound checks.

    .venv/bin/python -m benchmarks.hostile_cpu [--repeat 5]

Each message goes through the same pipeline as the daemon (`explain`: SPF, DKIM, ARC, DMARC,
Authentication-Results assembly; the scanners are off, they have their own benchmark) with
an in-memory zone, so only the milter's own CPU is counted (time.process_time, median of the
repeats). A benign message of the same size is the control. Target (issue 8): each crafted
message under 50 ms of CPU.

- ar-flood: 1 MB of Authentication-Results headers, many claiming our authserv-id in every
  spelling (quoted, commented, trailing dot, garbage after it), none parseable by authres;
- arc-long: a validly sealed ARC chain of 60 sets (RFC 8617 allows 50), and one of 50;
- dkim-many: 50 valid DKIM signatures with different c= and l= over a 100 KB and a 1 MB body
  (dkim.max_signatures = 50, the most a policy allows);
- dkim-l: 5 signatures with l=, content appended;
- from: a From header built to make the stdlib's address parsers slow.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import replace

import dkim
from tests import authkit
from tests.conftest import DEFAULT_POLICY
from tests.zonefake import ZoneResolver

from policymilter.cli import explain
from policymilter.facts import Session
from policymilter.listeners import listener_by_name
from policymilter.service import load_snapshot

AUTHSERV_ID = "mx.example.test"
CLIENT = "192.0.2.25"
BODY_1MB = ("x" * 70 + " \r\n") * 14_000
BODY_100KB = ("x" * 70 + " \r\n") * 1_400


def world() -> tuple[ZoneResolver, authkit.DkimKey, authkit.DkimKey]:
    sender = authkit.rsa_key("sender.test", "s1")
    sealer = authkit.rsa_key("list.test", "arc")
    zone = ZoneResolver({
        "sender.test": {"TXT": ["v=spf1 ip4:192.0.2.25 -all"], "A": ["192.0.2.25"]},
        "_dmarc.sender.test": {"TXT": ["v=DMARC1; p=reject"]},
        f"{sender.selector}._domainkey.sender.test": {"TXT": [sender.record]},
        f"{sealer.selector}._domainkey.list.test": {"TXT": [sealer.record]},
    })
    return zone, sender, sealer


def plain(body: str = "hello\r\n", extra: str = "") -> bytes:
    return (f"From: Alice <alice@sender.test>\r\nTo: bob@example.test\r\nSubject: hello\r\n"
            f"Date: Tue, 01 Dec 2026 10:00:00 +0000\r\nMessage-ID: <m@sender.test>\r\n{extra}\r\n{body}").encode()


def ar_flood() -> bytes:
    spellings = [f"{AUTHSERV_ID}", f'"{AUTHSERV_ID}"', f"(relay) {AUTHSERV_ID}", f"{AUTHSERV_ID.upper()}.",
                 f"{AUTHSERV_ID} 1 (x;y)", f"(a (b) c) {AUTHSERV_ID}garbage", "other.example"]
    lines = []
    size = 0
    index = 0
    while size < 1_000_000:
        value = f"{spellings[index % len(spellings)]}; dkim=pass header.d=bank.test (" + "z" * 400 + ")"
        lines.append(f"Authentication-Results: {value}\r\n")
        size += len(lines[-1])
        index += 1
    return plain(extra="".join(lines))


def dkim_many(sender: authkit.DkimKey, count: int, body: str, length: bool = False) -> bytes:
    message = plain(body)
    signatures = []
    for index in range(count):
        canonicalize = [(b"relaxed", b"relaxed"), (b"simple", b"simple"), (b"relaxed", b"simple")][index % 3]
        signatures.append(dkim.sign(message, sender.selector.encode(), b"sender.test", sender.private,
                                    canonicalize=canonicalize, include_headers=[b"from", b"subject"],
                                    length=length or index % 2 == 1))
    return b"".join(signatures) + message


def measure(run: Callable[[], dict], repeat: int) -> tuple[float, dict]:
    times, report = [], {}
    for _ in range(repeat):
        started = time.process_time()
        report = run()
        times.append((time.process_time() - started) * 1000)
    return statistics.median(times), report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    zone, sender, sealer = world()
    snapshot = load_snapshot(DEFAULT_POLICY, [f"site.authserv_id={AUTHSERV_ID}", "antivirus.enabled=false",
                                              "spam.enabled=false", "attachments.enabled=false",
                                              "arc.trusted_sealers=[\"list.test\"]", "dkim.max_signatures=50"])
    snapshot = replace(snapshot, resolver=zone)
    session = Session(conn_id="b", client_ip=CLIENT, helo="mail.sender.test", daemon_name="smtp", daemon_port=25)
    listener = listener_by_name(snapshot.policy, "smtp")
    print("building messages ...", flush=True)
    cases = [
        ("control: 1 signature, 100 KB body", dkim_many(sender, 1, BODY_100KB)),
        ("dkim-many: 50 signatures, 100 KB body", dkim_many(sender, 50, BODY_100KB)),
        ("dkim-l: 5 l= signatures + appended, 100 KB", dkim_many(sender, 5, BODY_100KB, length=True)
         + b"appended by the attacker\r\n"),
        ("control: 1 signature, 1 MB body", dkim_many(sender, 1, BODY_1MB)),
        ("ar-flood: 1 MB of A-R headers", ar_flood()),
        ("arc-long: 50 ARC sets", authkit.arc_chain(plain(), sealer, "mx.list.test", 50)),
        ("arc-long: 60 ARC sets", authkit.arc_chain(plain(), sealer, "mx.list.test", 60)),
        ("dkim-many: 50 signatures, 1 MB body", dkim_many(sender, 50, BODY_1MB)),
        ("dkim-l: 5 l= signatures + appended, 1 MB", dkim_many(sender, 5, BODY_1MB, length=True)
         + b"appended by the attacker\r\n"),
        ("from: 600 comments in the From header", plain().replace(b"From: Alice <", b"From: " + b"(a)" * 600
                                                                   + b" <")),
    ]
    print(f"{'message':46} {'size':>9} {'CPU ms':>8}  verdict / dkim / arc / dmarc")
    for name, raw in cases:
        cpu, report = measure(lambda raw=raw: explain(snapshot, session, listener, raw, "alice@sender.test",
                                                      ["bob@example.test"]), args.repeat)
        outcomes = {c["check"]: c["outcome"] + (f":{c['detail']}" if c["detail"] else "") for c in report["checks"]}
        print(f"{name:46} {len(raw):>9} {cpu:>8.1f}  {report['verdict']} / {outcomes.get('dkim')} / "
              f"{outcomes.get('arc')} / {outcomes.get('dmarc')}", flush=True)


if __name__ == "__main__":
    main()
