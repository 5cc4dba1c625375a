"""The one scanner of message headers and addresses (RFC 5322, RFC 6532).

Contract:   ``split_message`` separates the header section from the body;
            ``header_fields`` lists (name, raw value) pairs, folding kept;
            ``parse_address_list`` gives the addr-specs of a To/Cc/Bcc
            value (display names, comments, groups dropped);
            ``parse_sender`` reads a -f value; ``check_addr_spec`` holds
            every address to RFC 5321 4.1.2 syntax and 4.5.3.1 lengths
            (what a relay would refuse is refused at submission).  Bad
            input raises AddressError, a ValueError whose text names the
            value (cut to about 100 characters).
            ``normalise_newlines`` makes every line end CRLF (used by
            submit/intake.py and again by daemon pickup and cleanup).
            ``header_limit_error`` names the header limit (MAX_HEADER_BYTES,
            MAX_FIELD_BYTES, MAX_FIELDS, MAX_FIELD_LINES) a header section
            breaks, or gives None.
Security:   used by the unprivileged submitter and again by the daemon on
            files from incoming/, so it is written for hostile input: no
            recursion on input, no regular expressions (backtracking, and
            ``re`` costs 7 ms of start-up), linear in the input length
            (no value grown by repeated concatenation: issue 10's 400,000
            continuation lines cost seconds per stage when it was).
See also:   RFC 5322 3.2-3.4 and 4.4 (obsolete syntax we still accept),
            RFC 6532 3.2 (UTF-8 in addresses), RFC 5321 4.1.2, 4.1.3
            (address literals) and 4.5.3.1 (lengths), RFC 6531 3.3;
            Postfix header_size_limit, Exim header_maxsize.
"""

from __future__ import annotations

