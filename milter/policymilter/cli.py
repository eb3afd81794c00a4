"""policy-milter run | check-policy | explain | dkim-keygen | dns-records | check-postfix | report | accounts |
dmarc-reports."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import sys
import tempfile
from collections.abc import Sequence
from email.utils import getaddresses
from pathlib import Path
from typing import Any

from policymilter import __version__
from policymilter.accounts import add_accounts_command, cmd_accounts
from policymilter.author import Author
from policymilter.conversation import Conversation
from policymilter.dmarcreports import add_dmarc_reports_command, cmd_dmarc_reports
from policymilter.facts import Session
from policymilter.listeners import UNKNOWN_LISTENER, ListenerMatch, listener_by_name
from policymilter.logs import setup_logging
from policymilter.message import Message
from policymilter.metrics import Listen
from policymilter.outcome import AddHeader, ChangeHeader, Disposition, RemoveHeader, Verdict
from policymilter.pipeline import Stage
from policymilter.policy import PolicyError, load_policy
from policymilter.privileges import MILTER_USER, Identity, acting_as, milter_identity
from policymilter.report import add_report_command, cmd_report
from policymilter.resources import store_consequence
from policymilter.service import Service, load_checked, load_snapshot, unusable_keys
from policymilter.snapshot import Snapshot, snapshot_for
from policymilter.state import open_store

DEFAULT_POLICY = "/etc/policy-milter"
DEFAULT_SOCKET = "unix:/run/policy-milter/milter.sock"
EXIT_INVALID = 2
EXIT_UNUSABLE_KEYS = 1  # check-policy: valid, but a signing key the milter cannot use
SOCKET_SPEC = re.compile(r"^(unix|local):/\S+$|^inet6?:(?P<port>\d{1,5})(@\S+)?$", re.ASCII)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def _common(parser: argparse.ArgumentParser, policy_required: bool = False) -> None:
    parser.add_argument("--policy", required=policy_required, default=None if policy_required else DEFAULT_POLICY,
                        help="policy file, or directory of *.toml files read in name order "
                             f"(default: {DEFAULT_POLICY})")
    parser.add_argument("-o", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                        help="override one policy key for this run (TOML value syntax); repeatable")


def _milter_user(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--user", help=f"the user the milter runs as, which must own the signing keys; {what} "
                                       f"(default, run as root: {MILTER_USER} when that account exists; "
                                       "otherwise you)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="policy-milter", description=__doc__)
    parser.add_argument("--version", action="version", version=f"policy-milter {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="serve the policy to Postfix over the milter protocol")
    _common(run)
    run.add_argument("--socket", default=DEFAULT_SOCKET,
                     help=f"unix:/path, inet:PORT@HOST or inet6:PORT@HOST (default: {DEFAULT_SOCKET})")
    run.add_argument("--user", help="drop to this user after binding (when started as root)")
    run.add_argument("--group", help="drop to this group after binding; Postfix must be able to use "
                                     "the 0660 socket, so usually `postfix`")
    run.add_argument("--log-format", choices=("kv", "json"), default="kv")
    run.add_argument("--log-level", choices=("debug", "info", "warning", "error"), default="info")
    run.add_argument("--syslog", action="store_true", help="log to syslog's mail facility, not stderr")
    run.add_argument("--timeout", type=int, default=600,
                     help="seconds libmilter waits for the MTA before dropping a connection")
    run.add_argument("--drain-timeout", type=float, default=30.0,
                     help="on SIGTERM, seconds to let open transactions finish (default 30)")
    run.add_argument("--workers", type=_positive, default=None, metavar="N",
                     help="worker processes serving the socket (default: one per CPU)")
    run.add_argument("--metrics", metavar="HOST:PORT", default=None,
                     help="serve Prometheus metrics at http://HOST:PORT/metrics (default: the policy's "
                          "metrics.listen; \"\": off)")
    run.add_argument("--recycle-after", type=_positive, default=0, metavar="M",
                     help="replace a worker after it has handled M messages, to bound slow leaks (default: never)")

    check = commands.add_parser("check-policy", help="validate a policy; exit 0, or 2 with FILE:LINE errors, "
                                                     "or 1 when a signing key cannot be used")
    check.add_argument("policy", help="policy file or directory")
    _milter_user(check, "signing keys and the sender map are read as that user, as the milter reads them")
    check.add_argument("--group", help="the milter's --group, with which it reads them too (default: the "
                                       "user's own group)")
    check.add_argument("-o", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE")

    explain = commands.add_parser("explain", help="run the pipeline on one message, without Postfix")
    _common(explain, policy_required=True)
    explain.add_argument("--listener", required=True, help="listener name from the policy (or `unknown`)")
    explain.add_argument("--auth", metavar="LOGIN[:MECH]", help="the session authenticated (MECH: PLAIN)")
    explain.add_argument("--tls", action="store_true", help="the session used TLS")
    explain.add_argument("--client", default="192.0.2.1", help="client IP address")
    explain.add_argument("--client-name", default=None, help="client host name (default: unknown)")
    explain.add_argument("--helo", default="client.example", help="HELO/EHLO name")
    explain.add_argument("--mail-from", default=None, help="envelope sender (default: the From address)")
    explain.add_argument("--rcpt", action="append", default=[], help="envelope recipient; repeatable "
                                                                      "(default: the To/Cc addresses)")
    explain.add_argument("--json", action="store_true", help="print one JSON object")
    explain.epilog = ("ratelimit runs against an empty scratch store: explain never counts in the site's store "
                      "(policy-milter accounts show LOGIN reads that)")
    explain.add_argument("message", help="the message file (RFC 5322, .eml); - for standard input")

    keygen = commands.add_parser("dkim-keygen", help="make a DKIM signing key file; print its DNS record")
    keygen.add_argument("--domain", required=True, help="the signing domain (d=), e.g. example.org")
    keygen.add_argument("--selector", required=True, help="the selector (s=), e.g. s2026")
    keygen.add_argument("--type", dest="key_type", choices=("rsa", "ed25519"), default="rsa",
                        help="key type (default: rsa; many receivers cannot verify ed25519 yet)")
    keygen.add_argument("--bits", type=int, default=None, help="RSA key size, 2048-4096 (default: 2048)")
    keygen.add_argument("--out", required=True, metavar="DIR",
                        help="directory for DOMAIN.SELECTOR.key (created with mode 0700 if missing)")
    keygen.add_argument("--force", action="store_true", help="replace an existing key file")

    records = commands.add_parser("dns-records", help="print the SPF, DKIM and DMARC records of site.domains "
                                                      "in zone-file form")
    _common(records, policy_required=True)
    _milter_user(records, "a key it would refuse gets no record")

    postfix = commands.add_parser("check-postfix", help="check Postfix's live configuration (postconf) against "
                                                        "the policy: exit 0, 1 (warnings) or 2 (errors)")
    _common(postfix)
    postfix.add_argument("-c", dest="postfix_config", metavar="POSTFIX_CONFIG_DIR", default=None,
                         help="Postfix's configuration directory (default: postconf's, $MAIL_CONFIG or /etc/postfix)")
    postfix.add_argument("--socket", default=None, help="the milter's socket as given to `run --socket` (default: "
                                                        "any milter whose path ends in policy-milter/milter.sock)")
    add_report_command(commands)
    add_accounts_command(commands)
    add_dmarc_reports_command(commands)
    return parser


def _print_issues(error: PolicyError) -> None:
    for issue in error.issues:
        print(issue, file=sys.stderr)


def _judged_as(args: argparse.Namespace, command: str, *, reads: bool) -> Identity | None:
    """The milter's user for `command`; None (after printing why) if it cannot be used."""
    try:
        identity = milter_identity(args.user, getattr(args, "group", None))
    except ValueError as error:
        print(f"{command}: {error}", file=sys.stderr)
        return None
    if reads and identity.uid != os.geteuid() and os.geteuid() != 0:
        print(f"{command}: --user {identity.name}: only root can read the milter's files as {identity.name}; "
              f"run it as root, or as {identity.name}", file=sys.stderr)
        return None
    return identity


