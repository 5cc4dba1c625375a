"""``pysendmail setup``: from nothing to a working relay in one command.

Contract:   ``run(opts, config_path, out)`` writes the config, the password
            file and (``--dkim``) a DKIM key with the right owners and
            modes, creates the spool, and prints the DNS records to
            publish.  Fully non-interactive with flags; on a terminal it
            asks only for what is missing (the password without echo).
            Idempotent: a second run with the same answers changes
            nothing; a config, password file or key that differs is never
            overwritten without ``--force`` (a DKIM key never is: its DNS
            record is published).  Returns a summary dict (``--json``).
Security:   system mode: config root:root 0644 (it holds no secret; every
            submitter reads it), password and key root:pysendmail 0640,
            spool owned by the pysendmail user (--daemon-user; created as
            a system user when missing).  User mode: everything
            0600/0700 under the user's directories.  Files are written to
            a temporary name with their final mode and renamed.
See also:   pysendmail(8) setup; providers.py (hosts, SPF includes).
"""

from __future__ import annotations

import base64
import getpass
import os
import pwd
import subprocess
import sys
from dataclasses import dataclass
from typing import TextIO

from pysendmail.core import config, errors, layout
from pysendmail.daemon import providers

DAEMON_USER = "pysendmail"


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


def _ask(prompt: str, secret: bool = False) -> str:
    if secret:
        return getpass.getpass(prompt)
    sys.stderr.write(prompt)
    sys.stderr.flush()
    return sys.stdin.readline().strip()


def _missing(what: str, flag: str) -> errors.UsageError:
    return errors.UsageError(f"setup needs {what}: pass {flag} (or run it on a terminal to be asked)")


# ---------------------------------------------------------------- DKIM keys
def generate_key(path: str, bits: int = 2048) -> None:
    """A new RSA private key in PEM at ``path`` (0600 until chowned).

    XXX: the dkim branch's 'pysendmail dkim keygen' should replace this
    once merged; this one uses cryptography, else the openssl program.
    """
    try:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                serialization.NoEncryption())
    except ImportError:
        try:
            pem = subprocess.run(["openssl", "genrsa", str(bits)], capture_output=True, check=True, timeout=60).stdout
        except (OSError, subprocess.SubprocessError):
            raise errors.ConfigError("cannot generate a DKIM key: install python3-cryptography or openssl") from None
    _write(path, pem, 0o600)


def public_key_b64(path: str) -> str:
    """The p= value of the DKIM record for the private key at ``path``."""
    with open(path, "rb") as fh:
        pem = fh.read()
    try:
        from cryptography.hazmat.primitives import serialization

        key = serialization.load_pem_private_key(pem, password=None)
        der = key.public_key().public_bytes(serialization.Encoding.DER,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
    except ImportError:
        der = subprocess.run(["openssl", "pkey", "-pubout", "-outform", "DER"], input=pem, capture_output=True,
                             check=True, timeout=30).stdout
    return base64.b64encode(der).decode()


def dns_records(domain: str, selector: str | None, key_file: str | None, spf_include: str) -> list[str]:
    out = []
    if selector and key_file:
        out.append(f'{selector}._domainkey.{domain}. IN TXT "v=DKIM1; k=rsa; p={public_key_b64(key_file)}"')
    spf = f"include:{spf_include} " if spf_include else ""
    out.append(f'{domain}. IN TXT "v=spf1 {spf}~all"')
    out.append(f'_dmarc.{domain}. IN TXT "v=DMARC1; p=none; rua=mailto:postmaster@{domain}"')
    return out


# ---------------------------------------------------------------- files
def _write(path: str, data: bytes, mode: int, owner: tuple[int, int] | None = None) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, data)
        if owner is not None:
            os.fchown(fd, *owner)
        os.fchmod(fd, mode)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, path)


def _place(path: str, data: bytes, mode: int, owner: tuple[int, int] | None, force: bool, what: str) -> str:
    """Write unless the same bytes are there; refuse to replace different ones without --force."""
    try:
        with open(path, "rb") as fh:
            current = fh.read()
    except FileNotFoundError:
        current = None
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
    _write(path, data, mode, owner)
    return "written" if current is None else "overwritten"


def _daemon_ids(name: str) -> tuple[int, int]:
    """The daemon user's (uid, gid); created as a system user when missing."""
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        proc = subprocess.run(["useradd", "--system", "--no-create-home", "--home-dir", "/nonexistent", "--shell",
                               "/usr/sbin/nologin", "--user-group", name], capture_output=True)
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
    if opts.password_stdin:
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
    if system:
        uid, gid = _daemon_ids(opts.daemon_user)
        secret_owner = (0, gid)
        spool_owner = (uid, gid)

    lines = ["# Written by 'pysendmail setup'; 'pysendmail config show' prints the effective values.", ""]
    spool = opts.spool or (config.SYSTEM_SPOOL if system else None)
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
    lines += [f"username = {_toml_str(user)}", f"password_file = {_toml_str(password_path)}", ""]

    key_file = None
    if opts.dkim:
        keydir = os.path.join(confdir, "dkim")
        os.makedirs(keydir, 0o750 if system else 0o700, exist_ok=True)
        if secret_owner:
            os.chown(keydir, *secret_owner)
        key_file = os.path.join(keydir, f"{opts.dkim}.{opts.selector}.key")
        if os.path.exists(key_file):
            summary["dkim_key"] = "kept"  # its record may be published: never replaced
        else:
            generate_key(key_file)
            summary["dkim_key"] = "generated"
        if secret_owner:
            os.chown(key_file, *secret_owner)
            os.chmod(key_file, 0o640)
        lines += ["[[dkim]]", f"domain = {_toml_str(opts.dkim)}", f"selector = {_toml_str(opts.selector)}",
                  f"key_file = {_toml_str(key_file)}", ""]

    if password is not None:
        summary["password_file"] = _place(password_path, (password + "\n").encode(), 0o640 if system else 0o600,
                                          secret_owner, opts.force, "password file")
    else:
        summary["password_file"] = "kept"
    summary["config_file"] = _place(path, "\n".join(lines).encode(), 0o644 if system else 0o600,
                                    (0, 0) if system else None, opts.force, "configuration")

    cfg = config.load(path)  # what we wrote must load: the same check every command makes
    config.write_cache(cfg)
    layout.ensure_layout(layout.Spool(cfg.spool_path), shared=system, owner=spool_owner)
    summary["spool"] = cfg.spool_path

    domain = opts.dkim or (user.rpartition("@")[2] if "@" in user else None)
    records = dns_records(domain, opts.selector if key_file else None, key_file, p.spf_include) if domain else []
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
    records = summary.get("dns") or []
    assert isinstance(records, list)
    if records:
        lines += ["", "Publish these DNS records (then run 'pysendmail doctor'):"] + [f"  {r}" for r in records]
    lines += ["", "Next: 'pysendmail test --to you@example.org' sends a test message now."]
    return "\n".join(lines) + "\n"
