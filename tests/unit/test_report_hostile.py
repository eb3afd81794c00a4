"""policy-milter report on crafted lines (attack12 findings 1-6): one bad line is one malformed
line, never a lost report; the text stays proportional to the input; nothing a line carries
reaches the terminal unescaped or uncut."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from policymilter.cli import build_parser
from policymilter.logread import Malformed, parse_line
from policymilter.logs import kv_value
from policymilter.report import SHOWN, Report, cmd_report, parse_when, render_text, summarise
from tests.unit.test_report import NOW, written

HEAD = "2026-12-01T12:00:00.000Z info conn=1.1 summary listener=smtp verdict=accept"


def _parse_or_malformed(line: str, now: datetime | None = None) -> None:
    """A crafted line may be malformed; it must never raise anything else."""
    with contextlib.suppress(Malformed):
        parse_line(line, now)


# --- finding 1: anything the decoders raise is Malformed -----------------------------------------------

CRAFTED = [
    # deep JSON: RecursionError out of json.loads
    '{"event":"summary","listener":"a","verdict":"accept","x":' + "[" * 100_000 + "}\n",
    # an integer too large for a float: OverflowError in _number
    HEAD + " rcpts=" + "1" * 400 + "\n",
    '{"event":"summary","listener":"a","verdict":"accept","size":' + "1" * 400 + "}\n",
    # a time at the edge of datetime's range with an offset: OverflowError in astimezone
    "0001-01-01T00:00:00+01:00 info conn=1.1 summary listener=a verdict=accept\n",
    "9999-12-31T23:59:59-01:00 info conn=1.1 summary listener=a verdict=accept\n",
    '{"ts":"0001-01-01T00:00:00+01:00","event":"summary","listener":"a","verdict":"accept"}\n',
    "0001-01-01T00:00:00+01:00 mx policy-milter[1]: info conn=1.1 summary listener=a verdict=accept\n",
]
CRAFTED_IDS = ["deep-json", "kv-huge-int", "json-huge-int", "year-1", "year-9999", "json-year-1", "syslog-year-1"]


@pytest.mark.parametrize("line", CRAFTED, ids=CRAFTED_IDS)
def test_a_crafted_line_is_malformed_not_a_crash(line: str) -> None:
    _parse_or_malformed(line)


def test_crafted_lines_do_not_lose_the_report() -> None:
    lines = [HEAD + " ms=1.0\n", *CRAFTED, HEAD + " ms=2.0\n"]
    result = summarise(lines).result()
    assert result["messages"]["total"] == 3  # the two good lines and the syslog one (its prefix time: none)
    assert result["input"]["malformed"] == len(CRAFTED) - 1
    render_text(result)


@pytest.mark.parametrize("text", ["99999999999w", "0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"])
def test_a_time_out_of_range_is_a_bad_window_not_a_crash(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="out of the range"):
        parse_when(text, NOW)


# --- finding 2: Feb 29 in a BSD stamp ----------------------------------------------------------------

FEB_29 = "Feb 29 10:00:00 mx policy-milter[1]: info conn=1.1 summary listener=smtp verdict=accept\n"


def test_feb_29_in_a_bsd_syslog_stamp_early_in_a_leap_year() -> None:
    """The year of a BSD stamp is guessed; Feb 29 'in the future' moves to a year without one."""
    _parse_or_malformed(FEB_29, datetime(2028, 1, 15, tzinfo=UTC))


@pytest.mark.parametrize(("now", "year"), [
    (datetime(2028, 1, 15, tzinfo=UTC), 2024),  # Feb 29 2028 is ahead: the last one before it
    (datetime(2027, 6, 1, tzinfo=UTC), 2024),  # no Feb 29 this year
    (datetime(2028, 3, 1, tzinfo=UTC), 2028),
])
def test_feb_29_is_put_in_the_last_leap_year_not_in_the_future(now: datetime, year: int) -> None:
    summary = parse_line(FEB_29, now)
    assert summary is not None and summary.time is not None
    assert (summary.time.year, summary.time.month) == (year, 2)  # day 28 or 29 in UTC, by the local zone


# --- finding 3: no infinite number -------------------------------------------------------------------


@pytest.mark.parametrize("line", [
    HEAD + " ms=1e999\n", HEAD + " check_ms=inf\n", HEAD + " ms=-1\n", HEAD + " ms=nan\n",
    '{"event":"summary","listener":"a","verdict":"accept","ms":Infinity}\n',
    '{"event":"summary","listener":"a","verdict":"accept","ms":1e999}\n',
])
def test_a_number_that_is_not_finite_is_malformed(line: str) -> None:
    with pytest.raises(Malformed):
        parse_line(line)


def test_an_infinite_time_does_not_crash_the_histogram() -> None:
    """ms=1e999 used to read as inf; once a listener had more than 10,000 times, the histogram
    took log(inf) and math.floor raised OverflowError: the whole report was lost."""
    lines = [HEAD + " ms=1e999\n"] + [HEAD + " ms=1.0\n"] * 10_001
    result = summarise(lines).result()
    assert result["input"]["malformed"] == 1
    render_text(result)


def test_a_time_near_the_largest_float_does_not_crash_the_histogram() -> None:
    lines = [HEAD + " ms=1.7e308\n"] + [HEAD + " ms=1.0\n"] * 10_001
    times = summarise(lines).result()["times"]["by_listener"]["smtp"]["ms"]
    assert times["max"] == 1.7e308 and not times["exact"]
    assert times["p99"] <= times["max"]


# --- finding 4: the text stays proportional to the input --------------------------------------------


def test_one_long_check_name_does_not_pad_every_row() -> None:
    """The check-outcome table padded every row to the longest raw name (not the shown, cut one):
    a 100 kB input gave ~100 MB of text here (2000 keys x 50,000 columns)."""
    keys = ",".join(f'"k{n}":null' for n in range(2000))
    line = '{"event":"summary","listener":"a","verdict":"accept","' + "A" * 50_000 + '":null,' + keys + "}\n"
    text = render_text(summarise([line]).result())
    assert len(text) < 100 * len(line)
    assert max(len(row) for row in text.splitlines()) < SHOWN + 100


@pytest.mark.parametrize("key", ["listener", "auth"])
def test_long_listener_and_login_names_are_cut_in_every_column(key: str) -> None:
    lines = [written("kv", **{key: "L" * 75_000})] + [written("kv", listener=f"l{n}", auth=f"u{n}") for n in range(50)]
    text = render_text(summarise(lines).result())
    assert max(len(row) for row in text.splitlines()) < 2 * SHOWN + 200


def test_the_listener_and_check_tables_are_bounded() -> None:
    report = Report(capacity=50)
    for n in range(1000):
        report.read_line(f'{{"event":"summary","listener":"l{n}","verdict":"v{n}","c{n}":"o{n}","ms":1}}\n')
    for _ in range(200):
        report.read_line(HEAD + " spf=pass ms=3\n")
    assert len(report.by_listener.counts) <= 100 and len(report.checks.counts) <= 100
    assert len(report.other_verdicts.counts) <= 100 and len(report.times) <= 101
    result = report.result()
    assert result["exact"] == {"verdicts": False, "listeners": False, "checks": False}
    assert result["messages"]["total"] == 1200 and result["messages"]["by_verdict"]["accept"] == 200
    assert result["messages"]["by_listener"]["smtp"]["accept"] >= 200  # the heavy key survives, over by its error
    assert result["checks"]["spf"]["pass"] >= 200
    assert result["times"]["by_listener"]["smtp"]["ms"]["count"] == 200
    text = render_text(result)
    assert "were pruned" in text
    assert "other verdicts:" in text and "more" in text


def test_exact_tables_say_so() -> None:
    assert summarise([HEAD + "\n"]).result()["exact"] == {"verdicts": True, "listeners": True, "checks": True}


# --- finding 5: malformed examples and errors are cut and made printable --------------------------------


def test_malformed_examples_are_cut_and_printable() -> None:
    value = "\x1b[31m" + "9x" * 500_000
    lines = [HEAD + f" rcpts={value}\n", HEAD + f' rcpts="{value}"\n',
             HEAD + " " + "k\x1b" * 300_000 + "=1\n", HEAD + ' reason="\\x"\n'] * 2
    report = summarise(lines)
    result = report.result()
    assert result["input"]["malformed"] == 8
    for example in result["input"]["malformed_examples"]:
        assert len(example["problem"]) <= SHOWN and "\x1b" not in example["problem"]
    text = render_text(result)
    assert "\x1b" not in text
    assert len(text) < 10_000


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    args = build_parser().parse_args(["report", *argv])
    code = cmd_report(args, stdin=io.BytesIO(b""), stdout=io.StringIO(), now=NOW)
    return code, capsys.readouterr().err


def test_an_unreadable_file_name_is_printed_safely(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    name = str(tmp_path / ("no\x1b[2J\rsuch" + "x" * 200))
    code, err = _run([name], capsys)
    assert code == 1
    assert "\x1b" not in err and "\r" not in err and err.count("\n") == 1
    assert len(err) < 400


def test_a_bad_window_is_printed_safely(capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _run(["--since", "\x1b[2J" + "y" * 100_000], capsys)
    assert code == 2
    assert "\x1b" not in err and err.count("\n") == 1 and len(err) < 400


# --- finding 6: a value "-" is a value --------------------------------------------------------------------


def test_kv_quotes_a_literal_dash_and_writes_absent_bare() -> None:
    assert kv_value("-") == '"-"'
    assert (kv_value(None), kv_value("")) == ("-", "-")
    assert kv_value("--") == "--"


@pytest.mark.parametrize("log_format", ["kv", "json"])
def test_a_login_named_dash_is_a_login(log_format: str) -> None:
    """kv wrote the value "-" bare, and the reader takes bare "-" for absent: a SASL login "-" had
    no messages in the logins table (and no spike) in kv logs, but had them in JSON logs."""
    line = written(log_format, auth="-", reason="-", client_name="-")
    summary = parse_line(line)
    assert summary is not None and (summary.auth, summary.reason) == ("-", "-")
    assert json.dumps(summarise([line]).result()["logins"]["top"][0]["login"]) == '"-"'


@pytest.mark.parametrize("value", ["-", "", None, "--", "-x", '"-"', "a b", "\x1b"])
def test_kv_values_read_back_as_written(value: str | None) -> None:
    summary = parse_line(written("kv", reason=value))
    assert summary is not None
    assert summary.reason == (value or None)