def cmd_check_policy(args: argparse.Namespace) -> int:
    identity = _judged_as(args, "check-policy", reads=True)
    if identity is None:
        return EXIT_INVALID
    try:
        loaded = load_checked(args.policy, args.overrides)  # as `run` reads it: before dropping privileges
        # The policy's resources as the daemon reads them, after dropping privileges: as that user.
        with acting_as(identity):
            snapshot = snapshot_for(loaded.policy, loaded.files)
    except PolicyError as error:
        _print_issues(error)
        print(f"{args.policy}: {len(error.issues)} error(s); the policy was not accepted", file=sys.stderr)
        return EXIT_INVALID
    unusable = unusable_keys(snapshot)
    if unusable:
        for domain, key, problem in unusable:
            print(f"{problem} (signing.keys for {domain}, selector {key.selector})", file=sys.stderr)
        domains = ", ".join(sorted({domain for domain, _, _ in unusable}))
        print(f"{args.policy}: the policy is valid, but {len(unusable)} signing key(s) cannot be used by "
              f"{identity.name}: mail from {domains} gets signing.on_missing_key = "
              f'"{snapshot.policy.signing.on_missing_key}"', file=sys.stderr)
        return EXIT_UNUSABLE_KEYS
    store = snapshot.resources.store
    with acting_as(identity):
        unusable_store = store.problem() if store is not None else None
    if store is not None and unusable_store:
        print(f"{args.policy}: the policy is valid, but {identity.name} cannot use the state store "
              f"(state.store) {store.url}: {unusable_store}; until it can, "
              f"{store_consequence(snapshot.policy)}", file=sys.stderr)
        return EXIT_UNUSABLE_KEYS
    names = ", ".join(snapshot.policy.listeners)
    print(f"{args.policy}: OK ({len(snapshot.policy.listeners)} listeners: {names}; "
          f"files: {', '.join(snapshot.files)})")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    spec = SOCKET_SPEC.match(args.socket)
    if not spec or (spec["port"] and not 0 < int(spec["port"]) < 65536):
        print(f"--socket {args.socket!r}: expected unix:/path, inet:PORT@HOST or inet6:PORT@HOST "
              "(PORT 1-65535)",
              file=sys.stderr)
        return EXIT_INVALID
    try:
        setup_logging(args.log_format, args.log_level, args.syslog)
    except OSError as error:
        print(f"--syslog: cannot reach the syslog socket /dev/log ({error}); is a syslog daemon running?",
              file=sys.stderr)
        return 1
    try:
        # Validated now, so FILE:LINE errors come before anything is bound; its resources are
        # read by start(), after the privilege drop.
        loaded = load_checked(args.policy, args.overrides)
    except PolicyError as error:
        _print_issues(error)
        print(f"{args.policy}: the policy is not valid; not starting", file=sys.stderr)
        return EXIT_INVALID
    listen = args.metrics if args.metrics is not None else loaded.policy.metrics.listen  # "": off
    try:
        metrics_listen = Listen.parse(listen) if listen else None
    except ValueError as error:
        print(f"--metrics: {error}", file=sys.stderr)
        return EXIT_INVALID
    from policymilter.daemon import serve  # imports pymilter only for the daemon
    from policymilter.privileges import resolve_identity

    try:
        identity = resolve_identity(args.user, args.group)
    except (ValueError, PermissionError) as error:
        print(f"cannot start: {error}", file=sys.stderr)
        return EXIT_INVALID

    def start() -> Service:
        return Service(args.policy, args.overrides, loaded=loaded)

    try:
        return serve(start, args.socket, identity=identity, timeout=args.timeout,
                     drain_timeout=args.drain_timeout, workers=args.workers, recycle_after=args.recycle_after,
                     metrics_listen=metrics_listen, metrics_directory=loaded.policy.metrics.directory)
    except PolicyError as error:
        _print_issues(error)
        print(f"{args.policy}: the policy is not valid; not starting", file=sys.stderr)
        return EXIT_INVALID
    except OSError as error:
        print(f"cannot start on {args.socket}: {error}", file=sys.stderr)
        return 1


