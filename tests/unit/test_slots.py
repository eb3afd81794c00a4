"""slots.py: scans in flight per scanner, one bound across threads and forked worker processes."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from policymilter.scanning import ScannerError, failover
from policymilter.slots import Scanner, SlotPool, SlotsBusy, pool


def later(seconds: float) -> float:
    return time.monotonic() + seconds


def test_threads_never_hold_more_slots_than_the_count():
    slots = SlotPool()
    peak, now, lock = [0], [0], threading.Lock()

    def scan() -> None:
        for _ in range(30):
            with slots.hold(Scanner.ANTIVIRUS, 3, later(10)):
                with lock:
                    now[0] += 1
                    peak[0] = max(peak[0], now[0])
                time.sleep(0.001)
                with lock:
                    now[0] -= 1

    threads = [threading.Thread(target=scan) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert peak[0] == 3
    assert slots.taken(Scanner.ANTIVIRUS, 3) == 0


def test_a_scan_that_finds_every_slot_taken_waits_then_gives_up_at_its_deadline():
    slots = SlotPool()
    with slots.hold(Scanner.SPAM, 1, later(1)):
        assert slots.taken(Scanner.SPAM, 1) == 1
        with pytest.raises(SlotsBusy, match="all 1 scans in flight stayed busy"), \
                slots.hold(Scanner.SPAM, 1, later(0.05)):
            pass
    with slots.hold(Scanner.SPAM, 1, later(0.05)):
        pass  # free again


def test_each_scanner_has_its_own_slots():
    slots = SlotPool()
    with slots.hold(Scanner.ANTIVIRUS, 1, later(1)), slots.hold(Scanner.SPAM, 1, later(0.05)):
        assert slots.taken(Scanner.ANTIVIRUS, 1) == 1 and slots.taken(Scanner.SPAM, 1) == 1


def _child_holding(slots: SlotPool, count: int) -> int:
    """A forked process (a worker) that takes a slot and sleeps; its pid, once it holds the slot."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            with slots.hold(Scanner.ANTIVIRUS, count, later(5)):
                os.write(write, b"x")
                time.sleep(30)
        finally:
            os._exit(0)
    os.close(write)
    assert os.read(read, 1) == b"x"
    os.close(read)
    return pid


def test_the_bound_holds_across_forked_workers_and_a_killed_worker_frees_its_slot():
    slots = SlotPool()  # made before the fork, as the daemon's parent does
    children = [_child_holding(slots, 2) for _ in range(2)]
    try:
        assert slots.taken(Scanner.ANTIVIRUS, 2) == 2
        with pytest.raises(SlotsBusy), slots.hold(Scanner.ANTIVIRUS, 2, later(0.05)):
            pass
        os.kill(children[0], signal.SIGKILL)  # mid-scan: the kernel drops its lock
        os.waitpid(children[0], 0)
        with slots.hold(Scanner.ANTIVIRUS, 2, later(1)):
            assert slots.taken(Scanner.ANTIVIRUS, 2) == 2
    finally:
        for pid in children[1:]:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    assert slots.taken(Scanner.ANTIVIRUS, 2) == 0


def test_failover_reports_a_busy_scanner_naming_the_setting():
    def attempt(endpoint: str, left: float) -> str:
        return endpoint

    with pool().hold(Scanner.ANTIVIRUS, 1, later(1)), \
            pytest.raises(ScannerError, match=r"all 1 scans in flight stayed busy for 0.05 s: clamd is slow or hung "
                                              r"\(the bound is antivirus.max_in_flight\)"):
        failover(["unix:/nonexistent"], 0.05, attempt, "clamd", Scanner.ANTIVIRUS, 1)
    assert failover(["unix:/x"], 1.0, attempt, "clamd", Scanner.ANTIVIRUS, 1) == "unix:/x"


def _fork(body) -> int:
    pid = os.fork()
    if pid == 0:
        try:
            body()
        finally:
            os._exit(0)
    return pid


def _churn(slots: SlotPool, count: int, until: float) -> None:
    """A sender's stream of short scans: each a new hold, asking again the moment it ends."""
    while time.monotonic() < until:
        try:
            with slots.hold(Scanner.SPAM, count, later(5)):
                time.sleep(0.03)
        except SlotsBusy:
            pass


@pytest.mark.parametrize("trial", range(2))
def test_a_waiting_scan_gets_a_freed_slot_before_newcomers(trial):
    """Attack review F4: two slots, six workers' worth of 30 ms scans asking again at once; the
    site's scan, given 3 s, must get a slot (served in order it waits about 100 ms). With a
    backoff that grew while newcomers polled at once, it lost 5 trials of 5."""
    slots = SlotPool()
    until = later(3.5)
    churners = [_fork(lambda: _churn(slots, 2, until)) for _ in range(6)]
    time.sleep(0.2)
    try:
        with slots.hold(Scanner.SPAM, 2, later(3)):
            got = True
    except SlotsBusy:
        got = False
    for pid in churners:
        os.waitpid(pid, 0)
    assert got


def test_a_worker_killed_while_waiting_for_a_slot_or_the_door_takes_nothing_with_it():
    slots = SlotPool()
    holder = _child_holding(slots, 1)
    waiters = [_fork(lambda: slots.hold(Scanner.ANTIVIRUS, 1, later(30)).__enter__()) for _ in range(2)]
    time.sleep(0.2)  # one waits at the door's far side for the slot, one for the door
    for pid in (*waiters, holder):
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    assert slots.taken(Scanner.ANTIVIRUS, 1) == 0
    with slots.hold(Scanner.ANTIVIRUS, 1, later(0.5)):
        pass
