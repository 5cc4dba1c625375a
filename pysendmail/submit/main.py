"""Entry point of sendmail (and of mailq and newaliases by argv[0]).

Contract:   ``main()`` returns a sysexits.h code: 0 only when everything
            the caller gave is queued durably.  Errors print one sentence
            on stderr, prefixed with the program name.
            After queueing, when nothing holds the spool's lock (no
            daemon, flush or delivery run) and the caller may deliver
            (root or the spool's owner) and spool.deliver_without_daemon
            is on, ``start_run`` forks a detached ``pysendmail run`` and
            does not wait for it: the exit code and the caller's wait
            stay those of the submission alone.
Security:   runs as the calling user, without privilege; trusts nothing
            but the configuration file.  A run started by root becomes
            the spool's owner before it touches the queue (admin/cli.py).
Crashes:    an unexpected exception exits 75 (temporary) after enqueue()
            removed its partial file, so the caller retries and no mail
            is lost or half-written.  A run that cannot start changes
            nothing: the message waits in incoming/ for the next run,
            the daemon or 'sendmail -q'.
See also:   sendmail(8); ../shared/DESIGN.md "Interface contract".

Start-up time is the product: this module and what it imports at the top
stay on the standard library's cheapest modules (tests/qa checks the list).
Everything else is imported inside the branch that needs it.
"""

from __future__ import annotations

import os
import stat
import sys

from pysendmail.core import config, errors, layout, rfc5322, spoolfile
from pysendmail.submit import flags, intake


def _login(uid: int) -> str:
    import pwd

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _open_spool(settings: config.SubmitSettings) -> layout.Spool:
    spool = layout.Spool(settings.spool_path)
    if settings.config_path != config.SYSTEM_CONFIG and not os.path.exists(spool.path):
        # User mode: the first submission creates the private spool.
        layout.ensure_layout(spool, shared=False)
    layout.check_incoming(spool)
    return spool