def _addresses(message: Message, *names: str) -> list[str]:
    values = [value for name in names for value in message.header_values(name)]
    return [address for _, address in getaddresses(values) if address]


def explain_session(snapshot: Snapshot, args: argparse.Namespace) -> Session:
    listener = snapshot.policy.listeners.get(args.listener)
    if listener is None and args.listener != UNKNOWN_LISTENER:
        known = ", ".join(snapshot.policy.listeners) or "none"
        raise ValueError(f"--listener {args.listener!r}: the policy has no such listener (listeners: {known})")
    daemon_name = (listener.daemon_name or args.listener) if listener else None
    login, mechanism = None, None
    if args.auth:
        login, _, mechanism = args.auth.partition(":")
        mechanism = (mechanism or "PLAIN").upper()
    return Session(
        conn_id="explain",
        client_ip=args.client,
        client_name=args.client_name or "unknown",
        helo=args.helo,
        daemon_name=daemon_name,
        daemon_port=(listener.ports[0] if listener and listener.ports else None),
        auth_login=login or None,
        auth_mech=mechanism,
        tls_version="TLSv1.3" if args.tls else None,
        tls_cipher="TLS_AES_256_GCM_SHA384" if args.tls else None,
    )


def explain(snapshot: Snapshot, session: Session, listener: ListenerMatch, raw: bytes, mail_from: str | None,
            rcpts: Sequence[str]) -> dict[str, Any]:
    """Feed one message through a Conversation as Postfix would; describe what happened."""
    message = Message.from_bytes(raw)
    conversation = Conversation(snapshot, session, listener=listener)
    conversation.connected()
    written_by = message.author()
    # The envelope sender defaults to the author the checks judge (none for a bad From).
    sender = mail_from if mail_from is not None else (written_by.address if isinstance(written_by, Author) else "")
    recipients = list(rcpts) or _addresses(message, "To", "Cc") or ["postmaster@localhost"]
    verdict = conversation.mail(session, f"<{sender}>")
    stage = Stage.MAIL
    if not verdict.stops:
        for rcpt in recipients:
            conversation.rcpt(f"<{rcpt}>")
        conversation.data(None)
        for header in message.headers:
            conversation.header(header.name, header.value)
        conversation.body(message.body_bytes())
        verdict = conversation.end_of_message(None)
        stage = Stage.EOM
    return describe(conversation, verdict, stage)


