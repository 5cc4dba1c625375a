"""``pysendmail setup``: from nothing to a working relay in one command.

Contract:   ``run(opts, config_path, out)`` writes the config, the password
            file and (``--dkim``) a DKIM key with the right owners and
            modes, creates the spool, and prints the DNS records to
            publish.  ``--oauth`` (outlook, gmail, yandex, custom) writes
            ``auth = "oauth2"`` and the client id instead of a password
            file; the caller (cli.cmd_setup) then runs 'pysendmail oauth
            login' for it.  Fully non-interactive with flags; on a terminal it
            asks only for what is missing (the password without echo).
            Idempotent: a second run with the same answers changes
            nothing; a config, password file or key that differs is never
            overwritten without ``--force`` (a DKIM key never is: its DNS
            record is published), except the Debian package's unedited
            template (PACKAGE_TEMPLATE), which is nobody's work.  Returns
            a summary dict (``--json``), with the HELO warning when the
            name is not a fully qualified domain name.
Security:   system mode: config root:root 0644 (it holds no secret; every
            submitter reads it), password root:pysendmail 0640, DKIM key
            0600 owned by the pysendmail user (dkimcmd.make_key, the same
            code as 'pysendmail dkim keygen'; dkim.py refuses a key others
            can read), spool owned by the pysendmail user (--daemon-user;
            created as a system user when missing).  User mode: everything
            0600/0700 under the user's directories.  Files are written to
            a temporary name with their final mode and renamed.
See also:   pysendmail(8) setup; providers.py (hosts, SPF includes).
"""

from __future__ import annotations

import getpass
import os
import pwd
import stat
import subprocess
import sys
from dataclasses import dataclass
from typing import TextIO

from pysendmail.core import config, durable, errors, layout, trust
from pysendmail.admin import dkimcmd
from pysendmail.daemon import dkim, providers

DAEMON_USER = "pysendmail"
# The Debian package writes the system config from this template at its
# first install; an untouched copy is no admin's work, so setup replaces
# it without --force (packaging/deb/debian/postinst).
PACKAGE_TEMPLATE = "/usr/share/pysendmail/pysendmail.toml"


@dataclass
class Options:
    provider: str | None = None
    user: str | None = None
    password_stdin: bool = False
    host: str | None = None
    port: int | None = None
    tls: str | None = None
    region: str | None = None
    ca_file: str | None = None
    from_address: str | None = None
    system: bool | None = None  # None: system when root
    dkim: str | None = None
    selector: str = "mail"
    spool: str | None = None
    force: bool = False
    test_to: str | None = None
    daemon_user: str = DAEMON_USER
    oauth: bool = False  # auth = "oauth2" (daemon/oauth.py): no password file
    client_id: str | None = None
    client_secret_file: str | None = None
    tenant: str | None = None
    oauth_scope: str | None = None
    oauth_token_url: str | None = None
    oauth_device_url: str | None = None
    oauth_authorize_url: str | None = None


def _ask(prompt: str, secret: bool = False) -> str:
    if secret:
        return getpass.getpass(prompt)
    sys.stderr.write(prompt)
    sys.stderr.flush()
    return sys.stdin.readline().strip()


def _missing(what: str, flag: str) -> errors.UsageError:
    return errors.UsageError(f"setup needs {what}: pass {flag} (or run it on a terminal to be asked)")


# ---------------------------------------------------------------- DKIM keys
def dkim_key(domain: str, selector: str, key_file: str, owner: tuple[int, int] | None) -> tuple[dkim.Key, str]:
    """The key at ``key_file``, made by dkimcmd.make_key when missing; (key, what was done).

    An existing key is kept (its record may be published) but given the
    mode and owner the daemon accepts (0600, the daemon's user): an
    earlier setup left it root:pysendmail 0640, which dkim.py refuses.
    """
    if not os.path.lexists(key_file):
        key, _ = dkimcmd.make_key(domain, selector, "rsa-sha256", None, key_file, owner)
        return key, "generated"
    done = "kept"
    st = os.lstat(key_file)
    if stat.S_ISREG(st.st_mode):
        if owner is not None and (st.st_uid, st.st_gid) != owner:
            os.chown(key_file, *owner)
            done = "kept, owner fixed"
        reader = owner or (os.geteuid(), os.getegid())
        if trust.exposure(st, key_file, "DKIM key", reader) or trust.control(st, key_file, "DKIM key", (st.st_uid,),
                                                                             dirs=False):
            os.chmod(key_file, 0o600)  # what core/trust.py's rule for secrets accepts
            done = "kept, mode fixed"
    algorithm = "rsa-sha256"
    with open(key_file, "rb") as fh:
        if b"-----BEGIN" not in fh.read(1 << 16):
            algorithm = "ed25519-sha256"  # dknewkey's raw Ed25519 seed
    table = config.dkim_view({"domain": domain, "selector": selector, "key_file": key_file, "algorithm": algorithm})
    key, _ = dkim.load_key(table, "setup", fast=False)
    return key, done


