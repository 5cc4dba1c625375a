"""Finding, reading and checking the configuration; the submitter's cache.

Contract:   ``find_config(cli_path)`` says which file applies (or none);
            ``load(path)`` returns a Config with every key type-checked and
            defaults filled (read through typed read-only views: cfg.spool,
            cfg.host, cfg.maildir, cfg.submit, cfg.queue, cfg.dkim_keys),
            or raises ConfigError naming the key and file;
            ``submit_settings(cli_path)`` returns the few values sendmail
            needs (spool, size limit, -bs timeouts), from a cache when its
            stamp matches the TOML file; it reads no other file and judges
            no owner (submission is not acting on the config).
            ``parse_interval`` reads sendmail's -q intervals and the
            durations of queue.retry_schedule.
Security:   the TOML file is trusted as its owner's word, and ``load``
            (every command that acts on it: daemon, flush, admin) accepts
            only a file of root or of this process's user that nobody else
            can write, nor any directory above it (core/trust.py); it then
            records the daemon's user for the secrets' rule.  A file that
            holds relay.password must be a secret (trust.exposure): load
            and submit_settings both refuse it otherwise, sendmail before
            it reads a message.  The cache is trusted only when owned by
            the config file's owner and not writable by anyone else, and
            only while the stamp (device, inode, size, mtime) matches: a
            user cannot plant settings.
Crashes:    the cache is written to a temporary name and renamed, so a
            reader sees the old cache, the new one, or none.
See also:   ../shared/DESIGN.md "Interface contract"; pysendmail.toml(5).

Order of search (DESIGN.md): ``sendmail -C FILE``, ``$PYSENDMAIL_CONFIG``,
/etc/pysendmail/pysendmail.toml, then the user config directory (XDG, as
platformdirs computes it).  Without any file, pysendmail runs in user mode
on built-in defaults: the spool and a local Maildir in the user data dir.
"""

from __future__ import annotations

import os
import sys

from pysendmail.core import durable
from pysendmail.core.errors import ConfigError, UsageError

TYPE_CHECKING = False  # typing costs start-up; mypy reads this name as True
if TYPE_CHECKING:
    from pysendmail.core import sections

SYSTEM_CONFIG = "/etc/pysendmail/pysendmail.toml"
SYSTEM_SPOOL = "/var/spool/pysendmail"
DEFAULT_MAX_MESSAGE_SIZE = 35 * 1024 * 1024
AUTH_CHOICES = ("auto", "plain", "login", "oauthbearer", "xoauth2", "oauth2")
CACHE_VERSION = 3  # 2: the inline-password flag, the -bs deadlines; 3: deliver_without_daemon


def user_dir(kind: str) -> str:
    """platformdirs' user_config_dir / user_data_dir for "pysendmail", without importing it.

    platformdirs costs 9 ms of start-up; on Linux its answer is the XDG
    rule below (tests/qa checks that the two agree).
    """
    if sys.platform != "linux":  # pragma: no cover - pysendmail targets Linux
        import platformdirs

        return str(getattr(platformdirs, f"user_{kind}_dir")("pysendmail"))
    env, fallback = {"config": ("XDG_CONFIG_HOME", ".config"), "data": ("XDG_DATA_HOME", ".local/share")}[kind]
    base = os.environ.get(env, "")
    # A relative value is invalid and ignored (XDG Base Directory spec; as
    # platformdirs does): used as given, it made the spool path relative to
    # the caller's cwd and sendmail exit 78.
    if not os.path.isabs(base):
        base = os.path.join(os.path.expanduser("~"), fallback)
    return os.path.join(base, "pysendmail")


def find_config(cli_path: str | None = None) -> tuple[str | None, str]:
    """(path or None, how it was found). An explicit path must exist."""
    if cli_path is not None:
        if not os.path.isfile(cli_path):
            raise ConfigError(f"configuration file {cli_path} given with -C does not exist")
        return cli_path, "-C"
    env = os.environ.get("PYSENDMAIL_CONFIG")
    if env:
        if not os.path.isfile(env):
            raise ConfigError(f"configuration file {env} named by PYSENDMAIL_CONFIG does not exist")
        return env, "PYSENDMAIL_CONFIG"
    if os.path.isfile(SYSTEM_CONFIG):
        return SYSTEM_CONFIG, "system"
    user = os.path.join(user_dir("config"), "pysendmail.toml")
    if os.path.isfile(user):
        return user, "user"
    return None, "built-in defaults"


