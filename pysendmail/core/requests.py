"""Requests to the running daemon: files in spool/state/, announced by a byte in the pickup FIFO.

Contract:   ``leave_request(spool, kind)`` creates state/<kind>.<pid>.<ns>
            (kinds: flush, reindex) and ``resume_request_path`` names
            state/resume.<route in hex>; ``await_request`` pokes the daemon
            and waits until it has removed the file (the one ask-the-daemon
            wait: flush, queue commands, route resume).  The daemon lists
            what it may obey with ``pending``/``resume_requests`` and
            answers with ``acknowledge`` (remove, or rename to .full when
            its run met a full disk).
Security:   the FIFO is writable by every local user, so a byte in it is
            never a request by itself: a request is a regular file in a
            state/ owned by root or the daemon's user and writable by
            nobody else, itself owned by root or the daemon's user
            (``pending``); anything else is removed, logged, never obeyed.
Crashes:    a request left by a command that died is carried out by the
            daemon all the same (or at its next start); one the daemon
            carried out is gone, so nothing is done twice.
See also:   daemon/main.py (FIFO bytes F, R, I), admin/cli.py (flush,
            queue), admin/routecmd.py (route resume).
"""

from __future__ import annotations

import os
import stat
import time

from pysendmail.core import layout, log
from pysendmail.core.lock import lock_holder


RESUME_PREFIX = "resume."
FULL_SUFFIX = ".full"  # an answered flush request whose run met a full disk
_warned_state: set[str] = set()


def resume_request_path(spool: layout.Spool, route: str) -> str:
    """spool/state/resume.<route name in hex>: one file per request (hex: a route name may hold any character)."""
    return spool.state_file(RESUME_PREFIX + route.encode().hex())


def leave_request(spool: layout.Spool, kind: str) -> str:
    """Create state/<kind>.<pid>.<ns> for the running daemon (then poke it); return its path.

    Only root and the daemon's user can create it (state/ is 0700): that
    is what makes it a request the daemon trusts.  The daemon removes it
    once it has carried it out; the caller waits for that.
    """
    path = spool.state_file(f"{kind}.{os.getpid()}.{time.time_ns()}")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    os.close(fd)
    return path


def await_request(spool: layout.Spool, request: str, pid: int, what: bytes, timeout: float | None = None) -> bool:
    """Wait until the daemon ``pid`` has removed ``request`` (carried it out); False if it let go of the lock first.

    The daemon is poked with ``what`` now and then, not once: a poke into
    a full FIFO is dropped.  TimeoutError after ``timeout`` seconds, the
    request left in place.  Used by flush (admin/cli.py) and route resume
    (admin/routecmd.py).
    """
    last_poke = 0.0
    deadline = None if timeout is None else time.monotonic() + timeout
    while os.path.exists(request):
        if lock_holder(spool) != pid:
            return False
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(request)
        if time.monotonic() - last_poke >= 1.0:
            layout.poke(spool, what)
            last_poke = time.monotonic()
        time.sleep(0.05)
    return True


def pending(spool: layout.Spool, kind: str) -> list[str]:
    """Paths of the ``kind`` requests (state/<kind>.*) left by root or by the daemon's user.

    The FIFO that announces them is anyone's, so the file is the proof:
    a regular file (no symlink) owned by root or by us, in a state/ that
    only root or we own and nobody else may write.  Anything else there is
    removed, logged, and never obeyed.
    """
    me = os.geteuid()
    try:
        st = os.lstat(spool.state)
        names = os.listdir(spool.state)
    except OSError:
        return []
    if not stat.S_ISDIR(st.st_mode) or st.st_uid not in (0, me) or st.st_mode & 0o022:
        if spool.state not in _warned_state:
            _warned_state.add(spool.state)
            log.log(f"daemon: {spool.state} is not the daemon's own directory (owner uid {st.st_uid}, mode "
                    f"{stat.S_IMODE(st.st_mode):04o}): requests in it are ignored; run 'pysendmail spool init'")
        return []
    out = []
    for n in sorted(names):
        if not n.startswith(kind + ".") or n.endswith(FULL_SUFFIX):
            continue
        path = spool.state_file(n)
        try:
            entry = os.lstat(path)
        except FileNotFoundError:
            continue
        if stat.S_ISREG(entry.st_mode) and entry.st_uid in (0, me):
            out.append(path)
            continue
        log.log(f"daemon: request {path} ignored and removed: owner uid {entry.st_uid}, mode "
                f"{stat.filemode(entry.st_mode)}; only root and the daemon's user may leave requests")
        acknowledge([path])
    return out


def acknowledge(paths: list[str], full: bool = False) -> None:
    """Remove carried-out requests: their removal is what the waiting command sees.

    ``full``: the run met a disk that refused writes; each request is
    renamed to <name>.full instead (a rename needs no new space), which
    the waiting flush reports with exit 75 and removes.
    """
    for path in paths:
        try:
            if full:
                os.rename(path, path + FULL_SUFFIX)
            else:
                os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.log(f"daemon: cannot remove the request {path}: {exc.strerror}")


def resume_requests(spool: layout.Spool) -> list[tuple[str, str]]:
    """(path, route name) of every pending 'route resume' request (see pending)."""
    out = []
    for path in pending(spool, RESUME_PREFIX[:-1]):
        try:
            out.append((path, bytes.fromhex(os.path.basename(path)[len(RESUME_PREFIX):]).decode()))
        except ValueError:
            acknowledge([path])  # not a name we write
    return out
