"""Log lines: one per event, queue id first, in Postfix's shape.

Contract:   ``log(text)`` writes one line to stderr (journald or syslog
            catch it there) and flushes; CR and LF become spaces and any
            other control character is escaped, so one call is one line.
            ``event(qid, *parts, status=, **fields)`` formats
            ``QID: part, key=value, status=...`` in the order given; the
            ``fields`` values are passed through ``safe``.  ``safe(value)``
            is the form of any value a user or a relay controls (an
            address, a name, a reply text, a file name): every character
            that could end a field or fake another (``\\``, ``,``, ``<``,
            ``>``, ``=``, control and non-printable characters, undecodable
            bytes) becomes ``\\xNN`` (``\\uNNNN`` above U+00FF), so
            ``from=<"x>, uid=0 (root), from=<boss"@example.org>`` can never
            add a ``uid=`` field to a line.  Printable UTF-8 stays readable.
Security:   callers never pass bodies, passwords, tokens or AUTH exchanges;
            tests/qa checks that a test password never reaches a log.
            A caller that builds a part by hand (``f"to=<{rcpt}>"``) wraps
            each hostile value in ``safe``.
See also:   Postfix's qmgr/smtp log lines, which admins already grep.
"""

from __future__ import annotations

import sys

_FIELD_ENDS = frozenset('\\,<>=')


def _escape(c: str) -> str:
    code = ord(c)
    if 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8 (surrogateescape)
        code -= 0xDC00
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def safe(value: object) -> str:
    """``value`` as text that cannot end a log field or start another one."""
    text = str(value)
    if text.isprintable() and not any(c in _FIELD_ENDS for c in text):
        return text
    return "".join(_escape(c) if c in _FIELD_ENDS or not c.isprintable() else c for c in text)


def _one_line(text: str) -> str:
    text = text.replace("\r\n", " ").replace("\n", " ").replace("\r", " ")
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() or c == "\t" else _escape(c) for c in text)


def log(text: str) -> None:
    sys.stderr.write(_one_line(text) + "\n")
    sys.stderr.flush()


def event(qid: str, *parts: str, status: str | None = None, **fields: object) -> None:
    items = list(parts) + [f"{k}={safe(v)}" for k, v in fields.items()]
    if status is not None:
        items.append(f"status={status}")
    log(f"{qid}: " + ", ".join(items))
