"""OAuth2 for the relay: provider endpoints, the token file, the daemon's refreshing token source.

Contract:   ``settings(values, where, name, provider)`` returns
            the OAuthSettings of a relay with ``auth = "oauth2"`` (endpoints
            and scope: the relay's own keys over the provider's row in
            ENDPOINTS; the token file: ``oauth_token_file``, which
            config.build defaults to SPOOL/state/oauth/NAME.json), None for
            any other relay, or
            raises ConfigError naming the key.  ``read_state(s)`` returns
            what status, route list and config check show (valid until,
            refresh failing since, login needed), never the token.
            ``TokenSource(s)`` is the daemon's: ``await token()`` returns
            (access token, fresh) from memory, refreshing through the
            token endpoint in a worker thread (asyncio.to_thread) when
            none is held or it expires within its margin; ``await
            token(force=True)`` refreshes once after a relay refused a
            token that was not fresh (the caller's one retry).  It raises
            LoginNeeded (invalid_grant, no refresh token: the route is
            held until ``pysendmail oauth login``) or RefreshFailed
            (network, 5xx, any other error: temporary).  ``login_device``
            and ``login_pkce`` run the provider's flow for ``pysendmail
            oauth login`` and store the result (``store_login``).
Security:   Authlib (and requests under it) are imported here only, and
            this module only by the commands and the daemon code that need
            it: the submission path never loads them (tests/qa).  The
            refresh token lives in the token file alone: mode 0600, owned
            by the daemon's user (root creates it with that owner), written
            to a temporary name, fsynced, renamed, its directory fsynced;
            never in the config, a log line, an exception text, argv or the
            environment.  The access token lives in the daemon's memory
            only.  Endpoints must be https:// (loopback http is refused
            too: a token is a password); TLS is verified by requests
            against the system store, or REQUESTS_CA_BUNDLE when set.
            Provider replies are hostile: only error codes and a bounded,
            one-line description reach a log.
Crashes:    a rotated refresh token is written durably BEFORE its access
            token is handed out, so a crash anywhere leaves the file with
            either the old refresh token (the new access token was never
            used, and servers that retire the old token on first use of
            the new pair still take it) or the new one; a temporary file a
            crash left is removed by the next write.  Refreshes of one
            file are serialised by flock on ``FILE.lock``, so the daemon
            and ``oauth login`` never write over each other's token.
See also:   pysendmail(8) oauth; pysendmail.toml(5) oauth_*; RFC 6749 6
            (refresh), RFC 8628 (device authorization grant), RFC 7636
            (PKCE), RFC 9700 4.14 (refresh token rotation), RFC 7628
            (OAUTHBEARER).  Endpoints: Microsoft identity platform
            "OAuth 2.0 device authorization grant" (learn.microsoft.com
            /entra/identity-platform/v2-oauth2-device-code) and "Authenticate
            an IMAP, POP or SMTP connection using OAuth" (scope
            https://outlook.office.com/SMTP.Send, XOAUTH2); Google "OAuth 2.0
            for Mobile & Desktop Apps" (accounts.google.com/o/oauth2/v2/auth,
            oauth2.googleapis.com/token, PKCE; its device flow does not
            allow the mail scope) and "XOAUTH2 protocol" (scope
            https://mail.google.com/); Yandex ID "Entering the code on the
            Yandex OAuth authorization page" (yandex.com/dev/id/doc/en/codes
            /screen-code-oauth: POST /device/code, then /token with
            grant_type=device_code and code=) and Yandex Mail's OAuth scope
            mail:smtp for XOAUTH2.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TextIO

from pysendmail.core import config, durable
from pysendmail.core.errors import ConfigError, PysendmailError, TempFailure
from pysendmail.daemon import routes, secrets

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"  # RFC 8628 3.4
FILE_VERSION = 1
MARGIN_MAX = 300.0  # refresh at most this long before expiry...
MARGIN_SHARE = 0.25  # ...or within the last quarter of a short lifetime
HTTP_TIMEOUT = 30.0
MAX_BODY = 1 << 20  # a token endpoint's answer: a few hundred bytes; more is refused unread
MAX_TEXT = 200  # a provider's error description, as logged


@dataclass(frozen=True)
class Endpoints:
    """What pysendmail knows about one provider's OAuth2 service (see the module docstring's sources)."""

    authorize_url: str | None
    device_url: str | None
    token_url: str
    scope: str
    mechanism: str  # the SASL mechanism the provider documents for SMTP
    flow: str  # device | pkce: what 'oauth login' runs
    # How the device code is exchanged: RFC 8628's grant, or Yandex's own form.
    device_grant: tuple[str, str] = (DEVICE_GRANT, "device_code")
    default_tenant: str | None = None


MICROSOFT = "https://login.microsoftonline.com/{tenant}/oauth2/v2.0/"
ENDPOINTS: dict[str, Endpoints] = {
    "outlook": Endpoints(
        MICROSOFT + "authorize", MICROSOFT + "devicecode", MICROSOFT + "token",
        "https://outlook.office.com/SMTP.Send offline_access", "xoauth2", "device",
        default_tenant="organizations",  # work and school accounts: where SMTP AUTH is configured
    ),
    # Google's device flow refuses https://mail.google.com/: the installed-app flow with PKCE.
    "gmail": Endpoints(
        "https://accounts.google.com/o/oauth2/v2/auth", None, "https://oauth2.googleapis.com/token",
        "https://mail.google.com/", "xoauth2", "pkce",
    ),
    "yandex": Endpoints(
        "https://oauth.yandex.ru/authorize", "https://oauth.yandex.ru/device/code", "https://oauth.yandex.ru/token",
        "mail:smtp", "xoauth2", "device", device_grant=("device_code", "code"),
    ),
}
# Google's loopback/"out of band" redirect for a headless login: the user
# copies the address the browser ends on (it need not load).
PKCE_REDIRECT = "http://localhost"


class LoginNeeded(PysendmailError):
    """The refresh token is gone or refused (invalid_grant): only a new login helps."""

    exit_code = 75


class RefreshFailed(PysendmailError):
    """The token endpoint could not be reached or answered an error that may pass."""

    exit_code = 75


@dataclass(frozen=True)
class OAuthSettings:
    name: str  # the relay's name ("default" for [relay])
    where: str  # "relay" or "relay.NAME", for messages
    client_id: str
    client_secret_file: str | None
    scope: str
    token_url: str
    device_url: str | None
    authorize_url: str | None
    token_file: str
    mechanism: str  # oauthbearer | xoauth2 | auto
    flow: str  # device | pkce
    device_grant: tuple[str, str] = (DEVICE_GRANT, "device_code")

    @property
    def login_hint(self) -> str:
        return f"run 'pysendmail oauth login --relay {self.name}'"

    @property
    def lock_file(self) -> str:
        return self.token_file + ".lock"


def _https(url: str, key: str) -> str:
    if not url.startswith("https://") or len(url) < 12 or any(c.isspace() for c in url):
        raise ConfigError(f"{key} {url!r} must be an https:// address (a token is a password: never sent in clear)")
    return url


def settings(values: dict[str, object], where: str, name: str, provider: str | None) -> OAuthSettings | None:
    """The relay's OAuth2 settings, or None when its ``auth`` is not "oauth2"."""
    if str(values.get("auth") or "").lower() != "oauth2":
        return None
    row = ENDPOINTS.get(provider or "")
    if provider and provider != "custom" and row is None:
        raise ConfigError(f"{where}.auth = \"oauth2\" with provider {provider!r}: pysendmail knows the OAuth2 "
                          f"endpoints of {', '.join(sorted(ENDPOINTS))}; use provider = \"custom\" and set "
                          f"{where}.oauth_token_url and oauth_device_url or oauth_authorize_url")

    def pick(key: str, preset: str | None) -> str | None:
        given = values.get(key)
        return str(given) if given else preset

    client_id = pick("oauth_client_id", None)
    if not client_id:
        raise ConfigError(f"{where}.auth = \"oauth2\" needs {where}.oauth_client_id (the application registered "
                          "with the provider)")
    tenant = pick("oauth_tenant", row.default_tenant if row else None)
    if tenant is not None and not all(c.isalnum() or c in "-." for c in tenant):
        raise ConfigError(f"{where}.oauth_tenant {tenant!r} is not a tenant id or domain")
    if values.get("oauth_tenant") and not (row and "{tenant}" in row.token_url):
        raise ConfigError(f"{where}.oauth_tenant applies to provider = \"outlook\" only")

    def url(key: str, preset: str | None) -> str | None:
        value = pick(key, preset)
        if value is None:
            return None
        return _https(value.replace("{tenant}", tenant or ""), f"{where}.{key}")

    token_url = url("oauth_token_url", row.token_url if row else None)
    if not token_url:
        raise ConfigError(f"{where}.auth = \"oauth2\" needs {where}.oauth_token_url (provider custom)")
    device_url = url("oauth_device_url", row.device_url if row else None)
    authorize_url = url("oauth_authorize_url", row.authorize_url if row else None)
    if row is not None:
        flow = row.flow if (device_url if row.flow == "device" else authorize_url) else "pkce"
    else:
        flow = "device" if device_url else "pkce"
    if flow == "pkce" and not authorize_url:
        raise ConfigError(f"{where}.auth = \"oauth2\" needs {where}.oauth_device_url or oauth_authorize_url "
                          "(the page where the user signs in)")
    scope = pick("oauth_scope", row.scope if row else None)
    if not scope:
        raise ConfigError(f"{where}.auth = \"oauth2\" needs {where}.oauth_scope (provider custom)")
    token_file = pick("oauth_token_file", None)  # config.build fills in SPOOL/state/oauth/NAME.json
    if not token_file or not os.path.isabs(token_file):
        raise ConfigError(f"{where}.oauth_token_file must be an absolute path, not {token_file!r}")
    secret_file = pick("oauth_client_secret_file", None)
    return OAuthSettings(
        name=name, where=where, client_id=client_id, client_secret_file=secret_file, scope=scope,
        token_url=token_url, device_url=device_url, authorize_url=authorize_url, token_file=token_file,
        mechanism=row.mechanism if row else "auto", flow=flow,
        device_grant=row.device_grant if row else (DEVICE_GRANT, "device_code"),
    )


