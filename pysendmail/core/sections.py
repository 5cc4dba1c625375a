"""Typed, read-only views of the configuration's checked sections: cfg.spool.unready_lifetime is an int.

Contract:   ``SpoolConfig``, ``HostConfig``, ``MaildirConfig``,
            ``SubmitConfig``, ``QueueConfig``, ``LogConfig``,
            ``MetricsConfig``, ``FleetConfig`` (``configured``: the file
            has a [fleet] table) and ``DkimConfig`` (one [[dkim]] table)
            are built by core/config.py from tables it has
            type-checked and filled with defaults; assigning or deleting an
            attribute raises AttributeError.  The [relay] tables have their
            own view in the daemon (routes).
Security:   nothing here reads a file: the values were checked by config.py.
See also:   core/config.py (SCHEMA, DKIM_SCHEMA), pysendmail.toml(5).

Plain classes with __slots__, not frozen dataclasses, and a module of its
own that config.py imports only when it builds a Config: sendmail imports
config.py for its cached settings, and start-up time is the product.
"""

from __future__ import annotations

def _str(value: object) -> str:
    assert isinstance(value, str), value
    return value


def _opt_str(value: object) -> str | None:
    assert value is None or isinstance(value, str), value
    return value


def _int(value: object) -> int:
    assert isinstance(value, int) and not isinstance(value, bool), value
    return value


def _bool(value: object) -> bool:
    assert isinstance(value, bool), value
    return value


def _strs(value: object) -> tuple[str, ...] | None:
    if value is None:
        return None
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), value
    return tuple(value)


class _View:
    """Attributes set once, by the constructor; any later assignment raises AttributeError."""

    __slots__: tuple[str, ...] = ()

    def _init(self, **values: object) -> None:
        for name, value in values.items():
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"{type(self).__name__}.{name} is read-only")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{type(self).__name__}.{name} is read-only")

    def __repr__(self) -> str:
        shown = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"{type(self).__name__}({shown})"

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and all(getattr(self, n) == getattr(other, n) for n in self.__slots__)

    def __hash__(self) -> int:
        return hash(tuple(getattr(self, n) for n in self.__slots__))


class SpoolConfig(_View):
    """[spool]"""

    __slots__ = ("path", "user", "max_message_size", "unready_lifetime", "quarantine_max_entries",
                 "quarantine_max_size", "quarantine_lifetime", "deliver_without_daemon")
    path: str
    user: str | None
    max_message_size: int
    unready_lifetime: int
    quarantine_max_entries: int
    quarantine_max_size: int
    quarantine_lifetime: int
    deliver_without_daemon: bool

    def __init__(self, t: dict[str, object]) -> None:
        self._init(path=_str(t["path"]), user=_opt_str(t["user"]), max_message_size=_int(t["max_message_size"]),
                   unready_lifetime=_int(t["unready_lifetime"]),
                   quarantine_max_entries=_int(t["quarantine_max_entries"]),
                   quarantine_max_size=_int(t["quarantine_max_size"]),
                   quarantine_lifetime=_int(t["quarantine_lifetime"]),
                   deliver_without_daemon=_bool(t["deliver_without_daemon"]))


class HostConfig(_View):
    """[host]"""

    __slots__ = ("name", "default_domain", "aliases_file", "local_domains")
    name: str | None
    default_domain: str | None
    aliases_file: str
    local_domains: tuple[str, ...]

    def __init__(self, t: dict[str, object]) -> None:
        self._init(name=_opt_str(t["name"]), default_domain=_opt_str(t["default_domain"]),
                   aliases_file=_str(t["aliases_file"]), local_domains=_strs(t["local_domains"]) or ())


class MaildirConfig(_View):
    """[maildir]"""

    __slots__ = ("path",)
    path: str

    def __init__(self, t: dict[str, object]) -> None:
        self._init(path=_str(t["path"]))


class SubmitConfig(_View):
    """[submit]"""

    __slots__ = ("smtp_timeout", "smtp_session_limit")
    smtp_timeout: int
    smtp_session_limit: int

    def __init__(self, t: dict[str, object]) -> None:
        self._init(smtp_timeout=_int(t["smtp_timeout"]), smtp_session_limit=_int(t["smtp_session_limit"]))


class QueueConfig(_View):
    """[queue]"""

    __slots__ = ("lifetime", "retry_schedule", "postmaster")
    lifetime: int
    retry_schedule: tuple[str, ...] | None
    postmaster: str | None

    def __init__(self, t: dict[str, object]) -> None:
        self._init(lifetime=_int(t["lifetime"]), retry_schedule=_strs(t["retry_schedule"]),
                   postmaster=_opt_str(t["postmaster"]))


class DkimConfig(_View):
    """One [[dkim]] table."""

    __slots__ = ("domain", "selector", "key_file", "algorithm", "headers", "subdomains")
    domain: str
    selector: str
    key_file: str
    algorithm: str
    headers: tuple[str, ...] | None
    subdomains: bool

    def __init__(self, t: dict[str, object]) -> None:
        """From a checked table with every key (config.dkim_view fills the defaults)."""
        self._init(domain=_str(t["domain"]), selector=_str(t["selector"]), key_file=_str(t["key_file"]),
                   algorithm=_str(t["algorithm"]), headers=_strs(t["headers"]), subdomains=_bool(t["subdomains"]))


class LogConfig(_View):
    """[log]"""

    __slots__ = ("format",)
    format: str  # text | json

    def __init__(self, t: dict[str, object]) -> None:
        self._init(format=_str(t["format"]))


class MetricsConfig(_View):
    """[metrics]"""

    __slots__ = ("textfile", "textfile_interval", "listen", "allow_remote")
    textfile: str | None
    textfile_interval: int
    listen: str | None
    allow_remote: bool

    def __init__(self, t: dict[str, object]) -> None:
        self._init(textfile=_opt_str(t["textfile"]), textfile_interval=_int(t["textfile_interval"]),
                   listen=_opt_str(t["listen"]), allow_remote=_bool(t["allow_remote"]))


class FleetConfig(_View):
    """[fleet]; ``configured`` is False without the table (route state is then per host)."""

    __slots__ = ("configured", "redis", "password_file", "tls", "ca_file", "key_prefix", "fallback",
                 "fleet_size_hint", "timeout_ms")
    configured: bool
    redis: str | None
    password_file: str | None
    tls: bool
    ca_file: str | None
    key_prefix: str
    fallback: str  # share | pause
    fleet_size_hint: int | None
    timeout_ms: int

    def __init__(self, t: dict[str, object], configured: bool) -> None:
        hint = t["fleet_size_hint"]
        self._init(configured=configured, redis=_opt_str(t["redis"]), password_file=_opt_str(t["password_file"]),
                   tls=_bool(t["tls"]), ca_file=_opt_str(t["ca_file"]), key_prefix=_str(t["key_prefix"]),
                   fallback=_str(t["fallback"]), fleet_size_hint=None if hint is None else _int(hint),
                   timeout_ms=_int(t["timeout_ms"]))
