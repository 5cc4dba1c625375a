"""``pysendmail route list`` and ``pysendmail route resume NAME``: see and lift a route's pause.

Contract:   ``list`` prints every configured route with its relay and
            provider, whether it is ok, paused (a provider's quota or
            block window), held (refused login, backoff), down (connection
            failures) or over its sending budget, until when and why;
            ``--json`` gives the same as a list of objects.  ``resume
            NAME`` lifts route NAME's pause, hold and down mark; an unknown
            NAME is a usage error (64).  Resuming a Yandex spam block
            before it ends prints a warning: Yandex extends the block when
            the account sends during it.
Design:     the state lives in the daemon's memory and is mirrored to
            spool/state/routes.json after every round, so editing that file
            under a running daemon would be undone by its next save (and
            would race it).  So there is one writer at a time, chosen by
            the spool lock:
            * no daemon runs (we get the lock): we rewrite routes.json
              ourselves, under the lock, and the next run starts unpaused;
            * the daemon runs: we leave a request file,
              state/resume.<name in hex> (core/requests.py), and
              poke the FIFO with 'R', as flush pokes it with 'F'.  The
              daemon lifts the pause in memory, saves routes.json, makes
              its queue due now, and only then removes the request file:
              its removal is the acknowledgement we wait for.  A file,
              not a longer FIFO message: a poke can be lost (full FIFO)
              and the file is not; the daemon also reads leftover
              requests at start.  If the daemon dies meanwhile, we take the
              lock and do it ourselves.
            * a foreground flush holds the lock: we wait for it to finish
              (it saves its own state last), then rewrite the file.
Security:   run as root, the command first becomes the spool's owner
            (privileges.drop_privileges): state/ is the daemon user's alone, and
            any other user gets NoPermission (77): lifting a hold means one
            more login with refused credentials, which only root and the
            daemon's user may ask for.  The daemon obeys a request file only
            when root or it owns it (core/requests.py pending).
            The file is read and rewritten only through the route-state
            store (daemon/routing/state.py), never parsed here.
See also:   pysendmail(8) route; daemon/main.py (the FIFO); daemon/routing/
            (Route.resume, the store); providers.py (which replies pause).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

from pysendmail.admin.status import fleet_line, when
from pysendmail.core import config, errors, layout
from pysendmail.daemon.routing.state import describe, open_store

ACK_TIMEOUT = 30.0  # seconds the running daemon has to carry out a resume request
YANDEX_SPAM_WARNING = (
    "warning: route {name} is in a Yandex spam block until {until}; Yandex extends the block by another "
    "24 hours each time the mailbox sends during it, so resume early only if Yandex support has lifted it"
)


def add_parser(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser("route", help="list the routes and their pauses (list), or lift a pause or hold (resume)")
    rsub = p.add_subparsers(dest="route_action", metavar="action", required=True, parser_class=type(p))
    ls = rsub.add_parser("list", help="every route: relay, ok/paused/held/down, until when and why")
    ls.add_argument("--json", action="store_true")
    r = rsub.add_parser("resume", help="lift route NAME's pause or hold now (also in the running daemon)")
    r.add_argument("name", metavar="NAME", help="the route ('default' for the plain [relay] table)")


def run(cfg: config.Config, args: argparse.Namespace) -> int:
    if args.route_action == "list":
        return cmd_list(cfg, args.json)
    return cmd_resume(cfg, args.name)


def collect(cfg: config.Config, spool: layout.Spool, now: float | None = None) -> list[dict[str, object]]:
    from pysendmail.daemon import routes

    now = time.time() if now is None else now
    from pysendmail.daemon.oauth import token_states

    saved = open_store(spool).load()
    out: list[dict[str, object]] = []
    relays = routes.resolve(cfg).relays
    tokens = token_states(cfg, relays)
    for name, s in relays.items():
        entry = saved.get(name, {})
        state, until, why = describe(entry, now)
        token = tokens.get(name)
        out.append({
            "name": name,
            "relay": f"{s.values.get('host')}:{s.values.get('port') or ''}".rstrip(":"),
            "provider": s.provider,
            "state": state,
            "until": until,
            "kind": entry.get("pause_kind") if state == "paused" else None,
            "why": why,
            # auth = "oauth2": the token's state and its one line (oauth.describe); None otherwise
            "oauth2": token.get("state") if token else None,
            "oauth2_text": token.get("text") if token else None,
            # [fleet]: the account's shared state (daemon/fleet.py view): backend, who recorded a block and why.
            "fleet": entry.get("fleet") if isinstance(entry.get("fleet"), dict) else None,
        })
    return out


def _spool(cfg: config.Config) -> layout.Spool:
    from pysendmail.admin.privileges import drop_privileges

    spool = layout.Spool(cfg.spool_path)
    if os.path.isdir(spool.path):
        drop_privileges(cfg)
    return spool


def _need_relay(cfg: config.Config) -> None:
    if not cfg.relay_configured:
        raise errors.ConfigError(f"no relay is configured in {cfg.path or 'the configuration'}, so there are no "
                                 "routes (mail goes to the local Maildir): run 'pysendmail setup'")


def cmd_list(cfg: config.Config, as_json: bool) -> int:
    _need_relay(cfg)
    rows = collect(cfg, _spool(cfg))
    if as_json:
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
        return 0
    for r in rows:
        provider = f" ({r['provider']})" if r["provider"] else ""
        line = f"route {r['name']}: {r['relay']}{provider}: {r['state']}"
        if isinstance(r["until"], float):
            line += f" until {when(r['until'])}"
            if r["kind"]:
                line += f" ({r['kind']})"
        if r["why"]:
            line += f": {r['why']}"
        if r.get("oauth2_text"):
            line += f"\n  oauth2: {r['oauth2_text']}"
        sys.stdout.write(line + "\n")
        if isinstance(r["fleet"], dict):
            sys.stdout.write("  " + fleet_line(r["fleet"]) + "\n")
    return 0


def _ask_daemon(spool: layout.Spool, pid: int, name: str) -> bool:
    """Leave a request for the running daemon and wait until it has carried it out; False if it died first."""
    from pysendmail.core.requests import await_request, resume_request_path

    request = resume_request_path(spool, name)
    try:
        with open(request, "w") as fh:
            fh.write(f"{time.time():.3f}\n")
    except OSError as exc:
        raise errors.from_oserror(exc, f"write the request {request}") from None
    try:
        return await_request(spool, request, pid, b"R", ACK_TIMEOUT)
    except TimeoutError:
        # An older daemon that does not know 'R', or one stuck in a long
        # round.  The request stays: the daemon reads it at its next start.
        raise errors.TempFailure(
            f"the daemon (pid {pid}) did not carry out the resume of route {name} within {ACK_TIMEOUT:.0f} s; "
            f"the request stays in {request} and is carried out when the daemon restarts "
            "(systemctl restart pysendmail)"
        ) from None


def cmd_resume(cfg: config.Config, name: str) -> int:
    from pysendmail.core.lock import SpoolLock, lock_holder
    from pysendmail.core.requests import resume_request_path

    _need_relay(cfg)
    spool = _spool(cfg)
    rows = {str(r["name"]): r for r in collect(cfg, spool)}
    if name not in rows:
        raise errors.UsageError(f"no route named {name!r}; 'pysendmail route list' lists them ({', '.join(rows)})")
    row = rows[name]
    if row["state"] == "paused" and row["kind"] == "spam-block" and row["provider"] == "yandex":
        assert isinstance(row["until"], float)
        sys.stderr.write("pysendmail: " + YANDEX_SPAM_WARNING.format(name=name, until=when(row["until"])) + "\n")
    was = f"was {row['state']}" + (f" until {when(row['until'])}" if isinstance(row["until"], float) else "")
    if not os.path.isdir(spool.state):
        sys.stdout.write(f"route {name}: nothing to resume (no spool state yet)\n")
        return 0
    if not os.access(spool.state, os.W_OK | os.X_OK):
        # Lifting a hold means logging in again with a password the
        # provider refused: only root and the daemon's user may ask for it.
        raise errors.NoPermission(f"permission denied: only root or the owner of {spool.path} may resume a route")
    lock = SpoolLock(spool)
    if not lock.acquire("route"):
        pid = lock_holder(spool, "daemon")
        if pid and _ask_daemon(spool, pid, name):
            sys.stdout.write(f"route {name}: resumed in the running daemon (pid {pid}; {was}); "
                             "the mail waiting for it goes now\n")
            return 0
        lock.acquire("route", wait=True)  # a flush (or a daemon that just died): our turn after it
    try:
        try:
            os.unlink(resume_request_path(spool, name))  # a request the dead daemon left undone
        except FileNotFoundError:
            pass
        store = open_store(spool, cfg)  # with [fleet], the account's pause is lifted for every host too
        store.resume(name)
    finally:
        lock.release()
    fleet = getattr(store, "said", "")  # [fleet]: whether Redis took it (daemon/fleet.py FleetRouteStore)
    sys.stdout.write(f"route {name}: resumed ({was}){fleet}; the daemon is not running: "
                     "'pysendmail flush' sends the mail waiting for it now\n")
    return 0
