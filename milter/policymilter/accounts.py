"""`policy-milter accounts`: the rate limits' state, read from (and changed in) the store the
policy names, the one the daemon uses (`state.store`, `state.timeout`).

    policy-milter accounts [--policy PATH] [-o KEY=VALUE]... list [--all] [--json]
    policy-milter accounts ... show LOGIN | --client ADDRESS [--json]
    policy-milter accounts ... lock LOGIN [--reason TEXT]
    policy-milter accounts ... clear LOGIN | --client ADDRESS

A LOGIN is normalised as the check does (`login:` + its case-folded form: `ALICE` is `alice`);
an ADDRESS counts as the check counts it (an IPv6 address by its /64; `unknown` for a client
without one). Exit status: 0; 1 when the store cannot be read or written (one line on stderr);
2 for an invalid policy, a disabled ratelimit or bad arguments.

`list` prints the keys near a limit (at least NEAR_PERCENT % of any counter of the limits of
the key's kind: `key = "login"` limits for `login:` keys, `key = "client"` for `client:`), over
one, locked, or with held messages; `--all`, every key with state. Locked first, then the
highest percentage. In text, what a client wrote (a login, a recipient, a reason quoting them)
is shown with control characters as "?" and cut to SHOWN characters (marked "..."); `--json`
has it whole (JSON-escaped), e.g. to find the exact login to clear.

`--json` (stable keys; times are UTC ISO 8601 strings `2026-12-02T10:00:00Z`):
  list: {"store": URL, "now": TIME, "near_percent": 80, "all": BOOL,
         "keys": [{"key": "login:alice", "kind": "login" | "client",
                   "worst": null | {"limit": LABEL, "dimension": "messages" | "recipients" | "domains" |
                                    "clients", "count": N, "max": N, "window": SECONDS, "percent": FLOAT},
                   "locked": null | {"since": TIME, "reason": TEXT}, "held": N, "pending": N}]}
  show: {"store": URL, "now": TIME, "key": KEY, "kind": KIND,
         "limits": [{"name": LABEL, "action": "tempfail" | "hold" | "lock", "window": SECONDS,
                     "counters": [{"dimension": DIM, "count": N, "max": N, "percent": FLOAT}]}],
         "clients": [{"address": TEXT, "last_used": TIME}],      (newest first)
         "recipients": [{"recipient": TEXT, "when": TIME}],     (newest first, at most RECENT)
         "pending": N, "held": [{"reason": TEXT, "when": TIME}], "locked": null | {"since": TIME, "reason": TEXT}}
A count includes the members reserved by transactions in progress (`pending` of them).
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import ipaddress
import json
import os
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import IO, Any
from urllib.parse import urlsplit, urlunsplit

from policymilter.checks.ratelimit.counting import Applicable, client_network, login_key
from policymilter.policy import PolicyError
from policymilter.policy.model import Limit, Policy
from policymilter.privileges import MILTER_USER, Identity, acting_as, group_name, user_name
from policymilter.safetext import for_log
from policymilter.service import load_checked
from policymilter.state import Counter, LockInfo, Store, StoreError, Usage, open_store
from policymilter.state.model import RECENT

PROG = "policy-milter accounts"
NEAR_PERCENT = 80
SHOWN = 200  # characters of client-written text (a login, a recipient) shown in the text output
EXIT_STORE = 1
EXIT_INVALID = 2
KINDS = ("login", "client")


# --- arguments ---------------------------------------------------------------------------------


def add_accounts_command(commands: Any) -> None:
    """The `accounts` subcommand (`commands` is build_parser's subparsers)."""
    from policymilter.cli import _common  # cli imports this module: the function is there by now

    accounts = commands.add_parser("accounts", help="the rate limits' state: logins near or over a limit, "
                                                    "locked or held; show, lock or clear one")
    _common(accounts)
    actions = accounts.add_subparsers(dest="action", required=True, metavar="list|show|lock|clear")
    listing = actions.add_parser("list", help=f"keys near (>= {NEAR_PERCENT} %) or over a limit, locked or held")
    listing.add_argument("--all", action="store_true", help="every key the store has state for")
    listing.add_argument("--json", action="store_true", help="print one JSON object")
    show = actions.add_parser("show", help="one login's counts per limit, clients, recent recipients, "
                                           "reservations, held messages and lock")
    _who(show)
    show.add_argument("--json", action="store_true", help="print one JSON object")
    lock = actions.add_parser("lock", help="lock a login: the milter refuses its mail at every RCPT (550 5.7.1)")
    lock.add_argument("login", help="the SASL login (any case)")
    lock.add_argument("--reason", default=None, help="why (shown by show and list)")
    clear = actions.add_parser("clear", help="unlock a login and forget its counts, reservations and held records")
    _who(clear)


def _who(parser: argparse.ArgumentParser) -> None:
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("login", nargs="?", help="the SASL login (any case)")
    which.add_argument("--client", metavar="ADDRESS", help="a client key (unauthenticated traffic): its IP address")


def key_for(login: str | None, client: str | None) -> str:
    """The store key of a LOGIN or --client ADDRESS, as the check writes it (ValueError: unusable)."""
    if client is None:
        if not login:
            raise ValueError("the LOGIN is empty")
        return login_key(login)
    text = client.strip()
    if text == "unknown":
        return "client:unknown"
    address = text.partition("/")[0]  # "2001:db8:1:2::/64", as `list` shows it, names the same key
    try:
        ipaddress.ip_address(address)
    except ValueError:
        raise ValueError(f"--client {for_log(client, 60)!r}: not an IP address") from None
    return "client:" + client_network(address)


# --- what the store says -----------------------------------------------------------------------


@dataclass(frozen=True)
class Reading:
    """One counter of one key: how many members it has in its window."""

    counter: Counter
    count: int

    @property
    def percent(self) -> float:
        return 100.0 * self.count / self.counter.limit

    @property
    def near(self) -> bool:
        return self.count * 100 >= NEAR_PERCENT * self.counter.limit


@dataclass(frozen=True)
class Account:
    """A key, the limits of its kind, and what the store holds for it."""

    key: str
    limits: tuple[Limit, ...]
    usage: Usage

    @property
    def kind(self) -> str:
        return self.key.partition(":")[0]

    @property
    def counters(self) -> tuple[Counter, ...]:
        return Applicable(self.key, self.key, self.limits).counters

    def readings(self, limit: Limit | None = None) -> list[Reading]:
        return [Reading(counter, self.usage.counts.get((counter.dimension, counter.per), 0))
                for counter in self.counters if limit is None or counter.name == limit.label]

    @property
    def worst(self) -> Reading | None:
        return max(self.readings(), key=lambda reading: reading.percent, default=None)

    @property
    def listed(self) -> bool:
        worst = self.worst
        return self.usage.lock is not None or bool(self.usage.held) or (worst is not None and worst.near)

    @property
    def empty(self) -> bool:
        usage = self.usage
        return not (any(usage.counts.values()) or usage.clients or usage.recipients or usage.pending or usage.held
                    or usage.lock)


def limits_for(policy: Policy, key: str) -> tuple[Limit, ...]:
    kind = key.partition(":")[0]
    return tuple(limit for limit in policy.ratelimit.limits if limit.key == kind) if kind in KINDS else ()


def account(store: Store, policy: Policy, key: str, now: float) -> Account:
    limits = limits_for(policy, key)
    windows = sorted({float(limit.per) for limit in limits})
    usage = store.usage(key, now, windows)
    # newest first, as the store gives them; members used at the same time in name order (stable output)
    return Account(key, limits, replace(usage, clients=_newest_first(usage.clients),
                                        recipients=_newest_first(usage.recipients)))


def _newest_first(members: tuple[tuple[str, float], ...]) -> tuple[tuple[str, float], ...]:
    return tuple(sorted(members, key=lambda member: (-member[1], member[0])))


# --- text ----------------------------------------------------------------------------------------


def shown(text: str, limit: int = SHOWN) -> str:
    """Client-written text for the terminal: printable, at most `limit` characters ("..." if cut)."""
    return for_log(text, limit) + ("..." if len(text) > limit else "")


def public(url: str) -> str:
    """The store's URL without a password (`redis://:SECRET@host/0` -> `redis://:***@host/0`)."""
    if url.startswith("sqlite:"):
        return url
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def iso(when: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when))


