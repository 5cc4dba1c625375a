"""A real SMTP relay on loopback for tests: aiosmtpd, trustme TLS, AUTH, faults.

``Relay(mode)`` starts a server in a thread: mode "implicit" (TLS from the
first byte, as on 465), "starttls" (587, STARTTLS required before AUTH and
MAIL) or "plain" (no TLS offered at all).  It records every accepted
transaction (envelope and the exact bytes received), every login, every
MAIL command even when refused or never followed by DATA (``mail_commands``),
and every command word received in clear (``plaintext_commands``;
``saw_plaintext_mail`` when one was MAIL, RCPT, DATA or AUTH).  Faults
are set per test through attributes: ``rcpt_replies``, ``mail_reply``,
``data_reply``, ``stall_data``, ``drop_in_data``, ``greet_421``,
``size_limit``.  ``smtputf8=False`` / ``eightbitmime=False`` leave
SMTPUTF8 / 8BITMIME out of the EHLO reply.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
from dataclasses import dataclass, field
from pathlib import Path

import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

USER = "robot@example.org"
PASSWORD = "s3cret-Pa55word-for-tests"


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


def _is_tls(server: SMTP) -> bool:
    return server.transport is not None and server.transport.get_extra_info("ssl_object") is not None


class _Handler:
    def __init__(self, relay: "Relay") -> None:
        self.relay = relay

    async def handle_EHLO(self, server, session, envelope, hostname, responses):  # type: ignore[no-untyped-def]
        session.host_name = hostname
        if not self.relay.eightbitmime:  # a relay that takes 7-bit only (RFC 6152 not offered)
            responses = [r for r in responses if r != "250-8BITMIME"]
        return responses

    async def handle_MAIL(self, server, session, envelope, address, mail_options):  # type: ignore[no-untyped-def]
        self.relay.saw_plaintext_mail |= not _is_tls(server) and self.relay.mode != "plain"
        with self.relay.cond:
            self.relay.mail_commands.append(address)
        if self.relay.mail_reply:
            return self.relay.mail_reply
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 OK"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):  # type: ignore[no-untyped-def]
        reply = self.relay.rcpt_replies.get(address)
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server, session, envelope):  # type: ignore[no-untyped-def]
        relay = self.relay
        if relay.stall_data:
            await asyncio.sleep(relay.stall_data)
        if relay.drop_in_data:
            server.transport.close()
            return "421 4.3.0 dropped"
        if relay.data_reply:
            return relay.data_reply
        with relay.cond:
            relay.messages.append(
                Received(envelope.mail_from, list(envelope.rcpt_tos), bytes(envelope.original_content or b""),
                         _is_tls(server), list(envelope.mail_options))
            )
            relay.cond.notify_all()
        return f"250 2.0.0 Ok: queued as R{len(relay.messages)}"


class _SMTP(SMTP):
    relay: "Relay"

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
                 smtputf8: bool = True, password: str = PASSWORD, eightbitmime: bool = True) -> None:
        self.mode = mode
        self.eightbitmime = eightbitmime
        self.password = password
        self.messages: list[Received] = []
        self.mail_commands: list[str] = []  # every MAIL FROM address that reached the handler
        self.plaintext_commands: list[str] = []  # first word of every line received in clear
        self.logins = 0
        self.failed_logins = 0
        self.cond = threading.Condition()
        self.rcpt_replies: dict[str, str] = {}
        self.mail_reply: str | None = None
        self.data_reply: str | None = None
        self.stall_data = 0.0
        self.drop_in_data = False
        self.greet_421 = False
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
        )
        if mode == "implicit":
            kw["ssl_context"] = server_ctx
        elif mode == "starttls":
            kw["tls_context"] = server_ctx
            kw["require_starttls"] = True
        self.controller = _Controller(self, **kw)

    def _authenticate(self, server, session, envelope, mechanism, auth_data):  # type: ignore[no-untyped-def]
        ok = isinstance(auth_data, LoginPassword) and auth_data.login.decode() == USER \
            and auth_data.password.decode() == self.password
        with self.cond:
            if ok:
                self.logins += 1
            else:
                self.failed_logins += 1
        # handled=False: aiosmtpd then answers 535 itself; its default
        # (handled=True) sends no reply at all and the client times out.
        return AuthResult(success=ok, handled=False)

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
