"""The submission path's import budget: what ``sendmail`` must never import.

Start-up time is the product (DESIGN.md "Quality bars"), and a module
imported on the submission path is paid by every PHP ``mail()`` call.
These tests run the installed ``sendmail`` under ``-X importtime`` against
a real spool and read which modules the process imported.

The editable-install problem, and how it is handled: in a venv where
pysendmail is installed editable, site runs setuptools' __editable__ finder
from a .pth file at start-up, and that finder imports pathlib, re, enum,
urllib.parse and more.  Those are then already in sys.modules when the
launcher runs, so importtime never shows pysendmail importing them: a
check of the real command would pass whatever pysendmail did.  Hence two
kinds of run:

* clean room (authoritative, any kind of install): the launcher is run by
  its own interpreter with ``-S`` (no site, so no .pth file, no finder, no
  sitecustomize) and PYTHONPATH naming the directory pysendmail is
  imported from plus site-packages (PYTHONPATH runs no .pth file).  Every
  module in that process is imported by the interpreter's bare start-up,
  the launcher or pysendmail; none of the forbidden ones may appear.
* as installed: the launcher exactly as its shebang runs it.  Forbidden
  modules may appear only if the interpreter imports them anyway at
  start-up in this installation (``python -c pass`` with the same
  interpreter and environment is the baseline).  With a regular install
  (CI: ``pip install ".[test]"``) the baseline holds none of them, so this
  is a whole-process check; with an editable one it is only a check that
  nothing after site adds any (the clean-room run covers the rest), and
  the test says so in its assertion message if it fails.

The settings cache is warmed first (``pysendmail config check``), so the
measured run needs no tomllib; a cold cache is shown to use tomllib and
still queue the message where the config says.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pysendmail.core import config, spoolfile
from tests.conftest import SIMPLE, Env, program

# Never on the submission path (tests/qa owns this list; DESIGN.md
# "Typing": the lean path avoids typing, dataclasses, enum).
FORBIDDEN = (
    "asyncio", "ssl", "aiosmtplib", "dkim", "email", "re", "json", "typing", "logging",
    "dataclasses", "tomllib", "platformdirs", "argparse", "socket", "enum",
    "authlib", "requests",  # auth = "oauth2" (daemon/oauth.py): the daemon's and 'oauth login''s only
    "redis",  # [fleet] (daemon/fleet.py): the daemon's only, and only with a [fleet] table
)
# What -bs, a long SMTP dialogue on stdio, must still not pull in.
FORBIDDEN_BS = ("asyncio", "ssl", "aiosmtplib", "dkim", "authlib", "requests")

MESSAGE = (
    b"From: Web Site <www@example.org>\n"
    b"To: Someone <someone@example.net>, other@example.net\n"
    b"Cc: third@example.net\n"
    b"Subject: order 12345\n"
    b"Date: Mon, 01 Jan 2024 12:00:00 +0000\n"
    b"Message-ID: <qa.12345@example.org>\n"
    b"MIME-Version: 1.0\n"
    b"Content-Type: text/plain; charset=utf-8\n"
    b"\n" + "Grüße, the shop.\n".encode() * 200
)


def forbidden_in(modules: set[str], names: tuple[str, ...]) -> list[str]:
    """Forbidden names that ``modules`` holds, counting submodules (email.parser counts as email)."""
    return sorted(m for m in modules if m in names or m.split(".", 1)[0] in names)


class ImportRun:
    """The modules one ``-X importtime`` run imported, in order."""

    def __init__(self, proc: subprocess.CompletedProcess[bytes]) -> None:
        self.proc = proc
        self.rows: list[tuple[str, int]] = []  # (module, depth)
        for line in proc.stderr.decode(errors="replace").splitlines():
            if not line.startswith("import time:") or "imported package" in line:
                continue
            name = line.split("|", 2)[2]
            stripped = name.lstrip(" ")
            self.rows.append((stripped, (len(name) - len(stripped) - 1) // 2))
        self.modules = {name for name, _ in self.rows}

    @property
    def editable(self) -> bool:
        return any(name.startswith("__editable__") for name in self.modules)

    @property
    def after_site(self) -> set[str]:
        ends = [i for i, (name, depth) in enumerate(self.rows) if name == "site" and depth == 0]
        return {name for name, _ in self.rows[(ends[-1] + 1 if ends else 0):]}

    def explain(self) -> str:
        return self.proc.stderr.decode(errors="replace")[-6000:]


def interpreter(script: str) -> list[str]:
    """The launcher's shebang as argv: the interpreter and its flags."""
    with open(script, "rb") as fh:
        first = fh.readline().decode()
    assert first.startswith("#!"), f"{script} has no shebang: {first!r}"
    return shlex.split(first[2:])


