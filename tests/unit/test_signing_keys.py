"""dkim-keygen, dns-records and the key-file contract (`load_private_key`, `public_record`)."""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import dkim
import dns.name
import dns.rdataclass
import dns.rdatatype
import dns.zone
import pytest

from policymilter.checks.signing.sign import dkim_signature
from policymilter.cli import main
from policymilter.publish import txt_line, txt_strings
from policymilter.signing_keys import KeyFileError, PrivateKey, load_private_key, parse_private_key, public_record
from tests.authkit import SIGNED_HEADERS, message
from tests.conftest import DEFAULT_POLICY

RSA = "rsa-sha256"
ED25519 = "ed25519-sha256"
# The milter's system account (scripts/test creates it) and an unrelated one.
MILTER = pwd.getpwnam("policy-milter")
NOBODY = pwd.getpwnam("nobody")
ROOT = pwd.getpwnam("root")


def zone_of(text: str) -> dict[str, list[str]]:
    """Owner -> joined TXT values, parsed by dnspython as a zone file (every name absolute)."""
    zone = dns.zone.from_text(text, origin=".", relativize=False, check_origin=False)
    records: dict[str, list[str]] = {}
    for name, rdataset in zone.iterate_rdatasets(dns.rdatatype.TXT):
        for rdata in rdataset:
            assert all(len(chunk) <= 255 for chunk in rdata.strings)
            records.setdefault(name.to_text(), []).append(b"".join(rdata.strings).decode())
    return records


def keygen(capsys, out: Path, domain: str, selector: str, *extra: str) -> tuple[int, str, str]:
    code = main(["dkim-keygen", "--domain", domain, "--selector", selector, "--out", str(out), *extra])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def record_of(content: bytes, algorithm: str) -> str:
    """The DKIM record for a key file's bytes."""
    return public_record(parse_private_key(content, algorithm))


def signs_and_verifies(private: bytes | PrivateKey, algorithm: str, domain: str, selector: str, record: str) -> bool:
    """`private`: a key file's bytes, which dkimpy's sign() signs with; or a loaded key, which ours does."""
    raw = message(f"alice@{domain}", "bob@elsewhere.test").replace(b"\n", b"\r\n")
    if isinstance(private, bytes):
        header = dkim.sign(raw, selector.encode(), domain.encode(), private, include_headers=SIGNED_HEADERS,
                           signature_algorithm=algorithm.encode())
    else:
        header = dkim_signature(raw, domain.encode(), selector.encode(), private, b"relaxed/relaxed", SIGNED_HEADERS)
    return dkim.verify(header + raw, dnsfunc=lambda name, timeout=5: record.encode())


def same_key(loaded: PrivateKey, key_file: Path) -> bool:
    return loaded.private_numbers() == parse_private_key(key_file.read_bytes()).private_numbers()


# --- dkim-keygen -----------------------------------------------------------------------------

@pytest.mark.parametrize(("key_type", "algorithm", "k_tag"), [
    ("rsa", RSA, "k=rsa"),
    ("ed25519", ED25519, "k=ed25519"),
])
def test_keygen_writes_a_private_key_and_prints_its_record(tmp_path, capsys, key_type, algorithm, k_tag):
    out = tmp_path / "keys"
    code, stdout, stderr = keygen(capsys, out, "Example.org", "s2026", "--type", key_type)
    assert code == 0
    key_file = out / "example.org.s2026.key"
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600

    records = zone_of(stdout)
    assert list(records) == ["s2026._domainkey.example.org."]
    [record] = records["s2026._domainkey.example.org."]
    content = key_file.read_bytes()
    assert record == record_of(content, algorithm)
    assert record.startswith(f"v=DKIM1; {k_tag}; p=")
    assert signs_and_verifies(content, algorithm, "example.org", "s2026", record)
    assert signs_and_verifies(load_private_key(key_file, algorithm), algorithm, "example.org", "s2026", record)

    entry = f'"example.org" = [{{ selector = "s2026", key_file = "{key_file}"'
    assert entry in stderr and ("ed25519-sha256" in stderr) == (key_type == "ed25519")
    assert "chown policy-milter" in stderr


def test_rsa_key_file_is_pkcs1_pem_and_ed25519_is_one_base64_line(tmp_path, capsys):
    keygen(capsys, tmp_path, "example.org", "rsa1")
    keygen(capsys, tmp_path, "example.org", "ed1", "--type", "ed25519")
    assert (tmp_path / "example.org.rsa1.key").read_bytes().startswith(b"-----BEGIN RSA PRIVATE KEY-----\n")
    seed = (tmp_path / "example.org.ed1.key").read_bytes()
    assert seed.endswith(b"\n") and seed.count(b"\n") == 1 and len(seed) == 45


