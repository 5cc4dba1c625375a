"""A route's sending budget (daemon/routing/ratelimit.py RateLimit), on a clock the test sets."""

from __future__ import annotations

from pysendmail.daemon.routing.ratelimit import RateLimit

T = 1_800_000_000.0


def test_per_minute_counts_transactions_and_frees_the_oldest_after_60_s() -> None:
    rate = RateLimit(per_minute=2, per_day=0)
    rate.spend(T, 10)
    rate.spend(T + 5, 1)
    assert rate.delay(T + 6) == 54.0
    assert rate.delay(T + 60.5) == 0.0


def test_daily_budget_in_messages_ignores_the_recipient_count() -> None:
    rate = RateLimit(per_minute=0, per_day=2)
    rate.spend(T, 35)
    assert rate.delay(T + 1, 35) == 0.0
    rate.spend(T + 1, 35)
    assert rate.delay(T + 2, 1) == 86400.0 - 2


def test_daily_budget_in_recipients_waits_until_the_whole_transaction_fits() -> None:
    rate = RateLimit(per_minute=0, per_day=500, day_unit="recipients")
    for hour in range(16):
        rate.spend(T + hour * 3600, 30)  # 480 spent, the oldest 30 at T
    assert rate.delay(T + 16 * 3600, 20) == 0.0
    # 35 more need 15 of the 480 to expire: the first 30 leave at T + 1 day.
    assert rate.delay(T + 16 * 3600, 35) == 86400.0 - 16 * 3600


def test_a_transaction_larger_than_the_whole_budget_goes_once_the_window_is_empty() -> None:
    rate = RateLimit(per_minute=0, per_day=10, day_unit="recipients")
    assert rate.delay(T, 50) == 0.0
    rate.spend(T, 50)
    assert rate.delay(T + 10, 50) == 86400.0 - 10


def test_snapshot_and_restore_keep_only_times_inside_the_windows() -> None:
    rate = RateLimit(per_minute=5, per_day=5, day_unit="recipients")
    rate.spend(T, 2)
    rate.spend(T + 100, 1)
    saved = rate.snapshot(T + 120)
    assert saved == {"minute": [T + 100], "day": [T, T, T + 100]}

    again = RateLimit(per_minute=5, per_day=5, day_unit="recipients")
    again.restore({"minute": saved["minute"], "day": saved["day"] + ["junk", T + 10**6]}, T + 130)
    assert list(again.day) == [T, T, T + 100] and list(again.minute) == [T + 100]
    assert again.delay(T + 130, 3) == 86400.0 - 130
