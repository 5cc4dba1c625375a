"""A real SMTP relay on loopback for tests: aiosmtpd, trustme TLS, AUTH, faults.

``Relay(mode)`` starts a server in a thread: mode "implicit" (TLS from the
first byte, as on 465), "starttls" (587, STARTTLS required before AUTH and
MAIL) or "plain" (no TLS offered at all).  It records every accepted
transaction (envelope and the exact bytes received), every login, every
MAIL command even when refused or never followed by DATA (``mail_commands``),
every RCPT command likewise (``rcpt_commands``),
and every command word received in clear (``plaintext_commands``;
``saw_plaintext_mail`` when one was MAIL, RCPT, DATA or AUTH).  Faults
are set per test through attributes: ``rcpt_replies``, ``mail_reply``,
``data_reply`` (``mail_replies`` / ``data_replies``: the same for one
sender only), ``auth_reply``, ``stall_data``, ``drop_in_data``,
``greet_421``, ``size_limit``, ``daily_quota`` (accepted transactions per
login before ``quota_reply``; ``quota_refusals`` counts them),
``replies_once`` (end-of-data replies used once each, in order); ``users`` accepts more logins than the
default one (one relay playing several accounts).  ``PROVIDER_REPLIES``
holds the exact texts providers send, for a test to script one.
``oauth=("XOAUTH2", "OAUTHBEARER")`` also offers those mechanisms,
accepting only ``oauth_token`` (or, with ``oauth_check`` set, the tokens
that callable accepts: OAuthServer.check_access_token); ``fault_after`` = N lets the first N
transactions through before ``stall_data`` or ``drop_in_data`` applies,
and ``stalling`` is set when a DATA starts to stall (for a test that
kills the client then).  ``stall_quit`` = seconds holds the reply to QUIT
(``quitting`` is set when a QUIT arrives): a client that is closing.
``smtputf8=False`` / ``eightbitmime=False`` leave SMTPUTF8 / 8BITMIME
out of the EHLO reply.

Pipelining: ``pipelining=True`` (the default, as Gmail, Yandex and
Postfix) offers PIPELINING (RFC 2920).  aiosmtpd reads commands one line
at a time from its buffer, so pipelined commands are really processed in
order; the relay's replies are held and written together only when no
complete command is left in its input (after one turn of the event loop
for bytes already in transit), as a pipelining server flushes: each
flush is one round trip, counted in ``flushes``; each reply held for a
later command of its group counts in ``held``.  ``split_replies`` =
f(n) -> offsets cuts each flush of n bytes at those offsets into separate
writes (a short pause between them), so replies reach the client merged
and split at arbitrary byte boundaries.  ``chunking=True`` also offers
CHUNKING (RFC 3030): BDAT n [LAST] reads exactly n octets whatever the
answer; after a refused BDAT everything but RSET, NOOP, QUIT and BDAT
(whose octets are read and discarded) gets 503 until RSET (section 2: the
state is indeterminate).  ``commands`` lists every command word received
in order (RSET included), for tests of what a client sent;
``extra_after_eod`` (bytes) follows every reply to an end of data, a reply
to no command (a relay out of step, or an injection);
``inject_after_starttls`` (bytes) follows the 220 to STARTTLS in clear, as
a man in the middle would add them (RFC 3207 section 4.2).

Reply shapes: ``reply_shapes[COMMAND] = SHAPE`` (or the test marker
``@pytest.mark.relay_reply(COMMAND, SHAPE)``, which relay_factory applies)
reshapes the relay's own reply to COMMAND on the wire; the relay still does
what the reply says (a reshaped 250 to the end of data has recorded the
message).  COMMAND is EHLO, AUTH (the final reply, not a 334 challenge),
MAIL, RCPT, DATA (its 354), EOD (the reply to the end of data), RSET or
QUIT; SHAPE is one of ``REPLY_SHAPES``:
multiline (RFC 5321 4.2.1 continuation lines, the last one carrying the
code), mismatched (a continuation line with another code), huge (about
28 KiB of continuation lines), oversized (over aiosmtplib's 32 KiB bound),
drip (one byte per write), malformed (no numeric code), code-199 and
code-600 (outside 2xx-5xx), empty-text (the code alone), non-utf8 (bytes
that are not UTF-8, a NUL and an escape sequence in the text).
"""

