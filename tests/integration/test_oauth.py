"""auth = "oauth2" end to end: a real authorization server, a real relay, real processes.

The authorization server is tests/fakes/oauth_server.py: Authlib's own
server grants (device authorization, authorization code with PKCE,
refresh with rotation) over HTTPS on loopback, its trustme CA given to
pysendmail through REQUESTS_CA_BUNDLE (TLS verified, never disabled).
The relay (tests/fakes/relay.py) accepts XOAUTH2/OAUTHBEARER only with an
access token that server issued and that has neither expired nor been
revoked.  ``pysendmail oauth login`` runs as a subprocess and the test
plays the user: it opens the printed page with the printed code (or, for
PKCE, the printed address) over HTTPS.  Daemons are real ``pysendmail
daemon`` processes; the crash is a real SIGKILL.  No test times anything;
short token lifetimes are waited out on the server's own expiry.
"""

from __future__ import annotations

import json
import os
import pwd
import signal
import stat
import subprocess
from pathlib import Path
from typing import Any, Iterator

import pytest
import requests

from tests.conftest import Env, ensure_user, needs_root, program, wait_until, write_config
from tests.fakes.oauth_server import CLIENT_ID, SCOPE, OAuthServer
from tests.fakes.relay import USER, Relay
from tests.integration.test_daemon import Daemon, daemons  # noqa: F401 (daemons: the fixture)

SENDER = "alice@example.org"


# ------------------------------------------------------------------ helpers
@pytest.fixture
def oauth_server(tmp_path: Path) -> Iterator[OAuthServer]:
    server = OAuthServer(tmp_path).start()
    yield server
    server.stop()


def oauth_table(relay: Relay, server: OAuthServer, *, device: bool = True, extra: str = "") -> str:
    """A custom relay with auth = "oauth2" pointed at the fake authorization server."""
    endpoint = (f'oauth_device_url = "{server.device_url}"\n' if device
                else f'oauth_authorize_url = "{server.authorize_url}"\n')
    return (
        f'[relay]\nprovider = "custom"\nhost = "localhost"\nport = {relay.port}\ntls = "implicit"\n'
        f'username = "{USER}"\nauth = "oauth2"\noauth_client_id = "{CLIENT_ID}"\noauth_scope = "{SCOPE}"\n'
        f'oauth_token_url = "{server.token_url}"\n{endpoint}ca_file = "{relay.ca_file}"\ntimeout = 10\n'
        # A connection idle for a second is closed, so each message after a
        # pause logs in again (with whatever token the daemon holds then).
        f'idle_timeout = 1\n{extra}\n'
    )


def oauth_env(root: Path, relay: Relay, server: OAuthServer, **kw: Any) -> Env:
    e = write_config(root, oauth_table(relay, server, **kw))
    e.extra_env["REQUESTS_CA_BUNDLE"] = str(server.ca_file)
    e.run("pysendmail", "spool", "init", check=True)
    return e


def token_file(e: Env, name: str = "default") -> Path:
    return e.spool / "state" / "oauth" / f"{name}.json"


def stored(e: Env) -> dict[str, Any]:
    return json.loads(token_file(e).read_text())


def submit(e: Env, subject: str) -> None:
    message = f"To: someone@example.net\nSubject: {subject}\n\nhello\n".encode()
    proc = e.sendmail("-i", "-f", SENDER, "someone@example.net", input=message)
    assert proc.returncode == 0, proc.stderr.decode()


def subjects(relay: Relay) -> list[str]:
    return [m.data.split(b"Subject: ", 1)[1].split(b"\r\n", 1)[0].decode() for m in relay.messages]


def login(e: Env, server: OAuthServer, *args: str, user: str | None = None,
          cmd: list[str] | None = None) -> tuple[int, str, str]:
    """``pysendmail oauth login`` (or ``cmd``) as a subprocess; the test approves the printed code."""
    argv = cmd or [program("pysendmail"), "oauth", "login", *args]
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=e.environ, text=True)
    assert proc.stdout is not None
    lines: list[str] = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("Waiting for you to approve"):
                break
        text = "".join(lines)
        assert "open\n" in text and "enter the code\n" in text, text + proc.stderr.read()  # type: ignore[union-attr]
        page = text.split("open\n", 1)[1].split("\n", 1)[0].strip()
        code = text.split("enter the code\n", 1)[1].split("\n", 1)[0].strip()
        # The user opens the page on another device and types the code.
        answer = requests.get(page, params=None if "user_code=" in page else {"user_code": code},
                              verify=str(server.ca_file), timeout=10)
        assert answer.status_code == 200 and answer.json() == {"approved": code}
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, "".join(lines) + out, err


