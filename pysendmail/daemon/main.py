"""The daemon's main loop: the spool lock, wake-ups, signals, sd_notify.

Contract:   ``run(cfg, interval)`` runs until SIGTERM/SIGINT and returns
            0; another daemon holding the spool's lock makes it raise
            TempFailure naming that pid (exit 75); a delivery run holding
            it is asked to stop and waited for (daemon/run.py).
            It wakes at once when
            a submitter pokes the pickup FIFO, otherwise sleeps until the
            earliest due time in its in-memory index (rebuilt from queue/
            at start), never polling.  SIGHUP reloads the configuration
            between messages.  The spool lock is core/lock.py, the
            request files core/requests.py.
            FIFO bytes: W (look at incoming/), F (carry out the flush
            requests in state/flush.*: run the whole queue, then remove
            them), R (carry out the 'route resume' requests in
            state/resume.*, see _take_resumes), I (carry out the requests
            in state/reindex.*: read the due times in queue/ again, after
            'queue hold|release|retry|delete').
            After pickups and attempts it republishes the queue summary
            that other users' mailq reads (daemon/summary.py, coalesced).
            Each wake-up drains the FIFO (drain_fifo), so a flood of
            bytes from any local user is one pass, and a pass costs what
            pickup's Scanner finds new or changed, not the whole of
            incoming/: inotify (daemon/watch.py) names what changed there
            and wakes the daemon too; a listing put off by its throttle
            and the sweep of unready files are wake-up times of _sleep.
Security:   the pickup FIFO is writable by every local user, so a byte in
            it is never a request by itself: it only wakes the daemon.  A
            request is a file in state/, which only root and the daemon's
            user can write (0700); the daemon also checks each file's owner
            (root or itself) and that state/ is not writable by others
            (core/requests.py ``pending``).  So no unprivileged user can make the
            daemon run the queue, reread it, or lift a hold or a pause:
            ten 'F' bytes from a user once meant ten more logins with a
            refused password, which providers punish by locking the
            account.  Holds and pauses are lifted only by 'route resume'
            (root or the daemon's user) or by their own expiry; a flush
            does not lift them.
Disk:       a full or failing spool file system (ENOSPC, EDQUOT, EIO)
            never stops the daemon: the queue manager keeps what it could
            not write (qmgr.py "Disk"), logs one line, and the daemon stops
            picking up new mail for a while (5 s, doubling to 60 s), trying
            again sooner when a wake-up finds free space grown; delivery
            goes on (it frees space).  A flush asked meanwhile is answered
            "full" (the request renamed to .full) and exits 75.
Crashes:    all state is in the spool; a SIGKILL at any instant is
            recovered by the next start (see core/queue.py).
See also:   sd_notify(3) (the protocol, spoken without libsystemd);
            Postfix master(8) and qmgr(8).
"""

from __future__ import annotations

import asyncio
import heapq
import os
import signal
import socket
import time

from pysendmail.core import config, errors, layout, log, queue, requests
from pysendmail.core.clock import SYSTEM, Clock
from pysendmail.core.lock import SpoolLock, lock_holder, take_over
from pysendmail.daemon.qmgr import Counts, QueueManager, helo_warnings
from pysendmail.daemon.summary import Publisher
from pysendmail.daemon.watch import Watch


