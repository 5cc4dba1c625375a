"""``sendmail -bs``: an SMTP server on standard input and output.

Contract:   ``serve(spool, max_size, opts, rfile, wfile)`` speaks RFC 5321
            with the caller (Symfony Mailer's and Laravel's default
            transport): EHLO/HELO, MAIL, RCPT, DATA, RSET, NOOP, VRFY,
            HELP, QUIT; several messages per session; 8BITMIME, SIZE,
            PIPELINING, ENHANCEDSTATUSCODES and DSN advertised.  Each
            accepted DATA is one durable enqueue, answered 250 with its
            queue id only after the fsync.  Returns 0 at QUIT or EOF, and
            after "421 4.4.2 ... timeout exceeded" when the client sends no
            complete line (command or DATA line) within ``idle_timeout``
            seconds, or the session outlives ``session_limit`` (as
            Postfix's sendmail -bs: 421, then exit 0).
            A header section over the limits of core/rfc5322.py is
            answered 552 5.3.4 (one sentence) and the session goes on; a
            MAIL or RCPT address that is not RFC 5321 syntax, 553.
Security:   the caller is a local process that could write to incoming/
            anyway; no AUTH is offered or needed.  Lines are capped in
            length, addresses are parsed by the one shared parser; a
            silent or trickling client is cut off by the deadlines above
            (poll(2) on stdin: no signals, no asyncio).
See also:   RFC 5321 4.1 and 4.2 (replies), 4.5.3.2 (timeouts), RFC 1870 (SIZE), RFC 6152
            (8BITMIME), RFC 2920 (PIPELINING), RFC 3461 (DSN parameters).
"""

from __future__ import annotations

import os
import time

from pysendmail.core import errors, layout, rfc5322, spoolfile
from pysendmail.submit import flags

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import BinaryIO

MAX_LINE = 4096  # RFC 5321 4.5.3.1.4 says 512 for commands; be lenient, but bounded
# RFC 5321 4.5.3.2.7: a server SHOULD wait at least 5 minutes for the next
# command; Postfix's smtpd_timeout is 300 s too.  The same bound applies to
# each line of DATA (4.5.3.2.5 gives the client 3 minutes per data block).
DEFAULT_IDLE_TIMEOUT = 300
# No SMTP peer bounds a session; ours is a local process per session, so a
# client that keeps it alive with a NOOP every few minutes is stopped after
# an hour (a Symfony worker reconnects on its next message).
DEFAULT_SESSION_LIMIT = 3600


class _Session:
    def __init__(self, spool: layout.Spool, max_size: int, opts: flags.Options, wfile: BinaryIO) -> None:
        self.spool = spool
        self.max_size = max_size
        self.opts = opts
        self.wfile = wfile
        self.greeted = False
        self.reset()
        import pwd

        self.uid = os.getuid()
        try:
            self.login = pwd.getpwuid(self.uid).pw_name
        except KeyError:
            self.login = str(self.uid)

    def reset(self) -> None:
        self.sender: str | None = None
        self.recipients: list[str] = []
        self.body = ""
        self.envid = ""
        self.ret = ""
        self.notify = ""

    def reply(self, text: str) -> None:
        self.wfile.write(text.encode("utf-8", "replace") + b"\r\n")


def _params(words: list[str]) -> dict[str, str]:
    out = {}
    for word in words:
        key, _, value = word.partition("=")
        out[key.upper()] = value
    return out


def _path(arg: str, keyword: str) -> tuple[str, list[str]] | None:
    """Split "FROM:<a@b> SIZE=10" into ("a@b", ["SIZE=10"]); None if malformed."""
    if arg[: len(keyword)].upper() != keyword:
        return None
    rest = arg[len(keyword) :].lstrip()
    if rest.startswith("<"):
        end = rest.find(">")
        if end < 0:
            return None
        return rest[1:end], rest[end + 1 :].split()
    words = rest.split()
    if not words:
        return None
    return words[0], words[1:]  # lenient: "MAIL FROM: a@b" without brackets


class _Timeout(Exception):
    """The client said nothing for too long (or the session outlived its bound)."""

    def __init__(self, reply: str) -> None:
        super().__init__(reply)
        self.reply = reply


