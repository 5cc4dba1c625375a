"""The spool's directories, their owners and modes, and the enqueue steps.

Contract:   ``Spool(path)`` names every path under the spool, directories and
            the files in them (queue_file, incoming_file, state_file, ...: the only
            module that builds them).  ``ensure_layout`` creates or checks
            the layout; ``enqueue`` is the submitter's durable commit:
            create 0600 under the final name, write envelope + message +
            end record, leave a display-only stub in public/incoming/
            (shared spools), fchmod 0640 ("ready"), fsync, poke the daemon.
            ``ready_waiting`` says whether incoming/ holds a ready file.
Security:   incoming/ is 3733 in a shared (system) spool: anyone may create
            a file, nobody but the owner may list, read or remove others'
            files; the setgid bit gives each file the daemon's group, so
            0640 lets the daemon read it and nobody else.  A private (user
            mode) spool is 0700 throughout.  Anything else is refused.
            Root's set-up (ensure_layout) works on descriptors opened
            with O_NOFOLLOW|O_DIRECTORY, never following a link that the
            spool's owner (or any user but root) could have planted.
            So does enqueue, which root runs too (cron): the message file
            is made under a descriptor on incoming/ (O_PATH, no link
            followed), the stub under descriptors on public/ and
            public/incoming/, and poke writes only into a FIFO (a hard
            link to root's file would otherwise be written).
            A shared spool also has public/ (0755, the owner's queue
            summary for every user's mailq) and public/incoming/ (1777,
            sticky: each submitter's stub, only ever displayed).
Crashes:    before fchmod the file is 0600 and the daemon ignores it (and
            removes it once stale); after fchmod and fsync it is complete.
            A failed enqueue removes its own file before reporting.
See also:   ../shared/DESIGN.md "Privilege model"; Postfix postdrop(1).
"""

from __future__ import annotations

import errno
import os
import stat

from pysendmail.core import durable, errors, qid, spoolfile
from pysendmail.core.errors import ConfigError

SHARED_INCOMING_MODE = 0o3733
PUBLIC_MODE = 0o755
STUBS_MODE = 0o1777
STUB_MODE = 0o644
STUB_MAX = 65536  # a larger envelope gets no stub (mailq shows it once the daemon has published it)
PRIVATE_MODE = 0o700
NOT_READY_MODE = 0o600
READY_MODE = 0o640
PICKUP_FIFO = "pickup"


class Spool:
    """Paths under one spool directory."""

    __slots__ = ("path", "incoming", "queue", "failed", "quarantine", "pickup", "lock", "state", "route_state",
                 "public", "stubs", "summary")

    def __init__(self, path: str) -> None:
        self.path = path
        self.incoming = os.path.join(path, "incoming")
        self.queue = os.path.join(path, "queue")
        self.failed = os.path.join(path, "failed")
        self.quarantine = os.path.join(path, "quarantine")
        self.pickup = os.path.join(path, PICKUP_FIFO)
        self.lock = os.path.join(path, "lock")
        self.state = os.path.join(path, "state")
        self.route_state = os.path.join(self.state, "routes.json")  # routes' pauses, budgets, last outcomes
        # Shared spools only: what every user's mailq may read (core/mailq.py).
        self.public = os.path.join(path, "public")  # 0755: the queue summary, written by the owner
        self.stubs = os.path.join(self.public, "incoming")  # 1777: submitters' display-only stubs
        self.summary = os.path.join(self.public, "mailq")  # the queue summary itself (core/mailq.py)

    def private_dirs(self) -> tuple[str, ...]:
        return (self.queue, self.failed, self.quarantine, self.state)

    # One file in each directory; ``name`` is a queue id or a name listed
    # there, never a path (callers check it: is_qid, listing).
    def incoming_file(self, name: str) -> str:
        return os.path.join(self.incoming, name)

    def queue_file(self, qid: str) -> str:
        return os.path.join(self.queue, qid)

    def failed_file(self, qid: str) -> str:
        return os.path.join(self.failed, qid)

    def state_file(self, name: str) -> str:
        return os.path.join(self.state, name)

    def public_file(self, name: str) -> str:
        return os.path.join(self.public, name)

    def stub_file(self, name: str) -> str:
        return os.path.join(self.stubs, name)


