"""Submission under crashes and hostile disks: kill -9, a full disk, a read-only spool.

The quality bar (DESIGN.md): a message accepted with exit 0 is never lost,
and nothing half-written is ever delivered.  The submitter is the real
``sendmail`` killed with a real SIGKILL at moments chosen at random (the
seed is in every failure message; PYSENDMAIL_TEST_SEED replays one), timed
by what it has consumed or written rather than by sleeps.  The full disk
and the read-only spool are a real tmpfs mounted for the test.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import signal
import stat
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest

from tests.conftest import Env, needs_root, program, write_config

BODY_LINE = b"%07d the quick brown fox jumps over the lazy dog, durably, without loss\n"
BODY_SIZE = 20 * 1024 * 1024
CHUNK = 256 * 1024
ITERATIONS = 15
POLL_TIMEOUT = 60.0


def big_body() -> bytes:
    lines = []
    total = 0
    n = 0
    while total < BODY_SIZE:
        line = BODY_LINE % n
        lines.append(line)
        total += len(line)
        n += 1
    return b"".join(lines)


def trailer(i: int) -> bytes:
    return b"TRAILER %d END\n" % i


def kill_message(i: int, body: bytes) -> bytes:
    return b"To: someone@example.net\nSubject: kill test %d\n\n" % i + body + trailer(i)


class Submission:
    """One ``sendmail -t -i`` fed through a pipe, and what the test did to it."""

    def __init__(self, e: Env) -> None:
        self.proc = subprocess.Popen(
            [program("sendmail"), "-t", "-i"],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=e.environ,
            bufsize=0,
        )
        self.seen_unready_before_kill = False

    def write(self, data: bytes, upto: int) -> None:
        """Write the first ``upto`` bytes of ``data`` in chunks."""
        assert self.proc.stdin is not None
        pos = 0
        while pos < upto:
            end = min(pos + CHUNK, upto)
            self.proc.stdin.write(data[pos:end])
            pos = end

    def close_stdin(self) -> None:
        assert self.proc.stdin is not None
        with contextlib.suppress(BrokenPipeError):
            self.proc.stdin.close()

    def kill(self) -> int:
        self.proc.send_signal(signal.SIGKILL)
        self.close_stdin()
        return self.proc.wait(60)


def watch_incoming(e: Env, before: set[str], sub: Submission, until: str, size: int) -> None:
    """Spin until the submitter's new file reaches ``size`` bytes (or is ready), or it exits.

    No sleep: the interesting window (the file exists, unready, growing)
    lasts milliseconds, and the poller must not miss it.
    """
    incoming = e.spool / "incoming"
    deadline = time.monotonic() + POLL_TIMEOUT
    while sub.proc.poll() is None:
        if time.monotonic() > deadline:
            raise AssertionError(f"submitter neither wrote {size} bytes nor exited within {POLL_TIMEOUT} s")
        for name in set(os.listdir(incoming)) - before:
            try:
                st = os.lstat(incoming / name)
            except FileNotFoundError:
                continue
            ready = stat.S_IMODE(st.st_mode) == 0o640
            if (until == "ready" and ready) or (until == "size" and st.st_size >= size):
                sub.seen_unready_before_kill = not ready
                return


def submit_and_kill(e: Env, message: bytes, point: str, count: int) -> tuple[int, bool]:
    """Submit ``message``, SIGKILL the submitter at ``point``; (exit status, killed mid-write).

    stdin: after ``count`` bytes of input, before end of file.  size: once
    its spool file holds ``count`` bytes.  ready: once the file is 0640.
    none: no kill.
    """
    before = set(e.incoming())
    sub = Submission(e)
    try:
        if point == "stdin":
            sub.write(message, count)
            return sub.kill(), False
        sub.write(message, len(message))
        sub.close_stdin()
        if point == "none":
            return sub.proc.wait(60), False
        watch_incoming(e, before, sub, "ready" if point == "ready" else "size", count)
        return sub.kill(), sub.seen_unready_before_kill
    finally:
        if sub.proc.poll() is None:  # a failed assertion must not leave it running
            sub.proc.kill()
            sub.proc.wait()


@pytest.mark.slow
def test_kill_9_during_large_submission_never_delivers_partial_message(env: Env) -> None:
    seed = int(os.environ.get("PYSENDMAIL_TEST_SEED", time.time_ns() % 1_000_000))
    rng = random.Random(seed)
    body = big_body()
    plan: list[tuple[str, int]] = []  # (kill point, byte count)
    outcome: dict[int, int] = {}  # iteration -> exit status (-9: killed)
    mid_write_kills = 0
    for i in range(ITERATIONS):
        message = kill_message(i, body)
        spool_size = len(message) + message.count(b"\n")  # CRLF in the spool
        point = ("stdin", "size", "size", "size", "ready", "none")[i % 6]
        count = rng.randrange(len(message)) if point == "stdin" else rng.randrange(spool_size)
        plan.append((point, count))
        status, mid_write = submit_and_kill(env, message, point, count)
        outcome[i] = status
        mid_write_kills += mid_write
    why = f"seed {seed} (PYSENDMAIL_TEST_SEED replays it), plan {plan}, exit statuses {outcome}"

    env.flush()

    common = hashlib.sha256(body)
    delivered: dict[int, int] = {}
    for path in sorted((env.maildir / "new").iterdir()):
        data = path.read_bytes()
        head, _, got_body = data.partition(b"\n\n")
        subject = [line for line in head.split(b"\n") if line.startswith(b"Subject: kill test ")]
        assert len(subject) == 1, f"{path.name}: no subject in {head[:300]!r}; {why}"
        i = int(subject[0].rsplit(b" ", 1)[1])
        expected = common.copy()
        expected.update(trailer(i))
        # A hash, not the bytes: a failing 20 MB comparison would drown the report.
        assert got_body.endswith(trailer(i)), f"message {i} delivered without its end: {got_body[-80:]!r}; {why}"
        assert len(got_body) == len(body) + len(trailer(i)), f"message {i} has the wrong length; {why}"
        assert hashlib.sha256(got_body).digest() == expected.digest(), f"message {i} body differs; {why}"
        delivered[i] = delivered.get(i, 0) + 1
    assert all(n == 1 for n in delivered.values()), f"duplicates {delivered}; {why}"
    for i, status in outcome.items():
        if status == 0:
            assert i in delivered, f"message {i} was accepted (exit 0) but not delivered; {why}"
        else:
            assert status == -signal.SIGKILL, f"message {i} exited {status}; {why}"
        if plan[i][0] == "stdin":
            assert i not in delivered, f"message {i} was delivered before the submitter read all of it; {why}"
    # Whatever a kill left behind is unready (0600) and stays undelivered;
    # nothing was judged malformed, because nothing ready was ever partial.
    for name in env.incoming():
        st = os.lstat(env.spool / "incoming" / name)
        assert stat.S_IMODE(st.st_mode) == 0o600, f"{name} left with mode {st.st_mode:o}; {why}"
    assert env.queued() == [], why
    assert os.listdir(env.spool / "quarantine") == [], why
    assert mid_write_kills > 0, f"no kill landed while the spool file was being written; {why}"


def test_unready_leftover_stays_undelivered_after_repeated_flush(env: Env) -> None:
    # A submitter killed before fchmod leaves a 0600 file: complete or not,
    # it was never acknowledged, and the daemon must leave it alone.
    from pysendmail.core import spoolfile

    env_ = spoolfile.Envelope("a@example.org", ["someone@example.net"], uid=os.getuid(), time=time.time())
    leftover = env.spool / "incoming" / "0000000000000ABCDE"
    leftover.write_bytes(spoolfile.encode(env_, b"Subject: unready\r\n\r\nnot acknowledged\r\n"))
    leftover.chmod(0o600)

    env.flush()
    env.flush()

    assert env.delivered() == []
    assert env.incoming() == [leftover.name]


# ---------------------------------------------------------------- full and read-only disks
@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs, unmounted at the end whatever happens."""
    mnt = tmp_path / "fs"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0755", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        if subprocess.run(["umount", str(mnt)]).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], check=True)


