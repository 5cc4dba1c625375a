"""Mail leaves without a daemon: sendmail starts a detached delivery run (the ssmtp promise).

Real processes throughout: the installed sendmail and pysendmail, the
loopback TLS relay of tests/fakes, real users for the shared spool.  No
one flushes and no daemon runs unless the test says so; every wait polls
with a deadline.  A run lingers (5 s) after its last message, so each
test ends by waiting for its runs to exit.
"""

from __future__ import annotations

import fcntl
import os
import pwd
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pysendmail.core import layout
from pysendmail.core.lock import lock_holder
from tests.conftest import SIMPLE, Env, needs_root, program, relay_env


def wait_until(what: str, predicate: Callable[[], object], timeout: float = 15.0) -> object:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.02)


def spawn_on(e: Env) -> Env:
    """The same env with spool.deliver_without_daemon = true (conftest turns it off for every other test)."""
    text = e.config.read_text()
    assert "deliver_without_daemon = false" in text
    e.config.write_text(text.replace("deliver_without_daemon = false", "deliver_without_daemon = true"))
    return e


def processes_of(e: Env) -> list[int]:
    """Pids of processes started for this env's config (sendmail's runs inherit PYSENDMAIL_CONFIG)."""
    mark = f"PYSENDMAIL_CONFIG={e.config}".encode()
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as fh:
                if mark in fh.read().split(b"\0"):
                    found.append(int(name))
        except OSError:
            continue
    return found


def lock_free(e: Env) -> bool:
    try:
        fd = os.open(layout.Spool(str(e.spool)).lock, os.O_RDONLY)
    except FileNotFoundError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


def run_log(e: Env) -> str:
    try:
        return (e.spool / "state" / "run.log").read_text()
    except FileNotFoundError:
        return ""


def run_pid(e: Env) -> int | None:
    return lock_holder(layout.Spool(str(e.spool)), "run")


@pytest.fixture
def reap() -> Iterator[list[Env]]:
    """Envs whose runs must be gone when the test ends (killed if still there after 30 s)."""
    envs: list[Env] = []
    yield envs
    for e in envs:
        try:
            wait_until("the delivery runs exit", lambda: not processes_of(e), timeout=30)
        except AssertionError:
            for pid in processes_of(e):
                os.kill(pid, signal.SIGKILL)
            raise


def message(to: str, subject: str) -> bytes:
    return f"To: {to}\nSubject: {subject}\n\nbody of {subject}\n".encode()


def test_sendmail_without_daemon_delivers_with_nobody_flushing(tmp_path: Path, relay_factory, reap) -> None:  # type: ignore[no-untyped-def]
    relay = relay_factory("implicit")
    relay.stall_data = 2.0  # the relay is slow: sendmail must not wait for it
    e = spawn_on(relay_env(tmp_path, relay))
    reap.append(e)

    proc = e.sendmail("-t", "-i", "-v", input=message("someone@example.net", "no daemon"))

    assert proc.returncode == 0, proc.stderr
    assert b"started a delivery run, pid" in proc.stderr, proc.stderr
    # sendmail has exited; the message has not reached the relay yet: the run carries it.
    assert relay.messages == []
    assert processes_of(e), "no delivery run is running after sendmail returned"
    (got,) = relay.wait_for(1, timeout=15)
    assert got.rcpt_tos == ["someone@example.net"] and b"Subject: no daemon" in got.data
    wait_until("the run exits", lambda: "run: done" in run_log(e))
    log = run_log(e)
    assert log.count("run: started") == 1 and "status=sent" in log, log
    assert relay.password not in log
    assert e.incoming() == [] and e.queued() == []
    assert oct(os.stat(e.spool / "state" / "run.log").st_mode & 0o777) == "0o600"


