"""policy-milter report: summary lines as logs.py writes them, read back and counted."""

from __future__ import annotations

import argparse
import gzip
import io
import json
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from policymilter.cli import build_parser
from policymilter.logread import MAX_LINE, Malformed, Summary, open_lines, parse_line
from policymilter.logs import LOGGER, SUMMARY_KEYS, SUMMARY_TAIL, setup_logging
from policymilter.report import (
    Quantiles,
    Report,
    SpikeRule,
    TopCounter,
    Window,
    cmd_report,
    parse_when,
    render_text,
    summarise,
)

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
CHECKS = {"origin": "pass:auth", "spf": "skipped:listener", "antivirus": "clean", "signing": None}


def fields(**changes: Any) -> dict[str, Any]:
    """Every key of a summary line in the writer's order (conversation.summary_fields)."""
    values: dict[str, Any] = {
        "queue_id": "4QABC", "stage": "eom", "listener": "submission", "client": "192.0.2.10",
        "client_name": "unknown", "helo": "laptop", "tls": "TLSv1.3/TLS_AES_256_GCM_SHA384", "auth": "alice",
        "mech": "PLAIN", "from": "<alice@example.org>", "rcpts": 1, "size": 1432,
        **CHECKS,
        "verdict": "accept", "reply": None, "decided_by": None, "reason": None, "mode": "enforce", "ms": 12.4,
        "check_ms": 0.7,
    }
    for key, value in changes.items():
        values[key.rstrip("_")] = value  # from_= for "from"
    assert tuple(k for k in values if k in SUMMARY_KEYS) == SUMMARY_KEYS
    assert tuple(values)[-len(SUMMARY_TAIL):] == SUMMARY_TAIL
    return values


