"""The routing transport: one SmtpTransport per account, chosen per message.

Contract:   ``RouterTransport(cfg, helo, state_file)`` is a Transport (see
            base.py) over every relay of the configuration.  For each
            message it chooses the route (routes.py), switches to the
            fallback while the primary is paused, held or down (never for
            a reply about the message itself), spends the route's sending
            budget, aligns the sender (sender.py), and delivers.
            ``blocked_for(msg)`` says when a message's routes are all
            unavailable (the queue manager then leaves it untouched until
            then); ``unavailable()`` is set only when every route is.
            ``route_state()`` is what ``pysendmail status`` shows.
            A recipient at a local domain (core/aliases.py LocalDomains)
            is never relayed: cleanup resolves those at pickup, so one
            here was queued unresolved (by an older pysendmail, or before
            a relay was configured) and fails with 5.1.1 instead.
Crashes:    pauses (quota, spam block) are written to spool/state by the
            queue manager and restored here, so a restart does not try
            again inside the provider's window.
See also:   routes.py, sender.py, transport/smtp.py, qmgr.py.
"""

from __future__ import annotations

import dataclasses
import time

from pysendmail.core import config, log, rfc5322
from pysendmail.core.aliases import LocalDomains, split_address
from pysendmail.core.queue import QueuedMessage
from pysendmail.daemon import routes, sender
from pysendmail.daemon.qmgr import RateLimit
from pysendmail.daemon.transport.base import DEFERRED, FAILED, Result
from pysendmail.daemon.transport.smtp import SmtpTransport

TYPE_CHECKING = False
if TYPE_CHECKING:
    from pysendmail.daemon.dkim import Signer

class Route:
    def __init__(self, settings: routes.RelaySettings, helo: str) -> None:
        self.settings = settings
        self.name = settings.name
        values = settings.values
        self.smtp = SmtpTransport(values, str(values.get("helo") or helo), settings.name, settings.provider)
        self.rate = RateLimit(int(values.get("rate_per_minute") or 0), int(values.get("rate_per_day") or 0),  # type: ignore[call-overload]
                              str(values.get("rate_unit") or "messages"))
        self.last_success: tuple[float, str] | None = None
        self.last_failure: tuple[float, str] | None = None

    def unavailable(self, now: float, recipients: int = 1) -> tuple[float, str] | None:
        return self.smtp.unavailable() or self.over_budget(now, recipients)

    def over_budget(self, now: float, recipients: int = 1) -> tuple[float, str] | None:
        """(until, why) while a transaction with ``recipients`` would exceed the sending budget."""
        wait = self.rate.delay(now, recipients)
        if wait > 0:
            return now + wait, f"sending budget ({self.settings.where}.rate_per_minute / rate_per_day) used up"
        return None


