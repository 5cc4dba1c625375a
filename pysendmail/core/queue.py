"""Queue files: the daemon's durable state machine, one file per message.

Contract:   ``QueuedMessage.load(path)`` reads a queue file and derives its
            state from the appended records: which recipients are done,
            failed or still pending, how many tries, the next due time, the
            last reason, whether it is held.  ``write_new`` creates a queue
            file atomically; ``append`` adds one state record durably;
            ``remove`` and ``move_to_failed`` end a message's life.
Crashes:    every transition is one atomic filesystem step (qmail's rule):
            a new file appears by rename after fsync; a record is appended
            and fsynced before the next recipient is tried, so a restart
            never resends to a recipient already accepted; a torn record
            (no final newline) is ignored and that attempt is made again.
            A write that fails (a full disk: ENOSPC, EDQUOT; EIO) leaves
            nothing behind: ``durable.publish`` removes its temporary file,
            and a short append is cut back to where it began, so no torn
            record sits before the next one.  ``storage_error`` tells the callers
            which failures are the disk's (wait for space, never crash).
See also:   spoolfile.py for the format; ../shared/DESIGN.md "Data flow".

States: pending recipients and no hold record since the last release ->
"active" (tries == 0) or "deferred"; a hold -> "held"; no pending
recipient left -> done (the file is removed, or moved to failed/ when
some recipient failed).
"""

from __future__ import annotations

import errno
import os

from pysendmail.core import durable, spoolfile

# The disk's failures, not a bug's: full, over quota, read-only, broken.
# Callers keep what they have and wait for space instead of crashing.
STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS})


def storage_error(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in STORAGE_ERRNOS


def free_bytes(path: str) -> int:
    """Bytes an unprivileged writer may still use on ``path``'s file system (0 if unknown)."""
    try:
        st = os.statvfs(path)
    except OSError:
        return 0
    return st.f_bavail * st.f_frsize

TYPE_CHECKING = False
if TYPE_CHECKING:
    from pysendmail.core.layout import Spool


class QueuedMessage:
    __slots__ = ("qid", "path", "envelope", "message", "done", "failed", "tries", "due", "reason", "held", "size")

    def __init__(self, qid: str, path: str, data: bytes) -> None:
        env, message, records = spoolfile.decode(data)
        self._init(qid, path, env, message, records)

    def _init(
        self, qid: str, path: str, env: spoolfile.Envelope, message: bytes, records: list[spoolfile.Record]
    ) -> None:
        self.qid = qid
        self.path = path
        self.envelope = env
        self.message = message
        self.size = len(message)
        self.done: dict[int, str] = {}
        self.failed: dict[int, str] = {}
        self.tries = 0
        self.due = env.time
        self.reason = ""
        self.held = ""
        for rec in records:
            if rec.kind == "done":
                self.done[int(rec.fields[0])] = rec.fields[2]
            elif rec.kind == "failed":
                self.failed[int(rec.fields[0])] = rec.fields[2]
                self.reason = rec.fields[2]
            elif rec.kind == "deferred":
                self.tries += 1
                self.due = float(rec.fields[1])
                self.reason = rec.fields[2]
            elif rec.kind == "hold":
                self.held = rec.fields[1] or "held by the administrator"
            elif rec.kind == "release":
                self.held = ""
                self.due = float(rec.fields[0])

    def variant(self, sender: str | None = None, recipients: list[str] | None = None,
                message: bytes | None = None) -> QueuedMessage:
        """This message with another envelope sender, recipients or bytes, for one delivery.

        The queue file is untouched; indices into the recipients keep their
        meaning, so outcomes are recorded against the original.
        """
        env = self.envelope
        data = self.message if message is None else message
        out = QueuedMessage.__new__(QueuedMessage)
        for slot in QueuedMessage.__slots__:
            setattr(out, slot, getattr(self, slot))
        out.envelope = env.replace(sender=sender, recipients=recipients,
                                   body=None if message is None else ("7BIT" if data.isascii() else "8BITMIME"))
        out.message = data
        out.size = len(data) if message is not None else self.size
        return out

    @classmethod
    def load(cls, path: str) -> QueuedMessage:
        with open(path, "rb") as fh:
            return cls(os.path.basename(path), path, fh.read())

    def pending(self) -> list[int]:
        return [i for i in range(len(self.envelope.recipients)) if i not in self.done and i not in self.failed]

    @property
    def state(self) -> str:
        if self.held:
            return "held"
        if not self.pending():
            return "finished"
        return "deferred" if self.tries else "active"


def read_state(path: str) -> QueuedMessage:
    """Envelope and state of a queue file without reading its message.

    The daemon rebuilds its index of due times from every queue file at
    start; reading only the head and the tail keeps that proportional to
    the number of messages, not to their size.
    """
    with open(path, "rb") as fh:
        head = fh.read(65536)
        try:
            env, pos, size = spoolfile.decode_envelope(head)
        except spoolfile.SpoolFormatError:
            if len(head) < 65536:
                raise
            return QueuedMessage.load(path)  # an envelope over 64 KiB: read it all
        end = spoolfile.end_record(size)
        fh.seek(pos + size)
        tail = fh.read()
    if not tail.startswith(end):
        raise spoolfile.SpoolFormatError("end record missing or wrong: the file is incomplete")
    msg = QueuedMessage.__new__(QueuedMessage)
    msg._init(os.path.basename(path), path, env, b"", spoolfile.decode_records(tail[len(end) :]))
    msg.size = size
    return msg


def write_new(directory: str, qid: str, data: bytes, sync_dir: bool = True) -> str:
    """Create ``directory/qid`` with ``data`` atomically and durably (its name once ``directory`` is synced)."""
    final = os.path.join(directory, qid)
    durable.publish(os.path.join(directory, f".{qid}.tmp"), final, data, sync_dir=sync_dir)
    return final


def append(path: str, record: bytes) -> None:
    """Append one state record and make it durable before returning."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        start = os.fstat(fd).st_size
        try:
            written = os.write(fd, record)
            if written != len(record):  # a full disk takes part of it
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
            os.fdatasync(fd)
        except OSError:
            # Cut a part-written record away: the next append must not
            # glue its record onto a torn one.
            try:
                os.ftruncate(fd, start)
            except OSError:
                pass
            raise
    finally:
        os.close(fd)


def remove(path: str) -> None:
    os.unlink(path)
    durable.fsync_dir(os.path.dirname(path))


def move_to_failed(spool: Spool, msg: QueuedMessage) -> str:
    target = spool.failed_file(msg.qid)
    os.rename(msg.path, target)
    durable.fsync_dir(spool.failed)
    durable.fsync_dir(os.path.dirname(msg.path))
    return target


def list_ids(directory: str) -> list[str]:
    from pysendmail.core.qid import is_qid

    try:
        return sorted(e.name for e in os.scandir(directory) if is_qid(e.name))
    except FileNotFoundError:
        return []