def ago(when: float, now: float) -> str:
    seconds = max(0, int(now - when))
    if seconds < 60:
        return f"{seconds} s ago"
    if seconds < 3600:
        return f"{seconds // 60} min ago"
    return f"{seconds // 3600} h ago"


def at(when: float, now: float) -> str:
    return f"{iso(when)} ({ago(when, now)})"


def window(per: float) -> str:
    seconds = int(per)
    if seconds % 3600 == 0:
        return f"{seconds // 3600} h"
    if seconds % 60 == 0:
        return f"{seconds // 60} min"
    return f"{seconds} s"


def counter_text(reading: Reading) -> str:
    counter = reading.counter
    return (f"{reading.count}/{counter.limit} {counter.dimension} per {window(counter.per)} "
            f"({counter.name})")


def percent_text(reading: Reading) -> str:
    return f"{reading.count * 100 // reading.counter.limit}%"


def lock_text(lock: LockInfo, now: float) -> str:
    return f"locked since {at(lock.since, now)}"


def state_text(usage: Usage, now: float) -> str:
    parts = [lock_text(usage.lock, now)] if usage.lock else []
    if usage.held:
        parts.append(f"{len(usage.held)} held")
    if usage.pending:
        parts.append(f"{usage.pending} pending")
    return ", ".join(parts) or "-"


