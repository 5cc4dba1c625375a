"""Pickup: move ready submissions from incoming/ into queue/, distrusting them.

Contract:   ``pickup_all(spool, ctx, max_size, limit, scanner)`` takes
            ready files in incoming/, validates each, runs cleanup, writes
            queue/<qid> durably and only then unlinks the incoming file;
            recipients that cleanup refuses (a local name nothing aliases,
            with a relay) are failed in that same file and logged as
            bounced.  Returns the queue ids it queued and whether more
            wait.  Never raises for what a user planted: such entries are
            moved to quarantine/ (bounded: daemon/quarantine.py) with one
            log line (a directory the daemon may not move is removed if
            empty, else left, logged once and skipped).  Entries left
            alone do not count toward ``limit``, so they cannot starve
            pickup.
            A ``Scanner`` (the daemon keeps one) remembers what it left
            alone, so a pass costs one lstat of incoming/ plus the entries
            that are new or changed, not one lstat per entry ever planted;
            the daemon feeds it the names inotify reports
            (daemon/watch.py), so that it need not list incoming/ at all.
            ``refusal(env, head)`` re-checks what sendmail checks
            (RFC 5321 address syntax, the header limits of core/rfc5322.py,
            NUL in headers): a file that fails is quarantined, since it need
            not come from sendmail.  Log lines escape the file's name and
            sender (log.safe).
Security:   incoming/ is writable by every local user.  Each check below
            names the attack it stops.  Files are opened with
            O_NOFOLLOW|O_NONBLOCK after an lstat, and the open file is
            compared with the lstat result, so nothing can be swapped in
            between.  The submitting uid is the file's owner, never the
            envelope's claim.  Ages are judged by what the submitter
            cannot set: st_ctime (utime sets mtime to any value but ctime
            to now) and the time this process first saw the entry.
Crashes:    queue/<qid> is complete before incoming/<qid> is unlinked; a
            crash between the two leaves both, and the next pickup sees
            queue/<qid> exists and only unlinks the incoming copy: no
            duplicate.  A pass writes (and fsyncs) each queue file, then
            syncs queue/ once, and only then unlinks the incoming files
            and logs them (``Batch``): a crash anywhere in a pass leaves
            every submission in incoming/, queued or not.  Unready (0600) files are left alone until stale.
            The scanner's memory is only an optimisation: a new process
            lists and looks at everything once.
See also:   Postfix pickup(8) and cleanup(8); ../shared/DESIGN.md.
"""

from __future__ import annotations

import errno
import os
import stat
import threading
import time
from collections.abc import Callable

from pysendmail.core import config, durable, layout, log, queue, rfc5322, spoolfile
from pysendmail.core.qid import QID_LEN, is_qid
from pysendmail.daemon import cleanup
from pysendmail.daemon.quarantine import Bounds, Quarantine
from pysendmail.core.rfc5322 import normalise_newlines

STALE_SECONDS = 3600  # default spool.unready_lifetime: an unready file older than this belongs to a dead submitter
ENVELOPE_ALLOWANCE = 1 << 20  # room for the envelope above max_message_size
YOUNG_SECONDS = 10.0  # an unready file this young is looked at on every pass: its submitter is finishing it
YOUNG_CAP = 1000  # ... but no more of them per pass than this; the rest wait for the sweep
SWEEP_INTERVAL = 60.0  # every entry left alone is looked at again this often (stale ones go then)
SWEEP_CHUNK = 5000  # entries per pass for that sweep, so one pass stays short
SETTLE_NS = 2_000_000_000  # an incoming/ mtime this close to "now" may hide a change made in the same clock tick
LIST_THROTTLE = 2.0  # a listing that took t seconds is not repeated for 2 t: listing stays under a third of the time