def sd_notify(state: str) -> None:
    """Tell systemd our state when it asked (NOTIFY_SOCKET); else nothing."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    # Once net.unix.max_dgram_qlen (10 by default) datagrams wait unread,
    # sendto() blocks, and with it the whole event loop: a STATUS= line is
    # dropped rather than waited for; a state change waits a little.
    status_only = all(line.startswith("STATUS=") for line in state.split("\n"))
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.settimeout(0.0 if status_only else 2.0)
            sock.sendto(state.encode(), address)
    except BlockingIOError:
        pass
    except OSError as exc:
        log.log(f"daemon: cannot notify systemd: {exc.strerror or exc}")


PICKUP_BATCH = 100
PICKUP_FIRST = 20  # while nothing else is due: the first messages leave sooner (later batches run beside them)
DISK_RETRY_FIRST, DISK_RETRY_MAX = 5.0, 60.0  # seconds between pickups while the spool's disk refuses writes
SPACE_STEP = 256 * 1024  # free space grown by this much since the failure: try again before the timer
FIFO_DRAIN_LIMIT = 1 << 20  # bytes read per wake-up callback: the pipe holds 64 KiB, so this drains it


def drain_fifo(fd: int) -> bytes:
    """Everything waiting in the pickup FIFO (up to FIFO_DRAIN_LIMIT), for one wake-up.

    A flood of pokes (any local user may write the FIFO) must cost one
    callback and one pickup pass per batch, not one per 4 KiB read: the
    loop then wakes once however many bytes were written.
    """
    chunks: list[bytes] = []
    total = 0
    while total < FIFO_DRAIN_LIMIT:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            break
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    return b"".join(chunks)


class Daemon:
    def __init__(self, cfg: config.Config, interval: int | None, *, clock: Clock = SYSTEM) -> None:
        self.cfg = cfg
        self.interval = interval
        self.clock = clock  # the schedule's times; the loop's own timers are asyncio's
        self.spool = layout.Spool(cfg.spool_path)
        self.manager = QueueManager(cfg, clock=clock)
        self.due: list[tuple[float, str]] = []
        self.wake = asyncio.Event()
        self.stopping = False
        self.reload_requested = False
        # Set by F / I bytes: look for requests in state/ (core/requests.py pending),
        # at start too (requests left while no daemon ran).
        self.flush_requested = True
        self.reindex_requested = True
        self.flush_acks: list[str] = []
        self.resume_requested = False
        self.inflight: set[str] = set()
        self.blocked_until = 0.0
        self.disk_retry_at = 0.0
        self.disk_delay = DISK_RETRY_FIRST
        self.disk_free = 0
        self.summary = Publisher(self.spool)  # every user's mailq reads what it publishes

    def _read_index(self, skip: frozenset[str] = frozenset()) -> list[tuple[float, str]]:
        """(due time, qid) of every queued message that is not held, as a heap."""
        due: list[tuple[float, str]] = []
        try:
            ids = queue.list_ids(self.spool.queue)
        except OSError as exc:
            # EIO from a failing disk: keep what is known, read again once writes work.
            self.manager.storage_failed(f"list {self.spool.queue}", exc)
            self.manager.reindex_needed = True
            return list(self.due)
        for qid in ids:
            if qid in skip:
                continue  # in flight: its attempt puts it back with its new due time
            try:
                state = queue.read_state(self.spool.queue_file(qid))
            except Exception as exc:  # one bad file must not stop the daemon
                log.log(f"{qid}: unreadable queue file left in place: {exc}")
                continue
            if state.held:
                continue
            if state.pending():
                due.append((state.due, qid))
            else:
                # Every outcome recorded, but a crash came before the file
                # was removed (or moved to failed/ with its bounce): finish
                # it now, or it would stay in queue/ forever, unseen by mailq.
                due.append((0.0, qid))
        heapq.heapify(due)
        return due

    def _on_fifo(self, fd: int) -> None:
        data = drain_fifo(fd)
        if not data:
            return
        if b"F" in data:
            self.flush_requested = True
        if b"R" in data:
            self.resume_requested = True
        if b"I" in data:
            self.reindex_requested = True
        # Anyone can write these bytes: F, R and I only say "look for a
        # request file in state/" (core/requests.py pending), and any byte wakes
        # the daemon (new mail).
        self.wake.set()

    def _on_watch(self, watch: Watch) -> None:
        names, overflow = watch.read()
        if names or overflow:
            self.manager.scanner.hint(names, overflow)
            self.wake.set()

    def _on_signal(self, signum: int) -> None:
        if signum == signal.SIGHUP:
            self.reload_requested = True
        else:
            self.stopping = True
        self.wake.set()

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        fifo = os.open(self.spool.pickup, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        loop.add_reader(fifo, self._on_fifo, fifo)
        # Before the first listing, so that nothing created after it goes unseen.
        watch = Watch.open(self.spool.incoming)
        if watch is not None:
            self.manager.scanner.watching = True
            loop.add_reader(watch.fd, self._on_watch, watch)
        else:
            log.log(f"daemon: inotify unavailable: {self.spool.incoming} is listed again whenever it changes")
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.add_signal_handler(sig, self._on_signal, sig)
        self.due = self._read_index()
        self._take_resumes()  # asked for while no daemon ran, and not yet handled
        self.summary.start()
        from pysendmail.daemon.metrics import Exporter

        exporter = Exporter(self)  # [metrics]: textfile and/or loopback HTTP (daemon/metrics.py)
        await exporter.start()
        await self._start_fleet()
        log.log(f"daemon: started, pid {os.getpid()}, spool {self.spool.path}, {len(self.due)} messages queued")
        for text in helo_warnings(self.cfg):
            log.log(f"daemon: {text}")
        sd_notify(f"READY=1\nSTATUS=queue: {len(self.due)} messages")
        last_full = self.clock.monotonic()
        try:
            while not self.stopping:
                # Yield once per round: when wake-ups come back to back
                # (wake.wait() returns without yielding when already set),
                # signal and FIFO callbacks must still run, or SIGTERM
                # would go unheard.
                await asyncio.sleep(0)
                self.wake.clear()
                if self.reload_requested:
                    await self._reload()
                if self.resume_requested:
                    self._take_resumes()
                if self.reindex_requested:
                    # queue release / retry changed due times on disk.
                    self.reindex_requested = False
                    reindex = requests.pending(self.spool, "reindex")
                    if reindex:
                        self.due = await asyncio.to_thread(self._read_index, frozenset(self.inflight))
                        requests.acknowledge(reindex)
                        self.summary.changed()  # the command published too, but may have raced an attempt
                if self.flush_requested:
                    self.flush_requested = False
                    self.flush_acks += requests.pending(self.spool, "flush")
                writes = self._disk_ready()
                if writes:
                    await self._pickup()
                flushing = bool(self.flush_acks)
                if flushing or (self.interval and self.clock.monotonic() - last_full >= self.interval):
                    last_full = self.clock.monotonic()
                    self.due = [(0.0, qid) for _, qid in self.due]
                    if flushing:
                        # A connection failure's short mark, never a hold or a pause.
                        self.manager.transport.reset_down()
                await self._run_due()
                self.manager.save_route_state()
                await self._after_round(writes)
                if flushing:
                    # The waiting 'pysendmail flush' returns: 0, or 75 when
                    # the disk refused what this run had to write.
                    requests.acknowledge(self.flush_acks, full=self.manager.trouble is not None)
                    self.flush_acks = []
                if self.stopping:
                    break
                await self._sleep(last_full)
        finally:
            sd_notify("STOPPING=1")
            loop.remove_reader(fifo)
            os.close(fifo)
            if watch is not None:
                loop.remove_reader(watch.fd)
                watch.close()
            await self.summary.stop()
            await exporter.stop()
            await self.manager.transport.close()
            log.log("daemon: stopped")

    async def _run_due(self) -> None:
        """Attempt every due message, as many at once as the transport can use.

        A pipelining relay takes several deliveries per connection
        (SmtpTransport.concurrency): fewer would leave its pipelines empty.
        The attempts are the children of one TaskGroup: leaving it waits
        for every attempt still running (a SIGTERM lets them finish), and
        an attempt that raises (qmgr's boundary catches what delivery
        raises, so this is a bug) cancels the others and stops the daemon
        the way any crash of its loop does, instead of being dropped.
        """
        limit = self.manager.transport.concurrency
        running: set[asyncio.Task[None]] = set()
        pickup: asyncio.Task[None] | None = None
        self.blocked_until = 0.0

        async def progress() -> None:
            """Until an attempt or the pickup in progress finishes."""
            waiting = running | ({pickup} if pickup is not None else set())
            done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            running.difference_update(done)

        try:
            async with asyncio.TaskGroup() as attempts:
                while not self.stopping:
                    if pickup is not None and pickup.done():
                        pickup = None  # its exception, if any, is the group's
                    if self.wake.is_set() and pickup is None:
                        # A new submission arrived: pick it up before the backlog
                        # goes on, so one message never waits behind a long drain;
                        # beside the attempts, so that the deliveries under way
                        # keep their connections' pipelines fed meanwhile.
                        self.wake.clear()
                        if self.manager.trouble is None:
                            pickup = attempts.create_task(self._pickup())
                    if not self.due or self.due[0][0] > self.clock.time():
                        if pickup is None:
                            break
                        await progress()  # what the pickup brings is due at once
                        continue
                    blocked = self.manager.unavailable()
                    if blocked:
                        self.blocked_until = blocked[0]
                        break
                    if len(running) >= limit:
                        await progress()
                        continue
                    _, qid = heapq.heappop(self.due)
                    if qid in self.inflight:
                        continue
                    self.inflight.add(qid)
                    running.add(attempts.create_task(self._attempt(qid)))
        except BaseExceptionGroup as group:
            # The attempt's own exception, not a group: the same traceback
            # and exit as a crash anywhere else in the loop.
            raise group.exceptions[0] from None

    async def _attempt(self, qid: str) -> None:
        try:
            msg = await self.manager.attempt(qid, Counts())
        finally:
            self.inflight.discard(qid)
            self.summary.changed()
        if msg is not None and not msg.held and os.path.exists(msg.path):
            if qid in self.manager.unrecorded or not msg.pending():
                # The disk refused its records, its bounce or its move:
                # again after the disk back-off, not at once (no busy loop).
                heapq.heappush(self.due, (max(self.disk_retry_at, self.clock.time() + self.disk_delay), qid))
            elif msg.pending():
                heapq.heappush(self.due, (msg.due, qid))
        while self.manager.new_ids:
            heapq.heappush(self.due, (0.0, self.manager.new_ids.pop()))

    async def _pickup(self) -> None:
        # In batches: a burst of thousands of submissions must not keep the
        # first of them from leaving until all are picked up.  In a worker
        # thread: each pickup costs two fsyncs, which would otherwise stall
        # the dialogues of the connections already delivering.  Only this
        # coroutine runs pickup, so pickup never runs twice at once.
        queued = await asyncio.to_thread(self.manager.pickup, PICKUP_BATCH if self.due else PICKUP_FIRST)
        for qid in queued:
            heapq.heappush(self.due, (self.clock.time(), qid))
        if queued:
            self.summary.changed()
        if self.manager.more_incoming:
            self.wake.set()

    def _disk_ready(self) -> bool:
        """True when pickup may write: no storage failure, or its back-off is over, or space came back."""
        manager = self.manager
        if manager.trouble is None:
            return True
        if self.clock.time() >= self.disk_retry_at or queue.free_bytes(self.spool.queue) >= self.disk_free + SPACE_STEP:
            manager.trouble = None  # try again; a new failure sets it again
            return True
        return False

    async def _after_round(self, tried: bool) -> None:
        """Arm the back-off after a storage failure, or note that writes work again."""
        manager = self.manager
        now = self.clock.time()
        if manager.trouble is not None:
            if tried or self.disk_retry_at <= now:
                self.disk_retry_at = now + self.disk_delay
                self.disk_delay = min(self.disk_delay * 2, DISK_RETRY_MAX)
                self.disk_free = queue.free_bytes(self.spool.queue)
            return
        if tried and self.disk_retry_at:
            # The first round that wrote again after a failure.
            self.disk_retry_at = 0.0
            self.disk_delay = DISK_RETRY_FIRST
            manager.storage_recovered()
            if manager.reindex_needed:
                # A failed pickup batch had queued some before failing.
                manager.reindex_needed = False
                self.due = await asyncio.to_thread(self._read_index, frozenset(self.inflight))
            self.wake.set()  # one more round for what waited in incoming/ during the failure

    async def _sleep(self, last_full: float) -> None:
        """Wait for a poke, a signal, the next due time, or idle connections to expire."""
        if (self.flush_requested or self.reload_requested or self.resume_requested or self.reindex_requested
                or self.stopping):
            return  # their wake-up may have been consumed by _run_due's pickup
        now = self.clock.time()
        wake_at = self.due[0][0] if self.due else None
        if self.blocked_until > now:
            wake_at = self.blocked_until if wake_at is None else max(wake_at, self.blocked_until)
        if self.manager.trouble is not None:
            wake_at = self.disk_retry_at if wake_at is None else min(wake_at, self.disk_retry_at)
        timeout = None if wake_at is None else max(0.0, wake_at - now)
        if self.interval:
            left = max(0.0, self.interval - (self.clock.monotonic() - last_full))
            timeout = left if timeout is None else min(timeout, left)
        transport = self.manager.transport
        scanner = self.manager.scanner
        for at in (scanner.retry_at, scanner.next_sweep if scanner.left else None):
            # A listing of incoming/ put off by its throttle; the periodic
            # sweep that removes stale unready files.
            if at is not None:
                timeout = max(0.0, at - now) if timeout is None else min(timeout, max(0.0, at - now))
        idle = transport.idle_timeout
        if transport.has_idle():
            timeout = idle if timeout is None else min(timeout, idle)
        if self.manager.trouble is not None:
            sd_notify(f"STATUS=queue: {len(self.due)} messages, spool disk refuses writes, pickup again in "
                      f"{max(0.0, self.disk_retry_at - now):.0f} s")
        else:
            sd_notify(f"STATUS=queue: {len(self.due)} messages, next attempt in {timeout or 0:.0f} s")
        try:
            await asyncio.wait_for(self.wake.wait(), timeout)
        except asyncio.TimeoutError:
            pass
        await transport.close_idle(idle)

    async def _start_fleet(self) -> None:
        """[fleet]: Redis now, so that an idle host shares its view too (daemon/fleet.py)."""
        fleet = self.manager.transport.fleet
        if fleet is None:
            return

        def synced(lifted: bool) -> None:
            self.manager.save_route_state()  # status and route list show the fleet's view
            if lifted:  # 'route resume' on another host: what waited for the account goes now
                self.due = [(0.0, qid) for _, qid in self.due]
                self.wake.set()

        fleet.on_sync = synced
        await fleet.start()

    def _take_resumes(self) -> None:
        """Carry out 'pysendmail route resume' requests (resume_requests()); then save the state, then ack.

        The state is saved before the request file goes, so the command,
        which waits for the file to go, then reads the state it asked for.
        """
        self.resume_requested = False
        taken = requests.resume_requests(self.spool)
        if not taken:
            return
        for _, name in taken:
            if self.manager.transport.resume(name):
                log.log(f"daemon: route {log.safe(name)} resumed by the administrator")
            else:
                log.log(f"daemon: route resume {log.safe(name)}: no such route in the configuration")
        self.manager.save_route_state()
        requests.acknowledge([path for path, _ in taken])
        # What waited for the route goes now (other routes' blocks still hold theirs back).
        self.due = [(0.0, qid) for _, qid in self.due]

    async def _reload(self) -> None:
        """SIGHUP: new config, aliases and relay settings, between messages."""
        self.reload_requested = False
        sd_notify(f"RELOADING=1\nMONOTONIC_USEC={time.monotonic_ns() // 1000}")
        try:
            cfg = config.load(self.cfg.path)
            manager = QueueManager(cfg, clock=self.clock)
        except Exception as exc:
            log.log(f"daemon: reload failed, keeping the old configuration: {exc}")
        else:
            manager.scanner.adopt(self.manager.scanner)  # what pickup left alone stays known
            old, self.cfg, self.manager = self.manager, cfg, manager
            await old.transport.close()
            try:
                await self._start_fleet()
            except errors.ConfigError as exc:
                log.log(f"daemon: fleet: {exc}; the fallback applies until the configuration is fixed")
            log.log("daemon: configuration reloaded")
            for text in helo_warnings(cfg):
                log.log(f"daemon: {text}")
        sd_notify("READY=1")


def run(cfg: config.Config, interval: int | None) -> int:
    spool = layout.Spool(cfg.spool_path)
    lock = SpoolLock(spool)
    if not lock.acquire("daemon"):
        if take_over(spool, lock):  # a delivery run started by sendmail: it stops for us
            return _serve_locked(cfg, interval, lock)
        pid = lock_holder(spool)
        who = f"pid {pid}" if pid else "another pysendmail process (a flush?)"
        raise errors.TempFailure(f"the spool {spool.path} is locked by {who}; only one daemon may run per spool")
    return _serve_locked(cfg, interval, lock)


M_ARENA_MAX = -8  # glibc's mallopt(3) parameter


def limit_malloc_arenas() -> None:
    """One glibc malloc arena for the daemon's threads, set before the first worker thread starts.

    glibc gives each thread that allocates its own arena and keeps what
    they free: with pickup and signing in worker threads beside the loop,
    100,000 messages picked up left RSS at 76 MB instead of 52 MB
    (bench/drain's 100k phase).  The threads take turns at the GIL anyway,
    so one arena costs no throughput.  MALLOC_ARENA_MAX in the environment
    wins; another C library (musl) is left alone.
    """
    if "MALLOC_ARENA_MAX" in os.environ:
        return
    try:
        if not os.confstr("CS_GNU_LIBC_VERSION"):
            return
        import ctypes

        ctypes.CDLL(None).mallopt(M_ARENA_MAX, 1)
    except (ValueError, OSError, AttributeError):
        pass


def _serve_locked(cfg: config.Config, interval: int | None, lock: SpoolLock) -> int:
    limit_malloc_arenas()
    try:
        asyncio.run(Daemon(cfg, interval).serve())
    finally:
        lock.release()
    return 0
