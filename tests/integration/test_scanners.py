"""The scanner harness: real clamd and spamd answer as the milter's checks will expect.

Only raw sockets here (the milter's own clamd/spamd clients have their own tests): clamd's
INSTREAM over its unix socket and TCP, a crash and a restart on the same endpoints, and spamd's
SPAMC/1.5 protocol with GTUBE.
"""

from __future__ import annotations

import io
import os
import pwd
import re
import socket
import stat
import zipfile
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest

from tests.integration.scanners import EICAR, GTUBE, Clamd, Spamd, session_processes

pytestmark = pytest.mark.integration

# What clamd reports for the one-signature database: the .hdb name field plus ".UNOFFICIAL".
EICAR_NAME = "Eicar-Test-Signature.UNOFFICIAL"
FOUND = f"stream: {EICAR_NAME} FOUND"


@pytest.fixture(scope="module")
def clamd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Clamd]:
    with Clamd(tmp_path_factory.mktemp("clamd")) as running:
        yield running


@pytest.fixture(scope="module")
def clamd_tcp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Clamd]:
    with Clamd(tmp_path_factory.mktemp("clamd-tcp"), tcp=True) as running:
        yield running


@pytest.fixture(scope="module")
def crashing_clamd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Clamd]:
    # Its own instance: the crash test kills it, which must not disturb the other tests.
    with Clamd(tmp_path_factory.mktemp("clamd-crash"), tcp=True) as running:
        yield running


@pytest.fixture(scope="module")
def spamd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Spamd]:
    with Spamd(tmp_path_factory.mktemp("spamd")) as running:
        yield running


def message(body: str, subject: str = "Lunch") -> bytes:
    return (
        "From: Alice <alice@example.test>\r\n"
        "To: Bob <bob@example.test>\r\n"
        f"Subject: {subject}\r\n"
        "Date: Sat, 28 Nov 2026 10:00:00 +0000\r\n"
        "Message-ID: <scanner-test.1@example.test>\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        "\r\n"
        f"{body}\r\n"
    ).encode()


def zipped_eicar() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("readme/eicar.com", EICAR)
    return buffer.getvalue()


def mail_with_attachment(name: str, content: bytes) -> bytes:
    mail = EmailMessage()
    mail["From"] = "alice@example.test"
    mail["To"] = "bob@example.test"
    mail["Subject"] = "The file"
    mail.set_content("See attached.\n")
    mail.add_attachment(content, maintype="application", subtype="octet-stream", filename=name)
    return mail.as_bytes()


def spamc(spamd: Spamd, command: str, mail: bytes) -> tuple[str, dict[str, str], str]:
    """One SPAMC/1.5 request: (status line, headers, body) of spamd's reply."""
    reply = spamd.request(f"{command} SPAMC/1.5\r\nContent-length: {len(mail)}\r\n\r\n".encode() + mail)
    head, _, body = reply.partition("\r\n\r\n")
    status, *lines = head.split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines)
    return status, headers, body


# --- clamd


def test_clamd_answers_pong_on_a_socket_anyone_may_use(clamd: Clamd) -> None:
    assert clamd.ping() == "PONG"
    assert clamd.endpoint == f"unix:{clamd.socket_path}"
    assert stat.S_ISSOCK(clamd.socket_path.stat().st_mode)
    assert stat.S_IMODE(clamd.socket_path.stat().st_mode) & 0o666 == 0o666
    assert clamd.port is None
    assert clamd.startup_seconds is not None


def connect_as_nobody(path: Path) -> bytes:
    """PING clamd's unix socket from a child running as `nobody`, as the milter's user would."""
    nobody = pwd.getpwnam("nobody")
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        status = 1
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(nobody.pw_gid)
            os.setuid(nobody.pw_uid)
            with socket.socket(socket.AF_UNIX) as sock:
                sock.settimeout(5)
                sock.connect(str(path))
                sock.sendall(b"zPING\0")
                os.write(write_end, sock.recv(64))
            status = 0
        except OSError as error:
            os.write(write_end, repr(error).encode())
        finally:
            os._exit(status)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        answer = pipe.read()
    os.waitpid(pid, 0)
    return answer


def test_an_unprivileged_user_can_use_the_socket(clamd: Clamd) -> None:
    assert connect_as_nobody(clamd.socket_path) == b"PONG\0"


def test_clamd_runs_as_root_without_any_system_service(clamd: Clamd) -> None:
    status = Path(f"/proc/{clamd.pid}/status").read_text()
    assert re.search(r"^Uid:\s+0\s", status, re.M)
    assert clamd.pids() == [clamd.pid]


def test_eicar_is_found_under_the_advertised_name(clamd: Clamd) -> None:
    assert clamd.signature_name == EICAR_NAME
    assert clamd.scan(EICAR) == FOUND


def test_eicar_inside_a_zip_is_found(clamd: Clamd) -> None:
    archive = zipped_eicar()
    assert EICAR not in archive  # deflated: only unpacking finds it
    assert clamd.scan(archive) == FOUND


def test_eicar_attached_to_a_whole_message_is_found(clamd: Clamd) -> None:
    # The milter streams the whole message: clamd decodes the base64 MIME part itself.
    for name, content in (("eicar.com", EICAR), ("eicar.zip", zipped_eicar())):
        mail = mail_with_attachment(name, content)
        assert EICAR not in mail
        assert clamd.scan(mail) == FOUND, name


