"""Find the report documents (the XML) in what `dmarc-reports read` is given.

A PATH is a Maildir (a directory with cur/ or new/: every message in both), another directory
(every regular file in it, in name order, not descending), or a file: recognised by its first
bytes, never its name: gzip (1f 8b), zip (PK 03 04), XML ('<', after a byte-order mark and
blanks), an mbox ("From " at the start: split at every line starting "From ", as Python's
mailbox does), or else one RFC 5322 message (.eml). In a message, the report is an attachment
(RFC 7489 §7.2.1.1: application/gzip or application/zip; also text/xml, application/xml,
application/octet-stream, or any non-text part whose bytes are gzip or zip), possibly in a
forwarded message/rfc822; a zip holds one or more XML files (RFC 9990 §5 and common practice).

Everything is bounded by `archives.Limits`: a file, message or attachment over `max_input` is
not read (an mbox is streamed: each message is bounded, not the file), decompression stops at
`max_xml`, a zip with more than `max_members` files (a gzip stream with more members) is refused,
nesting stops at `max_depth` and a message's MIME walk at `max_parts`. Each top-level input (a
file; one message of an mbox or a Maildir) has one `archives.Budget` that every layer in it draws
from: `max_total` bytes decompressed and `max_documents` documents in all, so limits do not
multiply across nesting. Documents are yielded as they are found, one at a time: memory follows
the largest document, not the input's sum. A header with parameters longer than
`MAX_PARAM_HEADER` is not parsed (the standard library's parameter parser is quadratic): the
message or the part is a skip that says so. What cannot be read is a `Skipped` with its reason;
every piece of input text in an origin or a reason goes through `safetext.for_log`.
"""

from __future__ import annotations

import email
import email.errors
import email.message
import email.policy
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from policymilter.dmarcreports.archives import (
    GZIP_MAGIC,
    ZIP_MAGIC,
    ArchiveError,
    Budget,
    BudgetExhausted,
    LimitExceeded,
    Limits,
    gunzip,
    mib,
    unzip,
)
from policymilter.safetext import for_log