class Scanner:
    """What pickup knows of incoming/ between passes.

    ``left``: entries looked at and left alone (unready files), by name,
    with their inode and the time first seen; ``stuck``: entries that
    could not be quarantined.  Neither is looked at again until it changes
    (another inode under the name), while young (an unready file whose
    submitter is still writing: its fchmod to 0640 changes neither the
    name, the inode nor incoming/'s mtime), or when the periodic sweep
    comes round.  With inotify (``watching``, names given by ``hint``)
    incoming/ is listed at the start, after lost events and once per
    sweep; without it, whenever its mtime moved (or was too recent to
    trust).  Never more often than LIST_THROTTLE allows: a flood of
    wake-ups costs one lstat each, a flood of new files a bounded share.
    """

    def __init__(self, unready_lifetime: float = STALE_SECONDS, quarantine: Quarantine | None = None) -> None:
        self.unready_lifetime = unready_lifetime
        self.quarantine = quarantine
        self.left: dict[str, tuple[int, float]] = {}  # name -> (inode, first seen)
        self.young: set[str] = set()  # of those, unready files still being written: looked at every pass
        self.stuck: dict[str, int] = {}  # name -> inode
        self.pending: set[str] = set()  # to look at, not reached in the last pass (its limit)
        self.dir_sig: tuple[int, int] | None = None  # incoming/'s (inode, mtime_ns) at a trusted listing
        self.list_after = 0.0  # no listing before this (throttle)
        self.retry_at: float | None = None  # a listing was put off until then: wake up for it
        self.sweep: list[str] = []
        self.next_sweep = 0.0
        self.listings = 0  # for tests and bench/pickup_junk
        self.looked = 0
        # Set by the daemon when inotify watches incoming/ (daemon/watch.py):
        # the names it reports replace listings, which then happen only at
        # the start, after the kernel dropped events, and once per sweep.
        self.watching = False
        self._hints: set[str] = set()
        self._overflow = False
        self._listed = False
        self._lock = threading.Lock()  # hint() runs in the event loop, candidates() in pickup's thread

    @classmethod
    def from_config(cls, cfg: config.Config) -> Scanner:
        spool = layout.Spool(cfg.spool_path)
        return cls(float(cfg.spool.unready_lifetime), Quarantine(spool.quarantine, Bounds.from_config(cfg)))

    def adopt(self, old: Scanner) -> None:
        """Keep what an older scanner learnt (SIGHUP builds a new one with the new settings)."""
        self.left, self.stuck, self.pending = old.left, old.stuck, old.pending
        self.young = old.young
        self.dir_sig, self.list_after, self.sweep, self.next_sweep = (
            old.dir_sig, old.list_after, old.sweep, old.next_sweep)
        with old._lock:
            self.watching, self._hints, self._overflow, self._listed = (
                old.watching, old._hints, old._overflow, old._listed)

    def hint(self, names: set[str], overflow: bool) -> None:
        """Names inotify saw created, moved in or chmod'ed; ``overflow``: some events were lost."""
        with self._lock:
            self._hints |= names
            self._overflow = self._overflow or overflow

    def candidates(self, incoming: str, now: float) -> list[str]:
        """The names worth an lstat in this pass, oldest first."""
        try:
            st = os.lstat(incoming)
        except OSError as exc:
            log.log(f"pickup: cannot read {incoming}: {exc.strerror}")
            return []
        todo = set(self.pending)
        self.pending = set()
        with self._lock:
            hints, self._hints = self._hints, set()
            overflow, self._overflow = self._overflow, False
        todo |= hints
        sweeping = not self.sweep and now >= self.next_sweep
        if self.watching and self._listed and not overflow:
            # inotify names every change; one listing per sweep, if the
            # directory changed, in case anything ever slipped by.
            changed = sweeping and self.dir_sig != (st.st_ino, st.st_mtime_ns)
        else:
            changed = overflow or self.dir_sig != (st.st_ino, st.st_mtime_ns)
        if changed:
            if now < self.list_after:
                self.retry_at = self.list_after
                if overflow:
                    with self._lock:
                        self._overflow = True  # still owed a listing
            else:
                self._list(incoming, st, now, todo)
        for _ in range(min(len(self.young), YOUNG_CAP)):
            todo.add(self.young.pop())
        if sweeping:
            if self.watching:
                # inotify reports every change to them; only age (the
                # unready lifetime, counted from first sight) is news.
                self.sweep = sorted(n for n, (_, seen) in self.left.items() if now - seen > self.unready_lifetime)
            else:
                self.sweep = sorted(self.left)
            # Often enough that an unready file goes soon after its
            # lifetime even when that is short (tests set one second).
            self.next_sweep = now + min(SWEEP_INTERVAL, max(0.5, self.unready_lifetime / 4))
            if self.quarantine is not None:
                self.quarantine.enforce(now)  # expiry, once per sweep
        if self.sweep:
            todo.update(self.sweep[:SWEEP_CHUNK])
            del self.sweep[:SWEEP_CHUNK]
        return sorted(todo)

    def _list(self, incoming: str, st: os.stat_result, now: float, todo: set[str]) -> None:
        """List incoming/ and add the names not known yet; forget the names gone.

        Names only (set arithmetic in C): a known name whose inode changed
        (its owner removed it and made another under the same name, which
        sendmail never does) waits for the sweep.
        """
        started = time.monotonic()
        try:
            names = set(os.listdir(incoming))
        except OSError as exc:
            log.log(f"pickup: cannot read {incoming}: {exc.strerror}")
            return
        todo.update(names - self.left.keys() - self.stuck.keys())
        for gone in self.left.keys() - names:
            del self.left[gone]
        for gone in self.stuck.keys() - names:
            del self.stuck[gone]
        self.young.intersection_update(names)
        self.listings += 1
        self._listed = True
        cost = time.monotonic() - started
        self.list_after = time.time() + LIST_THROTTLE * cost if cost > 0.002 else 0.0
        self.retry_at = None
        # Trust "unchanged" only for an mtime older than the clock's tick:
        # a file created in the same tick as an earlier change, after this
        # listing, would leave the mtime as it is.
        self.dir_sig = (st.st_ino, st.st_mtime_ns) if time.time_ns() - st.st_mtime_ns > SETTLE_NS else None

    def links(self, incoming: str, ino: int) -> list[str]:
        """Every name in incoming/ for inode ``ino`` (a fresh listing)."""
        try:
            with os.scandir(incoming) as it:
                return sorted(e.name for e in it if e.inode() == ino)
        except OSError:
            return []


