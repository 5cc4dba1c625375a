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
            ``set_format("json")`` (``pysendmail daemon --log-format
            json``, or ``[log] format``) writes each line as one JSON
            object instead, for journald and Loki: ``time`` (RFC 3339,
            UTC), ``qid``, every field of the text line under its own key
            (``to``, ``from``, ``relay``, ``route``, ``tls``, ``delay``,
            ``tries``, ``dsn``, ``size``, ``nrcpt``, ...), ``status`` as
            its word (sent, deferred, bounced, held) and ``reply`` as the
            text in its parentheses, ``text`` for the parts that are not
            fields, ``level`` = ``warning`` for warning lines.  Values are
            the originals: ``safe`` is reversible (it escapes ``\\``
            too), so a part built as ``f"to=<{safe(rcpt)}>"`` yields the
            exact address, and JSON's own escaping keeps it on one line.
            The text format stays the default, byte for byte.
            ``add_observer(fn)`` hands every event's fields (the same
            dict) to ``fn`` as well: daemon/metrics.py counts outcomes
            from exactly what is logged.
Security:   callers never pass bodies, passwords, tokens or AUTH exchanges;
            tests/qa checks that a test password never reaches a log.
            A caller that builds a part by hand (``f"to=<{rcpt}>"``) wraps
            each hostile value in ``safe``.
See also:   Postfix's qmgr/smtp log lines, which admins already grep.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

_FIELD_ENDS = frozenset('\\,<>=')
FORMATS = ("text", "json")
_format = "text"
Record = dict[str, object]
_observers: list[Callable[[Record], None]] = []
# Values the text line carries as numbers; JSON gives them as numbers.
_NUMBERS = {"delay": float, "tries": int, "size": int, "nrcpt": int, "uid": int}


def set_format(name: str) -> None:
    """``text`` (Postfix's shape, the default) or ``json`` (one object per line)."""
    global _format
    if name not in FORMATS:
        raise ValueError(name)
    _format = name


def add_observer(fn: Callable[[Record], None]) -> None:
    """Call ``fn(fields)`` for every ``event`` (after the line is written); an observer must not raise."""
    _observers.append(fn)


def remove_observer(fn: Callable[[Record], None]) -> None:
    if fn in _observers:
        _observers.remove(fn)


def _escape(c: str) -> str:
    code = ord(c)
    if 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8 (surrogateescape)
        code -= 0xDC00
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def safe(value: object) -> str:
    """``value`` as text that cannot end a log field or start another one."""
    text = str(value)
    # Five scans in C: a generator over the characters cost more than the
    # rest of a log line (the daemon writes several per message).
    if text.isprintable() and not ("\\" in text or "," in text or "<" in text or ">" in text or "=" in text):
        return text
    return "".join(_escape(c) if c in _FIELD_ENDS or not c.isprintable() else c for c in text)


def _one_line(text: str) -> str:
    text = text.replace("\r\n", " ").replace("\n", " ").replace("\r", " ")
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() or c == "\t" else _escape(c) for c in text)


def log(text: str) -> None:
    if _format == "json":
        record: Record = {}
        if text.startswith("warning: "):
            record["level"] = "warning"
        record["text"] = text
        _write_json(record)
        return
    sys.stderr.write(_one_line(text) + "\n")
    sys.stderr.flush()


def event(qid: str, *parts: str, status: str | None = None, **fields: object) -> None:
    if _format == "text" and not _observers:
        _write_text(qid, parts, status, fields)
        return
    record = _record(qid, parts, status, fields)
    if _format == "json":
        _write_json(record)
    else:
        _write_text(qid, parts, status, fields)
    for fn in list(_observers):
        fn(record)


def _write_text(qid: str, parts: tuple[str, ...], status: str | None, fields: dict[str, object]) -> None:
    items = list(parts) + [f"{k}={safe(v)}" for k, v in fields.items()]
    if status is not None:
        items.append(f"status={status}")
    log(f"{qid}: " + ", ".join(items))


_UNESCAPE_LEN = {"x": 2, "u": 4}


def unsafe(text: str) -> str:
    """The value ``safe`` was given: ``\\xNN`` and ``\\uNNNN`` back to their characters.

    Exact for anything ``safe`` wrote (it escapes every backslash), but
    for the rare C1 controls, which come back as undecodable bytes; a
    backslash not followed by a valid escape stays as it is.
    """
    if "\\" not in text:
        return text
    out: list[str] = []
    i = 0
    while i < len(text):
        c = text[i]
        size = _UNESCAPE_LEN.get(text[i + 1], 0) if c == "\\" and i + 1 < len(text) else 0
        digits = text[i + 2 : i + 2 + size]
        if size and len(digits) == size and all(d in "0123456789abcdefABCDEF" for d in digits):
            code = int(digits, 16)
            # Above 0x7F, \xNN is what safe writes for an undecodable byte
            # (a printable Latin-1 letter is never escaped): give back the byte.
            out.append(chr(0xDC00 + code if size == 2 and code >= 0x80 else code))
            i += 2 + size
        else:
            out.append(c)
            i += 1
    return "".join(out)


def _number(key: str, value: object) -> object:
    kind = _NUMBERS.get(key)
    if kind is None or isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    try:
        return kind(str(value))
    except ValueError:
        return value


def _record(qid: str, parts: tuple[str, ...], status: str | None, fields: dict[str, object]) -> Record:
    """The fields of one event: ``key=<value>`` and ``key=value`` parts, keyword fields, status and reply."""
    record: Record = {"qid": qid}
    texts: list[str] = []
    for part in parts:
        key, eq, value = part.partition("=")
        if eq and key and key.isascii() and key.replace("_", "").isalnum():
            name = None
            if value.startswith("<") and value.endswith(">"):
                value = value[1:-1]
            elif value.endswith(")") and " (" in value:  # uid=1000 (alice): the number, then the name
                value, _, name = value[:-1].partition(" (")
            record[key] = _number(key, unsafe(value))
            if name is not None:
                record["login"] = unsafe(name)
        else:
            texts.append(part)
    for key, given in fields.items():
        record[key] = _number(key, given if isinstance(given, (int, float, bool)) else str(given))
    if status is not None:
        word, sep, reply = status.partition(" (")
        record["status"] = word
        if sep and reply.endswith(")"):
            record["reply"] = unsafe(reply[:-1])
    if texts:
        record["text"] = ", ".join(texts)
    return record


def _json_text(value: str) -> str:
    """Undecodable bytes (surrogate escapes) as \\xNN, as the text format shows them: JSON wants real characters."""
    if value.isascii() or not any(0xD800 <= ord(c) <= 0xDFFF for c in value):
        return value
    return "".join(_escape(c) if 0xD800 <= ord(c) <= 0xDFFF else c for c in value)


def _write_json(record: Record) -> None:
    import json
    import time

    now = time.time()
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now * 1000) % 1000:03d}Z"
    out: dict[str, object] = {"time": stamp}
    for key, value in record.items():
        out[key] = _json_text(value) if isinstance(value, str) else value
    # ensure_ascii=False: addresses stay readable; control characters are still escaped by JSON.
    sys.stderr.write(json.dumps(out, ensure_ascii=False, separators=(",", ":")) + "\n")
    sys.stderr.flush()
