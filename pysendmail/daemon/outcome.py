"""THE table that turns what a relay said into what happens to a recipient.

Contract:   ``classify(code, text)`` returns (status, dsn) where status is
            sent, deferred or failed; ``is_auth_failure(code, text, stage)``
            says when the whole route must go on hold instead (the
            password is wrong: retrying per message would lock the account,
            bouncing would lose mail for a configuration mistake).
            ``verdict(provider, code, text, stage)`` adds what
            providers.py knows about a provider's own texts (quota, spam
            block, app password, sender not owned): the transport pauses
            the route, holds it, or holds the message instead, and every
            such reply carries a hint (``with_hint``) for log and status.
            ``reply_text(code, message)`` is every reply as recorded and
            logged: one line, whatever its shape (multi-line, NUL, bytes
            that are not UTF-8, any length).
See also:   RFC 5321 4.2.1 (reply code classes), RFC 3463 (enhanced status
            codes), RFC 4954 6 (AUTH replies 530, 534, 535, 454).
"""

from __future__ import annotations

from pysendmail.daemon import providers
from pysendmail.daemon.transport.base import DEFERRED, FAILED, SENT, one_line


def reply_text(code: int, message: str) -> str:
    """"CODE text" on one line, a multi-line reply's lines joined (RFC 5321 4.2.1).

    aiosmtplib takes the code from the last line (as 4.2.1 says a client
    may) and gives the lines' texts joined by line breaks.  Each
    continuation usually repeats the enhanced status code ("550-5.4.5 ...",
    "550 5.4.5 ..."): kept once, in front, where ``enhanced`` and a DSN
    look for it.
    """
    lines = message.split("\n")
    first = lines[0].split(" ", 1)[0] if lines[0] else ""
    if len(lines) > 1 and first and enhanced(code, first) == first:
        lines = [lines[0]] + [ln[len(first):] if ln.startswith(first) else ln for ln in lines[1:]]
    return one_line(f"{code} " + " ".join(lines))


def enhanced(code: int, text: str) -> str:
    """The RFC 3463 code at the start of ``text``, else one derived from ``code``."""
    word = text.split(" ", 1)[0] if text else ""
    parts = word.split(".")
    if len(parts) == 3 and all(p.isdigit() for p in parts) and parts[0] in ("2", "4", "5"):
        return word
    return f"{code // 100}.0.0" if 200 <= code < 600 else "4.0.0"


def classify(code: int, text: str) -> tuple[str, str]:
    dsn = enhanced(code, text)
    if 200 <= code < 300:
        return SENT, dsn
    if 500 <= code < 600:
        return FAILED, dsn
    return DEFERRED, dsn  # 4xx, and anything unexpected: never lose mail on a surprise


AUTH_FAILURE_CODES = frozenset({530, 534, 535, 538})


def is_auth_failure(code: int, text: str, stage: str) -> bool:
    """True for replies that mean "your credentials are refused".

    530/534/535/538 during AUTH, and 530 5.7.0 "authentication required"
    at MAIL (a relay that needs AUTH we did not do), and 454 4.7.0 to AUTH
    (temporary authentication failure / too many login attempts).
    """
    if stage == "auth":
        return code in AUTH_FAILURE_CODES or code == 454
    return code == 530


def verdict(provider: str | None, code: int, text: str, stage: str) -> providers.Verdict | None:
    """What providers.py knows about this reply, else None."""
    return providers.explain(provider, code, text, stage)


def with_hint(reply: str, found: providers.Verdict | None) -> str:
    """The reply as logged and shown, followed by the hint when there is one."""
    reply = one_line(reply)  # multi-line replies on one log line
    return f"{reply}; hint: {found.hint}" if found else reply
