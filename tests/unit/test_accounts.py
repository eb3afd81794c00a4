"""`policy-milter accounts` against a real SQLite store, filled through the store's API (and, at
the end, through the ratelimit check driven by FakeMTA)."""

from __future__ import annotations

import calendar
import io
import json
import os
import pwd
import re
import tempfile
from pathlib import Path

import Milter
import pytest

from policymilter.accounts import as_store_owner, cmd_accounts, public
from policymilter.checks.ratelimit.counting import login_key
from policymilter.cli import build_parser, main
from policymilter.state import Dimension, Reservation, open_store
from policymilter.state.model import RECENT, SEPARATOR
from policymilter.state.sqlitestore import SqliteStore
from tests.conftest import DEFAULT_POLICY
from tests.milter.test_ratelimit import send, service, submission

NOW = float(calendar.timegm((2026, 12, 1, 10, 0, 0)))  # 2026-12-01T10:00:00Z
LIMITS = ('ratelimit.limits=[{messages = 3, recipients = 10, per = 3600, name = "hourly"}, '
          '{messages = 100, clients = 4, per = 86400, action = "hold", name = "daily"}, '
          '{key = "client", messages = 5, per = 600, name = "anon"}]')


def store_url(tmp_path: Path) -> str:
    return f"sqlite:{tmp_path}/s.db"


def accounts(tmp_path: Path, *argv: str, overrides: tuple[str, ...] = (LIMITS,), now: float | None = NOW
             ) -> tuple[int, str]:
    """The command's exit status and standard output (stderr: capsys)."""
    options = [part for override in (f"state.store=\"{store_url(tmp_path)}\"", *overrides)
               for part in ("-o", override)]
    args = build_parser().parse_args(["accounts", "--policy", str(DEFAULT_POLICY), *options, *argv])
    out = io.StringIO()
    return cmd_accounts(args, out, now=now), out.getvalue()


def sent(store: SqliteStore, key: str, txn: str, *rcpts: str, client: str = "198.51.100.7", when: float = NOW,
         commit: bool = True) -> None:
    """One transaction counted (or, commit=False, still in progress) as the check records it."""
    members = {Dimension.MESSAGES: (txn,), Dimension.RECIPIENTS: tuple(f"{txn}{SEPARATOR}{r}" for r in rcpts),
               Dimension.DOMAINS: tuple(sorted({r.rpartition("@")[2] for r in rcpts})),
               Dimension.CLIENTS: (client,)}
    reservation = Reservation(key, txn, members, (), 86400.0)
    assert store.reserve(reservation, when) is None
    if commit:
        assert store.commit(reservation, when) is None


@pytest.fixture
def store(tmp_path: Path) -> SqliteStore:
    """alice at her hourly limit, bob below 80 %, carol locked, dave with a held message, erin
    with a transaction in progress, a client at 80 % of its limit."""
    db = SqliteStore(f"{tmp_path}/s.db")
    for n in range(3):
        sent(db, "login:alice", f"a{n}", f"bob{n}@elsewhere.test", "carol@other.test",
             client="198.51.100.7" if n < 2 else "2001:db8:1:2::/64", when=NOW - 600 + 60 * n)
    sent(db, "login:bob", "b0", "x@elsewhere.test", when=NOW - 300)
    sent(db, "login:bob", "b1", "y@elsewhere.test", when=NOW - 200)
    db.lock("login:carol", "limit daily reached: 4 clients of 4 clients per 86400 s", NOW - 7200)
    db.hold("login:dave", "limit daily reached: 100 messages of 100 messages per 86400 s", NOW - 90)
    sent(db, "login:erin", "e0", "z@elsewhere.test", when=NOW - 10, commit=False)
    for n in range(4):
        sent(db, "client:192.0.2.9", f"c{n}", "user@example.org", client="192.0.2.9", when=NOW - 30)
    return db


def test_list_near_over_locked_held(store, tmp_path):
    status, out = accounts(tmp_path, "list")
    assert status == 0
    assert out.splitlines() == [
        f"4 of 6 key(s) in {store_url(tmp_path)} near (>= 80 %) or over a limit, locked or held:",
        "key               worst counter                    use  state",
        "login:carol       0/3 messages per 1 h (hourly)     0%  locked since 2026-12-01T08:00:00Z (2 h ago)",
        "login:alice       3/3 messages per 1 h (hourly)   100%  -",
        "client:192.0.2.9  4/5 messages per 10 min (anon)   80%  -",
        "login:dave        0/3 messages per 1 h (hourly)     0%  1 held",
    ]


