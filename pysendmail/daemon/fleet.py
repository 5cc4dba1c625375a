"""Route state shared by a fleet of hosts through Redis: one budget and one pause per account.

Contract:   ``Fleet.from_config(cfg)`` is None without a [fleet] table
            (redis-py is then never imported); else a Fleet for this host
            (``host.name``, else the FQDN, names it to the others).
            ``await start()`` connects (a failure is not an error: the
            fallback applies and the connection is tried again later),
            ``await close()`` lets go.  An account is a provider host and
            a user name (``Account``): every host relaying through the same
            account shares one budget and one pause, whatever its route is
            called locally.
            ``await reserve(account, rate, recipients)`` is asked right
            before each transaction, in ONE round trip (a server-side Lua
            script, so it is atomic however many hosts race): a pause or
            hold that any host recorded and that has not ended -> Grant
            with ``ok`` False, until when, why and which host; else the
            per-minute window (transactions) and the per-day window
            (``rate.day_unit``: messages or recipients), sliding, as
            routing.ratelimit.RateLimit counts them -> not ok with the time room comes
            back; else the units are spent in the shared windows AND in
            ``rate`` (this host's own record of its sends) -> ok.
            ``await record_block(account, kind, seconds, reason, verdict)``
            shares a pause (a provider's quota or spam block) or a hold
            (refused login): the later deadline wins, the deadline is
            computed on the Redis server's clock (hosts' clocks may
            differ), and the key expires with it.  ``await clear(account)``
            lifts both ('route resume' on any host lifts them for all).
            ``note_outcome`` queues the last success/failure (the reply
            text, never an address); ``await sync()`` (every
            SYNC_INTERVAL, 5 s, from start()) writes them and reads back
            the fleet's view of every account in one pipelined round trip;
            ``view(account)`` is that view for routes.json (status, route
            list): backend state, the block with its host and reason, the
            fleet's last outcomes, the shared windows' counts.
            The daemon meets all this through two seams: FleetRouteStore,
            the route-state store routing/state.py open_store picks for a
            [fleet] table, and RouteLink, the budget check and the pause
            sharing the Router hooks into each route (both below).
Failure:    a call slower than ``timeout_ms`` or failing counts as "Redis
            unreachable": logged once per episode, and until a reconnection
            works (tried after 1 s, doubling to 30 s, never while a
            transaction waits) reserve answers from the configured fallback
            without touching the network:
            * ``share``: this host alone may spend rate / fleet_size_hint
              (at least 1 when the rate is set), counted in its own
              windows, which hold every send it made today;
            * ``pause``: nothing is sent until Redis answers again.
            A pause learnt from Redis before it went away is still obeyed
            until its deadline.  When Redis answers again this host pushes
            its own sends (ZADD NX: members are named by host and send
            time, so pushing twice counts once) and its own blocks, so the
            shared state converges to the union of what every host did,
            also after a Redis restart that lost everything.
            ``mode()`` says which applies (``redis``, ``fallback share``,
            ``fallback pause``); status shows it.  No message ever waits on
            Redis in the submission path: sendmail never imports this.
Security:   the password comes from ``password_file`` (core/trust.py's
            rule for secrets), never from the URL (the configuration is
            everyone's to read); TLS (``rediss://`` or ``tls = true``)
            verifies the server's certificate and name against the system's
            CAs or ``ca_file``; there is no plaintext fallback.  What is
            stored: account host and user name, host names, times, counts
            and the relay's reply texts of pauses (no address, no message).
            Anything read back from Redis is typed and bounded before use:
            a hostile or broken server can make this host wait (a pause
            at most 7 days long) but not crash it.
Crashes:    nothing of this host's lives only in Redis: its sends are in
            routes.json (routing.ratelimit.RateLimit.snapshot) and are pushed again.
            A reservation whose reply was lost (timeout) may have been
            spent on the server: the fleet then counts one send too many,
            never one too few.
See also:   pysendmail.toml(5) [fleet]; routing.ratelimit.RateLimit (the same windows,
            per host); transport/router.py; bench/fleet (round trips and
            added latency per transaction).
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from pysendmail.core import config, errors, log
from pysendmail.core.netaddr import RedisEndpoint, parse_redis_url

if TYPE_CHECKING:
    from pysendmail.daemon.routing.ratelimit import RateLimit
    from pysendmail.daemon.routing.state import RouteStore

RETRY_FIRST, RETRY_MAX = 1.0, 30.0  # seconds before trying an unreachable Redis again
SYNC_INTERVAL = 5.0  # seconds between views read back (and reconnection tries) when nothing else asks
MAX_BLOCK = 7 * 86400.0  # no pause read from Redis lasts longer than this
MAX_TEXT = 512  # characters kept of a reason or an outcome read from Redis
DAY, MINUTE = 86400.0, 60.0

# KEYS: minute zset, day zset, pause hash, hold hash.
# ARGV: per_minute, per_day, day units, member stem.
# Returns {"ok", now} | {"blocked", kind, until, reason, host, verdict, recorded, now}
#       | {"budget", window, until, used, now}; times are the server's.
RESERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
for i, key in ipairs({KEYS[3], KEYS[4]}) do
  local b = redis.call('HMGET', key, 'until', 'reason', 'host', 'verdict', 'recorded')
  if b[1] and tonumber(b[1]) and tonumber(b[1]) > now then
    return {'blocked', (i == 1) and 'pause' or 'hold', b[1], b[2] or '', b[3] or '', b[4] or '', b[5] or '',
            tostring(now)}
  end
end
local per_minute, per_day, units = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local windows = {{KEYS[1], per_minute, 60, 1, 'minute'}, {KEYS[2], per_day, 86400, units, 'day'}}
for _, w in ipairs(windows) do
  local key, limit, span, need = w[1], w[2], w[3], w[4]
  if limit > 0 then
    redis.call('ZREMRANGEBYSCORE', key, '-inf', now - span)
    local count = redis.call('ZCARD', key)
    if count > 0 and count + need > limit then
      local leave = math.min(count, count + need - limit)
      local entry = redis.call('ZRANGE', key, leave - 1, leave - 1, 'WITHSCORES')
      return {'budget', w[5], tostring(tonumber(entry[2]) + span), tostring(count), tostring(now)}
    end
  end
end
if per_minute > 0 then
  redis.call('ZADD', KEYS[1], now, ARGV[4] .. '|m')
  redis.call('EXPIRE', KEYS[1], 120)
end
if per_day > 0 then
  local i = 0
  while i < units do
    local args = {}
    local stop = math.min(units, i + 200)  -- members per ZADD: Lua's stack is finite
    while i < stop do
      table.insert(args, now)
      table.insert(args, ARGV[4] .. '|' .. i)
      i = i + 1
    end
    redis.call('ZADD', KEYS[2], unpack(args))
  end
  redis.call('EXPIRE', KEYS[2], 172800)
end
return {'ok', tostring(now)}
"""

