"""The spool file format: one envelope, one message, an end record, state.

Contract:   ``encode(env, message)`` gives the bytes of a spool file;
            ``decode(data)`` gives ``(Envelope, message, records)`` or raises
            SpoolFormatError.  The same format serves incoming/ (written by
            the submitter) and queue/ (written by the daemon, which then
            appends state records after the end record).  ``Envelope.replace``
            is the one way to derive an envelope from another (cleanup, qmgr).
Security:   decode() reads files that any local user could have written
            into incoming/: it never trusts a length it has not checked
            against the data, and it refuses unknown record names.
Crashes:    a file without its end record, or whose end record disagrees
            with the message length, is incomplete and refused.  A state
            record without its final newline was torn by a crash and is
            ignored (the attempt it describes is simply made again).
See also:   Postfix's record-type queue files (the end record, the ready
            mode bit); ../shared/DESIGN.md "Data flow".

Layout (version 1), every line ends with LF, values are UTF-8 without CR,
LF or NUL::

    pysendmail-spool 1
    sender <addr>            empty value: the null sender <>
    rcpt <addr>              once per envelope recipient, in order
    fullname <text>          -F, optional
    uid <n>                  submitting uid (checked against the file owner)
    login <name>             submitting login name, optional
    time <seconds>           arrival time, decimal
    envid <text>             -V, optional       notify <text>   -N, optional
    ret <FULL|HDRS>          -R, optional       body <7BIT|8BITMIME>
    message <n>
    <n octets of message, lines ending in CRLF>
    end <n>
    done <i> <time> <text>       recipient i accepted (queue files only)
    failed <i> <time> <text>     recipient i failed permanently
    deferred <time> <due> <text> an attempt failed; next try at <due>
    hold <time> <text> / release <time>
"""

from __future__ import annotations

MAGIC = b"pysendmail-spool 1\n"

_TEXT_KEYS = ("fullname", "login", "envid", "notify", "ret", "body")


class SpoolFormatError(ValueError):
    """A spool file that is not a complete, well-formed version 1 file."""


class Envelope:
    """Who sends to whom, and under which options; never the headers."""

    __slots__ = ("sender", "recipients", "fullname", "uid", "login", "time", "envid", "notify", "ret", "body")

    def __init__(
        self,
        sender: str,
        recipients: list[str],
        *,
        uid: int,
        time: float,
        fullname: str = "",
        login: str = "",
        envid: str = "",
        notify: str = "",
        ret: str = "",
        body: str = "",
    ) -> None:
        self.sender = sender  # "" is the null sender <>
        self.recipients = recipients
        self.fullname = fullname
        self.uid = uid
        self.login = login
        self.time = time
        self.envid = envid
        self.notify = notify
        self.ret = ret
        self.body = body

    def __repr__(self) -> str:
        return f"Envelope(sender={self.sender!r}, recipients={self.recipients!r}, uid={self.uid})"

    def replace(self, *, sender: str | None = None, recipients: list[str] | None = None, uid: int | None = None,
                login: str | None = None, body: str | None = None) -> Envelope:
        """A copy with the given fields changed (recipients copied when not given); the others kept."""
        out = Envelope.__new__(Envelope)
        for slot in Envelope.__slots__:
            setattr(out, slot, getattr(self, slot))
        out.recipients = list(self.recipients) if recipients is None else recipients
        if sender is not None:
            out.sender = sender
        if uid is not None:
            out.uid = uid
        if login is not None:
            out.login = login
        if body is not None:
            out.body = body
        return out


def _check_value(key: str, value: str) -> bytes:
    raw = value.encode("utf-8", "surrogateescape")
    if b"\n" in raw or b"\r" in raw or b"\0" in raw:
        raise SpoolFormatError(f"{key} value {value!r} holds a line break or NUL")
    return raw


def encode_head(env: Envelope, message_size: int) -> bytes:
    """Everything that precedes the message octets."""
    out = [MAGIC, b"sender " + _check_value("sender", env.sender) + b"\n"]
    for rcpt in env.recipients:
        out.append(b"rcpt " + _check_value("rcpt", rcpt) + b"\n")
    out.append(b"uid %d\n" % env.uid)
    out.append(b"time %.6f\n" % env.time)
    for key in _TEXT_KEYS:
        value = getattr(env, key)
        if value:
            out.append(key.encode() + b" " + _check_value(key, value) + b"\n")
    out.append(b"message %d\n" % message_size)
    return b"".join(out)