from __future__ import annotations

import asyncio
import functools
import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import MISSING, SMTP, AuthResult, LoginPassword

USER = "robot@example.org"
PASSWORD = "s3cret-Pa55word-for-tests"


# What providers answer, verbatim from their help pages (see
# pysendmail/daemon/providers.py for the sources); multi-line where they are.
PROVIDER_REPLIES = {
    "yandex-spam": "554 5.7.1 Message rejected under suspicion of SPAM; https://ya.cc/1IrBc 1712345678-abcdEFgh",
    "gmail-daily-limit": "550-5.4.5 Daily user sending limit exceeded. For more information on Gmail\r\n"
                         "550-5.4.5 sending limits go to\r\n"
                         "550 5.4.5  https://support.google.com/a/answer/166852 a1-20020a.22 - gsmtp",
    "not-owned": "553 5.7.1 Sender address rejected: not owned by auth user.",
    "too-many-logins": "454 4.7.0 Too many login attempts, please try again later.",
    "gmail-app-password": "534-5.7.9 Application-specific password required. For more information, go to\r\n"
                          "534 5.7.9  https://support.google.com/mail/?p=InvalidSecondFactor - gsmtp",
    "ses-daily-quota": "454 Throttling failure: Daily message quota exceeded.",
    "o365-quota": "554 5.2.0 STOREDRV.Submission.Exception:SubmissionQuotaExceededException; Failed to process "
                  "message due to a permanent exception",
}


def _reshape(shape: str, response: bytes) -> bytes:
    """The bytes the relay writes for ``response`` (its last line reshaped) in ``shape``; CRLF added."""
    *before, last = response.split(b"\r\n")
    code, text = last[:3], last[4:]
    if last[3:4] == b"-" or shape == "drip":
        pass  # a continuation line of the relay's own (EHLO): only its last line is reshaped
    elif shape == "multiline":
        last = code + b"-" + text + b"\r\n" + code + b"-and the relay has more to say\r\n" + code + b" " + text
    elif shape == "mismatched":
        last = (b"554-not the final code\r\n" if code != b"554" else b"250-not the final code\r\n") + last
    elif shape in ("huge", "oversized"):
        lines = 28 if shape == "huge" else 40
        last = (code + b"-" + b"x" * 995 + b"\r\n") * lines + last
    elif shape == "malformed":
        last = b"2x0 " + text
    elif shape in ("code-199", "code-600"):
        last = shape[5:].encode() + b" " + text
    elif shape == "empty-text":
        last = code
    elif shape == "non-utf8":
        last = code + b" " + b"\xff\xfe\xc3( \x00 \x1b[2J bytes " + text
    else:
        raise ValueError(f"unknown reply shape {shape!r}; see REPLY_SHAPES")
    return b"\r\n".join(before + [last]) + b"\r\n"


REPLY_SHAPES = ("multiline", "mismatched", "huge", "oversized", "drip", "malformed", "code-199", "code-600",
                "empty-text", "non-utf8")
REPLY_COMMANDS = ("EHLO", "AUTH", "MAIL", "RCPT", "DATA", "EOD", "RSET", "QUIT")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    tls: bool
    mail_options: list[str] = field(default_factory=list)
    account: str = ""  # the login this transaction was authenticated as


def _is_tls(server: SMTP) -> bool:
    return server.transport is not None and server.transport.get_extra_info("ssl_object") is not None


