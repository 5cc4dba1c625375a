"""The router: the relay's Transport, one Route per account, chosen per message.

Contract:   ``Router(cfg, helo, store=None, clock=SYSTEM)`` is a Transport
            (transport/base.py) over every relay of the configuration.
            ``plan(msg)`` runs once per delivery attempt: it parses the
            From header once, applies the [[route]] rules (routes.py),
            says whether every route msg may take is unavailable now
            (``blocked``: the queue manager leaves it untouched until
            then), and cuts the pending recipients into chunks of the
            route's max_recipients_per_message, once.  ``deliver(msg,
            indices, plan)`` switches to the fallback while the primary
            is paused, held, down or over budget (never for a reply about
            the message itself), spends the route's sending budget, aligns
            the sender (sender.py) and hands the chunk to the route's SMTP
            session.  ``unavailable()`` is set only when every route is.
            ``route_state()`` is every route's entry for the state store.
            With a fleet store (daemon/fleet.py FleetRouteStore) each route
            that logs in to an account is bound to the fleet (Route.link):
            right before a transaction its budget is spent in Redis and
            here in one round trip (a pause or hold another host recorded
            defers it instead), and a pause or hold the transaction caused
            is shared; ``resume`` lifts it for every host.
            A recipient at a local domain (core/aliases.py LocalDomains)
            is never relayed: cleanup resolves those at pickup, so one
            here was queued unresolved (by an older pysendmail, or before
            a relay was configured) and fails with 5.1.1 instead.
Crashes:    pauses, holds and budgets are restored from the route-state
            store (state.py) at start, so a restart does not try again
            inside a provider's window; the queue manager saves them.
See also:   route.py, state.py, routes.py, sender.py, transport/smtp.py, qmgr.py.
"""

from __future__ import annotations

import dataclasses

from pysendmail.core import config, log, rfc5322
from pysendmail.core.aliases import LocalDomains, split_address
from pysendmail.core.clock import SYSTEM, Clock
from pysendmail.core.queue import QueuedMessage
from pysendmail.core.spoolfile import Envelope
from pysendmail.daemon import routes, sender
from pysendmail.daemon.routing.route import Route
from pysendmail.daemon.routing.state import RouteStore
from pysendmail.daemon.transport.base import DEFERRED, FAILED, Plan, Result, chunked

TYPE_CHECKING = False
if TYPE_CHECKING:
    from pysendmail.daemon.dkim import Signer
    from pysendmail.daemon.fleet import Fleet


