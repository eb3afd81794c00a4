"""The daemon's privileges end to end (issue 8, items 14 and 15), through a real Postfix on 587.

The milter is started as root with `--user policy-milter --group postfix`, as in production:
- it reads its resources (signing keys, the sender map) as that user, at start as at reload;
- a key file belongs to that user, or it is refused with an error naming file, owner and fix;
- its socket is created as that user, and root never touches the socket directory by path.
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import shutil
import signal
import smtplib
import stat
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from policymilter import signing_keys
from tests.conftest import DEFAULT_POLICY, OFFLINE
from tests.integration.stack import MailStack, transaction, unverified_tls_context

pytestmark = pytest.mark.integration

MILTER = pwd.getpwnam("policy-milter")  # scripts/test creates it
SOCKET_GROUP = grp.getgrnam("postfix")
NOBODY = pwd.getpwnam("nobody")
ROOT = pwd.getpwnam("root")
# The checks that need DNS or scanners have their own end-to-end tests; 587 runs sender + signing.
OPTIONS = [part for option in OFFLINE for part in ("-o", option)]
SIGNING_RETRY = "4.7.1 Temporary problem signing this message: please try again later"
SUMMARY = re.compile(r"^\S+ info conn=\S+ summary .*$", re.MULTILINE)


def daemon(policy: Path, socket_path: Path, *extra: str, runner: tuple[str, ...] = ("-m", "policymilter")) -> list[str]:
    return [sys.executable, *runner, "run", "--policy", str(policy), "--socket", f"unix:{socket_path}",
            "--user", MILTER.pw_name, "--group", SOCKET_GROUP.gr_name, "--log-level", "debug", *OPTIONS, *extra]


def give(path: Path, account: pwd.struct_passwd) -> Path:
    os.chown(path, account.pw_uid, account.pw_gid)
    return path


@dataclass
class World:
    """Policy, sender map and keys in a directory the milter's user can read (reloads must work)."""

    directory: Path

    @property
    def policy(self) -> Path:
        return self.directory / "policy"

    def key(self, name: str, owner: pwd.struct_passwd, directory: Path | None = None) -> Path:
        path = (directory or self.directory / "keys") / name
        signing_keys.write_key_file(path, signing_keys.generate_private_key(signing_keys.KeyType.RSA))
        return give(path, owner)

    def write_policy(self, keys: dict[str, Path]) -> Path:
        entries = "\n".join(f'"{domain}" = [{{ selector = "s1", key_file = "{path}" }}]'
                            for domain, path in keys.items())
        (self.policy / "50-local.toml").write_text(f"""\
[site]
domains = ["example.org", "example.net"]

[sender]
map_file = "{self.directory / 'senders'}"

[signing.keys]
{entries}
""")
        return self.policy


@pytest.fixture(scope="module")
def stack() -> Iterator[MailStack]:
    # Not under pytest's basetemp: every pytest session that starts on this machine resets
    # /tmp/pytest-of-USER to 0700, and the milter's user must keep reaching these files.
    base = Path(tempfile.mkdtemp(prefix="policy-milter-security-"))
    os.chmod(base, 0o755)
    try:
        with MailStack(base / "stack") as running:
            yield running
    finally:
        shutil.rmtree(base)


@pytest.fixture
def world(stack: MailStack) -> Iterator[World]:
    # Inside the stack's directory: its ancestors already let other users search them.
    directory = stack.directory / f"world-{uuid.uuid4().hex[:8]}"
    directory.mkdir(mode=0o755)
    world = World(directory)
    world.policy.mkdir(mode=0o755)
    shutil.copy(DEFAULT_POLICY / "00-default.toml", world.policy / "00-default.toml")
    (directory / "senders").write_text("alice @example.org @example.net\n")
    keys = directory / "keys"
    keys.mkdir(mode=0o700)
    give(keys, MILTER)
    yield world
    shutil.rmtree(directory)


@pytest.fixture
def milter(stack: MailStack) -> Iterator[MailStack]:
    """The stack; whatever milter a test starts is stopped (SIGTERM, exit 0) afterwards."""
    yield stack
    if stack.milter_running:
        assert stack.stop_milter(signal.SIGTERM) == 0