# KEYS: the block hash.  ARGV: seconds, reason, host, verdict.
# The later deadline wins; returns {until, host, reason, now}.
RECORD_BLOCK = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local want = now + tonumber(ARGV[1])
local have = tonumber(redis.call('HGET', KEYS[1], 'until') or '0') or 0
if want > have then
  redis.call('HSET', KEYS[1], 'until', tostring(want), 'reason', ARGV[2], 'host', ARGV[3], 'verdict', ARGV[4],
             'recorded', tostring(now))
  redis.call('EXPIREAT', KEYS[1], math.ceil(want) + 60)
  have = want
end
local b = redis.call('HMGET', KEYS[1], 'host', 'reason')
return {tostring(have), b[1] or '', b[2] or '', tostring(now)}
"""


@dataclass(frozen=True)
class Account:
    """What a provider counts: its SMTP host and the user name that logs in."""

    host: str
    username: str

    @property
    def id(self) -> str:
        return f"{self.host.lower()}/{self.username.lower()}"


@dataclass
class Block:
    """A pause or hold as the fleet knows it; ``until`` in this host's clock."""

    kind: str  # pause | hold
    until: float
    reason: str
    host: str
    verdict: str = ""


@dataclass
class Grant:
    ok: bool
    until: float = 0.0  # not ok: when to ask again (this host's clock)
    why: str = ""
    block: Block | None = None
    mode: str = "redis"


@dataclass
class Settings:
    endpoint: RedisEndpoint
    password_file: str | None
    tls: bool
    ca_file: str | None
    prefix: str
    fallback: str  # share | pause
    size_hint: int
    timeout: float  # seconds

    @classmethod
    def from_config(cls, cfg: config.Config) -> Settings | None:
        f = cfg.fleet
        if not f.configured or f.redis is None:
            return None
        endpoint = parse_redis_url(f.redis, f"fleet.redis in {cfg.path or 'the configuration'}")
        return cls(endpoint, f.password_file, f.tls or endpoint.tls, f.ca_file, f.key_prefix, f.fallback,
                   f.fleet_size_hint or 1, f.timeout_ms / 1000.0)