def end_record(message_size: int) -> bytes:
    return b"\nend %d\n" % message_size


def encode(env: Envelope, message: bytes) -> bytes:
    return encode_head(env, len(message)) + message + end_record(len(message))


class Record:
    """One state record appended after the end record of a queue file."""

    __slots__ = ("kind", "fields")

    def __init__(self, kind: str, fields: list[str]) -> None:
        self.kind = kind
        self.fields = fields

    def __repr__(self) -> str:
        return f"Record({self.kind!r}, {self.fields!r})"


_RECORD_ARITY = {"done": 3, "failed": 3, "deferred": 3, "hold": 2, "release": 1}


def encode_record(kind: str, *fields: object) -> bytes:
    if kind not in _RECORD_ARITY:
        raise ValueError(f"unknown record kind {kind!r}")
    text = " ".join(str(f) for f in fields)
    return kind.encode() + b" " + _check_value(kind, text) + b"\n"


def _int(key: str, raw: bytes) -> int:
    if not raw.isdigit() or len(raw) > 18:
        raise SpoolFormatError(f"{key} is not a number: {raw[:40]!r}")
    return int(raw)


def _float(key: str, raw: bytes) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise SpoolFormatError(f"{key} is not a number: {raw[:40]!r}") from None
    if not 0 <= value < 1e11:
        raise SpoolFormatError(f"{key} is out of range: {raw[:40]!r}")
    return value


def decode(data: bytes) -> tuple[Envelope, bytes, list[Record]]:
    """Parse a whole spool file; raise SpoolFormatError if it is not one."""
    env, pos, size = decode_envelope(data)
    end = end_record(size)
    if data[pos + size : pos + size + len(end)] != end:
        raise SpoolFormatError("end record missing or wrong: the file is incomplete")
    return env, data[pos : pos + size], decode_records(data[pos + size + len(end) :])


def decode_envelope(data: bytes) -> tuple[Envelope, int, int]:
    """(envelope, offset of the message, message size) from a file's head."""
    if not data.startswith(MAGIC):
        raise SpoolFormatError("not a pysendmail spool file (bad first line)")
    pos = len(MAGIC)
    sender: str | None = None
    recipients: list[str] = []
    uid: int | None = None
    arrival: float | None = None
    text: dict[str, str] = {}
    while True:
        eol = data.find(b"\n", pos)
        if eol < 0:
            raise SpoolFormatError("envelope is cut short")
        line = data[pos:eol]
        pos = eol + 1
        key, _, value = line.partition(b" ")
        if b"\r" in value or b"\0" in value:
            raise SpoolFormatError("envelope value holds CR or NUL")
        if key == b"message":
            size = _int("message", value)
            break
        try:
            sval = value.decode("utf-8")
        except UnicodeDecodeError:
            raise SpoolFormatError(f"{key.decode('ascii', 'replace')} is not UTF-8") from None
        if key == b"sender":
            if sender is not None:
                raise SpoolFormatError("two sender records")
            sender = sval
        elif key == b"rcpt":
            recipients.append(sval)
        elif key == b"uid":
            uid = _int("uid", value)
        elif key == b"time":
            arrival = _float("time", value)
        elif key.decode("ascii", "replace") in _TEXT_KEYS:
            text[key.decode()] = sval
        else:
            raise SpoolFormatError(f"unknown envelope record {key[:20]!r}")
    if sender is None or uid is None or arrival is None:
        raise SpoolFormatError("envelope lacks sender, uid or time")
    return Envelope(sender, recipients, uid=uid, time=arrival, **text), pos, size


def decode_records(tail: bytes) -> list[Record]:
    """State records after the end record; a torn last one is ignored."""
    records = []
    for line in tail.split(b"\n")[:-1]:  # the last piece lacks its newline: torn or empty
        kind, _, rest = line.partition(b" ")
        name = kind.decode("ascii", "replace")
        arity = _RECORD_ARITY.get(name)
        if arity is None:
            raise SpoolFormatError(f"unknown state record {kind[:20]!r}")
        fields = rest.decode("utf-8", "replace").split(" ", arity - 1)
        if len(fields) < arity:
            fields += [""] * (arity - len(fields))
        records.append(Record(name, fields))
    return records
