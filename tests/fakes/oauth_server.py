"""A real OAuth2 authorization server on loopback for tests: Authlib's server grants over HTTPS.

``OAuthServer().start()`` serves, over TLS with a trustme certificate for
127.0.0.1 and localhost (``ca_file`` is its CA, for REQUESTS_CA_BUNDLE):

* ``POST /device/code``: RFC 8628 device authorization (Authlib's
  DeviceAuthorizationEndpoint); ``GET /device?user_code=X`` is the page the
  user opens: it approves the code, as the user signing in would;
* ``GET /authorize``: the authorization-code grant with PKCE required
  (Authlib's AuthorizationCodeGrant + CodeChallenge); it approves at once
  (the user signed in) and answers 302 to the redirect URI with the code;
* ``POST /token``: the device grant, the code grant and the refresh
  grant, the latter with rotation (a new refresh token each time).

Every grant, token, client check, PKCE check and error reply is Authlib's
code; this file supplies the storage and the HTTP glue.

Rotation is modelled on servers with a grace period (Okta, Auth0): the
old refresh token stays valid until the new pair is first used (its
access token at the relay or its refresh token here); then the old one is
revoked.  So a client that crashes before storing the new refresh token,
and never used the new access token, can still refresh with the old one;
a client that used the new access token before storing it is stuck.

``check_access_token(token)`` is what the fake relay asks
(``Relay.oauth_check``): issued here, not expired, not revoked.  On a
token's first use it calls ``on_first_use(access, refresh)`` (for the test
to see what the client had stored by then).  ``access_lifetime`` sets
the lifetime of new access tokens (seconds); ``revoke_all()`` revokes
every token (consent withdrawn: refresh then fails with invalid_grant);
``before_refresh_response(old, token)`` runs before a refresh response is
sent and ``refresh_sent`` is set after; ``pad_token_response`` = N pads
every /token answer with N bytes (an endpoint that answers too much).  ``refreshes`` counts refresh
grants that succeeded, ``refresh_attempts`` all of them.
"""

from __future__ import annotations

import http.server
import json
import secrets
import ssl
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable
from urllib.parse import parse_qs, urlsplit

import trustme
from authlib.oauth2 import AuthorizationServer
from authlib.oauth2.rfc6749 import OAuth2Request, grants
from authlib.oauth2.rfc6749.requests import BasicOAuth2Payload
from authlib.oauth2.rfc6750 import BearerTokenGenerator
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oauth2.rfc8628 import DeviceAuthorizationEndpoint, DeviceCodeGrant

CLIENT_ID = "pysendmail-test-client"
SCOPE = "mail:smtp offline_access"
USER = "robot@example.org"


@dataclass
class Client:
    client_id: str
    secret: str | None = None
    redirect_uris: tuple[str, ...] = ("http://localhost",)

    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> str:
        return self.redirect_uris[0]

    def get_allowed_scope(self, scope: str) -> str:
        return scope

    def check_redirect_uri(self, uri: str) -> bool:
        return uri in self.redirect_uris

    def check_client_secret(self, secret: str) -> bool:
        return self.secret is not None and secrets.compare_digest(secret, self.secret)

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return method == ("none" if self.secret is None else "client_secret_post")

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code"

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type in ("authorization_code", "refresh_token", DeviceCodeGrant.GRANT_TYPE)


@dataclass
class Token:
    client_id: str
    user: str
    scope: str
    access_token: str
    refresh_token: str | None
    expires_at: float
    revoked: bool = False
    used: bool = False
    predecessor: str | None = None  # the refresh token this pair rotated

    def check_client(self, client: Client) -> bool:
        return client.client_id == self.client_id

    def get_scope(self) -> str:
        return self.scope

    def get_expires_in(self) -> int:
        return int(self.expires_at - time.time())

    def is_expired(self) -> bool:
        return time.time() >= self.expires_at

    def is_revoked(self) -> bool:
        return self.revoked

    def get_user(self) -> str:
        return self.user


