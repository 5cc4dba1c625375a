"""The ``pysendmail`` command, and mailq/newaliases/-bv/-q behind sendmail.

Contract:   ``main(argv)`` runs one subcommand and returns a sysexits.h
            code; every PysendmailError becomes one sentence on stderr.
            Subcommands: daemon, flush, run (a delivery run that ends when
            idle: daemon/run.py), status, mailq, newaliases, queue
            (list, show, delete, hold, release, retry), spool init, config
            check|show, setup, test, doctor, dkim keygen|check
            (admin/dkimcmd.py), route list|resume (admin/routecmd.py),
            oauth login (admin/oauthcmd.py).
Security:   run as root, commands that touch the queue first drop to the
            spool's owner, so every file they create belongs to the daemon
            user; other users get NoPermission for the queue, except mailq,
            which shows them the owner's published summary (core/mailq.py
            says what it holds and why it is safe).  Every command that
            changes the queue (flush, queue, spool init) republishes it.
            queue hold|delete of an id still in incoming/ never races a
            pickup: without a daemon they hold the spool's lock, with one
            they ask it to pick the id up first (_claim_incoming).
            Requests to a running daemon (flush, queue hold|release|retry|
            delete) are files in state/ (core/requests.py), never
            bare FIFO bytes.  flush exits 75 (one sentence) when the
            spool's disk refused a write; nothing is lost.
See also:   pysendmail(8), mailq(1), newaliases(1).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import stat
import sys
import time
from collections.abc import Iterable

from pysendmail import __version__
from pysendmail.core import aliases, config, errors, layout, log, queue, spoolfile
from pysendmail.core.qid import is_qid
from pysendmail.admin.privileges import drop_privileges, spool_owner

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import NoReturn

    from pysendmail.core.lock import SpoolLock


def _load(path: str | None) -> config.Config:
    cfg = config.load(path)
    config.write_cache(cfg)  # admin commands keep the submitter's cache fresh
    return cfg


def _ready_spool(cfg: config.Config) -> layout.Spool:
    from pysendmail.core import trust

    spool = layout.Spool(cfg.spool_path)
    problem = trust.spool(spool.path, spool_owner(cfg)[::2])  # before making it or becoming its owner
    if problem:
        raise errors.ConfigError(problem)
    if not os.path.isdir(spool.incoming):
        cmd_spool_init(cfg)
    drop_privileges(cfg)
    if not os.access(spool.queue, os.R_OK | os.W_OK | os.X_OK):
        raise errors.NoPermission(
            f"permission denied: the queue in {spool.queue} belongs to uid {os.stat(spool.path).st_uid}; "
            "run this as root or as that user"
        )
    return spool


def cmd_spool_init(cfg: config.Config) -> int:
    spool = layout.Spool(cfg.spool_path)
    uid, gid, name = spool_owner(cfg)
    shared = os.geteuid() == 0
    layout.ensure_layout(spool, shared=shared, owner=(uid, gid))
    if shared:
        # Every user's mailq works from now on.  Written with the owner's
        # rights, in a child: the owner controls public/ and could swap it
        # for a link, and root must never create, rename or remove files
        # through a path that user chooses (public/incoming/ linked to /etc
        # would have root's stub cleaning empty /etc).
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                drop_privileges(cfg)  # to whoever owns the spool as set up (lstat: a link is refused)
                publish_summary(spool)
                code = 0
            finally:
                os._exit(code)
        os.waitpid(pid, 0)
    return 0


def publish_summary(spool: layout.Spool) -> None:
    """Refresh public/mailq after a change made here; a failure is a warning, not the command's failure."""
    from pysendmail.core import mailq
    from pysendmail.core.lock import lock_holder

    try:
        mailq.publish(spool, lock_holder(spool) or 0)
    except (OSError, errors.PysendmailError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        sys.stderr.write(f"pysendmail: warning: cannot publish the queue summary for other users' mailq: {why}\n")


def cmd_mailq(cfg: config.Config, as_json: bool) -> int:
    from pysendmail.core import mailq

    spool = layout.Spool(cfg.spool_path)
    if not os.path.isdir(spool.path):
        listed: Iterable[mailq.QueueEntry] = []
    else:
        drop_privileges(cfg)
        if mailq.can_read_queue(spool):
            listed = mailq.entries(spool)
        else:
            # Any other user: the owner's published summary and the submitters' stubs.
            published, listed = mailq.read_public(spool)
            if not published.daemon_alive:
                when = time.strftime("%a %b %e %H:%M:%S", time.localtime(published.time))
                sys.stderr.write(
                    f"mailq: the daemon is not running: this is the queue as of {when} "
                    f"({_age(time.time() - published.time)} ago) plus messages submitted since\n"
                )
    if as_json:
        sys.stdout.write(mailq.render_json(list(listed)))
    else:
        mailq.write_text(listed, sys.stdout)  # streamed: one entry in memory at a time
    return 0


def _age(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    if seconds < 172800:
        return f"{seconds // 3600} h"
    return f"{seconds // 86400} days"


def cmd_newaliases(cfg: config.Config) -> int:
    from pysendmail.daemon.qmgr import make_context

    path = cfg.host.aliases_file
    try:
        checker = make_context(cfg).aliases  # errors name FILE:LINE, in the aliases file or the TOML
    except aliases.AliasError as exc:
        raise errors.DataError(str(exc)) from None
    table = checker.table
    loops = checker.loops()
    if loops:
        shown = "; ".join(" -> ".join(cycle) for cycle in loops)
        raise errors.DataError(f"alias loop: {shown}; break the cycle in {path} or [aliases]")
    if cfg.relay_configured:
        # Valid, but mail would bounce: say so now rather than in a DSN.
        if aliases.CATCH_ALL not in table:
            sys.stderr.write(
                "newaliases: warning: root has no alias: with a relay configured, mail for root and for local "
                f'names without an alias (root@localhost, www-data) bounces; set [aliases] root = "you@example.org" '
                f"in {cfg.path}\n"
            )
        for name, targets in sorted(table.items()):
            if any(checker.local_name(t) == name for t in targets):
                sys.stderr.write(f"newaliases: warning: alias {name} names itself; with a relay configured that "
                                 "copy cannot be kept and bounces\n")
    sys.stdout.write(f"newaliases: {len(table)} aliases checked ({path} and [aliases]): ok\n")
    return 0


def verify(config_path: str | None, addresses: list[str]) -> int:
    """sendmail -bv: what each address resolves to, after aliases; 65 when one cannot be delivered."""
    from pysendmail.core import rfc5322
    from pysendmail.daemon.qmgr import make_context

    cfg = _load(config_path)
    if not addresses:
        raise errors.UsageError("no recipients: -bv needs addresses to verify")
    try:
        ctx = make_context(cfg)
    except aliases.AliasError as exc:
        raise errors.DataError(str(exc)) from None
    code = 0
    for arg in addresses:
        try:
            found = rfc5322.parse_recipient_arg(arg)
        except rfc5322.AddressError as exc:
            raise errors.DataError(str(exc)) from None
        for addr in found:
            final, refused = ctx.aliases.resolve(addr)
            if final:
                sys.stdout.write(f"{addr}... deliverable: {', '.join(final)}\n")
            for where, why in refused:
                sys.stdout.write(f"{addr}... undeliverable: {where}: {why}\n")
                code = errors.EX_DATAERR
    return code


def _ask_daemon(spool: layout.Spool, pid: int) -> bool:
    """Have the running daemon run the whole queue; wait until it has. False if it died.

    The request is a file in state/ (core/requests.py), which
    only root and the daemon's user can write; the 'F' byte in the FIFO
    only announces it, as anyone may write that byte.  The daemon removes
    the file after the run: that is the answer we wait for.
    """
    from pysendmail.core.requests import FULL_SUFFIX, await_request, leave_request

    try:
        request = leave_request(spool, "flush")
    except OSError as exc:
        if queue.storage_error(exc):
            raise _disk_full(spool, exc.strerror or str(exc)) from None
        raise errors.from_oserror(exc, f"leave a flush request in {spool.state}") from None
    if sys.stderr.isatty():
        sys.stderr.write(f"flush: asked the daemon (pid {pid}) to run the queue now; waiting\n")
    try:
        if not await_request(spool, request, pid, b"F"):
            return False
    finally:
        if os.path.exists(request):
            os.unlink(request)  # the daemon died first: we run the queue ourselves
    if os.path.exists(request + FULL_SUFFIX):
        os.unlink(request + FULL_SUFFIX)
        raise _disk_full(spool, "the daemon's run met a disk that refused writes")
    return True


def _disk_full(spool: layout.Spool, why: str) -> errors.TempFailure:
    """The one sentence of a flush (exit 75) whose spool's file system is full or failing."""
    return errors.TempFailure(
        f"the file system of the spool {spool.path} is full or failing ({why}); the mail stays queued and "
        "nothing was lost: free some space, then run 'pysendmail flush' again"
    )


def cmd_flush(cfg: config.Config) -> int:
    from pysendmail.core.lock import SpoolLock, lock_holder
    from pysendmail.daemon.qmgr import QueueManager

    from pysendmail.core.lock import stop_run
    from pysendmail.submit.main import start_run

    spool = _ready_spool(cfg)
    lock = SpoolLock(spool)
    if not lock.acquire("flush"):
        pid = lock_holder(spool, "daemon")
        # The daemon owns the queue: ask it instead of racing it (two
        # runners would send the same message twice).
        if pid and _ask_daemon(spool, pid):
            return 0
        stop_run(spool)  # a delivery run started by sendmail: this flush does its work
        lock.acquire("flush", wait=True)  # another flush or a run: wait for it, then run
    try:
        manager = QueueManager(cfg)
        manager.trouble_logged = True  # a full disk is said once, by the sentence below (exit 75)
        counts = asyncio.run(manager.flush())
    finally:
        lock.release()
    if manager.trouble is not None:
        unsaved = len(manager.unrecorded)
        err = _disk_full(spool, manager.trouble)
        if unsaved:
            err = errors.TempFailure(f"{err}; {unsaved} messages were sent but their outcome could not be "
                                     "recorded, so they may be sent again")
        raise err
    # On a full disk the summary could not be written either: it is
    # republished by the next flush or the daemon, once writes work.
    publish_summary(spool)
    if cfg.deliver_without_daemon and layout.ready_waiting(spool):
        # Queued during this flush, by a submitter that found the lock
        # taken and so started no run: start one now.
        start_run(spool, cfg.path)
    if sys.stderr.isatty():
        sys.stderr.write(
            f"flush: {counts.messages} messages tried: {counts.sent} recipients sent, "
            f"{counts.deferred} deferred, {counts.failed} failed\n"
        )
    return 0


def cmd_run(cfg: config.Config, linger: float, to_log: bool) -> int:
    from pysendmail.daemon import run as delivery

    if linger < 0:
        raise errors.UsageError("run --linger must be 0 or more seconds")
    _ready_spool(cfg)  # as root: the spool's owner from here on, as the daemon
    log.set_format(cfg.log.format)
    return delivery.run(cfg, linger, to_log)


def cmd_daemon(cfg: config.Config, interval: int | None, log_format: str | None = None) -> int:
    from pysendmail.daemon import main as daemon_main

    _ready_spool(cfg)
    log.set_format(log_format or cfg.log.format)  # the option wins over [log] format
    return daemon_main.run(cfg, interval)


def _counts(spool: layout.Spool) -> dict[str, int]:
    counts = {"incoming": 0, "active": 0, "deferred": 0, "held": 0, "failed": 0, "quarantine": 0}
    counts["incoming"] = len(queue.list_ids(spool.incoming))
    for qid in queue.list_ids(spool.queue):
        try:
            state = queue.QueuedMessage.load(spool.queue_file(qid)).state
        except (OSError, spoolfile.SpoolFormatError):
            continue
        if state in counts:
            counts[state] += 1
    counts["failed"] = len(queue.list_ids(spool.failed))
    try:
        counts["quarantine"] = len(os.listdir(spool.quarantine))
    except OSError:
        pass
    return counts


def cmd_status(cfg: config.Config, as_json: bool) -> int:
    from pysendmail.admin import status
    from pysendmail.core.lock import lock_holder

    spool = layout.Spool(cfg.spool_path)
    if os.path.isdir(spool.path):
        drop_privileges(cfg)
    pid = lock_holder(spool)
    try:
        counts = _counts(spool)
    except PermissionError:
        raise errors.NoPermission(f"permission denied reading {spool.path}: run this as root or the spool's owner") from None
    data = status.collect(cfg, spool, pid, counts, lock_holder(spool, "run"))
    if as_json:
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
    else:
        sys.stdout.write(status.render(data))
    return 0


INCOMING_WAIT = 30.0  # how long queue hold/delete wait for a running daemon to pick an id up


def _in_incoming(spool: layout.Spool, qid: str) -> bool:
    """A ready submission (what mailq lists as incoming), not yet picked up."""
    try:
        st = os.lstat(spool.incoming_file(qid))
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == layout.READY_MODE


def _claim_incoming(spool: layout.Spool, qids: list[str]) -> SpoolLock | None:
    """Make sure nobody picks ``qids`` up while we act on them; the lock we hold, or None.

    No daemon: take the spool's lock (as flush does; a flush running
    already is waited for), so no pickup can start until we are done and
    incoming/ may be changed directly.  A daemon: it holds the lock and
    would race us, so ask it to pick the ids up (a W poke) and wait until
    they have left incoming/; the caller then acts on queue/ as usual.
    """
    from pysendmail.core.lock import SpoolLock, lock_holder

    lock = SpoolLock(spool)
    deadline = time.monotonic() + INCOMING_WAIT
    next_poke = 0.0
    while True:
        if lock.acquire("queue"):
            return lock
        pid = lock_holder(spool, "daemon")
        if pid is None:
            lock.acquire("queue", wait=True)  # a flush: it picks up at its start only
            return lock
        left = [q for q in qids if os.path.lexists(spool.incoming_file(q))]
        if not left:
            return None
        if time.monotonic() > deadline:
            raise errors.TempFailure(
                f"the daemon (pid {pid}) has not picked up {left[0]} from {spool.incoming} within "
                f"{INCOMING_WAIT:.0f} s; see its log, then try again"
            )
        if time.monotonic() >= next_poke:
            layout.poke(spool, b"W")
            next_poke = time.monotonic() + 1.0
        time.sleep(0.05)


def _show(spool: layout.Spool, qid: str, max_size: int) -> None:
    path = spool.queue_file(qid)
    if os.path.exists(path):
        msg = queue.QueuedMessage.load(path)
        env, state, message = msg.envelope, msg.state, msg.message
        statuses = ["sent" if i in msg.done else "failed" if i in msg.failed else "pending"
                    for i in range(len(env.recipients))]
    else:
        # Still in incoming/: the submission as the user wrote it (pickup has
        # not added Received: or rewritten anything yet).  Opened as pickup
        # opens it: the file is the submitter's, so no symlink, no FIFO.
        try:
            fd = os.open(spool.incoming_file(qid), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            raise errors.DataError(f"queue id {qid} left the queue meanwhile") from None
        with os.fdopen(fd, "rb") as fh:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise errors.DataError(f"incoming/{qid} is not a regular file; the daemon will quarantine it")
            data = fh.read(max_size + (1 << 20) + 1)
        try:
            env, message, _records = spoolfile.decode(data)
        except spoolfile.SpoolFormatError as exc:
            raise errors.DataError(f"incoming/{qid} is malformed ({exc}); the daemon will quarantine it") from None
        state, statuses = "incoming", ["pending"] * len(env.recipients)
    sys.stdout.write(f"queue id: {qid}\nstate: {state}\nsender: <{env.sender}>\n")
    for rcpt, status in zip(env.recipients, statuses):
        sys.stdout.write(f"recipient: <{rcpt}> {status}\n")
    sys.stdout.write("\n")
    sys.stdout.flush()  # the text above before the bytes below
    sys.stdout.buffer.write(message.replace(b"\r\n", b"\n"))
    sys.stdout.buffer.flush()


def cmd_queue(cfg: config.Config, action: str, ids: list[str], all_: bool) -> int:
    spool = _ready_spool(cfg)
    if action == "list":
        return cmd_mailq(cfg, False)
    if all_ and ids:
        raise errors.UsageError(f"queue {action}: give queue ids or --all, not both")
    if all_:
        # What mailq lists: queue/ and the ready submissions in incoming/.
        ids = sorted(set(queue.list_ids(spool.queue)) | {q for q in queue.list_ids(spool.incoming)
                                                          if _in_incoming(spool, q)})
        if not ids:
            sys.stderr.write(f"pysendmail: the queue is empty: nothing to {action}\n")
            return 0
    elif not ids:
        raise errors.UsageError(f"queue {action} needs queue ids (or --all)")
    for qid in ids:
        if not is_qid(qid):
            raise errors.UsageError(f"{qid!r} is not a queue id; mailq lists them")
        if not os.path.exists(spool.queue_file(qid)) and not _in_incoming(spool, qid):
            raise errors.DataError(f"queue id {qid} is not in the queue")
    if action == "show":
        for qid in ids:
            _show(spool, qid, cfg.max_message_size)
        return 0
    waiting = [q for q in ids if not os.path.exists(spool.queue_file(q))]
    # hold needs a queue file to record the hold in, delete must not race a
    # pickup; release and retry of a submission not yet picked up are true
    # already (it is due the moment it is queued).
    lock = _claim_incoming(spool, waiting) if waiting and action in ("hold", "delete") else None
    try:
        ctx = None
        for qid in ids:
            path = spool.queue_file(qid)
            incoming = spool.incoming_file(qid)
            now = f"{time.time():.3f}"
            if not os.path.exists(path) and lock is not None and os.path.lexists(incoming):
                # We hold the lock: nobody else picks up or delivers now.
                if action == "delete":
                    queue.remove(incoming)  # one unlink, then the directory fsynced
                    sys.stdout.write(f"{qid}: deleted\n")
                    continue
                # hold: queue it exactly as the daemon's pickup would (the same
                # checks, cleanup, durable write, then unlink), then record the
                # hold.  A crash between the two leaves it queued, not held,
                # and this command reported nothing: run it again.
                from pysendmail.daemon import pickup
                from pysendmail.daemon.qmgr import make_context

                ctx = ctx or make_context(cfg)
                pickup.pickup_one(spool, qid, ctx, cfg.max_message_size)
                if not os.path.exists(path):
                    raise errors.DataError(f"queue id {qid} could not be queued for the hold: pickup refused it "
                                           "(see the line above: quarantined, or changed by its submitter)")
            if not os.path.exists(path):
                if action in ("release", "retry") and _in_incoming(spool, qid):
                    sys.stdout.write(f"{qid}: due now (not yet picked up from incoming/)\n")
                    continue
                raise errors.DataError(f"queue id {qid} left the queue meanwhile (sent, or refused by pickup: "
                                       "see the daemon's log)")
            if action == "delete":
                queue.remove(path)
                sys.stdout.write(f"{qid}: deleted\n")
            elif action == "hold":
                queue.append(path, spoolfile.encode_record("hold", now, "held by the administrator"))
                sys.stdout.write(f"{qid}: held\n")
            elif action in ("release", "retry"):
                queue.append(path, spoolfile.encode_record("release", now))
                sys.stdout.write(f"{qid}: {'released' if action == 'release' else 'due now'}\n")
    finally:
        if lock is not None:
            lock.release()
        # The summary first, then the poke: a user's mailq never shows
        # a state older than what the daemon is told to act on.
        sys.stdout.flush()
        publish_summary(spool)
    # A running daemon keeps due times in memory: ask it to read them again
    # (after a delete too: it then forgets the ids, and republishes).
    # (a request file, see daemon/main.py: the 'I' byte alone is anyone's
    # and does nothing).
    from pysendmail.core.requests import leave_request

    try:
        leave_request(spool, "reindex")
    except OSError:
        pass  # no daemon would read it either: it reads queue/ at start
    layout.poke(spool, b"I")
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error exits 64 (EX_USAGE) instead of 2."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        sys.stderr.write(f"{self.prog}: {message}\n")
        sys.exit(errors.EX_USAGE)


def build_parser(prog: str) -> argparse.ArgumentParser:
    p = _Parser(prog=prog, description="pysendmail: a durable sendmail with DKIM and an SMTP relay.")
    p.add_argument("-C", "--config", help="configuration file (default: $PYSENDMAIL_CONFIG, /etc, user config)")
    p.add_argument("--version", action="version", version=f"pysendmail {__version__}")
    sub = p.add_subparsers(dest="command", metavar="command", parser_class=_Parser)
    d = sub.add_parser("daemon", help="run the queue daemon in the foreground until SIGTERM")
    d.add_argument("--interval", type=int, help="also run the whole queue every N seconds")
    d.add_argument("--log-format", choices=["text", "json"],
                   help="log lines as Postfix-shaped text (default) or one JSON object per line (journald, Loki); "
                        "default: [log] format")
    sub.add_parser("flush", help="try every queued message now, ignoring backoff, then exit")
    r = sub.add_parser("run", help="deliver what is due, wait --linger seconds for more, then exit (what sendmail "
                                   "starts when no daemon runs)")
    r.add_argument("--linger", type=float, default=5.0, metavar="SECONDS",
                   help="stop after this long without work (default 5)")
    r.add_argument("--log", action="store_true", help="append log lines to SPOOL/state/run.log, not stderr")
    s = sub.add_parser("status", help="mode, daemon, queue counts")
    s.add_argument("--json", action="store_true")
    m = sub.add_parser("mailq", help="list the queue (Postfix's layout)")
    m.add_argument("--json", action="store_true")
    sub.add_parser("newaliases", help="check the aliases file and [aliases]")
    q = sub.add_parser("queue", help="list, show, delete, hold, release or retry queued messages")
    q.add_argument("action", choices=["list", "show", "delete", "hold", "release", "retry"])
    q.add_argument("ids", nargs="*")
    q.add_argument("--all", action="store_true", help="every queued message")
    sp = sub.add_parser("spool", help="spool maintenance")
    sp.add_argument("action", choices=["init"])
    c = sub.add_parser("config", help="check the configuration (no network) or show the effective one",
                       description="check: the config, every relay's secrets, DKIM keys and the spool's owners and "
                                   "modes, as the daemon's user; show: every value with its source, secrets masked.")
    c.add_argument("action", choices=["check", "show"])
    c.add_argument("--json", action="store_true")
    c.add_argument("-v", "--verbose", action="store_true", help="check: print the OK lines too")
    st = sub.add_parser("setup", help="write the config, password file and spool (and a DKIM key); print DNS records",
                        description="Non-interactive with flags; on a terminal asks only for what is missing.")
    st.add_argument("--provider", help="yandex, gmail, mailru, outlook, fastmail, ses, sendgrid, mailgun or custom")
    st.add_argument("--user", help="the account's user name (usually its address)")
    st.add_argument("--password-stdin", action="store_true", help="read the password from the first line of stdin")
    st.add_argument("--host", help="relay host (custom, or to override the preset)")
    st.add_argument("--port", type=int)
    st.add_argument("--tls", choices=["implicit", "starttls"])
    st.add_argument("--region", help="AWS region, for --provider ses")
    st.add_argument("--ca-file", help="extra CA certificate for the relay")
    st.add_argument("--from-address", help="the account's address when the user name is not one")
    mode = st.add_mutually_exclusive_group()
    mode.add_argument("--system", dest="system", action="store_true", default=None,
                      help="system mode: /etc/pysendmail, /var/spool/pysendmail, the pysendmail user (root only)")
    mode.add_argument("--user-mode", dest="system", action="store_false",
                      help="user mode: everything under your own directories")
    st.add_argument("--daemon-user", default="pysendmail", help="system mode: the daemon's user (default: pysendmail)")
    st.add_argument("--dkim", metavar="DOMAIN", help="generate a DKIM key for DOMAIN (kept if it exists)")
    st.add_argument("--selector", default="mail", help="DKIM selector (default: mail)")
    st.add_argument("--spool", help="spool directory (default: the mode's)")
    st.add_argument("--force", action="store_true", help="overwrite a config or password file that differs")
    st.add_argument("--test-to", metavar="ADDR", help="send a test message to ADDR when done")
    st.add_argument("--oauth", action="store_true",
                    help="sign in with OAuth2 instead of a password (outlook, gmail, yandex, custom): writes "
                         "auth = \"oauth2\" and runs 'pysendmail oauth login'")
    st.add_argument("--client-id", help="--oauth: the application (client) id registered with the provider")
    st.add_argument("--client-secret-file", help="--oauth: a file holding the client secret (Google, Yandex)")
    st.add_argument("--tenant", help="--oauth with outlook: the Microsoft tenant (default: organizations)")
    st.add_argument("--oauth-scope", help="--oauth with custom: the scope")
    st.add_argument("--oauth-token-url", help="--oauth with custom: the token endpoint")
    st.add_argument("--oauth-device-url", help="--oauth with custom: the device authorization endpoint")
    st.add_argument("--oauth-authorize-url", help="--oauth with custom: the authorization endpoint (PKCE)")
    st.add_argument("--json", action="store_true")
    t = sub.add_parser("test", help="send a real test message now, showing the SMTP dialogue",
                       description="Sends synchronously through a route (credentials masked); nothing is queued.")
    t.add_argument("--to", required=True, metavar="ADDR")
    t.add_argument("--route", metavar="NAME", help="the route to use (default: the one the rules choose)")
    t.add_argument("--from", dest="sender", metavar="ADDR", help="envelope sender (default: the account)")
    t.add_argument("--json", action="store_true", help="print the outcome as JSON after the dialogue")
    dr = sub.add_parser("doctor", help="DNS checks: MX, SPF, DKIM, DMARC, HELO name",
                        description="Each line is OK, WARN or FAIL with the fix; exits 78 (EX_CONFIG) when something FAILs.")
    dr.add_argument("--domain", help="the sending domain (default: the first [[dkim]] domain or the account's)")
    dr.add_argument("--nameserver", metavar="IP[:PORT]", help="ask this DNS server instead of the system's")
    dr.add_argument("--json", action="store_true")
    from pysendmail.admin import dkimcmd, oauthcmd, routecmd

    dkimcmd.add_parser(sub)
    routecmd.add_parser(sub)
    oauthcmd.add_parser(sub)
    return p


def cmd_setup(args: argparse.Namespace) -> int:
    from pysendmail.admin import setup

    opts = setup.Options(
        provider=args.provider, user=args.user, password_stdin=args.password_stdin, host=args.host, port=args.port,
        tls=args.tls, region=args.region, ca_file=args.ca_file, from_address=args.from_address, system=args.system,
        dkim=args.dkim, selector=args.selector, spool=args.spool, force=args.force, test_to=args.test_to,
        daemon_user=args.daemon_user, oauth=args.oauth, client_id=args.client_id,
        client_secret_file=args.client_secret_file, tenant=args.tenant, oauth_scope=args.oauth_scope,
        oauth_token_url=args.oauth_token_url, oauth_device_url=args.oauth_device_url,
        oauth_authorize_url=args.oauth_authorize_url,
    )
    summary = setup.run(opts, args.config or os.environ.get("PYSENDMAIL_CONFIG") or None, sys.stdout)
    sys.stdout.write(json.dumps(summary, indent=2) + "\n" if args.json else setup.render(summary))
    if args.oauth:
        from pysendmail.admin import oauthcmd

        cfg = _load(str(summary["config"]))
        # With --json, stdout holds the JSON alone: the login speaks on stderr.
        oauthcmd.login(cfg, "default", sys.stderr if args.json else sys.stdout, sys.stdin.readline)
    if args.test_to:
        cfg = _load(str(summary["config"]))
        return cmd_test(cfg, args.test_to, None, None, False)
    if sys.stdin.isatty() and not args.json:
        answer = input("Send a test message now? Address (empty: no): ").strip()
        if answer:
            return cmd_test(_load(str(summary["config"])), answer, None, None, False)
    return 0


def cmd_test(cfg: config.Config, to: str, route: str | None, sender: str | None, as_json: bool) -> int:
    from pysendmail.admin import sendtest
    from pysendmail.core import rfc5322

    try:
        rfc5322.check_addr_spec(to)
    except rfc5322.AddressError as exc:
        raise errors.UsageError(f"--to {to!r} is not an address: {exc}") from None
    # With --json, stdout holds the JSON alone; the dialogue goes to stderr.
    status, text = sendtest.run(cfg, to, route, sender, sys.stderr if as_json else sys.stdout)
    code = 0 if status == "sent" else errors.EX_TEMPFAIL if status in ("deferred", "held") else errors.EX_DATAERR
    if as_json:
        sys.stdout.write(json.dumps({"status": status, "text": text}) + "\n")
        return code
    if status == "sent":
        sys.stdout.write(f"test: sent to {to}: {text}\n")
        return code
    explained = text if "hint:" in text else text + "; hint: see the dialogue above and 'pysendmail config check'"
    sys.stdout.write(f"test: NOT sent ({status}): {explained}\n")
    return code


def cmd_doctor(cfg: config.Config, domain: str | None, nameserver: str | None, as_json: bool) -> int:
    from pysendmail.admin import doctor

    domain = domain or doctor.default_domain(cfg)
    if not domain:
        raise errors.UsageError("doctor needs a domain: pass --domain (no [[dkim]] or account address names one)")
    findings = doctor.check(cfg, domain, doctor.resolver(nameserver))  # TempFailure (75): DNS unreachable
    if as_json:
        sys.stdout.write(json.dumps([{"level": lv, "text": t} for lv, t in findings], indent=2) + "\n")
    else:
        sys.stdout.write("".join(f"{lv:<4} {t}\n" for lv, t in findings))
    # A FAIL is a DNS record that configures the domain wrongly: EX_CONFIG,
    # as 'dkim check' exits for a missing or different key record.
    return errors.EX_CONFIG if any(lv == "FAIL" for lv, _ in findings) else 0


def cmd_config(cfg: config.Config, action: str, as_json: bool, verbose: bool) -> int:
    from pysendmail.admin import configcmd

    if action == "show":
        data = configcmd.show(cfg)
        sys.stdout.write(json.dumps(data, indent=2) + "\n" if as_json else configcmd.render_show(data))
        return 0
    from pysendmail.admin.dkimcmd import check_config

    check_config(cfg)  # the DKIM keys, loaded as the daemon loads them: one sentence, exit 78
    return configcmd.run_check(cfg, as_json, verbose)


def run(args: argparse.Namespace) -> int:
    if args.command == "setup":
        return cmd_setup(args)
    cfg = _load(args.config)
    if not cfg.relay_configured and args.command in ("status", "flush", "test", "doctor") and sys.stderr.isatty():
        sys.stderr.write("pysendmail: no relay configured, mail goes to the local Maildir; "
                         "run 'pysendmail setup --provider NAME --user ADDRESS'\n")
    cmd = args.command
    if cmd == "daemon":
        return cmd_daemon(cfg, args.interval, args.log_format)
    if cmd == "flush":
        return cmd_flush(cfg)
    if cmd == "run":
        return cmd_run(cfg, args.linger, args.log)
    if cmd == "status":
        return cmd_status(cfg, args.json)
    if cmd == "mailq":
        return cmd_mailq(cfg, args.json)
    if cmd == "newaliases":
        return cmd_newaliases(cfg)
    if cmd == "queue":
        return cmd_queue(cfg, args.action, args.ids, args.all)
    if cmd == "spool":
        return cmd_spool_init(cfg)
    if cmd == "dkim":
        from pysendmail.admin import dkimcmd

        return dkimcmd.run(cfg, args)
    if cmd == "route":
        from pysendmail.admin import routecmd

        return routecmd.run(cfg, args)
    if cmd == "oauth":
        from pysendmail.admin import oauthcmd

        return oauthcmd.run(cfg, args)
    if cmd == "config":
        return cmd_config(cfg, args.action, args.json, args.verbose)
    if cmd == "test":
        return cmd_test(cfg, args.to, args.route, args.sender, args.json)
    if cmd == "doctor":
        return cmd_doctor(cfg, args.domain, args.nameserver, args.json)
    raise AssertionError(cmd)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    prog = "pysendmail"
    if argv and argv[0] in ("mailq", "newaliases") and not (len(argv) > 1 and argv[1] in ("-h", "--help")):
        prog = argv[0]
        parser = _Parser(prog=prog)
        parser.add_argument("-C", "--config")
        if prog == "mailq":
            parser.add_argument("--json", action="store_true")
        args = parser.parse_args(argv[1:])
        args.command = prog
    else:
        full = build_parser(prog)
        args = full.parse_args(argv)
        if not args.command:
            full.print_help()
            return errors.EX_USAGE
    try:
        return run(args)
    except errors.PysendmailError as exc:
        sys.stderr.write(f"{prog}: {exc}\n")
        return exc.exit_code
    except aliases.AliasError as exc:
        sys.stderr.write(f"{prog}: {exc}\n")
        return errors.EX_DATAERR
    except KeyboardInterrupt:
        return errors.EX_TEMPFAIL


def console_main() -> None:
    sys.exit(main())


def mailq_main() -> None:
    sys.exit(main(["mailq"] + sys.argv[1:]))


def newaliases_main() -> None:
    sys.exit(main(["newaliases"] + sys.argv[1:]))
