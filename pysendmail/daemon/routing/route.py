"""One route: an account's settings, its health, its sending budget and its SMTP session.

Contract:   ``Route(settings, helo, clock)`` owns everything the daemon
            knows about one [relay] account: its settings (routes.py),
            its SMTP session (transport/smtp.py, which only talks SMTP),
            its health and its RateLimit.  Health is three marks, checked
            in this order by ``unavailable(now, recipients)``:
            * paused (a provider's quota or block window, ``pause_kind``
              names which): no backoff, a flush does not lift it;
            * held (refused login): 5 min, doubling with each failure
              (``auth_failures``), at most 4 h;
            * down (connection failed): 30 s, lifted by a flush
              (``reset_down``).
            Then the sending budget (with [fleet], also the account's
            shared one: ``link``, daemon/fleet.py RouteLink).  The session
            reports a failure of the whole route through ``failed(RelayError)`` (the RouteHealth
            seam) and a successful login through ``logged_in()``; the log
            lines for a pause and a hold are written here.  ``resume()``
            lifts all three marks ('pysendmail route resume').
Crashes:    ``snapshot(now)`` is the route's entry in routes.json (state.py)
            and ``restore(entry, now)`` takes it back at start: a pause,
            a hold (with its backoff count) and the budget's send times
            outlive a restart; a window already over is dropped.
See also:   router.py (chooses routes), state.py (the file), providers.py.
"""

from __future__ import annotations

import time

from pysendmail.core import log
from pysendmail.core.clock import Clock
from pysendmail.daemon import routes
from pysendmail.daemon.routing.ratelimit import RateLimit
from pysendmail.daemon.transport.smtp import RelayError, SmtpTransport

TYPE_CHECKING = False
if TYPE_CHECKING:
    from pysendmail.daemon.fleet import RouteLink

DOWN_SECONDS = 30  # after a failed connection, defer the rest of the queue this long
HOLD_BASE, HOLD_MAX = 300, 4 * 3600  # auth failure: 5 min, doubling, at most 4 h


