"""``pysendmail status``: one screen on the mode, the daemon, the queue and every route.

Contract:   ``collect(cfg, spool, pid, counts)`` returns a JSON-ready dict;
            ``render(data, now)`` the text a person reads (golden file:
            tests/data/status-paused.txt).  Route state comes from the
            route-state store (daemon/routing/state.py: spool/state/routes.json,
            written by the daemon and by flush).
            ``delivery(cfg, spool, daemon_pid, run_pid)`` says who
            delivers when no daemon runs, and when the daemon is required
            (a shared spool, or spool.deliver_without_daemon = false),
            how to start it; config check prints the same sentence.
            A relay with auth = "oauth2" also shows its token's state
            (daemon/oauth.py token_states: valid until, refresh failing
            since, login needed), never the token.
See also:   pysendmail(8) status; daemon/routing/route.py (Route.snapshot).
"""

from __future__ import annotations

import os
import stat
import time

from pysendmail.core import config, layout

TYPE_CHECKING = False  # mypy reads this name as True
if TYPE_CHECKING:
    from pysendmail.daemon.routes import Routing

START_DAEMON = ("start it with 'systemctl enable --now pysendmail.service' (the systemd unit), "
                "or run 'pysendmail daemon' under your supervisor (runit, s6, supervisord)")


def delivery(cfg: config.Config, spool: layout.Spool, daemon_pid: int | None,
             run_pid: int | None) -> tuple[bool, str] | None:
    """(daemon required, why) when no daemon runs; None when one does."""
    if daemon_pid:
        return None
    if run_pid:
        return False, f"a delivery run started by sendmail (pid {run_pid}) is delivering"
    try:
        shared = stat.S_IMODE(os.lstat(spool.incoming).st_mode) == layout.SHARED_INCOMING_MODE
    except OSError:
        shared = cfg.system_mode
    if not cfg.deliver_without_daemon:
        return True, ("spool.deliver_without_daemon = false, so mail waits in the queue until the daemon "
                      f"or 'sendmail -q' runs; {START_DAEMON}")
    if shared:
        return True, ("in this shared spool only root and the spool's owner start delivery runs, so mail "
                      f"from other users waits in the queue; {START_DAEMON}")
    return False, "not needed: sendmail starts a delivery run after each submission (spool.deliver_without_daemon)"


def _routes_from_config(cfg: config.Config) -> tuple[dict[str, dict[str, object]], Routing | None]:
    """What status shows of each relay, and the resolved relays (None when there are none to read)."""
    if not cfg.relay_configured:
        return {}, None
    from pysendmail.daemon import routes

    try:
        routing = routes.resolve(cfg)
    except Exception as exc:  # status must still show the queue with a broken relay table
        return {"?": {"relay": f"configuration problem: {exc}"}}, None
    out: dict[str, dict[str, object]] = {}
    for name, s in routing.relays.items():
        out[name] = {
            "relay": f"{s.values.get('host')}:{s.values.get('port') or ''}".rstrip(":"),
            "provider": s.provider,
            "from_policy": s.values.get("from_policy"),
        }
    return out, routing


def collect(cfg: config.Config, spool: layout.Spool, pid: int | None, counts: dict[str, int],
            run_pid: int | None = None) -> dict[str, object]:
    from pysendmail.daemon.routing.state import open_store

    routes, routing = _routes_from_config(cfg)
    for name, entry in open_store(spool).load().items():
        if name in routes:
            routes[name].update({k: v for k, v in entry.items() if k != "relay"})
    from pysendmail.daemon.oauth import token_states

    # auth = "oauth2": valid until, refresh failing, login needed (with the relays resolved once)
    for name, token in (token_states(cfg, routing.relays) if routing is not None else {}).items():
        if name in routes:
            routes[name]["oauth2"] = token
    note = delivery(cfg, spool, pid, run_pid)
    if cfg.relay_configured:
        mode = "relay"
    else:
        mode = f"local Maildir capture into {cfg.maildir_path} (no [relay] configured: run 'pysendmail setup')"
    return {
        "config": cfg.path or "built-in defaults",
        "mode": mode,
        "spool": spool.path,
        "daemon_pid": pid,
        "delivery": None if note is None else {"daemon_required": note[0], "text": note[1]},
        "counts": counts,
        "quarantine": _quarantine(cfg, spool),
        "routes": routes,
    }


