"""The TLS certificate of the private Postfix instance.

One job: a fresh self-signed certificate and key for a host name, made with openssl, with the
file modes smtpd accepts (it loads both as root before dropping privileges).
"""

from __future__ import annotations

import os
from pathlib import Path

from tests.integration.processes import run_checked


def make_self_signed(openssl: str, hostname: str, cert_path: Path, key_path: Path) -> None:
    """A 2-day RSA certificate for hostname (CN and subjectAltName) and its unencrypted key."""
    run_checked(
        [
            openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-subj", f"/CN={hostname}", "-addext", f"subjectAltName=DNS:{hostname}",
            "-keyout", str(key_path), "-out", str(cert_path),
        ],
        what="openssl req (self-signed certificate)",
    )  # fmt: skip
    # smtpd loads both as root before dropping privileges: the key stays 0600.
    os.chmod(key_path, 0o600)
    os.chmod(cert_path, 0o644)
