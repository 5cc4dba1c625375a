"""The spool's lock: one process at a time runs the queue (daemon, flush, delivery run).

Contract:   ``SpoolLock(spool).acquire(role, wait)`` takes an exclusive
            flock on spool/lock and writes "<role> <pid>" into it (False
            when another process holds it and ``wait`` is not set);
            ``lock_holder(spool, role)`` gives the pid of the process with
            that role holding it, else None.  Used by the daemon, delivery
            runs (daemon/run.py) and the admin commands that must not race
            it (flush, queue, route resume, status).  ``stop_run`` asks a
            delivery run (daemon/run.py) holding the lock to stop;
            ``take_over`` is how a starting daemon takes the lock from one.
Security:   ``lock_holder`` opens the file without following a link and
            without blocking, and reads it only when it is a regular file:
            root asks it before dropping privileges, and the spool's owner
            could plant a FIFO or a link there.
Crashes:    an flock dies with its process: a crashed holder leaves no
            stale lock, only stale text that ``lock_holder`` never reads
            (the lock is then free).
See also:   flock(2); Postfix master(8)'s master.lock.
"""

from __future__ import annotations

import fcntl
import os
import signal
import stat
import time

from pysendmail.core import layout, log

TAKE_OVER_SECONDS = 90.0  # how long a starting daemon waits for a run's attempts in flight


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
        try:
            os.ftruncate(self.fd, 0)
            os.pwrite(self.fd, f"{role} {os.getpid()}\n".encode(), 0)
        except OSError:
            pass  # a full disk: the lock holds all the same; only status cannot name our pid
        return True

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def lock_holder(spool: layout.Spool, role: str = "daemon") -> int | None:
    """The pid of the process with ``role`` holding the lock, else None."""
    try:
        # O_NONBLOCK: root asks this before dropping privileges (config
        # check), and a FIFO planted by the spool's owner must not block it.
        fd = os.open(spool.lock, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
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


def _is_pysendmail(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return b"pysendmail" in fh.read()
    except OSError:
        return False


def stop_run(spool: layout.Spool) -> bool:
    """Ask the delivery run holding the spool's lock, if any, to stop (SIGTERM); True if one was asked."""
    pid = lock_holder(spool, "run")
    if not pid or not _is_pysendmail(pid):
        return False
    try:
        os.kill(pid, signal.SIGTERM)
    except OSError:
        return False
    return True


def take_over(spool: layout.Spool, lock: SpoolLock, timeout: float = TAKE_OVER_SECONDS) -> bool:
    """Take the lock as "daemon" from a delivery run; False if a daemon or a flush holds it, or on timeout.

    A run holds the lock for a few seconds after its last message: the
    starting daemon asks it to stop (SIGTERM, as the daemon itself stops)
    and waits for its attempts in flight.  A holder that names no role is
    a submitter trying the lock for an instant: wait briefly.
    """
    deadline = time.monotonic() + timeout
    unknown_until = time.monotonic() + 2.0
    asked: set[int] = set()
    while True:
        if lock.acquire("daemon"):
            return True
        if lock_holder(spool, "daemon") or lock_holder(spool, "flush"):
            return False
        pid = lock_holder(spool, "run")
        now = time.monotonic()
        if pid:
            if pid not in asked and stop_run(spool):
                log.log(f"daemon: asked the delivery run (pid {pid}) to stop; waiting for it")
            asked.add(pid)
            unknown_until = now + 2.0
        elif now > unknown_until:
            return False
        if now > deadline:
            return False
        time.sleep(0.05)
