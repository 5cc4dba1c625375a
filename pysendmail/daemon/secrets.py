"""Where the relay password or OAuth2 token comes from, and nowhere else.

Contract:   ``password(relay)`` returns the password from, in this order,
            ``password_command``, ``password_file``, or the systemd
            credential ``relay-password``; None when none is configured.
            ``oauth_token(relay)`` runs ``oauth_token_command``.  Problems
            raise ConfigError with one sentence that never holds the secret.
Security:   a password file others can read is refused (naming the chmod
            that fixes it); commands run without a shell, with a timeout,
            and only their first output line is used; the secret is never
            logged, never put in an exception message, never in argv.
See also:   systemd.exec(5) LoadCredential=; nullmailer (secrets never in argv).
"""

from __future__ import annotations

import os
import stat
import subprocess

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
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(f"{what} {path} is not a regular file")
        if st.st_mode & 0o004:
            raise ConfigError(
                f"{what} {path} is readable by every user; run 'chmod o-rwx {path}' "
                "(0600, or 0640 with the daemon's group)"
            )
        data = os.read(fd, 65536)
    finally:
        os.close(fd)
    return _first_line(data, f"{what} {path}")


def run_command(argv: list[str], what: str) -> str:
    if not argv:
        raise ConfigError(f"{what} is an empty list")
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


def password(relay: dict[str, object]) -> str | None:
    command = relay.get("password_command")
    if command:
        return run_command(list(command), "relay.password_command")  # type: ignore[call-overload]
    path = relay.get("password_file")
    if path:
        return read_secret_file(str(path), "relay.password_file")
    creds = os.environ.get("CREDENTIALS_DIRECTORY")
    if creds and os.path.exists(os.path.join(creds, CREDENTIAL_NAME)):
        return read_secret_file(os.path.join(creds, CREDENTIAL_NAME), "systemd credential")
    return None


def oauth_token(relay: dict[str, object]) -> str | None:
    command = relay.get("oauth_token_command")
    if not command:
        return None
    return run_command(list(command), "relay.oauth_token_command")  # type: ignore[call-overload]
