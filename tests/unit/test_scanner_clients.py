"""The clamd and spamd clients against servers that misbehave (a real daemon will not, on cue).

Well-behaved clamd and spamd are tested for real in tests/integration/test_scanning.py.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from policymilter.checks.antivirus import clamd
from policymilter.checks.spam import spamd
from policymilter.scanning import ScannerError

Behaviour = Callable[[socket.socket], None]


def drain(conn: socket.socket) -> None:
    """Read the whole request (until the client pauses): closing on unread bytes sends a reset."""
    conn.settimeout(0.2)
    try:
        while conn.recv(65536):
            pass
    except TimeoutError:
        pass
    conn.settimeout(5)


@pytest.fixture
def server() -> Iterator[Callable[[Behaviour], str]]:
    """A loopback TCP server running one behaviour per connection; yields a starter."""
    listeners: list[socket.socket] = []

    def start(behaviour: Behaviour) -> str:
        listener = socket.create_server(("127.0.0.1", 0))
        listeners.append(listener)

        def serve() -> None:
            while True:
                try:
                    conn, _ = listener.accept()
                except OSError:
                    return
                with conn:
                    try:
                        drain(conn)
                        behaviour(conn)
                    except OSError:
                        pass

        threading.Thread(target=serve, daemon=True).start()
        return f"127.0.0.1:{listener.getsockname()[1]}"

    yield start
    for listener in listeners:
        listener.close()


def trickle(conn: socket.socket) -> None:
    """A whole answer, but one byte every half second: 20 s in all, far past any deadline here."""
    for byte in b"stream: OK" * 4:
        conn.sendall(bytes([byte]))
        time.sleep(0.5)


def flood(conn: socket.socket) -> None:
    conn.sendall(b"x" * 200_000)


def bad_score(conn: socket.socket) -> None:
    conn.sendall(b"SPAMD/1.1 0 EX_OK\r\nSpam: False ; 1.2.3 / 5.0\r\n\r\n")


def good_spamd(conn: socket.socket) -> None:
    conn.sendall(b"SPAMD/1.1 0 EX_OK\r\nSpam: True ; 7.5 / 5.0\r\n\r\nA_RULE,B_RULE")


def message() -> Iterator[bytes]:
    yield b"Subject: x\r\n\r\nbody\r\n"


def test_a_trickling_clamd_cannot_stretch_the_time_limit(server):
    endpoint = server(trickle)
    started = time.monotonic()
    with pytest.raises(ScannerError):
        clamd.scan([endpoint], message, timeout=1.0, in_flight=4)
    assert time.monotonic() - started < 10  # the 1 s deadline held, not the 20 s of trickle


def test_an_endless_clamd_reply_is_cut_short(server):
    with pytest.raises(ScannerError) as caught:
        clamd.scan([server(flood)], message, timeout=5.0, in_flight=4)
    assert len(str(caught.value)) < 400


def test_a_malformed_spamd_score_fails_over_to_the_next_server(server):
    result = spamd.scan([server(bad_score), server(good_spamd)], message, timeout=5.0, in_flight=4)
    assert result.score == 7.5 and result.symbols == ("A_RULE", "B_RULE")


def test_a_trickling_spamd_cannot_stretch_the_time_limit(server):
    started = time.monotonic()
    with pytest.raises(ScannerError):
        spamd.scan([server(trickle), server(trickle)], message, timeout=1.0, in_flight=4)
    assert time.monotonic() - started < 10  # one 1 s limit for both servers, not 40 s of trickle


# --- a unix socket whose accept queue is full ---------------------------------------------------


def _full_queue(path: str) -> tuple[socket.socket, list[socket.socket]]:
    """A listening unix socket nobody accepts on, its queue filled until a connect gets EAGAIN."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(0)
    waiting = []
    while True:
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.setblocking(False)
        try:
            client.connect(path)
        except BlockingIOError:
            client.close()
            return listener, waiting
        waiting.append(client)


def test_a_full_accept_queue_is_waited_for_not_an_error(tmp_path):
    from policymilter.scanning import connect

    path = str(tmp_path / "busy.sock")
    listener, waiting = _full_queue(path)
    accepted: list[socket.socket] = []
    # The server takes one waiting connection a moment later: a slot opens.
    timer = threading.Timer(0.3, lambda: accepted.append(listener.accept()[0]))
    timer.start()
    try:
        with connect(f"unix:{path}", 10.0) as sock:
            assert sock.getpeername() == path
    finally:
        timer.join()
        for conn in [*waiting, *accepted, listener]:
            conn.close()


def test_a_queue_that_stays_full_ends_with_the_time(tmp_path):
    from policymilter.scanning import connect

    path = str(tmp_path / "stuck.sock")
    listener, waiting = _full_queue(path)
    try:
        with pytest.raises(TimeoutError, match="accept queue stayed full"):
            connect(f"unix:{path}", 0.3)
    finally:
        for conn in [*waiting, listener]:
            conn.close()