_BOMS = (b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff")
# Content types a report attachment comes as; anything else is looked at only if its bytes say
# gzip or zip (an attachment labelled application/x-gzip, or a wrongly labelled one).
_REPORT_TYPES = frozenset({"application/gzip", "application/x-gzip", "application/zip", "application/x-zip",
                           "application/x-zip-compressed", "text/xml", "application/xml",
                           "application/octet-stream"})
_REPORT_NAMES = (".xml", ".gz", ".zip", ".xml.gz", ".gzip")
_LINE = 1 << 16
_MIME_LEVELS = 20  # multipart in multipart: a report mail has two or three
MAX_PARAM_HEADER = 4096  # characters of a header whose parameters are parsed (a real one: well under 1000)
# What the email package raises on a hostile message (compat32 parses leniently, but not always).
_MESSAGE_ERRORS: tuple[type[Exception], ...] = (email.errors.MessageError, ValueError, LookupError, TypeError,
                                                AttributeError, RecursionError)


class HeaderTooLong(email.errors.MessageError):
    """A header whose parameters would be parsed is longer than MAX_PARAM_HEADER."""


class _Message(email.message.Message):
    """compat32's Message, refusing to parse the parameters of an overlong header: `_parseparam`
    copies the rest of the header at every ';' (quadratic; 320 KB took 25 s). Parameters are read
    by get_boundary (while parsing), get_filename, get_content_charset: all through these two."""

    def get_params(self, failobj: Any = None, header: str = "content-type", unquote: bool = True) -> Any:
        self._check(header)
        return super().get_params(failobj, header, unquote)

    def get_param(self, param: str, failobj: Any = None, header: str = "content-type",
                  unquote: bool = True) -> Any:
        self._check(header)
        return super().get_param(param, failobj, header, unquote)

    def _check(self, header: str) -> None:
        value = self.get(header)
        if value is not None and len(str(value)) > MAX_PARAM_HEADER:
            raise HeaderTooLong(f"a {for_log(header, 40)} header longer than {MAX_PARAM_HEADER} characters "
                                "(its parameters are not read)")


@dataclass(frozen=True)
class Document:
    """An XML document found, and where: `FILE[: message N][: ATTACHMENT][: member NAME]`."""

    origin: str
    data: bytes


@dataclass(frozen=True)
class Skipped:
    origin: str
    reason: str


Found = Document | Skipped


def is_xml(data: bytes) -> bool:
    head = data[:512]
    for bom in _BOMS:
        if head.startswith(bom):
            return True
    head = head.lstrip()
    # UTF-16 without a byte-order mark (XML 1.0 Appendix F): '<' next to a zero byte.
    return head.startswith((b"<", b"\x00<"))


def _kind(data: bytes) -> str | None:
    if data.startswith(GZIP_MAGIC):
        return "gzip"
    if data.startswith(ZIP_MAGIC):
        return "zip"
    return "xml" if is_xml(data) else None


class Finder:
    def __init__(self, limits: Limits) -> None:
        self.limits = limits

    def find(self, paths: Sequence[str]) -> Iterator[Found]:
        for path in paths:
            yield from self._path(Path(path))

    # -- files and directories ---------------------------------------------------------------

    def _path(self, path: Path) -> Iterator[Found]:
        shown = for_log(str(path), 300)
        try:
            if path.is_dir():
                yield from self._directory(path, shown)
            else:
                with path.open("rb") as stream:
                    yield from _within_budget(shown, self._file(stream, shown))
        except OSError as error:
            yield Skipped(shown, f"cannot read: {for_log(error.strerror or str(error), 120)}")

    def _directory(self, path: Path, shown: str) -> Iterator[Found]:
        maildir = [path / sub for sub in ("cur", "new") if (path / sub).is_dir()]
        files = sorted(entry for folder in (maildir or [path]) for entry in folder.iterdir() if entry.is_file())
        if not files:
            yield Skipped(shown, "no files in this directory" + (" (a Maildir: cur/ and new/)" if maildir else ""))
        for entry in files:
            if maildir:
                yield from self._message_file(entry)
            else:
                yield from self._path(entry)

    def _message_file(self, path: Path) -> Iterator[Found]:
        shown = for_log(str(path), 300)
        try:
            with path.open("rb") as stream:
                data = _bounded_read(stream, self.limits.max_input)
        except OSError as error:
            yield Skipped(shown, f"cannot read: {for_log(error.strerror or str(error), 120)}")
            return
        if data is None:
            yield Skipped(shown, f"message larger than {mib(self.limits.max_input)} (limit max-input)")
        else:
            yield from _within_budget(shown, self._message(shown, data, 0, Budget(self.limits)))

    def _file(self, stream: BinaryIO, shown: str) -> Iterator[Found]:
        head = stream.read(5)
        if head == b"From ":
            stream.seek(0)
            yield from self._mbox(stream, shown)
            return
        stream.seek(0)
        data = _bounded_read(stream, self.limits.max_input)
        if data is None:
            yield Skipped(shown, f"larger than {mib(self.limits.max_input)} (limit max-input)")
        elif _kind(data):
            yield from self._blob(shown, data, 0, Budget(self.limits))
        else:
            yield from self._message(shown, data, 0, Budget(self.limits), whole_file=True)

    def _mbox(self, stream: BinaryIO, shown: str) -> Iterator[Found]:
        number = 0
        message = bytearray()
        too_big = False
        at_line_start = True
        while True:
            line = stream.readline(_LINE)
            starts = at_line_start and line.startswith(b"From ")
            if not line or starts:
                if number:
                    origin = f"{shown}: message {number}"
                    if too_big:
                        yield Skipped(origin, f"message larger than {mib(self.limits.max_input)} (limit max-input)")
                    else:  # each message of an mbox is a top-level input of its own
                        yield from _within_budget(origin, self._message(origin, bytes(message), 0,
                                                                        Budget(self.limits)))
                if not line:
                    return
                number += 1
                message.clear()
                too_big = False
            elif not too_big:
                # mboxrd (and mboxo's reader): a body line ">From " was "From " (RFC 4155 §2).
                message += line[1:] if at_line_start and line.startswith(b">From ") else line
                if len(message) > self.limits.max_input:
                    too_big = True
                    message.clear()
            at_line_start = line.endswith(b"\n")

    # -- messages ----------------------------------------------------------------------------

    def _message(self, origin: str, data: bytes, depth: int, budget: Budget, *,
                 whole_file: bool = False) -> Iterator[Found]:
        try:
            message = email.message_from_bytes(data, _class=_Message, policy=email.policy.compat32)
        except _MESSAGE_ERRORS as error:
            yield Skipped(origin, f"not a readable message: {for_log(str(error), 160)}")
            return
        if not message.keys():
            what = "neither XML, gzip, zip, an mbox nor a message" if whole_file else "a message without headers"
            yield Skipped(origin, f"not a report: {what}")
            return
        seen: list[str] = []
        found_any = False
        try:
            for found in self._parts(origin, message, depth, 0, seen, [0], budget):
                found_any = True
                yield found
        except LimitExceeded as error:
            yield Skipped(origin, str(error))
            return
        except _MESSAGE_ERRORS as error:
            yield Skipped(origin, f"not a readable message: {for_log(str(error), 160)}")
            return
        if not found_any:
            parts = ", ".join(dict.fromkeys(seen)) or "none"
            yield Skipped(origin, f"no aggregate report in this message (parts: {for_log(parts, 200)})")

    def _parts(self, origin: str, part: email.message.Message, nested: int, level: int, seen: list[str],
               counter: list[int], budget: Budget) -> Iterator[Found]:
        """The documents and skips of `part`, yielded as found (nothing is collected)."""
        counter[0] += 1
        if counter[0] > self.limits.max_parts:
            raise LimitExceeded(f"more than {self.limits.max_parts} MIME parts (limit max-parts)")
        if level > _MIME_LEVELS:
            raise LimitExceeded(f"MIME parts nested deeper than {_MIME_LEVELS} levels")
        content_type = for_log(part.get_content_type(), 80)
        if part.is_multipart():
            if content_type == "message/rfc822":  # a forwarded report mail
                nested += 1
                if nested > self.limits.max_depth:
                    raise LimitExceeded(f"messages nested deeper than {self.limits.max_depth} (limit max-depth)")
            payload = part.get_payload()
            for child in payload if isinstance(payload, list) else []:
                if isinstance(child, email.message.Message):
                    yield from self._parts(origin, child, nested, level + 1, seen, counter, budget)
            return
        seen.append(content_type)
        try:
            name = part.get_filename()
            data = part.get_payload(decode=True)
        except HeaderTooLong as error:  # this part only: the others are still read
            yield Skipped(f"{origin}: MIME part {counter[0]} ({content_type})", str(error))
            return
        named = bool(name) and str(name).lower().endswith(_REPORT_NAMES)
        if content_type.startswith("text/") and content_type != "text/xml" and not named:
            return  # the human-readable note beside the report
        if not isinstance(data, bytes):
            return
        label = f"{origin}: {for_log(str(name), 120) if name else content_type}"
        kind = _kind(data)
        if len(data) > self.limits.max_input:
            yield Skipped(label, f"attachment larger than {mib(self.limits.max_input)} (limit max-input)")
        elif kind in ("gzip", "zip") or (kind == "xml" and (content_type in _REPORT_TYPES or named)):
            yield from self._blob(label, data, nested, budget)
        elif content_type in _REPORT_TYPES or named:
            yield Skipped(label, f"attachment ({content_type}) is neither XML, gzip nor zip")

    # -- archives ----------------------------------------------------------------------------

    def _blob(self, origin: str, data: bytes, depth: int, budget: Budget) -> Iterator[Found]:
        if depth > self.limits.max_depth:
            yield Skipped(origin, f"archives nested deeper than {self.limits.max_depth} (limit max-depth)")
            return
        match _kind(data):
            case "xml":
                if len(data) > self.limits.max_xml:
                    yield Skipped(origin, f"XML larger than {mib(self.limits.max_xml)} (limit max-xml)")
                else:
                    budget.document()
                    yield Document(origin, data)
            case "gzip":
                try:
                    inner = gunzip(data, self.limits.max_xml, budget, self.limits.max_members)
                except (ArchiveError, LimitExceeded) as error:
                    yield Skipped(origin, str(error))
                    return
                if _kind(inner) is None:
                    yield Skipped(origin, "the gzip data is not XML")
                else:
                    yield from self._blob(origin, inner, depth + 1, budget)
            case "zip":
                try:
                    for member in unzip(data, self.limits, budget):
                        member_origin = f"{origin}: member {member.name}"
                        if member.data is None:
                            yield Skipped(member_origin, member.problem or "unreadable")
                        elif _kind(member.data) is None:
                            yield Skipped(member_origin, "not XML")
                        else:
                            yield from self._blob(member_origin, member.data, depth + 1, budget)
                except (ArchiveError, LimitExceeded) as error:
                    yield Skipped(origin, str(error))
            case _:
                yield Skipped(origin, "neither XML, gzip nor zip")


def _within_budget(origin: str, found: Iterator[Found]) -> Iterator[Found]:
    """The finds of one top-level input, ended by one skip when its Budget is spent."""
    try:
        yield from found
    except BudgetExhausted as error:
        yield Skipped(origin, str(error))


def _bounded_read(stream: BinaryIO, limit: int) -> bytes | None:
    """At most `limit` bytes; None when there are more (never read past limit + 1)."""
    data = stream.read(limit + 1)
    return None if len(data) > limit else data

