"""The one scanner of message headers and addresses (RFC 5322, RFC 6532).

Contract:   ``split_message`` separates the header section from the body;
            ``header_fields`` lists (name, raw value) pairs, folding kept;
            ``parse_address_list`` gives the addr-specs of a To/Cc/Bcc
            value (display names, comments, groups dropped);
            ``parse_sender`` reads a -f value.  Bad input raises
            AddressError, a ValueError whose text names the value.
Security:   used by the unprivileged submitter and again by the daemon on
            files from incoming/, so it is written for hostile input: no
            recursion on input, no regular expressions (backtracking, and
            ``re`` costs 7 ms of start-up), linear in the input length.
See also:   RFC 5322 3.2-3.4 and 4.4 (obsolete syntax we still accept),
            RFC 6532 3.2 (UTF-8 in addresses), RFC 5321 4.1.2.
"""

from __future__ import annotations

# atext of RFC 5322 3.2.3; any non-ASCII character is atext too (RFC 6532 3.2).
_ATEXT = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-/=?^_`{|}~")
_SPECIALS = frozenset('()<>[]:;@\\,."')
_WSP = frozenset(" \t\r\n")


class AddressError(ValueError):
    """A header or address that is not valid; the text names it."""


def split_message(message: bytes) -> tuple[bytes, bytes]:
    """Split a CRLF message into (header section, body), blank line dropped.

    A message whose first line is not a header field has no header section
    at all (as Postfix's cleanup sees it): everything is body.
    """
    if message.startswith(b"\r\n"):
        return b"", message[2:]
    first = message.split(b"\r\n", 1)[0]
    if not is_field_line(first):
        return b"", message
    cut = message.find(b"\r\n\r\n")
    if cut < 0:
        head = message if message.endswith(b"\r\n") else message + b"\r\n"
        rest = b""
    else:
        head, rest = message[: cut + 2], message[cut + 4 :]
    # A line that is neither a field nor a continuation ends the header
    # section early (RFC 5322 2.2 has no room for it): it starts the body.
    # This holds without a blank line too, or "To: a\nbody text\nBcc: b"
    # would have -t mail the body's "Bcc:" line.
    pos = 0
    while pos < len(head):
        eol = head.index(b"\r\n", pos)
        line = head[pos:eol]
        if pos and line[:1] not in (b" ", b"\t") and not is_field_line(line):
            return head[:pos], message[pos:]
        pos = eol + 2
    return head, rest


def is_field_line(line: bytes) -> bool:
    """True for ``Name: value``: name of printable ASCII without colon."""
    colon = line.find(b":")
    if colon <= 0:
        return False
    name = line[:colon].rstrip(b" \t")  # obs-optional: "Subject :" (RFC 5322 4.5)
    return bool(name) and all(33 <= c <= 126 for c in name)


def header_fields(head: bytes) -> list[tuple[str, bytes]]:
    """(name, value) for each field; value keeps its folding, lacks the final CRLF."""
    fields: list[tuple[str, bytes]] = []
    for line in head.split(b"\r\n"):
        if not line:
            continue
        if line[:1] in (b" ", b"\t") and fields:
            name, value = fields[-1]
            fields[-1] = (name, value + b"\r\n" + line)
            continue
        colon = line.find(b":")
        if colon <= 0:
            continue  # cannot happen after split_message; be robust anyway
        fields.append((line[:colon].rstrip(b" \t").decode("ascii"), line[colon + 1 :]))
    return fields


def unfold(value: bytes) -> str:
    """The field value as one line of text (RFC 5322 2.2.3), 8-bit kept."""
    text = value.replace(b"\r\n", b"").decode("utf-8", "surrogateescape")
    return text.strip(" \t")


def _tokens(text: str, ends: list[int] | None = None) -> list[tuple[str, str]]:
    """Tokenise into (kind, text): atom, quoted, literal, special, space.

    When ``ends`` is given, the end offset of each token is appended to it.
    """
    out: list[tuple[str, str]] = []
    i, n = 0, len(text)
    while i < n:
        if ends is not None and len(ends) < len(out):
            ends.append(i)
        c = text[i]
        if c in _WSP:
            while i < n and text[i] in _WSP:
                i += 1
            out.append(("space", " "))
        elif c == "(":
            depth = 0
            while i < n:
                c = text[i]
                if c == "\\":
                    i += 2
                    continue
                if c == "(":
                    depth += 1
                elif c == ")":
                    depth -= 1
                    if depth == 0:
                        break
                i += 1
            if depth:
                raise AddressError(f"unbalanced comment in {text!r}")
            i += 1
            out.append(("space", " "))
        elif c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            if j >= n:
                raise AddressError(f"unterminated quoted string in {text!r}")
            out.append(("quoted", text[i : j + 1]))
            i = j + 1
        elif c == "[":
            j = text.find("]", i)
            if j < 0:
                raise AddressError(f"unterminated domain literal in {text!r}")
            out.append(("literal", text[i : j + 1]))
            i = j + 1
        elif c in _SPECIALS:
            out.append(("special", c))
            i += 1
        elif c in _ATEXT or c > "\x7f":
            j = i
            while j < n and (text[j] in _ATEXT or text[j] > "\x7f"):
                j += 1
            out.append(("atom", text[i:j]))
            i = j
        else:
            raise AddressError(f"character {c!r} is not allowed in {text!r}")
    if ends is not None and len(ends) < len(out):
        ends.append(i)
    return out


def _addr_spec(tokens: list[tuple[str, str]], whole: str) -> str:
    """Join the tokens of one addr-spec, refusing anything else."""
    words = [t for t in tokens if t[0] != "space"]
    # "John Smith" with no angle brackets is a name, not an address; so is
    # "a b@c". Spaces are only allowed around dots and the at-sign.
    prev = ""
    for kind, value in tokens:
        if kind == "space":
            continue
        if prev in ("atom", "quoted") and kind in ("atom", "quoted", "literal"):
            raise AddressError(f"{whole.strip()!r} is not an address")
        prev = kind if kind != "special" else value
    addr = "".join(v for _, v in words)
    check_addr_spec(addr, whole)
    return addr


def check_addr_spec(addr: str, whole: str | None = None) -> None:
    """Raise AddressError unless ``addr`` is local@domain or a bare local name."""
    shown = (whole if whole is not None else addr).strip()
    if not addr:
        raise AddressError(f"{shown!r} is not an address")
    if any(c in addr for c in "\r\n\0"):
        raise AddressError(f"{shown!r} holds a line break or NUL")
    if any("\udc80" <= c <= "\udcff" for c in addr):  # surrogateescape'd bytes
        raise AddressError(f"{shown!r} is not valid UTF-8")
    if addr.startswith('"'):
        end = addr.rfind('"')
        local, rest = addr[: end + 1], addr[end + 1 :]
        if len(local) < 2 or (rest and not rest.startswith("@")):
            raise AddressError(f"{shown!r} is not an address")
        domain = rest[1:] if rest else None
    else:
        local, at, domain_part = addr.rpartition("@")
        if not at:
            local, domain = addr, None
        else:
            domain = domain_part
        if not _is_dot_atom(local):
            raise AddressError(f"{shown!r} is not an address")
    if domain is not None:
        if domain.startswith("[") and domain.endswith("]") and len(domain) > 2:
            return
        if not _is_dot_atom(domain) or any(c in domain for c in "!#$%&'*+/=?^`{|}~"):
            raise AddressError(f"{shown!r} has an invalid domain")
    if len(addr.encode("utf-8", "surrogateescape")) > 254:
        raise AddressError(f"{shown[:60]!r}... is longer than an address may be")


