"""`check-postfix`: Postfix's live configuration, as `postconf` prints it, against the policy.

Per smtpd service of master.cf: is the milter attached, which listener its sessions map to
(listeners.resolve, fed what Postfix will send), do the macro lists, milter_default_action,
milter_protocol and the milter timeouts suit what the milter needs (adapter.py's macro lists,
facts.MACRO_SOURCES, timing.stage_times). One finding per line, each naming the service, the
parameter and the value to set. `warn_at_start` logs the same findings once when the daemon starts.

Postfix is read only through `postconf` (main.cf with -x expansion, master.cf with -F and its
-o overrides with -P), run without a shell. Its output is decoded as UTF-8 with errors replaced
(master.cf may hold any byte), and numbers are read as ASCII digits only.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum
from pathlib import Path

from policymilter.adapter import CONNECT_MACROS, HELO_MACROS, MAIL_MACROS, QUEUE_ID_MACROS
from policymilter.facts import MACRO_SOURCES, Callback, Session
from policymilter.listeners import ListenerMatch, MatchedBy, resolve
from policymilter.logs import event
from policymilter.policy import PolicyError, load_policy
from policymilter.policy.model import STRICTEST, Policy
from policymilter.policy.timing import MARGIN, stage_times
from policymilter.safetext import for_log

# Any milter whose unix socket path ends so is taken for ours when no --socket says which.
DEFAULT_SOCKET_SUFFIX = "/policy-milter/milter.sock"
SUGGESTED_SOCKET = "unix:/run/policy-milter/milter.sock"  # `run`'s default, for a fix to print
POSTCONF_TIMEOUT = 30.0  # per postconf run, for the CLI
# All of warn_at_start's postconf runs together: a hanging postconf (main.cf a FIFO, a stuck NFS
# mount) must not hold up the daemon's start.
START_DEADLINE = 5.0

# What the milter asks for at negotiation, whatever the stage it asks at; MACRO_SOURCES says at
# which stage each must arrive and which parameter lists it.
WANTED_MACROS = tuple(dict.fromkeys((*CONNECT_MACROS, *HELO_MACROS, *MAIL_MACROS, *QUEUE_ID_MACROS)))
STAGE_PARAMETERS = tuple(dict.fromkeys(parameter for _, parameter in MACRO_SOURCES.values()))
STAGE_WORDS = {Callback.CONNECT: "at connect", Callback.HELLO: "at HELO/EHLO", Callback.ENVFROM: "from MAIL FROM on",
               Callback.EOM: "at end of message"}

TIMEOUTS = ("milter_connect_timeout", "milter_command_timeout", "milter_content_timeout")
# Per-milter settings inside smtpd_milters' { endpoint, name=value, ... } (Postfix >= 3.0).
ENTRY_SETTINGS = {"connect_timeout": "milter_connect_timeout", "command_timeout": "milter_command_timeout",
                  "content_timeout": "milter_content_timeout", "default_action": "milter_default_action",
                  "protocol": "milter_protocol"}
MAIN_PARAMETERS = ("smtpd_milters", "milter_default_action", "milter_protocol", *TIMEOUTS,
                   "milter_macro_daemon_name", "myhostname", "queue_directory", "smtpd_sasl_auth_enable",
                   "receive_override_options", "smtpd_milter_maps", *STAGE_PARAMETERS)
# receive_override_options' word that turns every milter of the service off (Postfix: "no_milters:
# disable mail inspection by Milter applications"); smtpd_milter_maps (Postfix >= 3.2) chooses the
# milters per client, DISABLE for none.
NO_MILTERS = "no_milters"

DEFAULT_ACTION_RISK = {
    "accept": "mail passes unchecked (unscanned, unsigned, senders not verified) whenever the milter is down, "
              "crashed or too slow",
    "reject": "mail is refused for good (5xx) whenever the milter is down: senders get bounces for legitimate mail",
    "quarantine": "every message goes to the hold queue whenever the milter is down",
}


class Severity(IntEnum):
    """Also the exit status: 0 all good, 1 warnings, 2 errors."""

    OK = 0
    WARNING = 1
    ERROR = 2


# Postfix takes the milter's own macro lists at negotiation (milter8.c, "override lists of macro
# names", whatever milter_protocol says), and this milter always sends them: milter_*_macros
# only matter if that negotiation fails (the milter then logs negotiation_failed and
# macro_missing). A gap there is a weakness, not a failure (test_check_postfix.py shows it).
MACRO_LIST_SEVERITY = Severity.WARNING


class Where(StrEnum):
    """Where a setting's live value comes from, so where the fix goes."""

    MAIN = "main.cf"
    MASTER = "master.cf"
    ENTRY = "smtpd_milters entry"
    POLICY = "policy"


