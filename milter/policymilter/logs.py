"""Structured logging: key=value lines by default, JSON on request, syslog's mail facility.

Every line is an *event* with fields. A session's lines carry its connection id first, so an
operator greps one session; the `summary` event is one line per message with stable keys.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import re
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

LOGGER = "policymilter"
SYSLOG_SOCKET = "/dev/log"

# The summary line's keys, in order. Renaming one is a breaking change (see README).
SUMMARY_KEYS = (
    "queue_id", "stage", "listener", "client", "client_name", "helo", "tls", "auth", "mech",
    "from", "rcpts", "size",
)
SUMMARY_TAIL = ("verdict", "reply", "decided_by", "reason", "mode", "ms", "check_ms")

_NEEDS_QUOTES = re.compile(r'[\s"=\\]')

class _Process:
    """The worker process this is (daemon.py), named in every line it logs (as `worker=N`, or in a
    session's connection id, WORKER.N); None in the parent and in one-process tools."""

    worker: int | None = None


_PROCESS = _Process()


def set_worker(number: int | None) -> None:
    _PROCESS.worker = number


def kv_value(value: Any) -> str:
    if value is None or value == "":
        return "-"
    if value == "-":
        return '"-"'  # a bare `-` reads back as absent: a literal one (a login named "-") is quoted
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        value = f"{value:.1f}"
    text = str(value)
    if not _NEEDS_QUOTES.search(text) and text.isprintable():
        return text
    # JSON string quoting, and every character that could fake a line or move a terminal's
    # cursor (controls, DEL, C1, line separators) escaped: values come from SMTP clients.
    quoted = json.dumps(text, ensure_ascii=False)
    return "".join(char if char.isprintable() else json.dumps(char)[1:-1] for char in quoted)


class _Formatter(logging.Formatter):
    def __init__(self, json_lines: bool, with_time: bool) -> None:
        super().__init__()
        self.json_lines = json_lines
        self.with_time = with_time

    def _fields(self, record: logging.LogRecord) -> dict[str, Any]:
        fields: dict[str, Any] = {}
        conn = getattr(record, "conn", None)
        if conn is not None:
            fields["conn"] = conn
        extra = getattr(record, "fields", None)
        if isinstance(extra, Mapping):
            fields.update(extra)
        if conn is None and _PROCESS.worker is not None:
            fields.setdefault("worker", _PROCESS.worker)  # a session's lines name it in their conn id (WORKER.N)
        return fields

    def format(self, record: logging.LogRecord) -> str:
        fields = self._fields(record)
        event = getattr(record, "event", None)
        message = record.getMessage()
        if event is None:
            event, text = "message", message
        else:
            text = message if message != event else ""
        traceback = self.formatException(record.exc_info) if record.exc_info else ""
        if self.json_lines:
            document: dict[str, Any] = {}
            if self.with_time:
                document["ts"] = self.formatTime(record)
            document["level"] = record.levelname.lower()
            if "conn" in fields:
                document["conn"] = fields.pop("conn")
            document["event"] = event
            if text:
                document["msg"] = text
            document.update(fields)
            if traceback:
                document["traceback"] = traceback
            return json.dumps(document, default=str)  # ASCII: no raw line separators
        parts = [self.formatTime(record)] if self.with_time else []
        parts.append(record.levelname.lower())
        if "conn" in fields:
            parts.append(f"conn={kv_value(fields.pop('conn'))}")
        parts.append(event)
        parts.extend(f"{key}={kv_value(value)}" for key, value in fields.items())
        if text:
            parts.append(f"msg={kv_value(text)}")
        line = " ".join(parts)
        if not traceback:
            return line
        # Indented, so no line of a traceback (whose last line may quote client data) can pass
        # for a log line of its own.
        return line + "\n" + "\n".join("    " + part for part in traceback.splitlines())

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        return f"{stamp}.{int(record.msecs):03d}Z"


def setup_logging(
    log_format: str = "kv",
    level: str = "info",
    syslog: bool = False,
    stream: TextIO | None = None,
) -> logging.Logger:
    """Configure the `policymilter` logger (stderr by default; syslog adds no timestamps)."""
    logger = logging.getLogger(LOGGER)
    for old in list(logger.handlers):
        if getattr(old, "policymilter_owned", False):  # leave handlers others attached alone
            logger.removeHandler(old)
    if syslog:
        if not Path(SYSLOG_SOCKET).is_socket():
            raise FileNotFoundError(f"{SYSLOG_SOCKET} is not a socket")
        syslog_handler = logging.handlers.SysLogHandler(
            address=SYSLOG_SOCKET, facility=logging.handlers.SysLogHandler.LOG_MAIL
        )
        syslog_handler.ident = "policy-milter: "
        handler: logging.Handler = syslog_handler
    else:
        handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(_Formatter(json_lines=log_format == "json", with_time=not syslog))
    handler.policymilter_owned = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.setLevel(level.upper())
    logger.propagate = False
    return logger


def event(logger: logging.Logger | logging.LoggerAdapter[Any], level: int, name: str,
          message: str = "", exc_info: bool = False, **fields: Any) -> None:
    """Log one event with fields (the session adapter adds `conn`)."""
    logger.log(level, message or name, extra={"event": name, "fields": fields}, exc_info=exc_info)


class SessionLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """A logger whose every line carries the connection id."""

    def __init__(self, conn_id: str) -> None:
        super().__init__(logging.getLogger(LOGGER), {"conn": conn_id})

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        extra = dict(kwargs.get("extra") or {})
        extra["conn"] = self.extra["conn"] if self.extra else None
        kwargs["extra"] = extra
        return msg, kwargs


class WarnOnce:
    """Log a warning the first time a key is seen (per process; thread-safe)."""

    def __init__(self) -> None:
        self._seen: set[tuple[str, ...]] = set()
        self._lock = threading.Lock()

    def __call__(self, log: logging.Logger | logging.LoggerAdapter[Any], key: tuple[str, ...],
                 name: str, message: str, **fields: Any) -> bool:
        with self._lock:
            if key in self._seen:
                return False
            self._seen.add(key)
        event(log, logging.WARNING, name, message, **fields)
        return True
