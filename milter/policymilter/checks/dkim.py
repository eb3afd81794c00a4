"""dkim: verify every DKIM-Signature (up to `dkim.max_signatures`) with dkimpy, at end of message.

The message is rebuilt exactly as Postfix holds it (header bytes with their original white
space and folding, CRLF line ends): DKIM fails on any byte that differs from what the signer
hashed. A result never refuses mail by itself; DMARC decides.
"""

from __future__ import annotations

import base64
import functools
import logging
import re
from dataclasses import dataclass
from typing import Any, Self

import authres
import dkim as dkimpy
import nacl.exceptions
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa, utils
from dkim.canonicalization import CanonicalizationPolicy, InvalidCanonicalizationPolicyError
from dkim.crypto import HASH_ALGORITHMS

from policymilter import canonical
from policymilter.author import Author
from policymilter.dns import Budget, DnsError, Resolver
from policymilter.domains import organizational_domain
from policymilter.message import Message
from policymilter.outcome import CheckResult, Findings, Outcome
from policymilter.pipeline import CheckContext, Stage

NAME = "dkim"
MAX_SIGNATURE_LENGTH = 8192
SIGNATURE = "dkim-signature"
_QUIET = logging.getLogger("policymilter.dkimpy")  # dkimpy logs every bad signature at ERROR
_QUIET.addHandler(logging.NullHandler())
_QUIET.propagate = False


@dataclass(frozen=True)
class Signature:
    """One signature's result, with RFC 8601 properties (header.d, header.s, header.b)."""

    domain: str
    selector: str
    result: str  # pass fail policy neutral temperror permerror
    b: str = ""
    reason: str = ""


@dataclass(frozen=True)
class DkimFindings(Findings):
    """Every signature verified (empty: the message had none)."""

    signatures: tuple[Signature, ...] = ()


_SAFE = re.compile(r"^[A-Za-z0-9._-]{1,253}$", re.ASCII)


class KeyLookup:
    """dkimpy's TXT lookup hook, on the policy's resolver within the check's budget: one lookup
    per key name for the message, however many signatures (or ARC instances) name it."""

    def __init__(self, resolver: Resolver, budget: Budget | None) -> None:
        self.resolver, self.budget = resolver, budget
        self._seen: dict[str, bytes | None] = {}

    def __call__(self, name: bytes | str, timeout: float = 5) -> bytes | None:
        text = (name.decode("ascii", "replace") if isinstance(name, bytes) else name).rstrip(".").lower()
        if text not in self._seen:
            records = self.resolver.txt(text, self.budget)  # DnsError propagates: temperror
            self._seen[text] = records[0].encode() if records else None
        return self._seen[text]


def _tag(signature: bytes, tag: bytes) -> str:
    for part in signature.split(b";"):
        key, _, value = part.strip().partition(b"=")
        if key.strip() == tag:
            return b"".join(value.split()).decode("ascii", "replace")
    return ""


def _classify(error: Exception) -> tuple[str, str]:
    """(result, reason) for an exception dkimpy (or a crypto library under it) raised."""
    if isinstance(error, (dkimpy.KeyFormatError, dkimpy.UnknownKeyTypeError)):
        return "permerror", "key record missing or malformed"  # RFC 8601 §2.7.1
    if isinstance(error, dkimpy.ValidationError) and "body hash mismatch" in str(error):
        return "fail", "body hash mismatch (message changed after signing)"
    if isinstance(error, dkimpy.ValidationError) and "body length mismatch" in str(error):
        return "fail", "l= does not match the body length"
    return "neutral", "signature could not be processed"


