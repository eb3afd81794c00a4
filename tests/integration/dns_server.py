"""A real authoritative DNS server (Debian's nsd) on loopback, serving zones the tests write.

nsd runs in the foreground from its own directory, as the current user (no chroot, no
privilege drop, no database), with response rate limiting off: every test client is
127.0.0.1, and nsd's default RRL (200 answers/s per /24) silently drops answers, which a
resolver sees as multi-second timeouts.

Zone changes are applied with SIGHUP (nsd re-reads zone files whose mtime changed, in a few
milliseconds), then we wait until the new serial answers *and* nsd's old server process has
exited (it keeps answering old data for a few ms). A change in the *set* of zones needs
nsd.conf re-read, which SIGHUP does not do, so nsd is restarted on the same port.

`Blackhole` is a small forwarding front for timeout tests: it relays every query to nsd
except those for names at or under a "silent" suffix, which it reads and never answers. It
records every query it reads (`asked`): a cache test counts what really reached the server.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import socketserver
import subprocess
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import dns.exception
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdatatype
import dns.resolver

from tests.integration.processes import find_program as find_debian_program
from tests.integration.processes import session_processes, stop_session, wait_until

LOOPBACK = "127.0.0.1"
TTL = 60
TXT_CHUNK = 255  # a TXT character-string holds at most 255 bytes (RFC 1035 3.3)
READY_TIMEOUT = 10.0  # seconds for nsd to answer after a start or reload
PROBE_TIMEOUT = 1.0  # per readiness query; nsd answers loopback queries in well under 1 ms
PROBE_BACKOFF = 0.005  # between readiness polls, so a not-yet-bound port is not hammered
STOP_TIMEOUT = 5.0
UPSTREAM_TIMEOUT = 2.0  # the front's wait for nsd; a missing answer then looks like a timeout
START_ATTEMPTS = 3  # a free port can be taken between choosing it and nsd binding it
LOG_TAIL_LINES = 30


def quote_txt(text: str | bytes) -> str:
    """TXT rdata in zone-file syntax: quoted 255-byte character-strings.

    A DKIM key record is longer than 255 bytes; resolvers join the strings back into one.
    Every byte that is not plain printable ASCII, and `"` and `\\`, is written as `\\DDD`.
    """
    data = text.encode() if isinstance(text, str) else text
    chunks = [data[i : i + TXT_CHUNK] for i in range(0, len(data), TXT_CHUNK)] or [b""]
    return " ".join(f'"{_escape(chunk)}"' for chunk in chunks)


def _escape(chunk: bytes) -> str:
    return "".join(chr(b) if 0x20 <= b < 0x7F and b not in b'"\\' else f"\\{b:03d}" for b in chunk)


@dataclass
class Zone:
    """One zone: records are (owner relative to origin or "@" or absolute, type, rdata).

    SOA and NS (ns.<origin>, with an A record 127.0.0.1 unless the zone defines "ns" itself)
    are added when the zone file is written. `ttl` is every record's TTL (the SOA's too);
    `soa_minimum` is the SOA MINIMUM field (default: `ttl`), so a negative answer is cacheable
    for min(ttl, soa_minimum) seconds (RFC 2308 §5).
    """

    origin: str
    records: list[tuple[str, str, str]] = field(default_factory=list)
    ttl: int = TTL
    soa_minimum: int | None = None

    def __post_init__(self) -> None:
        self.origin = self.origin.rstrip(".")
        dns.name.from_text(self.origin)  # reject an invalid origin here, not in nsd's log

    def add(self, owner: str, rtype: str, rdata: str) -> Zone:
        self.records.append((owner or "@", rtype.upper(), rdata))
        return self

    def txt(self, owner: str, text: str | bytes) -> Zone:
        return self.add(owner, "TXT", quote_txt(text))

    @property
    def filename(self) -> str:
        return f"{self.origin.lower()}.zone"

    def render(self, serial: int) -> str:
        origin = f"{self.origin}."
        minimum = self.ttl if self.soa_minimum is None else self.soa_minimum
        lines = [
            f"$ORIGIN {origin}",
            f"$TTL {self.ttl}",
            f"@ IN SOA ns.{origin} hostmaster.{origin} {serial} 3600 600 86400 {minimum}",
            f"@ IN NS ns.{origin}",
        ]
        if not any(owner.lower() in ("ns", f"ns.{origin}".lower()) for owner, _, _ in self.records):
            lines.append(f"ns IN A {LOOPBACK}")
        lines += [f"{owner} IN {rtype} {rdata}" for owner, rtype, rdata in self.records]
        return "\n".join(lines) + "\n"


def find_program(name: str) -> str:
    """Absolute path of an nsd tool; RuntimeError (never a skip) if nsd is not installed."""
    return find_debian_program(name, "nsd")


def _bind_pair(port: int) -> tuple[socket.socket, socket.socket]:
    """A TCP and a UDP socket bound to the same loopback port (0: any free port)."""
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        tcp.bind((LOOPBACK, port))
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            udp.bind((LOOPBACK, tcp.getsockname()[1]))
        except OSError:
            udp.close()
            raise
    except OSError:
        tcp.close()
        raise
    return tcp, udp


def free_port() -> int:
    """A loopback port free for both TCP and UDP right now (DNS needs both)."""
    for _ in range(50):
        try:
            tcp, udp = _bind_pair(0)
        except OSError:
            continue  # the TCP port's UDP twin was taken: try another
        port = tcp.getsockname()[1]
        tcp.close()
        udp.close()
        return port
    raise RuntimeError("no loopback port free for both TCP and UDP")


class NsdFailed(RuntimeError):
    """nsd did not come up (or did not load the new zones); the message carries its log."""

    def __init__(self, message: str, log: str) -> None:
        super().__init__(f"{message}\n--- nsd log ---\n{log}")
        self.log = log


class DnsServer:
    """nsd on 127.0.0.1:<port> serving `zones`, plus a `Blackhole` front for timeouts."""

    address = LOOPBACK

    def __init__(self, directory: Path, zones: Iterable[Zone] = (), silent_suffixes: Iterable[str] = ()) -> None:
        self.directory = Path(directory).resolve()
        self.zones = list(zones)
        # Read live by the front: tests may change it while the server runs.
        self.silent_suffixes: list[str] = list(silent_suffixes)
        self.port = 0
        self.serial = 1
        self.front: Blackhole | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._log_offset = 0
        self._loaded_origins: set[str] = set()

    # -- addresses -------------------------------------------------------------------------

    @property
    def nameserver(self) -> str:
        """nsd itself as "127.0.0.1:PORT", as the policy's `dns.nameservers` takes it."""
        return f"{self.address}:{self.port}"

    @property
    def front_port(self) -> int:
        if self.front is None:
            raise RuntimeError("DnsServer is not started")
        return self.front.port

    @property
    def front_nameserver(self) -> str:
        """The front as "127.0.0.1:PORT": it never answers names under `silent_suffixes`."""
        return f"{self.address}:{self.front_port}"

    @property
    def swallowed(self) -> list[str]:
        """Query names the front read and left unanswered, in order."""
        return list(self.front.swallowed) if self.front else []

    @property
    def asked(self) -> list[str]:
        """Every query the front read, as "name/TYPE" in order (what a resolver pointed at
        `front_nameserver` really asked, cache misses only)."""
        return list(self.front.asked) if self.front else []

    def resolver(self, *, front: bool = False, lifetime: float = 5.0) -> dns.resolver.Resolver:
        """A dnspython resolver that asks only this server (or its front)."""
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers = [self.address]
        resolver.port = self.front_port if front else self.port
        resolver.lifetime = lifetime
        return resolver

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> DnsServer:
        if self._process is not None:
            return self
        find_program("nsd")
        self.directory.mkdir(parents=True, exist_ok=True)
        self._write_zones(self.zones, self.serial)
        self._start_nsd_on_free_port()
        self.front = Blackhole((self.address, self.port), lambda: self.silent_suffixes).start()
        return self

    def stop(self) -> None:
        if self.front is not None:
            self.front.stop()
            self.front = None
        self._stop_nsd()

    def __enter__(self) -> DnsServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def stop_server(self) -> None:
        """Stop nsd alone (the front stays up, its forwards then go unanswered): a DNS outage."""
        self._stop_nsd()

    def start_server(self) -> None:
        """Start nsd again after stop_server(), on the same port with the same zones."""
        if self._process is None:
            self._launch()
            self._wait_serving()

    def set_zones(self, zones: Iterable[Zone]) -> None:
        """Serve `zones` instead; returns once nsd answers every zone with the new serial."""
        zones = list(zones)
        self._write_zones(zones, self.serial + 1)  # raises before anything changes if a zone is bad
        self.zones, self.serial = zones, self.serial + 1
        if self._process is None:
            return
        if {z.origin.lower() for z in zones} == self._loaded_origins:
            self._reload()
        else:
            self._stop_nsd()  # SIGHUP does not re-read nsd.conf, so new or removed zones need a restart
            self._launch()
            self._wait_serving()

    # -- nsd -------------------------------------------------------------------------------

    def _start_nsd_on_free_port(self) -> None:
        for attempt in range(1, START_ATTEMPTS + 1):
            self.port = free_port()
            self._launch()
            try:
                self._wait_serving()
                return
            except NsdFailed as failed:
                self._stop_nsd()
                if "Address already in use" not in failed.log or attempt == START_ATTEMPTS:
                    raise

    def _launch(self) -> None:
        self._write_config()
        self._log_offset = self._logfile.stat().st_size if self._logfile.exists() else 0
        with (self.directory / "nsd.stderr").open("ab") as stderr:
            # Own session: stop() can kill nsd's whole process family (xfrd, main, server).
            self._process = subprocess.Popen(
                [find_program("nsd"), "-d", "-c", str(self._config)],
                stdin=subprocess.DEVNULL,
                stdout=stderr,
                stderr=stderr,
                start_new_session=True,
            )
        self._loaded_origins = {z.origin.lower() for z in self.zones}

    def _reload(self) -> None:
        """SIGHUP: nsd re-reads the zone files whose mtime changed and forks new server processes.

        The old server process keeps answering (old data) for a few ms after the new one
        answers, so wait for it to go too: otherwise a test's next query can get the old answer.
        """
        assert self._process is not None
        old_servers = self._server_pids()
        self._process.send_signal(signal.SIGHUP)
        self._wait_serving()
        if not wait_until(lambda: not old_servers & self._server_pids(), READY_TIMEOUT, PROBE_BACKOFF):
            raise NsdFailed(f"nsd's old server processes {sorted(old_servers)} outlived the reload", self._log_tail())

    def _server_pids(self) -> set[int]:
        # nsd names its processes "nsd: xfrd", "nsd: main", "nsd: server N" (seen in 4.6.1).
        sid = self._process.pid if self._process else -1
        return {pid for pid, name in session_processes(sid).items() if name.startswith("nsd: server")}

    def _stop_nsd(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        # main and server may outlive xfrd briefly, still bound to the port a restart reuses.
        stop_session(process, STOP_TIMEOUT, PROBE_BACKOFF)

    def _wait_serving(self) -> None:
        """Poll until every zone answers its SOA with the current serial (or nsd dies)."""
        pending = {z.origin for z in self.zones}
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            if self._process is None or self._process.poll() is not None:
                raise NsdFailed(f"nsd on {self.nameserver} exited", self._log_tail())
            if not self.zones and self._answers_anything():
                return
            pending = {origin for origin in pending if self._soa_serial(origin) != self.serial}
            if self.zones and not pending:
                return
            if time.monotonic() > deadline:
                waiting = ", ".join(sorted(pending)) or "any answer"
                raise NsdFailed(
                    f"nsd on {self.nameserver} did not serve serial {self.serial} for {waiting}", self._log_tail()
                )
            time.sleep(PROBE_BACKOFF)

    def _query(self, name: str, rdtype: str) -> dns.message.Message | None:
        # TCP, because before nsd binds its port a TCP connect is refused at once, while a
        # UDP query would just wait out its timeout.
        query = dns.message.make_query(name, rdtype)
        try:
            return dns.query.tcp(query, self.address, port=self.port, timeout=PROBE_TIMEOUT)
        except (dns.exception.DNSException, OSError):  # refused, reset, timed out, cut short
            return None

    def _soa_serial(self, origin: str) -> int | None:
        response = self._query(origin, "SOA")
        if response is None or response.rcode() != dns.rcode.NOERROR:
            return None
        for rrset in response.answer:
            if rrset.rdtype == dns.rdatatype.SOA:
                return int(rrset[0].serial)
        return None

    def _answers_anything(self) -> bool:
        return self._query(".", "SOA") is not None  # with no zones nsd answers REFUSED: still up

    # -- files -----------------------------------------------------------------------------

    @property
    def _config(self) -> Path:
        return self.directory / "nsd.conf"

    @property
    def _logfile(self) -> Path:
        return self.directory / "nsd.log"

    @staticmethod
    def _check_unique(zones: list[Zone]) -> None:
        origins = [z.origin.lower() for z in zones]
        duplicates = sorted({o for o in origins if origins.count(o) > 1})
        if duplicates:
            raise ValueError(f"zones given twice: {', '.join(duplicates)}")

    def _write_zones(self, zones: list[Zone], serial: int) -> None:
        """Write every zone file, but only once nsd-checkzone accepted all of them."""
        self._check_unique(zones)
        staged = []
        for zone in zones:
            path = self.directory / zone.filename
            new = path.with_name(f"{path.name}.new")
            new.write_text(zone.render(serial))
            self._check_zone(zone, new)
            staged.append((new, path))
        for new, path in staged:
            before = path.stat().st_mtime_ns if path.exists() else 0
            os.replace(new, path)
            # nsd reloads a zone only if its file's mtime changed; file times come from a
            # coarse kernel clock, so two rewrites within a few ms could look unchanged.
            if path.stat().st_mtime_ns <= before:
                os.utime(path, ns=(before + 1_000_000, before + 1_000_000))

    @staticmethod
    def _check_zone(zone: Zone, path: Path) -> None:
        # A bad record fails here with nsd's own message, instead of as a reload timeout.
        check = subprocess.run(
            [find_program("nsd-checkzone"), zone.origin, str(path)], capture_output=True, text=True, check=False
        )
        if check.returncode != 0:
            path.unlink()
            raise ValueError(f"zone {zone.origin} rejected by nsd-checkzone:\n{check.stdout}{check.stderr}")

    def _write_config(self) -> None:
        d = self.directory
        server = {
            "ip-address": f"{self.address}@{self.port}",
            "port": str(self.port),
            "do-ip6": "no",
            # Run as whoever starts the tests, in place: no user switch, chroot or nsd.db.
            "username": '""',
            "chroot": '""',
            "database": '""',
            "zonesdir": f'"{d}"',
            "zonelistfile": f'"{d / "zone.list"}"',
            "xfrdfile": f'"{d / "xfrd.state"}"',
            "xfrdir": f'"{d}"',
            "pidfile": f'"{d / "nsd.pid"}"',
            "logfile": f'"{self._logfile}"',
            "verbosity": "2",  # logs zone loads and, should RRL ever be on, its blocks
            "server-count": "1",
            "identity": '"policy-milter-tests"',
            # RRL off: 0 disables the limit, and 0 for the whitelist rate skips RRL processing.
            "rrl-ratelimit": "0",
            "rrl-whitelist-ratelimit": "0",
            "rrl-size": "1000",  # the default allocates a million buckets for nothing
            "xfrd-tcp-max": "32",
            "xfrd-tcp-pipeline": "128",
        }
        lines = ["server:", *(f"  {key}: {value}" for key, value in server.items())]
        lines += ["remote-control:", "  control-enable: no"]
        for zone in self.zones:
            lines += ["zone:", f'  name: "{zone.origin}"', f'  zonefile: "{d / zone.filename}"']
        self._config.write_text("\n".join(lines) + "\n")

    def _log_tail(self) -> str:
        text = ""
        if self._logfile.exists():
            with self._logfile.open("rb") as log:
                log.seek(self._log_offset)
                text = log.read().decode(errors="replace")
        stderr = self.directory / "nsd.stderr"
        if stderr.exists():
            text += stderr.read_text(errors="replace")
        return "\n".join(text.splitlines()[-LOG_TAIL_LINES:]) or "(nsd logged nothing)"


class Blackhole:
    """A UDP+TCP DNS front on loopback: relays queries to `upstream` and returns its answers,
    except queries for names at or under a suffix from `silent()`, which are read and never
    answered, so the asker times out.
    """

    address = LOOPBACK

    def __init__(self, upstream: tuple[str, int], silent: Callable[[], Iterable[str]]) -> None:
        self.upstream = upstream
        self.silent = silent
        self.port = 0
        self.swallowed: list[str] = []
        self.asked: list[str] = []  # "name/TYPE" of every query read, answered or not
        self._servers: list[socketserver.BaseServer] = []
        self._threads: list[threading.Thread] = []
        self._connections: set[socket.socket] = set()
        self._lock = threading.Lock()

    @property
    def nameserver(self) -> str:
        return f"{self.address}:{self.port}"

    def start(self) -> Blackhole:
        tcp, udp = self._bind_servers()
        self.port = tcp.server_address[1]
        self._servers = [udp, tcp]
        for server in self._servers:
            # A short poll interval keeps stop() fast (shutdown waits for the next poll).
            thread = threading.Thread(
                target=server.serve_forever,
                kwargs={"poll_interval": 0.02},
                name=f"dns-blackhole-{type(server).__name__}",
                daemon=True,
            )
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()
        with self._lock:
            # TCP handlers block reading from clients that may never hang up: unblock them.
            for conn in self._connections:
                _shutdown_quietly(conn)
        for thread in self._threads:
            thread.join(STOP_TIMEOUT)
        self._servers, self._threads = [], []

    def _bind_servers(self) -> tuple[_TcpFront, _UdpFront]:
        for _ in range(50):
            tcp = _TcpFront((self.address, 0), self)
            try:
                udp = _UdpFront((self.address, tcp.server_address[1]), self)
            except OSError:
                tcp.server_close()  # this TCP port's UDP twin is taken: try another
                continue
            return tcp, udp
        raise RuntimeError("no loopback port free for both TCP and UDP")

    def is_silent(self, wire: bytes) -> bool:
        """True if the query asks about a silent name (recorded as swallowed); every query read
        is recorded in `asked`."""
        try:
            question = dns.message.from_wire(wire).question
        except (dns.exception.DNSException, ValueError):
            return False  # not parseable: let nsd answer it (FORMERR)
        if not question:
            return False
        name = question[0].name
        text = name.to_text(omit_final_dot=True)
        with self._lock:
            self.asked.append(f"{text}/{dns.rdatatype.to_text(question[0].rdtype)}")
        if any(name.is_subdomain(dns.name.from_text(suffix)) for suffix in self.silent()):
            with self._lock:
                self.swallowed.append(text)
            return True
        return False

    def forward_udp(self, wire: bytes) -> bytes | None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as upstream:
            upstream.settimeout(UPSTREAM_TIMEOUT)
            upstream.connect(self.upstream)  # connected: only nsd's datagrams are accepted
            try:
                upstream.send(wire)
                return upstream.recv(65535)
            except OSError:  # includes TimeoutError: the asker then times out as well
                return None

    def forward_tcp(self, wire: bytes) -> bytes | None:
        try:
            with socket.create_connection(self.upstream, timeout=UPSTREAM_TIMEOUT) as upstream:
                upstream.sendall(_frame(wire))
                return _read_frame(upstream)
        except OSError:
            return None

    def track(self, conn: socket.socket, add: bool) -> None:
        with self._lock:
            if add:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)