def _is_dot_atom(text: str) -> bool:
    if not text or text.startswith(".") or text.endswith(".") or ".." in text:
        return False
    return all(c == "." or c in _ATEXT or c > "\x7f" for c in text)


def parse_address_list(value: str) -> list[str]:
    """The addr-specs of an address-list (RFC 5322 3.4), in order.

    Accepts display names, comments, route-addrs, groups (their members are
    returned; an empty group such as ``undisclosed-recipients:;`` gives
    nothing) and empty list elements (RFC 5322 4.4).
    """
    return [addr for addr, _ in _parse_list(value)]


def qualify_address_list(value: str, domain: str) -> str | None:
    """``value`` with "@domain" added to each bare local name, or None if none.

    Cron writes ``From: root (Cron Daemon)``; providers refuse a From
    without a domain, so cleanup qualifies header addresses as Postfix's
    append_at_myorigin does.  Display names and comments stay as written.
    """
    found = [(addr, end) for addr, end in _parse_list(value) if "@" not in addr.rsplit('"', 1)[-1]]
    if not found:
        return None
    for _, end in reversed(found):
        value = value[:end] + "@" + domain + value[end:]
    return value


def _parse_list(value: str) -> list[tuple[str, int]]:
    """(addr-spec, offset just after it in ``value``) for each address."""
    ends: list[int] = []
    tokens = _tokens(value, ends)
    result: list[tuple[str, int]] = []
    current: list[tuple[str, str]] = []
    current_end = 0
    in_group = False
    angle_done = False
    i, n = 0, len(tokens)
    while i < n:
        kind, text = tokens[i]
        if kind == "special" and text == "<":
            close = i + 1
            while close < n and tokens[close] != ("special", ">"):
                if tokens[close] == ("special", "<"):
                    raise AddressError(f"nested angle brackets in {value!r}")
                close += 1
            if close >= n:
                raise AddressError(f"missing '>' in {value!r}")
            inner = tokens[i + 1 : close]
            # obs-route (RFC 5322 4.4): "<@relay1,@relay2:user@host>"
            for j, tok in enumerate(inner):
                if tok == ("special", ":"):
                    inner = inner[j + 1 :]
                    break
            spec = "".join(v for k, v in inner if k != "space")
            if spec:  # "<>" in a header is nobody; skip it
                result.append((_addr_spec(inner, spec), ends[close] - 1))
            angle_done = True
            current = []
            i = close + 1
            continue
        if kind == "special" and text == ":" and not in_group and not angle_done:
            in_group = True  # the words so far were the group's display name
            current = []
        elif kind == "special" and text in ",;":
            if text == ";" and not in_group:
                raise AddressError(f"';' outside a group in {value!r}")
            if any(k != "space" for k, _ in current):
                if angle_done:
                    raise AddressError(f"text after '>' in {value!r}")
                result.append((_addr_spec(current, "".join(v for _, v in current)), current_end))
            if text == ";":
                in_group = False
            current = []
            angle_done = False
        elif angle_done:
            if kind != "space":
                raise AddressError(f"text after '>' in {value!r}")
        else:
            current.append((kind, text))
            if kind != "space":
                current_end = ends[i]
        i += 1
    if in_group:
        raise AddressError(f"group without its closing ';' in {value!r}")
    if any(k != "space" for k, _ in current):
        result.append((_addr_spec(current, "".join(v for _, v in current)), current_end))
    return result


