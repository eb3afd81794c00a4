"""Tiny clamd and spamd stand-ins for the checks' unit tests: they read a whole request the way
the real daemons do and give the answer a test asks for. The real daemons are tested in
tests/integration/test_scanning.py; these only let a table of verdicts run in milliseconds."""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager


def _recv_exactly(conn: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            raise ConnectionError("client went away")
        data += chunk
    return data


def _clamd_request(conn: socket.socket) -> bytes:
    _recv_exactly(conn, len(b"zINSTREAM\0"))
    body = b""
    while length := struct.unpack("!L", _recv_exactly(conn, 4))[0]:
        body += _recv_exactly(conn, length)
    return body


def _spamd_request(conn: socket.socket) -> bytes:
    head = b""
    while b"\r\n\r\n" not in head:
        head += _recv_exactly(conn, 1)
    length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length"))
    return _recv_exactly(conn, length)


@contextmanager
def serving(kind: str, answer: bytes, seen: list[bytes] | None = None) -> Iterator[str]:
    """A loopback server for `kind` ("clamd" or "spamd") answering every request with `answer`;
    yields its endpoint ("127.0.0.1:PORT"). Each request's content is appended to `seen`."""
    listener = socket.create_server(("127.0.0.1", 0))
    read = _clamd_request if kind == "clamd" else _spamd_request

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                try:
                    content = read(conn)
                    if seen is not None:
                        seen.append(content)
                    conn.sendall(answer)
                except OSError:
                    pass

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield f"127.0.0.1:{listener.getsockname()[1]}"
    finally:
        listener.close()


def unused_endpoint() -> str:
    """A loopback port nobody listens on (connection refused: a scanner that is down)."""
    with socket.create_server(("127.0.0.1", 0)) as probe:
        return f"127.0.0.1:{probe.getsockname()[1]}"


def spamd_answer(score: float, threshold: float = 5.0, symbols: str = "GTUBE") -> bytes:
    verdict = "True" if score >= threshold else "False"
    return (f"SPAMD/1.1 0 EX_OK\r\nContent-length: {len(symbols)}\r\nSpam: {verdict} ; {score} / {threshold}\r\n\r\n"
            f"{symbols}").encode()
