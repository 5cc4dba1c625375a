"""The delivery run: the daemon's work without a daemon, for hosts with no service manager.

Contract:   ``run(cfg, linger)`` takes the spool's lock as "run <pid>"
            (returns 0 at once when a daemon, a flush or another run
            holds it: that one delivers), then does what the daemon does
            (pickup, due messages, FIFO wake-ups) until nothing is due
            and no poke came for ``linger`` seconds, and returns 0.  What
            is deferred stays queued with its due time for the next run,
            the daemon or 'sendmail -q'.  SIGTERM ends it after the
            attempts in flight, as it ends the daemon.
            core/lock.py ``take_over`` is the daemon's side: a run holding
            the lock is asked to stop (SIGTERM) and its lock is taken.
Security:   runs as the spool's owner (admin/cli.py drops root to it);
            reads what the daemon reads and nothing more.  Its log goes
            to spool/state/run.log (0600 in the owner's 0700 state/), one
            file of at most RUN_LOG_MAX bytes plus its predecessor.
Crashes:    a run is the daemon's code: a SIGKILL at any instant leaves
            the spool as a killed daemon would (core/queue.py recovers).
            The lock dies with the process.
Races:      a submitter queues, pokes, then tries the lock; a run stops
            reading pokes, releases the lock, then looks at incoming/.
            Whichever order they meet in, someone sees the message: the
            submitter finds the lock free and starts a run, or the run
            finds the file after releasing and takes the lock again.
See also:   sendmail(8) "Delivery without a daemon"; pysendmail(8) run;
            daemon/main.py (the loop this reuses); submit/main.py start_run.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

from pysendmail.core import config, layout, log
from pysendmail.core.lock import SpoolLock
from pysendmail.daemon.main import Daemon

DEFAULT_LINGER = 5.0
RUN_LOG = "run.log"
RUN_LOG_MAX = 1 << 20
MAX_ROUNDS = 3  # takes of the lock after releasing it, should incoming/ hold a file pickup cannot take


class DeliveryRun(Daemon):
    """The daemon's loop with an end: it stops when idle for ``linger`` seconds."""

    def __init__(self, cfg: config.Config, linger: float) -> None:
        super().__init__(cfg, None)
        self.linger = linger
        self.signalled = False

    def _on_signal(self, signum: int) -> None:
        if signum != signal.SIGHUP:
            self.signalled = True  # a daemon or a flush asked: it takes the spool over
        super()._on_signal(signum)

    async def _sleep(self, last_full: float) -> None:
        if (self.flush_requested or self.reload_requested or self.resume_requested or self.reindex_requested
                or self.stopping):
            return
        now = time.time()
        wait = self.linger
        if self.due:
            # A message due within the linger (a quick retry) is waited for;
            # one due later is left to the next run.
            wake_at = max(self.due[0][0], self.blocked_until)
            wait = min(wait, max(0.0, wake_at - now))
        try:
            await asyncio.wait_for(self.wake.wait(), wait)
        except asyncio.TimeoutError:
            if wait >= self.linger:
                self.stopping = True  # idle for the whole linger: done


def _open_log(spool: layout.Spool) -> None:
    """Point stderr (log.log's stream) at state/run.log, keeping the previous file as run.log.1."""
    path = spool.state_file(RUN_LOG)
    try:
        if os.stat(path).st_size > RUN_LOG_MAX:
            os.replace(path, path + ".1")
    except OSError:
        pass
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        log.log(f"run: cannot open {path}: {exc.strerror}; logging to stderr")
        return
    os.dup2(fd, 2)
    os.close(fd)


def run(cfg: config.Config, linger: float = DEFAULT_LINGER, to_log: bool = False) -> int:
    """Deliver what is due, wait ``linger`` seconds for more, return 0 (see the module's docstring)."""
    spool = layout.Spool(cfg.spool_path)
    lock = SpoolLock(spool)
    for _round in range(MAX_ROUNDS):
        if not lock.acquire("run"):
            return 0  # a daemon, a flush or another run holds the spool: it delivers
        if to_log:
            _open_log(spool)
            to_log = False
        delivery = DeliveryRun(cfg, linger)
        try:
            log.log(f"run: started, pid {os.getpid()}, spool {spool.path}, no daemon holds it; linger {linger:g} s")
            asyncio.run(delivery.serve())
        finally:
            # An empty lock file: a later reader never takes this pid,
            # perhaps reused by then, for a run's.
            os.ftruncate(lock.fd, 0)
            lock.release()
        if delivery.signalled:
            log.log("run: stopped by a signal")
            return 0
        # Queued while this run was deciding to stop: the submitter saw
        # the lock held and started nothing, so this run goes on.
        if not layout.ready_waiting(spool):
            log.log("run: done, nothing waiting")
            return 0
        log.log("run: a submission arrived while stopping; going on")
    return 0
