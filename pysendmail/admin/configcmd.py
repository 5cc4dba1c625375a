"""``pysendmail config check`` and ``config show``: what the daemon would see, without the network.

Contract:   ``check(cfg)`` returns findings [(level, text)] with level OK,
            WARN or FAIL: every relay resolved (preset, secrets present and
            readable as the daemon's user but by nobody else, TLS settings
            loadable, ca_file and commands trusted), every DKIM key, the
            config file, the aliases file, and the spool's owners and
            modes, and (a WARN) a HELO name that is not a fully qualified
            domain name; files are judged by core/trust.py as the daemon's
            user.  A relay with auth = "oauth2" gets its endpoints checked
            and its token's state (daemon/oauth.py read_state): OK with
            valid until, WARN refresh failing since, FAIL login needed.  It never connects anywhere.  ``show(cfg)``
            returns the effective configuration, each value with its
            source (file, preset NAME, default), secrets masked.
Security:   no secret is printed: ``password`` is shown as ********, and
            files and commands are named, never read into the output.
See also:   pysendmail(8) config; daemon/routes.py; daemon/secrets.py.
"""

from __future__ import annotations

import os
import stat

from pysendmail.core import config, errors, layout, trust
from pysendmail.daemon import secrets

TYPE_CHECKING = False
if TYPE_CHECKING:
    from pysendmail.daemon.routes import RelaySettings

OK, WARN, FAIL = "OK", "WARN", "FAIL"
MASK = "********"


def _daemon_user(cfg: config.Config) -> tuple[int, int, list[int], str]:
    """(uid, gid, every gid, name) of the daemon's user, as 'pysendmail spool init' picks it."""
    import grp

    from pysendmail.admin.privileges import spool_owner

    uid, gid, name = spool_owner(cfg)
    gids = [g.gr_gid for g in grp.getgrall() if name in g.gr_mem] + [gid]
    return uid, gid, gids, name


def readable_by(st: os.stat_result, uid: int, gids: list[int]) -> bool:
    """Would ``uid`` (with ``gids``) be allowed to read a file with this stat (mode bits only)?"""
    if uid == 0:
        return True
    if st.st_uid == uid:
        return bool(st.st_mode & stat.S_IRUSR)
    if st.st_gid in gids:
        return bool(st.st_mode & stat.S_IRGRP)
    return bool(st.st_mode & stat.S_IROTH)


def _secret_file(path: str, what: str, daemon: tuple[int, int, list[int], str]) -> tuple[str, str]:
    uid, gid, gids, name = daemon
    try:
        st = os.stat(path)
    except OSError as exc:
        return FAIL, f"{what} {path}: {exc.strerror}"
    # The one rule for secrets (core/trust.py), judged for the daemon's user.
    problem = trust.secret(st, path, what, (uid, gid))
    if problem:
        return FAIL, problem
    if not readable_by(st, uid, gids):
        return FAIL, (f"{what} {path} is not readable by {name}, the daemon's user; "
                      f"run 'chown {name} {path}' (mode 0600)")
    return OK, f"{what} {path}: mode {st.st_mode & 0o777:04o}, readable by {name} only"


def _config_file(path: str, daemon: tuple[int, int, list[int], str]) -> tuple[str, str]:
    """config.load already refused a file this process must not act on; say what the others would do."""
    st = os.stat(path)
    uid, name = daemon[0], daemon[3]
    # Acting as root, a config the daemon's user may write would hand that
    # user root; the daemon itself accepts its own (trust.config_problem).
    if st.st_uid != 0 and uid != 0 and st.st_uid == uid:
        return WARN, (f"configuration {path} belongs to {name}, the daemon's user: the daemon uses it, but "
                      f"'pysendmail flush' and 'sendmail -q' as root refuse it; run 'chown root:root {path}'")
    return OK, f"config {path}: mode {st.st_mode & 0o777:04o}, owner {trust.user_name(st.st_uid)}, writable by its owner only"