def _quarantine(spool: layout.Spool, name: str, why: str, scan: Scanner | None = None) -> None:
    path = spool.incoming_file(name)
    quarantine = scan.quarantine if scan is not None and scan.quarantine is not None else None
    if quarantine is None:
        quarantine = Quarantine(spool.quarantine, Bounds())
    try:
        quarantine.add(path, name)
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
        if scan is not None:
            try:
                scan.stuck[name] = os.lstat(path).st_ino
            except OSError:
                pass
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


_OWNER_NAMES: dict[int, tuple[float, str]] = {}
OWNER_NAME_TTL = 60.0  # a renamed or removed account shows in Received lines within a minute


def _owner_name(uid: int) -> str:
    """The login name of ``uid`` (its number when it has none), cached: getpwuid reads /etc/passwd each time."""
    import pwd

    now = time.monotonic()
    known = _OWNER_NAMES.get(uid)
    if known is not None and now - known[0] < OWNER_NAME_TTL:
        return known[1]
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        name = str(uid)
    if len(_OWNER_NAMES) >= 1024:  # bounded: every local uid may submit
        _OWNER_NAMES.clear()
    _OWNER_NAMES[uid] = (now, name)
    return name


class Batch:
    """Submissions of one pickup pass whose queue files are written but whose incoming names remain.

    Each queue file is complete and fsynced under its final name when
    pickup_one returns; ``commit`` then fsyncs queue/ once for all of them
    and only after that removes their incoming names and logs them: one
    directory sync per pass instead of one per message, and still no
    incoming file is removed before its queue entry is durable.  A name
    in ``claimed`` (a queued submission's, or another name for it) is not
    looked at again in the pass.
    """

    def __init__(self, spool: layout.Spool) -> None:
        self.spool = spool
        self.claimed: set[str] = set()
        self.finishers: list[Callable[[], None]] = []

    def add(self, names: list[str], finish: Callable[[], None]) -> None:
        self.claimed.update(names)
        self.finishers.append(finish)

    def commit(self) -> None:
        """Make the pass's queue entries durable, then remove their incoming names."""
        if not self.finishers:
            return
        durable.fsync_dir(self.spool.queue)  # raises: every incoming name stays, the next pass finishes them
        finishers, self.finishers = self.finishers, []
        self.claimed.clear()
        for finish in finishers:
            finish()


