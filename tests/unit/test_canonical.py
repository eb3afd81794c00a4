"""canonical.relaxed_body: dkimpy's relaxed body canonicalisation, byte for byte, faster."""

from __future__ import annotations

import pytest
from dkim.canonicalization import CanonicalizationPolicy, Relaxed
from hypothesis import given, settings
from hypothesis import strategies as st

from policymilter import canonical

# Bodies made of the bytes the rules are about, and others.
PIECES = st.sampled_from([b" ", b"\t", b"\r\n", b"\r", b"\n", b"x", b"  ", b" \t ", b"\x00", b"\xa0", b"="])
BODIES = st.lists(PIECES, max_size=60).map(b"".join)


@given(BODIES)
@settings(max_examples=2000)
def test_relaxed_body_is_dkimpys(body):
    assert canonical.relaxed_body(body) == Relaxed.canonicalize_body(body)


@pytest.mark.parametrize("body", [
    b"", b"\r\n", b"\r\n\r\n", b"a", b"a\r\n", b"a \r\n", b"a\t\r\n", b"a  b\r\n", b"a\t\tb \t\r\n\r\n\r\n",
    b" \r\n", b"\t", b"line\r\n \r\n", (b"x" * 76 + b"\r\n") * 64, b"trailing spaces   ", b"mixed \t \t end\r\n",
])
def test_fixed_cases(body):
    assert canonical.relaxed_body(body) == Relaxed.canonicalize_body(body)


def test_simple_goes_through_dkimpy():
    policy = CanonicalizationPolicy.from_c_value(b"relaxed/simple")
    assert canonical.body(policy, b"a  b\r\n\r\n") == b"a  b\r\n"
    assert canonical.body(CanonicalizationPolicy.from_c_value(b"simple/relaxed"), b"a  b\r\n\r\n") == b"a b\r\n"