def secrets_in(server: OAuthServer) -> list[str]:
    with server.lock:
        return [t.access_token for t in server.tokens.values()] + [t.refresh_token for t in server.tokens.values()
                                                                    if t.refresh_token]


def mailq(e: Env) -> list[dict[str, Any]]:
    proc = e.run("pysendmail", "mailq", "--json", check=True)
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


# ------------------------------------------------------------------ login and delivery
def test_device_login_stores_refresh_token_privately_and_daemon_delivers(
        tmp_path: Path, relay_factory, oauth_server: OAuthServer, daemons) -> None:
    relay = relay_factory("implicit", oauth=("XOAUTH2", "OAUTHBEARER"))
    relay.oauth_check = oauth_server.check_access_token
    e = oauth_env(tmp_path, relay, oauth_server)

    code, out, err = login(e, oauth_server)

    assert code == 0, err
    assert oauth_server.device_logins == 1
    path = token_file(e)
    st = os.stat(path)
    assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == os.geteuid()
    data = stored(e)
    assert data["refresh_token"] in oauth_server.by_refresh and "access_token" not in data
    assert f"refresh token stored in {path}" in out and "token valid until" in out
    assert not [s for s in secrets_in(oauth_server) if s in out + err]

    d = daemons(e)
    submit(e, "oauth one")
    relay.wait_for(1)
    d.stop()

    assert subjects(relay) == ["oauth one"]
    assert relay.oauth_logins == [("OAUTHBEARER", True)]
    assert oauth_server.rejected == []
    assert not [s for s in secrets_in(oauth_server) if s in d.log()]


