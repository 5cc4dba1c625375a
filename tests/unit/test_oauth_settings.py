"""daemon/oauth.py's settings: the provider table, the relay's own keys over it, what is refused.

The flows themselves run against a real authorization server in
tests/integration/test_oauth.py; here only the resolution of a [relay]
table into endpoints, scope, flow and token file.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pysendmail.core import config
from pysendmail.core.errors import ConfigError
from pysendmail.daemon import oauth, routes


def relay_settings(tmp_path: Path, table: str, name: str = "default") -> oauth.OAuthSettings | None:
    path = tmp_path / "pysendmail.toml"
    path.write_text(f'[spool]\npath = "{tmp_path / "spool"}"\n\n' + table)
    path.chmod(0o600)
    cfg = config.load(str(path))
    s = routes.resolve(cfg).relays[name]
    return oauth.settings(s.values, s.where, name, s.provider)


def test_outlook_preset_puts_the_tenant_into_microsofts_endpoints(tmp_path: Path) -> None:
    s = relay_settings(tmp_path, '[relay]\nprovider = "outlook"\nusername = "a@example.org"\nauth = "oauth2"\n'
                                 'oauth_client_id = "cid"\noauth_tenant = "contoso.onmicrosoft.com"\n')
    assert s is not None
    base = "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/"
    assert (s.token_url, s.device_url, s.authorize_url) == (base + "token", base + "devicecode", base + "authorize")
    assert s.scope == "https://outlook.office.com/SMTP.Send offline_access"
    assert (s.flow, s.mechanism, s.device_grant[0]) == ("device", "xoauth2", oauth.DEVICE_GRANT)
    assert s.token_file == str(tmp_path / "spool" / "state" / "oauth" / "default.json")


def test_outlook_without_tenant_uses_organizations(tmp_path: Path) -> None:
    s = relay_settings(tmp_path, '[relay]\nprovider = "outlook"\nusername = "a@example.org"\nauth = "oauth2"\n'
                                 'oauth_client_id = "cid"\n')
    assert s is not None and "/organizations/oauth2/v2.0/token" in s.token_url


def test_gmail_runs_pkce_because_googles_device_flow_refuses_the_mail_scope(tmp_path: Path) -> None:
    s = relay_settings(tmp_path, '[relay]\nprovider = "gmail"\nusername = "a@gmail.com"\nauth = "oauth2"\n'
                                 'oauth_client_id = "cid"\n')
    assert s is not None
    assert (s.flow, s.device_url, s.authorize_url) == ("pkce", None, "https://accounts.google.com/o/oauth2/v2/auth")
    assert (s.token_url, s.scope) == ("https://oauth2.googleapis.com/token", "https://mail.google.com/")


def test_yandex_device_flow_uses_yandexs_own_grant_form(tmp_path: Path) -> None:
    s = relay_settings(tmp_path, '[relay.ya]\nprovider = "yandex"\nusername = "a@yandex.ru"\nauth = "oauth2"\n'
                                 'oauth_client_id = "cid"\n', name="ya")
    assert s is not None
    assert (s.device_url, s.token_url, s.scope) == ("https://oauth.yandex.ru/device/code",
                                                    "https://oauth.yandex.ru/token", "mail:smtp")
    assert s.device_grant == ("device_code", "code") and s.login_hint == "run 'pysendmail oauth login --relay ya'"
    assert s.token_file.endswith("/state/oauth/ya.json")


def test_relay_keys_override_the_preset(tmp_path: Path) -> None:
    s = relay_settings(tmp_path, '[relay]\nprovider = "yandex"\nusername = "a@yandex.ru"\nauth = "oauth2"\n'
                                 'oauth_client_id = "cid"\noauth_scope = "mail:smtp login:email"\n'
                                 f'oauth_token_file = "{tmp_path}/tok.json"\n')
    assert s is not None and s.scope == "mail:smtp login:email" and s.token_file == f"{tmp_path}/tok.json"


def test_a_password_relay_has_no_oauth_settings(tmp_path: Path) -> None:
    assert relay_settings(tmp_path, '[relay]\nprovider = "yandex"\nusername = "a@yandex.ru"\n') is None


@pytest.mark.parametrize("table, words", [
    ('provider = "outlook"\nauth = "oauth2"\n', "needs relay.oauth_client_id"),
    ('provider = "mailru"\nauth = "oauth2"\noauth_client_id = "c"\n', "knows the OAuth2 endpoints of"),
    ('provider = "gmail"\nauth = "oauth2"\noauth_client_id = "c"\noauth_tenant = "t"\n', "applies to provider = .outlook. only"),
    ('provider = "custom"\nhost = "h"\nauth = "oauth2"\noauth_client_id = "c"\n', "oauth_token_url"),
    ('provider = "custom"\nhost = "h"\nauth = "oauth2"\noauth_client_id = "c"\noauth_scope = "s"\n'
     'oauth_token_url = "http://h/t"\noauth_device_url = "https://h/d"\n', "must be an https:// address"),
    ('provider = "outlook"\nauth = "oauth2"\noauth_client_id = "c"\noauth_tenant = "a/b"\n', "not a tenant"),
])
def test_bad_oauth_settings_name_the_key(tmp_path: Path, table: str, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        relay_settings(tmp_path, '[relay]\nusername = "a@example.org"\n' + table)


def test_token_state_without_a_login_says_which_command_to_run(tmp_path: Path) -> None:
    s = relay_settings(tmp_path, '[relay]\nprovider = "outlook"\nusername = "a@example.org"\nauth = "oauth2"\n'
                                 'oauth_client_id = "cid"\n')
    assert s is not None
    state = oauth.read_state(s)
    assert state["state"] == "login-needed"
    assert oauth.describe(state) == "login needed (no login yet): run 'pysendmail oauth login --relay default'"


def test_token_file_write_is_0600_and_removes_what_a_crash_mid_write_left(tmp_path: Path) -> None:
    path = tmp_path / "oauth" / "default.json"
    path.parent.mkdir(mode=0o700)
    stale = path.parent / ".default.json.999999.tmp"  # a writer killed before its rename
    stale.write_text('{"refresh_token": "half"}')

    oauth._write_file(str(path), {"refresh_token": "rt-new"})

    assert not stale.exists() and sorted(p.name for p in path.parent.iterdir()) == ["default.json"]
    assert oauth._read_file(str(path)) == {"refresh_token": "rt-new"}
    assert path.stat().st_mode & 0o777 == 0o600