def _text(value: object) -> str:
    """A string from Redis, bounded and decoded: the server is not trusted to be sane."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return str(value)[:MAX_TEXT] if value is not None else ""


def _float(value: object) -> float:
    try:
        number = float(_text(value))
    except ValueError:
        return 0.0
    return number if math.isfinite(number) else 0.0


@dataclass
class AccountView:
    """What this host knows of one account from the fleet (for status and route list)."""

    block: Block | None = None  # the longest of ``blocks``
    blocks: dict[str, Block] = field(default_factory=dict)  # kind -> the fleet's pause and hold, as last read
    own_blocks: dict[str, tuple[float, str, str]] = field(default_factory=dict)  # kind -> (until, reason, verdict)
    last_success: tuple[float, str, str] | None = None  # (when, text, host), fleet-wide
    last_failure: tuple[float, str, str] | None = None
    used_minute: int | None = None
    used_day: int | None = None


class Fleet:
    def __init__(self, settings: Settings, host: str) -> None:
        self.settings = settings
        self.host = host
        self.client: Any = None
        self.up = False
        self.error = ""
        self.retry_at = 0.0
        self.retry_delay = RETRY_FIRST
        self.offset = 0.0  # server clock minus ours, from the last reply
        self.accounts: dict[str, tuple[Account, list[RateLimit]]] = {}  # each local route's windows
        self.last_now = 0.0  # every send gets its own time: it names the send in Redis
        self.views: dict[str, AccountView] = {}
        self.outcomes: dict[str, dict[str, str]] = {}  # account id -> hash fields not yet written
        self.round_trips = 0  # for bench/fleet
        self._sha: dict[str, str] = {}
        self.connected_once = False
        self.started = False
        self.quiet = False  # no log lines ('config check' says it in its own words)
        self.links: list[RouteLink] = []
        # Set by the daemon: called after a sync that changed the view (True: a block was lifted elsewhere).
        self.on_sync: Callable[[bool], None] | None = None
        self.seen = ""
        self.run_id = ""  # the server's, from INFO: a new one means a restart
        self.background: set[asyncio.Task[Any]] = set()
        self.heartbeat: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()  # one reconnection at a time

    @classmethod
    def from_config(cls, cfg: config.Config) -> Fleet | None:
        settings = Settings.from_config(cfg)
        return None if settings is None else cls(settings, cfg.hostname())

    def _local_until(self, server_until: object, now: float) -> float:
        """A deadline on Redis's clock as this host's time, at most MAX_BLOCK ahead (Redis is not trusted)."""
        return min(_float(server_until) - self.offset, now + MAX_BLOCK)

    # ------------------------------------------------------------ keys
    def key(self, account: Account, what: str) -> str:
        # {...}: a Redis Cluster hash tag, so one account's keys share a slot (a script needs that).
        return f"{self.settings.prefix}{{{account.id}}}:{what}"

    def stem(self, when: float) -> str:
        """The name of one send in the shared windows: this host and the send's own time."""
        return f"{self.host}|{when!r}"

    # ------------------------------------------------------------ connection
    def _make_client(self) -> Any:
        import redis.asyncio as aioredis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        from pysendmail.daemon import secrets

        s = self.settings
        password = secrets.read_secret_file(s.password_file, "fleet.password_file") if s.password_file else None
        kwargs: dict[str, Any] = dict(
            db=s.endpoint.db, username=s.endpoint.username, password=password,
            socket_timeout=s.timeout, socket_connect_timeout=s.timeout,
            retry=Retry(NoBackoff(), 0), health_check_interval=0,
        )
        if s.endpoint.path:
            kwargs["unix_socket_path"] = s.endpoint.path
        else:
            kwargs.update(host=s.endpoint.host, port=s.endpoint.port)
        if s.tls:
            if s.endpoint.path:
                raise errors.ConfigError("fleet.tls: TLS over a Unix socket is not supported; use redis://HOST")
            # Verified, always: a fleet store on the network is a place to forge pauses.
            kwargs.update(ssl=True, ssl_cert_reqs="required", ssl_check_hostname=True, ssl_ca_certs=s.ca_file)
        return aioredis.Redis(**kwargs)

    async def start(self) -> None:
        if self.started:
            return
        self.started = True
        if self.settings.ca_file:
            from pysendmail.core import trust

            problem = trust.named_file(self.settings.ca_file, "fleet.ca_file")
            if problem:
                raise errors.ConfigError(problem)
        self.client = self._make_client()  # reads the password now: a bad file is a ConfigError at start
        await self._connect()
        self.heartbeat = asyncio.create_task(self._beat())

    async def _beat(self) -> None:
        """sync() every SYNC_INTERVAL even when idle: a restarted Redis gets this host's sends back soon."""
        while True:
            await asyncio.sleep(SYNC_INTERVAL)
            try:
                await self.sync()
            except Exception as exc:  # never let the heartbeat die silently
                log.log(f"fleet: sync failed: {exc!r}")

    async def close(self) -> None:
        if self.heartbeat is not None:
            self.heartbeat.cancel()
            try:
                await self.heartbeat
            except asyncio.CancelledError:
                pass
            self.heartbeat = None
        if self.client is not None:
            try:
                await asyncio.wait_for(self.client.aclose() if hasattr(self.client, "aclose")
                                       else self.client.close(), self.settings.timeout)
            except Exception:
                pass
            self.client = None

    def mode(self) -> str:
        return "redis" if self.up else f"fallback {self.settings.fallback}"

    async def _call(self, coro: Any) -> Any:
        """One round trip, bounded by timeout_ms."""
        self.round_trips += 1
        return await asyncio.wait_for(coro, self.settings.timeout)

    def _down(self, exc: BaseException) -> None:
        what = _describe(exc)
        if isinstance(exc, asyncio.TimeoutError):
            what = f"no answer within {self.settings.timeout * 1000:.0f} ms"
        if not self.error and not self.quiet:  # once per episode
            share = ("this host spends at most rate_per_minute and rate_per_day / "
                     f"{self.settings.size_hint} (fleet.fleet_size_hint) of each account"
                     if self.settings.fallback == "share"
                     else "nothing is sent until it answers (fleet.fallback = pause)")
            log.log(f"warning: fleet: Redis at {self.settings.endpoint} unreachable ({log.safe(what)}): {share}; "
                    "mail stays queued")
        self.up = False
        self.error = what[:MAX_TEXT]
        self.retry_at = time.time() + self.retry_delay
        self.retry_delay = min(self.retry_delay * 2, RETRY_MAX)

    async def _connect(self) -> bool:
        """Try Redis now: load the scripts, learn the clock offset, push what this host did meanwhile."""
        async with self._lock:
            if self.up:
                return True
            try:
                server = await self._call(self.client.time())
                self.offset = float(server[0]) + float(server[1]) / 1e6 - time.time()
                self.run_id = _run_id(await self._call(self.client.info("server")))
                for script in (RESERVE, RECORD_BLOCK):
                    self._sha[script] = _text(await self._call(self.client.script_load(script)))
                await self._push_own()
            except Exception as exc:
                self._down(exc)
                return False
            self.up = True
            self.retry_delay = RETRY_FIRST
            if self.quiet:
                pass
            elif self.error:
                log.log(f"fleet: Redis at {self.settings.endpoint} answers again; this host's sends and pauses "
                        "pushed, shared budgets and pauses apply again")
            elif not self.connected_once:
                log.log(f"fleet: sharing route state through Redis at {self.settings.endpoint} as host "
                        f"{log.safe(self.host)}")
            self.connected_once = True
            self.error = ""
            return True

    async def _with_redis(self, op: Callable[[], Awaitable[Any]]) -> tuple[bool, Any]:
        """(True, what ``op`` returned), or (False, None) when Redis is unreachable (the fallback applies).

        A connection that the server closed (a Redis restart, its idle
        timeout) fails once even though Redis is back: then one new
        connection is tried at once, which also pushes this host's state
        to a Redis that may have lost it.
        """
        if not self.up:
            if self.client is None or time.time() < self.retry_at or not await self._connect():
                return False, None
        try:
            return True, await op()
        except Exception as first:
            if _is_noscript(first):  # the server lost its script cache (restart, SCRIPT FLUSH)
                self.up = False
            elif isinstance(first, asyncio.TimeoutError) or not _is_connection_error(first):
                self._down(first)
                return False, None
            self.up = False
            if not await self._connect():
                return False, None
        try:
            return True, await op()
        except Exception as exc:
            self._down(exc)
            return False, None

    async def _script(self, script: str, keys: list[str], args: list[object]) -> Any:
        sha = self._sha.get(script) or hashlib.sha1(script.encode()).hexdigest()
        return await self._call(self.client.evalsha(sha, len(keys), *keys, *args))

    async def _push_own(self) -> None:
        """This host's sends still inside the windows and its own blocks: idempotent, one pipeline."""
        if not self.accounts:
            return
        pipe = self.client.pipeline(transaction=False)
        now = time.time()
        for aid, (account, rates) in self.accounts.items():
            for rate in rates:
                self._push_sends(pipe, account, rate, now)
            for kind, (until, reason, verdict) in list(self.views.get(aid, AccountView()).own_blocks.items()):
                if until > now:
                    pipe.evalsha(self._sha[RECORD_BLOCK], 1, self.key(account, kind), f"{until - now:.3f}",
                                 reason, self.host, verdict)
        await self._call(pipe.execute())

    def _push_sends(self, pipe: Any, account: Account, rate: RateLimit, now: float) -> None:
        """Queue on ``pipe`` the sends in ``rate``'s windows, under the names reserve gave them."""
        rate.delay(now)  # drops what has left the windows
        if rate.per_minute and rate.minute:
            pipe.zadd(self.key(account, "minute"), {self.stem(t) + "|m": t + self.offset for t in rate.minute}, nx=True)
            pipe.expire(self.key(account, "minute"), 120)
        if rate.per_day and rate.day:
            members: dict[str, float] = {}
            previous, index = None, 0
            for t in rate.day:  # [t] * units for one transaction
                index = index + 1 if t == previous else 0
                previous = t
                members[f"{self.stem(t)}|{index}"] = t + self.offset
            pipe.zadd(self.key(account, "day"), members, nx=True)
            pipe.expire(self.key(account, "day"), 172800)

    # ------------------------------------------------------------ budget
    def register(self, account: Account, rate: RateLimit) -> None:
        """Make ``account`` known (its sends are pushed on reconnection) with this host's windows ``rate``."""
        _, rates = self.accounts.setdefault(account.id, (account, []))
        if not any(r is rate for r in rates):
            rates.append(rate)  # two routes of one account: both their sends are this host's
        self.views.setdefault(account.id, AccountView())

    def known_block(self, account: Account, now: float | None = None) -> Block | None:
        """The fleet's pause or hold on ``account`` as last seen, while it lasts (no network)."""
        view = self.views.get(account.id)
        now = time.time() if now is None else now
        if view is not None and view.block is not None and view.block.until > now:
            return view.block
        return None

    async def reserve(self, account: Account, rate: RateLimit, recipients: int = 1) -> Grant:
        self.register(account, rate)
        now = self.last_now = max(time.time(), math.nextafter(self.last_now, math.inf))
        units = rate._day_units(recipients)
        keys = [self.key(account, w) for w in ("minute", "day", "pause", "hold")]
        ok, reply = await self._with_redis(
            lambda: self._script(RESERVE, keys, [rate.per_minute, rate.per_day, units, self.stem(now)]))
        if ok:
            return self._granted(account, rate, recipients, now, [_text(x) for x in reply])
        return self._fallback(account, rate, recipients, now)

    def _granted(self, account: Account, rate: RateLimit, recipients: int, now: float, reply: list[str]) -> Grant:
        server_now = _float(reply[-1])
        if server_now:
            self.offset = server_now - time.time()
        view = self.views[account.id]
        if reply[0] == "ok":
            rate.spend(now, recipients)  # this host's own record, under the same names
            view.block = None
            return Grant(True)
        if reply[0] == "blocked" and len(reply) >= 8:
            until = self._local_until(reply[2], time.time())
            block = Block(reply[1], until, reply[3], reply[4], reply[5])
            view.block = block
            return Grant(False, until, describe(block, self.host), block)
        window = reply[1] if len(reply) > 1 else "day"
        until = min(_float(reply[2]) - self.offset if len(reply) > 2 else now + MINUTE, time.time() + DAY)
        view.block = None
        return Grant(False, max(until, now + 0.001), f"the fleet's sending budget (rate_per_{window}) for "
                                                     f"{account.id} is used up")

    def _fallback(self, account: Account, rate: RateLimit, recipients: int, now: float) -> Grant:
        known = self.known_block(account, now)
        if known is not None:
            return Grant(False, known.until, describe(known, self.host), known, self.mode())
        if self.settings.fallback == "pause":
            return Grant(False, max(self.retry_at, now + RETRY_FIRST),
                         f"Redis is unreachable ({self.error}) and fleet.fallback = pause", mode=self.mode())
        share = local_share(rate, self.settings.size_hint)
        wait = share.delay(now, recipients)
        if wait > 0:
            return Grant(False, now + wait, f"Redis is unreachable ({self.error}): this host's share "
                                            f"(rate / fleet.fleet_size_hint = {self.settings.size_hint}) is used up",
                         mode=self.mode())
        rate.spend(now, recipients)
        return Grant(True, mode=self.mode())

    # ------------------------------------------------------------ pauses and holds
    async def record_block(self, account: Account, kind: str, until: float, reason: str, verdict: str = "") -> None:
        """Share this host's pause or hold of ``account`` until ``until`` (our clock)."""
        view = self.views.setdefault(account.id, AccountView())
        reason = reason[:MAX_TEXT]
        view.own_blocks[kind] = (until, reason, verdict)
        known = view.block
        if known is None or known.until < until:
            view.block = Block(kind, until, reason, self.host, verdict)
        ok, reply = await self._with_redis(lambda: self._script(
            RECORD_BLOCK, [self.key(account, kind)], [f"{max(0.0, until - time.time()):.3f}", reason, self.host,
                                                      verdict]))
        if not ok:
            return  # pushed when Redis answers again (_push_own)
        fields = [_text(x) for x in reply]
        self.offset = _float(fields[3]) - time.time()
        if fields[1] != self.host:  # another host's longer block stands
            view.block = Block(kind, self._local_until(fields[0], time.time()), fields[2],
                               fields[1], verdict)

    async def clear(self, account: Account) -> bool:
        """Lift the fleet's pause and hold of ``account`` ('route resume'); False when Redis did not answer."""
        view = self.views.setdefault(account.id, AccountView())
        view.block = None
        view.own_blocks.clear()
        ok, _ = await self._with_redis(
            lambda: self._call(self.client.delete(self.key(account, "pause"), self.key(account, "hold"))))
        return ok

    # ------------------------------------------------------------ outcomes and the view
    def note_outcome(self, account: Account, ok: bool, text: str, when: float | None = None) -> None:
        when = time.time() if when is None else when
        word = "success" if ok else "failure"
        self.outcomes.setdefault(account.id, {}).update({
            f"{word}_time": f"{when + self.offset:.3f}", f"{word}_text": text[:MAX_TEXT], f"{word}_host": self.host,
        })

    async def sync(self) -> None:
        """Every SYNC_INTERVAL (start()'s heartbeat): write the outcomes noted, read every view back; one round trip."""
        if not self.accounts:
            return
        written = dict(self.outcomes)
        order = list(self.accounts.items())
        ok, replies = await self._with_redis(lambda: self._read_views(written, order))
        if not ok:
            return
        for aid in written:
            self.outcomes.pop(aid, None)
        run_id = _run_id(replies[0])
        if run_id != self.run_id:
            # Another server, or the same one restarted: it may have lost this host's sends and pauses.
            self.run_id = run_id
            ok, _ = await self._with_redis(self._push_own)
            if ok and not self.quiet:
                log.log(f"fleet: Redis at {self.settings.endpoint} restarted; this host's sends and pauses pushed "
                        "again")
        replies = replies[1 + 2 * sum(1 for aid in written if aid in self.accounts):]
        now = time.time()
        for n, (aid, _) in enumerate(order):
            pause, hold, last, minute, day = replies[5 * n: 5 * n + 5]
            view = self.views.setdefault(aid, AccountView())
            view.block = None
            view.blocks = {}
            for kind, entry in (("pause", pause), ("hold", hold)):
                got = {_text(k): _text(v) for k, v in (entry or {}).items()}
                until = self._local_until(got.get("until"), now)
                if until > now:
                    view.blocks[kind] = Block(kind, until, got.get("reason", ""), got.get("host", ""),
                                              got.get("verdict", ""))
                    if view.block is None or until > view.block.until:
                        view.block = view.blocks[kind]
            got = {_text(k): _text(v) for k, v in (last or {}).items()}
            for word in ("success", "failure"):
                when = _float(got.get(f"{word}_time"))
                entry_value = (when - self.offset, got.get(f"{word}_text", ""), got.get(f"{word}_host", "")) if when \
                    else None
                setattr(view, f"last_{word}", entry_value)
            view.used_minute, view.used_day = int(_float(minute)), int(_float(day))
        lifted = any([link.apply(now) for link in self.links])
        seen = repr(sorted((aid, v.block, v.used_minute, v.used_day, v.last_success, v.last_failure)
                           for aid, v in self.views.items()))
        if self.on_sync is not None and (lifted or seen != self.seen):
            self.on_sync(lifted)  # the daemon saves the view for status; lifted: what waited goes now
        self.seen = seen

    async def _read_views(self, written: dict[str, dict[str, str]],
                          order: list[tuple[str, tuple[Account, list[RateLimit]]]]) -> Any:
        pipe = self.client.pipeline(transaction=False)
        # First: which server answers.  A Redis restarted between two syncs
        # may be back before this host's next call fails (a client library
        # that reconnects by itself), and may have lost everything.
        pipe.info("server")
        for aid, fields in written.items():
            if aid in self.accounts:
                key = self.key(self.accounts[aid][0], "last")
                pipe.hset(key, mapping=fields)
                pipe.expire(key, 30 * 86400)
        for _, (account, _rate) in order:
            pipe.hgetall(self.key(account, "pause"))
            pipe.hgetall(self.key(account, "hold"))
            pipe.hgetall(self.key(account, "last"))
            pipe.zcount(self.key(account, "minute"), f"({time.time() + self.offset - MINUTE}", "+inf")
            pipe.zcount(self.key(account, "day"), f"({time.time() + self.offset - DAY}", "+inf")
        return await self._call(pipe.execute())

    def view(self, account: Account) -> dict[str, object]:
        """The fleet's side of one route for routes.json: read by status and route list."""
        v = self.views.get(account.id, AccountView())
        block = self.known_block(account)
        out: dict[str, object] = {
            "account": account.id,
            "backend": self.mode(),
            "error": self.error or None,
            "host": self.host,
            "used_minute": v.used_minute,
            "used_day": v.used_day,
            "last_success": list(v.last_success) if v.last_success else None,
            "last_failure": list(v.last_failure) if v.last_failure else None,
        }
        if block is not None:
            out.update(blocked=block.kind, blocked_until=block.until, blocked_by=block.host,
                       blocked_because=block.reason, verdict=block.verdict or None)
        return out

    def collect(self) -> Iterable[Any]:
        """Families for daemon/metrics.py: backend up, mode, round trips, shared budget use."""
        from pysendmail.daemon.metrics import Family

        up = Family("fleet_redis_up", "gauge", "1 while Redis answers; 0 while the fallback applies.")
        up.add(1 if self.up else 0)
        mode = Family("fleet_mode", "gauge", "1 for the mode route state is shared in: redis, fallback share, "
                                             "fallback pause.")
        for m in ("redis", "fallback share", "fallback pause"):
            mode.add(1 if self.mode() == m else 0, mode=m)
        trips = Family("fleet_round_trips_total", "counter", "Round trips to Redis since the daemon started.")
        trips.add(self.round_trips)
        used = Family("fleet_budget_used", "gauge", "Units the whole fleet spent in an account's windows.")
        for aid, v in sorted(self.views.items()):
            if v.used_minute is not None:
                used.add(v.used_minute, account=aid, window="minute")
            if v.used_day is not None:
                used.add(v.used_day, account=aid, window="day")
        return [up, mode, trips, used]