def written(log_format: str, when: datetime = NOW, event: str = "summary", conn: str | None = "2.17",
            **changes: Any) -> str:
    """One line exactly as the milter's own formatter writes it at `when`."""
    stream = io.StringIO()
    logger = setup_logging(log_format, "info", stream=stream)
    try:
        handler = next(h for h in logger.handlers if getattr(h, "policymilter_owned", False))
        extra: dict[str, Any] = {"event": event, "fields": fields(**changes) if event == "summary" else changes}
        if conn is not None:
            extra["conn"] = conn
        record = logger.makeRecord(LOGGER, logging.INFO, __file__, 0, event, (), None, extra=extra)
        record.created, record.msecs = when.timestamp(), (when.microsecond // 1000)
        return handler.format(record) + "\n"
    finally:
        for handler in [h for h in logger.handlers if getattr(h, "policymilter_owned", False)]:
            logger.removeHandler(handler)


# --- reading one line --------------------------------------------------------------------------------


@pytest.mark.parametrize("log_format", ["kv", "json"])
def test_a_written_summary_reads_back_as_written(log_format):
    reason = 'login "al ice" = \x1b[31mred\u2028 café'
    line = written(log_format, verdict="reject", reason=reason, decided_by="origin", auth="al ice",
                   reply='550 5.7.1 "no"', ms=0.25)
    assert parse_line(line) == Summary(
        time=NOW, listener="submission", verdict="reject", stage="eom", client="192.0.2.10", auth="al ice",
        sender="<alice@example.org>", decided_by="origin", reason=reason,
        ms=0.2 if log_format == "kv" else 0.25,  # kv writes floats with one decimal
        check_ms=0.7, checks=tuple(CHECKS.items()),
    )


@pytest.mark.parametrize("line", [
    "",
    "=== 21:58:30 start: policy-milter run --policy /etc/policy-milter\n",
    "2026-12-01T21:58:31.597Z info started socket=unix:/x uid=0 workers=2 msg=\"listening\"\n",
    "2026-12-01T21:58:31.597Z error conn=1.2 callback_crashed msg=boom\n",
    "    ValueError: x summary verdict=accept listener=smtp\n",  # an indented traceback line
    '{"ts": "2026-12-01T21:58:31.597Z", "level": "info", "event": "reloaded", "generation": 2}\n',
    '["summary"]\n',
    "{not json at all\n",
])
def test_a_line_that_is_no_summary_is_skipped(line):
    assert parse_line(line) is None


def test_non_summary_events_of_the_real_writer_are_skipped():
    for log_format in ("kv", "json"):
        assert parse_line(written(log_format, event="stopped", conn=None, transactions=0)) is None


@pytest.mark.parametrize(("line", "problem"), [
    ('2026-12-01T10:00:00.000Z info conn=1.1 summary listener=smtp verdict=reject reason="cut sho\n',
     "reason: the quoted value does not decode"),
    ("2026-12-01T10:00:00.000Z info conn=1.1 summary listener=smtp rcpts=1\n", "no listener or no verdict"),
    ("2026-12-01T10:00:00.000Z info conn=1.1 summary listener=smtp verdict=accept ms=fast\n", "is not a number"),
    ("2026-12-01T10:00:00.000Z info conn=1.1 summary listener=smtp verdict=accept rcpts=1.5\n", "is not a number"),
    ("2026-12-01T10:00:00.000Z info conn=1.1 summary listener=smtp verdict=accept listener=x\n", "appears twice"),
    ("2026-12-01T10:00:00.000Z info conn=1.1 summary listener=smtp verdict accept\n", "expected key=value"),
    ('2026-12-01T10:00:00.000Z info conn=1.1 summary listener=smtp verdict="a"b\n', "unexpected 'b'"),
    ('{"ts": "2026-12-01T10:00:00.000Z", "level": "info", "event": "summary", "listener": "sm\n',
     "JSON does not decode"),
    ('{"ts": "yesterday", "event": "summary", "listener": "smtp", "verdict": "accept"}\n', "is not ISO 8601"),
    ('{"event": "summary", "listener": "smtp", "verdict": "accept", "auth": 7}\n', "auth is not a string"),
    ('{"event": "summary", "listener": "smtp", "verdict": "accept", "ms": true}\n', "ms is not a number"),
    ('{"event": "summary", "listener": "smtp", "verdict": "accept", "ms": -1}\n', "ms is not a number"),
])
def test_a_malformed_summary_line_says_why(line, problem):
    with pytest.raises(Malformed, match=problem.replace("(", r"\(")):
        parse_line(line)


def test_syslog_prefixes_are_taken_off_and_their_time_used():
    body = written("kv").split(" ", 1)[1]  # syslog lines carry no time of the milter's
    iso = parse_line(f"2026-12-01T13:00:00.123456+01:00 mx1 policy-milter[812]: {body}")
    assert iso is not None and iso.time == NOW.replace(microsecond=123456) and iso.verdict == "accept"
    bsd = parse_line(f"Dec  1 12:00:00 mx1 policy-milter: {body}", now=NOW + timedelta(hours=3))
    assert bsd is not None and bsd.time is not None and bsd.time.tzinfo is not None
    json_body = json.dumps({k: v for k, v in json.loads(written("json")).items() if k != "ts"})
    untimed = parse_line(f"<22>Dec 31 23:59:00 mx1 policy-milter: {json_body}", now=NOW)
    assert untimed is not None and untimed.time is not None and untimed.time.year == 2025  # never in the future


# --- counting -------------------------------------------------------------------------------------------


def crafted_log() -> list[str]:
    """Both formats, mixed: 9 summaries (1 outside a 10:00-12:00 window), 2 malformed, 2 other lines."""
    at = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)
    return [
        written("kv", at),
        written("json", at + timedelta(minutes=1), from_="<bob@example.org>", auth="bob"),
        written("kv", at + timedelta(minutes=2), listener="smtp", auth=None, mech=None, client="203.0.113.5",
                from_="<spam@bad.test>", origin="pass:anonymous", verdict="reject", decided_by="spf",
                reason="SPF fail for bad.test", spf="fail:mailfrom", ms=30.0, check_ms=20.0),
        written("json", at + timedelta(minutes=3), listener="smtp", auth=None, client="203.0.113.5",
                from_="<spam@bad.test>", verdict="reject", decided_by="spf", reason="SPF fail for bad.test",
                spf="fail:mailfrom", ms=10.0, check_ms=5.0),
        written("kv", at + timedelta(minutes=4), listener="smtp", auth=None, client="198.51.100.7",
                from_="<x@other.test>", verdict="reject", decided_by="antivirus", reason="infected",
                antivirus="infected:Eicar-Signature", ms=50.0, check_ms=45.0),
        written("kv", at + timedelta(minutes=5), listener="smtp", auth=None, client="198.51.100.7",
                from_="<x@other.test>", verdict="tempfail", decided_by="antivirus", reason="clamd unreachable",
                antivirus="error:clamd", ms=5000.0, check_ms=4999.0),
        "2026-12-01T10:06:00.000Z info started workers=2 msg=listening\n",
        '2026-12-01T10:07:00.000Z info conn=1.9 summary listener=smtp verdict=reject reason="cut\n',
        written("json", at + timedelta(minutes=8), listener="submissions", stage="mail", from_="<>",
                verdict="discard", ms=None),
        '{"ts": "2026-12-01T10:09:00.000Z", "level": "info", "event": "summary", "listener"\n',
        written("kv", at + timedelta(minutes=10)),
        written("kv", at - timedelta(hours=1)),  # outside the window below
        "    Traceback (most recent call last):\n",
    ]