class PostconfError(RuntimeError):
    """postconf is missing or refused to print the configuration."""


# ---------------------------------------------------------------- reading postconf


@dataclass(frozen=True)
class MasterService:
    """One master.cf entry (postconf -F) with its -o overrides (postconf -P -x)."""

    name: str
    type: str
    chroot: bool
    command: str  # the program as master.cf names it: smtpd, postscreen, ./smtpd, /usr/lib/postfix/sbin/smtpd
    overrides: Mapping[str, str] = field(default_factory=dict)

    @property
    def program(self) -> str:
        """What master(8) runs: daemon_directory/COMMAND, so `./smtpd` and a full path are smtpd too."""
        return os.path.basename(os.path.normpath(self.command)) if self.command else ""

    @property
    def label(self) -> str:
        return f"{self.name}/{self.type}" if self.type != "inet" else self.name


@dataclass(frozen=True)
class MilterEntry:
    """One element of smtpd_milters: the endpoint and its per-milter settings."""

    endpoint: str
    settings: Mapping[str, str] = field(default_factory=dict)

    def text(self) -> str:
        if not self.settings:
            return self.endpoint
        return "{ " + ", ".join([self.endpoint, *(f"{k}={v}" for k, v in self.settings.items())]) + " }"


@dataclass(frozen=True)
class PostfixConfig:
    directory: str | None  # None: postconf's own default ($MAIL_CONFIG or /etc/postfix)
    main: Mapping[str, str]
    services: tuple[MasterService, ...]

    @classmethod
    def from_postconf(cls, directory: str | None, main: str, fields: str, overrides: str) -> PostfixConfig:
        """From the output of `postconf -x NAME...`, `postconf -F` and `postconf -P -x`."""
        per_service: dict[tuple[str, str], dict[str, str]] = {}
        for (service, kind, name), value in parse_service_lines(overrides):
            per_service.setdefault((service, kind), {})[name] = value
        columns: dict[tuple[str, str], dict[str, str]] = {}
        for (service, kind, name), value in parse_service_lines(fields):
            columns.setdefault((service, kind), {})[name] = value
        services = tuple(
            MasterService(name=service, type=kind, chroot=column.get("chroot", "-") == "y",
                          command=column.get("command", "").split(" ", 1)[0],
                          overrides=per_service.get((service, kind), {}))
            for (service, kind), column in columns.items()
        )
        return cls(directory, parse_main(main), services)

    def value(self, service: MasterService, name: str) -> tuple[str, Where]:
        if name in service.overrides:
            return service.overrides[name], Where.MASTER
        return self.main.get(name, ""), Where.MAIN

    @property
    def where(self) -> str:
        return self.directory or os.environ.get("MAIL_CONFIG") or "/etc/postfix"


def parse_main(text: str) -> dict[str, str]:
    """`name = value` lines of postconf (an empty value prints as `name =`)."""
    values = {}
    for line in text.splitlines():
        name, sep, value = line.partition("=")
        if sep and name.strip():
            values[name.strip()] = value.strip()
    return values


def parse_service_lines(text: str) -> list[tuple[tuple[str, str, str], str]]:
    """`service/type/name = value` lines of postconf -F or -P."""
    parsed = []
    for line in text.splitlines():
        key, sep, value = line.partition(" =")
        parts = key.rsplit("/", 2)
        if sep and len(parts) == 3:
            parsed.append(((parts[0], parts[1], parts[2]), value.strip()))
    return parsed


def parse_milters(value: str) -> list[MilterEntry]:
    """smtpd_milters: endpoints separated by commas or spaces, `{ endpoint, name=value, ... }` groups."""
    entries = []
    for group, plain in re.findall(r"\{([^}]*)\}|([^\s,{}]+)", value):
        if plain:
            entries.append(MilterEntry(plain))
            continue
        items = [item.strip() for item in group.split(",") if item.strip()]
        if not items:
            continue
        settings = {}
        for item in items[1:]:
            name, _, setting = item.partition("=")
            settings[name.strip()] = setting.strip()
        entries.append(MilterEntry(items[0], settings))
    return entries


def postconf_binary() -> str:
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    found = shutil.which("postconf", path=search)
    if found is None:
        raise PostconfError("postconf not found (is Postfix installed? apt-get install postfix)")
    return found


