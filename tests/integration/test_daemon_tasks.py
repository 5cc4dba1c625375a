"""The daemon's attempts run under one asyncio.TaskGroup (daemon/main.py _run_due).

An attempt that raises past qmgr's boundary is a bug; before the
TaskGroup its exception sat unread in a task nobody awaited (asyncio's
"Task exception was never retrieved" at best), the message fell out of
the in-memory index until the next restart, and the daemon went on as if
nothing had happened.  Now it stops the daemon the way a crash of its own
loop does: "daemon: stopped" logged, the attempt's own exception raised
(not an ExceptionGroup), and the message left in queue/.
The real daemon loop runs in this process on a real spool; only the
attempt is replaced, since no real input makes qmgr's boundary leak.
"""

from __future__ import annotations

import asyncio

import pytest

from pysendmail.core import config, queue
from pysendmail.daemon.main import Daemon
from tests.conftest import Env


def test_attempt_that_raises_stops_the_daemon_with_its_exception_and_keeps_the_message(
        env: Env, capfd: pytest.CaptureFixture[str]) -> None:
    proc = env.sendmail("-t", "-i", input=b"To: someone@example.org\nSubject: crash\n\nbody\n")
    assert proc.returncode == 0, proc.stderr
    daemon = Daemon(config.load(str(env.config)), None)
    tried: list[str] = []

    async def crashing_attempt(qid: str, counts: object) -> queue.QueuedMessage | None:
        tried.append(qid)
        raise RuntimeError(f"attempt of {qid} crashed")

    daemon.manager.attempt = crashing_attempt  # type: ignore[method-assign]

    with pytest.raises(RuntimeError, match="attempt of .* crashed"):
        asyncio.run(asyncio.wait_for(daemon.serve(), 30))

    err = capfd.readouterr().err
    assert err.rstrip("\n").splitlines()[-1].endswith("daemon: stopped"), err
    assert len(tried) == 1
    assert env.queued() == tried  # picked up, never attempted to the end: still queued
    assert daemon.inflight == set()


def test_attempt_that_raises_cancels_the_attempts_running_beside_it(
        env: Env, capfd: pytest.CaptureFixture[str]) -> None:
    for n in range(2):
        proc = env.sendmail("-t", "-i", input=f"To: someone@example.org\nSubject: {n}\n\nbody\n".encode())
        assert proc.returncode == 0, proc.stderr
    daemon = Daemon(config.load(str(env.config)), None)
    daemon.manager.transport.concurrency = 2  # type: ignore[attr-defined]  # two attempts at once
    cancelled: list[str] = []
    started = asyncio.Event()

    async def attempt(qid: str, counts: object) -> queue.QueuedMessage | None:
        if not started.is_set():
            started.set()
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                cancelled.append(qid)
                raise
            return None
        await started.wait()
        raise RuntimeError(f"attempt of {qid} crashed")

    daemon.manager.attempt = attempt  # type: ignore[method-assign]

    with pytest.raises(RuntimeError, match="crashed"):
        asyncio.run(asyncio.wait_for(daemon.serve(), 30))
    assert len(cancelled) == 1
    assert len(env.queued()) == 2  # both kept
    assert "daemon: stopped" in capfd.readouterr().err
