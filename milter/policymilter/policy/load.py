"""Read policy files, apply `-o KEY=VALUE` overrides, validate everything at once.

Every problem becomes one `FILE:LINE: key.path: message` line; loading never stops at the
first one, so an admin fixes a file in one pass.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import re
import tomllib
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from policymilter.policy.locate import KeyPath, locate
from policymilter.policy.model import Policy
from policymilter.policy.timing import too_slow
from policymilter.sniff import known_content_kinds

OVERRIDE_FILE = "-o"


@dataclass(frozen=True)
class PolicyIssue:
    file: str
    line: int | None
    key: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line if self.line is not None else 0}: {self.key}: {self.message}"


class PolicyError(Exception):
    """The policy is not valid; `issues` holds every problem found."""

    def __init__(self, issues: Sequence[PolicyIssue]) -> None:
        self.issues = list(issues)
        super().__init__("\n".join(str(issue) for issue in self.issues))


@dataclass(frozen=True)
class LoadedPolicy:
    policy: Policy
    files: tuple[str, ...]


def key_text(path: Iterable[str | int]) -> str:
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            bare = re.fullmatch(r"[A-Za-z0-9_-]+", part)
            part = part if bare else json.dumps(part, ensure_ascii=False)
            text += f".{part}" if text else part
    return text or "(policy)"


def policy_files(path: Path) -> list[Path]:
    """A file, or every `*.toml` of a directory in name order (later files override)."""
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.suffix == ".toml" and not p.name.startswith("."))
    return [path]


class _Sources:
    """Which file and line wrote each key path (the last writer wins, like the values)."""

    def __init__(self) -> None:
        self._where: dict[KeyPath, tuple[str, int]] = {}

    def add(self, file: str, locations: dict[KeyPath, int]) -> None:
        for path, line in locations.items():
            self._where[path] = (file, line)

    def find(self, path: KeyPath, fallback: str) -> tuple[str, int | None]:
        for length in range(len(path), 0, -1):
            if path[:length] in self._where:
                return self._where[path[:length]]
        return fallback, None


def _mergeable(path: Sequence[str | int]) -> bool:
    """Tables that are schema sections (or maps of them) merge key by key across files;
    map-valued settings (`on_error`, `signing.keys`) are replaced whole, so a later file can
    clear them with `{}`."""
    current = _unwrap(_annotation_at(path))
    if typing.get_origin(current) is dict:
        current = _unwrap(typing.get_args(current)[1])
    return isinstance(current, type) and issubclass(current, BaseModel)


def _merge(base: dict[str, Any], update: dict[str, Any], path: tuple[str, ...] = ()) -> None:
    for key, value in update.items():
        here = (*path, key)
        if isinstance(value, dict) and isinstance(base.get(key), dict) and _mergeable(here):
            _merge(base[key], value, here)
        else:
            base[key] = value


def _syntax_line(error: tomllib.TOMLDecodeError) -> tuple[int | None, str]:
    match = re.search(r"\(at line (\d+), column \d+\)$", str(error))
    message = re.sub(r"\s*\(at (line \d+, column \d+|end of document)\)$", "", str(error))
    return (int(match.group(1)) if match else None), message


def parse_override(text: str) -> tuple[list[str], Any]:
    """`dns.timeout=3` -> (["dns", "timeout"], 3.0); the value is TOML (`"x"`, `[1, 2]`, `true`).

    A value that is not valid TOML is taken as a plain string, so `-o site.authserv_id=mx.a.b`
    works without shell-quoting; the schema still rejects it where a string is wrong.
    """
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"{text!r} is not KEY.PATH=VALUE")
    parts = key.strip().split(".")
    if not all(re.fullmatch(r"[A-Za-z0-9_-]+", part) for part in parts):
        raise ValueError(f"{key.strip()!r} is not a dotted key path")
    try:
        value = tomllib.loads(f"value = {raw.strip()}")["value"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    except RecursionError:
        raise ValueError(f"the value of {key.strip()!r} is nested too deeply") from None
    return parts, value


def _nested(parts: list[str], value: Any) -> dict[str, Any]:
    nested: dict[str, Any] = {parts[-1]: value}
    for part in reversed(parts[:-1]):
        nested = {part: nested}
    return nested


def _to_json(value: Any) -> Any:
    # TOML dates and times have no place in a policy; as strings they still fail validation
    # wherever a specific type is expected.
    return str(value)


def _unwrap(annotation: Any) -> Any:
    while True:
        origin = typing.get_origin(annotation)
        if origin is typing.Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin in (typing.Union, types.UnionType):
            options = [a for a in typing.get_args(annotation) if a is not type(None)]
            annotation = options[0] if len(options) == 1 else annotation
            if len(options) != 1:
                return annotation
        else:
            return annotation


def _annotation_at(path: Sequence[str | int]) -> Any:
    """The schema type of the value at `path` (None where the schema has no such key)."""
    current: Any = Policy
    for part in path:
        current = _unwrap(current)
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = current.model_fields.get(str(part))
            if field is None:
                return None
            current = field.annotation
        elif typing.get_origin(current) in (dict, tuple):
            current = typing.get_args(current)[1 if typing.get_origin(current) is dict else 0]
        else:
            return None
    return current


def _model_at(path: Sequence[str | int]) -> type[BaseModel] | None:
    """The schema model that holds the keys at `path` (for "did you mean")."""
    current = _unwrap(_annotation_at(path))
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _suggest(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


# Keys that moved: said as such rather than "unknown key" (the store is shared since issue 14).
MOVED: dict[tuple[str | int, ...], str] = {("ratelimit", "store"): "state.store",
                                           ("ratelimit", "timeout"): "state.timeout"}


def _issue_message(error: Mapping[str, Any], path: list[str | int]) -> str:
    kind = error["type"]
    message = str(error["msg"]).removeprefix("Value error, ")
    if kind == "extra_forbidden" and (moved := MOVED.get(tuple(path))) is not None:
        return (f"moved: write {moved} instead (the [state] table holds the store the rate limits and the DMARC "
                "report rows share)")
    if kind == "extra_forbidden":
        model = _model_at(path[:-1])
        names = sorted(model.model_fields) if model else []
        hint = _suggest(str(path[-1]), names)
        return "unknown key" + (hint or (f" (valid keys: {', '.join(names)})" if names else ""))
    if kind == "missing":
        return "required key is missing"
    if kind in ("literal_error", "enum"):
        expected = re.findall(r"'([^']*)'", str(error.get("ctx", {}).get("expected", "")))
        got = error.get("input")
        return f"{message}, not {got!r}" + (_suggest(str(got), expected) if isinstance(got, str) else "")
    if kind.endswith("_type") or kind.endswith("_parsing"):
        return f"{message}, not {json.dumps(error.get('input'))}"
    return message


def _validation_issues(
    error: ValidationError, sources: _Sources, fallback: str
) -> list[PolicyIssue]:
    issues = []
    for item in error.errors():
        path = list(item["loc"])
        if path and path[-1] == "[key]":
            path.pop()
        file, line = sources.find(tuple(path), fallback)
        issues.append(PolicyIssue(file, line, key_text(path), _issue_message(item, path)))
    return issues


Rule = Callable[[Policy], Iterable[tuple[KeyPath, str]]]


def _semantic_issues(policy: Policy, sources: _Sources, fallback: str, rules: Sequence[Rule] = ()) -> list[PolicyIssue]:
    """Rules that span keys: every session must find exactly one listener; and the rules the
    caller brings (the checks' requirements: the policy layer does not know the checks)."""
    issues = []

    def issue(path: KeyPath, message: str) -> None:
        file, line = sources.find(path, fallback)
        issues.append(PolicyIssue(file, line, key_text(path), message))


    known = known_content_kinds()
    for index, kind in enumerate(policy.attachments.blocked_content):
        if kind not in known:
            issue(("attachments", "blocked_content", index),
                  f"unknown content kind {kind!r}{_suggest(kind, known)} (known: pe, elf, macho, macro and "
                  f"{len(known) - 4} file types)")
    if not policy.listeners:
        issue(("listeners",), "no listener is defined: every session would get the strictest profile")
    for path, message in too_slow(policy):
        issue(path, message)
    for rule in rules:
        for path, message in rule(policy):
            issue(path, message)
    names: dict[str, str] = {}
    ports: dict[int, str] = {}
    for key, listener in policy.listeners.items():
        name = listener.daemon_name if listener.daemon_name is not None else key
        if name in names:
            issue(("listeners", key, "daemon_name"),
                  f"daemon name {name!r} is already matched by listeners.{names[name]}")
        names.setdefault(name, key)
        for index, port in enumerate(listener.ports):
            if port in ports:
                issue(("listeners", key, "ports", index), f"port {port} is already matched by listeners.{ports[port]}")
            ports.setdefault(port, key)
    return issues


def _read(file: Path, sources: _Sources) -> tuple[dict[str, Any] | None, PolicyIssue | None]:
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        return None, PolicyIssue(str(file), None, "(file)", f"cannot read: {error}")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        line, message = _syntax_line(error)
        return None, PolicyIssue(str(file), line, "(syntax)", message)
    except RecursionError:
        return None, PolicyIssue(str(file), None, "(syntax)", "nested too deeply")
    # Positions are a courtesy: a scanner bug may cost line numbers, never the load.
    with contextlib.suppress(Exception):
        sources.add(str(file), locate(text))
    return data, None


def load_policy(path: str | Path, overrides: Sequence[str] = (), rules: Sequence[Rule] = ()) -> LoadedPolicy:
    """Load, merge and validate; raise PolicyError listing every problem. `rules` add checks that
    span keys (service.load_checked passes the checks' requirements)."""
    path = Path(path)
    issues: list[PolicyIssue] = []
    sources = _Sources()
    merged: dict[str, Any] = {}
    try:
        if not path.exists():
            raise PolicyError([PolicyIssue(str(path), None, "(policy)", "no such file or directory")])
        files = policy_files(path)
    except OSError as error:
        raise PolicyError([PolicyIssue(str(path), None, "(policy)", f"cannot read: {error}")]) from None
    if not files:
        raise PolicyError([PolicyIssue(str(path), None, "(policy)", "directory holds no *.toml policy file")])
    for file in files:
        data, problem = _read(file, sources)
        if problem:
            issues.append(problem)
        elif data is not None:
            _merge(merged, data)
    for number, override in enumerate(overrides, start=1):
        try:
            parts, value = parse_override(override)
        except ValueError as error:
            issues.append(PolicyIssue(OVERRIDE_FILE, number, "(override)", str(error)))
            continue
        # Every prefix: an error anywhere under this path is the override's, not a file's.
        sources.add(OVERRIDE_FILE, {tuple(parts[:length]): number for length in range(1, len(parts) + 1)})
        _merge(merged, _nested(parts, value))
    if issues:
        raise PolicyError(issues)
    fallback = str(files[-1])
    try:
        policy = Policy.model_validate_json(json.dumps(merged, default=_to_json), strict=True)
    except ValidationError as error:
        issues = _validation_issues(error, sources, fallback)
        raise PolicyError(sorted(issues, key=lambda i: (i.file, i.line or 0))) from None
    issues = _semantic_issues(policy, sources, fallback, rules)
    if issues:
        raise PolicyError(issues)
    return LoadedPolicy(policy, tuple(str(file) for file in files))
