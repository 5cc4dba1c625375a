"""A transport that delivers nowhere: the queue manager's unit tests drive it.

It implements the Transport Protocol (daemon/transport/base.py) as the
Maildir and the Router do, so mypy checks it against the seam: a test
says what each recipient's outcome is (``answer``), which route state to
report (``blocked``), and reads back every ``deliver`` call, with what
the queue file held at that moment (``on_disk``).
"""

from __future__ import annotations

from collections.abc import Callable

from pysendmail.core.queue import QueuedMessage
from pysendmail.daemon.transport.base import SENT, Plan, Result, chunked

TYPE_CHECKING = False
if TYPE_CHECKING:
    from pysendmail.daemon.dkim import Signer
    from pysendmail.daemon.fleet import Fleet
    from pysendmail.daemon.routing.route import Route


class FakeTransport:
    tls_version = ""
    concurrency = 1
    idle_timeout = 0.0

    def __init__(self, max_rcpt: int = 0) -> None:
        self.relay = "fake[127.0.0.1]:25"
        self.routes: dict[str, Route] = {}
        self.fleet: Fleet | None = None
        self.max_rcpt = max_rcpt
        self.answer: Callable[[str], tuple[str, str, str]] = lambda rcpt: (SENT, "2.0.0", "250 2.0.0 Ok")
        self.blocked: tuple[float, str] | None = None  # what plan() says about the route
        self.calls: list[list[int]] = []
        self.on_disk: list[bytes] = []  # the queue file's bytes at each deliver call
        self.resets = 0
        self.closed = False
        self.signer: Signer | None = None

    def plan(self, msg: QueuedMessage) -> Plan:
        return Plan("fake", None, None, chunked(msg.pending(), self.max_rcpt), self.blocked)

    async def deliver(self, msg: QueuedMessage, indices: list[int], plan: Plan) -> list[Result]:
        self.calls.append(list(indices))
        with open(msg.path, "rb") as fh:
            self.on_disk.append(fh.read())
        return [Result(i, *self.answer(msg.envelope.recipients[i]), route="fake") for i in indices]

    def unavailable(self) -> tuple[float, str] | None:
        return self.blocked

    def reset_down(self) -> None:
        self.resets += 1

    def resume(self, name: str) -> bool:
        return False

    def route_state(self) -> dict[str, dict[str, object]]:
        return {"fake": {"relay": self.relay, "paused_until": self.blocked[0] if self.blocked else None}}

    def has_idle(self) -> bool:
        return False

    async def close_idle(self, older_than: float = 0.0) -> None:
        return None

    async def close(self) -> None:
        self.closed = True
