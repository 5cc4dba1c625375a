"""Reading the message from the caller: dot rule, size cap, line endings.

Contract:   ``read_message(stream, ignore_dots, max_size)`` returns the
            message with every line ending CRLF (LF, CRLF and any mix are
            accepted; a bare CR ends no line; a missing final newline is
            added), or raises
            DataError naming the limit when it is larger than ``max_size``
            (counted in CRLF form, as it is stored).
            ``check_header_section`` refuses NUL and the header limits of
            core/rfc5322.py; ``recipients_from_headers`` implements -t.
Security:   the input is the caller's own; the checks here protect the
            envelope (header injection, NUL, a bare CR that would start a
            field) and the spool (size, header limits).
See also:   sendmail(8) -i and -t; Postfix sendmail(1); RFC 5321 2.3.8
            (no bare CR or LF on the wire).
"""

from __future__ import annotations

from pysendmail.core import rfc5322
from pysendmail.core.errors import DataError

TYPE_CHECKING = False  # typing costs 6 ms of start-up; mypy reads this name as True
if TYPE_CHECKING:
    from typing import BinaryIO

_CHUNK = 1 << 16




def _too_big(max_size: int) -> DataError:
    return DataError(f"message is larger than the limit of {max_size} bytes (spool.max_message_size); nothing was queued")


def read_message(stream: BinaryIO, ignore_dots: bool, max_size: int) -> bytes:
    if ignore_dots:
        parts = []
        total = 0
        while True:
            chunk = stream.read(_CHUNK)
            if not chunk:
                break
            total += len(chunk)
            if total > max_size:
                raise _too_big(max_size)
            parts.append(chunk)
        data = b"".join(parts)
    else:
        # Line by line, so that an interactive caller's "." ends the
        # message at once instead of waiting for end of file.
        lines = []
        total = 0
        while True:
            line = stream.readline(max_size + 2 - total)
            if not line or line in (b".\n", b".\r\n"):
                break
            total += len(line)
            if total > max_size:
                raise _too_big(max_size)
            lines.append(line)
            if line == b"." and not line.endswith(b"\n"):
                break
        if lines and lines[-1] == b".":  # "." at end of input without newline
            lines.pop()
        data = b"".join(lines)
    message = rfc5322.normalise_newlines(data)
    if message.startswith(b"From ") and b"\r\n" in message:
        # An mbox "From " envelope line (mailx, procmail) is not a header.
        message = message.split(b"\r\n", 1)[1]
    if len(message) > max_size:
        # The limit is on the message as stored: LF input grows by one CR
        # per line, and pickup measures the file, so a message accepted
        # here must never be over the limit there (it would be quarantined
        # after exit 0).
        raise _too_big(max_size)
    return message


RESENT_FIELDS = ("resent-to", "resent-cc", "resent-bcc")
PLAIN_FIELDS = ("to", "cc", "bcc")


def check_header_section(head: bytes) -> None:
    """Refuse a header section with a NUL or over one of rfc5322's header limits (exit 65)."""
    if b"\0" in head:
        raise DataError("the message headers hold a NUL byte; nothing was queued")
    why = rfc5322.header_limit_error(head)
    if why:
        raise DataError(f"{why}; nothing was queued")


def recipients_from_headers(fields: list[tuple[str, bytes]]) -> list[str]:
    """-t: To, Cc, Bcc; or Resent-To/Cc/Bcc when the message is being resent.

    As Postfix and sendmail do (RFC 5322 3.6.6), any Resent- field means
    the newest resending block decides and the original To/Cc are ignored.
    """
    names = [name.lower() for name, _ in fields]
    resent = any(n.startswith("resent-") for n in names)
    wanted = RESENT_FIELDS if resent else PLAIN_FIELDS
    found: list[str] = []
    for name, value in fields:
        if name.lower() in wanted:
            text = rfc5322.unfold(value)
            try:
                found.extend(rfc5322.parse_address_list(text))
            except rfc5322.AddressError as exc:
                raise DataError(f"{name} header: {exc}; nothing was queued") from None
    return found