def _mode_text(mode: int) -> str:
    return "%04o" % stat.S_IMODE(mode)


def check_incoming(spool: Spool) -> bool:
    """Check incoming/ before submitting; True when the spool is shared.

    Raises ConfigError naming the directory when owner, group or mode are wrong,
    so that a mistake never turns into mail readable by other users.
    """
    try:
        top = os.lstat(spool.path)
        st = os.lstat(spool.incoming)
    except FileNotFoundError:
        raise ConfigError(
            f"spool {spool.path} is not set up; run 'pysendmail spool init' as its owner or root"
        ) from None
    except OSError as exc:
        raise errors.from_oserror(exc, f"examine spool {spool.path}") from None
    if not stat.S_ISDIR(top.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise ConfigError(f"spool {spool.incoming} is not a directory (a symlink is refused)")
    mode = stat.S_IMODE(st.st_mode)
    # The group matters too: every submission takes incoming/'s group
    # (setgid) and mode 0640, so a foreign group (a mistaken chgrp) could
    # read all mail while the daemon could read none and would quarantine
    # what was accepted with exit 0.
    if mode == SHARED_INCOMING_MODE and st.st_uid == top.st_uid and st.st_gid == top.st_gid:
        return True
    if mode == PRIVATE_MODE and st.st_uid == top.st_uid:
        return False
    raise ConfigError(
        f"spool directory {spool.incoming} has mode {_mode_text(st.st_mode)}, owner uid {st.st_uid} "
        f"and group gid {st.st_gid}; expected 3733 or 0700 owned by the spool's owner "
        f"(uid {top.st_uid}, gid {top.st_gid}): run 'pysendmail spool init' as root to repair it"
    )


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_MAX_LINKS = 40  # symlinks followed while walking to the spool's parent, as the kernel's own limit


def _trusted_link(dir_fd: int, name: str, where: str, euid: int) -> None:
    """Return if only root (or we) could have planted the link ``name`` in ``where``; else ConfigError."""
    parent = os.fstat(dir_fd)
    link = os.lstat(name, dir_fd=dir_fd)
    trusted = (0, euid)
    locked = stat.S_IMODE(parent.st_mode) & 0o022 == 0 or parent.st_mode & stat.S_ISVTX
    if link.st_uid in trusted and parent.st_uid in trusted and locked:
        return
    raise ConfigError(
        f"the spool's path goes through the symbolic link {os.path.join(where, name)} (owner uid {link.st_uid}, "
        f"in a directory of uid {parent.st_uid}, mode {_mode_text(parent.st_mode)}) that a user other than root "
        "can change; point spool.path at the real directory"
    )


def _open_parent(path: str, euid: int) -> int:
    """A descriptor on ``path``'s parent directory, created (0755) where missing.

    Walked from / one component at a time with O_NOFOLLOW: a symbolic link
    on the way is followed only when root (or the caller) made it in a
    directory nobody else may change (``_trusted_link``).  Otherwise a user
    who owns a directory on the path (the daemon's user owning the spool's
    parent) could point the rest of the walk, and with it root's chown and
    chmod, at any file.
    """
    todo = [c for c in os.path.abspath(path).split("/")[:-1] if c]
    fd = os.open("/", _DIR_FLAGS)
    where = "/"  # for messages: the directory fd is on
    hops = 0
    try:
        while todo:
            name = todo.pop(0)
            if name == ".":
                continue
            try:
                nxt = os.open(name, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                try:
                    os.mkdir(name, 0o755, dir_fd=fd)
                except FileExistsError:
                    pass
                todo.insert(0, name)
                continue
            except OSError as exc:
                if exc.errno not in (errno.ELOOP, errno.ENOTDIR) or not stat.S_ISLNK(os.lstat(name, dir_fd=fd).st_mode):
                    raise
                hops += 1
                if hops > _MAX_LINKS:
                    raise
                _trusted_link(fd, name, where, euid)
                target = os.readlink(name, dir_fd=fd)
                todo[:0] = [c for c in target.split("/") if c]
                if target.startswith("/"):
                    os.close(fd)
                    fd = os.open("/", _DIR_FLAGS)
                    where = "/"
                continue
            os.close(fd)
            fd = nxt
            where = os.path.normpath(os.path.join(where, name))
    except BaseException:
        os.close(fd)
        raise
    return fd


def _open_dir(dir_fd: int, name: str, path: str) -> int:
    """Open the directory ``name`` under ``dir_fd`` never following a link; ConfigError if it is none."""
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise ConfigError(f"{path} is not a directory (a symlink is refused)") from None
        raise


def _fix(fd: int, st: os.stat_result, uid: int, gid: int, mode: int) -> None:
    """Owner and mode through the open descriptor: the inode checked is the inode changed."""
    if st.st_uid != uid or st.st_gid != gid:
        os.fchown(fd, uid, gid)
    if st.st_uid != uid or st.st_gid != gid or stat.S_IMODE(st.st_mode) != mode:
        os.fchmod(fd, mode)  # after fchown: chown clears setgid


def ensure_layout(spool: Spool, *, shared: bool | None = None, owner: tuple[int, int] | None = None) -> None:
    """Create the layout where missing, or check it; as the spool's owner or root.

    ``shared`` defaults to True when run as root (a system spool that every
    user submits into) and False otherwise (user mode).  ``owner`` is
    (uid, gid) for a new spool created by root.

    Every step works on descriptors opened with O_NOFOLLOW|O_DIRECTORY
    (mkdirat, openat, fchown, fchmod), never on a path looked up twice: the
    spool's owner can rename anything inside the spool (and the spool itself
    when it owns the parent), and swapping a directory for a symbolic link
    between root's check and root's chown would make root hand any file to
    that user.  A link, a non-directory, or a pickup FIFO that is not one
    FIFO with one link is refused with ConfigError (exit 78), nothing changed.
    """
    euid = os.geteuid()
    if shared is None:
        shared = euid == 0
    if owner is None:
        owner = (euid, os.getegid())
    top_mode = 0o755 if shared else PRIVATE_MODE
    parent = top = -1
    try:
        parent = _open_parent(spool.path, euid)
        base = os.path.basename(os.path.normpath(spool.path))
        created = False
        try:
            os.mkdir(base, top_mode, dir_fd=parent)
            created = True
        except FileExistsError:
            pass
        top = _open_dir(parent, base, f"spool {spool.path}")
        st = os.fstat(top)
        if created and st.st_uid == euid:
            _fix(top, st, *(owner if euid == 0 else (st.st_uid, st.st_gid)), top_mode)
            st = os.fstat(top)
        if euid not in (0, st.st_uid):
            raise errors.NoPermission(
                f"spool {spool.path} belongs to uid {st.st_uid}; only that user or root may set it up"
            )
        uid, gid = st.st_uid, st.st_gid
        wanted = [(spool.incoming, SHARED_INCOMING_MODE if shared else PRIVATE_MODE)]
        wanted += [(d, PRIVATE_MODE) for d in spool.private_dirs()]
        if shared:
            wanted += [(spool.public, PUBLIC_MODE), (spool.stubs, STUBS_MODE)]
        for path, mode in wanted:
            # Walked one component at a time from the spool's descriptor:
            # public/incoming/ is under public/, not the spool's incoming/.
            *parents, name = os.path.relpath(path, spool.path).split(os.sep)
            at = top
            try:
                for part in parents:  # made and fixed earlier in this loop
                    inner = _open_dir(at, part, path)
                    if at != top:
                        os.close(at)
                    at = inner
                try:
                    os.mkdir(name, mode, dir_fd=at)
                except FileExistsError:
                    pass
                fd = _open_dir(at, name, path)
                try:
                    _fix(fd, os.fstat(fd), uid, gid, mode)
                finally:
                    os.close(fd)
            finally:
                if at != top:
                    os.close(at)
        _ensure_fifo(top, spool.pickup, uid, gid, 0o622 if shared else 0o600)
    except OSError as exc:
        raise errors.from_oserror(exc, f"set up spool {spool.path}") from None
    finally:
        for fd in (top, parent):
            if fd >= 0:
                os.close(fd)


def _ensure_fifo(top: int, path: str, uid: int, gid: int, mode: int) -> None:
    """The pickup FIFO: made where missing, then checked and repaired through a descriptor.

    Opened O_RDONLY|O_NONBLOCK (which neither blocks nor wakes the daemon)
    so that fchown and fchmod reach the inode that was checked: a FIFO
    with one link.  A hard link to someone else's FIFO, or anything else
    planted under the name, is refused.
    """
    name = os.path.basename(path)
    try:
        os.mkfifo(name, mode, dir_fd=top)
    except FileExistsError:
        pass
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_NOCTTY | os.O_CLOEXEC, dir_fd=top)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENXIO, errno.ENOTDIR):
            raise ConfigError(f"{path} is not the spool's FIFO (a symlink or socket is refused); remove it") from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISFIFO(st.st_mode) or st.st_nlink != 1:
            raise ConfigError(
                f"{path} is not the spool's FIFO ({stat.filemode(st.st_mode)}, {st.st_nlink} links); remove it"
            )
        _fix(fd, st, uid, gid, mode)
    finally:
        os.close(fd)


