"""sendmail -C FILE reaches every mode that hands over to the pysendmail command (issue 11, part 4).

-q, -q<interval>, -bd, -bp, -bi and -bv hand over to admin/cli.py.  Each is
run with PYSENDMAIL_CONFIG naming config A (what any command would use
without -C) and ``-C`` naming config B, and must act on B alone: B's
queue, B's aliases, B's spool.  Before the fix -q, -q15m and -bd exited 64
("pysendmail: unrecognized arguments: -C FILE").

newaliases (and sendmail -bi) name ``FILE:LINE`` of a malformed alias in
the TOML [aliases] table too, as they do for /etc/aliases.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import Env, program, write_config


@pytest.fixture
def two_configs(tmp_path: Path) -> tuple[Env, Env]:
    """A: named by PYSENDMAIL_CONFIG (what every command would use); B: given with -C only."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = write_config(tmp_path / "a")
    b = write_config(tmp_path / "b")
    for e, who in ((a, "a"), (b, "b")):
        e.aliases_file.write_text(f"root: {who}-admin@example.net\n")
        e.run("pysendmail", "spool", "init", check=True)
    return a, b


def test_sendmail_q_runs_the_queue_of_the_c_file_when_the_environment_names_another(two_configs: tuple[Env, Env]) -> None:
    a, b = two_configs
    b.sendmail("-i", "b@example.net", input=b"Subject: for b\n\nx\n", check=True)
    a.sendmail("-i", "a@example.net", input=b"Subject: for a\n\nx\n", check=True)

    proc = a.sendmail("-C", str(b.config), "-q")

    assert proc.returncode == 0, proc.stderr.decode()  # was 64: "unrecognized arguments: -C FILE"
    (delivered,) = b.delivered()
    assert b"Subject: for b" in delivered
    assert a.delivered() == [] and len(a.incoming()) == 1


def test_sendmail_bp_lists_the_queue_of_the_c_file_when_the_environment_names_another(two_configs: tuple[Env, Env]) -> None:
    a, b = two_configs
    b.sendmail("-i", "only-in-b@example.net", input=b"Subject: x\n\nx\n", check=True)

    proc = a.sendmail("-C", str(b.config), "-bp")

    assert proc.returncode == 0, proc.stderr.decode()
    assert "only-in-b@example.net" in proc.stdout.decode()
    assert a.sendmail("-bp", check=True).stdout == b"Mail queue is empty\n"


def test_sendmail_bi_checks_the_aliases_of_the_c_file_when_the_environment_names_another(two_configs: tuple[Env, Env]) -> None:
    a, b = two_configs
    b.aliases_file.write_text("root: b-admin@example.net\nbroken line\n")

    proc = a.sendmail("-C", str(b.config), "-bi")

    assert proc.returncode == 65
    err = proc.stderr.decode()
    assert str(b.aliases_file) in err and "expected 'name: address, ...'" in err
    assert a.sendmail("-bi").returncode == 0


def test_sendmail_bv_resolves_with_the_aliases_of_the_c_file_when_the_environment_names_another(
        two_configs: tuple[Env, Env]) -> None:
    a, b = two_configs
    proc = a.sendmail("-C", str(b.config), "-bv", "root")
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout == b"root... deliverable: b-admin@example.net\n"


@pytest.mark.parametrize("flag", ["-bd", "-q30m"])
def test_sendmail_bd_runs_the_daemon_on_the_spool_of_the_c_file_when_the_environment_names_another(
        two_configs: tuple[Env, Env], tmp_path: Path, flag: str) -> None:
    a, b = two_configs
    b.sendmail("-i", "b@example.net", input=b"Subject: for b\n\nx\n", check=True)
    a.sendmail("-i", "a@example.net", input=b"Subject: for a\n\nx\n", check=True)
    with open(tmp_path / "daemon.log", "wb") as log:
        daemon = subprocess.Popen([program("sendmail"), "-C", str(b.config), flag], env=a.environ,
                                  stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while not b.delivered():
            assert daemon.poll() is None, (tmp_path / "daemon.log").read_text()  # was: exit 64 at once
            assert time.monotonic() < deadline, "the daemon did not deliver B's message within 30 s"
            time.sleep(0.05)
    finally:
        daemon.terminate()
        code = daemon.wait(30)
    assert code == 0, (tmp_path / "daemon.log").read_text()
    assert f"spool {b.spool}" in (tmp_path / "daemon.log").read_text()
    assert a.delivered() == [] and len(a.incoming()) == 1


# ------------------------------------------------------------ newaliases: FILE:LINE in the TOML
@pytest.mark.parametrize("how", [("newaliases",), ("sendmail", "-bi"), ("pysendmail", "newaliases")])
def test_newaliases_names_the_toml_file_and_line_when_a_config_alias_is_a_pipe(env: Env, how: tuple[str, ...]) -> None:
    text = env.config.read_text() + '\n[aliases]\nroot = "admin@example.net"\n# spam filter\nspam = "|/usr/bin/spamc"\n'
    env.config.write_text(text)
    line = text.splitlines().index('spam = "|/usr/bin/spamc"') + 1
    proc = env.run(*how)
    assert proc.returncode == 65
    err = proc.stderr.decode()
    assert f"{env.config}:{line}: [aliases] spam: '|/usr/bin/spamc' is a pipe to a command" in err
    assert err.count("\n") == 1


def test_newaliases_names_the_toml_file_and_line_when_a_config_alias_is_not_a_string(env: Env) -> None:
    text = env.config.read_text() + '\n[aliases]\nroot = "admin@example.net"\nops = 42\n'
    env.config.write_text(text)
    line = text.splitlines().index("ops = 42") + 1
    proc = env.run("newaliases")
    assert proc.returncode == 78
    assert f"{env.config}:{line}: aliases.ops must be a string or a list of strings" in proc.stderr.decode()
