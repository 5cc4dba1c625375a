"""The queue manager: picks messages, hands them to a transport, records outcomes.

Contract:   ``QueueManager(cfg).flush()`` picks up incoming/, then tries
            every queued, unheld message once, ignoring backoff (what
            ``sendmail -q`` promises), and returns counts.  Each
            recipient's outcome is appended to the queue file durably
            before the next transaction (one append and one fdatasync per
            transaction, whatever its number of recipients); a message with
            nothing pending is removed (all sent) or moved to failed/ (some
            failed).  When a transaction leaves nothing pending and nothing
            failed, no "done" records are written: the unlink is the record.
            The disk work of one attempt (records, removal, bounce) runs in
            a worker thread (``settle``), so that one connection's fsync
            does not stall the others' dialogue on the event loop.
Crashes:    see core/queue.py: a crash between the relay's acceptance and
            the done record resends that recipient once (at-least-once).
            An unexpected exception while handling one message is logged
            with its traceback and leaves that message queued; the run
            goes on with the next (Mailman's boundary).
Disk:       a write that fails for the disk's sake (ENOSPC, EDQUOT, EIO,
            EROFS: core/queue.storage_error) never reaches that boundary
            and never ends a run: pickup leaves the submission in
            incoming/; outcomes the relay gave but that could not be
            appended stay in memory (``unrecorded``) and are written before
            the message is tried again, so it is not sent twice; a bounce
            or a move to failed/ that fails is done again later.  Each
            sets ``trouble`` (logged once per episode); the daemon backs
            off until space returns, a foreground flush exits 75.
Seams:      the transport is used only through the Transport Protocol
            (transport/base.py): one ``plan`` per attempt (route, chunks,
            blocked), one ``deliver`` per chunk.  Time comes from the
            clock passed in (core/clock.py), route state goes to the
            route-state store (routing/state.py), so tests move time and
            use a fake transport.
See also:   Postfix qmgr(8); ../shared/DESIGN.md "Data flow".
"""

from __future__ import annotations

import asyncio
import os
import random
import traceback


from pysendmail.core import aliases, config, errors, layout, log, queue, spoolfile, trust
from pysendmail.core.clock import SYSTEM, Clock
from pysendmail.daemon import bounce, cleanup, pickup
from pysendmail.daemon.routing.state import RouteStore, open_store
from pysendmail.daemon.transport.base import DEFERRED, FAILED, HELD, SENT, Plan, Result, Transport
from pysendmail.daemon.transport.maildir import MaildirTransport

DEFAULT_RETRY = (60, 300, 900, 3600, 14400)  # then every 4 h until the lifetime ends


def next_delay(tries: int, schedule: tuple[int, ...] = DEFAULT_RETRY) -> float:
    """Seconds until the next try after ``tries`` failed ones, with ±10 % jitter.

    The jitter spreads a queue that failed together (relay down) so that it
    does not come back as one burst.
    """
    base = schedule[min(tries, len(schedule)) - 1] if tries > 0 else schedule[0]
    return base * random.uniform(0.9, 1.1)


def parse_schedule(values: list[str] | None, where: str) -> tuple[int, ...]:
    if not values:
        return DEFAULT_RETRY
    out = []
    for v in values:
        text = v[:-1] + "m" if v.endswith("min") else v
        try:
            out.append(config.parse_interval(text if not text.isdigit() else text + "s"))
        except errors.UsageError:
            raise errors.ConfigError(f"queue.retry_schedule in {where}: {v!r} is not a duration like 5m or 1h") from None
    return tuple(out)


def make_context(cfg: config.Config) -> cleanup.Context:
    # Whoever can write the aliases file reads root's and postmaster's
    # mail: refused as sendmail refuses a group-writable one (core/trust.py).
    problem = trust.named_file(cfg.host.aliases_file, "host.aliases_file")
    if problem:
        raise errors.ConfigError(problem)
    table = aliases.load(cfg.host.aliases_file, cfg.aliases, cfg.path or "config")
    # Local names resolve here; with a relay nothing is delivered on this host.
    resolver = aliases.Aliases(table, cfg.default_domain(), cfg.local_domains(),
                               local_delivery=not cfg.relay_configured, where=cfg.path or "pysendmail.toml")
    return cleanup.Context(cfg.hostname(), resolver)