# atext of RFC 5322 3.2.3; any non-ASCII character is atext too (RFC 6532 3.2).
_ATEXT = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-/=?^_`{|}~")
_SPECIALS = frozenset('()<>[]:;@\\,."')
_WSP = frozenset(" \t\r\n")


def normalise_newlines(data: bytes) -> bytes:
    """Every line ending CRLF: LF and CRLF each end one line; a bare CR stays inside its line.

    A bare CR never ends a line (as in Postfix and sendmail): an
    application that strips only LF from a user's Subject would otherwise
    let ``"hi\\rBcc: evil@example.net"`` become a Bcc field.  The wire
    stage makes the CR safe for SMTP (RFC 5321 2.3.8) later.
    """
    data = data.replace(b"\r\n", b"\n")
    if data and not data.endswith(b"\n"):
        data += b"\n"
    return data.replace(b"\n", b"\r\n")


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
    """(name, value) for each field; value keeps its folding, lacks the final CRLF.

    Linear in the size of ``head``: each field's lines are collected and
    joined once (appending to a growing value was quadratic in the number
    of continuation lines: issue 10's 400,000-line Subject).
    """
    fields: list[tuple[str, bytes]] = []
    lines: list[bytes] = []
    name = ""
    for line in head.split(b"\r\n"):
        if not line:
            continue
        if line[:1] in (b" ", b"\t") and lines:
            lines.append(line)
            continue
        colon = line.find(b":")
        if colon <= 0:
            continue  # cannot happen after split_message; be robust anyway
        if lines:
            fields.append((name, b"\r\n".join(lines)))
        name = line[:colon].rstrip(b" \t").decode("ascii")
        lines = [line[colon + 1 :]]
    if lines:
        fields.append((name, b"\r\n".join(lines)))
    return fields


# Limits on a header section, as a mature MTA sets them (none is a config
# key: no legitimate local submission comes near them, and a limit an admin
# can raise is one a hostile user can make the daemon pay for).
#   MAX_HEADER_BYTES   the whole section: Exim's header_maxsize (1 MiB);
#                      sendmail's MaxHeadersLength default is 32 KiB.
#   MAX_FIELD_BYTES    one field with its continuation lines: Postfix's
#                      header_size_limit (102400), which truncates; we refuse.
#   MAX_FIELDS         number of fields (a Received chain of 50 hops, ARC
#                      sets and list headers stay far below it).
#   MAX_FIELD_LINES    lines of one field: 102400 octets folded at 78
#                      columns is 1313 lines; the cap keeps per-field work of
#                      libraries we do not control (dkimpy appends each
#                      continuation line to the field) bounded.
MAX_HEADER_BYTES = 1 << 20
MAX_FIELD_BYTES = 102400
MAX_FIELDS = 1000
MAX_FIELD_LINES = 4096


def header_limit_error(head: bytes) -> str | None:
    """The sentence saying which header limit ``head`` breaks, or None.

    ``head`` is a header section as split_message returns it.  One pass,
    linear in its length; called by the submitter (sendmail, -t, -bs) and
    again by pickup on files written straight into incoming/.
    """
    if len(head) > MAX_HEADER_BYTES:
        return f"the header section is {len(head)} bytes, over the limit of {MAX_HEADER_BYTES}"
    fields = 0
    field_start = 0
    field_lines = 0
    pos, n = 0, len(head)
    while pos < n:
        eol = head.find(b"\r\n", pos)
        if eol < 0:
            eol = n
        if head[pos : pos + 1] in (b" ", b"\t") and fields:
            field_lines += 1
            if field_lines > MAX_FIELD_LINES:
                return f"header field {_field_name(head, field_start)} has more than {MAX_FIELD_LINES} lines"
        else:
            if fields and pos - field_start > MAX_FIELD_BYTES:
                return f"header field {_field_name(head, field_start)} is over the limit of {MAX_FIELD_BYTES} bytes"
            fields += 1
            if fields > MAX_FIELDS:
                return f"the message has more than {MAX_FIELDS} header fields"
            field_start, field_lines = pos, 1
        pos = eol + 2
    if fields and n - field_start > MAX_FIELD_BYTES:
        return f"header field {_field_name(head, field_start)} is over the limit of {MAX_FIELD_BYTES} bytes"
    return None


def _field_name(head: bytes, start: int) -> str:
    name = head[start : start + 80].split(b":", 1)[0]
    return name.decode("ascii", "replace")


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
                raise AddressError(f"unbalanced comment in {_shown(text)}")
            i += 1
            out.append(("space", " "))
        elif c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            if j >= n:
                raise AddressError(f"unterminated quoted string in {_shown(text)}")
            out.append(("quoted", text[i : j + 1]))
            i = j + 1
        elif c == "[":
            j = text.find("]", i)
            if j < 0:
                raise AddressError(f"unterminated domain literal in {_shown(text)}")
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
            raise AddressError(f"character {c!r} is not allowed in {_shown(text)}")
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
            raise AddressError(f"{_shown(whole.strip())} is not an address")
        prev = kind if kind != "special" else value
    addr = "".join(v for _, v in words)
    check_addr_spec(addr, whole)
    return addr


def _shown(text: str) -> str:
    """A value for an error sentence: repr, at most about 100 characters."""
    return repr(text) if len(text) <= 100 else repr(text[:100]) + "..."


# RFC 5321 4.5.3.1: local part 64 octets, domain 255, path 256 (with "<>").
MAX_LOCAL = 64
MAX_DOMAIN = 255
MAX_ADDRESS = 254
_LDH = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-")
_HEX = frozenset("0123456789abcdefABCDEF")


def check_addr_spec(addr: str, whole: str | None = None) -> None:
    """Raise AddressError unless ``addr`` is a Mailbox of RFC 5321 4.1.2 or a bare local name.

    What a relay would refuse as syntax is refused here, at submission,
    rather than at delivery: Local-part (Dot-string or Quoted-string, at
    most 64 octets), Domain (LDH labels of at most 63 octets, U-labels
    allowed as RFC 6531 3.3 does, at most 255 octets) or address-literal
    (IPv4, IPv6, General-address-literal), the whole at most 254 octets.
    A bare local name (cron's "root") is qualified later by cleanup.
    """
    shown = _shown((whole if whole is not None else addr).strip())
    if not addr:
        raise AddressError(f"{shown} is not an address")
    if any(c in addr for c in "\r\n\0"):
        raise AddressError(f"{shown} holds a line break or NUL")
    if any("\udc80" <= c <= "\udcff" for c in addr):  # surrogateescape'd bytes
        raise AddressError(f"{shown} is not valid UTF-8")
    if not addr.isprintable():
        # C0/C1 controls (a C1 CSI drives terminals showing mailq), zero-width
        # and bidi format characters: RFC 5321 has no room for the first,
        # and the others only disguise an address.
        raise AddressError(f"{shown} holds a control or invisible character")
    if addr.startswith('"'):
        end = _quoted_end(addr)
        if end < 0:
            raise AddressError(f"{shown} has an invalid quoted local part")
        local, rest = addr[: end + 1], addr[end + 1 :]
        if rest and not rest.startswith("@"):
            raise AddressError(f"{shown} is not an address")
        domain = rest[1:] if rest else None
    else:
        local, at, domain_part = addr.rpartition("@")
        if not at:
            local, domain = addr, None
        else:
            domain = domain_part
        if not _is_dot_atom(local):
            raise AddressError(f"{shown} is not an address")
    if len(local.encode("utf-8")) > MAX_LOCAL:
        raise AddressError(f"{shown} has a local part longer than {MAX_LOCAL} octets (RFC 5321 4.5.3.1.1)")
    if domain is not None:
        why = domain_error(domain)
        if why:
            raise AddressError(f"{shown} has an invalid domain: {why}")
    if len(addr.encode("utf-8")) > MAX_ADDRESS:
        raise AddressError(f"{shown} is longer than an address may be ({MAX_ADDRESS} octets, RFC 5321 4.5.3.1.3)")


def _quoted_end(addr: str) -> int:
    """Index of the closing quote of the Quoted-string ``addr`` starts with; -1 if invalid.

    RFC 5321 4.1.2: qtextSMTP is %d32-33 / %d35-91 / %d93-126, a
    quoted-pairSMTP is a backslash and %d32-126; UTF-8 is allowed (RFC 6531).
    """
    i, n = 1, len(addr)
    while i < n:
        c = addr[i]
        if c == '"':
            return i
        if c == "\\":
            if i + 1 >= n or not (" " <= addr[i + 1] <= "~"):
                return -1
            i += 2
            continue
        if c < " " or c == "\x7f":
            return -1
        i += 1
    return -1


def domain_error(domain: str) -> str | None:
    """Why ``domain`` is not an RFC 5321 Domain or address-literal; None when it is."""
    if not domain:
        return "it is empty"
    if len(domain.encode("utf-8")) > MAX_DOMAIN:
        return f"longer than {MAX_DOMAIN} octets"
    if domain.startswith("["):
        if not domain.endswith("]"):
            return "an unterminated address literal"
        return _literal_error(domain[1:-1])
    for label in domain.split("."):
        if not label:
            return "an empty label"
        if len(label.encode("utf-8")) > 63:
            return "a label longer than 63 octets"
        if label[0] == "-" or label[-1] == "-":
            return f"label {label!r} starts or ends with a hyphen"
        if any(c not in _LDH and c <= "\x7f" for c in label):
            return f"label {label!r} holds a character other than a letter, digit or hyphen"
    return None


def _literal_error(inner: str) -> str | None:
    """RFC 5321 4.1.3: IPv4, "IPv6:" IPv6, or Standardized-tag ":" dcontent."""
    if _is_ipv4(inner):
        return None
    tag, colon, rest = inner.partition(":")
    if colon and tag.lower() == "ipv6":
        return None if _is_ipv6(rest) else f"[{inner}] is not an IPv6 address"
    if colon and tag and rest and all(c in _LDH for c in tag) and tag[-1] != "-" \
            and all("!" <= c <= "Z" or "^" <= c <= "~" for c in rest):
        return None  # General-address-literal: dcontent is %d33-90 / %d94-126
    return f"[{inner}] is not an address literal"


def _is_ipv4(text: str) -> bool:
    parts = text.split(".")
    return len(parts) == 4 and all(0 < len(p) <= 3 and p.isascii() and p.isdigit() and int(p) <= 255 for p in parts)


def _is_ipv6(text: str) -> bool:
    """IPv6-full, IPv6-comp, IPv6v4-full or IPv6v4-comp of RFC 5321 4.1.3."""
    groups = 8
    if "." in text:  # the last 32 bits written as IPv4
        head, sep, v4 = text.rpartition(":")
        if not sep or not _is_ipv4(v4):
            return False
        text = head + ":" if head.endswith(":") else head  # "1::" + "1.2.3.4" keeps its "::"
        groups = 6
    if text.count("::") > 1:
        return False

    def hexes(part: str) -> list[str] | None:
        if not part:
            return []
        items = part.split(":")
        if all(0 < len(h) <= 4 and all(c in _HEX for c in h) for h in items):
            return items
        return None

    if "::" in text:
        left, right = text.split("::")
        a, b = hexes(left), hexes(right)
        # RFC 5321: "::" stands for at least 2 groups of zeros, so at most
        # groups-2 are written.
        return a is not None and b is not None and len(a) + len(b) <= groups - 2
    full = hexes(text)
    return full is not None and len(full) == groups


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
    pieces, prev = [], 0
    for _, end in found:  # in order; one join keeps this linear in the value's length
        pieces += [value[prev:end], "@", domain]
        prev = end
    pieces.append(value[prev:])
    return "".join(pieces)


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
                    raise AddressError(f"nested angle brackets in {_shown(value)}")
                close += 1
            if close >= n:
                raise AddressError(f"missing '>' in {_shown(value)}")
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
                raise AddressError(f"';' outside a group in {_shown(value)}")
            if any(k != "space" for k, _ in current):
                if angle_done:
                    raise AddressError(f"text after '>' in {_shown(value)}")
                result.append((_addr_spec(current, "".join(v for _, v in current)), current_end))
            if text == ";":
                in_group = False
            current = []
            angle_done = False
        elif angle_done:
            if kind != "space":
                raise AddressError(f"text after '>' in {_shown(value)}")
        else:
            current.append((kind, text))
            if kind != "space":
                current_end = ends[i]
        i += 1
    if in_group:
        raise AddressError(f"group without its closing ';' in {_shown(value)}")
    if any(k != "space" for k, _ in current):
        result.append((_addr_spec(current, "".join(v for _, v in current)), current_end))
    return result


def parse_sender(value: str) -> str:
    """A -f/-r value: one address, ``<addr>`` allowed; '' and '<>' are the null sender."""
    if any(c in value for c in "\r\n\0"):
        raise AddressError(f"sender {_shown(value)} holds a line break or NUL")
    text = value.strip()
    if text in ("", "<>"):
        return ""
    found = parse_address_list(text)
    if len(found) != 1:
        raise AddressError(f"sender {_shown(value)} is not one address")
    return found[0]


def parse_recipient_arg(value: str) -> list[str]:
    """A recipient on the command line: one address, or a comma list (as sendmail allows)."""
    if any(c in value for c in "\r\n\0"):
        raise AddressError(f"recipient {_shown(value)} holds a line break or NUL")
    found = parse_address_list(value)
    if not found:
        raise AddressError(f"recipient {_shown(value)} is not an address")
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
