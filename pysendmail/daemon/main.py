"""The daemon's main loop: the spool lock, wake-ups, signals, sd_notify.

Contract:   ``run(cfg, interval)`` runs until SIGTERM/SIGINT and returns
            0; another daemon holding the spool's lock makes it raise
            TempFailure naming that pid (exit 75).  It wakes at once when
            a submitter pokes the pickup FIFO, otherwise sleeps until the
            earliest due time in its in-memory index (rebuilt from queue/
            at start), never polling.  SIGHUP reloads the configuration
            between messages.  ``lock_holder`` tells status who runs.
            FIFO bytes: W (look at incoming/), F (run the whole queue,
            then write state/flushed), R (carry out the 'route resume'
            requests in state/resume.*, see _take_resumes), I (read the
            due times in queue/ again: 'queue hold|release|retry').
Crashes:    all state is in the spool; a SIGKILL at any instant is
            recovered by the next start (see core/queue.py).
See also:   sd_notify(3) (the protocol, spoken without libsystemd);
            Postfix master(8) and qmgr(8).
"""

from __future__ import annotations

import asyncio
import fcntl
import heapq
import os
import signal
import socket
import time

from pysendmail.core import config, errors, layout, log, queue
from pysendmail.daemon.qmgr import Counts, QueueManager, helo_warnings


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