# ---------------------------------------------------------------- the token file
def _read_file(path: str) -> dict[str, Any] | None:
    """The token file's JSON object; None when absent; ConfigError when unreadable or not ours."""
    from pysendmail.core import trust

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(f"cannot read the OAuth2 token file {path}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        problem = trust.secret(st, path, "OAuth2 token file")
        if problem:
            raise ConfigError(problem)
        data = os.read(fd, 1 << 16)
    finally:
        os.close(fd)
    try:
        obj = json.loads(data)
    except ValueError:
        raise ConfigError(f"the OAuth2 token file {path} is not valid JSON; run the login again") from None
    return obj if isinstance(obj, dict) else None


def _owner_for() -> tuple[int, int] | None:
    """As root: the daemon's user (the owner of the spool's state/, as config.daemon_user chose it)."""
    if os.geteuid() != 0:
        return None
    from pysendmail.core import trust

    uid, gid, _ = trust.daemon()  # recorded by config.load
    return (uid, gid) if uid != 0 else None


def _ensure_dir(path: str, owner: tuple[int, int] | None) -> None:
    directory = os.path.dirname(path)
    if os.path.isdir(directory):
        return
    os.makedirs(directory, 0o700, exist_ok=True)
    if owner is not None:
        os.chown(directory, *owner)


def _write_file(path: str, data: dict[str, Any]) -> None:
    """Durably replace the token file: temporary name, 0600, owner, fsync, rename, directory fsync."""
    owner = _owner_for()
    _ensure_dir(path, owner)
    body = json.dumps(data, indent=1, sort_keys=True).encode() + b"\n"
    directory, base = os.path.split(path)
    tmp = os.path.join(directory, f".{base}.{os.getpid()}.tmp")
    # Callers hold the file's lock: a temporary file of another process is
    # what a crash mid-write left (it holds a token: removed, not kept).
    for name in os.listdir(directory):
        if name.startswith(f".{base}.") and name.endswith(".tmp") and name != os.path.basename(tmp):
            try:
                os.unlink(os.path.join(directory, name))
            except FileNotFoundError:
                pass
    durable.publish(tmp, path, body, mode=0o600, owner=owner)


class _Locked:
    """flock on FILE.lock: one refresh or login of a token file at a time, across processes."""

    def __init__(self, s: OAuthSettings) -> None:
        self.path = s.lock_file
        self.fd = -1

    def __enter__(self) -> _Locked:
        owner = _owner_for()
        _ensure_dir(self.path, owner)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        if owner is not None:
            os.fchown(self.fd, *owner)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)  # releases the lock


