"""Make one ARC set (RFC 8617 §5.1): ARC-Authentication-Results, ARC-Message-Signature and
ARC-Seal. The one place that seals.

As sign.py for DKIM: dkimpy's ARC class does the work — its ordering of the ARC headers already
there, the relaxed canonicalisation (RFC 8617 §4.1.2 and §4.1.3 fix c= to relaxed/relaxed), the
tag lists, folding and header hashing, in the steps of its own `ARC.sign` — and the two
signatures are OpenSSL's, through `cryptography`, with the key parsed once per policy load.
`dkim.arc_sign` parses the PEM key and computes RSA in pure Python for each of its two
signatures (about 7 ms each here). It also makes the AAR itself, re-serialising the A-R header it
finds through authres (which drops comments), and takes cv= from that header's arc= result:
here both are given, the AAR value verbatim (our A-R value) and cv= as the seal check decided.
tests/unit/test_seal.py compares the three headers with dkim.arc_sign's byte for byte.
"""

from __future__ import annotations

import base64
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import dkim
from cryptography.hazmat.primitives.asymmetric import rsa
from dkim.canonicalization import CanonicalizationPolicy
from dkim.crypto import HASH_ALGORITHMS

from policymilter import canonical
from policymilter.checks.signing.sign import signature, tag_list

ALGORITHM = b"rsa-sha256"
MAX_INSTANCE = 50  # RFC 8617 §4.2.1: i= is 1..50; dkimpy's ARC.sign refuses more too
_RELAXED = CanonicalizationPolicy.from_c_value(b"relaxed/relaxed")
_QUIET = logging.getLogger("policymilter.dkimpy")
_CV = re.compile(rb"(?:^|;)cv=([A-Za-z]+)(?:;|$)")


@dataclass(frozen=True)
class Chain:
    """The ARC headers already on the message, as dkimpy's ARC.sign reads them."""

    instance: int  # the highest i= of any ARC header (0: none)
    latest_cv: str  # the cv= of the ARC-Seal with that instance ("" when there is none)


class _Sealer(dkim.ARC):  # type: ignore[misc]  # dkimpy is untyped
    """dkimpy's ARC with its signing step fed a `cryptography` key."""

    def gen_header(self, fields: list[tuple[bytes, bytes]], include_headers: Sequence[bytes],
                   canon_policy: CanonicalizationPolicy, header_name: bytes, pk: Any,
                   standardize: bool = False) -> bytes:
        # DomainSigner.gen_header (1.1.x) without `standardize`, which ARC.sign is not given:
        # fold with an empty b=, hash the headers named, sign, fold again with the real b=.
        unsigned: bytes = dkim.RE_BTAG.sub(b"\\1", dkim.fold(tag_list(fields), namelen=len(header_name),
                                                               linesep=b"\r\n"))
        digest = self.hasher()
        # self.headers is relaxed-canonical already (_canonical): relaxed canonicalisation is
        # idempotent, so this is what canonicalising them again here, as dkimpy does, would give.
        self.signed_headers = dkim.hash_headers(digest, canon_policy, self.headers,
                                                include_headers, (header_name, b" " + unsigned), dict(fields))
        at = next(index for index, (tag, _) in enumerate(fields) if tag == b"b")
        fields[at] = (b"b", base64.b64encode(signature(pk, digest.digest())))
        folded: bytes = dkim.fold(tag_list(fields) + self.linesep, namelen=len(header_name), linesep=self.linesep)
        return folded


_ARC_NAMES = frozenset({b"arc-seal", b"arc-message-signature", b"arc-authentication-results"})


def _sealer(split: canonical.Split, headers: list[tuple[bytes, bytes]]) -> _Sealer:
    sealer = _Sealer(b"", logger=_QUIET, signature_algorithm=ALGORITHM, linesep=b"\r\n")
    sealer.headers = headers  # the steps below edit it
    sealer.body = split.body
    return sealer


def _arc_headers(split: canonical.Split) -> list[tuple[bytes, bytes]]:
    """The ARC headers alone: ARC.sorted_arc_headers canonicalises every header it is given to
    pick these out (a header-heavy message would pay for that at each call)."""
    return [(name, value) for name, value in split.headers if name.lower().rstrip() in _ARC_NAMES]


def chain(split: canonical.Split) -> Chain:
    """The instance and latest cv= of the ARC headers on `split`, as ARC.sign finds them."""
    instance, ordered = _sealer(split, _arc_headers(split)).sorted_arc_headers()
    for number, (name, value) in ordered:
        if number == instance and name.lower() == b"arc-seal":
            found = _CV.search(b"".join(value.split()))
            return Chain(instance, found.group(1).lower().decode("ascii") if found else "")
    return Chain(instance, "")