def submit(stack: MailStack, sender: str) -> tuple[int, str, bytes | None]:
    """Alice submits on 587 (STARTTLS, AUTH PLAIN); the reply, and the delivered copy if accepted."""
    subject = f"t-{uuid.uuid4().hex}"
    raw = (f"From: {sender}\r\nTo: friend@elsewhere.test\r\nSubject: {subject}\r\n"
           f"Message-ID: <{subject}@example.org>\r\n\r\nhello\r\n").encode()
    with smtplib.SMTP("127.0.0.1", stack.ports["submission"], timeout=30) as client:
        client.starttls(context=unverified_tls_context())
        client.login("alice", stack.users["alice"])
        code, text = transaction(client, sender, "friend@elsewhere.test", raw)
    copy = stack.wait_delivered(lambda d: f"Subject: {subject}".encode() in d.data).data if code == 250 else None
    return code, text, copy


def reload(stack: MailStack) -> None:
    """SIGUSR1, and wait until every worker has the new policy: the parent logs `reloaded` (info)
    before it passes the reload on, each worker when it has it (debug)."""
    log = stack.milter_log()
    workers = int(re.findall(r" started .*workers=(\d+)", log)[-1])
    before = log.count(" debug reloaded ")
    stack.signal_milter(signal.SIGUSR1)
    deadline = time.monotonic() + 20
    while stack.milter_log().count(" debug reloaded ") < before + workers:
        assert time.monotonic() < deadline, f"no reload in the milter log:\n{stack.milter_log()[-2000:]}"
        time.sleep(0.05)


def log_since(stack: MailStack, mark: int) -> str:
    return stack.milter_log()[mark:]


# --- item 14: resources are read as the milter's user, at start as at reload -------------------

def test_a_key_only_root_can_read_gives_the_same_tempfail_at_start_and_after_reload(milter, world):
    hidden = world.directory / "root-only"
    hidden.mkdir(mode=0o700)  # root's: the milter's user cannot enter it, root reads the key
    key = world.key("example.org.s1.key", MILTER, directory=hidden)
    milter.start_milter(daemon(world.write_policy({"example.org": key}), milter.milter_socket))
    mark = len(milter.milter_log())
    at_start = submit(milter, "alice@example.org")
    reload(milter)
    after_reload = submit(milter, "alice@example.org")

    assert at_start[:2] == after_reload[:2], "the key was usable at start (read as root) but not after reload"
    assert at_start[:2] == (451, SIGNING_RETRY)
    reasons = [line for line in SUMMARY.findall(log_since(milter, mark)) if "signing" in line]
    assert len(reasons) == 2
    assert all(f"cannot sign for example.org: {key}: cannot read the key file (Permission denied)" in line
               for line in reasons)


@pytest.mark.parametrize("owner", [NOBODY, ROOT], ids=["nobody", "root"])
def test_a_key_owned_by_another_user_is_refused_at_start_and_at_reload(milter, world, owner):
    stranger = world.key("example.org.s1.key", owner)
    own = world.key("example.net.s1.key", MILTER)
    ownership = f"{stranger}: owned by {owner.pw_name}, not by policy-milter, the user the milter runs as"
    fix = f"chown policy-milter {stranger} && chmod 600 {stranger}"
    mark = len(milter.milter_log())
    milter.start_milter(daemon(world.write_policy({"example.org": stranger, "example.net": own}),
                               milter.milter_socket))
    for phase in ("start", "reload"):
        if phase == "reload":
            mark = len(milter.milter_log())
            reload(milter)
        refused, signed = submit(milter, "alice@example.org"), submit(milter, "alice@example.net")
        log = log_since(milter, mark)
        # A per-domain problem (signing.on_missing_key): example.net is still signed.
        assert refused[:2] == (451, SIGNING_RETRY), phase
        assert signed[0] == 250 and signed[2] is not None and b"d=example.net" in signed[2], phase
        [unusable] = [line for line in log.splitlines() if " key_unusable " in line]
        assert ownership in unusable and fix in unusable, phase
        [summary] = [line for line in SUMMARY.findall(log) if "alice@example.org" in line]
        assert f"cannot sign for example.org: {ownership}" in summary and fix in summary, phase


