"""Local aliases, and the one place that decides which addresses are local.

Contract:   ``parse(text, filename)`` returns {name: [target, ...]} or
            raises AliasError naming ``file:line``; ``load`` merges a file
            with the config's [aliases] (an error there names the TOML
            file and the line of the key).  ``LocalDomains`` says whether
            a domain is this host's own (localhost, the host's names,
            [host] local_domains, loopback address literals).
            ``Aliases.resolve`` maps one envelope recipient to the
            addresses to deliver to and those that cannot be delivered
            (with an RFC 3463 code and the reason): a local address is
            looked up by its local part, falls back to the ``root`` alias
            (the catch-all), and is never handed to a relay as it is;
            chains are followed and stop at loops.  ``qualify_sender``
            gives a bare or host-local sender (root, root@vm,
            root@localhost) the default domain.
Security:   pysendmail only relays: a pipe ("|cmd"), a file ("/path") or
            ":include:" is refused, because running commands or writing
            files on behalf of whoever sent the mail is exactly what a
            null client must never do.  Every loop is bounded by MAX_DEPTH.
See also:   aliases(5); Postfix local(8) "ALIAS EXPANSION", postalias(1),
            mydestination and luser_relay in postconf(5); RFC 6761 6.3
            (.localhost); RFC 5321 4.1.3 (address literals).
"""

from __future__ import annotations

from collections.abc import Iterable

from pysendmail.core import rfc5322

DEFAULT_ALIASES_FILE = "/etc/aliases"
MAX_DEPTH = 20
CATCH_ALL = "root"  # where a local name without an alias goes (Postfix: luser_relay)


class AliasError(ValueError):
    """A bad alias definition; the text names the file and line."""


def _refusal(target: str) -> str | None:
    bare = target.strip().strip('"')
    if bare.startswith("|"):
        return "is a pipe to a command"
    if bare.startswith("/"):
        return "is a file"
    if bare.lower().startswith(":include:"):
        return "is an :include: list"
    return None


def parse_targets(text: str, where: str) -> list[str]:
    """The addresses of one alias's right-hand side; errors start with ``where``."""
    targets: list[str] = []
    for item in _split_commas(text):
        item = item.strip()
        if not item:
            continue
        why = _refusal(item)
        if why:
            raise AliasError(f"{where}: {item!r} {why}; pysendmail only relays mail, so aliases may only name addresses")
        try:
            targets.extend(rfc5322.parse_address_list(item))
        except rfc5322.AddressError as exc:
            raise AliasError(f"{where}: {exc}") from None
    if not targets:
        raise AliasError(f"{where}: the alias has no target address")
    return targets


def _split_commas(text: str) -> list[str]:
    """Split on commas outside quotes (an alias may target "a,b"@x)."""
    parts: list[str] = []
    current: list[str] = []
    quoted = False
    for c in text:
        if c == '"':
            quoted = not quoted
        if c == "," and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(c)
    parts.append("".join(current))
    return parts


def parse(text: str, filename: str) -> dict[str, list[str]]:
    """Parse aliases(5) text: ``name: a, b``, # comments, indented continuations.

    Errors read ``FILE:LINE: what``, LINE being the first line of the entry.
    """
    entries: dict[str, list[str]] = {}
    logical: list[tuple[int, str]] = []
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if line[:1] in (" ", "\t"):
            if not logical:
                raise AliasError(f"{filename}:{number}: a continuation line with nothing to continue")
            first, previous = logical[-1]
            logical[-1] = (first, previous + " " + stripped)
        else:
            logical.append((number, line))
    for number, line in logical:
        where = f"{filename}:{number}"
        text = line.strip()
        quoted = text.startswith('"')
        if quoted:
            # Postfix aliases(5): a name holding whitespace, '#', ':' or '@'
            # is written in double quotes ("foo bar": ...).
            close = text.find('"', 1)
            after = text[close + 1 :].lstrip() if close > 0 else ""
            name, colon, rest = text[1:close], after[:1], after[1:]
            colon = colon if colon == ":" else ""
        else:
            name, colon, rest = text.partition(":")
        name = name.strip().lower()
        if not colon or not name or (not quoted and any(c in name for c in " \t@,")):
            raise AliasError(f"{where}: expected 'name: address, ...'")
        if name in entries:
            raise AliasError(f"{where}: alias {name!r} is defined twice")
        entries[name] = parse_targets(rest, where)
    return entries


