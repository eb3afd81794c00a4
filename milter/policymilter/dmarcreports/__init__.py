"""DMARC aggregate reports (RFC 7489 §7.2, RFC 9990), both ways.

`policy-milter dmarc-reports read` summarises the reports other receivers send about the site's
domains (`read.py`); `policy-milter dmarc-reports send` reports to other domains what the dmarc
check recorded of their mail (`send.py`).
"""

from __future__ import annotations

import argparse
from typing import Any


def add_dmarc_reports_command(commands: Any) -> None:
    """The `dmarc-reports` subcommand's arguments (`commands` is build_parser's subparsers)."""
    from policymilter.dmarcreports import read, send

    reports = commands.add_parser("dmarc-reports", help="read the DMARC aggregate reports sent about our domains; "
                                                        "send the ones we owe other domains")
    verbs = reports.add_subparsers(dest="verb", required=True)
    read.add_arguments(verbs.add_parser("read", help="summarise aggregate reports (mbox, Maildir, .eml, .xml, "
                                                     ".xml.gz, .zip) per site domain and sending source"))
    send.add_arguments(verbs.add_parser("send", help="send the aggregate reports the dmarc check recorded, one per "
                                                     "domain and period, through the local MTA"))


def cmd_dmarc_reports(args: argparse.Namespace) -> int:
    from policymilter.dmarcreports import read, send

    return read.main(args) if args.verb == "read" else send.main(args)
