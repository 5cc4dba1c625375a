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
See also:   RFC 5321 4.2.1 (reply code classes), RFC 3463 (enhanced status
            codes), RFC 4954 6 (AUTH replies 530, 534, 535, 454).
"""

from __future__ import annotations

from pysendmail.daemon import providers
from pysendmail.daemon.transport.base import DEFERRED, FAILED, SENT


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
    reply = " ".join(reply.split())  # multi-line replies on one log line
    return f"{reply}; hint: {found.hint}" if found else reply