def test_start_reads_the_sender_map_as_the_milter_user(stack, world):
    """A map root can read but the milter's user cannot would fail every reload: it fails the start."""
    hidden = world.directory / "root-only"
    hidden.mkdir(mode=0o700)
    senders = hidden / "senders"
    senders.write_text("alice @example.org\n")
    socket_path = world.directory / "sock" / "milter.sock"
    socket_path.parent.mkdir()
    give(socket_path.parent, MILTER)
    run = subprocess.Popen(daemon(world.write_policy({}), socket_path, "-o", f'sender.map_file="{senders}"'),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _, stderr = run.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        run.kill()
        run.communicate()
        pytest.fail("the milter started although its user cannot read the sender map")
    assert run.returncode == 2
    assert f"{senders}:0: sender.map_file: cannot read: " in stderr and "Permission denied" in stderr
    assert "the policy is not valid; not starting" in stderr
    assert not os.path.lexists(socket_path)  # nothing left behind


# --- item 15: the socket is created as the milter's user; root never follows a path there ------

def test_the_socket_is_created_as_the_milter_user_and_root_never_touches_it_by_path(milter, world):
    target = world.directory / "root-file"  # what the owner of the socket directory aims at
    target.write_text("root's\n")
    os.chmod(target, 0o600)
    spy_log = world.directory / "spy.log"
    env = {"SPY_SOCKET": str(milter.milter_socket), "SPY_TARGET": str(target), "SPY_LOG": str(spy_log)}
    command = daemon(world.write_policy({}), milter.milter_socket, runner=("-m", "tests.integration.rootspy"))

    try:
        milter.start_milter(command, env=env, timeout=10)
        started: Exception | None = None
    except RuntimeError as error:  # the socket was swapped: Postfix's user cannot connect
        started = error
    after = os.lstat(target)
    assert (after.st_uid, after.st_gid, stat.S_IMODE(after.st_mode)) == (0, 0, 0o600), (
        "root chmod/chown'ed the socket path after the socket directory's owner swapped it for a link")
    assert target.read_text() == "root's\n"
    assert not spy_log.exists(), f"path-based calls as root in the socket directory:\n{spy_log.read_text()}"
    assert started is None, started

    info = os.lstat(milter.milter_socket)
    assert stat.filemode(info.st_mode) == "srw-rw----"
    assert (info.st_uid, info.st_gid) == (MILTER.pw_uid, SOCKET_GROUP.gr_gid)
    code, _, copy = submit(milter, "alice@example.org")  # nobody interferes: mail flows
    assert code == 250 and copy is not None
    assert milter.stop_milter(signal.SIGTERM) == 0
    assert not os.path.lexists(milter.milter_socket)  # removed at exit, by the milter's user

    # A link planted at the socket path is neither followed nor replaced: the start is refused.
    milter.milter_socket.symlink_to(target)
    try:
        planted = subprocess.run(command, env={**os.environ, **env}, capture_output=True, text=True, timeout=30,
                                 check=False)
        assert planted.returncode == 1
        assert f"{milter.milter_socket} is a symbolic link, not a socket" in planted.stderr
        assert os.readlink(milter.milter_socket) == str(target)
    finally:
        milter.milter_socket.unlink()
    after = os.lstat(target)
    assert (after.st_uid, after.st_gid, stat.S_IMODE(after.st_mode)) == (0, 0, 0o600)
    assert not spy_log.exists(), spy_log.read_text()


def test_a_socket_directory_the_milter_user_cannot_write_is_refused_with_the_fix(world):
    directory = world.directory / "root-socket-dir"
    directory.mkdir(mode=0o755)  # root's: the socket would have to be made by root and chowned
    socket_path = directory / "milter.sock"
    run = subprocess.Popen(daemon(world.write_policy({}), socket_path), stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    try:
        _, stderr = run.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        run.terminate()
        run.communicate()
        pytest.fail(f"the milter started with its socket in {directory}, which policy-milter cannot write")
    assert run.returncode == 1
    assert f"{directory}: policy-milter cannot create the socket here" in stderr
    assert f"install -d -o policy-milter -g postfix -m 0750 {directory}" in stderr
    assert not os.path.lexists(socket_path)
