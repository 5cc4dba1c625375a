"""The flusher daemon as systemd runs it: a real ``pysendmail daemon`` process.

Each test starts the daemon as a subprocess with NOTIFY_SOCKET pointing at
a datagram socket the test binds, so READY=1 and STOPPING=1 are the real
sd_notify protocol, and waits on that socket, on the relay
(tests/fakes/relay.py), or on the process's exit; never on a sleep.
Crash safety is tested with real SIGKILLs timed by what the relay has
received.
"""

from __future__ import annotations

import collections
import concurrent.futures
import email
import email.policy
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest

from pysendmail.core import spoolfile
from pysendmail.daemon.transport.smtp import PIPELINE_DEPTH
from tests.conftest import BIN, Env, program, relay_env, wait_until
from tests.fakes.relay import Received

START_TIMEOUT = 20.0


# ------------------------------------------------------------------ helpers


class Daemon:
    """One ``pysendmail daemon`` process, its log file and its sd_notify socket."""

    def __init__(self, e: Env, workdir: Path, name: str) -> None:
        self.e = e
        self.log_path = workdir / f"{name}.log"
        # sun_path holds 108 bytes; pytest's tmp_path can be longer.
        self.sockdir = tempfile.mkdtemp(prefix="psn-")
        self.sock_path = os.path.join(self.sockdir, "notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.sock_path)
        self.notes: list[str] = []
        environ = dict(e.environ, NOTIFY_SOCKET=self.sock_path)
        with open(self.log_path, "wb") as log:  # a file, not a pipe: a pipe could fill and stall it
            self.proc = subprocess.Popen([program("pysendmail"), "daemon"], env=environ, stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_notify(self, state: str, timeout: float = START_TIMEOUT, prefix: bool = False) -> None:
        """Wait for a datagram holding the line ``state`` (e.g. READY=1), or one starting so."""
        deadline = time.monotonic() + timeout

        def seen() -> bool:
            lines = [line for note in self.notes for line in note.split("\n")]
            return any(line.startswith(state) if prefix else line == state for line in lines)

        while not seen():
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {state} from the daemon within {timeout} s; log:\n{self.log()}")
            # Short slices only to notice a daemon that died without a word.
            self.sock.settimeout(min(left, 0.5))
            try:
                self.notes.append(self.sock.recv(4096).decode())
            except socket.timeout:
                if self.proc.poll() is not None and not self._drain():
                    raise AssertionError(f"daemon exited {self.proc.returncode} before {state}; log:\n{self.log()}")

    def _drain(self) -> bool:
        self.sock.setblocking(False)
        got = False
        try:
            while True:
                self.notes.append(self.sock.recv(4096).decode())
                got = True
        except BlockingIOError:
            return got

    def ready(self) -> "Daemon":
        self.wait_notify("READY=1")
        return self

    def stop(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.sock.close()
        shutil.rmtree(self.sockdir, ignore_errors=True)


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[Callable[[Env], Daemon]]:
    """Start daemons for a test; any still running at the end is killed."""
    started: list[Daemon] = []

    def start(e: Env) -> Daemon:
        d = Daemon(e, tmp_path, f"daemon-{len(started)}")
        started.append(d)
        return d.ready()

    yield start
    for d in started:
        d.close()


def message(subject: str, to: str = "someone@example.net") -> bytes:
    return f"To: {to}\nSubject: {subject}\n\nbody of {subject}\n".encode()


def submit(e: Env, subject: str, *args: str, to: str = "someone@example.net") -> None:
    proc = e.sendmail("-t", "-i", *args, input=message(subject, to))
    assert proc.returncode == 0, proc.stderr.decode()


def subject(m: Received) -> str:
    return str(email.message_from_bytes(m.data, policy=email.policy.default)["Subject"])


def mailq(e: Env) -> list[dict[str, object]]:
    return json.loads(e.run("mailq", "--json", check=True).stdout)  # type: ignore[no-any-return]


# ------------------------------------------------------------------ tests
def test_daemon_delivers_submission_without_flush(tmp_path: Path, relay_factory, daemons) -> None:
    relay = relay_factory("implicit")
    e = relay_env(tmp_path, relay)
    d = daemons(e)

    submit(e, "while running")

    (got,) = relay.wait_for(1, timeout=15)
    assert subject(got) == "while running" and got.tls
    assert got.rcpt_tos == ["someone@example.net"]
    assert not relay.saw_plaintext_mail
    assert d.stop() == 0
    assert mailq(e) == []


@pytest.mark.parametrize("how", ["retry", "hold-release"])
def test_queue_retry_and_release_reach_the_running_daemon(tmp_path: Path, relay_factory, daemons, how: str) -> None:
    """Regression: the daemon kept due times in memory only, so a released
    or retried message waited for a restart (or its old backoff)."""
    relay = relay_factory("implicit")
    relay.rcpt_replies["someone@example.net"] = "451 4.3.0 try later"
    e = relay_env(tmp_path, relay)
    d = daemons(e)
    submit(e, "backed off")
    wait_until(lambda: [x["state"] for x in mailq(e)] == ["deferred"], "the message to be deferred")
    (entry,) = mailq(e)
    assert float(entry["next_attempt"]) - time.time() > 30, "deferred for minutes, not seconds"  # type: ignore[arg-type]
    relay.rcpt_replies.clear()

    qid = str(entry["queue_id"])
    if how == "retry":
        e.run("pysendmail", "queue", "retry", qid, check=True)
    else:
        e.run("pysendmail", "queue", "hold", qid, check=True)
        e.run("pysendmail", "queue", "release", qid, check=True)

    (got,) = relay.wait_for(1, timeout=15)
    assert subject(got) == "backed off"
    wait_until(lambda: mailq(e) == [], "the queue to empty")
    assert d.stop() == 0


def test_second_daemon_exits_75_naming_first_pid(tmp_path: Path, relay_factory, daemons) -> None:
    relay = relay_factory("implicit")
    e = relay_env(tmp_path, relay)
    first = daemons(e)

    proc = e.run("pysendmail", "daemon", timeout=30)

    assert proc.returncode == 75
    stderr = proc.stderr.decode()
    assert f"pid {first.pid}" in stderr and stderr.count("\n") == 1
    # The first one is untouched and still serves.
    assert first.proc.poll() is None
    submit(e, "still served")
    assert subject(relay.wait_for(1, timeout=15)[0]) == "still served"
    assert first.stop() == 0


def test_flush_while_daemon_runs_returns_after_daemon_ran_queue(tmp_path: Path, relay_factory, daemons) -> None:
    relay = relay_factory("implicit")
    relay.rcpt_replies["busy@example.net"] = "451 4.2.1 mailbox busy, try later"
    e = relay_env(tmp_path, relay)
    d = daemons(e)
    submit(e, "deferred first", to="busy@example.net")

    def deferred() -> bool:
        entries = mailq(e)
        return len(entries) == 1 and entries[0]["state"] == "deferred"

    wait_until(deferred, "mailq to show the message deferred")
    assert relay.messages == []

    relay.rcpt_replies.clear()
    proc = e.run("pysendmail", "flush", timeout=60)

    assert proc.returncode == 0, proc.stderr.decode()
    # The retry was due in about a minute: only the daemon's run that
    # flush asked for and waited on can have delivered it already.
    assert [subject(m) for m in relay.messages] == ["deferred first"]
    assert mailq(e) == []
    assert d.proc.poll() is None, "flush must not stop the daemon"
    assert d.stop() == 0


def test_sigterm_stops_daemon_with_stopping_notification(tmp_path: Path, relay_factory, daemons) -> None:
    relay = relay_factory("implicit")
    e = relay_env(tmp_path, relay)
    d = daemons(e)
    assert any(n.startswith("READY=1") and "STATUS=" in n for n in d.notes)

    d.proc.send_signal(signal.SIGTERM)
    d.wait_notify("STOPPING=1")

    assert d.proc.wait(30) == 0
    log = d.log()
    assert "daemon: stopped" in log.splitlines()[-1]
    assert f"daemon: started, pid {d.pid}" in log
    # The lock is free again: a new daemon may start on the spool.
    assert daemons(e).stop() == 0


def test_sighup_reloads_config_and_daemon_keeps_running(tmp_path: Path, relay_factory, daemons) -> None:
    relay = relay_factory("implicit")
    e = relay_env(tmp_path, relay)
    d = daemons(e)
    submit(e, "before reload")
    first = relay.wait_for(1, timeout=15)[0]
    assert b"by host.example.org (pysendmail)" in first.data

    text = e.config.read_text()
    assert 'name = "host.example.org"' in text
    e.config.write_text(text.replace('name = "host.example.org"', 'name = "reloaded.example.org"'))
    d.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: "daemon: configuration reloaded" in d.log(), "the reload's log line")

    submit(e, "after reload")
    second = relay.wait_for(2, timeout=15)[1]
    assert subject(second) == "after reload"
    assert b"by reloaded.example.org (pysendmail)" in second.data
    assert d.proc.poll() is None
    assert d.stop() == 0


@pytest.mark.slow
def test_sigkill_during_drain_loses_nothing(tmp_path: Path, relay_factory, daemons) -> None:
    relay = relay_factory("implicit")
    e = relay_env(tmp_path, relay)
    total = 300
    subjects = [f"crash {n:03d}" for n in range(total)]
    # Submitted while no daemon runs: they wait in incoming/.
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda s: submit(e, s), subjects))
    assert len(e.incoming()) == total

    kill_points = (50, 120, 200)
    for count in kill_points:
        d = daemons(e)
        relay.wait_for(count, timeout=60)
        d.kill()
        assert d.proc.returncode == -signal.SIGKILL
    last = daemons(e)

    # Drained: the daemon goes to sleep with nothing left in its index.
    last.wait_notify("STATUS=queue: 0 messages, next attempt", timeout=120, prefix=True)
    assert last.stop() == 0
    got = list(relay.messages)

    counts = collections.Counter(subject(m) for m in got)
    assert set(counts) == set(subjects)
    ids = collections.Counter(
        str(email.message_from_bytes(m.data, policy=email.policy.default)["Message-ID"]) for m in got
    )
    assert len(ids) == total, "one Message-ID per message, kept across retries"
    duplicates = sum(n - 1 for n in counts.values())
    # Each kill can cut at most the deliveries then between the relay's 250
    # and our record of it: the daemon runs pool_size x PIPELINE_DEPTH at
    # once against a pipelining relay (several per connection).
    pool_size = 4
    assert duplicates <= len(kill_points) * pool_size * PIPELINE_DEPTH, counts.most_common(5)
    assert mailq(e) == [] and e.incoming() == [] and e.queued() == []
    assert os.listdir(e.spool / "failed") == []


