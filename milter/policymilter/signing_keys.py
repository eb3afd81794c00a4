"""DKIM key files: what `dkim-keygen` makes and the daemon signs with.

A key file holds what dkimpy's `dkim.sign(privkey=...)` takes, so keys move freely between us
and dkimpy's tools:
- RSA: PEM, PKCS#1 (`-----BEGIN RSA PRIVATE KEY-----`), unencrypted;
- Ed25519: one line, base64 of the raw 32-byte private seed (what `dknewkey --ktype ed25519` writes).
Read, a key is a `cryptography` private key (OpenSSL's), which checks/signing/sign.py signs with.
The DNS records a site publishes for them are publish.py's.
"""

from __future__ import annotations

import base64
import errno
import json
import os
import re
import stat
from enum import StrEnum
from pathlib import Path
from typing import TypeAlias

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from policymilter.privileges import user_name

DEFAULT_RSA_BITS = 2048
MIN_RSA_BITS = 2048  # what we generate; RFC 8301 §3.2 lets verifiers accept 1024, so loading allows it
MAX_RSA_BITS = 4096
MIN_LOADABLE_RSA_BITS = 1024  # RFC 8301 §3.2: verifiers MUST NOT accept shorter keys
MAX_KEY_FILE_SIZE = 64 * 1024
MILTER_USER = "policy-milter"
SOCKET_GROUP = "postfix"  # the group the shipped unit gives the daemon (--group)
# Group/other bits a key file must not have: group may read (0640), nothing else.
FORBIDDEN_MODE_BITS = 0o037

# A key read from its file, ready to sign.
PrivateKey: TypeAlias = rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey

_LABEL = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$", re.ASCII)


class KeyFileError(Exception):
    """A key file that must not or cannot be used; the message names the file and the fix."""


class KeyType(StrEnum):
    RSA = "rsa"
    ED25519 = "ed25519"

    @property
    def algorithm(self) -> str:
        """The policy's `algorithm` value (the DKIM a= tag)."""
        return f"{self.value}-sha256"


def key_type(algorithm: str) -> KeyType:
    """`rsa-sha256` / `ed25519-sha256` (or the bare `rsa` / `ed25519`) as a KeyType."""
    for kind in KeyType:
        if algorithm in (kind.value, kind.algorithm):
            return kind
    raise ValueError(f"unknown DKIM key algorithm {algorithm!r} (expected rsa-sha256 or ed25519-sha256)")


# --- names ---------------------------------------------------------------------------------


def valid_domain(domain: str) -> str:
    """A signing domain, lower case, no trailing dot; ValueError says what is wrong."""
    name = domain.strip().rstrip(".").lower()
    labels = name.split(".")
    if not name or len(name) > 253 or len(labels) < 2 or not all(_LABEL.match(label) for label in labels):
        raise ValueError(f"--domain {domain!r}: expected a domain name like example.org "
                         "(letters, digits and hyphens; labels of 1-63 characters; at least two labels)")
    return name


def valid_selector(selector: str, domain: str) -> str:
    """RFC 6376 §3.1: dot-separated sub-domain labels, and the whole query name within 253 characters."""
    name = selector.strip().lower()
    if not name or not all(_LABEL.match(label) for label in name.split(".")):
        raise ValueError(f"--selector {selector!r}: expected one or more DNS labels like s2026 or mail.2026 "
                         "(letters, digits and hyphens; RFC 6376 §3.1)")
    owner = f"{name}._domainkey.{domain}"
    if len(owner) > 253:
        raise ValueError(f"--selector {selector!r}: {owner} is longer than a DNS name may be (253 characters)")
    return name


def rsa_bits(kind: KeyType, bits: int | None) -> int | None:
    """The RSA key size to generate (None for Ed25519); ValueError for sizes we do not make."""
    if kind is KeyType.ED25519:
        if bits is not None:
            raise ValueError("--bits applies to RSA keys only; an Ed25519 key has no size to choose")
        return None
    if bits is None:
        return DEFAULT_RSA_BITS
    if bits < MIN_RSA_BITS:
        raise ValueError(f"--bits {bits}: RSA keys shorter than {MIN_RSA_BITS} bits are refused "
                         "(1024-bit keys are weak and some receivers ignore them; RFC 8301 §3.2)")
    if bits > MAX_RSA_BITS:
        raise ValueError(f"--bits {bits}: at most {MAX_RSA_BITS}; longer keys do not fit the DNS records "
                         "many providers accept")
    return bits


# --- keys ----------------------------------------------------------------------------------


def generate_private_key(kind: KeyType, bits: int | None = None) -> bytes:
    """A new key, as the bytes of its key file."""
    if kind is KeyType.ED25519:
        return _ed25519_seed(ed25519.Ed25519PrivateKey.generate()) + b"\n"
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits or DEFAULT_RSA_BITS)
    return _pkcs1(key)


