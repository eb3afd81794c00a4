"""admission.py: at most N messages' end-of-message checks at once per worker, the next in turn."""

from __future__ import annotations

import threading
import time

from policymilter.admission import Admission


def hold(admission: Admission, timeout: float, release: threading.Event, got: list[bool],
         order: list[str] | None = None, name: str = "") -> threading.Thread:
    def run() -> None:
        with admission.turn(timeout) as admitted:
            got.append(admitted)
            if admitted and order is not None:
                order.append(name)
            if admitted:
                release.wait(10)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def wait_for(condition, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline
        time.sleep(0.005)


def test_within_the_limit_every_message_is_admitted_at_once():
    admission = Admission(3)
    release, got = threading.Event(), []
    threads = [hold(admission, 0.01, release, got) for _ in range(3)]
    wait_for(lambda: len(got) == 3)
    assert got == [True, True, True] and admission.running == 3
    release.set()
    for thread in threads:
        thread.join()
    assert admission.running == 0


def test_beyond_the_limit_a_message_waits_its_turn_then_is_turned_away():
    admission = Admission(1)
    release, got = threading.Event(), []
    first = hold(admission, 1.0, release, got)
    wait_for(lambda: got == [True])
    with admission.turn(0.05) as admitted:
        assert not admitted
    assert admission.running == 1 and admission.waiting == 0  # the one turned away left no trace
    release.set()
    first.join()
    with admission.turn(0.05) as admitted:
        assert admitted


def test_turns_pass_on_in_arrival_order():
    admission = Admission(1)
    release, got, order = threading.Event(), [], []
    first = hold(admission, 5.0, release, got, order, "first")
    wait_for(lambda: order == ["first"])
    steps = [threading.Event() for _ in range(4)]
    waiting = []
    for number, step in enumerate(steps):
        waiting.append(hold(admission, 5.0, step, got, order, f"w{number}"))
        wait_for(lambda n=number: admission.waiting == n + 1)
    release.set()
    for step in steps:
        step.set()
    for thread in (first, *waiting):
        thread.join()
    assert order == ["first", "w0", "w1", "w2", "w3"]
    assert admission.running == 0


def test_never_more_than_the_limit_at_once_under_contention():
    admission = Admission(4)
    peak, now, lock = [0], [0], threading.Lock()

    def work() -> None:
        for _ in range(50):
            with admission.turn(5.0) as admitted:
                assert admitted
                with lock:
                    now[0] += 1
                    peak[0] = max(peak[0], now[0])
                time.sleep(0.0005)
                with lock:
                    now[0] -= 1

    threads = [threading.Thread(target=work) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert peak[0] == 4 and admission.running == 0 and admission.waiting == 0


def test_a_reload_that_raises_the_limit_admits_waiting_messages_at_once():
    admission = Admission(1)
    release, later, got = threading.Event(), threading.Event(), []
    first = hold(admission, 5.0, release, got)
    wait_for(lambda: got == [True])
    waiting = [hold(admission, 5.0, later, got) for _ in range(3)]
    wait_for(lambda: admission.waiting == 3)
    admission.limit = 3  # a reload
    wait_for(lambda: len(got) == 3)
    assert admission.running == 3 and admission.waiting == 1
    release.set()
    first.join()
    wait_for(lambda: len(got) == 4)
    later.set()
    for thread in waiting:
        thread.join()
    assert admission.running == 0


def test_a_lowered_limit_holds_for_turns_handed_out_by_messages_of_the_old_policy():
    """Attack review F3: a connection keeps its old policy, but the limit is the one in force."""
    admission = Admission(3)
    releases = [threading.Event() for _ in range(3)]
    got: list[bool] = []
    holders = [hold(admission, 5.0, release, got) for release in releases]
    wait_for(lambda: len(got) == 3)
    admission.limit = 1
    done = threading.Event()
    waiting = [hold(admission, 5.0, done, got) for _ in range(2)]
    wait_for(lambda: admission.waiting == 2)
    releases[0].set()
    releases[1].set()
    holders[0].join()
    holders[1].join()
    assert admission.running == 1 and admission.waiting == 2  # 3 -> 1 running: nobody let in yet
    releases[2].set()
    holders[2].join()
    wait_for(lambda: len(got) == 4)
    assert admission.running == 1 and admission.waiting == 1
    done.set()
    for thread in waiting:
        thread.join()
    assert admission.running == 0
