"""Exit codes (sysexits.h) and the one error hierarchy of pysendmail.

Contract:   every error a user can meet is a PysendmailError subclass whose
            message is one sentence saying what is wrong and what to do;
            ``exit_code`` is the sysexits.h code the entry point exits with.
            Raise where the problem is found; catch only in entry points.
See also:   sysexits.h(3); ../shared/CONVENTIONS.md, "Errors and exit codes".

    PysendmailError (exit_code)
     ├── UsageError          64 EX_USAGE     bad flag, no recipient given
     ├── DataError           65 EX_DATAERR   bad address, header injection, too big
     ├── CantCreateError     73 EX_CANTCREAT cannot create the spool file
     ├── IOFailure           74 EX_IOERR     write/fsync error other than space
     ├── TempFailure         75 EX_TEMPFAIL  disk full, read-only, lock busy
     ├── NoPermission        77 EX_NOPERM    not allowed to submit or read
     └── ConfigError         78 EX_CONFIG    bad config, bad spool layout
"""

from __future__ import annotations

import errno

EX_OK = 0
EX_USAGE = 64
EX_DATAERR = 65
EX_NOINPUT = 66
EX_SOFTWARE = 70
EX_CANTCREAT = 73
EX_IOERR = 74
EX_TEMPFAIL = 75
EX_NOPERM = 77
EX_CONFIG = 78


class PysendmailError(Exception):
    """Base of every error that ends a command with a sysexits.h code."""

    exit_code = EX_SOFTWARE


class UsageError(PysendmailError):
    exit_code = EX_USAGE


class DataError(PysendmailError):
    exit_code = EX_DATAERR


class CantCreateError(PysendmailError):
    exit_code = EX_CANTCREAT


class IOFailure(PysendmailError):
    exit_code = EX_IOERR


class TempFailure(PysendmailError):
    exit_code = EX_TEMPFAIL


class NoPermission(PysendmailError):
    exit_code = EX_NOPERM


class ConfigError(PysendmailError):
    exit_code = EX_CONFIG


# errno values that mean "try again later" rather than "this is broken":
# the caller (PHP, cron) should keep the message and retry.
TEMPORARY_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EAGAIN, errno.EINTR, errno.ENOMEM, errno.ENFILE, errno.EMFILE}
)


def from_oserror(exc: OSError, what: str) -> PysendmailError:
    """Turn an OSError met while doing ``what`` into the right exit class."""
    reason = exc.strerror or str(exc)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return TempFailure(f"cannot {what}: {reason}; the message was not queued, free some space and send again")
    if exc.errno in TEMPORARY_ERRNOS:
        return TempFailure(f"cannot {what}: {reason}; the message was not queued, try again later")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return NoPermission(f"cannot {what}: {reason}")
    if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.EEXIST):
        return CantCreateError(f"cannot {what}: {reason}")
    return IOFailure(f"cannot {what}: {reason}")