class RouterTransport:
    def __init__(self, cfg: config.Config, helo: str, state_file: str | None = None) -> None:
        self.routing = routes.resolve(cfg)
        self.routes = {name: Route(s, helo) for name, s in self.routing.relays.items()}
        for route in self.routes.values():
            sender.check(route.settings)
        first = self.routes[self.routing.default.relay]
        self.relay = first.smtp.relay
        self.tls_version = ""
        self.pool_size = sum(r.smtp.pool_size for r in self.routes.values())
        self.idle_timeout = min(r.smtp.idle_timeout for r in self.routes.values())
        self._signer: Signer | None = None
        self.local = LocalDomains(cfg.local_domains())
        if state_file:
            self._restore(state_file)

    @property
    def signer(self) -> Signer | None:
        """The [[dkim]] keys; set by the queue manager, shared by every route."""
        return self._signer

    @signer.setter
    def signer(self, value: Signer | None) -> None:
        self._signer = value
        for route in self.routes.values():
            route.smtp.signer = value

    def _restore(self, path: str) -> None:
        for name, entry in routes.saved_state(path).items():
            route = self.routes.get(name)
            if route is None:
                continue
            for key in ("last_success", "last_failure"):
                item = entry.get(key)
                if isinstance(item, list) and len(item) == 2:
                    setattr(route, key, (float(item[0]), str(item[1])))
            route.rate.restore(entry.get("sent_times"), time.time())
            until, why = entry.get("paused_until"), entry.get("pause_reason")
            if entry.get("pause") and isinstance(until, (int, float)) and isinstance(why, str):
                route.smtp.restore_pause(float(until), why, str(entry.get("pause_kind") or ""))
            hold, why, failures = entry.get("hold_until"), entry.get("hold_reason"), entry.get("auth_failures")
            if isinstance(hold, (int, float)) and isinstance(why, str) and isinstance(failures, int):
                route.smtp.restore_hold(float(hold), why, failures)

    # ------------------------------------------------------------ choice
    def _choose(self, msg: QueuedMessage) -> tuple[Route, Route | None]:
        primary, fallback = self.routing.choose(msg.envelope, rfc5322.first_from(msg.message) if msg.message else None)
        return self.routes[primary], self.routes[fallback] if fallback else None

    def blocked_for(self, msg: QueuedMessage) -> tuple[float, str] | None:
        now = time.time()
        primary, fallback = self._choose(msg)
        # The first transaction's recipients must fit the day's budget.
        first_chunk = min(len(msg.pending()), primary.smtp.max_rcpt or len(msg.pending()))
        first = primary.unavailable(now, first_chunk)
        if first is None:
            return None
        if fallback is not None:
            second = fallback.unavailable(now, first_chunk)
            if second is None:
                return None
            return min(first[0], second[0]), first[1]
        return first

    def unavailable(self) -> tuple[float, str] | None:
        now = time.time()
        blocked = [r.unavailable(now) for r in self.routes.values()]
        if any(b is None for b in blocked):
            return None
        until = min(b[0] for b in blocked if b)
        return until, "; ".join(f"{name}: {b[1]}" for name, b in zip(self.routes, blocked) if b)

    def max_recipients(self, msg: QueuedMessage) -> int:
        """Recipients per transaction on the route ``msg`` takes (0: no limit).

        The queue manager splits by this so that each chunk's outcomes are
        durable before the next chunk goes (qmgr._deliver).
        """
        route, _, _ = self._pick(msg, time.time())
        return int(route.smtp.max_rcpt)

    def _pick(self, msg: QueuedMessage, now: float, recipients: int = 1) -> tuple[Route, Route, Route | None]:
        """(the route to use now, the primary, the fallback): the fallback while only it is available."""
        primary, fallback = self._choose(msg)
        if primary.unavailable(now, recipients) and fallback is not None and fallback.unavailable(now, recipients) is None:
            return fallback, primary, fallback
        return primary, primary, fallback

    # ------------------------------------------------------------ delivery
    async def deliver(self, msg: QueuedMessage, indices: list[int]) -> list[Result]:
        local = [i for i in indices if split_address(msg.envelope.recipients[i])[1] in self.local]
        if local:
            # Providers refuse root@localhost, and a short host name is
            # nobody's mailbox there: the last line of defence.
            refused = [Result(i, FAILED, "5.1.1", "a local address is never relayed, and this one was queued without "
                              "its alias resolved (before a relay was configured?): set [aliases] root and send it "
                              "again") for i in local]
            rest = [i for i in indices if i not in local]
            return refused + (await self.deliver(msg, rest) if rest else [])
        now = time.time()
        route, primary, fallback = self._pick(msg, now, len(indices))
        budget = route.over_budget(now, len(indices))
        if budget:
            # A later chunk of a message whose first chunk fit: it waits
            # for the budget like any message, and is not tried over it.
            return [Result(i, DEFERRED, "4.7.0", budget[1], route=route.name) for i in indices]
        results = await self._through(route, msg, indices)
        if route is primary and fallback is not None and primary.unavailable(time.time()):
            # The primary failed as a route (down, paused, credentials),
            # not over this message: what it could not take goes through
            # the fallback now rather than waiting for the primary.
            again = [r.index for r in results if r.status == DEFERRED]
            if again and fallback.unavailable(time.time()) is None:
                log.event(msg.qid, f"route {primary.name} unavailable, trying fallback route {fallback.name}")
                retried = {r.index: r for r in await self._through(fallback, msg, again)}
                results = [retried.get(r.index, r) for r in results]
        return results

    async def _through(self, route: Route, msg: QueuedMessage, indices: list[int]) -> list[Result]:
        mail_from, message, changed = sender.align(msg.envelope.sender, msg.message, route.settings)
        if changed:
            log.event(msg.qid, f"route={route.name}", f"rewrote {changed}")
        out = msg
        if mail_from != msg.envelope.sender or message is not msg.message:
            out = msg.variant(sender=mail_from, message=message)
        route.rate.spend(time.time(), len(indices))
        results = await route.smtp.deliver(out, indices)
        now = time.time()
        self.relay, self.tls_version = route.smtp.relay, route.smtp.tls_version
        tagged = []
        for r in results:
            rcpt = msg.envelope.recipients[r.index]
            if r.status == "sent":
                route.last_success = (now, f"{rcpt}: {r.text}")
            else:
                route.last_failure = (now, f"{rcpt}: {r.text}")
            tagged.append(dataclasses.replace(r, relay=route.smtp.relay, tls=route.smtp.tls_version, route=route.name))
        return tagged

    # ------------------------------------------------------------ seam
    def reset_down(self) -> None:
        for r in self.routes.values():
            r.smtp.reset_down()

    def resume(self, name: str) -> bool:
        """Lift route ``name``'s pause, hold and down mark ('pysendmail route resume'); False if unknown."""
        route = self.routes.get(name)
        if route is None:
            return False
        route.smtp.resume()
        return True

    def has_idle(self) -> bool:
        return any(r.smtp.has_idle() for r in self.routes.values())

    async def close_idle(self, older_than: float = 0.0) -> None:
        for r in self.routes.values():
            await r.smtp.close_idle(older_than)

    async def close(self) -> None:
        for r in self.routes.values():
            await r.smtp.close()

    def route_state(self) -> dict[str, object]:
        now = time.time()
        out: dict[str, object] = {}
        for name, r in self.routes.items():
            blocked = r.unavailable(now)
            out[name] = {
                "relay": r.smtp.relay,
                "provider": r.settings.provider,
                "last_success": r.last_success,
                "last_failure": r.last_failure,
                "paused_until": blocked[0] if blocked else None,
                "paused_because": blocked[1] if blocked else None,
                "pause": r.smtp.pause_until > now,
                "pause_reason": r.smtp.pause_reason if r.smtp.pause_until > now else None,
                "pause_kind": r.smtp.pause_kind if r.smtp.pause_until > now else None,
                # A refused login's hold, kept so that the next run (a cron
                # 'sendmail -q', a restart) does not log in again before it ends.
                "hold_until": r.smtp.hold_until if r.smtp.hold_until > now else None,
                "hold_reason": r.smtp.hold_reason if r.smtp.hold_until > now else None,
                "auth_failures": r.smtp.auth_failures,
                "state": _state(r, now),
                "sent_times": r.rate.snapshot(now),
            }
        return out


def _state(r: Route, now: float) -> str:
    """One word for 'pysendmail route list': paused, held, down, budget or ok (unavailable()'s order)."""
    if r.smtp.pause_until > now:
        return "paused"
    if r.smtp.hold_until > now:
        return "held"
    if r.smtp.down_until > now:
        return "down"
    return "budget" if r.over_budget(now) else "ok"
