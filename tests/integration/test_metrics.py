"""daemon/metrics.py as Prometheus and node_exporter meet it: scraped, parsed, never string-matched.

A real ``pysendmail daemon`` relays through the loopback relay
(tests/fakes/relay.py); its /metrics endpoint and its textfile are read
with prometheus_client's own parser of the text format.
"""

from __future__ import annotations

import os
import socket
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Env, relay_env, wait_until, write_config
from tests.fakes.redisd import free_port
from tests.integration.test_daemon import daemons, message, submit  # noqa: F401 (fixture)


def parse(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the exposition, keyed by (name, sorted labels)."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def families(text: str) -> dict[str, str]:
    return {f.name: f.type for f in text_string_to_metric_families(text)}


def scrape(port: int, path: str = "/metrics") -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as resp:
        assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        return resp.read().decode()


def metrics_env(tmp_path: Path, relay: object, port: int, extra: str = "") -> Env:
    return relay_env(tmp_path, relay, extra=f'[metrics]\nlisten = "127.0.0.1:{port}"\n'
                                             f'textfile = "{tmp_path}/textfile/pysendmail.prom"\n'
                                             f'textfile_interval = 1\n' + extra)


def test_scrape_counts_outcomes_by_route_status_and_reply_class(tmp_path: Path, relay_factory, daemons) -> None:
    relay = relay_factory()
    relay.rcpt_replies["nobody@example.net"] = "550 5.1.1 no such user"
    relay.rcpt_replies["later@example.net"] = "451 4.2.1 mailbox busy"
    port = free_port()
    (tmp_path / "textfile").mkdir()
    e = metrics_env(tmp_path, relay, port)
    daemons(e)
    submit(e, "one")
    submit(e, "two")
    submit(e, "three", to="nobody@example.net")
    submit(e, "four", to="later@example.net")
    relay.wait_for(3)  # "one", "two", and the bounce of "three" to its sender

    def counted() -> bool:
        m = parse(scrape(port))
        return sum(v for (n, _), v in m.items() if n == "pysendmail_delivery_outcomes_total") >= 5

    wait_until(counted, "four outcomes in /metrics")
    m = parse(scrape(port))
    key = "pysendmail_delivery_outcomes_total"
    assert m[(key, (("class", "2xx"), ("route", "default"), ("status", "sent")))] == 3
    assert m[(key, (("class", "5xx"), ("route", "default"), ("status", "bounced")))] == 1
    assert m[(key, (("class", "4xx"), ("route", "default"), ("status", "deferred")))] == 1
    types = families(scrape(port))
    assert types["pysendmail_delivery_outcomes"] == "counter" and types["pysendmail_queue_messages"] == "gauge"
    # The deferred message is the one left: deferred, and the oldest.
    assert m[("pysendmail_queue_messages", (("state", "deferred"),))] == 1
    assert m[("pysendmail_queue_messages", (("state", "held"),))] == 0
    assert m[("pysendmail_queue_oldest_message_age_seconds", ())] > 0
    assert m[("pysendmail_route_state", (("route", "default"), ("state", "ok")))] == 1
    assert m[("pysendmail_route_state", (("route", "default"), ("state", "paused")))] == 0

    # The textfile holds the same families, parsed the same way; no temporary is left beside it.
    prom = tmp_path / "textfile" / "pysendmail.prom"
    wait_until(lambda: prom.exists() and parse(prom.read_text()).get(
        (key, (("class", "5xx"), ("route", "default"), ("status", "bounced")))) == 1, "the textfile's counts")
    assert oct(prom.stat().st_mode & 0o777) == "0o644"
    assert sorted(os.listdir(tmp_path / "textfile")) == ["pysendmail.prom"]


def test_dkim_key_health_shows_bits_and_a_key_file_changed_under_the_daemon(tmp_path: Path, relay_factory,
                                                                          daemons) -> None:
    relay = relay_factory()
    port = free_port()
    key = tmp_path / "example.org.mail.key"
    e = metrics_env(tmp_path, relay, port, f'\n[[dkim]]\ndomain = "example.org"\nselector = "mail"\n'
                                           f'key_file = "{key}"\n')
    (tmp_path / "textfile").mkdir()
    e.run("pysendmail", "dkim", "keygen", "--domain", "example.org", "--selector", "mail", "--output", str(key),
          check=True)
    daemons(e)
    labels = (("algorithm", "rsa-sha256"), ("domain", "example.org"), ("selector", "mail"))
    m = parse(scrape(port))
    assert m[("pysendmail_dkim_key_bits", labels)] == 2048
    assert m[("pysendmail_dkim_key_weak", labels)] == 0
    assert m[("pysendmail_dkim_key_file_current", labels)] == 1
    # Rotated on disk (another key written in its place) but not reloaded: the daemon signs with the old one.
    key.unlink()
    e.run("pysendmail", "dkim", "keygen", "--domain", "example.org", "--selector", "mail", "--output", str(key),
          check=True)
    wait_until(lambda: parse(scrape(port))[("pysendmail_dkim_key_file_current", labels)] == 0,
               "the changed key file to show")


def test_http_answers_only_get_metrics(tmp_path: Path, relay_factory, daemons) -> None:
    relay = relay_factory()
    port = free_port()
    e = metrics_env(tmp_path, relay, port)
    daemons(e)
    for path, code in (("/", 404), ("/metrics/../etc/passwd", 404)):
        with pytest.raises(urllib.error.HTTPError) as err:
            scrape(port, path)
        assert err.value.code == code
    req = urllib.request.Request(f"http://127.0.0.1:{port}/metrics", data=b"x", method="POST")
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=10)
    assert err.value.code == 405 and err.value.headers["Allow"] == "GET, HEAD"


