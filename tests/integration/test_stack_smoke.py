"""The loopback mail stack itself works, before any milter is involved.

Proves the contrib Postfix configuration (doors, TLS, SASL mechanisms, relay
rules) and the stack's plumbing (sink, hold queue, postcat) that the milter's
end-to-end tests rely on.
"""

from __future__ import annotations

import smtplib
import subprocess
import sys
import uuid
from collections.abc import Iterator
from email.message import EmailMessage

import pytest

from tests.conftest import DEFAULT_POLICY, OFFLINE
from tests.integration.postfix_config import LOOPBACK
from tests.integration.stack import MailStack, milter_command, unverified_tls_context
from tests.integration.tryit import example_script, instructions, site_domain

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MailStack]:
    # milter=False: with smtpd_milters set and no milter running, Postfix
    # would answer every message with 451 (milter_default_action = tempfail).
    with MailStack(tmp_path_factory.mktemp("stack"), milter=False) as running:
        yield running


def message(sender: str, rcpt: str) -> tuple[EmailMessage, str]:
    """A small message with a unique Subject to find it again at the sink."""
    marker = f"smoke-{uuid.uuid4().hex[:12]}"
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = rcpt
    msg["Subject"] = marker
    msg.set_content("hello from the smoke test\n")
    return msg, marker


def send_and_wait(stack: MailStack, client: smtplib.SMTP, sender: str, rcpt: str) -> None:
    msg, marker = message(sender, rcpt)
    client.send_message(msg, from_addr=sender, to_addrs=[rcpt])
    delivered = stack.wait_delivered(lambda d: marker.encode() in d.data)
    assert delivered.rcpts == [rcpt]
    assert delivered.mail_from == sender


def test_port25_relays_local_domain_to_sink(stack: MailStack) -> None:
    with smtplib.SMTP(LOOPBACK, stack.ports["smtp"], timeout=30) as client:
        client.ehlo("client.elsewhere.test")
        assert "auth" not in client.esmtp_features  # never AUTH on port 25
        assert "starttls" in client.esmtp_features
        send_and_wait(stack, client, "sender@elsewhere.test", "someone@example.test")


def test_port25_refuses_relaying(stack: MailStack) -> None:
    msg, _ = message("sender@elsewhere.test", "x@elsewhere.test")
    with (
        smtplib.SMTP(LOOPBACK, stack.ports["smtp"], timeout=30) as client,
        pytest.raises(smtplib.SMTPRecipientsRefused) as refused,
    ):
        client.send_message(msg)
    code, text = refused.value.recipients["x@elsewhere.test"]
    assert code == 554
    assert b"5.7.1" in text and b"Relay access denied" in text


def test_submission_offers_no_auth_before_starttls(stack: MailStack) -> None:
    with smtplib.SMTP(LOOPBACK, stack.ports["submission"], timeout=30) as client:
        client.ehlo()
        assert "auth" not in client.esmtp_features
        with pytest.raises(smtplib.SMTPNotSupportedError):
            client.login("alice", "alice-secret")


def test_submission_rejects_mail_before_starttls(stack: MailStack) -> None:
    with smtplib.SMTP(LOOPBACK, stack.ports["submission"], timeout=30) as client:
        client.ehlo()
        code, text = client.mail("alice@example.test")
    assert code == 530 and b"STARTTLS" in text


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_submission_login_after_starttls_and_relay(stack: MailStack, mechanism: str) -> None:
    with smtplib.SMTP(LOOPBACK, stack.ports["submission"], timeout=30) as client:
        client.starttls(context=unverified_tls_context())
        client.ehlo()
        # contrib's sasl/smtpd.conf: PLAIN and LOGIN, nothing else.
        assert client.esmtp_features["auth"].split() == ["PLAIN", "LOGIN"]
        client.user, client.password = "alice", "alice-secret"
        authenticator = client.auth_plain if mechanism == "PLAIN" else client.auth_login
        code, _ = client.auth(mechanism, authenticator, initial_response_ok=mechanism == "PLAIN")
        assert code == 235
        send_and_wait(stack, client, "alice@example.test", "friend@elsewhere.test")


