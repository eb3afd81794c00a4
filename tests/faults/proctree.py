"""The milter's process tree (parent + workers) as /proc shows it: RSS, open file descriptors, threads."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Sample:
    processes: int
    rss_kib: int  # sum of VmRSS
    fds: int  # sum of /proc/PID/fd entries
    threads: int  # sum of Threads

    def __str__(self) -> str:
        return f"{self.rss_kib / 1024:.0f} MiB / {self.fds} fds / {self.threads} thr ({self.processes} proc)"


def tree(parent: int) -> list[int]:
    try:
        children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
    except FileNotFoundError:
        return []
    return [parent, *(int(pid) for pid in children)]


def sample(parent: int) -> Sample:
    processes = rss = fds = threads = 0
    for pid in tree(parent):
        try:
            status = Path(f"/proc/{pid}/status").read_text()
            count = len(os.listdir(f"/proc/{pid}/fd"))
        except (FileNotFoundError, ProcessLookupError):
            continue  # exited while we looked (a worker being replaced)
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        processes += 1
        rss += int(fields.get("VmRSS", "0 kB").split()[0])
        threads += int(fields.get("Threads", "0").split()[0])
        fds += count
    return Sample(processes, rss, fds, threads)


class Sampler:
    """Samples the tree every `interval` seconds in a thread; keeps the first, the peak of each figure, the last."""

    def __init__(self, parent: int, interval: float = 0.5) -> None:
        self.parent = parent
        self.interval = interval
        self.start = sample(parent)
        self.peak = self.start
        self.samples = 1
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="proc-sampler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._note(sample(self.parent))

    def _note(self, now: Sample) -> None:
        self.samples += 1
        self.peak = Sample(max(self.peak.processes, now.processes), max(self.peak.rss_kib, now.rss_kib),
                           max(self.peak.fds, now.fds), max(self.peak.threads, now.threads))

    def stop(self) -> Sample:
        self._stop.set()
        self._thread.join(10)
        end = sample(self.parent)
        self._note(end)
        return end