def test_counts_of_a_crafted_log():
    result = summarise(crafted_log()).result(top=5)
    assert result["input"] | {"malformed_examples": None} == {
        "files": [], "lines": 13, "summaries": 9, "malformed": 2, "malformed_examples": None,
        "outside_window": 0, "without_time_excluded": 0,
    }
    assert [(e["line"], e["problem"]) for e in result["input"]["malformed_examples"]] == [
        (8, "reason: the quoted value does not decode"), (10, "JSON does not decode: Expecting ':' delimiter: "
                                                              "line 1 column 83 (char 82)")]
    assert result["messages"] == {
        "total": 9,
        "by_verdict": {"accept": 4, "discard": 1, "reject": 3, "tempfail": 1},
        "by_listener": {"smtp": {"total": 4, "reject": 3, "tempfail": 1},
                        "submission": {"total": 4, "accept": 4},
                        "submissions": {"total": 1, "discard": 1}},
    }
    reject, tempfail = result["refused"]["reject"], result["refused"]["tempfail"]
    assert reject["total"] == 3 and reject["exact"]
    assert [(e["key"], e["count"]) for e in reject["senders"]] == [("<spam@bad.test>", 2), ("<x@other.test>", 1)]
    assert [(e["key"], e["count"]) for e in reject["clients"]] == [("203.0.113.5", 2), ("198.51.100.7", 1)]
    assert [(e["key"], e["count"]) for e in reject["reasons"]] == [("spf: SPF fail for bad.test", 2),
                                                                  ("antivirus: infected", 1)]
    assert [(e["key"], e["count"]) for e in reject["deciders"]] == [("spf", 2), ("antivirus", 1)]
    assert [(e["key"], e["count"]) for e in tempfail["reasons"]] == [("antivirus: clamd unreachable", 1)]
    assert result["checks"] == {
        "antivirus": {"clean": 7, "infected": 1, "error": 1},
        "origin": {"pass": 9},
        "signing": {"not-run": 9},
        "spf": {"skipped": 7, "fail": 2},
    }
    smtp = result["times"]["by_listener"]["smtp"]
    assert smtp["ms"] == {"count": 4, "p50": 30.0, "p99": 5000.0, "max": 5000.0, "exact": True}
    assert smtp["check_ms"] == {"count": 4, "p50": 20.0, "p99": 4999.0, "max": 4999.0, "exact": True}
    assert result["times"]["by_listener"]["submissions"]["ms"]["count"] == 0  # ms=- is no time, not 0
    assert result["times"]["per_check"] is None
    logins = {row["login"]: row for row in result["logins"]["top"]}
    assert set(logins) == {"alice", "bob"}
    assert (logins["alice"]["messages"], logins["alice"]["hours"]) == (4, {"2026-12-01T09:00:00Z": 1,
                                                                          "2026-12-01T10:00:00Z": 3})


