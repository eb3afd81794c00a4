"""Every hostile case through the real Postfix, clamd, spamd, nsd and the milter: a clear answer,
the same workers alive, bounded memory and CPU. One stack for the whole module (cases.py, runner.py).

Bounds, from the dated run in README.md (largest figures there: peak worker RSS 193 MiB, for the
25 MiB uuencoded message; growth up to 5.6 x the message on the uuencode path, 1.7 x for a
base64 attachment, 1.6 x for the 100,000-member zip, 1.0 x for 25 MiB of text; CPU at most
0.65 s per message):

- RSS: no worker's peak during a message more than `case.rss_per_byte` x the message size +
  32 MiB above its RSS before it: 2 x for every case (the paths measured at 1.7 x or less), 6 x
  for the uuencoded ones (measured 4.7 x, and up to 5.6 x for the 10 MB block: the fixed part of its
  cost); 32 MiB is allocator slack. No worker above 384 MiB (2 x the largest peak measured).
  An archive expanded into memory, or one more copy of the message in a check, fails.
- CPU: 30 s per message, 40 x the largest measurement: this catches quadratic blowups (a 20 MB
  line walked per byte, 10,000 headers each compared with all the others), not speed, and
  cannot flake on a loaded machine.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.hostile.cases import CASES, Case
from tests.hostile.runner import CaseResult, HostileStack

pytestmark = pytest.mark.integration

MIB = 1024 * 1024
RSS_CEILING_KIB = 384 * 1024
RSS_SLACK_KIB = 32 * 1024
CPU_SECONDS = 30.0


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HostileStack]:
    with HostileStack(tmp_path_factory.mktemp("hostile")) as running:
        yield running


@pytest.fixture(scope="module")
def results() -> dict[str, CaseResult]:
    return {}


def run_once(hostile: HostileStack, results: dict[str, CaseResult], case: Case) -> CaseResult:
    if case.name not in results:
        results[case.name] = hostile.run(case)
    return results[case.name]


def explain(result: CaseResult) -> str:
    crashes = "\n".join(line[:400] for line in result.crash_events[:5])
    return (f"{result.case.name}: {result.outcome.describe()} (decided by {result.decided_by}, milter verdict "
            f"{result.verdict or '-'}: {result.milter_reason or '-'})\n{crashes}")


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_a_hostile_message_gets_a_clear_answer_and_costs_a_bounded_amount(hostile, results, case):
    result = run_once(hostile, results, case)
    assert result.outcome.code is not None, explain(result)
    assert not result.crash_events, explain(result)
    assert result.deliberate, explain(result)  # never the 451 of the crash path or of Postfix's default action
    assert result.workers_unchanged, f"workers {result.workers_before} -> {result.workers_after}: {explain(result)}"
    assert result.growth_kib <= case.rss_per_byte * result.size / 1024 + RSS_SLACK_KIB, (
        f"a worker grew {result.growth_kib} KiB for a message of {result.size} bytes")
    assert result.peak_rss_kib <= RSS_CEILING_KIB, f"peak worker RSS {result.peak_rss_kib} KiB"
    assert result.cpu_seconds <= CPU_SECONDS, f"{result.cpu_seconds:.1f} s of CPU: {explain(result)}"


@pytest.mark.parametrize("case", [case for case in CASES if case.expect is not None],
                         ids=[case.name for case in CASES if case.expect is not None])
def test_the_answer_is_the_one_recorded(hostile, results, case):
    """Who refuses what (README.md's table): a change here is a change in behaviour, for better or worse."""
    result = run_once(hostile, results, case)
    assert (result.outcome.code, result.decided_by) == case.expect, explain(result)


def test_every_forged_authentication_result_is_removed_through_postfix(hostile, results):
    """900 forged Authentication-Results: the milter asks Postfix to delete each (by index, last
    first); the delivered copy holds only ours."""
    case = next(case for case in CASES if case.name == "authresults-900")
    assert run_once(hostile, results, case).outcome.code == 250
    assert hostile.stack is not None
    copy = hostile.stack.wait_delivered(lambda d: b"<authresults-900@sender.test>" in d.data)
    head = copy.data.split(b"\r\n\r\n", 1)[0]
    assert head.count(b"Authentication-Results:") == 1
    assert b"spf=pass (" not in head