def scratch_store(snapshot: Snapshot, directory: str) -> Snapshot:
    """The snapshot with an empty state store in `directory`: explain shows what the rate limits
    do to one message from a login with nothing sent yet, and never counts in the site's store
    (`policy-milter accounts show LOGIN` reads that)."""
    if snapshot.resources.store is None:
        return snapshot
    store = open_store(f"sqlite:{directory}/explain.db")
    return dataclasses.replace(snapshot, resources=dataclasses.replace(snapshot.resources, store=store))


def smtp_reply_text(verdict: Verdict) -> str:
    if verdict.reply is not None and verdict.disposition in (Disposition.REJECT, Disposition.TEMPFAIL):
        return str(verdict.reply)
    return "250 2.0.0 Ok: queued"


def describe(conversation: Conversation, verdict: Verdict, stage: Stage) -> dict[str, Any]:
    return {
        "verdict": verdict.name,
        "smtp_reply": smtp_reply_text(verdict),
        "stage": str(stage),
        "decided_by": verdict.decided_by or None,
        "reason": verdict.reason or None,
        "listener": conversation.listener.name,
        "matched_by": str(conversation.listener.matched_by),
        "checks": [
            {
                "check": result.check,
                "outcome": str(result.outcome),
                "detail": result.detail or None,
                "disposition": result.disposition.verdict_name,
                "would": result.would.verdict_name if result.would is not None else None,
                "reply": str(result.reply) if result.reply else None,
                "reason": result.reason or None,
                "elapsed_ms": round(result.elapsed_ms, 2),
            }
            for result in conversation.results
        ],
        "headers_added": [{"name": a.name, "value": a.value} for a in verdict.actions if isinstance(a, AddHeader)],
        "headers_removed": [{"name": a.name, "index": a.index} for a in verdict.actions
                            if isinstance(a, RemoveHeader)],
        "headers_changed": [{"name": a.name, "index": a.index, "value": a.value} for a in verdict.actions
                            if isinstance(a, ChangeHeader)],
    }


def print_explanation(report: dict[str, Any]) -> None:
    print(f"verdict:     {report['verdict']}")
    print(f"smtp reply:  {report['smtp_reply']}")
    print(f"listener:    {report['listener']} (matched by {report['matched_by']})")
    if report["decided_by"]:
        print(f"decided by:  {report['decided_by']} at {report['stage']}: {report['reason']}")
    print("checks:")
    for check in report["checks"]:
        value = check["outcome"] + (f":{check['detail']}" if check["detail"] else "")
        would = f" (report mode: would {check['would']})" if check["would"] else ""
        print(f"  {check['check']:<12} {value:<28} {check['elapsed_ms']:>7.2f} ms  {check['reason'] or ''}{would}")
    print("headers added:" + ("" if report["headers_added"] else " none"))
    for header in report["headers_added"]:
        print(f"  {header['name']}: {header['value']}")
    if report["headers_removed"]:
        print("headers removed:")
        for header in report["headers_removed"]:
            print(f"  {header['name']} #{header['index']}")