def test_a_window_keeps_what_falls_inside_it():
    window = Window(datetime(2026, 12, 1, 10, 0, tzinfo=UTC), datetime(2026, 12, 1, 10, 5, tzinfo=UTC))
    report = summarise([*crafted_log(), "Dec  1 10:01:00 mx1 other[1]: info conn=1 summary listener=smtp "
                                        "verdict=accept\n"], window)
    result = report.result()
    # 10:00-10:04 are in; 10:05, 10:08, 10:10 and 09:00 are out; the syslog line from another ident
    # is not ours: no prefix is taken off, and "Dec" is no level, so it is skipped
    assert (result["messages"]["total"], result["input"]["outside_window"]) == (5, 4)
    assert result["messages"]["by_verdict"] == {"accept": 2, "reject": 3}
    assert (result["window"]["first"], result["window"]["last"]) == ("2026-12-01T10:00:00Z", "2026-12-01T10:04:00Z")


def test_a_line_without_a_time_counts_only_when_no_window_is_set():
    body = written("kv").split(" ", 1)[1]
    assert summarise([body]).result()["messages"]["total"] == 1
    bounded = summarise([body], Window(since=NOW - timedelta(days=1))).result()
    assert (bounded["messages"]["total"], bounded["input"]["without_time_excluded"]) == (0, 1)


@pytest.mark.parametrize(("text", "expected"), [
    ("24h", NOW - timedelta(hours=24)),
    ("7d", NOW - timedelta(days=7)),
    ("30m", NOW - timedelta(minutes=30)),
    ("2w", NOW - timedelta(weeks=2)),
    ("2026-11-30", datetime(2026, 11, 30, tzinfo=UTC)),
    ("2026-11-30T08:15", datetime(2026, 11, 30, 8, 15, tzinfo=UTC)),
    ("2026-11-30T08:15:00Z", datetime(2026, 11, 30, 8, 15, tzinfo=UTC)),
    ("2026-11-30T09:15:00+01:00", datetime(2026, 11, 30, 8, 15, tzinfo=UTC)),
])
def test_since_and_until_take_iso_times_and_ages(text, expected):
    assert parse_when(text, NOW) == expected


@pytest.mark.parametrize("text", ["yesterday", "24", "-3d", "3y"])
def test_a_bad_time_is_refused(text):
    with pytest.raises(argparse.ArgumentTypeError):
        parse_when(text, NOW)


# --- the login spike rule ------------------------------------------------------------------------------


def login_hours(login: str, per_hour: list[int], start: datetime = NOW) -> list[Summary]:
    return [Summary(time=start + timedelta(hours=h, seconds=i), listener="submission", verdict="accept",
                    auth=login, sender=f"<{login}@example.org>")
            for h, count in enumerate(per_hour) for i in range(count)]


@pytest.mark.parametrize(("per_hour", "spikes"), [
    ([2, 2, 3, 2, 120], [(120, 2.0)]),  # the compromised hour: 60 x its median
    ([60], [(60, 0.0)]),                # no other hour to compare with: above the floor is enough
    ([50], []),                         # not above the floor of 50
    ([60, 60, 60, 60], []),             # a steady bulk sender is not a spike
    ([5, 5, 51], [(51, 5.0)]),          # 51 > 50 and 51 > 10 x 5
    ([6, 6, 51], []),                   # 51 is not above 10 x 6
    ([1, 100, 1, 200], [(200, 1.0), (100, 1.0)]),
])
def test_the_spike_rule(per_hour, spikes):
    report = Report()
    for summary in login_hours("alice", per_hour):
        report.add(summary)
    found = report.result()["logins"]["spikes"]
    assert [(s["messages"], s["median_other_hours"]) for s in found] == spikes
    assert all(s["login"] == "alice" for s in found)