def enqueue(spool: Spool, env: spoolfile.Envelope, message: bytes) -> str:
    """Write one message into incoming/ durably; return its queue id.

    The order is the crash-safety argument (DESIGN.md): the file exists
    under its final name from the start, but stays 0600 ("not ready")
    until the end record is written; only then 0640 and one fsync.  The
    submitter cannot fsync incoming/ (it cannot open it), and needs not:
    on ext4/XFS the file's fsync commits its directory entry too.
    """
    head = spoolfile.encode_head(env, len(message))
    tail = spoolfile.end_record(len(message))
    # incoming/ belongs to the spool's owner's directory, who could swap it
    # for a link between check_incoming and here: the file is made through
    # a descriptor on incoming/ opened without following links, so a root
    # submitter (cron) never creates a file where that user points.
    # O_PATH: a submitter may search and write incoming/ (3733), not read it.
    try:
        at = os.open(spool.incoming, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise ConfigError(f"spool {spool.incoming} is not a directory (a symlink is refused)") from None
        raise _enqueue_error(exc, spool) from None
    try:
        return _enqueue_at(spool, at, head, message, tail, env)
    finally:
        os.close(at)


def _enqueue_at(spool: Spool, at: int, head: bytes, message: bytes, tail: bytes, env: spoolfile.Envelope) -> str:
    """enqueue's work in the directory ``at`` (incoming/, held open)."""
    for _attempt in range(8):
        name = qid.new_qid()
        try:
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, NOT_READY_MODE,
                         dir_fd=at)
        except FileExistsError:
            continue
        except OSError as exc:
            raise _enqueue_error(exc, spool) from None
        break
    else:
        raise errors.TempFailure(f"cannot find a free queue id in {spool.incoming}; try again")
    try:
        try:
            durable.write_all(fd, head)
            durable.write_all(fd, message)
            durable.write_all(fd, tail)
            # The stub before "ready": the daemon cannot pick the message up
            # (and publish its summary, which removes the stub) before the
            # stub exists, so a stub never outlives its message unseen.
            _drop_stub(spool, name, env, len(message))
            os.fchmod(fd, READY_MODE)
            os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException as exc:
        # Leave no debris: the caller will retry, and a half-written file
        # must not linger (the daemon would only delete it later).
        try:
            os.unlink(name, dir_fd=at)
        except OSError:
            pass
        _remove_stub(spool, name)
        if isinstance(exc, OSError):
            raise _enqueue_error(exc, spool) from None
        raise
    poke(spool)
    return name