class Marks(Protocol):
    """Where a route keeps its pause and hold (the route itself, or its SMTP session)."""

    pause_until: float
    pause_reason: str
    pause_kind: str
    hold_until: float
    hold_reason: str


class RouteLink:
    """One local route bound to its account in the fleet: the router's few hooks.

    ``await before(recipients)`` right before a transaction: None to go
    (the budget was spent, shared and locally), else (until, why) to defer
    it; a block the fleet knows is also copied onto the route's marks, so
    the queue manager leaves that route's mail alone until then, and
    ``budget_block(now)`` keeps the route "over budget" until the shared
    window has room.  ``await after(pause, hold)`` with the marks from
    before the transaction shares a pause or hold the transaction caused.
    ``apply()`` (after each sync) copies the fleet's blocks onto the marks
    and lifts the copies the fleet no longer has.  ``resume()`` lifts the
    fleet's block too ('route resume').  ``entry()`` is the fleet's part of
    the route's routes.json entry.
    """

    def __init__(self, fleet: Fleet, account: Account, rate: RateLimit, marks: Marks) -> None:
        self.fleet = fleet
        self.account = account
        self.rate = rate
        self.marks = marks
        self.copied: dict[str, float] = {}  # kind -> the deadline this link put on the marks
        self.budget_until = 0.0
        self.budget_why = ""
        fleet.register(account, rate)
        fleet.links.append(self)

    def budget_block(self, now: float) -> tuple[float, str] | None:
        return (self.budget_until, self.budget_why) if self.budget_until > now else None

    def _copy(self, block: Block) -> None:
        marks = self.marks
        why = describe(block, self.fleet.host)
        if block.kind == "pause":
            if block.until > marks.pause_until:
                marks.pause_until, marks.pause_reason, marks.pause_kind = block.until, why, block.verdict
                self.copied["pause"] = block.until
        elif block.until > marks.hold_until:
            marks.hold_until, marks.hold_reason = block.until, why
            self.copied["hold"] = block.until

    async def before(self, recipients: int) -> tuple[float, str] | None:
        if not self.fleet.started:
            await self.fleet.start()
        grant = await self.fleet.reserve(self.account, self.rate, recipients)
        if grant.ok:
            self.budget_until = 0.0
            return None
        if grant.block is not None:
            self._copy(grant.block)
        else:
            until = grant.until
            if grant.mode != "redis":
                # The share's window says nothing about the fleet's: ask again once Redis may be back.
                until = min(until, max(self.fleet.retry_at, time.time() + RETRY_FIRST))
            self.budget_until, self.budget_why = until, grant.why
        return grant.until, grant.why

    async def after(self, pause_before: float, hold_before: float) -> None:
        marks = self.marks
        if marks.pause_until > pause_before and self.copied.get("pause") != marks.pause_until:
            await self.fleet.record_block(self.account, "pause", marks.pause_until, marks.pause_reason,
                                          marks.pause_kind)
        if marks.hold_until > hold_before and self.copied.get("hold") != marks.hold_until:
            await self.fleet.record_block(self.account, "hold", marks.hold_until, marks.hold_reason)

    def apply(self, now: float) -> bool:
        """Copy the fleet's blocks onto the marks; lift what the fleet lifted.  True when something was lifted."""
        view = self.fleet.views.get(self.account.id, AccountView())
        for block in view.blocks.values():
            if block.host != self.fleet.host:
                self._copy(block)
        if not self.fleet.up:
            return False  # Redis away: keep obeying what was learnt
        lifted = False
        marks = self.marks
        # A copy, or a block of our own, that the fleet no longer holds was lifted
        # ('route resume' on some host): lift it here too.
        for kind, until in list(self.copied.items()) + [(k, v[0]) for k, v in view.own_blocks.items()]:
            if kind in view.blocks or until <= now:
                continue
            if kind == "pause" and marks.pause_until == until:
                marks.pause_until, marks.pause_reason, marks.pause_kind = 0.0, "", ""
                lifted = True
            elif kind == "hold" and marks.hold_until == until:
                marks.hold_until, marks.hold_reason = 0.0, ""
                lifted = True
            self.copied.pop(kind, None)
            view.own_blocks.pop(kind, None)
        if lifted:
            log.log(f"fleet: account {self.account.id}: the fleet's pause was lifted (route resume on another "
                    "host); sending again")
        return lifted

    def outcome(self, sent: bool, reply: str) -> None:
        """A transaction's last reply, for the fleet's last success or failure (no address: only the reply)."""
        self.fleet.note_outcome(self.account, sent, reply)

    def resume(self) -> None:
        """'route resume' lifted the marks here: lift the fleet's block for every host (in the background)."""
        self.copied.clear()
        self.budget_until = 0.0
        task = asyncio.get_running_loop().create_task(self.fleet.clear(self.account))
        self.fleet.background.add(task)
        task.add_done_callback(self.fleet.background.discard)

    def entry(self) -> dict[str, object]:
        return self.fleet.view(self.account)