class Hashing:
    """dkimpy's per-signature verification step, with the message's canonical forms made once.

    dkimpy canonicalises and hashes the whole body, and canonicalises the whole header block,
    for every signature it verifies (and twice for every ARC instance): a message with many
    signatures or a long ARC chain costs seconds of CPU. Here the body is canonicalised once
    per body algorithm and hashed once per (algorithm, hash, l=), the header block once per
    header algorithm. Key lookup, tag parsing and the signature arithmetic stay dkimpy's; the
    steps are RFC 6376 §6.1.3 in dkimpy's order, and tests compare the results with dkimpy's
    own on valid and broken signatures.

    A signature whose l= leaves part of the body unsigned does not verify here: content added
    after signing is not authenticated (RFC 6376 §8.2), so nothing may trust it.
    """

    headers: list[tuple[bytes, bytes]]
    body: bytes
    key_problem: str = ""
    tlsrpt: bool
    seqtlsrpt: bool
    ktag: bytes
    pk: Any
    keysize: int
    minkey: int
    signed_headers: list[tuple[bytes, bytes]]

    def set_message(self, message: bytes) -> None:
        """dkimpy's, with its split of the message made by canonical.rfc822_parse (same result)."""
        self.share(canonical.Split(*canonical.rfc822_parse(message)) if message else canonical.Split([], b""))

    def share(self, split: canonical.Split) -> None:
        """Verify the message `split` holds, sharing its body and canonical bodies with every
        other verifier given it (the header list is this verifier's own: dkimpy may edit it)."""
        super().set_message(b"")  # type: ignore[misc]  # dkimpy's: resets its per-message state
        self.headers = [(name, value) for name, value in split.headers]
        self.body = split.body
        self._split = split
        self._heads: dict[str, list[Any]] = {}

    @classmethod
    def of(cls, message: Message, **options: Any) -> Self:
        """A verifier of `message`, made from the transaction's one split of it (Message.split)."""
        verifier = cls(b"", **options)  # type: ignore[call-arg]  # dkimpy's __init__, in the subclasses
        verifier.share(message.split())
        return verifier

    def _caches(self) -> tuple[dict[str, bytes], dict[tuple[str, bytes], bytes], dict[str, list[Any]]]:
        return self._split.bodies, self._split.digests, self._heads

    def canonical_body(self, policy: CanonicalizationPolicy) -> bytes:
        bodies, _, _ = self._caches()
        name = policy.body_algorithm.name
        if name not in bodies:
            bodies[name] = canonical.body(policy, self.body)
        return bodies[name]

    def body_digest(self, policy: CanonicalizationPolicy, algorithm: bytes) -> bytes:
        _, digests, _ = self._caches()
        key = (policy.body_algorithm.name, algorithm)
        if key not in digests:
            digests[key] = HASH_ALGORITHMS[algorithm](self.canonical_body(policy)).digest()
        return digests[key]

    def canonical_headers(self, policy: CanonicalizationPolicy) -> list[Any]:
        _, _, heads = self._caches()
        name = policy.header_algorithm.name
        if name not in heads:
            heads[name] = policy.canonicalize_headers(self.headers)
        return heads[name]

    def _positions(self, policy: CanonicalizationPolicy) -> dict[bytes, list[int]]:
        """Header name (lower case) -> where it occurs, top to bottom."""
        cache: dict[str, dict[bytes, list[int]]] = self.__dict__.setdefault("_positions_cache", {})
        name = policy.header_algorithm.name
        if name not in cache:
            index: dict[bytes, list[int]] = {}
            for position, (field, _) in enumerate(self.canonical_headers(policy)):
                index.setdefault(field.lower(), []).append(position)
            cache[name] = index
        return cache[name]

    def _hash_headers(self, hasher: Any, policy: CanonicalizationPolicy, include_headers: list[bytes],
                      sig_header: tuple[bytes, bytes]) -> list[tuple[bytes, bytes]]:
        """RFC 6376 §5.4.2 and §3.7, as dkimpy's hash_headers: each listed name takes its next
        instance from the bottom (none left: nothing), then the signature header with b= empty.

        dkimpy scans the whole header block for every name listed (h= naming thousands of
        absent fields times thousands of fields: seconds) and empties b= with a regex that
        nests optional white space (thousands of blank continuation lines: seconds). Here the
        block is indexed once and b= is emptied in one pass."""
        headers, positions = self.canonical_headers(policy), self._positions(policy)
        taken: dict[bytes, int] = {}
        signed = []
        for name in include_headers:
            found = positions.get(name, ())
            count = taken.get(name, 0)
            if count < len(found):
                signed.append(headers[found[-1 - count]])
                taken[name] = count + 1
        own = policy.canonicalize_headers([(sig_header[0], without_b_value(sig_header[1]))])
        for field, value in [*signed, *((field, value.rstrip()) for field, value in own)]:
            hasher.update(field)
            hasher.update(b":")
            hasher.update(value)
        return signed

    def verify_sig(self, sig: dict[bytes, bytes], include_headers: list[bytes], sig_header: tuple[bytes, bytes],
                   dnsfunc: Any) -> bool:
        # As dkimpy's, with each key record parsed once per message (an ARC chain names the
        # same sealer key twice per set). dkimpy reports a missing or broken key as a plain
        # "does not verify"; `key_problem` keeps why, for RFC 8601 §2.7.1's permerror.
        name = sig[b"s"] + b"._domainkey." + sig[b"d"] + b"."
        record = dnsfunc(name, timeout=getattr(self, "timeout", 5))
        keys: dict[bytes | None, Any] = self.__dict__.setdefault("_keys", {})
        if record not in keys:
            try:
                keys[record] = dkimpy.evaluate_pk(name, record)
            except (dkimpy.DKIMException, ValueError) as error:  # binascii.Error is a ValueError
                keys[record] = error
        self.key_problem = str(keys[record]) or "unusable key record" if isinstance(keys[record], Exception) else ""
        if self.key_problem:
            return False
        self.pk, self.keysize, self.ktag, self.seqtlsrpt = keys[record]
        return self.verify_sig_process(sig, include_headers, sig_header, dnsfunc)

    def verify_sig_process(self, sig: dict[bytes, bytes], include_headers: list[bytes],
                           sig_header: tuple[bytes, bytes], dnsfunc: Any) -> bool:
        if not self.tlsrpt and self.seqtlsrpt:  # RFC 8460 §3: a key only for TLS reports
            raise dkimpy.ValidationError("key is restricted to TLS reports (s=tlsrpt)")
        try:
            policy = CanonicalizationPolicy.from_c_value(sig.get(b"c", b"simple/simple"))
        except InvalidCanonicalizationPolicyError as error:
            raise dkimpy.MessageFormatError(f"invalid c= value: {error.args[0]}") from None
        algorithm = sig[b"a"]
        if b"bh" in sig:
            if b"l" in sig and int(sig[b"l"]) != len(self.canonical_body(policy)):
                raise dkimpy.ValidationError(f"body length mismatch: l={int(sig[b'l'])}, the body has "
                                             f"{len(self.canonical_body(policy))} bytes")
            expected = base64.b64decode(re.sub(rb"\s+", b"", sig[b"bh"]))
            if self.body_digest(policy, algorithm) != expected:
                raise dkimpy.ValidationError("body hash mismatch")
        if b"from" in include_headers:
            include_headers.append(b"from")  # as dkimpy: a second From breaks the signature
        hasher = dkimpy.HashThrough(HASH_ALGORITHMS[algorithm]())
        self.signed_headers = self._hash_headers(hasher, policy, include_headers, sig_header)
        signature = base64.b64decode(re.sub(rb"\s+", b"", sig[b"b"]))
        if self.ktag == b"rsa":
            valid = _rsa_valid(hasher.name, hasher.digest(), signature, self.pk)
            if valid and self.keysize < self.minkey:
                raise dkimpy.KeyFormatError(f"public key too small: {self.keysize}")
            return valid
        if self.ktag == b"ed25519":
            try:
                self.pk.verify(hasher.digest(), signature)
            except nacl.exceptions.BadSignatureError:
                return False
            return True
        raise dkimpy.UnknownKeyTypeError(self.ktag)


