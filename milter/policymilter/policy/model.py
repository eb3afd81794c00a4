"""The policy schema: frozen, closed models (an unknown key is an error, never ignored).

Each check's table carries `enabled` and `mode`; listeners choose which checks run for each
traffic class (authenticated or not) and what an error in each check does (`on_error`).
"""

from __future__ import annotations

import ipaddress
import re
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from policymilter.dns import DEFAULT_CACHE_MAX_TTL
from policymilter.metrics import Listen
from policymilter.outcome import ErrorAction


class CheckName(StrEnum):
    """Checks a listener can run, in pipeline order (cheap before expensive)."""

    SENDER = "sender"
    RATELIMIT = "ratelimit"
    SPF = "spf"
    ATTACHMENTS = "attachments"
    ANTIVIRUS = "antivirus"
    SPAM = "spam"
    DKIM = "dkim"
    ARC = "arc"
    DMARC = "dmarc"
    SIGNING = "signing"
    SEAL = "seal"


class Strict(BaseModel):
    # Validated from JSON-mode data in strict mode (see load.py): TOML types must match exactly,
    # arrays become tuples, strings become enums.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


_HOSTNAME = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9])?\.)*"
                       r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.?$")
_HOST_PORT = re.compile(r"^(?P<host>\[[0-9A-Fa-f:.]+\]|[^:\s\[\]]+)(:(?P<port>\d{1,5}))?$", re.ASCII)
_ENDPOINT = re.compile(r"^(unix:/\S+|(\[[0-9A-Fa-f:.]+\]|[^:\s\[\]/]+):\d{1,5})$", re.ASCII)
_SASL_MECHANISM = re.compile(r"^[A-Za-z0-9_-]{1,20}$", re.ASCII)


def _hostname(value: str) -> str:
    if not _HOSTNAME.match(value):
        raise ValueError(f"{value!r} is not a valid host or domain name")
    return value.lower().rstrip(".")


Domain = Annotated[str, Field(min_length=1)]
Seconds = Annotated[float, Field(gt=0, le=3600)]
Bytes = Annotated[int, Field(ge=0)]


