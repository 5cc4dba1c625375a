"""Whose word a file is (core/trust.py), attacked by real local users.

Root installs a system spool for the daemon user psm-daemon in a directory
every user can traverse; psm-alice is an ordinary local user.  Each test
gives alice a file the daemon or root's ``sendmail -q`` would act on (the
config, a password file, a command, a CA file, the aliases file, a DKIM
key), shows with runuser that alice really can rewrite it, and checks that
pysendmail refuses it with one sentence naming the file, its owner and the
fix, instead of using it: no command of hers runs, no password of hers or
for her goes to the relay, nothing accepted is lost.
"""

from __future__ import annotations

import os
import pwd
import subprocess
from pathlib import Path

import pytest

from tests.conftest import Env, ensure_user, needs_root, write_config
from tests.fakes.relay import PASSWORD, USER, Relay

pytestmark = needs_root

MESSAGE = b"To: someone@example.net\nSubject: trust\n\nhello\n"


def as_user(user: str, *cmd: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["runuser", "-u", user, "--", *cmd], capture_output=True, timeout=60)


def ids(name: str) -> tuple[int, int]:
    entry = pwd.getpwnam(name)
    return entry.pw_uid, entry.pw_gid


def one_sentence(proc: subprocess.CompletedProcess[bytes]) -> str:
    err = proc.stderr.decode()
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def system_env(world_dir: Path, relay: Relay, relay_extra: str = "", pw: Path | None = None) -> Env:
    """A root-owned config for a shared spool run by psm-daemon, relaying to ``relay``."""
    ensure_user("psm-daemon")
    ensure_user("psm-alice")
    daemon_uid, daemon_gid = ids("psm-daemon")
    ca = world_dir / "relay-ca.pem"  # the fixture's CA lives in root's private tmp_path
    ca.write_bytes(relay.ca_file.read_bytes())
    ca.chmod(0o644)
    if pw is None:
        pw = world_dir / "password"
        pw.write_text(PASSWORD + "\n")
        os.chown(pw, 0, daemon_gid)
        pw.chmod(0o640)  # what 'pysendmail setup --system' writes
    e = write_config(world_dir, (
        f'[relay]\nhost = "localhost"\nport = {relay.port}\ntls = "implicit"\nusername = "{USER}"\n'
        f'password_file = "{pw}"\nca_file = "{ca}"\ntimeout = 10\n{relay_extra}\n'
    ), spool=world_dir / "spool")
    e.config.write_text(e.config.read_text().replace("[spool]\n", '[spool]\nuser = "psm-daemon"\n', 1))
    e.config.chmod(0o644)
    e.run("pysendmail", "spool", "init", check=True)
    return e


def marks(world_dir: Path) -> Path:
    """A directory where a command that should never run would leave its mark, whoever runs it."""
    path = world_dir / "marks"
    path.mkdir(exist_ok=True)
    path.chmod(0o1777)
    return path


def submit_as_alice(e: Env) -> None:
    proc = e.sendmail("-t", "-i", input=MESSAGE, user="psm-alice")
    assert proc.returncode == 0, proc.stderr.decode()


def queued(e: Env) -> int:
    return len(e.incoming()) + len(e.queued())


def assert_root_and_config_check_refuse(e: Env, relay: Relay, sentence: str) -> None:
    """Root's 'sendmail -q' and 'config check' both exit 78 with ``sentence``; nothing sent, the message kept."""
    for proc in (e.run("sendmail", "-q"), e.run("pysendmail", "config", "check")):
        assert proc.returncode == 78, proc
        assert sentence in one_sentence(proc)
    assert relay.logins == 0 and relay.messages == [] and queued(e) == 1