class _Input:
    """Lines from the client's fd, each within a deadline: poll(2), never a blocking read.

    The deadline covers a whole line, not each byte, so a client that
    trickles one byte at a time cannot hold the session open (Postfix's
    smtpd_per_request_deadline): it is the idle timeout from the moment we
    start waiting for the line, cut short by the session's own bound.
    Cost is linear in the bytes read: each byte is searched for LF once.
    """

    def __init__(self, rfile: BinaryIO, idle: float, session: float) -> None:
        import select

        self.rfile = rfile
        self.buf = bytearray()
        self.scanned = 0  # bytes of buf already known to hold no LF
        self.eof = False
        self.idle = idle
        self.session_end = time.monotonic() + session
        try:
            self.fd: int | None = rfile.fileno()
        except (AttributeError, OSError, ValueError):
            self.fd = None  # not a real file (an in-memory one): no waiting to bound
        if self.fd is not None:
            self.poller = select.poll()
            self.poller.register(self.fd, select.POLLIN | select.POLLHUP | select.POLLERR)

    def readline(self, limit: int, host: str) -> bytes:
        if self.fd is None:
            return self.rfile.readline(limit)
        start = time.monotonic()
        deadline = min(start + self.idle, self.session_end)
        while True:
            end = self.buf.find(b"\n", self.scanned, limit)
            if end >= 0 or len(self.buf) >= limit or self.eof:
                cut = end + 1 if end >= 0 else min(limit, len(self.buf))
                line = bytes(self.buf[:cut])
                del self.buf[:cut]
                self.scanned = 0
                return line
            self.scanned = len(self.buf)
            left = deadline - time.monotonic()
            if left <= 0:
                if self.session_end < start + self.idle:
                    raise _Timeout(f"421 4.4.2 {host} Error: session time limit exceeded")
                raise _Timeout(f"421 4.4.2 {host} Error: timeout exceeded")
            if not self.poller.poll(int(left * 1000) + 1):
                continue  # nothing came: the deadline is checked again above
            chunk = os.read(self.fd, 65536)
            if not chunk:
                self.eof = True
            self.buf += chunk


def serve(spool: layout.Spool, max_size: int, opts: flags.Options, rfile: BinaryIO, wfile: BinaryIO,
          idle_timeout: float = DEFAULT_IDLE_TIMEOUT, session_limit: float = DEFAULT_SESSION_LIMIT) -> int:
    host = os.uname().nodename
    lines = _Input(rfile, idle_timeout, session_limit)
    s = _Session(spool, max_size, opts, wfile)
    s.reply(f"220 {host} ESMTP pysendmail")
    wfile.flush()
    try:
        return _dialogue(s, lines, host, wfile)
    except _Timeout as exc:
        # Every message answered 250 is already durable in incoming/; one
        # cut off inside DATA was never acknowledged, so the client still
        # holds it.  Exit 0, as Postfix's sendmail -bs (smtpd -S) does
        # after its own 421 timeout reply.
        try:
            s.reply(exc.reply)
            wfile.flush()
        except OSError:
            pass
        return 0


def _dialogue(s: _Session, rfile: _Input, host: str, wfile: BinaryIO) -> int:
    while True:
        raw = rfile.readline(MAX_LINE + 1, host)
        if not raw:
            return 0  # EOF without QUIT: nothing pending is lost, only what had no 250
        if len(raw) > MAX_LINE and not raw.endswith(b"\n"):
            while raw and not raw.endswith(b"\n"):
                raw = rfile.readline(MAX_LINE + 1, host)
            s.reply("500 5.5.2 Line too long")
        else:
            line = raw.rstrip(b"\r\n").decode("utf-8", "surrogateescape")
            verb, _, arg = line.partition(" ")
            if _command(s, verb.upper(), arg.strip(), host, rfile) is False:
                wfile.flush()
                return 0
        # One write per reply group: over a pipe there is no Nagle delay
        # to avoid, and a PIPELINING client reads the replies in order.
        wfile.flush()


