"""PIPELINING (RFC 2920) and CHUNKING (RFC 3030) for aiosmtplib: many commands per write, each reply paired with its command.

aiosmtplib reads exactly one reply per command it writes: its protocol
parses one reply out of what arrived and drops bytes that come while no
command waits, so two replies merged in one segment lose the second.  This
module extends it in three layers, each usable alone and written so that it
could be offered upstream:

``PipeliningProtocol``
    an ``aiosmtplib.SMTPProtocol`` whose reader parses *every* complete
    reply out of what arrives and hands them, in order, to the commands
    that asked for them (a FIFO of futures).  aiosmtplib's own one-command
    calls (EHLO, AUTH, STARTTLS, QUIT...) work unchanged on top of it;
    ``send(data, replies)`` writes several commands (and message content)
    in one write and returns one future per reply.
``PipeliningSMTP``
    an ``aiosmtplib.SMTP`` that talks through that protocol.  Upstream
    this would be one line (a protocol class attribute used by
    ``_create_connection``); here the fresh protocol takes the transport
    over right after the greeting (asyncio's ``BaseTransport.set_protocol``),
    before any command has been written.
``Pipeline``
    mail transactions on one such connection: ``await pipeline.send(txn)``
    from as many tasks as like, each getting exactly its own ``Replies``.
    MAIL, every RCPT and DATA go as one group; a message's content and
    end of data travel in the same write as the next transaction's group,
    so a warm connection costs one round trip per message.  With CHUNKING
    a transaction is MAIL, RCPT..., ``BDAT n LAST`` and the content in one
    write, and several transactions may be in flight at once (``depth``
    and ``max_bytes`` bound them).

Contract:   ``Pipeline.send(txn)`` returns ``Replies`` (the MAIL reply, one
            per RCPT, and the message's own final reply or None when it was
            never offered) whatever the relay's 4xx/5xx say.  It raises
            ``ReplyError`` (an ``aiosmtplib.SMTPResponseException`` naming the
            command) when the relay answered this transaction's command with
            a reply out of step (a code the command cannot have, a malformed
            or oversized reply: code -1) or with 421 (closing); every other
            transaction then in flight raises ``SMTPServerDisconnected`` and
            those never written raise ``NotSent`` (safe to retry elsewhere).
            A lost connection or ``timeout`` seconds without a reply while
            one is due fail every transaction in flight the same way.  After
            any of these the connection is closed: a pipeline never guesses
            which reply belongs to which command.
            Rules kept (RFC 2920 section 3.1, RFC 3030 section 2): DATA ends
            its group and the content goes only after a 354; when no RCPT was
            accepted, the reply to DATA or BDAT is not the message's outcome
            (``Replies.data`` is None), and after an unexpected 354 only a
            lone "." is sent; a refused DATA is followed by RSET; with BDAT,
            a transaction written while an earlier one is unsettled (or after
            one that failed) starts with RSET, since a failed BDAT leaves the
            session's state indeterminate.
Security:   every reply byte is hostile: a line is at most aiosmtplib's
            MAX_LINE_LENGTH, a reply at most MAX_RESPONSE_LENGTH, the cost
            is linear in the bytes received whatever the segmentation, and
            a reply nobody asked for closes the connection (it could
            otherwise be paired with the next command).  Bytes received
            between the 220 to STARTTLS and the TLS handshake close the
            connection (RFC 3207 section 4.2: they may be injected).
            Commands go through aiosmtplib's own address quoting and
            control-character check.
XXX:        replies carry no tag (RFC 2920): an extra reply inside a group
            shifts the pairing until the surplus shows at the group's end
            (or a code does not fit its command, e.g. 250 to DATA), and a
            transaction answered only by 250s within that group may settle
            on its neighbour's reply.  TLS keeps injected replies out; a
            relay that emits them could as well lie outright.  Tagging
            would need a server extension that does not exist.
Crashes:    nothing is stored here; a crash or a lost connection with a
            final reply outstanding leaves that message in the queue, sent
            again later (a duplicate only when the relay had accepted it).
See also:   RFC 2920 (PIPELINING), RFC 3030 (CHUNKING), RFC 5321 4.2.1
            (multi-line replies) and 4.1.1.4 (the end of data ends the
            transaction), smtp.py (the session that uses this).
"""

from __future__ import annotations

