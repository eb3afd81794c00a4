"""The suite's table: one row per scenario, then each scenario's deferral reasons and figures."""

from __future__ import annotations

import os
import platform
import subprocess
import time
from collections.abc import Sequence

from tests.faults.scenarios import Result
from tests.integration.processes import find_program

COLUMNS = ("scenario", "sent", "delivered", "deferred", "refused", "lost", "dup", "unchecked", "not spam-scanned",
           "p50 s", "p99 s", "longest wait s", "time s")


def machine() -> str:
    postconf = find_program("postconf", "postfix")
    version = subprocess.run([postconf, "-d", "-h", "mail_version"], capture_output=True, text=True,
                             check=False).stdout.strip()
    return (f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, nproc {os.cpu_count()}, "
            f"kernel {platform.release()}, Postfix {version}")


def row(result: Result) -> list[str]:
    deferred = f"{result.deferrals} ({result.deferred_messages} msgs)" if result.deferrals else "0"
    return [result.name, str(result.sent), str(result.delivered), deferred, str(result.refused), str(result.lost),
            str(result.duplicated), str(result.unchecked), str(result.not_spam_scanned), f"{result.p50:.2f}",
            f"{result.p99:.2f}", f"{result.longest_wait:.1f} ({result.longest_stage})", f"{result.seconds:.0f}"]


def details(result: Result) -> list[str]:
    lines = []
    for text, count in result.reasons.most_common():
        lines.append(f"deferred x{count}: {text}")
    for text, count in result.refusals.most_common():
        lines.append(f"refused x{count}: {text}")
    for text, count in result.unchecked_why.most_common():
        lines.append(f"unchecked x{count}: {text}")
    for text, count in result.degraded.most_common():
        lines.append(f"delivered x{count} with {text}")
    if result.lost_acknowledged:
        lines.append(f"lost after Postfix said 250: {result.lost_acknowledged}")
    if result.slow:
        lines.append("waited over 1 s: " + ", ".join(f"{stage} x{count} (longest {result.slowest[stage]:.1f} s)"
                                                     for stage, count in result.slow.most_common()))
    if result.events:
        lines.append("milter log: " + ", ".join(f"{name} x{count}" for name, count in sorted(result.events.items())))
    for text, count in result.postfix_warnings.most_common(5):
        lines.append(f"maillog x{count}: {text}")
    if result.tree is not None:
        start, peak, end = result.tree
        lines.append(f"process tree start: {start}")
        lines.append(f"process tree peak:  {peak}")
        lines.append(f"process tree end:   {end}")
    lines.extend(result.notes)
    return lines


def text(results: Sequence[Result]) -> str:
    rows = [list(COLUMNS), *(row(r) for r in results)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    out = [f"policy-milter fault suite: {machine()}", ""]
    for n, cells in enumerate(rows):
        out.append("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths,
                                                                                        strict=True))))
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    for result in results:
        lines = details(result)
        if lines:
            out.append("")
            out.append(f"{result.name}:")
            out.extend(f"  {line}" for line in lines)
    return "\n".join(out)


def markdown(results: Sequence[Result]) -> str:
    out = [f"Run of {machine()}.", "", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    out.extend("| " + " | ".join(row(r)) + " |" for r in results)
    for result in results:
        lines = details(result)
        if lines:
            out += ["", f"**{result.name}**", ""]
            out.extend(f"- {line.replace('|', '/')}" for line in lines)
    return "\n".join(out)