# ------------------------------------------------------------------ the password file
def test_password_file_owned_by_an_ordinary_user_is_refused_and_the_message_kept(world_dir: Path,
                                                                                 relay_factory) -> None:
    relay = relay_factory("implicit")
    ensure_user("psm-alice")
    ensure_user("psm-daemon")
    pw = world_dir / "alice-password"
    pw.write_text(PASSWORD + "\n")
    alice_uid, _ = ids("psm-alice")
    os.chown(pw, alice_uid, ids("psm-daemon")[1])
    pw.chmod(0o640)  # alice's file, readable by the daemon's group: the old rule accepted it
    e = system_env(world_dir, relay, pw=pw)
    # alice can read the relay password and choose it.
    assert as_user("psm-alice", "cat", str(pw)).stdout == (PASSWORD + "\n").encode()
    assert as_user("psm-alice", "sh", "-c", f"printf '%s\\n' '{PASSWORD}' > {pw}").returncode == 0
    submit_as_alice(e)

    flushed = e.run("sendmail", "-q")
    check = e.run("pysendmail", "config", "check")

    assert flushed.returncode == 0  # the queue run itself worked; the route holds
    err = flushed.stderr.decode()
    assert f"relay.password_file {pw} belongs to psm-alice (uid {alice_uid}), who could rewrite it" in err
    assert f"run 'chown root:psm-daemon {pw}; chmod 0640 {pw}'" in err
    assert relay.logins == 0 and relay.failed_logins == 0 and PASSWORD not in err
    assert queued(e) == 1
    assert check.returncode == 78 and f"belongs to psm-alice (uid {alice_uid})" in check.stderr.decode()


def test_password_file_in_a_directory_an_ordinary_user_owns_is_refused(world_dir: Path, relay_factory) -> None:
    relay = relay_factory("implicit")
    ensure_user("psm-alice")
    ensure_user("psm-daemon")
    alice_uid, alice_gid = ids("psm-alice")
    home = world_dir / "alice"
    home.mkdir(mode=0o755)
    os.chown(home, alice_uid, alice_gid)
    pw = home / "password"
    pw.write_text(PASSWORD + "\n")
    os.chown(pw, 0, ids("psm-daemon")[1])
    pw.chmod(0o640)  # root's file, right mode, but alice may rename it away and put hers in its place
    e = system_env(world_dir, relay, pw=pw)
    assert as_user("psm-alice", "mv", str(pw), str(home / "moved")).returncode == 0
    assert as_user("psm-alice", "sh", "-c", f"echo chosen-by-alice > {pw}").returncode == 0
    os.chown(pw, 0, ids("psm-daemon")[1])  # even once root's again, the directory stays hers
    pw.chmod(0o640)
    submit_as_alice(e)

    flushed = e.run("sendmail", "-q")

    err = flushed.stderr.decode()
    assert f"directory {home} above relay.password_file {pw} belongs to psm-alice (uid {alice_uid})" in err
    assert relay.logins == 0 and relay.failed_logins == 0 and queued(e) == 1


# ------------------------------------------------------------------ the configuration
def test_config_owned_by_an_ordinary_user_is_refused_by_root_flush_daemon_and_config_check(
        world_dir: Path, relay_factory) -> None:
    relay = relay_factory("implicit")
    ran = marks(world_dir) / "command-ran"
    e = system_env(world_dir, relay)
    alice_uid, alice_gid = ids("psm-alice")
    e.config.write_text(e.config.read_text().replace(
        "password_file", f'password_command = ["/bin/sh", "-c", "id -un > {ran}; echo {PASSWORD}"]\n#'))
    os.chown(e.config, alice_uid, alice_gid)
    # alice may rewrite it: the command in it is hers.
    assert as_user("psm-alice", "sh", "-c", f"echo '# alice was here' >> {e.config}").returncode == 0
    submit_as_alice(e)  # her own word, for her own submission: fine

    results = [e.run("sendmail", "-q"), e.run("pysendmail", "flush"), e.run("pysendmail", "config", "check"),
               e.run("pysendmail", "daemon", timeout=30), e.run("mailq")]

    for proc in results:
        assert proc.returncode == 78, proc
        err = one_sentence(proc)
        assert f"configuration {e.config} belongs to psm-alice (uid {alice_uid}), who could rewrite it" in err
        assert f"run 'chown root:root {e.config}; chmod go-w {e.config}'" in err
    assert not ran.exists()
    assert relay.logins == 0 and queued(e) == 1


def test_config_in_a_directory_an_ordinary_user_may_write_is_refused(world_dir: Path, relay_factory) -> None:
    relay = relay_factory("implicit")
    e = system_env(world_dir, relay)
    alice_uid, alice_gid = ids("psm-alice")
    confdir = world_dir / "etc"
    confdir.mkdir(mode=0o775)
    os.chown(confdir, 0, alice_gid)  # group-writable by alice's group
    os.chmod(confdir, 0o775)
    config = confdir / "pysendmail.toml"
    config.write_bytes(e.config.read_bytes())
    config.chmod(0o644)
    e.config = config
    assert as_user("psm-alice", "touch", str(confdir / "alice-can-write-here")).returncode == 0

    proc = e.run("sendmail", "-q")

    assert proc.returncode == 78
    err = one_sentence(proc)
    assert f"directory {confdir} above configuration {config} is writable by its group (gid {alice_gid})" in err
    assert f"chmod go-w {confdir}" in err