# ---------------------------------------------------------------- schema
# Each key: (type, default).  Types: "str", "int", "bool", "strlist",
# "str|strlist".  A default of None means "absent unless given".
_STR, _INT, _BOOL, _LIST, _STRS = "str", "int", "bool", "strlist", "str|strlist"

SCHEMA: dict[str, dict[str, tuple[str, object]]] = {
    "spool": {
        "path": (_STR, None),
        "user": (_STR, None),
        "max_message_size": (_INT, DEFAULT_MAX_MESSAGE_SIZE),
        # Pickup's bounds on what users leave in the spool (issue 10).
        "unready_lifetime": (_INT, 3600),  # seconds an unready (0600) file may stay in incoming/
        "quarantine_max_entries": (_INT, 1000),
        "quarantine_max_size": (_INT, 100 << 20),  # bytes
        "quarantine_lifetime": (_INT, 30 * 86400),  # seconds
        # No daemon holding the spool: sendmail, run by someone who may
        # deliver (the spool's owner, root), starts a detached delivery run.
        "deliver_without_daemon": (_BOOL, True),
    },
    "host": {
        "name": (_STR, None),
        "default_domain": (_STR, None),
        "aliases_file": (_STR, "/etc/aliases"),
        "local_domains": (_LIST, None),  # besides localhost and the host's own names (core/aliases.py)
    },
    "maildir": {
        "path": (_STR, None),
    },
    "relay": {
        "provider": (_STR, None),
        "host": (_STR, None),
        "port": (_INT, None),
        "tls": (_STR, None),
        "username": (_STR, None),
        "password_file": (_STR, None),
        "password_command": (_LIST, None),
        "ca_file": (_STR, None),
        "tls_fingerprint": (_STR, None),
        "helo": (_STR, None),
        "timeout": (_INT, 60),
        "oauth_token_command": (_LIST, None),
        # auth = "oauth2": pysendmail's own OAuth2 client (daemon/oauth.py, issue 14).
        # None: the provider's row in oauth.ENDPOINTS; the token file defaults to
        # SPOOL/state/oauth/NAME.json (filled in by build).
        "oauth_client_id": (_STR, None),
        "oauth_client_secret_file": (_STR, None),
        "oauth_tenant": (_STR, None),
        "oauth_scope": (_STR, None),
        "oauth_token_url": (_STR, None),
        "oauth_device_url": (_STR, None),
        "oauth_authorize_url": (_STR, None),
        "oauth_token_file": (_STR, None),
        "auth": (_STR, "auto"),
        "pool_size": (_INT, 4),
        "max_recipients_per_message": (_INT, 0),
        "rate_per_minute": (_INT, 0),
        "rate_per_day": (_INT, 0),
        "rate_unit": (_STR, None),  # messages | recipients; None: the preset's, else messages
        "idle_timeout": (_INT, 5),
        # Accounts and sender alignment (issue 5).  None: the preset's
        # value, else the built-in default (daemon/routes.py says which).
        "password": (_STR, None),  # inline: only in a config nobody else can read
        "credential": (_STR, None),  # systemd credential name ($CREDENTIALS_DIRECTORY)
        "region": (_STR, None),  # provider = "ses": the AWS region
        "from_policy": (_STR, None),  # keep | rewrite
        "allowed_senders": (_LIST, None),  # addresses or domains kept under rewrite
        "from_address": (_STR, None),  # the account's address (default: username)
        "fallback": (_STR, None),  # name of the relay used while this one fails
    },
    "submit": {
        # sendmail -bs: seconds to wait for each command or DATA line
        # (RFC 5321 4.5.3.2.7, Postfix smtpd_timeout), and for a whole session.
        "smtp_timeout": (_INT, 300),
        "smtp_session_limit": (_INT, 3600),
    },
    "queue": {
        "lifetime": (_INT, 5 * 86400),
        "retry_schedule": (_LIST, None),  # durations: ["1m", "5m", "15m", "1h", "4h"]
        "postmaster": (_STR, None),
    },
    # Issue 15: what the daemon logs and exports (daemon/metrics.py), and
    # route state shared through Redis (daemon/fleet.py).
    "log": {
        "format": (_STR, "text"),  # text | json (core/log.py); pysendmail daemon --log-format wins
    },
    "metrics": {
        "textfile": (_STR, None),  # node_exporter textfile collector: a *.prom path, rewritten atomically
        "textfile_interval": (_INT, 10),  # seconds between rewrites
        "listen": (_STR, None),  # PORT (loopback) or HOST:PORT: GET /metrics over HTTP
        "allow_remote": (_BOOL, False),  # listen may name an address that is not loopback
    },
    "fleet": {
        "redis": (_STR, None),  # redis://host:6379/0, rediss://..., unix:///path
        "password_file": (_STR, None),
        "tls": (_BOOL, False),
        "ca_file": (_STR, None),
        "key_prefix": (_STR, "pysendmail:"),
        "fallback": (_STR, "share"),  # share | pause: while Redis is unreachable or slow
        "fleet_size_hint": (_INT, None),  # hosts sharing an account; share spends rate / this many
        "timeout_ms": (_INT, 500),  # a Redis call slower than this counts as unreachable
    },
}
# [[dkim]] is an array of tables with these keys.
DKIM_SCHEMA: dict[str, tuple[str, object]] = {
    "domain": (_STR, None),
    "selector": (_STR, None),
    "key_file": (_STR, None),
    "algorithm": (_STR, "rsa-sha256"),
    "headers": (_LIST, None),
    "subdomains": (_BOOL, False),  # this key also signs mail From subdomains of domain
}
_DKIM_REQUIRED = ("domain", "selector", "key_file")
# [[route]] is an array of tables: which relay a message leaves through.
# sender/from/user take a string or a list; a rule without any of them is
# the default route.
ROUTE_SCHEMA: dict[str, tuple[str, object]] = {
    "relay": (_STR, None),
    "sender": (_STRS, None),
    "from": (_STRS, None),
    "user": (_STRS, None),
    "fallback": (_STR, None),
}
DEFAULT_RELAY = "default"  # the name of the plain [relay] table




