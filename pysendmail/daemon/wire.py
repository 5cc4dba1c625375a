"""Make a queued message fit for the wire the relay offers, before DKIM signs it.

Contract:   ``prepare(message, eightbit=, utf8=)`` takes the queued CRLF
            message and returns a Prepared: ``data``, the bytes to send
            (and to sign), ``body_8bitmime`` (send MAIL FROM with
            BODY=8BITMIME), ``changes`` (short words for the log).  It never
            loses or alters content as a reader decodes it:
            - a MIME part with a line over 998 octets (RFC 5322 2.1.1), a
              bare CR, NUL, or 8-bit octets the relay cannot take (no
              8BITMIME, RFC 6152) is re-encoded quoted-printable when it is
              text, base64 otherwise, and its Content-Transfer-Encoding
              says so; a base64 or quoted-printable part with over-long
              lines is re-wrapped;
            - 8-bit text in a message with no MIME header at all (PHP's
              plain mail() with UTF-8) gets MIME-Version, Content-Type
              text/plain with charset=utf-8 when the body decodes as
              UTF-8, else charset=unknown-8bit (RFC 1428: we do not guess a
              legacy charset; mail readers then use their own default, which
              is what the sender's readers saw), and a transfer encoding;
            - header lines over 998 octets are folded at white space (RFC
              5322 2.2.3); an unstructured field (every field not in
              _STRUCTURED: Subject, Comments, X-...) that cannot be folded,
              or that holds raw UTF-8 while the session is not SMTPUTF8,
              becomes RFC 2047 encoded-words (Keywords phrase by phrase);
              non-ASCII display names in address fields likewise;
            - a bare CR in a header becomes a space inside its line: it
              never starts a field.
            ``encoded_words`` is the one RFC 2047 encoder (cleanup and
            sender alignment use it too).
            With ``utf8`` (an SMTPUTF8 session, RFC 6531/6532) raw UTF-8
            headers are left as written.
Security:   the message came from any local user; the parser works on
            bytes, never raises on malformed MIME (it leaves what it cannot
            understand as it is), and recursion is bounded.  Every step is
            linear in the message size (folding cuts by offset, values are
            joined once): bench/headers shows it.
See also:   RFC 2045 6.7 (quoted-printable), RFC 2046 5.1 (multipart),
            RFC 2047, RFC 6152 (8BITMIME), RFC 6532; Postfix's
            8bit-to-7bit conversion (smtp_never_send_ehlo / disable_mime_
            output_conversion), which does the same for the same reason.
"""

from __future__ import annotations

import base64
import binascii
import email.utils
from dataclasses import dataclass, field

from pysendmail.core import log, rfc5322
from pysendmail.core.queue import QueuedMessage

TYPE_CHECKING = False
if TYPE_CHECKING:
    from pysendmail.daemon.dkim import Signer

MAX_LINE = 998  # octets, without the CRLF (RFC 5322 2.1.1, RFC 5321 4.5.3.1.6)
QP_LINE = 76  # RFC 2045 6.7 rule 5
FOLD_AT = 78
MAX_DEPTH = 20
FALLBACK_CHARSET = "unknown-8bit"
_ADDRESS = frozenset({"from", "sender", "reply-to", "to", "cc", "resent-from", "resent-sender", "resent-to",
                      "resent-cc", "disposition-notification-to"})
# Fields with a syntax of their own (RFC 5322 3.6, RFC 2045, RFC 6376, list
# and trace fields...): an encoded-word is not allowed in them, so raw UTF-8
# there is left for the relay to judge.  Every other field, X- fields
# included, is unstructured (RFC 5322 3.6.8 optional-field) and is
# encoded like Subject (RFC 2047 5(1)); Keywords is a phrase list, encoded
# phrase by phrase (RFC 2047 5(3)).
_STRUCTURED = _ADDRESS | frozenset({
    "bcc", "resent-bcc", "date", "resent-date", "message-id", "resent-message-id", "in-reply-to", "references",
    "received", "return-path", "mime-version", "content-type", "content-transfer-encoding", "content-id",
    "content-disposition", "content-language", "content-location", "content-md5", "content-base",
    "dkim-signature", "arc-seal", "arc-message-signature", "arc-authentication-results",
    "authentication-results", "received-spf", "list-id", "list-unsubscribe", "list-unsubscribe-post",
    "list-post", "list-help", "list-subscribe", "list-owner", "list-archive", "auto-submitted", "autocrypt",
    "feedback-id", "original-recipient", "return-receipt-to", "errors-to", "keywords",
})

