"""How the runner reads a case's answer (no stack needed): who decided, what counts as clear."""

from __future__ import annotations

import pytest

from tests.hostile.cases import CASES, MAX_MESSAGE_SIZE, Case, sized
from tests.hostile.runner import CaseResult, _decided_by
from tests.hostile.smtp import Outcome, _outcome, dot_stuff

CASE = Case("t", "t", lambda: b"")


def result(outcome: Outcome, summary: dict[str, object], crashes: tuple[str, ...] = ()) -> CaseResult:
    return CaseResult(case=CASE, size=1, outcome=outcome, decided_by=_decided_by(outcome, summary),
                      verdict=str(summary.get("verdict") or ""), milter_reason="", crash_events=crashes,
                      workers_before=(1, 2), workers_after=(1, 2), workers_alive=True, peak_rss_kib=0,
                      growth_kib=0, cpu_seconds=0.0)


@pytest.mark.parametrize(("outcome", "summary", "decided_by", "deliberate"), [
    (Outcome("END", 250, "Ok"), {"verdict": "accept"}, "accepted", True),
    (Outcome("END", 550, "no", "5.7.1"), {"verdict": "reject", "reply": "550 5.7.1 no", "decided_by": "attachments"},
     "milter:attachments", True),
    (Outcome("END", 552, "too big", "5.3.4"), {}, "postfix", True),
    (Outcome("END", 552, "too big", "5.3.4"), {"verdict": "accept"}, "postfix (after milter accept)", True),
    # a check's own tempfail (DNS down, on_error = tempfail) is a policy answer
    (Outcome("END", 451, "later", "4.7.1"), {"verdict": "tempfail", "reply": "451 4.7.1 later", "decided_by": "dmarc"},
     "milter:dmarc", True),
    # the crash path: the milter's own verdict after an exception
    (Outcome("END", 451, "later", "4.3.0"), {"verdict": "tempfail", "reply": "451 4.3.0 x", "decided_by": "milter"},
     "milter:milter", False),
    # Postfix's milter_default_action (milter gone or too slow)
    (Outcome("END", 451, "Service unavailable", "4.7.1"), {}, "postfix", False),
    (Outcome("END", None, "connection closed by the server"), {}, "connection", False),
])
def test_the_runner_tells_a_policy_answer_from_an_accident(outcome, summary, decided_by, deliberate):
    read = result(outcome, summary)
    assert (read.decided_by, read.deliberate) == (decided_by, deliberate)


def test_a_crash_line_makes_any_answer_unclear():
    read = result(Outcome("END", 550, "no"), {"verdict": "reject", "reply": "550 no", "decided_by": "spf"},
                  crashes=('{"event": "check_crashed"}',))
    assert not read.deliberate


def test_replies_are_split_into_code_enhanced_code_and_text():
    assert _outcome("END", 550, "5.7.1 Attachment blocked") == Outcome("END", 550, "Attachment blocked", "5.7.1")
    assert _outcome("EHLO", 250, "mx.example.test") == Outcome("EHLO", 250, "mx.example.test")


def test_dot_stuffing_and_the_end_of_data():
    assert dot_stuff(b".a\r\nb\r\n.c") == b"..a\r\nb\r\n..c\r\n.\r\n"


@pytest.mark.parametrize("total", [MAX_MESSAGE_SIZE - 1000, MAX_MESSAGE_SIZE, MAX_MESSAGE_SIZE + 1, 1000, 1001])
def test_sized_messages_are_exactly_that_long(total):
    assert len(sized("s", total)) == total


def test_case_names_are_unique():
    assert len({case.name for case in CASES}) == len(CASES)