class Config:
    """The effective configuration: typed views (``cfg.spool.path``, ``cfg.host.name``, ...) and the raw tables."""

    def __init__(
        self,
        path: str | None,
        source: str,
        values: dict[str, dict[str, object]],
        dkim: list[dict[str, object]],
        aliases: dict[str, list[str]],
        present: set[str],
        relays: dict[str, dict[str, object]] | None = None,
        routes: list[dict[str, object]] | None = None,
    ) -> None:
        self.path = path
        self.source = source
        self.values = values
        self.dkim = dkim
        self.aliases = aliases
        self.present = present  # "section.key" (and "relay.NAME.key") that the file set
        self.relays = relays or {}  # [relay.NAME] tables, defaults filled
        self.routes = routes or []  # [[route]] rules, in order
        # The typed views (the raw dicts above stay for [relay], config show and the cache).
        from pysendmail.core import sections  # here, not at the top: sendmail's cached path never needs it

        self.spool = sections.SpoolConfig(values["spool"])
        self.host = sections.HostConfig(values["host"])
        self.maildir = sections.MaildirConfig(values["maildir"])
        self.submit = sections.SubmitConfig(values["submit"])
        self.queue = sections.QueueConfig(values["queue"])
        self.log = sections.LogConfig(values["log"])
        self.metrics = sections.MetricsConfig(values["metrics"])
        self.fleet = sections.FleetConfig(values["fleet"], any(p.startswith("fleet.") for p in present))
        self.dkim_keys = tuple(sections.DkimConfig(table) for table in dkim)

    def get(self, section: str, key: str) -> object:
        return self.values[section][key]

    @property
    def spool_path(self) -> str:
        return self.spool.path

    @property
    def maildir_path(self) -> str:
        return self.maildir.path

    @property
    def max_message_size(self) -> int:
        return self.spool.max_message_size

    @property
    def deliver_without_daemon(self) -> bool:
        return self.spool.deliver_without_daemon

    @property
    def relay_configured(self) -> bool:
        return "relay" in {p.split(".", 1)[0] for p in self.present}

    @property
    def system_mode(self) -> bool:
        return self.path == SYSTEM_CONFIG

    def hostname(self) -> str:
        """host.name, else the host's FQDN (for Received, Message-ID, HELO)."""
        return self.host.name or system_hostname()

    def local_domains(self) -> tuple[str, ...]:
        """The domains whose mail is resolved here through the aliases, never relayed as it is.

        localhost, localhost.localdomain, the host's own names (the kernel's
        host name, its first label, the FQDN as hostname() finds it,
        host.name) and host.local_domains.  core/aliases.py LocalDomains
        adds .localhost names and loopback literals, and compares them.
        """
        import socket

        kernel = socket.gethostname()
        names = ["localhost", "localhost.localdomain", self.hostname(), system_hostname(), kernel, kernel.split(".")[0]]
        names += self.host.local_domains
        return tuple(dict.fromkeys(n for n in names if n))

    def default_domain(self) -> str:
        """The domain given to unqualified addresses (root, www-data)."""
        return self.host.default_domain or self.hostname()