@pytest.mark.parametrize("outcome", ["done", "failed"])
def test_daemon_finishes_message_whose_removal_a_crash_cut(tmp_path: Path, relay_factory, daemons,
                                                           outcome: str) -> None:
    """Regression: a crash after the last outcome record, before the unlink
    (or the move to failed/), left the file in queue/ forever: the daemon
    indexed only messages with pending recipients."""
    relay = relay_factory("implicit")
    relay.rcpt_replies["someone@example.net"] = "451 4.3.0 try later"
    e = relay_env(tmp_path, relay)
    submit(e, "cut short", "-f", "alice@example.org")
    (qid,) = e.incoming()
    e.flush()  # picked up and deferred: now a daemon-owned queue file
    assert e.queued() == [qid]
    relay.rcpt_replies.clear()
    tried = len(relay.mail_commands)
    # What the crashed run had made durable: the outcome, and nothing after.
    with open(e.spool / "queue" / qid, "ab") as fh:
        fh.write(spoolfile.encode_record(outcome, 0, f"{time.time():.3f}", "550 5.1.1 gone" if outcome == "failed"
                                         else "250 2.0.0 Ok: queued as X1"))

    d = daemons(e)
    d.wait_notify("STATUS=queue: 0 messages, next attempt", prefix=True)

    assert e.queued() == []
    if outcome == "done":
        assert relay.mail_commands[tried:] == [], "an accepted recipient must not be sent to again"
        assert f"{qid}: removed" in d.log()
    else:
        assert os.listdir(e.spool / "failed") == [qid]
        (bounce,) = relay.wait_for(1, timeout=15)
        assert bounce.mail_from == "<>" and bounce.rcpt_tos == ["alice@example.org"]
        assert relay.mail_commands[tried:] == ["<>"]
    assert d.stop() == 0


