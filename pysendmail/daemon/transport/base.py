"""The transport seam: what the queue manager asks of any transport.

Contract:   ``transport.plan(msg)`` runs once per delivery attempt and
            returns a Plan: the route and fallback the rules chose, msg's
            From address (parsed once, handed down to DKIM), the pending
            recipients in chunks of at most the route's
            max_recipients_per_message, and ``blocked`` (until, why) when
            every route msg may take is unavailable now (the queue manager
            then leaves it untouched, with no bounce).
            ``await transport.deliver(msg, indices, plan)`` tries one chunk
            (the recipients ``indices``) of one queued message and returns one Result per
            recipient, in any order.  It never raises for a delivery
            problem: network, TLS, timeouts and replies all become Results
            (partial success is data, as in aiosmtplib).  ``relay`` names
            where it delivers, for the log line.  A Result's ``text`` is
            always one bounded line of printable text (``one_line``), whatever
            the relay sent: it goes into state records, log lines and DSNs.
            The Protocol is everything the queue manager and the daemon
            (daemon/main.py) call: nothing is probed with getattr.
See also:   outcome.py (reply codes to states), maildir.py, smtp.py,
            ../routing/router.py (the relay's Transport).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Protocol

from pysendmail.core.queue import QueuedMessage

TYPE_CHECKING = False
if TYPE_CHECKING:
    from pysendmail.daemon.dkim import Signer
    from pysendmail.daemon.fleet import Fleet
    from pysendmail.daemon.routing.route import Route

SENT, DEFERRED, FAILED, HELD = "sent", "deferred", "failed", "held"  # held: kept for the admin

TEXT_LIMIT = 1000  # characters of a reply kept for records, logs and DSNs
_CONTROLS = re.compile(r"[\x00-\x1f\x7f-\x9f]+")


def one_line(text: str, limit: int = TEXT_LIMIT) -> str:
    """``text`` as one line of at most ``limit`` characters, safe for a state record and a log line.

    A relay's reply may hold line breaks (multi-line replies), NUL, escape
    sequences and bytes that are not UTF-8 (aiosmtplib keeps them as lone
    surrogates): each would break a state record (which refuses line
    breaks and NUL), forge a log line, or fail when printed.  Invalid
    bytes become U+FFFD, controls and runs of blanks one space, and the
    cost is linear in the text's length.
    """
    text = text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    text = " ".join(_CONTROLS.sub(" ", text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass(frozen=True)
class Result:
    index: int
    status: str  # SENT, DEFERRED, FAILED or HELD
    dsn: str  # enhanced status code, e.g. "2.0.0"
    text: str  # the reply or the error, one line, for logs and bounces
    relay: str = ""  # where it went (host[ip]:port), when the transport knows better than its .relay
    tls: str = ""
    route: str = ""  # the route's name, when a router chose it

    def __post_init__(self) -> None:
        # The seam's promise, kept here so that no transport can break it.
        object.__setattr__(self, "text", one_line(self.text))


def chunked(indices: list[int], size: int) -> tuple[tuple[int, ...], ...]:
    """``indices`` in runs of at most ``size`` (0: one run); () when there are none."""
    size = size or len(indices)
    return tuple(tuple(indices[i : i + size]) for i in range(0, len(indices), size)) if indices else ()


@dataclass(frozen=True)
class Plan:
    """One delivery attempt's decisions, made once (Transport.plan)."""

    route: str | None  # the route the rules chose; None for a transport without routes
    fallback: str | None
    header_from: str | None  # the From header's (first) address, as parsed once
    chunks: tuple[tuple[int, ...], ...]  # the pending recipients, one transaction each
    blocked: tuple[float, str] | None = None  # (until, why): no route of msg's can take it now


class Transport(Protocol):
    relay: str  # where the last delivery went, for the log line
    tls_version: str
    concurrency: int  # deliveries the daemon runs at once (several per connection when they pipeline)
    idle_timeout: float  # seconds a pooled connection may stay idle
    routes: dict[str, Route]  # by name; {} for a transport without routes (Maildir)
    fleet: Fleet | None  # the shared route state ([fleet]), else None

    @property
    def signer(self) -> Signer | None: ...

    @signer.setter
    def signer(self, value: Signer | None) -> None: ...

    def plan(self, msg: QueuedMessage) -> Plan: ...

    async def deliver(self, msg: QueuedMessage, indices: list[int], plan: Plan) -> list[Result]: ...

    def unavailable(self) -> tuple[float, str] | None:
        """(until, why) when no route can take mail now (hold, pause, down, budget)."""

    def reset_down(self) -> None:
        """An administrator's flush: forget the short marks of failed connections."""

    def resume(self, name: str) -> bool:
        """Lift route ``name``'s pause, hold and down mark; False if there is no such route."""

    def route_state(self) -> dict[str, dict[str, object]]:
        """Every route's entry for the route-state store; {} without routes."""

    def has_idle(self) -> bool: ...

    async def close_idle(self, older_than: float = 0.0) -> None: ...

    async def close(self) -> None: ...
