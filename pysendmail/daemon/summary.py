"""The daemon's side of every user's mailq: publish the queue summary after changes, coalesced.

Contract:   ``Publisher(spool)``; ``start()`` inside the daemon's event loop
            publishes once and then after every ``changed()`` (pickup,
            each attempt), at most once per MIN_INTERVAL seconds and never
            more than SHARE of the daemon's time: after a publish that
            took T seconds the next waits max(MIN_INTERVAL, T*(1/SHARE-1)).
            With nothing changed it still republishes every REFRESH
            seconds when public/incoming/ changed (new or forged stubs).
            ``await stop()`` publishes a last time if a change is still
            unpublished, so the summary a user reads while the daemon is
            down is the queue it left (readers tell a dead daemon by its
            pid and start time in the summary).  A spool
            without public/ (user mode) publishes nothing.
Security:   writes as the daemon's user into public/ (core/mailq.py
            ``publish``: envelopes and states only, never message bytes).
Crashes:    never raises into the daemon: a failed publish (disk full,
            a queue file that vanished) is logged once until one succeeds,
            and the old summary stays in place.  Memory: one entry at a
            time, in a worker thread, so 100,000 queued messages neither
            grow the daemon nor stall its connections.
See also:   core/mailq.py; pysendmail(8) "mailq".
"""

from __future__ import annotations

import asyncio
import os
import threading
import time

from pysendmail.core import layout, log

MIN_INTERVAL = 1.0
SHARE = 0.1
REFRESH = 60.0


class Publisher:
    def __init__(self, spool: layout.Spool) -> None:
        self.spool = spool
        self.dirty = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.lock = threading.Lock()  # one publish at a time: they share one temp file name
        self.failing = False
        self.stubs_seen = 0
        self.closing = False

    @property
    def enabled(self) -> bool:
        return os.path.isdir(self.spool.public)

    def changed(self) -> None:
        self.dirty.set()

    def start(self) -> None:
        if self.enabled:
            self.dirty.set()
            self.task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self.task is None:
            return
        # The flag as well as cancel(): wait_for() in Python < 3.12 may
        # swallow a cancellation that meets its inner wait's completion.
        pending = self.dirty.is_set()  # a change not yet published (e.g. during the pause between two)
        self.closing = True
        self.dirty.set()
        self.task.cancel()
        await asyncio.wait({self.task})
        self.task = None
        if pending:
            await asyncio.to_thread(self.publish_once)

    def _stubs_mtime(self) -> int:
        try:
            return os.stat(self.spool.stubs).st_mtime_ns
        except OSError:
            return 0

    async def _run(self) -> None:
        while not self.closing:
            try:
                await asyncio.wait_for(self.dirty.wait(), REFRESH)
            except asyncio.TimeoutError:
                if self._stubs_mtime() == self.stubs_seen:
                    continue
            if self.closing:
                return  # stop() publishes the last one
            self.dirty.clear()
            started = time.monotonic()
            await asyncio.to_thread(self.publish_once)
            cost = time.monotonic() - started
            await asyncio.sleep(max(MIN_INTERVAL, cost * (1 / SHARE - 1)))

    def publish_once(self) -> None:
        from pysendmail.core import mailq
        from pysendmail.core import errors

        with self.lock:
            try:
                mailq.publish(self.spool, os.getpid())
            except (OSError, errors.PysendmailError) as exc:
                if not self.failing:
                    why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
                    log.log(f"daemon: cannot publish the queue summary in {self.spool.public}: {why}; "
                            "other users' mailq shows the previous one")
                self.failing = True
                return
            if self.failing:
                log.log(f"daemon: queue summary in {self.spool.public} published again")
            self.failing = False
            self.stubs_seen = self._stubs_mtime()
