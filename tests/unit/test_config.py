"""Configuration (pysendmail.core.config): where it is found, what it may say, the cache.

In-process tests set only environment variables (XDG_*, HOME,
PYSENDMAIL_CONFIG) and never touch the real /etc; the exit code 78 and the
cache are also checked through the real ``sendmail`` and ``pysendmail``
programs, as a user meets them.
"""

from __future__ import annotations

import marshal
import os
import pwd
from pathlib import Path

import pytest

from pysendmail.core import config
from pysendmail.core.config import DEFAULT_MAX_MESSAGE_SIZE, ConfigError
from tests.conftest import SIMPLE, Env, needs_root, write_config


@pytest.fixture
def clean_environ(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No PYSENDMAIL_CONFIG, and XDG dirs inside tmp_path; returns tmp_path."""
    monkeypatch.delenv("PYSENDMAIL_CONFIG", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg-data"))
    return tmp_path


def toml(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# ------------------------------------------------------------ search order
def test_find_config_uses_the_c_path_when_given_even_if_the_environment_names_another(clean_environ: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cli = toml(clean_environ / "cli.toml", "")
    monkeypatch.setenv("PYSENDMAIL_CONFIG", str(toml(clean_environ / "env.toml", "")))
    assert config.find_config(str(cli)) == (str(cli), "-C")


def test_find_config_uses_pysendmail_config_when_no_c_path_is_given(clean_environ: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env = toml(clean_environ / "env.toml", "")
    toml(clean_environ / "xdg-config" / "pysendmail" / "pysendmail.toml", "")
    monkeypatch.setenv("PYSENDMAIL_CONFIG", str(env))
    assert config.find_config(None) == (str(env), "PYSENDMAIL_CONFIG")


def test_find_config_uses_the_xdg_user_config_when_nothing_else_is_given(clean_environ: Path) -> None:
    user = toml(clean_environ / "xdg-config" / "pysendmail" / "pysendmail.toml", "")
    assert config.find_config(None) == (str(user), "user")


def test_find_config_uses_home_dot_config_when_xdg_config_home_is_unset(clean_environ: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("XDG_CONFIG_HOME")
    monkeypatch.setenv("HOME", str(clean_environ / "home"))
    user = toml(clean_environ / "home" / ".config" / "pysendmail" / "pysendmail.toml", "")
    assert config.find_config(None) == (str(user), "user")


def test_find_config_returns_built_in_defaults_when_no_file_exists(clean_environ: Path) -> None:
    assert config.find_config(None) == (None, "built-in defaults")


def test_find_config_raises_naming_the_file_when_the_c_path_does_not_exist(clean_environ: Path) -> None:
    missing = clean_environ / "missing.toml"
    with pytest.raises(ConfigError, match=f"configuration file {missing} given with -C does not exist"):
        config.find_config(str(missing))


def test_find_config_raises_naming_the_file_when_pysendmail_config_does_not_exist(clean_environ: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = clean_environ / "missing.toml"
    monkeypatch.setenv("PYSENDMAIL_CONFIG", str(missing))
    with pytest.raises(ConfigError, match=f"{missing} named by PYSENDMAIL_CONFIG does not exist"):
        config.find_config(None)


def test_user_dir_follows_xdg_when_the_variables_are_set(clean_environ: Path) -> None:
    assert config.user_dir("config") == str(clean_environ / "xdg-config" / "pysendmail")
    assert config.user_dir("data") == str(clean_environ / "xdg-data" / "pysendmail")


def test_user_dir_agrees_with_platformdirs_when_computed_without_it(clean_environ: Path) -> None:
    import platformdirs

    assert config.user_dir("config") == platformdirs.user_config_dir("pysendmail")
    assert config.user_dir("data") == platformdirs.user_data_dir("pysendmail")


# ------------------------------------------------------------ defaults
def test_load_fills_defaults_when_there_is_no_file(clean_environ: Path) -> None:
    cfg = config.load(None)
    assert cfg.path is None
    assert cfg.max_message_size == DEFAULT_MAX_MESSAGE_SIZE == 35 * 1024 * 1024
    assert cfg.spool_path == str(clean_environ / "xdg-data" / "pysendmail" / "spool")
    assert cfg.maildir_path == str(clean_environ / "xdg-data" / "pysendmail" / "Maildir")
    assert cfg.relay_configured is False
    assert cfg.get("host", "aliases_file") == "/etc/aliases"
    assert cfg.get("relay", "timeout") == 60
    assert cfg.dkim == [] and cfg.aliases == {}


def test_load_puts_the_maildir_inside_the_spool_when_only_spool_path_is_given(clean_environ: Path) -> None:
    path = toml(clean_environ / "c.toml", '[spool]\npath = "/srv/spool"\n')
    cfg = config.load(str(path))
    assert cfg.spool_path == "/srv/spool"
    assert cfg.maildir_path == "/srv/spool/maildir"
    assert cfg.max_message_size == DEFAULT_MAX_MESSAGE_SIZE


def test_load_reads_every_section_when_the_file_uses_them(clean_environ: Path) -> None:
    path = toml(clean_environ / "c.toml", """
[spool]
path = "/srv/spool"
max_message_size = 2048
[host]
name = "mail.example.org"
default_domain = "example.org"
[relay]
provider = "yandex"
host = "smtp.yandex.ru"
port = 465
tls = "implicit"
username = "robot@example.org"
password_file = "/etc/pysendmail/password"
[queue]
retry_schedule = ["1m", "5m"]
[[dkim]]
domain = "example.org"
selector = "mail"
key_file = "/k.key"
[aliases]
root = "admin@example.org"
staff = ["a@example.org", "b@example.org"]
""")
    cfg = config.load(str(path))
    assert cfg.max_message_size == 2048
    assert cfg.hostname() == "mail.example.org"
    assert cfg.default_domain() == "example.org"
    assert cfg.relay_configured is True
    assert cfg.get("relay", "port") == 465
    assert cfg.get("queue", "retry_schedule") == ["1m", "5m"]
    assert cfg.dkim == [{"domain": "example.org", "selector": "mail", "key_file": "/k.key",
                         "algorithm": "rsa-sha256", "headers": None, "subdomains": False}]
    assert cfg.aliases == {"root": ["admin@example.org"], "staff": ["a@example.org", "b@example.org"]}


# ------------------------------------------------------------ refusals
@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("[smtp]\nhost = 'x'\n", "unknown section [smtp]"),
        ("[spool]\npaht = '/x'\n", "unknown key spool.paht"),
        ("[relay]\npasword = 'secret'\n", "unknown key relay.pasword"),
        ("[[dkim]]\ndomain = 'x'\nselector = 's'\nkey_file = '/k'\nkeyfile = '/k'\n", "unknown key dkim.keyfile"),
        ("[spool]\nmax_message_size = '35M'\n", "spool.max_message_size"),
        ("[spool]\nmax_message_size = true\n", "spool.max_message_size"),
        ("[relay]\nport = '465'\n", "relay.port"),
        ("[relay]\nhost = 25\n", "relay.host"),
        ("[relay]\npassword_command = 'pass show x'\n", "relay.password_command"),
        ("[relay]\npassword_command = ['pass', 1]\n", "relay.password_command"),
        ("[[dkim]]\ndomain = 1\nselector = 's'\nkey_file = '/k'\n", "dkim.domain"),
        ("[aliases]\nroot = 1\n", "aliases.root"),
    ],
)
def test_load_raises_naming_key_and_file_when_a_key_is_unknown_or_mistyped(clean_environ: Path, text: str, fragment: str) -> None:
    path = toml(clean_environ / "bad.toml", text)
    with pytest.raises(ConfigError) as info:
        config.load(str(path))
    assert fragment in str(info.value)
    assert str(path) in str(info.value)
    assert info.value.exit_code == 78


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("[spool]\nmax_message_size = 100\n", "spool.max_message_size"),
        ("[spool]\npath = 'relative/spool'\n", "spool.path"),
        ("[relay]\ntls = 'ssl'\n", "relay.tls"),
        ("[[dkim]]\ndomain = 'example.org'\nselector = 'mail'\n", "lacks key_file"),
        ("[dkim]\ndomain = 'example.org'\n", "[[dkim]]"),
        ("spool = 'x'\n", "[spool]"),
        ("[spool\n", "is not valid TOML"),
    ],
)
def test_load_raises_naming_the_file_when_a_value_is_invalid(clean_environ: Path, text: str, fragment: str) -> None:
    path = toml(clean_environ / "bad.toml", text)
    with pytest.raises(ConfigError) as info:
        config.load(str(path))
    assert fragment in str(info.value)
    assert str(path) in str(info.value)


# ------------------------------------------------------------ exit 78, for real


def test_sendmail_exits_78_naming_key_and_file_when_the_config_has_an_unknown_key(env: Env) -> None:
    env.config.write_text(env.config.read_text() + "\n[relay]\nhots = 'smtp.example.org'\n")
    proc = env.sendmail("a@example.net", input=SIMPLE)
    assert proc.returncode == 78
    err = proc.stderr.decode()
    assert "unknown key relay.hots" in err and str(env.config) in err
    assert err.count("\n") == 1 and err.startswith("sendmail: ")
    assert env.incoming() == []


def test_sendmail_exits_78_when_c_names_a_config_with_a_wrong_type(env: Env, tmp_path: Path) -> None:
    bad = toml(tmp_path / "bad.toml", f'[spool]\npath = "{env.spool}"\nmax_message_size = "big"\n')
    proc = env.sendmail("-C", str(bad), "a@example.net", input=SIMPLE)
    assert proc.returncode == 78
    assert f"spool.max_message_size in {bad} must be an integer" in proc.stderr.decode()
    assert env.incoming() == []


def test_sendmail_exits_78_when_c_names_a_missing_file(env: Env, tmp_path: Path) -> None:
    proc = env.sendmail("-C", str(tmp_path / "nope.toml"), "a@example.net", input=SIMPLE)
    assert proc.returncode == 78
    assert "nope.toml given with -C does not exist" in proc.stderr.decode()


def test_pysendmail_config_check_exits_78_naming_key_and_file_when_the_config_is_bad(env: Env) -> None:
    env.config.write_text(env.config.read_text() + "\n[queue]\nlifetim = 5\n")
    proc = env.run("pysendmail", "config", "check")
    assert proc.returncode == 78
    assert f"unknown key queue.lifetim in {env.config}" in proc.stderr.decode()


def test_pysendmail_config_check_says_ok_when_the_config_is_good(env: Env) -> None:
    proc = env.run("pysendmail", "config", "check", check=True)
    *warnings, last = proc.stdout.decode().splitlines()
    assert last == f"{env.config}: ok"
    # The one warning: no daemon runs, and this fixture's config needs one (deliver_without_daemon = false).
    assert [w for w in warnings if not w.startswith("WARN no daemon is running, but one is required")] == []


# ------------------------------------------------------------ the cache
def cache_of(e: Env) -> Path:
    return Path(config.cache_path(str(e.config)))


def rewrite_cache(path: Path, **changes: object) -> None:
    data = marshal.loads(path.read_bytes())
    data.update(changes)
    path.write_bytes(marshal.dumps(data))


def set_size(e: Env, size: int) -> None:
    """Rewrite the TOML with a new max_message_size (a new stamp: size and mtime change)."""
    text = e.config.read_text()
    lines = [line for line in text.splitlines() if not line.startswith("max_message_size")]
    out = "\n".join(lines).replace(f'path = "{e.spool}"', f'path = "{e.spool}"\nmax_message_size = {size}')
    st = e.config.stat()
    e.config.write_text(out + "\n" + "#" * (size % 7) + "\n")
    os.utime(e.config, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


def test_config_check_writes_the_cache_when_run_by_the_config_owner(env: Env) -> None:
    cache_of(env).unlink(missing_ok=True)
    env.run("pysendmail", "config", "check", check=True)
    data = marshal.loads(cache_of(env).read_bytes())
    st = env.config.stat()
    assert data["version"] == config.CACHE_VERSION
    assert data["stamp"] == (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    assert data["spool_path"] == str(env.spool)
    assert data["max_message_size"] == DEFAULT_MAX_MESSAGE_SIZE
    mode = cache_of(env).stat().st_mode & 0o777
    assert mode & 0o022 == 0


def test_submit_settings_uses_the_cache_when_its_stamp_matches(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    env.run("pysendmail", "config", "check", check=True)
    # A value that only the cache holds proves the cache was read.
    rewrite_cache(cache_of(env), max_message_size=4096)
    monkeypatch.setenv("PYSENDMAIL_CONFIG", str(env.config))
    assert config.submit_settings(None).max_message_size == 4096
    proc = env.sendmail("a@example.net", input=SIMPLE + b"x" * 5000 + b"\n")
    assert proc.returncode == 65
    assert "limit of 4096 bytes" in proc.stderr.decode()


def test_submit_settings_ignores_the_cache_when_the_toml_changes(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    set_size(env, 4096)
    env.run("pysendmail", "config", "check", check=True)
    monkeypatch.setenv("PYSENDMAIL_CONFIG", str(env.config))
    assert config.submit_settings(None).max_message_size == 4096
    set_size(env, 8192)
    assert config.submit_settings(None).max_message_size == 8192
    # and the submitter refreshed the cache for the next one
    assert marshal.loads(cache_of(env).read_bytes())["max_message_size"] == 8192


def test_sendmail_applies_a_new_value_when_the_toml_changes_after_the_cache_was_written(env: Env) -> None:
    set_size(env, 4096)
    env.run("pysendmail", "config", "check", check=True)
    message = SIMPLE + b"y" * 6000 + b"\n"
    assert env.sendmail("a@example.net", input=message).returncode == 65
    set_size(env, 65536)
    proc = env.sendmail("a@example.net", input=message)
    assert proc.returncode == 0, proc.stderr
    assert len(env.incoming()) == 1


@pytest.mark.parametrize("mode", [0o664, 0o646, 0o666])
def test_submit_settings_ignores_the_cache_when_it_is_group_or_world_writable(env: Env, monkeypatch: pytest.MonkeyPatch, mode: int) -> None:
    env.run("pysendmail", "config", "check", check=True)
    rewrite_cache(cache_of(env), spool_path="/tmp/planted-spool", max_message_size=4096)
    os.chmod(cache_of(env), mode)
    monkeypatch.setenv("PYSENDMAIL_CONFIG", str(env.config))
    settings = config.submit_settings(None)
    assert settings.spool_path == str(env.spool)
    assert settings.max_message_size == DEFAULT_MAX_MESSAGE_SIZE


@needs_root
def test_submit_settings_ignores_the_cache_when_another_uid_owns_it(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    env.run("pysendmail", "config", "check", check=True)
    rewrite_cache(cache_of(env), spool_path="/tmp/planted-spool", max_message_size=4096)
    nobody = pwd.getpwnam("nobody").pw_uid
    os.chown(cache_of(env), nobody, -1)
    monkeypatch.setenv("PYSENDMAIL_CONFIG", str(env.config))
    settings = config.submit_settings(None)
    assert settings.spool_path == str(env.spool)
    assert settings.max_message_size == DEFAULT_MAX_MESSAGE_SIZE
    # and a planted cache does not steer the real sendmail either
    proc = env.sendmail("a@example.net", input=SIMPLE)
    assert proc.returncode == 0, proc.stderr
    assert len(env.incoming()) == 1


def test_submit_settings_ignores_the_cache_when_it_is_a_symlink(env: Env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env.run("pysendmail", "config", "check", check=True)
    target = tmp_path / "elsewhere.cache"
    os.rename(cache_of(env), target)
    rewrite_cache(target, max_message_size=4096)
    os.symlink(target, cache_of(env))
    monkeypatch.setenv("PYSENDMAIL_CONFIG", str(env.config))
    assert config.submit_settings(None).max_message_size == DEFAULT_MAX_MESSAGE_SIZE


@pytest.mark.parametrize("garbage", [b"", b"not marshal", marshal.dumps([1, 2]), marshal.dumps({"version": 99})])
def test_submit_settings_ignores_the_cache_when_it_is_garbage(env: Env, monkeypatch: pytest.MonkeyPatch, garbage: bytes) -> None:
    cache_of(env).write_bytes(garbage)
    os.chmod(cache_of(env), 0o644)
    monkeypatch.setenv("PYSENDMAIL_CONFIG", str(env.config))
    assert config.submit_settings(None).spool_path == str(env.spool)


@needs_root
def test_write_cache_writes_nothing_when_the_config_belongs_to_another_user(tmp_path: Path) -> None:
    e = write_config(tmp_path)
    os.chown(e.config, pwd.getpwnam("nobody").pw_uid, -1)
    # config.load refuses such a file outright (core/trust.py); built without it:
    assert config.write_cache(config.build({}, str(e.config), "-C")) is False
    assert not cache_of(e).exists()


# The host's name depends on resolver answers no test can set for real:
# socket's two calls are replaced, the choice between them is what's tested.
@pytest.mark.parametrize("fqdn, nodename, expected", [
    ("mail.example.org", "mail", "mail.example.org"),
    ("localhost", "vm", "vm"),  # "127.0.0.1 localhost vm" in /etc/hosts
    ("localhost.localdomain", "web1", "web1"),
    ("vm", "vm", "vm"),
])
def test_hostname_prefers_a_dotted_fqdn_and_never_picks_localhost_over_the_host_name(
        clean_environ: Path, monkeypatch: pytest.MonkeyPatch, fqdn: str, nodename: str, expected: str) -> None:
    import socket

    monkeypatch.setattr(socket, "getfqdn", lambda: fqdn)
    monkeypatch.setattr(socket, "gethostname", lambda: nodename)
    assert config.load(None).hostname() == expected


# ------------------------------------------------------------ local names (issue 11)
def test_local_domains_are_localhost_the_host_names_host_name_and_the_configured_ones(
        clean_environ: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    monkeypatch.setattr(socket, "getfqdn", lambda: "vm.corp.example.org")
    monkeypatch.setattr(socket, "gethostname", lambda: "vm")
    path = toml(clean_environ / "c.toml", '[host]\nname = "mail.example.org"\nlocal_domains = ["example.internal"]\n')
    names = config.load(str(path)).local_domains()
    assert set(names) == {"localhost", "localhost.localdomain", "mail.example.org", "vm.corp.example.org", "vm",
                          "example.internal"}


def test_default_domain_is_local_only_when_it_is_the_host_name(clean_environ: Path) -> None:
    from pysendmail.core.aliases import LocalDomains

    plain = config.load(str(toml(clean_environ / "a.toml", '[host]\nname = "h.example.org"\n')))
    assert plain.default_domain() in LocalDomains(plain.local_domains())
    other = config.load(str(toml(clean_environ / "b.toml", '[host]\nname = "h.example.org"\ndefault_domain = "example.org"\n')))
    assert other.default_domain() not in LocalDomains(other.local_domains())


@pytest.mark.parametrize("value", ['["root@example.internal"]', '[""]', '["example.internal:25"]', '"example.internal"'])
def test_load_refuses_local_domains_when_an_entry_is_not_a_domain(clean_environ: Path, value: str) -> None:
    path = toml(clean_environ / "bad.toml", f"[host]\nlocal_domains = {value}\n")
    with pytest.raises(ConfigError, match="host.local_domains") as info:
        config.load(str(path))
    assert str(path) in str(info.value) and info.value.exit_code == 78


def test_load_names_file_and_line_when_an_alias_value_has_the_wrong_type(clean_environ: Path) -> None:
    path = toml(clean_environ / "bad.toml", '[spool]\npath = "/x"\n\n[aliases]\nroot = "a@example.org"\nops = 1\n')
    with pytest.raises(ConfigError) as info:
        config.load(str(path))
    assert str(info.value) == f"{path}:6: aliases.ops must be a string or a list of strings"


def test_load_refuses_naming_the_second_line_when_an_alias_is_defined_twice_in_another_case(clean_environ: Path) -> None:
    path = toml(clean_environ / "bad.toml", '[aliases]\nroot = "a@example.org"\nRoot = "b@example.org"\n')
    with pytest.raises(ConfigError) as info:
        config.load(str(path))
    assert str(info.value).startswith(f"{path}:3: alias 'root' is defined twice")