def refusal(env: spoolfile.Envelope, head: bytes) -> str | None:
    """Why sendmail would have refused this envelope and message (exit 65); None if it would not.

    ``head``: the message's header section, its newlines normalised
    (pickup_one shares that step with cleanup).
    """
    try:
        if env.sender:
            rfc5322.check_addr_spec(env.sender)
        if not env.recipients:
            return "no recipients"
        for rcpt in env.recipients:
            rfc5322.check_addr_spec(rcpt)
    except rfc5322.AddressError as exc:
        return f"bad address: {exc}"
    if b"\0" in head:
        return "the message headers hold a NUL byte"
    return rfc5322.header_limit_error(head)


def pickup_all(
    spool: layout.Spool, ctx: cleanup.Context, max_size: int, limit: int | None = None,
    scanner: Scanner | None = None,
) -> tuple[list[str], bool]:
    """Handle up to ``limit`` entries (oldest first); (queued ids, whether more wait).

    Only entries dealt with (queued, quarantined, removed) count toward
    ``limit``; those left alone (unready files, stuck ones) are
    remembered by the scanner and cost nothing more until they change.
    Counting them would let a user who creates ``limit`` unready files
    with low names keep every later submission waiting until they go
    stale, while "more wait" stayed true and the daemon spun.
    """
    scan = scanner if scanner is not None else Scanner()
    queued: list[str] = []
    now = time.time()
    names = scan.candidates(spool.incoming, now)
    handled = 0
    pos = 0
    batch = Batch(spool)
    try:
        for pos, name in enumerate(names):
            if limit is not None and handled >= limit:
                return queued, True  # the rest: pending, first in the next pass
            if name in scan.stuck or name in batch.claimed:
                continue
            scan.looked += 1
            seen = scan.left.pop(name, None)
            scan.young.discard(name)
            qid = pickup_one(spool, name, ctx, max_size, scan, seen[1] if seen else None, batch)
            if qid:
                queued.append(qid)
                handled += 1
                continue
            if name in batch.claimed:
                handled += 1  # found queued already: its incoming name goes with the batch
                continue
            try:
                st = os.lstat(spool.incoming_file(name))
            except FileNotFoundError:
                handled += 1
                continue
            except OSError:
                continue
            if name not in scan.stuck:
                first = seen[1] if seen and seen[0] == st.st_ino else now
                scan.left[name] = (st.st_ino, first)
                if now - first < YOUNG_SECONDS and now - st.st_ctime < YOUNG_SECONDS:
                    # Written to moments ago: its submitter's fchmod to 0640
                    # will change neither the name, the inode nor incoming/'s
                    # mtime, so only looking again finds it ready.
                    scan.young.add(name)
        pos = len(names)
    finally:
        # An exception (a full disk while queueing) must not make the
        # scanner forget the names this pass did not reach, nor leave the
        # submissions queued before it half done.
        scan.pending.update(names[pos:])
        batch.commit()
    return queued, bool(scan.sweep or scan.pending)