def read_state(s: OAuthSettings, now: float | None = None) -> dict[str, object]:
    """The token's state for people: {state, valid_until, refresh_failing_since, error, file}; no secret.

    state: "ok" (a refresh token is stored; valid_until is the last access
    token's expiry, when known), "refresh-failing" (since when, why),
    "login-needed" (no file, no refresh token, or invalid_grant), or
    "unknown" (the file cannot be read by this user).
    """
    now = time.time() if now is None else now
    out: dict[str, object] = {"file": s.token_file, "valid_until": None, "refresh_failing_since": None,
                              "error": None, "hint": s.login_hint}
    try:
        data = _read_file(s.token_file)
    except ConfigError as exc:
        out.update(state="unknown", error=str(exc))
        return out
    if data is None:
        out.update(state="login-needed", error="no login yet")
        return out
    expires = data.get("access_expires_at")
    out["valid_until"] = float(expires) if isinstance(expires, (int, float)) else None
    failing = data.get("refresh_failing_since")
    error = data.get("error")
    if not data.get("refresh_token") or data.get("login_needed"):
        out.update(state="login-needed", error=str(error or "the refresh token was refused"))
    elif isinstance(failing, (int, float)):
        out.update(state="refresh-failing", refresh_failing_since=float(failing), error=str(error or ""))
    else:
        out["state"] = "ok"
    return out