@pytest.fixture
def small_env(tmp_path: Path, small_fs: Path) -> Env:
    e = write_config(tmp_path, spool=small_fs / "spool")
    e.run("pysendmail", "spool", "init", check=True)
    return e


def one_sentence(stderr: bytes) -> str:
    text = stderr.decode()
    assert text.count("\n") == 1 and text.endswith("\n"), text
    assert "Traceback" not in text
    assert text.startswith("sendmail: ")
    return text


def big_message(size: int) -> bytes:
    line = b"x" * 75 + b"\n"
    return b"To: someone@example.net\nSubject: big\n\n" + line * (size // len(line))


@needs_root
def test_submission_on_full_disk_exits_75_and_leaves_nothing(small_env: Env, small_fs: Path) -> None:
    st = os.statvfs(small_fs)
    free = st.f_bavail * st.f_frsize
    (small_fs / "filler").write_bytes(b"\0" * (free - 512 * 1024))
    message = big_message(1536 * 1024)

    proc = small_env.sendmail("-t", "-i", input=message)

    assert proc.returncode == 75, proc.stderr
    assert "space" in one_sentence(proc.stderr)
    assert small_env.incoming() == []
    # Free the space: the same message now goes through, so 75 was the disk.
    (small_fs / "filler").unlink()
    assert small_env.sendmail("-t", "-i", input=message).returncode == 0
    assert len(small_env.incoming()) == 1


@needs_root
def test_bs_on_full_disk_replies_451_and_session_goes_on(small_env: Env, small_fs: Path) -> None:
    st = os.statvfs(small_fs)
    (small_fs / "filler").write_bytes(b"\0" * (st.f_bavail * st.f_frsize - 512 * 1024))
    body = big_message(1536 * 1024).replace(b"\n", b"\r\n")
    dialogue = (
        b"EHLO app.example.org\r\nMAIL FROM:<app@example.org>\r\nRCPT TO:<x@example.net>\r\nDATA\r\n"
        + body + b".\r\nNOOP\r\nQUIT\r\n"
    )

    proc = small_env.sendmail("-bs", input=dialogue)

    assert proc.returncode == 0, proc.stderr
    codes = [line[:3] for line in proc.stdout.split(b"\r\n") if line[3:4] == b" "]
    # greeting, EHLO, MAIL, RCPT, DATA, the refused message, NOOP, QUIT
    assert codes == [b"220", b"250", b"250", b"250", b"354", b"451", b"250", b"221"], proc.stdout
    assert b"space" in proc.stdout
    assert small_env.incoming() == []


@needs_root
def test_submission_on_read_only_spool_exits_75_and_queues_nothing(small_env: Env, small_fs: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(small_fs)], check=True)

    proc = small_env.sendmail("-t", "-i", input=b"To: someone@example.net\nSubject: ro\n\nbody\n")

    assert proc.returncode == 75, proc.stderr
    assert "read-only" in one_sentence(proc.stderr).lower()
    assert small_env.incoming() == []