_B_TAG = re.compile(rb"[;\s]b\s*=")
_B_VALUE = re.compile(rb"[\sA-Za-z0-9+/=]*")


def without_b_value(value: bytes) -> bytes:
    """`value` with the b= tag's value removed (RFC 6376 §3.7), exactly as dkimpy's RE_BTAG
    substitution does it: after "b=", the base64 characters and the white space between them,
    up to the last base64 character; a line break ending the value goes too. Linear time."""
    out, pos = [], 0
    for tag in _B_TAG.finditer(value):
        if tag.start() < pos:
            continue  # inside a value already removed (its characters are all base64 or space)
        out.append(value[pos:tag.end()])
        run = _B_VALUE.match(value, tag.end())
        assert run is not None  # the pattern matches the empty string
        pos = tag.end() + len(run.group().rstrip(b" \t\r\n\x0b\x0c"))
        if value[pos:] in (b"\r\n", b"\n"):
            pos = len(value)
    out.append(value[pos:])
    return b"".join(out)


_PREHASHED = {"sha256": hashes.SHA256(), "sha1": hashes.SHA1()}


@functools.lru_cache(maxsize=256)
def _rsa_public(modulus: int, exponent: int) -> rsa.RSAPublicKey:
    return rsa.RSAPublicNumbers(exponent, modulus).public_key()


def _rsa_valid(digest_name: str, digest: bytes, signature: bytes, public: dict[str, int]) -> bool:
    """RSASSA-PKCS1-v1_5 (RFC 8017 §8.2.2) through OpenSSL: dkimpy does the arithmetic in Python,
    about 0.5 ms a signature, which a long ARC chain multiplies."""
    try:
        key = _rsa_public(public["modulus"], public["publicExponent"])
    except ValueError as error:  # an exponent or modulus OpenSSL refuses
        raise dkimpy.KeyFormatError(f"unusable RSA key: {error}") from None
    try:
        key.verify(signature, digest, padding.PKCS1v15(), utils.Prehashed(_PREHASHED[digest_name]))
    except InvalidSignature:
        return False
    return True


class Verifier(Hashing, dkimpy.DKIM):
    """One parse of the message for all its DKIM signatures."""


