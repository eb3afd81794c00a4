"""Read the milter's summary lines back: key=value or JSON, plain or gzip, files or stdin.

The reader follows the writer in logs.py: a kv line is `[TIME ]LEVEL [conn=ID ]EVENT key=value...`
where a value is either a bare word (no space, quote, `=` or backslash; a bare `-` is "absent")
or a JSON string (a literal `-` is written `"-"`); a JSON line is one object with `ts`, `level`,
`event` and the same keys. A syslog prefix (`TIME HOST policy-milter[PID]: `) is taken off
first. Nothing is evaluated: values are decoded with the JSON decoder only. A line that is not a
summary is skipped; a summary line that does not decode, or lacks what every summary carries, is
*malformed*: counted, never raised.
"""

from __future__ import annotations

import gzip
import io
import json
import math
import re
import sys
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import MINYEAR, UTC, datetime, timedelta
from typing import IO, Any, cast

from policymilter.logs import SUMMARY_KEYS, SUMMARY_TAIL

GZIP_MAGIC = b"\x1f\x8b"
MAX_LINE = 1 << 20  # a summary line is a few hundred bytes; past this a line is cut and judged on its start
LEVELS = ("debug", "info", "warning", "error", "critical")
# Keys of a summary line that are not checks (the line's frame, and the writer's own keys).
FRAME_KEYS = frozenset({"ts", "level", "conn", "event", "msg", "worker", "traceback"})
NOT_CHECKS = FRAME_KEYS | frozenset(SUMMARY_KEYS) | frozenset(SUMMARY_TAIL)
_INTS = ("rcpts", "size")
_FLOATS = ("ms", "check_ms")

_KV_HEAD = re.compile(
    r"(?:(?P<ts>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:?\d\d)?) )?"
    rf"(?P<level>{'|'.join(LEVELS)}) (?:conn=(?P<conn>\S+) )?(?P<event>[a-z_]+)(?: |$)"
)
_KEY = re.compile(r"([A-Za-z0-9_.-]+)=")
_FIELD = re.compile(r'([A-Za-z0-9_.-]+)=(?:"((?:[^"\\]|\\.)*)"|([^\s"=\\]*))(?: (?=\S)|$)')
_BARE = re.compile(r'[^\s"=\\]*')
# syslog: RFC 3339 (rsyslog, journalctl -o short-iso) or BSD (`Dec  1 21:58:29`) time, host, ident.
_SYSLOG = re.compile(
    r"(?:<\d{1,3}>)?(?:(?P<iso>\d{4}-\d\d-\d\dT\S+)|(?P<bsd>[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d)) "
    r"\S+ policy-milter(?:\[\d+\])?: "
)
_JSON_SUMMARY = re.compile(r'"event"\s*:\s*"summary"')
_DECODER = json.JSONDecoder()


class Malformed(ValueError):
    """A summary line that does not decode (the reason is the message)."""


@dataclass(frozen=True, slots=True)
class Summary:
    """One summary line: one message, or one transaction refused before DATA."""

    time: datetime | None  # None: the line carries no time (syslog without one)
    listener: str
    verdict: str
    stage: str | None = None
    client: str | None = None
    auth: str | None = None
    sender: str | None = None  # the envelope sender as logged, `<...>`
    decided_by: str | None = None
    reason: str | None = None
    ms: float | None = None
    check_ms: float | None = None
    checks: tuple[tuple[str, str | None], ...] = ()  # (check, OUTCOME[:DETAIL] or None) in line order


def parse_line(line: str, now: datetime | None = None) -> Summary | None:
    """The summary on this line; None when it is not a summary line. Raises Malformed, and only
    Malformed: whatever else a crafted line makes the decoders raise (RecursionError on deep JSON,
    OverflowError on a number or a time out of range, ValueError) is a malformed line too."""
    try:
        return _parse_line(line, now)
    except Malformed:
        raise
    except (RecursionError, OverflowError, ValueError) as error:
        raise Malformed(f"does not decode: {type(error).__name__}: {str(error)[:80]}") from None