def _command(s: _Session, verb: str, arg: str, host: str, rfile: _Input) -> bool | None:
    if verb in ("EHLO", "HELO"):
        if not arg:
            s.reply(f"501 5.5.4 Syntax: {verb} hostname")
            return None
        s.reset()
        s.greeted = True
        if verb == "HELO":
            s.reply(f"250 {host}")
        else:
            s.reply(f"250-{host}")
            s.reply("250-PIPELINING")
            s.reply(f"250-SIZE {s.max_size}")
            s.reply("250-8BITMIME")
            s.reply("250-SMTPUTF8")
            s.reply("250-ENHANCEDSTATUSCODES")
            s.reply("250-DSN")
            s.reply("250 HELP")
        return None
    if verb == "MAIL":
        if s.sender is not None:
            s.reply("503 5.5.1 Error: nested MAIL command")
            return None
        parsed = _path(arg, "FROM:")
        if parsed is None:
            s.reply("501 5.5.4 Syntax: MAIL FROM:<address>")
            return None
        addr, words = parsed
        params = _params(words)
        try:
            sender = rfc5322.parse_sender(addr)
        except rfc5322.AddressError as exc:
            s.reply(f"553 5.1.7 {exc}")
            return None
        size = params.get("SIZE", "0")
        if not (size.isascii() and size.isdigit() and len(size) <= 18):
            s.reply("501 5.5.4 Bad SIZE parameter")
            return None
        if int(size) > s.max_size:
            s.reply(f"552 5.3.4 Message size exceeds the limit of {s.max_size} bytes")
            return None
        body = params.get("BODY", "").upper()
        if body not in ("", "7BIT", "8BITMIME"):
            s.reply("501 5.5.4 BODY must be 7BIT or 8BITMIME")
            return None
        s.sender = sender
        s.body = body
        s.envid = params.get("ENVID", "")
        s.ret = params.get("RET", "").upper()
        s.reply("250 2.1.0 Ok")
        return None
    if verb == "RCPT":
        if s.sender is None:
            s.reply("503 5.5.1 Error: need MAIL command")
            return None
        parsed = _path(arg, "TO:")
        if parsed is None:
            s.reply("501 5.5.4 Syntax: RCPT TO:<address>")
            return None
        addr, words = parsed
        try:
            found = rfc5322.parse_recipient_arg(addr)
        except rfc5322.AddressError as exc:
            s.reply(f"553 5.1.3 {exc}")
            return None
        if len(found) != 1:
            s.reply(f"553 5.1.3 {addr!r} is not one address")
            return None
        notify = _params(words).get("NOTIFY", "")
        if notify:
            s.notify = notify.lower()
        s.recipients.append(found[0])
        s.reply("250 2.1.5 Ok")
        return None
    if verb == "DATA":
        if s.sender is None:
            s.reply("503 5.5.1 Error: need MAIL command")
            return None
        if not s.recipients:
            s.reply("554 5.5.1 Error: no valid recipients")
            return None
        s.reply("354 End data with <CR><LF>.<CR><LF>")
        s.wfile.flush()
        _data(s, rfile, host)
        s.reset()
        return None
    if verb == "RSET":
        s.reset()
        s.reply("250 2.0.0 Ok")
        return None
    if verb == "NOOP":
        s.reply("250 2.0.0 Ok")
        return None
    if verb == "QUIT":
        s.reply("221 2.0.0 Bye")
        return False
    if verb == "VRFY":
        s.reply("252 2.0.0 Cannot VRFY user, but will accept message and attempt delivery")
        return None
    if verb == "HELP":
        s.reply("214 2.0.0 Commands: EHLO HELO MAIL RCPT DATA RSET NOOP VRFY QUIT")
        return None
    if verb in ("AUTH", "STARTTLS", "BDAT", "ETRN", "EXPN", "TURN"):
        s.reply(f"502 5.5.1 {verb} is not implemented: this is a local submission session")
        return None
    s.reply("500 5.5.2 Error: command not recognized")
    return None


def _data(s: _Session, rfile: _Input, host: str) -> None:
    lines: list[bytes] = []
    total = 0
    too_big = False
    while True:
        line = rfile.readline(s.max_size + 3, host)
        if not line:
            return  # EOF inside DATA: the client gave up; nothing is queued
        if line in (b".\r\n", b".\n"):
            break
        if line.startswith(b"."):
            line = line[1:]  # RFC 5321 4.5.2 transparency
        total += len(line)
        if total > s.max_size:
            too_big = True
            lines = []
            continue  # read on to the final dot so the session stays in step
        lines.append(line)
    message = rfc5322.normalise_newlines(b"".join(lines))
    # Counted as stored (CRLF): bare-LF lines grow, and pickup must never
    # find an accepted message over the limit.
    if too_big or len(message) > s.max_size:
        s.reply(f"552 5.3.4 Message size exceeds the limit of {s.max_size} bytes")
        return
    head, _ = rfc5322.split_message(message)
    if b"\0" in head:
        s.reply("554 5.6.0 Message headers hold a NUL byte")
        return
    why = rfc5322.header_limit_error(head)
    if why:
        s.reply(f"552 5.3.4 {why}; nothing was queued")
        return
    assert s.sender is not None  # DATA is refused before MAIL
    env = spoolfile.Envelope(
        s.sender,
        list(s.recipients),
        uid=s.uid,
        login=s.login,
        time=time.time(),
        fullname=s.opts.fullname,
        envid=s.envid,
        notify=s.notify,
        ret=s.ret,
        body=s.body or ("7BIT" if message.isascii() else "8BITMIME"),
    )
    try:
        qid = layout.enqueue(s.spool, env, message)
    except errors.TempFailure as exc:
        s.reply(f"451 4.3.0 {exc}")
        return
    except errors.PysendmailError as exc:
        s.reply(f"554 5.3.0 {exc}")
        return
    s.reply(f"250 2.0.0 Ok: queued as {qid}")
