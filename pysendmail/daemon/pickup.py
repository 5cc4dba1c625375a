"""Pickup: move ready submissions from incoming/ into queue/, distrusting them.

Contract:   ``pickup_all(spool, ctx, max_size, limit)`` takes ready files in
            incoming/, validates it, runs cleanup, writes queue/<qid>
            durably and only then unlinks the incoming file; recipients
            that cleanup refuses (a local name nothing aliases, with a
            relay) are failed in that same file and logged as bounced.
            Returns the queue ids it queued.  Never raises for what a user planted:
            such entries are moved to quarantine/ with one log line (a
            directory the daemon may not move is removed if empty, else
            left, logged once and skipped).  Entries left alone do not
            count toward ``limit``, so they cannot starve pickup.
            ``refusal(env, message)`` re-checks what sendmail checks
            (RFC 5321 address syntax, the header limits of core/rfc5322.py,
            NUL in headers): a file that fails is quarantined, since it need
            not come from sendmail.  Log lines escape the file's name and
            sender (log.safe).
Security:   incoming/ is writable by every local user.  Each check below
            names the attack it stops.  Files are opened with
            O_NOFOLLOW|O_NONBLOCK after an lstat, and the open file is
            compared with the lstat result, so nothing can be swapped in
            between.  The submitting uid is the file's owner, never the
            envelope's claim.
Crashes:    queue/<qid> is complete before incoming/<qid> is unlinked; a
            crash between the two leaves both, and the next pickup sees
            queue/<qid> exists and only unlinks the incoming copy: no
            duplicate.  Unready (0600) files are left alone until stale.
See also:   Postfix pickup(8) and cleanup(8); ../shared/DESIGN.md.
"""

from __future__ import annotations

import errno
import os
import stat
import time

from pysendmail.core import layout, log, queue, rfc5322, spoolfile
from pysendmail.core.qid import is_qid
from pysendmail.daemon import cleanup
from pysendmail.submit.intake import normalise_newlines

STALE_SECONDS = 3600  # an unready file older than this belongs to a dead submitter
ENVELOPE_ALLOWANCE = 1 << 20  # room for the envelope above max_message_size


def _quarantine(spool: layout.Spool, name: str, why: str) -> None:
    target = os.path.join(spool.quarantine, f"{name}.{int(time.time())}")
    path = os.path.join(spool.incoming, name)
    try:
        os.rename(path, target)
    except FileNotFoundError:
        return
    except OSError as exc:
        # Moving a directory to another parent needs write permission on
        # the directory itself (its ".." changes): in a shared spool a user
        # can plant one the daemon may not move.  Remove it if empty; else
        # leave it, say so once per process, and never let it block pickup.
        if exc.errno in (errno.EACCES, errno.EPERM) and stat.S_ISDIR(_lmode(path)):
            try:
                os.rmdir(path)
            except OSError:
                pass
            else:
                log.log(f"pickup: incoming/{log.safe(name)} removed: {log.safe(why)}")
                return
        _stuck.add(name)
        log.log(
            f"pickup: cannot quarantine incoming/{log.safe(name)} ({log.safe(why)}): {exc.strerror}; "
            "left in place and skipped: remove it as root"
        )
        return
    log.log(f"pickup: incoming/{log.safe(name)} quarantined: {log.safe(why)}")


def _lmode(path: str) -> int:
    try:
        return os.lstat(path).st_mode
    except OSError:
        return 0


# Names in incoming/ that could not be quarantined, skipped (and not logged
# again) while they stay; forgotten once they are gone.
_stuck: set[str] = set()


def _owner_name(uid: int) -> str:
    import pwd

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def refusal(env: spoolfile.Envelope, message: bytes) -> str | None:
    """Why sendmail would have refused this envelope and message (exit 65); None if it would not."""
    try:
        if env.sender:
            rfc5322.check_addr_spec(env.sender)
        if not env.recipients:
            return "no recipients"
        for rcpt in env.recipients:
            rfc5322.check_addr_spec(rcpt)
    except rfc5322.AddressError as exc:
        return f"bad address: {exc}"
    head, _ = rfc5322.split_message(normalise_newlines(message))
    if b"\0" in head:
        return "the message headers hold a NUL byte"
    return rfc5322.header_limit_error(head)