Fields = list[tuple[str, bytes]]


@dataclass
class Prepared:
    data: bytes
    body_8bitmime: bool
    changes: list[str] = field(default_factory=list)


class _Ctx:
    def __init__(self, eightbit: bool, utf8: bool) -> None:
        self.eightbit = eightbit
        self.utf8 = utf8
        self.changes: list[str] = []

    def note(self, what: str) -> None:
        if what not in self.changes:
            self.changes.append(what)


# ---------------------------------------------------------------- encoders
_QP_TABLE = [chr(c) if 33 <= c <= 126 and c != 61 else f"={c:02X}" for c in range(256)]


def qp_encode(data: bytes) -> bytes:
    """Quoted-printable of CRLF text: hard breaks stay CRLF, every other octet round-trips."""
    out: list[str] = []
    for line in data.split(b"\r\n"):
        toks = [_QP_TABLE[c] if c not in (9, 32) else chr(c) for c in line]
        if toks and toks[-1] in (" ", "\t"):
            toks[-1] = f"={ord(toks[-1]):02X}"  # rule 3: no white space at the end of a line
        cur = ""
        for tok in toks:
            if len(cur) + len(tok) > QP_LINE - 1:
                out.append(cur + "=")  # soft line break
                cur = ""
            cur += tok
        out.append(cur)
    return "\r\n".join(out).encode("ascii")


def b64_encode(data: bytes) -> bytes:
    return base64.encodebytes(data).replace(b"\n", b"\r\n")


def encoded_words(text: str) -> list[str]:
    """RFC 2047 B encoded-words of at most 75 characters, split on character boundaries.

    The one RFC 2047 encoder: unstructured fields here, display names in
    cleanup (-F) and sender alignment.  ``text`` must encode as UTF-8
    (surrogateescape'd bytes are written back as the bytes they were).
    Linear in the length of ``text``.
    """
    words: list[str] = []
    piece: list[bytes] = []
    size = 0
    for ch in text:
        raw = ch.encode("utf-8", "surrogateescape")
        if size + len(raw) > 45:  # 45 octets: 60 base64 characters + 12 = 72 <= 75 (RFC 2047 2)
            words.append("=?utf-8?b?" + base64.b64encode(b"".join(piece)).decode("ascii") + "?=")
            piece, size = [], 0
        piece.append(raw)
        size += len(raw)
    words.append("=?utf-8?b?" + base64.b64encode(b"".join(piece)).decode("ascii") + "?=")
    return words


# ---------------------------------------------------------------- headers
def _get(fields: Fields, name: str) -> bytes | None:
    for n, v in fields:
        if n.lower() == name:
            return v
    return None


def _set(fields: Fields, name: str, value: str) -> Fields:
    """``fields`` with the first ``name`` replaced (others dropped), or it appended."""
    out: Fields = []
    done = False
    for n, v in fields:
        if n.lower() == name.lower():
            if not done:
                out.append((n, b" " + value.encode("ascii")))
                done = True
            continue
        out.append((n, v))
    if not done:
        out.append((name, b" " + value.encode("ascii")))
    return out


def content_type(fields: Fields, default: str) -> tuple[str, dict[str, str]]:
    raw = _get(fields, "content-type")
    if raw is None:
        return default, {}
    text = rfc5322.unfold(raw)
    parts = _split_params(text)
    ctype = parts[0].strip().lower() if parts else ""
    if "/" not in ctype:
        return default, {}  # RFC 2045 5.2: an invalid Content-Type means text/plain
    params: dict[str, str] = {}
    for p in parts[1:]:
        if "=" in p:
            k, v = p.split("=", 1)
            v = v.strip()
            if len(v) >= 2 and v[0] == '"' and v[-1] == '"':
                v = v[1:-1].replace('\\"', '"').replace("\\\\", "\\")
            params[k.strip().lower()] = v
    return ctype, params


def _split_params(text: str) -> list[str]:
    """Split on ';' outside quoted strings."""
    return _split_outside_quotes(text, ";")


