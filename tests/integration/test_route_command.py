"""``pysendmail route list`` and ``route resume``, with and without a running daemon.

The relay (tests/fakes/relay.py) answers with a provider's own text from
PROVIDER_REPLIES; the route pauses (or is held); the test then lets the
relay accept again and judges that the mail goes only once the route is
resumed: through routes.json when no daemon runs, through the daemon's
FIFO ('R') when one does.  No clock, no sleep: the pause is 24 hours and
the hold 5 minutes, far beyond any test.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import Env
from tests.fakes.relay import PROVIDER_REPLIES
from tests.integration.test_daemon import daemons, wait_until  # noqa: F401 (daemons is a fixture)
from tests.integration.test_daemon import submit as submit_to_daemon
from tests.integration.test_providers import preset_table, routes_state
from tests.integration.test_relay import make_env, mailq, password_file, run_queue, submit

__all__ = ["daemons"]


def route_list(e: Env) -> list[dict[str, object]]:
    proc = e.run("pysendmail", "route", "list", "--json", check=True)
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


def test_route_list_shows_a_yandex_spam_block_and_resume_warns_then_lifts_it_without_a_daemon(
        tmp_path: Path, relay_factory) -> None:
    relay = relay_factory("implicit")
    relay.data_reply = PROVIDER_REPLIES["yandex-spam"]
    e = make_env(tmp_path, preset_table(relay, password_file(tmp_path), "yandex"))
    submit(e, "someone@example.net")
    run_queue(e)

    [row] = route_list(e)
    assert row["name"] == "default" and row["provider"] == "yandex" and row["relay"] == f"localhost:{relay.port}"
    assert row["state"] == "paused" and row["kind"] == "spam-block" and isinstance(row["until"], float)
    assert "suspicion of SPAM" in str(row["why"])
    text = e.run("pysendmail", "route", "list", check=True).stdout.decode()
    assert text.startswith(f"route default: localhost:{relay.port} (yandex): paused until ")
    assert "(spam-block): " in text

    relay.data_reply = None
    run_queue(e)  # still paused: a flush does not lift a provider's block
    assert relay.messages == [] and len(mailq(e)) == 1

    proc = e.run("pysendmail", "route", "resume", "default")

    assert proc.returncode == 0, proc.stderr.decode()
    assert "warning: route default is in a Yandex spam block until" in proc.stderr.decode()
    assert "extends the block" in proc.stderr.decode()
    assert "the daemon is not running" in proc.stdout.decode()
    assert route_list(e)[0]["state"] == "ok" and routes_state(e)["default"]["pause"] is False
    run_queue(e)
    assert relay.wait_for(1)[0].rcpt_tos == ["someone@example.net"]
    assert mailq(e) == []


@pytest.mark.parametrize(("reply", "where", "state"), [
    ("gmail-daily-limit", "mail", "paused"),
    ("gmail-app-password", "auth", "held"),
])
def test_route_resume_takes_effect_in_the_running_daemon(tmp_path: Path, relay_factory, daemons,  # noqa: F811
                                                         reply: str, where: str, state: str) -> None:
    relay = relay_factory("implicit")
    setattr(relay, f"{where}_reply", PROVIDER_REPLIES[reply])
    e = make_env(tmp_path, preset_table(relay, password_file(tmp_path), "gmail"))
    d = daemons(e)
    submit_to_daemon(e, "waits for the route")
    wait_until(lambda: (e.spool / "state" / "routes.json").exists() and route_list(e)[0]["state"] == state,
               f"the route to be {state}")
    setattr(relay, f"{where}_reply", None)

    proc = e.run("pysendmail", "route", "resume", "default")

    assert proc.returncode == 0, proc.stderr.decode()
    assert f"resumed in the running daemon (pid {d.pid}; was {state} until" in proc.stdout.decode()
    assert "warning" not in proc.stderr.decode()  # only a Yandex spam block warns
    assert route_list(e)[0]["state"] == "ok"  # saved before the command returned
    # The daemon sends what waited, with no flush; its own state agrees.
    assert relay.wait_for(1, timeout=15)[0].rcpt_tos == ["someone@example.net"]
    assert "route default resumed by the administrator" in d.log()
    assert not list((e.spool / "state").glob("resume.*"))
    assert d.stop() == 0
    assert routes_state(e)["default"]["state"] == "ok"


def test_route_resume_of_an_unknown_route_is_a_usage_error_naming_the_routes(tmp_path: Path, relay_factory) -> None:
    relay = relay_factory("implicit")
    e = make_env(tmp_path, preset_table(relay, password_file(tmp_path), "yandex"))

    proc = e.run("pysendmail", "route", "resume", "nope")

    assert proc.returncode == 64
    assert proc.stderr.decode().strip() == ("pysendmail: no route named 'nope'; 'pysendmail route list' lists them "
                                            "(default)")


def test_route_list_without_a_relay_says_there_are_no_routes(env: Env) -> None:
    proc = env.run("pysendmail", "route", "list")

    assert proc.returncode == 78 and b"no relay is configured" in proc.stderr