def describe(state: dict[str, object], now: float | None = None) -> str:
    """One line for status, route list and config check."""
    now = time.time() if now is None else now
    word = state.get("state")
    until = state.get("valid_until")
    fmt = "%Y-%m-%d %H:%M:%S"
    if word == "login-needed":
        return f"login needed ({state.get('error')}): {state.get('hint')}"
    if word == "unknown":
        return f"state unknown: {state.get('error')}"
    if word == "refresh-failing":
        since = time.strftime(fmt, time.localtime(_number(state.get("refresh_failing_since"), now, 0, 1e12)))
        return f"refresh failing since {since}: {state.get('error')}"
    if isinstance(until, float):
        if until > now:
            return f"token valid until {time.strftime(fmt, time.localtime(until))}"
        return f"token expired at {time.strftime(fmt, time.localtime(until))} (refreshed at the next login)"
    return "logged in (refreshed at the next login)"


_sources: dict[OAuthSettings, TokenSource] = {}


def source(relay: dict[str, object], where: str = "relay", name: str = "default",
           provider: str | None = None) -> TokenSource | None:
    """The refreshing token source of a relay with auth = "oauth2" and no oauth_token_command, else None.

    One per settings for the process's life, so a config reload keeps the
    access token in memory.  Authlib loads only at the first refresh.
    """
    if str(relay.get("auth") or "").lower() != "oauth2" or relay.get("oauth_token_command"):
        return None
    s = settings(relay, where, name, provider)
    assert s is not None
    found = _sources.get(s)
    if found is None:
        found = _sources[s] = TokenSource(s)
    return found


def token_states(cfg: config.Config, relays: Mapping[str, routes.RelaySettings] | None = None
                 ) -> dict[str, dict[str, object]]:
    """{relay name: token state} for every relay with auth = "oauth2", for status and route list.

    Each state is read_state's dict (no secret) plus ``text``, the line
    describe prints; a relay whose oauth_* keys are wrong gets state
    "config" and the sentence.  ``relays``: routes.resolve(cfg).relays
    when the caller has it.
    """
    if not cfg.relay_configured:
        return {}
    if relays is None:
        try:
            relays = routes.resolve(cfg).relays
        except PysendmailError:
            return {}
    out: dict[str, dict[str, object]] = {}
    for name, relay in relays.items():
        if str(relay.values.get("auth") or "").lower() != "oauth2":
            continue
        try:
            found = settings(relay.values, relay.where, name, relay.provider)
        except PysendmailError as exc:
            out[name] = {"state": "config", "text": str(exc)}
            continue
        assert found is not None
        state = read_state(found)
        state["text"] = describe(state)
        out[name] = state
    return out


