"""Where the relay password or OAuth2 token comes from, and nowhere else.

Contract:   ``password(relay, where, name)`` returns the password from, in
            this order, ``password_command``, ``password_file``, an inline
            ``password`` (routes.py has checked the config's mode), or the
            systemd credential (``credential``, default ``relay-password``
            for [relay] and ``relay-NAME-password`` for [relay.NAME]); None
            when none is configured.  ``oauth_token(relay)`` runs
            ``oauth_token_command`` (auth = "oauth2" without a command is
            daemon/oauth.py's refreshing token source).  Problems raise
            ConfigError with one sentence that never holds the secret.
Security:   every secret file is judged by core/trust.py's one rule (owned
            by root, the daemon's user or us; readable by nobody else but
            the daemon's group; nobody else can write it or a directory
            above it), refused with the chown/chmod that fixes it; a
            command runs only when its program (and any script path among
            its arguments) belongs to root or to the user running it;
            commands run without a shell, with a timeout, and only their
            first output line is used; the secret is never logged, never
            put in an exception message, never in argv.
See also:   systemd.exec(5) LoadCredential=; nullmailer (secrets never in argv);
            core/trust.py.
"""

from __future__ import annotations

import os
import subprocess

from pysendmail.core import trust
from pysendmail.core.errors import ConfigError

COMMAND_TIMEOUT = 15
CREDENTIAL_NAME = "relay-password"


def _first_line(data: bytes, what: str) -> str:
    line = data.split(b"\n", 1)[0].rstrip(b"\r")
    if not line:
        raise ConfigError(f"{what} gave an empty first line")
    return line.decode("utf-8")


def read_secret_file(path: str, what: str) -> str:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror}") from None
    try:
        problem = trust.secret(os.fstat(fd), path, what)
        if problem:
            raise ConfigError(problem)
        data = os.read(fd, 65536)
    finally:
        os.close(fd)
    return _first_line(data, f"{what} {path}")


def run_command(argv: list[str], what: str) -> str:
    if not argv:
        raise ConfigError(f"{what} is an empty list")
    # Refused before it runs: a program or script someone else could
    # rewrite would run with this process's rights (the daemon's, root's).
    problem = trust.command(argv, what)
    if problem:
        raise ConfigError(problem)
    try:
        proc = subprocess.run(argv, capture_output=True, timeout=COMMAND_TIMEOUT, stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        raise ConfigError(f"{what} {argv[0]} does not exist") from None
    except subprocess.TimeoutExpired:
        raise ConfigError(f"{what} {argv[0]} did not finish within {COMMAND_TIMEOUT} s") from None
    except OSError as exc:
        raise ConfigError(f"{what} {argv[0]} cannot run: {exc.strerror}") from None
    if proc.returncode != 0:
        raise ConfigError(f"{what} {argv[0]} exited with status {proc.returncode}")
    return _first_line(proc.stdout, f"{what} {argv[0]}")


def credential_name(relay: dict[str, object], name: str = "default") -> str:
    given = relay.get("credential")
    if given:
        return str(given)
    return CREDENTIAL_NAME if name == "default" else f"relay-{name}-password"


def password_source(relay: dict[str, object], where: str = "relay", name: str = "default") -> str | None:
    """Which setting provides the password ("relay.password_file /etc/..."), without reading it."""
    if relay.get("password_command"):
        return f"{where}.password_command"
    if relay.get("password_file"):
        return f"{where}.password_file {relay['password_file']}"
    if relay.get("password") is not None:
        return f"{where}.password (inline)"
    creds = os.environ.get("CREDENTIALS_DIRECTORY")
    cred = credential_name(relay, name)
    if creds and os.path.exists(os.path.join(creds, cred)):
        return f"systemd credential {cred}"
    return None


def password(relay: dict[str, object], where: str = "relay", name: str = "default") -> str | None:
    command = relay.get("password_command")
    if isinstance(command, list) and command:  # a list of strings: config.py checked it
        return run_command([str(a) for a in command], f"{where}.password_command")
    path = relay.get("password_file")
    if path:
        return read_secret_file(str(path), f"{where}.password_file")
    inline = relay.get("password")
    if inline is not None:
        return str(inline)
    creds = os.environ.get("CREDENTIALS_DIRECTORY")
    cred = credential_name(relay, name)
    if creds and os.path.exists(os.path.join(creds, cred)):
        return read_secret_file(os.path.join(creds, cred), "systemd credential")
    return None


def oauth_token(relay: dict[str, object], where: str = "relay") -> str | None:
    command = relay.get("oauth_token_command")
    if not isinstance(command, list) or not command:  # a list of strings: config.py checked it
        return None
    return run_command([str(a) for a in command], f"{where}.oauth_token_command")

