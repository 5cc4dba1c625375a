"""Accounts and routes: which relay a message leaves through, with what settings.

Contract:   ``resolve(cfg)`` returns a Routing: every relay's effective
            settings (file over preset over built-in default, with the
            source of each value) and the [[route]] rules.
            ``routing.choose(env, header_from)`` returns (relay name,
            fallback name or None) for one message.  Problems raise
            ConfigError naming the key.
Security:   an inline ``password`` is accepted only from a config file that
            nobody but the daemon can read: config.load checks it with
            core/trust.py's rule for secrets (DESIGN.md "Privilege model").
See also:   pysendmail.toml(5) [relay.NAME] and [[route]]; providers.py.

Rules are tried in order; the first that matches wins.  A rule matches
when every condition it has matches: ``sender`` (envelope sender) and
``from`` (the From header's address) take exact addresses
("a@example.org"), domains ("example.org" or "@example.org") or
wildcards ("*@example.org", "*.example.org", "bot-*@example.org");
``user`` takes login names or uids of the submitting user (as pickup
recorded them from the spool file's owner).  A rule with no condition is
the default route.  Without one, the plain [relay] table is the default;
with only named relays and no default rule, the first named relay is.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

from pysendmail.core import config
from pysendmail.core.errors import ConfigError
from pysendmail.core.spoolfile import Envelope
from pysendmail.daemon import providers
from pysendmail.daemon.routing.settings import Relay

DEFAULT = config.DEFAULT_RELAY

# Built-in defaults for keys whose schema default is None ("ask the preset").
_BUILTIN: dict[str, object] = {"tls": "implicit", "from_policy": "keep", "rate_unit": "messages"}
_PRESET_KEYS = ("host", "port", "tls", "from_policy", "max_recipients_per_message", "rate_per_minute", "rate_per_day",
                "rate_unit")
SECRET_KEYS = ("password",)


@dataclass(frozen=True)
class RelaySettings:
    name: str
    values: dict[str, object]  # every [relay] key, effective (config check and doctor print them)
    sources: dict[str, str]  # key -> "file", "preset yandex", "default"
    preset: providers.Preset | None
    relay: Relay  # the same values, typed and frozen (routing/settings.py): what routes and sessions read

    @property
    def provider(self) -> str | None:
        return self.preset.name if self.preset else None

    @property
    def account(self) -> str | None:
        """The account's address: from_address, else the username when it is one."""
        addr = self.relay.from_address or self.relay.username
        return addr if addr and "@" in addr else None

    @property
    def where(self) -> str:
        return "relay" if self.name == DEFAULT else f"relay.{self.name}"


def _settings(cfg: config.Config, name: str, table: dict[str, object]) -> RelaySettings:
    prefix = "relay" if name == DEFAULT else f"relay.{name}"
    where = prefix
    given = {k for k in table if f"{prefix}.{k}" in cfg.present}
    p = None
    if table.get("provider"):
        p = providers.preset(str(table["provider"]), str(table["region"]) if table.get("region") else None, where)
    values: dict[str, object] = {}
    sources: dict[str, str] = {}
    for key, value in table.items():
        if key in given:
            values[key], sources[key] = value, "file"
        elif p is not None and key in _PRESET_KEYS and getattr(p, key) not in ("", 0):
            values[key], sources[key] = getattr(p, key), f"preset {p.name}"
        elif value is None and key in _BUILTIN:
            values[key], sources[key] = _BUILTIN[key], "default"
        else:
            values[key], sources[key] = value, "default"
    if p is not None and p.name == "custom" and not values.get("host"):
        raise ConfigError(f"{where}.provider = \"custom\" needs {where}.host (and port and tls)")
    return RelaySettings(name, values, sources, p, Relay.from_values(values))


@dataclass
class Rule:
    relay: str
    senders: list[str] | None
    froms: list[str] | None
    users: list[str] | None
    fallback: str | None

    @property
    def is_default(self) -> bool:
        return self.senders is None and self.froms is None and self.users is None


def address_matches(pattern: str, address: str) -> bool:
    """Exact address, domain ("example.org", "@example.org"), or wildcard (*, ?)."""
    pattern, address = pattern.strip().lower(), address.strip().lower()
    if not address:
        return pattern in ("<>", "")
    domain = address.rpartition("@")[2]
    if "*" in pattern or "?" in pattern:
        return fnmatch.fnmatchcase(address, pattern) or ("@" not in pattern and fnmatch.fnmatchcase(domain, pattern))
    if pattern.startswith("@"):
        return domain == pattern[1:]
    if "@" not in pattern:
        return domain == pattern
    return address == pattern


class Routing:
    def __init__(self, relays: dict[str, RelaySettings], rules: list[Rule]) -> None:
        self.relays = relays
        self.rules = rules
        default = next((r for r in rules if r.is_default), None)
        if default is not None:
            self.default = default
        elif DEFAULT in relays:
            self.default = Rule(DEFAULT, None, None, None, None)
        else:
            self.default = Rule(next(iter(relays)), None, None, None, None)

    def choose(self, env: Envelope, header_from: str | None) -> tuple[str, str | None]:
        """(relay, fallback) for one message."""
        rule = self.default
        for r in self.rules:
            if r.is_default:
                continue
            if r.senders is not None and not any(address_matches(p, env.sender) for p in r.senders):
                continue
            if r.froms is not None and not (header_from and any(address_matches(p, header_from) for p in r.froms)):
                continue
            if r.users is not None and not (env.login in r.users or str(env.uid) in r.users):
                continue
            rule = r
            break
        fallback = rule.fallback or self.relays[rule.relay].relay.fallback
        return rule.relay, (fallback if fallback and fallback != rule.relay else None)


def resolve(cfg: config.Config) -> Routing:
    relays: dict[str, RelaySettings] = {}
    if any(p.startswith("relay.") and p.count(".") == 1 for p in cfg.present):
        relays[DEFAULT] = _settings(cfg, DEFAULT, cfg.values["relay"])
    for name, table in cfg.relays.items():
        relays[name] = _settings(cfg, name, table)
    if not relays:
        raise ConfigError("no relay is configured: add a [relay] table (or run 'pysendmail setup')")
    rules = [
        Rule(str(r["relay"]), _strs(r["sender"]), _strs(r["from"]), _strs(r["user"]),
             str(r["fallback"]) if r["fallback"] else None)
        for r in cfg.routes
    ]
    return Routing(relays, rules)


def _strs(value: object) -> list[str] | None:
    return [str(v) for v in value] if isinstance(value, list) else None
