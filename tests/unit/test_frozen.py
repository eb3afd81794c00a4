"""evolve(): a cheaper dataclasses.replace, only where it is the same."""

import dataclasses

import pytest

from policymilter.facts import Envelope, Session
from policymilter.frozen import evolve, suits
from policymilter.outcome import CheckResult, Outcome
from policymilter.pipeline import CheckContext


@pytest.mark.parametrize("cls", [CheckContext, CheckResult, Session, Envelope])
def test_the_classes_it_is_used_on_suit_it(cls):
    assert suits(cls)


def test_it_equals_dataclasses_replace():
    result = CheckResult("spf", Outcome.PASS, reason="ok", detail="mailfrom")
    assert evolve(result, elapsed_ms=1.5) == dataclasses.replace(result, elapsed_ms=1.5)
    assert result.elapsed_ms == 0.0  # the original is untouched
    with pytest.raises(dataclasses.FrozenInstanceError):
        evolve(result, reason="x").reason = "y"  # type: ignore[misc]


def test_an_unknown_field_is_an_error():
    with pytest.raises(TypeError, match="no field nonsense"):
        evolve(CheckResult("spf", Outcome.PASS), nonsense=1)