def postconf(directory: str | None, *args: str, timeout: float = POSTCONF_TIMEOUT) -> str:
    """One postconf run: an argument list, never a shell; killed after `timeout` seconds."""
    command = [postconf_binary(), *(("-c", directory) if directory else ()), *args]
    if timeout <= 0:
        raise PostconfError(f"{' '.join(command)}: not run, no time left")
    try:
        done = subprocess.run(command, capture_output=True, encoding="utf-8", errors="replace", timeout=timeout,
                              check=False)
    except subprocess.TimeoutExpired:
        raise PostconfError(f"{' '.join(command)}: timed out after {timeout:.3g} s (killed)") from None
    except OSError as error:
        raise PostconfError(f"{' '.join(command)}: {error}") from None
    if done.returncode != 0:
        detail = done.stderr.strip().splitlines()
        raise PostconfError(f"{' '.join(command)}: {detail[-1] if detail else f'exit status {done.returncode}'}")
    return done.stdout


def read_config(directory: str | None, deadline: float | None = None) -> PostfixConfig:
    """The three postconf runs; with `deadline` (time.monotonic()), all of them must end by then."""
    def run(*args: str) -> str:
        left = POSTCONF_TIMEOUT if deadline is None else min(POSTCONF_TIMEOUT, deadline - time.monotonic())
        return postconf(directory, *args, timeout=left)

    return PostfixConfig.from_postconf(directory, run("-x", *MAIN_PARAMETERS), run("-F"), run("-P", "-x"))


def _is_number(text: str) -> bool:
    """ASCII digits only: "²".isdigit() is true, but int("²") raises."""
    return text.isascii() and text.isdigit()


# ---------------------------------------------------------------- values


def seconds(value: str) -> float | None:
    """A Postfix time value (`30s`, `5m`, `300`: seconds by default for the milter timeouts)."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([smhdw]?)", value.strip(), re.ASCII)
    if match is None:
        return None
    unit = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[match[2]]
    return float(match[1]) * unit


def service_port(service: MasterService, config: PostfixConfig) -> int | None:
    """The port an inet service listens on (`smtp`, `2525`, `127.0.0.1:2525`, `[::1]:smtp`); for a
    pass service behind postscreen, the port of the one postscreen service."""
    if service.type != "inet":
        screens = [s for s in config.services if s.type == "inet" and s.program == "postscreen"]
        return service_port(screens[0], config) if len(screens) == 1 else None
    port = service.name.rpartition(":")[2]
    if _is_number(port):
        return int(port)
    try:
        return socket.getservbyname(port, "tcp")
    except (OSError, ValueError):  # ValueError: a NUL in the name
        return None


@dataclass(frozen=True)
class OurSocket:
    """Which milter is ours: `run --socket` (libmilter syntax), or any path ending in the default."""

    spec: str | None

    def matches(self, endpoint: str, chroot: bool, queue_directory: str) -> bool:
        kind, _, where = endpoint.partition(":")
        if kind in ("unix", "local"):
            path = os.path.normpath(queue_directory + "/" + where if chroot else where)
            if self.spec is None:
                return path.endswith(DEFAULT_SOCKET_SUFFIX)
            ours_kind, _, ours = self.spec.partition(":")
            return ours_kind in ("unix", "local") and os.path.normpath(ours) == path
        if kind in ("inet", "inet6") and self.spec is not None and self.spec.startswith(("inet:", "inet6:")):
            host, _, port = where.rpartition(":")
            our_port, _, our_host = self.spec.partition(":")[2].partition("@")
            loopback = {"localhost", "127.0.0.1", "::1"}
            hosts_agree = (not our_host or our_host.strip("[]") in ("0.0.0.0", "::", "*")
                           or our_host.strip("[]").lower() == host.strip("[]").lower()
                           or {our_host.strip("[]").lower(), host.strip("[]").lower()} <= loopback)
            return port == our_port and hosts_agree
        return False

    def describe(self) -> str:
        return self.spec or f"a unix socket whose path ends in {DEFAULT_SOCKET_SUFFIX.lstrip('/')}"

    def postfix_endpoint(self, chroot: bool, queue_directory: str) -> str:
        """Our socket as smtpd_milters writes it (a chrooted smtpd sees paths below the queue)."""
        spec = self.spec or SUGGESTED_SOCKET
        kind, _, where = spec.partition(":")
        if kind in ("inet", "inet6"):
            port, _, host = where.partition("@")
            return f"inet:{host or '127.0.0.1'}:{port}"
        if chroot and where.startswith(queue_directory.rstrip("/") + "/"):
            where = where[len(queue_directory.rstrip("/")):]
        return f"unix:{where}"


# ---------------------------------------------------------------- findings


@dataclass(frozen=True)
class Finding:
    severity: Severity
    service: str
    parameter: str
    problem: str  # what is wrong, starting with the parameter's name
    fix: str  # "set NAME = VALUE in FILE"

    def key(self) -> tuple[Severity, str, str, str]:
        return self.severity, self.parameter, self.problem, self.fix


@dataclass(frozen=True)
class LiveTimeout:
    """One service's milter_command/content_timeout: its value, whether it covers the worst case,
    and how to make it the policy's [postfix] value."""

    seconds: float
    fits: bool
    fix_to_policy: str