def test_the_spike_rule_has_knobs_and_says_what_it_is():
    rule = SpikeRule(factor=3, minimum=5)
    report = Report(spike=rule)
    for summary in login_hours("bob", [2, 2, 7]):
        report.add(summary)
    logins = report.result()["logins"]
    assert [(s["login"], s["hour"], s["messages"]) for s in logins["spikes"]] == [("bob", "2026-12-01T14:00:00Z", 7)]
    assert "    bob 2026-12-01T14:00:00Z: 7 messages (median of its 2 other active hours: 2)\n" in render_text(
        report.result())
    assert logins["spike_rule"] == ("an hour with more than 5 messages and more than 3 x the median of the "
                                    "login's other active hours")
    assert logins["top"][0] | {"hours": None, "top_senders": None} == {
        "login": "bob", "messages": 11, "refused": 0, "active_hours": 3, "median_per_hour": 2,
        "peak_per_hour": 7, "peak_hour": "2026-12-01T14:00:00Z", "without_time": 0, "hours": None,
        "top_senders": None,
    }


# --- bounded structures ---------------------------------------------------------------------------------


def test_a_top_counter_is_exact_until_it_prunes_then_bounds_its_error():
    counter = TopCounter(capacity=3)
    for key in "aaaaabbbcc":
        counter.add(key)
    assert counter.exact and [(e["key"], e["count"]) for e in counter.top(3)] == [("a", 5), ("b", 3), ("c", 2)]
    truth = {"a": 5, "b": 3, "c": 2}
    for n in range(100):  # a frequent key among 100 keys seen once each: the table prunes
        for key in ("a", f"x{n}"):
            counter.add(key)
            truth[key] = truth.get(key, 0) + 1
    assert not counter.exact and len(counter.counts) <= 6
    assert counter.top(1) == [{"key": "a", "count": 105, "error": 0}]  # never dropped: exact
    for entry in counter.top(6):
        assert entry["count"] - entry["error"] <= truth[entry["key"]] <= entry["count"]


def test_quantiles_are_exact_on_what_they_keep_and_within_two_percent_after():
    exact = Quantiles(exact_limit=1000)
    for value in range(1, 101):
        exact.add(float(value))
    assert (exact.percentile(50), exact.percentile(99), exact.percentile(100), exact.exact) == (50.0, 99.0, 100.0, True)
    folded = Quantiles(exact_limit=100)
    for value in range(1, 1001):
        folded.add(float(value))
    assert not folded.exact and folded.maximum == 1000.0 and folded.count == 1000
    assert len(folded.buckets) < 400
    for p, true in ((50, 500.0), (99, 990.0)):
        estimate = folded.percentile(p)
        assert estimate is not None and true <= estimate <= true * 1.02
    zero = Quantiles(exact_limit=1)
    for value in (0.0, 0.0, 0.0, 5.0):
        zero.add(value)
    assert (zero.percentile(50), zero.percentile(100)) == (0.0, 5.0)


# --- files, gzip, standard input, the command ---------------------------------------------------------


def run_report(argv: list[str], stdin: bytes = b"") -> tuple[int, str]:
    out = io.StringIO()
    args = build_parser().parse_args(["report", *argv])
    code = cmd_report(args, stdin=io.BytesIO(stdin), stdout=out, now=NOW)
    return code, out.getvalue()


def test_plain_and_rotated_gzip_files_are_read_whatever_their_names(tmp_path: Path):
    lines = crafted_log()
    (tmp_path / "milter.log").write_text("".join(lines[:6]))
    (tmp_path / "milter.log.1").write_bytes(gzip.compress("".join(lines[6:10]).encode()))  # gzip, no .gz
    (tmp_path / "milter.log.2.gz").write_text("".join(lines[10:]))  # named .gz, but plain
    code, out = run_report(["--json", *(str(tmp_path / n) for n in ("milter.log", "milter.log.1", "milter.log.2.gz"))])
    result = json.loads(out)
    assert code == 0
    assert [(f["lines"], f["error"]) for f in result["input"]["files"]] == [(6, None), (4, None), (3, None)]
    assert (result["input"]["summaries"], result["input"]["malformed"], result["messages"]["total"]) == (9, 2, 9)


