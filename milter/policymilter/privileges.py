"""Who the milter runs as, and file access as that user while the process is still root.

The daemon reads its resources (signing keys, the sender map) and creates its unix socket as
the user it drops to, never as root: so what works at start works at every reload, and root
never acts by path inside a directory that user controls. `check-policy` uses the same switch
to judge those files as the daemon will see them.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
from collections.abc import Iterator
from dataclasses import dataclass

MILTER_USER = "policy-milter"  # the account scripts/install creates


@dataclass(frozen=True)
class Identity:
    """Who the daemon becomes after binding its socket (or whom a command judges files for)."""

    uid: int
    gid: int
    name: str
    group: str


def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def _lookup(user: str, group: str | None) -> Identity:
    try:
        account = pwd.getpwnam(user)
    except KeyError:
        raise ValueError(f"--user {user!r}: no such user (create it, e.g. `adduser --system {user}`)") from None
    try:
        gid = grp.getgrnam(group).gr_gid if group else account.pw_gid
    except KeyError:
        raise ValueError(f"--group {group!r}: no such group") from None
    return Identity(account.pw_uid, gid, user, group or group_name(gid))


def resolve_identity(user: str | None, group: str | None) -> Identity | None:
    """`run --user/--group`, looked up before anything is bound; errors name what to fix."""
    if user is None and group is None:
        return None
    if user is None:
        raise ValueError("--group needs --user too: the milter must not keep running as root")
    if os.geteuid() != 0:
        raise PermissionError("--user/--group need the milter to be started as root")
    return _lookup(user, group)


def milter_identity(user: str | None, group: str | None = None) -> Identity:
    """The user a command judges the milter's files for (`check-policy`, `dns-records`).

    Default: run as root, the `policy-milter` account when it exists (the daemon is meant to
    drop to it); otherwise the current user.
    """
    if user is None:
        user = user_name(os.geteuid())
        if os.geteuid() == 0:
            with contextlib.suppress(KeyError):
                user = pwd.getpwnam(MILTER_USER).pw_name
    return _lookup(user, group)


@contextlib.contextmanager
def acting_as(identity: Identity | None) -> Iterator[None]:
    """Access files as `identity` will after `drop_privileges` (same uid, gid and group list).

    Only the effective ids change, so root can come back: used around the socket's creation
    and, in check-policy, around reading the resources. No-op for None, or for the current
    user when not root (who could not switch anyway); root as root still takes the group.
    """
    euid = os.geteuid()
    if identity is None or (identity.uid == euid and euid != 0):
        yield
        return
    if euid != 0:
        raise PermissionError(f"only root can read files as {identity.name}")
    egid, groups = os.getegid(), os.getgroups()
    os.setgroups([identity.gid])
    os.setegid(identity.gid)
    os.seteuid(identity.uid)
    try:
        yield
    finally:
        os.seteuid(0)  # the saved set-user-ID is still 0
        os.setegid(egid)
        os.setgroups(groups)


def drop_privileges(identity: Identity | None) -> None:
    """Become `identity` for good: supplementary groups first, while still allowed to set them."""
    if identity is None:
        return
    os.setgroups([identity.gid])
    os.setgid(identity.gid)
    os.setuid(identity.uid)