def dns_records(domain: str, key: dkim.Key | None, spf_include: str) -> list[str]:
    out = []
    if key is not None:
        out.append(dkim.zone_line(key))
    spf = f"include:{spf_include} " if spf_include else ""
    out.append(f'{domain}. IN TXT "v=spf1 {spf}~all"')
    out.append(f'_dmarc.{domain}. IN TXT "v=DMARC1; p=none; rua=mailto:postmaster@{domain}"')
    return out


# ---------------------------------------------------------------- files
def _read(path: str) -> bytes | None:
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except FileNotFoundError:
        return None


def _place(path: str, data: bytes, mode: int, owner: tuple[int, int] | None, force: bool, what: str,
           replaceable: bytes | None = None) -> str:
    """Write unless the same bytes are there; refuse to replace different ones without --force.

    ``replaceable``: content that is nobody's work (the package's template),
    replaced as if absent.
    """
    current = _read(path)
    if current is not None and current == replaceable and current != data:
        force = True
    if current == data:
        st = os.stat(path)
        if st.st_mode & 0o7777 == mode and (owner is None or (st.st_uid, st.st_gid) == owner):
            return "unchanged"
        if owner is not None:
            os.chown(path, *owner)
        os.chmod(path, mode)
        return "fixed mode"
    if current is not None and not force:
        raise errors.CantCreateError(f"{what} {path} exists and differs; pass --force to overwrite it")
    durable.publish(f"{path}.{os.getpid()}.tmp", path, data, exclusive=True, mode=mode, owner=owner)
    if current is None:
        return "written"
    return "written over the package's unedited template" if current == replaceable else "overwritten"


def _daemon_ids(name: str, home: str) -> tuple[int, int]:
    """The daemon user's (uid, gid); created as a system user when missing."""
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        # The user the Debian package would create (postinst's adduser):
        # the spool as its home, no login, its own group.  The package,
        # installed later, finds it and keeps it.
        proc = subprocess.run(["useradd", "--system", "--no-create-home", "--home-dir", home, "--shell",
                               "/usr/sbin/nologin", "--comment", "pysendmail queue daemon", "--user-group", name],
                              capture_output=True)
        if proc.returncode != 0:
            raise errors.CantCreateError(f"cannot create the daemon user {name}: "
                                         f"{proc.stderr.decode(errors='replace').strip()}") from None
        entry = pwd.getpwnam(name)
    return entry.pw_uid, entry.pw_gid


def _toml_str(value: str) -> str:
    import json

    return json.dumps(value)