def _length_shortfall(value: bytes, verifier: Verifier) -> str:
    """Why a signature's l= leaves part of the body unsigned ("" when it covers it all)."""
    length, c = _tag(value, b"l"), _tag(value, b"c") or "simple/simple"
    if not length:
        return ""
    try:
        policy = CanonicalizationPolicy.from_c_value(c.encode())
    except InvalidCanonicalizationPolicyError:
        return ""  # dkimpy refuses the signature itself
    body = len(verifier.canonical_body(policy))
    if not length.isdigit() or int(length) >= body:
        return ""  # not a number, or longer than the body: dkimpy fails it
    return f"l={int(length)} signs {int(length)} of {body} body bytes: the rest is not authenticated"


def verify_one(verifier: Verifier, value: bytes, index: int, lookup: KeyLookup) -> tuple[str, str]:
    if len(value) > MAX_SIGNATURE_LENGTH:
        # No signer writes this much (an RSA-4096 b= is 684 characters); dkimpy's tag parsing and
        # canonicalisation of it would cost CPU for nothing.
        return "permerror", f"signature header over {MAX_SIGNATURE_LENGTH} bytes"
    shortfall = _length_shortfall(value, verifier)
    if shortfall:
        # RFC 6376 §8.2: content appended after signing. RFC 8601 §2.7.1 "policy": signed, but
        # not acceptable here; DMARC and every trust decision see no pass.
        return "policy", shortfall
    if _tag(value, b"a").lower() == "rsa-sha1":
        return "policy", "rsa-sha1 signatures are not accepted (RFC 8301 §3.1)"
    try:
        ok = verifier.verify(idx=index, dnsfunc=lookup)
    except DnsError:
        return "temperror", "key lookup failed"
    except Exception as error:  # hostile signatures reach deep into dkimpy, nacl and base64
        return _classify(error)
    if ok:
        return "pass", ""
    if verifier.key_problem:
        return "permerror", "key record missing or malformed"
    return "fail", "signature did not verify"


def verify(message: Message, resolver: Resolver, budget: Budget | None, limit: int) -> list[Signature]:
    """Verify up to `limit` signatures, those aligned with the From domain first (DMARC needs
    them; a message may carry many unrelated forwarder signatures)."""
    written_by = message.author()
    authors = {organizational_domain(written_by.domain)} if isinstance(written_by, Author) else set()
    values = [(index, h.value) for index, h in enumerate(h for h in message.headers if h.name.lower() == SIGNATURE)]
    if not values:
        return []
    values.sort(key=lambda item: organizational_domain(_tag(item[1], b"d").lower() or "-") not in authors)
    verifier = Verifier.of(message, logger=_QUIET, minkey=1024, timeout=resolver.timeout)
    lookup = KeyLookup(resolver, budget)
    results = []
    for index, value in values[:limit]:
        domain, selector, b = _tag(value, b"d").lower(), _tag(value, b"s"), _tag(value, b"b")[:8]
        result, reason = verify_one(verifier, value, index, lookup)
        results.append(Signature(domain, selector, result, b, reason))
    return results


def _overall(signatures: list[Signature]) -> Outcome:
    for wanted in ("pass", "fail", "policy", "temperror", "permerror", "neutral"):
        if any(s.result == wanted for s in signatures):
            return Outcome(wanted)
    return Outcome.NONE


def _safe(value: str) -> str | None:
    """Only values that need no quoting go into our header (a signature is attacker text)."""
    return value if _SAFE.match(value) else None


def _entry(signature: Signature) -> object:
    b = signature.b if re.fullmatch(r"[A-Za-z0-9+/]{1,8}", signature.b, re.ASCII) else ""
    properties = [authres.AuthenticationResultProperty("header", "b", b)] if b else []
    return authres.DKIMAuthenticationResult(result=signature.result, header_d=_safe(signature.domain),
                                            header_s=_safe(signature.selector), properties=properties,
                                            reason=signature.reason or None)


class Dkim:
    name = NAME
    stage = Stage.EOM
    requires: tuple[str, ...] = ()

    def run(self, context: CheckContext) -> CheckResult:
        resolver, budget = context.dns()
        signatures = verify(context.content, resolver, budget, context.policy.dkim.max_signatures)
        if not signatures:
            return CheckResult(NAME, Outcome.NONE, reason="no DKIM-Signature",
                               authres=(authres.DKIMAuthenticationResult(result="none"),), findings=DkimFindings())
        outcome = _overall(signatures)
        passed = [s.domain for s in signatures if s.result == "pass"]
        reason = "; ".join(f"d={s.domain} s={s.selector}: {s.result}" for s in signatures)
        return CheckResult(NAME, outcome, reason=reason, detail=passed[0] if passed else "",
                           authres=tuple(_entry(s) for s in signatures), findings=DkimFindings(tuple(signatures)))