def cmd_explain(args: argparse.Namespace) -> int:
    setup_logging("kv", "warning")
    try:
        snapshot = load_snapshot(args.policy, args.overrides)
    except PolicyError as error:
        _print_issues(error)
        return EXIT_INVALID
    try:
        session = explain_session(snapshot, args)
        raw = sys.stdin.buffer.read() if args.message == "-" else Path(args.message).read_bytes()
    except (ValueError, OSError) as error:
        print(f"explain: {error}", file=sys.stderr)
        return EXIT_INVALID
    with tempfile.TemporaryDirectory(prefix="policy-milter-explain-") as scratch:
        report = explain(scratch_store(snapshot, scratch), session, listener_by_name(snapshot.policy, args.listener),
                         raw, args.mail_from, args.rcpt)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_explanation(report)
    return 0


def cmd_dkim_keygen(args: argparse.Namespace) -> int:
    from policymilter import publish, signing_keys

    kind = signing_keys.KeyType(args.key_type)
    try:
        domain = signing_keys.valid_domain(args.domain)
        selector = signing_keys.valid_selector(args.selector, domain)
        bits = signing_keys.rsa_bits(kind, args.bits)
    except ValueError as error:
        print(f"dkim-keygen: {error}", file=sys.stderr)
        return EXIT_INVALID
    key_file = Path(args.out).absolute() / signing_keys.key_file_name(domain, selector)
    replaced = key_file.exists() or key_file.is_symlink()
    if replaced and not args.force:
        print(f"dkim-keygen: {key_file} exists; not replacing it, as DNS may publish its record. To rotate "
              "keys use a new --selector; to replace this key anyway, --force", file=sys.stderr)
        return 1
    private = signing_keys.generate_private_key(kind, bits)
    try:
        signing_keys.write_key_file(key_file, private, force=args.force)
    except OSError as error:
        print(f"dkim-keygen: cannot write {key_file}: {error.strerror or error}", file=sys.stderr)
        return 1
    record = signing_keys.public_record(signing_keys.parse_private_key(private, kind.algorithm))
    print(publish.txt_line(publish.dkim_owner(selector, domain), record))
    print(signing_keys.next_steps(domain, selector, key_file, kind, replaced), file=sys.stderr)
    return 0


def cmd_dns_records(args: argparse.Namespace) -> int:
    from policymilter import publish

    # Read as whoever runs it (root reads any key: only the public half is printed), but a key
    # is judged against the milter's user, who must own it for the milter to sign with it.
    identity = _judged_as(args, "dns-records", reads=False)
    if identity is None:
        return EXIT_INVALID
    try:
        policy = load_policy(args.policy, args.overrides).policy
    except PolicyError as error:
        _print_issues(error)
        print(f"{args.policy}: {len(error.issues)} error(s); the policy was not accepted", file=sys.stderr)
        return EXIT_INVALID
    if not policy.site.domains:
        print(f"dns-records: {args.policy}: site.domains is empty; there is nothing to publish", file=sys.stderr)
        return EXIT_INVALID
    zone = publish.zone_text(policy, str(args.policy), key_owner=identity.uid)
    sys.stdout.write(zone.text)
    if zone.problems:
        print(f"dns-records: {len(zone.problems)} DKIM record(s) missing; see the ; lines:", file=sys.stderr)
        for problem in zone.problems:
            print(f"  {problem}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    match args.command:
        case "run":
            return cmd_run(args)
        case "check-policy":
            return cmd_check_policy(args)
        case "explain":
            return cmd_explain(args)
        case "dkim-keygen":
            return cmd_dkim_keygen(args)
        case "dns-records":
            return cmd_dns_records(args)
        case "check-postfix":
            from policymilter.postfix_check import cmd_check_postfix  # imports pymilter (the macro lists)

            return cmd_check_postfix(args)
        case "report":
            return cmd_report(args)
        case "accounts":
            return cmd_accounts(args)
        case "dmarc-reports":
            return cmd_dmarc_reports(args)
    return EXIT_INVALID