class SpoolLock:
    """An exclusive flock on spool/lock, holding "<role> <pid>"."""

    def __init__(self, spool: layout.Spool) -> None:
        self.spool = spool
        self.fd = -1

    def acquire(self, role: str, wait: bool = False) -> bool:
        self.fd = os.open(self.spool.lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(self.fd)
            self.fd = -1
            return False
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{role} {os.getpid()}\n".encode(), 0)
        return True

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def lock_holder(spool: layout.Spool, role: str = "daemon") -> int | None:
    """The pid of the process with ``role`` holding the lock, else None."""
    try:
        fd = os.open(spool.lock, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            words = os.pread(fd, 64, 0).split()
            if len(words) == 2 and words[0].decode() == role and words[1].isdigit():
                return int(words[1])
            return None
        return None
    finally:
        os.close(fd)


class Daemon:
    def __init__(self, cfg: config.Config, interval: int | None) -> None:
        self.cfg = cfg
        self.interval = interval
        self.spool = layout.Spool(cfg.spool_path)
        self.manager = QueueManager(cfg)
        self.due: list[tuple[float, str]] = []
        self.wake = asyncio.Event()
        self.stopping = False
        self.reload_requested = False
        self.flush_requested = False
        self.resume_requested = False
        self.reindex_requested = False
        self.inflight: set[str] = set()
        self.blocked_until = 0.0

    def _read_index(self, skip: frozenset[str] = frozenset()) -> list[tuple[float, str]]:
        """(due time, qid) of every queued message that is not held, as a heap."""
        due: list[tuple[float, str]] = []
        for qid in queue.list_ids(self.spool.queue):
            if qid in skip:
                continue  # in flight: its attempt puts it back with its new due time
            try:
                state = queue.read_state(os.path.join(self.spool.queue, qid))
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
        try:
            data = os.read(fd, 4096)
        except BlockingIOError:
            return
        if b"F" in data:
            self.flush_requested = True
        if b"R" in data:
            self.resume_requested = True
        if b"I" in data:
            self.reindex_requested = True
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
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.add_signal_handler(sig, self._on_signal, sig)
        self.due = self._read_index()
        self._take_resumes()  # asked for while no daemon ran, and not yet handled
        log.log(f"daemon: started, pid {os.getpid()}, spool {self.spool.path}, {len(self.due)} messages queued")
        for text in helo_warnings(self.cfg):
            log.log(f"daemon: {text}")
        sd_notify(f"READY=1\nSTATUS=queue: {len(self.due)} messages")
        last_full = time.monotonic()
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
                    self.due = await asyncio.to_thread(self._read_index, frozenset(self.inflight))
                await self._pickup()
                flushing = self.flush_requested
                if flushing or (self.interval and time.monotonic() - last_full >= self.interval):
                    self.flush_requested = False
                    last_full = time.monotonic()
                    self.due = [(0.0, qid) for _, qid in self.due]
                    reset = getattr(self.manager.transport, "reset_holds", None)
                    if flushing and reset:
                        reset()
                await self._run_due()
                self.manager.save_route_state()
                if flushing:
                    self._mark_flushed()
                if self.stopping:
                    break
                await self._sleep(last_full)
        finally:
            sd_notify("STOPPING=1")
            loop.remove_reader(fifo)
            os.close(fifo)
            await self.manager.transport.close()
            log.log("daemon: stopped")

    async def _run_due(self) -> None:
        """Attempt every due message, up to the transport's pool size at once."""
        limit = int(getattr(self.manager.transport, "pool_size", 1))
        running: set[asyncio.Task[None]] = set()
        self.blocked_until = 0.0
        while not self.stopping:
            if self.wake.is_set():
                # A new submission arrived: pick it up before the backlog
                # goes on, so one message never waits behind a long drain.
                self.wake.clear()
                await self._pickup()
            if not self.due or self.due[0][0] > time.time():
                break
            blocked = self.manager.unavailable()
            if blocked:
                self.blocked_until = blocked[0]
                break
            if len(running) >= limit:
                _, running = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                continue
            _, qid = heapq.heappop(self.due)
            if qid in self.inflight:
                continue
            self.inflight.add(qid)
            running.add(asyncio.create_task(self._attempt(qid)))
        if running:
            await asyncio.wait(running)

    async def _attempt(self, qid: str) -> None:
        try:
            msg = await self.manager.attempt(qid, Counts())
        finally:
            self.inflight.discard(qid)
        if msg is not None and msg.pending() and not msg.held and os.path.exists(msg.path):
            heapq.heappush(self.due, (msg.due, qid))
        while self.manager.new_ids:
            heapq.heappush(self.due, (0.0, self.manager.new_ids.pop()))

    async def _pickup(self) -> None:
        # In batches: a burst of thousands of submissions must not keep the
        # first of them from leaving until all are picked up.  In a worker
        # thread: each pickup costs two fsyncs, which would otherwise stall
        # the dialogues of the connections already delivering.  Only this
        # coroutine runs pickup, so pickup never runs twice at once.
        for qid in await asyncio.to_thread(self.manager.pickup, PICKUP_BATCH):
            heapq.heappush(self.due, (time.time(), qid))
        if self.manager.more_incoming:
            self.wake.set()

    async def _sleep(self, last_full: float) -> None:
        """Wait for a poke, a signal, the next due time, or idle connections to expire."""
        if (self.flush_requested or self.reload_requested or self.resume_requested or self.reindex_requested
                or self.stopping):
            return  # their wake-up may have been consumed by _run_due's pickup
        now = time.time()
        wake_at = self.due[0][0] if self.due else None
        if self.blocked_until > now:
            wake_at = self.blocked_until if wake_at is None else max(wake_at, self.blocked_until)
        timeout = None if wake_at is None else max(0.0, wake_at - now)
        if self.interval:
            left = max(0.0, self.interval - (time.monotonic() - last_full))
            timeout = left if timeout is None else min(timeout, left)
        transport = self.manager.transport
        idle = float(getattr(transport, "idle_timeout", 0))
        if getattr(transport, "has_idle", lambda: False)():
            timeout = idle if timeout is None else min(timeout, idle)
        sd_notify(f"STATUS=queue: {len(self.due)} messages, next attempt in {timeout or 0:.0f} s")
        try:
            await asyncio.wait_for(self.wake.wait(), timeout)
        except asyncio.TimeoutError:
            pass
        close_idle = getattr(transport, "close_idle", None)
        if close_idle:
            await close_idle(idle)

    def _take_resumes(self) -> None:
        """Carry out 'pysendmail route resume' requests (resume_requests()); then save the state, then ack.

        The state is saved before the request file goes, so the command,
        which waits for the file to go, then reads the state it asked for.
        """
        self.resume_requested = False
        taken = resume_requests(self.spool)
        if not taken:
            return
        resume = getattr(self.manager.transport, "resume", None)
        for _, name in taken:
            if resume is not None and resume(name):
                log.log(f"daemon: route {name} resumed by the administrator")
            else:
                log.log(f"daemon: route resume {name}: no such route in the configuration")
        self.manager.save_route_state()
        for path, _ in taken:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        # What waited for the route goes now (other routes' blocks still hold theirs back).
        self.due = [(0.0, qid) for _, qid in self.due]

    def _mark_flushed(self) -> None:
        """Tell a waiting 'pysendmail flush' that the run it asked for is over."""
        path = os.path.join(self.spool.state, "flushed")
        try:
            with open(path, "w") as fh:
                fh.write(f"{time.time():.6f}\n")
        except OSError as exc:
            log.log(f"daemon: cannot write {path}: {exc.strerror}")

    async def _reload(self) -> None:
        """SIGHUP: new config, aliases and relay settings, between messages."""
        self.reload_requested = False
        sd_notify(f"RELOADING=1\nMONOTONIC_USEC={time.monotonic_ns() // 1000}")
        try:
            cfg = config.load(self.cfg.path)
            manager = QueueManager(cfg)
        except Exception as exc:
            log.log(f"daemon: reload failed, keeping the old configuration: {exc}")
        else:
            old, self.cfg, self.manager = self.manager, cfg, manager
            await old.transport.close()
            log.log("daemon: configuration reloaded")
            for text in helo_warnings(cfg):
                log.log(f"daemon: {text}")
        sd_notify("READY=1")


RESUME_PREFIX = "resume."


def resume_request_path(spool: layout.Spool, route: str) -> str:
    """spool/state/resume.<route name in hex>: one file per request (hex: a route name may hold any character)."""
    return os.path.join(spool.state, RESUME_PREFIX + route.encode().hex())


def resume_requests(spool: layout.Spool) -> list[tuple[str, str]]:
    """(path, route name) of every pending 'route resume' request."""
    out = []
    try:
        names = os.listdir(spool.state)
    except OSError:
        return []
    for n in sorted(names):
        if n.startswith(RESUME_PREFIX):
            try:
                out.append((os.path.join(spool.state, n), bytes.fromhex(n[len(RESUME_PREFIX):]).decode()))
            except ValueError:
                continue
    return out


def run(cfg: config.Config, interval: int | None) -> int:
    spool = layout.Spool(cfg.spool_path)
    lock = SpoolLock(spool)
    if not lock.acquire("daemon"):
        pid = lock_holder(spool)
        who = f"pid {pid}" if pid else "another pysendmail process (a flush?)"
        raise errors.TempFailure(f"the spool {spool.path} is locked by {who}; only one daemon may run per spool")
    try:
        asyncio.run(Daemon(cfg, interval).serve())
    finally:
        lock.release()
    return 0
