"""A real redis-server for tests: loopback only, a random port, a private directory.

``RedisServer(workdir).start()`` runs Debian's ``redis-server`` (apt-get
install redis-server; README's test command installs it) bound to
127.0.0.1 on a free port, with no persistence (a restart loses
everything, the harshest case for convergence), and waits until it
answers PING.  ``stop()`` (SIGTERM), ``kill()`` (SIGKILL), ``pause()``
/ ``resume()`` (SIGSTOP / SIGCONT: a server that accepts connections but
answers nothing, i.e. "slow") and ``restart()`` on the same port.
``password`` starts it with requirepass; ``tls`` with a trustme CA
(``ca_file``) on a TLS port only.  ``command(*args)`` speaks RESP over a
plain socket (no redis-py), for tests that look behind the client.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    def __init__(self, workdir: Path, password: str | None = None, tls: bool = False) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            import pytest

            pytest.fail("redis-server is not installed: apt-get install redis-server (README's test command does)")
        self.exe = exe
        self.dir = workdir / f"redis-{free_port()}"
        self.dir.mkdir()
        self.password = password
        self.tls = tls
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.ca_file: Path | None = None
        if tls:
            import trustme

            ca = trustme.CA()
            cert = ca.issue_cert("127.0.0.1", "localhost")
            self.ca_file = self.dir / "ca.pem"
            ca.cert_pem.write_to_path(str(self.ca_file))
            cert.private_key_and_cert_chain_pem.write_to_path(str(self.dir / "server.pem"))

    @property
    def url(self) -> str:
        return f"{'rediss' if self.tls else 'redis'}://127.0.0.1:{self.port}/0"

    def argv(self) -> list[str]:
        args = [self.exe, "--bind", "127.0.0.1", "--dir", str(self.dir), "--save", "", "--appendonly", "no",
                "--daemonize", "no", "--protected-mode", "yes", "--logfile", str(self.dir / "redis.log")]
        if self.tls:
            pem = str(self.dir / "server.pem")
            args += ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", pem, "--tls-key-file", pem,
                     "--tls-ca-cert-file", str(self.ca_file), "--tls-auth-clients", "no"]
        else:
            args += ["--port", str(self.port)]
        if self.password:
            args += ["--requirepass", self.password]
        return args

    def start(self) -> RedisServer:
        self.proc = subprocess.Popen(self.argv(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"redis-server exited {self.proc.returncode}: "
                                     f"{(self.dir / 'redis.log').read_text(errors='replace')[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError("redis-server did not listen within 20 s") from None
                time.sleep(0.02)
        if not self.tls:
            deadline = time.monotonic() + 20
            while self.command("PING") not in (b"PONG", b"NOAUTH"):
                if time.monotonic() > deadline:
                    raise AssertionError("redis-server did not answer PING within 20 s")
                time.sleep(0.02)
        return self

    def command(self, *args: str) -> object:
        """One command over RESP (authenticating first when there is a password); the decoded reply."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
            f = s.makefile("rb")
            cmds = ([("AUTH", self.password)] if self.password else []) + [args]
            for cmd in cmds:
                s.sendall(b"*%d\r\n" % len(cmd) + b"".join(b"$%d\r\n%s\r\n" % (len(a.encode()), a.encode())
                                                           for a in cmd))
                reply = _read(f)
            return reply

    def pause(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def restart(self) -> RedisServer:
        self.kill()
        return self.start()


def _read(f: object) -> object:
    line = f.readline()  # type: ignore[attr-defined]
    kind, rest = line[:1], line[1:-2]
    if kind in (b"+", b"-"):
        return rest.split(b" ", 1)[0] if kind == b"-" else rest
    if kind == b":":
        return int(rest)
    if kind == b"$":
        n = int(rest)
        return None if n < 0 else f.read(n + 2)[:-2]  # type: ignore[attr-defined]
    if kind == b"*":
        n = int(rest)
        return None if n < 0 else [_read(f) for _ in range(n)]
    raise AssertionError(f"unexpected RESP line {line!r}")


def cleanup(servers: list[RedisServer]) -> None:
    for s in servers:
        s.kill()
        shutil.rmtree(s.dir, ignore_errors=True)

