"""The tests do not depend on the host: a system config in /etc/pysendmail changes no result.

A .deb install or a ``pysendmail setup`` run as root leaves
/etc/pysendmail/pysendmail.toml, which comes before the user's own config
in the search order.  Tests that unset PYSENDMAIL_CONFIG to test that
search (or user mode) used to read it: with a host.name there, four cases
of test_hostname_prefers_a_dotted_fqdn... failed, and five more tests
skipped themselves.  Here the tests that search for a config run in a
private mount namespace (unshare) where /etc/pysendmail holds a hostile
config: a tmpfs over the directory when the host has one, else an overlay
of /etc with the directory added in its private upper layer.  The host's
/etc is never written, and other processes never see the hostile file.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import SYSTEM_CONFIG_DIR, needs_root, program

ROOT = Path(__file__).resolve().parents[2]

# Valid, so that a test reading it does not fail on a parse error but on
# values that are not its own: another host name, spool, and relay.
HOSTILE = """\
# Written by tests/qa/test_isolation.py in a private mount namespace.
[spool]
path = "/nonexistent/hostile-spool"

[host]
name = "hostile-system-config.invalid"
default_domain = "hostile-system-config.invalid"

[relay]
host = "192.0.2.1"
port = 465
tls = "implicit"
username = "hostile@hostile-system-config.invalid"
password_file = "/nonexistent/hostile-password"
"""

# The tests that look for a config without -C or PYSENDMAIL_CONFIG.
SUBSET = [
    "tests/unit/test_config.py",
    "tests/qa/test_userdirs.py",
    "tests/integration/test_admin_commands.py::"
    "test_setup_user_mode_as_an_unprivileged_user_then_php_mail_and_sendmail_q_reach_the_relay",
]

# Runs as root in the new mount namespace: $1 is a scratch directory,
# $2 the hostile config, the rest the command.
SCRIPT = r"""
set -e
work=$1; config=$2; shift 2
mount -t tmpfs -o mode=0700 tmpfs "$work"
if [ -d /etc/pysendmail ]; then
    mount -t tmpfs -o mode=0755 tmpfs /etc/pysendmail
else
    mkdir "$work/upper" "$work/work"
    mount -t overlay overlay -o "lowerdir=/etc,upperdir=$work/upper,workdir=$work/work" /etc
    mkdir -m 0755 /etc/pysendmail
fi
cp "$config" /etc/pysendmail/pysendmail.toml
chmod 0644 /etc/pysendmail/pysendmail.toml
exec "$@"
"""


def in_hostile_namespace(tmp_path: Path, *cmd: str, env: dict[str, str] | None = None,
                         timeout: float = 900) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "hostile.toml"
    config.write_text(HOSTILE)
    work = tmp_path / "ns"
    work.mkdir()
    return subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", SCRIPT, "sh", str(work),
                           str(config), *cmd], capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                          env=env)


@needs_root
def test_the_hostile_system_config_is_what_an_unpinned_command_reads(tmp_path: Path) -> None:
    """The namespace works: without PYSENDMAIL_CONFIG, pysendmail reads the hostile file (so the
    next test passing means the tests pin their config, not that the file was missing)."""
    def host_state() -> tuple[bool, bytes | None]:
        path = Path(SYSTEM_CONFIG_DIR) / "pysendmail.toml"
        return os.path.lexists(SYSTEM_CONFIG_DIR), path.read_bytes() if path.is_file() else None

    before = host_state()
    env = {k: v for k, v in os.environ.items() if k != "PYSENDMAIL_CONFIG"}
    proc = in_hostile_namespace(tmp_path, program("pysendmail"), "config", "show", env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"# {SYSTEM_CONFIG_DIR}/pysendmail.toml\n"), proc.stdout
    assert "hostile-system-config.invalid" in proc.stdout
    # ... and this process's /etc (the host's) is as it was.
    assert host_state() == before


@needs_root
def test_config_search_tests_pass_with_a_hostile_system_config(tmp_path: Path) -> None:
    assert shutil.which("unshare"), "unshare (util-linux) is needed"
    proc = in_hostile_namespace(tmp_path, sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs",
                                *SUBSET)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    # Nothing skipped itself because a system config exists.
    assert "exists" not in "\n".join(line for line in out.splitlines() if line.startswith("SKIPPED")), out[-3000:]
    assert " passed" in out.splitlines()[-1], out[-2000:]