class Router:
    def __init__(self, cfg: config.Config, helo: str, store: RouteStore | None = None,
                 clock: Clock = SYSTEM) -> None:
        self.clock = clock
        self.routing = routes.resolve(cfg)
        self.routes = {name: Route(s, helo, clock) for name, s in self.routing.relays.items()}
        for route in self.routes.values():
            sender.check(route.settings)
        first = self.routes[self.routing.default.relay]
        self.relay = first.smtp.relay
        self.tls_version = ""
        self.concurrency = sum(r.smtp.concurrency for r in self.routes.values())
        self.idle_timeout = min(r.smtp.idle_timeout for r in self.routes.values())
        self._signer: Signer | None = None
        self.local = LocalDomains(cfg.local_domains())
        if store is not None:
            now = clock.time()
            for name, entry in store.load().items():
                if name in self.routes:
                    self.routes[name].restore(entry, now)
        # [fleet]: the store has the fleet behind it (state.py open_store); every route that logs
        # in to an account shares that account's budget and pauses (daemon/fleet.py).
        self.fleet: Fleet | None = None
        if store is not None and cfg.fleet.configured:
            from pysendmail.daemon.fleet import FleetRouteStore

            if isinstance(store, FleetRouteStore):
                self.fleet = store.fleet
                for name, route in self.routes.items():
                    route.link = store.bind(name, route.settings.values, route.rate, route)

    @property
    def signer(self) -> Signer | None:
        """The [[dkim]] keys; set by the queue manager, shared by every route."""
        return self._signer

    @signer.setter
    def signer(self, value: Signer | None) -> None:
        self._signer = value
        for route in self.routes.values():
            route.smtp.signer = value

    # ------------------------------------------------------------ choice
    def choose(self, env: Envelope, header_from: str | None) -> tuple[Route, Route | None]:
        """(primary, fallback) by the [[route]] rules."""
        primary, fallback = self.routing.choose(env, header_from)
        return self.routes[primary], self.routes[fallback] if fallback else None

    def plan(self, msg: QueuedMessage) -> Plan:
        now = self.clock.time()
        header_from = rfc5322.first_from(msg.message) if msg.message else None
        primary, fallback = self.choose(msg.envelope, header_from)
        pending = msg.pending()
        # The first transaction's recipients must fit the day's budget.
        first_chunk = min(len(pending), primary.max_rcpt or len(pending))
        blocked = primary.unavailable(now, first_chunk)
        if blocked is not None and fallback is not None:
            second = fallback.unavailable(now, first_chunk)
            blocked = None if second is None else (min(blocked[0], second[0]), blocked[1])
        # Chunked for the route a transaction would take now: a later
        # chunk waits for the budget like any message (deliver).
        route = self._pick(primary, fallback, now)
        return Plan(primary.name, fallback.name if fallback else None, header_from,
                    chunked(pending, route.max_rcpt), blocked)

    def _pick(self, primary: Route, fallback: Route | None, now: float, recipients: int = 1) -> Route:
        """The route to use now: the fallback while only it is available."""
        if fallback is None or primary.unavailable(now, recipients) is None:
            return primary
        return fallback if fallback.unavailable(now, recipients) is None else primary

    def unavailable(self) -> tuple[float, str] | None:
        now = self.clock.time()
        blocked = [r.unavailable(now) for r in self.routes.values()]
        if any(b is None for b in blocked):
            return None
        until = min(b[0] for b in blocked if b)
        return until, "; ".join(f"{name}: {b[1]}" for name, b in zip(self.routes, blocked) if b)

    # ------------------------------------------------------------ delivery
    async def deliver(self, msg: QueuedMessage, indices: list[int], plan: Plan) -> list[Result]:
        local = [i for i in indices if split_address(msg.envelope.recipients[i])[1] in self.local]
        if local:
            # Providers refuse root@localhost, and a short host name is
            # nobody's mailbox there: the last line of defence.
            refused = [Result(i, FAILED, "5.1.1", "a local address is never relayed, and this one was queued without "
                              "its alias resolved (before a relay was configured?): set [aliases] root and send it "
                              "again") for i in local]
            rest = [i for i in indices if i not in local]
            return refused + (await self.deliver(msg, rest, plan) if rest else [])
        assert plan.route is not None  # a Router's plan always names a route
        primary = self.routes[plan.route]
        fallback = self.routes[plan.fallback] if plan.fallback else None
        now = self.clock.time()
        route = self._pick(primary, fallback, now, len(indices))
        budget = route.over_budget(now, len(indices))
        if budget:
            # A later chunk of a message whose first chunk fit: it waits
            # for the budget like any message, and is not tried over it.
            return [Result(i, DEFERRED, "4.7.0", budget[1], route=route.name) for i in indices]
        results = await self._through_chunks(route, msg, indices, plan.header_from)
        if route is primary and fallback is not None and primary.unavailable(self.clock.time()):
            # The primary failed as a route (down, paused, credentials),
            # not over this message: what it could not take goes through
            # the fallback now rather than waiting for the primary.
            again = [r.index for r in results if r.status == DEFERRED]
            if again and fallback.unavailable(self.clock.time()) is None:
                log.event(msg.qid, f"route {primary.name} unavailable, trying fallback route {fallback.name}")
                retried = {r.index: r for r in await self._through_chunks(fallback, msg, again, plan.header_from)}
                results = [retried.get(r.index, r) for r in results]
        return results

    async def _through_chunks(self, route: Route, msg: QueuedMessage, indices: list[int],
                              header_from: str | None) -> list[Result]:
        """``indices`` through ``route``, one transaction per max_recipients_per_message.

        One chunk of the plan when the route is the one planned for; more
        only when another route (the fallback) takes fewer recipients.
        """
        results: list[Result] = []
        for part in chunked(indices, route.max_rcpt):
            results += await self._through(route, msg, list(part), header_from)
        return results

    async def _through(self, route: Route, msg: QueuedMessage, indices: list[int],
                       header_from: str | None = None) -> list[Result]:
        mail_from, message, changed = sender.align(msg.envelope.sender, msg.message, route.settings)
        if changed:
            log.event(msg.qid, f"route={route.name}", f"rewrote {changed}")
        out = msg
        if mail_from != msg.envelope.sender or message is not msg.message:
            out = msg.variant(sender=mail_from, message=message)
            header_from = None if message is not msg.message else header_from  # a rewritten From is read again
        blocked = route.health(self.clock.time())
        marks = (route.pause_until, route.hold_until)
        if blocked is None and route.link is not None:
            # One round trip: the fleet's pause and hold, then its budget, spent there and here at once.
            shared = await route.link.before(len(indices))
            if shared:
                return [Result(i, DEFERRED, "4.7.0", shared[1], route=route.name) for i in indices]
        elif route.link is None:
            route.rate.spend(self.clock.time(), len(indices))
        if blocked:
            results = [Result(i, DEFERRED, "4.4.1", blocked[1]) for i in indices]
        else:
            results = await route.smtp.deliver(out, indices, header_from=header_from)
            if route.link is not None:
                await route.link.after(*marks)  # a pause or hold this transaction caused: for every host
                if results:
                    route.link.outcome(results[-1].status == "sent", results[-1].text)
        now = self.clock.time()
        self.relay, self.tls_version = route.smtp.relay, route.smtp.tls_version
        tagged = []
        for r in results:
            route.record(now, msg.envelope.recipients[r.index], r.status == "sent", r.text)
            tagged.append(dataclasses.replace(r, relay=route.smtp.relay, tls=route.smtp.tls_version, route=route.name))
        return tagged

    # ------------------------------------------------------------ the administrator and the daemon
    def reset_down(self) -> None:
        for r in self.routes.values():
            r.reset_down()

    def resume(self, name: str) -> bool:
        """Lift route ``name``'s pause, hold and down mark ('pysendmail route resume'); False if unknown."""
        route = self.routes.get(name)
        if route is None:
            return False
        route.resume()
        if route.link is not None:
            route.link.resume()  # the account's pause is lifted for every host of the fleet
        return True

    def has_idle(self) -> bool:
        return any(r.smtp.has_idle() for r in self.routes.values())

    async def close_idle(self, older_than: float = 0.0) -> None:
        for r in self.routes.values():
            await r.smtp.close_idle(older_than)

    async def close(self) -> None:
        for r in self.routes.values():
            await r.smtp.close()
        if self.fleet is not None:
            await self.fleet.close()

    def route_state(self) -> dict[str, dict[str, object]]:
        now = self.clock.time()
        return {name: r.snapshot(now) for name, r in self.routes.items()}