def test_submission_login_with_dotted_name(stack: MailStack) -> None:
    with smtplib.SMTP(LOOPBACK, stack.ports["submission"], timeout=30) as client:
        client.starttls(context=unverified_tls_context())
        assert client.login("bob.smith", "bob-secret")[0] == 235


def test_submission_wrong_password_is_refused(stack: MailStack) -> None:
    with smtplib.SMTP(LOOPBACK, stack.ports["submission"], timeout=30) as client:
        client.starttls(context=unverified_tls_context())
        with pytest.raises(smtplib.SMTPAuthenticationError) as failed:
            client.login("alice", "not-the-password")
    assert failed.value.smtp_code == 535


def test_submission_without_login_cannot_send(stack: MailStack) -> None:
    msg, _ = message("alice@example.test", "friend@elsewhere.test")
    with smtplib.SMTP(LOOPBACK, stack.ports["submission"], timeout=30) as client:
        client.starttls(context=unverified_tls_context())
        with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
            client.send_message(msg)
    assert refused.value.recipients["friend@elsewhere.test"][0] == 554


def test_submissions_implicit_tls_login_and_relay(stack: MailStack) -> None:
    with smtplib.SMTP_SSL(LOOPBACK, stack.ports["submissions"], context=unverified_tls_context(), timeout=30) as client:
        assert client.login("carol", "carol-secret")[0] == 235
        send_and_wait(stack, client, "carol@example.test", "friend@elsewhere.test")


def test_loose_offers_cram_md5_without_tls(stack: MailStack) -> None:
    with smtplib.SMTP(LOOPBACK, stack.ports["loose"], timeout=30) as client:
        client.ehlo()
        assert "CRAM-MD5" in client.esmtp_features["auth"].split()
        client.user, client.password = "alice", "alice-secret"
        code, _ = client.auth("CRAM-MD5", client.auth_cram_md5)
        assert code == 235
        send_and_wait(stack, client, "alice@example.test", "friend@elsewhere.test")


def test_hold_recipient_and_postcat(stack: MailStack) -> None:
    msg, marker = message("sender@elsewhere.test", "hold@example.test")
    with smtplib.SMTP(LOOPBACK, stack.ports["smtp"], timeout=30) as client:
        client.send_message(msg)
    held = [entry for entry in stack.queue() if entry["queue_name"] == "hold"]
    assert held, stack.postqueue()
    texts = [stack.postcat(str(entry["queue_id"])) for entry in held]
    assert any(f"Subject: {marker}" in text for text in texts)


def test_login_name_reaches_postfix_without_realm(stack: MailStack) -> None:
    """contrib leaves smtpd_sasl_local_domain empty: {auth_authen} is the bare name."""
    with smtplib.SMTP(LOOPBACK, stack.ports["submission"], timeout=30) as client:
        client.starttls(context=unverified_tls_context())
        client.login("bob.smith", "bob-secret")
        send_and_wait(stack, client, "bob.smith@example.test", "friend@elsewhere.test")
    stack.wait_maillog(r"sasl_method=PLAIN, sasl_username=bob\.smith$")


def test_files_and_logs_are_where_the_stack_says(stack: MailStack) -> None:
    assert stack.cert_path.is_file()
    assert stack.milter_socket.parent.is_dir()
    assert (stack.config_dir / "main.cf").is_file()
    assert "daemon started" in stack.maillog()
    assert "Mail queue is empty" in stack.postqueue() or stack.queue()


def test_the_try_it_example_works_as_printed(tmp_path):
    """Issue 9: the try-it stack printed an example the shipped policy refused (alice may not
    send as alice@example.test). The printed script, run as printed, is delivered."""
    policy = DEFAULT_POLICY
    with MailStack(tmp_path / "stack") as running:
        running.start_milter([*milter_command(policy, running.milter_socket),
                              *(part for option in OFFLINE for part in ("-o", option))])
        text = instructions(running, site_domain(policy))
        script = text.split("python3 - <<'EOF'\n", 1)[1].split("EOF\n", 1)[0]
        assert script == example_script(running, site_domain(policy))
        run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, run.stderr
        delivered = running.wait_delivered(lambda d: b"Subject: hi" in d.data)
        assert delivered.mail_from == "alice@example.org" and delivered.rcpts == ["friend@elsewhere.test"]