def test_keygen_bits_4096_splits_the_record_into_255_byte_strings(tmp_path, capsys):
    code, stdout, _ = keygen(capsys, tmp_path, "example.org", "big", "--bits", "4096")
    assert code == 0 and stdout.count('" "') >= 3
    [record] = zone_of(stdout)["big._domainkey.example.org."]
    assert record == record_of((tmp_path / "example.org.big.key").read_bytes(), RSA)


def test_key_file_is_0600_whatever_the_umask(tmp_path, capsys):
    previous = os.umask(0o277)
    try:
        code, _, _ = keygen(capsys, tmp_path / "keys", "example.org", "s1")
    finally:
        os.umask(previous)
    assert code == 0
    assert stat.S_IMODE((tmp_path / "keys" / "example.org.s1.key").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "keys").stat().st_mode) == 0o700


@pytest.mark.parametrize(("args", "message_part"), [
    (("--domain", "example.org", "--selector", "s1", "--bits", "1024"), "--bits 1024: RSA keys shorter than 2048"),
    (("--domain", "example.org", "--selector", "s1", "--bits", "8192"), "--bits 8192: at most 4096"),
    (("--domain", "example.org", "--selector", "s1", "--type", "ed25519", "--bits", "2048"),
     "--bits applies to RSA keys only"),
    (("--domain", "exa_mple.org", "--selector", "s1"), "--domain 'exa_mple.org'"),
    (("--domain", "localhost", "--selector", "s1"), "--domain 'localhost'"),
    (("--domain", "example.org", "--selector", "s 1"), "--selector 's 1'"),
    (("--domain", "example.org", "--selector=-s1"), "--selector '-s1'"),
])
def test_keygen_refuses_bad_input_with_exit_2(tmp_path, capsys, args, message_part):
    assert main(["dkim-keygen", *args, "--out", str(tmp_path / "keys")]) == 2
    assert message_part in capsys.readouterr().err
    assert not (tmp_path / "keys").exists()