# ---------------------------------------------------------------- HTTP (Authlib)
def _client_secret(s: OAuthSettings) -> str | None:
    if not s.client_secret_file:
        return None
    return secrets.read_secret_file(s.client_secret_file, f"{s.where}.oauth_client_secret_file")


def _session(s: OAuthSettings, **kw: Any) -> Any:
    """An Authlib OAuth2Session (requests) for this relay; the only place Authlib is loaded."""
    from authlib.integrations.requests_client import OAuth2Session

    secret = _client_secret(s)
    session = OAuth2Session(s.client_id, secret, scope=s.scope,
                            token_endpoint_auth_method="client_secret_post" if secret else "none", **kw)
    session.headers["User-Agent"] = "pysendmail"
    session.hooks["response"].append(_bounded)
    return session


def _bounded(resp: Any, *args: object, **kw: object) -> Any:
    """Read at most MAX_BODY bytes of an answer (requests runs response hooks before it reads the body).

    The endpoint is the configured one over verified TLS, but its answer
    is still data from outside: its size must not decide the daemon's
    memory.
    """
    data = resp.raw.read(MAX_BODY + 1, decode_content=True)
    if len(data) > MAX_BODY:
        resp.close()
        raise ValueError(f"{resp.url.split('?', 1)[0]} answered more than {MAX_BODY} bytes")
    resp._content, resp._content_consumed = data, True
    return resp


def _short(text: object) -> str:
    line = " ".join(str(text or "").split())
    return "".join(c for c in line if c.isprintable())[:MAX_TEXT]


def _oauth_error(exc: BaseException) -> tuple[str, str] | None:
    """(error code, description) of an OAuth2 error reply (Authlib's OAuthError), else None."""
    error = getattr(exc, "error", None)
    if not isinstance(error, str):
        return None
    return _short(error), _short(getattr(exc, "description", "") or "")


def _transport_errors() -> tuple[type[BaseException], ...]:
    import requests

    return (requests.RequestException, OSError, ValueError)


def _expiry(token: dict[str, Any], now: float) -> float | None:
    expires_at = token.get("expires_at")
    if isinstance(expires_at, (int, float)):
        return float(expires_at)
    expires_in = token.get("expires_in")
    try:
        return now + float(expires_in) if expires_in is not None else None
    except (TypeError, ValueError):
        return None


def _record(s: OAuthSettings, refresh_token: str | None, **fields: object) -> dict[str, Any]:
    data: dict[str, Any] = {"version": FILE_VERSION, "relay": s.name, "client_id": s.client_id,
                            "token_url": s.token_url, "scope": s.scope, "refresh_token": refresh_token,
                            "access_expires_at": None, "refresh_failing_since": None, "error": None,
                            "login_needed": False, "updated": time.time()}
    data.update(fields)
    return data


def refresh_blocking(s: OAuthSettings) -> tuple[str, float | None]:
    """One refresh (blocking: the daemon runs it in a thread); (access token, expiry).

    Under the file's lock, with the file's refresh token (a new login may
    have replaced it); a rotated one is written durably before this
    returns.  Failures are recorded in the file (refresh failing since,
    login needed) and raised as RefreshFailed or LoginNeeded.
    """
    with _Locked(s):
        data = _read_file(s.token_file)
        if data is None:
            raise LoginNeeded(f"{s.where}: no OAuth2 login yet ({s.token_file} does not exist): {s.login_hint}")
        refresh_token = data.get("refresh_token")
        if not isinstance(refresh_token, str) or not refresh_token or data.get("login_needed"):
            raise LoginNeeded(f"{s.where}: the OAuth2 login is no longer valid ({_short(data.get('error'))}): "
                              f"{s.login_hint}")
        now = time.time()
        try:
            session = _session(s)
            token = session.refresh_token(s.token_url, refresh_token=refresh_token, timeout=HTTP_TIMEOUT)
            access = token.get("access_token")
            if not isinstance(access, str) or not access:
                raise ValueError("the token endpoint's answer holds no access_token")
        except Exception as exc:
            found = _oauth_error(exc)
            if found is not None and found[0] == "invalid_grant":
                why = f"invalid_grant: {found[1]}" if found[1] else "invalid_grant"
                _write_file(s.token_file, _record(s, None, login_needed=True, error=why))
                raise LoginNeeded(f"{s.where}: the provider refused the refresh token ({why}); the login was "
                                  f"revoked or expired: {s.login_hint}") from None
            if found is None and not isinstance(exc, _transport_errors()):
                raise
            why = f"{found[0]}: {found[1]}" if found else _short(f"{type(exc).__name__}: {exc}")
            since = data.get("refresh_failing_since")
            since = float(since) if isinstance(since, (int, float)) else now
            _write_file(s.token_file, {**data, "refresh_failing_since": since, "error": why, "updated": now})
            raise RefreshFailed(f"{s.where}: cannot refresh the OAuth2 token at {s.token_url}: {why}") from None
        rotated = token.get("refresh_token")
        keep = rotated if isinstance(rotated, str) and rotated else refresh_token
        expires = _expiry(token, now)
        # Durable BEFORE the access token is used: a server that retires the
        # old refresh token once the new pair is used would otherwise leave
        # us, after a crash here, with a dead one.
        _write_file(s.token_file, _record(s, keep, access_expires_at=expires))
        return access, expires