def raw(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
        s.sendall(data)
        chunks = []
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)


def test_request_head_over_8_kib_gets_431_and_the_daemon_goes_on(tmp_path: Path, relay_factory, daemons) -> None:
    relay = relay_factory()
    port = free_port()
    e = metrics_env(tmp_path, relay, port)
    d = daemons(e)
    answer = raw(port, b"GET /metrics HTTP/1.1\r\nX-Junk: " + b"a" * 20000 + b"\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 431 ")
    assert raw(port, b"NOT HTTP\r\n\r\n").startswith(b"HTTP/1.1 400 ")
    assert "pysendmail_queue_messages" in families(scrape(port))
    assert d.proc.poll() is None


def test_client_that_sends_nothing_is_dropped_and_others_are_served(tmp_path: Path, relay_factory, daemons) -> None:
    relay = relay_factory()
    port = free_port()
    e = metrics_env(tmp_path, relay, port)
    daemons(e)
    silent = [socket.create_connection(("127.0.0.1", port), timeout=20) for _ in range(3)]
    try:
        assert "pysendmail_queue_messages" in families(scrape(port))  # not held up by them
        for s in silent:
            assert s.recv(100) == b""  # closed by the daemon (its 5 s limit), not by us
    finally:
        for s in silent:
            s.close()


def test_metrics_listen_on_a_public_address_needs_allow_remote(tmp_path: Path) -> None:
    e = write_config(tmp_path, '[metrics]\nlisten = "0.0.0.0:9469"\n')
    proc = e.run("pysendmail", "config", "check")
    assert proc.returncode == 78
    assert b"not a loopback address" in proc.stderr and b"metrics.allow_remote" in proc.stderr
    e.config.write_text(e.config.read_text() + "allow_remote = true\n")
    assert e.run("pysendmail", "config", "check").returncode == 0


