"""The "try it" CLI: a loopback mail stack to play with by hand.

One job: start a ``MailStack`` with the milter under test and the services its checks need
(nsd for DNS, clamd, spamd), print the ports, users, logs and a ready-to-run example, and keep
everything running until Ctrl-C. Run as ``python -m tests.integration.stack`` (what the READMEs
document; stack.py hands over to ``main`` here) or ``python -m tests.integration.tryit``.
``example_script``, ``instructions`` and ``site_domain`` are also what test_stack_smoke.py checks
the printed example with.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from tests.integration.dns_server import DnsServer, Zone
from tests.integration.postfix_config import LOCAL_DOMAIN, REPO_ROOT
from tests.integration.scanners import Clamd, Spamd
from tests.integration.stack import MailStack, milter_command


def _milter_env() -> dict[str, str]:
    """Make `python -m policymilter` work from a checkout that is not pip-installed."""
    if importlib.util.find_spec("policymilter") is not None:
        return {}
    source = REPO_ROOT / "milter"
    path = os.pathsep.join(p for p in (str(source), os.environ.get("PYTHONPATH", "")) if p)
    return {"PYTHONPATH": path}


def example_script(stack: MailStack, sender_domain: str) -> str:
    """A Python script that submits one message on 587 as the first user, from an address that
    user owns under the policy (`{login}@{a site domain}`): what the try-it stack prints."""
    user, password = next(iter(stack.users.items()))
    return f"""import smtplib, ssl
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
with smtplib.SMTP("127.0.0.1", {stack.ports["submission"]}) as s:
    s.starttls(context=ctx)
    s.login("{user}", "{password}")
    s.sendmail("{user}@{sender_domain}", ["friend@elsewhere.test"],
               b"From: {user}@{sender_domain}\\r\\nTo: friend@elsewhere.test\\r\\nSubject: hi\\r\\n\\r\\nhello\\r\\n")
"""


def instructions(stack: MailStack, sender_domain: str) -> str:
    """What the try-it stack prints once it runs: ports, users, logs, and ways to send mail."""
    sub, smtp = stack.ports["submission"], stack.ports["smtp"]
    user, password = next(iter(stack.users.items()))
    users = ", ".join(f"{name} / {secret}" for name, secret in stack.users.items())
    return f"""
Mail stack running in {stack.directory}
  ports:  smtp (port-25 door) {smtp}   submission (587, STARTTLS) {sub}
          submissions (465, implicit TLS) {stack.ports["submissions"]}
          loose (AUTH without TLS, CRAM-MD5; reported as submission) {stack.ports["loose"]}
          sink (next hop, aiosmtpd) {stack.ports["sink"]}
  users:  {users}   (realm {stack.sasl_realm}; log in with the bare name)
  domain: {LOCAL_DOMAIN} is accepted on the smtp door; other domains only after AUTH
  senders: a login sends as LOGIN@{sender_domain} (the policy's site.domains)
  logs:   {stack.maillog_path}
          {stack.milter_log_path}
  milter socket: {stack.milter_socket}

Send through submission with Python:

python3 - <<'EOF'
{example_script(stack, sender_domain)}EOF

or with swaks (STARTTLS needs libnet-ssleay-perl):

swaks --server 127.0.0.1:{sub} --tls --auth PLAIN --auth-user {user} --auth-password {password} \\
      --from {user}@{sender_domain} --to friend@elsewhere.test

Inbound on the smtp door:  swaks --server 127.0.0.1:{smtp} --from someone@elsewhere.test --to postmaster@{LOCAL_DOMAIN}

Ctrl-C stops everything."""


def site_domain(policy: Path) -> str:
    """The first of the policy's site.domains (what logins own addresses in), else the stack's."""
    from policymilter.policy import PolicyError, load_policy

    try:
        domains = load_policy(policy).policy.site.domains
    except PolicyError:
        return LOCAL_DOMAIN
    return domains[0] if domains else LOCAL_DOMAIN


def _interrupt(signum: int, frame: object) -> None:
    """SIGTERM handler: stop like Ctrl-C."""
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    """Start the stack (with nsd, clamd, spamd and the milter unless --no-milter), print how to use it, and
    wait for Ctrl-C or SIGTERM; everything is stopped on the way out."""
    parser = argparse.ArgumentParser(description="Run Postfix + SASL + TLS + sink + policy-milter on loopback.")
    parser.add_argument("--dir", type=Path, help="stack directory (default: a new one under /tmp)")
    parser.add_argument("--policy", type=Path, default=REPO_ROOT / "policies", help="policy path for the milter")
    parser.add_argument("--no-milter", action="store_true", help="Postfix without the milter")
    args = parser.parse_args(argv)

    directory = args.dir or Path(tempfile.mkdtemp(prefix="policy-milter-stack-"))
    stack = MailStack(directory, milter=not args.no_milter)
    # A real DNS server for the inbound checks (example.org publishes SPF for 192.0.2.10 only
    # and DMARC p=reject, so mail claiming it sent to port 25 from here is refused as a
    # forgery), clamd and spamd for scanning.
    zones = [Zone("example.org").txt("@", "v=spf1 ip4:192.0.2.10 -all").txt("_dmarc", "v=DMARC1; p=reject"),
             Zone(LOCAL_DOMAIN), Zone("elsewhere.test"), Zone("example.net")]
    dns_server = DnsServer(directory / "dns", zones)
    clamd, spamd = Clamd(directory / "clamd"), Spamd(directory / "spamd")
    # SIGTERM behaves like Ctrl-C so the stack is always stopped cleanly.
    signal.signal(signal.SIGTERM, _interrupt)
    started = time.monotonic()
    try:
        stack.start()
        if not args.no_milter:
            dns_server.start()
            clamd.start()
            spamd.start()
            options = [f'dns.nameservers=["{dns_server.nameserver}"]', f'antivirus.servers=["{clamd.endpoint}"]',
                       f'spam.servers=["{spamd.endpoint}"]']
            command = milter_command(args.policy.resolve(), stack.milter_socket)
            stack.start_milter([*command, *(part for option in options for part in ("-o", option))],
                               env=_milter_env())
        print(f"started in {time.monotonic() - started:.1f}s")
        print(instructions(stack, site_domain(args.policy)), flush=True)
        if not args.no_milter:
            print(f"  dns:    nsd on {dns_server.nameserver} (zones: {', '.join(z.origin for z in zones)})")
            print(f"  clamd:  {clamd.endpoint} (EICAR is its one signature); spamd: {spamd.endpoint} (try GTUBE)")
            print("  try a forgery on the smtp door: From: ceo@example.org (DMARC p=reject) is refused")
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("\nstopping...", flush=True)
    finally:
        # A second Ctrl-C or SIGTERM must not cut the cleanup short: the daemons run in
        # sessions of their own and would outlive us.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        stack.stop()
        for daemon in (spamd, clamd, dns_server):
            daemon.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
