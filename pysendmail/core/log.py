"""Log lines: one per event, queue id first, in Postfix's shape.

Contract:   ``log(text)`` writes one line to stderr (journald or syslog
            catch it there) and flushes; ``event(qid, **fields)`` formats
            ``QID: key=value, key=value`` in the order given.
Security:   callers never pass bodies, passwords, tokens or AUTH exchanges;
            tests/qa checks that a test password never reaches a log.
See also:   Postfix's qmgr/smtp log lines, which admins already grep.
"""

from __future__ import annotations

import sys


def log(text: str) -> None:
    sys.stderr.write(text.replace("\n", " ").replace("\r", " ") + "\n")
    sys.stderr.flush()


def event(qid: str, *parts: str, status: str | None = None, **fields: object) -> None:
    items = list(parts) + [f"{k}={v}" for k, v in fields.items()]
    if status is not None:
        items.append(f"status={status}")
    log(f"{qid}: " + ", ".join(items))
