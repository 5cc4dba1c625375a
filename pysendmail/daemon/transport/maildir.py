"""The embedded default transport: deliver into a local Maildir.

Contract:   each recipient gets its own file in ``<maildir>/new`` with
            ``Return-Path`` and ``Delivered-To`` prepended, lines ending in
            LF as Maildir readers (mutt, Dovecot) expect.  A disk error is
            a deferral, never a loss.  The writes and fsyncs run in a
            worker thread, off the event loop.  It has no routes: its plan
            is one chunk, and the route methods of the Transport seam
            (unavailable, resume, route_state, ...) say so.
Crashes:    written in tmp/, fsynced, renamed into new/, new/ fsynced: a
            crash leaves a stray file in tmp/ at worst (Maildir readers
            ignore tmp/), and the recipient is tried again.
See also:   https://cr.yp.to/proto/maildir.html; Postfix local(8), which
            adds the same two headers.
"""

from __future__ import annotations

import asyncio
import os
import socket

from pysendmail.core import durable, rfc5322
from pysendmail.core.clock import SYSTEM, Clock
from pysendmail.core.queue import QueuedMessage
from pysendmail.daemon import wire
from pysendmail.daemon.transport.base import DEFERRED, SENT, Plan, Result, chunked

TYPE_CHECKING = False
if TYPE_CHECKING:
    from pysendmail.daemon.fleet import Fleet
    from pysendmail.daemon.routing.route import Route
    from pysendmail.daemon.dkim import Signer


def ensure_maildir(path: str) -> None:
    for sub in ("", "tmp", "new", "cur"):
        os.makedirs(os.path.join(path, sub), 0o700, exist_ok=True)


class MaildirTransport:
    tls_version = ""
    concurrency = 1
    idle_timeout = 0.0

    def __init__(self, path: str, clock: Clock = SYSTEM) -> None:
        self.path = path
        self.clock = clock
        self.relay = f"maildir[{path}]"
        self.routes: dict[str, Route] = {}
        self.fleet: Fleet | None = None
        self._host = socket.gethostname().replace("/", "\\057").replace(":", "\\072")
        self._count = 0
        # Signed like relayed mail, so that a developer sees (and can verify)
        # the DKIM-Signature a receiver would get; a local Maildir takes
        # 8-bit and UTF-8 as they are, so only over-long lines are changed.
        self.signer: Signer | None = None

    def _unique(self) -> str:
        self._count += 1
        now = self.clock.time()
        sec = int(now)
        usec = int((now - sec) * 1e6)
        return f"{sec}.M{usec}P{os.getpid()}Q{self._count}R{os.urandom(4).hex()}.{self._host}"

    def _write(self, data: bytes) -> str:
        ensure_maildir(self.path)
        name = self._unique()
        tmp = os.path.join(self.path, "tmp", name)
        final = os.path.join(self.path, "new", name)
        durable.publish(tmp, final, data, exclusive=True)
        return final

    def plan(self, msg: QueuedMessage) -> Plan:
        signing = self.signer is not None and bool(self.signer.keys)  # the From is read for the signer only
        header_from = rfc5322.first_from(msg.message) if msg.message and signing else None
        return Plan(None, None, header_from, chunked(msg.pending(), 0))

    async def deliver(self, msg: QueuedMessage, indices: list[int], plan: Plan) -> list[Result]:
        data = wire.for_delivery(msg, eightbit=True, utf8=True, signer=self.signer,
                                 header_from=plan.header_from).data
        body = data.replace(b"\r\n", b"\n")
        sender = msg.envelope.sender
        results = []
        for i in indices:
            rcpt = msg.envelope.recipients[i]
            head = f"Return-Path: <{sender}>\nDelivered-To: {rcpt}\n".encode()
            try:
                final = await asyncio.to_thread(self._write, head + body)
            except OSError as exc:
                results.append(Result(i, DEFERRED, "4.3.0", f"cannot write to maildir {self.path}: {exc.strerror}"))
                continue
            results.append(Result(i, SENT, "2.0.0", f"delivered to maildir as {os.path.basename(final)}"))
        return results

    def unavailable(self) -> tuple[float, str] | None:
        return None

    def reset_down(self) -> None:
        return None

    def resume(self, name: str) -> bool:
        return False  # no routes

    def route_state(self) -> dict[str, dict[str, object]]:
        return {}

    def has_idle(self) -> bool:
        return False

    async def close_idle(self, older_than: float = 0.0) -> None:
        return None

    async def close(self) -> None:
        return None
