"""A do-nothing pymilter milter: the floor any Python milter pays through Postfix.

    sudo .venv/bin/python -m benchmarks.nullmilter --socket unix:/path/milter.sock \\
        [--user policy-milter --group postfix]

Every callback but end-of-message is `@Milter.noreply` (Postfix sends the whole session and
message but waits for no reply); end-of-message adds one header, so the milter is negotiated
with the same actions and round trips as a milter that edits headers. Header values arrive as
bytes, as policy-milter takes them. Started as root with --user, it drops to that user before
it creates its unix socket (mode 0660), as policy-milter does: both run as the same user.
SIGTERM stops it (libmilter's signal thread).
"""

from __future__ import annotations

import argparse
import grp
import os
import pwd
from typing import Any

import Milter

NAME = "nullmilter"
HEADER = ("X-Null-Milter", "seen")
SOCKET_UMASK = 0o117  # socket 0660: Postfix connects through the group


class NullMilter(Milter.Base):
    @Milter.noreply
    def connect(self, hostname: str, family: int, hostaddr: Any) -> int:
        return Milter.CONTINUE

    @Milter.noreply
    def hello(self, hostname: str) -> int:
        return Milter.CONTINUE

    @Milter.noreply
    def envfrom(self, mail_from: str, *params: str) -> int:
        return Milter.CONTINUE

    @Milter.noreply
    def envrcpt(self, rcpt: str, *params: str) -> int:
        return Milter.CONTINUE

    @Milter.noreply
    def data(self) -> int:
        return Milter.CONTINUE

    @Milter.decode("bytes")
    @Milter.noreply
    def header(self, name: str, value: bytes) -> int:
        return Milter.CONTINUE

    @Milter.noreply
    def eoh(self) -> int:
        return Milter.CONTINUE

    @Milter.noreply
    def body(self, chunk: bytes) -> int:
        return Milter.CONTINUE

    @Milter.noreply
    def unknown(self, command: str) -> int:
        return Milter.CONTINUE

    def eom(self) -> int:
        self.addheader(*HEADER)
        return Milter.ACCEPT


def drop_privileges(user: str, group: str | None) -> None:
    account = pwd.getpwnam(user)
    gid = grp.getgrnam(group).gr_gid if group else account.pw_gid
    os.initgroups(user, gid)
    os.setgid(gid)
    os.setuid(account.pw_uid)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--socket", required=True, help="unix:/path (or inet:PORT@HOST)")
    parser.add_argument("--user", help="drop to this user before creating the socket (started as root)")
    parser.add_argument("--group", help="with --user: the group the socket gets")
    parser.add_argument("--timeout", type=int, default=600, help="libmilter's I/O timeout, seconds")
    args = parser.parse_args(argv)
    if args.user:
        drop_privileges(args.user, args.group)
    os.umask(SOCKET_UMASK)
    Milter.factory = NullMilter
    Milter.runmilter(NAME, args.socket, timeout=args.timeout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
