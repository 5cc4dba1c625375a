"""``pysendmail daemon --log-format json`` and ``[log] format``: what journald and Loki users get."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.conftest import Env, program, relay_env, stop_process, wait_until, write_config
from tests.integration.test_daemon import submit


def run_daemon(e: Env, tmp_path: Path, *args: str) -> tuple[subprocess.Popen[bytes], Path]:
    log_path = tmp_path / "daemon.log"
    with open(log_path, "wb") as out:
        proc = subprocess.Popen([program("pysendmail"), "daemon", *args], env=e.environ, stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT)
    return proc, log_path


def records(log_path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in log_path.read_text().splitlines()]  # every line, or this raises


def test_daemon_log_format_json_writes_one_object_per_line(tmp_path: Path, relay_factory) -> None:
    relay = relay_factory()
    e = relay_env(tmp_path, relay)
    proc, log_path = run_daemon(e, tmp_path, "--log-format", "json")
    try:
        submit(e, "json please")
        relay.wait_for(1)
        wait_until(lambda: any(r.get("status") == "sent" for r in records(log_path)), "the delivery's line")
    finally:
        stop_process(proc)
    got = records(log_path)
    sent = next(r for r in got if r.get("status") == "sent")
    assert sent["to"] == "someone@example.net" and sent["route"] == "default" and sent["dsn"] == "2.0.0"
    assert str(sent["reply"]).startswith("250 ") and isinstance(sent["tries"], int)
    picked = next(r for r in got if "nrcpt" in r)
    assert picked["qid"] == sent["qid"] and picked["nrcpt"] == 1
    assert any(r.get("text") == "daemon: stopped" for r in got)


def test_config_log_format_json_applies_and_the_option_wins(tmp_path: Path, relay_factory) -> None:
    relay = relay_factory()
    e = relay_env(tmp_path, relay, extra='[log]\nformat = "json"\n')
    proc, log_path = run_daemon(e, tmp_path, "--log-format", "text")
    try:
        wait_until(lambda: "daemon: started" in log_path.read_text(), "the start line")
    finally:
        stop_process(proc)
    assert log_path.read_text().startswith("daemon: started")  # text, as the option says
    proc, log_path = run_daemon(e, tmp_path)
    try:
        wait_until(lambda: "daemon: started" in log_path.read_text(), "the start line")
    finally:
        stop_process(proc)
    assert str(records(log_path)[0]["text"]).startswith("daemon: started")


def test_unknown_log_format_is_a_config_error(tmp_path: Path) -> None:
    e = write_config(tmp_path, '[log]\nformat = "xml"\n')
    proc = e.run("pysendmail", "config", "check")
    assert proc.returncode == 78 and b"log.format" in proc.stderr and b"text or json" in proc.stderr
