"""The queue manager on a clock the test moves, with a fake transport (tests/fakes/transport.py).

Real spool files on disk, a real QueueManager; only the network is
replaced.  The Router tests build the real Router from a two-relay
configuration and replace each route's SMTP session by a recorder, so
pause, hold and fallback are the route layer's own decisions.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest

from pysendmail.core import config, errors, layout, queue, spoolfile
from pysendmail.core.clock import ManualClock
from pysendmail.core.qid import new_qid
from pysendmail.core.queue import QueuedMessage
from pysendmail.daemon.qmgr import DEFAULT_RETRY, Counts, QueueManager
from pysendmail.daemon.routing.route import HOLD_BASE, Route
from pysendmail.daemon.routing.router import Router
from pysendmail.daemon.routing.state import FileRouteStore, describe
from pysendmail.daemon.transport.base import DEFERRED, FAILED, SENT, Result
from pysendmail.daemon.transport.smtp import RelayError
from tests.conftest import write_config
from tests.fakes.transport import FakeTransport

T0 = 1_800_000_000.0
TWO_RELAYS = """
[relay.a]
host = "127.0.0.1"
port = 2525
tls = "none"

[relay.b]
host = "127.0.0.1"
port = 2526
tls = "none"
max_recipients_per_message = 2

[[route]]
relay = "a"
fallback = "b"
"""


def setup(tmp_path: Path, extra: str = "") -> config.Config:
    e = write_config(tmp_path, extra)
    cfg = config.load(str(e.config))
    layout.ensure_layout(layout.Spool(cfg.spool_path))
    return cfg


def enqueue(cfg: config.Config, recipients: list[str], at: float) -> str:
    qid = new_qid()
    env = spoolfile.Envelope("sender@example.org", recipients, uid=os.getuid(), time=at)
    text = b"From: sender@example.org\r\nSubject: test\r\n\r\nbody\r\n"
    queue.write_new(layout.Spool(cfg.spool_path).queue, qid, spoolfile.encode(env, text))
    return qid


def load(cfg: config.Config, qid: str) -> QueuedMessage:
    return QueuedMessage.load(os.path.join(layout.Spool(cfg.spool_path).queue, qid))


def attempt(manager: QueueManager, qid: str) -> QueuedMessage | None:
    return asyncio.run(manager.attempt(qid, Counts()))


def deferring(rcpt: str) -> tuple[str, str, str]:
    return DEFERRED, "4.4.1", "connection refused"


# ------------------------------------------------------------ fake transport


def test_a_deferral_backs_off_along_the_retry_schedule_with_jitter(tmp_path: Path) -> None:
    cfg = setup(tmp_path)
    clock, fake = ManualClock(T0), FakeTransport()
    fake.answer = deferring
    manager = QueueManager(cfg, fake, clock=clock)
    qid = enqueue(cfg, ["a@example.net"], T0)

    for tries, base in enumerate(DEFAULT_RETRY[:3], start=1):
        attempt(manager, qid)
        msg = load(cfg, qid)
        assert msg.tries == tries and msg.reason == "connection refused"
        assert clock.time() + base * 0.9 <= msg.due <= clock.time() + base * 1.1
        clock.advance(base * 1.1)
    assert fake.calls == [[0], [0], [0]]


def test_a_message_deferred_past_its_lifetime_bounces_and_moves_to_failed(tmp_path: Path) -> None:
    cfg = setup(tmp_path, "[queue]\nlifetime = 3600\n")
    clock, fake = ManualClock(T0), FakeTransport()
    fake.answer = deferring
    manager = QueueManager(cfg, fake, clock=clock)
    qid = enqueue(cfg, ["a@example.net"], T0)

    attempt(manager, qid)
    assert qid in os.listdir(manager.spool.queue)  # within the lifetime: deferred, kept
    clock.advance(3601)
    attempt(manager, qid)

    assert qid not in os.listdir(manager.spool.queue) and qid in os.listdir(manager.spool.failed)
    failed = QueuedMessage.load(os.path.join(manager.spool.failed, qid)).failed
    assert failed[0].startswith("5.4.1 gave up after 1 hour in the queue (queue.lifetime); last error:")
    assert len(manager.new_ids) == 1  # the bounce, queued for the same run


def test_recipients_go_in_chunks_of_max_recipients_each_recorded_before_the_next(tmp_path: Path) -> None:
    cfg = setup(tmp_path)
    fake = FakeTransport(max_rcpt=2)
    fake.answer = lambda rcpt: (FAILED, "5.1.1", "550 no such user") if rcpt == "r1@example.net" else \
        (SENT, "2.0.0", "250 ok")
    manager = QueueManager(cfg, fake, clock=ManualClock(T0))
    qid = enqueue(cfg, [f"r{i}@example.net" for i in range(5)], T0)

    attempt(manager, qid)

    assert fake.calls == [[0, 1], [2, 3], [4]]
    # Each chunk's outcomes are on disk before the next chunk goes.
    assert [d.count(b"\ndone ") + d.count(b"\nfailed ") for d in fake.on_disk] == [0, 2, 4]
    assert qid in os.listdir(manager.spool.failed)  # r1 failed: bounced, the rest sent


def test_a_held_route_keeps_its_mail_waiting_past_the_lifetime_without_bouncing(tmp_path: Path) -> None:
    cfg = setup(tmp_path, "[queue]\nlifetime = 3600\n")
    clock, fake = ManualClock(T0), FakeTransport()
    fake.blocked = (T0 + 7200, "route on hold: authentication as x refused")
    manager = QueueManager(cfg, fake, clock=clock)
    qid = enqueue(cfg, ["a@example.net"], T0)

    attempt(manager, qid)
    clock.advance(3601)
    attempt(manager, qid)

    msg = load(cfg, qid)
    assert fake.calls == [] and manager.new_ids == [] and msg.failed == {}
    assert msg.due == T0 + 7200 and msg.reason == "route on hold: authentication as x refused"
    fake.blocked = None
    clock.advance(3600)
    attempt(manager, qid)
    assert fake.calls == [[0]] and qid not in os.listdir(manager.spool.queue)


def test_flush_resets_down_marks_and_saves_the_route_state_through_the_store(tmp_path: Path) -> None:
    cfg = setup(tmp_path)
    fake = FakeTransport()
    fake.blocked = (T0 + 30, "cannot connect")
    manager = QueueManager(cfg, fake, clock=ManualClock(T0))
    asyncio.run(manager.flush())
    assert fake.resets == 1 and fake.closed
    assert FileRouteStore(manager.spool.route_state).load() == {"fake": {"relay": fake.relay,
                                                                         "paused_until": T0 + 30}}


# ------------------------------------------------------------ the real Router, sessions recorded


class Sessions:
    """Each route's SMTP session replaced by a recorder answering ``status``."""

    def __init__(self, router: Router, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[tuple[str, list[int]]] = []
        self.status = SENT
        for route in router.routes.values():
            monkeypatch.setattr(route.smtp, "deliver", self._recorder(route))

    def _recorder(self, route: Route):  # type: ignore[no-untyped-def]
        async def deliver(msg: QueuedMessage, indices: list[int], *, header_from: str | None = None) -> list[Result]:
            self.calls.append((route.name, list(indices)))
            return [Result(i, self.status, "2.0.0" if self.status == SENT else "4.4.1", "reply") for i in indices]
        return deliver


def test_a_paused_primary_sends_through_the_fallback_in_its_chunks_and_nothing_bounces(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = setup(tmp_path, TWO_RELAYS)
    clock = ManualClock(T0)
    manager = QueueManager(cfg, clock=clock)
    assert isinstance(manager.transport, Router)
    router = manager.transport
    sessions = Sessions(router, monkeypatch)
    router.routes["a"].failed(RelayError("a: daily-quota: 550 limit", pause=86400, kind="daily-quota"))
    qid = enqueue(cfg, ["x@example.net", "y@example.net", "z@example.net"], T0)

    plan = router.plan(load(cfg, qid))
    assert (plan.route, plan.fallback, plan.blocked) == ("a", "b", None)
    assert plan.header_from == "sender@example.org" and plan.chunks == ((0, 1), (2,))
    attempt(manager, qid)

    assert sessions.calls == [("b", [0, 1]), ("b", [2])]
    assert qid not in os.listdir(manager.spool.queue) and manager.new_ids == []


def test_a_route_hold_blocks_its_mail_until_the_backoff_ends_then_it_goes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = setup(tmp_path, TWO_RELAYS.replace('fallback = "b"\n', ""))
    clock = ManualClock(T0)
    manager = QueueManager(cfg, clock=clock)
    assert isinstance(manager.transport, Router)
    router = manager.transport
    sessions = Sessions(router, monkeypatch)
    router.routes["a"].failed(RelayError("authentication as x refused", hold=True))
    qid = enqueue(cfg, ["x@example.net"], T0)

    attempt(manager, qid)
    assert sessions.calls == [] and load(cfg, qid).due == T0 + HOLD_BASE
    assert load(cfg, qid).reason == "route on hold: authentication as x refused"
    clock.advance(HOLD_BASE + 1)
    attempt(manager, qid)
    assert sessions.calls == [("a", [0])] and qid not in os.listdir(manager.spool.queue)


def test_a_second_refused_login_doubles_the_hold(tmp_path: Path) -> None:
    cfg = setup(tmp_path, TWO_RELAYS)
    clock = ManualClock(T0)
    route = Router(cfg, "host.example.org", clock=clock).routes["a"]
    route.failed(RelayError("refused", hold=True))
    clock.advance(HOLD_BASE)
    route.failed(RelayError("refused", hold=True))
    assert route.health(clock.time()) == (clock.time() + 2 * HOLD_BASE, "route on hold: refused")
    route.logged_in()
    assert route.auth_failures == 0


# ------------------------------------------------------------ the route-state store


def test_route_state_round_trips_through_the_store_into_a_new_router(tmp_path: Path) -> None:
    cfg = setup(tmp_path, TWO_RELAYS)
    clock = ManualClock(T0)
    store = FileRouteStore(str(tmp_path / "routes.json"))
    first = Router(cfg, "host.example.org", store, clock)
    first.routes["a"].failed(RelayError("a: spam-block: 554 blocked", pause=86400, kind="spam-block"))
    first.routes["b"].failed(RelayError("refused", hold=True))
    first.routes["b"].rate.spend(T0, 1)
    store.save(first.route_state(), clock.time())

    again = Router(cfg, "host.example.org", store, clock)
    a, b = again.routes["a"], again.routes["b"]
    assert (a.pause_until, a.pause_kind, a.pause_reason) == (T0 + 86400, "spam-block", "a: spam-block: 554 blocked")
    assert (b.hold_until, b.auth_failures) == (T0 + HOLD_BASE, 1)
    assert again.route_state() == first.route_state()
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]


def test_a_routes_json_from_the_last_release_keeps_its_pause_after_an_upgrade(tmp_path: Path) -> None:
    cfg = setup(tmp_path, TWO_RELAYS)
    path = tmp_path / "routes.json"
    # Written by the last release's qmgr.save_route_state (json.dump of route_state()).
    path.write_text(json.dumps({"routes": {"a": {
        "relay": "127.0.0.1:2525", "provider": None, "last_success": [T0 - 60, "x@example.net: 250 ok"],
        "last_failure": None, "paused_until": T0 + 3600, "paused_because": "route paused: quota",
        "pause": True, "pause_reason": "quota", "pause_kind": "daily-quota", "hold_until": None,
        "hold_reason": None, "auth_failures": 0, "state": "paused", "sent_times": {"minute": [], "day": [T0 - 60]},
    }}, "written": T0 - 1}))

    router = Router(cfg, "host.example.org", FileRouteStore(str(path)), ManualClock(T0))

    a = router.routes["a"]
    assert a.unavailable(T0) == (T0 + 3600, "route paused: quota") and a.pause_kind == "daily-quota"
    assert a.last_success == (T0 - 60, "x@example.net: 250 ok")
    assert describe(FileRouteStore(str(path)).load()["a"], T0) == ("paused", T0 + 3600, "quota")


def test_an_entry_from_before_state_was_written_is_described_from_its_reason(tmp_path: Path) -> None:
    entry = {"paused_until": T0 + 60, "paused_because": "route on hold: refused"}
    assert describe(entry, T0) == ("held", T0 + 60, "route on hold: refused")
    assert describe(entry, T0 + 61) == ("ok", None, None)


def test_a_corrupt_routes_json_reads_as_empty_and_resume_refuses_it_with_one_sentence(tmp_path: Path) -> None:
    path = tmp_path / "routes.json"
    path.write_bytes(b'{"routes": {"a": ')
    store = FileRouteStore(str(path))
    assert store.load() == {}
    with pytest.raises(errors.TempFailure, match="cannot read .*routes.json .*: stop the daemon and remove the file"):
        store.resume("a")
    path.write_text(json.dumps({"routes": ["not", "a", "table"]}))
    assert store.load() == {}


def test_resume_in_the_store_lifts_only_the_named_route(tmp_path: Path) -> None:
    path = tmp_path / "routes.json"
    held = {"paused_until": T0 + 60, "paused_because": "route on hold: refused", "state": "held",
            "hold_until": T0 + 60, "hold_reason": "refused", "auth_failures": 3}
    FileRouteStore(str(path)).save({"a": held, "b": held}, T0)
    FileRouteStore(str(path)).resume("a")
    saved = FileRouteStore(str(path)).load()
    assert describe(saved["a"], T0) == ("ok", None, None) and saved["a"]["auth_failures"] == 0
    assert saved["b"] == held
    assert json.loads(path.read_text())["written"] == T0


def test_one_attempt_parses_the_from_header_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pysendmail.core import rfc5322

    cfg = setup(tmp_path, TWO_RELAYS)
    manager = QueueManager(cfg, clock=ManualClock(T0))
    assert isinstance(manager.transport, Router)
    sessions = Sessions(manager.transport, monkeypatch)
    parsed: list[bytes] = []
    real_first_from = rfc5322.first_from

    def first_from(message: bytes) -> str | None:
        parsed.append(message)
        return real_first_from(message)

    monkeypatch.setattr(rfc5322, "first_from", first_from)
    qid = enqueue(cfg, ["x@example.net", "y@example.net", "z@example.net"], T0)

    attempt(manager, qid)

    # The last release parsed it in blocked_for, max_recipients and deliver (three times before DKIM).
    assert len(parsed) == 1 and sessions.calls == [("a", [0, 1, 2])]