class FleetRouteStore:
    """The route-state store with the fleet behind it: what routing/state.py open_store picks with [fleet].

    The file stays this host's own record (its pauses, its budget's send
    times, last outcomes: what a restart restores and the commands read);
    the fleet is the shared one.  ``load()`` is the file's; ``save()``
    adds to each bound route's entry the fleet's view of its account
    (``"fleet"``: Redis or the fallback in force, who recorded a pause or
    hold and why, the fleet's count), which status and route list show;
    ``resume(name)`` lifts the route in the file and its account's pause
    and hold in Redis for every host (``said`` tells how that went).  The
    Router binds each route that logs in to an account to ``fleet``
    (``bind``): the budget check before each transaction.
    """

    def __init__(self, file: RouteStore, cfg: config.Config) -> None:
        self.file = file
        self.cfg = cfg
        fleet = Fleet.from_config(cfg)
        assert fleet is not None  # open_store chose this store for a [fleet] table
        self.fleet = fleet
        self.links: dict[str, RouteLink] = {}
        self.said = ""

    def bind(self, name: str, values: dict[str, object], rate: RateLimit, marks: Marks) -> RouteLink | None:
        account = account_of(values)
        if account is None:
            return None  # logs in as nobody: nothing the provider counts per account
        self.links[name] = RouteLink(self.fleet, account, rate, marks)
        return self.links[name]

    def load(self) -> dict[str, dict[str, object]]:
        return self.file.load()

    def save(self, routes: Mapping[str, Mapping[str, object]], now: float) -> None:
        self.file.save({name: {**entry, "fleet": self.links[name].entry()} if name in self.links else entry
                        for name, entry in routes.items()}, now)

    def resume(self, name: str) -> None:
        """'route resume' (a command, never the daemon): the file's marks, then the account's in Redis."""
        self.file.resume(name)
        from pysendmail.daemon import routes

        relay = routes.resolve(self.cfg).relays.get(name)
        account = account_of(relay.values) if relay is not None else None
        self.said = clear_now(self.fleet, account) if account is not None else ""


