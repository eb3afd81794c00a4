"""Cyrus SASL for the private Postfix instance: the plugins it needs, the sasldb users, the app configs.

One job: what smtpd's AUTH rests on. The users go into a sasldb file (passwords kept in clear,
which CRAM-MD5 needs); contrib's ``sasl/smtpd.conf`` is written as shipped but pointing at that
sasldb, and again as ``smtpd-loose.conf`` offering CRAM-MD5 too, for the test-only loose door
(``smtpd_sasl_path=smtpd-loose`` in postfix_config.py).
"""

from __future__ import annotations

import grp
import os
from collections.abc import Mapping
from pathlib import Path

from tests.integration.postfix_config import CONTRIB_DIR
from tests.integration.processes import run_checked

CONTRIB_SMTPD_CONF = CONTRIB_DIR / "sasl" / "smtpd.conf"
PLUGINS = ("libplain.so", "liblogin.so", "libcrammd5.so", "libsasldb.so")
LOOSE_MECH_LIST = "PLAIN LOGIN CRAM-MD5"


def check_plugins() -> None:
    """RuntimeError unless the Cyrus plugins the doors offer are installed.

    Without them Postfix only logs "no mechanism available" at AUTH time.
    """
    for plugin in PLUGINS:
        if not any(Path("/usr/lib").glob(f"*/sasl2/{plugin}")) and not Path(f"/usr/lib/sasl2/{plugin}").exists():
            raise RuntimeError(f"Cyrus SASL plugin {plugin} missing: apt-get install libsasl2-modules sasl2-bin")


def adapt_sasl_conf(text: str, sasldb_path: Path, mech_list: str | None = None) -> str:
    """The contrib smtpd.conf with the stack's sasldb (and optionally mechanisms)."""
    out, seen = [], set()
    for line in text.splitlines():
        key = line.split(":", 1)[0].strip() if ":" in line and not line.lstrip().startswith("#") else ""
        if key == "sasldb_path":
            line = f"sasldb_path: {sasldb_path}"
        elif key == "mech_list" and mech_list is not None:
            line = f"mech_list: {mech_list}"
        seen.add(key)
        out.append(line)
    missing = {"sasldb_path", "mech_list"} - seen
    if missing:
        raise RuntimeError(f"contrib/postfix/sasl/smtpd.conf lacks {sorted(missing)}")
    return "\n".join(out) + "\n"


def write_sasldb(saslpasswd2: str, sasldb_path: Path, realm: str, users: Mapping[str, str]) -> None:
    """A new sasldb holding users (login -> password) in realm, readable by the postfix group."""
    sasldb_path.unlink(missing_ok=True)
    for user, password in users.items():
        # -p: password from stdin, no newline; saslpasswd2 keeps it in clear
        # (userPassword), which CRAM-MD5 on the loose listener needs.
        run_checked(
            [saslpasswd2, "-p", "-c", "-f", str(sasldb_path), "-u", realm, user],
            what=f"saslpasswd2 for {user}",
            input_data=password.encode(),
        )
    # smtpd opens the sasldb at AUTH time, after dropping to the postfix user.
    os.chown(sasldb_path, 0, grp.getgrnam("postfix").gr_gid)
    os.chmod(sasldb_path, 0o640)


def write_app_configs(sasl_dir: Path, sasldb_path: Path) -> None:
    """The two Cyrus app configs in sasl_dir: smtpd.conf (strict, as contrib) and smtpd-loose.conf."""
    contrib = CONTRIB_SMTPD_CONF.read_text()
    (sasl_dir / "smtpd.conf").write_text(adapt_sasl_conf(contrib, sasldb_path))
    loose = adapt_sasl_conf(contrib, sasldb_path, mech_list=LOOSE_MECH_LIST)
    (sasl_dir / "smtpd-loose.conf").write_text(loose)