def test_list_all_adds_every_key_with_state(store, tmp_path):
    status, out = accounts(tmp_path, "list", "--all")
    assert status == 0
    lines = out.splitlines()
    assert lines[0] == f"6 of 6 key(s) in {store_url(tmp_path)} with state:"
    assert [line.split()[0] for line in lines[2:]] == [
        "login:carol", "login:alice", "client:192.0.2.9", "login:bob", "login:erin", "login:dave"]
    assert lines[4 + 2] == "login:erin        1/3 messages per 1 h (hourly)    33%  1 pending"


def test_list_json(store, tmp_path):
    status, out = accounts(tmp_path, "list", "--json")
    assert status == 0
    result = json.loads(out)
    assert {k: result[k] for k in ("store", "now", "near_percent", "all")} == {
        "store": store_url(tmp_path), "now": "2026-12-01T10:00:00Z", "near_percent": 80, "all": False}
    assert [entry["key"] for entry in result["keys"]] == ["login:carol", "login:alice", "client:192.0.2.9",
                                                          "login:dave"]
    carol, alice = result["keys"][:2]
    assert alice == {"key": "login:alice", "kind": "login", "locked": None, "held": 0, "pending": 0,
                     "worst": {"limit": "hourly", "dimension": "messages", "count": 3, "max": 3, "percent": 100.0,
                               "window": 3600}}
    assert carol["locked"] == {"since": "2026-12-01T08:00:00Z",
                               "reason": "limit daily reached: 4 clients of 4 clients per 86400 s"}


def test_list_empty(tmp_path):
    SqliteStore(f"{tmp_path}/s.db").keys(NOW)  # the file exists, with nothing in it
    assert accounts(tmp_path, "list") == (0, "no login is near a limit, locked or held\n")


def test_show_normalises_the_login(store, tmp_path):
    status, out = accounts(tmp_path, "show", "ALICE")
    assert status == 0
    assert out.splitlines() == [
        f"login:alice (store {store_url(tmp_path)}, at 2026-12-01T10:00:00Z)",
        "limits (members in each window, reservations in progress included):",
        "  limit   window  action    counts      count/max   use",
        "  hourly  1 h     tempfail  messages          3/3  100%",
        "  hourly  1 h     tempfail  recipients       6/10   60%",
        "  daily   24 h    hold      messages        3/100    3%",
        "  daily   24 h    hold      clients           2/4   50%",
        "clients (2, last use, newest first):",
        "  2001:db8:1:2::/64  2026-12-01T09:52:00Z (8 min ago)",
        "  198.51.100.7       2026-12-01T09:51:00Z (9 min ago)",
        "recent recipients (6, newest first, at most 20):",
        "  bob2@elsewhere.test  2026-12-01T09:52:00Z (8 min ago)",
        "  carol@other.test     2026-12-01T09:52:00Z (8 min ago)",
        "  bob1@elsewhere.test  2026-12-01T09:51:00Z (9 min ago)",
        "  carol@other.test     2026-12-01T09:51:00Z (9 min ago)",
        "  bob0@elsewhere.test  2026-12-01T09:50:00Z (10 min ago)",
        "  carol@other.test     2026-12-01T09:50:00Z (10 min ago)",
        "pending reservations: none",
        "held messages: none",
        "lock: none",
    ]