def _parse_line(line: str, now: datetime | None) -> Summary | None:
    cut = len(line) >= MAX_LINE and not line.endswith("\n")
    line = line.rstrip("\r\n")
    stamp: datetime | None = None
    prefix = _SYSLOG.match(line)
    if prefix:
        stamp = _syslog_time(prefix, now)
        line = line[prefix.end():]
    if line.startswith("{"):
        if cut and _JSON_SUMMARY.search(line):
            raise Malformed(f"longer than {MAX_LINE} characters")
        return _parse_json(line, stamp)
    head = _KV_HEAD.match(line)
    if head is None or head["event"] != "summary":
        return None
    if cut:
        raise Malformed(f"longer than {MAX_LINE} characters")
    if head["ts"]:
        stamp = _iso_time(head["ts"])
    return _summary(_kv_fields(line, head.end()), stamp)


def _parse_json(line: str, stamp: datetime | None) -> Summary | None:
    try:
        document = json.loads(line)
    except ValueError as error:
        if _JSON_SUMMARY.search(line):
            raise Malformed(f"JSON does not decode: {error}") from None
        return None
    if not isinstance(document, dict) or document.get("event") != "summary":
        return None
    ts = document.get("ts")
    if ts is not None:
        if not isinstance(ts, str):
            raise Malformed("ts is not a string")
        stamp = _iso_time(ts)
    return _summary(document, stamp)


def _kv_fields(line: str, pos: int) -> dict[str, Any]:
    """The key=value fields from `pos` on, decoded as logs.kv_value wrote them."""
    fields: dict[str, Any] = {}
    end = len(line)
    while pos < end:  # the common case in one regex per field; anything odd: the careful reader
        field = _FIELD.match(line, pos)
        if field is None or field[1] in fields:
            return _kv_fields_carefully(line, pos, fields)
        key, quoted, bare = field.groups()
        if quoted is not None:
            try:
                fields[key] = json.loads(f'"{quoted}"')
            except ValueError:
                return _kv_fields_carefully(line, pos, fields)
        else:
            fields[key] = None if bare in ("-", "") else bare
        pos = field.end()
    return fields


def _kv_fields_carefully(line: str, pos: int, fields: dict[str, Any]) -> dict[str, Any]:
    """_kv_fields one character at a time, to say what is wrong where."""
    end = len(line)
    while pos < end:
        key = _KEY.match(line, pos)
        if key is None:
            raise Malformed(f"expected key=value at column {pos + 1}")
        pos = key.end()
        value: Any
        if line.startswith('"', pos):
            try:
                value, pos = _DECODER.raw_decode(line, pos)
            except ValueError:
                raise Malformed(f"{key[1]}: the quoted value does not decode") from None
        else:
            bare = _BARE.match(line, pos)
            assert bare is not None  # the pattern matches the empty string
            value, pos = bare.group(), bare.end()
            if value in ("-", ""):
                value = None
        if pos < end:
            if line[pos] != " ":
                raise Malformed(f"{key[1]}: unexpected {line[pos]!r} after the value")
            pos += 1
        if key[1] in fields:
            raise Malformed(f"{key[1]} appears twice")
        fields[key[1]] = value
    return fields


def _text(fields: dict[str, Any], key: str) -> str | None:
    value = fields.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise Malformed(f"{key} is not a string")
    return value


def _number(fields: dict[str, Any], key: str, kind: type[int] | type[float]) -> float | None:
    value = fields.get(key)
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise Malformed(f"{key} is not a number")
    if isinstance(value, str):
        text = value
        try:
            value = kind(text)
        except ValueError:
            raise Malformed(f"{key}={text[:40]!r} is not a number") from None
    if not isinstance(value, int | float):
        raise Malformed(f"{key} is not a number")
    try:
        number = float(value)
    except OverflowError:  # an integer of hundreds of digits
        raise Malformed(f"{key} is out of range") from None
    if not math.isfinite(number) or number < 0:  # NaN, infinity (1e999, JSON Infinity), negative
        raise Malformed(f"{key} is not a number")
    return number