def test_a_cut_gzip_file_reports_what_it_read_and_exits_1(tmp_path: Path):
    packed = gzip.compress("".join(written("kv", NOW + timedelta(seconds=n)) for n in range(200)).encode())
    (tmp_path / "cut.gz").write_bytes(packed[: len(packed) // 2])
    code, out = run_report(["--json", str(tmp_path / "cut.gz"), str(tmp_path / "missing.log")])
    result = json.loads(out)
    assert code == 1
    cut, missing = result["input"]["files"]
    assert 0 < cut["lines"] < 200 and "ended before the end-of-stream marker" in cut["error"]
    assert result["messages"]["total"] == cut["lines"]
    assert missing == {"name": str(tmp_path / "missing.log"), "lines": 0,
                       "error": f"{tmp_path / 'missing.log'}: No such file or directory"}


def test_standard_input_plain_or_gzip():
    text = "".join(crafted_log())
    for data in (text.encode(), gzip.compress(text.encode())):
        code, out = run_report(["--json", "--since", "2026-12-01T10:00", "--until", "2026-12-01T10:05"], stdin=data)
        assert code == 0 and json.loads(out)["messages"]["total"] == 5


def test_an_overlong_summary_line_is_malformed_and_reading_goes_on():
    huge = written("kv", reason="x" * (MAX_LINE + 10))
    source = (huge + written("kv")).encode()
    lines = list(open_lines("-", io.BytesIO(source)))
    assert len(lines) == 2 and len(lines[0]) == MAX_LINE
    report = summarise(lines)
    assert (report.malformed, report.summaries) == (1, 1)
    assert report.malformed_examples[0]["problem"] == f"longer than {MAX_LINE} characters"


def test_undecodable_bytes_do_not_stop_the_reader():
    source = b"\xff\xfe garbage\n" + written("kv").encode() + b"\x00\x01\n"
    report = summarise(open_lines("-", io.BytesIO(source)))
    assert (report.lines, report.summaries, report.malformed) == (3, 1, 0)


def test_the_text_report_of_a_crafted_log():
    code, out = run_report(["--top", "1"], stdin="".join(crafted_log()).encode())
    assert code == 0
    assert "read: 1 file(s), 13 lines, 9 summary lines, 2 malformed, 0 outside the window\n" in out
    assert "  all               9          4          3          1          1\n" in out
    assert "  top senders:\n          2  <spam@bad.test>\n  top clients:" in out
    assert "  spf       skipped 7, fail 2\n" in out
    assert "per-check times are not in the summary line: they need the metrics (issue 12 item 1)" in out
    assert "  smtp               4      30.0   5000.0   5000.0           20.0   4999.0   4999.0\n" in out
    assert "  alice        4       0     2        2      3  2026-12-01T10:00:00Z <alice@example.org> 3, <> 1\n" in out
    assert "  spikes: none\n" in out


def test_client_data_cannot_move_the_terminal():
    line = written("kv", verdict="reject", from_="<\x1b[2Jevil@x.test>", reason="\x1b]0;owned\x07")
    _, out = run_report([], stdin=line.encode())
    assert "\x1b" not in out and "\x07" not in out and "<?[2Jevil@x.test>" in out


def test_a_bad_window_is_exit_2(capsys):
    assert run_report(["--since", "last tuesday"])[0] == 2
    assert "report: 'last tuesday': expected an ISO time" in capsys.readouterr().err


def test_memory_stays_bounded_on_many_distinct_refused_senders():
    report = Report(capacity=50)
    for n in range(5000):
        report.add(Summary(time=NOW, listener="smtp", verdict="reject", client=f"10.0.{n // 250}.{n % 250}",
                           sender=f"<s{n}@spam.test>", reason="no", decided_by="spf", ms=float(n)))
    for _ in range(30):
        report.add(Summary(time=NOW, listener="smtp", verdict="reject", client="192.0.2.1",
                           sender="<top@spam.test>", reason="no", decided_by="spf", ms=1.0))
    tables = report.refused["reject"]
    assert all(len(table.counts) <= 100 for table in tables.values())
    result = report.result(top=1)
    reject = result["refused"]["reject"]
    assert (reject["total"], reject["exact"]) == (5030, False)
    top = reject["senders"][0]
    assert top["key"] == "<top@spam.test>" and top["count"] - top["error"] <= 30 <= top["count"]
    assert reject["reasons"] == [{"key": "spf: no", "count": 5030, "error": 0}]  # one key: exact
    assert "(counts marked (-E) may be over by up to E: the table was pruned)" in render_text(result)