def pickup_all(
    spool: layout.Spool, ctx: cleanup.Context, max_size: int, limit: int | None = None
) -> tuple[list[str], bool]:
    """Handle up to ``limit`` entries (oldest first); (queued ids, whether more wait).

    Only entries dealt with (queued, quarantined, removed) count toward
    ``limit``; those left alone (unready files, stuck ones) cost an lstat
    each.  Counting them would let a user who creates ``limit`` unready
    files with low names keep every later submission waiting until they go
    stale, while "more wait" stayed true and the daemon spun.
    """
    queued: list[str] = []
    try:
        names = sorted(os.listdir(spool.incoming))
    except OSError as exc:
        log.log(f"pickup: cannot read {spool.incoming}: {exc.strerror}")
        return queued, False
    if _stuck:
        _stuck.intersection_update(names)
    handled = 0
    for name in names:
        if limit is not None and handled >= limit:
            return queued, True
        if name in _stuck:
            continue
        qid = pickup_one(spool, name, ctx, max_size)
        if qid:
            queued.append(qid)
            handled += 1
        elif not os.path.lexists(os.path.join(spool.incoming, name)):
            handled += 1
    return queued, False


def pickup_one(spool: layout.Spool, name: str, ctx: cleanup.Context, max_size: int) -> str | None:
    path = os.path.join(spool.incoming, name)
    if not is_qid(name):
        # A name we never create: a user's planted file or a leftover.
        _quarantine(spool, name, "not a queue file name")
        return None
    try:
        lst = os.lstat(path)
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(lst.st_mode):
        # Symlink (would make us read another file), FIFO (would hang
        # a blocking open), device, directory: never opened.
        _quarantine(spool, name, f"not a regular file (mode {stat.filemode(lst.st_mode)})")
        return None
    mode = stat.S_IMODE(lst.st_mode)
    if mode == layout.NOT_READY_MODE:
        if time.time() - lst.st_mtime > STALE_SECONDS:
            try:
                os.unlink(path)
                log.log(f"{name}: removed unfinished submission (uid {lst.st_uid}, older than {STALE_SECONDS} s)")
            except OSError:
                pass
        return None  # still being written
    if mode != layout.READY_MODE:
        _quarantine(spool, name, f"unexpected mode {mode:04o}")
        return None
    if os.path.exists(os.path.join(spool.queue, name)):
        os.unlink(path)  # crash after queueing, before this unlink: already queued
        return None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        _quarantine(spool, name, f"cannot open: {exc.strerror}")
        return None
    try:
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != (lst.st_dev, lst.st_ino) or not stat.S_ISREG(st.st_mode):
            _quarantine(spool, name, "replaced while being opened")
            return None
        if st.st_nlink != 1:
            # A hard link: a user could link another user's queue file (or
            # any file it can name) here to have it mailed.
            _quarantine(spool, name, f"has {st.st_nlink} links")
            return None
        if st.st_size > max_size + ENVELOPE_ALLOWANCE:
            _quarantine(spool, name, f"larger ({st.st_size} bytes) than the size limit")
            return None
        chunks = []
        remaining = st.st_size + 1
        while remaining > 0:
            chunk = os.read(fd, min(remaining, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
        data = b"".join(chunks)
    finally:
        os.close(fd)
    try:
        env, message, records = spoolfile.decode(data)
        if records:
            raise spoolfile.SpoolFormatError("state records in a submission")
    except spoolfile.SpoolFormatError as exc:
        _quarantine(spool, name, f"malformed: {exc}")
        return None
    if env.uid != st.st_uid:
        # The envelope claims another uid than the file's owner: forged.
        _quarantine(spool, name, f"envelope uid {env.uid} is not the file owner's uid {st.st_uid}")
        return None
    why = refusal(env, message)
    if why:
        # The file need not come from sendmail: what sendmail refuses with
        # exit 65 (a bad address, a header section over the limits that
        # would cost every later stage time) is refused here as well.
        _quarantine(spool, name, why)
        return None
    owner = (st.st_uid, _owner_name(st.st_uid))
    new_env, new_message, refused = cleanup.clean(env, message, name, ctx, owner)
    now = time.time()
    # Local recipients with nowhere to go are failed in the same atomic
    # write: they bounce, and can never reach the relay.
    queue.write_new(spool.queue, name, spoolfile.encode(new_env, new_message) + cleanup.refusal_records(refused, now))
    os.unlink(path)
    log.event(
        name,
        f"uid={owner[0]} ({owner[1]})",
        f"from=<{log.safe(new_env.sender)}>",
        size=len(new_message),
        nrcpt=len(new_env.recipients),
    )
    cleanup.log_refused(name, new_env, refused, now)
    return name