def _body_hash(split: canonical.Split) -> bytes:
    """The relaxed body's SHA-256, shared with the DKIM and ARC verifiers of the same body."""
    key = (_RELAXED.body_algorithm.name, ALGORITHM)
    if key not in split.digests:
        name = _RELAXED.body_algorithm.name
        if name not in split.bodies:
            split.bodies[name] = canonical.body(_RELAXED, split.body)
        split.digests[key] = HASH_ALGORITHMS[ALGORITHM](split.bodies[name]).digest()
    return base64.b64encode(split.digests[key])


# The dkimpy internals this relies on (pinned <1.2), beside sign.py's: ARC.sorted_arc_headers,
# DomainSigner.__init__'s keywords, and the steps and tag order of ARC.sign after it has found its
# A-R results and cv (1.1.x), mirrored below; test_seal.py fails when they change.
def arc_set(split: canonical.Split, domain: bytes, selector: bytes, private_key: rsa.RSAPrivateKey,
            results: bytes, cv: bytes, include_headers: Sequence[bytes]) -> list[bytes]:
    """The ARC-Seal, ARC-Message-Signature and ARC-Authentication-Results header lines (CRLF
    line ends, in that order) of the next instance for the message `split` holds, exactly as
    dkim.arc_sign makes them when the A-R it reads yields `results` (an A-R value: authserv-id;
    results) and `cv`, the time included."""
    sealer = _sealer(split, _arc_headers(split))
    include = tuple(name.lower() for name in include_headers)
    if b"from" not in include:
        raise ValueError("the From header field must be signed (RFC 6376 §5.4)")
    instance, ordered = sealer.sorted_arc_headers()
    instance = instance + 1 if ordered else 1
    if instance > MAX_INSTANCE:
        raise ValueError(f"an ARC chain has at most {MAX_INSTANCE} sets (RFC 8617 §4.2.1)")
    if (instance == 1) != (cv == dkim.CV_None):
        raise ValueError(f"cv={cv.decode()} does not fit instance {instance} (RFC 8617 §4.1.3: none exactly at i=1)")
    # RFC 8617 §5.1.2: a failed chain's seal covers only the set it adds.
    arc_headers = [header for _, header in ordered] if cv != dkim.CV_Fail else []
    sealer.headers = _RELAXED.canonicalize_headers(split.headers)  # once, for both signatures
    added = []

    aar = b"i=%d; " % instance + results.rstrip() + sealer.linesep
    added.append(b"ARC-Authentication-Results: " + aar)
    arc_headers.insert(0, (b"ARC-Authentication-Results", aar))
    sealer.headers = _RELAXED.canonicalize_headers(arc_headers[:1]) + sealer.headers

    sealer.hasher = HASH_ALGORITHMS[ALGORITHM]
    stamp = str(int(time.time())).encode("ascii")
    ams_fields = [
        (b"i", str(instance).encode("ascii")),
        (b"a", ALGORITHM),
        (b"c", b"relaxed/relaxed"),
        (b"d", domain),
        (b"s", selector),
        (b"t", stamp),
        (b"h", b" : ".join(include)),
        (b"bh", _body_hash(split)),
        (b"b", b"0" * 60),  # as dkimpy: b= on a line of its own, so refolding moves no other tag
    ]
    ams = sealer.gen_header(ams_fields, include, _RELAXED, b"ARC-Message-Signature", private_key)
    added.append(b"ARC-Message-Signature: " + ams)
    arc_headers.insert(0, (b"ARC-Message-Signature", ams))
    sealer.headers = _RELAXED.canonicalize_headers(arc_headers[:1]) + sealer.headers

    seal_fields = [
        (b"i", str(instance).encode("ascii")),
        (b"cv", cv),
        (b"a", ALGORITHM),
        (b"d", domain),
        (b"s", selector),
        (b"t", stamp),
        (b"b", b"0" * 60),
    ]
    # RFC 8617 §5.1.1: the sets in increasing instance order, each AAR, AMS, AS.
    seal_include = [name.lower() for name, _ in reversed(arc_headers)]
    if cv == dkim.CV_Fail:
        sealer.headers.reverse()  # as dkimpy: the headers are picked from the bottom, ours come first
    seal = sealer.gen_header(seal_fields, seal_include, _RELAXED, b"ARC-Seal", private_key)
    added.append(b"ARC-Seal: " + seal)
    added.reverse()
    return added


def value(line: bytes) -> str:
    """The value of a header line arc_set makes, as the milter adds it (LF-folded)."""
    return line.decode("ascii").partition(":")[2].strip().replace("\r\n", "\n")