# ---------------------------------------------------------------- local names
def split_address(addr: str) -> tuple[str, str | None]:
    """(local part as written, domain or None when unqualified); a quoted '@' belongs to the local part."""
    if addr.startswith('"'):
        end = addr.rfind('"')
        if end > 0:
            rest = addr[end + 1 :]
            return addr[: end + 1], (rest[1:] if rest.startswith("@") else None)
    local, at, domain = addr.rpartition("@")
    return (local, domain) if at else (addr, None)


def unquote_local(local: str) -> str:
    """'"foo bar"' -> 'foo bar' (RFC 5321 4.1.2: the quoting is syntax, not part of the name)."""
    if len(local) < 2 or not (local.startswith('"') and local.endswith('"')):
        return local
    chars: list[str] = []
    escaped = False
    for c in local[1:-1]:
        if c == "\\" and not escaped:
            escaped = True
            continue
        chars.append(c)
        escaped = False
    return "".join(chars)


def canonical_domain(domain: str) -> str:
    """A domain as compared: lower case, no trailing dot, IDNA A-label (U-labels converted)."""
    d = domain.strip().lower()
    if len(d) > 1 and d.endswith("."):
        d = d[:-1]
    if not d.isascii() and not d.startswith("["):
        try:
            # Python's codec is IDNA 2003 (nameprep maps case and width as
            # resolvers do); a name it refuses is compared as written.
            d = d.encode("idna").decode("ascii").lower()
        except UnicodeError:
            pass
    return d


def _loopback_literal(literal: str) -> bool:
    """[127.0.0.1], [IPv6:::1], [IPv6:::ffff:127.0.0.1] (RFC 5321 4.1.3): this host itself."""
    inner = literal[1:-1]
    if inner.startswith("ipv6:"):
        inner = inner[5:]
    import ipaddress

    try:
        ip = ipaddress.ip_address(inner)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped.is_loopback
    return ip.is_loopback


class LocalDomains:
    """The domains that are this host's own: mail to them is resolved here and never relayed as it is.

    Always local: localhost, localhost.localdomain, any name under
    .localhost (RFC 6761 6.3) and loopback address literals; the caller
    adds the host's names and [host] local_domains (Config.local_domains).
    Compared without case, without a trailing dot, and as IDNA A-labels.
    """

    __slots__ = ("names",)

    def __init__(self, names: Iterable[str] = ()) -> None:
        found = {canonical_domain(n) for n in names if n.strip().strip(".")}
        self.names = frozenset(found | {"localhost", "localhost.localdomain"})

    def __contains__(self, domain: object) -> bool:
        if not isinstance(domain, str) or not domain:
            return False
        d = canonical_domain(domain)
        if d.startswith("[") and d.endswith("]"):
            return _loopback_literal(d)
        return d in self.names or d.endswith(".localhost")

    @staticmethod
    def is_fqdn(domain: str) -> bool:
        """A name a provider can take as a mail domain: dotted, not a literal, not under localhost or localdomain."""
        d = canonical_domain(domain)
        return (
            "." in d
            and not d.startswith("[")
            and not d.endswith((".localhost", ".localdomain"))
        )


_NO_LOCAL = "pysendmail delivers no mail on this host while a relay is configured"