def helo_name(cfg: config.Config) -> str:
    """The name every route greets with unless its own table sets helo: relay.helo, else config.hostname()."""
    return str(cfg.get("relay", "helo") or cfg.hostname())


def helo_warnings(cfg: config.Config) -> list[str]:
    """One sentence per route whose HELO name is not a fully qualified domain name.

    Said where the name matters and once: the daemon's start, config
    check, doctor (as its HELO line) and setup, never by mailq, status,
    sendmail or a flush (cron mails whatever 'sendmail -q' prints).
    """
    if not cfg.relay_configured:
        return []  # the Maildir transport greets nobody
    from pysendmail.daemon import routes

    out = []
    default = helo_name(cfg)
    for name, settings in routes.resolve(cfg).relays.items():
        helo = str(settings.values.get("helo") or default)
        if helo == "localhost" or "." not in helo:
            where = "" if name == "default" else f"route {name}: "
            out.append(f"warning: {where}HELO name {helo!r} is not a fully qualified domain name; providers may "
                       "refuse or score such mail as spam: set relay.helo (or host.name) to this host's public name")
    return out


def make_transport(cfg: config.Config, store: RouteStore | None = None, clock: Clock = SYSTEM) -> Transport:
    """The relay's Router (its routes restored from ``store``), or the Maildir without a relay."""
    if cfg.relay_configured:
        from pysendmail.daemon.routing.router import Router

        return Router(cfg, helo_name(cfg), store, clock)
    return MaildirTransport(cfg.maildir_path, clock)


def _duration(seconds: float) -> str:
    """5 days, 3 hours, 10 minutes, 2 seconds: for sentences people read."""
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            n = round(seconds / size, 1)
            return f"{n:g} {unit}{'' if n == 1 else 's'}"
    return f"{seconds:g} second{'' if seconds == 1 else 's'}"


class Counts:
    __slots__ = ("picked", "sent", "deferred", "failed", "messages")

    def __init__(self) -> None:
        self.picked = self.sent = self.deferred = self.failed = self.messages = 0