def clear_now(fleet: Fleet, account: Account) -> str:
    """Lift the fleet's pause and hold of ``account`` with a connection of its own; what happened."""

    async def run() -> bool:
        try:
            await fleet.start()
            return await fleet.clear(account)
        finally:
            await fleet.close()

    if asyncio.run(run()):
        return f"; lifted for every host of the fleet (account {account.id})"
    return (f"; but Redis did not answer ({fleet.error}): the fleet's pause of {account.id} stays for the other "
            "hosts until it ends or a resume reaches Redis")


def account_of(values: dict[str, object]) -> Account | None:
    """The provider host and user name of a [relay] table; None when it logs in as nobody (not shared)."""
    host, user = values.get("host"), values.get("username")
    return Account(str(host), str(user)) if host and user else None


def _describe(exc: BaseException) -> str:
    """The exception's text and its causes' (redis-py 4 wraps a refused certificate as "Error 1 connecting")."""
    texts: list[str] = []
    seen: BaseException | None = exc
    while seen is not None and len(texts) < 4:
        text = str(seen) or type(seen).__name__
        bare = text.split("] ", 1)[1] if text.startswith("[Errno ") and "] " in text else text
        if not any(bare in t for t in texts):  # a cause the wrapper's text already quotes adds nothing
            texts.append(text)
        seen = seen.__cause__ or seen.__context__
    return ": ".join(texts)


