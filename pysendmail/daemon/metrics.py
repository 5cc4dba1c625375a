"""Metrics for the people who watch the fleet: Prometheus' text exposition format.

Contract:   ``Exporter(daemon)``; ``await start()`` inside the daemon's
            loop serves what [metrics] asks for, ``await stop()`` ends it:
            * ``textfile = "/var/lib/prometheus/node-exporter/pysendmail.prom"``:
              rewritten every ``textfile_interval`` seconds (default 10)
              for node_exporter's textfile collector: written to a hidden
              temporary name in the same directory (``.NAME.tmp``, which
              the collector skips: it reads ``*.prom`` only), then renamed
              over the target, so a scrape reads the old file or the new
              one, never half of one;
            * ``listen = "9469"`` (127.0.0.1 and ::1) or ``"HOST:PORT"``:
              ``GET /metrics`` (and HEAD) over HTTP/1.1 on an asyncio
              server; one request per connection (``Connection: close``);
              a request head over 8 KiB gets 431, another method 405,
              another path 404; a client that sends nothing for 5 s, or
              does not read the answer within 5 s, is dropped; at most 16
              connections at once (more are closed at once).  Bound to
              loopback unless ``allow_remote = true`` (core/config.py).
            ``render(families)`` is the text format (version 0.0.4):
            ``# HELP``, ``# TYPE``, one sample per line, label values
            escaped (backslash, double quote, line feed).
            The families (all prefixed ``pysendmail_``):
              queue_messages{state}            gauge: incoming, active (due now
                                               or in flight), deferred (due
                                               later), held (in queue/ but not
                                               scheduled), failed, quarantine
              queue_oldest_message_age_seconds gauge: from the oldest queue id
                                               (ids begin with the arrival time)
              delivery_outcomes_total{route,status,class}
                                               counter: one per recipient
                                               outcome logged (status sent,
                                               deferred, bounced, held; class
                                               2xx/4xx/5xx from the reply code,
                                               else the DSN), route "local"
                                               for pickup's own refusals
              route_state{route,state}         gauge: 1 for the route's state
                                               (ok, paused, held, down,
                                               budget), 0 for the others
              route_blocked_until_timestamp_seconds{route}
              route_budget_used{route,window}, route_budget_limit{route,window}
              dkim_key_bits{domain,selector,algorithm}
              dkim_key_weak{...}               1: RSA under 2048 bits
              dkim_key_file_current{...}       1: the file on disk is the key
                                               in use; 0: changed or gone
                                               since the last (re)load (send
                                               SIGHUP, or fix the file)
              oauth_token_state{route,state}    gauge: 1 for the token's state
                                               (ok, refresh-failing,
                                               login-needed, unknown, config:
                                               daemon/oauth.py token_states),
                                               0 for the others
              oauth_token_valid{route}         1: a refresh token is stored and
                                               refreshing works
              oauth_token_expiry_timestamp_seconds{route}
                                               the last access token's expiry
              fleet_*                          from daemon/fleet.py (``Fleet.collect``)
              daemon_start_time_seconds        gauge
            Counters start at 0 with the daemon (Prometheus' rate() takes
            resets in its stride); outcomes are counted from the log
            events themselves (core/log.py add_observer), so a metric and
            a log line can never disagree.
Security:   the HTTP side reads at most 8 KiB per connection, never a
            body, and answers only fixed texts and the metrics: no file
            name, header or query reaches a reply.  The metrics hold route
            names, relay host names and counts, never an address, a
            subject or a secret; hence loopback by default.
Crashes:    nothing to clean: the textfile's temporary is rewritten by
            the next start; a failing write (directory gone, permission)
            is logged once until a write works again, and never stops the
            daemon.
See also:   https://prometheus.io/docs/instrumenting/exposition_formats/;
            node_exporter's textfile collector; pysendmail.toml(5) [metrics].
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pysendmail.core import durable, errors, log, queue
from pysendmail.core.netaddr import parse_listen

if TYPE_CHECKING:
    from pysendmail.daemon.dkim import Key, Signer
    from pysendmail.daemon.main import Daemon

PREFIX = "pysendmail_"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
HEAD_LIMIT = 8192  # bytes of request head (request line and headers)
CLIENT_TIMEOUT = 5.0  # seconds to send the request, and to take the answer
MAX_CONNECTIONS = 16
CACHE_SECONDS = 1.0  # scrapes closer than this share one collection
ROUTE_STATES = ("ok", "paused", "held", "down", "budget")
OUTCOMES = ("sent", "deferred", "bounced", "held")


@dataclass
class Family:
    """One metric family: name (without the prefix), type, help, samples (labels, value)."""

    name: str
    kind: str  # gauge | counter
    help: str
    samples: list[tuple[dict[str, str], float]] = field(default_factory=list)

    def add(self, value: float, **labels: str) -> None:
        self.samples.append((labels, float(value)))


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if value != value:
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "+Inf" if value > 0 else "-Inf"
    return repr(int(value)) if value.is_integer() and abs(value) < 2**53 else repr(value)


def render(families: Iterable[Family]) -> str:
    """The text exposition format 0.0.4 of ``families``."""
    out: list[str] = []
    for f in families:
        name = PREFIX + f.name
        out.append(f"# HELP {name} {f.help.replace(chr(92), chr(92) * 2).replace(chr(10), ' ')}")
        out.append(f"# TYPE {name} {f.kind}")
        for labels, value in f.samples:
            text = ",".join(f'{k}="{_escape_label(v)}"' for k, v in labels.items())
            out.append(f"{name}{{{text}}} {_number(value)}" if text else f"{name} {_number(value)}")
    return "\n".join(out) + "\n"


# ------------------------------------------------------------ token states
TOKEN_STATES = ("ok", "refresh-failing", "login-needed", "unknown", "config")


# ------------------------------------------------------------ what is measured
def reply_class(record: log.Record) -> str:
    """2xx, 4xx or 5xx: the reply's code when it has one, else the DSN's class."""
    reply = record.get("reply")
    if isinstance(reply, str) and reply[:3].isdigit() and reply[0] in "245":
        return reply[0] + "xx"
    dsn = record.get("dsn")
    if isinstance(dsn, str) and dsn[:1] in ("2", "4", "5"):
        return dsn[0] + "xx"
    return "none"


class Outcomes:
    """Counts of recipient outcomes by (route, status, class), fed by core/log.py's observer."""

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str, str], int] = {}

    def observe(self, record: log.Record) -> None:
        status = record.get("status")
        if status not in OUTCOMES or "to" not in record:
            return
        relay = str(record.get("relay") or "?")
        # pickup's refusals log relay=local; the Maildir transport relay=maildir[PATH]: no path in a label.
        route = record.get("route") or ("maildir" if relay.startswith("maildir[") else relay)
        key = (str(route), str(status), reply_class(record))
        self.counts[key] = self.counts.get(key, 0) + 1

    def family(self) -> Family:
        f = Family("delivery_outcomes_total", "counter",
                   "Recipient outcomes logged (status=) since the daemon started, by route, status and reply class.")
        for (route, status, cls), n in sorted(self.counts.items()):
            f.add(n, route=route, status=status, **{"class": cls})
        return f


