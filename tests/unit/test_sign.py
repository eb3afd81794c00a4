"""sign: our DKIM-Signature is byte for byte dkimpy's dkim.sign() for the same message, key,
headers and time, and verifies with dkimpy; and the dkimpy internals sign.py mirrors are the
ones it was written against (dkimpy pinned <1.2)."""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import inspect
from dataclasses import dataclass
from unittest import mock

import dkim
import dkim.canonicalization
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policymilter import signing_keys
from policymilter.checks.signing import sign
from policymilter.signing_keys import KeyType, PrivateKey

NOW = 1_796_000_000.75  # dkimpy writes t=int(time.time())
CANONICALIZATIONS = ["relaxed/relaxed", "simple/simple", "relaxed/simple", "simple/relaxed"]


@dataclass(frozen=True)
class Key:
    name: str
    file: bytes  # the key file, which dkimpy's sign() takes as it is
    private: PrivateKey  # what load_private_key makes of it, which we sign with
    record: str


@functools.cache
def key(name: str) -> Key:
    kind, bits = {"rsa-2048": (KeyType.RSA, 2048), "rsa-1024": (KeyType.RSA, 1024),
                  "ed25519": (KeyType.ED25519, None)}[name]
    file = signing_keys.generate_private_key(kind, bits)
    private = signing_keys.parse_private_key(file, kind.algorithm)
    return Key(name, file, private, signing_keys.public_record(private))


KEYS = ["rsa-2048", "rsa-1024", "ed25519"]


def dkimpy(message: bytes, k: Key, canonicalization: str, include: list[bytes]) -> bytes:
    algorithm = b"rsa-sha256" if k.name.startswith("rsa") else b"ed25519-sha256"
    with mock.patch("time.time", return_value=NOW):
        return bytes(dkim.sign(message, b"s1", b"example.org", k.file, canonicalize=tuple(canonicalization.encode()
                               .split(b"/")), include_headers=include, signature_algorithm=algorithm))


def ours(message: bytes, k: Key, canonicalization: str, include: list[bytes]) -> bytes:
    with mock.patch("time.time", return_value=NOW):
        return sign.dkim_signature(message, b"example.org", b"s1", k.private, canonicalization.encode(), include)


def verifies(header: bytes, message: bytes, k: Key) -> bool:
    return bool(dkim.verify(header + message, dnsfunc=lambda name, timeout=5: k.record.encode()))


HEAD = b"From: Alice <alice@example.org>\r\nTo: bob@elsewhere.test\r\nSubject: invoice 42\r\n"
CASES = {
    "plain": HEAD + b"\r\nPlease pay 10 EUR.\r\n",
    "folded headers": (b"From: Alice\r\n <alice@example.org>\r\nTo: bob@elsewhere.test,\r\n\tcarol@elsewhere.test\r\n"
                       b"Subject: a subject\r\n  folded  twice \r\n\t\r\n\r\nbody\r\n"),
    "repeated headers": (b"Received: from a\r\nReceived: from b\r\n" + HEAD + b"To: second@elsewhere.test\r\n"
                         b"Subject: second\r\nCc: c@x.test\r\nCc: d@x.test\r\n\r\nbody\r\n"),
    "empty body": HEAD + b"\r\n",
    "headers only": HEAD,
    "trailing blank lines": HEAD + b"\r\nbody\r\n\r\n\r\n\r\n",
    "blank lines only": HEAD + b"\r\n\r\n\r\n",
    "no final line break": HEAD + b"\r\nbody",
    "white space": (b"From:alice@example.org  \r\nSubject:\t two  words\t\r\n\r\n  body  with \t space \r\n"
                    b" \t\r\nend\r\n"),
    "8-bit": ("From: Zoë <zoe@example.org>\r\nSubject: café, 東京\r\n\r\nGrüße aus Köln\r\n".encode()
              + b"\xff\xfe\x80 latin-1 \xe9\r\n"),
    "lone LF": b"From: alice@example.org\nSubject: lf\r\nTo: b@x.test\n\nline one\nline two\r\n\n",
    "lone CR": b"From: alice@example.org\r\nSubject: cr\rstill subject\r\n\r\nline\rone\r\n",
    "no From": b"Subject: none\r\n\r\nbody\r\n",
}


@pytest.mark.parametrize("canonicalization", CANONICALIZATIONS)
@pytest.mark.parametrize("key_name", KEYS)
@pytest.mark.parametrize("case", list(CASES))
def test_the_signature_is_dkimpys_byte_for_byte_and_verifies(case, key_name, canonicalization):
    message, k = CASES[case], key(key_name)
    include = sign.signed_headers(message)
    header = ours(message, k, canonicalization, include)
    assert header == dkimpy(message, k, canonicalization, include)
    assert verifies(header, message, k)


def test_sign_returns_the_header_value_the_milter_adds():
    """As the milter added dkimpy's before: the value after "DKIM-Signature:", LF-folded."""
    message, k = CASES["repeated headers"], key("rsa-2048")
    with mock.patch("time.time", return_value=NOW):
        value = sign.sign(message, "example.org", "s1", k.private, "relaxed/relaxed")
    expected = dkimpy(message, k, "relaxed/relaxed", sign.signed_headers(message))
    assert value == expected.decode().partition(":")[2].strip().replace("\r\n", "\n")
    assert "\n " in value and "\r" not in value


