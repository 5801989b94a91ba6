"""One gate for every ACE request of a run: a cap on requests in flight and a shared pause.

A fleet run fetches hundreds of sites at once, each site with its own `AceClient` (own retries,
cursor and page size). ACE is one service with one rate limit for the key, so two things must be
shared across the clients rather than kept per site:

- how many requests are in flight: too many at once and ACE (or the network) answers 429s and
  timeouts for everyone;
- a 429's Retry-After: it is about the key, not the site that happened to get it. If only that
  site waited, the other sites would keep ACE just as busy and collect their own 429s.

The gate is pure logic around a lock: the clock and the wait are injectable, so its behaviour is
unit-tested with a fake clock (no sleeping).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class GateStats:
    """What the gate did for a run so far (a snapshot; becomes Dagster metadata).

    requests: slots handed out (one per HTTP request sent through the gate).
    peak_in_flight: the most requests in flight at once.
    slot_wait_seconds: time requests spent waiting for a free slot (summed over requests).
    pause_wait_seconds: time requests spent held back by pauses (summed over requests).
    paused_seconds: wall-clock time the gate was paused (overlapping pauses counted once).
    rate_limits: 429 answers reported through `slow_down`.
    gave_up: waits that ended at their caller's deadline without a slot.
    """

    requests: int = 0
    peak_in_flight: int = 0
    slot_wait_seconds: float = 0.0
    pause_wait_seconds: float = 0.0
    paused_seconds: float = 0.0
    rate_limits: int = 0
    gave_up: int = 0

    def as_metadata(self) -> dict[str, float | int]:
        return {
            f"gate_{key}": round(value, 3) if isinstance(value, float) else value
            for key, value in asdict(self).items()
        }


def _condition_wait(condition: threading.Condition, seconds: float | None) -> None:
    condition.wait(seconds)


class RequestGate:
    """Caps requests in flight at `max_in_flight` (None: no cap) and holds every request back
    while paused (`slow_down`). Thread-safe; share one per run.

    A request holds its slot from `acquire` (just before it is sent) to `release` (once its body
    has been read). `clock` must be monotonic and is the time base of deadlines and pauses
    (`time.monotonic` by default, matching `AceClient(deadline=...)`); `wait(condition, seconds)`
    blocks on the gate's condition for at most `seconds` (None: until notified).
    """

    def __init__(
        self,
        max_in_flight: int | None = 16,
        *,
        clock: Callable[[], float] = time.monotonic,
        wait: Callable[[threading.Condition, float | None], None] = _condition_wait,
    ) -> None:
        if max_in_flight is not None and max_in_flight < 1:
            raise ValueError(f"max_in_flight must be at least 1 (or None for no cap), got {max_in_flight}")
        self.max_in_flight = max_in_flight
        self._clock = clock
        self._wait = wait
        self._condition = threading.Condition(threading.Lock())
        self._in_flight = 0
        self._paused_until = float("-inf")
        self._requests = 0
        self._peak = 0
        self._slot_wait = 0.0
        self._pause_wait = 0.0
        self._paused = 0.0
        self._rate_limits = 0
        self._gave_up = 0

    def __repr__(self) -> str:
        return f"RequestGate(max_in_flight={self.max_in_flight}, in_flight={self._in_flight})"

    @property
    def in_flight(self) -> int:
        with self._condition:
            return self._in_flight

    @property
    def paused_until(self) -> float | None:
        """The clock value before which no request is sent, or None when not paused."""
        with self._condition:
            return self._paused_until if self._paused_until > self._clock() else None

    def acquire(self, deadline: float | None = None) -> bool:
        """Wait for the pause to end and a slot to be free, then take the slot: True.

        False, without a slot, when that cannot happen before `deadline` (a `clock` value): at
        once if a pause already reaches past the deadline (waiting for it is pointless), else
        when the deadline passes.
        """
        with self._condition:
            while True:
                now = self._clock()
                paused = self._paused_until > now
                full = self.max_in_flight is not None and self._in_flight >= self.max_in_flight
                if not paused and not full:
                    self._in_flight += 1
                    self._requests += 1
                    self._peak = max(self._peak, self._in_flight)
                    return True
                if deadline is not None and (now >= deadline or self._paused_until >= deadline):
                    self._gave_up += 1
                    return False
                # A pause ends by itself; a full gate waits for a release (or the deadline).
                until = self._paused_until if paused else deadline
                self._wait(self._condition, None if until is None else until - now)
                waited = self._clock() - now
                if paused:
                    self._pause_wait += waited
                else:
                    self._slot_wait += waited

    def release(self) -> None:
        """Give back a slot taken by `acquire`."""
        with self._condition:
            if self._in_flight <= 0:
                raise RuntimeError("RequestGate.release() without a matching acquire()")
            self._in_flight -= 1
            # Every waiter re-checks: one woken alone might give up (deadline) or be paused,
            # leaving the free slot unseen by the others.
            self._condition.notify_all()

    def slow_down(self, seconds: float, *, rate_limited: bool = True) -> None:
        """No request is sent before now + `seconds`; an earlier-ending pause is extended, a
        later-ending one is kept. `rate_limited` counts it as a 429 in the figures."""
        with self._condition:
            now = self._clock()
            until = now + max(0.0, seconds)
            if rate_limited:
                self._rate_limits += 1
            if until > self._paused_until:
                self._paused += until - max(now, self._paused_until)
                self._paused_until = until

    @property
    def stats(self) -> GateStats:
        with self._condition:
            return GateStats(
                requests=self._requests,
                peak_in_flight=self._peak,
                slot_wait_seconds=self._slot_wait,
                pause_wait_seconds=self._pause_wait,
                paused_seconds=self._paused,
                rate_limits=self._rate_limits,
                gave_up=self._gave_up,
            )