def check(cfg: config.Config) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    daemon = _daemon_user(cfg)
    if cfg.path:
        out.append(_config_file(cfg.path, daemon))
    else:
        out.append((WARN, "no configuration file: mail goes to the local Maildir; run 'pysendmail setup'"))
    aliases_file = cfg.host.aliases_file
    problem = trust.named_file(aliases_file, "host.aliases_file", (0, daemon[0], os.geteuid()))
    out.append((FAIL, problem) if problem else (OK, f"aliases file {aliases_file}: writable by root or {daemon[3]} only"))
    if cfg.relay_configured:
        out += _check_relays(cfg, daemon)
        from pysendmail.daemon.qmgr import helo_warnings

        out += [(WARN, text.removeprefix("warning: ")) for text in helo_warnings(cfg)]
    for table in cfg.dkim_keys:
        out.append(_secret_file(table.key_file, f"DKIM key for {table.domain}", daemon))
    out += _check_spool(cfg, daemon)
    out += _check_delivery(cfg)
    out += _check_fleet(cfg, daemon)
    return out


def _check_fleet(cfg: config.Config, daemon: tuple[int, int, list[int], str]) -> list[tuple[str, str]]:
    """[fleet] (issue 15): its secret and trust anchor as the daemon will judge them, and whether Redis answers."""
    if not cfg.fleet.configured:
        return []
    import asyncio

    from pysendmail.daemon import fleet as fleet_state

    out: list[tuple[str, str]] = []
    password_file = cfg.fleet.password_file
    if password_file:
        out.append(_secret_file(str(password_file), "fleet.password_file", daemon))
    if cfg.relay_configured:
        from pysendmail.daemon import routes

        for name, s in routes.resolve(cfg).relays.items():
            if fleet_state.account_of(s.values) is None:
                out.append((WARN, f"route {name} logs in as nobody ({s.where}.username unset): its budget and "
                                  "pauses stay this host's own"))
    if any(level == FAIL for level, _ in out):
        return out
    fleet = fleet_state.Fleet.from_config(cfg)
    assert fleet is not None
    fleet.quiet = True

    async def probe() -> None:
        try:
            await fleet.start()
        finally:
            await fleet.close()

    try:
        asyncio.run(probe())
    except errors.ConfigError as exc:
        return out + [(FAIL, str(exc))]
    if fleet.error:
        out.append((WARN, f"fleet: Redis at {fleet.settings.endpoint} does not answer ({fleet.error}): the daemon "
                          f"follows fleet.fallback = {fleet.settings.fallback} until it does"))
    else:
        out.append((OK, f"fleet: Redis at {fleet.settings.endpoint} answers; this host shares route state as "
                        f"{fleet.host}"))
    return out


def _check_delivery(cfg: config.Config) -> list[tuple[str, str]]:
    """WARN when no daemon runs where one is required (admin/status.py delivery says when)."""
    from pysendmail.admin.status import delivery
    from pysendmail.core.lock import lock_holder

    spool = layout.Spool(cfg.spool_path)
    if not os.path.isdir(spool.path):
        return []
    pid = lock_holder(spool)
    note = delivery(cfg, spool, pid, lock_holder(spool, "run"))
    if note is None:
        return [(OK, f"daemon running, pid {pid}")]
    required, text = note
    if required:
        return [(WARN, f"no daemon is running, but one is required: {text}")]
    return [(OK, f"no daemon is running: {text}")]


