"""Policy loading: every error as FILE:LINE: key.path: message, all at once."""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

import pytest

from policymilter.outcome import ErrorAction
from policymilter.policy import PolicyError, load_policy
from policymilter.policy.load import parse_override
from policymilter.policy.locate import locate
from policymilter.policy.model import CheckName
from tests.conftest import DEFAULT_POLICY

MINIMAL = """\
[site]
domains = ["example.org"]
authserv_id = "mx.example.org"

[listeners.smtp]
ports = [25]
"""


def write(tmp_path: Path, text: str, name: str = "policy.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def errors(path: Path, overrides=()) -> list[str]:
    with pytest.raises(PolicyError) as caught:
        load_policy(path, overrides)
    return [str(issue) for issue in caught.value.issues]


def test_shipped_default_policy_encodes_the_site_rules(default_policy):
    smtp, submission, submissions = (default_policy.listeners[n] for n in ("smtp", "submission", "submissions"))
    assert smtp.auth == "optional" and smtp.auth_requires_tls
    assert {CheckName.SPAM, CheckName.ANTIVIRUS, CheckName.ATTACHMENTS} <= set(smtp.unauthenticated.checks)
    assert {CheckName.SPF, CheckName.DKIM, CheckName.DMARC} <= set(smtp.unauthenticated.checks)
    assert submission.auth == "required" and submission.auth_mechanisms == ("PLAIN", "LOGIN")
    assert set(submission.login_forbidden_chars) == {".", "@"}
    assert not {CheckName.SPAM, CheckName.ANTIVIRUS, CheckName.ATTACHMENTS} & set(submission.authenticated.checks)
    assert submissions.auth == "required"
    assert {CheckName.SPAM, CheckName.ANTIVIRUS, CheckName.ATTACHMENTS} <= set(submissions.authenticated.checks)
    assert smtp.error_action("dmarc", authenticated=False) is ErrorAction.TEMPFAIL
    assert smtp.error_action("spam", authenticated=False) is ErrorAction.ACCEPT


def test_broken_file_reports_every_error_with_file_line_and_key(tmp_path):
    path = write(tmp_path, """\
        [site]
        domains = ["example.org"]
        authserv_idd = "mx.example.org"

        [dns]
        timeout = "fast"
        nameservers = ["127.0.0.1:99999"]

        [listeners.smtp]
        ports = [25]
        auth = "requird"
        on_error = "tempfial"

        [listeners.smtp.unauthenticated]
        checks = ["spf", "spma"]
        on_error = { dmarc = "accept", virus = "reject" }

        [spam]
        tag_score = 9.0
        reject_score = 5.0
        """)
    assert errors(path) == [
        f"{path}:3: site.authserv_idd: unknown key; did you mean 'authserv_id'?",
        f"{path}:6: dns.timeout: Input should be a valid number, not \"fast\"",
        f"{path}:7: dns.nameservers: '127.0.0.1:99999': expected \"HOST\" or \"HOST:PORT\"",
        f"{path}:11: listeners.smtp.auth: Input should be 'optional' or 'required', not 'requird'; "
        "did you mean 'required'?",
        f"{path}:12: listeners.smtp.on_error: Input should be 'tempfail', 'accept' or 'reject', not 'tempfial'; "
        "did you mean 'tempfail'?",
        f"{path}:15: listeners.smtp.unauthenticated.checks[1]: Input should be 'sender', 'ratelimit', 'spf', "
        "'attachments', 'antivirus', 'spam', 'dkim', 'arc', 'dmarc' or 'signing', not 'spma'; did you mean 'spam'?",
        f"{path}:16: listeners.smtp.unauthenticated.on_error.virus: Input should be 'sender', 'ratelimit', 'spf', "
        "'attachments', 'antivirus', 'spam', 'dkim', 'arc', 'dmarc' or 'signing', not 'virus'; "
        "did you mean 'antivirus'?",
        f"{path}:18: spam: scores must rise: tag_score <= quarantine_score <= reject_score",
    ]


def test_syntax_error_names_the_line(tmp_path):
    path = write(tmp_path, '[site]\nauthserv_id = mx.example.org\n\n[dns]\n')
    assert errors(path) == [f"{path}:2: (syntax): Invalid value"]


def test_unknown_section_suggests_the_right_one(tmp_path):
    path = write(tmp_path, MINIMAL + "\n[antivrus]\nservers = []\n")
    assert errors(path) == [f"{path}:8: antivrus: unknown key; did you mean 'antivirus'?"]


def test_the_store_keys_that_moved_to_state_say_so(tmp_path):
    path = write(tmp_path, MINIMAL + '\n[ratelimit]\nstore = "sqlite:/var/lib/x.db"\ntimeout = 1.0\n')
    shared = "(the [state] table holds the store the rate limits and the DMARC report rows share)"
    assert errors(path) == [f"{path}:9: ratelimit.store: moved: write state.store instead {shared}",
                            f"{path}:10: ratelimit.timeout: moved: write state.timeout instead {shared}"]


def test_inline_table_and_dotted_keys_are_located(tmp_path):
    path = write(tmp_path, MINIMAL + 'unauthenticated = { checks = ["spf"], on_eror = {} }\n')
    assert errors(path) == [
        f"{path}:7: listeners.smtp.unauthenticated.on_eror: unknown key; did you mean 'on_error'?"
    ]


def test_two_listeners_claiming_one_port(tmp_path):
    path = write(tmp_path, MINIMAL + "\n[listeners.other]\nports = [2525, 25]\n")
    assert errors(path) == [f"{path}:9: listeners.other.ports[1]: port 25 is already matched by listeners.smtp"]


def test_no_listener_is_an_error(tmp_path):
    path = write(tmp_path, "[site]\ndomains = []\n")
    assert errors(path) == [
        f"{path}:0: listeners: no listener is defined: every session would get the strictest profile"
    ]


def test_directory_files_are_read_in_name_order_later_overrides(tmp_path):
    write(tmp_path, MINIMAL, "00-base.toml")
    write(tmp_path, '[site]\nauthserv_id = "mx2.example.org"\n[dns]\ntimeout = "x"\n', "50-local.toml")
    assert errors(tmp_path) == [f"{tmp_path / '50-local.toml'}:4: dns.timeout: Input should be a valid number, "
                                'not "x"']
    (tmp_path / "50-local.toml").write_text('[site]\nauthserv_id = "mx2.example.org"\n')
    loaded = load_policy(tmp_path)
    assert loaded.policy.site.authserv_id == "mx2.example.org"
    assert loaded.policy.site.domains == ("example.org",)
    assert [Path(f).name for f in loaded.files] == ["00-base.toml", "50-local.toml"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("dns.timeout=3", (["dns", "timeout"], 3)),
        ('site.domains=["a.example", "b.example"]', (["site", "domains"], ["a.example", "b.example"])),
        ("site.authserv_id=mx.example.org", (["site", "authserv_id"], "mx.example.org")),
        ('dns.nameservers=["127.0.0.1:5353"]', (["dns", "nameservers"], ["127.0.0.1:5353"])),
    ],
)
def test_override_values_use_toml_syntax(text, expected):
    assert parse_override(text) == expected


