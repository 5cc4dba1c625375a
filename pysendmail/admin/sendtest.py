"""``pysendmail test --to ADDR``: one real message through a route, now, with the dialogue shown.

Contract:   ``run(cfg, to, route, sender, out)`` builds a short test
            message, sends it synchronously through the named route (or
            the one the rules choose) with the daemon's own transport,
            sender alignment included, and writes the SMTP dialogue to
            ``out`` (C: / S: lines; "*" lines for the connection attempt,
            its failure and TLS) followed by the outcome and, for a
            reply pysendmail knows, the hint.  Returns (status, text).
            Nothing is queued: a failure is reported, not retried.
Security:   the AUTH exchange is printed as ******** (mechanism only);
            the password and the token are never written.
See also:   pysendmail(8) test; daemon/transport/smtp.py.
"""

from __future__ import annotations

import asyncio
import email.utils
import os
import time
from typing import Any, TextIO

import aiosmtplib

from pysendmail.core import config, errors, rfc5322, spoolfile
from pysendmail.core.queue import QueuedMessage
from pysendmail.daemon import qmgr
from pysendmail.daemon.routing.route import Route
from pysendmail.daemon.routing.router import Router


def tracing_smtp(out: TextIO) -> type[aiosmtplib.SMTP]:
    class Tracing(aiosmtplib.SMTP):
        _masking = False

        def _show(self, prefix: str, text: str) -> None:
            for line in text.splitlines() or [""]:
                out.write(f"{prefix} {line}\n")
            out.flush()

        async def connect(self, *args: Any, **kw: Any) -> aiosmtplib.SMTPResponse:
            # Said before trying, so a connection that fails before the
            # greeting (refused, timeout, TLS handshake) still shows what
            # was attempted and why it failed.
            tls = " (implicit TLS)" if self.use_tls else ""
            self._show("*", f"connecting to {self.hostname} port {self.port}{tls}")
            try:
                resp = await super().connect(*args, **kw)
            except Exception as exc:
                self._show("*", f"connection failed: {exc}")
                raise
            if self.use_tls:
                self._show("*", "TLS established")
            self._show("S:", f"{resp.code} {resp.message}")
            return resp

        async def execute_command(self, *args: bytes, **kw: Any) -> aiosmtplib.SMTPResponse:
            words = [a.decode("utf-8", "replace") for a in args]
            if words and words[0].upper() == "AUTH":
                self._masking = True
                shown = " ".join(words[:2] + ["********"] * (len(words) > 2))
            elif self._masking:
                shown = "********"
            else:
                shown = " ".join(words)
            self._show("C:", shown)
            try:
                resp = await super().execute_command(*args, **kw)
            except aiosmtplib.SMTPResponseException as exc:
                self._show("S:", f"{exc.code} {exc.message}")
                raise
            self._show("S:", f"{resp.code} {resp.message}" if not self._masking or resp.code != 334
                       else "334 ********")
            if resp.code != 334:
                self._masking = False
            return resp

        async def data(self, message: str | bytes, /, **kw: Any) -> aiosmtplib.SMTPResponse:
            self._show("C:", f"DATA ({len(message)} bytes of message follow)")
            try:
                resp = await super().data(message, **kw)
            except aiosmtplib.SMTPResponseException as exc:
                self._show("S:", f"{exc.code} {exc.message}")
                raise
            self._show("S:", f"{resp.code} {resp.message}")
            return resp

        async def starttls(self, *args: Any, **kw: Any) -> aiosmtplib.SMTPResponse:
            resp = await super().starttls(*args, **kw)
            self._show("*", "TLS established")
            return resp

    return Tracing


def _message(cfg: config.Config, sender: str, to: str) -> bytes:
    host = cfg.hostname()
    now = time.time()
    lines = [
        f"From: pysendmail test <{sender}>",
        f"To: {to}",
        "Subject: pysendmail test message",
        f"Date: {email.utils.formatdate(now, localtime=True)}",
        f"Message-ID: <test.{int(now)}.{os.getpid()}@{host}>",
        "",
        f"This is a test message sent by 'pysendmail test' on {host}.",
        "If you can read it, the relay accepted mail from this host.",
        "",
    ]
    return "\r\n".join(lines).encode()


def choose(router: Router, name: str | None, msg: QueuedMessage) -> Route:
    if name is None:
        return router.choose(msg.envelope, rfc5322.first_from(msg.message) if msg.message else None)[0]
    if name not in router.routes:
        raise errors.UsageError(f"no route named {name!r}: the routes are {', '.join(router.routes)}")
    return router.routes[name]


def run(cfg: config.Config, to: str, route_name: str | None, sender: str | None, out: TextIO) -> tuple[str, str]:
    if not cfg.relay_configured:
        raise errors.ConfigError("no [relay] is configured, so there is nothing to test: run 'pysendmail setup'")
    router = Router(cfg, qmgr.helo_name(cfg))
    if cfg.dkim:
        from pysendmail.daemon.dkim import Signer

        # Signed as the daemon signs, so the test shows what receivers get.
        router.signer = Signer.from_config(cfg)
    probe = spoolfile.Envelope(sender or "", [to], uid=os.getuid(), time=time.time())
    first = choose(router, route_name, QueuedMessage("TEST", "", spoolfile.encode(probe, b"")))
    account = first.settings.account
    sender = sender or account or f"{os.environ.get('USER', 'root')}@{cfg.default_domain()}"
    env = spoolfile.Envelope(sender, [to], uid=os.getuid(), time=time.time())
    msg = QueuedMessage("TEST", "", spoolfile.encode(env, _message(cfg, sender, to)))
    first.smtp.smtp_class = tracing_smtp(out)
    out.write(f"route {first.name}: {first.smtp.host}:{first.smtp.port} ({first.smtp.tls}), "
              f"from_policy {first.settings.values.get('from_policy')}\n")

    async def go() -> list[Any]:
        try:
            return await router._through(first, msg, [0])
        finally:
            await router.close()

    (result,) = asyncio.run(go())
    return result.status, result.text