class Aliases:
    """The merged alias table ([aliases] in the config wins over the file), and local resolution.

    ``local_delivery`` is true in Maildir mode (no relay): a local address
    that nothing aliases is delivered there as it is.  With a relay it
    cannot be: it is refused with a reason that says which alias to add.
    ``where`` names the configuration in those reasons.
    """

    def __init__(
        self,
        table: dict[str, list[str]],
        default_domain: str,
        local_domains: Iterable[str] | LocalDomains = (),
        *,
        local_delivery: bool = True,
        where: str = "the configuration",
    ) -> None:
        self.table = table
        self.default_domain = default_domain
        self.local = local_domains if isinstance(local_domains, LocalDomains) else LocalDomains(local_domains)
        self.local_delivery = local_delivery
        self.where = where

    def local_name(self, addr: str) -> str | None:
        """The alias key for ``addr``: its local part, unquoted, lower case, if the domain is ours or absent."""
        local, domain = split_address(addr)
        if domain is not None and domain not in self.local:
            return None
        return unquote_local(local).lower()

    def is_local(self, addr: str) -> bool:
        """``addr`` stays on this host: its domain is local, or it has none and the default domain is local."""
        domain = split_address(addr)[1]
        return (domain if domain is not None else self.default_domain) in self.local

    def qualify(self, addr: str) -> str:
        return addr if split_address(addr)[1] is not None else f"{addr}@{self.default_domain}"

    def qualify_sender(self, addr: str) -> str:
        """The envelope sender as it leaves: bare names and this host's unqualified names get the default domain.

        mutt, mailutils and fail2ban build root@<short host name>; cron's
        and www-data's senders are bare; some scripts write
        root@localhost.  A provider refuses each of these as MAIL FROM, so
        each becomes local@default_domain (the host's FQDN unless
        host.default_domain says otherwise).  Local domains that are fully
        qualified (the FQDN, host.name, [host] local_domains) are kept.
        """
        if not addr:
            return addr
        local, domain = split_address(addr)
        if domain is None or (domain in self.local and not LocalDomains.is_fqdn(domain)):
            return f"{local}@{self.default_domain}"
        return addr

    def expand(self, addr: str) -> list[str]:
        """The addresses to deliver ``addr`` to (those that cannot be delivered are left out: see resolve)."""
        return self.resolve(addr)[0]

    def resolve(self, addr: str) -> tuple[list[str], list[tuple[str, str]]]:
        """(addresses to deliver to, [(address, "X.Y.Z reason")] that cannot be delivered).

        Duplicates are removed ignoring case; a name that aliases itself
        ends the chain (sendmail's rule: the name itself gets a copy).
        """
        out: list[str] = []
        refused: list[tuple[str, str]] = []
        self._resolve(addr, [], out, refused)
        seen: set[str] = set()
        unique = []
        for a in out:
            if a.lower() not in seen:
                seen.add(a.lower())
                unique.append(a)
        kept = []
        for a, why in refused:
            if a.lower() not in seen:
                seen.add(a.lower())
                kept.append((a, why))
        return unique, kept

    def _resolve(self, addr: str, chain: list[str], out: list[str], refused: list[tuple[str, str]]) -> None:
        local, domain = split_address(addr)
        qualified = addr if domain is not None else f"{local}@{self.default_domain}"
        ours = (domain if domain is not None else self.default_domain) in self.local
        if domain is not None and not ours:
            out.append(addr)  # another host's address: the relay's business
            return
        name = unquote_local(local).lower()
        targets = self.table.get(name)
        deep = len(chain) >= MAX_DEPTH
        if targets is not None and name not in chain and not deep:
            for target in targets:
                self._resolve(target, chain + [name], out, refused)
            return
        if not ours:
            # A bare name that no alias takes, and a default domain that is
            # not this host's (host.default_domain = "example.org"): its
            # mailbox is there, and the relay delivers to it.
            out.append(qualified)
            return
        if targets is not None:
            # A loop (a -> b -> a), a name that aliases itself, or a chain
            # too deep: it ends here, at a local address.
            if self.local_delivery:
                out.append(qualified)
            elif chain and chain[-1] == name:
                refused.append((qualified, f"5.4.6 alias {name} names itself, and {_NO_LOCAL}, so that copy "
                                           f"cannot be kept: remove {name} from its own targets in {self.where}"))
            else:
                cycle = " -> ".join(chain + [name])
                refused.append((qualified, f"5.4.6 alias loop ({cycle}) ends at a local address, and {_NO_LOCAL}: "
                                           f"break the cycle in {self.where}"))
            return
        catch = self.table.get(CATCH_ALL)
        if catch is not None and name != CATCH_ALL and CATCH_ALL not in chain and not deep:
            # A local name without an alias: the root alias catches it, as
            # Postfix's luser_relay would.  Never relayed as it is.
            for target in catch:
                self._resolve(target, chain + [name, CATCH_ALL], out, refused)
            return
        if self.local_delivery:
            out.append(qualified)  # Maildir mode: the Maildir is every local mailbox
        elif name == CATCH_ALL:
            refused.append((qualified, f"5.1.1 root has no alias, and {_NO_LOCAL}: "
                                       f'set [aliases] root = "you@example.org" in {self.where}'))
        elif CATCH_ALL in chain:
            refused.append((qualified, f"5.1.1 no such local user {name!r}, reached through the root alias, "
                                       f"which cannot catch it again: give {name} an alias in {self.where}"))
        else:
            refused.append((qualified, f"5.1.1 no such local user {name!r} and no root alias: "
                                       f'set [aliases] root = "you@example.org" in {self.where}'))

    def loops(self) -> list[list[str]]:
        """Alias cycles (a -> b -> a), for newaliases to report."""
        found: list[list[str]] = []
        for start in sorted(self.table):
            stack = [(start, [start])]
            while stack:
                name, path = stack.pop()
                for target in self.table.get(name, ()):
                    nxt = self.local_name(target)
                    if nxt is None or nxt not in self.table:
                        continue
                    if nxt == start and len(path) > 1:
                        found.append(path + [start])
                    elif nxt not in path and len(path) < MAX_DEPTH:
                        stack.append((nxt, path + [nxt]))
        unique: list[list[str]] = []
        seen: set[frozenset[str]] = set()
        for cycle in found:
            key = frozenset(cycle)
            if key not in seen:
                seen.add(key)
                unique.append(cycle)
        return unique


