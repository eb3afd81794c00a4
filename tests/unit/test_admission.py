"""admission.py: at most N messages' end-of-message checks at once per worker, the next in turn."""

from __future__ import annotations

import threading
import time

from policymilter.admission import Admission, off_turn


def hold(admission: Admission, limit: int, timeout: float, release: threading.Event, got: list[bool],
         order: list[str] | None = None, name: str = "") -> threading.Thread:
    def run() -> None:
        with admission.turn(limit, timeout) as admitted:
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
    admission = Admission()
    release, got = threading.Event(), []
    threads = [hold(admission, 3, 0.01, release, got) for _ in range(3)]
    wait_for(lambda: len(got) == 3)
    assert got == [True, True, True] and admission.running == 3
    release.set()
    for thread in threads:
        thread.join()
    assert admission.running == 0


def test_beyond_the_limit_a_message_waits_its_turn_then_is_turned_away():
    admission = Admission()
    release, got = threading.Event(), []
    first = hold(admission, 1, 1.0, release, got)
    wait_for(lambda: got == [True])
    with admission.turn(1, 0.05) as admitted:
        assert not admitted
    assert admission.running == 1 and admission.waiting == 0  # the one turned away left no trace
    release.set()
    first.join()
    with admission.turn(1, 0.05) as admitted:
        assert admitted


def test_turns_pass_on_in_arrival_order():
    admission = Admission()
    release, got, order = threading.Event(), [], []
    first = hold(admission, 1, 5.0, release, got, order, "first")
    wait_for(lambda: order == ["first"])
    steps = [threading.Event() for _ in range(4)]
    waiting = []
    for number, step in enumerate(steps):
        waiting.append(hold(admission, 1, 5.0, step, got, order, f"w{number}"))
        wait_for(lambda n=number: admission.waiting == n + 1)
    release.set()
    for step in steps:
        step.set()
    for thread in (first, *waiting):
        thread.join()
    assert order == ["first", "w0", "w1", "w2", "w3"]
    assert admission.running == 0


def test_never_more_than_the_limit_at_once_under_contention():
    admission = Admission()
    peak, now, lock = [0], [0], threading.Lock()

    def work() -> None:
        for _ in range(50):
            with admission.turn(4, 5.0) as admitted:
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


def test_a_raised_limit_lets_several_waiting_messages_in_at_the_next_release():
    admission = Admission()
    release, later, got = threading.Event(), threading.Event(), []
    # one message of the reloaded policy (limit 3) runs; three of the old policy (limit 1) wait...
    first = hold(admission, 3, 5.0, release, got)
    wait_for(lambda: got == [True])
    waiting = [hold(admission, 1, 5.0, later, got) for _ in range(3)]
    wait_for(lambda: admission.waiting == 3)
    # ...and when it ends, under limit 3, every turn that now fits is handed out
    release.set()
    first.join()
    wait_for(lambda: len(got) == 4)
    assert got == [True] * 4 and admission.running == 3 and admission.waiting == 0
    later.set()
    for thread in waiting:
        thread.join()
    assert admission.running == 0


def test_a_message_waiting_for_the_network_gives_its_turn_up_and_takes_it_back_first():
    admission = Admission()
    on_network, answered, back, got = threading.Event(), threading.Event(), [], []

    def dns_waiter() -> None:
        with admission.turn(1, 1.0) as admitted:
            assert admitted
            with off_turn():
                on_network.set()
                answered.wait(10)
            back.append(admission.running)

    waiter = threading.Thread(target=dns_waiter)
    waiter.start()
    on_network.wait(5)
    release = threading.Event()
    other = hold(admission, 1, 0.05, release, got)  # the turn is free while the first waits
    wait_for(lambda: got == [True])
    done = threading.Event()
    later = hold(admission, 1, 5.0, done, got)  # a new message queues behind...
    wait_for(lambda: admission.waiting == 1)
    answered.set()  # ...but the answer's return goes first
    wait_for(lambda: admission.waiting == 2)
    release.set()
    waiter.join()
    assert back == [1]
    other.join()
    wait_for(lambda: len(got) == 2)  # the new message got its turn last
    assert got == [True, True]
    done.set()
    later.join()
    assert admission.running == 0


def test_off_turn_outside_a_turn_changes_nothing():
    admission = Admission()
    with off_turn():
        assert admission.running == 0