def pickup_one(spool: layout.Spool, name: str, ctx: cleanup.Context, max_size: int,
               scan: Scanner | None = None, seen: float | None = None, batch: Batch | None = None) -> str | None:
    """Deal with incoming/<name>: its queue id when queued, else None (left alone or dealt with).

    ``seen``: when this process first saw the entry (for unready files).
    With a ``batch``, the incoming names of a queued submission (and of
    one found queued already) are removed by ``batch.commit()``, after
    queue/ is synced; without one, before this returns (a batch of one).
    """
    if batch is not None:
        return _pickup_one(spool, name, ctx, max_size, scan, seen, batch)
    own = Batch(spool)
    qid = _pickup_one(spool, name, ctx, max_size, scan, seen, own)
    own.commit()
    return qid


def _pickup_one(spool: layout.Spool, name: str, ctx: cleanup.Context, max_size: int,
                scan: Scanner | None, seen: float | None, batch: Batch) -> str | None:
    path = spool.incoming_file(name)
    try:
        lst = os.lstat(path)
    except FileNotFoundError:
        return None
    if not is_qid(name):
        if stat.S_ISREG(lst.st_mode) and lst.st_nlink > 1:
            # Another name for a file: removing this name loses no
            # content (quarantining it would carry the content away, and
            # with it, for a hard link to someone's submission, the
            # submission: its real name would then have a link outside
            # incoming/ and be refused too).
            _unlink(path, f"pickup: incoming/{log.safe(name)} removed: not a queue file name, and a second name "
                    f"(hard link) for a file of uid {lst.st_uid}")
            return None
        # A name we never create: a user's planted file or a leftover.
        _quarantine(spool, name, "not a queue file name", scan)
        return None
    if not stat.S_ISREG(lst.st_mode):
        # Symlink (would make us read another file), FIFO (would hang
        # a blocking open), device, directory: never opened.
        _quarantine(spool, name, f"not a regular file (mode {stat.filemode(lst.st_mode)})", scan)
        return None
    mode = stat.S_IMODE(lst.st_mode)
    if mode == layout.NOT_READY_MODE:
        # Judged by st_ctime, never st_mtime: the owner can utime the
        # mtime to any date (a file dated 2100 would never be stale), but
        # every change it makes sets ctime to now; and by when this
        # process first saw the file, which touching it does not change.
        lifetime = scan.unready_lifetime if scan is not None else STALE_SECONDS
        now = time.time()
        age = max(now - lst.st_ctime, now - seen if seen is not None else 0.0)
        if age > lifetime:
            _unlink(path, f"{name}: removed unfinished submission (uid {lst.st_uid}, unready for more than "
                    f"{lifetime:.0f} s)")
        return None  # still being written
    if mode != layout.READY_MODE:
        _quarantine(spool, name, f"unexpected mode {mode:04o}", scan)
        return None
    if os.path.exists(spool.queue_file(name)):
        # A crash after queueing, before this unlink: already queued.  Its
        # queue/ entry may not be durable yet (killed before the sync).
        batch.add([name], lambda: _unlink(path, ""))
        return None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        _quarantine(spool, name, f"cannot open: {exc.strerror}", scan)
        return None
    try:
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != (lst.st_dev, lst.st_ino) or not stat.S_ISREG(st.st_mode):
            _quarantine(spool, name, "replaced while being opened", scan)
            return None
        if st.st_size > max_size + ENVELOPE_ALLOWANCE:
            _quarantine(spool, name, f"larger ({st.st_size} bytes) than the size limit", scan)
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
        st = os.fstat(fd)  # the link count now, after reading
    finally:
        os.close(fd)
    try:
        env, message, records = spoolfile.decode(data)
        if records:
            raise spoolfile.SpoolFormatError("state records in a submission")
    except spoolfile.SpoolFormatError as exc:
        _quarantine(spool, name, f"malformed: {exc}", scan)
        return None
    if env.uid != st.st_uid:
        # The envelope claims another uid than the file's owner: forged.
        _quarantine(spool, name, f"envelope uid {env.uid} is not the file owner's uid {st.st_uid}", scan)
        return None
    # Newlines normalised and the header section found once, for the
    # checks and for cleanup: two more copies of the message otherwise.
    message = normalise_newlines(message)
    head, body = rfc5322.split_message(message)
    why = refusal(env, head)
    if why:
        # The file need not come from sendmail: what sendmail refuses with
        # exit 65 (a bad address, a header section over the limits that
        # would cost every later stage time) is refused here as well.
        _quarantine(spool, name, why, scan)
        return None
    names = [name]
    qid = name
    if st.st_nlink != 1:
        # A hard link.  Its content is its owner's own submission (owner
        # and envelope agree, mode 0640 in a 0700/3733 box: only the owner
        # wrote it), so it is delivered once, whoever added the other names.
        lister = scan if scan is not None else Scanner()
        for _ in range(3):  # a user adding or removing names meanwhile: look again
            names = lister.links(spool.incoming, st.st_ino)
            try:
                now_st = os.lstat(path)
            except FileNotFoundError:
                return None
            if now_st.st_ino != st.st_ino:
                return None  # another file under the name now: the next pass judges it
            if len(names) == now_st.st_nlink:
                break
        if len(names) > now_st.st_nlink:
            return None  # names still coming and going: left for the next pass, not quarantined
        if name not in names or len(names) != now_st.st_nlink:
            # A name outside incoming/: a user could link another user's
            # queue file (or any file it can name) here to have it mailed,
            # or keep the file to link it in again after pickup (a replay).
            _quarantine(spool, name, f"has {st.st_nlink} links, not all of them in incoming/", scan)
            return None
        qid = real_name(names, env, st)
        if os.path.exists(spool.queue_file(qid)):
            # Queued before a crash; only the names were left.
            def forget() -> None:
                for other in names:
                    _unlink(spool.incoming_file(other), "")

            batch.add(names, forget)
            return None
    owner = (st.st_uid, _owner_name(st.st_uid))
    new_env, new_message, refused = cleanup.clean(env, message, qid, ctx, owner, split=(head, body))
    now = time.time()
    # Local recipients with nowhere to go are failed in the same atomic
    # write: they bounce, and can never reach the relay.
    queue.write_new(spool.queue, qid, spoolfile.encode(new_env, new_message) + cleanup.refusal_records(refused, now),
                    sync_dir=False)  # the batch syncs queue/ before any incoming name goes

    size = len(new_message)  # the closure keeps no message bytes alive until the batch commits

    def finish() -> None:
        for other in names:
            if other != qid:
                _unlink(spool.incoming_file(other),
                        f"pickup: incoming/{log.safe(other)} removed: another name (hard link) for {qid}, "
                        f"uid {st.st_uid}'s submission, queued once as {qid}")
        os.unlink(spool.incoming_file(qid))
        log.event(
            qid,
            f"uid={owner[0]} ({owner[1]})",
            f"from=<{log.safe(new_env.sender)}>",
            size=size,
            nrcpt=len(new_env.recipients),
        )
        cleanup.log_refused(qid, new_env, refused, now)

    batch.add(names, finish)
    return qid


def real_name(names: list[str], env: spoolfile.Envelope, st: os.stat_result) -> str:
    """Of several names for one submission, the one its submitter most likely drew.

    sendmail draws the queue id (arrival time in microseconds, then random
    bits) after the envelope's time and before its last write (the
    file's mtime, which only the owner can set).  Names outside that
    window were chosen by someone else.  Someone who can stat the file
    can still pick a name inside it; that wins nothing: the message is
    delivered once, unchanged, under either name.
    """
    low, high = int(env.time * 1e6) - 1_000_000, int(st.st_mtime * 1e6) + 1_000_000
    plausible = [n for n in names if len(n) == QID_LEN and low <= int(n[:13], 16) <= high]
    return min(plausible or names)


def _unlink(path: str, message: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        return
    if message:
        log.log(message)
