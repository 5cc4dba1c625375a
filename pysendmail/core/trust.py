"""Whose word a file is: the one rule for the configuration, secrets and every file a configuration names.

Contract:   ``control(st, path, what, trusted)`` says why someone outside
            ``trusted`` (uids) could change the file (its owner, its group
            or other write bits, or a directory above it), else None.
            ``exposure(st, path, what)`` says why someone but the daemon
            could read a secret, else None.  ``secret(st, path, what)`` is
            both, with the owners a secret may have.  ``config_problem``
            judges the configuration file a process is about to act on;
            ``named_file`` judges a file the configuration names (ca_file,
            aliases_file, a command) before it is used.  Every answer is
            one sentence naming the file, its owner and the command that
            fixes it; callers raise it as ConfigError (exit 78) or print it.
            ``set_daemon(uid, gid, name)`` records the daemon's user, as the
            trusted configuration names it (config.load calls it).
Security:   The rule, as OpenSSH's StrictModes: a file is someone's word
            only when nobody else can write it, nor any directory above it
            (a directory with the sticky bit counts as closed: only an
            entry's owner may rename or remove it, and the entry's owner is
            checked one level down).
            - The configuration a process acts on (runs its commands,
              reads its secrets, trusts its paths) must belong to root or
              to that process's own user: owned by an ordinary user, it
              would let that user run commands as the daemon's user or as
              root ('pysendmail flush' as root, the daemon).  Submission is
              not acting: sendmail reads only the spool path and size limit.
            - A secret (password_file, systemd credential, DKIM key, a
              configuration holding an inline password) must belong to
              root, the daemon's user or the process's own user, be
              writable by its owner only, readable by nobody else except
              the daemon's own group when root owns it.
            - A file the configuration names (ca_file, aliases_file) must
              belong to root, the daemon's user or the process's own user;
              a command (argv[0], and every absolute path to a regular
              file among its arguments) must belong to root or the user
              that runs it: run as root, a command the daemon's user could
              rewrite would hand that user root.
            In user mode the daemon's user is the user itself, so a user's
            own files pass.  XXX: POSIX ACLs and group membership beyond
            the mode bits are not read; a file with an ACL granting write
            passes.
Crashes:    nothing on disk.
See also:   sshd_config(5) StrictModes; sendmail's DontBlameSendmail
            (GroupWritableAliasFile); pysendmail(8) SECURITY.

Lean: sendmail imports it only for a config that holds an inline
password (config.py imports it inside functions), so only os and stat at
the top; pwd, grp and shutil are imported where they are needed.
"""

from __future__ import annotations

import os
import stat

_daemon: tuple[int, int, str] | None = None


def set_daemon(uid: int, gid: int, name: str) -> None:
    """The daemon's user and group, from a configuration already judged trustworthy."""
    global _daemon
    _daemon = (uid, gid, name)


def daemon() -> tuple[int, int, str]:
    """(uid, gid, name) of the daemon's user; this process's own when no configuration named one."""
    if _daemon is not None:
        return _daemon
    return os.geteuid(), os.getegid(), user_name(os.geteuid())


def user_name(uid: int) -> str:
    import pwd

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def _owner(uid: int) -> str:
    name = user_name(uid)
    return name if name.startswith("uid ") else f"{name} (uid {uid})"


def acting() -> tuple[int, ...]:
    """Owners a configuration may have for this process to act on it: root and the process's user."""
    return (0, os.geteuid())


def owners() -> tuple[int, ...]:
    """Owners a secret or a named file may have: root, the daemon's user, the process's user."""
    return (0, daemon()[0], os.geteuid())


def _it(path: str, what: str) -> str:
    """The file named in a sentence: "password file /x", or ``what`` with {} standing for the path."""
    return what.replace("{}", path) if "{}" in what else f"{what} {path}"


def _fix_owner(trusted: tuple[int, ...]) -> str:
    """The chown target that every reader in ``trusted`` accepts: root, unless only a user is meant."""
    return "root:root" if 0 in trusted else user_name(trusted[0])


def control(st: os.stat_result, path: str, what: str, trusted: tuple[int, ...], dirs: bool = True,
            fix: str | None = None) -> str | None:
    """Why someone outside ``trusted`` could change this file (``st`` from fstat), else None."""
    if st.st_uid not in trusted:
        return (
            f"{_it(path, what)} belongs to {_owner(st.st_uid)}, who could rewrite it; "
            f"run '{fix or f'chown {_fix_owner(trusted)} {path}; chmod go-w {path}'}'"
        )
    if st.st_mode & 0o022:
        who = "every user" if st.st_mode & 0o002 else f"its group (gid {st.st_gid})"
        return f"{_it(path, what)} is writable by {who} (mode {stat.S_IMODE(st.st_mode):04o}); run 'chmod go-w {path}'"
    return directories(path, what, trusted) if dirs else None


