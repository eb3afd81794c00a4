"""Where each key of a TOML file is written: key path -> line number.

tomllib gives values but no positions, and an admin needs `FILE:LINE` for every error. This
scanner only finds positions; the values always come from tomllib, so a scanner mistake can
cost a line number, never a wrong value.
"""

from __future__ import annotations

import re
import tomllib

KeyPath = tuple[str | int, ...]

_BARE = re.compile(r"[A-Za-z0-9_-]+")
_SPACE = " \t"


def _decode_quoted(quoted: str) -> str | None:
    """A quoted TOML key as tomllib reads it (escapes and all); None if it is not one."""
    try:
        return next(iter(tomllib.loads(f"{quoted} = 0")))
    except (tomllib.TOMLDecodeError, StopIteration):
        return None


def _parse_key(text: str, pos: int) -> tuple[list[str], int] | None:
    """Parse a (dotted) key starting at `pos`; return its parts and the position after it."""
    parts: list[str] = []
    while True:
        while pos < len(text) and text[pos] in _SPACE:
            pos += 1
        if pos >= len(text):
            return None
        char = text[pos]
        if char in "\"'":
            end = pos + 1
            while end < len(text) and text[end] != char:
                end += 2 if char == '"' and text[end] == "\\" else 1
            if end >= len(text):
                return None
            key = _decode_quoted(text[pos : end + 1])
            if key is None:
                return None
            parts.append(key)
            pos = end + 1
        else:
            match = _BARE.match(text, pos)
            if not match:
                return None
            parts.append(match.group())
            pos = match.end()
        while pos < len(text) and text[pos] in _SPACE:
            pos += 1
        if pos < len(text) and text[pos] == ".":
            pos += 1
            continue
        return parts, pos


def _scan_value(text: str, pos: int, depth: int, in_string: str | None) -> tuple[int, str | None]:
    """Track bracket depth and open multi-line strings through one line."""
    while pos < len(text):
        if in_string:
            if text.startswith(in_string, pos):
                pos += len(in_string)
                in_string = None
                continue
            pos += 2 if in_string[0] == '"' and text[pos] == "\\" else 1
            continue
        char = text[pos]
        if text.startswith('"""', pos) or text.startswith("'''", pos):
            in_string = text[pos : pos + 3]
            pos += 3
        elif char in "\"'":
            in_string = char
            pos += 1
        elif char in "[{":
            depth += 1
            pos += 1
        elif char in "]}":
            depth -= 1
            pos += 1
        elif char == "#":
            break
        else:
            pos += 1
    if in_string in ('"', "'"):
        in_string = None  # single-line strings cannot span lines
    return depth, in_string


def _inline_keys(text: str, start: int, prefix: KeyPath, line: int, out: dict[KeyPath, int]) -> None:
    """Record `k = v` pairs inside an inline table `{ ... }` on one line (one level deep)."""
    for match in re.finditer(r"[{,]\s*([A-Za-z0-9_\"'.-][^=,{}]*?)\s*=", text[start:]):
        parsed = _parse_key(match.group(1), 0)
        if parsed:
            out.setdefault((*prefix, *parsed[0]), line)


def locate(text: str) -> dict[KeyPath, int]:
    """Map every table and key path in `text` to the line (1-based) that defines it."""
    out: dict[KeyPath, int] = {}
    table: KeyPath = ()
    array_counts: dict[KeyPath, int] = {}
    depth = 0
    in_string: str | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        if depth > 0 or in_string:
            depth, in_string = _scan_value(line, 0, depth, in_string)
            continue
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.startswith("[["):
            parsed = _parse_key(stripped, 2)
            if parsed:
                path = tuple(parsed[0])
                index = array_counts.get(path, 0)
                array_counts[path] = index + 1
                table = (*path, index)
                out.setdefault(path, number)
                out[table] = number
            continue
        if stripped.startswith("["):
            parsed = _parse_key(stripped, 1)
            if parsed:
                table = tuple(parsed[0])
                out.setdefault(table, number)
            continue
        parsed = _parse_key(line, 0)
        if not parsed:
            continue
        parts, pos = parsed
        if pos >= len(line) or line[pos] != "=":
            continue
        key_path: KeyPath = (*table, *parts)
        for length in range(len(table) + 1, len(key_path) + 1):
            out.setdefault(key_path[:length], number)
        value_start = pos + 1
        rest = line[value_start:].lstrip()
        if rest.startswith("{"):
            _inline_keys(line, value_start, key_path, number, out)
        depth, in_string = _scan_value(line, value_start, 0, None)
    return out


def find_line(locations: dict[KeyPath, int], path: KeyPath) -> int | None:
    """The line of `path`, or of its nearest written ancestor."""
    for length in range(len(path), 0, -1):
        line = locations.get(path[:length])
        if line is not None:
            return line
    return None