@pytest.mark.parametrize("value,words", [
    ('listen = "example.org:9469"', b"not an IPv4 address"),
    ('textfile = "/tmp/metrics.txt"', b"ending in .prom"),
    ('listen = "127.0.0.1:99999"', b"not a port number"),
    ('listen = "127.0.0.1:\u00b2"', b"not a port number"),  # a digit to isdigit(), not to int()
])
def test_bad_metrics_keys_are_refused_with_one_sentence(tmp_path: Path, value: str, words: bytes) -> None:
    e = write_config(tmp_path, f"[metrics]\n{value}\n")
    proc = e.run("pysendmail", "config", "check")
    assert proc.returncode == 78 and words in proc.stderr, proc.stderr


def test_metrics_port_in_use_stops_the_daemon_with_one_sentence(tmp_path: Path, relay_factory) -> None:
    relay = relay_factory()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        e = metrics_env(tmp_path, relay, port)
        proc = e.run("pysendmail", "daemon", timeout=60)
    assert proc.returncode == 78
    assert f"metrics.listen: cannot listen on 127.0.0.1 port {port}".encode() in proc.stderr
    assert b"Traceback" not in proc.stderr


def test_listen_with_a_port_alone_serves_both_loopbacks(tmp_path: Path, relay_factory, daemons) -> None:
    relay = relay_factory()
    port = free_port()
    e = relay_env(tmp_path, relay, extra=f'[metrics]\nlisten = "{port}"\n')
    d = daemons(e)
    assert "pysendmail_queue_messages" in families(scrape(port))
    has_v6 = socket.has_ipv6 and os.path.exists("/proc/net/if_inet6") and \
        any(line.split()[0] == "0" * 31 + "1" for line in open("/proc/net/if_inet6"))
    if has_v6:
        with urllib.request.urlopen(f"http://[::1]:{port}/metrics", timeout=10) as resp:
            assert "pysendmail_queue_messages" in families(resp.read().decode())
    assert f"http://127.0.0.1:{port}/metrics" in d.log()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/metrics", method="HEAD")
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status == 200 and resp.read() == b"" and int(resp.headers["Content-Length"]) > 0


def test_oauth_token_health_follows_the_token_file(tmp_path: Path, relay_factory, daemons) -> None:
    import json
    import time

    from tests.fakes.relay import USER

    relay = relay_factory()
    port = free_port()
    token = tmp_path / "oauth-default.json"
    expires = time.time() + 3600
    token.write_text(json.dumps({"refresh_token": "refresh-Secret-1", "access_expires_at": expires}))
    token.chmod(0o600)
    e = write_config(tmp_path, (
        f'[relay]\nprovider = "custom"\nhost = "localhost"\nport = {relay.port}\ntls = "implicit"\n'
        f'username = "{USER}"\nauth = "oauth2"\noauth_client_id = "client-1"\noauth_scope = "smtp"\n'
        f'oauth_token_url = "https://127.0.0.1:9/token"\noauth_device_url = "https://127.0.0.1:9/device"\n'
        f'oauth_token_file = "{token}"\nca_file = "{relay.ca_file}"\n\n'
        f'[metrics]\nlisten = "127.0.0.1:{port}"\n'))
    e.run("pysendmail", "spool", "init", check=True)
    daemons(e)
    m = parse(scrape(port))
    assert m[("pysendmail_oauth_token_state", (("route", "default"), ("state", "ok")))] == 1
    assert m[("pysendmail_oauth_token_valid", (("route", "default"),))] == 1
    assert abs(m[("pysendmail_oauth_token_expiry_timestamp_seconds", (("route", "default"),))] - expires) < 1
    # The provider refused the refresh token (invalid_grant): a login is needed, and the gauge says so.
    token.write_text(json.dumps({"refresh_token": "refresh-Secret-1", "login_needed": True, "error": "invalid_grant"}))
    wait_until(lambda: parse(scrape(port))[("pysendmail_oauth_token_valid", (("route", "default"),))] == 0,
               "the token to show as needing a login")
    m = parse(scrape(port))
    assert m[("pysendmail_oauth_token_state", (("route", "default"), ("state", "login-needed")))] == 1
    assert "refresh-Secret-1" not in scrape(port)
