"""Which check results a scheduled run records. Pure functions, no Dagster.

A fleet evaluates 8 checks per site every 5 minutes: 300 sites would record 691,200 evaluations a
day, each a few kilobytes in the Dagster instance, almost all of them "passed, like 5 minutes
ago". Runs of the automation (schedule, catch-up) therefore record a check's result when its
outcome differs from the last one recorded (passed / WARN / ERROR), and otherwise once an hour,
at a tick of the hour that depends on the site so that a fleet's repeats are spread over the
hour's 12 ticks. A run that selects the checks themselves (the UI's Materialize with checks, the
CLI) reports every result, as Dagster users expect.
"""

from __future__ import annotations

from datetime import datetime, timedelta

PASSED = "passed"
# Runs of more sites than this spread even the first record of a passing check over the hour:
# a new fleet of 300 sites would otherwise record 2,400 evaluations on its first tick.
SPREAD_FIRST_ABOVE_SITES = 25


def outcome(passed: bool, severity: str) -> str:
    """`passed`, or the severity (`WARN` / `ERROR`) of a failed check."""
    return PASSED if passed else severity


def should_record(
    *,
    current: str,
    previous: str | None,
    previous_at: datetime | None,
    now: datetime,
    repeat_every: timedelta,
    site_slot: int,
    tick_slot: int,
    spread_first: bool = False,
) -> bool:
    """Whether a run records this result.

    - never recorded before: yes, except that with `spread_first` (a big fleet) a passing one
      waits for the site's slot of the hour;
    - the outcome changed: yes;
    - `repeat_every` zero: every run records (the old behaviour);
    - unchanged: only in the site's slot of the hour (`site_slot == tick_slot`, slots being the
      5-minute ticks of `repeat_every`) and when the last record is older than half of
      `repeat_every` (so a re-run in the same slot does not record twice).
    """
    if previous is None:
        return not (spread_first and current == PASSED) or site_slot == tick_slot
    if previous != current:
        return True
    if repeat_every <= timedelta(0):
        return True
    if site_slot != tick_slot:
        return False
    return previous_at is None or now - previous_at >= repeat_every / 2


def slots_in(repeat_every: timedelta) -> int:
    """How many 5-minute ticks one repeat period holds (at least one)."""
    return max(1, int(repeat_every / timedelta(minutes=5)))


def tick_slot(window_end: datetime, slots: int) -> int:
    """The slot of the tick that closed `window_end` (the run's window end, UTC)."""
    return int(window_end.timestamp() // 300) % max(slots, 1)
