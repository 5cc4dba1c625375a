"""The queue manager: picks messages, hands them to a transport, records outcomes.

Contract:   ``QueueManager(cfg).flush()`` picks up incoming/, then tries
            every queued, unheld message once, ignoring backoff (what
            ``sendmail -q`` promises), and returns counts.  Each
            recipient's outcome is appended to the queue file durably
            before the next is recorded; a message with nothing pending is
            removed (all sent) or moved to failed/ (some failed).
Crashes:    see core/queue.py: a crash between the relay's acceptance and
            the done record resends that recipient once (at-least-once).
            An unexpected exception while handling one message is logged
            with its traceback and leaves that message queued; the run
            goes on with the next (Mailman's boundary).
See also:   Postfix qmgr(8); ../shared/DESIGN.md "Data flow".
"""

from __future__ import annotations

import os
import random
import time
import traceback

from pysendmail.core import aliases, config, layout, log, queue, spoolfile
from pysendmail.daemon import cleanup, pickup
from pysendmail.daemon.transport.base import DEFERRED, FAILED, SENT, Result, Transport
from pysendmail.daemon.transport.maildir import MaildirTransport

DEFAULT_RETRY = (60, 300, 900, 3600, 14400)


def next_delay(tries: int, schedule: tuple[int, ...] = DEFAULT_RETRY) -> float:
    """Seconds until the next try after ``tries`` failed ones, with ±10 % jitter."""
    base = schedule[min(tries, len(schedule)) - 1] if tries > 0 else schedule[0]
    return base * random.uniform(0.9, 1.1)


def make_context(cfg: config.Config) -> cleanup.Context:
    table = aliases.load(str(cfg.get("host", "aliases_file")), cfg.aliases, cfg.path or "config")
    hostname = cfg.hostname()
    return cleanup.Context(hostname, aliases.Aliases(table, cfg.default_domain(), (hostname,)))


def make_transport(cfg: config.Config) -> Transport:
    return MaildirTransport(cfg.maildir_path)


class Counts:
    __slots__ = ("picked", "sent", "deferred", "failed", "messages")

    def __init__(self) -> None:
        self.picked = self.sent = self.deferred = self.failed = self.messages = 0


class QueueManager:
    def __init__(self, cfg: config.Config, transport: Transport | None = None) -> None:
        self.cfg = cfg
        self.spool = layout.Spool(cfg.spool_path)
        self.ctx = make_context(cfg)
        self.transport = transport or make_transport(cfg)

    def pickup(self) -> list[str]:
        return pickup.pickup_all(self.spool, self.ctx, self.cfg.max_message_size)

    async def flush(self) -> Counts:
        counts = Counts()
        counts.picked = len(self.pickup())
        for qid in queue.list_ids(self.spool.queue):
            await self.attempt(qid, counts)
        return counts

    async def attempt(self, qid: str, counts: Counts) -> queue.QueuedMessage | None:
        """Try one message's pending recipients; return it (state updated) or None."""
        path = os.path.join(self.spool.queue, qid)
        try:
            msg = queue.QueuedMessage.load(path)
        except FileNotFoundError:
            return None
        except spoolfile.SpoolFormatError as exc:
            log.log(f"{qid}: unreadable queue file left in place: {exc}")
            return None
        if msg.held:
            return msg
        counts.messages += 1
        try:
            await self._deliver(msg, counts)
        except Exception:
            # The boundary: log, defer with backoff so a poison message
            # cannot spin, keep the message, go on with the next.
            log.log(f"{qid}: internal error, message kept in the queue: " + traceback.format_exc())
            now = time.time()
            msg.tries += 1
            msg.due = now + next_delay(msg.tries)
            try:
                queue.append(msg.path, spoolfile.encode_record("deferred", f"{now:.3f}", f"{msg.due:.3f}", "internal error"))
            except OSError:
                pass
        return msg

    async def _deliver(self, msg: queue.QueuedMessage, counts: Counts) -> None:
        pending = msg.pending()
        if pending:
            results = await self.transport.deliver(msg, pending)
            self.record(msg, results, counts)
        self.finish(msg)

    def record(self, msg: queue.QueuedMessage, results: list[Result], counts: Counts) -> None:
        now = time.time()
        deferred: list[Result] = []
        for r in results:
            rcpt = msg.envelope.recipients[r.index]
            fields = dict(relay=self.transport.relay, delay=f"{now - msg.envelope.time:.2f}", tries=msg.tries + 1, dsn=r.dsn)
            if r.status == SENT:
                queue.append(msg.path, spoolfile.encode_record("done", r.index, f"{now:.3f}", r.text))
                msg.done[r.index] = r.text
                counts.sent += 1
            elif r.status == FAILED:
                queue.append(msg.path, spoolfile.encode_record("failed", r.index, f"{now:.3f}", r.text))
                msg.failed[r.index] = r.text
                counts.failed += 1
            else:
                deferred.append(r)
                counts.deferred += 1
            log.event(msg.qid, f"to=<{rcpt}>", status=f"{r.status} ({r.text})", **fields)
        if deferred:
            due = now + next_delay(msg.tries + 1)
            reason = deferred[0].text
            queue.append(msg.path, spoolfile.encode_record("deferred", f"{now:.3f}", f"{due:.3f}", reason))
            msg.tries += 1
            msg.due = due
            msg.reason = reason

    def finish(self, msg: queue.QueuedMessage) -> None:
        if msg.pending():
            return
        if msg.failed:
            queue.move_to_failed(self.spool, msg)
            log.event(msg.qid, "moved to failed/")
        else:
            queue.remove(msg.path)
            log.event(msg.qid, "removed")