@dataclass
class ServiceReport:
    service: MasterService
    attached: MilterEntry | None  # ours, in smtpd_milters and not turned off
    listener: ListenerMatch
    daemon_name: str
    port: int | None
    named: MilterEntry | None = None  # ours, in smtpd_milters (attached unless `disabled` says otherwise)
    disabled: str = ""  # what turns the milters off here: "receive_override_options = no_milters"
    notes: list[str] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    live: dict[str, LiveTimeout] = field(default_factory=dict)

    def line(self) -> str:
        how = {MatchedBy.DAEMON_NAME: f"by {{daemon_name}} = {self.daemon_name}",
               MatchedBy.PORT: f"by port {self.port}",
               MatchedBy.NOTHING: "no listener matches: the strictest profile"}[self.listener.matched_by]
        head = f"{self.service.label} (master.cf, {self.service.type}, {self.service.command})"
        attached = (f"milter attached ({self.attached.endpoint})" if self.attached
                    else f"milter not attached ({self.disabled})" if self.disabled else "milter not attached")
        return "; ".join([f"{head}: {attached}", f"listener {self.listener.name} ({how})", *self.notes])


@dataclass
class Report:
    config: PostfixConfig
    socket: OurSocket
    services: list[ServiceReport]
    findings: list[Finding]
    listeners: tuple[str, ...] = ()  # the policy's

    @property
    def severity(self) -> Severity:
        return max((finding.severity for finding in self.findings), default=Severity.OK)

    @property
    def attached(self) -> list[ServiceReport]:
        return [report for report in self.services if report.attached]

    def grouped(self) -> list[tuple[Finding, str]]:
        """(finding, the services it concerns): the same finding on several services once."""
        groups: dict[tuple[Severity, str, str, str], list[Finding]] = {}
        for finding in self.findings:
            groups.setdefault(finding.key(), []).append(finding)
        return [(same[0], ", ".join(dict.fromkeys(finding.service for finding in same)))
                for same in sorted(groups.values(), key=lambda group: -group[0].severity)]

    def finding_lines(self) -> list[tuple[Finding, str]]:
        """One line per finding, naming every service it concerns."""
        return [(finding, f"{finding.severity.name.lower()}: {services}: {finding.problem}: {finding.fix}")
                for finding, services in self.grouped()]

    def summary(self) -> str:
        errors = sum(1 for finding, _ in self.finding_lines() if finding.severity is Severity.ERROR)
        warnings = sum(1 for finding, _ in self.finding_lines() if finding.severity is Severity.WARNING)
        verdict = {Severity.OK: "OK", Severity.WARNING: "warnings", Severity.ERROR: "errors"}[self.severity]
        return (f"check-postfix: {self.config.where}: {len(self.services)} smtpd service(s), "
                f"{len(self.attached)} with the milter; {errors} error(s), {warnings} warning(s): {verdict}")

    def unused_listeners(self) -> list[str]:
        """The policy's listeners no smtpd service maps to (a door the site may not run)."""
        used = {report.listener.name for report in self.services}
        return [name for name in self.listeners if name not in used]

    def lines(self) -> list[str]:
        unused = self.unused_listeners()
        note = ([f"listeners of the policy no smtpd service maps to: {', '.join(unused)}"]
                if unused and self.attached else [])
        return [*(report.line() for report in self.services), *note, *(text for _, text in self.finding_lines()),
                self.summary()]


