"""Where the relay password or OAuth2 token comes from, and nowhere else.

Contract:   ``password(relay, where, name)`` returns the password from, in
            this order, ``password_command``, ``password_file``, an inline
            ``password`` (routes.py has checked the config's mode), or the
            systemd credential (``credential``, default ``relay-password``
            for [relay] and ``relay-NAME-password`` for [relay.NAME]); None
            when none is configured.  ``oauth_token(relay)`` runs
            ``oauth_token_command``.  ``exposure(st, path, what, reader)``
            says who else could read a secret file (also for config check).
            Problems raise ConfigError with one sentence that never holds
            the secret.
Security:   a password file that anyone but its owner and the daemon's own
            group can read is refused, naming the file and the chmod that
            fixes it; commands run without a shell, with a timeout, and
            only their first output line is used; the secret is never
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
DAEMON_GROUP = "pysendmail"  # root accepts group read by this group only (setup's root:pysendmail 0640)


def _first_line(data: bytes, what: str) -> str:
    line = data.split(b"\n", 1)[0].rstrip(b"\r")
    if not line:
        raise ConfigError(f"{what} gave an empty first line")
    return line.decode("utf-8")


def exposure(st: os.stat_result, path: str, what: str, reader: tuple[int, int] | None = None) -> str | None:
    """Why a secret file with this stat is readable by the wrong people, else None.

    Others reading it is always wrong.  Group read is accepted only when
    the group is the reader's own group (root:pysendmail 0640, the daemon
    reading as pysendmail): any other group lets its members read the
    relay password.  ``reader`` is the (uid, gid) that will read the file,
    by default this process ('config check' asks for the daemon's user).
    """
    if not stat.S_ISREG(st.st_mode):
        return f"{what} {path} is not a regular file"
    if st.st_mode & 0o004:
        return (
            f"{what} {path} is readable by every user; run 'chmod o-rwx {path}' "
            "(0600, or 0640 with the daemon's group)"
        )
    if st.st_mode & 0o040 and not _group_may_read(st, reader or (os.geteuid(), os.getegid())):
        return (
            f"{what} {path} is readable by its group (gid {st.st_gid}), not only by the daemon; "
            f"run 'chmod g-rwx {path}'"
        )
    return None


def _group_may_read(st: os.stat_result, reader: tuple[int, int]) -> bool:
    """Group read is the reader's own access when another user (root) owns the file."""
    uid, gid = reader
    if uid == 0:
        import grp

        try:
            return st.st_gid != 0 and st.st_gid == grp.getgrnam(DAEMON_GROUP).gr_gid
        except KeyError:
            return False
    return st.st_gid == gid and st.st_uid != uid


def read_secret_file(path: str, what: str) -> str:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror}") from None
    try:
        problem = exposure(os.fstat(fd), path, what)
        if problem:
            raise ConfigError(problem)
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
    if command:
        return run_command(list(command), f"{where}.password_command")  # type: ignore[call-overload]
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
    if not command:
        return None
    return run_command(list(command), f"{where}.oauth_token_command")  # type: ignore[call-overload]
