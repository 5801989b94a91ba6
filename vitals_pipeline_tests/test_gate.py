"""RequestGate: the cap on requests in flight and the shared 429 pause, as pure logic on a fake
clock, then with real threads and the real clock."""

from __future__ import annotations

import threading
import time

import pytest

from vitals_pipeline.ace.gate import GateStats, RequestGate


class FakeClock:
    """A clock that only moves when the gate waits: each wait jumps to its end at once."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now
        self.waits: list[float] = []

    def __call__(self) -> float:
        return self.now

    def wait(self, condition: threading.Condition, seconds: float | None) -> None:
        # Single-threaded tests: nobody would ever notify, so an untimed wait is a hang.
        assert seconds is not None, "the gate would wait forever"
        self.waits.append(seconds)
        self.now += seconds


def gate(cap: int | None = 2) -> tuple[RequestGate, FakeClock]:
    clock = FakeClock()
    return RequestGate(cap, clock=clock, wait=clock.wait), clock


def test_a_full_gate_waits_for_a_slot_until_the_deadline():
    g, clock = gate(2)
    assert g.acquire() and g.acquire()
    assert g.in_flight == 2
    assert g.acquire(deadline=clock.now + 1.5) is False  # nobody releases: gives up at the deadline
    assert clock.waits == [1.5] and g.in_flight == 2
    g.release()
    assert g.acquire(deadline=clock.now + 1.5) is True and clock.waits == [1.5]  # no wait
    stats = g.stats
    assert stats == GateStats(
        requests=3, peak_in_flight=2, slot_wait_seconds=1.5, pause_wait_seconds=0.0,
        paused_seconds=0.0, rate_limits=0, gave_up=1,
    )


def test_slow_down_holds_every_request_back_until_the_pause_ends():
    g, clock = gate(4)
    g.slow_down(5.0)
    assert g.paused_until == clock.now + 5.0
    start = clock.now
    assert g.acquire() is True
    assert clock.now == start + 5.0 and g.paused_until is None
    assert g.stats.pause_wait_seconds == 5.0 and g.stats.rate_limits == 1


def test_the_latest_pause_wins_and_overlaps_count_once():
    g, clock = gate(4)
    t0 = clock.now
    g.slow_down(5.0)
    g.slow_down(2.0)  # ends earlier: the 5 s pause stands
    assert g.paused_until == t0 + 5.0
    g.slow_down(8.0)  # ends later: extends it
    assert g.paused_until == t0 + 8.0
    g.slow_down(1.0, rate_limited=False)
    stats = g.stats
    assert stats.paused_seconds == 8.0 and stats.rate_limits == 3


def test_a_pause_past_the_deadline_gives_up_at_once():
    g, clock = gate(4)
    g.slow_down(10.0)
    assert g.acquire(deadline=clock.now + 3.0) is False
    assert clock.waits == []  # waiting for a pause that outlasts the budget is pointless
    assert g.acquire(deadline=clock.now + 12.0) is True and clock.waits == [10.0]
    assert g.stats.gave_up == 1


def test_a_deadline_already_passed_gives_up_even_when_the_gate_is_open():
    g, clock = gate(1)
    g.slow_down(0.5)
    assert g.acquire(deadline=clock.now - 0.1) is False
    g2, clock2 = gate(1)
    assert g2.acquire(deadline=clock2.now - 0.1) is True  # open and not paused: no wait needed


def test_no_cap_still_pauses():
    g, clock = gate(None)
    assert all(g.acquire() for _ in range(500))
    assert g.stats.peak_in_flight == 500
    g.slow_down(1.0)
    assert g.acquire() and clock.waits == [1.0]


def test_release_without_acquire_is_a_bug():
    g, _ = gate(1)
    with pytest.raises(RuntimeError, match="without a matching acquire"):
        g.release()
    with pytest.raises(ValueError, match="at least 1"):
        RequestGate(0)


def test_metadata_names_are_prefixed_and_rounded():
    meta = GateStats(requests=3, slot_wait_seconds=1.23456).as_metadata()
    assert meta["gate_requests"] == 3 and meta["gate_slot_wait_seconds"] == 1.235


# -- real threads, real clock -------------------------------------------------------------------


def test_threads_never_exceed_the_cap_and_reach_it():
    g = RequestGate(3)
    lock = threading.Lock()
    inside = 0
    seen: list[int] = []

    def worker() -> None:
        nonlocal inside
        for _ in range(5):
            assert g.acquire(deadline=time.monotonic() + 10)
            with lock:
                inside += 1
                seen.append(inside)
            time.sleep(0.01)
            with lock:
                inside -= 1
            g.release()

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert max(seen) == 3 and g.stats.peak_in_flight == 3
    assert g.stats.requests == 40 and g.in_flight == 0
    assert g.stats.slot_wait_seconds > 0


def test_a_pause_from_one_thread_delays_another_by_about_that_long():
    g = RequestGate(4)
    g.slow_down(0.4)
    began = time.monotonic()
    got: list[float] = []
    t = threading.Thread(target=lambda: got.append(g.acquire() and time.monotonic() - began))
    t.start()
    t.join(5)
    assert got and 0.38 <= got[0] < 1.5


def test_a_waiting_thread_gets_the_slot_another_releases():
    g = RequestGate(1)
    assert g.acquire()
    result: list[bool] = []
    t = threading.Thread(target=lambda: result.append(g.acquire(deadline=time.monotonic() + 5)))
    t.start()
    time.sleep(0.1)
    assert result == []  # still waiting
    g.release()
    t.join(5)
    assert result == [True]
