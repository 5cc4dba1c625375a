"""One relay's settings, typed and frozen: what a Route and its SMTP session read.

Contract:   ``Relay.from_values(values)`` builds the typed view once, from
            routes.RelaySettings.values (file over preset over built-in
            default, already checked against config.py's schema); every
            field is keyword-only and the object cannot change afterwards.
            Where each value came from stays in RelaySettings.sources
            ("file", "preset NAME", "default"), which config check and
            doctor print.  Unset optional values are None; numbers that
            have a schema default always have a number.
Security:   ``password`` (an inline secret) is left out of repr(), so a
            traceback or a debug print never shows it.
See also:   ../routes.py (resolution, rules), route.py, pysendmail.toml(5) [relay].
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True, kw_only=True)
class Relay:
    provider: str | None = None
    region: str | None = None
    host: str | None = None
    port: int | None = None  # None: the tls mode's port (smtp.py DEFAULT_PORTS)
    tls: str = "implicit"
    helo: str | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    password_file: str | None = None
    password_command: tuple[str, ...] | None = None
    credential: str | None = None
    oauth_token_command: tuple[str, ...] | None = None
    auth: str = "auto"
    ca_file: str | None = None
    tls_fingerprint: str | None = None
    timeout: int = 60
    pool_size: int = 4
    idle_timeout: int = 5
    max_recipients_per_message: int = 0
    rate_per_minute: int = 0
    rate_per_day: int = 0
    rate_unit: str = "messages"
    from_policy: str = "keep"
    from_address: str | None = None
    allowed_senders: tuple[str, ...] = ()
    fallback: str | None = None

    @classmethod
    def from_values(cls, values: Mapping[str, object]) -> Relay:
        def text(key: str) -> str | None:
            value = values.get(key)
            return str(value) if value not in (None, "") else None

        def number(key: str, default: int) -> int:
            value = values.get(key)
            # A falsy value means "unset" here, as it always has (0 or "" in a file).
            return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and value else default

        def words(key: str) -> tuple[str, ...] | None:
            value = values.get(key)
            return tuple(str(v) for v in value) if isinstance(value, list) else None

        return cls(
            provider=text("provider"), region=text("region"), host=text("host"),
            port=number("port", 0) or None, tls=text("tls") or "implicit", helo=text("helo"),
            username=text("username"), password=text("password"), password_file=text("password_file"),
            password_command=words("password_command"), credential=text("credential"),
            oauth_token_command=words("oauth_token_command"), auth=(text("auth") or "auto").lower(),
            ca_file=text("ca_file"), tls_fingerprint=text("tls_fingerprint"),
            timeout=number("timeout", 60), pool_size=number("pool_size", 4), idle_timeout=number("idle_timeout", 5),
            max_recipients_per_message=number("max_recipients_per_message", 0),
            rate_per_minute=number("rate_per_minute", 0), rate_per_day=number("rate_per_day", 0),
            rate_unit=text("rate_unit") or "messages", from_policy=text("from_policy") or "keep",
            from_address=text("from_address"), allowed_senders=words("allowed_senders") or (),
            fallback=text("fallback"),
        )
