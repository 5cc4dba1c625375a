"""The ``pysendmail`` command, and mailq/newaliases/-bv/-q behind sendmail.

Contract:   ``main(argv)`` runs one subcommand and returns a sysexits.h
            code; every PysendmailError becomes one sentence on stderr.
            Subcommands: daemon, flush, status, mailq, newaliases, queue
            (list, show, delete, hold, release, retry), spool init, config
            check|show, setup, test, doctor, dkim keygen|check
            (admin/dkimcmd.py), route list|resume (admin/routecmd.py).
Security:   run as root, commands that touch the queue first drop to the
            spool's owner, so every file they create belongs to the daemon
            user; other users get NoPermission for the queue.
See also:   pysendmail(8), mailq(1), newaliases(1).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pwd
import sys
import time
from collections.abc import Iterable

from pysendmail import __version__
from pysendmail.core import aliases, config, errors, layout, queue, spoolfile
from pysendmail.core.qid import is_qid


def _load(path: str | None) -> config.Config:
    cfg = config.load(path)
    config.write_cache(cfg)  # admin commands keep the submitter's cache fresh
    return cfg


def spool_owner(cfg: config.Config) -> tuple[int, int, str]:
    """(uid, gid, name) of the daemon's user for a spool created by root."""
    name = cfg.get("spool", "user")
    if name is None:
        try:
            st = os.stat(cfg.spool_path)
            entry = pwd.getpwuid(st.st_uid)
        except (OSError, KeyError):
            entry = pwd.getpwuid(os.geteuid())
            # The system spool belongs to the package's user.  Any other
            # spool without spool.user is its creator's (user mode): a
            # spool under root's private /tmp handed to "pysendmail" would
            # be one its owner cannot even reach.
            if cfg.system_mode or os.path.abspath(cfg.spool_path) == config.SYSTEM_SPOOL:
                try:
                    entry = pwd.getpwnam("pysendmail")
                except KeyError:
                    pass
    else:
        try:
            entry = pwd.getpwnam(str(name))
        except KeyError:
            raise errors.ConfigError(f"spool.user {name!r} in {cfg.path} is not a user on this system") from None
    return entry.pw_uid, entry.pw_gid, entry.pw_name


def drop_privileges(cfg: config.Config) -> None:
    """As root, become the spool's owner before touching the queue."""
    if os.geteuid() != 0:
        return
    try:
        st = os.stat(cfg.spool_path)
    except OSError:
        return
    if st.st_uid == 0:
        return
    entry = pwd.getpwuid(st.st_uid)
    os.initgroups(entry.pw_name, entry.pw_gid)
    os.setgid(entry.pw_gid)
    os.setuid(entry.pw_uid)


def _ready_spool(cfg: config.Config) -> layout.Spool:
    spool = layout.Spool(cfg.spool_path)
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
    return 0


def cmd_mailq(cfg: config.Config, as_json: bool) -> int:
    from pysendmail.admin import mailq

    spool = layout.Spool(cfg.spool_path)
    if not os.path.isdir(spool.path):
        listed: Iterable[mailq.QueueEntry] = []
    else:
        drop_privileges(cfg)
        listed = mailq.entries(spool)
    if as_json:
        sys.stdout.write(mailq.render_json(list(listed)))
    else:
        mailq.write_text(listed, sys.stdout)  # streamed: one entry in memory at a time
    return 0


def cmd_newaliases(cfg: config.Config) -> int:
    from pysendmail.daemon.qmgr import make_context

    path = str(cfg.get("host", "aliases_file"))
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
    """Have the running daemon run the whole queue; wait until it has. False if it died."""
    from pysendmail.daemon.main import lock_holder

    marker = os.path.join(spool.state, "flushed")
    start = time.time()
    layout.poke(spool, b"F")
    if sys.stderr.isatty():
        sys.stderr.write(f"flush: asked the daemon (pid {pid}) to run the queue now; waiting\n")
    while True:
        try:
            with open(marker) as fh:
                if float(fh.read().strip() or 0) >= start:
                    return True
        except (OSError, ValueError):
            pass
        if lock_holder(spool) != pid:
            return False
        time.sleep(0.05)


def cmd_flush(cfg: config.Config) -> int:
    from pysendmail.daemon.main import SpoolLock, lock_holder
    from pysendmail.daemon.qmgr import QueueManager

    spool = _ready_spool(cfg)
    lock = SpoolLock(spool)
    if not lock.acquire("flush"):
        pid = lock_holder(spool, "daemon")
        # The daemon owns the queue: ask it instead of racing it (two
        # runners would send the same message twice).
        if pid and _ask_daemon(spool, pid):
            return 0
        lock.acquire("flush", wait=True)  # another flush: wait for it, then run
    try:
        manager = QueueManager(cfg)
        counts = asyncio.run(manager.flush())
    finally:
        lock.release()
    if sys.stderr.isatty():
        sys.stderr.write(
            f"flush: {counts.messages} messages tried: {counts.sent} recipients sent, "
            f"{counts.deferred} deferred, {counts.failed} failed\n"
        )
    return 0