def run(opts: Options, config_path: str | None, out: TextIO) -> dict[str, object]:
    tty = sys.stdin.isatty()
    system = opts.system if opts.system is not None else os.geteuid() == 0
    if system and os.geteuid() != 0:
        raise errors.NoPermission("setup --system must run as root (or use --user-mode)")
    path = config_path or (config.SYSTEM_CONFIG if system else os.path.join(config.user_dir("config"), "pysendmail.toml"))
    confdir = os.path.dirname(path)

    provider = opts.provider
    if provider is None and opts.host:
        provider = "custom"
    if provider is None:
        if not tty:
            raise _missing("a provider", f"--provider ({', '.join(sorted(providers.PRESETS))})")
        provider = _ask(f"provider ({', '.join(sorted(providers.PRESETS))}): ")
    if provider == "ses" and not opts.region:
        if not tty:
            raise _missing("the SES region", "--region")
        opts.region = _ask("AWS region (for example eu-west-1): ")
    p = providers.preset(provider, opts.region, "setup")
    if provider == "custom" and not opts.host:
        if not tty:
            raise _missing("the relay's host name", "--host")
        opts.host = _ask("relay host: ")
    user = opts.user
    if not user:
        if not tty:
            raise _missing(f"the account ({p.username_hint})", "--user")
        user = _ask(f"user name ({p.username_hint}): ")

    password_path = os.path.join(confdir, "password")
    password: str | None = None
    if opts.oauth:
        from pysendmail.daemon.oauth import ENDPOINTS

        if provider not in ENDPOINTS and provider != "custom":
            raise errors.UsageError(f"--oauth works with {', '.join(sorted(ENDPOINTS))} and custom, not {provider}")
        if not opts.client_id:
            if not tty:
                raise _missing("the OAuth2 application (client) id registered with the provider", "--client-id")
            opts.client_id = _ask("OAuth2 client id: ")
    elif opts.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    elif not os.path.exists(password_path):
        if not tty:
            raise _missing(f"the password ({p.password_hint})", "--password-stdin")
        password = getpass.getpass(f"password ({p.password_hint}): ")
    if password is not None and not password:
        raise errors.UsageError("the password is empty")

    summary: dict[str, object] = {"config": path, "mode": "system" if system else "user"}
    os.makedirs(confdir, 0o755 if system else 0o700, exist_ok=True)
    secret_owner: tuple[int, int] | None = None
    spool_owner: tuple[int, int] | None = None
    spool = opts.spool or (config.SYSTEM_SPOOL if system else None)
    if system:
        uid, gid = _daemon_ids(opts.daemon_user, spool or config.SYSTEM_SPOOL)
        secret_owner = (0, gid)
        spool_owner = (uid, gid)

    lines = ["# Written by 'pysendmail setup'; 'pysendmail config show' prints the effective values.", ""]
    if spool or system:
        lines.append("[spool]")
        if spool:
            lines.append(f"path = {_toml_str(spool)}")
        if system:
            lines.append(f"user = {_toml_str(opts.daemon_user)}")
        lines.append("")
    lines += ["[relay]", f"provider = {_toml_str(provider)}"]
    for key, value in (("host", opts.host), ("tls", opts.tls), ("region", opts.region), ("ca_file", opts.ca_file),
                       ("from_address", opts.from_address)):
        if value:
            lines.append(f"{key} = {_toml_str(value)}")
    if opts.port:
        lines.append(f"port = {opts.port}")
    lines.append(f"username = {_toml_str(user)}")
    if opts.oauth:
        lines.append('auth = "oauth2"')
        for key, value in (("oauth_client_id", opts.client_id), ("oauth_client_secret_file", opts.client_secret_file),
                           ("oauth_tenant", opts.tenant), ("oauth_scope", opts.oauth_scope),
                           ("oauth_token_url", opts.oauth_token_url), ("oauth_device_url", opts.oauth_device_url),
                           ("oauth_authorize_url", opts.oauth_authorize_url)):
            if value:
                lines.append(f"{key} = {_toml_str(value)}")
    else:
        lines.append(f"password_file = {_toml_str(password_path)}")
    lines.append("")

    signing_key: dkim.Key | None = None
    if opts.dkim:
        keydir = os.path.join(confdir, "dkim")
        os.makedirs(keydir, 0o750 if system else 0o700, exist_ok=True)
        if secret_owner:
            os.chown(keydir, *secret_owner)
        key_file = os.path.join(keydir, f"{opts.dkim}.{opts.selector}.key")
        # 0600, owned by the daemon's user (system mode) or by us (user mode):
        # the one key file dkim.py accepts.  Its record may already be
        # published, so an existing key is never replaced.
        signing_key, summary["dkim_key"] = dkim_key(opts.dkim, opts.selector, key_file, spool_owner)
        lines += ["[[dkim]]", f"domain = {_toml_str(signing_key.domain)}", f"selector = {_toml_str(opts.selector)}",
                  f"key_file = {_toml_str(key_file)}"]
        if signing_key.algorithm != "rsa-sha256":
            lines.append(f"algorithm = {_toml_str(signing_key.algorithm)}")
        lines.append("")

    if opts.oauth:
        summary["password_file"] = "none (OAuth2)"
    elif password is not None:
        summary["password_file"] = _place(password_path, (password + "\n").encode(), 0o640 if system else 0o600,
                                          secret_owner, opts.force, "password file")
    else:
        summary["password_file"] = "kept"
    template = _read(PACKAGE_TEMPLATE) if system else None
    summary["config_file"] = _place(path, "\n".join(lines).encode(), 0o644 if system else 0o600,
                                    (0, 0) if system else None, opts.force, "configuration", template)

    cfg = config.load(path)  # what we wrote must load: the same check every command makes
    config.write_cache(cfg)
    layout.ensure_layout(layout.Spool(cfg.spool_path), shared=system, owner=spool_owner)
    summary["spool"] = cfg.spool_path
    from pysendmail.daemon.qmgr import helo_warnings

    summary["warnings"] = helo_warnings(cfg)

    domain = opts.dkim or (user.rpartition("@")[2] if "@" in user else None)
    records = dns_records(domain, signing_key, p.spf_include) if domain else []
    summary["dns"] = records
    return summary


def render(summary: dict[str, object]) -> str:
    lines = [
        f"config:   {summary['config']} ({summary['config_file']})",
        f"password: {summary['password_file']}",
        f"spool:    {summary['spool']} (ready)",
    ]
    if "dkim_key" in summary:
        lines.append(f"dkim key: {summary['dkim_key']}")
    warnings = summary.get("warnings") or []
    assert isinstance(warnings, list)
    lines += [str(w) for w in warnings]
    records = summary.get("dns") or []
    assert isinstance(records, list)
    if records:
        lines += ["", "Publish these DNS records (then run 'pysendmail doctor'):"] + [f"  {r}" for r in records]
    lines += ["", "Next: 'pysendmail test --to you@example.org' sends a test message now."]
    return "\n".join(lines) + "\n"