class TokenSource:
    """The daemon's access token for one relay: in memory, refreshed in a worker thread."""

    def __init__(self, s: OAuthSettings, clock: Callable[[], float] = time.time) -> None:
        self.settings = s
        self.clock = clock
        self._access: str | None = None
        self._expires: float | None = None
        self._obtained = 0.0
        self._lock: asyncio.Lock | None = None

    def _usable(self) -> bool:
        if self._access is None:
            return False
        if self._expires is None:
            return True  # no lifetime given: used until a relay refuses it
        lifetime = max(0.0, self._expires - self._obtained)
        margin = min(MARGIN_MAX, lifetime * MARGIN_SHARE)
        return self.clock() < self._expires - margin

    def forget(self) -> None:
        self._access = self._expires = None

    async def token(self, force: bool = False) -> tuple[str, bool]:
        """(access token, fresh): fresh when this call refreshed it (a refusal then means no retry)."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        seen = self._access
        async with self._lock:
            if self._access is not None and (self._access != seen or (not force and self._usable())):
                return self._access, self._access != seen  # another connection refreshed meanwhile
            self.forget()
            access, expires = await asyncio.to_thread(refresh_blocking, self.settings)
            self._access, self._expires, self._obtained = access, expires, self.clock()
            return access, True


# ---------------------------------------------------------------- login
def store_login(s: OAuthSettings, token: dict[str, Any]) -> dict[str, Any]:
    """Write what a login returned (under the lock: a running refresh finishes first)."""
    refresh_token = token.get("refresh_token")
    if not isinstance(refresh_token, str) or not refresh_token:
        raise TempFailure(f"the provider returned no refresh token for {s.where}: check that the scope "
                          f"{s.scope!r} includes offline access (Microsoft: offline_access)")
    with _Locked(s):
        record = _record(s, refresh_token, access_expires_at=_expiry(token, time.time()))
        _write_file(s.token_file, record)
    return record


def _login_error(s: OAuthSettings, exc: BaseException, step: str) -> PysendmailError:
    found = _oauth_error(exc)
    why = f"{found[0]}: {found[1]}" if found else _short(f"{type(exc).__name__}: {exc}")
    return TempFailure(f"{s.where}: OAuth2 login failed at {step}: {why}; nothing was stored")


def _number(value: object, default: float, low: float, high: float) -> float:
    try:
        number = float(value) if isinstance(value, (int, float, str)) else default
    except (TypeError, ValueError):
        number = default
    return min(max(number, low), high) if number == number else default  # NaN: the default


def login_device(s: OAuthSettings, out: TextIO, sleep: Callable[[float], None] = time.sleep) -> dict[str, Any]:
    """RFC 8628: print the page and the code, poll the token endpoint until the user approves."""
    if not s.device_url:
        raise ConfigError(f"{s.where} has no oauth_device_url: the device flow is not available")
    session = _session(s)
    try:
        resp = session.post(s.device_url, data={"client_id": s.client_id, "scope": s.scope}, timeout=HTTP_TIMEOUT,
                            withhold_token=True,
                            headers={"Accept": "application/json"})
        grant = resp.json()
    except _transport_errors() as exc:
        raise _login_error(s, exc, "the device authorization request") from None
    if not isinstance(grant, dict) or resp.status_code != 200 or "device_code" not in grant:
        error = grant.get("error") if isinstance(grant, dict) else None
        text = grant.get("error_description") if isinstance(grant, dict) else None
        raise TempFailure(f"{s.where}: the device authorization endpoint {s.device_url} answered HTTP "
                          f"{resp.status_code} {_short(error)} {_short(text)}".rstrip() + "; nothing was stored")
    # Microsoft and RFC 8628 say verification_uri; Google and Yandex verification_url.
    page = _short(grant.get("verification_uri_complete") or grant.get("verification_uri")
                  or grant.get("verification_url"))
    code = _short(grant.get("user_code"))
    if not page or not code or not isinstance(grant.get("device_code"), str):
        raise TempFailure(f"{s.where}: the device authorization endpoint {s.device_url} answered without a page, "
                          "a user code or a device code; nothing was stored")
    # The provider's numbers, kept within sense: poll every 1 to 60 s (RFC 8628 3.2: default 5).
    interval = _number(grant.get("interval"), 5.0, 1.0, 60.0)
    deadline = time.monotonic() + _number(grant.get("expires_in"), 900.0, 60.0, 3600.0)
    out.write(f"To let pysendmail send mail as this account, open\n    {page}\nand enter the code\n    {code}\n"
              f"Waiting for you to approve (the code expires in {int(deadline - time.monotonic()) // 60} min)...\n")
    out.flush()
    grant_type, field = s.device_grant
    while True:
        if time.monotonic() > deadline:
            raise TempFailure(f"{s.where}: the code {code} expired before it was approved; run the login again")
        sleep(interval)
        try:
            token = session.fetch_token(s.token_url, grant_type=grant_type, timeout=HTTP_TIMEOUT,
                                        **{field: grant["device_code"]})
        except Exception as exc:
            found = _oauth_error(exc)
            if found is not None and found[0] == "authorization_pending":
                continue
            if found is not None and found[0] == "slow_down":
                interval += 5  # RFC 8628 3.5
                continue
            if found is None and not isinstance(exc, _transport_errors()):
                raise
            raise _login_error(s, exc, "the token request") from None
        return store_login(s, dict(token))


def login_pkce(s: OAuthSettings, out: TextIO, answer: Callable[[], str]) -> dict[str, Any]:
    """RFC 7636 with the installed-app flow: print the URL, read back the redirect address or the code."""
    from authlib.common.security import generate_token

    if not s.authorize_url:
        raise ConfigError(f"{s.where} has no oauth_authorize_url: the browser flow is not available")
    session = _session(s, redirect_uri=PKCE_REDIRECT, code_challenge_method="S256")
    verifier = generate_token(64)
    # access_type=offline and prompt=consent: Google returns a refresh token only so.
    url, state = session.create_authorization_url(s.authorize_url, code_verifier=verifier,
                                                  access_type="offline", prompt="consent")
    out.write(f"Open this address in a browser, sign in and allow access:\n    {url}\n"
              "The browser then goes to an address starting with http://localhost that will not load.\n"
              "Copy that whole address (or just the value of its code= parameter) and paste it here:\n")
    out.flush()
    pasted = answer().strip()
    if not pasted:
        raise TempFailure(f"{s.where}: no address or code was pasted; nothing was stored")
    try:
        if "code=" in pasted:
            from urllib.parse import parse_qs, urlsplit

            query = parse_qs(urlsplit(pasted).query)
            if query.get("error"):
                raise TempFailure(f"{s.where}: the provider refused: {_short(query['error'][0])}; nothing was stored")
            if query.get("state", [""])[0] != state:
                raise TempFailure(f"{s.where}: the pasted address belongs to another login attempt (state differs); "
                                  "run the login again and paste the address it leads to")
            code = query.get("code", [""])[0]
        else:
            code = pasted
        token = session.fetch_token(s.token_url, grant_type="authorization_code", code=code,
                                    code_verifier=verifier, timeout=HTTP_TIMEOUT)
    except PysendmailError:
        raise
    except Exception as exc:
        if _oauth_error(exc) is None and not isinstance(exc, _transport_errors()):
            raise
        raise _login_error(s, exc, "the token request") from None
    return store_login(s, dict(token))
