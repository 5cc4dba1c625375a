"""Cleanup: make a picked-up message fit to queue, once, before delivery.

Contract:   ``clean(env, message, qid, ctx)`` returns the (envelope,
            message, refused) to write into queue/: every line ends CRLF; Bcc and
            Resent-Bcc and any Return-Path removed; From, Date and
            Message-ID added when missing (as a real MTA does); a Received
            line naming the submitting user and uid prepended; bare names
            in address fields qualified (cron's "From: root"); sender and
            recipients qualified and recipients expanded through aliases.
            Local recipients (root@localhost, root@<short name>, bare
            names at a local default domain, [host] local_domains) resolve
            through the aliases and the root catch-all (core/aliases.py);
            one that cannot is kept in the envelope and listed in
            ``refused`` {index: "5.x.x reason"}, which ``refusal_records``
            turns into failed records: it bounces and is never relayed.
            A sender at this host's unqualified names (root@vm,
            root@localhost) gets the default domain, as a bare one does.
Security:   the message and envelope come from any local user.  The uid
            used in Received is the file owner's, which pickup supplies:
            the envelope's own claim is never believed.
            A bare CR stays inside its line (rfc5322.normalise_newlines):
            it never starts a field.  Linear in the message size.
See also:   Postfix cleanup(8); RFC 5322 3.6 (required fields), 3.6.3
            (Bcc), 3.6.7 (trace fields); RFC 2047 (encoded display names,
            through wire.encoded_words, the one encoder).
"""

from __future__ import annotations

import email.utils
import time

from pysendmail.core import log, rfc5322, spoolfile
from pysendmail.core.aliases import Aliases
from pysendmail.daemon.wire import encoded_words
from pysendmail.core.rfc5322 import normalise_newlines

_DROP = frozenset({"bcc", "resent-bcc", "return-path"})
_ADDRESS_FIELDS = frozenset(
    {"from", "sender", "reply-to", "to", "cc", "resent-from", "resent-sender", "resent-to", "resent-cc"}
)
_SPECIALS = set('()<>[]:;@\\,."')


class Context:
    """What cleanup needs from the configuration."""

    def __init__(self, hostname: str, aliases: Aliases) -> None:
        self.hostname = hostname
        self.aliases = aliases


def display_name(name: str) -> str:
    """A From display name: plain, quoted (RFC 5322 3.2.4) or encoded (RFC 2047)."""
    if not name.isascii():
        return " ".join(encoded_words(name))  # the one RFC 2047 encoder (wire.py)
    if any(c in _SPECIALS for c in name):
        return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return name


def _qualified(name: str, value: bytes, domain: str) -> bytes:
    """An address field with bare local names qualified (cron's "From: root")."""
    if name.lower() not in _ADDRESS_FIELDS:
        return value
    text = value.decode("utf-8", "surrogateescape")
    try:
        new = rfc5322.qualify_address_list(text, domain)
    except rfc5322.AddressError:
        return value  # not ours to repair; the relay will judge it
    return value if new is None else new.encode("utf-8", "surrogateescape")


def clean(
    env: spoolfile.Envelope, message: bytes, qid: str, ctx: Context, owner: tuple[int, str],
    split: tuple[bytes, bytes] | None = None,
) -> tuple[spoolfile.Envelope, bytes, dict[int, str]]:
    """See the module docstring.  ``split``: (head, body) of ``message`` once its newlines are normalised.

    Pickup passes what it computed for its checks, so the message is not
    copied twice more; without it, cleanup does both steps itself.
    """
    if split is None:
        message = normalise_newlines(message)
        split = rfc5322.split_message(message)
    head, body = split
    fields = rfc5322.header_fields(head)
    kept = [(n, _qualified(n, v, ctx.aliases.default_domain)) for n, v in fields if n.lower() not in _DROP]
    names = {n.lower() for n, _ in kept}
    now = time.time()
    date = email.utils.formatdate(now, localtime=True)

    sender = ctx.aliases.qualify_sender(env.sender)
    added: list[bytes] = []
    if "from" not in names:
        address = sender or f"MAILER-DAEMON@{ctx.hostname}"
        if env.fullname:
            added.append(f"From: {display_name(env.fullname)} <{address}>".encode())
        else:
            added.append(f"From: {address}".encode())
    if "date" not in names:
        added.append(f"Date: {date}".encode())
    if "message-id" not in names:
        added.append(f"Message-ID: <{qid}@{ctx.hostname}>".encode())

    uid, login = owner
    received = (
        f"Received: from {login} (uid {uid})\r\n\tby {ctx.hostname} (pysendmail) id {qid};\r\n\t{date}"
    ).encode()
    out = [received]
    out += [n.encode("ascii") + b":" + v for n, v in kept]
    out += added
    new_message = b"\r\n".join(out) + b"\r\n\r\n" + body

    recipients, refused = resolve_recipients(env.recipients, ctx)
    new_env = env.replace(sender=sender, recipients=recipients, uid=uid, login=login,
                          body="7BIT" if new_message.isascii() else "8BITMIME")
    return new_env, new_message, refused


def resolve_recipients(given: list[str], ctx: Context) -> tuple[list[str], dict[int, str]]:
    """The envelope's recipients after aliases, and {index: reason} of those that cannot be delivered."""
    recipients: list[str] = []
    refused: dict[int, str] = {}
    seen: set[str] = set()
    for rcpt in given:
        found, bad = ctx.aliases.resolve(rcpt)
        for final in found:
            if final.lower() not in seen:
                seen.add(final.lower())
                recipients.append(final)
        for addr, why in bad:
            if addr.lower() not in seen:
                seen.add(addr.lower())
                refused[len(recipients)] = why
                recipients.append(addr)
    return recipients, refused


def refusal_records(refused: dict[int, str], now: float) -> bytes:
    """The failed records that go into the new queue file with the envelope: those recipients bounce."""
    # A reason quotes the config path: a line break there must not make
    # the record unwritable (and pickup fail on every message).
    return b"".join(
        spoolfile.encode_record("failed", i, f"{now:.3f}", " ".join(why.split())) for i, why in sorted(refused.items())
    )


def log_refused(qid: str, env: spoolfile.Envelope, refused: dict[int, str], now: float) -> None:
    """One Postfix-shaped line per refused recipient (local(8) logs relay=local, status=bounced)."""
    for i, why in sorted(refused.items()):
        dsn, _, text = why.partition(" ")
        log.event(qid, f"to=<{log.safe(env.recipients[i])}>", relay="local", delay=f"{now - env.time:.2f}",
                  dsn=dsn, status=f"bounced ({log.safe(text)})")
