"""mailq for every user, and the queue commands for every id it lists (issue 11, part 3).

A shared spool set up by root for psm-daemon (conftest ``shared_env``);
psm-alice submits with the real ``sendmail`` through runuser(1), psm-bob
runs the real ``mailq`` and monitoring's real ``check_mailq``.  What bob
may see is DESIGN.md's contract: ids, sizes, times, senders, recipients,
reasons; never a header or a byte of a body.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import stat
import subprocess
import time
from pathlib import Path

import pytest

from pysendmail.core import spoolfile
from tests.conftest import Env, needs_root, program
from tests.integration.test_daemon import wait_until

pytestmark = needs_root

SUBJECT = b"quarterly numbers 7f3a"
BODY = b"the secret body 91c2e"


def note(i: int = 0) -> bytes:
    return b"From: alice@example.org\nTo: ops@example.net, boss@example.net\nSubject: " + SUBJECT + b" %d\n\n" % i \
        + BODY + b"\n"


def submit_as(e: Env, user: str, i: int = 0) -> str:
    proc = e.sendmail("-t", "-i", "-v", "-f", f"{user}@example.org", input=note(i), user=user)
    assert proc.returncode == 0, proc.stderr.decode()
    words = proc.stderr.decode().split()
    return words[words.index("as") + 1]  # "sendmail: queued as QID for ..."


def mailq_as(e: Env, user: str | None, *args: str) -> subprocess.CompletedProcess[bytes]:
    return e.run("mailq", *args, user=user)


def assert_no_contents(proc: subprocess.CompletedProcess[bytes]) -> None:
    for secret in (SUBJECT, BODY, b"Subject", b"quarterly"):
        assert secret not in proc.stdout and secret not in proc.stderr, secret


class Daemon:
    """``pysendmail daemon`` started by root (it becomes psm-daemon); ready once it logs its start.

    Not test_daemon's sd_notify harness: the daemon drops to psm-daemon,
    which may not reach a socket in root's temporary directory.
    """

    def __init__(self, e: Env, log_path: Path) -> None:
        self.log_path = log_path
        with open(log_path, "wb") as log:
            self.proc = subprocess.Popen([program("pysendmail"), "daemon"], env=e.environ, stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT)
        wait_until(lambda: "daemon: started" in self.log() or self.proc.poll() is not None, "the daemon to start")
        assert self.proc.poll() is None, self.log()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(30)


@pytest.fixture
def daemon_proc(tmp_path: Path):
    started: list[Daemon] = []

    def start(e: Env) -> Daemon:
        d = Daemon(e, tmp_path / f"daemon-{len(started)}.log")
        started.append(d)
        return d

    yield start
    for d in started:
        if d.proc.poll() is None:
            os.kill(d.pid, signal.SIGCONT)
            d.proc.kill()
            d.proc.wait(10)


# ------------------------------------------------------------------ mailq as anyone
def test_mailq_by_other_user_lists_ids_sizes_senders_and_recipients_but_no_contents_when_the_daemon_is_down(
        shared_env: Env) -> None:
    """Regression: check_mailq under NRPE (an unprivileged user) got exit 77."""
    qid = submit_as(shared_env, "psm-alice")

    bob = mailq_as(shared_env, "psm-bob")

    assert bob.returncode == 0, bob.stderr.decode()
    text = bob.stdout.decode()
    lines = text.split("\n")
    assert lines[1].startswith(qid + " ")
    assert "psm-alice@example.org" in lines[1]
    assert int(lines[1].split()[1]) == len(note(0).replace(b"\n", b"\r\n"))  # the size as spooled (CRLF)
    assert "ops@example.net" in text and "boss@example.net" in text
    assert text.endswith("-- 1 Kbytes in 1 Request.\n")
    assert_no_contents(bob)
    # How old the list is goes to stderr: stdout stays Postfix's layout.
    assert b"the daemon is not running" in bob.stderr
    # The same text as root reading the queue itself.
    assert bob.stdout == mailq_as(shared_env, None).stdout
    assert shared_env.run("sendmail", "-bp", user="psm-bob").stdout == bob.stdout


def test_mailq_json_by_other_user_equals_the_owners_when_messages_are_held_and_incoming(shared_env: Env) -> None:
    held = submit_as(shared_env, "psm-alice", 1)
    waiting = submit_as(shared_env, "psm-alice", 2)
    shared_env.run("pysendmail", "queue", "hold", held, check=True)  # picked up, queued, held; summary published
    third = submit_as(shared_env, "psm-bob", 3)  # after the last publish: known to others by its stub only

    root_json = json.loads(mailq_as(shared_env, None, "--json").stdout)
    bob_json = mailq_as(shared_env, "psm-bob", "--json")

    assert bob_json.returncode == 0, bob_json.stderr.decode()
    assert json.loads(bob_json.stdout) == root_json
    assert [(x["queue_id"], x["state"]) for x in root_json] == [(held, "held"), (waiting, "incoming"),
                                                                  (third, "incoming")]
    text = mailq_as(shared_env, "psm-bob")
    assert text.stdout == mailq_as(shared_env, None).stdout
    assert f"{held}!".encode() in text.stdout and b"(held by the administrator)" in text.stdout
    assert_no_contents(text)


def test_public_summary_is_world_readable_and_holds_no_message_bytes_after_spool_init(shared_env: Env) -> None:
    submit_as(shared_env, "psm-alice")
    shared_env.run("pysendmail", "queue", "hold", "--all", check=True)
    daemon = pwd.getpwnam("psm-daemon")

    public = os.lstat(shared_env.spool / "public")
    summary = os.lstat(shared_env.spool / "public" / "mailq")
    stubs = os.lstat(shared_env.spool / "public" / "incoming")

    assert stat.S_IMODE(public.st_mode) == 0o755 and public.st_uid == daemon.pw_uid
    assert stat.S_IMODE(summary.st_mode) == 0o644 and summary.st_uid == daemon.pw_uid
    assert stat.S_IMODE(stubs.st_mode) == 0o1777 and stubs.st_uid == daemon.pw_uid
    data = (shared_env.spool / "public" / "mailq").read_bytes()
    assert b"psm-alice@example.org" in data
    assert SUBJECT not in data and BODY not in data and b"Subject" not in data
    # Bob can neither replace the summary nor add files beside it.
    proc = subprocess.run(["runuser", "-u", "psm-bob", "--", "sh", "-c",
                           f"echo forged > {shared_env.spool}/public/mailq"], capture_output=True)
    assert proc.returncode != 0
    assert (shared_env.spool / "public" / "mailq").read_bytes() == data


def test_stub_is_owned_by_the_submitter_and_removed_once_the_message_is_picked_up(shared_env: Env) -> None:
    qid = submit_as(shared_env, "psm-alice")
    stub = shared_env.spool / "public" / "incoming" / qid
    st = os.lstat(stub)
    assert st.st_uid == pwd.getpwnam("psm-alice").pw_uid and stat.S_IMODE(st.st_mode) == 0o644
    assert SUBJECT not in stub.read_bytes() and BODY not in stub.read_bytes()

    shared_env.run("pysendmail", "queue", "hold", qid, check=True)

    assert not stub.exists()
    assert f"{qid}!".encode() in mailq_as(shared_env, "psm-bob").stdout


def test_forged_stubs_cannot_fake_or_hide_other_users_entries(shared_env: Env) -> None:
    real = submit_as(shared_env, "psm-alice")
    held = submit_as(shared_env, "psm-alice", 1)
    shared_env.run("pysendmail", "queue", "hold", held, check=True)
    stubs = shared_env.spool / "public" / "incoming"
    alice_uid = pwd.getpwnam("psm-alice").pw_uid
    bob_uid = pwd.getpwnam("psm-bob").pw_uid
    before = mailq_as(shared_env, "psm-bob").stdout

    def plant(name: str, sender: str, uid: int) -> None:
        env = spoolfile.Envelope(sender, ["victim@example.net"], uid=uid, time=time.time())
        data = spoolfile.encode_head(env, 99)
        proc = subprocess.run(["runuser", "-u", "psm-bob", "--", "sh", "-c", f"cat > {stubs}/{name}"], input=data,
                              capture_output=True)
        assert proc.returncode == 0, proc.stderr

    fake_uid = "F" * 18
    plant(fake_uid, "ceo@example.org", alice_uid)  # claims to be alice's: refused
    plant(held, "ceo@example.org", bob_uid)  # an id the summary lists: the summary wins
    subprocess.run(["runuser", "-u", "psm-bob", "--", "ln", "-s", str(shared_env.spool / "public" / "mailq"),
                    f"{stubs}/{'E' * 18}"], check=True)  # a symlink: never followed
    proc = subprocess.run(["runuser", "-u", "psm-bob", "--", "rm", "-f", f"{stubs}/{real}"], capture_output=True)
    assert proc.returncode != 0 and (stubs / real).exists()  # sticky: alice's stub stays

    after = mailq_as(shared_env, "psm-bob")
    assert after.returncode == 0
    assert after.stdout == before
    assert b"ceo@example.org" not in after.stdout

    # What bob can do is show an entry of his own until the next publish, which removes it.
    plant("D" * 18, "bob-claims@example.org", bob_uid)
    assert b"bob-claims@example.org" in mailq_as(shared_env, "psm-bob").stdout
    shared_env.run("pysendmail", "spool", "init", check=True)
    assert mailq_as(shared_env, "psm-bob").stdout == before
    assert sorted(os.listdir(stubs)) == [real]


def test_mailq_by_other_user_works_while_the_daemon_runs_and_shows_deferred_reasons(shared_env: Env,
                                                                                    daemon_proc) -> None:
    os.chown(shared_env.maildir, 0, 0)  # psm-daemon cannot deliver: every message is deferred
    d = daemon_proc(shared_env)
    qid = submit_as(shared_env, "psm-alice")

    def deferred() -> bool:
        out = mailq_as(shared_env, "psm-bob").stdout.decode()
        return f"{qid} " in out and "cannot write to maildir" in out

    wait_until(deferred, "bob's mailq to show the deferred message with its reason")
    bob = mailq_as(shared_env, "psm-bob")
    assert bob.returncode == 0 and b"the daemon is not running" not in bob.stderr
    assert bob.stdout == mailq_as(shared_env, None).stdout
    assert_no_contents(bob)
    assert not (shared_env.spool / "public" / "incoming" / qid).exists()

    assert d.stop() == 0
    down = mailq_as(shared_env, "psm-bob")
    assert down.returncode == 0 and b"the daemon is not running" in down.stderr
    assert f"{qid} ".encode() in down.stdout


def test_mailq_by_other_user_exits_77_with_one_sentence_when_the_spool_has_no_public_summary(
        shared_env: Env) -> None:
    submit_as(shared_env, "psm-alice")
    shutil.rmtree(shared_env.spool / "public")  # a spool set up before public/ existed

    proc = mailq_as(shared_env, "psm-bob")

    assert proc.returncode == 77
    err = proc.stderr.decode()
    assert err.count("\n") == 1 and "spool init" in err and "Traceback" not in err, err
    assert proc.stdout == b""


# ------------------------------------------------------------------ monitoring
def check_mailq_as(user: str, e: Env, tmp: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    """monitoring-plugins' check_mailq, its utils.pm pointed at our mailq (it hard-codes /usr/bin/mailq)."""
    plugin = Path("/usr/lib/nagios/plugins/check_mailq")
    if not plugin.exists():
        pytest.fail("check_mailq is not installed: apt-get install monitoring-plugins-standard")
    tmp.mkdir(mode=0o755)
    shutil.copy(plugin, tmp / "check_mailq")
    utils = (plugin.parent / "utils.pm").read_text()
    wrapper = tmp / "mailq"
    wrapper.write_text(f"#!/bin/sh\nPYSENDMAIL_CONFIG={e.config} exec {program('mailq')} \"$@\"\n")
    wrapper.chmod(0o755)
    (tmp / "utils.pm").write_text(utils.replace('"/usr/bin/mailq"', f'"{wrapper}"'))
    assert str(wrapper) in (tmp / "utils.pm").read_text()
    return subprocess.run(["runuser", "-u", user, "--", str(tmp / "check_mailq"), *args], capture_output=True,
                          timeout=60)


