"""attachments: refuse executables anywhere in the message, by name and by content, at end of message.

Every file the walk finds (walk.py's files(): MIME parts at any depth, message/* and the content
of opaque-signed S/MIME included, in every decoding a client may make; zip, tar,
gzip/bzip2/xz/lzma members, TNEF and Outlook .msg attachments, nested; uuencoded blocks in
text parts) is blocked when

- its name's final extension is in `blocked_extensions`, the name decoded (RFC 2231, RFC 2047)
  and read as Windows would save it (see normalise_name). `invoice.pdf.exe`, `photo.EXE.` and
  `file.exe ` are caught by this rule; `report.exe.txt` opens as text and passes: only the
  extension the OS acts on matters, and a harmless extension before it changes nothing;
- a right-to-left override (U+202E) makes the extension shown differ from the real one
  (`invoice<U+202E>fdp.exe` shows as "invoiceexe.pdf", `report<U+202E>xcod.docm` as
  "reportmcod.docx"): nothing legitimate does that, so it is blocked whatever the real
  extension is (ATT&CK T1036.002);
- its content is a kind listed in `blocked_content` (default PE, ELF, Mach-O, and "macro": an
  Office document carrying a VBA project or macro sheets), whatever its name says.

Places the walk cannot look into (an encrypted member, a corrupt archive, a zip that readers
would read differently, rar/7z/ISO/dmg..., MIME headers given twice, an unknown transfer
encoding, or nesting, member count or unpacked size over the limits) are "uninspectable":
blocked or accepted per `attachments.uninspectable`.

Content sniffing: PE, ELF and Mach-O are decided by our own exact header checks below. The
libraries evaluated (filetype, puremagic) both call any file starting with "MZ" an executable
and neither knows Mach-O. `filetype` (PyPI, pure Python, no dependencies) serves the rest: any
other kind the policy lists is matched by filetype's matcher of that name, and the walker uses
it to recognise archive formats it does not open. Chosen over puremagic because its matchers
are small deterministic functions with one answer each (puremagic ranks guesses from a large
table of short signatures: it calls a plain zip ".docx" and a Mach-O fat header ".class"; and
its current 2.x line does not install on Python 3.11), and over python-magic, which would run
libmagic's C parser on hostile input inside the milter.
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import closing
from dataclasses import dataclass, field
from enum import StrEnum

from policymilter import safetext
from policymilter.checks.attachments.names import INVISIBLE_PLANES, extension, normalise_name  # noqa: F401  (re-exported)
from policymilter.checks.attachments.walk import File, Unreadable, WalkLimits, files
from policymilter.message import Message
from policymilter.outcome import CheckResult, Disposition, Findings, Outcome, SmtpReply
from policymilter.pipeline import CheckContext, Stage
from policymilter.policy.model import Attachments as AttachmentsTable
from policymilter.policy.model import CheckName, Policy
from policymilter.sniff import (  # noqa: F401  (re-exported)
    STRUCTURAL_KINDS,
    executable_kind,
    is_elf,
    is_macho,
    is_pe,
    known_content_kinds,
)

NAME = "attachments"
MAX_FINDINGS = 20  # uninspectable places recorded before the walk gives up
REPLY_NAME_LENGTH = 48
REPLY_LENGTH = 240  # the reply text after "550 5.7.1 ": one line under 250 characters


EXECUTABLE_KINDS = {
    "pe": "a Windows executable (PE)",
    "elf": "an ELF executable",
    "macho": "a macOS executable (Mach-O)",
    "macro": "an Office document with macros (VBA)",
}
# Kinds the walk establishes from a container's structure rather than from a file's first
# bytes (walk.py: File.kinds).


class Rule(StrEnum):
    EXTENSION = "extension"
    DISGUISED = "disguised"
    CONTENT = "content"
    UNINSPECTABLE = "uninspectable"


@dataclass(frozen=True)
class Finding:
    """A file that is blocked, or a place that could not be inspected."""

    filename: str  # as decoded from the message or archive ("" when it has none)
    rule: Rule
    detail: str  # "exe", ".exe shown as .pdf", "pe", "encrypted archive member"...
    path: str  # MIME part number, then archive members: "2/inner.zip/evil.exe"
    attachment: str = ""  # the MIME attachment holding it, when it is inside one
    error: str = ""  # what a library said about an unreadable archive (log only)

    @property
    def executable(self) -> bool:
        return self.rule is not Rule.UNINSPECTABLE

    def describe(self) -> str:
        match self.rule:
            case Rule.EXTENSION:
                return f"extension .{self.detail}"
            case Rule.DISGUISED:
                return f"right-to-left override, {self.detail}"
            case Rule.CONTENT:
                return f"content is {EXECUTABLE_KINDS.get(self.detail, self.detail)}"
            case _:
                return f"cannot be inspected: {self.detail}"


@dataclass(frozen=True)
class Limits:
    blocked_extensions: frozenset[str]
    blocked_content: frozenset[str] = frozenset(AttachmentsTable().blocked_content)
    walk: WalkLimits = field(default_factory=WalkLimits)

    @classmethod
    def from_policy(cls, table: AttachmentsTable) -> Limits:
        return cls(
            blocked_extensions=frozenset(table.blocked_extensions),
            blocked_content=frozenset(table.blocked_content),
            walk=WalkLimits(
                max_depth=table.max_depth,
                max_parts=table.max_parts,
                max_members=table.max_archive_members,
                max_expanded=table.max_expanded_size,
            ),
        )


@dataclass(frozen=True)
class Scan(Findings):
    findings: tuple[Finding, ...]
    inspected: int  # files whose content was looked at

    @property
    def executables(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.executable)

    @property
    def uninspectable(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if not f.executable)


# --- names -----------------------------------------------------------------------------------

_RLO, _PDF = "\u202e", "\u202c"  # RIGHT-TO-LEFT OVERRIDE, POP DIRECTIONAL FORMATTING


def visible_name(name: str) -> str:
    """How a name displays with its right-to-left overrides applied (UAX #9 X6, simplified:
    the text after U+202E, up to U+202C or the end, shows reversed)."""
    shown, rest = [], name
    while _RLO in rest:
        before, _, after = rest.partition(_RLO)
        inside, _, rest = after.partition(_PDF)
        shown += [before, inside[::-1]]
    return "".join([*shown, rest])


def name_rule(name: str, blocked: Iterable[str]) -> tuple[Rule, str] | None:
    """Why a file name is blocked: (rule, detail), or None.

    A NUL ends the name for C-string APIs ("evil.exe\\0.pdf" is saved as evil.exe) while other
    readers drop it ("evil.exe.pdf"): both readings are judged.
    """
    readings = (name.partition("\0")[0], name) if "\0" in name else (name,)
    for reading in readings:
        real = extension(normalise_name(reading))
        if _RLO in reading:
            shown = extension(normalise_name(visible_name(reading)))
            if shown != real:
                return Rule.DISGUISED, f".{real or '(none)'} shown as .{shown or '(none)'}"
        if real and real in blocked:
            return Rule.EXTENSION, real
    return None


# --- the scan --------------------------------------------------------------------------------


def judge(file: File, limits: Limits) -> Finding | None:
    """Why one file is blocked, or None."""
    for kind in file.kinds:
        if kind in limits.blocked_content:
            return Finding(file.name, Rule.CONTENT, kind, file.path, file.attachment if file.attachment != file.name
                           else "")
    for name in file.names:
        matched = name_rule(name, limits.blocked_extensions)
        if matched is not None:
            return Finding(name, *matched, file.path, file.attachment if file.attachment != name else "")
    if file.content is not None:
        sniffed = executable_kind(file.content, limits.blocked_content)
        if sniffed is not None:
            return Finding(file.name, Rule.CONTENT, sniffed, file.path, file.attachment)
    return None


def find_executables(header: bytes, body: bytes, limits: Limits) -> Scan:
    """Walk one message (header block and body, raw bytes) until the first executable.

    Uninspectable places are collected along the way (up to MAX_FINDINGS); the walk stops at
    the first executable, which is all a refusal needs.
    """
    findings: list[Finding] = []
    inspected = 0
    with closing(files(header, body, limits.walk)) as items:
        for item in items:
            if isinstance(item, Unreadable):
                attachment = item.attachment if item.attachment != item.name else ""
                findings.append(Finding(item.name, Rule.UNINSPECTABLE, item.reason, item.path, attachment, item.error))
                if len(findings) >= MAX_FINDINGS:
                    break
                continue
            inspected += item.content is not None
            finding = judge(item, limits)
            if finding is not None:
                findings.append(finding)
                break
            # Let the content go before the walk makes the next (a file's other decodings are
            # each as large as the file: base64_decoding.base64_readings).
            del item
    return Scan(tuple(findings), inspected)


def scan_message(message: Message, limits: Limits) -> Scan:
    header = b"".join(h.raw() for h in message.headers)
    return find_executables(header, message.body_bytes(), limits)


# --- the reply -------------------------------------------------------------------------------


def printable(text: str, limit: int = REPLY_NAME_LENGTH) -> str:
    """A file name or path in our reply, between quotes: no quotes or backslashes in it, short."""
    return safetext.for_reply(text, limit, forbid='"\\', shorten=True)


def submission_port(policy: Policy) -> int | None:
    """A port where authenticated users may send what this check refuses (587 by default)."""
    for listener in policy.listeners.values():
        exempt = CheckName.ATTACHMENTS not in listener.authenticated.checks
        if listener.auth == "required" and listener.ports and exempt:
            return listener.ports[0]
    return None


def reply(finding: Finding, port: int | None) -> SmtpReply:
    """One line, under 250 characters: which file, which rule, where to send it instead."""
    if finding.filename:
        subject = f'Attachment "{printable(finding.filename)}"'
        if finding.attachment:
            subject += f' in "{printable(finding.attachment)}"'
    else:
        subject = f"Message part {printable(finding.path, 24)}"
    what = "executable files are" if finding.executable else "attachments that cannot be inspected are"
    advice = f"; send them through authenticated submission on port {port}" if port else ""
    text = f"{subject} is blocked ({printable(finding.describe(), 64)}): {what} not accepted here{advice}"
    if len(text) > REPLY_LENGTH and finding.filename:  # long names and a long reason: shorten the names
        subject = f'Attachment "{printable(finding.filename, 24)}"'
        subject += f' in "{printable(finding.attachment, 24)}"' if finding.attachment else ""
        text = f"{subject} is blocked ({printable(finding.describe(), 64)}): {what} not accepted here{advice}"
    return SmtpReply("550", "5.7.1", text)


def _reason(findings: tuple[Finding, ...]) -> str:
    listed = "; ".join(f'"{printable(f.filename or "-", 80)}" at {printable(f.path, 120)}: {f.describe()}'
                       + (f" ({printable(f.error, 120)})" if f.error else "") for f in findings[:5])
    return listed + (f"; and {len(findings) - 5} more" if len(findings) > 5 else "")


class Attachments:
    name = NAME
    stage = Stage.EOM
    requires: tuple[str, ...] = ()

    def run(self, context: CheckContext) -> CheckResult:
        table = context.policy.attachments
        scan = scan_message(context.content, Limits.from_policy(table))
        blocking = scan.executables or (scan.uninspectable if table.uninspectable == "block" else ())
        if blocking:
            decisive = blocking[0]
            answer = reply(decisive, submission_port(context.policy))
            return CheckResult(NAME, Outcome.BLOCKED, Disposition.REJECT, answer, reason=_reason(scan.findings),
                               detail=str(decisive.rule), findings=scan)
        if scan.uninspectable:
            return CheckResult(NAME, Outcome.CLEAN, reason=f"accepted without inspection: {_reason(scan.findings)}",
                               detail="uninspectable", findings=scan)
        return CheckResult(NAME, Outcome.CLEAN, reason=f"{scan.inspected} files inspected",
                           detail=str(scan.inspected), findings=scan)