def _listdir_count(path: str) -> int:
    try:
        return sum(1 for n in os.listdir(path) if not n.startswith("."))
    except OSError:
        return 0


def _qid_time(qid: str) -> float | None:
    try:
        return int(qid[:13], 16) / 1e6
    except ValueError:
        return None


class DiskView:
    """What a collection reads from the spool (in a worker thread: a long queue/ takes a while to list)."""

    __slots__ = ("queued", "oldest", "incoming", "failed", "quarantine", "key_files", "tokens")

    def __init__(self, daemon: Daemon, key_paths: list[str]) -> None:
        spool = daemon.spool
        self.tokens: dict[str, dict[str, object]] = {}
        routes = daemon.manager.transport.routes  # the relays as the daemon resolved them at start
        if any(str(r.settings.values.get("auth") or "").lower() == "oauth2" for r in routes.values()):
            from pysendmail.daemon import oauth

            # The token files: small, read here off the loop.
            self.tokens = oauth.token_states(daemon.cfg, {name: r.settings for name, r in routes.items()})
        try:
            ids = queue.list_ids(spool.queue)
        except OSError:
            ids = []
        self.queued = len(ids)
        first = min(ids) if ids else None  # fixed-width upper-case hex: the least id is the oldest
        self.oldest = _qid_time(first) if first else None
        self.incoming = _listdir_count(spool.incoming)
        self.failed = _listdir_count(spool.failed)
        self.quarantine = _listdir_count(spool.quarantine)
        self.key_files: dict[str, tuple[int, int, int, int] | None] = {p: _stamp(p) for p in key_paths}


