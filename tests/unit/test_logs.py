"""Log lines: key=value and JSON, with the connection id first."""

from __future__ import annotations

import io
import json
import logging

from policymilter.logs import SessionLog, event, kv_value, set_worker, setup_logging


def release_handlers() -> None:
    """Remove the handlers setup_logging installed (the test's log watcher stays)."""
    logger = logging.getLogger("policymilter")
    for handler in [h for h in logger.handlers if getattr(h, "policymilter_owned", False)]:
        handler.close()
        logger.removeHandler(handler)


def render(log_format: str) -> str:
    stream = io.StringIO()
    setup_logging(log_format, "info", stream=stream)
    try:
        event(SessionLog("42"), logging.INFO, "summary", queue_id="4QABC", reason="needs auth now",
              size=None, ok=True)
    finally:
        release_handlers()
    return stream.getvalue().strip()


def test_kv_line_has_conn_first_and_quotes_values_with_spaces():
    line = render("kv")
    assert line.split(" ", 2)[1:] == ["info", 'conn=42 summary queue_id=4QABC reason="needs auth now" size=- ok=yes']


def test_json_line_is_one_object():
    document = json.loads(render("json"))
    assert document["conn"] == "42" and document["event"] == "summary"
    assert document["queue_id"] == "4QABC" and document["size"] is None and document["ok"] is True


def test_kv_values_cannot_forge_keys():
    assert kv_value('x" verdict=accept') == '"x\\" verdict=accept"'
    assert kv_value("") == "-"


def test_control_characters_from_clients_are_escaped():
    value = kv_value("a\x1b[31mred\x07\x7f\u2028x\nfake=1")
    assert value.isprintable() and "\n" not in value
    assert json.loads(value) == "a\x1b[31mred\x07\x7f\u2028x\nfake=1"
    assert kv_value("caf\u00e9") == "caf\u00e9"  # printable non-ASCII stays readable


def test_a_traceback_cannot_fake_a_log_line(logwatch):
    logwatch.expect("callback_crashed")
    stream = io.StringIO()
    setup_logging("kv", "info", stream=stream)
    try:
        try:
            raise ValueError("x\n2026-01-01T00:00:00.000Z info conn=1 summary verdict=accept")
        except ValueError:
            event(SessionLog("7"), logging.ERROR, "callback_crashed", "boom", exc_info=True)
    finally:
        release_handlers()
    lines = stream.getvalue().splitlines()
    assert lines[0].split(" ", 1)[1].startswith("error conn=7 callback_crashed")
    assert all(line.startswith("    ") for line in lines[1:])


def test_syslog_lines_go_to_the_mail_facility(tmp_path, monkeypatch):
    import socket

    path = tmp_path / "log"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(str(path))
    server.settimeout(5)
    monkeypatch.setattr("policymilter.logs.SYSLOG_SOCKET", str(path))
    setup_logging("kv", "info", syslog=True)
    try:
        event(SessionLog("9"), logging.INFO, "summary", verdict="accept")
        datagram = server.recv(4096).decode()
    finally:
        release_handlers()
        server.close()
    # <22> = facility mail (2) * 8 + severity info (6); no timestamp: syslog adds its own
    assert datagram.startswith("<22>policy-milter: info conn=9 summary verdict=accept")


def test_a_workers_lines_name_it_and_session_lines_keep_their_conn_first():
    stream = io.StringIO()
    setup_logging("kv", "info", stream=stream)
    set_worker(3)
    try:
        event(logging.getLogger("policymilter"), logging.INFO, "stopped", transactions=0)
        event(SessionLog("3.9"), logging.INFO, "summary", verdict="accept")
    finally:
        set_worker(None)
        release_handlers()
    first, second = (line.split(" ", 1)[1] for line in stream.getvalue().splitlines())
    assert first == "info stopped transactions=0 worker=3"
    assert second == "info conn=3.9 summary verdict=accept"


def test_json_lines_of_a_worker_carry_it():
    stream = io.StringIO()
    setup_logging("json", "info", stream=stream)
    set_worker(2)
    try:
        event(logging.getLogger("policymilter"), logging.INFO, "reloaded", generation=4)
    finally:
        set_worker(None)
        release_handlers()
    document = json.loads(stream.getvalue())
    assert (document["event"], document["generation"], document["worker"]) == ("reloaded", 4, 2)
