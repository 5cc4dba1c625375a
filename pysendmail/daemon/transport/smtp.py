"""The relay transport: authenticated SMTP over TLS, the one aiosmtplib user.

Contract:   ``SmtpTransport(relay, helo)`` delivers queued messages through
            the configured relay: implicit TLS (465) or STARTTLS (587),
            certificates verified (system store plus ``ca_file``, optional
            SHA-256 pin), AUTH PLAIN/LOGIN/OAUTHBEARER/XOAUTH2, a pool of at
            most ``pool_size`` authenticated connections reused across
            messages (one login each; a provider's published connection
            limit, providers.Preset.max_connections, caps pool_size).  When the relay offers PIPELINING
            (RFC 2920), a connection carries up to PIPELINE_DEPTH concurrent
            ``deliver`` calls, their transactions pipelined (pipelining.py:
            one round trip per message on a warm connection; with CHUNKING,
            several messages in flight); ``concurrency`` says how many
            ``deliver`` calls are worth running at once.  Without it, one
            delivery per connection, each command waiting for its reply.
            ``deliver`` returns one Result per recipient and never raises
            for a relay problem.  One job: the SMTP session.  A failure of the whole
            route (refused login, a provider's pause, no connection) is
            reported to the route's ``health`` (the RouteHealth seam,
            routing/route.py keeps the marks and logs them), and a login
            that works is reported too (it ends the hold's backoff).  The
            caller passes at most max_recipients_per_message recipients
            (routing/router.py chunks, once).  The password and token
            commands run in a worker thread, not on the event loop.
Security:   no plaintext fallback: a STARTTLS relay that does not offer
            STARTTLS is an error, never a reason to continue in clear;
            ``tls = "none"`` is refused for anything but loopback; the
            password and token never reach a log or an exception text.
See also:   pipelining.py (RFC 2920, RFC 3030), RFC 5321, RFC 3207 (STARTTLS), RFC 8314 (implicit TLS), RFC 4954
            (AUTH), RFC 7628 (OAUTHBEARER), RFC 1870 (SIZE), RFC 6531 (SMTPUTF8); Google's and
            Microsoft's XOAUTH2 documentation.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import ipaddress
import ssl
from typing import Protocol

import aiosmtplib

from pysendmail.core import log, rfc5322, trust
from pysendmail.core.clock import SYSTEM, Clock
from pysendmail.core.errors import ConfigError
from pysendmail.core.queue import QueuedMessage
from pysendmail.daemon import oauth, outcome, secrets, wire
from pysendmail.daemon.routing.settings import Relay
from pysendmail.daemon.providers import BOUNCE, HOLD_MESSAGE, HOLD_ROUTE, PAUSE, PRESETS
from pysendmail.daemon.transport.base import DEFERRED, FAILED, HELD, SENT, Result, one_line
from pysendmail.daemon.transport.pipelining import NotSent, Pipeline, PipeliningSMTP, ReplyError, Transaction

TYPE_CHECKING = False
if TYPE_CHECKING:
    from pysendmail.daemon.dkim import Signer
    from pysendmail.daemon.oauth import TokenSource

DEFAULT_PORTS = {"implicit": 465, "starttls": 587, "none": 25}
# Deliveries sharing one pipelining connection at most, and how many it
# takes before another connection opens: one transaction waiting for its
# replies and the next one ready keep the pipe full.
PIPELINE_DEPTH, PIPELINE_FILL = 8, 2
_NETWORK_ERRORS = (aiosmtplib.SMTPException, OSError, asyncio.TimeoutError, ssl.SSLError, EOFError)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class RelayError(Exception):
    """A failure of the connection or session, for every recipient at once."""

    def __init__(self, text: str, status: str = DEFERRED, dsn: str = "4.4.1", hold: bool = False,
                 pause: float = 0.0, kind: str = "") -> None:
        text = one_line(text)  # it reaches logs, routes.json and status: one printable line
        super().__init__(text)
        self.text = text
        self.status = status
        self.dsn = dsn
        self.hold = hold or pause > 0
        self.pause = pause  # a provider's window (quota, block): the route waits this long, no backoff
        self.kind = kind


class RouteHealth(Protocol):
    """Where the session reports on its route (routing/route.py Route)."""

    def failed(self, exc: RelayError) -> None: ...

    def logged_in(self) -> None: ...


class _NoHealth:
    """For a session built only to check its settings ('pysendmail config check')."""

    def failed(self, exc: RelayError) -> None:
        return None

    def logged_in(self) -> None:
        return None


class _Conn:
    def __init__(self, smtp: aiosmtplib.SMTP, peer: str, tls_version: str, now: float,
                 pipeline: Pipeline | None = None) -> None:
        self.smtp = smtp
        self.pipeline = pipeline  # None: the relay does not pipeline, one delivery at a time
        self.users = 0  # deliveries using it now
        self.unhealthy = False  # closed when its last user leaves
        self.peer = peer
        self.tls_version = tls_version
        self.last_used = now
        ext = smtp.esmtp_extensions
        size = ext.get("size", "")
        # The relay's number, when it is one: ASCII digits ("²" is a digit to isdigit(), not to int()),
        # and few enough of them (int() refuses over 4300).
        self.max_size = int(size) if size.isascii() and size.isdigit() and len(size) <= 18 else 0
        self.eightbit = "8bitmime" in ext
        self.smtputf8 = "smtputf8" in ext
        self.messages = 0

    def usable(self) -> bool:
        return (not self.unhealthy and self.smtp.is_connected
                and (self.pipeline is None or not self.pipeline.broken))


class SmtpTransport:
    # 'pysendmail test' puts a tracing one (plain aiosmtplib.SMTP, so one command at a time) here
    smtp_class: type[aiosmtplib.SMTP] = PipeliningSMTP

    def __init__(self, relay: dict[str, object], helo: str, name: str = "default",
                 provider: str | None = None, *, health: RouteHealth | None = None, clock: Clock = SYSTEM,
                 typed: Relay | None = None) -> None:
        self.settings = relay  # for secrets.py, which reads the password and token sources
        typed = typed or Relay.from_values(relay)
        self.health: RouteHealth = health or _NoHealth()
        self.clock = clock
        self.name = name
        self.where = "relay" if name == "default" else f"relay.{name}"
        self.provider = provider
        self.tls = typed.tls
        if not typed.host:
            raise ConfigError("relay.host is not set: name the relay's host name (or a provider)")
        self.host = typed.host
        self.port = typed.port or DEFAULT_PORTS[self.tls]
        if self.tls == "none" and not is_loopback(self.host):
            raise ConfigError(
                f"relay.tls = \"none\" is only allowed to a loopback address, not {self.host}: "
                "use implicit (465) or starttls (587)"
            )
        self.username = typed.username
        self.helo = helo
        self.timeout = float(typed.timeout)
        self.pool_size = max(1, typed.pool_size)
        preset = PRESETS.get(provider) if provider else None
        if preset is not None and preset.max_connections:
            # More than the provider takes only earns refusals ("432 4.3.2" at Microsoft).
            self.pool_size = min(self.pool_size, preset.max_connections)
        self.concurrency = self.pool_size * PIPELINE_DEPTH  # deliveries worth running at once (queued if not)
        self.max_rcpt = typed.max_recipients_per_message
        self.idle_timeout = float(typed.idle_timeout)
        fingerprint = typed.tls_fingerprint
        self.fingerprint = fingerprint.replace(":", "").lower() if fingerprint else None
        self.context = ssl.create_default_context()
        if typed.ca_file:
            # A trust anchor someone else can rewrite lets them stand in
            # for the relay and read the password (core/trust.py).
            problem = trust.named_file(typed.ca_file, f"{self.where}.ca_file")
            if problem:
                raise ConfigError(problem)
            try:
                self.context.load_verify_locations(cafile=typed.ca_file)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(f"relay.ca_file {typed.ca_file} cannot be loaded: {exc}") from None
        self.relay = f"{self.host}:{self.port}"
        self.tls_version = ""
        self._idle: list[_Conn] = []  # open, no delivery on it
        self._busy: list[_Conn] = []  # open, carrying deliveries
        self._opening = 0
        self._changed: asyncio.Event | None = None  # set (and replaced) when a connection frees up or fails to open
        self.signer: Signer | None = None  # the [[dkim]] keys, set by the queue manager

    # ------------------------------------------------------------ connections
    async def _open(self) -> _Conn:
        implicit = self.tls == "implicit"
        smtp = self.smtp_class(
            hostname=self.host,
            port=self.port,
            use_tls=implicit,
            start_tls=False,  # we decide, and refuse to continue without it
            tls_context=self.context if implicit else None,
            local_hostname=self.helo,
            timeout=self.timeout,
        )
        try:
            await smtp.connect()
            await smtp.ehlo()
            if self.tls == "starttls":
                if not smtp.supports_extension("starttls"):
                    raise RelayError(f"relay {self.host} does not offer STARTTLS; refusing to send in plaintext")
                await smtp.starttls(tls_context=self.context)
                await smtp.ehlo()
            tls_version, peer = self._check_peer(smtp)
            await self._authenticate(smtp)
            pipelined = isinstance(smtp, PipeliningSMTP) and smtp.pipelining
            pipeline = Pipeline(smtp, depth=PIPELINE_DEPTH, timeout=self.timeout) if pipelined else None
        except BaseException:
            smtp.close()
            raise
        return _Conn(smtp, peer, tls_version, self.clock.monotonic(), pipeline)

    def _check_peer(self, smtp: aiosmtplib.SMTP) -> tuple[str, str]:
        transport = smtp.transport
        peername = transport.get_extra_info("peername") if transport else None
        peer = f"{self.host}[{peername[0]}]:{peername[1]}" if peername else self.relay
        sslobj = transport.get_extra_info("ssl_object") if transport else None
        if sslobj is None:
            if self.tls != "none":
                raise RelayError(f"relay {self.host}: the connection is not encrypted; refusing to go on")
            return "none", peer
        if self.fingerprint:
            der = sslobj.getpeercert(binary_form=True) or b""
            seen = hashlib.sha256(der).hexdigest()
            if seen != self.fingerprint:
                raise RelayError(
                    f"relay {self.host}: certificate fingerprint {seen} does not match relay.tls_fingerprint"
                )
        return str(sslobj.version() or "TLS"), peer

    async def _authenticate(self, smtp: aiosmtplib.SMTP) -> None:
        if not self.username:
            return
        offered = smtp.esmtp_extensions.get("auth", "").lower().split()
        # A password_command or oauth_token_command may take seconds: not on the event loop.
        token = await asyncio.to_thread(secrets.oauth_token, self.settings, self.where)
        try:
            if token is not None:
                await self._authenticate_oauth(smtp, offered, token)
                return
            source = oauth.source(self.settings, self.where, self.name, self.provider)
            if source is not None:
                await self._authenticate_refreshing(smtp, offered, source)
                return
            password = await asyncio.to_thread(secrets.password, self.settings, self.where, self.name)
            if password is None:
                raise RelayError(
                    f"{self.where}.username is set but no password: set {self.where}.password_file or "
                    f"{self.where}.password_command",
                    hold=True,
                )
            if not offered:
                raise RelayError(f"relay {self.host} does not offer AUTH after TLS", hold=True)
            mech = str(self.settings.get("auth") or "auto").lower()
            if mech == "auto":
                mech = "plain" if "plain" in offered else "login" if "login" in offered else ""
            if mech == "plain":
                await smtp.auth_plain(self.username, password)
            elif mech == "login":
                await smtp.auth_login(self.username, password)
            else:
                raise RelayError(f"relay {self.host} offers AUTH {' '.join(offered)}, none of which pysendmail speaks", hold=True)
        except aiosmtplib.SMTPResponseException as exc:
            found = outcome.verdict(self.provider, exc.code, outcome.reply_text(exc.code, exc.message), "auth")
            reply = outcome.with_hint(outcome.reply_text(exc.code, exc.message), found)
            if found is not None:
                reply = f"{found.kind}: {reply}"
            if found is not None and found.action == PAUSE:
                raise RelayError(f"authentication as {self.username} refused: {reply}", pause=found.seconds,
                                 kind=found.kind) from None
            if outcome.is_auth_failure(exc.code, exc.message, "auth") or (found and found.action == HOLD_ROUTE):
                raise RelayError(f"authentication as {self.username} refused: {reply}", hold=True,
                                 kind=found.kind if found else "auth-failed") from None
            raise
        except ConfigError as exc:
            raise RelayError(str(exc), hold=True) from None

    async def _authenticate_refreshing(self, smtp: aiosmtplib.SMTP, offered: list[str], source: TokenSource) -> None:
        """auth = "oauth2": the daemon's own token (daemon/oauth.py), refreshed off the event loop.

        A refused token that was not fresh may have expired early (revoked
        sessions, clock skew): one forced refresh and one more AUTH on the
        same session (RFC 4954 allows it), never more per failure.  A
        refused refresh token (invalid_grant) holds the route with the
        command that logs in again; a token endpoint that cannot be
        reached defers like a relay that cannot be.
        """
        from pysendmail.daemon.oauth import LoginNeeded, RefreshFailed

        prefer = source.settings.mechanism
        try:
            token, fresh = await source.token()
            try:
                await self._authenticate_oauth(smtp, offered, token, prefer)
            except aiosmtplib.SMTPResponseException as exc:
                if fresh or not 500 <= exc.code < 600:
                    raise
                log.log(f"relay {self.host}: OAuth2 token refused ({exc.code}); refreshing it once")
                token, _ = await source.token(force=True)
                await self._authenticate_oauth(smtp, offered, token, prefer)
        except LoginNeeded as exc:
            raise RelayError(str(exc), hold=True, kind="oauth-login-needed") from None
        except RefreshFailed as exc:
            raise RelayError(str(exc), dsn="4.7.0") from None

    async def _authenticate_oauth(self, smtp: aiosmtplib.SMTP, offered: list[str], token: str,
                                  prefer: str = "auto") -> None:
        """AUTH OAUTHBEARER (RFC 7628) or XOAUTH2 (Google's and Microsoft's older form).

        The token comes fresh from ``oauth_token_command`` for every login
        (secrets.oauth_token), so an expired one is never offered twice:
        the command is where caching and refreshing belong, as with
        msmtp's passwordeval.  A refused token gets a 334 with a base64
        JSON error; the client must answer (an empty line for XOAUTH2,
        %x01 for OAUTHBEARER) to receive the final 5xx.
        """
        wanted = str(self.settings.get("auth") or "auto").lower()
        if wanted == "oauth2":
            wanted = prefer  # the provider's documented mechanism (oauth.ENDPOINTS), auto for custom
        if wanted in ("oauthbearer", "xoauth2"):
            mech = wanted if wanted in offered else ""
        else:
            mech = "oauthbearer" if "oauthbearer" in offered else "xoauth2" if "xoauth2" in offered else ""
        if not mech:
            want = wanted.upper() if wanted in ("oauthbearer", "xoauth2") else "OAUTHBEARER or XOAUTH2"
            raise RelayError(
                f"relay {self.host} does not offer AUTH {want} (it offers {' '.join(offered).upper() or 'no AUTH'}); "
                "an OAuth2 token needs one of them",
                hold=True,
            )
        if mech == "oauthbearer":
            raw = f"n,a={_saslname(self.username or '')},\x01host={self.host}\x01port={self.port}\x01" \
                  f"auth=Bearer {token}\x01\x01"
            abort = base64.b64encode(b"\x01")
        else:
            raw = f"user={self.username}\x01auth=Bearer {token}\x01\x01"
            abort = b""
        resp = await smtp.execute_command(b"AUTH", mech.upper().encode(), base64.b64encode(raw.encode()))
        if resp.code == 334:
            resp = await smtp.execute_command(abort)
        if resp.code != 235:
            raise aiosmtplib.SMTPAuthenticationError(resp.code, resp.message)

    async def _acquire(self) -> tuple[_Conn, bool]:
        """A connection for one delivery, and whether it sat idle after carrying mail (the relay may have closed it).

        In order: an idle connection; a pipelining one with fewer than
        PIPELINE_FILL deliveries; a new one while fewer than pool_size are
        open or opening; a pipelining one with fewer than PIPELINE_DEPTH;
        else wait until one of these holds.
        """
        while True:
            now = self.clock.monotonic()
            while self._idle:
                conn = self._idle.pop()
                if now - conn.last_used < self.idle_timeout and conn.usable():
                    return self._use(conn), True
                await self._quit(conn)
            shared = [c for c in self._busy if c.pipeline is not None and c.usable()]
            best = min(shared, key=lambda c: c.users, default=None)
            if best is not None and best.users < PIPELINE_FILL:
                return self._use(best), False
            if len(self._busy) + len(self._idle) + self._opening < self.pool_size:
                break
            if best is not None and best.users < PIPELINE_DEPTH:
                return self._use(best), False
            if self._changed is None:
                self._changed = asyncio.Event()
            await self._changed.wait()
        self._opening += 1
        try:
            conn = await self._open()
        finally:
            self._opening -= 1
            self._notify()  # a failed open frees its place in the pool
        return self._use(conn), False

    def _use(self, conn: _Conn) -> _Conn:
        if conn.users == 0:
            self._busy.append(conn)
        conn.users += 1
        return conn

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    def _release(self, conn: _Conn, healthy: bool) -> None:
        conn.last_used = self.clock.monotonic()
        conn.unhealthy |= not healthy
        conn.users -= 1
        if conn.users == 0:
            self._busy.remove(conn)
            if conn.usable():
                self._idle.append(conn)
            else:
                conn.smtp.close()
        self._notify()

    async def _quit(self, conn: _Conn) -> None:
        try:
            await asyncio.wait_for(conn.smtp.quit(), 5)
        except (*_NETWORK_ERRORS, asyncio.CancelledError):
            conn.smtp.close()

    async def close_idle(self, older_than: float = 0.0) -> None:
        now = self.clock.monotonic()
        self._notify()  # a delivery waiting for a connection looks again
        keep = []
        for conn in self._idle:
            if now - conn.last_used >= older_than:
                await self._quit(conn)
            else:
                keep.append(conn)
        self._idle = keep

    async def close(self) -> None:
        await self.close_idle()

    def has_idle(self) -> bool:
        return bool(self._idle)

    # ------------------------------------------------------------ delivery
    async def deliver(self, msg: QueuedMessage, indices: list[int], *, header_from: str | None = None) -> list[Result]:
        """One transaction for ``indices`` (at most max_recipients_per_message of them)."""
        env = msg.envelope
        needs_utf8 = not (env.sender.isascii() and all(env.recipients[i].isascii() for i in indices))
        results: dict[int, Result] = {}
        for attempt in (1, 2):
            try:
                conn, reused = await self._acquire()
            except RelayError as exc:
                return self._route_failure(exc, indices)
            except _NETWORK_ERRORS as exc:
                return self._route_failure(RelayError(f"cannot connect to {self.relay}: {_describe(exc)}"), indices)
            self.health.logged_in()
            self.relay, self.tls_version = conn.peer, conn.tls_version
            healthy = False
            try:
                if conn.max_size and msg.size > conn.max_size:
                    text = f"message of {msg.size} bytes exceeds the relay's size limit of {conn.max_size} bytes"
                    healthy = True
                    return [Result(i, FAILED, "5.3.4", text) for i in indices]
                if needs_utf8 and not conn.smtputf8:
                    ascii_msg = _idn_to_ascii(msg, indices)
                    if ascii_msg is None:
                        text = ("an address has a non-ASCII local part and the relay does not offer SMTPUTF8 "
                                "(RFC 6531), so it cannot be sent: use an ASCII address or a relay that offers "
                                "SMTPUTF8")
                        healthy = True
                        return [Result(i, FAILED, "5.6.7", text) for i in indices]
                    # Only domains were non-ASCII: their A-labels name the same mailboxes.
                    log.event(msg.qid, "non-ASCII domains sent as IDNA A-labels (the relay has no SMTPUTF8)")
                    msg, needs_utf8 = ascii_msg, False
                # After EHLO: transform for what this relay offers, then sign those bytes.
                data = wire.for_delivery(msg, eightbit=conn.eightbit, utf8=needs_utf8, signer=self.signer,
                                         header_from=header_from)
                for r in await self._transaction(conn, msg, indices, needs_utf8, data):
                    results[r.index] = r
                healthy = True
                conn.messages += 1
                return list(results.values())
            except RelayError as exc:
                if exc.hold:
                    return list(results.values()) + self._route_failure(exc, [i for i in indices if i not in results])
                rest = [i for i in indices if i not in results]
                return list(results.values()) + [Result(i, exc.status, exc.dsn, exc.text) for i in rest]
            except _NETWORK_ERRORS as exc:
                if (reused or isinstance(exc, NotSent)) and attempt == 1 and not results:
                    continue  # the relay closed an idle connection, or nothing was sent: one fresh try
                text = f"lost connection with {self.relay}: {_describe(exc)}"
                return list(results.values()) + [Result(i, DEFERRED, "4.4.2", text) for i in indices if i not in results]
            finally:
                self._release(conn, healthy)
        raise AssertionError("unreachable")

    async def _transaction(
        self, conn: _Conn, msg: QueuedMessage, chunk: list[int], utf8: bool, data: wire.Prepared
    ) -> list[Result]:
        smtp = conn.smtp
        env = msg.envelope
        options = []
        if conn.max_size:
            options.append(f"SIZE={len(data.data)}")
        if data.body_8bitmime:
            options.append("BODY=8BITMIME")
        if utf8:
            options.append("SMTPUTF8")
        encoding = "utf-8" if utf8 else "ascii"
        if conn.pipeline is not None:
            txn = Transaction(env.sender, tuple(env.recipients[i] for i in chunk), data.data, tuple(options), encoding)
            return await self._pipelined(conn, conn.pipeline, txn, chunk)
        try:
            await smtp.mail(env.sender, options=options, encoding=encoding)
        except aiosmtplib.SMTPResponseException as exc:
            self._check_in_step(smtp, exc, "MAIL")
            await self._rset(smtp)
            return self._mail_refused(exc, chunk)
        results = []
        accepted = []
        for i in chunk:
            try:
                await smtp.rcpt(env.recipients[i], encoding=encoding)
                accepted.append(i)
            except aiosmtplib.SMTPResponseException as exc:
                self._check_in_step(smtp, exc, "RCPT")
                results.extend(self._refused(exc, [i], "rcpt"))
        if not accepted:
            await self._rset(smtp)
            return results
        try:
            resp = await smtp.data(data.data)
        except aiosmtplib.SMTPResponseException as exc:
            self._check_in_step(smtp, exc, "DATA")
            await self._rset(smtp)
            return results + self._refused(exc, accepted, "data")
        return results + self._sent(resp.code, resp.message, accepted)

    async def _pipelined(self, conn: _Conn, pipeline: Pipeline, txn: Transaction, chunk: list[int]) -> list[Result]:
        """``_transaction`` on a pipelining connection: the same outcomes from the replies of one pipelined group."""
        try:
            replies = await pipeline.send(txn)
        except ReplyError as exc:  # out of step (closed, deferred) or 421 (the relay is closing)
            self._check_in_step(conn.smtp, exc, exc.command)
            return self._refused(exc, chunk, "mail" if exc.command == "MAIL" else
                                 "rcpt" if exc.command == "RCPT" else "data")
        if replies.mail.code != 250:
            return self._mail_refused(aiosmtplib.SMTPResponseException(replies.mail.code, replies.mail.message), chunk)
        results = []
        accepted = []
        for i, reply in zip(chunk, replies.rcpt):
            if reply.code in (250, 251):
                accepted.append(i)
            else:
                results.extend(self._refused(aiosmtplib.SMTPResponseException(reply.code, reply.message), [i], "rcpt"))
        final = replies.data
        if not accepted or final is None:
            return results  # DATA's reply was about an empty transaction, not this message
        if final.code != 250:
            refusal = aiosmtplib.SMTPResponseException(final.code, final.message)
            return results + self._refused(refusal, accepted, "data")
        return results + self._sent(final.code, final.message, accepted)

    def _mail_refused(self, exc: aiosmtplib.SMTPResponseException, chunk: list[int]) -> list[Result]:
        """MAIL refused: a missing or refused login holds the route; anything else is this message's refusal."""
        if outcome.is_auth_failure(exc.code, exc.message, "mail"):
            raise RelayError(f"relay requires authentication: {outcome.reply_text(exc.code, exc.message)}",
                             hold=True) from None
        return self._refused(exc, chunk, "mail")

    @staticmethod
    def _sent(code: int, message: str, accepted: list[int]) -> list[Result]:
        # A multi-line 250 (RFC 5321 4.2.1) is joined into one line here:
        # its line breaks once made the done record unwritable, so every
        # run sent the message again.
        text = outcome.reply_text(code, message)
        return [Result(i, SENT, outcome.enhanced(code, message), text) for i in accepted]

    def _check_in_step(self, smtp: aiosmtplib.SMTP, exc: aiosmtplib.SMTPResponseException, command: str) -> None:
        """Close the session and defer when a refusal is not a 4xx or 5xx reply.

        aiosmtplib raises for every reply but the one it expects; a code
        outside 4xx/5xx (a 2xx or 3xx out of place, a code outside 200-599,
        a malformed line, a reply over its 32 KiB bound: code -1) means
        client and relay no longer agree on where the dialogue is, and the
        rest of such a reply may still be in flight.  Nothing more is said
        on that connection (not even RSET, whose reply could be that rest)
        and its recipients are deferred, never taken as sent or refused.
        """
        if 400 <= exc.code < 600:
            return
        smtp.close()
        raise RelayError(
            f"relay {self.host} answered {command} with a reply pysendmail cannot use "
            f"({outcome.reply_text(exc.code, exc.message)}); connection closed, mail deferred",
            dsn="4.5.0",
        )

    def _refused(self, exc: aiosmtplib.SMTPResponseException, indices: list[int], stage: str) -> list[Result]:
        """Results for a refused MAIL, RCPT or DATA; a provider's quota or block raises instead.

        A quota or a block is about the account, not this message: the
        whole route pauses (RelayError with ``pause``) rather than bouncing
        the message or retrying into a longer block.
        """
        found = outcome.verdict(self.provider, exc.code, outcome.reply_text(exc.code, exc.message), stage)
        reply = outcome.with_hint(outcome.reply_text(exc.code, exc.message), found)
        status, dsn = outcome.classify(exc.code, exc.message)
        if found is not None:
            if found.action == PAUSE:
                raise RelayError(f"{self.host}: {found.kind}: {reply}", pause=found.seconds, kind=found.kind,
                                 dsn=dsn if dsn.startswith("4.") else "4.7.0")
            if found.action == HOLD_ROUTE:
                raise RelayError(f"{self.host}: {found.kind}: {reply}", hold=True, kind=found.kind)
            if found.action == HOLD_MESSAGE:
                status = HELD
            elif found.action == BOUNCE:
                status = FAILED
        return [Result(i, status, dsn, reply) for i in indices]

    async def _rset(self, smtp: aiosmtplib.SMTP) -> None:
        try:
            await smtp.rset()
        except aiosmtplib.SMTPResponseException as exc:
            if not 200 <= exc.code < 600:
                smtp.close()  # out of step (see _check_in_step): not reused

    def _route_failure(self, exc: RelayError, indices: list[int]) -> list[Result]:
        self.health.failed(exc)  # the route's pause, hold or down mark (routing/route.py)
        return [Result(i, DEFERRED, "4.7.0" if exc.hold and not exc.pause else exc.dsn, exc.text) for i in indices]


def _idn_to_ascii(msg: QueuedMessage, indices: list[int]) -> QueuedMessage | None:
    """``msg`` with the sender and ``indices``' recipients in ASCII form, or None if one has none."""
    env = msg.envelope
    sender = rfc5322.ascii_address(env.sender) if env.sender else ""
    recipients = list(env.recipients)
    for i in indices:
        converted = rfc5322.ascii_address(recipients[i])
        if converted is None:
            return None
        recipients[i] = converted
    if sender is None:
        return None
    return msg.variant(sender=sender, recipients=recipients)


def _saslname(user: str) -> str:
    """RFC 5801 saslname: ',' and '=' escaped as =2C and =3D."""
    return user.replace("=", "=3D").replace(",", "=2C")


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate not trusted ({exc.verify_message}); add the CA with relay.ca_file if it is private"
    if isinstance(exc, asyncio.TimeoutError):
        return "timed out"
    text = str(exc) or type(exc).__name__
    return text.replace("\n", " ")