def dkim_view(table: dict[str, object]) -> sections.DkimConfig:
    """A [[dkim]] view from ``table``, DKIM_SCHEMA's defaults for the keys it lacks (setup's key, tests)."""
    from pysendmail.core import sections

    return sections.DkimConfig({key: table.get(key, default) for key, (_, default) in DKIM_SCHEMA.items()})


def parse_interval(text: str) -> int:
    """sendmail's -q interval: 30, 30s, 15m, 1h, 1d, or combinations (1h30m)."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    total, number = 0, ""
    for c in text:
        if "0" <= c <= "9" and len(number) < 18:  # ASCII digits ("²" is not one to int()), a bounded count
            number += c
        elif c in units and number:
            total += int(number) * units[c]
            number = ""
        else:
            raise UsageError(f"-q{text}: not a queue interval (use for example -q15m)")
    if number:
        total += int(number) * 60  # sendmail: a bare number is minutes
    if total <= 0:
        raise UsageError(f"-q{text}: the queue interval must be positive")
    return total


def system_hostname() -> str:
    """The host's FQDN if it has one, else its kernel host name."""
    import socket

    # getfqdn() returns the first dotted name of the address the host
    # name resolves to, else that address's canonical name: on the
    # common "127.0.0.1 localhost myhost" line of /etc/hosts, that is
    # "localhost", which would put From: root@localhost in cron mail.
    # A dotted answer is the FQDN; otherwise the kernel's host name is
    # the better guess (Postfix's myhostname does the same).
    fqdn = socket.getfqdn()
    if "." in fqdn and not fqdn.startswith("localhost"):
        return fqdn
    return socket.gethostname() or fqdn or "localhost"


def _typecheck(kind: str, value: object) -> bool:
    if kind == _STR:
        return isinstance(value, str)
    if kind == _INT:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == _BOOL:
        return isinstance(value, bool)
    if kind == _LIST:
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    if kind == _STRS:
        return isinstance(value, str) or _typecheck(_LIST, value)
    raise AssertionError(kind)


_TYPE_WORDS = {_STR: "a string", _INT: "an integer", _BOOL: "true or false", _LIST: "a list of strings",
               _STRS: "a string or a list of strings"}


def load(cli_path: str | None = None) -> Config:
    """Find and load the configuration this process will act on; defaults when there is none.

    Acting means running its commands, reading its secrets, trusting its
    paths: the file must be root's or this process's user's, writable by
    nobody else (core/trust.py), or ConfigError names owner and fix.
    """
    from pysendmail.core import trust

    path, source = find_config(cli_path)
    data: dict[str, object] = {}
    st = None
    if path is not None:
        data, st = _read_toml(path, acting=True)
    cfg = build(data, path, source)
    try:
        trust.set_daemon(*daemon_user(cfg))
    except ConfigError:
        pass  # spool.user names nobody: 'spool init' and config check say so
    if st is not None:
        check_inline_password(cfg, st)
    return cfg