def clean_env(e: Env) -> dict[str, str]:
    env = {k: v for k, v in e.environ.items() if not k.startswith("PYTHON")}
    env["PYSENDMAIL_CONFIG"] = str(e.config)
    return env


def run_as_installed(e: Env, args: list[str], stdin: bytes) -> ImportRun:
    script = program("sendmail")
    cmd = interpreter(script) + ["-X", "importtime", script, *args]
    return ImportRun(subprocess.run(cmd, input=stdin, capture_output=True, env=clean_env(e), timeout=60))


def installed_path(python: str) -> list[str]:
    """Where the launcher's interpreter imports pysendmail from, and its site-packages.

    Not this process's pysendmail: pytest may have put the source tree
    first on sys.path, while the launcher runs what was installed.
    """
    code = (
        "import os, sysconfig, pysendmail\n"
        "print(os.path.dirname(os.path.dirname(os.path.abspath(pysendmail.__file__))))\n"
        "print(sysconfig.get_paths()['purelib'])\n"
    )
    proc = subprocess.run([python, "-I", "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.splitlines()


def run_clean_room(e: Env, args: list[str], stdin: bytes) -> ImportRun:
    script = program("sendmail")
    python = interpreter(script)[0]
    env = clean_env(e)
    env["PYTHONPATH"] = os.pathsep.join(installed_path(python))  # a PYTHONPATH entry runs no .pth file
    cmd = [interpreter(script)[0], "-S", "-X", "importtime", script, *args]
    return ImportRun(subprocess.run(cmd, input=stdin, capture_output=True, env=env, timeout=60))


def baseline(e: Env) -> ImportRun:
    """What the launcher's interpreter imports by itself at start-up, here."""
    cmd = interpreter(program("sendmail")) + ["-X", "importtime", "-c", "pass"]
    return ImportRun(subprocess.run(cmd, capture_output=True, env=clean_env(e), timeout=60))


def warm(e: Env) -> None:
    e.run("pysendmail", "config", "check", check=True)
    assert Path(config.cache_path(str(e.config))).is_file(), "config check did not write the settings cache"


def queued_envelopes(e: Env) -> list[spoolfile.Envelope]:
    return [spoolfile.decode((e.spool / "incoming" / n).read_bytes())[0] for n in e.incoming()]


# ---------------------------------------------------------------- sendmail -t -i
def test_submission_imports_no_heavy_module_clean_room(env: Env) -> None:
    warm(env)
    run = run_clean_room(env, ["-t", "-i"], MESSAGE)
    assert run.proc.returncode == 0, run.explain()
    assert not run.editable and "site" not in run.modules, "the clean-room run must not run site"
    assert "pysendmail.submit.main" in run.modules, run.explain()
    assert forbidden_in(run.modules, FORBIDDEN) == [], run.explain()
    assert len(env.incoming()) == 1


def test_installed_sendmail_imports_no_heavy_module(env: Env) -> None:
    warm(env)
    run = run_as_installed(env, ["-t", "-i"], MESSAGE)
    assert run.proc.returncode == 0, run.explain()
    assert "pysendmail.submit.main" in run.modules, run.explain()
    base = baseline(env)
    extra = forbidden_in(run.modules - base.modules, FORBIDDEN)
    note = (" (editable install: its finder imports some modules at start-up, so only what came after "
            "site is checked here; test_submission_imports_no_heavy_module_clean_room checks the rest)"
            if run.editable else "")
    assert extra == [], f"sendmail imported {extra}{note}\n{run.explain()}"
    assert forbidden_in(run.after_site, FORBIDDEN) == [], run.explain()
    assert len(env.incoming()) == 1


def test_submission_with_cold_cache_reads_toml_and_queues_correctly(env: Env) -> None:
    warm(env)
    cache = Path(config.cache_path(str(env.config)))
    cache.unlink()
    cold = run_clean_room(env, ["-t", "-i", "-f", "www@example.org"], MESSAGE)
    assert cold.proc.returncode == 0, cold.explain()
    assert "tomllib" in cold.modules, "a cold cache must be rebuilt from the TOML file"
    assert cache.is_file(), "the submitter (the config's owner) rewrites the cache"
    # The next submission is back on the lean path.
    hot = run_clean_room(env, ["-t", "-i", "-f", "www@example.org"], MESSAGE)
    assert hot.proc.returncode == 0, hot.explain()
    assert "tomllib" not in hot.modules, hot.explain()
    # Both landed in the configured spool with the same, right envelope.
    envelopes = queued_envelopes(env)
    assert len(envelopes) == 2
    for e in envelopes:
        assert e.sender == "www@example.org"
        assert sorted(e.recipients) == ["other@example.net", "someone@example.net", "third@example.net"]
    bodies = [spoolfile.decode((env.spool / "incoming" / n).read_bytes())[1] for n in env.incoming()]
    assert bodies == [MESSAGE.replace(b"\n", b"\r\n")] * 2  # the spool keeps CRLF


def test_submission_with_stale_cache_follows_the_edited_config(env: Env, tmp_path: Path) -> None:
    # Stale, not missing: the config now names another spool; the cache's
    # stamp no longer matches, so sendmail must read the TOML again.
    warm(env)
    moved = tmp_path / "spool2"
    text = env.config.read_text().replace(str(env.spool), str(moved))
    assert text != env.config.read_text()
    env.config.write_text(text)
    env.run("pysendmail", "spool", "init", check=True)  # also rewrites the cache: make it stale again
    env.config.write_text(text + "\n# edited\n")
    run = run_clean_room(env, ["-t", "-i"], SIMPLE)
    assert run.proc.returncode == 0, run.explain()
    assert "tomllib" in run.modules
    assert len(os.listdir(moved / "incoming")) == 1
    assert env.incoming() == []


@pytest.mark.parametrize("how", ["clean_room", "as_installed"])
def test_submission_that_starts_a_delivery_run_imports_no_heavy_module(env: Env, how: str) -> None:
    # The fork happens in sendmail; the run imports the daemon only after its exec.
    env.config.write_text(env.config.read_text().replace("deliver_without_daemon = false",
                                                         "deliver_without_daemon = true"))
    warm(env)
    runner = run_clean_room if how == "clean_room" else run_as_installed
    run = runner(env, ["-t", "-i", "-v"], MESSAGE)
    assert run.proc.returncode == 0, run.explain()
    assert b"started a delivery run" in run.proc.stderr, run.explain()
    modules = run.modules if how == "clean_room" else run.modules - baseline(env).modules
    assert forbidden_in(modules, FORBIDDEN) == [], run.explain()
    assert "pysendmail.daemon.run" not in run.modules, run.explain()
    deadline = time.monotonic() + 30  # MESSAGE has three recipients: three Maildir files
    log = env.spool / "state" / "run.log"
    while len(env.delivered()) != 3 or not log.exists() or "run: done" not in log.read_text():
        assert time.monotonic() < deadline, "the delivery run did not deliver and end"
        time.sleep(0.02)


# ---------------------------------------------------------------- sendmail -bs
BS_DIALOGUE = (
    b"EHLO client.example.org\r\n"
    b"MAIL FROM:<www@example.org>\r\n"
    b"RCPT TO:<someone@example.net>\r\n"
    b"DATA\r\n"
    + MESSAGE.replace(b"\n", b"\r\n")
    + b".\r\n"
    b"QUIT\r\n"
)


@pytest.mark.parametrize("how", ["clean_room", "as_installed"])
def test_bs_imports_no_async_tls_or_dkim(env: Env, how: str) -> None:
    warm(env)
    runner = run_clean_room if how == "clean_room" else run_as_installed
    run = runner(env, ["-bs"], BS_DIALOGUE)
    replies = run.proc.stdout.decode(errors="replace")
    assert run.proc.returncode == 0, replies + run.explain()
    assert replies.splitlines()[-1].startswith("221"), replies
    assert "pysendmail.submit.bs" in run.modules, run.explain()
    modules = run.modules if how == "clean_room" else run.modules - baseline(env).modules
    assert forbidden_in(modules, FORBIDDEN_BS) == [], run.explain()
    (e,) = queued_envelopes(env)
    assert e.recipients == ["someone@example.net"]


def test_forbidden_list_counts_submodules() -> None:
    assert forbidden_in({"email.parser", "os", "reprlib", "encodings"}, FORBIDDEN) == ["email.parser"]
    assert forbidden_in({"re._parser", "json.decoder"}, FORBIDDEN) == ["json.decoder", "re._parser"]


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