import asyncio
import collections
import functools
import re
import ssl
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import aiosmtplib
from aiosmtplib.email import quote_address
from aiosmtplib.protocol import LINE_ENDINGS_REGEX, MAX_LINE_LENGTH, PERIOD_REGEX, SMTPProtocol
from aiosmtplib.response import SMTPResponse

# What this layer takes from aiosmtplib is what 2.0 (Debian 12), 4.0
# (Debian 13) and 5.x all have: SMTPProtocol's constructor with ``loop``,
# its writer, command lock and STARTTLS, and SMTP's _create_connection.
# The connection-lost notice and the QUIT mark, which those versions do
# differently (or not at all), are kept here.
MAX_RESPONSE_LENGTH = MAX_LINE_LENGTH * 4  # a whole reply, as aiosmtplib 5.1 bounds it
COMMAND_INJECTION_REGEX = re.compile(rb"[\x00-\x1f\x7f]")  # C0 controls and DEL never go into a command


def normalize_message_line_endings(message: bytes) -> bytes:
    """CRLF for every line ending (a lone CR or LF too), and one at the end, as DATA sends it."""
    crlf = message.count(b"\r\n")
    if not (crlf == message.count(b"\n") == message.count(b"\r") and message.endswith(b"\r\n")):
        # (what the daemon queues is CRLF already: three counts in C instead of a rewrite)
        message = LINE_ENDINGS_REGEX.sub(b"\r\n", message)
        if not message.endswith(b"\r\n"):
            message += b"\r\n"
    return message


INVALID = -1  # aiosmtplib's code for a reply it could not parse (SMTPStatus.invalid_response)


class ReplyError(aiosmtplib.SMTPResponseException):
    """The relay answered ``command`` with a reply that ends the session (out of step, or 421)."""

    def __init__(self, code: int, message: str, command: str) -> None:
        super().__init__(code, message)
        self.command = command


class NotSent(aiosmtplib.SMTPServerDisconnected):
    """The pipeline broke before this transaction was written: nothing of it reached the relay."""


