"""The transport seam: what the queue manager asks of any transport.

Contract:   ``await transport.deliver(msg, indices)`` tries the recipients
            ``indices`` of one queued message and returns one Result per
            recipient, in any order.  It never raises for a delivery
            problem: network, TLS, timeouts and replies all become Results
            (partial success is data, as in aiosmtplib).  ``relay`` names
            where it delivers, for the log line.  A Result's ``text`` is
            always one bounded line of printable text (``one_line``), whatever
            the relay sent: it goes into state records, log lines and DSNs.
See also:   outcome.py (reply codes to states), maildir.py, smtp.py.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Protocol

from pysendmail.core.queue import QueuedMessage

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


class Transport(Protocol):
    relay: str

    async def deliver(self, msg: QueuedMessage, indices: list[int]) -> list[Result]: ...

    async def close(self) -> None: ...
