"""A route's sending budget: transactions per minute, messages or recipients per day.

Contract:   ``RateLimit(per_minute, per_day, day_unit)``: ``delay(now,
            recipients)`` says how long a transaction must wait (0: go),
            ``spend(now, recipients)`` counts one that went.  Over budget
            waits, never fails.  Every method takes ``now`` from the
            caller's clock (core/clock.py), so tests set time.
Crashes:    ``snapshot``/``restore`` carry the send times through the
            route-state store (state.py): a restart does not start the
            provider's day afresh; a crash forgets at most one round.
See also:   route.py (the Route that owns one); providers.py (published limits).
"""

from __future__ import annotations

import collections


class RateLimit:
    """Messages per minute and per day for one route; over budget waits, never fails.

    The send times inside the windows are saved with the route state
    (``snapshot``, ``restore``): a restarted daemon, and every
    ``sendmail -q`` from cron, must not start the provider's day afresh.
    The route-state store saves after each round, so a crash forgets at
    most that round's sends.
    """

    def __init__(self, per_minute: int, per_day: int, day_unit: str = "messages") -> None:
        self.per_minute = per_minute  # transactions
        self.per_day = per_day  # in day_unit: "messages" (transactions) or "recipients"
        self.day_unit = day_unit
        self.minute: collections.deque[float] = collections.deque()
        self.day: collections.deque[float] = collections.deque()  # one entry per unit spent

    def delay(self, now: float, recipients: int = 1) -> float:
        """Seconds to wait before a transaction with ``recipients`` may go (0: go now).

        Counting recipients, the day must have room for all of them: a
        35-recipient message with 20 left waits for 15 to expire instead of
        pushing the account over the provider's limit.  One larger than the
        whole budget goes once the window is empty, or it would wait forever.
        """
        for window, limit, span, need in (
            (self.minute, self.per_minute, 60.0, 1),
            (self.day, self.per_day, 86400.0, self._day_units(recipients)),
        ):
            while window and window[0] <= now - span:
                window.popleft()
            if limit and window and len(window) + need > limit:
                must_leave = min(len(window), len(window) + need - limit)
                return window[must_leave - 1] + span - now
        return 0.0

    def spend(self, now: float, recipients: int = 1) -> None:
        if self.per_minute:
            self.minute.append(now)
        if self.per_day:
            self.day.extend([now] * self._day_units(recipients))

    def _day_units(self, recipients: int) -> int:
        """What one transaction with ``recipients`` costs of the daily budget."""
        return max(1, recipients) if self.day_unit == "recipients" else 1

    def snapshot(self, now: float) -> dict[str, list[float]]:
        """The send times still inside each window, for the state file."""
        self.delay(now)  # drops what has left the windows
        return {"minute": list(self.minute), "day": list(self.day)}

    def restore(self, saved: object, now: float) -> None:
        """Take back ``snapshot``'s times; anything malformed or outside the windows is ignored."""
        if not isinstance(saved, dict):
            return
        for key, window, span in (("minute", self.minute, 60.0), ("day", self.day, 86400.0)):
            times = saved.get(key)
            if isinstance(times, list):
                kept = sorted(float(t) for t in times if isinstance(t, (int, float)) and now - span < t <= now)
                window.clear()
                window.extend(kept)
