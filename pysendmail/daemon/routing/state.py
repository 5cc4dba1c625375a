"""The route-state store: the one owner of spool/state/routes.json.

Contract:   ``RouteStore`` is what the daemon, a foreground flush,
            ``pysendmail status``, ``route list`` and ``route resume`` ask
            for saved route state; nothing else opens the file, parses its
            JSON or names its keys.  ``load()`` returns one dict per route
            name ({} when absent or unreadable: only well-formed entries);
            ``save(routes, now)`` replaces every route's entry (the end of
            a round); ``resume(name)`` lifts one route's pause, hold and
            down mark in the stored state (the command, when no daemon
            runs).  ``describe(entry, now)`` reads one entry for display.
            ``FileRouteStore`` keeps the last release's format,
            ``{"routes": {NAME: ENTRY}, "written": TIME}``, so pauses
            survive an upgrade; another backend (a fleet's shared store)
            implements the same three methods and is chosen in
            ``open_store(spool, cfg)``, which every caller uses: with a
            [fleet] table, daemon/fleet.py's FleetRouteStore (this file,
            and the account state shared through Redis behind it).
Crashes:    a save writes a temporary file, fsyncs it and renames it over
            routes.json (core/durable.py publish): a reader sees the old state or the
            new one, never half.  A failed save raises OSError and leaves
            the last good copy; the caller decides what a full disk means.
Security:   the file lives in state/, the daemon user's alone; the entries
            are read as untrusted data (each key's type is checked where
            it is used: route.py restore, describe).
See also:   route.py (snapshot, restore), admin/routecmd.py, admin/status.py.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Protocol

from pysendmail.core import config, durable, errors, layout

# What an entry says once 'pysendmail route resume' has lifted everything.
RESUMED: dict[str, object] = {
    "pause": False, "pause_reason": None, "pause_kind": None, "paused_until": None, "paused_because": None,
    "state": "ok", "hold_until": None, "hold_reason": None, "auth_failures": 0,
}


class RouteStore(Protocol):
    def load(self) -> dict[str, dict[str, object]]: ...

    def save(self, routes: Mapping[str, Mapping[str, object]], now: float) -> None: ...

    def resume(self, name: str) -> None: ...


class FileRouteStore:
    def __init__(self, path: str) -> None:
        self.path = path

    def _read(self) -> object:
        with open(self.path) as fh:
            return json.load(fh)

    def load(self) -> dict[str, dict[str, object]]:
        try:
            data = self._read()
        except (OSError, ValueError):
            return {}
        saved = data.get("routes") if isinstance(data, dict) else None
        if not isinstance(saved, dict):
            return {}
        return {str(k): v for k, v in saved.items() if isinstance(v, dict)}

    def save(self, routes: Mapping[str, Mapping[str, object]], now: float) -> None:
        self._write({"routes": {k: dict(v) for k, v in routes.items()}, "written": now})

    def _write(self, data: object) -> None:
        durable.publish(f"{self.path}.{os.getpid()}.tmp", self.path, json.dumps(data).encode())

    def resume(self, name: str) -> None:
        """Lift route ``name``'s pause and hold in the file; the caller holds the spool lock."""
        try:
            data = self._read()
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            raise errors.TempFailure(f"cannot read {self.path} ({exc}): stop the daemon and remove the file") from None
        saved = data.get("routes") if isinstance(data, dict) else None
        entry = saved.get(name) if isinstance(saved, dict) else None
        if not isinstance(entry, dict):
            return
        entry.update(RESUMED)
        try:
            self._write(data)
        except OSError as exc:
            raise errors.from_oserror(exc, f"write {self.path}") from None


def open_store(spool: layout.Spool, cfg: config.Config | None = None) -> RouteStore:
    """The route-state store of ``spool``: the one place that picks a backend.

    With a [fleet] table in ``cfg``, the file with the fleet's shared
    state behind it (daemon/fleet.py FleetRouteStore); else the file.
    """
    file = FileRouteStore(spool.route_state)
    if cfg is not None and cfg.fleet.configured:
        from pysendmail.daemon.fleet import FleetRouteStore

        return FleetRouteStore(file, cfg)
    return file


def describe(entry: Mapping[str, object], now: float) -> tuple[str, float | None, str | None]:
    """(ok|paused|held|down|budget, until, why) from one entry; a window in the past is over."""
    until = entry.get("paused_until")
    if not isinstance(until, (int, float)) or until <= now:
        return "ok", None, None
    word = entry.get("state")
    if not isinstance(word, str) or word == "ok":  # a file from before 'state' was written
        why = str(entry.get("paused_because") or "")
        word = "paused" if entry.get("pause") else "held" if "on hold" in why else "down"
    paused_reason = entry.get("pause_reason") if word == "paused" else None
    reason = paused_reason or entry.get("paused_because")
    return word, float(until), str(reason) if reason else None