class _Handler:
    def __init__(self, relay: "Relay") -> None:
        self.relay = relay

    async def _oauth(self, server: SMTP, args: list[str], mech: str) -> AuthResult:
        """XOAUTH2 / OAUTHBEARER with ``relay.oauth_token`` as the only valid token."""
        import base64

        relay = self.relay
        raw = base64.b64decode(args[1]) if len(args) > 1 else b""
        fields = dict(p.split(b"=", 1) for p in raw.split(b"\x01") if b"=" in p and not p.startswith(b"n,"))
        user = raw.split(b"a=", 1)[1].split(b",", 1)[0] if mech == "OAUTHBEARER" and b"a=" in raw else fields.get(b"user", b"")
        bearer = fields.get(b"auth", b"")
        if relay.oauth_check is not None:  # tokens of a real authorization server (tests/fakes/oauth_server.py)
            token_ok = bearer.startswith(b"Bearer ") and relay.oauth_check(bearer[7:].decode(errors="replace"))
        else:
            token_ok = bearer == f"Bearer {relay.oauth_token}".encode()
        ok = user.decode() == USER and token_ok
        with relay.cond:
            relay.oauth_logins.append((mech, ok))
            if ok:
                relay.logins += 1
            else:
                relay.failed_logins += 1
        if ok:
            return AuthResult(success=True, handled=False)
        # RFC 7628 3.2.2: the error comes as a 334 challenge; the client
        # answers it (empty or %x01) and then gets the final failure.
        await server.challenge_auth(b'{"status":"invalid_token"}')
        return AuthResult(success=False, handled=False, message="535 5.7.8 Username and token not accepted")

    async def auth_XOAUTH2(self, server, args):  # type: ignore[no-untyped-def]
        return await self._oauth(server, args, "XOAUTH2")

    async def auth_OAUTHBEARER(self, server, args):  # type: ignore[no-untyped-def]
        return await self._oauth(server, args, "OAUTHBEARER")

    async def handle_EHLO(self, server, session, envelope, hostname, responses):  # type: ignore[no-untyped-def]
        session.host_name = hostname
        if not self.relay.eightbitmime:  # a relay that takes 7-bit only (RFC 6152 not offered)
            responses = [r for r in responses if r != "250-8BITMIME"]
        if self.relay.size_param is not None:  # what the relay says after SIZE, whatever it is
            responses = [f"250-SIZE {self.relay.size_param}" if r.startswith("250-SIZE") else r for r in responses]
        extra = ["250-PIPELINING"] * self.relay.pipelining + ["250-CHUNKING"] * self.relay.chunking
        return responses[:-1] + extra + responses[-1:]

    async def handle_MAIL(self, server, session, envelope, address, mail_options):  # type: ignore[no-untyped-def]
        self.relay.saw_plaintext_mail |= not _is_tls(server) and self.relay.mode != "plain"
        with self.relay.cond:
            self.relay.mail_commands.append(address)
        if server.bdat_failed:
            return "503 5.5.1 Error: RSET required after a failed BDAT"
        reply = self.relay.mail_reply or self.relay.mail_replies.get(address)
        if reply:
            return reply
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 OK"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):  # type: ignore[no-untyped-def]
        with self.relay.cond:
            self.relay.rcpt_commands.append(address)
        if server.bdat_failed:
            return "503 5.5.1 Error: RSET required after a failed BDAT"
        reply = self.relay.rcpt_replies.get(address)
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_QUIT(self, server, session, envelope):  # type: ignore[no-untyped-def]
        self.relay.quitting.set()
        if self.relay.stall_quit:
            await asyncio.sleep(self.relay.stall_quit)
        return "221 2.0.0 Bye"

    async def handle_DATA(self, server, session, envelope):  # type: ignore[no-untyped-def]
        relay = self.relay
        faulty = len(relay.messages) >= relay.fault_after
        if relay.stall_data and faulty:
            relay.stalling.set()
            await asyncio.sleep(relay.stall_data)
            if server.transport is None or server.transport.is_closing():
                return "421 4.4.2 client gone"  # never record what nobody saw accepted
        if relay.drop_in_data and faulty:
            server.transport.close()
            return "421 4.3.0 dropped"
        reply = relay.data_reply or relay.data_replies.get(envelope.mail_from)
        if reply:
            return reply
        login = session.auth_data
        account = login.login.decode() if isinstance(login, LoginPassword) else ""
        with relay.cond:
            if relay.replies_once:  # the provider's verdict on this one submission only
                relay.refused_once.append(relay.replies_once[0])
                return relay.replies_once.pop(0)
            if relay.daily_quota and sum(1 for m in relay.messages if m.account == account) >= relay.daily_quota:
                relay.quota_refusals += 1
                return relay.quota_reply
            relay.messages.append(
                Received(envelope.mail_from, list(envelope.rcpt_tos), bytes(envelope.original_content or b""),
                         _is_tls(server), list(envelope.mail_options), account)
            )
            relay.cond.notify_all()
        return f"250 2.0.0 Ok: queued as R{len(relay.messages)}"


