"""The transport seam: what the queue manager asks of any transport.

Contract:   ``await transport.deliver(msg, indices)`` tries the recipients
            ``indices`` of one queued message and returns one Result per
            recipient, in any order.  It never raises for a delivery
            problem: network, TLS, timeouts and replies all become Results
            (partial success is data, as in aiosmtplib).  ``relay`` names
            where it delivers, for the log line.
See also:   outcome.py (reply codes to states), maildir.py, smtp.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from pysendmail.core.queue import QueuedMessage

SENT, DEFERRED, FAILED, HELD = "sent", "deferred", "failed", "held"  # held: kept for the admin


@dataclass(frozen=True)
class Result:
    index: int
    status: str  # SENT, DEFERRED, FAILED or HELD
    dsn: str  # enhanced status code, e.g. "2.0.0"
    text: str  # the reply or the error, one line, for logs and bounces
    relay: str = ""  # where it went (host[ip]:port), when the transport knows better than its .relay
    tls: str = ""
    route: str = ""  # the route's name, when a router chose it


class Transport(Protocol):
    relay: str

    async def deliver(self, msg: QueuedMessage, indices: list[int]) -> list[Result]: ...

    async def close(self) -> None: ...
