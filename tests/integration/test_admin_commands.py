"""setup, test, config show/check and doctor, run as the installed ``pysendmail``.

setup runs non-interactively from nothing (stdin is not a terminal), in
user mode and, as root, in system mode with the real pysendmail user;
``test`` sends through the real loopback relay; doctor asks the real DNS
server of tests/fakes/dns.py on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import stat
from pathlib import Path

import pytest

from tests.conftest import Env, needs_root, write_config
from tests.fakes.dns import DnsServer
from tests.fakes.relay import PASSWORD, PROVIDER_REPLIES, USER, Relay
from tests.integration.test_relay import make_env, password_file, relay_table, run_queue, submit


def setup_env(tmp_path: Path) -> Env:
    """An Env whose config does not exist yet: setup writes it."""
    e = Env(tmp_path, tmp_path / "etc" / "pysendmail.toml", tmp_path / "spool", tmp_path / "Maildir",
            tmp_path / "aliases")
    return e


def run_setup(e: Env, relay: Relay, *extra: str, password: str = PASSWORD, ca: Path | None = None) -> "object":
    return e.run("pysendmail", "setup", "--provider", "custom", "--host", "localhost", "--port", str(relay.port),
                 "--tls", "implicit", "--ca-file", str(ca or relay.ca_file), "--user", USER, "--password-stdin",
                 "--spool", str(e.spool), *extra, input=(password + "\n").encode())


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# ------------------------------------------------------------------ setup
def test_setup_from_nothing_in_user_mode_writes_private_files_and_mail_reaches_the_relay(
    tmp_path: Path, relay_factory
) -> None:
    relay = relay_factory("implicit")
    e = setup_env(tmp_path)

    proc = run_setup(e, relay, "--user-mode")

    assert proc.returncode == 0, proc.stderr.decode()
    assert mode_of(e.config) == 0o600 and mode_of(e.config.parent / "password") == 0o600
    assert (e.config.parent / "password").read_text() == PASSWORD + "\n"
    assert PASSWORD not in e.config.read_text()
    assert mode_of(e.spool / "queue") == 0o700 and mode_of(e.spool / "incoming") == 0o700
    submit(e, "someone@example.net")
    run_queue(e)
    assert relay.wait_for(1)[0].rcpt_tos == ["someone@example.net"]


def test_setup_twice_with_the_same_answers_changes_nothing(tmp_path: Path, relay_factory) -> None:
    relay = relay_factory("implicit")
    e = setup_env(tmp_path)
    assert run_setup(e, relay, "--user-mode").returncode == 0
    before = e.config.stat().st_mtime_ns, (e.config.parent / "password").stat().st_mtime_ns

    proc = run_setup(e, relay, "--user-mode", "--json")

    assert proc.returncode == 0, proc.stderr.decode()
    summary = json.loads(proc.stdout)
    assert summary["config_file"] == "unchanged" and summary["password_file"] == "unchanged"
    assert (e.config.stat().st_mtime_ns, (e.config.parent / "password").stat().st_mtime_ns) == before


def test_setup_never_overwrites_a_different_config_without_force(tmp_path: Path, relay_factory) -> None:
    relay = relay_factory("implicit")
    e = setup_env(tmp_path)
    assert run_setup(e, relay, "--user-mode").returncode == 0
    original = e.config.read_text()

    refused = run_setup(e, relay, "--user-mode", "--from-address", "other@example.org", password=PASSWORD)
    assert refused.returncode == 73 and b"--force" in refused.stderr and e.config.read_text() == original

    forced = run_setup(e, relay, "--user-mode", "--from-address", "other@example.org", "--force")
    assert forced.returncode == 0 and "other@example.org" in e.config.read_text()


def test_setup_without_a_terminal_names_the_missing_flag(tmp_path: Path) -> None:
    e = setup_env(tmp_path)

    proc = e.run("pysendmail", "setup", "--provider", "yandex", "--spool", str(e.spool), "--user-mode")

    assert proc.returncode == 64 and b"--user" in proc.stderr and not e.config.exists()


def test_setup_with_dkim_generates_a_key_once_and_prints_the_dns_records(tmp_path: Path, relay_factory) -> None:
    relay = relay_factory("implicit")
    e = setup_env(tmp_path)

    proc = run_setup(e, relay, "--user-mode", "--dkim", "example.org")

    out = proc.stdout.decode()
    assert proc.returncode == 0, proc.stderr.decode()
    key = e.config.parent / "dkim" / "example.org.mail.key"
    assert mode_of(key) == 0o600 and b"PRIVATE KEY" in key.read_bytes()
    # The record as 'pysendmail dkim keygen' prints it: strings of at most 255 octets.
    line = next(x for x in out.splitlines() if "_domainkey" in x)
    assert 'mail._domainkey.example.org. IN TXT ( "v=DKIM1; k=rsa; p=' in line
    strings = re.findall(r'"([^"]*)"', line)
    assert len(strings) == 2 and len(strings[0]) == 255
    assert 'example.org. IN TXT "v=spf1' in out and '_dmarc.example.org. IN TXT "v=DMARC1; p=none' in out
    first = key.read_bytes()
    assert run_setup(e, relay, "--user-mode", "--dkim", "example.org").returncode == 0
    assert key.read_bytes() == first


def test_setup_with_a_provider_prints_its_spf_include(tmp_path: Path) -> None:
    e = setup_env(tmp_path)

    proc = e.run("pysendmail", "setup", "--provider", "yandex", "--user", "robot@example.org", "--password-stdin",
                 "--spool", str(e.spool), "--user-mode", input=b"pw\n")

    assert proc.returncode == 0, proc.stderr.decode()
    assert 'example.org. IN TXT "v=spf1 include:_spf.yandex.net ~all"' in proc.stdout.decode()


@needs_root
def test_setup_system_mode_gives_the_password_to_root_and_the_daemon_group_only(world_dir: Path,
                                                                                relay_factory) -> None:
    from tests.conftest import ensure_user

    ensure_user("psm-daemon")  # not "pysendmail": other suites on this host choose spool owners by that name
    relay = relay_factory("implicit")
    e = setup_env(world_dir)

    ca = world_dir / "relay-ca.pem"
    ca.write_bytes(relay.ca_file.read_bytes())
    ca.chmod(0o644)

    proc = run_setup(e, relay, "--system", "--daemon-user", "psm-daemon", ca=ca)

    assert proc.returncode == 0, proc.stderr.decode()
    daemon = pwd.getpwnam("psm-daemon")
    pw = (e.config.parent / "password").stat()
    assert (pw.st_uid, pw.st_gid, stat.S_IMODE(pw.st_mode)) == (0, daemon.pw_gid, 0o640)
    assert mode_of(e.config) == 0o644
    assert (e.spool / "queue").stat().st_uid == daemon.pw_uid and mode_of(e.spool / "incoming") == 0o3733
    check = e.run("pysendmail", "config", "check")
    assert check.returncode == 0, check.stdout.decode() + check.stderr.decode()
    submit(e, "someone@example.net")
    run_queue(e)  # as root it drops to psm-daemon, which reads the 0640 password through its group
    assert relay.wait_for(1)[0].rcpt_tos == ["someone@example.net"]


# ------------------------------------------------------------------ test
def test_test_command_sends_now_and_prints_the_dialogue_with_credentials_masked(tmp_path: Path, relay_factory) -> None:
    relay = relay_factory("implicit")
    e = make_env(tmp_path, relay_table(relay, password_file(tmp_path), extra='auth = "login"\n'))

    proc = e.run("pysendmail", "test", "--to", "someone@example.net")

    out = proc.stdout.decode()
    assert proc.returncode == 0, out + proc.stderr.decode()
    assert "C: EHLO" in out and "C: AUTH LOGIN ********" in out and "S: 235" in out and "C: DATA" in out
    assert PASSWORD not in out and PASSWORD not in proc.stderr.decode()
    import base64

    assert base64.b64encode(PASSWORD.encode()).decode() not in out
    assert base64.b64encode(USER.encode()).decode() not in out
    assert relay.wait_for(1)[0].rcpt_tos == ["someone@example.net"]
    assert e.queued() == []


def test_test_command_signs_as_the_daemon_does_and_json_stays_parseable(tmp_path: Path, relay_factory) -> None:
    from tests.fakes.verifiers import mail_dkim
    from tests.integration.test_dkim import dkim_table, keygen

    relay = relay_factory("implicit")
    e = make_env(tmp_path, relay_table(relay, password_file(tmp_path)))
    with DnsServer() as dns:
        key, _ = keygen(e, dns, "example.org", "t")
        with open(e.config, "a") as fh:
            fh.write(dkim_table("example.org", "t", key))

        proc = e.run("pysendmail", "test", "--to", "someone@example.net", "--from", "robot@example.org", "--json")

        assert proc.returncode == 0, proc.stderr.decode()
        assert json.loads(proc.stdout) == {"status": "sent", "text": json.loads(proc.stdout)["text"]}
        assert "C: EHLO" in proc.stderr.decode(), "the dialogue goes to stderr under --json"
        (got,) = relay.wait_for(1)
        assert ("pass", "example.org", "t", "rsa-sha256") in mail_dkim(got.data, dns.port)


def test_typo_in_relay_auth_is_a_config_error_naming_the_choices(tmp_path: Path, relay_factory) -> None:
    relay = relay_factory("implicit")
    e = write_config(tmp_path, relay_table(relay, password_file(tmp_path), extra='auth = "plian"\n'))

    for name, args in (("pysendmail", ["config", "check"]), ("sendmail", ["-q"])):
        proc = e.run(name, *args)
        assert proc.returncode == 78, (name, proc.stderr.decode())
        assert proc.stderr.decode().count("\n") == 1
        assert "relay.auth" in proc.stderr.decode() and "plian" in proc.stderr.decode()


def test_test_command_explains_a_known_refusal(tmp_path: Path, relay_factory) -> None:
    relay = relay_factory("implicit")
    relay.auth_reply = PROVIDER_REPLIES["gmail-app-password"]
    e = make_env(tmp_path, relay_table(relay, password_file(tmp_path), extra='provider = "gmail"\n'))

    proc = e.run("pysendmail", "test", "--to", "someone@example.net")

    out = proc.stdout.decode()
    assert proc.returncode == 75 and "NOT sent" in out and "app password" in out


def test_test_command_refuses_an_unknown_route(tmp_path: Path, relay_factory) -> None:
    relay = relay_factory("implicit")
    e = make_env(tmp_path, relay_table(relay, password_file(tmp_path)))

    proc = e.run("pysendmail", "test", "--to", "someone@example.net", "--route", "nope")

    assert proc.returncode == 64 and b"no route named 'nope'" in proc.stderr


# ------------------------------------------------------------------ config show / check
def test_config_show_masks_the_password_and_names_each_source(tmp_path: Path, relay_factory) -> None:
    relay = relay_factory("implicit")
    text = relay_table(relay, password_file(tmp_path), extra='provider = "yandex"\n').replace(
        f'password_file = "{tmp_path}/relay-password"', f'password = "{PASSWORD}"')
    e = write_config(tmp_path, text)
    e.config.chmod(0o600)  # before any command loads it: an inline password in a readable config fails to load
    e.run("pysendmail", "spool", "init", check=True)

    shown = e.run("pysendmail", "config", "show", check=True).stdout.decode()
    data = json.loads(e.run("pysendmail", "config", "show", "--json", check=True).stdout)

    assert PASSWORD not in shown and 'password = "********"' in shown
    relay_values = data["relays"]["default"]
    assert relay_values["password"] == ["********", "file"]
    assert relay_values["from_policy"] == ["rewrite", "preset yandex"]
    assert relay_values["rate_per_day"] == [500, "preset yandex"]
    assert relay_values["rate_unit"] == ["recipients", "preset yandex"]
    assert relay_values["port"] == [relay.port, "file"]
    assert relay_values["timeout"] == [10, "file"] and relay_values["pool_size"] == [4, "default"]


@needs_root
def test_config_check_fails_when_the_daemon_user_cannot_read_the_password_file(tmp_path: Path, world_dir: Path,
                                                                                relay_factory) -> None:
    from tests.conftest import ensure_user

    uid = ensure_user("psm-daemon")
    relay = relay_factory("implicit")
    pw = password_file(world_dir)  # root-owned 0600: the daemon (pysendmail) cannot read it
    e = write_config(world_dir, relay_table(relay, pw) + '\n')
    e.config.write_text(e.config.read_text().replace("[spool]\n", '[spool]\nuser = "psm-daemon"\n'))
    e.run("pysendmail", "spool", "init", check=True)
    assert (e.spool / "queue").stat().st_uid == uid

    proc = e.run("pysendmail", "config", "check")

    assert proc.returncode == 78 and f"chown psm-daemon {pw}".encode() in proc.stdout + proc.stderr
    os.chown(pw, uid, -1)
    assert e.run("pysendmail", "config", "check").returncode == 0


def test_config_check_reports_a_spool_directory_with_a_wrong_mode(env: Env) -> None:
    (env.spool / "queue").chmod(0o755)

    proc = env.run("pysendmail", "config", "check")

    assert proc.returncode == 78 and b"queue: mode 0755" in proc.stdout


# ------------------------------------------------------------------ doctor
def doctor_env(tmp_path: Path, relay: Relay) -> tuple[Env, str]:
    e = make_env(tmp_path, relay_table(relay, password_file(tmp_path), extra='provider = "yandex"\n'))
    e.config.write_text(e.config.read_text().replace('name = "host.example.org"', 'name = "mail.example.org"'))
    # The key comes from setup, run for another (throw-away) config.
    key_env = setup_env(tmp_path / "keys")
    made = key_env.run("pysendmail", "setup", "--provider", "yandex", "--user", USER, "--password-stdin",
                       "--spool", str(key_env.spool), "--user-mode", "--dkim", "example.org", input=b"x\n")
    assert made.returncode == 0, made.stderr.decode()
    key = key_env.config.parent / "dkim" / "example.org.mail.key"
    record = "".join(re.findall(r'"([^"]*)"', next(line for line in made.stdout.decode().splitlines()
                                                     if "_domainkey" in line)))
    e.config.write_text(e.config.read_text() + f'\n[[dkim]]\ndomain = "example.org"\nselector = "mail"\n'
                                               f'key_file = "{key}"\n')
    return e, record


def good_zone(record: str) -> DnsServer:
    dns = DnsServer({
        "example.org": ["v=spf1 include:_spf.yandex.net ~all", "some-verification=1"],
        "mail._domainkey.example.org": record,
        "_dmarc.example.org": "v=DMARC1; p=quarantine; rua=mailto:d@example.org",
    })
    dns.add("example.org", "MX", "10 mx.example.org.")
    dns.add("mail.example.org", "A", "192.0.2.10")
    return dns


def doctor(e: Env, dns: DnsServer) -> tuple[int, str]:
    proc = e.run("pysendmail", "doctor", "--domain", "example.org", "--nameserver", f"127.0.0.1:{dns.port}")
    return proc.returncode, proc.stdout.decode()


def test_doctor_says_ok_for_good_records(tmp_path: Path, relay_factory) -> None:
    e, record = doctor_env(tmp_path, relay_factory("implicit"))
    with good_zone(record) as dns:
        code, out = doctor(e, dns)
    assert code == 0, out
    assert [line.split()[0] for line in out.splitlines()] == ["OK"] * 5
    assert "DKIM mail._domainkey.example.org: published and matches" in out


@pytest.mark.parametrize(
    ("breakage", "expected"),
    [
        ("spf-missing-include", "FAIL SPF example.org: does not include _spf.yandex.net"),
        ("spf-twice", "FAIL SPF example.org: 2 SPF records"),
        ("dkim-missing", "FAIL DKIM mail._domainkey.example.org: not published; publish"),
        ("dkim-other-key", "FAIL DKIM mail._domainkey.example.org: the published key is not the key"),
        ("dmarc-missing", "WARN DMARC _dmarc.example.org: none; start with"),
        ("mx-missing", "WARN MX example.org: none"),
        ("helo-unresolvable", "FAIL HELO mail.example.org: does not resolve"),
    ],
)
def test_doctor_names_each_broken_record_and_the_fix(tmp_path: Path, relay_factory, breakage: str,
                                                     expected: str) -> None:
    e, record = doctor_env(tmp_path, relay_factory("implicit"))
    with good_zone(record) as dns:
        if breakage == "spf-missing-include":
            dns.set_txt("example.org", "v=spf1 include:_spf.google.com ~all")
        elif breakage == "spf-twice":
            dns.set_txt("example.org", ["v=spf1 include:_spf.yandex.net ~all", "v=spf1 -all"])
        elif breakage == "dkim-missing":
            dns.remove("mail._domainkey.example.org")
        elif breakage == "dkim-other-key":
            dns.set_txt("mail._domainkey.example.org", record.replace("p=MII", "p=MIJ"))
        elif breakage == "dmarc-missing":
            dns.remove("_dmarc.example.org")
        elif breakage == "mx-missing":
            dns.remove("example.org")
            dns.set_txt("example.org", "v=spf1 include:_spf.yandex.net ~all")
        elif breakage == "helo-unresolvable":
            dns.remove("mail.example.org")
        code, out = doctor(e, dns)
    assert expected in out, out
    assert code == (78 if expected.startswith("FAIL") else 0)  # EX_CONFIG, as 'dkim check' for a bad record


# ------------------------------------------------------------------ setup --dkim, end to end
@pytest.mark.parametrize("mode", ["user", pytest.param("system", marks=needs_root)])
def test_setup_dkim_key_is_accepted_by_the_daemon_and_its_signature_verifies(
        tmp_path: Path, world_dir: Path, relay_factory, mode: str) -> None:
    """The key setup writes passes config check and the daemon's start-up checks, and its
    printed record verifies the relay's bytes with Mail::DKIM (not dkimpy)."""
    from tests.fakes.verifiers import mail_dkim

    relay = relay_factory("implicit")
    extra = ["--user-mode"]
    e = setup_env(tmp_path)
    ca = None
    if mode == "system":
        from tests.conftest import ensure_user

        daemon_uid = ensure_user("psm-daemon")
        e = setup_env(world_dir)
        ca = world_dir / "relay-ca.pem"
        ca.write_bytes(relay.ca_file.read_bytes())
        ca.chmod(0o644)
        extra = ["--system", "--daemon-user", "psm-daemon"]

    proc = run_setup(e, relay, *extra, "--dkim", "example.org", ca=ca)

    assert proc.returncode == 0, proc.stderr.decode()
    key = e.config.parent / "dkim" / "example.org.mail.key"
    assert mode_of(key) == 0o600
    if mode == "system":
        assert key.stat().st_uid == daemon_uid  # the daemon reads it; root:group 0640 would be refused
    check = e.run("pysendmail", "config", "check")
    assert check.returncode == 0, check.stdout.decode() + check.stderr.decode()
    line = next(x for x in proc.stdout.decode().splitlines() if "_domainkey" in x)
    with DnsServer() as dns:
        dns.set_txt("mail._domainkey.example.org", [re.findall(r'"([^"]*)"', line)])
        sent = e.sendmail("-i", "-f", USER, "someone@example.net",
                          input=b"From: Robot <robot@example.org>\nTo: someone@example.net\nSubject: signed\n\nhello\n")
        assert sent.returncode == 0, sent.stderr.decode()
        run_queue(e)  # as root: dropped to psm-daemon, which must load the key
        [got] = relay.wait_for(1)
        assert b"DKIM-Signature:" in got.data
        assert mail_dkim(got.data, dns.port) == [("pass", "example.org", "mail", "rsa-sha256")]