def _fix(where: Where, service: MasterService, name: str, value: str, entry: MilterEntry | None = None) -> str:
    match where:
        case Where.MASTER:
            setting = f"-o {name}={value}" if " " not in value else f"-o {{ {name} = {value} }}"
            return f"set {setting} on {service.name} in master.cf"
        case Where.ENTRY:
            short = next(key for key, long in ENTRY_SETTINGS.items() if long == name)
            return f"set {short}={value} in smtpd_milters' {{ {entry.endpoint if entry else ''}, ... }} entry"
        case Where.POLICY:
            return f"set {name} = {value} in the policy"
        case _:
            return f"set {name} = {value} in main.cf" if value else f"set {name} = (empty) in main.cf"


def _label(service: MasterService) -> str:
    return f"{service.label} (master.cf)"


def _with_macros(current: Sequence[str], missing: Sequence[str]) -> str:
    """The list with the missing macros added before a trailing `v _` (as Postfix's default ends)."""
    at = len(current)
    while at > 0 and current[at - 1] in ("v", "_"):
        at -= 1
    return " ".join([*current[:at], *missing, *current[at:]])


def _our_entry(config: PostfixConfig, ours: OurSocket, service: MasterService) -> MilterEntry | None:
    queue_directory = config.main.get("queue_directory", "/var/spool/postfix")
    return next((entry for entry in parse_milters(config.value(service, "smtpd_milters")[0])
                 if ours.matches(entry.endpoint, service.chroot, queue_directory)), None)