RUN_CODE = "import sys; from pysendmail.admin.cli import main; sys.exit(main(sys.argv[1:]))"
# What a systemd service that calls sendmail hands its children: a run
# that inherited them would tell that service's manager READY/STOPPING.
_SERVICE_VARIABLES = ("NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "WATCHDOG_PID", "WATCHDOG_USEC")


def start_run(spool: layout.Spool, config_path: str | None) -> int:
    """Start a detached delivery run if nothing holds the spool; return its pid, or 0.

    Only for a caller who may deliver: root (the run drops to the spool's
    owner) or the spool's owner (user mode).  An unprivileged user of a
    shared spool cannot read the queue: there the daemon is required.
    The check is one non-blocking flock on spool/lock, the file every
    daemon, flush and run holds; a free lock is released at once.  The
    child detaches (setsid, / as its directory, /dev/null on 0-2, every
    other descriptor closed) and execs Python: the caller pays one fork,
    never the run's imports.  A lost race is harmless: of two runs
    started at once the second finds the lock taken and exits.
    """
    euid = os.geteuid()
    try:
        if euid != 0 and os.stat(spool.path).st_uid != euid:
            return 0
        # O_NONBLOCK: as root (cron) a FIFO the spool's owner planted as
        # the lock must not block the submitter; only a file counts.
        fd = os.open(spool.lock, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        fd = -1  # no daemon ever ran here: nothing holds it
    except OSError:
        return 0
    if fd >= 0:
        import fcntl

        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return 0  # not the lock a run could take either
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return 0  # a daemon, a flush or a run holds the spool: it sees the poke or rescans
        finally:
            os.close(fd)
    exe = sys.executable
    if not exe:
        return 0
    argv = [exe, "-P", "-c", RUN_CODE]
    if config_path is not None:
        argv += ["-C", os.path.abspath(config_path)]  # the child runs in /
    argv += ["run", "--log"]
    try:
        pid = os.fork()
    except OSError:
        return 0
    if pid:
        return pid  # not waited for: reparented when the caller exits
    try:  # the child: only os calls, then exec; never back into the caller's code
        os.setsid()
        os.chdir("/")
        os.umask(0o022)  # the systemd unit's, not the caller's (PHP-FPM's may be 0)
        try:
            os.nice(10)  # background work: on a busy host the caller and its siblings go first
        except OSError:
            pass
        null = os.open(os.devnull, os.O_RDWR)
        for target in (0, 1, 2):
            os.dup2(null, target)
        os.closerange(3, os.sysconf("SC_OPEN_MAX"))  # the caller's sockets and pipes (PHP-FPM's)
        env = {k: v for k, v in os.environ.items() if k not in _SERVICE_VARIABLES}
        os.execve(exe, argv, env)
    finally:
        os._exit(127)


def make_envelope(opts: flags.Options, message: bytes, extra_recipients: list[str] | None = None) -> spoolfile.Envelope:
    """Envelope for one message read from stdin under ``opts``."""
    head, _body = rfc5322.split_message(message)
    intake.check_header_section(head)
    recipients: list[str] = []
    fields = rfc5322.header_fields(head) if opts.extract else []
    if opts.extract:
        recipients += intake.recipients_from_headers(fields)
    for arg in opts.recipients:
        try:
            recipients += rfc5322.parse_recipient_arg(arg)
        except rfc5322.AddressError as exc:
            raise errors.DataError(f"{exc}; nothing was queued") from None
    if not recipients:
        if opts.extract and any(name.lower().startswith("resent-") for name, _ in fields):
            # Say why a present To: was ignored (RFC 5322 3.6.6, as Postfix does).
            raise errors.UsageError(
                "no recipients: the message has Resent- fields, so only Resent-To, Resent-Cc and Resent-Bcc "
                "count, and it has no address there; nothing was queued"
            )
        if opts.extract:
            raise errors.UsageError("no recipients: the message has no To, Cc or Bcc address; nothing was queued")
        raise errors.UsageError("no recipients: give addresses as arguments or use -t; nothing was queued")
    uid = os.getuid()
    login = _login(uid)
    if opts.sender is None:
        sender = login  # qualified later by the daemon, as Postfix's myorigin
    else:
        try:
            sender = rfc5322.parse_sender(opts.sender)
        except rfc5322.AddressError as exc:
            raise errors.DataError(f"{exc}; nothing was queued") from None
    import time

    return spoolfile.Envelope(
        sender,
        recipients,
        uid=uid,
        login=login,
        time=time.time(),
        fullname=opts.fullname,
        envid=opts.envid,
        notify=opts.notify,
        ret=opts.ret,
        body=opts.body or ("7BIT" if message.isascii() else "8BITMIME"),
    )


def submit(opts: flags.Options) -> int:
    settings = config.submit_settings(opts.config)
    spool = _open_spool(settings)
    message = intake.read_message(sys.stdin.buffer, opts.ignore_dots, settings.max_message_size)
    env = make_envelope(opts, message)
    qid = layout.enqueue(spool, env, message)
    if opts.verbose:
        sys.stderr.write(f"sendmail: queued as {qid} for {', '.join(env.recipients)}\n")
    if settings.deliver_without_daemon:
        pid = start_run(spool, settings.config_path)
        if pid and opts.verbose:
            sys.stderr.write(f"sendmail: no daemon holds the spool; started a delivery run, pid {pid}\n")
    return 0


def dispatch(prog: str, args: list[str]) -> int:
    if args and args[0] in ("--help", "-help"):
        sys.stdout.write(flags.help_text(prog))
        return 0
    if args and args[0] == "--version":
        from pysendmail import __version__

        sys.stdout.write(f"pysendmail {__version__}\n")
        return 0
    opts = flags.parse(args)
    if opts.mode == "deliver":
        return submit(opts)
    if opts.mode == "smtp":
        from pysendmail.submit import bs

        settings = config.submit_settings(opts.config)
        spool = _open_spool(settings)
        code = bs.serve(spool, settings.max_message_size, opts, sys.stdin.buffer, sys.stdout.buffer,
                        settings.smtp_timeout, settings.smtp_session_limit)
        if settings.deliver_without_daemon and layout.ready_waiting(spool):
            start_run(spool, settings.config_path)
        return code
    from pysendmail.admin import cli

    # -C is the pysendmail command's global option: it goes before the
    # subcommand ("pysendmail flush -C FILE" was a usage error, exit 64);
    # mailq and newaliases take it after their name, as they always did.
    given = ["-C", opts.config] if opts.config else []
    if opts.mode == "mailq":
        return cli.main(["mailq"] + given)
    if opts.mode == "newaliases":
        return cli.main(["newaliases"] + given)
    if opts.mode == "verify":
        return cli.verify(opts.config, opts.recipients)
    if opts.mode == "flush":
        return cli.main(given + ["flush"])
    if opts.mode == "daemon":
        extra = ["--interval", str(opts.queue_interval)] if opts.queue_interval else []
        return cli.main(given + ["daemon"] + extra)
    raise AssertionError(opts.mode)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv if argv is None else argv
    prog = os.path.basename(argv[0]) if argv else "sendmail"
    if prog in ("mailq", "newaliases"):
        from pysendmail.admin import cli

        return cli.main([prog] + argv[1:])
    try:
        return dispatch("sendmail", argv[1:])
    except errors.PysendmailError as exc:
        sys.stderr.write(f"sendmail: {exc}\n")
        return exc.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("sendmail: interrupted; nothing was queued\n")
        return errors.EX_TEMPFAIL
    except Exception as exc:  # the boundary: never a traceback, never exit 0
        sys.stderr.write(f"sendmail: internal error ({type(exc).__name__}: {exc}); nothing was queued, try again\n")
        return errors.EX_TEMPFAIL


if __name__ == "__main__":
    sys.exit(main())