def test_overrides_are_validated_like_the_file(tmp_path):
    path = write(tmp_path, MINIMAL)
    policy = load_policy(path, ["dns.timeout=2.5", 'antivirus.servers=["unix:/run/c.sock", "127.0.0.1:3310"]'])
    assert policy.policy.dns.timeout == 2.5
    assert policy.policy.antivirus.servers == ("unix:/run/c.sock", "127.0.0.1:3310")
    assert errors(path, ["dns.timeout=soon", "spam.servers=localhost"]) == [
        '-o:1: dns.timeout: Input should be a valid number, not "soon"',
        '-o:2: spam.servers: Input should be a valid array, not "localhost"',
    ]
    assert errors(path, ["nonsense"]) == ["-o:1: (override): 'nonsense' is not KEY.PATH=VALUE"]


def test_missing_path(tmp_path):
    assert errors(tmp_path / "nope.toml") == [f"{tmp_path / 'nope.toml'}:0: (policy): no such file or directory"]


def test_locate_handles_multiline_arrays_strings_and_arrays_of_tables():
    text = textwrap.dedent('''\
        a = [
          "x = 1",
          2,
        ]
        b = """
        c = 3
        """
        [t]
        d.e = 1
        [[arr]]
        f = 1
        [[arr]]
        f = 2
        ''')
    where = locate(text)
    assert where[("a",)] == 1 and ("c",) not in where and where[("b",)] == 5
    assert where[("t", "d", "e")] == 9
    assert where[("arr", 0, "f")] == 11 and where[("arr", 1, "f")] == 13


def test_default_policy_directory_checks_clean():
    assert load_policy(DEFAULT_POLICY).policy.site.domains


def test_a_later_file_replaces_a_map_value_but_merges_sections(tmp_path):
    (tmp_path / "00-default.toml").write_text((DEFAULT_POLICY / "00-default.toml").read_text())
    write(tmp_path, "[listeners.smtp.unauthenticated]\non_error = {}\n", "50-local.toml")
    smtp = load_policy(tmp_path).policy.listeners["smtp"]
    assert smtp.unauthenticated.on_error == {}  # cleared, as with -o
    assert smtp.unauthenticated.checks  # the rest of the section is still the default's
    assert smtp.ports == (25,)