def test_check_mailq_as_an_unprivileged_user_counts_the_queue_with_the_daemon_down(shared_env: Env,
                                                                                  world_dir: Path) -> None:
    args = ("-M", "postfix", "-w", "1", "-c", "5")
    empty = check_mailq_as("psm-bob", shared_env, world_dir / "plugin0", *args)
    assert empty.returncode == 0, empty.stdout + empty.stderr
    assert empty.stdout.startswith(b"OK: postfix mailq reports queue is empty")

    for i in range(2):
        submit_as(shared_env, "psm-alice", i)
    two = check_mailq_as("psm-bob", shared_env, world_dir / "plugin1", *args)

    assert two.returncode == 1, two.stdout + two.stderr
    assert two.stdout.startswith(b"WARNING: postfix mailq is 2 (threshold w = 1)")


# ------------------------------------------------------------------ queue commands on incoming ids
def test_queue_show_prints_an_incoming_message_when_the_daemon_is_down(shared_env: Env) -> None:
    """Regression: 'queue show' answered "not in the queue" for an id mailq listed."""
    qid = submit_as(shared_env, "psm-alice")

    proc = shared_env.run("pysendmail", "queue", "show", qid)

    assert proc.returncode == 0, proc.stderr.decode()
    out = proc.stdout.decode()
    assert out.startswith(f"queue id: {qid}\nstate: incoming\nsender: <psm-alice@example.org>\n")
    assert "recipient: <ops@example.net> pending\n" in out
    assert SUBJECT.decode() in out and BODY.decode() in out
    assert shared_env.incoming() == [qid]  # looking changes nothing