def test_show_lock_held_pending_and_json(store, tmp_path):
    _, carol = accounts(tmp_path, "show", "carol")
    assert carol.splitlines()[-1] == ("lock: locked since 2026-12-01T08:00:00Z (2 h ago): limit daily reached: "
                                      "4 clients of 4 clients per 86400 s")
    _, dave = accounts(tmp_path, "show", "dave")
    assert ("held messages (1, newest first):\n  2026-12-01T09:58:30Z (1 min ago)  limit daily reached: "
            "100 messages of 100 messages per 86400 s\n") in dave
    _, erin = accounts(tmp_path, "show", "erin")
    assert erin.splitlines()[3].split() == ["hourly", "1", "h", "tempfail", "messages", "1/3", "33%"]
    assert "pending reservations: 1" in erin.splitlines()
    status, out = accounts(tmp_path, "show", "Alice", "--json")
    result = json.loads(out)
    assert status == 0 and result["key"] == "login:alice" and result["kind"] == "login"
    assert result["limits"][0] == {"name": "hourly", "action": "tempfail", "window": 3600, "counters": [
        {"dimension": "messages", "count": 3, "max": 3, "percent": 100.0},
        {"dimension": "recipients", "count": 6, "max": 10, "percent": 60.0}]}
    assert result["clients"] == [{"address": "2001:db8:1:2::/64", "last_used": "2026-12-01T09:52:00Z"},
                                 {"address": "198.51.100.7", "last_used": "2026-12-01T09:51:00Z"}]
    assert result["recipients"][0] == {"recipient": "bob2@elsewhere.test", "when": "2026-12-01T09:52:00Z"}
    assert (result["pending"], result["held"], result["locked"]) == (0, [], None)


def test_show_keeps_the_newest_recipients(tmp_path):
    db = SqliteStore(f"{tmp_path}/s.db")
    for n in range(RECENT + 5):
        sent(db, "login:alice", f"t{n}", f"r{n}@elsewhere.test", when=NOW - 100 + n)
    result = json.loads(accounts(tmp_path, "show", "alice", "--json")[1])
    assert [r["recipient"] for r in result["recipients"]] == [f"r{n}@elsewhere.test"
                                                              for n in range(RECENT + 4, 4, -1)]


def test_show_client_key_and_an_unknown_login(store, tmp_path):
    _, client = accounts(tmp_path, "show", "--client", "192.0.2.9")
    assert client.splitlines()[3].split() == ["anon", "10", "min", "tempfail", "messages", "4/5", "80%"]
    _, v6 = accounts(tmp_path, "show", "--client", "2001:db8:1:2::99")  # its /64, as the check counts it
    assert v6.splitlines()[0].startswith("client:2001:db8:1:2::/64 ")
    status, out = accounts(tmp_path, "show", "login:alice")
    assert status == 0 and out.splitlines()[-2:] == [
        "the store holds nothing for login:login:alice",
        "(LOGIN is a login, not a key: did you mean `policy-milter accounts show alice`?)"]


def test_bad_client_address(store, tmp_path, capsys):
    assert accounts(tmp_path, "show", "--client", "not-an-ip") == (2, "")
    assert capsys.readouterr().err == "policy-milter accounts show: --client 'not-an-ip': not an IP address\n"


def test_lock_then_clear(store, tmp_path):
    status, out = accounts(tmp_path, "lock", "Bob", "--reason", "phished, ticket 4711")
    assert (status, out) == (0, "locked login:bob (phished, ticket 4711): the milter refuses its recipients with "
                                "550 5.7.1; `policy-milter accounts clear Bob` unlocks it\n")
    lock = store.lock_info("login:bob")
    assert lock is not None and lock.since == NOW and lock.reason == "phished, ticket 4711"
    assert accounts(tmp_path, "lock", "bob")[1] == (
        "login:bob was already locked since 2026-12-01T10:00:00Z (0 s ago): phished, ticket 4711; nothing changed\n")
    assert accounts(tmp_path, "list")[1].splitlines()[2].startswith("login:bob ")  # locked first (then carol)
    status, out = accounts(tmp_path, "clear", "BOB")
    assert (status, out) == (0, "cleared login:bob: the lock (since 2026-12-01T10:00:00Z: phished, ticket 4711); "
                                "its counts (2 messages, 2 recipients, 1 domains, 1 clients in the last 24 h)\n")
    assert store.lock_info("login:bob") is None and "login:bob" not in store.keys(NOW)
    assert accounts(tmp_path, "clear", "bob") == (
        0, "nothing to clear for login:bob: no lock, counts, reservations or held messages\n")