class Site(Strict):
    domains: tuple[Domain, ...] = ()
    authserv_id: str = "localhost"
    # Bytes; larger messages are refused with 552 5.3.4 (0: leave it to Postfix's message_size_limit).
    max_message_size: Annotated[int, Field(ge=0)] = 25 * 1024 * 1024
    # Per worker process: messages whose end-of-message checks run at once; the next waits its
    # turn up to queue_timeout seconds, then gets 451 4.3.2 (admission.py).
    max_concurrent_messages: Annotated[int, Field(ge=1, le=10_000)] = 20
    queue_timeout: Seconds = 30.0

    @field_validator("domains")
    @classmethod
    def _domains(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(_hostname(domain) for domain in value)

    @field_validator("authserv_id")
    @classmethod
    def _authserv_id(cls, value: str) -> str:
        return _hostname(value)


class Dns(Strict):
    nameservers: tuple[str, ...] = ()
    timeout: Seconds = 5.0
    # All lookups of one check together (SPF at MAIL FROM; DKIM, ARC, DMARC each at end of
    # message). Their sum per stage must stay under Postfix's milter timeouts ([postfix]), so
    # Postfix never gives up on the milter first: policy/timing.py checks it at load.
    lifetime: Seconds = 20.0
    # Answers kept by each worker process for all checks (LRU by entries); 0 turns the cache off.
    cache_size: Annotated[int, Field(ge=0, le=1_000_000)] = 10_000
    # No answer is kept longer than this, whatever its TTL (BIND's max-cache-ttl: one week at most).
    cache_max_ttl: Annotated[float, Field(gt=0, le=604_800)] = DEFAULT_CACHE_MAX_TTL

    @model_validator(mode="after")
    def _timeout_within_lifetime(self) -> Dns:
        if self.timeout > self.lifetime:
            raise ValueError(f"timeout ({self.timeout}) must not exceed lifetime ({self.lifetime})")
        return self

    @field_validator("nameservers")
    @classmethod
    def _nameservers(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        bad = [server for server in value if not _valid_host_port(server)]
        if bad:
            raise ValueError(f'{", ".join(map(repr, bad))}: expected "HOST" or "HOST:PORT"')
        return value


def _valid_host_port(server: str) -> bool:
    match = _HOST_PORT.match(server)
    return match is not None and (not match["port"] or 0 < int(match["port"]) < 65536)


def _endpoints(value: tuple[str, ...]) -> tuple[str, ...]:
    bad = [endpoint for endpoint in value if not _ENDPOINT.match(endpoint)
           or (not endpoint.startswith("unix:") and not 0 < int(endpoint.rsplit(":", 1)[1]) < 65536)]
    if bad:
        raise ValueError(f'{", ".join(map(repr, bad))}: expected "unix:/path" or "HOST:PORT"')
    return value


class Postfix(Strict):
    """What Postfix's main.cf says about this milter (its defaults here): the milter must answer
    each stage within these, or Postfix applies milter_default_action to the message."""

    milter_command_timeout: Seconds = 30.0  # per SMTP command: connect, HELO, MAIL FROM, RCPT
    milter_content_timeout: Seconds = 300.0  # per piece of content, end of message included


class Metrics(Strict):
    """Prometheus metrics (metrics.py): where `run` serves /metrics; empty: off. `run --metrics`
    wins over it. Read at start only: a reload does not move the listener."""

    listen: str = ""
    # Where the worker processes keep their values (mmap files): "" is the system's temporary
    # directory. A full file system kills a process writing a new page there (SIGBUS), so put
    # it where other users cannot fill it, e.g. the unit's RuntimeDirectory (/run/policy-milter).
    directory: str = ""

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        if value:
            Listen.parse(value)  # its ValueError says what is expected
        return value


def _one_address(value: str, example: str) -> str:
    """An optional single mail address (notification and report senders and recipients)."""
    if value and not re.fullmatch(r"[^@\s<>]+@[^@\s<>]+", value):
        raise ValueError(f"{value!r}: expected one address, like \"{example}\"")
    return value


def _relay_address(value: str) -> str:
    """HOST:PORT of an SMTP relay (a port is required)."""
    if not _valid_host_port(value) or ":" not in value.rsplit("]", 1)[-1]:
        raise ValueError(f"{value!r}: expected \"HOST:PORT\"")
    return value


class CheckTable(Strict):
    """Keys every check's table has."""

    enabled: bool = True
    # report: log what the check would do, change nothing (how admins roll a policy out).
    mode: Literal["enforce", "report"] = "enforce"

    @property
    def set_up(self) -> bool:
        """False for a check that cannot do anything until the admin configures it (seal
        without a key): it reads nothing either, so it requires nothing."""
        return True


# Final extensions refused on the doors that run the attachments check, in groups; the same
# list, with a comment per group, is written out in policies/00-default.toml (a test keeps them equal).
DEFAULT_BLOCKED_EXTENSIONS = (
    # Microsoft Outlook's Level-1 list (support.microsoft.com "Blocked attachments in Outlook"):
    # programs, scripts, installers, shortcuts and documents that run code when opened.
    "ade", "adp", "app", "application", "appref-ms", "asp", "aspx", "asx", "bas", "bat", "bgi", "cab",
    "cer", "chm", "cmd", "cnt", "com", "cpl", "crt", "csh", "der", "diagcab", "exe", "fxp", "gadget",
    "grp", "hlp", "hpj", "hta", "htc", "inf", "ins", "isp", "its", "jar", "jnlp", "js", "jse", "ksh",
    "lnk", "mad", "maf", "mag", "mam", "maq", "mar", "mas", "mat", "mau", "mav", "maw", "mcf", "mda",
    "mdb", "mde", "mdt", "mdw", "mdz", "msc", "msh", "msh1", "msh2", "mshxml", "msh1xml", "msh2xml",
    "msi", "msp", "mst", "msu", "ops", "osd", "pcd", "pif", "pl", "plg", "prf", "prg", "printerexport",
    "ps1", "ps1xml", "ps2", "ps2xml", "psc1", "psc2", "psd1", "psdm1", "pst", "py", "pyc", "pyo",
    "pyw", "pyz", "pyzw", "reg", "scf", "scr", "sct", "shb", "shs", "theme", "tmp", "url", "vb", "vbe",
    "vbp", "vbs", "vhd", "vhdx", "vsmacros", "vsw", "webpnp", "website", "ws", "wsb", "wsc", "wsf", "wsh",
    "xbap", "xll", "xnk",
    # Not on Outlook's list, refused here since the start: DLLs (rundll32, side-loading) and
    # PowerShell modules.
    "dll", "psm1",
    # OneNote notebooks and packages: embedded files run with one click (2023 campaigns).
    "one", "onepkg",
    # Disk images: Windows mounts them on a double click and their content escapes Mark-of-the-Web.
    "iso", "img",
    # App installers and packages (MSIX/AppX, ClickOnce, App Installer).
    "msix", "msixbundle", "appx", "appxbundle", "appinstaller",
    # Search, library and settings shortcuts: they point Explorer at a remote share or a command.
    "search-ms", "searchconnector-ms", "library-ms", "settingcontent-ms",
    # Excel add-ins, web queries and SYLK: code or external data on open.
    "xla", "xlam", "iqy", "slk",
    # Macro-enabled Office formats (VBA runs once the user enables content).
    "docm", "dotm", "xlsm", "xltm", "xlsb", "pptm", "potm", "ppam", "ppsm", "sldm",
    # Remote Desktop connection files: one click connects to the sender's server and shares the
    # recipient's drives and clipboard with it (2024 spear-phishing campaigns).
    "rdp",
)


class Attachments(CheckTable):
    blocked_extensions: tuple[str, ...] = DEFAULT_BLOCKED_EXTENSIONS
    # Content kinds refused whatever the file is called (sniffed, never trusted from the name).
    blocked_content: tuple[str, ...] = ("pe", "elf", "macho", "macro")
    # MIME and archive levels together.
    max_depth: Annotated[int, Field(ge=1, le=100)] = 10
    max_parts: Annotated[int, Field(ge=1)] = 1000
    max_archive_members: Annotated[int, Field(ge=1)] = 1000
    max_expanded_size: Bytes = 100 * 1024 * 1024
    uninspectable: Literal["block", "accept"] = "block"

    @field_validator("blocked_extensions")
    @classmethod
    def _extensions(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for extension in value:
            # Windows has no length limit; real ones run to 18 ("searchconnector-ms").
            if not re.fullmatch(r"[A-Za-z0-9_-]{1,32}", extension):
                raise ValueError(f"{extension!r} is not a file extension (write it without the dot)")
        return tuple(extension.lower() for extension in value)


class Antivirus(CheckTable):
    servers: tuple[str, ...] = ("unix:/run/clamav/clamd.ctl",)
    timeout: Seconds = 60.0
    # Keep at or below clamd's StreamMaxLength; larger messages get `on_oversize`.
    max_size: Bytes = 25 * 1024 * 1024
    on_infected: Literal["reject", "quarantine", "discard"] = "reject"
    on_oversize: Literal["skip", "reject", "tempfail"] = "skip"
    # Scans at once, all workers together (slots.py); more wait for a turn within `timeout`.
    max_in_flight: Annotated[int, Field(ge=1, le=10_000)] = 12

    @field_validator("servers")
    @classmethod
    def _servers(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return _endpoints(value)


class Spam(CheckTable):
    servers: tuple[str, ...] = ("127.0.0.1:783",)
    timeout: Seconds = 60.0
    max_size: Bytes = 2 * 1024 * 1024
    tag_score: float = 5.0
    quarantine_score: float | None = None
    reject_score: float | None = 15.0
    subject_tag: str = ""  # e.g. "[SPAM]": prefixed to the Subject of tagged spam
    max_in_flight: Annotated[int, Field(ge=1, le=10_000)] = 5  # as for antivirus: spamd's children

    @field_validator("servers")
    @classmethod
    def _servers(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return _endpoints(value)

    @model_validator(mode="after")
    def _ordered(self) -> Spam:
        steps = [s for s in (self.tag_score, self.quarantine_score, self.reject_score) if s is not None]
        if steps != sorted(steps):
            raise ValueError("scores must rise: tag_score <= quarantine_score <= reject_score")
        return self


class Spf(CheckTable):
    on_fail: Literal["dmarc", "reject", "tag"] = "dmarc"


class Dkim(CheckTable):
    max_signatures: Annotated[int, Field(ge=1, le=50)] = 5


class Dmarc(CheckTable):
    # What a failing message whose domain publishes p=reject / p=quarantine gets here.
    on_reject: Literal["reject", "quarantine", "tag"] = "reject"
    on_quarantine: Literal["quarantine", "tag"] = "quarantine"
    # RFC 7489 §6.6.3 discovery, or the RFC 9989 (DMARCbis) tree walk.
    discovery: Literal["rfc7489", "treewalk"] = "rfc7489"
    # A message without exactly one From domain cannot be evaluated (RFC 7489 §6.6.1).
    on_bad_from: Literal["reject", "accept"] = "reject"
    # Mail from outside that claims one of site.domains and fails DMARC: always refuse it,
    # whatever the domain's published policy says (spoofing of our own users).
    always_reject_site_domains: bool = False
    never_reject_domains: tuple[Domain, ...] = ()
    # Networks whose mail is forwarded to us (their failures are not enforced).
    trusted_forwarders: tuple[str, ...] = ()

    @field_validator("never_reject_domains")
    @classmethod
    def _domains(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(_hostname(domain) for domain in value)

    @field_validator("trusted_forwarders")
    @classmethod
    def _networks(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        bad = []
        for network in value:
            try:
                ipaddress.ip_network(network, strict=False)
            except ValueError:
                bad.append(network)
        if bad:
            raise ValueError(f"{', '.join(map(repr, bad))}: not an IP network (e.g. \"192.0.2.0/24\")")
        return value


class Arc(CheckTable):
    # ARC sealers (d= of ARC-Seal) whose passing chain overrides a DMARC failure.
    trusted_sealers: tuple[Domain, ...] = ()

    @field_validator("trusted_sealers")
    @classmethod
    def _domains(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(_hostname(domain) for domain in value)


class Sender(CheckTable):
    patterns: tuple[str, ...] = ("{login}@{domain}",)
    map_file: str = ""
    on_mismatch: Literal["reject", "log"] = "reject"

    @field_validator("patterns")
    @classmethod
    def _patterns(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for pattern in value:
            try:
                address = pattern.format(login="login", domain="example.org")
            except (KeyError, IndexError, ValueError) as error:
                raise ValueError(f"{pattern!r}: only {{login}} and {{domain}} may be used ({error!s})") from None
            if address.count("@") != 1:
                raise ValueError(f"{pattern!r}: must make one address, like \"{{login}}@{{domain}}\"")
        return value


class Limit(Strict):
    """One row of [[ratelimit.limits]]: at most so many of each count per `per` seconds, for one
    login (authenticated transactions) or one client address (unauthenticated ones)."""

    key: Literal["login", "client"] = "login"
    messages: Annotated[int, Field(ge=1)] | None = None
    # Recipients of accepted transactions, each counted once per transaction after lower-casing
    # it and removing the +detail (ratelimit.recipient_delimiter).
    recipients: Annotated[int, Field(ge=1)] | None = None
    domains: Annotated[int, Field(ge=1)] | None = None  # distinct recipient domains
    clients: Annotated[int, Field(ge=1)] | None = None  # distinct client addresses (key = "login")
    per: Annotated[int, Field(ge=1, le=31 * 86400)] = 3600
    # tempfail: 451 4.7.1 naming the limit (the client retries later); hold: accepted into
    # Postfix's hold queue for review; lock: 550 5.7.1 for this and every later transaction of
    # the login until `policy-milter accounts clear LOGIN`.
    action: Literal["tempfail", "hold", "lock"] = "tempfail"
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:-]{1,40}$")] | None = None  # default: "KEY PERs"

    @model_validator(mode="after")
    def _counts(self) -> Limit:
        if not any((self.messages, self.recipients, self.domains, self.clients)):
            raise ValueError("a limit needs at least one of messages, recipients, domains, clients")
        if self.clients is not None and self.key == "client":
            raise ValueError("clients counts the client addresses of one login: use it with key = \"login\"")
        if self.action == "lock" and self.key == "client":
            raise ValueError("action = \"lock\" locks a login: use it with key = \"login\"")
        return self

    @property
    def label(self) -> str:
        return self.name or f"{self.key}-{self.per}s"


class State(Strict):
    """The state store the rate limits and the DMARC report rows share."""

    # "sqlite:/ABSOLUTE/PATH" (one file per host) or "redis://HOST:PORT/DB" (several hosts).
    store: str = "sqlite:/var/lib/policy-milter/state.db"
    timeout: Annotated[float, Field(gt=0, le=10)] = 2.0  # seconds per store operation

    @field_validator("store")
    @classmethod
    def _store(cls, value: str) -> str:
        from policymilter.state import store_problem

        problem = store_problem(value)
        if problem:
            raise ValueError(problem)
        return value


class Ratelimit(CheckTable):
    # The store cannot be reached: "accept" (logged; the limits do not apply) or "tempfail".
    on_store_error: Literal["accept", "tempfail"] = "accept"
    # Postfix's recipient_delimiter: user+detail@ and user@ are one recipient ("" for none).
    recipient_delimiter: Annotated[str, Field(max_length=8)] = "+"
    limits: tuple[Limit, ...] = ()
    # Mail an admin when a limit trips (at most once per login and limit per window), through
    # the local MTA at notify_relay: contrib/postfix/master.cf's 127.0.0.1:10027 service, which
    # runs no milter (through port 25 our own DMARC check would judge the notice).
    notify: str = ""
    notify_relay: str = "127.0.0.1:10027"
    notify_from: str = ""  # default: postmaster@ the first of site.domains (or the host name)

    @field_validator("notify", "notify_from")
    @classmethod
    def _address(cls, value: str) -> str:
        return _one_address(value, "postmaster@example.org")

    @field_validator("notify_relay")
    @classmethod
    def _relay(cls, value: str) -> str:
        return _relay_address(value)

    @field_validator("limits")
    @classmethod
    def _unique_names(cls, value: tuple[Limit, ...]) -> tuple[Limit, ...]:
        labels = [limit.label for limit in value]
        twice = sorted({label for label in labels if labels.count(label) > 1})
        if twice:
            raise ValueError(f"two limits are named {twice[0]!r}: give one a `name`")
        return value


class DmarcReports(Strict):
    """Aggregate reports we send (RFC 9990): what the dmarc check records, and how
    `policy-milter dmarc-reports send` reports it. Recording is off until the site says who it is."""

    record: bool = False  # the dmarc check records one row per message in the state store
    # Seconds per report: a day by default; shorter ones must divide a day (RFC 9990 asks for
    # periods on hour boundaries).
    interval: Annotated[int, Field(ge=3600, le=86400)] = 86400
    org_name: Annotated[str, Field(max_length=200)] = ""  # report_metadata/org_name, e.g. "Example Org"
    email: str = ""  # report_metadata/email and the reports' From address, e.g. "dmarc-noreply@example.org"
    extra_contact_info: Annotated[str, Field(max_length=500)] = ""
    # The local MTA the reports are handed to: a milter-free smtpd (contrib/postfix/master.cf's
    # 127.0.0.1:10027), so that our own checks do not judge our reports.
    relay: str = "127.0.0.1:10027"
    suppress: tuple[str, ...] = ()  # report domains or rua addresses that never get a report
    max_reports_per_run: Annotated[int, Field(ge=1)] = 1000
    max_rows: Annotated[int, Field(ge=1)] = 10000  # distinct rows per report domain and period; more are dropped
    keep_days: Annotated[int, Field(ge=1, le=60)] = 7  # reports not sent by then are dropped
    # What a forger can vary (selectors, source addresses, From domains) must not crowd out the
    # rows of real mail: of max_rows, rows of mail failing DMARC may take at most max_failing_rows,
    # and those of one source (an IPv4 address, an IPv6 /64) at most max_rows_per_source.
    max_failing_rows: Annotated[int, Field(ge=1)] = 8000
    max_rows_per_source: Annotated[int, Field(ge=1)] = 100
    max_domains: Annotated[int, Field(ge=1)] = 10000  # report domains per period; more are not counted
    # A report's gzip beyond this sends its rows of most messages (passing DMARC first), saying
    # how many were left out: under the relay's message_size_limit after base64 (Postfix: 10240000).
    max_report_bytes: Annotated[int, Field(ge=10000)] = 5 * 2**20
    # One run stops starting reports after this (the rest wait): under the unit's TimeoutStartSec.
    max_run_seconds: Annotated[int, Field(ge=10)] = 1200

    @field_validator("interval")
    @classmethod
    def _divides_a_day(cls, value: int) -> int:
        if 86400 % value or value % 3600:
            raise ValueError(f"{value}: a report period must be whole hours that divide a day (3600, 7200, "
                             "10800, 14400, 21600, 28800, 43200 or 86400)")
        return value

    @field_validator("email")
    @classmethod
    def _address(cls, value: str) -> str:
        return _one_address(value, "dmarc-noreply@example.org")

    @field_validator("relay")
    @classmethod
    def _relay(cls, value: str) -> str:
        return _relay_address(value)

    @model_validator(mode="after")
    def _who_we_are(self) -> DmarcReports:
        if self.record and not (self.org_name and self.email):
            raise ValueError("record = true needs org_name and email: the reports must say who sends them")
        return self


class SigningKey(Strict):
    selector: Annotated[str, Field(min_length=1, max_length=63, pattern=r"^[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?$")]
    key_file: Annotated[str, Field(min_length=1)]
    algorithm: Literal["rsa-sha256", "ed25519-sha256"] = "rsa-sha256"


class Signing(CheckTable):
    keys: dict[Domain, tuple[SigningKey, ...]] = Field(default_factory=dict)
    canonicalization: Literal["relaxed/relaxed", "relaxed/simple", "simple/simple", "simple/relaxed"] = (
        "relaxed/relaxed"
    )
    on_missing_key: Literal["tempfail", "accept"] = "tempfail"

    @field_validator("keys")
    @classmethod
    def _domains(cls, value: dict[str, tuple[SigningKey, ...]]) -> dict[str, tuple[SigningKey, ...]]:
        # Compared with site.domains and the From domain: same spelling rules (lower case, no dot).
        return {_hostname(domain): keys for domain, keys in value.items()}


class Seal(CheckTable):
    """ARC sealing (RFC 8617) with one of the keys in signing.keys: `domain` and `selector` name
    it (d= and s= of the seals). Both empty: not set up, nothing is sealed."""

    domain: str = ""
    selector: str = ""

    @field_validator("domain")
    @classmethod
    def _domain(cls, value: str) -> str:
        return _hostname(value) if value else value

    @property
    def set_up(self) -> bool:
        return bool(self.domain or self.selector)

    def issues(self, signing: Signing) -> list[tuple[tuple[str, ...], str]]:
        """(key path, message) when the key named here is not one signing.keys lists."""
        if not self.set_up:
            return []
        if not self.domain or not self.selector:
            missing = "domain" if not self.domain else "selector"
            return [(("seal", missing), f"seal.{missing} is empty: name both seal.domain and seal.selector (a key "
                                        "in signing.keys), or neither to leave sealing off")]
        keys = signing.keys.get(self.domain, ())
        key = next((key for key in keys if key.selector == self.selector), None)
        if key is None:
            listed = ", ".join(k.selector for k in keys) or "none"
            return [(("seal", "selector"), f"signing.keys has no key for {self.domain} with selector "
                                           f"{self.selector!r} (selectors listed there: {listed}): add it "
                     f'to signing.keys, e.g. "{self.domain}" = [{{ selector = "{self.selector}", key_file = "..." }}]')]
        if key.algorithm != "rsa-sha256":
            # dkimpy's arc_sign seals with rsa-sha256 only, and RSA is what ARC verifiers in the
            # field check: an Ed25519 seal would be a chain nobody can verify.
            return [(("seal", "selector"), f"the key {self.domain}/{self.selector} is {key.algorithm}: ARC seals "
                                           "are rsa-sha256 (what ARC verifiers check); name an RSA key")]
        return []


class TrafficClass(Strict):
    """What runs for one class of traffic on one listener."""

    checks: tuple[CheckName, ...] = ()
    # check -> action when it fails to answer; unlisted checks use the listener's `on_error`.
    on_error: dict[CheckName, ErrorAction] = Field(default_factory=dict)

    @field_validator("checks")
    @classmethod
    def _unique(cls, value: tuple[CheckName, ...]) -> tuple[CheckName, ...]:
        seen = [c for i, c in enumerate(value) if c in value[:i]]
        if seen:
            raise ValueError(f"{seen[0]!s} is listed twice")
        return value


class Listener(Strict):
    """One door of the MTA, matched by the `{daemon_name}` macro and/or the port."""

    daemon_name: Annotated[str, Field(min_length=1)] | None = None  # None: the table's own name
    ports: tuple[Annotated[int, Field(gt=0, lt=65536)], ...] = ()
    auth: Literal["optional", "required"] = "optional"
    auth_requires_tls: bool = True
    auth_mechanisms: tuple[str, ...] = ("PLAIN", "LOGIN")  # empty: any the MTA offers
    login_forbidden_chars: str = ""
    on_error: ErrorAction = ErrorAction.TEMPFAIL
    authenticated: TrafficClass = TrafficClass()
    unauthenticated: TrafficClass = TrafficClass()

    @field_validator("auth_mechanisms")
    @classmethod
    def _mechanisms(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        bad = [mechanism for mechanism in value if not _SASL_MECHANISM.match(mechanism)]
        if bad:
            raise ValueError(f"{', '.join(map(repr, bad))}: not a SASL mechanism name (RFC 4422: A-Z 0-9 - _)")
        return tuple(mechanism.upper() for mechanism in value)

    def traffic(self, authenticated: bool) -> TrafficClass:
        return self.authenticated if authenticated else self.unauthenticated

    def error_action(self, check: str, authenticated: bool) -> ErrorAction:
        """The on_error matrix: this check's action for this traffic class, else the listener's."""
        try:
            name = CheckName(check)
        except ValueError:
            return self.on_error
        return self.traffic(authenticated).on_error.get(name, self.on_error)


# An unknown listener gets every restriction that does not refuse mail wholesale: inbound
# checks and scanning for everyone (no 587 exemption), AUTH only over TLS with PLAIN/LOGIN and
# plain login names, errors tempfail.
STRICTEST = Listener(
    daemon_name=None,
    auth="optional",
    auth_requires_tls=True,
    auth_mechanisms=("PLAIN", "LOGIN"),
    login_forbidden_chars=".@",
    on_error=ErrorAction.TEMPFAIL,
    authenticated=TrafficClass(checks=(CheckName.SENDER, CheckName.RATELIMIT, CheckName.ATTACHMENTS,
                                       CheckName.ANTIVIRUS, CheckName.SPAM, CheckName.SIGNING)),
    unauthenticated=TrafficClass(checks=(CheckName.SPF, CheckName.ATTACHMENTS, CheckName.ANTIVIRUS,
                                         CheckName.SPAM, CheckName.DKIM, CheckName.ARC, CheckName.DMARC)),
)


class Publish(Strict):
    """What `policy-milter dns-records` prints for each of site.domains."""

    # Hosts and networks that send the site's mail: "192.0.2.10", "198.51.100.0/24",
    # "2001:db8::/48", or a host name (published as a:NAME).
    spf_senders: tuple[str, ...] = ()
    spf_all: Literal["-all", "~all"] = "-all"
    dmarc_policy: Literal["none", "quarantine", "reject"] = "none"
    dmarc_subdomain_policy: Literal["none", "quarantine", "reject"] | None = None
    # Where aggregate reports go, e.g. "mailto:dmarc-reports@example.org".
    dmarc_rua: tuple[str, ...] = ()

    @field_validator("spf_senders")
    @classmethod
    def _senders(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        bad = []
        for sender in value:
            try:
                ipaddress.ip_network(sender, strict=False)
            except ValueError:
                if not _HOSTNAME.match(sender):
                    bad.append(sender)
        if bad:
            raise ValueError(f"{', '.join(map(repr, bad))}: not an IP address, network or host name")
        return value

    @field_validator("dmarc_rua")
    @classmethod
    def _rua(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        bad = [uri for uri in value if not re.fullmatch(r"mailto:[^@\s,;!]+@[^@\s,;!]+", uri)]
        if bad:
            raise ValueError(f"{', '.join(map(repr, bad))}: expected \"mailto:ADDRESS\" (RFC 7489 §6.2)")
        return value


class Policy(Strict):
    site: Site = Site()
    publish: Publish = Publish()
    dns: Dns = Dns()
    postfix: Postfix = Postfix()
    metrics: Metrics = Metrics()
    listeners: dict[Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+$")], Listener] = Field(
        default_factory=dict
    )
    attachments: Attachments = Attachments()
    antivirus: Antivirus = Antivirus()
    spam: Spam = Spam()
    spf: Spf = Spf()
    dkim: Dkim = Dkim()
    dmarc: Dmarc = Dmarc()
    arc: Arc = Arc()
    sender: Sender = Sender()
    ratelimit: Ratelimit = Ratelimit()
    signing: Signing = Signing()
    seal: Seal = Seal()
    dmarc_reports: DmarcReports = DmarcReports()
    state: State = State()

    def check_table(self, check: str) -> CheckTable | None:
        """The policy table of a listable check (None for `origin`, which has none)."""
        if check not in CHECK_NAMES:
            return None
        table = getattr(self, check)
        assert isinstance(table, CheckTable)
        return table


CHECK_NAMES = frozenset(name.value for name in CheckName)
