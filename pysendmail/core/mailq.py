"""mailq: the queue as Postfix prints it, or as JSON, for the owner and for everyone.

Contract:   ``entries(spool)`` yields one QueueEntry per message that
            still has recipients to deliver (incoming, active, deferred,
            held), in queue-id (arrival) order, reading one file at a
            time; ``collect`` is its list.  ``write_text`` prints
            Postfix's layout as the entries come, ending with "Mail queue
            is empty" or "-- N Kbytes in M Requests." (``render_text`` is
            the same into a string); ``render_json`` the same data for
            scripts.  Listing 100,000 messages holds one entry at a time.
            ``publish(spool)`` (run with the owner's rights) writes those
            same entries to public/mailq, one JSON line each, and removes
            stubs whose message left incoming/; ``read_public(spool)``
            gives what a user who cannot read the queue may see: that
            summary merged with the submitters' stubs, same entries, same
            order, so the output is identical whichever source.
Security:   queue/ and incoming/ are the owner's (0700, 3733): only root
            and the owner read them, and only they stream the queue
            directly.  Everyone else reads public/mailq, which the owner
            publishes (temp file + rename, 0644, in public/ 0755 owned by
            the owner: nobody else can write or replace it) after each
            change: the daemon (coalesced, see daemon/summary.py), flush,
            the queue commands and spool init.  It holds queue ids, sizes,
            arrival times, senders, recipients, states and reasons, and
            never a header or a byte of any message: it is built from the
            envelope and state records alone (queue.read_state), as the
            DESIGN.md contract allows ("ids, sizes, times, senders,
            recipients, reasons; never contents").
            Messages submitted while no daemon runs sit in incoming/,
            which nobody but the owner can list, so each submitter also
            leaves a stub in public/incoming/ (1777, sticky: nobody can
            remove or replace another's stub; layout._drop_stub).  Stubs
            are hostile input, and display-only: nothing but this reader
            opens them (O_NOFOLLOW|O_NONBLOCK, regular, one link, at most
            STUB_MAX bytes, an envelope whose uid is the file's owner),
            the daemon never trusts them, and the summary wins for every
            id it lists, so a forged stub can neither hide nor alter a real
            entry.  What a user can forge is an extra "incoming" entry
            under a fresh id (a random one: another user's future id cannot
            be guessed), which is what submitting a real message shows
            anyway; the next publish removes every stub without a message
            of the same owner in incoming/ (with a daemon, within a minute).
            XXX: with no daemon and nobody publishing, a forged stub stays
            listed until the next flush, queue command or spool init.
Crashes:    the summary appears by rename: readers see the old or the new
            one, never half; a dead publisher leaves a .mailq.* temp file
            that the next publish by the same pid overwrites (harmless).
See also:   Postfix mailq(1)/showq(8) output format; layout.py (stubs);
            daemon/summary.py (when the daemon publishes); pysendmail(8).
"""

from __future__ import annotations

import dataclasses
import errno
import heapq
import io
import json
import os
import stat
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TextIO

from pysendmail.core import errors, layout, queue, spoolfile
from pysendmail.core.qid import QID_LEN, is_qid


@dataclass(slots=True)
class QueueEntry:
    queue_id: str
    state: str  # incoming, active, deferred, held
    size: int
    arrival_time: float
    sender: str
    recipients: list[str]
    reason: str = ""
    next_attempt: float | None = None
    failed: dict[str, str] = field(default_factory=dict)


def _read_dir(directory: str) -> list[str]:
    try:
        return queue.list_ids(directory)
    except PermissionError:
        raise errors.NoPermission(
            f"permission denied reading the queue in {directory}: only root and the spool's owner may list it"
        ) from None


def _queued(spool: layout.Spool) -> Iterator[QueueEntry]:
    for qid in _read_dir(spool.queue):
        try:
            # Envelope and records only: listing 100,000 messages must not
            # read 100,000 message bodies.
            msg = queue.read_state(spool.queue_file(qid))
        except (FileNotFoundError, spoolfile.SpoolFormatError):
            continue
        pending = msg.pending()
        if not pending:
            continue
        env = msg.envelope
        yield QueueEntry(
            qid,
            msg.state,
            msg.size,
            env.time,
            env.sender,
            [env.recipients[i] for i in pending],
            msg.held or msg.reason,
            msg.due if msg.tries and not msg.held else None,
        )