class QueueManager:
    def __init__(self, cfg: config.Config, transport: Transport | None = None, *, clock: Clock = SYSTEM,
                 store: RouteStore | None = None) -> None:
        self.cfg = cfg
        self.clock = clock
        self.spool = layout.Spool(cfg.spool_path)
        self.store: RouteStore = store or open_store(self.spool, cfg)
        self.ctx = make_context(cfg)
        self.transport = transport or make_transport(cfg, self.store, clock)
        if cfg.dkim:  # keys are loaded and checked once per (re)load; a bad one is a ConfigError
            from pysendmail.daemon.dkim import Signer, log_warnings

            signer = Signer.from_config(cfg)
            log_warnings(signer)
            self.transport.signer = signer
        self.lifetime = float(cfg.queue.lifetime)
        schedule = cfg.queue.retry_schedule
        self.schedule = parse_schedule(list(schedule) if schedule else None, cfg.path or "config")
        self.more_incoming = False
        self.trouble: str | None = None  # the last storage failure, until the caller clears it to retry
        self.trouble_logged = False
        self.unrecorded: dict[str, tuple[queue.QueuedMessage, bytes]] = {}  # qid -> (message, records not on disk)
        self.reindex_needed = False  # a pickup failed mid-batch: queue/ holds ids nobody was told about
        self.scanner = pickup.Scanner.from_config(cfg)  # what pickup left alone in incoming/ (daemon/pickup.py)
        self.last_success: tuple[float, str] | None = None
        self.last_failure: tuple[float, str] | None = None
        self.new_ids: list[str] = []  # queue ids this manager created (bounces), for the daemon's index
        self.postmaster = cfg.queue.postmaster or None

    def storage_failed(self, what: str, exc: OSError) -> None:
        """Note a write the disk refused; one log line per episode (until ``storage_recovered``)."""
        if self.trouble is None:  # the first failure of a run says most; later ones follow from it
            self.trouble = f"cannot {what}: {exc.strerror or exc}"
        if not self.trouble_logged:
            self.trouble_logged = True
            log.log(f"warning: {self.trouble} (spool {self.spool.path}); nothing is lost: mail stays queued "
                    "and waits until space returns")

    def storage_recovered(self) -> None:
        if self.trouble_logged and self.trouble is None:
            self.trouble_logged = False
            log.log(f"spool {self.spool.path}: writes work again, resuming")

    def pickup(self, limit: int | None = None) -> list[str]:
        """Move ready submissions into the queue; ``more_incoming`` says if some wait.

        A full disk stops the batch: the submission stays in incoming/
        (publish left nothing in queue/), ``trouble`` says why, and what
        the batch queued before it is found by the next index read
        (``reindex_needed``).
        """
        try:
            queued, self.more_incoming = pickup.pickup_all(self.spool, self.ctx, self.cfg.max_message_size, limit,
                                                           self.scanner)
        except OSError as exc:
            self.storage_failed("pick up new mail into the queue", exc)
            self.more_incoming = False
            self.reindex_needed = True
            return []
        return queued

    async def flush(self) -> Counts:
        counts = Counts()
        counts.picked = len(self.pickup())
        self.transport.reset_down()  # the administrator asked: try now, whatever the backoff (not a hold or a pause)
        for qid in queue.list_ids(self.spool.queue):
            await self.attempt(qid, counts)
        while self.new_ids:  # bounces made during this run go out in it too
            await self.attempt(self.new_ids.pop(0), counts)
        for qid in list(self.unrecorded):  # a last chance before this process forgets them
            self._catch_up(qid)
        self.save_route_state()
        await self.transport.close()
        return counts

    async def attempt(self, qid: str, counts: Counts) -> queue.QueuedMessage | None:
        """Try one message's pending recipients; return it (state updated) or None."""
        if qid in self.unrecorded:
            # Its last outcomes are only in memory: write them before
            # anything else, or the relay would get it a second time.
            return self._catch_up(qid)
        path = self.spool.queue_file(qid)
        try:
            msg = queue.QueuedMessage.load(path)
        except FileNotFoundError:
            return None
        except spoolfile.SpoolFormatError as exc:
            log.log(f"{qid}: unreadable queue file left in place: {exc}")
            return None
        except OSError as exc:  # EIO from a failing disk: try it again later, never stop the run
            self.storage_failed(f"read the queue file of {qid}", exc)
            self.reindex_needed = True  # the daemon's index forgets it until then
            return None
        if msg.held:
            return msg
        plan = self.transport.plan(msg)  # once per attempt: route, From, chunks
        blocked = plan.blocked
        if blocked and msg.pending():
            # Its route is paused (quota, block), held, down or over
            # budget: no attempt until then (an attempt inside a
            # provider's block extends it), and no bounce for it.  One
            # deferred record keeps the reason for mailq and the due time
            # for a restart.
            if msg.due < blocked[0]:
                now = self.clock.time()
                record = spoolfile.encode_record("deferred", f"{now:.3f}", f"{blocked[0]:.3f}", blocked[1])
                try:
                    queue.append(msg.path, record)
                except OSError as exc:
                    self.storage_failed(f"record the deferral of {qid}", exc)  # only mailq's reason waits
                msg.tries += 1
                msg.due, msg.reason = blocked[0], blocked[1]
            return msg
        counts.messages += 1
        try:
            await self._deliver(msg, counts, plan)
        except Exception as exc:
            if queue.storage_error(exc):
                assert isinstance(exc, OSError)
                self.storage_failed(f"write the queue file of {qid}", exc)
                return msg
            # The boundary: log, defer with backoff so a poison message
            # cannot spin, keep the message, go on with the next.
            log.log(f"{qid}: internal error, message kept in the queue: " + traceback.format_exc())
            now = self.clock.time()
            msg.tries += 1
            msg.due = now + next_delay(msg.tries, self.schedule)
            try:
                record = spoolfile.encode_record("deferred", f"{now:.3f}", f"{msg.due:.3f}", "internal error")
                queue.append(msg.path, record)
            except OSError:
                pass
        return msg

    def _bounce(self, msg: queue.QueuedMessage) -> None:
        """Queue the DSN for ``msg``'s failures, once (the id is derived from msg's)."""
        made = bounce.make_bounce(msg, msg.failed, self.ctx, self.postmaster)
        if made is None:
            sender = msg.envelope.sender
            log.event(msg.qid, "no bounce: the sender is the null sender" if not sender else
                      f"no bounce: the sender <{log.safe(sender)}> is this host's own address, and no alias, "
                      "queue.postmaster or root alias says where its mail goes")
            return
        env, text, _ = made
        # A deterministic id: a crash after queueing the bounce but before
        # moving msg to failed/ must not queue a second bounce.
        bounce_qid = msg.qid[:13] + "%05X" % (int(msg.qid[13:], 16) ^ 0xB0B0B)
        if os.path.exists(self.spool.queue_file(bounce_qid)):
            return
        queue.write_new(self.spool.queue, bounce_qid, spoolfile.encode(env, text))
        log.event(msg.qid, f"sender non-delivery notification: {bounce_qid}")
        self.new_ids.append(bounce_qid)

    async def _deliver(self, msg: queue.QueuedMessage, counts: Counts, plan: Plan) -> None:
        results: list[Result] = []
        if plan.chunks:
            # A route that takes few recipients per message (Yandex: 35)
            # gets one transaction per chunk, and each chunk's sent and
            # failed recipients are recorded before the next chunk goes:
            # a crash then resends only the chunk in flight.  Deferrals
            # are carried to the end, so one attempt counts as one try.
            chunks = [list(c) for c in plan.chunks]
            for chunk in chunks[:-1]:
                part = await self.transport.deliver(msg, chunk, plan)
                settled = [r for r in part if r.status != DEFERRED]
                results += [r for r in part if r.status == DEFERRED]
                if settled:
                    await asyncio.to_thread(self.record, msg, settled, counts)
            results += await self.transport.deliver(msg, chunks[-1], plan)
        # fsync and unlink release the GIL: in a thread they overlap with
        # the other pooled connections' network I/O.
        await asyncio.to_thread(self.settle, msg, results, counts)

    def settle(self, msg: queue.QueuedMessage, results: list[Result], counts: Counts) -> None:
        """Record one attempt's outcomes durably, then finish the message if nothing is pending."""
        if results:
            self.record(msg, results, counts)
        if msg.qid not in self.unrecorded:  # else finished once its records are on disk (_catch_up)
            self.finish(msg)

    def _catch_up(self, qid: str) -> queue.QueuedMessage:
        """Append the records a full disk refused, then finish the message; it stays pending while that fails."""
        msg, data = self.unrecorded[qid]
        try:
            queue.append(msg.path, data)
        except OSError as exc:
            self.storage_failed(f"record the outcome of {qid}", exc)
            return msg
        del self.unrecorded[qid]
        self.finish(msg)
        return msg

    def save_route_state(self) -> None:
        """Hand the routes' state (holds, pauses, budgets, last outcomes) to the route-state store."""
        now = self.clock.time()
        routes = self.transport.route_state()
        if not routes:  # the Maildir: one pseudo-route, for 'pysendmail status'
            blocked = self.unavailable()
            routes = {
                "local": {
                    "relay": self.transport.relay,
                    "provider": None,
                    "last_success": self.last_success,
                    "last_failure": self.last_failure,
                    "paused_until": blocked[0] if blocked else None,
                    "paused_because": blocked[1] if blocked else None,
                }
            }
        path = self.spool.route_state
        try:
            self.store.save(routes, now)
        except OSError as exc:
            if queue.storage_error(exc):
                self.storage_failed(f"write {path}", exc)  # the last good copy stays
            else:
                log.log(f"cannot write {path}: {exc.strerror}")

    def unavailable(self) -> tuple[float, str] | None:
        """(until, why) when no route can take mail now (hold, pause, down, rate)."""
        return self.transport.unavailable()

    def record(self, msg: queue.QueuedMessage, results: list[Result], counts: Counts) -> None:
        """Log and durably record ``results``: one append and one fdatasync for all of them.

        The results of one transaction arrive together (after the final
        reply to DATA), so one write holding all their records is as
        durable, recipient by recipient, as one write each, at a quarter
        of the syncs for four recipients.
        """
        now = self.clock.time()
        deferred: list[Result] = []
        records: list[bytes] = []
        # Everything left goes now and nothing failed before: finish()
        # unlinks the file, and that unlink is the only record needed (a
        # crash before it resends, as a crash before a done record would).
        pending = set(msg.pending())
        all_sent = (
            not msg.failed
            and pending == {r.index for r in results}
            and all(r.status == SENT for r in results)
        )
        for r in results:
            rcpt = msg.envelope.recipients[r.index]
            fields: dict[str, object] = {"relay": r.relay or self.transport.relay}
            if r.route:
                fields = {"route": r.route, **fields}
            tls = r.tls or self.transport.tls_version
            if tls:
                fields["tls"] = tls
            fields.update(delay=f"{now - msg.envelope.time:.2f}", tries=msg.tries + 1, dsn=r.dsn)
            if r.status == DEFERRED and now - msg.envelope.time > self.lifetime:
                r = Result(r.index, FAILED, r.dsn.replace("4.", "5.", 1) if r.dsn.startswith("4.") else r.dsn,
                           f"gave up after {_duration(self.lifetime)} in the queue (queue.lifetime); "
                           f"last error: {r.text}")
            if r.status == SENT:
                self.last_success = (now, f"{rcpt}: {r.text}")
            else:
                self.last_failure = (now, f"{rcpt}: {r.text}")
            if r.status == HELD:
                # The relay refuses the message as it is (sender not
                # owned): keep it, held, until the administrator fixes the
                # route and releases it; retrying would fail the same way.
                if not msg.held:
                    records.append(spoolfile.encode_record("hold", f"{now:.3f}", r.text))
                    msg.held = r.text
                counts.deferred += 1
            elif r.status == SENT:
                if not all_sent:
                    records.append(spoolfile.encode_record("done", r.index, f"{now:.3f}", r.text))
                msg.done[r.index] = r.text
                counts.sent += 1
            elif r.status == FAILED:
                # The DSN's Status is read back from this text (bounce.py):
                # a reason of our own ("exceeds the relay's size limit",
                # "gave up after ...") carries no reply code, so keep the
                # enhanced code in it, or the bounce would say 5.0.0.
                text = r.text
                if not text[:3].isdigit() and r.dsn not in text.split():
                    text = f"{r.dsn} {text}"
                records.append(spoolfile.encode_record("failed", r.index, f"{now:.3f}", text))
                msg.failed[r.index] = text
                counts.failed += 1
            else:
                deferred.append(r)
                counts.deferred += 1
            shown = "bounced" if r.status == FAILED else r.status
            log.event(msg.qid, f"to=<{log.safe(rcpt)}>", status=f"{shown} ({log.safe(r.text)})", **fields)
        if deferred:
            due = now + next_delay(msg.tries + 1, self.schedule)
            reason = deferred[0].text
            records.append(spoolfile.encode_record("deferred", f"{now:.3f}", f"{due:.3f}", reason))
            msg.tries += 1
            msg.due = due
            msg.reason = reason
        if records or msg.qid in self.unrecorded:
            data = b"".join(records)
            if msg.qid in self.unrecorded:  # older records first: the file is a log
                data = self.unrecorded.pop(msg.qid)[1] + data
            try:
                queue.append(msg.path, data)
            except OSError as exc:
                if not queue.storage_error(exc):
                    raise
                # The relay has spoken; forgetting it would send again.
                # Kept here until the disk takes it (attempt -> _catch_up).
                self.unrecorded[msg.qid] = (msg, data)
                self.storage_failed(f"record the outcome of {msg.qid}", exc)

    def finish(self, msg: queue.QueuedMessage) -> None:
        """Remove a message with nothing pending, or bounce it and move it to failed/.

        On a full disk it stays in queue/ with its outcomes recorded and is
        finished at a later attempt: the bounce's id is derived from the
        message's, so a bounce written before the failure is not made twice.
        """
        if msg.pending():
            return
        try:
            if msg.failed:
                self._bounce(msg)
                queue.move_to_failed(self.spool, msg)
                log.event(msg.qid, "moved to failed/")
            else:
                queue.remove(msg.path)
                log.event(msg.qid, "removed")
        except OSError as exc:
            if not queue.storage_error(exc):
                raise
            self.storage_failed(f"finish {msg.qid} (bounce, failed/, removal)", exc)