def _drop_stub(spool: Spool, name: str, env: spoolfile.Envelope, size: int) -> None:
    """Leave public/incoming/<qid>: what mailq shows others until the daemon publishes it.

    The submitter may not write the daemon's summary, and other users
    cannot read incoming/.  The stub holds only what mailq shows (sender,
    recipients, time, size, uid), belongs to the submitter, and is
    display-only: nothing reads it but mailq run by a user who cannot read
    the queue (core/mailq.py says why a forged one cannot matter).  Best
    effort: no stub directory (user mode, an old spool), a full disk or an
    envelope over STUB_MAX cost the stub only, never the message.
    """
    data = spoolfile.encode_head(spoolfile.Envelope(env.sender, env.recipients, uid=env.uid, time=env.time), size)
    if len(data) > STUB_MAX:
        return
    # public/ and public/incoming/ belong to the spool's owner, who could
    # swap either for a link: walked without following links, so that a
    # root submitter (cron) never creates a file where that user points.
    dirs: list[int] = []
    try:
        dirs.append(os.open(spool.public, _DIR_FLAGS))
        dirs.append(os.open(os.path.basename(spool.stubs), _DIR_FLAGS, dir_fd=dirs[-1]))
        at = dirs[-1]
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, STUB_MODE, dir_fd=at)
    except OSError:
        for d in dirs:
            os.close(d)
        return
    try:
        os.fchmod(fd, STUB_MODE)  # whatever the caller's umask: others read it
        durable.write_all(fd, data)
    except OSError:
        try:
            os.unlink(name, dir_fd=at)
        except OSError:
            pass
    finally:
        os.close(fd)
        for d in dirs:
            os.close(d)


