"""What a newcomer reads: doctor without DNS, test's dialogue, the HELO warning said once.

Each test runs the installed ``pysendmail``/``sendmail`` against its own
config: doctor against a closed loopback port, a real DNS server on
loopback (tests/fakes/dns.py) or, in a private mount namespace, a
resolv.conf that names no server; ``test`` against a closed port; the
HELO warning with ``host.name`` set to a name without a dot, as on a
host whose name is just "vm".
"""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

from tests.conftest import Env, needs_root, program
from tests.fakes.dns import DnsServer
from tests.fakes.relay import Relay
from tests.integration.test_daemon import daemons  # noqa: F401  (fixture)
from tests.integration.test_relay import make_env, password_file, relay_table, run_queue, submit

HELO_WARNING = "HELO name 'web1' is not a fully qualified domain name"


def closed_port(kind: int) -> int:
    """A loopback port nothing listens on (bound, then closed)."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def relay_env(tmp_path: Path, relay: Relay, host_name: str = "host.example.org", **kw: object) -> Env:
    e = make_env(tmp_path, relay_table(relay, password_file(tmp_path), **kw))  # type: ignore[arg-type]
    if host_name != "host.example.org":
        e.config.write_text(e.config.read_text().replace('name = "host.example.org"', f'name = "{host_name}"'))
    return e


# ------------------------------------------------------------------ doctor without DNS
def test_doctor_says_dns_is_unreachable_when_no_server_answers(tmp_path: Path, relay_factory) -> None:  # type: ignore[no-untyped-def]
    e = relay_env(tmp_path, relay_factory("implicit"))
    port = closed_port(socket.SOCK_DGRAM)

    proc = e.run("pysendmail", "doctor", "--domain", "example.org", "--nameserver", f"127.0.0.1:{port}")

    err = proc.stderr.decode()
    assert proc.returncode == 75, (proc.stdout, err)  # EX_TEMPFAIL: try again, as 'dkim check' exits
    assert err.startswith("pysendmail: DNS is unreachable: no answer from 127.0.0.1 port "), err
    assert err.count("\n") == 1
    # No verdict on records it could not see, and no dnspython class names.
    assert proc.stdout == b""
    assert "NoNameservers" not in err and "Timeout" not in err and "FAIL" not in err


@needs_root
def test_doctor_says_dns_is_unreachable_when_resolv_conf_names_no_server(tmp_path: Path, relay_factory) -> None:  # type: ignore[no-untyped-def]
    e = relay_env(tmp_path, relay_factory("implicit"))
    empty = tmp_path / "resolv.conf"
    empty.write_text("# no nameserver line\n")
    # A private mount namespace: the host's /etc/resolv.conf stays as it is for everyone else.
    script = f'mount --bind {empty} /etc/resolv.conf && exec "$@"'
    proc = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh",
                           program("pysendmail"), "doctor", "--domain", "example.org"],
                          capture_output=True, env=e.environ, timeout=120)

    err = proc.stderr.decode()
    assert proc.returncode == 75, (proc.stdout, err)
    assert err == ("pysendmail: DNS is unreachable: /etc/resolv.conf names no server; fix it, or ask a server "
                   "with --nameserver IP[:PORT]\n")


def test_doctor_reports_one_names_servfail_as_a_warning_not_as_unreachable_dns(tmp_path: Path,  # type: ignore[no-untyped-def]
                                                                               relay_factory) -> None:
    e = relay_env(tmp_path, relay_factory("implicit"), host_name="mail.example.org")
    with DnsServer({"example.org": "v=spf1 ~all"}) as dns:
        dns.add("mail.example.org", "A", "192.0.2.10")
        dns.servfail.add("_dmarc.example.org")
        proc = e.run("pysendmail", "doctor", "--domain", "example.org", "--nameserver", f"127.0.0.1:{dns.port}")

    out = proc.stdout.decode()
    assert "WARN DMARC _dmarc.example.org: TXT lookup failed" in out, out
    assert "OK   HELO mail.example.org: resolves to 192.0.2.10" in out, out
    assert "unreachable" not in out + proc.stderr.decode()


# ------------------------------------------------------------------ test's dialogue
def test_test_command_shows_the_failed_connection_its_hint_refers_to(tmp_path: Path, relay_factory) -> None:  # type: ignore[no-untyped-def]
    relay = relay_factory("implicit")
    port = closed_port(socket.SOCK_STREAM)
    e = relay_env(tmp_path, relay, host="127.0.0.1", port=port)

    proc = e.run("pysendmail", "test", "--to", "someone@example.net")

    lines = proc.stdout.decode().splitlines()
    assert proc.returncode == 75, lines
    # Before: the route line, then "NOT sent ...; hint: see the dialogue above" with nothing above.
    assert lines[1] == f"* connecting to 127.0.0.1 port {port} (implicit TLS)", lines
    assert lines[2].startswith("* connection failed: ") and str(port) in lines[2], lines
    assert lines[3].startswith("test: NOT sent (deferred): cannot connect") and "see the dialogue above" in lines[3]


def test_test_command_dialogue_shows_tls_before_the_greeting(tmp_path: Path, relay_factory) -> None:  # type: ignore[no-untyped-def]
    relay = relay_factory("implicit")
    e = relay_env(tmp_path, relay)

    proc = e.run("pysendmail", "test", "--to", "someone@example.net")

    lines = proc.stdout.decode().splitlines()
    assert proc.returncode == 0, lines
    assert lines[1:4] == [f"* connecting to localhost port {relay.port} (implicit TLS)", "* TLS established",
                          lines[3]] and lines[3].startswith("S: 220"), lines


# ------------------------------------------------------------------ the HELO warning, once
def test_helo_warning_is_not_printed_by_mailq_status_sendmail_or_a_flush(tmp_path: Path, relay_factory) -> None:  # type: ignore[no-untyped-def]
    relay = relay_factory("implicit")
    e = relay_env(tmp_path, relay, host_name="web1")

    submit(e, "someone@example.net")
    said = run_queue(e)  # cron mails whatever 'sendmail -q' prints, every run
    relay.wait_for(1)
    for name, args in (("mailq", []), ("pysendmail", ["status"]), ("pysendmail", ["flush"]),
                       ("sendmail", ["-bp"]), ("pysendmail", ["test", "--to", "someone@example.net"])):
        proc = e.run(name, *args)
        assert proc.returncode == 0, (name, args, proc.stderr.decode())
        said += proc.stdout.decode() + proc.stderr.decode()
    assert "HELO name" not in said, said


def test_helo_warning_is_said_once_by_config_check_doctor_and_setup(tmp_path: Path, relay_factory) -> None:  # type: ignore[no-untyped-def]
    relay = relay_factory("implicit")
    e = relay_env(tmp_path, relay, host_name="web1")

    check = e.run("pysendmail", "config", "check")
    assert check.returncode == 0, check.stderr.decode()
    assert check.stdout.decode().count(HELO_WARNING) == 1 and check.stderr == b"", check.stdout.decode()
    assert f"WARN {HELO_WARNING}" in check.stdout.decode()

    with DnsServer() as dns:
        doctor = e.run("pysendmail", "doctor", "--domain", "example.org", "--nameserver", f"127.0.0.1:{dns.port}")
    out = doctor.stdout.decode()
    assert "FAIL HELO web1: not a fully qualified domain name" in out and out.count("HELO") == 1, out
    assert doctor.stderr == b"", doctor.stderr.decode()



@needs_root
def test_setup_says_the_helo_warning_once_on_a_host_named_without_a_dot(tmp_path: Path, relay_factory) -> None:  # type: ignore[no-untyped-def]
    """setup writes no host.name: the HELO name is the host's.  A host named
    "web1" (private UTS namespace; /etc/hosts bound over in a private mount
    namespace so the name resolves without DNS) gets the warning once."""
    relay = relay_factory("implicit")
    config = tmp_path / "cfg" / "pysendmail.toml"
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 localhost\n127.0.1.1 web1\n")
    script = f'hostname web1 && mount --bind {hosts} /etc/hosts && exec "$@"'
    proc = subprocess.run(
        ["unshare", "--uts", "--mount", "--propagation", "private", "sh", "-c", script, "sh",
         program("pysendmail"), "-C", str(config), "setup", "--user-mode", "--provider", "custom", "--host",
         "localhost", "--port", str(relay.port), "--user", "robot@example.org", "--password-stdin",
         "--spool", str(tmp_path / "spool")],
        input=b"secret\n", capture_output=True, timeout=120)

    said = (proc.stdout + proc.stderr).decode()
    assert proc.returncode == 0, said
    assert said.count(HELO_WARNING) == 1, said


def test_helo_warning_is_logged_once_at_the_daemons_start(tmp_path: Path, relay_factory, daemons) -> None:  # type: ignore[no-untyped-def]
    relay = relay_factory("implicit")
    e = relay_env(tmp_path, relay, host_name="web1")
    d = daemons(e)  # ready: READY=1 comes after the start-up lines

    assert e.sendmail("-i", "someone@example.net", input=b"Subject: t\n\nhello\n").returncode == 0
    relay.wait_for(1)
    d.stop()
    log = d.log()
    assert log.count(HELO_WARNING) == 1, log
    assert f"daemon: warning: {HELO_WARNING}" in log, log
