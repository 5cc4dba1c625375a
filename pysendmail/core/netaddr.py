"""Addresses in the configuration: metrics.listen and fleet.redis, parsed without the network.

Contract:   ``parse_listen(text, where)`` returns (IP literals to bind,
            port) for ``PORT`` (127.0.0.1 and ::1), ``localhost:PORT``
            (the same two), ``IPv4:PORT`` or ``[IPv6]:PORT``; anything else
            raises ConfigError naming ``where``.  ``is_loopback(ip)`` says
            whether a literal is a loopback address.  ``parse_redis_url``
            returns a RedisEndpoint for ``redis://[USER@]HOST[:PORT][/DB]``,
            ``rediss://...`` (TLS) or ``unix:///PATH[?db=N]``, and refuses a
            password in the URL: the configuration is every user's to read.
Security:   nothing here resolves a name or opens a socket; a bind to a
            non-loopback address is judged by the caller (config.py asks
            for metrics.allow_remote).
Speed:      plain string work, no re, ipaddress or urllib: config.build
            runs on sendmail's path when its settings cache is cold
            (tests/qa/test_imports.py).
See also:   pysendmail.toml(5) [metrics] and [fleet].
"""

from __future__ import annotations

from pysendmail.core.errors import ConfigError

LOOPBACK = ("127.0.0.1", "::1")


def _digits(text: str) -> bool:
    """ASCII digits only: str.isdigit() also takes "²" and other digits int() refuses."""
    return text.isascii() and text.isdigit()


def _ipv4(text: str) -> bool:
    parts = text.split(".")
    return len(parts) == 4 and all(_digits(p) and len(p) <= 3 and int(p) <= 255 for p in parts)


def _ipv6(text: str) -> bool:
    if text.count("::") > 1 or not text or any(c not in "0123456789abcdefABCDEF:." for c in text):
        return False
    groups = text.split(":")
    if "." in groups[-1]:  # ::ffff:127.0.0.1
        if not _ipv4(groups[-1]):
            return False
        groups = groups[:-1] + ["0", "0"]
    filled = [g for g in groups if g]
    if any(len(g) > 4 for g in filled):
        return False
    return len(groups) == 8 and len(filled) == 8 if "::" not in text else len(filled) <= 7


def _ipv6_words(text: str) -> list[int]:
    head, sep, tail = text.partition("::")
    if "." in text.rsplit(":", 1)[-1]:
        v4 = [int(p) for p in text.rsplit(":", 1)[-1].split(".")]
        text = text.rsplit(":", 1)[0] + f":{v4[0] << 8 | v4[1]:x}:{v4[2] << 8 | v4[3]:x}"
        head, sep, tail = text.partition("::")
    first = [int(g, 16) for g in head.split(":") if g]
    last = [int(g, 16) for g in tail.split(":") if g]
    return first + [0] * (8 - len(first) - len(last)) + last


def is_loopback(ip: str) -> bool:
    """127.0.0.0/8, ::1, and ::ffff:127.x.y.z (an IPv4 loopback written as IPv6)."""
    if _ipv4(ip):
        return ip.split(".")[0] == "127"
    if _ipv6(ip):
        words = _ipv6_words(ip)
        return words == [0] * 7 + [1] or (words[:6] == [0] * 5 + [0xFFFF] and words[6] >> 8 == 127)
    return False


def _port(text: str, where: str) -> int:
    if not _digits(text) or not 0 < int(text) < 65536:
        raise ConfigError(f"{where}: {text!r} is not a port number (1 to 65535)")
    return int(text)


def parse_listen(text: str, where: str) -> tuple[list[str], int]:
    """(addresses to bind, port) for ``PORT``, ``localhost:PORT``, ``IPv4:PORT`` or ``[IPv6]:PORT``."""
    text = text.strip()
    if _digits(text):
        return list(LOOPBACK), _port(text, where)
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if not sep or not _ipv6(host):
            raise ConfigError(f"{where}: {text!r} is not [IPv6]:PORT")
        return [host], _port(port, where)
    host, sep, port = text.rpartition(":")
    if not sep:
        raise ConfigError(f"{where}: {text!r} is not PORT or HOST:PORT")
    if host == "localhost":
        return list(LOOPBACK), _port(port, where)
    if not _ipv4(host):
        raise ConfigError(f"{where}: {host!r} is not an IPv4 address, [IPv6] address or localhost "
                          "(the daemon binds literals, it does not look names up)")
    return [host], _port(port, where)


class RedisEndpoint:
    """Where the fleet's Redis listens: TCP (host, port) or a Unix socket path, with db and ACL user."""

    __slots__ = ("host", "port", "path", "db", "username", "tls")

    def __init__(self, host: str | None, port: int, path: str | None, db: int, username: str | None,
                 tls: bool) -> None:
        self.host = host
        self.port = port
        self.path = path
        self.db = db
        self.username = username
        self.tls = tls

    def __str__(self) -> str:
        if self.path:
            return f"unix:{self.path}"
        host = f"[{self.host}]" if self.host and ":" in self.host else str(self.host)
        return f"{host}:{self.port}/{self.db}"


def parse_redis_url(text: str, where: str) -> RedisEndpoint:
    scheme, sep, rest = text.partition("://")
    if not sep or scheme not in ("redis", "rediss", "unix"):
        raise ConfigError(f"{where}: {text!r} is not redis://HOST:PORT/DB, rediss://HOST:PORT/DB or unix:///PATH")
    if scheme == "unix":
        path, _, query = rest.partition("?")
        db = 0
        for item in query.split("&") if query else []:
            key, _, value = item.partition("=")
            if key != "db" or not _digits(value):
                raise ConfigError(f"{where}: unix:// takes only ?db=N, not {item!r}")
            db = int(value)
        if not path.startswith("/"):
            raise ConfigError(f"{where}: unix:// needs an absolute socket path (unix:///run/redis/redis.sock)")
        return RedisEndpoint(None, 0, path, db, None, False)
    authority, _, tail = rest.partition("/")
    username = None
    if "@" in authority:
        userinfo, _, authority = authority.rpartition("@")
        if ":" in userinfo:
            raise ConfigError(f"{where}: no password in the URL (every local user reads the configuration): "
                              "put it in fleet.password_file")
        username = userinfo or None
    if authority.startswith("["):
        host, _, port_text = authority[1:].partition("]")
        port_text = port_text[1:] if port_text.startswith(":") else port_text
        if not _ipv6(host):
            raise ConfigError(f"{where}: {authority!r} is not [IPv6]:PORT")
    else:
        host, _, port_text = authority.partition(":")
    if not host or any(c in host for c in " \t/?#"):
        raise ConfigError(f"{where}: {text!r} names no host")
    port = _port(port_text, where) if port_text else 6379
    db_text = tail.partition("?")[0]
    if tail.partition("?")[2]:
        raise ConfigError(f"{where}: options in the URL are not read; use the [fleet] keys (tls, ca_file, "
                          "password_file)")
    if db_text and not _digits(db_text):
        raise ConfigError(f"{where}: the database after the host must be a number (redis://HOST:6379/0)")
    return RedisEndpoint(host, port, None, int(db_text or 0), username, scheme == "rediss")