def _pkcs1(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                             serialization.NoEncryption())


def _parse_pem(data: bytes) -> object:
    try:
        return serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise ValueError("the key is encrypted with a passphrase, which the milter cannot type; "
                         "write it unencrypted (openssl pkey -in FILE -out NEW) and protect it with "
                         "file permissions instead") from None
    except (ValueError, UnsupportedAlgorithm) as error:
        raise ValueError(f"not a readable PEM private key ({error})") from None


def _parse_rsa(data: bytes) -> rsa.RSAPrivateKey:
    if b"-----BEGIN" not in data:
        raise ValueError("not an RSA private key: expected PEM (-----BEGIN RSA PRIVATE KEY-----), "
                         "as `policy-milter dkim-keygen --type rsa` writes")
    key = _parse_pem(data)
    if isinstance(key, ed25519.Ed25519PrivateKey):
        raise ValueError('holds an Ed25519 key, but the policy says rsa-sha256: set algorithm = "ed25519-sha256"')
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError(f"holds a {type(key).__name__.lstrip('_')}, not an RSA private key")
    if key.key_size < MIN_LOADABLE_RSA_BITS:
        raise ValueError(f"a {key.key_size}-bit RSA key is too short: receivers ignore signatures made with it "
                         "(RFC 8301 §3.2); make a 2048-bit key with `policy-milter dkim-keygen`")
    return key


def _parse_ed25519(data: bytes) -> ed25519.Ed25519PrivateKey:
    if b"-----BEGIN" in data:
        key = _parse_pem(data)
        if isinstance(key, ed25519.Ed25519PrivateKey):
            return key
        if isinstance(key, rsa.RSAPrivateKey):
            raise ValueError('holds an RSA key, but the policy says ed25519-sha256: set algorithm = "rsa-sha256" '
                             "(or leave algorithm out)")
        raise ValueError(f"holds a {type(key).__name__.lstrip('_')}, not an Ed25519 private key")
    text = data.strip()
    try:
        seed = base64.b64decode(text, validate=True)
    except ValueError:
        seed = b""
    if len(seed) != 32 or b"\n" in text:
        raise ValueError("not an Ed25519 private key: expected one line of base64 holding the 32-byte seed, "
                         "as `policy-milter dkim-keygen --type ed25519` (or dkimpy's dknewkey) writes")
    return ed25519.Ed25519PrivateKey.from_private_bytes(seed)


def _ed25519_seed(key: ed25519.Ed25519PrivateKey) -> bytes:
    return base64.b64encode(key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                              serialization.NoEncryption()))


def parse_private_key(data: bytes, algorithm: str = "rsa-sha256") -> PrivateKey:
    """The key a key file's bytes hold, of the type `algorithm` names; ValueError if they hold none."""
    if key_type(algorithm) is KeyType.RSA:
        return _parse_rsa(data)
    return _parse_ed25519(data)


def load_private_key(path: str | Path, algorithm: str = "rsa-sha256", *,
                     owner: int | None = None) -> PrivateKey:
    """Read a key file for signing, refusing one other users could read or swap.

    The file must belong to `owner`, the uid the milter runs as (default: this process's
    effective uid): whoever owns a key file can replace the key or open it to others. Returns
    the key, parsed (see parse_private_key); raises KeyFileError.
    """
    kind = key_type(algorithm)
    uid = os.geteuid() if owner is None else owner
    user = user_name(uid)
    fix = f"chown {user} {path} && chmod 600 {path}"
    try:
        info = os.lstat(path)
    except OSError as error:
        if error.errno == errno.EACCES:
            raise KeyFileError(f"{path}: cannot read the key file ({error.strerror}); {user}, the user the milter "
                               f"runs as, must be able to reach it: let {user} search every directory above it "
                               f"(its own directory, or o+x), and run {fix}") from None
        raise KeyFileError(f"{path}: cannot read the key file ({error.strerror}); check key_file, or make a key "
                           "with `policy-milter dkim-keygen`") from None
    if stat.S_ISLNK(info.st_mode):
        raise KeyFileError(f"{path}: is a symbolic link; a key file must be a regular file "
                           f"(set key_file to the real file, {os.path.realpath(path)})")
    _check_owner(path, info, uid, fix)
    try:
        # O_NOFOLLOW: the file checked above is the file read; O_NONBLOCK: a FIFO must not hang us.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as error:
        raise KeyFileError(f"{path}: cannot read the key file ({error.strerror}); {user}, the user the milter "
                           f"runs as, must be able to read it: run {fix}") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise KeyFileError(f"{path}: not a regular file; key_file must name a key file")
    with os.fdopen(fd, "rb") as file:
        _check_owner(path, info, uid, fix)  # again on what was opened: it may have been swapped since lstat
        mode = stat.S_IMODE(info.st_mode)
        if mode & FORBIDDEN_MODE_BITS:
            raise KeyFileError(f"{path}: mode {mode:04o} lets other users read or replace the private key; "
                               f"run chmod 600 {path} (or 640 with group read for a group only {user} is in)")
        if info.st_size > MAX_KEY_FILE_SIZE:
            raise KeyFileError(f"{path}: {info.st_size} bytes is far too large for a DKIM key; "
                               "does key_file name the right file?")
        try:
            data = file.read(MAX_KEY_FILE_SIZE + 1)
        except OSError as error:
            raise KeyFileError(f"{path}: cannot read the key file ({error.strerror})") from None
    try:
        return parse_private_key(data, kind.algorithm)
    except ValueError as error:
        raise KeyFileError(f"{path}: {error} (the policy says algorithm = {kind.algorithm!r})") from None