@dataclass
class AuthCode:
    code: str
    client_id: str
    redirect_uri: str
    scope: str
    user: str
    code_challenge: str | None
    code_challenge_method: str | None

    def get_redirect_uri(self) -> str:
        return self.redirect_uri

    def get_scope(self) -> str:
        return self.scope


@dataclass
class DeviceCredential:
    client_id: str
    scope: str
    device_code: str
    user_code: str
    expires_at: float

    def get_client_id(self) -> str:
        return self.client_id

    def get_scope(self) -> str:
        return self.scope

    def get_user_code(self) -> str:
        return self.user_code

    def is_expired(self) -> bool:
        return time.time() >= self.expires_at


class _Request(OAuth2Request):
    """An OAuth2Request from our HTTP handler's method, URL, headers and form."""

    def __init__(self, method: str, uri: str, headers: dict[str, str], form: dict[str, str]) -> None:
        super().__init__(method, uri, headers=headers)
        query = {k: v[0] for k, v in parse_qs(urlsplit(uri).query).items()}
        self._args, self._form = query, form
        self.payload = BasicOAuth2Payload({**query, **form})

    @property
    def args(self) -> dict[str, str]:
        return self._args

    @property
    def form(self) -> dict[str, str]:
        return self._form


@dataclass
class Response:
    status: int
    body: Any
    headers: list[tuple[str, str]] = field(default_factory=list)