def _check_relays(cfg: config.Config, daemon: tuple[int, int, list[int], str]) -> list[tuple[str, str]]:
    from pysendmail.daemon import routes, sender
    from pysendmail.daemon.transport.smtp import SmtpTransport

    out: list[tuple[str, str]] = []
    routing = routes.resolve(cfg)  # ConfigError: the caller reports it and exits 78
    for name, s in routing.relays.items():
        sender.check(s)
        label = f"route {name} ({s.values.get('host')}:{s.values.get('port') or ''})"
        if s.values.get("ca_file"):
            problem = trust.named_file(str(s.values["ca_file"]), f"{s.where}.ca_file", (0, daemon[0], os.geteuid()))
            if problem:
                out.append((FAIL, problem))
                continue
        SmtpTransport(s.values, "check.invalid", name, s.provider)  # host, tls = none, ca_file: raise here
        for key in ("password_command", "oauth_token_command"):
            argv = s.values.get(key)
            if isinstance(argv, list) and argv:  # a list of strings: config.py checked it
                # As the daemon will run it: owned by root or the daemon's user.
                problem = trust.command([str(a) for a in argv], f"{s.where}.{key}", daemon[0])
                out.append((FAIL, problem) if problem else (OK, f"{label}: {s.where}.{key} {argv[0]}: "
                                                                f"writable by root or {daemon[3]} only"))
        if s.values.get("username"):
            source = secrets.password_source(s.values, s.where, name)
            if s.values.get("oauth_token_command"):
                out.append((OK, f"{label}: OAuth2 token from {s.where}.oauth_token_command"))
            elif str(s.values.get("auth") or "").lower() == "oauth2":
                out += _check_oauth(cfg, name, s, label, daemon)
            elif source is None:
                out.append((FAIL, f"{label}: {s.where}.username is set but no password: set {s.where}.password_file, "
                                  f"password_command, or the systemd credential {secrets.credential_name(s.values, name)}"))
            elif s.values.get("password_file"):
                out.append(_secret_file(str(s.values["password_file"]), f"{label}: password file", daemon))
            else:
                out.append((OK, f"{label}: password from {source}"))
        policy = s.values.get("from_policy")
        out.append((OK, f"{label}: from_policy {policy} ({s.sources.get('from_policy')})"))
    return out


def _check_oauth(cfg: config.Config, name: str, s: RelaySettings, label: str,
                 daemon: tuple[int, int, list[int], str]) -> list[tuple[str, str]]:
    """auth = "oauth2": endpoints, the client secret file, the token file and the token's state."""
    from pysendmail.daemon import oauth

    settings = oauth.settings(s.values, s.where, name, s.provider)
    assert settings is not None  # ConfigError above: the caller reports it
    out: list[tuple[str, str]] = [(OK, f"{label}: OAuth2 ({settings.flow} login) at {settings.token_url}")]
    if settings.client_secret_file:
        out.append(_secret_file(settings.client_secret_file, f"{label}: OAuth2 client secret file", daemon))
    if os.path.exists(settings.token_file):
        level, text = _secret_file(settings.token_file, f"{label}: OAuth2 token file", daemon)
        if level != OK:
            return out + [(level, text)]
    state = oauth.read_state(settings)
    word = state.get("state")
    level = OK if word == "ok" else WARN if word == "refresh-failing" else FAIL
    out.append((level, f"{label}: OAuth2 {oauth.describe(state)}"))
    return out


def _check_spool(cfg: config.Config, daemon: tuple[int, int, list[int], str]) -> list[tuple[str, str]]:
    uid, _, _, name = daemon
    spool = layout.Spool(cfg.spool_path)
    if not os.path.isdir(spool.path):
        return [(WARN, f"spool {spool.path} does not exist yet; run 'pysendmail spool init'")]
    out: list[tuple[str, str]] = []
    shared = os.stat(spool.incoming).st_mode & 0o7777 == layout.SHARED_INCOMING_MODE if os.path.isdir(
        spool.incoming) else False
    wanted = [(spool.incoming, layout.SHARED_INCOMING_MODE if shared else layout.PRIVATE_MODE)]
    wanted += [(d, layout.PRIVATE_MODE) for d in spool.private_dirs()]
    if shared:  # other users' mailq trusts public/mailq only when nobody else can write public/
        wanted += [(spool.public, layout.PUBLIC_MODE), (spool.stubs, layout.STUBS_MODE)]
    bad = 0
    for path, mode in wanted:
        try:
            st = os.lstat(path)
        except OSError:
            out.append((FAIL, f"{path} is missing; run 'pysendmail spool init'"))
            bad += 1
            continue
        if not stat.S_ISDIR(st.st_mode) or stat.S_IMODE(st.st_mode) != mode or st.st_uid != uid:
            out.append((FAIL, f"{path}: mode {stat.S_IMODE(st.st_mode):04o} owner uid {st.st_uid}, wanted "
                              f"{mode:04o} owned by {name}; run 'pysendmail spool init'"))
            bad += 1
    if not bad:
        out.append((OK, f"spool {spool.path}: {'shared (system)' if shared else 'private (user)'} layout, owned by {name}"))
    return out