_NAMES = st.sampled_from([b"From", b"from", b"To", b"Cc", b"Subject", b"SUBJECT", b"Date", b"Message-ID",
                          b"Reply-To", b"Sender", b"MIME-Version", b"Content-Type", b"Received", b"X-Other",
                          b"References", b"DKIM-Signature"])
_TEXT = st.binary(max_size=40).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))
_FOLD = st.sampled_from([b"\r\n ", b"\r\n\t", b"\r\n  \t"])


@st.composite
def _header(draw: st.DrawFn) -> bytes:
    parts = draw(st.lists(_TEXT, min_size=1, max_size=3))
    value = b"".join(part + (draw(_FOLD) if i < len(parts) - 1 else b"") for i, part in enumerate(parts))
    return draw(_NAMES) + b":" + draw(st.sampled_from([b"", b" ", b"\t", b"  "])) + value


@st.composite
def messages(draw: st.DrawFn) -> bytes:
    """Headers (folded, repeated, 8-bit), then a body of any bytes: lone LF and CR, trailing
    blank lines, white space at line ends, or nothing at all."""
    head = b"\r\n".join(draw(st.lists(_header(), min_size=1, max_size=12))) + b"\r\n"
    lines = draw(st.lists(st.one_of(st.binary(max_size=30), st.sampled_from([b"", b" ", b"\t", b"x \t"])),
                          max_size=8))
    body = b"\r\n".join(lines) + draw(st.sampled_from([b"", b"\r\n", b"\r\n\r\n", b"\r\n\r\n\r\n", b"\n", b"\n\n"]))
    return head + draw(st.sampled_from([b"\r\n", b"\n", b""])) + body


@settings(max_examples=300, deadline=None)
@given(messages(), st.sampled_from(KEYS), st.sampled_from(CANONICALIZATIONS))
def test_any_message_is_signed_as_dkimpy_signs_it(message, key_name, canonicalization):
    k = key(key_name)
    include = sign.signed_headers(message)
    try:
        expected = dkimpy(message, k, canonicalization, include)
    except dkim.MessageFormatError:  # a header line dkimpy cannot parse: we refuse it the same way
        with pytest.raises(dkim.MessageFormatError):
            ours(message, k, canonicalization, include)
        return
    header = ours(message, k, canonicalization, include)
    assert header == expected
    assert verifies(header, message, k)


# --- the dkimpy internals sign.py relies on ---------------------------------------------------

# sha256 of the source of the dkimpy methods whose steps dkim_signature mirrors, as in dkimpy
# 1.1.8. A change here means: read the new DKIM.sign and DomainSigner.gen_header, bring
# dkim_signature in line, run these tests, then record the new digests.
MIRRORED = {
    "DKIM.sign": "427b6d31fef46a0404217d03c54c04f13a86735bb1f39c5b1f1b310ed3ef0f8b",
    "DomainSigner.gen_header": "e86f61152fe5939815530ae770bc54ffd03f2616b02e5b757b54255a8a2ba4b5",
}


def test_dkimpy_is_the_version_sign_py_was_written_against():
    version = importlib.metadata.version("dkimpy")
    assert version.split(".")[:2] == ["1", "1"], f"dkimpy {version}: setup.cfg pins <1.2; review checks/signing/sign.py"


def test_the_dkimpy_methods_sign_py_mirrors_have_not_changed():
    current = {name: hashlib.sha256(inspect.getsource(getattr(getattr(dkim, name.split(".")[0]),
                                                              name.split(".")[1])).encode()).hexdigest()
               for name in MIRRORED}
    assert current == MIRRORED, ("dkimpy's signing code changed: review checks/signing/sign.py "
                                 "(dkim_signature mirrors these methods), then update MIRRORED")


CALLED = [  # what sign.py calls, with the parameters it passes
    (dkim.rfc822_parse, ["message"]),
    (dkim.fold, ["header", "namelen", "linesep"]),
    (dkim.hash_headers, ["hasher", "canonicalize_headers", "headers", "include_headers", "sigheader", "sig"]),
    (dkim.canonicalization.CanonicalizationPolicy.from_c_value, ["c"]),
    (dkim.canonicalization.CanonicalizationPolicy.to_c_value, ["self"]),
    (dkim.canonicalization.CanonicalizationPolicy.canonicalize_headers, ["self", "headers"]),
    (dkim.canonicalization.CanonicalizationPolicy.canonicalize_body, ["self", "body"]),
]


@pytest.mark.parametrize(("function", "parameters"), CALLED, ids=[function.__qualname__ for function, _ in CALLED])
def test_the_dkimpy_functions_sign_py_calls_keep_their_parameters(function, parameters):
    assert list(inspect.signature(function).parameters) == parameters


def test_dkimpy_hashes_both_algorithms_with_sha256_and_empties_b_with_re_btag():
    assert dkim.crypto.HASH_ALGORITHMS[b"rsa-sha256"] is hashlib.sha256
    assert dkim.crypto.HASH_ALGORITHMS[b"ed25519-sha256"] is hashlib.sha256
    assert dkim.RE_BTAG.sub(b"\\1", b"a=1; b=AB\r\n CD; c=2") == b"a=1; b=; c=2"
