"""Bounces: RFC 3464 delivery status notifications to the envelope sender.

Contract:   ``make_bounce(msg, failures, ctx, postmaster)`` returns
            (envelope, message, queue id) of a multipart/report DSN, or None when no
            bounce may be sent: the null sender (a bounce is never bounced,
            RFC 5321 4.5.5), or when the sender is this host's own address
            and neither an alias, ``queue.postmaster`` nor the root alias
            says where it goes while a relay is configured.  Local senders
            (www-data, cron's root) are sent where the aliases say, else to
            ``queue.postmaster``, else where the root alias says.
See also:   RFC 3464 (message/delivery-status), RFC 6522
            (multipart/report), RFC 3462; Postfix bounce(8) texts.
"""

from __future__ import annotations

import email.utils
import os
import time

from pysendmail.core import qid as qidmod
from pysendmail.core import spoolfile
from pysendmail.core.aliases import split_address, unquote_local
from pysendmail.core.queue import QueuedMessage
from pysendmail.daemon.cleanup import Context

HEADERS_ONLY_LIMIT = 64 * 1024


def bounce_recipients(sender: str, ctx: Context, postmaster: str | None) -> list[str]:
    if not sender:
        return []
    aliases = ctx.aliases
    local, domain = split_address(sender)
    name = unquote_local(local).lower()
    if aliases.is_local(sender):
        # This host's own address (cron's root, www-data, root@vm): where its
        # alias sends it, else the postmaster, else the root alias.  With a
        # relay and none of these, nobody can get it (it is never relayed
        # as root@localhost): no bounce, the copy stays in failed/.
        if name in aliases.table:
            found = aliases.expand(sender)
            if found:
                return found
        if postmaster:
            return aliases.expand(postmaster)
        return aliases.expand(sender)
    if domain is not None and domain.lower() == aliases.default_domain.lower():
        if name in aliases.table:
            return aliases.expand(name)
        # Only an account of this host (www-data, cron's root, a login)
        # has no mailbox behind its qualified address; a person at the
        # default domain (alice@example.org with no local account) does,
        # and gets the bounce there.
        if postmaster and _is_local_account(name):
            return aliases.expand(postmaster)
    return [sender]


def _is_local_account(name: str) -> bool:
    import pwd

    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def make_bounce(
    msg: QueuedMessage, failures: dict[int, str], ctx: Context, postmaster: str | None
) -> tuple[spoolfile.Envelope, bytes, str] | None:
    env = msg.envelope
    targets = bounce_recipients(env.sender, ctx, postmaster)
    if not targets:
        return None
    now = time.time()
    boundary = f"{msg.qid}.{int(now)}/{ctx.hostname}"
    date = email.utils.formatdate(now, localtime=True)
    arrival = email.utils.formatdate(env.time, localtime=True)
    failed_list = "\r\n".join(f"<{env.recipients[i]}>: {text}" for i, text in sorted(failures.items()))
    human = (
        f"This is the mail system at host {ctx.hostname}.\r\n\r\n"
        "I'm sorry to have to inform you that your message could not\r\n"
        "be delivered to one or more recipients. It's attached below.\r\n\r\n"
        "For further assistance, please send mail to postmaster.\r\n\r\n"
        f"                   The mail system\r\n\r\n{failed_list}\r\n"
    )
    status_lines = [
        f"Reporting-MTA: dns; {ctx.hostname}",
        f"X-Pysendmail-Queue-ID: {msg.qid}",
        f"Arrival-Date: {arrival}",
    ]
    if env.envid:
        status_lines.insert(0, f"Original-Envelope-Id: {env.envid}")
    blocks = ["\r\n".join(status_lines)]
    for i, text in sorted(failures.items()):
        dsn = next((w for w in text.split() if w.count(".") == 2 and w.replace(".", "").isdigit()), "5.0.0")
        diagnostic = f"smtp; {text}" if text[:3].isdigit() else f"X-Pysendmail; {text}"
        blocks.append(
            "\r\n".join(
                [
                    f"Final-Recipient: rfc822; {env.recipients[i]}",
                    "Action: failed",
                    f"Status: {dsn if dsn.startswith('5') else '5.0.0'}",
                    f"Diagnostic-Code: {diagnostic}",
                    f"Last-Attempt-Date: {date}",
                ]
            )
        )
    # Only the headers when the sender asked (RET=HDRS), when the message is
    # large, or when its size was the problem: a full copy would fail again.
    too_big = any("5.3.4" in text.split()[:2] for text in failures.values())
    headers_only = env.ret == "HDRS" or msg.size > HEADERS_ONLY_LIMIT or too_big
    original = msg.message
    if headers_only:
        cut = original.find(b"\r\n\r\n")
        original = original[: cut + 2] if cut >= 0 else original
    new_qid = qidmod.new_qid()
    parts = [
        f"From: MAILER-DAEMON@{ctx.hostname} (Mail Delivery System)",
        f"To: {targets[0]}" + "".join(f", {t}" for t in targets[1:]),
        "Subject: Undelivered Mail Returned to Sender",
        "Auto-Submitted: auto-replied",
        f"Date: {date}",
        f"Message-ID: <{new_qid}@{ctx.hostname}>",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary="{boundary}"',
        "",
        "This is a MIME-encapsulated message.",
        "",
        f"--{boundary}",
        "Content-Description: Notification",
        "Content-Type: text/plain; charset=us-ascii",
        "",
        human,
        f"--{boundary}",
        "Content-Description: Delivery report",
        "Content-Type: message/delivery-status",
        "",
        "\r\n\r\n".join(blocks),
        "",
        f"--{boundary}",
        "Content-Description: " + ("Undelivered Message Headers" if headers_only else "Undelivered Message"),
        "Content-Type: " + ("text/rfc822-headers" if headers_only else "message/rfc822"),
        "",
    ]
    data = "\r\n".join(parts).encode("utf-8") + b"\r\n" + original
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    data += f"\r\n--{boundary}--\r\n".encode()
    bounce_env = spoolfile.Envelope(
        "",
        targets,
        uid=os.geteuid(),
        login="MAILER-DAEMON",
        time=now,
        body="7BIT" if data.isascii() else "8BITMIME",
    )
    return bounce_env, data, new_qid