def test_clean_data_is_ok(clamd: Clamd) -> None:
    assert clamd.scan(message("Hello Bob, lunch tomorrow?")) == "stream: OK"
    assert clamd.scan(b"") == "stream: OK"
    # Several INSTREAM chunks, still far below StreamMaxLength.
    assert clamd.scan(os.urandom(3 * 1024 * 1024)) == "stream: OK"


def test_tcp_variant(clamd_tcp: Clamd) -> None:
    assert clamd_tcp.port is not None
    assert clamd_tcp.endpoint == f"127.0.0.1:{clamd_tcp.port}"
    assert clamd_tcp.ping() == "PONG"
    assert clamd_tcp.scan(EICAR) == FOUND
    assert clamd_tcp.scan(zipped_eicar()) == FOUND
    assert clamd_tcp.scan(b"nothing to see") == "stream: OK"
    # The unix socket is served too.
    assert clamd_tcp.command(b"zPING\0", endpoint=f"unix:{clamd_tcp.socket_path}") == "PONG"


def test_crash_then_restart_on_the_same_endpoints(crashing_clamd: Clamd) -> None:
    port, unix = crashing_clamd.port, f"unix:{crashing_clamd.socket_path}"
    assert crashing_clamd.scan(EICAR) == FOUND

    crashing_clamd.kill()
    # A crashed clamd leaves its socket file: a client gets "connection refused" on both.
    assert crashing_clamd.socket_path.exists()
    with pytest.raises(ConnectionRefusedError):
        crashing_clamd.scan(EICAR)
    with pytest.raises(ConnectionRefusedError):
        crashing_clamd.command(b"zPING\0", endpoint=unix)

    crashing_clamd.restart()
    assert crashing_clamd.port == port
    assert crashing_clamd.scan(EICAR) == FOUND
    assert crashing_clamd.command(b"zINSTREAM\0\0\0\0\0", endpoint=unix) == "stream: OK"

    # A restart of a live clamd (stop, start) keeps the endpoints as well.
    crashing_clamd.restart()
    assert crashing_clamd.port == port
    assert crashing_clamd.scan(zipped_eicar()) == FOUND


def test_stream_over_the_limit_is_refused(tmp_path_factory: pytest.TempPathFactory) -> None:
    with Clamd(tmp_path_factory.mktemp("clamd-small"), stream_max_length="1M") as small:
        assert small.scan(b"x" * 1024) == "stream: OK"
        assert small.scan(b"x" * (2 * 1024 * 1024)) == "INSTREAM size limit exceeded. ERROR"


def test_stop_leaves_no_process_or_socket(tmp_path_factory: pytest.TempPathFactory) -> None:
    scanner = Clamd(tmp_path_factory.mktemp("clamd-stop"), tcp=True).start()
    pid = scanner.pid
    assert pid is not None
    scanner.stop()
    assert not session_processes(pid)
    assert not Path(f"/proc/{pid}").exists()
    assert not scanner.socket_path.exists()
    assert not (scanner.directory / "clamd.pid").exists()


# --- spamd


def test_spamd_answers_pong(spamd: Spamd) -> None:
    assert spamd.endpoint == f"127.0.0.1:{spamd.port}"
    assert spamd.ping() == "SPAMD/1.5 0 PONG"
    assert spamd.startup_seconds is not None


def test_gtube_is_spam(spamd: Spamd) -> None:
    status, headers, _ = spamc(spamd, "CHECK", message(f"Try this: {GTUBE.decode()}", subject="Offer"))
    assert status == "SPAMD/1.1 0 EX_OK"
    assert re.fullmatch(r"True ; 1000(\.\d+)? / 5\.0", headers["Spam"]), headers


def test_gtube_symbols(spamd: Spamd) -> None:
    status, headers, body = spamc(spamd, "SYMBOLS", message(GTUBE.decode()))
    assert status == "SPAMD/1.1 0 EX_OK"
    assert headers["Spam"].startswith("True ; ")
    assert "GTUBE" in body.split(",")


def test_normal_message_is_not_spam(spamd: Spamd) -> None:
    status, headers, body = spamc(spamd, "SYMBOLS", message("Hello Bob, lunch tomorrow at noon?"))
    assert status == "SPAMD/1.1 0 EX_OK"
    assert re.fullmatch(r"False ; -?\d+(\.\d+)? / 5\.0", headers["Spam"]), headers
    assert "GTUBE" not in body.split(",")


def test_spamd_parent_is_root_and_scans_as_debian_spamd(spamd: Spamd) -> None:
    uids = {}
    for pid in spamd.pids():
        status = Path(f"/proc/{pid}/status").read_text()
        uids[pid] = int(re.search(r"^Uid:\s+(\d+)", status, re.M).group(1))
    assert uids[spamd.pid] == 0
    children = {pid: uid for pid, uid in uids.items() if pid != spamd.pid}
    assert children
    assert set(children.values()) == {Path(spamd.runtime_dir).stat().st_uid}
    assert (spamd.directory / "spamd.pid").read_text().strip() == str(spamd.pid)


def test_spamd_stop_leaves_no_process(tmp_path_factory: pytest.TempPathFactory) -> None:
    scanner = Spamd(tmp_path_factory.mktemp("spamd-stop")).start()
    pids = scanner.pids()
    assert len(pids) >= 2  # the parent and its preforked children
    scanner.stop()
    assert not session_processes(pids[0])
    assert not any(Path(f"/proc/{pid}/stat").exists() and " Z " not in Path(f"/proc/{pid}/stat").read_text()
                   for pid in pids)
    assert not scanner.pidfile.exists()