def test_clear_reservations_held_and_client_keys(store, tmp_path):
    assert accounts(tmp_path, "clear", "erin")[1] == (
        "cleared login:erin: its counts (1 messages, 1 recipients, 1 domains, 1 clients in the last 24 h); "
        "1 pending reservation(s)\n")
    assert accounts(tmp_path, "clear", "dave")[1] == "cleared login:dave: 1 held-message record(s)\n"
    assert accounts(tmp_path, "clear", "--client", "192.0.2.9")[1] == (
        "cleared client:192.0.2.9: its counts (4 messages, 4 recipients, 1 domains, 1 clients in the last 10 min)\n")
    assert store.keys(NOW) == ["login:alice", "login:bob", "login:carol"]


def test_disabled_ratelimit_exits_2(tmp_path, capsys):
    assert accounts(tmp_path, "list", overrides=("ratelimit.enabled=false",)) == (2, "")
    assert capsys.readouterr().err == (
        f"policy-milter accounts: ratelimit is disabled in {DEFAULT_POLICY} (ratelimit.enabled = false): there are "
        "no limits and no state store to read\n")


@pytest.mark.parametrize("action", [("list",), ("show", "alice"), ("lock", "alice"), ("clear", "alice")])
def test_unreadable_store_exits_1_with_one_line(tmp_path, capsys, action):
    (tmp_path / "s.db").write_bytes(b"this is not a SQLite file " * 100)
    assert accounts(tmp_path, *action) == (1, "")
    verb = "read" if action[0] in ("list", "show") else "write"
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"policy-milter accounts: cannot {verb} the state store {store_url(tmp_path)}: ")
    assert "file is not a database" in err
    assert err.endswith(f": check that it exists and that you may {verb} it (run as root or as policy-milter)\n")


def test_missing_store_is_not_created(tmp_path, capsys):
    assert accounts(tmp_path, "lock", "alice") == (1, "")
    assert "s.db: no such file (the milter creates it when it first counts a message" in capsys.readouterr().err
    assert not (tmp_path / "s.db").exists()


def test_invalid_policy_exits_2(tmp_path, capsys):
    assert accounts(tmp_path, "list", overrides=("state.store=\"sqlite:relative.db\"",)) == (2, "")
    assert "the SQLite file must be an absolute path" in capsys.readouterr().err


HOSTILE = "\x1b[31mEVIL\x1b]0;owned\x07\r\nforged line\u202e" + "A" * 1000


def test_hostile_login_is_printed_safely(tmp_path):
    db = SqliteStore(f"{tmp_path}/s.db")
    key = login_key(HOSTILE)
    sent(db, key, "h0", "\x1b[2Jvictim\r\n@elsewhere.test", when=NOW - 5)
    db.lock(key, f"reason quoting {HOSTILE}", NOW - 5)
    outputs = [accounts(tmp_path, "list")[1], accounts(tmp_path, "show", HOSTILE)[1],
               accounts(tmp_path, "lock", HOSTILE)[1], accounts(tmp_path, "clear", HOSTILE)[1]]
    for out in outputs:
        assert not re.search(r"[\x00-\x09\x0b-\x1f\x7f\u202e]", out), out
        assert max(len(line) for line in out.splitlines()) < 600
    listed, shown, locked, cleared = outputs
    # 200 characters of the key (39 before the A's), then "..."
    assert listed.splitlines()[2].startswith("login:?[31mevil?]0;owned???forged line?" + "a" * 161 + "...  1/3 ")
    assert "\n  ?[2Jvictim??@elsewhere.test  2026-12-01T09:59:55Z (5 s ago)\n" in shown
    assert locked.startswith("login:?[31mevil") and "was already locked" in locked
    assert cleared.startswith("cleared login:?[31mevil")
    assert db.keys(NOW) == []


def test_hostile_login_in_json_is_whole_and_escaped(tmp_path):
    db = SqliteStore(f"{tmp_path}/s.db")
    db.lock(login_key(HOSTILE), "x", NOW)
    out = accounts(tmp_path, "list", "--json")[1]
    assert out.isascii() and "\x1b" not in out
    assert json.loads(out)["keys"][0]["key"] == login_key(HOSTILE)


# --- with the check: what the milter does after `accounts lock` and `accounts clear` ----------------


def cli(tmp_path: Path, *argv: str) -> int:
    return main(["accounts", "--policy", str(DEFAULT_POLICY), "-o", f"state.store=\"{store_url(tmp_path)}\"",
                 "-o", 'ratelimit.limits=[{messages = 2, per = 3600, name = "hourly"}]', *argv])


