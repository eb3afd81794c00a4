"""`python -m tests.faults [--long] [--markdown] [--scenario NAME ...]`: run the fault suite and print its table.

Run as root from the repository with .venv/bin/python (Postfix, nsd, clamd and spamd run privately
under a temporary directory, removed afterwards unless --keep).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from tests.faults import report
from tests.faults.scenarios import BY_NAME, SCENARIOS, SHIPPED_SCANNER, SOAK_SECONDS, Options, Result, run_scenario
from tests.faults.world import World


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.faults", description=__doc__)
    parser.add_argument("--long", action="store_true", help="four times the bursts, and the load soak for an hour")
    parser.add_argument("--markdown", action="store_true", help="print the table as markdown too")
    parser.add_argument("--scenario", action="append", choices=sorted(BY_NAME), metavar="NAME",
                        help=f"run only these (repeatable): {', '.join(BY_NAME)}")
    parser.add_argument("--soak-seconds", type=float, default=SOAK_SECONDS,
                        help=f"how long --long runs the load (default {SOAK_SECONDS:.0f})")
    parser.add_argument("--load-scanner-timeout", type=float, default=SHIPPED_SCANNER,
                        help=f"antivirus.timeout and spam.timeout of the load (default {SHIPPED_SCANNER:.0f}, shipped)")
    parser.add_argument("--dir", type=Path, help="work directory (default: a new one under /tmp)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, maillog)")
    args = parser.parse_args(argv)
    chosen = [BY_NAME[name] for name in args.scenario] if args.scenario else list(SCENARIOS)
    options = Options(long=args.long, soak_seconds=args.soak_seconds, load_scanner_timeout=args.load_scanner_timeout)
    directory = args.dir or Path(tempfile.mkdtemp(prefix="faults-"))
    results: list[Result] = []
    try:
        with World(directory) as world:
            for scenario in chosen:
                print(f"running {scenario.name}: {scenario.what}", file=sys.stderr, flush=True)
                results.append(run_scenario(world, scenario, options))
    finally:
        if results:
            print(report.text(results))
            if args.markdown:
                print()
                print(report.markdown(results))
        if args.keep or args.dir:
            print(f"work directory kept: {directory}", file=sys.stderr)
        else:
            shutil.rmtree(directory, ignore_errors=True)
    bad = [r.name for r in results if r.lost or r.duplicated or r.unchecked]
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
