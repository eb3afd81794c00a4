"""CPU per DKIM signature: dkimpy's own dkim.sign() beside ours (OpenSSL, the key parsed once).

    .venv/bin/python -m benchmarks.signing_cpu [--signatures 200]

A 5 KB message, relaxed/relaxed, over-signing the headers the milter signs, RSA-2048 and Ed25519.
dkim.sign() gets the key file's bytes, as the milter gave it before it signed through OpenSSL:
it parses the key for every message and computes RSA in Python. Prints process CPU per signature.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import dkim

from policymilter import signing_keys
from policymilter.checks.signing import sign

BODY = ("x" * 76 + "\r\n") * 64  # ~5 KB, as benchmarks.milter_overhead sends
MESSAGE = (f"From: alice@example.org\r\nTo: user@example.test\r\nSubject: bench\r\n"
           f"Message-ID: <bench-1@example.org>\r\n\r\n{BODY}").encode()


def cpu_per_call(call: Callable[[], object], count: int) -> float:
    """Milliseconds of this process's CPU per call, after a few calls to warm up."""
    for _ in range(10):
        call()
    start = time.process_time()
    for _ in range(count):
        call()
    return (time.process_time() - start) / count * 1000


def compare(kind: signing_keys.KeyType, count: int) -> tuple[float, float]:
    """CPU per signature (ms) of dkim.sign() with the key file's bytes, and of ours with the key loaded."""
    file = signing_keys.generate_private_key(kind)
    private = signing_keys.parse_private_key(file, kind.algorithm)
    headers = sign.signed_headers(MESSAGE)
    before = cpu_per_call(lambda: dkim.sign(MESSAGE, b"bench", b"example.org", file, include_headers=headers,
                                            canonicalize=(b"relaxed", b"relaxed"),
                                            signature_algorithm=kind.algorithm.encode()), count)
    after = cpu_per_call(lambda: sign.sign(MESSAGE, "example.org", "bench", private, "relaxed/relaxed"), count)
    return before, after


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--signatures", type=int, default=200)
    args = parser.parse_args()
    print(f"{len(MESSAGE)}-byte message, {args.signatures} signatures each, CPU per signature:")
    print(f"{'':16}{'dkimpy':>10}{'OpenSSL':>10}{'ratio':>8}")
    for kind in signing_keys.KeyType:
        before, after = compare(kind, args.signatures)
        print(f"{kind.algorithm:16}{before:>8.2f}ms{after:>8.2f}ms{before / after:>7.1f}x")


if __name__ == "__main__":
    main()