# ---------------------------------------------------------------- protocol
class PipeliningProtocol(SMTPProtocol):
    """An SMTPProtocol that pairs every reply with the command that asked for it, in order."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop | None = None,
        on_lost: Callable[[PipeliningProtocol], None] | None = None,
    ) -> None:
        super().__init__(loop=loop)
        self._on_lost = on_lost  # told once the connection is gone, after every waiter has its answer
        self._quit_sent = False
        self._expected: collections.deque[asyncio.Future[SMTPResponse]] = collections.deque()
        self._unclaimed: collections.deque[asyncio.Future[SMTPResponse]] = collections.deque()
        # The reply being received: its bytes (only ever one partial reply
        # is kept), where the search for a line end resumes, where the
        # current line starts, and the texts of its lines so far.
        self._pending = bytearray()
        self._scan = 0
        self._line_start = 0
        self._lines: list[bytes] = []
        self._failure: BaseException | None = None
        self.replies_received = 0  # for a caller's watchdog: changes whenever a reply arrives

    # --- asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._response_waiter = None  # aiosmtplib's single waiter: this reader never sets or reads it
        self._unclaimed.append(self._expect_one())  # the greeting

    def adopt(self, old: SMTPProtocol) -> None:
        """Take over ``old``'s transport after its greeting was read (see PipeliningSMTP)."""
        if old.transport is None or old.transport.is_closing():
            raise aiosmtplib.SMTPServerDisconnected("Connection lost")
        self.transport = old.transport
        self._over_ssl = old._over_ssl
        self._command_lock = asyncio.Lock()
        old.transport.set_protocol(self)

    def data_received(self, data: bytes) -> None:
        if self._failure is not None:
            return
        self._pending.extend(data)
        pending = self._pending
        consumed = 0
        while True:
            end = pending.find(b"\n", self._scan)
            if end == -1:
                self._scan = len(pending)
                # Bound what a line or a reply may hold before its end arrives.
                if len(pending) - self._line_start > MAX_LINE_LENGTH or len(pending) - consumed > MAX_RESPONSE_LENGTH:
                    self._fail(aiosmtplib.SMTPResponseException(INVALID, "Response too long"))
                    return
                break
            line = bytes(pending[self._line_start : end + 1])
            self._scan = self._line_start = end + 1
            if len(line) > MAX_LINE_LENGTH or end + 1 - consumed > MAX_RESPONSE_LENGTH:
                self._fail(aiosmtplib.SMTPResponseException(INVALID, "Response too long"))
                return
            code = line[:3]
            if not code.isdigit() or line[3:4] not in (b" ", b"-", b"\r", b"\n"):
                text = line.decode("utf-8", "replace").strip()
                self._fail(aiosmtplib.SMTPResponseException(INVALID, f"Malformed SMTP response line: {text}"))
                return
            self._lines.append(line[4:].strip(b" \t\r\n"))
            if line[3:4] == b"-":
                continue
            # The last line's code is the reply's, as in aiosmtplib.
            message = b"\n".join(self._lines).decode("utf-8", "surrogateescape")
            self._lines = []
            consumed = end + 1
            if not self._deliver(SMTPResponse(int(code), message)):
                return
        if consumed:
            del pending[:consumed]
            self._scan -= consumed
            self._line_start -= consumed

    def _deliver(self, response: SMTPResponse) -> bool:
        self.replies_received += 1
        while self._expected:
            waiter = self._expected.popleft()
            if not waiter.done():  # a waiter cancelled by its reader's timeout still owns its reply
                waiter.set_result(response)
            return True
        self._fail(aiosmtplib.SMTPResponseException(
            INVALID, f"reply with no command outstanding: {response.code} {response.message}"[:200]))
        return False

    def eof_received(self) -> bool:
        self._fail(aiosmtplib.SMTPServerDisconnected("Unexpected EOF received"), close=False)
        return False  # asyncio closes the transport

    def connection_lost(self, exc: Exception | None) -> None:
        if self._quit_sent and self._failure is None:
            # As aiosmtplib: a relay that closes after QUIT answered it.
            while self._expected:
                waiter = self._expected.popleft()
                if not waiter.done():
                    waiter.set_result(SMTPResponse(221, ""))
        lost = aiosmtplib.SMTPServerDisconnected("Connection lost")
        if exc is not None:
            lost.__cause__ = exc
        self._fail(lost, close=False)
        super().connection_lost(exc)
        if self._on_lost is not None:
            self._on_lost(self)

    async def execute_command(self, *args: bytes, timeout: float | None = None) -> SMTPResponse:
        if args == (b"QUIT",):
            self._quit_sent = True  # a close instead of the 221 is then the answer (see connection_lost)
        return await super().execute_command(*args, timeout=timeout)

    def _fail(self, exc: BaseException, close: bool = True) -> None:
        """Every reply still expected fails with ``exc``, and so does every later one: out of step is final."""
        if self._failure is None:
            self._failure = exc
        while self._expected:
            waiter = self._expected.popleft()
            if not waiter.done():
                waiter.set_exception(exc)
                waiter.exception()  # retrieved: nobody may await it (see aiosmtplib's _set_response_exception)
        del self._pending[:]
        self._lines = []
        self._scan = self._line_start = 0
        if close and self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    # --- reading
    def _expect_one(self) -> asyncio.Future[SMTPResponse]:
        if self._failure is not None:
            raise self._failure
        if self.transport is None or self.transport.is_closing():
            raise aiosmtplib.SMTPServerDisconnected("Connection lost")
        waiter: asyncio.Future[SMTPResponse] = self._loop.create_future()
        self._expected.append(waiter)
        return waiter

    async def read_response(self, timeout: float | None = None) -> SMTPResponse:
        """The next reply nobody has claimed yet (aiosmtplib's one-command calls use this)."""
        waiter = self._unclaimed.popleft() if self._unclaimed else self._expect_one()
        try:
            return await asyncio.wait_for(waiter, timeout)
        except (TimeoutError, asyncio.TimeoutError) as exc:
            raise aiosmtplib.SMTPReadTimeoutError("Timed out waiting for server response") from exc

    async def start_tls(
        self, tls_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> SMTPResponse:
        response = await super().start_tls(tls_context, server_hostname=server_hostname, timeout=timeout)
        if self._pending or self._lines or self._failure is not None or self._expected:
            # RFC 3207 section 4.2: the server says nothing between its 220
            # and the handshake; bytes from then could be a MITM's and
            # would be read as the first reply inside TLS.
            self._fail(aiosmtplib.SMTPResponseException(INVALID, "data received between STARTTLS and the TLS handshake"))
            raise self._failure or aiosmtplib.SMTPServerDisconnected("Connection lost")
        return response

    # --- pipelined writing
    def send(self, data: bytes, replies: int) -> list[asyncio.Future[SMTPResponse]]:
        """Write ``data`` in one write; it holds ``replies`` commands (after any message content).

        Returns one future per reply, in the order of the commands.  Must
        not be mixed with a one-command call in progress (that call's reply
        would be taken by a command of ``data``).
        """
        if self._command_lock is not None and self._command_lock.locked():
            raise RuntimeError("a command is in progress on this connection; wait for it before pipelining")
        if self._unclaimed:
            raise RuntimeError("an earlier reply has not been read")
        if self._failure is not None:
            raise self._failure
        if self.transport is None or self.transport.is_closing():
            raise aiosmtplib.SMTPServerDisconnected("Connection lost")
        waiters = [self._expect_one() for _ in range(replies)]
        self.write(data)
        return waiters

    def abort(self, exc: BaseException) -> None:
        """Fail every expected reply with ``exc`` and close the connection (a caller's timeout)."""
        self._fail(exc)

    @property
    def outstanding(self) -> int:
        """Replies expected and not yet received."""
        return len(self._expected)


class PipeliningSMTP(aiosmtplib.SMTP):
    """aiosmtplib.SMTP on a PipeliningProtocol; ``pipelining``/``chunking`` say what the server offers."""

    async def _create_connection(self, *args: Any, **kwargs: Any) -> SMTPResponse:
        # (aiosmtplib 2.0 passes no argument, later versions the timeout)
        response = await super()._create_connection(*args, **kwargs)
        old = self.protocol
        if old is not None and not isinstance(old, PipeliningProtocol):
            fresh = PipeliningProtocol(loop=self.loop, on_lost=self._protocol_lost)
            fresh.adopt(old)
            self.protocol = fresh
        return response

    def _protocol_lost(self, protocol: PipeliningProtocol) -> None:
        if protocol is self.protocol:
            self.close()

    @property
    def pipelining(self) -> bool:
        return isinstance(self.protocol, PipeliningProtocol) and self.supports_extension("pipelining")

    @property
    def chunking(self) -> bool:
        return self.pipelining and self.supports_extension("chunking")


# ---------------------------------------------------------------- transactions
@dataclass(frozen=True)
class Transaction:
    """One mail transaction: the envelope and the message (any line endings; made CRLF here)."""

    sender: str
    recipients: tuple[str, ...]
    content: bytes
    mail_options: tuple[str, ...] = ()
    encoding: str = "ascii"  # "utf-8" with SMTPUTF8


@dataclass(frozen=True)
class Replies:
    """What the relay said to one transaction.

    ``data`` is the message's own outcome: the refusal of DATA or BDAT, or
    the reply to the end of data; None when the message was never offered
    (MAIL refused, or no RCPT accepted: whatever DATA or BDAT got then is
    about the empty transaction, not the message).
    """

    mail: SMTPResponse
    rcpt: tuple[SMTPResponse, ...]
    data: SMTPResponse | None


_COMMANDS = {"rset": "RSET", "mail": "MAIL", "rcpt": "RCPT", "data": "DATA", "eod": "end of data", "bdat": "BDAT"}


def _command(*args: bytes) -> bytes:
    for arg in args:
        if COMMAND_INJECTION_REGEX.search(arg):
            raise ValueError("Command arg contains a prohibited control character")
    return b" ".join(args) + b"\r\n"


@dataclass(eq=False)
class _Job:
    txn: Transaction
    result: asyncio.Future[Replies]
    commands: bytes  # MAIL, RCPT... (DATA or BDAT added when written)
    content: bytes  # CRLF-normalised, not yet dot-stuffed
    mail: SMTPResponse | None = None
    rcpt: list[SMTPResponse] = field(default_factory=list)
    written: bool = False
    settled: bool = False

    @property
    def offered(self) -> bool:
        """MAIL and at least one RCPT accepted: the message itself is at stake."""
        return self.mail is not None and self.mail.code == 250 and any(r.code in (250, 251) for r in self.rcpt)


class Pipeline:
    """Mail transactions on one connection whose server offers PIPELINING (see the module docstring)."""

    def __init__(self, smtp: aiosmtplib.SMTP, *, chunking: bool | None = None, depth: int = 8,
                 max_bytes: int = 4 << 20, timeout: float | None = None) -> None:
        protocol = smtp.protocol
        if not isinstance(protocol, PipeliningProtocol):
            raise TypeError("a Pipeline needs a connection made by PipeliningSMTP")
        self.smtp = smtp
        self.protocol = protocol
        self.chunking = smtp.supports_extension("chunking") if chunking is None else chunking
        self.depth = max(1, depth)
        self.max_bytes = max_bytes
        self.timeout = smtp.timeout if timeout is None else timeout
        self._loop = asyncio.get_running_loop()
        self._slots = asyncio.Semaphore(self.depth)
        self._queue: collections.deque[_Job] = collections.deque()  # accepted, not yet written
        self._written: list[_Job] = []  # written, final reply not yet in
        self._data_job: _Job | None = None  # DATA written, its reply awaited: the stream's next bytes are its content
        self._rset = False  # the next group starts with RSET
        self._broken: BaseException | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._progress = -1
        self.writes = 0  # one per group written: a warm connection's round trips

    @property
    def broken(self) -> bool:
        return self._broken is not None

    @property
    def busy(self) -> int:
        """Transactions accepted and not yet settled."""
        return len(self._queue) + len(self._written)

    async def send(self, txn: Transaction) -> Replies:
        if self._broken is not None:
            raise NotSent(f"the connection was closed: {self._broken}")
        if not txn.recipients:
            raise ValueError("a transaction needs at least one recipient")
        encoding = txn.encoding
        commands = [_command(b"MAIL", b"FROM:" + quote_address(txn.sender).encode(encoding),
                             *(o.encode("ascii") for o in txn.mail_options))]
        commands += [_command(b"RCPT", b"TO:" + quote_address(r).encode(encoding)) for r in txn.recipients]
        async with self._slots:
            if self._broken is not None:
                raise NotSent(f"the connection was closed: {self._broken}")
            job = _Job(txn, self._loop.create_future(), b"".join(commands),
                       normalize_message_line_endings(txn.content))
            self._queue.append(job)
            self._pump()
            return await job.result

    # --- writing
    def _pump(self, prefix: bytes = b"", slots: list[tuple[_Job, str]] | None = None) -> None:
        """Write ``prefix`` (content and end of data, whose replies are ``slots``) and every group that may go now."""
        slots = list(slots or [])
        parts = [prefix] if prefix else []
        batch: list[_Job] = []
        if self._broken is None:
            while self._queue and self._data_job is None:
                job = self._queue[0]
                if self.chunking and self._written and sum(len(j.content) for j in self._written) + len(job.content) > self.max_bytes:
                    break  # bounded: wait for an earlier transaction to settle
                self._queue.popleft()
                if self._rset or (self.chunking and self._written):
                    parts.append(b"RSET\r\n")
                    slots.append((job, "rset"))
                    self._rset = False
                parts.append(job.commands)
                slots.append((job, "mail"))
                slots += [(job, "rcpt")] * len(job.txn.recipients)
                if self.chunking:
                    parts.append(b"BDAT %d LAST\r\n" % len(job.content))
                    parts.append(job.content)
                    slots.append((job, "bdat"))
                else:
                    parts.append(b"DATA\r\n")
                    slots.append((job, "data"))
                    self._data_job = job
                batch.append(job)
                self._written.append(job)  # unsettled from here: the next transaction's RSET counts it
        if not parts:
            return
        try:
            waiters = self.protocol.send(b"".join(parts), len(slots))
        except (aiosmtplib.SMTPException, OSError, RuntimeError) as exc:
            for job in reversed(batch):  # never written: NotSent, safe to try elsewhere
                self._written.remove(job)
                self._queue.appendleft(job)
            self._break(exc)
            return
        for job in batch:
            job.written = True
        self.writes += 1
        for waiter, (job, kind) in zip(waiters, slots):
            waiter.add_done_callback(functools.partial(self._on_reply, job, kind))
        self._arm()

    # --- reading
    def _on_reply(self, job: _Job, kind: str, waiter: asyncio.Future[SMTPResponse]) -> None:
        if self._broken is not None:
            return
        if waiter.cancelled():
            self._break(aiosmtplib.SMTPServerDisconnected("reply wait cancelled"))
            return
        exc = waiter.exception()
        if isinstance(exc, aiosmtplib.SMTPResponseException) and not isinstance(exc, ReplyError):
            exc = ReplyError(exc.code, exc.message, _COMMANDS[kind])  # unreadable: this command's reply was due
        if exc is not None:
            self._break(exc, job, kind)
            return
        reply = waiter.result()
        code = reply.code
        self._arm()
        refused = 400 <= code < 600
        if kind == "rset":
            if code != 250:  # no message's outcome: where the session stands is unknown, so it ends
                self._break(aiosmtplib.SMTPServerDisconnected(f"the relay answered RSET with {code} {reply.message}"))
            return
        if code == 421:  # RFC 5321 3.8: the relay is closing the connection
            self._break(ReplyError(code, reply.message, _COMMANDS[kind]), job, kind)
            return
        if kind == "mail":
            if code != 250 and not refused:
                self._break(ReplyError(code, reply.message, "MAIL"), job, kind)
                return
            job.mail = reply
        elif kind == "rcpt":
            if code not in (250, 251) and not refused:
                self._break(ReplyError(code, reply.message, "RCPT"), job, kind)
                return
            job.rcpt.append(reply)
        elif kind == "data":
            self._data_job = None
            if code == 354:
                # RFC 2920 3.1: content only after the 354; if nothing was
                # accepted, a lone dot ends the (empty) transaction.
                content = PERIOD_REGEX.sub(b"..", job.content) + b".\r\n" if job.offered else b".\r\n"
                self._pump(content, [(job, "eod")])
            elif refused:
                self._rset = True  # RFC 2920 3.1: a refused DATA leaves a transaction open
                self._settle(job, reply if job.offered else None)
                self._pump()
            else:
                self._break(ReplyError(code, reply.message, "DATA"), job, kind)
        elif kind in ("eod", "bdat"):
            if code != 250 and not refused:
                self._break(ReplyError(code, reply.message, _COMMANDS[kind]), job, kind)
                return
            if kind == "bdat" and code != 250:
                self._rset = True  # RFC 3030 2: the state after a failed BDAT is indeterminate
            self._settle(job, reply if job.offered else None)
            self._pump()

    def _settle(self, job: _Job, data: SMTPResponse | None) -> None:
        job.settled = True
        if job in self._written:
            self._written.remove(job)
        assert job.mail is not None
        if not job.result.done():
            job.result.set_result(Replies(job.mail, tuple(job.rcpt), data))
        if not self._written:
            self._disarm()

    def _break(self, exc: BaseException, culprit: _Job | None = None, kind: str = "") -> None:
        """Close the connection: ``culprit`` gets ``exc``, the rest in flight a disconnection, the unwritten NotSent."""
        if self._broken is not None:
            return
        self._broken = exc
        self._disarm()
        reason = str(exc) or type(exc).__name__
        for job in self._written:
            if job.result.done():
                continue
            if job is culprit or not isinstance(exc, ReplyError):
                job.result.set_exception(exc)
            else:
                job.result.set_exception(aiosmtplib.SMTPServerDisconnected(
                    f"connection closed after a reply to another transaction ({reason})"))
        for job in self._queue:
            if not job.result.done():
                job.result.set_exception(NotSent(f"connection closed before this transaction was sent ({reason})"))
        for job in [*self._written, *self._queue]:
            if not job.result.cancelled():
                job.result.exception()  # retrieved: its sender may have been cancelled
        self._written.clear()
        self._queue.clear()
        self._data_job = None
        self.protocol.abort(exc if not isinstance(exc, ReplyError) else aiosmtplib.SMTPServerDisconnected(reason))
        self.smtp.close()

    # --- the watchdog: ``timeout`` seconds without a reply while one is due
    def _arm(self) -> None:
        if self.timeout is None or self._broken is not None:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._progress = self.protocol.replies_received
        self._timer = self._loop.call_later(self.timeout, self._expire, time.monotonic())

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expire(self, since: float) -> None:
        self._timer = None
        if self._broken is not None or not self.protocol.outstanding:
            return
        if self.protocol.replies_received != self._progress:
            self._arm()
            return
        self._break(aiosmtplib.SMTPReadTimeoutError(
            f"Timed out waiting for server response ({time.monotonic() - since:.0f} s)"))
