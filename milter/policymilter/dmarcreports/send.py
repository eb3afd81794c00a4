"""dmarc-reports send (being built for issue 14)."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    del parser


def main(args: argparse.Namespace) -> int:
    del args
    raise SystemExit("policy-milter dmarc-reports send: not built yet")
