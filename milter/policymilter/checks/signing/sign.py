"""Make one DKIM-Signature (RFC 6376 §5; Ed25519-SHA256: RFC 8463). The one place that signs.

dkimpy builds the signature: its message parse, canonicalisation, body hash, tag-list folding
and header hash, called in the steps of its own `DKIM.sign` (tests check that the result is
byte for byte what `dkim.sign()` makes). The signature arithmetic is OpenSSL's, through
`cryptography`, with a key parsed once per policy load (resources.load_keys). dkimpy's sign()
re-parses the PEM key for every message and computes RSA in pure Python: about 6.5 ms of CPU per
RSA-2048 signature of a 5 KB message here, 0.5 ms this way; Ed25519 costs about 0.3 ms either
way, mostly canonicalisation (`python -m benchmarks.signing_cpu`).
"""

from __future__ import annotations

import base64
import time
from collections.abc import Sequence

import dkim
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa, utils
from dkim.canonicalization import CanonicalizationPolicy
from dkim.crypto import HASH_ALGORITHMS

from policymilter import canonical
from policymilter.signing_keys import PrivateKey

# RFC 6376 §5.4.1 recommends these. Every one is over-signed: listed once more than the message
# has it (absent ones once), so a copy of a signed message with another Subject, To or From
# prepended no longer verifies (RFC 6376 §8.15) — verifiers pick instances from the bottom, and
# mail clients show the top one.
SIGNED_HEADERS = (b"from", b"sender", b"reply-to", b"subject", b"date", b"message-id", b"to", b"cc", b"in-reply-to",
                  b"references", b"mime-version", b"content-type", b"content-transfer-encoding")

HEADER = b"DKIM-Signature"


def signed_headers(message: bytes) -> list[bytes]:
    """SIGNED_HEADERS, each listed as many times as the message has it, plus one."""
    head = message.split(b"\r\n\r\n", 1)[0]
    names = [line.split(b":", 1)[0].strip().lower() for line in head.split(b"\r\n")
             if line and line[:1] not in (b" ", b"\t") and b":" in line]
    return [name for name in SIGNED_HEADERS for _ in range(names.count(name) + 1)]


def sign(message: bytes, domain: str, selector: str, private_key: PrivateKey, canonicalization: str) -> str:
    """The value of a DKIM-Signature header for `message` (CRLF line ends), folded with LF+space."""
    return _value(dkim_signature(message, domain.encode(), selector.encode(), private_key, canonicalization.encode(),
                                 signed_headers(message)))


def sign_parts(head: bytes, body: bytes, domain: str, selector: str, private_key: PrivateKey,
               canonicalization: str) -> str:
    """sign(head + body), for a header block ending with its empty line and the body after it,
    without joining them (canonical.split): the body is the transaction's one copy."""
    return _value(dkim_signature(canonical.split(head, body), domain.encode(), selector.encode(), private_key,
                                 canonicalization.encode(), signed_headers(head)))


def _value(header: bytes) -> str:
    return header.decode("ascii").partition(":")[2].strip().replace("\r\n", "\n")


# The dkimpy internals this relies on (dkimpy is pinned <1.2). tests/unit/test_sign.py compares
# our signatures with dkim.sign()'s byte for byte, and fails if the two methods mirrored here
# change or a function called here takes other parameters:
# - dkim.rfc822_parse(message) -> (headers as [name, value] pairs, body), as canonical.rfc822_parse computes it;
# - dkim.canonicalization.CanonicalizationPolicy: from_c_value, to_c_value, canonicalize_body,
#   canonicalize_headers; dkim.crypto.HASH_ALGORITHMS;
# - dkim.fold(value, namelen=, linesep=), dkim.RE_BTAG (empties b=), and
#   dkim.hash_headers(hasher, policy, canonical headers, include_headers, sig header, sig fields);
# - the steps and tag order of DKIM.sign and DomainSigner.gen_header (1.1.x), mirrored below:
#   neither can be handed a parsed key (sign() parses the PEM; gen_header computes RSA in
#   Python through a module function), so their few lines of glue are repeated here.
def dkim_signature(message: bytes | canonical.Split, domain: bytes, selector: bytes, private_key: PrivateKey,
                   canonicalization: bytes, include_headers: Sequence[bytes]) -> bytes:
    """The DKIM-Signature header line, CRLF-terminated, exactly as dkimpy's dkim.sign() makes it
    for the same arguments (identity "@domain", no l=), the time included."""
    algorithm = b"rsa-sha256" if isinstance(private_key, rsa.RSAPrivateKey) else b"ed25519-sha256"
    hasher = HASH_ALGORITHMS[algorithm]
    policy = CanonicalizationPolicy.from_c_value(canonicalization)
    split = message if isinstance(message, canonical.Split) else canonical.Split(*canonical.rfc822_parse(message))
    headers, body = split.headers, split.body
    include = tuple(name.lower() for name in include_headers)
    fields = [
        (b"v", b"1"),
        (b"a", algorithm),
        (b"c", policy.to_c_value()),
        (b"d", domain),
        (b"i", b"@" + domain),
        (b"q", b"dns/txt"),
        (b"s", selector),
        (b"t", str(int(time.time())).encode("ascii")),
        (b"h", b" : ".join(include)),
        (b"bh", base64.b64encode(hasher(canonical.body(policy, body)).digest())),
        # As dkimpy: a placeholder as long as a folded line puts b= on a line of its own, so
        # folding again with the real value moves none of the tags before it.
        (b"b", b"0" * 60),
    ]
    unsigned: bytes = dkim.RE_BTAG.sub(b"\\1", dkim.fold(tag_list(fields), namelen=len(HEADER), linesep=b"\r\n"))
    digest = hasher()
    dkim.hash_headers(digest, policy, policy.canonicalize_headers(headers), include, (HEADER, b" " + unsigned),
                      dict(fields))
    fields[-1] = (b"b", base64.b64encode(signature(private_key, digest.digest())))
    folded: bytes = dkim.fold(tag_list(fields) + b"\r\n", namelen=len(HEADER), linesep=b"\r\n")
    return HEADER + b": " + folded


def tag_list(fields: list[tuple[bytes, bytes]]) -> bytes:
    return b"; ".join(b"=".join(field) for field in fields)


def signature(private_key: PrivateKey, digest: bytes) -> bytes:
    if isinstance(private_key, rsa.RSAPrivateKey):
        # RFC 6376 §3.3.1: RSASSA-PKCS1-v1_5 over the SHA-256 of the header data.
        return private_key.sign(digest, padding.PKCS1v15(), utils.Prehashed(hashes.SHA256()))
    # RFC 8463 §3: Ed25519 signs the SHA-256 hash of the header data, not the data itself.
    return private_key.sign(digest)
