"""Sender alignment: make envelope sender, From and Sender the account's when the route demands.

Contract:   ``align(sender, message, route)`` returns (MAIL FROM, message
            bytes, what changed or "") for one delivery through ``route``
            (a routes.RelaySettings).  With ``from_policy = "keep"`` (the
            default without a provider: DESIGN.md's contract) nothing
            changes.  With ``"rewrite"``: an address that is the account's
            own, or matches ``allowed_senders`` (addresses or domains), is
            kept; any other envelope sender becomes the account (so -f
            survives as MAIL FROM, hence Return-Path, only where the route
            allows it), a From header becomes the account with its display
            name kept, the original From becomes Reply-To unless the
            message has one, and a Sender header becomes the account.
            Applied to the exact bytes before wire transformations and
            DKIM signing, so the signature covers the rewritten headers.
            ``check(route)`` raises ConfigError when rewrite has no account.
            The "what changed" text is for the log: the addresses in it
            are escaped with log.safe.  Display names are encoded by the
            one RFC 2047 encoder (wire.encoded_words).
Security:   headers come from any local user; they are parsed by the one
            RFC 5322 scanner (core/rfc5322.py) and rewritten as whole
            fields, never by string substitution inside a value.
See also:   providers.py (which providers refuse foreign senders); RFC 5322
            3.6.2 (From, Sender, Reply-To); Postfix sender_canonical_maps.
"""

from __future__ import annotations

import email.utils

from pysendmail.core import log, rfc5322
from pysendmail.core.errors import ConfigError
from pysendmail.daemon.routes import RelaySettings, address_matches
from pysendmail.daemon.wire import encoded_words


def check(route: RelaySettings) -> None:
    if route.relay.from_policy == "rewrite" and route.account is None:
        raise ConfigError(
            f"{route.where}.from_policy = \"rewrite\" needs the account's address: set {route.where}.from_address "
            f"(the username {route.relay.username!r} is not an address)"
        )


def owned(route: RelaySettings, address: str) -> bool:
    """The account's own address, or one the route lists in allowed_senders."""
    if not address:
        return False
    account = route.account or ""
    if address.lower() == account.lower():
        return True
    return any(address_matches(p, address) for p in route.relay.allowed_senders)


def _display(value: str) -> str:
    pairs = email.utils.getaddresses([value])
    return pairs[0][0] if pairs else ""


def _mailbox(name: str, address: str) -> bytes:
    if not name:
        return address.encode()
    if "=?" in name and name.isascii():
        return f"{name} <{address}>".encode()  # already RFC 2047: keep it as written
    if name.isascii():
        return email.utils.formataddr((name, address)).encode()
    return f"{' '.join(encoded_words(name))} <{address}>".encode()  # the one RFC 2047 encoder


def align(sender: str, message: bytes, route: RelaySettings) -> tuple[str, bytes, str]:
    if route.relay.from_policy != "rewrite":
        return sender, message, ""
    account = route.account
    assert account is not None  # check() ran when the route was built
    changes: list[str] = []
    # The null sender (a DSN) also becomes the account: providers check
    # MAIL FROM against the login, and a bounce of the DSN reaches the
    # account's mailbox, not us, so no loop can start.
    mail_from = sender if owned(route, sender) else account
    if mail_from != sender:
        changes.append(f"sender <{log.safe(sender)}> -> <{account}>")
    head, body = rfc5322.split_message(message)
    fields = rfc5322.header_fields(head)
    names = {n.lower() for n, _ in fields}
    out: list[bytes] = []
    for name, value in fields:
        low = name.lower()
        text = rfc5322.unfold(value)
        if low in ("from", "sender"):
            try:
                addrs = rfc5322.parse_address_list(text)
            except rfc5322.AddressError:
                addrs = []
            if addrs and all(owned(route, a) for a in addrs):
                out.append(name.encode("ascii") + b":" + value)
                continue
            out.append(name.encode("ascii") + b": " + _mailbox(_display(text) if low == "from" else "", account))
            changes.append(f"{low} {log.safe(', '.join(addrs) or repr(text))} -> {account}")
            if low == "from" and "reply-to" not in names:
                out.append(b"Reply-To:" + value)
            continue
        out.append(name.encode("ascii") + b":" + value)
    if not changes:
        return mail_from, message, ""
    if not fields:
        return mail_from, message, "; ".join(changes)
    return mail_from, b"\r\n".join(out) + b"\r\n\r\n" + body, "; ".join(changes)