def _run_id(info: object) -> str:
    """The run_id from INFO server, parsed or raw."""
    if isinstance(info, dict):
        return _text(info.get("run_id") or info.get(b"run_id") or "")
    raw = info.decode("utf-8", "replace") if isinstance(info, bytes) else info if isinstance(info, str) else ""
    for line in raw.splitlines():
        if line.startswith("run_id:"):
            return line[7:].strip()
    return ""


def _is_noscript(exc: BaseException) -> bool:
    from redis.exceptions import NoScriptError

    return isinstance(exc, NoScriptError)


def _is_connection_error(exc: BaseException) -> bool:
    from redis.exceptions import ConnectionError as RedisConnectionError

    return isinstance(exc, (RedisConnectionError, ConnectionError))


def describe(block: Block, me: str) -> str:
    who = "this host" if block.host == me else f"host {block.host or '?'}"
    word = "paused" if block.kind == "pause" else "on hold"
    return f"account {word} by {who} (fleet): {block.reason}"


def local_share(rate: RateLimit, size_hint: int) -> RateLimit:
    """``rate``'s windows with its limits divided by ``size_hint`` (at least 1 where a limit is set)."""
    def part(limit: int) -> int:
        return max(1, limit // size_hint) if limit else 0

    share = type(rate)(part(rate.per_minute), part(rate.per_day), rate.day_unit)
    share.minute, share.day = rate.minute, rate.day  # the same deques: every send of this host counts
    return share