def test_config_group_writable_is_refused(world_dir: Path, relay_factory) -> None:
    relay = relay_factory("implicit")
    e = system_env(world_dir, relay)
    os.chown(e.config, 0, ids("psm-alice")[1])
    e.config.chmod(0o664)

    proc = e.run("pysendmail", "status")

    assert proc.returncode == 78
    assert f"configuration {e.config} is writable by its group" in one_sentence(proc)


def test_users_own_config_still_serves_submission_and_her_own_flush(world_dir: Path) -> None:
    """User mode: one user owns config, spool and Maildir; nothing is refused."""
    ensure_user("psm-alice")
    alice_uid, alice_gid = ids("psm-alice")
    home = world_dir / "alice-home"
    home.mkdir(mode=0o700)
    os.chown(home, alice_uid, alice_gid)
    config = home / "pysendmail.toml"
    config.write_text(f'[spool]\npath = "{home}/spool"\n[maildir]\npath = "{home}/Maildir"\n'
                      f'[host]\nname = "host.example.org"\naliases_file = "{home}/aliases"\n')
    os.chown(config, alice_uid, alice_gid)
    config.chmod(0o600)

    def alice(*cmd: str, input: bytes = b"") -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(["runuser", "-u", "psm-alice", "--", *cmd], input=input, capture_output=True,
                              timeout=60)

    from tests.conftest import program

    sent = alice(program("sendmail"), "-C", str(config), "-t", "-i", input=MESSAGE)
    flushed = alice(program("pysendmail"), "-C", str(config), "flush")
    checked = alice(program("pysendmail"), "-C", str(config), "config", "check")

    assert sent.returncode == 0, sent.stderr
    assert flushed.returncode == 0, flushed.stderr
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert len(os.listdir(home / "Maildir" / "new")) == 1


# ------------------------------------------------------------------ commands and files the config names
def test_password_command_an_ordinary_user_can_rewrite_never_runs(world_dir: Path, relay_factory) -> None:
    relay = relay_factory("implicit")
    ensure_user("psm-alice")
    alice_uid, alice_gid = ids("psm-alice")
    ran = marks(world_dir) / "script-ran"
    script = world_dir / "get-password"
    script.write_text(f"#!/bin/sh\nid -un > {ran}\necho '{PASSWORD}'\n")
    os.chown(script, alice_uid, alice_gid)
    script.chmod(0o755)
    e = system_env(world_dir, relay, relay_extra=f'password_command = ["{script}"]')
    assert as_user("psm-alice", "sh", "-c", f"echo '# mine' >> {script}").returncode == 0
    submit_as_alice(e)

    flushed = e.run("sendmail", "-q")
    check = e.run("pysendmail", "config", "check")

    err = flushed.stderr.decode()
    assert f"relay.password_command file {script} belongs to psm-alice (uid {alice_uid})" in err
    assert not ran.exists()
    assert relay.logins == 0 and queued(e) == 1
    assert check.returncode == 78 and f"{script} belongs to psm-alice" in check.stderr.decode()


def test_script_handed_to_an_interpreter_is_judged_too(world_dir: Path, relay_factory) -> None:
    relay = relay_factory("implicit")
    ensure_user("psm-alice")
    alice_uid, alice_gid = ids("psm-alice")
    ran = marks(world_dir) / "script-ran"
    script = world_dir / "get-password.sh"
    script.write_text(f"id -un > {ran}\necho '{PASSWORD}'\n")
    os.chown(script, alice_uid, alice_gid)
    script.chmod(0o644)
    e = system_env(world_dir, relay, relay_extra=f'password_command = ["/bin/sh", "{script}"]')
    submit_as_alice(e)

    err = e.run("sendmail", "-q").stderr.decode()

    assert f"{script} belongs to psm-alice (uid {alice_uid})" in err
    assert not ran.exists() and relay.logins == 0