def _read_toml(path: str, acting: bool = False) -> tuple[dict[str, object], os.stat_result]:
    """The parsed file and its fstat; ``acting``: refuse a file someone else could have written."""
    import tomllib

    try:
        # Open the resolved path: the directories trust.directories judged
        # are the ones walked, whatever symlink the given path holds.
        with open(os.path.realpath(path) if acting else path, "rb") as fh:
            st = os.fstat(fh.fileno())
            if acting:
                from pysendmail.core import trust

                problem = trust.config_problem(st, path)
                if problem:
                    raise ConfigError(problem)
            return tomllib.load(fh), st
    except OSError as exc:
        raise ConfigError(f"cannot read configuration file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None


def daemon_user(cfg: Config) -> tuple[int, int, str]:
    """(uid, gid, name) of the daemon's user: spool.user, else the spool's owner, else us (system: pysendmail)."""
    import pwd

    name = cfg.spool.user
    if name is None:
        try:
            st = os.stat(cfg.spool_path)
            entry = pwd.getpwuid(st.st_uid)
        except (OSError, KeyError):
            entry = pwd.getpwuid(os.geteuid())
            # The system spool belongs to the package's user.  Any other
            # spool without spool.user is its creator's (user mode): a
            # spool under root's private /tmp handed to "pysendmail" would
            # be one its owner cannot even reach.
            if cfg.system_mode or os.path.abspath(cfg.spool_path) == SYSTEM_SPOOL:
                try:
                    entry = pwd.getpwnam("pysendmail")
                except KeyError:
                    pass
    else:
        try:
            entry = pwd.getpwnam(str(name))
        except KeyError:
            raise ConfigError(f"spool.user {name!r} in {cfg.path} is not a user on this system") from None
    return entry.pw_uid, entry.pw_gid, entry.pw_name


def has_inline_password(cfg: Config) -> bool:
    return cfg.values["relay"]["password"] is not None or any(t.get("password") is not None for t in cfg.relays.values())


def check_inline_password(cfg: Config, st: os.stat_result, reader: tuple[int, int] | None = None) -> None:
    """A password written in the file makes the file a secret: the daemon's, readable by nobody else.

    DESIGN.md "Privilege model" and pysendmail.toml(5) say loading fails;
    sendmail checks it too (submit_settings), so a message is never
    accepted that delivery would then refuse to send.
    """
    if cfg.path is None or not has_inline_password(cfg):
        return
    from pysendmail.core import trust

    problem = trust.exposure(st, cfg.path, "configuration holding relay.password", reader)
    if problem:
        raise ConfigError(problem + ", or move the password to a password_file")


def build(data: dict[str, object], path: str | None, source: str) -> Config:
    where = path or "the built-in defaults"
    values: dict[str, dict[str, object]] = {}
    present: set[str] = set()
    for section, table in data.items():
        if section in ("dkim", "aliases", "route"):
            continue
        if section not in SCHEMA:
            raise ConfigError(f"unknown section [{section}] in {where}")
        if not isinstance(table, dict):
            raise ConfigError(f"[{section}] in {where} must be a table")
        for key, value in table.items():
            if section == "relay" and isinstance(value, dict):
                continue  # [relay.NAME]: a named account, checked below
            if key not in SCHEMA[section]:
                raise ConfigError(f"unknown key {section}.{key} in {where}")
            kind = SCHEMA[section][key][0]
            if not _typecheck(kind, value):
                raise ConfigError(f"{section}.{key} in {where} must be {_TYPE_WORDS[kind]}")
            present.add(f"{section}.{key}")
    for section, keys in SCHEMA.items():
        given = data.get(section, {})
        assert isinstance(given, dict)
        values[section] = {key: given.get(key, default) for key, (_, default) in keys.items()}

    relays = _named_relays(data.get("relay", {}), where, present)
    plain = any(p.startswith("relay.") and p.count(".") == 1 for p in present)
    routes = _routes(data.get("route", []), where, relays, plain)

    dkim: list[dict[str, object]] = []
    for n, table in _array_of_tables(data.get("dkim", []), "dkim", DKIM_SCHEMA, where):
        for key in _DKIM_REQUIRED:
            if key not in table:
                raise ConfigError(f"[[dkim]] number {n} in {where} lacks {key}")
        if table.get("algorithm", "rsa-sha256") not in ("rsa-sha256", "ed25519-sha256"):
            raise ConfigError(f"dkim.algorithm in {where} must be rsa-sha256 or ed25519-sha256, not {table['algorithm']!r}")
        dkim.append({key: table.get(key, default) for key, (_, default) in DKIM_SCHEMA.items()})

    aliases: dict[str, list[str]] = {}
    raw_aliases = data.get("aliases", {})
    if not isinstance(raw_aliases, dict):
        raise ConfigError(f"[aliases] in {where} must be a table")
    for name, target in raw_aliases.items():
        if name.lower() in aliases:
            # Alias names have no case (aliases(5)): Root and root would
            # silently replace one another.
            raise ConfigError(f"{_alias_where(path, where, name)}: alias {name.lower()!r} is defined twice "
                              "(alias names are matched without case)")
        if isinstance(target, str):
            aliases[name.lower()] = [target]
        elif _typecheck(_LIST, target):
            aliases[name.lower()] = list(target)
        else:
            raise ConfigError(f"{_alias_where(path, where, name)}: aliases.{name} must be a string or a list of strings")
    local_domains = values["host"]["local_domains"]
    for domain in local_domains if isinstance(local_domains, list) else []:
        if not domain.strip(".") or any(c in domain for c in "@ \t,/:"):
            raise ConfigError(f"host.local_domains in {where}: {domain!r} is not a domain name (write it as "
                              "example.internal, without a user or a port)")

    spool = values["spool"]
    if spool["path"] is None:
        spool["path"] = SYSTEM_SPOOL if path == SYSTEM_CONFIG else os.path.join(user_dir("data"), "spool")
    if not os.path.isabs(str(spool["path"])):
        raise ConfigError(f"spool.path in {where} must be an absolute path")
    from pysendmail.core import sections

    checked = sections.SpoolConfig(spool)
    if checked.max_message_size < 1024:
        raise ConfigError(f"spool.max_message_size in {where} must be at least 1024 bytes")
    for key in ("unready_lifetime", "quarantine_max_entries", "quarantine_max_size", "quarantine_lifetime"):
        if getattr(checked, key) < 1:
            raise ConfigError(f"spool.{key} in {where} must be at least 1")
    submit = sections.SubmitConfig(values["submit"])
    for key in ("smtp_timeout", "smtp_session_limit"):
        if getattr(submit, key) < 1:
            raise ConfigError(f"submit.{key} in {where} must be at least 1 second")
    maildir = values["maildir"]
    if maildir["path"] is None:
        maildir["path"] = (
            os.path.join(str(spool["path"]), "maildir")
            if "spool.path" in present or path == SYSTEM_CONFIG
            else os.path.join(user_dir("data"), "Maildir")
        )
    for name, table in [("relay", values["relay"])] + [(f"relay.{n}", t) for n, t in relays.items()]:
        tls = table["tls"]
        if tls is not None and tls not in ("implicit", "starttls", "none"):
            raise ConfigError(f"{name}.tls in {where} must be implicit, starttls or none, not {tls!r}")
        auth = table["auth"]
        if auth is not None and str(auth).lower() not in AUTH_CHOICES:
            # Caught here, not at the first login: a typo would otherwise
            # hold the route with a message about the relay.
            raise ConfigError(f"{name}.auth in {where} must be one of {', '.join(AUTH_CHOICES)}, not {auth!r}")
        unit = table["rate_unit"]
        if unit is not None and unit not in ("messages", "recipients"):
            raise ConfigError(f"{name}.rate_unit in {where} must be messages or recipients, not {unit!r}")
        policy = table["from_policy"]
        if policy is not None and policy not in ("keep", "rewrite"):
            raise ConfigError(f"{name}.from_policy in {where} must be keep or rewrite, not {policy!r}")
        if auth is not None and str(auth).lower() == "oauth2" and table["oauth_token_file"] is None:
            # The daemon's own directory: its user alone may read state/.
            relay_name = DEFAULT_RELAY if name == "relay" else name.split(".", 1)[1]
            table["oauth_token_file"] = os.path.join(str(spool["path"]), "state", "oauth", f"{relay_name}.json")
        fallback = table["fallback"]
        if fallback is not None and fallback not in relays and fallback != DEFAULT_RELAY:
            raise ConfigError(f"{name}.fallback in {where} names {fallback!r}, which is no [relay.{fallback}] table")
    _check_issue15(values, present, where)
    return Config(path, source, values, dkim, aliases, present, relays, routes)


def _check_issue15(values: dict[str, dict[str, object]], present: set[str], where: str) -> None:
    """[log], [metrics] and [fleet] values that the schema's types cannot judge alone."""
    if values["log"]["format"] not in ("text", "json"):
        raise ConfigError(f"log.format in {where} must be text or json, not {values['log']['format']!r}")
    metrics = values["metrics"]
    if not isinstance(metrics["textfile_interval"], int) or metrics["textfile_interval"] < 1:
        raise ConfigError(f"metrics.textfile_interval in {where} must be at least 1 second")
    textfile = metrics["textfile"]
    if textfile is not None and (not os.path.isabs(str(textfile)) or not str(textfile).endswith(".prom")):
        raise ConfigError(f"metrics.textfile in {where} must be an absolute path ending in .prom (node_exporter's "
                          f"textfile collector reads only *.prom), not {textfile!r}")
    if metrics["listen"] is not None:
        from pysendmail.core.netaddr import parse_listen

        hosts, _ = parse_listen(str(metrics["listen"]), f"metrics.listen in {where}")
        if not metrics["allow_remote"]:
            from pysendmail.core.netaddr import is_loopback

            for host in hosts:
                if not is_loopback(host):
                    raise ConfigError(f"metrics.listen in {where} names {host}, which is not a loopback address: "
                                      "the metrics name routes, relays and queue sizes; set metrics.allow_remote "
                                      "= true to serve them to the network")
    if not any(p.startswith("fleet.") for p in present):
        return
    fleet = values["fleet"]
    if not fleet["redis"]:
        raise ConfigError(f"[fleet] in {where} needs fleet.redis (redis://HOST:6379/0)")
    if fleet["fallback"] not in ("share", "pause"):
        raise ConfigError(f"fleet.fallback in {where} must be share or pause, not {fleet['fallback']!r}")
    hint = fleet["fleet_size_hint"]
    if fleet["fallback"] == "share" and (not isinstance(hint, int) or hint < 1):
        raise ConfigError(f"fleet.fallback = \"share\" in {where} needs fleet.fleet_size_hint (how many hosts "
                          "share the accounts): while Redis is unreachable this host spends rate_per_day / "
                          "fleet_size_hint")
    if isinstance(hint, int) and hint < 1:
        raise ConfigError(f"fleet.fleet_size_hint in {where} must be at least 1")
    if not isinstance(fleet["timeout_ms"], int) or fleet["timeout_ms"] < 1:
        raise ConfigError(f"fleet.timeout_ms in {where} must be at least 1")
    for key in ("password_file", "ca_file"):
        if fleet[key] is not None and not os.path.isabs(str(fleet[key])):
            raise ConfigError(f"fleet.{key} in {where} must be an absolute path")
    from pysendmail.core.netaddr import parse_redis_url

    parse_redis_url(str(fleet["redis"]), f"fleet.redis in {where}")


def _alias_where(path: str | None, where: str, name: str) -> str:
    """``FILE:LINE`` of an [aliases] key (tomllib gives no positions), else where the config is."""
    if path is None:
        return where
    from pysendmail.core.aliases import config_line

    line = config_line(path, name)
    return f"{path}:{line}" if line else path


def _named_relays(raw: object, where: str, present: set[str]) -> dict[str, dict[str, object]]:
    """The [relay.NAME] tables, each checked against the [relay] keys."""
    relays: dict[str, dict[str, object]] = {}
    if not isinstance(raw, dict):
        return relays
    for name, table in raw.items():
        if not isinstance(table, dict):
            continue
        if name == DEFAULT_RELAY or not name.replace("-", "").replace("_", "").isalnum() or not name.isascii():
            raise ConfigError(
                f"[relay.{name}] in {where}: a relay name is letters, digits, - and _, and not {DEFAULT_RELAY!r} "
                "(the plain [relay] table is the default route)"
            )
        for key, value in table.items():
            if key not in SCHEMA["relay"]:
                raise ConfigError(f"unknown key relay.{name}.{key} in {where}")
            kind = SCHEMA["relay"][key][0]
            if not _typecheck(kind, value):
                raise ConfigError(f"relay.{name}.{key} in {where} must be {_TYPE_WORDS[kind]}")
            present.add(f"relay.{name}.{key}")
        relays[name] = {key: table.get(key, default) for key, (_, default) in SCHEMA["relay"].items()}
    return relays


def _array_of_tables(
    raw: object, name: str, schema: dict[str, tuple[str, object]], where: str
) -> list[tuple[int, dict[str, object]]]:
    """``[[name]]`` tables, numbered from 1, each key known to ``schema`` and of its type."""
    if not isinstance(raw, list):
        raise ConfigError(f"{name} in {where} must be written [[{name}]] (an array of tables)")
    tables: list[tuple[int, dict[str, object]]] = []
    for n, table in enumerate(raw, 1):
        if not isinstance(table, dict):
            raise ConfigError(f"[[{name}]] number {n} in {where} must be a table")
        for key, value in table.items():
            if key not in schema:
                raise ConfigError(f"unknown key {name}.{key} in {where}")
            kind = schema[key][0]
            if not _typecheck(kind, value):
                raise ConfigError(f"{name}.{key} in {where} must be {_TYPE_WORDS[kind]}")
        tables.append((n, table))
    return tables


def _routes(raw: object, where: str, relays: dict[str, dict[str, object]], plain: bool) -> list[dict[str, object]]:
    """The [[route]] rules; every relay they name must exist."""
    known = set(relays) | ({DEFAULT_RELAY} if plain else set())
    routes: list[dict[str, object]] = []
    for n, table in _array_of_tables(raw, "route", ROUTE_SCHEMA, where):
        rule: dict[str, object] = {}
        for key, (kind, default) in ROUTE_SCHEMA.items():
            value = table.get(key, default)
            rule[key] = [value] if kind == _STRS and isinstance(value, str) else value
        for key in ("relay", "fallback"):
            name = rule[key]
            if key == "relay" and name is None:
                raise ConfigError(f"[[route]] number {n} in {where} lacks relay (the name of a [relay.NAME] table)")
            if name is not None and name not in known:
                raise ConfigError(f"route.{key} = {name!r} in {where} names no relay: define [relay.{name}]")
        routes.append(rule)
    return routes


# ---------------------------------------------------------------- cache
class SubmitSettings:
    """What the submission path needs; nothing more."""

    __slots__ = ("config_path", "spool_path", "max_message_size", "smtp_timeout", "smtp_session_limit",
                 "deliver_without_daemon")

    def __init__(self, config_path: str | None, spool_path: str, max_message_size: int,
                 smtp_timeout: int = 300, smtp_session_limit: int = 3600, deliver_without_daemon: bool = True) -> None:
        self.config_path = config_path
        self.spool_path = spool_path
        self.max_message_size = max_message_size
        self.smtp_timeout = smtp_timeout  # sendmail -bs only
        self.smtp_session_limit = smtp_session_limit
        self.deliver_without_daemon = deliver_without_daemon


def _settings(cfg: Config) -> SubmitSettings:
    return SubmitSettings(cfg.path, cfg.spool_path, cfg.max_message_size, cfg.submit.smtp_timeout,
                          cfg.submit.smtp_session_limit, cfg.deliver_without_daemon)


def cache_path(config_path: str) -> str:
    return config_path + ".cache"


def _stamp(st: os.stat_result) -> tuple[int, int, int, int]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def submit_settings(cli_path: str | None = None) -> SubmitSettings:
    """The submitter's settings: from the cache when fresh, else from the TOML."""
    path, source = find_config(cli_path)
    if path is None:
        return _settings(build({}, None, source))
    cached = _read_cache(path)
    if cached is not None:
        return cached
    data, st = _read_toml(path)
    cfg = build(data, path, source)
    if has_inline_password(cfg):
        _check_submitted_inline(cfg.path, st, cfg.spool_path)
    write_cache(cfg)
    return _settings(cfg)


def _read_cache(path: str) -> SubmitSettings | None:
    import marshal

    try:
        st = os.stat(path)
        fd = os.open(cache_path(path), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        cst = os.fstat(fd)
        # Trust a cache only from the config's owner, writable by nobody
        # else: otherwise a local user could redirect the spool.  (Its
        # directory is the config's own.  Not core/trust.py: that module
        # stays off the path every submission takes.)
        if cst.st_uid != st.st_uid or cst.st_mode & 0o022 or cst.st_size > 65536:
            return None
        data = marshal.loads(os.read(fd, 65536))
    except (OSError, ValueError, EOFError, TypeError):
        return None
    finally:
        os.close(fd)
    if not isinstance(data, dict) or data.get("version") != CACHE_VERSION or data.get("stamp") != _stamp(st):
        return None
    spool, size = data.get("spool_path"), data.get("max_message_size")
    timeout, limit = data.get("smtp_timeout"), data.get("smtp_session_limit")
    spawn = data.get("deliver_without_daemon")
    if not isinstance(spool, str) or not isinstance(size, int) or not isinstance(timeout, int) \
            or not isinstance(limit, int) or not isinstance(spawn, bool):
        return None
    if data.get("inline_password"):
        _check_submitted_inline(path, st, spool)  # the mode now, not when the cache was written
    return SubmitSettings(path, spool, size, timeout, limit, spawn)


def _check_submitted_inline(path: str | None, st: os.stat_result, spool_path: str) -> None:
    """sendmail refuses a config whose inline password others can read (exit 78), before reading the message.

    Judged for the daemon's user, which is the spool directory's owner
    (spool init gives it spool.user): one stat, paid only by a config that
    holds a password.
    """
    try:
        top = os.stat(spool_path)
        reader = (top.st_uid, top.st_gid)
    except OSError:
        reader = (os.geteuid(), os.getegid())
    from pysendmail.core import trust

    problem = trust.exposure(st, str(path), "configuration holding relay.password", reader)
    if problem:
        raise ConfigError(problem + ", or move the password to a password_file; nothing was queued")


def write_cache(cfg: Config) -> bool:
    """Write the submitter's cache beside the config, if we may. True if written."""
    import marshal

    if cfg.path is None:
        return False
    try:
        st = os.stat(cfg.path)
        if st.st_uid != os.geteuid():
            return False  # only the config's owner writes its cache
        data = {
            "version": CACHE_VERSION,
            "stamp": _stamp(st),
            "spool_path": cfg.spool_path,
            "max_message_size": cfg.max_message_size,
            "inline_password": has_inline_password(cfg),
            "smtp_timeout": cfg.submit.smtp_timeout,
            "smtp_session_limit": cfg.submit.smtp_session_limit,
            "deliver_without_daemon": cfg.deliver_without_daemon,
        }
        target = cache_path(cfg.path)
        tmp = f"{target}.{os.getpid()}.tmp"
        durable.publish(tmp, target, marshal.dumps(data), exclusive=True, mode=0o644)
        return True
    except OSError:
        try:
            os.unlink(tmp)
        except (OSError, UnboundLocalError):
            pass
        return False
