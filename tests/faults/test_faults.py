"""The fault suite's short form: every scenario through the real Postfix, counts and bounds only.

One nsd, one clamd, one spamd and one MailStack for the whole module; the milter is started afresh
for each scenario (scenarios.py). `python -m tests.faults` runs the same scenarios and prints the
table; README.md beside this file says what each one shows.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.faults import report
from tests.faults.scenarios import SCENARIOS, Result, Scenario, run_scenario
from tests.faults.world import World

pytestmark = pytest.mark.integration

FD_MARGIN = 10  # descriptors the tree may hold at the end beyond the start (a log file reopened, a socket)
THREAD_MARGIN = 10
RSS_GROWTH = 2.0  # generous: the end of the load may hold at most twice the RSS of its start


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with World(tmp_path_factory.mktemp("faults")) as running:
        yield running


def check_counts(scenario: Scenario, result: Result) -> None:
    shown = report.text([result])
    assert result.sent > 0, shown
    assert (result.lost, result.duplicated, result.unchecked) == (0, 0, 0), shown
    assert result.refused == 0, shown  # no scenario sends anything the policy refuses
    assert result.delivered == result.sent, shown  # every message delivered once the fault was cleared
    if scenario.expect_deferrals:
        assert result.deferrals > 0, shown
    else:
        assert result.deferrals == 0, shown
    for needle in scenario.expect_reasons:
        assert any(needle in reason for reason in result.reasons), f"no deferral naming {needle!r}\n{shown}"
    if scenario.expect_not_scanned:
        assert result.not_spam_scanned > 0, shown
    else:
        assert result.not_spam_scanned == 0, shown
    unexpected = {e for e in result.events if not e.startswith("info ")} - set(scenario.expect_events)
    assert not unexpected, shown
    for event in scenario.expect_events:
        assert result.events[event] > 0, f"no {event!r} in the milter log\n{shown}"
    if scenario.expect_ratelimit:
        # Exactly these ratelimit= values on 587: `pass` only where the store is fine (no run reaches a
        # limit); `temperror:store` and `pass` where it failed and then answered again.
        assert set(result.ratelimit) == set(scenario.expect_ratelimit), shown


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_scenario(world: World, scenario: Scenario) -> None:
    result = run_scenario(world, scenario)
    print(report.text([result]))
    check_counts(scenario, result)
    shown = report.text([result])
    if scenario.name == "worker-kill":
        assert result.events["error worker_exited"] == 1, shown
    if scenario.name == "reload-storm":
        assert result.events["info reloaded"] >= 1, shown
    if scenario.name == "broken-policy":
        assert result.events["error reload_failed"] == 1 and result.events["info reloaded"] == 1, shown
    if scenario.load:
        assert result.tree is not None
        start, _peak, end = result.tree
        assert end.processes == start.processes, shown
        assert end.fds <= start.fds + FD_MARGIN, shown
        assert end.threads <= start.threads + THREAD_MARGIN, shown
        assert end.rss_kib <= start.rss_kib * RSS_GROWTH, shown
