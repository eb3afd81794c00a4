"""Base64 as clients decode it: one reading when the data is regular, every reading clients
make when a "=" stands inside the data (RFC 2045 §6.8 leaves it open), within a cost bound."""

from __future__ import annotations

import binascii
import hashlib
import re
from collections.abc import Generator, Iterator


def decode_base64(buf: bytes, start: int = 0, end: int | None = None) -> bytes:
    """Lenient base64 of buf[start:end]: the first of base64_readings()."""
    readings = base64_readings(buf, start, end)
    try:
        return next(readings)
    finally:
        readings.close()


# A "=" followed by more data: each one costs the readings below a step in Python.
MAX_BASE64_INNER_PADDING = 10_000


def base64_problem(buf: bytes, start: int = 0, end: int | None = None) -> str | None:
    """Why base64_readings() would not be made: too many "=" inside the data."""
    end = len(buf) if end is None else end
    if not has_inner_padding(buf, start, end):
        return None
    data = _digits(buf, start, end)
    tail = bytes(data[-3:])
    completion = len(tail) - len(tail.rstrip(b"="))  # the last quantum's own padding
    if data.count(b"=") - completion > MAX_BASE64_INNER_PADDING:
        return f"base64 with over {MAX_BASE64_INNER_PADDING} '=' inside the data"
    return None


def has_inner_padding(buf: bytes, start: int, end: int) -> bool:
    padding = buf.find(b"=", start, end)
    return padding >= 0 and _B64_DATA.search(buf, padding, end) is not None


def base64_readings(buf: bytes, start: int = 0, end: int | None = None) -> Generator[bytes, None, None]:
    """Every way clients decode buf[start:end] as base64 (RFC 2045 §6.8: characters outside the
    alphabet are ignored), one at a time: the caller judges each and lets it go before asking
    for the next (each is as large as the body). A reading the same as an earlier one is not
    made again (compared by digest, so none is kept for the comparison).

    With "=" only at the end there is one reading. A "=" before more data is read four ways:
    realigned after each "=" (concatenated encodings decoded in turn, a truncated quantum
    dropped: what this walk always did), "=" as a zero digit inside its quantum (Thunderbird's
    mimeenc.cpp: a quantum with one "=" gives two bytes, with more one), "=" ignored, and
    binascii's (the stdlib's: skipped, or the end of the data once a quantum is complete).
    Check base64_problem() first: past MAX_BASE64_INNER_PADDING of them only the stdlib's
    reading should be made.
    """
    end = len(buf) if end is None else end
    if not has_inner_padding(buf, start, end):
        try:
            yield binascii.a2b_base64(memoryview(buf)[start:end])
            return
        except binascii.Error:
            pass  # a truncated last quantum: the readings below drop it
    seen: set[bytes] = set()
    for reader in (_realigned, _zero_digits, _padding_ignored, _stdlib_reading):
        reading = reader(buf, start, end)
        digest = hashlib.blake2b(reading, digest_size=32).digest()
        if digest not in seen:
            seen.add(digest)
            yield reading
        del reading


# Base64 text is cleaned a window at a time into one growing buffer: no copy of the whole text
# beside it (each reading is made from a fresh one and lets it go before it returns).
_CLEAN_WINDOW = 1024 * 1024


def cleaned(buf: bytes, start: int, end: int) -> bytearray:
    cleaned = bytearray()
    for pos in range(start, end, _CLEAN_WINDOW):
        cleaned += buf[pos:min(end, pos + _CLEAN_WINDOW)].translate(None, _B64_NOISE_BYTES)
    return cleaned


def _digits(buf: bytes, start: int, end: int) -> bytearray:
    """The base64 characters, trailing "=" off but for the padding that completes the last
    quantum; Thunderbird makes a zero byte of each further "====", which changes nothing a
    signature could tell. Trimmed in place."""
    data = cleaned(buf, start, end)
    keep = len(data)
    while keep:  # the trailing "=" run, a window at a time (a step per 4 KiB)
        window = bytes(data[max(0, keep - 4096):keep])
        stripped = len(window.rstrip(b"="))
        keep -= len(window) - stripped
        if stripped:
            break
    del data[min(len(data), keep + -keep % 4):]
    return data