# ---------------------------------------------------------------- wrong layout
@pytest.mark.parametrize("mode", [0o777, 0o755, 0o1733, 0o2733, 0o733])
def test_submission_into_incoming_with_wrong_mode_exits_78_naming_directory(env: Env, mode: int) -> None:
    incoming = env.spool / "incoming"
    incoming.chmod(mode)

    proc = env.sendmail("-t", "-i", input=b"To: someone@example.net\nSubject: mode\n\nbody\n")

    assert proc.returncode == 78, proc.stderr
    assert str(incoming) in one_sentence(proc.stderr)
    assert f"{mode:04o}" in proc.stderr.decode()
    assert env.incoming() == []


def test_submission_into_symlinked_incoming_exits_78_naming_directory(env: Env, tmp_path: Path) -> None:
    incoming = env.spool / "incoming"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    incoming.rmdir()
    incoming.symlink_to(elsewhere)

    proc = env.sendmail("-t", "-i", input=b"To: someone@example.net\nSubject: link\n\nbody\n")

    assert proc.returncode == 78, proc.stderr
    assert str(incoming) in one_sentence(proc.stderr)
    assert list(elsewhere.iterdir()) == []


# ------------------------------------------------------------------ pickup batches under kill -9


def test_sigkill_during_pickup_batches_loses_nothing_and_delivers_each_once(tmp_path: Path, relay_factory) -> None:
    """Pickup syncs queue/ once per pass and only then unlinks that pass's
    incoming files (daemon/pickup.py Batch).  A real daemon is SIGKILLed
    while a pass has written some queue files and unlinked nothing; at
    every kill each submission is still in incoming/ or in queue/, none is
    quarantined, and in the end each is delivered exactly once."""
    import concurrent.futures

    from tests.conftest import relay_env, stop_process, wait_until

    relay = relay_factory("implicit")
    relay.rcpt_replies["someone@example.net"] = "451 4.3.0 try later"  # nothing leaves: queue/ only grows
    e = relay_env(tmp_path, relay)
    total = 250
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda n: e.sendmail("-t", "-i", input=b"To: someone@example.net\nSubject: batch %03d\n\n"
                                           b"body %d\n" % (n, n), check=True), range(total)))
    submitted = set(e.incoming())
    assert len(submitted) == total

    for point in (30, 130, 190):  # inside the first, second and third passes of 100
        with open(tmp_path / f"daemon-{point}.log", "wb") as log:
            proc = subprocess.Popen([program("pysendmail"), "daemon"], env=e.environ, stdin=subprocess.DEVNULL,
                                    stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_until(lambda: len(e.queued()) >= point or proc.poll() is not None, f"{point} queue files",
                       timeout=60)
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        finally:
            stop_process(proc)
        assert proc.returncode == -signal.SIGKILL, (tmp_path / f"daemon-{point}.log").read_text()
        queued, incoming = set(e.queued()), set(e.incoming())
        assert queued | incoming == submitted, f"lost at kill {point}: {sorted(submitted - queued - incoming)[:5]}"
        assert os.listdir(e.spool / "quarantine") == []

    relay.rcpt_replies.clear()
    e.flush()  # picks up what is left and tries everything now (sendmail -q ignores the backoff)

    subjects = [m.data.split(b"Subject: ", 1)[1].split(b"\r\n", 1)[0] for m in relay.messages]
    assert sorted(subjects) == [b"batch %03d" % n for n in range(total)]
    assert e.incoming() == [] and e.queued() == [] and os.listdir(e.spool / "quarantine") == []
