"""daemon/fleet.py against a real redis-server: shared budgets and pauses, fallback, convergence.

Each test runs Fleet objects in this process, one per pretend host (the
name is all that tells hosts apart to Redis), against a redis-server
started for the test (tests/fakes/redisd.py).  The three-daemon tests in
test_fleet_daemons.py drive the same code through real daemons.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from pysendmail.core import errors
from pysendmail.core.netaddr import parse_redis_url
from pysendmail.daemon.fleet import Account, Fleet, Settings
from pysendmail.daemon.routing.ratelimit import RateLimit
from tests.fakes.redisd import RedisServer, cleanup

ACCOUNT = Account("smtp.yandex.ru", "robot@example.org")


@pytest.fixture
def redis_factory(tmp_path: Path) -> Iterator:
    started: list[RedisServer] = []

    def make(**kw: object) -> RedisServer:
        server = RedisServer(tmp_path, **kw).start()  # type: ignore[arg-type]
        started.append(server)
        return server

    yield make
    cleanup(started)


@pytest.fixture
def redis(redis_factory) -> RedisServer:
    return redis_factory()


def settings(server: RedisServer, fallback: str = "share", hint: int = 3, timeout_ms: int = 300,
             password_file: str | None = None, ca_file: str | None = None, url: str | None = None) -> Settings:
    return Settings(parse_redis_url(url or server.url, "test"), password_file, server.tls, ca_file, "t:",
                    fallback, hint, timeout_ms / 1000)


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


async def hosts(server: RedisServer, n: int, **kw: object) -> list[Fleet]:
    fleets = [Fleet(settings(server, **kw), f"host{i}.example.org") for i in range(n)]  # type: ignore[arg-type]
    for f in fleets:
        await f.start()
    return fleets


async def close(fleets: list[Fleet]) -> None:
    for f in fleets:
        await f.close()


def test_ten_hosts_racing_for_the_last_five_of_the_day_send_exactly_five(redis: RedisServer) -> None:
    async def main() -> list[bool]:
        fleets = await hosts(redis, 10)
        rates = [RateLimit(0, 20) for _ in fleets]
        # 15 of 20 already spent by host0.
        for _ in range(15):
            assert (await fleets[0].reserve(ACCOUNT, rates[0])).ok
        grants = await asyncio.gather(*(f.reserve(ACCOUNT, r) for f, r in zip(fleets, rates) for _ in range(3)))
        await close(fleets)
        return [g.ok for g in grants]

    oks = run(main())
    assert oks.count(True) == 5 and len(oks) == 30
    assert redis.command("ZCARD", "t:{smtp.yandex.ru/robot@example.org}:day") == 20


def test_budget_counts_recipients_when_rate_unit_says_recipients(redis: RedisServer) -> None:
    async def main() -> list[tuple[bool, str]]:
        (a, b) = await hosts(redis, 2)
        ra, rb = RateLimit(0, 10, "recipients"), RateLimit(0, 10, "recipients")
        out = []
        for fleet, rate, n in ((a, ra, 4), (b, rb, 4), (a, ra, 4), (b, rb, 2)):
            g = await fleet.reserve(ACCOUNT, rate, n)
            out.append((g.ok, g.why))
        await close([a, b])
        return out

    out = run(main())
    assert [ok for ok, _ in out] == [True, True, False, True]
    assert "rate_per_day" in out[2][1]


def test_pause_recorded_by_one_host_stops_every_host_before_its_next_transaction(redis: RedisServer) -> None:
    async def main() -> None:
        a, b, c = await hosts(redis, 3)
        rate = RateLimit(0, 100)
        assert (await b.reserve(ACCOUNT, rate)).ok
        reason = "554 5.7.1 Message rejected under suspicion of SPAM"
        await a.record_block(ACCOUNT, "pause", __import__("time").time() + 600, reason, "spam-block")
        for fleet in (b, c):
            g = await fleet.reserve(ACCOUNT, RateLimit(0, 100))
            assert not g.ok
            assert g.block is not None and g.block.host == "host0.example.org" and g.block.reason == reason
            assert "paused by host host0.example.org" in g.why
            assert 590 < g.until - __import__("time").time() <= 600.5
        # The view status shows, on another host, after one sync.
        await c.sync()
        view = c.view(ACCOUNT)
        assert view["blocked_by"] == "host0.example.org" and view["blocked_because"] == reason
        # A shorter pause does not shorten it; resume on any host lifts it for all.
        await b.record_block(ACCOUNT, "pause", __import__("time").time() + 5, "shorter", "")
        assert (await c.reserve(ACCOUNT, RateLimit(0, 100))).block.reason == reason  # type: ignore[union-attr]
        assert await b.clear(ACCOUNT)
        assert (await c.reserve(ACCOUNT, RateLimit(0, 100))).ok
        await close([a, b, c])

    run(main())


def test_unreachable_redis_falls_back_to_a_local_share_of_the_budget(redis: RedisServer,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    async def main() -> list[bool]:
        (a,) = await hosts(redis, 1, hint=3)
        rate = RateLimit(0, 30)
        for _ in range(4):
            assert (await a.reserve(ACCOUNT, rate)).ok
        redis.kill()
        results = [await a.reserve(ACCOUNT, rate) for _ in range(10)]
        assert a.mode() == "fallback share"
        assert "share" in results[-1].why and results[-1].mode == "fallback share"
        await close([a])
        return [g.ok for g in results]

    oks = run(main())
    # 30 / 3 = 10 for this host, 4 of which it had spent while Redis answered.
    assert oks == [True] * 6 + [False] * 4
    assert capsys.readouterr().err.count("unreachable") == 1  # one line per episode, not per message


def test_unreachable_redis_pauses_delivery_when_fallback_is_pause(redis: RedisServer) -> None:
    async def main() -> None:
        (a,) = await hosts(redis, 1, fallback="pause")
        redis.kill()
        g = await a.reserve(ACCOUNT, RateLimit(0, 30))
        assert not g.ok and "fleet.fallback = pause" in g.why and a.mode() == "fallback pause"
        await close([a])

    run(main())


def test_slow_redis_counts_as_unreachable_and_delivery_goes_on(redis: RedisServer) -> None:
    async def main() -> None:
        (a,) = await hosts(redis, 1, hint=2, timeout_ms=200)
        redis.pause()  # accepts nothing, answers nothing: as a Redis stuck in a long command
        try:
            g = await a.reserve(ACCOUNT, RateLimit(0, 30))
            assert g.ok and g.mode == "fallback share" and "200 ms" in a.error
        finally:
            redis.resume()
        await close([a])

    run(main())


def test_pause_learnt_before_redis_went_away_is_still_obeyed(redis: RedisServer) -> None:
    async def main() -> None:
        a, b = await hosts(redis, 2)
        await a.record_block(ACCOUNT, "pause", __import__("time").time() + 600, "quota", "daily-quota")
        assert not (await b.reserve(ACCOUNT, RateLimit(0, 30))).ok
        redis.kill()
        g = await b.reserve(ACCOUNT, RateLimit(0, 30))
        assert not g.ok and g.block is not None and g.block.host == "host0.example.org"
        await close([a, b])

    run(main())


def test_state_converges_after_a_redis_restart_that_lost_everything(redis: RedisServer) -> None:
    async def main() -> None:
        a, b = await hosts(redis, 2, hint=2)
        ra, rb = RateLimit(0, 40), RateLimit(0, 40)
        for _ in range(5):
            assert (await a.reserve(ACCOUNT, ra)).ok
            assert (await b.reserve(ACCOUNT, rb)).ok
        redis.kill()
        for _ in range(3):  # during the outage: counted locally only
            assert (await a.reserve(ACCOUNT, ra)).ok
        await a.record_block(ACCOUNT, "pause", __import__("time").time() + 300, "spam block seen in the outage")
        redis.start()  # empty: no persistence
        a.retry_at = 0.0  # do not wait out the reconnection back-off (b never saw Redis go)
        # a's next call (here its periodic sync) reconnects and pushes its sends and its pause;
        # b's stale connection fails once, b reconnects at once and pushes its own.
        await a.sync()
        g = await b.reserve(ACCOUNT, rb)
        assert not g.ok and g.block is not None and g.block.reason == "spam block seen in the outage"
        assert await a.clear(ACCOUNT)
        g = await b.reserve(ACCOUNT, rb)
        assert g.ok
        await a.sync()
        await b.sync()
        await close([a, b])

    run(main())
    # 5 + 5 before, 3 during the outage, 1 after: every send once, whoever pushed it.
    assert redis.command("ZCARD", "t:{smtp.yandex.ru/robot@example.org}:day") == 14


def test_password_file_authenticates_and_a_wrong_one_falls_back(redis_factory, tmp_path: Path) -> None:
    server = redis_factory(password="fleet-Secret-42")
    good, bad = tmp_path / "good", tmp_path / "bad"
    good.write_text("fleet-Secret-42\n")
    bad.write_text("wrong\n")
    for p in (good, bad):
        p.chmod(0o600)

    async def main() -> tuple[str, str]:
        ok = Fleet(settings(server, password_file=str(good)), "a")
        wrong = Fleet(settings(server, password_file=str(bad)), "b")
        await ok.start()
        await wrong.start()
        modes = (ok.mode(), wrong.mode())
        await close([ok, wrong])
        return modes

    assert run(main()) == ("redis", "fallback share")


def test_password_file_readable_by_others_is_refused(redis: RedisServer, tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text("x\n")
    pw.chmod(0o644)
    with pytest.raises(errors.ConfigError, match="fleet.password_file"):
        run(Fleet(settings(redis, password_file=str(pw)), "a").start())


def test_tls_verifies_the_server_and_never_falls_back_to_plaintext(redis_factory) -> None:
    server = redis_factory(tls=True)

    async def main() -> tuple[str, str, str]:
        trusted = Fleet(settings(server, ca_file=str(server.ca_file)), "a")
        untrusted = Fleet(settings(server), "b")  # the system's CAs do not know trustme's
        await trusted.start()
        await untrusted.start()
        out = (trusted.mode(), untrusted.mode(), untrusted.error)
        await close([trusted, untrusted])
        return out

    trusted, untrusted, error = run(main())
    assert trusted == "redis"
    assert untrusted == "fallback share" and "certificate" in error.lower()


def test_per_minute_window_is_shared_too(redis: RedisServer) -> None:
    async def main() -> list[tuple[bool, float]]:
        a, b = await hosts(redis, 2)
        ra, rb = RateLimit(2, 0), RateLimit(2, 0)
        out = []
        for fleet, rate in ((a, ra), (b, rb), (a, ra), (b, rb)):
            g = await fleet.reserve(ACCOUNT, rate)
            out.append((g.ok, g.until - __import__("time").time()))
        await close([a, b])
        return out

    out = run(main())
    assert [ok for ok, _ in out] == [True, True, False, False]
    assert all(55 < left <= 60.5 for _, left in out[2:])  # when the first send leaves the minute


def test_refused_login_hold_is_shared_as_a_hold(redis: RedisServer) -> None:
    async def main() -> None:
        a, b = await hosts(redis, 2)
        await a.record_block(ACCOUNT, "hold", __import__("time").time() + 300,
                             "535 5.7.8 Username and Password not accepted")
        g = await b.reserve(ACCOUNT, RateLimit(0, 0))  # no budget at all: the hold still stops it
        assert not g.ok and g.block is not None and g.block.kind == "hold"
        assert "on hold by host host0.example.org" in g.why
        await close([a, b])

    run(main())