class ServiceCheck:
    """The findings for one smtpd service."""

    def __init__(self, config: PostfixConfig, policy: Policy, ours: OurSocket, service: MasterService) -> None:
        self.config, self.policy, self.ours, self.service = config, policy, ours, service
        self.queue_directory = config.main.get("queue_directory", "/var/spool/postfix")
        self.live: dict[str, LiveTimeout] = {}

    def value(self, name: str, entry: MilterEntry | None = None) -> tuple[str, Where]:
        short = next((key for key, long in ENTRY_SETTINGS.items() if long == name), None)
        if entry is not None and short is not None and short in entry.settings:
            return entry.settings[short], Where.ENTRY
        return self.config.value(self.service, name)

    def finding(self, severity: Severity, parameter: str, problem: str, fix: str) -> Finding:
        return Finding(severity, _label(self.service), parameter, problem, fix)

    def run(self) -> ServiceReport:
        milters_value, milters_where = self.value("smtpd_milters")
        entries = parse_milters(milters_value)
        named = _our_entry(self.config, self.ours, self.service)
        overrides, overrides_where = self.value("receive_override_options")
        words = overrides.lower().replace(",", " ").split()
        disabled = f"receive_override_options = {overrides}" if NO_MILTERS in words else ""
        attached = None if disabled else named
        daemon_name, _ = self.value("milter_macro_daemon_name")
        myhostname = self.config.main.get("myhostname", "")
        port = service_port(self.service, self.config)
        # What the milter will be sent: it asks for {daemon_name} and {daemon_port} itself.
        listener = resolve(self.policy, Session(conn_id="check-postfix", daemon_name=daemon_name or None,
                                                daemon_port=port, mta_name=myhostname or None))
        report = ServiceReport(self.service, attached, listener, daemon_name, port, named, disabled)
        if attached is None:
            if listener.known and disabled:
                rest = ",".join(word for word in words if word != NO_MILTERS)
                fix = _fix(overrides_where, self.service, "receive_override_options", rest)
                if overrides_where is Where.MAIN:
                    fix += f", or override it with -o receive_override_options={rest} on each door in master.cf"
                report.findings.append(self.finding(
                    Severity.ERROR, "receive_override_options",
                    f"receive_override_options = {overrides} turns every milter off on this service (no_milters), "
                    f"but this is the policy's listener {listener.name}: milter not attached, its mail is not "
                    "checked", fix))
            if listener.known and named is None:
                # As another service of the same chroot setting names it, else from the socket.
                known = (_our_entry(self.config, self.ours, other) for other in self.config.services
                         if other.program == "smtpd" and other.chroot == self.service.chroot)
                found = next((entry for entry in known if entry is not None), None)
                ours = found.endpoint if found else self.ours.postfix_endpoint(self.service.chroot,
                                                                               self.queue_directory)
                value = ", ".join([*(entry.text() for entry in entries), ours])
                report.findings.append(self.finding(
                    Severity.ERROR, "smtpd_milters",
                    f"smtpd_milters = {milters_value or '(empty)'} does not include the policy-milter "
                    f"({self.ours.describe()}), but this is the policy's listener {listener.name}: its mail is "
                    "not checked", _fix(milters_where, self.service, "smtpd_milters", value)))
            if not listener.known:
                report.notes.append("not a door of the policy: not checked further")
            return report
        maps, maps_where = self.value("smtpd_milter_maps")
        if maps:
            report.findings.append(self.finding(
                Severity.WARNING, "smtpd_milter_maps",
                f"smtpd_milter_maps = {maps}: for a client that matches, Postfix uses the milters the map returns "
                "instead of smtpd_milters (DISABLE: none at all); this check cannot know which clients match, so "
                "for them the policy-milter may not be attached",
                f"make sure every entry of {maps} that a client can match includes "
                f"{attached.endpoint}, or " + _fix(maps_where, self.service, "smtpd_milter_maps", "")))
        report.findings.extend(self.listener_findings(listener, daemon_name, port, myhostname))
        report.findings.extend(self.macro_findings())
        report.findings.extend(self.action_findings(attached))
        notes, findings = self.timeout_findings(attached, listener)
        report.notes.extend(notes)
        report.findings.extend(findings)
        report.live = dict(self.live)
        return report

    def listener_findings(self, listener: ListenerMatch, daemon_name: str, port: int | None,
                          myhostname: str) -> list[Finding]:
        names = ", ".join(self.policy.listeners) or "none"
        if listener.matched_by is MatchedBy.NOTHING:
            return [self.finding(
                Severity.ERROR, "milter_macro_daemon_name",
                f"{{daemon_name}} = {daemon_name or '(empty)'} and port {port if port else 'unknown'} match no "
                f"listener of the policy (listeners: {names}): its sessions get the strictest profile",
                _fix(Where.MASTER, self.service, "milter_macro_daemon_name", "NAME")
                + f" (one of: {names}), or add [listeners.NAME] to the policy")]
        if listener.matched_by is MatchedBy.PORT:
            wanted = listener.settings.daemon_name or listener.name
            why = (f"{{daemon_name}} is Postfix's default, $myhostname = {myhostname}"
                   if daemon_name == myhostname else f"{{daemon_name}} = {daemon_name} is no listener's name")
            return [self.finding(
                Severity.WARNING, "milter_macro_daemon_name",
                f"{why}, so listener {listener.name} is matched by port {port} only",
                _fix(Where.MASTER, self.service, "milter_macro_daemon_name", wanted))]
        return []

    def macro_findings(self) -> list[Finding]:
        lists = {parameter: self.value(parameter) for parameter in STAGE_PARAMETERS}
        missing: dict[str, list[str]] = {}
        for macro in WANTED_MACROS:
            if macro not in MACRO_SOURCES or not self.policy_needs(macro):
                continue
            _, parameter = MACRO_SOURCES[macro]
            if macro not in lists[parameter][0].replace(",", " ").split():
                missing.setdefault(parameter, []).append(macro)
        findings = []
        for parameter, macros in missing.items():
            current, where = lists[parameter]
            elsewhere = [f"{macro} is in {other}, but Postfix defines it only {STAGE_WORDS[MACRO_SOURCES[macro][0]]}"
                         for macro in macros for other, (value, _) in lists.items()
                         if other != parameter and macro in value.split()]
            note = f" ({'; '.join(elsewhere)})" if elsewhere else ""
            findings.append(self.finding(
                MACRO_LIST_SEVERITY, parameter,
                f"{parameter} lacks {' '.join(macros)}{note}; the milter asks Postfix for its macros itself at "
                "negotiation, and this list is what Postfix sends if that fails (the milter then logs macro_missing)",
                _fix(where, self.service, parameter, _with_macros(current.replace(",", " ").split(), macros))))
        return findings

    def policy_needs(self, macro: str) -> bool:
        match macro:
            case "{daemon_port}":  # matching by port: only if some listener lists ports
                return any(listener.ports for listener in self.policy.listeners.values())
            case "{auth_type}" | "{auth_authen}":  # defined only where SASL is on
                return self.value("smtpd_sasl_auth_enable")[0].lower() == "yes"
            case _:
                return True

    def action_findings(self, entry: MilterEntry) -> list[Finding]:
        findings = []
        action, where = self.value("milter_default_action", entry)
        if action.lower() != "tempfail":
            risk = DEFAULT_ACTION_RISK.get(action.lower(), "Postfix does something other than ask the sender to "
                                                           "retry whenever the milter is down")
            findings.append(self.finding(Severity.WARNING, "milter_default_action",
                                         f"milter_default_action = {action}: {risk}",
                                         _fix(where, self.service, "milter_default_action", "tempfail", entry)))
        protocol, where = self.value("milter_protocol", entry)
        versions = [int(token) for token in re.split(r"[\s,]+", protocol) if _is_number(token)]
        if versions and versions[0] < 6:
            findings.append(self.finding(
                Severity.WARNING, "milter_protocol",
                f"milter_protocol = {protocol}: below 6 Postfix offers neither no-reply callbacks (every header "
                "and body chunk then costs a round trip) nor header values with their leading space "
                "(SMFIP_HDR_LEADSPC: without it, DKIM signatures with simple header canonicalization can fail)",
                _fix(where, self.service, "milter_protocol", "6", entry)))
        return findings

    def timeout_findings(self, entry: MilterEntry, listener: ListenerMatch) -> tuple[list[str], list[Finding]]:
        settings = listener.settings if listener.known else STRICTEST
        mail = max((stage_times(self.policy, settings, auth)[0] for auth in (False, True)), key=lambda t: t.total)
        eom = max((stage_times(self.policy, settings, auth)[1] for auth in (False, True)), key=lambda t: t.total)
        notes, findings = [], []
        for name, stage, words in (("milter_connect_timeout", None, "at connect"),
                                   ("milter_command_timeout", mail, "at MAIL FROM"),
                                   ("milter_content_timeout", eom, "at end of message")):
            raw, where = self.value(name, entry)
            live = seconds(raw)
            if live is None:
                findings.append(self.finding(Severity.ERROR, name, f"{name} = {raw} is not a time value",
                                             _fix(where, self.service, name, "30s", entry)))
                continue
            needed = (stage.total if stage else 0.0) + MARGIN
            waits = f"{stage.explain()} + {MARGIN:g} s" if stage else f"{MARGIN:g} s"
            if stage is not None:
                notes.append(f"worst case {words} {needed:g} s of {live:g} s")
            if live < needed:
                # The policy's own value when it covers the worst case: both then say the same.
                value = f"{stage.limit:g}s" if stage is not None and stage.limit >= needed else f"{math.ceil(needed)}s"
                findings.append(self.finding(
                    Severity.ERROR, name,
                    f"{name} = {raw} is shorter than the milter's worst case {words} for listener {listener.name}: "
                    f"{waits} for its own work, so Postfix would give up first and apply milter_default_action",
                    _fix(where, self.service, name, value, entry)))
            if stage is not None:
                self.live[name] = LiveTimeout(live, live >= needed,
                                              _fix(where, self.service, name, f"{stage.limit:g}s", entry))
        return notes, findings