class _SMTP(SMTP):
    relay: "Relay"

    def __init__(self, *args: object, **kw: object) -> None:
        super().__init__(*args, **kw)  # type: ignore[arg-type]
        self._command = ""
        self._out = bytearray()  # replies held until the input has no complete command left
        self._bdat: list[bytes] = []  # the chunks of the current BDAT transaction
        self.bdat_failed = False
        # Note which command each reply answers, for reply_shapes.
        for name, method in list(self._smtp_methods.items()):
            self._smtp_methods[name] = self._noting(name, method)

    def _noting(self, name: str, method):  # type: ignore[no-untyped-def]
        @functools.wraps(method)
        async def wrapper(arg):  # type: ignore[no-untyped-def]
            self._command = name
            with self.relay.cond:
                self.relay.commands.append(name)
            if self.bdat_failed and name not in ("RSET", "NOOP", "QUIT", "BDAT"):
                await self.push("503 5.5.1 Error: RSET required after a failed BDAT")
                return None
            return await method(arg)

        return wrapper

    def _set_rset_state(self) -> None:
        super()._set_rset_state()
        self._bdat = []
        self.bdat_failed = False

    async def smtp_BDAT(self, arg: str | None) -> None:
        """RFC 3030: BDAT <size> [LAST]; the octets are read whatever the reply."""
        relay = self.relay
        if not relay.chunking:
            await self.push('500 Error: command "BDAT" not recognized')
            return
        words = (arg or "").split()
        if not (1 <= len(words) <= 2 and words[0].isdigit() and len(words[0]) <= 12
                and (len(words) == 1 or words[1].upper() == "LAST")):
            # Without a size the rest of the stream cannot be framed.
            await self.push("501 5.5.4 Syntax: BDAT size [LAST]; closing")
            self.transport.close()
            return
        size, last = int(words[0]), len(words) == 2
        limit = self.data_size_limit or 0
        kept = sum(map(len, self._bdat))
        chunk = b""
        left = size
        while left:  # read in pieces: a huge announced size must not be held at once
            piece = await self._reader.readexactly(min(left, 1 << 16))
            left -= len(piece)
            if not limit or kept + len(chunk) + len(piece) <= limit:
                chunk += piece
            else:
                chunk = b""
                kept = limit + 1
        if self.bdat_failed:
            await self.push("503 5.5.1 Error: RSET required after a failed BDAT")
            return
        problem = ""
        if not self.envelope.mail_from:
            problem = "503 5.5.1 Error: need MAIL command"
        elif not self.envelope.rcpt_tos:
            problem = "554 5.5.1 Error: no valid recipients"
        elif limit and kept + size > limit:
            problem = "552 5.3.4 Error: too much mail data"
        if problem:
            self.bdat_failed = True
            self._bdat = []
            await self.push(problem)
            return
        self._bdat.append(chunk)
        if not last:
            await self.push(f"250 2.0.0 {size} octets received")
            return
        content = b"".join(self._bdat)
        self._bdat = []
        self.envelope.content = self.envelope.original_content = content
        self._command = "DATA"  # the reply to the message, as to an end of data (reply shapes: EOD)
        status = await self._call_handler_hook("DATA")
        self._set_post_data_state()
        await self.push("250 OK" if status is MISSING else status)

    async def push(self, status) -> None:  # type: ignore[no-untyped-def]
        response = status.encode("utf-8") if isinstance(status, str) else status
        command = self._command
        if command == "DATA" and not response.startswith(b"354"):
            command = "EOD"
        shape = self.relay.reply_shapes.get(command)
        if shape is None or (command == "AUTH" and response.startswith(b"334")):
            self._out += response + b"\r\n"
        else:
            self._out += _reshape(shape, response)
        if command == "EOD":
            self._out += self.relay.extra_after_eod  # a reply nobody asked for
        if command == "STARTTLS" and response.startswith(b"220"):
            self._out += self.relay.inject_after_starttls  # in clear, before the handshake
        if shape == "drip":
            await self._flush(lambda n: list(range(1, n)))
            return
        if self.relay.pipelining and self._input_has_command():
            await asyncio.sleep(0)  # bytes already in transit join the input first
            if self._input_has_command():
                with self.relay.cond:
                    self.relay.held += 1
                return  # RFC 2920 3.2: the reply waits for the group's last command
        await self._flush(self.relay.split_replies)

    def _input_has_command(self) -> bool:
        return b"\n" in getattr(self._reader, "_buffer", b"")

    async def _flush(self, split: "Callable[[int], list[int]] | None") -> None:
        wire, self._out = bytes(self._out), bytearray()
        if not wire or self.transport is None or self.transport.is_closing():
            return
        with self.relay.cond:
            self.relay.flushes += 1
        cuts = sorted({c for c in split(len(wire)) if 0 < c < len(wire)}) if split else []
        start = 0
        for cut in [*cuts, len(wire)]:
            self._writer.write(wire[start:cut])
            await self._writer.drain()
            if cut != len(wire):
                await asyncio.sleep(0.001)  # a segment of its own
            start = cut

    def data_received(self, data: bytes) -> None:
        # Watch the wire, not the handlers: aiosmtpd refuses MAIL before
        # STARTTLS without calling handle_MAIL, so only here can a test see
        # a client that sent MAIL, RCPT, DATA or AUTH in clear.
        if not _is_tls(self):
            words = [line.split(b" ", 1)[0].split(b":", 1)[0].strip().upper().decode("ascii", "replace")
                     for line in data.split(b"\n") if line.strip()]
            with self.relay.cond:
                self.relay.plaintext_commands.extend(words)
                if self.relay.mode != "plain":
                    self.relay.saw_plaintext_mail |= bool({"MAIL", "RCPT", "DATA", "AUTH"} & set(words))
        super().data_received(data)

    async def _handle_client(self) -> None:  # type: ignore[override]
        if self.relay.greet_421:
            await self.push("421 4.3.2 Service not available, closing transmission channel")
            self.transport.close()
            return
        await super()._handle_client()