def _split_outside_quotes(text: str, sep: str) -> list[str]:
    """Split on ``sep`` outside quoted strings; linear (pieces collected, joined once)."""
    out: list[str] = []
    cur: list[str] = []
    quoted = escape = False
    for ch in text:
        if escape:
            escape = False
        elif ch == "\\" and quoted:
            escape = True
        elif ch == '"':
            quoted = not quoted
        elif ch == sep and not quoted:
            out.append("".join(cur))
            cur = []
            continue
        cur.append(ch)
    out.append("".join(cur))
    return out


def _cte(fields: Fields) -> str:
    raw = _get(fields, "content-transfer-encoding")
    return rfc5322.unfold(raw).lower() if raw is not None else "7bit"


def fold_line(line: bytes) -> bytes | None:
    """One over-long header line folded at white space, or None if it has none to fold at.

    A fold goes before the last white space at or before column 78, else
    before the first one after it; never where the piece before it would be
    only white space, nor where only white space would follow (RFC 5322
    2.2.3 allows no line of only white space).  Linear in the line's
    length: the search before column 78 looks at 78 octets at most, the one
    after it uses cached next positions, and the pieces are cut by offset
    (slicing the rest again at each fold was quadratic: issue 10's 12 MB
    line).
    """
    n = len(line)
    if n <= MAX_LINE:
        return line
    last = len(line.rstrip(b" \t")) - 1  # the last octet that is not white space
    cached = {32: -2, 9: -2}  # next position of space / tab; -2 unknown, -1 none

    def next_wsp(pos: int) -> int:
        best = n
        for ch in (32, 9):
            q = cached[ch]
            if q != -1 and q < pos:
                q = cached[ch] = line.find(bytes((ch,)), pos)
            if q != -1 and q < best:
                best = q
        return best

    out: list[bytes] = []
    start = 0
    while n - start > MAX_LINE:
        first = start  # the first octet of this piece that is not white space
        while first < n and line[first] in (9, 32):
            first += 1
        cut = -1
        for i in range(min(start + FOLD_AT, n - 1), first, -1):
            if line[i] in (9, 32) and i < last:
                cut = i
                break
        if cut < 0:
            i = next_wsp(max(start + FOLD_AT, first + 1))
            if i < last:
                cut = i
        if cut < 0 or cut - start > MAX_LINE:
            return None
        out.append(line[start:cut])
        start = cut
    out.append(line[start:])
    return b"\r\n".join(out)


def _utf8_unfolded(value: bytes) -> str | None:
    """The field value unfolded, or None when it is not UTF-8: then we cannot name its charset."""
    text = rfc5322.unfold(value)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return None
    return text


def _encode_unstructured(value: bytes) -> bytes | None:
    text = _utf8_unfolded(value)
    if text is None:
        return None
    return b" " + "\r\n ".join(encoded_words(text)).encode("ascii")


def _encode_keywords(value: bytes) -> bytes | None:
    """Keywords (RFC 5322 3.6.5): each non-ASCII phrase of the list encoded on its own."""
    text = _utf8_unfolded(value)
    if text is None:
        return None
    out = []
    for phrase in _split_outside_quotes(text, ","):
        phrase = phrase.strip(" \t")
        if not phrase.isascii():
            if len(phrase) >= 2 and phrase[0] == phrase[-1] == '"':
                phrase = phrase[1:-1].replace('\\"', '"').replace("\\\\", "\\")
            phrase = "\r\n ".join(encoded_words(phrase))
        out.append(phrase)
    return b" " + ",\r\n ".join(out).encode("ascii")


def _encode_addresses(value: bytes) -> bytes | None:
    text = _utf8_unfolded(value)
    if text is None:
        return None
    pairs = email.utils.getaddresses([text])
    # A non-ASCII domain becomes its A-label; a non-ASCII local part has no
    # ASCII form (it needs SMTPUTF8): then nothing is encoded here.
    converted = [(name, rfc5322.ascii_address(addr) if addr else None) for name, addr in pairs]
    if not converted or any(addr is None for _, addr in converted):
        return None
    pairs = [(name, str(addr)) for name, addr in converted]
    return b" " + ",\r\n ".join(email.utils.formataddr(p, charset="utf-8") for p in pairs).encode("ascii")