def test_two_rapid_submissions_start_one_run_that_delivers_both(tmp_path: Path, relay_factory, reap) -> None:  # type: ignore[no-untyped-def]
    relay = relay_factory("implicit")
    e = spawn_on(relay_env(tmp_path, relay))
    reap.append(e)

    first = e.sendmail("-t", "-i", "-v", input=message("a@example.net", "first"))
    assert b"started a delivery run" in first.stderr, first.stderr
    pid = wait_until("the run holds the spool", lambda: run_pid(e))
    relay.wait_for(1, timeout=15)
    # Within the run's linger: the second submission pokes it and starts nothing.
    second = e.sendmail("-t", "-i", "-v", input=message("b@example.net", "second"))
    assert second.returncode == 0 and b"started a delivery run" not in second.stderr, second.stderr

    got = relay.wait_for(2, timeout=15)
    assert [m.rcpt_tos for m in got] == [["a@example.net"], ["b@example.net"]]
    assert run_pid(e) in (pid, None)
    wait_until("the run exits", lambda: "run: done" in run_log(e))
    assert run_log(e).count("run: started") == 1, run_log(e)


def test_message_queued_while_the_run_stops_is_delivered(tmp_path: Path, relay_factory, reap) -> None:  # type: ignore[no-untyped-def]
    """The instant a run has stopped reading pokes but still holds the lock:
    a submitter then finds the lock taken and starts nothing, so the run,
    once it has let go of the lock, must see the message itself."""
    relay = relay_factory("implicit")
    e = spawn_on(relay_env(tmp_path, relay))
    reap.append(e)
    e.sendmail("-t", "-i", input=message("a@example.net", "first"), check=True)
    relay.wait_for(1, timeout=15)
    relay.stall_quit = 3.0  # the run, closing its connection after the linger, waits here holding the lock

    assert relay.quitting.wait(20), "the run never closed its connection"
    assert run_pid(e), "the run let go of the spool before closing its connection"
    late = e.sendmail("-t", "-i", "-v", input=message("late@example.net", "late"))
    assert late.returncode == 0 and b"started a delivery run" not in late.stderr, late.stderr

    got = relay.wait_for(2, timeout=30)
    assert got[1].rcpt_tos == ["late@example.net"]
    wait_until("the run exits", lambda: "run: done" in run_log(e), timeout=30)
    log = run_log(e)
    assert "run: a submission arrived while stopping; going on" in log, log
    assert e.incoming() == [] and e.queued() == []


def test_key_off_starts_nothing_and_the_message_waits(tmp_path: Path, relay_factory) -> None:  # type: ignore[no-untyped-def]
    relay = relay_factory("implicit")
    e = relay_env(tmp_path, relay)  # conftest's default: deliver_without_daemon = false

    proc = e.sendmail("-t", "-i", "-v", input=SIMPLE)

    assert proc.returncode == 0 and b"delivery run" not in proc.stderr, proc.stderr
    assert processes_of(e) == []
    assert len(e.incoming()) == 1 and run_log(e) == ""
    status = e.run("pysendmail", "status", check=True).stdout.decode()
    assert "daemon:  not running, but required: spool.deliver_without_daemon = false" in status, status
    e.flush()
    assert relay.wait_for(1, timeout=15)


def test_bs_session_starts_a_run(tmp_path: Path, relay_factory, reap) -> None:  # type: ignore[no-untyped-def]
    relay = relay_factory("implicit")
    e = spawn_on(relay_env(tmp_path, relay))
    reap.append(e)
    dialogue = (b"EHLO client.example.org\r\nMAIL FROM:<www@example.org>\r\nRCPT TO:<bs@example.net>\r\nDATA\r\n"
                b"Subject: over -bs\r\n\r\nhello\r\n.\r\nQUIT\r\n")

    proc = e.sendmail("-bs", input=dialogue)

    assert proc.returncode == 0 and proc.stdout.splitlines()[-1].startswith(b"221"), proc.stdout
    (got,) = relay.wait_for(1, timeout=15)
    assert got.rcpt_tos == ["bs@example.net"]