def cmd_daemon(cfg: config.Config, interval: int | None) -> int:
    from pysendmail.daemon import main as daemon_main

    _ready_spool(cfg)
    return daemon_main.run(cfg, interval)


def _counts(spool: layout.Spool) -> dict[str, int]:
    counts = {"incoming": 0, "active": 0, "deferred": 0, "held": 0, "failed": 0, "quarantine": 0}
    counts["incoming"] = len(queue.list_ids(spool.incoming))
    for qid in queue.list_ids(spool.queue):
        try:
            state = queue.QueuedMessage.load(os.path.join(spool.queue, qid)).state
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
    from pysendmail.daemon.main import lock_holder

    spool = layout.Spool(cfg.spool_path)
    if os.path.isdir(spool.path):
        drop_privileges(cfg)
    pid = lock_holder(spool)
    try:
        counts = _counts(spool)
    except PermissionError:
        raise errors.NoPermission(f"permission denied reading {spool.path}: run this as root or the spool's owner") from None
    data = status.collect(cfg, spool, pid, counts)
    if as_json:
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
    else:
        sys.stdout.write(status.render(data))
    return 0


def cmd_queue(cfg: config.Config, action: str, ids: list[str], all_: bool) -> int:
    spool = _ready_spool(cfg)
    if action == "list":
        return cmd_mailq(cfg, False)
    if all_:
        ids = queue.list_ids(spool.queue)
    if not ids:
        raise errors.UsageError(f"queue {action} needs queue ids (or --all)")
    for qid in ids:
        if not is_qid(qid):
            raise errors.UsageError(f"{qid!r} is not a queue id; mailq lists them")
        path = os.path.join(spool.queue, qid)
        if not os.path.exists(path):
            raise errors.DataError(f"queue id {qid} is not in the queue")
        now = f"{time.time():.3f}"
        if action == "show":
            msg = queue.QueuedMessage.load(path)
            env = msg.envelope
            sys.stdout.write(f"queue id: {qid}\nstate: {msg.state}\nsender: <{env.sender}>\n")
            for i, rcpt in enumerate(env.recipients):
                status = "sent" if i in msg.done else "failed" if i in msg.failed else "pending"
                sys.stdout.write(f"recipient: <{rcpt}> {status}\n")
            sys.stdout.write("\n")
            sys.stdout.buffer.write(msg.message.replace(b"\r\n", b"\n"))
        elif action == "delete":
            queue.remove(path)
            sys.stdout.write(f"{qid}: deleted\n")
        elif action == "hold":
            queue.append(path, spoolfile.encode_record("hold", now, "held by the administrator"))
            sys.stdout.write(f"{qid}: held\n")
        elif action in ("release", "retry"):
            queue.append(path, spoolfile.encode_record("release", now))
            sys.stdout.write(f"{qid}: {'released' if action == 'release' else 'due now'}\n")
    if action in ("hold", "release", "retry"):
        # A running daemon keeps due times in memory: ask it to read them again.
        layout.poke(spool, b"I")
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error exits 64 (EX_USAGE) instead of 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
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
    sub.add_parser("flush", help="try every queued message now, ignoring backoff, then exit")
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
    from pysendmail.admin import dkimcmd, routecmd

    dkimcmd.add_parser(sub)
    routecmd.add_parser(sub)
    return p


def cmd_setup(args: argparse.Namespace) -> int:
    from pysendmail.admin import setup

    opts = setup.Options(
        provider=args.provider, user=args.user, password_stdin=args.password_stdin, host=args.host, port=args.port,
        tls=args.tls, region=args.region, ca_file=args.ca_file, from_address=args.from_address, system=args.system,
        dkim=args.dkim, selector=args.selector, spool=args.spool, force=args.force, test_to=args.test_to,
        daemon_user=args.daemon_user,
    )
    summary = setup.run(opts, args.config or os.environ.get("PYSENDMAIL_CONFIG") or None, sys.stdout)
    sys.stdout.write(json.dumps(summary, indent=2) + "\n" if args.json else setup.render(summary))
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
        return cmd_daemon(cfg, args.interval)
    if cmd == "flush":
        return cmd_flush(cfg)
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
