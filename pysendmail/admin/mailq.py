"""mailq: the queue as Postfix prints it, or as JSON.

Contract:   ``collect(spool)`` returns one QueueEntry per message that
            still has recipients to deliver (incoming, active, deferred,
            held); ``render_text`` prints Postfix's layout, ending with
            "Mail queue is empty" or "-- N Kbytes in M Requests.";
            ``render_json`` the same data for scripts.
Security:   reading queue/ needs the spool owner's rights; anyone else gets
            NoPermission (exit 77) with one sentence.
See also:   Postfix mailq(1)/showq(8) output format.
"""

from __future__ import annotations

import json
import os
import time
import dataclasses
from dataclasses import dataclass, field

from pysendmail.core import errors, layout, queue, spoolfile


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


def collect(spool: layout.Spool) -> list[QueueEntry]:
    entries: list[QueueEntry] = []
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
        entries.append(
            QueueEntry(
                qid,
                msg.state,
                msg.size,
                env.time,
                env.sender,
                [env.recipients[i] for i in pending],
                msg.held or msg.reason,
                msg.due if msg.tries and not msg.held else None,
            )
        )
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
        entries.append(QueueEntry(qid, "incoming", state.size, env.time, env.sender, list(env.recipients)))
    entries.sort(key=lambda e: e.queue_id)
    return entries


_FLAGS = {"active": "*", "held": "!", "deferred": " ", "incoming": " "}


def render_text(entries: list[QueueEntry]) -> str:
    if not entries:
        return "Mail queue is empty\n"
    width = max(len(e.queue_id) for e in entries) + 2  # id, state flag, a space
    indent = " " * (width + 30)  # under the sender: size 8, space, date 19, two spaces
    lines = [f"{'-Queue ID-':<{width}}--Size-- ----Arrival Time---- -Sender/Recipient-------"]
    for e in entries:
        arrival = time.strftime("%a %b %e %H:%M:%S", time.localtime(e.arrival_time))
        sender = e.sender or "MAILER-DAEMON"
        lines.append(f"{e.queue_id + _FLAGS[e.state]:<{width}}{e.size:>8} {arrival}  {sender}")
        if e.reason:
            lines.append(f"{indent[:-2]}({e.reason})")
        lines.extend(indent + rcpt for rcpt in e.recipients)
        lines.append("")
    kbytes = (sum(e.size for e in entries) + 1023) // 1024
    n = len(entries)
    lines.append(f"-- {kbytes} Kbytes in {n} Request{'s' if n != 1 else ''}.")
    return "\n".join(lines) + "\n"


def render_json(entries: list[QueueEntry]) -> str:
    return json.dumps([dataclasses.asdict(e) for e in entries], indent=2) + "\n"
