"""mailq: the queue as Postfix prints it, or as JSON.

Contract:   ``entries(spool)`` yields one QueueEntry per message that
            still has recipients to deliver (incoming, active, deferred,
            held), in queue-id (arrival) order, reading one file at a
            time; ``collect`` is its list.  ``write_text`` prints
            Postfix's layout as the entries come, ending with "Mail queue
            is empty" or "-- N Kbytes in M Requests." (``render_text`` is
            the same into a string); ``render_json`` the same data for
            scripts.  Listing 100,000 messages holds one entry at a time.
Security:   reading queue/ needs the spool owner's rights; anyone else gets
            NoPermission (exit 77) with one sentence.
See also:   Postfix mailq(1)/showq(8) output format.
"""

from __future__ import annotations

import dataclasses
import heapq
import io
import json
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TextIO

from pysendmail.core import errors, layout, queue, spoolfile
from pysendmail.core.qid import QID_LEN


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
            msg = queue.read_state(os.path.join(spool.queue, qid))
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


def _incoming(spool: layout.Spool) -> Iterator[QueueEntry]:
    for qid in _read_dir(spool.incoming):
        path = os.path.join(spool.incoming, qid)
        try:
            st = os.lstat(path)
            if (st.st_mode & 0o777) != layout.READY_MODE:
                continue
            state = queue.read_state(path)
        except (OSError, spoolfile.SpoolFormatError):
            continue
        env = state.envelope
        yield QueueEntry(qid, "incoming", state.size, env.time, env.sender, list(env.recipients))


def entries(spool: layout.Spool) -> Iterator[QueueEntry]:
    """Every listed message, in queue-id order: both directories' (sorted) names merged."""
    return heapq.merge(_queued(spool), _incoming(spool), key=lambda e: e.queue_id)


def collect(spool: layout.Spool) -> list[QueueEntry]:
    return list(entries(spool))


_FLAGS = {"active": "*", "held": "!", "deferred": " ", "incoming": " "}


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
        lines.append(f"{e.queue_id + _FLAGS[e.state]:<{width}}{e.size:>8} {arrival}  {e.sender or 'MAILER-DAEMON'}")
        if e.reason:
            lines.append(f"{indent[:-2]}({e.reason})")
        lines.extend(indent + rcpt for rcpt in e.recipients)
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