def table(rows: Sequence[tuple[str, ...]], right: tuple[int, ...] = ()) -> list[str]:
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [cell.rjust(width) if column in right else cell.ljust(width)
                 for column, (cell, width) in enumerate(zip(row, widths, strict=True))]
        lines.append("  ".join(cells).rstrip())
    return lines


def list_text(accounts: list[Account], total: int, store: str, every: bool, now: float) -> str:
    if not accounts:
        if every:
            return f"no key has state in {store}\n"
        return "no login is near a limit, locked or held\n"
    what = "with state" if every else f"near (>= {NEAR_PERCENT} %) or over a limit, locked or held"
    lines = [f"{len(accounts)} of {total} key(s) in {store} {what}:"]
    rows: list[tuple[str, ...]] = [("key", "worst counter", "use", "state")]
    for entry in accounts:
        worst = entry.worst
        rows.append((shown(entry.key), counter_text(worst) if worst else "-", percent_text(worst) if worst else "-",
                     state_text(entry.usage, now)))
    lines += table(rows, right=(2,))
    return "\n".join(lines) + "\n"


def show_text(entry: Account, store: str, now: float) -> str:
    usage = entry.usage
    lines = [f"{shown(entry.key)} (store {store}, at {iso(now)})"]
    if not entry.limits:
        lines.append(f"limits: none with key = \"{entry.kind}\"")
    else:
        rows: list[tuple[str, ...]] = [("  limit", "window", "action", "counts", "count/max", "use")]
        rows += [(f"  {limit.label}", window(limit.per), limit.action, str(reading.counter.dimension),
                  f"{reading.count}/{reading.counter.limit}", percent_text(reading))
                 for limit in entry.limits for reading in entry.readings(limit)]
        lines.append("limits (members in each window, reservations in progress included):")
        lines += table(rows, right=(4, 5))
    lines.append(f"clients ({len(usage.clients)}, last use, newest first):" if usage.clients else "clients: none")
    lines += table([(f"  {shown(address, 60)}", at(when, now)) for address, when in usage.clients]) \
        if usage.clients else []
    if usage.recipients:
        lines.append(f"recent recipients ({len(usage.recipients)}, newest first, at most {RECENT}):")
        lines += table([(f"  {shown(recipient)}", at(when, now)) for recipient, when in usage.recipients])
    else:
        lines.append("recent recipients: none")
    lines.append(f"pending reservations: {usage.pending or 'none'}")
    if usage.held:
        lines.append(f"held messages ({len(usage.held)}, newest first):")
        lines += [f"  {at(when, now)}  {shown(reason)}" for reason, when in usage.held]
    else:
        lines.append("held messages: none")
    if usage.lock:
        lines.append(f"lock: {lock_text(usage.lock, now)}: {shown(usage.lock.reason)}")
    else:
        lines.append("lock: none")
    if entry.empty:
        lines.append(f"the store holds nothing for {shown(entry.key)}")
    return "\n".join(lines) + "\n"