def _submission(path: str) -> tuple[spoolfile.Envelope, int] | None:
    """(envelope, message size) of a ready, complete file in incoming/, else None.

    incoming/ is every user's to write, and the daemon lists it to publish
    the summary: opened as pickup opens it (O_NOFOLLOW, O_NONBLOCK, then
    fstat), so a FIFO or a symlink swapped in after a check can neither
    hang the daemon's publisher nor show another file.  Only the envelope
    is read; the size on disk proves the end record's place.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or stat.S_IMODE(st.st_mode) != layout.READY_MODE:
            return None  # not a submission, or not ready: unlisted, as pickup leaves it
        head = os.read(fd, 65536)
        try:
            env, pos, size = spoolfile.decode_envelope(head)
        except spoolfile.SpoolFormatError:
            if len(head) < 65536:
                return None
            head += os.read(fd, 1 << 20)  # a long recipient list: pickup allows a 1 MiB envelope
            env, pos, size = spoolfile.decode_envelope(head)
        if st.st_size != pos + size + len(spoolfile.end_record(size)):
            return None  # incomplete or with trailing bytes: pickup will quarantine it
        return env, size
    except (OSError, spoolfile.SpoolFormatError):
        return None
    finally:
        os.close(fd)


def _incoming(spool: layout.Spool) -> Iterator[QueueEntry]:
    for qid in _read_dir(spool.incoming):
        found = _submission(spool.incoming_file(qid))
        if found is None:
            continue
        env, size = found
        yield QueueEntry(qid, "incoming", size, env.time, env.sender, list(env.recipients))


def entries(spool: layout.Spool) -> Iterator[QueueEntry]:
    """Every listed message, in queue-id order: both directories' (sorted) names merged."""
    return heapq.merge(_queued(spool), _incoming(spool), key=lambda e: e.queue_id)


def collect(spool: layout.Spool) -> list[QueueEntry]:
    return list(entries(spool))


_FLAGS = {"active": "*", "held": "!", "deferred": " ", "incoming": " "}
# C0, DEL and C1 controls shown as "?": a sender or recipient in a file that
# a user wrote into incoming/ (or a stub) must not send escape sequences to
# the terminal of whoever runs mailq.  (JSON escapes them by itself.)
_CONTROLS = {c: "?" for c in (*range(0x20), *range(0x7F, 0xA0))}


def _shown(text: str) -> str:
    return text if text.isprintable() else text.translate(_CONTROLS)


def write_text(listed: Iterable[QueueEntry], out: TextIO) -> None:
    width = QID_LEN + 2  # id, state flag, a space
    indent = " " * (width + 30)  # under the sender: size 8, space, date 19, two spaces
    count = total = 0
    lines: list[str] = []
    for e in listed:
        if not count:
            lines.append(f"{'-Queue ID-':<{width}}--Size-- ----Arrival Time---- -Sender/Recipient-------")
        count += 1
        total += e.size
        arrival = time.strftime("%a %b %e %H:%M:%S", time.localtime(e.arrival_time))
        sender = _shown(e.sender) or "MAILER-DAEMON"
        lines.append(f"{e.queue_id + _FLAGS[e.state]:<{width}}{e.size:>8} {arrival}  {sender}")
        if e.reason:
            lines.append(f"{indent[:-2]}({_shown(e.reason)})")
        lines.extend(indent + _shown(rcpt) for rcpt in e.recipients)
        lines.append("")
        if len(lines) >= 4096:  # written in blocks: flat memory, few write calls
            out.write("\n".join(lines) + "\n")
            lines.clear()
    if lines:
        out.write("\n".join(lines) + "\n")
    if not count:
        out.write("Mail queue is empty\n")
        return
    out.write(f"-- {(total + 1023) // 1024} Kbytes in {count} Request{'s' if count != 1 else ''}.\n")


def render_text(listed: Iterable[QueueEntry]) -> str:
    buf = io.StringIO()
    write_text(listed, buf)
    return buf.getvalue()


def render_json(entries: list[QueueEntry]) -> str:
    return json.dumps([dataclasses.asdict(e) for e in entries], indent=2) + "\n"


# ------------------------------------------------------------ the public summary
SUMMARY_MAGIC = "pysendmail-mailq 1"


def can_read_queue(spool: layout.Spool) -> bool:
    """True for root and the spool's owner (after drop_privileges): they list the queue itself."""
    return all(os.access(d, os.R_OK | os.X_OK) for d in (spool.queue, spool.incoming))