def _quarantine(cfg: config.Config, spool: layout.Spool) -> dict[str, object]:
    """What pickup refused and keeps (entries, bytes, oldest) and the bounds it keeps them within."""
    from pysendmail.daemon import quarantine

    bounds = quarantine.Bounds.from_config(cfg)
    try:
        entries, size, oldest = quarantine.summary(spool.quarantine)
    except OSError:
        entries, size, oldest = 0, 0, None
    return {"entries": entries, "bytes": size, "oldest": oldest, "max_entries": bounds.max_entries,
            "max_bytes": bounds.max_bytes, "lifetime": bounds.lifetime}


def _size(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB"):
        if n < 1024 or unit == "MiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return ""  # not reached


def _quarantine_line(q: dict[str, object], spool: str) -> str:
    """One line: 'quarantine: 3 entries, 12.0 KiB, oldest DATE (kept 30 days, at most ...)'."""
    def num(key: str) -> float:
        value = q.get(key)
        return float(value) if isinstance(value, (int, float)) else 0.0

    limits = (f"kept {num('lifetime') / 86400:g} days, at most {num('max_entries'):.0f} entries "
              f"and {_size(num('max_bytes'))}")
    if not num("entries"):
        return f"quarantine: empty ({limits})"
    return (f"quarantine: {num('entries'):.0f} entries, {_size(num('bytes'))}, oldest {when(num('oldest'))} "
            f"({limits}): {spool}/quarantine")


def when(value: float) -> str:
    """A time as status and route list print it."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(value))


def _delivery_text(note: object) -> str:
    if not isinstance(note, dict):
        return ""
    return f"{', but required' if note.get('daemon_required') else ''}: {note.get('text')}"


def fleet_line(fleet: dict[str, object]) -> str:
    """'fleet: redis as HOST, account A: N sent in the last 24 h (every host)', or the fallback in force and why."""
    backend = str(fleet.get("backend") or "?")
    text = f"fleet:       {backend} as {fleet.get('host')}, account {fleet.get('account')}"
    if backend != "redis":
        text = (f"fleet:       FALLBACK {backend.removeprefix('fallback ')} as {fleet.get('host')} (Redis "
                f"unreachable: {fleet.get('error')}), account {fleet.get('account')}")
    used = fleet.get("used_day")
    if isinstance(used, int):
        text += f": {used} sent in the last 24 h by every host"
    by = fleet.get("blocked_by")
    if by:
        text += f"; {fleet.get('blocked')} recorded by {by}: {fleet.get('blocked_because')}"
    return text


def render(data: dict[str, object], now: float | None = None) -> str:
    now = time.time() if now is None else now
    pid = data["daemon_pid"]
    counts = data["counts"]
    assert isinstance(counts, dict)
    lines = [
        f"config:  {data['config']}",
        f"mode:    {data['mode']}",
        f"spool:   {data['spool']}",
        f"daemon:  {'running, pid %s' % pid if pid else 'not running'}" + _delivery_text(data.get("delivery")),
        "queue:   " + ", ".join(f"{v} {k}" for k, v in counts.items()),
    ]
    q = data.get("quarantine")
    if isinstance(q, dict):
        lines.append(_quarantine_line(q, str(data["spool"])))
    routes = data["routes"]
    assert isinstance(routes, dict)
    for name, r in routes.items():
        extra = ", ".join(str(x) for x in (r.get("provider"), r.get("from_policy") and f"from {r['from_policy']}") if x)
        lines.append(f"route {name}: {r.get('relay')}" + (f" ({extra})" if extra else ""))
        for key, label in (("last_success", "last sent:  "), ("last_failure", "last failed:")):
            item = r.get(key)
            if isinstance(item, (list, tuple)) and len(item) == 2:
                lines.append(f"  {label} {when(float(item[0]))} {item[1]}")
        until = r.get("paused_until")
        if isinstance(until, (int, float)) and until > now:
            lines.append(f"  PAUSED until {when(float(until))}: {r.get('paused_because')}")
        token = r.get("oauth2")
        if isinstance(token, dict):
            lines.append(f"  oauth2:      {token.get('text')}")
        fleet = r.get("fleet")
        if isinstance(fleet, dict):
            lines.append("  " + fleet_line(fleet))
            for key, label in (("last_success", "fleet sent:  "), ("last_failure", "fleet failed:")):
                item = fleet.get(key)  # the account's, on whichever host: [when, reply, host]
                if isinstance(item, list) and len(item) == 3 and isinstance(item[0], (int, float)):
                    lines.append(f"  {label} {when(float(item[0]))} on {item[2]}: {item[1]}")
    return "\n".join(lines) + "\n"