def directories(path: str, what: str, trusted: tuple[int, ...]) -> str | None:
    """Why someone outside ``trusted`` could replace ``path`` through a directory above it, else None.

    Both chains are judged: the directories of the path as written (a
    symlink on the way can be re-pointed by whoever may write the
    directory that holds it, which is on this chain) and those of the
    resolved path (the ones the kernel walks in the end).
    """
    seen: set[str] = set()
    for start in (os.path.abspath(path), os.path.realpath(path)):
        directory = os.path.dirname(start)
        while directory not in seen:
            seen.add(directory)
            try:
                st = os.stat(directory)
            except OSError as exc:
                return f"cannot examine directory {directory} above {_it(path, what)}: {exc.strerror}"
            if st.st_uid not in trusted:
                return (
                    f"directory {directory} above {_it(path, what)} belongs to {_owner(st.st_uid)}, who could "
                    f"replace the file; run 'chown {_fix_owner(trusted)} {directory}; chmod go-w {directory}' "
                    "or move the file"
                )
            if st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
                who = "every user" if st.st_mode & 0o002 else f"its group (gid {st.st_gid})"
                return (
                    f"directory {directory} above {_it(path, what)} is writable by {who} "
                    f"(mode {stat.S_IMODE(st.st_mode):04o}), who could replace the file; "
                    f"run 'chmod go-w {directory}'"
                )
            directory = os.path.dirname(directory)
    return None


def exposure(st: os.stat_result, path: str, what: str, reader: tuple[int, int] | None = None) -> str | None:
    """Why a secret with this stat is readable by the wrong people, else None.

    Others reading it is always wrong.  Group read is accepted only for
    the daemon's own group on a file the daemon's user does not own
    (setup's root:pysendmail 0640); any other group lets its members read
    the secret.  ``reader`` (uid, gid) is the daemon's user by default.
    """
    if not stat.S_ISREG(st.st_mode):
        return f"{_it(path, what)} is not a regular file"
    if st.st_mode & 0o004:
        return (
            f"{_it(path, what)} is readable by every user; run 'chmod o-rwx {path}' "
            "(0600, or 0640 with the daemon's group)"
        )
    uid, gid = reader if reader is not None else daemon()[:2]
    if st.st_mode & 0o040 and not (gid != 0 and st.st_gid == gid and st.st_uid != uid):
        return (
            f"{_it(path, what)} is readable by its group (gid {st.st_gid}), not only by the daemon; "
            f"run 'chmod g-rwx {path}'"
        )
    return None


def secret(st: os.stat_result, path: str, what: str, reader: tuple[int, int] | None = None) -> str | None:
    """The whole rule for a secret: owned by root, the daemon or us; nobody else reads or writes it."""
    trusted = owners() if reader is None else (0, reader[0], os.geteuid())
    uid, gid = reader if reader is not None else daemon()[:2]
    if uid == 0 or gid == 0:
        fix = f"chown root:root {path}; chmod 0600 {path}"
    else:
        import grp

        try:
            group = grp.getgrgid(gid).gr_name
        except KeyError:
            group = str(gid)
        fix = f"chown root:{group} {path}; chmod 0640 {path}"  # what setup writes
    return exposure(st, path, what, reader) or control(st, path, what, trusted, fix=fix)


def config_problem(st: os.stat_result, path: str) -> str | None:
    """Why this process must not act on the configuration ``path`` (``st`` from fstat), else None."""
    if not stat.S_ISREG(st.st_mode):
        return f"configuration {path} is not a regular file"
    return control(st, path, "configuration", acting())


def named_file(path: str, what: str, trusted: tuple[int, ...] | None = None) -> str | None:
    """Why a file the configuration names must not be trusted, else None; a missing file is judged by its directory."""
    trusted = owners() if trusted is None else trusted
    try:
        st = os.stat(path)
    except FileNotFoundError:
        # Whoever may create it later must be trusted too.
        return directories(path, what, trusted)
    except OSError as exc:
        return f"cannot examine {_it(path, what)}: {exc.strerror}"
    return control(st, path, what, trusted)


def spool(path: str, owner: tuple[int, str]) -> str | None:
    """Why the spool ``path`` (daemon's user ``owner``: uid, name) must not be used by the daemon or flush, else None.

    Root's flush becomes the spool's owner, and the daemon takes what
    queue/ holds as its own: a spool (or a directory above it) that
    someone else may replace hands them the daemon's rights and its mail.
    """
    trusted = (0, owner[0])
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return directories(path, "spool", trusted)  # spool init is about to create it there
    except OSError as exc:
        return f"cannot examine spool {path}: {exc.strerror}"
    return control(st, path, "spool", trusted,
                   fix=f"chown {owner[1]}: {path}; chmod go-w {path}' as root, or 'pysendmail spool init")


def command(argv: list[str], what: str, runner: int | None = None) -> str | None:
    """Why the command ``argv`` must not run as this process (or as ``runner``), else None.

    argv[0] (found on PATH as exec would) and every absolute path to an
    existing regular file among the arguments (a script handed to an
    interpreter) must belong to root or to the user that runs it.
    """
    import shutil

    trusted = acting() if runner is None else (0, runner)
    program = argv[0] if "/" in argv[0] else shutil.which(argv[0])
    if program is None:
        return None  # run_command reports "does not exist"
    paths = [program] + [a for a in argv[1:] if a.startswith("/") and os.path.isfile(a)]
    for path in paths:
        problem = named_file(path, f"{what} file", trusted)
        if problem:
            return problem
    return None