class OAuthServer:
    def __init__(self, tmpdir: Path, client_secret: str | None = None) -> None:
        self.lock = threading.RLock()
        self.clients = {CLIENT_ID: Client(CLIENT_ID, client_secret)}
        self.tokens: dict[str, Token] = {}  # by access token
        self.by_refresh: dict[str, Token] = {}
        self.codes: dict[str, AuthCode] = {}
        self.devices: dict[str, DeviceCredential] = {}
        self.approved: set[str] = set()  # user codes the user approved
        self.access_lifetime = 3600
        self.refreshes = 0
        self.refresh_attempts = 0
        self.device_logins = 0
        self.code_logins = 0
        self.on_first_use: Callable[[str, str | None], None] | None = None
        self.before_refresh_response: Callable[[str, dict[str, Any]], None] | None = None
        self.refresh_sent = threading.Event()
        self.rejected: list[str] = []  # why check_access_token refused, in order
        self.pad_token_response = 0  # bytes of padding added to every /token answer (a hostile endpoint)
        self.server = self._authorization_server()
        self.ca = trustme.CA()
        self.ca_file = tmpdir / f"oauth-ca-{id(self)}.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        cert = self.ca.issue_cert("127.0.0.1", "localhost")
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        cert.configure_cert(ctx)
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.base = f"https://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    # ------------------------------------------------------------ URLs
    @property
    def token_url(self) -> str:
        return self.base + "/token"

    @property
    def device_url(self) -> str:
        return self.base + "/device/code"

    @property
    def authorize_url(self) -> str:
        return self.base + "/authorize"

    def start(self) -> OAuthServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    # ------------------------------------------------------------ for tests and the relay
    def check_access_token(self, access: str) -> bool:
        """What the relay asks: issued here, not expired, not revoked (and the first use retires the predecessor)."""
        with self.lock:
            token = self.tokens.get(access)
            if token is None:
                self.rejected.append("unknown")
                return False
            if token.revoked:
                self.rejected.append("revoked")
                return False
            if token.is_expired():
                self.rejected.append("expired")
                return False
            if not token.used:
                self._first_use(token, at_relay=True)
            return True

    def _first_use(self, token: Token, at_relay: bool = False) -> None:
        token.used = True
        if token.predecessor and token.predecessor in self.by_refresh:
            self.by_refresh[token.predecessor].revoked = True  # the grace period ends
        if at_relay and self.on_first_use is not None:
            self.on_first_use(token.access_token, token.refresh_token)

    def revoke_all(self) -> None:
        with self.lock:
            for token in self.tokens.values():
                token.revoked = True

    def expire_access_tokens(self) -> None:
        """Every access token expires now (as a server restart or revoked sessions do); refresh tokens stay valid."""
        with self.lock:
            for token in self.tokens.values():
                token.expires_at = 0.0

    def approve(self, user_code: str) -> None:
        with self.lock:
            self.approved.add(user_code)

    def refresh_token_state(self, refresh: str) -> str:
        with self.lock:
            token = self.by_refresh.get(refresh)
            return "unknown" if token is None else "revoked" if token.revoked else "valid"

    # ------------------------------------------------------------ Authlib's server
    def _authorization_server(self) -> AuthorizationServer:
        outer = self

        class Server(AuthorizationServer):  # type: ignore[misc]
            def query_client(self, client_id: str) -> Client | None:
                return outer.clients.get(client_id)

            def save_token(self, token: dict[str, Any], request: OAuth2Request) -> None:
                outer._save_token(token, request)

            def create_oauth2_request(self, request: _Request) -> _Request:
                return request

            def create_json_request(self, request: _Request) -> _Request:
                return request

            def handle_response(self, status: int, body: Any, headers: Any) -> Response:
                return Response(status, body, list(headers.items()) if isinstance(headers, dict) else list(headers))

            def send_signal(self, name: str, *args: object, **kw: object) -> None:
                pass

        server = Server(scopes_supported=None)
        server.register_token_generator("default", BearerTokenGenerator(
            lambda *a, **k: "at-" + secrets.token_urlsafe(24),
            lambda *a, **k: "rt-" + secrets.token_urlsafe(24),
            lambda client, grant_type: outer.access_lifetime,
        ))

        class CodeGrant(grants.AuthorizationCodeGrant):  # type: ignore[misc]
            TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_post", "none"]

            def save_authorization_code(self, code: str, request: OAuth2Request) -> None:
                data = request.payload.data
                outer.codes[code] = AuthCode(code, request.client.client_id, data.get("redirect_uri"),
                                             data.get("scope", ""), USER, data.get("code_challenge"),
                                             data.get("code_challenge_method"))

            def query_authorization_code(self, code: str, client: Client) -> AuthCode | None:
                found = outer.codes.get(code)
                return found if found and found.client_id == client.client_id else None

            def delete_authorization_code(self, code: AuthCode) -> None:
                outer.codes.pop(code.code, None)

            def authenticate_user(self, code: AuthCode) -> str:
                outer.code_logins += 1
                return code.user

        class RefreshGrant(grants.RefreshTokenGrant):  # type: ignore[misc]
            TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_post", "none"]
            INCLUDE_NEW_REFRESH_TOKEN = True  # rotation

            def authenticate_refresh_token(self, refresh: str) -> Token | None:
                outer.refresh_attempts += 1
                token = outer.by_refresh.get(refresh)
                if token is None or token.revoked:
                    return None  # Authlib answers invalid_grant
                return token

            def authenticate_user(self, token: Token) -> str:
                return token.user

            def revoke_old_credential(self, token: Token) -> None:
                outer.refreshes += 1  # the rotation itself is _save_token's (grace period)

        class DeviceGrant(DeviceCodeGrant):  # type: ignore[misc]
            def query_device_credential(self, device_code: str) -> DeviceCredential | None:
                return outer.devices.get(device_code)

            def query_user_grant(self, user_code: str) -> tuple[str, bool] | None:
                return (USER, True) if user_code in outer.approved else None

            def should_slow_down(self, credential: DeviceCredential) -> bool:
                return False

            def create_token_response(self) -> Any:
                outer.device_logins += 1
                return super().create_token_response()

        class DeviceEndpoint(DeviceAuthorizationEndpoint):  # type: ignore[misc]
            INTERVAL = 1
            EXPIRES_IN = 600

            def get_verification_uri(self) -> str:
                return outer.base + "/device"

            def save_device_credential(self, client_id: str, scope: str, data: dict[str, Any]) -> None:
                outer.devices[data["device_code"]] = DeviceCredential(
                    client_id, scope or "", data["device_code"], data["user_code"], time.time() + data["expires_in"])

        server.register_grant(CodeGrant, [CodeChallenge(required=True)])
        server.register_grant(RefreshGrant)
        server.register_grant(DeviceGrant)
        server.register_endpoint(DeviceEndpoint)
        return server

    def _save_token(self, token: dict[str, Any], request: OAuth2Request) -> None:
        old = request.refresh_token if isinstance(request.refresh_token, Token) else None
        new = Token(request.client.client_id, str(request.user), str(token.get("scope") or ""),
                    token["access_token"], token.get("refresh_token"), time.time() + float(token["expires_in"]),
                    predecessor=old.refresh_token if old else None)
        if old is not None:
            # An earlier rotation of the same refresh token that was never
            # used is abandoned: the client cannot have stored it.
            for other in self.tokens.values():
                if other.predecessor == old.refresh_token and not other.used:
                    other.revoked = True
            if not old.used:
                self._first_use(old)  # its refresh token is used: the pair before it retires
        self.tokens[new.access_token] = new
        if new.refresh_token:
            self.by_refresh[new.refresh_token] = new

    # ------------------------------------------------------------ HTTP glue
    def _handle(self, method: str, path: str, headers: dict[str, str], form: dict[str, str]) -> Response:
        uri = self.base + path
        route = urlsplit(path).path
        with self.lock:
            request = _Request(method, uri, headers, form)
            if route == "/token" and method == "POST":
                grant_type = form.get("grant_type")
                response: Response = self.server.create_token_response(request)
                if grant_type == "refresh_token" and response.status == 200 and self.before_refresh_response:
                    self.before_refresh_response(form.get("refresh_token", ""), response.body)
                return response
            if route == "/device/code" and method == "POST":
                return self.server.create_endpoint_response("device_authorization", request)  # type: ignore[no-any-return]
            if route == "/device" and method == "GET":
                code = request.args.get("user_code", "")
                if not any(d.user_code == code for d in self.devices.values()):
                    return Response(404, {"error": "unknown code"})
                self.approve(code)
                return Response(200, {"approved": code})
            if route == "/authorize" and method == "GET":
                grant = self.server.get_consent_grant(request, end_user=USER)
                return self.server.create_authorization_response(request, grant_user=USER,  # type: ignore[no-any-return]
                                                                 grant=grant)
        return Response(404, {"error": "not found"})

    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass

            def _serve(self, method: str) -> None:
                form: dict[str, str] = {}
                if method == "POST":
                    length = int(self.headers.get("Content-Length") or 0)
                    raw = self.rfile.read(length).decode()
                    form = {k: v[0] for k, v in parse_qs(raw).items()}
                try:
                    response = outer._handle(method, self.path, dict(self.headers.items()), form)
                except Exception as exc:  # the test sees a 500, never a hang
                    response = Response(500, {"error": "server_error", "error_description": repr(exc)})
                body = response.body if isinstance(response.body, (str, bytes)) else json.dumps(response.body)
                if self.path.startswith("/token") and outer.pad_token_response and isinstance(response.body, dict):
                    body = json.dumps({**response.body, "padding": "x" * outer.pad_token_response})
                data = body.encode() if isinstance(body, str) else body
                self.send_response(response.status)
                headers = dict(response.headers)
                headers.setdefault("Content-Type", "application/json")
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                self.wfile.flush()
                if self.path.startswith("/token") and form.get("grant_type") == "refresh_token":
                    outer.refresh_sent.set()

            def do_GET(self) -> None:
                self._serve("GET")

            def do_POST(self) -> None:
                self._serve("POST")

        return Handler