def _frame(wire: bytes) -> bytes:
    return len(wire).to_bytes(2, "big") + wire  # DNS over TCP: 2-byte length prefix (RFC 1035 4.2.2)


def _read_exact(conn: socket.socket, size: int) -> bytes | None:
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def _read_frame(conn: socket.socket) -> bytes | None:
    """One length-prefixed DNS message, or None when the peer closed the connection."""
    prefix = _read_exact(conn, 2)
    return None if prefix is None else _read_exact(conn, int.from_bytes(prefix, "big"))


def _shutdown_quietly(conn: socket.socket) -> None:
    with contextlib.suppress(OSError):  # already closed by the client
        conn.shutdown(socket.SHUT_RDWR)


class _UdpHandler(socketserver.BaseRequestHandler):
    server: _UdpFront

    def handle(self) -> None:
        wire, sock = self.request
        front = self.server.front
        if front.is_silent(wire):
            return
        answer = front.forward_udp(wire)
        if answer is not None:
            sock.sendto(answer, self.client_address)


class _TcpHandler(socketserver.BaseRequestHandler):
    server: _TcpFront

    def handle(self) -> None:
        conn: socket.socket = self.request
        front = self.server.front
        front.track(conn, add=True)
        try:
            # A client may send several queries on one connection; silent ones stay unanswered.
            while (wire := _read_frame(conn)) is not None:
                if front.is_silent(wire):
                    continue
                answer = front.forward_tcp(wire)
                if answer is not None:
                    conn.sendall(_frame(answer))
        except OSError:
            pass  # client went away, or stop() shut the connection down
        finally:
            front.track(conn, add=False)


class _UdpFront(socketserver.ThreadingUDPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], front: Blackhole) -> None:
        self.front = front
        super().__init__(address, _UdpHandler)


class _TcpFront(socketserver.ThreadingTCPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], front: Blackhole) -> None:
        self.front = front
        super().__init__(address, _TcpHandler)