def test_queue_show_by_other_user_exits_77(shared_env: Env) -> None:
    qid = submit_as(shared_env, "psm-alice")
    proc = shared_env.run("pysendmail", "queue", "show", qid, user="psm-bob")
    assert proc.returncode == 77 and BODY not in proc.stdout + proc.stderr


@pytest.mark.parametrize("action", ["hold", "delete"])
def test_queue_hold_and_delete_all_act_on_incoming_messages_when_the_daemon_is_down(shared_env: Env,
                                                                                   action: str) -> None:
    """Regression: 'queue hold --all' and 'delete --all' answered "needs queue ids (or --all)"."""
    ids = [submit_as(shared_env, "psm-alice", i) for i in range(3)]

    proc = shared_env.run("pysendmail", "queue", action, "--all")

    assert proc.returncode == 0, proc.stderr.decode()
    past = "held" if action == "hold" else "deleted"
    assert proc.stdout.decode() == "".join(f"{q}: {past}\n" for q in ids)
    assert shared_env.incoming() == []
    assert os.listdir(shared_env.spool / "public" / "incoming") == []
    listed = json.loads(mailq_as(shared_env, "psm-bob", "--json").stdout)
    if action == "hold":
        assert [(x["queue_id"], x["state"]) for x in listed] == [(q, "held") for q in ids]
        assert shared_env.queued() == ids
    else:
        assert listed == [] and shared_env.queued() == []