# --- JSON ----------------------------------------------------------------------------------------


def _reading_json(reading: Reading) -> dict[str, Any]:
    return {"dimension": str(reading.counter.dimension), "count": reading.count, "max": reading.counter.limit,
            "percent": round(reading.percent, 1)}


def _lock_json(lock: LockInfo | None) -> dict[str, Any] | None:
    return {"since": iso(lock.since), "reason": lock.reason} if lock else None


def list_json(accounts: list[Account], store: str, every: bool, now: float) -> dict[str, Any]:
    keys = []
    for entry in accounts:
        worst = entry.worst
        keys.append({"key": entry.key, "kind": entry.kind,
                     "worst": None if worst is None else {"limit": worst.counter.name, **_reading_json(worst),
                                                          "window": int(worst.counter.per)},
                     "locked": _lock_json(entry.usage.lock), "held": len(entry.usage.held),
                     "pending": entry.usage.pending})
    return {"store": store, "now": iso(now), "near_percent": NEAR_PERCENT, "all": every, "keys": keys}


def show_json(entry: Account, store: str, now: float) -> dict[str, Any]:
    usage = entry.usage
    return {
        "store": store, "now": iso(now), "key": entry.key, "kind": entry.kind,
        "limits": [{"name": limit.label, "action": limit.action, "window": limit.per,
                    "counters": [_reading_json(reading) for reading in entry.readings(limit)]}
                   for limit in entry.limits],
        "clients": [{"address": address, "last_used": iso(when)} for address, when in usage.clients],
        "recipients": [{"recipient": recipient, "when": iso(when)} for recipient, when in usage.recipients],
        "pending": usage.pending,
        "held": [{"reason": reason, "when": iso(when)} for reason, when in usage.held],
        "locked": _lock_json(usage.lock),
    }


# --- the actions ---------------------------------------------------------------------------------


def _order(entry: Account) -> tuple[bool, float, str]:
    worst = entry.worst
    return (entry.usage.lock is None, -(worst.percent if worst else 0.0), entry.key)


def do_list(store: Store, policy: Policy, args: argparse.Namespace, out: IO[str], now: float) -> int:
    keys = store.keys(now)
    accounts = sorted((entry for entry in (account(store, policy, key, now) for key in keys)
                       if args.all or entry.listed), key=_order)
    if args.json:
        out.write(json.dumps(list_json(accounts, public(store.url), args.all, now), indent=2) + "\n")
    else:
        out.write(list_text(accounts, len(keys), public(store.url), args.all, now))
    return 0


def _hint(args: argparse.Namespace) -> str:
    login = args.login or ""
    if login.startswith(("login:", "client:")):
        kind, _, rest = login.partition(":")
        spelled = f"{PROG} {args.action} " + (shown(rest, 60) if kind == "login" else f"--client {shown(rest, 60)}")
        return f"(LOGIN is a login, not a key: did you mean `{spelled}`?)\n"
    return ""


def do_show(store: Store, policy: Policy, args: argparse.Namespace, out: IO[str], now: float) -> int:
    entry = account(store, policy, key_for(args.login, args.client), now)
    if args.json:
        out.write(json.dumps(show_json(entry, public(store.url), now), indent=2) + "\n")
    else:
        out.write(show_text(entry, public(store.url), now) + (_hint(args) if entry.empty else ""))
    return 0


def _default_reason() -> str:
    try:
        who = os.environ.get("SUDO_USER") or getpass.getuser()
    except (KeyError, OSError):  # no passwd entry for this uid
        who = str(os.getuid())
    return f"locked by {who} with `{PROG} lock`"


def do_lock(store: Store, policy: Policy, args: argparse.Namespace, out: IO[str], now: float) -> int:
    key = key_for(args.login, None)
    earlier = store.lock_info(key)
    if earlier is not None:
        out.write(f"{shown(key)} was already {lock_text(earlier, now)}: {shown(earlier.reason)}; nothing changed\n")
        return 0
    reason = args.reason if args.reason is not None else _default_reason()
    store.lock(key, reason, now)
    effect = ("the milter refuses its recipients with 550 5.7.1" if policy.ratelimit.mode == "enforce"
              else "ratelimit.mode = \"report\": the milter logs its transactions as refused, and refuses none")
    out.write(f"locked {shown(key)} ({shown(reason)}): {effect}; `{PROG} clear {shown(args.login, 60)}` "
              "unlocks it\n")
    return 0