def test_keygen_never_overwrites_without_force(tmp_path, capsys):
    assert keygen(capsys, tmp_path, "example.org", "s1")[0] == 0
    key_file = tmp_path / "example.org.s1.key"
    first = key_file.read_bytes()

    code, stdout, stderr = keygen(capsys, tmp_path, "example.org", "s1")
    assert code == 1 and stdout == ""
    assert f"{key_file} exists" in stderr and "--force" in stderr
    assert key_file.read_bytes() == first

    code, stdout, stderr = keygen(capsys, tmp_path, "example.org", "s1", "--force")
    assert code == 0 and "replaced" in stderr
    assert key_file.read_bytes() != first
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert zone_of(stdout)["s1._domainkey.example.org."] == [record_of(key_file.read_bytes(), RSA)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["example.org.s1.key"]


def test_keygen_io_error_exits_1(tmp_path, capsys):
    (tmp_path / "file").write_text("not a directory")
    code, _, stderr = keygen(capsys, tmp_path / "file" / "keys", "example.org", "s1")
    assert code == 1 and "dkim-keygen: cannot write" in stderr


# --- load_private_key ------------------------------------------------------------------------

@pytest.fixture
def rsa_file(tmp_path, capsys) -> Path:
    keygen(capsys, tmp_path / "keys", "example.org", "s1")
    return tmp_path / "keys" / "example.org.s1.key"


@pytest.mark.parametrize(("mode", "accepted"), [
    (0o600, True),
    (0o640, True),
    (0o400, True),
    (0o644, False),
    (0o604, False),
    (0o620, False),
    (0o660, False),
    (0o610, False),
])
def test_load_private_key_mode(rsa_file, mode, accepted):
    os.chmod(rsa_file, mode)
    if accepted:
        assert same_key(load_private_key(rsa_file), rsa_file)
    else:
        with pytest.raises(KeyFileError, match=rf"mode 0{mode:o} .*run chmod 600 {rsa_file} \(or 640 with group"):
            load_private_key(rsa_file)


def test_load_private_key_refuses_symlinks(rsa_file):
    link = rsa_file.with_name("link.key")
    link.symlink_to(rsa_file)
    with pytest.raises(KeyFileError, match=f"{link}: is a symbolic link"):
        load_private_key(link)


def test_load_private_key_refuses_a_directory_and_a_missing_file(tmp_path):
    directory = tmp_path / "dir.key"
    directory.mkdir(mode=0o700)
    with pytest.raises(KeyFileError, match="not a regular file"):
        load_private_key(directory)
    with pytest.raises(KeyFileError, match=f"{tmp_path / 'none.key'}: cannot read the key file"):
        load_private_key(tmp_path / "none.key")


def write_0600(path: Path, content: bytes) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as file:
        file.write(content)
    return path


@pytest.mark.parametrize(("content", "algorithm", "message_part"), [
    (b"hello\n", RSA, "not an RSA private key"),
    (b"-----BEGIN RSA PRIVATE KEY-----\nZ2FyYmFnZQ==\n-----END RSA PRIVATE KEY-----\n", RSA,
     "not a readable PEM private key"),
    (b"hello\n", ED25519, "not an Ed25519 private key"),
    (b"c2hvcnQ=\n", ED25519, "not an Ed25519 private key"),
    (b"", ED25519, "not an Ed25519 private key"),
])
def test_load_private_key_refuses_garbage(tmp_path, content, algorithm, message_part):
    path = write_0600(tmp_path / "bad.key", content)
    with pytest.raises(KeyFileError, match=f"{path}: {message_part}"):
        load_private_key(path, algorithm)


def test_load_private_key_refuses_the_wrong_algorithm(rsa_file, tmp_path, capsys):
    with pytest.raises(KeyFileError, match='holds an RSA key, but the policy says ed25519-sha256'):
        load_private_key(rsa_file, ED25519)
    keygen(capsys, tmp_path, "example.org", "ed1", "--type", "ed25519")
    with pytest.raises(KeyFileError, match="not an RSA private key"):
        load_private_key(tmp_path / "example.org.ed1.key", RSA)


# --- ownership: a key file belongs to the user the milter runs as ------------------------------

def give(path: Path, account: pwd.struct_passwd) -> Path:
    os.chown(path, account.pw_uid, account.pw_gid)
    return path


@pytest.mark.parametrize(("owner", "milter", "accepted"), [
    (ROOT, ROOT, True),  # a milter running as root (no --user) reads root's keys
    (MILTER, MILTER, True),
    (MILTER, None, False),  # None: this process (root) is the milter
    (NOBODY, None, False),
    (NOBODY, MILTER, False),
    (ROOT, MILTER, False),  # root's key: the unprivileged milter must not depend on root's files
    (MILTER, ROOT, False),
])
def test_load_private_key_owner(rsa_file, owner, milter, accepted):
    give(rsa_file, owner)
    uid = None if milter is None else milter.pw_uid
    if accepted:
        assert same_key(load_private_key(rsa_file, owner=uid), rsa_file)
        return
    expected = (milter or ROOT).pw_name
    with pytest.raises(KeyFileError) as refused:
        load_private_key(rsa_file, owner=uid)
    message = str(refused.value)
    assert message.startswith(f"{rsa_file}: owned by {owner.pw_name}, not by {expected}, the user the milter runs as")
    assert message.endswith(f"run chown {expected} {rsa_file} && chmod 600 {rsa_file}")


def test_load_private_key_checks_the_owner_before_the_mode(rsa_file):
    """One message that fixes both: the chown and the chmod."""
    give(rsa_file, NOBODY)
    os.chmod(rsa_file, 0o644)
    with pytest.raises(KeyFileError, match=rf"owned by nobody, .*chown root {rsa_file} && chmod 600 {rsa_file}$"):
        load_private_key(rsa_file)


@pytest.fixture
def reachable() -> Iterator[Path]:
    """A directory the milter's user can search (pytest's tmp_path is under root's 0700 one)."""
    directory = Path(tempfile.mkdtemp(prefix="keytool-"))
    os.chmod(directory, 0o711)
    try:
        yield directory
    finally:
        shutil.rmtree(directory)


def policy_with_key(tmp_path: Path, key_file: Path) -> Path:
    return policy_dir(tmp_path, f"""
[site]
domains = ["example.org"]

[signing.keys]
"example.org" = [{{ selector = "s1", key_file = "{key_file}" }}]
""")


def milter_key(capsys, directory: Path, owner: pwd.struct_passwd) -> Path:
    directory.mkdir(mode=0o700, exist_ok=True)
    assert keygen(capsys, directory, "example.org", "s1")[0] == 0
    return give(directory / "example.org.s1.key", owner)


@pytest.mark.parametrize(("case", "args", "code", "message_part"), [
    ("milter", ["--user", "policy-milter"], 0, None),
    ("root", [], 1, "owned by root, not by policy-milter"),  # run as root, it judges for policy-milter
    ("root", ["--user", "policy-milter", "--group", "postfix"], 1, "owned by root, not by policy-milter"),
    ("nobody", [], 1, "owned by nobody, not by policy-milter"),
    ("hidden", [], 1, "cannot read the key file (Permission denied)"),  # policy-milter cannot enter its directory
    ("root", ["--user", "root"], 0, None),  # a milter run as root without --user
])
def test_check_policy_judges_keys_as_the_milter_user_would(tmp_path, reachable, capsys, case, args, code,
                                                           message_part):
    owner = {"milter": MILTER, "root": ROOT, "nobody": NOBODY, "hidden": MILTER}[case]
    keys = reachable / "keys"
    key_file = milter_key(capsys, keys, owner)
    if case != "hidden":
        give(keys, MILTER)
    policy = policy_with_key(tmp_path, key_file)
    assert main(["check-policy", *args, str(policy)]) == code
    captured = capsys.readouterr()
    if code == 0:
        assert f"{policy}: OK" in captured.out and captured.err == ""
        return
    user = "policy-milter"
    assert f"{key_file}: " in captured.err and message_part in captured.err
    assert f"chown {user} {key_file} && chmod 600 {key_file}" in captured.err
    assert "signing.on_missing_key" in captured.err and "example.org" in captured.err


def test_check_policy_user_must_exist(tmp_path, capsys):
    assert main(["check-policy", "--user", "no-such-user", str(DEFAULT_POLICY)]) == 2
    assert "--user 'no-such-user': no such user" in capsys.readouterr().err


def test_dns_records_judges_keys_against_the_milter_user_not_root(tmp_path, capsys):
    """dns-records reads the key as root (it only needs the public half), but a key the milter
    would refuse gets no record: it would publish a key that never signs."""
    keys = tmp_path / "keys"
    milter_key(capsys, keys, MILTER)
    assert keygen(capsys, keys, "example.org", "s2")[0] == 0  # root's
    root_key = keys / "example.org.s2.key"
    policy = policy_dir(tmp_path, f"""
[site]
domains = ["example.org"]

[signing.keys]
"example.org" = [{{ selector = "s1", key_file = "{keys / 'example.org.s1.key'}" }},
                 {{ selector = "s2", key_file = "{root_key}" }}]
""")
    assert main(["dns-records", "--policy", str(policy)]) == 1
    captured = capsys.readouterr()
    records = zone_of(captured.out)
    assert "s1._domainkey.example.org." in records and "s2._domainkey.example.org." not in records
    [comment] = [line for line in captured.out.splitlines() if "s2._domainkey" in line]
    assert f"{root_key}: owned by root, not by policy-milter" in comment
    assert f"chown policy-milter {root_key} && chmod 600 {root_key}" in comment
    assert main(["dns-records", "--user", "root", "--policy", str(policy)]) == 1  # now s1 is the stranger's
    assert "s1._domainkey.example.org: no record" in capsys.readouterr().out


# --- zone-file text --------------------------------------------------------------------------

@pytest.mark.parametrize(("value", "strings"), [
    ("v=spf1 -all", [b"v=spf1 -all"]),
    ("", [b""]),
    ("v=DKIM1; k=rsa; p=" + "A" * 300, [b"v=DKIM1; k=rsa; ", b"p=" + b"A" * 253, b"A" * 47]),
    ("v=spf1 " + "ip4:192.0.2.1 " * 20 + "-all",
     [b"v=spf1 " + b"ip4:192.0.2.1 " * 17, b"ip4:192.0.2.1 " * 3 + b"-all"]),
])
def test_txt_strings(value, strings):
    assert txt_strings(value) == strings
    assert b"".join(strings) == value.encode()


def test_txt_line_quotes_what_zone_files_need():
    [record] = zone_of(txt_line("x.example.org", 'a "quoted" \\ value'))["x.example.org."]
    assert record == 'a "quoted" \\ value'


# --- dns-records -----------------------------------------------------------------------------

def policy_dir(tmp_path: Path, local: str) -> Path:
    directory = tmp_path / "policy"
    directory.mkdir()
    shutil.copy(DEFAULT_POLICY / "00-default.toml", directory / "00-default.toml")
    (directory / "50-local.toml").write_text(local)
    return directory


def site_policy(tmp_path: Path, capsys, extra_keys: str = "") -> tuple[Path, Path]:
    keys = tmp_path / "keys"
    assert keygen(capsys, keys, "example.org", "s2026")[0] == 0
    assert keygen(capsys, keys, "example.net", "ed1", "--type", "ed25519")[0] == 0
    for key_file in keys.iterdir():
        give(key_file, MILTER)  # as `dkim-keygen` tells the admin: the milter's user owns its keys
    local = f"""
[site]
domains = ["example.org", "example.net"]

[publish]
spf_senders = ["192.0.2.10", "198.51.100.0/24", "2001:db8::/48", "mail.example.org"]
dmarc_policy = "reject"
dmarc_rua = ["mailto:dmarc-reports@example.org"]

[signing.keys]
"example.org" = [{{ selector = "s2026", key_file = "{keys}/example.org.s2026.key" }}]
"example.net" = [
    {{ selector = "ed1", key_file = "{keys}/example.net.ed1.key", algorithm = "ed25519-sha256" }}{extra_keys}
]
"""
    return policy_dir(tmp_path, local), keys


def test_dns_records_for_two_domains(tmp_path, capsys):
    policy, keys = site_policy(tmp_path, capsys)
    assert main(["dns-records", "--policy", str(policy)]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    records = zone_of(captured.out)
    spf = "v=spf1 ip4:192.0.2.10 ip4:198.51.100.0/24 ip6:2001:db8::/48 a:mail.example.org -all"
    dmarc = "v=DMARC1; p=reject; rua=mailto:dmarc-reports@example.org; adkim=r; aspf=r"
    assert records == {
        "example.org.": [spf],
        "s2026._domainkey.example.org.": [record_of((keys / "example.org.s2026.key").read_bytes(), RSA)],
        "_dmarc.example.org.": [dmarc],
        # RFC 7489 §7.1: example.org accepts example.net's reports
        "example.net._report._dmarc.example.org.": ["v=DMARC1"],
        "example.net.": [spf],
        "ed1._domainkey.example.net.": [record_of((keys / "example.net.ed1.key").read_bytes(), ED25519)],
        "_dmarc.example.net.": [dmarc],
    }
    head = captured.out.split("\n\n")[0]
    assert all(line.startswith(";") for line in head.splitlines())
    assert "p=none" not in head and 'dmarc_policy = "none"' in head and "quarantine" in head
    assert "WARNING" not in captured.out


def test_dns_records_missing_key_file_is_a_comment_and_exit_1(tmp_path, capsys):
    missing = tmp_path / "keys" / "gone.key"
    extra = f', {{ selector = "old", key_file = "{missing}" }}'
    policy, _ = site_policy(tmp_path, capsys, extra_keys=extra)
    assert main(["dns-records", "--policy", str(policy)]) == 1
    captured = capsys.readouterr()
    records = zone_of(captured.out)
    assert "old._domainkey.example.net." not in records
    assert "ed1._domainkey.example.net." in records and "_dmarc.example.net." in records
    [comment] = [line for line in captured.out.splitlines() if "old._domainkey" in line]
    assert comment.startswith("; old._domainkey.example.net: ") and str(missing) in comment
    assert "1 DKIM record(s) missing" in captured.err


def test_dns_records_without_senders_rua_or_keys_warns(tmp_path, capsys):
    policy = policy_dir(tmp_path, '[site]\ndomains = ["example.org"]\n[publish]\ndmarc_policy = "quarantine"\n')
    assert main(["dns-records", "--policy", str(policy), "-o", 'publish.spf_all="~all"']) == 0
    out = capsys.readouterr().out
    assert zone_of(out) == {
        "example.org.": ["v=spf1 ~all"],
        "_dmarc.example.org.": ["v=DMARC1; p=quarantine; adkim=r; aspf=r"],
    }
    assert "; no senders listed in publish.spf_senders: this record says nobody may send" in out
    assert "WARNING: dmarc_policy = \"quarantine\" but publish.dmarc_rua is empty" in out
    assert "WARNING: dmarc_policy = \"quarantine\" but signing.keys has no key for example.org" in out


def test_dns_records_invalid_policy_exits_2_with_file_line(tmp_path, capsys):
    policy = policy_dir(tmp_path, '[publish]\ndmarc_policy = "rejct"\n')
    assert main(["dns-records", "--policy", str(policy)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(f"{policy / '50-local.toml'}:2: publish.dmarc_policy: ")


def test_dns_records_names_are_absolute(tmp_path, capsys):
    policy, _ = site_policy(tmp_path, capsys)
    main(["dns-records", "--policy", str(policy)])
    for line in capsys.readouterr().out.splitlines():
        if line and not line.startswith(";"):
            owner = dns.name.from_text(line.split()[0], origin=None)
            assert owner.is_absolute() and line.split()[1:4] == ["3600", "IN", "TXT"]
            assert dns.rdataclass.from_text(line.split()[2]) == dns.rdataclass.IN