def _check_owner(path: str | Path, info: os.stat_result, uid: int, fix: str) -> None:
    if info.st_uid != uid:
        raise KeyFileError(f"{path}: owned by {user_name(info.st_uid)}, not by {user_name(uid)}, the user the milter "
                           "runs as; whoever owns a key file can replace the key or let others read it: "
                           f"run {fix}")


def public_record(private: PrivateKey) -> str:
    """The DKIM TXT value for a private key (RFC 6376 §3.6.1; Ed25519: RFC 8463 §4.2)."""
    if isinstance(private, rsa.RSAPrivateKey):
        public = private.public_key().public_bytes(serialization.Encoding.DER,
                                                   serialization.PublicFormat.SubjectPublicKeyInfo)
        return f"v=DKIM1; k=rsa; p={base64.b64encode(public).decode()}"
    raw = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return f"v=DKIM1; k=ed25519; p={base64.b64encode(raw).decode()}"


def key_file_name(domain: str, selector: str) -> str:
    return f"{domain}.{selector}.key"


def write_key_file(path: Path, content: bytes, force: bool = False) -> None:
    """Create `path` with mode 0600 from its first byte; replace an existing file only if `force`.

    The directory is created 0700 if missing. Raises OSError (FileExistsError without force).
    """
    directory = path.parent
    if not directory.exists():
        directory.mkdir(mode=0o700, parents=True)
        os.chmod(directory, 0o700)  # the umask may have taken bits away; never adds any
    target = path if not force else directory / f".{path.name}.{os.getpid()}.new"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(target, flags, 0o600)
    try:
        os.fchmod(fd, 0o600)  # exactly 0600 whatever the umask (it can only have removed owner bits)
        with os.fdopen(fd, "wb") as file:
            file.write(content)
            file.flush()
            os.fsync(file.fileno())
        if force:
            os.replace(target, path)  # atomic: readers see the old key or the new one, never half of one
    except BaseException:
        target.unlink(missing_ok=True)
        raise


# --- dkim-keygen ---------------------------------------------------------------------------


def toml_key_entry(domain: str, selector: str, key_file: Path, kind: KeyType) -> str:
    """The `[signing.keys]` line for a key (TOML basic strings accept JSON string syntax)."""
    fields = [f"selector = {json.dumps(selector)}", f"key_file = {json.dumps(str(key_file))}"]
    if kind is KeyType.ED25519:
        fields.append(f"algorithm = {json.dumps(kind.algorithm)}")
    return f"{json.dumps(domain)} = [{{ {', '.join(fields)} }}]"


def next_steps(domain: str, selector: str, key_file: Path, kind: KeyType, replaced: bool) -> str:
    owner = f"{selector}._domainkey.{domain}"
    lines = [f"wrote {key_file} (mode 0600)"]
    if replaced:
        lines.append(f"replaced the key that was there: until {owner} publishes the record above, "
                     "signatures made with the new key fail (to rotate keys, use a new selector)")
    lines += [
        "next steps:",
        f"  1. publish the TXT record printed above at {owner}",
        f"     (check: dig +short TXT {owner})",
        "  2. add the key to the policy, in [signing.keys]:",
        f"       {toml_key_entry(domain, selector, key_file, kind)}",
        "  3. give the key to the user the milter runs as, and to nobody else:",
        f"       chown {MILTER_USER} {key_file} && chmod 600 {key_file}",
        f"     and let {MILTER_USER} reach it: chmod 711 {key_file.parent} (a directory that holds only",
        f"     keys may instead be its own: chown {MILTER_USER} {key_file.parent}). The milter refuses a key",
        "     owned by anyone else, root included, and group permissions do not help: it reads keys",
        f"     as {MILTER_USER} with group {SOCKET_GROUP} only.",
        f"  4. policy-milter check-policy --user {MILTER_USER} --group {SOCKET_GROUP} /etc/policy-milter "
        "&& systemctl reload policy-milter",
    ]
    return "\n".join(lines)