# ------------------------------------------------------------------ user mode, end to end
@needs_root
def test_setup_user_mode_as_an_unprivileged_user_then_php_mail_and_sendmail_q_reach_the_relay(
        world_dir: Path, relay_factory) -> None:
    """A user with nothing but a HOME: setup finds its own directories (no -C, no
    PYSENDMAIL_CONFIG), PHP's mail() submits through sendmail -t -i, sendmail -q sends."""
    import shutil
    import subprocess

    from tests.conftest import ensure_user, hide_system_config, program

    php = shutil.which("php")
    if php is None:
        pytest.fail("php is not installed: apt-get install php-cli (the README's test command does)")
    uid = ensure_user("psm-robot")
    user = pwd.getpwnam("psm-robot")
    home = world_dir / "home-robot"
    home.mkdir(mode=0o700)
    os.chown(home, uid, user.pw_gid)
    relay = relay_factory("implicit")
    ca = world_dir / "relay-ca.pem"  # the fixture's CA lives under root's private tmp_path
    ca.write_bytes(relay.ca_file.read_bytes())
    ca.chmod(0o644)

    def as_robot(*cmd: str, input: bytes = b"") -> subprocess.CompletedProcess[bytes]:
        # A system config (the host's /etc/pysendmail) would win over the user's own: hidden.
        return subprocess.run(hide_system_config(["runuser", "-u", "psm-robot", "--", "env", "-i", f"HOME={home}",
                                                  "PATH=/usr/bin:/bin", *cmd]),
                              input=input, capture_output=True, timeout=60, cwd=str(home))

    made = as_robot(program("pysendmail"), "setup", "--user-mode", "--provider", "custom", "--host", "localhost",
                    "--port", str(relay.port), "--tls", "implicit", "--ca-file", str(ca), "--user", USER,
                    "--password-stdin", input=(PASSWORD + "\n").encode())
    assert made.returncode == 0, made.stderr.decode()
    config_file = home / ".config" / "pysendmail" / "pysendmail.toml"
    spool = home / ".local" / "share" / "pysendmail" / "spool"
    assert f"config:   {config_file} (written)" in made.stdout.decode()
    assert f"spool:    {spool} (ready)" in made.stdout.decode()
    assert config_file.stat().st_uid == uid and mode_of(config_file) == 0o600
    assert (spool / "queue").stat().st_uid == uid

    sent = as_robot(php, "-n", "-d", f"sendmail_path={program('sendmail')} -t -i", "-r",
                    'var_dump(mail("someone@example.net", "from php", "sent by a user-mode pysendmail"));')
    assert sent.stdout == b"bool(true)\n", (sent.stdout, sent.stderr)
    assert relay.messages == []  # queued, not sent: the caller never waits for the relay
    flushed = as_robot(program("sendmail"), "-q")
    assert flushed.returncode == 0, flushed.stderr.decode()

    [got] = relay.wait_for(1)
    assert got.rcpt_tos == ["someone@example.net"] and got.tls and got.account == USER
    assert b"Subject: from php\r\n" in got.data and b"sent by a user-mode pysendmail" in got.data
    assert f"(uid {uid})".encode() in got.data  # the Received line names the submitting user
    assert os.listdir(spool / "queue") == []