def fix_headers(fields: Fields, ctx: _Ctx) -> Fields:
    out: Fields = []
    for name, value in fields:
        low = name.lower()
        if b"\r" in value.replace(b"\r\n", b""):
            # A bare CR stays inside its line (it never starts a field) and
            # becomes a space: RFC 5321 2.3.8 allows no bare CR on the wire.
            value = b"\r\n".join(line.replace(b"\r", b" ") for line in value.split(b"\r\n"))
            ctx.note("bare CR in header")
        if not value.isascii() and not ctx.utf8:
            new = None
            if low in _ADDRESS:
                new = _encode_addresses(value)
            elif low == "keywords":
                new = _encode_keywords(value)
            elif low not in _STRUCTURED:
                new = _encode_unstructured(value)
            if new is not None:
                value = new
                ctx.note("8-bit header encoded")
        lines = (name.encode("ascii") + b":" + value).split(b"\r\n")
        if any(len(line) > MAX_LINE for line in lines):
            folded = []
            ok = True
            for line in lines:
                f = fold_line(line) if len(line) > MAX_LINE else line
                if f is None:
                    ok = False
                    break
                folded.append(f)
            if ok:
                value = b"\r\n".join(folded)[len(name) + 1 :]
                ctx.note("long header folded")
            elif low not in _STRUCTURED and (enc := _encode_unstructured(value)) is not None:
                value = enc
                ctx.note("long header encoded")
            # XXX: a structured field with a 999-octet token cannot be
            # folded; it goes as it is and the relay judges it.
        out.append((name, value))
    return out


def serialize(fields: Fields) -> bytes:
    return b"".join(n.encode("ascii") + b":" + v + b"\r\n" for n, v in fields)


# ---------------------------------------------------------------- bodies
def _long_lines(data: bytes) -> bool:
    if len(data) <= MAX_LINE:
        return False
    # map/max stay in C: a generator per line was most of prepare()'s cost.
    return max(map(len, data.split(b"\r\n"))) > MAX_LINE


def _bare_cr(data: bytes) -> bool:
    return data.count(b"\r") != data.count(b"\r\n")


def _charset_of(data: bytes) -> str:
    if data.isascii():
        return "us-ascii"
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return FALLBACK_CHARSET
    return "utf-8"


def _entity(fields: Fields, body: bytes, ctx: _Ctx, default: str, depth: int) -> tuple[Fields, bytes, bool]:
    """(fields, body, changed) of one MIME entity made wire-safe."""
    ctype, params = content_type(fields, default)
    cte = _cte(fields)
    if depth < MAX_DEPTH and ctype.startswith("multipart/") and params.get("boundary"):
        child = "message/rfc822" if ctype == "multipart/digest" else "text/plain"
        new, changed = _multipart(body, params["boundary"].encode("utf-8", "surrogateescape"), ctx, child, depth)
        if changed and cte in ("8bit", "binary") and new.isascii():
            fields = _set(fields, "Content-Transfer-Encoding", "7bit")
        return fields, new, changed
    if depth < MAX_DEPTH and ctype == "message/rfc822" and cte in ("7bit", "8bit", "binary"):
        head, inner = rfc5322.split_message(body)
        sub = rfc5322.header_fields(head)
        sub2, inner2, changed = _entity(sub, inner, ctx, "text/plain", depth + 1)
        fixed = fix_headers(sub2, ctx)
        if not changed and fixed == sub2:
            return fields, body, False
        new = serialize(fixed) + b"\r\n" + inner2
        if cte != "7bit" and new.isascii():
            fields = _set(fields, "Content-Transfer-Encoding", "7bit")
        return fields, new, True
    # A leaf.
    if cte == "base64":
        if not _long_lines(body):
            return fields, body, False
        try:
            raw = base64.b64decode(b"".join(body.split()), validate=True)
        except (binascii.Error, ValueError):
            return fields, body, False  # not ours to repair
        ctx.note("long lines re-wrapped")
        return fields, b64_encode(raw), True
    if cte == "quoted-printable":
        if not _long_lines(body):
            return fields, body, False
        ctx.note("long lines re-wrapped")
        return fields, qp_encode(binascii.a2b_qp(body)), True
    eight = not body.isascii()
    if _long_lines(body) or _bare_cr(body) or b"\0" in body or (eight and not ctx.eightbit) or cte == "binary" and eight:
        if _long_lines(body):
            ctx.note("long lines")
        if eight and not ctx.eightbit:
            ctx.note("8-bit converted")
        if ctype.startswith("text/"):
            return _set(fields, "Content-Transfer-Encoding", "quoted-printable"), qp_encode(body), True
        return _set(fields, "Content-Transfer-Encoding", "base64"), b64_encode(body), True
    if eight and cte not in ("8bit", "binary"):
        return _set(fields, "Content-Transfer-Encoding", "8bit"), body, True
    return fields, body, False


