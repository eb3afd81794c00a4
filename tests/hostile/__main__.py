"""`python -m tests.hostile [--markdown] [--case NAME]... [--dir DIR]`: run the hostile cases, print the table.

As root (Postfix's master), with the project's .venv (built from Debian's python3).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

from tests.hostile.cases import CASES, by_name
from tests.hostile.runner import CaseResult, HostileStack, postfix_version

COLUMNS = ("case", "size", "SMTP result", "decided by", "peak worker RSS MB (growth)", "CPU s", "workers")


def row(result: CaseResult) -> tuple[str, ...]:
    workers = "same, alive" if result.workers_unchanged else \
        f"CHANGED {list(result.workers_before)} -> {list(result.workers_after)}"
    if result.crash_events:
        workers += f"; {len(result.crash_events)} crash event(s)"
    text = result.outcome.describe()
    if len(text) > 110:
        text = text[:107] + "..."
    growth = result.growth_kib / 1024
    return (result.case.name, f"{result.size:,}", text, result.decided_by,
            f"{result.peak_rss_kib / 1024:.1f} (+{growth:.1f})", f"{result.cpu_seconds:.2f}", workers)


def render(rows: list[tuple[str, ...]], markdown: bool) -> str:
    if markdown:
        lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join(" --- " for _ in COLUMNS) + "|"]
        lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |" for cells in rows]
        return "\n".join(lines)
    widths = [max(len(cells[i]) for cells in [COLUMNS, *rows]) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True)).rstrip()
                     for cells in [COLUMNS, *rows])


def machine(stack: HostileStack) -> str:
    settings = ", ".join(f"{name}={value}" for name, value in stack.postfix_settings.items())
    return (f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; nproc {os.cpu_count()}; "
            f"Linux {platform.release()}; Postfix {postfix_version()} ({settings}); "
            f"milter workers {len(stack.worker_pids())}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.hostile", description=__doc__)
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    parser.add_argument("--case", action="append", default=[], help="run only this case (repeatable)")
    parser.add_argument("--dir", help="stack directory (default: a new one under /tmp)")
    args = parser.parse_args(argv)
    cases = [by_name(name) for name in args.case] or CASES
    directory = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="hostile-"))
    rows: list[tuple[str, ...]] = []
    bad = 0
    with HostileStack(directory) as stack:
        header = machine(stack)
        for result in stack.run_all(cases):
            rows.append(row(result))
            bad += not (result.deliberate and result.workers_unchanged)
            print(f"  {result.case.name}: {result.outcome.describe()[:100]} ({result.cpu_seconds:.2f} s CPU)",
                  file=sys.stderr, flush=True)
            for line in result.crash_events[:5]:
                print(f"    {line[:300]}", file=sys.stderr)
    print(header + "\n")
    print(render(rows, args.markdown))
    print(f"\n{len(rows)} cases, {bad} without a clear answer or with changed workers; stack in {directory}")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