def _remove_stub(spool: Spool, name: str) -> None:
    """Remove public/incoming/<name>, walked as _drop_stub walks (no link followed); best effort."""
    dirs: list[int] = []
    try:
        dirs.append(os.open(spool.public, _DIR_FLAGS))
        dirs.append(os.open(os.path.basename(spool.stubs), _DIR_FLAGS, dir_fd=dirs[-1]))
        os.unlink(name, dir_fd=dirs[-1])
    except OSError:
        pass
    finally:
        for d in dirs:
            os.close(d)


def _enqueue_error(exc: OSError, spool: Spool) -> errors.PysendmailError:
    return errors.from_oserror(exc, f"write the message into {spool.incoming}")


def poke(spool: Spool, what: bytes = b"W") -> None:
    """Wake the daemon if one listens; never block, never fail.

    ``W`` means "look at incoming/"; ``F`` (pysendmail flush) means "try
    the whole queue now"; ``R`` (pysendmail route resume) means "read the
    resume requests in state/"; ``I`` (pysendmail queue hold, release,
    retry, delete) means "read the due times in queue/ again".
    """
    try:
        fd = os.open(spool.pickup, os.O_WRONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError:
        return  # ENXIO: no daemon reads the FIFO; it will find the file at start
    try:
        # Only a FIFO: O_NOFOLLOW stops a symlink, not a hard link the spool's
        # owner made to a file of root's, which root's poke would overwrite.
        if stat.S_ISFIFO(os.fstat(fd).st_mode):
            os.write(fd, what)
    except OSError:
        pass  # EAGAIN: the FIFO is full of pokes already; the daemon is awake
    finally:
        os.close(fd)


def ready_waiting(spool: Spool) -> bool:
    """Does incoming/ hold a finished submission (mode 0640)?  Unready and planted non-files do not count."""
    try:
        with os.scandir(spool.incoming) as entries:
            for entry in entries:
                try:
                    ready = entry.stat(follow_symlinks=False).st_mode & 0o777 == READY_MODE
                    if ready and entry.is_file(follow_symlinks=False):
                        return True
                except OSError:
                    continue
    except OSError:
        return False
    return False