def load(aliases_file: str, config_table: dict[str, list[str]], config_name: str) -> dict[str, list[str]]:
    """Merge the aliases file (if present) with the config's [aliases].

    An error in [aliases] starts ``FILE:LINE: [aliases] NAME`` when
    ``config_name`` is the TOML file and the key is found in it.
    """
    merged: dict[str, list[str]] = {}
    try:
        with open(aliases_file, encoding="utf-8", errors="surrogateescape") as fh:
            merged.update(parse(fh.read(), aliases_file))
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise AliasError(f"cannot read {aliases_file}: {exc.strerror}") from None
    for name, targets in config_table.items():
        try:
            # One element at a time: a comma inside a list element is still
            # read as aliases(5) reads it, and [] has no target.
            checked: list[str] = []
            for target in targets or [""]:
                checked += parse_targets(target, "")
        except AliasError as exc:
            raise AliasError(config_where(config_name, name) + str(exc)) from None
        merged[name.lower()] = checked
    return merged


def config_line(config_name: str, name: str) -> int | None:
    """The line of ``name`` in the [aliases] table of the TOML file ``config_name``, if found."""
    try:
        with open(config_name, encoding="utf-8", errors="replace") as fh:
            return toml_key_line(fh.read(), "aliases", name)
    except OSError:
        return None


def config_where(config_name: str, name: str) -> str:
    """``FILE:LINE: [aliases] NAME`` for an entry of the config's [aliases] (``FILE [aliases] NAME`` without a line)."""
    line = config_line(config_name, name)
    return f"{config_name}:{line}: [aliases] {name}" if line else f"{config_name} [aliases] {name}"