@pytest.mark.parametrize("action", ["hold", "delete", "release", "retry", "show"])
def test_queue_all_on_an_empty_queue_exits_0(shared_env: Env, action: str) -> None:
    proc = shared_env.run("pysendmail", "queue", action, "--all")
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout == b""


def test_queue_ids_and_all_together_is_a_usage_error(shared_env: Env) -> None:
    qid = submit_as(shared_env, "psm-alice")
    proc = shared_env.run("pysendmail", "queue", "delete", "--all", qid)
    assert proc.returncode == 64 and shared_env.incoming() == [qid]


def test_queue_release_and_retry_of_an_incoming_id_say_it_is_due(shared_env: Env) -> None:
    qid = submit_as(shared_env, "psm-alice")
    for action in ("release", "retry"):
        proc = shared_env.run("pysendmail", "queue", action, qid)
        assert proc.returncode == 0, proc.stderr.decode()
        assert proc.stdout.decode() == f"{qid}: due now (not yet picked up from incoming/)\n"
    assert shared_env.incoming() == [qid]


def test_queue_hold_then_release_of_an_incoming_id_then_flush_delivers_it(shared_env: Env) -> None:
    qid = submit_as(shared_env, "psm-alice")
    shared_env.run("pysendmail", "queue", "hold", qid, check=True)
    shared_env.run("pysendmail", "flush", check=True)
    assert shared_env.queued() == [qid] and shared_env.delivered() == []  # held: not tried

    shared_env.run("pysendmail", "queue", "release", qid, check=True)
    shared_env.run("pysendmail", "flush", check=True)

    got = shared_env.delivered()
    assert len(got) == 2 and all(BODY in m for m in got)  # one copy per recipient (Maildir capture)
    assert mailq_as(shared_env, "psm-bob").stdout == b"Mail queue is empty\n"