def check(config: PostfixConfig, policy: Policy, socket_spec: str | None = None) -> Report:
    ours = OurSocket(socket_spec)
    smtpd = [service for service in config.services if service.program == "smtpd"]
    reports = [ServiceCheck(config, policy, ours, service).run() for service in smtpd]
    findings = [finding for report in reports for finding in report.findings]
    if not smtpd:
        findings.append(Finding(Severity.ERROR, "master.cf", "master.cf", "no service runs smtpd",
                                "add the smtpd services of contrib/postfix/master.cf"))
    elif not any(report.named for report in reports):
        # Most likely the socket is named otherwise: one line that says what was found, not one per door.
        found = sorted({entry.endpoint for service in smtpd
                        for entry in parse_milters(config.value(service, "smtpd_milters")[0])})
        doors = [report.service.label for report in reports if report.listener.known]
        chroot = any(service.chroot for service in smtpd)
        endpoint = ours.postfix_endpoint(chroot, config.main.get("queue_directory", "/var/spool/postfix"))
        findings = [finding for finding in findings if finding.parameter != "smtpd_milters"]
        findings.append(Finding(
            Severity.ERROR if doors else Severity.WARNING, "main.cf", "smtpd_milters",
            f"no smtpd service has the policy-milter ({ours.describe()}) in smtpd_milters (milters found: "
            f"{', '.join(found) or 'none'}; doors of the policy not checked: {', '.join(doors) or 'none'})",
            f"set smtpd_milters = {endpoint} in main.cf, or give --socket as the milter runs"))
    findings.extend(policy_value_findings(policy, reports))
    return Report(config, ours, reports, findings, tuple(policy.listeners))