# ---------------------------------------------------------------- TOML positions
def toml_key_line(text: str, table: str, key: str) -> int | None:
    """The line (from 1) where ``key`` of ``[table]`` is defined in the TOML ``text``, else None.

    tomllib gives no positions, so the text is read once, left to right,
    tracking strings (basic, literal, multi-line), comments and brackets,
    so that a "[x]" or "k =" inside a value is not taken for a header or
    a key.  Finds ``[table]`` then ``key = ...``, the dotted ``table.key
    = ...``, and ``[table.key]``.  The key as written wins; else the
    first that matches without case (alias names have none, and
    config.py lowercases them).  Linear in the length of the text.
    """
    want = key.lower()
    loose: int | None = None
    current: tuple[str, ...] = ()
    depth = 0  # open [ or { of a value
    closing: str | None = None  # the delimiter that ends an open multi-line string
    for number, line in enumerate(text.splitlines(), 1):
        i = 0
        if closing is None and depth == 0:
            stripped = line.lstrip()
            start = len(line) - len(stripped)
            if stripped.startswith("["):
                width = 2 if stripped.startswith("[[") else 1
                found = _key_path(stripped, width, "]" * width)
                if found is not None:
                    current = found[0]
                    if len(current) == 2 and current[0] == table and current[1].lower() == want:
                        if current[1] == key:
                            return number
                        loose = loose or number
                    i = start + found[1]
            else:
                found = _key_path(stripped, 0, "=")
                if found is not None:
                    path = current + found[0]
                    if len(path) >= 2 and path[0] == table and path[1].lower() == want:
                        if path[1] == key:
                            return number
                        loose = loose or number
                    i = start + found[1]
        closing, depth = _scan_value(line, i, closing, depth)
    return loose


_ESCAPES = {"b": "\b", "t": "\t", "n": "\n", "f": "\f", "r": "\r"}


def _key_path(s: str, i: int, end: str) -> tuple[tuple[str, ...], int] | None:
    """A dotted TOML key read from ``s[i]`` up to ``end``: (its parts, the index after ``end``), else None."""
    parts: list[str] = []
    n = len(s)
    while True:
        while i < n and s[i] in " \t":
            i += 1
        if i >= n:
            return None
        c = s[i]
        if c == '"':
            j = i + 1
            chars: list[str] = []
            while j < n and s[j] != '"':
                if s[j] == "\\" and j + 1 < n:
                    j += 1
                    esc = s[j]
                    if esc in "uU":
                        width = 4 if esc == "u" else 8
                        try:
                            chars.append(chr(int(s[j + 1 : j + 1 + width], 16)))
                        except ValueError:
                            return None
                        j += width
                    else:
                        chars.append(_ESCAPES.get(esc, esc))
                else:
                    chars.append(s[j])
                j += 1
            if j >= n:
                return None
            parts.append("".join(chars))
            i = j + 1
        elif c == "'":
            j = s.find("'", i + 1)
            if j < 0:
                return None
            parts.append(s[i + 1 : j])
            i = j + 1
        else:
            j = i
            while j < n and s[j].isascii() and (s[j].isalnum() or s[j] in "-_"):
                j += 1
            if j == i:
                return None
            parts.append(s[i:j])
            i = j
        while i < n and s[i] in " \t":
            i += 1
        if i < n and s[i] == ".":
            i += 1
            continue
        if s.startswith(end, i):
            return tuple(parts), i + len(end)
        return None


def _scan_value(line: str, i: int, closing: str | None, depth: int) -> tuple[str | None, int]:
    """Read the rest of a line of values: (delimiter of a multi-line string still open, bracket depth)."""
    n = len(line)
    while i < n:
        if closing is not None:
            j = line.find(closing, i)
            while j > 0 and closing == '"""' and _escaped(line, j):
                j = line.find(closing, j + 1)
            if j < 0:
                return closing, depth
            i = j + 3
            closing = None
            continue
        c = line[i]
        if c == "#":
            break
        if line.startswith('"""', i) or line.startswith("'''", i):
            closing = line[i : i + 3]
            i += 3
            continue
        if c == '"':
            j = i + 1
            while j < n and line[j] != '"':
                j += 2 if line[j] == "\\" else 1
            i = j + 1
            continue
        if c == "'":
            j = line.find("'", i + 1)
            i = n if j < 0 else j + 1
            continue
        if c in "[{":
            depth += 1
        elif c in "]}":
            depth = max(0, depth - 1)
        i += 1
    return closing, depth


def _escaped(line: str, j: int) -> bool:
    """True when the character at ``j`` follows an odd number of backslashes."""
    k = j
    while k > 0 and line[k - 1] == "\\":
        k -= 1
    return (j - k) % 2 == 1