def test_override_errors_deep_under_a_missing_table_point_at_the_override(tmp_path):
    path = write(tmp_path, MINIMAL)
    [line] = errors(path, ["listeners.a.b.c.d=1"])
    assert line.startswith("-o:1: listeners.a.b: unknown key (valid keys: auth, ")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[spam]\ntag_score = nan\n", "spam.tag_score: Input should be a finite number"),
        ("[listeners.smtp]\nauth_mechanisms = [\"PLAIN\", \"\u00df\", \"X Y\"]\n",
         "listeners.smtp.auth_mechanisms: '\u00df', 'X Y': not a SASL mechanism name"),
        ('[listeners.smtp]\ndaemon_name = ""\n', "listeners.smtp.daemon_name: String should have at least 1 character"),
    ],
)
def test_values_that_would_misbehave_are_refused(tmp_path, text, expected):
    path = write(tmp_path, MINIMAL + text.replace("[listeners.smtp]\n", ""), "p.toml") if "listeners" in text \
        else write(tmp_path, MINIMAL + text, "p.toml")
    assert any(expected in line for line in errors(path)), errors(path)


@pytest.mark.parametrize(
    "text",
    [
        'authserv_id = { a = \'q, "\\N" = 1\' }\n',  # escapes inside strings must not upset the locator
        "x = " + "[" * 5000 + "]" * 5000 + "\n",  # deeper than tomllib's recursion
        '"caf\u00e9" = 1\n"\\u00e9t\u00e9" = 2\n',
    ],
)
def test_nasty_files_give_clean_errors_never_a_traceback(tmp_path, text):
    path = write(tmp_path, MINIMAL + text)
    lines = errors(path)
    assert lines and all(line.startswith(f"{path}:") for line in lines)


def test_deeply_nested_override_is_a_clean_error(tmp_path):
    path = write(tmp_path, MINIMAL)
    [line] = errors(path, ["site.domains=" + "[" * 5000 + "]" * 5000])
    assert line == "-o:1: (override): the value of 'site.domains' is nested too deeply"


def test_quoted_non_ascii_keys_are_located(tmp_path):
    path = write(tmp_path, MINIMAL + '"caf\u00e9" = 1\n')
    assert errors(path) == [f"{path}:7: listeners.smtp.\"caf\u00e9\": unknown key (valid keys: auth, auth_mechanisms, "
                            "auth_requires_tls, authenticated, daemon_name, login_forbidden_chars, on_error, ports, "
                            "unauthenticated)"]


def test_stage_time_budgets_must_fit_postfixs_milter_timeouts(tmp_path):
    """Issue 8 item 10: each check waits on its own budget; their sum per stage must fit."""
    local = tmp_path / "policy"
    local.mkdir()
    shipped = (DEFAULT_POLICY / "00-default.toml").read_text()
    (local / "00-default.toml").write_text(shipped)
    line = next(number for number, text in enumerate(shipped.splitlines(), 1) if text.startswith('checks = ["spf"'))
    (local / "50-local.toml").write_text("[postfix]\nmilter_content_timeout = 120\n\n[dns]\nlifetime = 10.0\n")
    with pytest.raises(PolicyError) as caught:
        load_policy(local)
    lines = [str(issue) for issue in caught.value.issues]
    smtp = [line for line in lines if "listener smtp, unauthenticated" in line]
    assert smtp == [f"{local / '00-default.toml'}:{line}: listeners.smtp.unauthenticated.checks: listener smtp, "
                    "unauthenticated mail: at end of message the milter may wait up to 180 s (queue 30 + "
                    "antivirus 60 + spam 60 + dkim 10 + arc 10 + dmarc 10); with 2 s for the milter's own work that "
                    "is more than postfix.milter_content_timeout (120 s) allows: lower those timeouts, or raise "
                    "milter_content_timeout in Postfix's main.cf and in [postfix] here"]
    # MAIL FROM: only SPF waits, under milter_command_timeout
    with pytest.raises(PolicyError) as caught:
        load_policy(DEFAULT_POLICY, ["dns.lifetime=29"])
    assert any("at MAIL FROM the milter may wait up to 29 s (spf 29)" in str(i) for i in caught.value.issues)
    # lowering the scanners' timeouts makes it fit (30 + 25 + 25 + 3 x 10 = 110, with 2 s under 120)
    load_policy(local, ["antivirus.timeout=25", "spam.timeout=25"])


def test_a_local_file_beside_the_shipped_one_overrides_it(tmp_path):
    """The shipped file is read first (00-default.toml sorts before 50-local.toml, which the
    header of the shipped file tells admins to use), so a local key wins over a shipped one."""
    shutil.copy(DEFAULT_POLICY / "00-default.toml", tmp_path / "00-default.toml")
    (tmp_path / "50-local.toml").write_text("[site]\nmax_message_size = 2000\n")
    assert sorted(p.name for p in DEFAULT_POLICY.glob("*.toml"))[0] == "00-default.toml"
    assert load_policy(tmp_path).policy.site.max_message_size == 2000
