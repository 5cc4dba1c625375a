"""pysendmail's own XDG rule agrees with platformdirs, which it avoids importing.

``pysendmail.core.config.user_dir`` computes platformdirs'
``user_config_dir("pysendmail")`` and ``user_data_dir("pysendmail")``
without importing platformdirs (9 ms of start-up on the submission path).
DESIGN.md names platformdirs' directories as the contract, so the two must
agree.  Each case runs in a fresh interpreter with an environment built
from nothing but PATH, HOME and the XDG variables under test, so neither
this process's environment nor a module cache can leak in.

A relative XDG value is invalid and must be ignored (XDG Base Directory
Specification: "If an implementation encounters a relative path in any of
these variables it should consider the path invalid and ignore it").
Current platformdirs does that; old releases (Debian 12's 2.6) used the
value as given, so those cases check the specification, not platformdirs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

PROBE = r"""
import json
import platformdirs
from pysendmail.core import config
print(json.dumps({
    "ours": [config.user_dir("config"), config.user_dir("data")],
    "platformdirs": [platformdirs.user_config_dir("pysendmail"), platformdirs.user_data_dir("pysendmail")],
}))
"""


def probe(tmp_path: Path, home: str | None, **xdg: str) -> dict[str, list[str]]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    if home is not None:
        env["HOME"] = home
    env.update(xdg)
    # -I: no PYTHON* variables, no user site, no cwd on sys.path.
    proc = subprocess.run([sys.executable, "-I", "-c", PROBE], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=60)
    assert proc.returncode == 0, proc.stderr
    result: dict[str, list[str]] = json.loads(proc.stdout)
    return result


@pytest.fixture
def home(tmp_path: Path) -> str:
    path = tmp_path / "home" / "alice"
    path.mkdir(parents=True)
    return str(path)


def test_user_dirs_match_platformdirs_without_xdg_variables(tmp_path: Path, home: str) -> None:
    got = probe(tmp_path, home)
    assert got["ours"] == got["platformdirs"]
    assert got["ours"] == [f"{home}/.config/pysendmail", f"{home}/.local/share/pysendmail"]


def test_user_dirs_match_platformdirs_with_xdg_variables(tmp_path: Path, home: str) -> None:
    got = probe(tmp_path, home, XDG_CONFIG_HOME=str(tmp_path / "cfg"), XDG_DATA_HOME=str(tmp_path / "data"))
    assert got["ours"] == got["platformdirs"]
    assert got["ours"] == [str(tmp_path / "cfg" / "pysendmail"), str(tmp_path / "data" / "pysendmail")]


@pytest.mark.parametrize("var", ["XDG_CONFIG_HOME", "XDG_DATA_HOME"])
def test_user_dirs_match_platformdirs_with_one_xdg_variable(tmp_path: Path, home: str, var: str) -> None:
    got = probe(tmp_path, home, **{var: str(tmp_path / "xdg")})
    assert got["ours"] == got["platformdirs"]
    assert str(tmp_path / "xdg" / "pysendmail") in got["ours"]


def test_user_dirs_match_platformdirs_with_empty_xdg_variables(tmp_path: Path, home: str) -> None:
    got = probe(tmp_path, home, XDG_CONFIG_HOME="", XDG_DATA_HOME="")
    assert got["ours"] == got["platformdirs"]
    assert got["ours"] == [f"{home}/.config/pysendmail", f"{home}/.local/share/pysendmail"]


def test_user_dirs_match_platformdirs_with_trailing_slashes(tmp_path: Path, home: str) -> None:
    got = probe(tmp_path, home + "/", XDG_CONFIG_HOME=str(tmp_path / "cfg") + "/")
    assert got["ours"] == got["platformdirs"]


def test_user_dirs_match_platformdirs_without_home(tmp_path: Path) -> None:
    # cron and some daemons run without HOME: both fall back to the passwd entry.
    got = probe(tmp_path, None)
    assert got["ours"] == got["platformdirs"]
    assert all(os.path.isabs(p) for p in got["ours"])


@pytest.mark.parametrize("value", ["relative/dir", " /leading-space", "~/tilde"])
def test_relative_xdg_variables_are_ignored(tmp_path: Path, home: str, value: str) -> None:
    got = probe(tmp_path, home, XDG_CONFIG_HOME=value, XDG_DATA_HOME=value)
    assert got["ours"] == [f"{home}/.config/pysendmail", f"{home}/.local/share/pysendmail"]


def test_sendmail_with_relative_xdg_data_home_queues_in_the_default_spool(tmp_path: Path, home: str) -> None:
    # Regression: XDG_DATA_HOME=data made the user-mode spool path relative
    # and sendmail exit 78 ("spool.path ... must be an absolute path").
    from tests.conftest import SIMPLE, hide_system_config, program

    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": home, "XDG_DATA_HOME": "data"}
    # A system config (the host's /etc/pysendmail) would send it to the system spool: hidden.
    proc = subprocess.run(hide_system_config([program("sendmail"), "-t", "-i"]), input=SIMPLE, capture_output=True,
                          env=env, cwd=tmp_path, timeout=60)
    assert proc.returncode == 0, proc.stderr
    # No config: deliver_without_daemon is on, and the caller owns the spool,
    # so a detached run carries the message on into the default Maildir.
    data = Path(home) / ".local/share/pysendmail"
    deadline = time.monotonic() + 30
    while not (data / "Maildir/new").is_dir() or len(os.listdir(data / "Maildir/new")) != 1:
        assert time.monotonic() < deadline, f"the message did not reach {data / 'Maildir/new'}"
        time.sleep(0.02)
    while b"run: done" not in (data / "spool/state/run.log").read_bytes():  # the run is gone before tmp_path goes
        assert time.monotonic() < deadline + 30, "the delivery run did not end"
        time.sleep(0.02)
    assert not (tmp_path / "data").exists()