def test_daemon_started_during_a_run_takes_the_spool_over(tmp_path: Path, relay_factory, reap) -> None:  # type: ignore[no-untyped-def]
    relay = relay_factory("implicit")
    e = spawn_on(relay_env(tmp_path, relay))
    reap.append(e)
    e.sendmail("-t", "-i", input=message("a@example.net", "first"), check=True)
    run = wait_until("the run holds the spool", lambda: run_pid(e))
    relay.wait_for(1, timeout=15)

    daemon = subprocess.Popen([program("pysendmail"), "daemon"], env=e.environ, stderr=subprocess.PIPE)
    try:
        wait_until("the daemon holds the spool", lambda: lock_holder(layout.Spool(str(e.spool))) == daemon.pid,
                   timeout=30)
        assert daemon.poll() is None
        # The daemon now delivers; sendmail sees it and starts no run.
        proc = e.sendmail("-t", "-i", "-v", input=message("b@example.net", "second"))
        assert b"delivery run" not in proc.stderr, proc.stderr
        relay.wait_for(2, timeout=15)
    finally:
        daemon.terminate()
        err = daemon.communicate(timeout=30)[1].decode()
    assert daemon.returncode == 0, err
    assert f"asked the delivery run (pid {run}) to stop" in err, err
    assert "run: stopped by a signal" in run_log(e), run_log(e)


@needs_root
def test_unprivileged_user_of_a_shared_spool_starts_nothing_and_status_says_daemon_required(  # type: ignore[no-untyped-def]
        shared_env: Env, reap) -> None:
    e = spawn_on(shared_env)
    reap.append(e)

    proc = e.sendmail("-t", "-i", "-v", input=SIMPLE, user="psm-alice")

    assert proc.returncode == 0, proc.stderr
    assert b"delivery run" not in proc.stderr, proc.stderr
    assert processes_of(e) == []
    assert len(e.incoming()) == 1
    status = e.run("pysendmail", "status", check=True).stdout.decode()
    assert ("daemon:  not running, but required: in this shared spool only root and the spool's owner start "
            "delivery runs") in status, status
    assert "start it with 'systemctl enable --now pysendmail.service'" in status
    assert "'pysendmail daemon' under your supervisor" in status
    check = e.run("pysendmail", "config", "check").stdout.decode()
    assert "WARN no daemon is running, but one is required:" in check, check
    assert "systemctl enable --now pysendmail.service" in check


@needs_root
def test_root_submitting_to_a_shared_spool_starts_a_run_as_the_spools_owner(shared_env: Env, reap) -> None:  # type: ignore[no-untyped-def]
    e = spawn_on(shared_env)
    reap.append(e)
    e.sendmail("-t", "-i", input=message("alice@example.net", "from alice"), user="psm-alice", check=True)

    proc = e.sendmail("-t", "-i", "-v", input=message("root@example.net", "from root"))

    assert b"started a delivery run" in proc.stderr, proc.stderr
    # The run, as psm-daemon, delivers both: root's and the one alice queued before.
    wait_until("both delivered", lambda: len(e.delivered()) == 2)
    wait_until("the run exits", lambda: "run: done" in run_log(e))
    owner = pwd.getpwnam("psm-daemon").pw_uid
    for path in [e.spool / "state" / "run.log", *(e.maildir / "new").iterdir()]:
        assert os.stat(path).st_uid == owner, path


def test_message_queued_during_a_flush_is_delivered_after_it(tmp_path: Path, relay_factory, reap) -> None:  # type: ignore[no-untyped-def]
    """A flush picks up once, at its start; a submitter that finds it holding
    the lock starts nothing; so the flush starts a run when it is done."""
    relay = relay_factory("implicit")
    e = relay_env(tmp_path, relay)
    e.sendmail("-t", "-i", input=message("a@example.net", "first"), check=True)  # key still off: queued only
    spawn_on(e)
    reap.append(e)
    relay.stall_data = 2.0
    flush = subprocess.Popen([program("sendmail"), "-q"], env=e.environ, stderr=subprocess.PIPE)
    try:
        assert relay.stalling.wait(20), "the flush never reached DATA"
        relay.stall_data = 0.0
        late = e.sendmail("-t", "-i", "-v", input=message("late@example.net", "late"))
        assert late.returncode == 0 and b"started a delivery run" not in late.stderr, late.stderr
    finally:
        assert flush.wait(60) == 0, flush.stderr.read() if flush.stderr else ""
    got = relay.wait_for(2, timeout=15)
    assert sorted(m.rcpt_tos[0] for m in got) == ["a@example.net", "late@example.net"]
    wait_until("the run exits", lambda: "run: done" in run_log(e))
    assert run_log(e).count("run: started") == 1