def test_queue_hold_of_an_incoming_id_waits_for_the_running_daemon_to_pick_it_up(shared_env: Env,
                                                                                 daemon_proc) -> None:
    """With a daemon the id must not be taken from under its pickup: the command asks it and waits."""
    os.chown(shared_env.maildir, 0, 0)  # attempts are deferred, so the message stays
    d = daemon_proc(shared_env)
    os.kill(d.pid, signal.SIGSTOP)  # the daemon cannot pick anything up until it continues
    try:
        qid = submit_as(shared_env, "psm-alice")
        fifo = os.open(shared_env.spool / "pickup", os.O_RDONLY | os.O_NONBLOCK)  # only to count pokes
        try:
            assert pokes(fifo) == 1  # alice's sendmail
            hold = subprocess.Popen([program("pysendmail"), "queue", "hold", qid], env=shared_env.environ,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            wait_until(lambda: pokes(fifo) >= 2, "the command to ask the daemon to pick the id up")
        finally:
            os.close(fifo)
        assert hold.poll() is None, "the command must wait for the daemon, not act on incoming/ itself"
        assert shared_env.incoming() == [qid]
    finally:
        os.kill(d.pid, signal.SIGCONT)
    out, err = hold.communicate(timeout=40)
    assert hold.returncode == 0, err.decode()
    assert out.decode() == f"{qid}: held\n"
    assert b"uid=" not in err  # the daemon picked it up, not the command
    wait_until(lambda: f"uid={pwd.getpwnam('psm-alice').pw_uid} (psm-alice)" in d.log(), "the daemon's pickup line")
    wait_until(lambda: f"{qid}!".encode() in mailq_as(shared_env, "psm-bob").stdout, "bob to see it held")
    assert d.stop() == 0
    assert shared_env.queued() == [qid]


def pokes(fifo: int) -> int:
    """Bytes waiting in the pickup FIFO (FIONREAD), without reading them."""
    import array
    import fcntl
    import termios

    buf = array.array("i", [0])
    fcntl.ioctl(fifo, termios.FIONREAD, buf)
    return buf[0]


def test_mailq_by_other_user_refuses_a_summary_others_could_have_written_and_config_check_fails(
        shared_env: Env) -> None:
    submit_as(shared_env, "psm-alice")
    public = shared_env.spool / "public"
    public.chmod(0o777)  # a mistaken chmod: bob could now replace the summary everyone reads

    proc = mailq_as(shared_env, "psm-bob")
    check = shared_env.run("pysendmail", "config", "check")

    assert proc.returncode == 78 and proc.stdout == b""
    assert "spool init" in proc.stderr.decode() and proc.stderr.decode().count("\n") == 1
    assert check.returncode == 78 and f"{public}: mode 0777".encode() in check.stdout + check.stderr
    shared_env.run("pysendmail", "spool", "init", check=True)
    assert mailq_as(shared_env, "psm-bob").returncode == 0


def test_mailq_and_publish_do_not_hang_when_a_user_plants_a_fifo_in_incoming(shared_env: Env) -> None:
    """Regression: the listing opened incoming/ files without O_NONBLOCK after an lstat that
    checked the mode only, so a FIFO with mode 0640 hung root's mailq (and would hang the
    daemon's publisher, then its stop)."""
    qid = submit_as(shared_env, "psm-alice")
    fifo = shared_env.spool / "incoming" / ("A" * 18)
    proc = subprocess.run(["runuser", "-u", "psm-bob", "--", "mkfifo", "-m", "0640", str(fifo)], capture_output=True)
    assert proc.returncode == 0, proc.stderr
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)

    root = shared_env.run("mailq", timeout=20)
    published = shared_env.run("pysendmail", "spool", "init", timeout=20)
    bob = mailq_as(shared_env, "psm-bob")

    assert root.returncode == 0 and published.returncode == 0, published.stderr
    assert bob.stdout == root.stdout
    assert f"{qid} ".encode() in root.stdout and b"A" * 18 not in root.stdout


def test_mailq_shows_control_characters_as_question_marks_when_a_stub_carries_escape_sequences(
        shared_env: Env) -> None:
    """A user's stub (or incoming file) must not drive the terminal of whoever runs mailq."""
    stubs = shared_env.spool / "public" / "incoming"
    env = spoolfile.Envelope("x\x1b]0;owned\x07@example.org", ["y\x9b2Jz@example.net"],
                             uid=pwd.getpwnam("psm-bob").pw_uid, time=time.time())
    proc = subprocess.run(["runuser", "-u", "psm-bob", "--", "sh", "-c", f"cat > {stubs}/{'C' * 18}"],
                          input=spoolfile.encode_head(env, 10), capture_output=True)
    assert proc.returncode == 0, proc.stderr

    alice = mailq_as(shared_env, "psm-alice")

    assert alice.returncode == 0
    assert b"x?]0;owned?@example.org" in alice.stdout and "y?2Jz@example.net".encode() in alice.stdout
    assert b"\x1b" not in alice.stdout and b"\x07" not in alice.stdout and "\x9b".encode() not in alice.stdout