def _summary(fields: dict[str, Any], stamp: datetime | None) -> Summary:
    listener, verdict = _text(fields, "listener"), _text(fields, "verdict")
    if listener is None or verdict is None:
        raise Malformed("no listener or no verdict: not a complete summary line")
    for key in _INTS:
        _number(fields, key, int)
    checks = []
    for key in fields:
        if key not in NOT_CHECKS:
            checks.append((key, _text(fields, key)))
    return Summary(
        time=stamp, listener=listener, verdict=verdict, stage=_text(fields, "stage"),
        client=_text(fields, "client"), auth=_text(fields, "auth"), sender=_text(fields, "from"),
        decided_by=_text(fields, "decided_by"), reason=_text(fields, "reason"),
        ms=_number(fields, "ms", float), check_ms=_number(fields, "check_ms", float), checks=tuple(checks),
    )


def _iso_time(text: str) -> datetime:
    try:
        stamp = datetime.fromisoformat(text)
    except ValueError:
        raise Malformed(f"time {text[:40]!r} is not ISO 8601") from None
    try:
        return stamp.replace(tzinfo=UTC) if stamp.tzinfo is None else stamp.astimezone(UTC)
    except OverflowError:  # 0001-01-01T00:00+01:00: before datetime.min in UTC
        raise Malformed(f"time {text[:40]!r} is out of range") from None


def _syslog_time(prefix: re.Match[str], now: datetime | None) -> datetime | None:
    if prefix["iso"]:
        try:
            return _iso_time(prefix["iso"])
        except Malformed:
            return None
    # A BSD stamp has no year and is local time: the latest year that does not put it in the future
    # (a day's grace for clocks). Feb 29 looks back to the last leap year (at most 8 years).
    now = now or datetime.now(UTC)
    try:
        local_now = now.astimezone()
        stamp = datetime.strptime(f"2000 {prefix['bsd']}", "%Y %b %d %H:%M:%S")  # 2000: a leap year
    except (ValueError, OverflowError):
        return None
    for year in range(local_now.year, max(local_now.year - 8, MINYEAR - 1), -1):
        try:
            candidate = stamp.replace(year=year, tzinfo=local_now.tzinfo)
            if candidate <= local_now + timedelta(days=1):
                return candidate.astimezone(UTC)
        except (ValueError, OverflowError):  # no Feb 29 that year; a time at the edge of datetime's range
            continue
    return None


# --- sources -------------------------------------------------------------------------------------


class SourceError(OSError):
    """A file that could not be read to its end (what was read before counts)."""


def open_lines(name: str, stdin: IO[bytes] | None = None) -> Iterator[str]:
    """The lines of a file (`-`: standard input), gunzipped when it starts with gzip's magic bytes
    (a rotated log, whatever its name). Lines longer than MAX_LINE are cut there. Raises
    SourceError when the file cannot be opened or its gzip stream is corrupt or cut short."""
    try:
        raw: IO[bytes] = (stdin or sys.stdin.buffer) if name == "-" else open(name, "rb")  # noqa: SIM115
    except OSError as error:
        raise SourceError(f"{name}: {error.strerror or error}") from None
    text: io.TextIOWrapper | None = None
    try:
        buffered = raw if isinstance(raw, io.BufferedReader) else io.BufferedReader(cast(io.RawIOBase, raw))
        binary: IO[bytes] = (cast(IO[bytes], gzip.GzipFile(fileobj=buffered)) if buffered.peek(2)[:2] == GZIP_MAGIC
                             else buffered)
        text = io.TextIOWrapper(binary, encoding="utf-8", errors="replace", newline="\n")
        while line := text.readline(MAX_LINE):
            if not line.endswith("\n") and len(line) >= MAX_LINE:
                while (rest := text.readline(MAX_LINE)) and not rest.endswith("\n"):
                    pass  # the rest of an overlong line: dropped (parse_line judges it by its start)
            yield line
    except (OSError, EOFError, zlib.error) as error:  # BadGzipFile is an OSError; EOFError: cut short
        raise SourceError(f"{name}: {error or 'the compressed file ends early'}") from None
    finally:
        if name == "-":
            if text is not None:
                text.detach()  # standard input stays open for whoever reads it next
        else:
            raw.close()