def _start_ticks(pid: int) -> int:
    """The process's start time in clock ticks since boot (/proc/PID/stat field 22); 0 if unknown."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            raw = fh.read()
        return int(raw[raw.rindex(b")") + 2 :].split()[19])
    except (OSError, ValueError, IndexError):
        return 0


def _summary_line(e: QueueEntry) -> str:
    return json.dumps({"id": e.queue_id, "state": e.state, "size": e.size, "time": e.arrival_time,
                       "sender": e.sender, "rcpt": e.recipients, "reason": e.reason, "next": e.next_attempt,
                       "failed": e.failed}, separators=(",", ":")) + "\n"


def publish(spool: layout.Spool, daemon_pid: int) -> bool:
    """Write public/mailq from the queue, then drop stale stubs; False when the spool has no public/.

    Run with the owner's rights only, never root's: the owner controls
    public/, so root would write and remove through paths it chooses.
    ``daemon_pid`` is the running daemon's pid (0: none), so that readers
    can say when the summary is not being kept fresh.  Streams: memory
    stays one entry whatever the queue's length.  Raises OSError or
    PysendmailError; the callers decide whether that matters.
    """
    if not os.path.isdir(spool.public):
        return False  # user mode (one user reads everything), or a spool from before public/
    scanned = time.time()
    tmp = spool.public_file(f".mailq.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", closefd=False) as out:
            ticks = _start_ticks(daemon_pid) if daemon_pid else 0
            out.write(f"{SUMMARY_MAGIC} {scanned:.3f} {daemon_pid} {ticks}\n")
            for e in entries(spool):
                out.write(_summary_line(e))
        os.fchmod(fd, 0o644)
        os.fsync(fd)  # never an empty summary after a crash: a reader would have nothing to show
    except BaseException:
        os.close(fd)
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    os.close(fd)
    os.rename(tmp, spool.summary)
    clean_stubs(spool)
    return True


def clean_stubs(spool: layout.Spool) -> None:
    """Remove every stub but those of messages still in incoming/ and owned by the stub's owner.

    The owner owns public/incoming/, so the sticky bit lets it remove any
    entry there (a directory only when empty).  What goes: stubs of
    messages picked up, deleted or quarantined; forged ones (no such
    message, or another user's).
    """
    try:
        names = os.listdir(spool.stubs)
    except OSError:
        return
    for name in names:
        path = spool.stub_file(name)
        try:
            st = os.lstat(path)
            if is_qid(name) and stat.S_ISREG(st.st_mode):
                try:
                    if os.lstat(spool.incoming_file(name)).st_uid == st.st_uid:
                        continue
                except FileNotFoundError:
                    pass
            if stat.S_ISDIR(st.st_mode):
                os.rmdir(path)
            else:
                os.unlink(path)
        except OSError:
            continue


class Published:
    """What the summary's first line says: when it was written and by whose daemon."""

    __slots__ = ("time", "daemon_pid", "daemon_alive")

    def __init__(self, when: float, daemon_pid: int, daemon_alive: bool) -> None:
        self.time = when
        self.daemon_pid = daemon_pid
        self.daemon_alive = daemon_alive


def _alive(pid: int, ticks: int) -> bool:
    """Whether the daemon that published still runs (the same process: pid and start time)."""
    if pid <= 0:
        return False
    now = _start_ticks(pid)
    if now and ticks:
        return now == ticks  # a reused pid has another start time
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process: it exists
    return True


def _summary_entries(fh: io.TextIOWrapper) -> Iterator[QueueEntry]:
    with fh:
        for line in fh:
            try:
                d = json.loads(line)
                yield QueueEntry(str(d["id"]), str(d["state"]), int(d["size"]), float(d["time"]), str(d["sender"]),
                                 [str(r) for r in d["rcpt"]], str(d["reason"]),
                                 None if d["next"] is None else float(d["next"]),
                                 {str(k): str(v) for k, v in d["failed"].items()})
            except (ValueError, KeyError, TypeError, AttributeError):
                continue  # written by the owner; a line from another version is skipped, not fatal


def _read_stub(spool: layout.Spool, name: str) -> QueueEntry | None:
    """One stub as an "incoming" entry, or None; every check names what a forger could try."""
    try:
        # O_NOFOLLOW: a symlink to a file the reader may read must not be shown;
        # O_NONBLOCK: a FIFO planted here must not hang mailq.
        fd = os.open(spool.stub_file(name),
                     os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        # One link: a hard link to someone else's stub under another id.
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1 or st.st_size > layout.STUB_MAX:
            return None
        data = os.read(fd, layout.STUB_MAX + 1)
    except OSError:
        return None
    finally:
        os.close(fd)
    try:
        env, pos, size = spoolfile.decode_envelope(data)
    except spoolfile.SpoolFormatError:
        return None
    if pos != len(data) or env.uid != st.st_uid:
        return None  # trailing bytes, or a claim to be another user
    return QueueEntry(name, "incoming", size, env.time, env.sender, list(env.recipients))


def _stub_entries(spool: layout.Spool) -> Iterator[QueueEntry]:
    try:
        names = sorted(n for n in os.listdir(spool.stubs) if is_qid(n))
    except OSError:
        return
    for name in names:
        entry = _read_stub(spool, name)
        if entry is not None:
            yield entry


_NOT_A_FILE = ("{path} is not a regular file, so the queue summary is not shown: "
               "run 'pysendmail spool init' as root to repair it")


def _check_publisher(spool: layout.Spool, fd: int) -> None:
    """Refuse a summary that someone other than the spool's owner (or root) could have written.

    spool init makes public/ 0755 and the summary 0644, both the owner's;
    a mistaken chmod or chown must not let a user publish a queue of his
    choosing to everyone else (or hide real entries from monitoring).
    """
    owner = os.lstat(spool.path).st_uid
    directory = os.lstat(spool.public)
    summary = os.fstat(fd)
    if not stat.S_ISREG(summary.st_mode):
        raise errors.ConfigError(_NOT_A_FILE.format(path=spool.summary))
    trusted = (owner, 0)
    if (not stat.S_ISDIR(directory.st_mode) or directory.st_uid not in trusted or directory.st_mode & 0o022
            or not stat.S_ISREG(summary.st_mode) or summary.st_uid not in trusted or summary.st_mode & 0o022):
        raise errors.ConfigError(
            f"{spool.public} or its mailq may be written by others than the spool's owner (uid {owner}), "
            "so the queue summary is not shown: run 'pysendmail spool init' as root to repair it"
        )


def read_public(spool: layout.Spool) -> tuple[Published, Iterator[QueueEntry]]:
    """The summary and the stubs, merged in queue-id order (the summary wins an id both list)."""
    path = spool.summary
    try:
        # O_NONBLOCK: a FIFO put in its place must not hang every user's
        # mailq (and monitoring); _check_publisher then refuses it.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_NOCTTY | os.O_CLOEXEC)
        fh = os.fdopen(fd, encoding="utf-8")
    except FileNotFoundError:
        if os.path.isdir(spool.public):
            raise errors.TempFailure(
                f"no queue summary in {path} yet, and the queue itself is readable only by root and the "
                "spool's owner: start the daemon or run 'pysendmail spool init' as root"
            ) from None
        raise errors.NoPermission(
            f"permission denied reading the queue in {spool.path}, and this spool has no public summary: "
            "run 'pysendmail spool init' as root to create it, or run mailq as root or the spool's owner"
        ) from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise errors.ConfigError(_NOT_A_FILE.format(path=path)) from None
        raise errors.NoPermission(f"cannot read the queue summary {path}: {exc.strerror}") from None
    try:
        _check_publisher(spool, fh.fileno())
    except BaseException:
        fh.close()
        raise
    words = fh.readline().split()
    try:
        if " ".join(words[:2]) != SUMMARY_MAGIC:
            raise ValueError(words[:2])
        published = Published(float(words[2]), int(words[3]), _alive(int(words[3]), int(words[4])))
    except (ValueError, IndexError):
        fh.close()
        raise errors.TempFailure(
            f"the queue summary {path} is not one this version reads: run 'pysendmail spool init' as root"
        ) from None

    def merged() -> Iterator[QueueEntry]:
        last = ""
        tagged = heapq.merge(((e.queue_id, 0, e) for e in _summary_entries(fh)),
                             ((e.queue_id, 1, e) for e in _stub_entries(spool)), key=lambda t: (t[0], t[1]))
        for qid, _rank, e in tagged:
            if qid != last:
                last = qid
                yield e

    return published, merged()