def test_ca_file_an_ordinary_user_owns_is_refused(world_dir: Path, relay_factory) -> None:
    relay = relay_factory("implicit")
    e = system_env(world_dir, relay)
    alice_uid, alice_gid = ids("psm-alice")
    ca = world_dir / "relay-ca.pem"
    os.chown(ca, alice_uid, alice_gid)  # alice could add her own CA and read the password in transit
    submit_as_alice(e)

    assert_root_and_config_check_refuse(
        e, relay, f"relay.ca_file {ca} belongs to psm-alice (uid {alice_uid})")


def test_aliases_file_an_ordinary_user_can_write_is_refused(world_dir: Path, relay_factory) -> None:
    relay = relay_factory("implicit")
    e = system_env(world_dir, relay)
    alice_uid, alice_gid = ids("psm-alice")
    e.aliases_file.write_text("root: someone@example.net\n")
    os.chown(e.aliases_file, alice_uid, alice_gid)
    assert as_user("psm-alice", "sh", "-c", f"echo 'postmaster: alice@evil.example' >> {e.aliases_file}").returncode == 0
    submit_as_alice(e)

    assert_root_and_config_check_refuse(
        e, relay, f"host.aliases_file {e.aliases_file} belongs to psm-alice (uid {alice_uid})")


def test_dkim_key_an_ordinary_user_owns_is_refused(world_dir: Path, relay_factory) -> None:
    relay = relay_factory("implicit")
    e = system_env(world_dir, relay)
    alice_uid, _ = ids("psm-alice")
    key = world_dir / "dkim.key"
    made = e.run("pysendmail", "dkim", "keygen", "--domain", "example.org", "--selector", "m", "--output", str(key))
    assert made.returncode == 0, made.stderr
    os.chown(key, alice_uid, ids("psm-daemon")[1])
    key.chmod(0o640)  # hers, and the daemon's group may read it
    with open(e.config, "a") as fh:
        fh.write(f'[[dkim]]\ndomain = "example.org"\nselector = "m"\nkey_file = "{key}"\n')
    submit_as_alice(e)

    assert_root_and_config_check_refuse(
        e, relay, f"DKIM key {key} for example.org belongs to psm-alice (uid {alice_uid})")


def test_system_files_as_setup_writes_them_pass(world_dir: Path, relay_factory) -> None:
    """The control case: root:root config, root:daemon-group 0640 password, daemon-owned 0600 key."""
    relay = relay_factory("implicit")
    e = system_env(world_dir, relay)
    key = world_dir / "dkim.key"
    e.run("pysendmail", "dkim", "keygen", "--domain", "example.org", "--selector", "m", "--output", str(key),
          check=True)
    with open(e.config, "a") as fh:
        fh.write(f'[[dkim]]\ndomain = "example.org"\nselector = "m"\nkey_file = "{key}"\n')
    submit_as_alice(e)

    check = e.run("pysendmail", "config", "check")
    flushed = e.run("sendmail", "-q")

    assert check.returncode == 0, check.stdout + check.stderr
    assert flushed.returncode == 0, flushed.stderr
    assert relay.wait_for(1)[0].rcpt_tos == ["someone@example.net"]


# ------------------------------------------------------------------ an inline password
@pytest.mark.parametrize("cache", ["cold", "warm"])
def test_sendmail_refuses_an_inline_password_in_a_world_readable_config_and_queues_nothing(
        world_dir: Path, relay_factory, cache: str) -> None:
    relay = relay_factory("implicit")
    e = system_env(world_dir, relay)
    e.config.write_text(e.config.read_text().replace("password_file", f'password = "{PASSWORD}"\n#'))
    e.config.chmod(0o600)
    if cache == "warm":  # written while the file was private; chmod changes no stamp field
        assert e.run("pysendmail", "config", "check").returncode == 0
        assert Path(str(e.config) + ".cache").exists()
    else:
        Path(str(e.config) + ".cache").unlink(missing_ok=True)
    e.config.chmod(0o644)

    proc = e.sendmail("-t", "-i", input=MESSAGE, user="psm-alice")
    bs = e.sendmail("-bs", input=b"QUIT\r\n", user="psm-alice")

    assert proc.returncode == 78
    err = one_sentence(proc)
    assert f"configuration holding relay.password {e.config} is readable by every user" in err
    assert f"chmod o-rwx {e.config}" in err and "nothing was queued" in err and PASSWORD not in err
    assert bs.returncode == 78 and bs.stdout == b""
    assert e.incoming() == []