class _Controller(Controller):
    def __init__(self, relay: "Relay", **kw: object) -> None:
        self.relay = relay
        super().__init__(_Handler(relay), **kw)  # type: ignore[arg-type]

    def factory(self) -> SMTP:
        smtp = _SMTP(self.handler, **self.SMTP_kwargs)
        smtp.relay = self.relay
        return smtp


class Relay:
    def __init__(self, mode: str = "implicit", tmpdir: Path | None = None, size_limit: int = 35 * 1024 * 1024,
                 smtputf8: bool = True, password: str = PASSWORD, oauth: tuple[str, ...] = (),
                 eightbitmime: bool = True, pipelining: bool = True, chunking: bool = False) -> None:
        self.mode = mode
        self.pipelining = pipelining
        self.chunking = chunking
        self.split_replies: Callable[[int], list[int]] | None = None  # flush of n bytes -> cut offsets
        self.flushes = 0  # writes of held replies: the client's round trips
        self.held = 0  # replies held for a later command of the same group: the client pipelined
        self.size_param: str | None = None  # replaces the number in the EHLO reply's SIZE line
        self.extra_after_eod = b""  # written after each reply to an end of data: a reply to no command
        self.inject_after_starttls = b""  # written in clear right after the 220 to STARTTLS (a MITM's bytes)
        self.commands: list[str] = []  # every command word, in order
        self.eightbitmime = eightbitmime
        self.password = password
        self.messages: list[Received] = []
        self.mail_commands: list[str] = []  # every MAIL FROM address that reached the handler
        self.rcpt_commands: list[str] = []  # every RCPT TO address, accepted or refused
        self.plaintext_commands: list[str] = []  # first word of every line received in clear
        self.logins = 0
        self.oauth_token = "ya29.test-token-" + PASSWORD[::-1]
        self.oauth_logins: list[tuple[str, bool]] = []
        self.oauth_check: Callable[[str], bool] | None = None  # set: it judges tokens instead of oauth_token
        self.failed_logins = 0
        self.cond = threading.Condition()
        self.rcpt_replies: dict[str, str] = {}
        self.mail_reply: str | None = None
        self.data_reply: str | None = None
        # A provider's account: at most daily_quota accepted transactions per
        # login "today" (the relay's lifetime), then quota_reply; and
        # replies_once, answered to the next submissions' end of data, one each.
        self.daily_quota = 0
        self.quota_reply = "550 5.4.5 Daily user sending limit exceeded"
        self.quota_refusals = 0
        self.replies_once: list[str] = []
        self.refused_once: list[str] = []
        self.mail_replies: dict[str, str] = {}  # sender -> reply to its MAIL
        self.data_replies: dict[str, str] = {}  # sender -> reply to its end of data (or BDAT LAST)
        self.auth_reply: str | None = None  # answer every AUTH with this instead of checking
        self.users: dict[str, str] = {USER: password}  # login -> password
        self.logins_by_user: dict[str, int] = {}
        self.stall_data = 0.0
        self.drop_in_data = False
        self.fault_after = 0
        self.stalling = threading.Event()
        self.stall_quit = 0.0
        self.quitting = threading.Event()
        self.greet_421 = False
        self.reply_shapes: dict[str, str] = {}  # command -> shape, see _reshape
        self.saw_plaintext_mail = False
        self.ca = trustme.CA()
        cert = self.ca.issue_cert("localhost", "127.0.0.1")
        server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        cert.configure_cert(server_ctx)
        tmpdir = tmpdir or Path("/tmp")
        self.ca_file = tmpdir / f"relay-ca-{id(self)}.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        self.port = free_port()
        kw: dict[str, object] = dict(
            hostname="127.0.0.1",
            port=self.port,
            authenticator=self._authenticate,
            # aiosmtpd 1.4 counts only STARTTLS as TLS for this check; an
            # implicit-TLS socket is encrypted from the first byte anyway.
            auth_require_tls=mode == "starttls",
            data_size_limit=size_limit,
            enable_SMTPUTF8=smtputf8,
            decode_data=False,
            # OAuth2 mechanisms are offered only where a test asks for them.
            auth_exclude_mechanism=[m for m in ("XOAUTH2", "OAUTHBEARER") if m not in oauth],
        )
        if mode == "implicit":
            kw["ssl_context"] = server_ctx
        elif mode == "starttls":
            kw["tls_context"] = server_ctx
            kw["require_starttls"] = True
        self.controller = _Controller(self, **kw)

    def _authenticate(self, server, session, envelope, mechanism, auth_data):  # type: ignore[no-untyped-def]
        if self.auth_reply:
            with self.cond:
                self.failed_logins += 1
            return AuthResult(success=False, handled=False, message=self.auth_reply)
        ok = isinstance(auth_data, LoginPassword) and \
            self.users.get(auth_data.login.decode()) == auth_data.password.decode()
        with self.cond:
            if ok:
                self.logins += 1
                login = auth_data.login.decode()
                self.logins_by_user[login] = self.logins_by_user.get(login, 0) + 1
            else:
                self.failed_logins += 1
        # handled=False: aiosmtpd then answers 535 itself; its default
        # (handled=True) sends no reply at all and the client times out.
        return AuthResult(success=ok, handled=False, auth_data=auth_data if ok else None)

    def start(self) -> "Relay":
        self.controller.start()
        return self

    def stop(self) -> None:
        self.controller.stop()

    def wait_for(self, count: int, timeout: float = 30) -> list[Received]:
        with self.cond:
            if not self.cond.wait_for(lambda: len(self.messages) >= count, timeout):
                raise AssertionError(f"relay got {len(self.messages)} messages, expected {count} within {timeout} s")
            return list(self.messages)

    def config(self, password_file: Path, host: str = "localhost", extra: str = "") -> str:
        """The [relay] table that points pysendmail at this relay."""
        tls = {"implicit": "implicit", "starttls": "starttls", "plain": "none"}[self.mode]
        return (
            f'[relay]\nhost = "{host}"\nport = {self.port}\ntls = "{tls}"\nusername = "{USER}"\n'
            f'password_file = "{password_file}"\nca_file = "{self.ca_file}"\ntimeout = 10\n{extra}\n'
        )