def show(cfg: config.Config) -> dict[str, object]:
    """Effective values with sources: {section: {key: [value, source]}} plus relays."""
    out: dict[str, object] = {"config": cfg.path or "built-in defaults"}
    for section, values in cfg.values.items():
        if section == "relay":
            continue
        out[section] = {k: [v, "file" if f"{section}.{k}" in cfg.present else "default"]
                        for k, v in values.items() if v is not None}
    if cfg.relay_configured:
        from pysendmail.daemon import routes

        routing = routes.resolve(cfg)
        relays: dict[str, object] = {}
        for name, s in routing.relays.items():
            relays[name] = {
                k: [MASK if k in routes.SECRET_KEYS else v, s.sources[k]]
                for k, v in s.values.items() if v is not None
            }
        out["relays"] = relays
        out["routes"] = [
            {"relay": r.relay, "sender": r.senders, "from": r.froms, "user": r.users, "fallback": r.fallback}
            for r in routing.rules
        ] + ([] if any(r.is_default for r in routing.rules) else [{"relay": routing.default.relay, "default": True}])
    if cfg.dkim:
        out["dkim"] = cfg.dkim
    return out


def render_show(data: dict[str, object]) -> str:
    lines = [f"# {data['config']}"]
    for section, values in data.items():
        if section in ("config", "relays", "routes", "dkim") or not isinstance(values, dict):
            continue
        lines.append(f"[{section}]")
        lines += [f"{k} = {_toml(v)}    # {src}" for k, (v, src) in values.items()]
    relays = data.get("relays", {})
    assert isinstance(relays, dict)
    for name, values in relays.items():
        lines.append("[relay]" if name == "default" else f"[relay.{name}]")
        lines += [f"{k} = {_toml(v)}    # {src}" for k, (v, src) in values.items()]
    rules, tables = data.get("routes", []), data.get("dkim", [])
    assert isinstance(rules, list) and isinstance(tables, list)
    for rule in rules:
        lines.append("[[route]]" + ("    # the default route" if rule.get("default") else ""))
        lines += [f"{k} = {_toml(v)}" for k, v in rule.items() if v is not None and k != "default"]
    for table in tables:
        lines.append("[[dkim]]")
        lines += [f"{k} = {_toml(v)}" for k, v in table.items() if v is not None]
    return "\n".join(lines) + "\n"


def _toml(value: object) -> str:
    import json

    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value, ensure_ascii=False)


def run_check(cfg: config.Config, as_json: bool, verbose: bool = False) -> int:
    import json
    import sys

    findings = check(cfg)
    failed = [t for level, t in findings if level == FAIL]
    if as_json:
        sys.stdout.write(json.dumps([{"level": lv, "text": t} for lv, t in findings], indent=2) + "\n")
    else:
        for level, text in findings:
            if level != OK or verbose:
                sys.stdout.write(f"{level} {text}\n")
        where = cfg.path or "built-in defaults"
        sys.stdout.write(f"{where}: {'ok' if not failed else f'{len(failed)} problem(s)'}\n")
    if failed:
        raise errors.ConfigError(failed[0])
    return 0
