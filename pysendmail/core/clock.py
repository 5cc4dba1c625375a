"""The clock: the one place the daemon's time comes from.

Contract:   ``Clock`` has ``time()`` (wall clock, seconds since the epoch:
            due times, pauses, records) and ``monotonic()`` (intervals: a
            pooled connection's idle time).  ``SYSTEM`` is the real one.
            ``ManualClock`` stands still until ``advance(seconds)`` moves
            it, so a test moves time instead of sleeping.  The queue
            manager, the routes and the transports take a clock and never
            call time.time() or time.monotonic() themselves.
See also:   daemon/qmgr.py, daemon/routing/, daemon/transport/.
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def time(self) -> float: ...

    def monotonic(self) -> float: ...


class SystemClock:
    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()


class ManualClock:
    """A clock a test sets: it moves only when told to."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start
        self.elapsed = 0.0

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.elapsed

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.elapsed += seconds


SYSTEM: Clock = SystemClock()