def _multipart(body: bytes, boundary: bytes, ctx: _Ctx, child: str, depth: int) -> tuple[bytes, bool]:
    delim = b"--" + boundary
    lines = body.split(b"\r\n")
    marks: list[int] = []  # indices of delimiter lines; the last may be the close delimiter
    closed = False
    for i, line in enumerate(lines):
        if line.startswith(delim):
            tail = line[len(delim) :].rstrip(b" \t")
            if tail in (b"", b"--"):
                marks.append(i)
                if tail == b"--":
                    closed = True
                    break
    if not marks:
        return body, False
    changed = False

    def outside(chunk: list[bytes]) -> list[bytes]:
        # Preamble and epilogue are not shown by MIME readers (RFC 2046
        # 5.1.1): a line too long for the wire is broken, 8-bit is kept.
        nonlocal changed
        fixed: list[bytes] = []
        for line in chunk:
            while len(line) > MAX_LINE:
                fixed.append(line[:MAX_LINE])
                line = line[MAX_LINE:]
                changed = True
            fixed.append(line)
        return fixed

    out = outside(lines[: marks[0]])
    for n, start in enumerate(marks):
        out.append(lines[start])
        if closed and n == len(marks) - 1:
            out += outside(lines[start + 1 :])
            break
        end = marks[n + 1] if n + 1 < len(marks) else len(lines)
        # The CRLF before a delimiter belongs to the delimiter (RFC 2046 5.1.1).
        part = b"\r\n".join(lines[start + 1 : end])
        head, inner = rfc5322.split_message(part)
        fields = rfc5322.header_fields(head)
        f2, inner2, ch = _entity(fields, inner, ctx, child, depth + 1)
        fixed = fix_headers(f2, ctx)
        if ch or fixed != f2:
            changed = True
            part = serialize(fixed) + b"\r\n" + inner2
        out.append(part)
    return b"\r\n".join(out), changed


def prepare(message: bytes, *, eightbit: bool, utf8: bool) -> Prepared:
    ctx = _Ctx(eightbit, utf8)
    head, body = rfc5322.split_message(message)
    fields = rfc5322.header_fields(head)
    if not fields:
        return Prepared(message, eightbit and not message.isascii())
    mime = _get(fields, "mime-version") is not None or _get(fields, "content-type") is not None
    f2, body2, changed = _entity(fields, body, ctx, "text/plain", 0)
    if not mime and (changed or not body.isascii()):
        # RFC 2045 4: a transfer encoding means nothing without MIME-Version.
        f2 = _set(f2, "MIME-Version", "1.0")
        f2 = _set(f2, "Content-Type", f"text/plain; charset={_charset_of(body)}")
        if _get(f2, "content-transfer-encoding") is None:
            f2 = _set(f2, "Content-Transfer-Encoding", "8bit" if not body2.isascii() else "7bit")
        ctx.note("MIME headers added")
    fixed = fix_headers(f2, ctx)
    if not changed and fixed == fields:
        data = message
    else:
        data = serialize(fixed) + b"\r\n" + body2
    return Prepared(data, eightbit and not body2.isascii(), ctx.changes)


def for_delivery(msg: QueuedMessage, *, eightbit: bool, utf8: bool, signer: Signer | None,
                 header_from: str | None = None) -> Prepared:
    """The pipeline's last steps: make ``msg`` wire-safe, then DKIM-sign exactly those bytes.

    ``header_from`` is msg's From address as the router parsed it once
    (routing/router.py Plan); the signer reuses it when preparing left the
    bytes as they were, and reads the From again only from changed bytes.
    """
    prepared = prepare(msg.message, eightbit=eightbit, utf8=utf8)
    if prepared.changes:
        log.event(msg.qid, f"converted for the relay ({', '.join(prepared.changes)})")
    if signer is not None and signer.keys:
        same = prepared.data is msg.message  # else the From is read again, from the changed bytes
        fields, keys = signer.sign(prepared.data, header_from=header_from if same else None)
        if keys:
            prepared.data = fields + prepared.data
            used = ", ".join(f"d={k.domain} s={k.selector} a={k.algorithm}" for k in keys)
            log.event(msg.qid, f"dkim=signed ({used})")
        else:
            log.event(msg.qid, "dkim=none (no [[dkim]] key for the From domain)")
    return prepared