def policy_value_findings(policy: Policy, reports: Sequence[ServiceReport]) -> list[Finding]:
    """The policy's [postfix] values against the live ones (once every service's own value covers
    its worst case: the errors say to raise those first). The policy states one value: when all
    services agree on another, the policy is what to change; when they differ, the odd services."""
    findings = []
    for key in ("milter_command_timeout", "milter_content_timeout"):
        stated = float(getattr(policy.postfix, key))
        live = [(report, report.live[key]) for report in reports if key in report.live]
        if not live or not all(timeout.fits for _, timeout in live):
            continue
        values = sorted({timeout.seconds for _, timeout in live})
        if len(values) == 1 and not math.isclose(values[0], stated):
            findings.append(Finding(
                Severity.WARNING, ", ".join(_label(report.service) for report, _ in live), f"postfix.{key}",
                f"the policy's postfix.{key} = {stated:g} is not Postfix's {key} ({values[0]:g} s): check-policy "
                "validates the policy's time budgets against the policy's value",
                f"set postfix.{key} = {values[0]:g} in the policy"))
        elif len(values) > 1:
            findings.extend(
                Finding(Severity.WARNING, _label(report.service), key,
                        f"{key} = {timeout.seconds:g} s here, but the policy's postfix.{key} = {stated:g}, which "
                        "check-policy validates the time budgets against, and other services have "
                        f"{', '.join(f'{value:g} s' for value in values if value != timeout.seconds)}",
                        timeout.fix_to_policy)
                for report, timeout in live if not math.isclose(timeout.seconds, stated))
    return findings


# ---------------------------------------------------------------- entry points


def cmd_check_postfix(args: argparse.Namespace) -> int:
    """`policy-milter check-postfix`: print the report; exit 0 / 1 (warnings) / 2 (errors)."""
    try:
        policy = load_policy(args.policy, args.overrides).policy
    except PolicyError as error:
        for issue in error.issues:
            print(issue, file=sys.stderr)
        print(f"{args.policy}: {len(error.issues)} error(s); the policy was not accepted", file=sys.stderr)
        return int(Severity.ERROR)
    try:
        config = read_config(args.postfix_config)
    except PostconfError as error:
        print(f"check-postfix: cannot read Postfix's configuration: {error}", file=sys.stderr)
        return int(Severity.ERROR)
    report = check(config, policy, args.socket)
    for line in report.lines():
        print(line)
    return int(report.severity)


def warn_at_start(policy: Policy, log: logging.Logger, socket_spec: str | None = None,
                  config_dir: str | None = None) -> Report | None:
    """Log check-postfix's findings once (the daemon, at start). Quiet when postconf cannot run or
    no smtpd service names this socket: that Postfix is then not the one this milter serves.
    Never raises, and returns within about START_DEADLINE seconds (every postconf run together):
    anything that goes wrong is logged as postfix_check_skipped and the daemon starts anyway."""
    try:
        return _warn_at_start(policy, log, socket_spec, config_dir)
    except PostconfError as error:
        reason = for_log(str(error), 500)
        event(log, logging.INFO, "postfix_check_skipped", f"Postfix's configuration not checked: {reason}",
              reason=reason)
    except Exception as error:  # a check at start must never stop the start
        reason = for_log(f"{type(error).__name__}: {error}", 500)
        event(log, logging.WARNING, "postfix_check_skipped",
              f"Postfix's configuration not checked, the check failed: {reason}", reason=reason, exc_info=True)
    return None


def _warn_at_start(policy: Policy, log: logging.Logger, socket_spec: str | None,
                   config_dir: str | None) -> Report | None:
    where = Path(config_dir or os.environ.get("MAIL_CONFIG") or "/etc/postfix")
    if not (where / "main.cf").exists():
        # No Postfix configured here (postconf would take a second to say so: Postfix sleeps
        # before it exits on a fatal error).
        event(log, logging.INFO, "postfix_check_skipped", f"Postfix's configuration not checked: no {where}/main.cf",
              reason="no main.cf", config=str(where))
        return None
    config = read_config(config_dir, deadline=time.monotonic() + START_DEADLINE)
    report = check(config, policy, socket_spec)
    if not any(service.named for service in report.services):
        event(log, logging.INFO, "postfix_check_skipped",
              f"no smtpd service of the Postfix in {config.where} uses {report.socket.describe()}: not checked",
              config=config.where)
        return report
    for finding, services in report.grouped():
        level = logging.ERROR if finding.severity is Severity.ERROR else logging.WARNING
        event(log, level, "postfix_config", f"Postfix's {services}: {finding.problem}: {finding.fix}",
              service=services, parameter=finding.parameter)
    return report