def test_pkce_login_takes_the_pasted_redirect_address(tmp_path: Path, relay_factory,
                                                      oauth_server: OAuthServer) -> None:
    relay = relay_factory("implicit", oauth=("XOAUTH2",))
    relay.oauth_check = oauth_server.check_access_token
    e = oauth_env(tmp_path, relay, oauth_server, device=False)
    proc = subprocess.Popen([program("pysendmail"), "oauth", "login"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=e.environ, text=True)
    assert proc.stdout is not None and proc.stdin is not None
    lines = [proc.stdout.readline() for _ in range(2)]
    url = lines[1].strip()
    assert url.startswith(oauth_server.authorize_url) and "code_challenge_method=S256" in url

    # The browser: the user signs in, the server redirects to http://localhost?code=...
    answer = requests.get(url, verify=str(oauth_server.ca_file), allow_redirects=False, timeout=10)
    assert answer.status_code == 302
    out, err = proc.communicate(answer.headers["Location"] + "\n", timeout=60)

    assert proc.returncode == 0, err
    assert oauth_server.code_logins == 1 and stored(e)["refresh_token"] in oauth_server.by_refresh
    assert run_queue_delivers(e, relay)


def run_queue_delivers(e: Env, relay: Relay) -> bool:
    submit(e, "after pkce")
    proc = e.run("sendmail", "-q")
    return proc.returncode == 0 and subjects(relay) == ["after pkce"] and relay.oauth_logins == [("XOAUTH2", True)]


def test_pkce_login_refuses_an_address_from_another_attempt(tmp_path: Path, relay_factory,
                                                            oauth_server: OAuthServer) -> None:
    relay = relay_factory("implicit", oauth=("XOAUTH2",))
    e = oauth_env(tmp_path, relay, oauth_server, device=False)

    proc = e.run("pysendmail", "oauth", "login", input=b"http://localhost/?code=stolen&state=not-this-one\n")

    assert proc.returncode == 75
    assert "another login attempt (state differs)" in proc.stderr.decode()
    assert not token_file(e).exists() and oauth_server.code_logins == 0


def signed_in(tmp_path: Path, relay_factory, oauth_server: OAuthServer,
              mechanism: str = "XOAUTH2") -> tuple[Relay, Env]:
    """A relay that takes only the server's live tokens, and a config signed in to it by the device flow."""
    relay = relay_factory("implicit", oauth=(mechanism,))
    relay.oauth_check = oauth_server.check_access_token
    e = oauth_env(tmp_path, relay, oauth_server)
    assert login(e, oauth_server)[0] == 0
    return relay, e


# ------------------------------------------------------------------ refresh in the running daemon
def test_expired_access_token_is_refreshed_by_the_running_daemon_and_stored_before_use(
        tmp_path: Path, relay_factory, oauth_server: OAuthServer, daemons) -> None:
    oauth_server.access_lifetime = 2
    relay, e = signed_in(tmp_path, relay_factory, oauth_server, "OAUTHBEARER")
    seen: list[tuple[str | None, str | None]] = []  # (stored refresh token, the pair's) at first use

    def first_use(access: str, refresh: str | None) -> None:
        seen.append((stored(e)["refresh_token"], refresh))

    oauth_server.on_first_use = first_use

    d = daemons(e)
    submit(e, "first")
    relay.wait_for(1)
    with oauth_server.lock:
        used = [t for t in oauth_server.tokens.values() if t.used and t.expires_at]
    wait_until(lambda: all(t.is_expired() for t in used), "the first access token to expire", timeout=10)
    submit(e, "second")
    relay.wait_for(2)
    d.stop()

    assert subjects(relay) == ["first", "second"]
    assert relay.oauth_logins == [("OAUTHBEARER", True), ("OAUTHBEARER", True)]
    assert oauth_server.rejected == []  # never an expired token offered
    assert oauth_server.refreshes == 2
    # Each rotated refresh token was in the file before its access token reached the relay.
    assert len(seen) == 2 and all(file == pair for file, pair in seen), seen
    assert stored(e)["refresh_token"] == seen[-1][1]


def delivering_with_a_token(tmp_path: Path, relay_factory, oauth_server: OAuthServer,
                            daemons) -> tuple[Relay, Env, Daemon]:
    """Signed in, a daemon running, and a first message delivered with the server's token."""
    relay, e = signed_in(tmp_path, relay_factory, oauth_server)
    d = daemons(e)
    submit(e, "one")
    relay.wait_for(1)
    return relay, e, d


def test_refused_token_is_refreshed_once_and_retried_on_the_same_session(
        tmp_path: Path, relay_factory, oauth_server: OAuthServer, daemons) -> None:
    relay, e, d = delivering_with_a_token(tmp_path, relay_factory, oauth_server, daemons)
    before = oauth_server.refreshes
    oauth_server.expire_access_tokens()  # the daemon's copy still looks valid to it

    # The idle connection is closed after a second (QUIT): the next message logs in anew.
    assert relay.quitting.wait(20)
    submit(e, "two")
    relay.wait_for(2)
    d.stop()

    assert relay.oauth_logins[-2:] == [("XOAUTH2", False), ("XOAUTH2", True)]
    assert oauth_server.refreshes == before + 1
    assert "OAuth2 token refused (535); refreshing it once" in d.log()


def test_token_refused_again_after_refresh_holds_without_a_second_refresh(
        tmp_path: Path, relay_factory, oauth_server: OAuthServer, daemons) -> None:
    relay, e, d = delivering_with_a_token(tmp_path, relay_factory, oauth_server, daemons)
    attempts = oauth_server.refresh_attempts
    relay.oauth_check = lambda token: False  # the relay refuses every token from now on
    assert relay.quitting.wait(20)

    submit(e, "two")
    wait_until(lambda: "AUTHENTICATION FAILED" in d.log(), "the route to be held")
    d.stop()

    assert relay.oauth_logins[1:] == [("XOAUTH2", False), ("XOAUTH2", False)]
    assert oauth_server.refresh_attempts == attempts + 1  # one per failure, no loop
    assert len(mailq(e)) == 1
    assert "status=bounced" not in d.log()


def test_oversized_token_answer_defers_and_shows_refresh_failing_since(
        tmp_path: Path, relay_factory, oauth_server: OAuthServer) -> None:
    relay, e = signed_in(tmp_path, relay_factory, oauth_server)
    kept = stored(e)["refresh_token"]
    oauth_server.pad_token_response = 3 << 20  # more than the 1 MiB pysendmail reads
    submit(e, "waits")

    stderr = e.run("sendmail", "-q").stderr.decode()

    assert "answered more than 1048576 bytes" in stderr and "status=bounced" not in stderr
    assert relay.oauth_logins == [] and len(mailq(e)) == 1
    data = stored(e)
    assert data["refresh_token"] == kept and isinstance(data["refresh_failing_since"], float)
    check = e.run("pysendmail", "config", "check", "-v")
    assert check.returncode == 0 and "WARN" in check.stdout.decode()
    assert "OAuth2 refresh failing since" in check.stdout.decode(), check.stdout.decode()

    oauth_server.pad_token_response = 0
    e.run("sendmail", "-q")
    assert subjects(relay) == ["waits"] and stored(e)["refresh_failing_since"] is None


# ------------------------------------------------------------------ crash
def test_rotation_survives_kill_9_between_token_response_and_file_write(
        tmp_path: Path, relay_factory, oauth_server: OAuthServer, daemons) -> None:
    oauth_server.access_lifetime = 2
    relay, e = signed_in(tmp_path, relay_factory, oauth_server, "OAUTHBEARER")
    d = daemons(e)
    submit(e, "before the crash")
    relay.wait_for(1)
    kept = stored(e)["refresh_token"]
    issued: list[str] = []

    def freeze(old: str, token: dict[str, Any]) -> None:
        # The response is about to be sent: stop the daemon so that it can
        # neither read it nor write the file; SIGKILL follows.
        issued.append(token["refresh_token"])
        os.kill(d.pid, signal.SIGSTOP)

    oauth_server.before_refresh_response = freeze
    oauth_server.refresh_sent.clear()
    with oauth_server.lock:
        used = [t for t in oauth_server.tokens.values() if t.used]
    wait_until(lambda: all(t.is_expired() for t in used), "the access token to expire", timeout=10)
    submit(e, "after the crash")
    assert oauth_server.refresh_sent.wait(30), d.log()
    d.kill()

    assert issued and issued[0] != kept
    assert stored(e)["refresh_token"] == kept  # the rotated token never reached the file
    assert subjects(relay) == ["before the crash"]

    oauth_server.before_refresh_response = None
    d2 = daemons(e)
    relay.wait_for(2)
    d2.stop()

    assert subjects(relay) == ["before the crash", "after the crash"]
    now = stored(e)["refresh_token"]
    assert now not in (kept, issued[0]) and oauth_server.refresh_token_state(now) == "valid"
    assert oauth_server.refresh_token_state(issued[0]) == "revoked"  # abandoned, never stored
    assert mailq(e) == []


# ------------------------------------------------------------------ revocation
def test_revoked_login_holds_route_with_hint_then_new_login_delivers_nothing_lost(
        tmp_path: Path, relay_factory, oauth_server: OAuthServer, daemons) -> None:
    relay, e = signed_in(tmp_path, relay_factory, oauth_server)
    d = daemons(e)
    submit(e, "one")
    relay.wait_for(1)

    oauth_server.revoke_all()  # consent withdrawn: access and refresh tokens die
    assert relay.quitting.wait(20)
    submit(e, "two")
    submit(e, "three")
    wait_until(lambda: "AUTHENTICATION FAILED" in d.log(), "the route to be held")

    log = d.log()
    assert "invalid_grant" in log and "run 'pysendmail oauth login --relay default'" in log
    assert "status=bounced" not in log and len(mailq(e)) == 2
    status = e.run("pysendmail", "status").stdout.decode()
    assert "login needed" in status and "pysendmail oauth login --relay default" in status, status
    routes = e.run("pysendmail", "route", "list").stdout.decode()
    assert "route default: " in routes and ": held until " in routes, routes
    assert "  oauth2: login needed (invalid_grant" in routes and "oauth login --relay default" in routes, routes
    listed = json.loads(e.run("pysendmail", "route", "list", "--json").stdout)
    assert [(r["state"], r["oauth2"]) for r in listed] == [("held", "login-needed")]
    check = e.run("pysendmail", "config", "check")
    assert check.returncode == 78 and "OAuth2 login needed" in check.stdout.decode()

    code, out, err = login(e, oauth_server)

    assert code == 0, err
    assert "resumed in the running daemon" in out, out
    relay.wait_for(3)
    d.stop()
    assert sorted(subjects(relay)) == ["one", "three", "two"]
    assert mailq(e) == [] and not os.listdir(e.spool / "failed")
    assert e.run("pysendmail", "config", "check").returncode == 0
    assert "  oauth2:      token valid until " in e.run("pysendmail", "status").stdout.decode()
    assert json.loads(e.run("pysendmail", "route", "list", "--json").stdout)[0]["oauth2"] == "ok"


# ------------------------------------------------------------------ system mode
@needs_root
def test_token_file_is_0600_and_owned_by_the_daemon_user_in_system_mode(
        world_dir: Path, relay_factory, oauth_server: OAuthServer) -> None:
    ensure_user("psm-daemon")
    daemon = pwd.getpwnam("psm-daemon")
    relay = relay_factory("implicit", oauth=("XOAUTH2",))
    relay.oauth_check = oauth_server.check_access_token
    # The daemon's user reads both CAs: copies where it can reach them (tmp_path is root's alone).
    relay_ca, oauth_ca = world_dir / "relay-ca.pem", world_dir / "oauth-ca.pem"
    for src, dst in ((relay.ca_file, relay_ca), (oauth_server.ca_file, oauth_ca)):
        dst.write_bytes(src.read_bytes())
        dst.chmod(0o644)
    table = oauth_table(relay, oauth_server).replace(str(relay.ca_file), str(relay_ca))
    e = write_config(world_dir, table, spool=world_dir / "spool")
    e.config.write_text(e.config.read_text().replace("[spool]\n", '[spool]\nuser = "psm-daemon"\n', 1))
    e.config.chmod(0o644)
    e.extra_env["REQUESTS_CA_BUNDLE"] = str(oauth_ca)
    e.maildir.mkdir(mode=0o700)
    os.chown(e.maildir, daemon.pw_uid, daemon.pw_gid)
    e.run("pysendmail", "spool", "init", check=True)

    code, _, err = login(e, oauth_server)  # as root

    assert code == 0, err
    path = token_file(e)
    for p, mode in ((path, 0o600), (path.parent, 0o700)):
        st = os.lstat(p)
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (daemon.pw_uid, daemon.pw_gid, mode), p
    first = stored(e)["refresh_token"]

    submit(e, "system mode")
    assert e.run("sendmail", "-q").returncode == 0  # root drops to psm-daemon, which refreshes

    assert subjects(relay) == ["system mode"]
    st = os.lstat(path)
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (daemon.pw_uid, 0o600)
    assert stored(e)["refresh_token"] != first  # rotated, and written as the daemon's user
    assert not [n for n in os.listdir(path.parent) if n.endswith(".tmp")]


# ------------------------------------------------------------------ setup and config
def test_setup_oauth_writes_the_config_and_runs_the_login(tmp_path: Path, relay_factory,
                                                          oauth_server: OAuthServer) -> None:
    relay = relay_factory("implicit", oauth=("XOAUTH2",))
    relay.oauth_check = oauth_server.check_access_token
    e = Env(tmp_path, tmp_path / "conf" / "pysendmail.toml", tmp_path / "spool", tmp_path / "Maildir",
            tmp_path / "aliases", {"REQUESTS_CA_BUNDLE": str(oauth_server.ca_file)})
    cmd = [program("pysendmail"), "setup", "--user-mode", "--provider", "custom", "--host", "localhost",
           "--port", str(relay.port), "--tls", "implicit", "--ca-file", str(relay.ca_file), "--user", USER,
           "--spool", str(e.spool), "--oauth", "--client-id", CLIENT_ID, "--oauth-scope", SCOPE,
           "--oauth-token-url", oauth_server.token_url, "--oauth-device-url", oauth_server.device_url]

    code, out, err = login(e, oauth_server, cmd=cmd)

    assert code == 0, err
    text = e.config.read_text()
    assert 'auth = "oauth2"' in text and "password_file" not in text and f'oauth_client_id = "{CLIENT_ID}"' in text
    assert stored(e)["refresh_token"] in oauth_server.by_refresh
    check = e.run("pysendmail", "config", "check", "-v")
    assert check.returncode == 0 and "OAuth2 token valid until" in check.stdout.decode(), check.stdout.decode()


@pytest.mark.parametrize("table, key", [
    ('auth = "oauth2"\n', "oauth_client_id"),
    ('auth = "oauth2"\noauth_client_id = "x"\noauth_scope = "s"\noauth_token_url = "http://127.0.0.1/token"\n'
     'oauth_device_url = "https://127.0.0.1/device"\n', "must be an https:// address"),
    ('auth = "oauth2"\noauth_client_id = "x"\noauth_scope = "s"\noauth_token_url = "https://127.0.0.1/t"\n',
     "oauth_device_url or oauth_authorize_url"),
])
def test_config_check_names_the_missing_or_unsafe_oauth_key(tmp_path: Path, table: str, key: str) -> None:
    e = write_config(tmp_path, '[relay]\nprovider = "custom"\nhost = "localhost"\nport = 465\n'
                               f'username = "{USER}"\n{table}')
    e.run("pysendmail", "spool", "init", check=True)

    proc = e.run("pysendmail", "config", "check")

    assert proc.returncode == 78 and key in proc.stderr.decode(), proc.stderr.decode()


def test_login_for_a_relay_without_oauth2_exits_78(env: Env, tmp_path: Path) -> None:
    env.config.write_text(env.config.read_text() + '[relay]\nhost = "localhost"\nusername = "u"\n'
                                                   'password_file = "/nonexistent"\n\n[relay.other]\n'
                                                   'host = "localhost"\n')
    proc = env.run("pysendmail", "oauth", "login", "--relay", "other")
    assert proc.returncode == 78 and "does not have auth = \"oauth2\"" in proc.stderr.decode()
    proc = env.run("pysendmail", "oauth", "login", "--relay", "nosuch")
    assert proc.returncode == 64 and "no relay named 'nosuch'" in proc.stderr.decode()