def parse_sender(value: str) -> str:
    """A -f/-r value: one address, ``<addr>`` allowed; '' and '<>' are the null sender."""
    if any(c in value for c in "\r\n\0"):
        raise AddressError(f"sender {value!r} holds a line break or NUL")
    text = value.strip()
    if text in ("", "<>"):
        return ""
    found = parse_address_list(text)
    if len(found) != 1:
        raise AddressError(f"sender {value!r} is not one address")
    return found[0]


def parse_recipient_arg(value: str) -> list[str]:
    """A recipient on the command line: one address, or a comma list (as sendmail allows)."""
    if any(c in value for c in "\r\n\0"):
        raise AddressError(f"recipient {value!r} holds a line break or NUL")
    found = parse_address_list(value)
    if not found:
        raise AddressError(f"recipient {value!r} is not an address")
    return found


def first_from(message: bytes) -> str | None:
    """The first address of the message's From header; None without one or when it does not parse.

    Used where the From decides something (the route, the DKIM key), so
    both read it the same way.
    """
    head, _ = split_message(message)
    for name, value in header_fields(head):
        if name.lower() == "from":
            try:
                found = parse_address_list(unfold(value))
            except AddressError:
                return None
            return found[0] if found else None
    return None


def ascii_address(addr: str) -> str | None:
    """``addr`` with a non-ASCII domain as its IDNA A-label; None if that cannot make it ASCII.

    For a relay without SMTPUTF8 (RFC 6531): ``user@пример.рф`` can go as
    ``user@xn--e1afmkfd.xn--p1ai`` (RFC 5890), the same mailbox; a
    non-ASCII local part has no ASCII form and needs SMTPUTF8.
    Python's codec is IDNA 2003 (nameprep), which maps case and width as
    resolvers do; a name it refuses is None here, never an exception.
    """
    if addr.isascii():
        return addr
    local, at, domain = addr.rpartition("@")
    if not at or not local.isascii():
        return None
    try:
        return f"{local}@{domain.encode('idna').decode('ascii')}"
    except UnicodeError:
        return None