def test_sendmail_accepts_an_inline_password_config_only_the_daemon_group_reads(world_dir: Path,
                                                                                 relay_factory) -> None:
    relay = relay_factory("implicit")
    e = system_env(world_dir, relay)
    e.config.write_text(e.config.read_text().replace("password_file", f'password = "{PASSWORD}"\n#'))
    os.chown(e.config, 0, ids("psm-daemon")[1])
    e.config.chmod(0o640)
    assert e.run("pysendmail", "config", "check").returncode == 0  # writes the cache alice reads

    proc = e.sendmail("-t", "-i", input=MESSAGE, user="psm-alice")
    flushed = e.run("sendmail", "-q")

    assert proc.returncode == 0, proc.stderr
    assert flushed.returncode == 0, flushed.stderr
    assert relay.wait_for(1)[0].rcpt_tos == ["someone@example.net"]


# ------------------------------------------------------------------ the spool
def test_spool_under_a_directory_an_ordinary_user_owns_is_refused_by_root_flush(world_dir: Path,
                                                                                relay_factory) -> None:
    relay = relay_factory("implicit")
    e = system_env(world_dir, relay)
    alice_uid, alice_gid = ids("psm-alice")
    parent = world_dir / "alice-spools"
    parent.mkdir(mode=0o755)
    os.chown(parent, alice_uid, alice_gid)
    spool = parent / "spool"
    e.config.write_text(e.config.read_text().replace(f'path = "{e.spool}"', f'path = "{spool}"', 1))
    e.spool = spool
    e.run("pysendmail", "spool", "init", check=True)  # root makes it psm-daemon's, as for any spool
    # ...but alice may swap it for one of her own, which root's flush would then become.
    assert as_user("psm-alice", "mv", str(spool), str(parent / "old")).returncode == 0
    assert as_user("psm-alice", "mkdir", "-m", "755", str(spool)).returncode == 0

    for proc in (e.run("sendmail", "-q"), e.run("pysendmail", "daemon", timeout=30)):
        assert proc.returncode == 78, proc
        err = one_sentence(proc)
        assert f"spool {spool} belongs to psm-alice (uid {alice_uid})" in err
    os.rmdir(spool)
    os.rename(parent / "old", spool)  # the real one back: the directory above is still hers
    proc = e.run("sendmail", "-q")
    assert proc.returncode == 78
    assert f"directory {parent} above spool {spool} belongs to psm-alice (uid {alice_uid})" in one_sentence(proc)


def test_config_owned_by_the_daemon_user_is_its_word_but_not_roots(world_dir: Path, relay_factory) -> None:
    """The daemon's user may not give itself root by editing what root's sendmail -q acts on."""
    from tests.conftest import program

    relay = relay_factory("implicit")
    e = system_env(world_dir, relay)
    daemon_uid, daemon_gid = ids("psm-daemon")
    os.chown(e.config, daemon_uid, daemon_gid)

    as_root = e.run("sendmail", "-q")
    as_daemon = as_user("psm-daemon", "env", f"PYSENDMAIL_CONFIG={e.config}", program("pysendmail"),
                        "config", "check")

    assert as_root.returncode == 78
    assert f"configuration {e.config} belongs to psm-daemon (uid {daemon_uid})" in one_sentence(as_root)
    assert as_daemon.returncode == 0, as_daemon.stdout + as_daemon.stderr
    assert (f"WARN configuration {e.config} belongs to psm-daemon, the daemon's user: the daemon uses it, "
            f"but 'pysendmail flush' and 'sendmail -q' as root refuse it").encode() in as_daemon.stdout


def test_config_reached_through_a_symlink_an_ordinary_user_may_repoint_is_refused(world_dir: Path,
                                                                                  relay_factory) -> None:
    relay = relay_factory("implicit")
    e = system_env(world_dir, relay)
    alice_uid, alice_gid = ids("psm-alice")
    home = world_dir / "alice-links"
    home.mkdir(mode=0o755)
    os.chown(home, alice_uid, alice_gid)
    link = home / "pysendmail.toml"
    link.symlink_to(e.config)  # points at root's own file, for now
    e.config = link

    proc = e.run("sendmail", "-q")

    assert proc.returncode == 78
    assert f"directory {home} above configuration {link} belongs to psm-alice (uid {alice_uid})" in one_sentence(proc)