def test_lock_and_clear_through_the_milter(tmp_path, logwatch, capsys):
    svc = service(tmp_path, 'ratelimit.limits=[{messages = 2, per = 3600, name = "hourly"}]')
    mta = submission(svc)
    assert [send(mta, "bob@elsewhere.test")[0] for _ in range(3)] == [Milter.ACCEPT] * 2 + [Milter.TEMPFAIL]
    assert cli(tmp_path, "list") == 0
    listed = capsys.readouterr().out.splitlines()
    assert listed[2] == "login:alice  2/2 messages per 1 h (hourly)  100%  -"
    assert cli(tmp_path, "lock", "ALICE", "--reason", "helpdesk ticket 12") == 0
    answer, replies = send(submission(svc), "bob@elsewhere.test")
    # refused at each RCPT (a lock set during a transaction applies at its next RCPT too)
    assert answer != Milter.ACCEPT and replies[0].startswith("550 5.7.1 Your account alice is locked since")
    assert cli(tmp_path, "show", "alice") == 0
    shown = capsys.readouterr().out
    assert re.search(r"^lock: locked since \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ \(\d+ s ago\): helpdesk ticket 12$",
                     shown, re.MULTILINE)
    assert re.search(r"^  198\.51\.100\.7  \S+Z \(\d+ s ago\)$", shown, re.MULTILINE)
    assert cli(tmp_path, "clear", "alice") == 0
    assert capsys.readouterr().out.startswith("cleared login:alice: the lock (since ")
    assert [send(submission(svc), "bob@elsewhere.test")[0] for _ in range(3)] == [Milter.ACCEPT] * 2 + [
        Milter.TEMPFAIL]
    assert open_store(store_url(tmp_path)).lock_info("login:alice") is None
    logwatch.expect("limit_exceeded")


def test_root_works_on_the_store_as_its_owner(tmp_path, capsys):
    """SQLite's -wal and -shm files must stay the daemon's: root opens the store as the file's
    owner. Shown by a directory only root may write: as its owner (nobody) SQLite cannot make
    the -wal file there, where root could."""
    nobody = pwd.getpwnam("nobody")
    with tempfile.TemporaryDirectory(dir="/tmp", prefix="accounts-owner-") as directory:
        os.chmod(directory, 0o755)
        path = Path(directory) / "s.db"
        SqliteStore(str(path)).keys(NOW)  # made (and closed: no -wal left) by root
        for made in (path, Path(f"{path}.lock")):  # the file and the writers' lock beside it
            os.chown(made, nobody.pw_uid, nobody.pw_gid)
        with as_store_owner(f"sqlite:{path}"):
            assert (os.geteuid(), os.getegid(), os.getgroups()) == (nobody.pw_uid, nobody.pw_gid, [nobody.pw_gid])
        assert os.geteuid() == 0
        status = main(["accounts", "--policy", str(DEFAULT_POLICY), "-o", f"state.store=\"sqlite:{path}\"",
                       "lock", "alice"])
        assert status == 1
        assert "attempt to write a readonly database" in capsys.readouterr().err
        assert sorted(os.listdir(directory)) == ["s.db", "s.db.lock"]
        os.chown(directory, nobody.pw_uid, nobody.pw_gid)  # as the milter's StateDirectory is
        assert main(["accounts", "--policy", str(DEFAULT_POLICY), "-o", f"state.store=\"sqlite:{path}\"",
                     "lock", "alice"]) == 0
        assert SqliteStore(str(path)).lock_info("login:alice") is not None


@pytest.mark.parametrize(("url", "printed"), [
    ("redis://:s3cret@10.0.0.5:6379/0", "redis://:***@10.0.0.5:6379/0"),
    ("rediss://milter:s3cret@redis.example.org/1", "rediss://milter:***@redis.example.org/1"),
    ("redis://10.0.0.5:6379/0", "redis://10.0.0.5:6379/0"),
    ("sqlite:/var/lib/policy-milter/state.db", "sqlite:/var/lib/policy-milter/state.db"),
])
def test_a_store_password_is_never_printed(url, printed):
    assert public(url) == printed