def _cleared(entry: Account, now: float) -> list[str]:
    usage = entry.usage
    parts = [f"the lock (since {iso(usage.lock.since)}: {shown(usage.lock.reason)})"] if usage.lock else []
    counted = [f"{count} {dimension}" for (dimension, _), count in usage.counts.items() if count]
    if counted:
        parts.append("its counts (" + ", ".join(counted) + " in the last " + window(max(per for _, per in
                                                                                         usage.counts)) + ")")
    if usage.pending:
        parts.append(f"{usage.pending} pending reservation(s)")
    if usage.held:
        parts.append(f"{len(usage.held)} held-message record(s)")
    return parts


def do_clear(store: Store, policy: Policy, args: argparse.Namespace, out: IO[str], now: float) -> int:
    key = key_for(args.login, args.client)
    kept = max((float(limit.per) for limit in limits_for(policy, key)), default=0.0)
    before = Account(key, (), store.usage(key, now, (kept,) if kept else ()))
    if not store.clear(key):
        out.write(f"nothing to clear for {shown(key)}: no lock, counts, reservations or held messages\n"
                  + _hint(args))
        return 0
    parts = _cleared(before, now) or ["records outside every window"]
    out.write(f"cleared {shown(key)}: " + "; ".join(parts) + "\n")
    return 0


ACTIONS = {"list": do_list, "show": do_show, "lock": do_lock, "clear": do_clear}


@contextlib.contextmanager
def as_store_owner(url: str) -> Iterator[None]:
    """Root works on a SQLite store as the file's owner (the milter's user): the -wal and -shm
    files SQLite creates beside it must stay the daemon's, and root never acts by path in a
    directory that user controls. A missing file is an error, not created: made by root, the
    daemon could not write it."""
    if not url.startswith("sqlite:"):
        yield
        return
    path = url.removeprefix("sqlite:")
    try:
        owner = os.stat(path)
    except FileNotFoundError:
        raise StoreError(f"{path}: no such file (the milter creates it when it first counts a message; is "
                         "state.store the daemon's?)") from None
    except OSError as error:
        raise StoreError(f"{path}: {error.strerror or error}") from None
    if os.geteuid() != 0:
        yield
        return
    with acting_as(Identity(owner.st_uid, owner.st_gid, user_name(owner.st_uid), group_name(owner.st_gid))):
        yield


def cmd_accounts(args: argparse.Namespace, stdout: IO[str] | None = None, now: float | None = None) -> int:
    out = stdout or sys.stdout
    try:
        policy = load_checked(args.policy, args.overrides).policy
    except PolicyError as error:
        for issue in error.issues:
            print(issue, file=sys.stderr)
        print(f"{PROG}: {args.policy}: {len(error.issues)} error(s); the policy was not accepted", file=sys.stderr)
        return EXIT_INVALID
    if not policy.ratelimit.enabled:
        print(f"{PROG}: ratelimit is disabled in {args.policy} (ratelimit.enabled = false): there are no limits "
              "and no state store to read", file=sys.stderr)
        return EXIT_INVALID
    try:
        if args.action != "list":  # the arguments before the store
            key_for(args.login, getattr(args, "client", None))
    except ValueError as error:
        print(f"{PROG} {args.action}: {error}", file=sys.stderr)
        return EXIT_INVALID
    verb = "read" if args.action in ("list", "show") else "write"
    settings = policy.state
    try:
        with as_store_owner(settings.store):
            store = open_store(settings.store, settings.timeout)
            try:
                return ACTIONS[args.action](store, policy, args, out, time.time() if now is None else now)
            finally:
                store.close()
    except StoreError as error:
        fix = (f"check that it exists and that you may {verb} it (run as root or as {MILTER_USER})"
               if settings.store.startswith("sqlite:") else "check that the server is up and reachable from here")
        print(f"{PROG}: cannot {verb} the state store {public(settings.store)}: {for_log(str(error), 400)}: {fix}",
              file=sys.stderr)
        return EXIT_STORE
    except BrokenPipeError:  # `accounts list | head`
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_STORE