@pytest.mark.skipif(shutil.which("php") is None, reason="php-cli is not installed")
def test_php_mail_reaches_tls_relay_through_daemon(tmp_path: Path, relay_factory, daemons) -> None:
    relay = relay_factory("implicit")
    e = relay_env(tmp_path, relay)
    d = daemons(e)
    script = (
        'exit(mail("someone@example.net", "from php", "line one\\nline two\\n",'
        ' "From: Web App <web@example.org>", "-fweb@example.org") ? 0 : 1);'
    )

    proc = subprocess.run(
        ["php", "-n", "-d", f"sendmail_path={BIN / 'sendmail'} -t -i", "-r", script],
        env=e.environ, capture_output=True, timeout=60,
    )

    assert proc.returncode == 0, proc.stdout.decode() + proc.stderr.decode()
    (got,) = relay.wait_for(1, timeout=15)
    assert got.tls and got.mail_from == "web@example.org"
    assert got.rcpt_tos == ["someone@example.net"]
    assert b"\n" not in got.data.replace(b"\r\n", b"")
    parsed = email.message_from_bytes(got.data, policy=email.policy.default)
    assert parsed["Subject"] == "from php"
    assert parsed["From"] == "Web App <web@example.org>"
    assert parsed["Message-ID"] and parsed["Date"]
    # PHP adds one line ending of its own after the body.
    assert got.data.split(b"\r\n\r\n", 1)[1] in (b"line one\r\nline two\r\n", b"line one\r\nline two\r\n\r\n")
    assert not relay.saw_plaintext_mail
    assert d.stop() == 0
