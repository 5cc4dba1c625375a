"""docs/containers.md's Dockerfile, step by step, in a Debian 12 root with no service manager.

The Dockerfile is read from the document itself, so the document cannot
drift from what is tested: every RUN runs in the chroot under /bin/sh
with Docker's default PATH, every COPY copies from a build context made
of a wheel built from this tree and a php.toml pointed at the loopback
relay, ENV is kept for CMD, and CMD starts PHP-FPM for real.  Any other
instruction fails the test, so a step cannot be added to the document
without being run here.  FROM names debian:bookworm-slim: the root is
the cached Debian 12 root of test_deb.py (its helpers are reused).

Then a PHP script is requested over FastCGI, as nginx would: PHP-FPM's
worker runs as www-data with a cleared environment, its mail() calls
the sendmail named in php.ini with -C, and the relay must hold the
message within 5 seconds, with no daemon, no flush and no cron.

Environment, not steps: the host's resolv.conf (make_chroot) and, for
pip behind this machine's TLS-inspecting proxy, the host's CA bundle
named in an /etc/pip.conf that is removed afterwards.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import needs_root
from tests.package.test_deb import CacheLock, Chroot, make_chroot, run

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "containers.md"
DOCKER_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
FPM_PORT = 9000
HOST_CA = "/etc/ssl/certs/ca-certificates.crt"

pytestmark = [needs_root, pytest.mark.slow]


def dockerfile() -> list[tuple[str, str]]:
    """(instruction, arguments) of the ```dockerfile block in docs/containers.md, continuation lines joined."""
    text = DOC.read_text()
    block = text.split("```dockerfile\n", 1)[1].split("```", 1)[0]
    steps: list[tuple[str, str]] = []
    logical = ""
    for line in block.splitlines():
        if not logical and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.endswith("\\"):
            logical += line[:-1]  # as Docker joins: the backslash and the newline go
            continue
        logical += line
        word, _, rest = logical.strip().partition(" ")
        steps.append((word.upper(), rest.strip()))
        logical = ""
    assert not logical, "the Dockerfile ends inside a continued line"
    return steps


def build_context(tmp_path: Path, relay, password_file: str) -> Path:  # type: ignore[no-untyped-def]
    """The wheel built from this tree, and php.toml: the document's [spool], the test relay's [relay]."""
    context = tmp_path / "context"
    context.mkdir()
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".git", "build", "dist", "*.egg-info", "__pycache__",
                                                             ".pytest_cache", ".mypy_cache", ".hypothesis"))
    run([str(Path(sys.executable).parent / "pip"), "wheel", "--quiet", "--no-deps", "-w", str(context), str(src)])
    doc_toml = DOC.read_text().split("```toml\n", 1)[1].split("```", 1)[0]
    spool_table = doc_toml.split("[host]", 1)[0]
    assert spool_table.startswith("[spool]\n"), doc_toml
    relay_table = relay.config(Path(password_file), host="127.0.0.1").replace(
        str(relay.ca_file), "/etc/pysendmail/relay-ca.pem")
    (context / "php.toml").write_text(spool_table + '[host]\nname = "shop.example.org"\n\n' + relay_table)
    return context


class Builder:
    """Carries out Dockerfile instructions in a chroot."""

    def __init__(self, c: Chroot, context: Path) -> None:
        self.c = c
        self.context = context
        self.env: dict[str, str] = {}
        self.cmd: list[str] | None = None

    def sh(self, script: str) -> None:
        with CacheLock("archives.lock"):  # apt's archives are shared with test_deb.py
            proc = self.c.run("env", f"PATH={DOCKER_PATH}", *(f"{k}={v}" for k, v in self.env.items()),
                              "sh", "-c", script, check=False, timeout=1200)
        assert proc.returncode == 0, f"RUN {script}\nexited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"

    def step(self, word: str, args: str) -> None:
        if word == "FROM":
            assert args == "debian:bookworm-slim", f"the test's root is Debian 12; the Dockerfile says FROM {args}"
        elif word == "RUN":
            self.sh(args)
        elif word == "COPY":
            *sources, dest = args.split()
            for pattern in sources:
                found = glob.glob(str(self.context / pattern))
                assert found, f"COPY {pattern}: nothing in the build context matches"
                for path in found:
                    target = self.c.path(dest) / Path(path).name if dest.endswith("/") else self.c.path(dest)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy(path, target)
        elif word == "ENV":
            key, _, value = args.partition("=")
            self.env[key] = value
        elif word in ("VOLUME", "EXPOSE"):
            pass  # a directory of the image here; a port on the shared network
        elif word == "CMD":
            self.cmd = json.loads(args)
        else:
            raise AssertionError(f"docs/containers.md uses {word}, which this test does not carry out")


# ---------------------------------------------------------------- FastCGI, as nginx speaks it
def _record(kind: int, content: bytes) -> bytes:
    return struct.pack("!BBHHBx", 1, kind, 1, len(content), 0) + content


def _pair(name: str, value: str) -> bytes:
    out = b""
    for item in (name.encode(), value.encode()):
        out += bytes([len(item)]) if len(item) < 128 else struct.pack("!I", len(item) | 0x80000000)
    return out + name.encode() + value.encode()


def fastcgi_get(port: int, script: str, timeout: float = 30) -> tuple[bytes, bytes]:
    """(stdout, stderr) of one FastCGI GET of ``script`` (a path inside the root)."""
    params = {"SCRIPT_FILENAME": script, "SCRIPT_NAME": "/" + os.path.basename(script), "REQUEST_METHOD": "GET",
              "QUERY_STRING": "", "SERVER_PROTOCOL": "HTTP/1.1", "GATEWAY_INTERFACE": "CGI/1.1",
              "SERVER_NAME": "shop.example.org", "REMOTE_ADDR": "127.0.0.1"}
    body = b"".join(_pair(k, v) for k, v in params.items())
    request = (_record(1, struct.pack("!HB5x", 1, 0)) + _record(4, body) + _record(4, b"") + _record(5, b""))
    out, err = b"", b""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        data = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    while len(data) >= 8:
        _, kind, _, length, padding = struct.unpack("!BBHHB", data[:7])
        content, data = data[8:8 + length], data[8 + length + padding:]
        if kind == 6:
            out += content
        elif kind == 7:
            err += content
    return out, err


def port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_dockerfile_in_the_doc_builds_an_image_whose_php_mail_leaves_without_a_daemon(  # type: ignore[no-untyped-def]
        relay_factory, tmp_path: Path) -> None:
    if port_open(FPM_PORT):
        pytest.fail(f"port {FPM_PORT} (the Dockerfile's PHP-FPM port) is taken on this machine; free it and rerun")
    relay = relay_factory("implicit")
    password_file = "/run/secrets/relay-password"
    context = build_context(tmp_path, relay, password_file)
    with make_chroot("container") as c:
        pip_conf = c.path("/etc/pip.conf")
        shutil.copy(HOST_CA, c.path("/etc/pysendmail-ci-ca.pem"))
        pip_conf.write_text("[global]\ncert = /etc/pysendmail-ci-ca.pem\n")
        builder = Builder(c, context)
        for word, args in dockerfile():
            builder.step(word, args)
        pip_conf.unlink()
        c.path("/etc/pysendmail-ci-ca.pem").unlink()
        assert builder.cmd, "the Dockerfile has no CMD"

        # docker run -v relay-password:/run/secrets/relay-password:ro, the file 0400 and uid 33.
        www = c.ids("www-data")
        secret = c.path(password_file)
        secret.parent.mkdir(parents=True, exist_ok=True)
        secret.write_text(relay.password + "\n")
        os.chown(secret, *www)
        os.chmod(secret, 0o400)
        shutil.copy(relay.ca_file, c.path("/etc/pysendmail/relay-ca.pem"))
        # No systemd, no init script: what runs is what CMD starts.
        assert c.run("sh", "-c", "test ! -e /run/systemd/system").returncode == 0
        script = c.path("/var/www/html/mail.php")
        script.parent.mkdir(parents=True, exist_ok=True)
        # FPM's worker: the environment cleared but for USER and HOME (/var/www, root's, not writable).
        script.write_text('<?php\nvar_dump(getenv("PYSENDMAIL_CONFIG"), is_writable(getenv("HOME") ?: "/"), '
                          'mail("someone@example.net", "from the container", "Sent by PHP-FPM.", '
                          '"From: Shop <shop@example.org>"));\n')

        env = [f"PATH={DOCKER_PATH}", *(f"{k}={v}" for k, v in builder.env.items())]
        fpm = c.popen("env", "-i", *env, "HOSTNAME=php", *builder.cmd, stdout=subprocess.PIPE,
                      stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 60
            while not port_open(FPM_PORT):
                assert fpm.poll() is None, f"CMD exited {fpm.returncode}: {fpm.communicate()[0]}"
                assert time.monotonic() < deadline, "PHP-FPM did not listen on 9000 within 60 s"
                time.sleep(0.05)

            out, err = fastcgi_get(FPM_PORT, "/var/www/html/mail.php")
            text = out.decode(errors="replace")
            # No PYSENDMAIL_CONFIG, no writable HOME: -C in php.ini carried the config.
            assert 'bool(false)\nbool(false)\nbool(true)' in text, text + err.decode(errors="replace")
            (got,) = relay.wait_for(1, timeout=5)
            assert got.rcpt_tos == ["someone@example.net"] and got.tls
            assert b"Subject: from the container" in got.data and b"Sent by PHP-FPM." in got.data

            log = c.path("/var/spool/pysendmail/state/run.log")
            deadline = time.monotonic() + 30
            while not log.exists() or "run: done" not in log.read_text():
                assert time.monotonic() < deadline, "the delivery run did not end"
                time.sleep(0.05)
            text = log.read_text()
            assert "status=sent" in text and relay.password not in text, text
            assert os.stat(log).st_uid == www[0], "the run ran as another user than www-data"
            status = c.run("env", *env, "pysendmail", "status").stdout
            assert "not needed: sendmail starts a delivery run" in status, status
            assert c.run("env", *env, "pysendmail", "mailq").stdout == "Mail queue is empty\n"
        finally:
            fpm.terminate()
            try:
                fpm.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                fpm.kill()
                fpm.communicate()