class Route:
    def __init__(self, settings: routes.RelaySettings, helo: str, clock: Clock) -> None:
        self.settings = settings
        self.name = settings.name
        self.clock = clock
        relay = settings.relay
        self.smtp = SmtpTransport(settings.values, relay.helo or helo, settings.name, settings.provider,
                                  health=self, clock=clock, typed=relay)
        self.rate = RateLimit(relay.rate_per_minute, relay.rate_per_day, relay.rate_unit)
        self.last_success: tuple[float, str] | None = None
        self.last_failure: tuple[float, str] | None = None
        self.hold_until = 0.0
        self.hold_reason = ""
        self.auth_failures = 0
        self.down_until = 0.0
        self.down_reason = ""
        self.pause_until = 0.0  # a provider's quota or block window; a flush does not lift it
        self.pause_reason = ""
        self.pause_kind = ""  # the verdict's kind (providers.py): spam-block, daily-quota, ...
        self.link: RouteLink | None = None  # [fleet]: the account's shared budget and pauses (daemon/fleet.py)

    @property
    def max_rcpt(self) -> int:
        """Recipients per transaction (0: no limit)."""
        return self.smtp.max_rcpt

    # ------------------------------------------------------------ availability
    def health(self, now: float) -> tuple[float, str] | None:
        """(until, why) while the route is paused, on hold or down, else None."""
        if self.pause_until > now:
            return self.pause_until, f"route paused: {self.pause_reason}"
        if self.hold_until > now:
            return self.hold_until, f"route on hold: {self.hold_reason}"
        if self.down_until > now:
            return self.down_until, self.down_reason
        return None

    def unavailable(self, now: float, recipients: int = 1) -> tuple[float, str] | None:
        return self.health(now) or self.over_budget(now, recipients)

    def over_budget(self, now: float, recipients: int = 1) -> tuple[float, str] | None:
        """(until, why) while a transaction with ``recipients`` would exceed the sending budget."""
        wait = self.rate.delay(now, recipients)
        if wait > 0:
            return now + wait, f"sending budget ({self.settings.where}.rate_per_minute / rate_per_day) used up"
        return self.link.budget_block(now) if self.link is not None else None

    # ------------------------------------------------------------ the session's reports (RouteHealth)
    def logged_in(self) -> None:
        self.auth_failures = 0

    def failed(self, exc: RelayError) -> None:
        """A failure of the whole route: pause, hold with backoff, or a short down mark."""
        now = self.clock.time()
        host = self.smtp.host
        if exc.pause:
            self.pause_until = max(self.pause_until, now + exc.pause)
            self.pause_reason = exc.text
            self.pause_kind = exc.kind
            log.log(
                f"relay {host}: PAUSED until {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(self.pause_until))}"
                f" ({int(exc.pause)} s), mail kept in the queue: {exc.text}"
            )
        elif exc.hold:
            self.auth_failures += 1
            delay = min(HOLD_MAX, HOLD_BASE * 2 ** (self.auth_failures - 1))
            self.hold_until = now + delay
            self.hold_reason = exc.text
            # An OAuth2 login to renew: the command in exc.text also resumes the route.
            fix = "" if exc.kind == "oauth-login-needed" else (
                f"; check {self.settings.where}.username and the password, then run "
                f"'pysendmail route resume {self.name}'")
            log.log(f"relay {host}: AUTHENTICATION FAILED, all mail held for {int(delay)} s: {exc.text}{fix}")
        else:
            self.down_until = now + DOWN_SECONDS
            self.down_reason = exc.text

    def record(self, now: float, recipient: str, sent: bool, text: str) -> None:
        if sent:
            self.last_success = (now, f"{recipient}: {text}")
        else:
            self.last_failure = (now, f"{recipient}: {text}")

    # ------------------------------------------------------------ the administrator
    def reset_down(self) -> None:
        """A flush asked by the administrator tries a route marked down (connection failed) at once.

        Not a hold (refused login: each retry is one more failed login,
        and providers lock accounts for those) and not a provider's pause
        (trying during a Yandex spam block extends it by 24 h): only
        'pysendmail route resume' or their expiry lifts them.
        """
        self.down_until = 0.0

    def resume(self) -> None:
        """'pysendmail route resume': lift a pause, a hold and a down mark now."""
        self.pause_until = self.hold_until = self.down_until = 0.0
        self.pause_reason = self.pause_kind = ""
        self.auth_failures = 0

    # ------------------------------------------------------------ the state store
    def snapshot(self, now: float) -> dict[str, object]:
        """This route's entry in routes.json: what status and route list show, what restore takes back."""
        blocked = self.unavailable(now)
        paused = self.pause_until > now
        held = self.hold_until > now
        return {
            "relay": self.smtp.relay,
            "provider": self.settings.provider,
            "last_success": self.last_success,
            "last_failure": self.last_failure,
            "paused_until": blocked[0] if blocked else None,
            "paused_because": blocked[1] if blocked else None,
            "pause": paused,
            "pause_reason": self.pause_reason if paused else None,
            "pause_kind": self.pause_kind if paused else None,
            # A refused login's hold, kept so that the next run (a cron
            # 'sendmail -q', a restart) does not log in again before it ends.
            "hold_until": self.hold_until if held else None,
            "hold_reason": self.hold_reason if held else None,
            "auth_failures": self.auth_failures,
            # One word for 'pysendmail route list', in unavailable()'s order.
            "state": ("paused" if paused else "held" if held else "down" if self.down_until > now
                      else "budget" if blocked else "ok"),
            "sent_times": self.rate.snapshot(now),
        }

    def restore(self, entry: dict[str, object], now: float) -> None:
        """Take back what an earlier run saved; anything malformed is ignored."""
        for key in ("last_success", "last_failure"):
            item = entry.get(key)
            if isinstance(item, list) and len(item) == 2:
                setattr(self, key, (float(item[0]), str(item[1])))
        self.rate.restore(entry.get("sent_times"), now)
        until, why = entry.get("paused_until"), entry.get("pause_reason")
        if entry.get("pause") and isinstance(until, (int, float)) and isinstance(why, str) and until > now:
            self.pause_until, self.pause_reason, self.pause_kind = float(until), why, str(entry.get("pause_kind") or "")
        hold, why, failures = entry.get("hold_until"), entry.get("hold_reason"), entry.get("auth_failures")
        if isinstance(hold, (int, float)) and isinstance(why, str) and isinstance(failures, int):
            if hold > now:
                self.hold_until, self.hold_reason = float(hold), why
            self.auth_failures = max(0, failures)  # the next hold's backoff goes on growing