def _stamp(path: str) -> tuple[int, int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class Exporter:
    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        cfg = daemon.cfg
        self.textfile = cfg.metrics.textfile
        self.interval = float(cfg.metrics.textfile_interval)
        listen = cfg.metrics.listen
        self.listen = parse_listen(listen, "metrics.listen") if listen else None
        self.started = time.time()
        self.outcomes = Outcomes()
        self.servers: list[asyncio.AbstractServer] = []
        self.tasks: set[asyncio.Task[None]] = set()
        self.writer: asyncio.Task[None] | None = None
        self.connections = 0
        self.cached: tuple[float, str] | None = None
        self.write_failing = False
        self.keys_seen: dict[str, tuple[int, int, int, int] | None] = {}  # key file -> stamp when loaded
        self.signer: Signer | None = None
        self.bound: list[tuple[str, int]] = []  # (address, port) actually listening

    @property
    def enabled(self) -> bool:
        return bool(self.textfile or self.listen)

    async def start(self) -> None:
        if not self.enabled:
            return
        log.add_observer(self.outcomes.observe)
        if self.listen:
            hosts, port = self.listen
            for host in hosts:
                try:
                    server = await asyncio.start_server(self._serve, host, port, limit=HEAD_LIMIT,
                                                        reuse_address=True)
                except OSError as exc:
                    if host == "::1" and len(hosts) > 1:
                        continue  # a host without IPv6: 127.0.0.1 serves alone
                    raise errors.ConfigError(f"metrics.listen: cannot listen on {host} port {port}: "
                                             f"{exc.strerror or exc}") from None
                self.servers.append(server)
                self.bound += [(s.getsockname()[0], s.getsockname()[1]) for s in server.sockets]
            log.log("daemon: metrics on " + ", ".join(f"http://{'[%s]' % h if ':' in h else h}:{p}/metrics"
                                                      for h, p in self.bound))
        if self.textfile:
            self.writer = asyncio.create_task(self._write_loop())

    async def stop(self) -> None:
        log.remove_observer(self.outcomes.observe)
        for server in self.servers:
            server.close()
        for task in list(self.tasks) + ([self.writer] if self.writer else []):
            task.cancel()
        for server in self.servers:
            await server.wait_closed()
        if self.writer is not None:
            try:
                await self.writer
            except asyncio.CancelledError:
                pass
        self.servers = []

    # ---------------------------------------------------------- collection
    def _dkim_keys(self) -> list[Key]:
        signer = self.daemon.manager.transport.signer
        keys = list(signer.keys) if signer is not None else []
        if signer is not self.signer:  # a (re)load: what is on disk now is the key in use
            self.signer = signer
            self.keys_seen = {k.path: _stamp(k.path) for k in keys}
        return keys

    async def collect(self) -> str:
        now = time.time()
        if self.cached and now - self.cached[0] < CACHE_SECONDS:
            return self.cached[1]
        keys = self._dkim_keys()
        disk = await asyncio.to_thread(DiskView, self.daemon, [k.path for k in keys])
        text = render(self.families(disk, keys, time.time()))
        self.cached = (time.time(), text)
        return text

    def families(self, disk: DiskView, keys: list[Key], now: float) -> list[Family]:
        d = self.daemon
        scheduled = len(d.due) + len(d.inflight)
        due_now = sum(1 for due, _ in d.due if due <= now) + len(d.inflight)
        q = Family("queue_messages", "gauge", "Messages in the spool by state.")
        q.add(disk.incoming, state="incoming")
        q.add(due_now, state="active")
        q.add(scheduled - due_now, state="deferred")
        q.add(max(0, disk.queued - scheduled), state="held")
        q.add(disk.failed, state="failed")
        q.add(disk.quarantine, state="quarantine")
        oldest = Family("queue_oldest_message_age_seconds", "gauge",
                        "Age of the oldest message in queue/ (0 when the queue is empty).")
        oldest.add(max(0.0, now - disk.oldest) if disk.oldest else 0.0)
        out = [q, oldest, self.outcomes.family()]
        out += self._route_families(now)
        out += self._dkim_families(disk, keys)
        out += self._token_families(disk, now)
        transport = self.daemon.manager.transport
        fleet = transport.fleet
        if fleet is not None:
            try:
                out += list(fleet.collect())
            except Exception as exc:  # a bug there must not take the metrics down
                log.log(f"daemon: metrics collector failed: {exc!r}")
        start = Family("daemon_start_time_seconds", "gauge", "When the daemon started (Unix time).")
        start.add(self.started)
        out.append(start)
        return out

    def _route_families(self, now: float) -> list[Family]:
        transport = self.daemon.manager.transport
        routes = transport.route_state()
        states = Family("route_state", "gauge", "1 for the route's current state (ok, paused, held, down, budget).")
        blocked = Family("route_blocked_until_timestamp_seconds", "gauge",
                         "When the route takes mail again (Unix time; 0: it does now).")
        used = Family("route_budget_used", "gauge", "Units spent inside the route's sending windows.")
        limit = Family("route_budget_limit", "gauge", "The route's rate_per_minute and rate_per_day (0: none).")
        limits = transport.routes
        for name, entry in routes.items():
            if not isinstance(entry, dict):
                continue
            word = str(entry.get("state") or "ok")
            for s in ROUTE_STATES:
                states.add(1 if s == word else 0, route=name, state=s)
            until = entry.get("paused_until")
            blocked.add(float(until) if isinstance(until, (int, float)) and until > now else 0.0, route=name)
            times = entry.get("sent_times")
            if isinstance(times, dict):
                for window in ("minute", "day"):
                    spent = times.get(window)
                    used.add(len(spent) if isinstance(spent, list) else 0, route=name, window=window)
            route = limits.get(name)
            if route is not None:
                limit.add(route.rate.per_minute, route=name, window="minute")
                limit.add(route.rate.per_day, route=name, window="day")
        return [states, blocked, used, limit]

    def _dkim_families(self, disk: DiskView, keys: list[Key]) -> list[Family]:
        bits = Family("dkim_key_bits", "gauge", "Size of each DKIM key in use (Ed25519: 256).")
        weak = Family("dkim_key_weak", "gauge", "1 for an RSA key under 2048 bits (RFC 8301 asks for 2048).")
        current = Family("dkim_key_file_current", "gauge",
                         "1 while the key file on disk is the one loaded; 0 when it changed or went away "
                         "(reload with SIGHUP, or restore the file).")
        for key in keys:
            labels = {"domain": key.domain, "selector": key.selector, "algorithm": key.algorithm}
            size = key.bits
            bits.add(size, **labels)
            weak.add(1 if labels["algorithm"] == "rsa-sha256" and size < 2048 else 0, **labels)
            path = key.path
            seen = self.keys_seen.get(path)
            current.add(1 if seen is not None and disk.key_files.get(path) == seen else 0, **labels)
        return [bits, weak, current]

    def _token_families(self, disk: DiskView, now: float) -> list[Family]:
        states = Family("oauth_token_state", "gauge", "1 for the route's OAuth token state, 0 for the others.")
        valid = Family("oauth_token_valid", "gauge", "1 while a refresh token is stored and refreshing works.")
        expiry = Family("oauth_token_expiry_timestamp_seconds", "gauge",
                        "When the route's last access token expires (Unix time).")
        for route, state in sorted(disk.tokens.items()):
            word = str(state.get("state"))
            for s in TOKEN_STATES:
                states.add(1 if s == word else 0, route=route, state=s)
            valid.add(1 if word == "ok" else 0, route=route)
            until = state.get("valid_until")
            if isinstance(until, (int, float)):
                expiry.add(float(until), route=route)
        return [states, valid, expiry]

    # ---------------------------------------------------------- textfile
    async def _write_loop(self) -> None:
        assert self.textfile is not None
        target = str(self.textfile)
        while True:
            try:
                text = await self.collect()
                await asyncio.to_thread(write_textfile, target, text)
            except OSError as exc:
                if not self.write_failing:
                    self.write_failing = True
                    log.log(f"warning: cannot write metrics.textfile {target}: {exc.strerror or exc}; "
                            "trying again every metrics.textfile_interval")
            else:
                if self.write_failing:
                    self.write_failing = False
                    log.log(f"daemon: metrics.textfile {target} written again")
            await asyncio.sleep(self.interval)

    # ---------------------------------------------------------- HTTP
    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if self.connections >= MAX_CONNECTIONS:
            writer.close()
            return
        self.connections += 1
        if task is not None:
            self.tasks.add(task)
        try:
            await self._answer(reader, writer)
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError):
            pass  # the client went away or dawdled: nothing to say to it
        finally:
            self.connections -= 1
            if task is not None:
                self.tasks.discard(task)
            writer.close()

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), CLIENT_TIMEOUT)
        except asyncio.LimitOverrunError:
            await self._reply(writer, 431, "Request Header Fields Too Large", "request head over 8 KiB\n")
            return
        except asyncio.IncompleteReadError as exc:
            if len(exc.partial) >= HEAD_LIMIT:
                await self._reply(writer, 431, "Request Header Fields Too Large", "request head over 8 KiB\n")
            return
        words = head.split(b"\r\n", 1)[0].split(b" ")
        if len(words) != 3 or not words[2].startswith(b"HTTP/1."):
            await self._reply(writer, 400, "Bad Request", "not an HTTP/1.x request\n")
            return
        method, target = words[0], words[1].split(b"?", 1)[0]
        if method not in (b"GET", b"HEAD"):
            await self._reply(writer, 405, "Method Not Allowed", "only GET /metrics\n", extra="Allow: GET, HEAD\r\n")
            return
        if target != b"/metrics":
            await self._reply(writer, 404, "Not Found", "the metrics are at /metrics\n")
            return
        body = await self.collect()
        await self._reply(writer, 200, "OK", body, content_type=CONTENT_TYPE, head_only=method == b"HEAD")

    async def _reply(self, writer: asyncio.StreamWriter, code: int, reason: str, body: str,
                     content_type: str = "text/plain; charset=utf-8", extra: str = "",
                     head_only: bool = False) -> None:
        data = body.encode()
        head = (f"HTTP/1.1 {code} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {len(data)}\r\n"
                f"Connection: close\r\n{extra}\r\n").encode()
        writer.write(head if head_only else head + data)
        await asyncio.wait_for(writer.drain(), CLIENT_TIMEOUT)


def write_textfile(target: str, text: str) -> None:
    """Replace ``target`` with ``text`` atomically: a hidden temporary in the same directory, then rename.

    Mode 0644: node_exporter runs as another user.  A failed write leaves
    no temporary behind (core/durable.py).
    """
    directory, name = os.path.split(target)
    durable.publish(os.path.join(directory, f".{name}.tmp"), target, text.encode(), mode=0o644)