def _quantum(digits: bytes | bytearray | memoryview) -> bytes:
    """Decode base64 digits (no "="), a truncated last quantum dropped or padded."""
    return b"".join(_quanta(digits))


def _quanta(digits: bytes | bytearray | memoryview) -> list[bytes]:
    """_quantum() in two pieces, the whole quanta and the last one: the digits are not copied
    to pad the last."""
    whole = len(digits) - len(digits) % 4
    pieces = [binascii.a2b_base64(digits[:whole])]
    match len(digits) % 4:
        case 2 | 3 as rest:  # a lone character (1) carries no whole byte
            pieces.append(binascii.a2b_base64(bytes(digits[whole:]) + b"=" * (4 - rest)))
    return pieces


def _segments(data: bytearray) -> Iterator[tuple[int, int]]:
    """(start, end) of the runs between "=" signs: one step per "=" (at most
    MAX_BASE64_INNER_PADDING and the last quantum's)."""
    pos = 0
    while pos < len(data):
        found = data.find(b"=", pos)
        stop = len(data) if found < 0 else found
        if stop > pos:
            yield pos, stop
        pos = stop + 1


def _realigned(buf: bytes, start: int, end: int) -> bytes:
    data = _digits(buf, start, end)
    view = memoryview(data)
    pieces = [piece for pos, stop in _segments(data) for piece in _quanta(view[pos:stop])]
    view.release()
    del data  # before the join: the decoded pieces and the result are all that is left
    return b"".join(pieces)


def _zero_digits(buf: bytes, start: int, end: int) -> bytes:
    data = _digits(buf, start, end)
    usable = len(data) - len(data) % 4  # Thunderbird drops a truncated last quantum
    quanta, found = [], data.find(b"=", 0, usable)
    while found >= 0:
        quantum = found - found % 4
        quanta.append((quantum, data.count(b"=", quantum, quantum + 4)))
        for pos in range(quantum, quantum + 4):
            if data[pos] == 0x3D:
                data[pos] = 0x41  # "A": a zero digit, in place
        found = data.find(b"=", quantum + 4, usable)
    with memoryview(data) as view:
        decoded = binascii.a2b_base64(view[:usable])
    del data
    pieces, kept = [], 0
    with memoryview(decoded) as view:
        for quantum, pads in quanta:
            out = quantum // 4 * 3
            pieces.append(view[kept:out + (2 if pads == 1 else 1)])
            kept = out + 3
        pieces.append(view[kept:])
        joined = b"".join(pieces)
        pieces.clear()
    return joined


def _padding_ignored(buf: bytes, start: int, end: int) -> bytes:
    """The digits with every "=" dropped, decoded a window at a time (whole quanta)."""
    data = _digits(buf, start, end)
    decoded, pending = [], bytearray()
    with memoryview(data) as view:
        for pos, stop in _segments(data):
            for window in range(pos, stop, _CLEAN_WINDOW):
                pending += view[window:min(stop, window + _CLEAN_WINDOW)]
                whole = len(pending) - len(pending) % 4
                decoded.append(binascii.a2b_base64(memoryview(pending)[:whole]))
                del pending[:whole]
    del data
    decoded.append(_quantum(pending))
    return b"".join(decoded)


def _stdlib_reading(buf: bytes, start: int, end: int) -> bytes:
    return stdlib_base64(cleaned(buf, start, end))


def stdlib_base64(cleaned: bytearray) -> bytes:
    """What email.message.Message.get_payload(decode=True) makes of it (_encoded_words.decode_b)."""
    for attempt in range(2):
        try:
            return binascii.a2b_base64(cleaned)
        except binascii.Error:  # a truncated last quantum
            if attempt == 0:
                cleaned += b"=="  # in place
    return bytes(cleaned[:-2])  # decode_b gives up and returns the text


_B64_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_B64_NOISE_BYTES = bytes(byte for byte in range(256) if byte not in _B64_ALPHABET + b"=")
_B64_DATA = re.compile(rb"[A-Za-z0-9+/]")
