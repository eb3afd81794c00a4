"""CPU per DKIM signature: dkimpy's own dkim.sign() beside ours (OpenSSL, the key parsed once);
and per ARC set (seal): dkim.arc_sign() beside ours, and the whole seal check per message.

    .venv/bin/python -m benchmarks.signing_cpu [--signatures 200]

A 5 KB message, relaxed/relaxed, over-signing the headers the milter signs, RSA-2048 and Ed25519.
dkim.sign() gets the key file's bytes, as the milter gave it before it signed through OpenSSL:
it parses the key for every message and computes RSA in Python. Prints process CPU per signature.
ARC: the same message with our Authentication-Results on it, RSA-2048, no chain before (i=1).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import authres.arc
import dkim
from cryptography.hazmat.primitives.asymmetric import rsa

from policymilter import canonical, signing_keys
from policymilter.checks.arc import Chain
from policymilter.checks.seal import Seal
from policymilter.checks.signing import arcsign, sign
from policymilter.facts import Envelope, Session
from policymilter.listeners import listener_by_name
from policymilter.message import Message
from policymilter.outcome import CheckResult, Outcome
from policymilter.pipeline import CheckContext
from policymilter.policy.model import Policy
from policymilter.resources import Resources

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


RESULTS = "mx.example.org;\r\n\tspf=pass smtp.mailfrom=example.org;\r\n\tarc=none smtp.remote-ip=192.0.2.7"
SEALED = f"Authentication-Results: {RESULTS}\r\n".encode() + MESSAGE


def compare_arc(count: int) -> tuple[float, float, float]:
    """CPU per ARC set (ms): dkim.arc_sign() with the key file's bytes, arcsign.arc_set() with the
    key loaded; and the seal check's whole run (final headers, our A-R, the set) per message."""
    file = signing_keys.generate_private_key(signing_keys.KeyType.RSA)
    private = signing_keys.parse_private_key(file)
    assert isinstance(private, rsa.RSAPrivateKey)
    headers = sign.signed_headers(SEALED)
    before = cpu_per_call(lambda: dkim.arc_sign(SEALED, b"bench", b"example.org", file, b"mx.example.org",
                                                include_headers=headers), count)
    split = canonical.Split(*canonical.rfc822_parse(SEALED))
    after = cpu_per_call(lambda: arcsign.arc_set(split, b"example.org", b"bench", private, RESULTS.encode(),
                                                 dkim.CV_None, headers), count)
    policy = Policy.model_validate({
        "site": {"authserv_id": "mx.example.org"}, "listeners": {"smtp": {"ports": [25]}},
        "signing": {"keys": {"example.org": [{"selector": "bench", "key_file": "-"}]}},
        "seal": {"domain": "example.org", "selector": "bench"}})
    resources = Resources(keys={"example.org": [(policy.signing.keys["example.org"][0], private, "")]})
    arc = CheckResult("arc", Outcome.NONE, findings=Chain("none", ""),
                      authres=(authres.arc.ARCAuthenticationResult(result="none", smtp_remote_ip="192.0.2.7"),))
    seal = Seal()

    def check() -> object:
        # a new Message each time, as each transaction has its own (its body digest is not shared)
        context = CheckContext(policy, listener_by_name(policy, "smtp"), Session("bench", "192.0.2.7"),
                               Envelope("a@example.org"), Message.from_bytes(MESSAGE), None, None, (arc,), resources)
        result = seal.run(context)
        assert result.outcome is Outcome.SEALED, result
        return result
    whole = cpu_per_call(check, count)
    return before, after, whole


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--signatures", type=int, default=200)
    args = parser.parse_args()
    print(f"{len(MESSAGE)}-byte message, {args.signatures} signatures each, CPU per signature:")
    print(f"{'':16}{'dkimpy':>10}{'OpenSSL':>10}{'ratio':>8}")
    for kind in signing_keys.KeyType:
        before, after = compare(kind, args.signatures)
        print(f"{kind.algorithm:16}{before:>8.2f}ms{after:>8.2f}ms{before / after:>7.1f}x")
    before, after, whole = compare_arc(args.signatures)
    print(f"{'ARC set (2 RSA)':16}{before:>8.2f}ms{after:>8.2f}ms{before / after:>7.1f}x")
    print(f"seal check, whole run per message (from a new Message): {whole:.2f} ms")


if __name__ == "__main__":
    main()