def test_daemon_publisher_removes_a_forged_stub_when_only_the_stub_directory_changed(shared_env: Env,
                                                                                     monkeypatch) -> None:
    """No pickup, no attempt: the periodic check of public/incoming/ alone must clean it up."""
    import asyncio

    from pysendmail.core import layout
    from pysendmail.daemon import summary

    monkeypatch.setattr(summary, "REFRESH", 0.05)
    monkeypatch.setattr(summary, "MIN_INTERVAL", 0.01)
    spool = layout.Spool(str(shared_env.spool))
    forged = shared_env.spool / "public" / "incoming" / ("B" * 18)

    async def scenario() -> None:
        publisher = summary.Publisher(spool)
        publisher.start()
        deadline = time.monotonic() + 20
        while publisher.stubs_seen == 0:  # the first publish, at start
            assert time.monotonic() < deadline, "no publish at start"
            await asyncio.sleep(0.01)
        forged.write_bytes(spoolfile.encode_head(spoolfile.Envelope("f@example.org", ["v@example.net"], uid=0,
                                                                    time=time.time()), 5))
        while forged.exists():
            assert time.monotonic() < deadline, "the forged stub was never removed"
            await asyncio.sleep(0.01)
        await publisher.stop()
        assert publisher.task is None

    asyncio.run(scenario())
    assert b"f@example.org" not in (shared_env.spool / "public" / "mailq").read_bytes()


def test_queue_hold_of_a_forged_incoming_file_exits_65_and_leaves_it_in_quarantine(shared_env: Env) -> None:
    """hold queues an incoming id through pickup's own checks: a file claiming root's uid is refused."""
    qid = "0" * 17 + "1"
    forged = spoolfile.encode(spoolfile.Envelope("root@example.org", ["x@example.net"], uid=0, time=time.time()),
                              b"Subject: forged\r\n\r\nforged\r\n")
    path = shared_env.spool / "incoming" / qid
    proc = subprocess.run(["runuser", "-u", "psm-alice", "--", "sh", "-c", f"cat > {path} && chmod 640 {path}"],
                          input=forged, capture_output=True)
    assert proc.returncode == 0, proc.stderr
    assert f"{qid} ".encode() in mailq_as(shared_env, None).stdout  # listed, so commands must take it

    hold = shared_env.run("pysendmail", "queue", "hold", qid)

    assert hold.returncode == 65
    assert f"queue id {qid} could not be queued for the hold" in hold.stderr.decode()
    assert shared_env.incoming() == [] and shared_env.queued() == []
    assert [n.split(".")[0] for n in os.listdir(shared_env.spool / "quarantine")] == [qid]


@pytest.mark.parametrize("kind", ["fifo", "symlink"])
def test_mailq_by_other_user_exits_with_one_sentence_instead_of_hanging_when_the_summary_is_not_a_file(
        shared_env: Env, kind: str) -> None:
    """Regression: another user's mailq opened public/mailq without O_NONBLOCK, so a FIFO put
    there (by the spool's owner, or by root by mistake) hung every monitoring check; a symlink
    was followed to whatever it named."""
    submit_as(shared_env, "psm-alice")
    summary = shared_env.spool / "public" / "mailq"
    owner = summary.stat()
    summary.unlink()
    if kind == "fifo":
        os.mkfifo(summary, 0o644)
    else:
        (shared_env.spool / "public" / "elsewhere").write_text("")
        summary.symlink_to("elsewhere")
    os.lchown(summary, owner.st_uid, owner.st_gid)

    proc = mailq_as(shared_env, "psm-bob")

    assert proc.returncode == 78 and proc.stdout == b""
    assert proc.stderr.decode().count("\n") == 1 and "spool init" in proc.stderr.decode()
    shared_env.run("pysendmail", "spool", "init", check=True)
    assert stat.S_ISREG(os.lstat(summary).st_mode)
    assert mailq_as(shared_env, "psm-bob").returncode == 0
