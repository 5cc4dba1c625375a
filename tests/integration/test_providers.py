"""Provider presets, routes and sender alignment, end to end against the real relay.

Each test writes a config whose relay has a ``provider`` preset but points
at the loopback relay (host, port and ca_file from the file win over the
preset), scripts the provider's own reply text on the relay
(tests/fakes/relay.py PROVIDER_REPLIES), runs ``sendmail -q`` and judges
the spool, ``mailq``, ``pysendmail status`` and what the relay recorded.
Pauses are judged by state (spool/state/routes.json, status) and by a
second run that must not talk to the relay at all: no clock, no sleep.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import pytest

from tests.conftest import Env, write_config
from tests.fakes.relay import PASSWORD, PROVIDER_REPLIES, USER, Relay, free_port
from tests.integration.test_relay import (
    failed_ids, make_env, mailq, parse, password_file, relay_table, run_queue, submit,
)


def preset_table(relay: Relay, pw: Path, provider: str, extra: str = "", name: str | None = None) -> str:
    table = relay_table(relay, pw, extra=f'provider = "{provider}"\n' + extra)
    return table.replace("[relay]", f"[relay.{name}]") if name else table


def routes_state(e: Env) -> dict[str, dict[str, object]]:
    data = json.loads((e.spool / "state" / "routes.json").read_text())
    return data["routes"]  # type: ignore[no-any-return]


def status(e: Env) -> str:
    return e.run("pysendmail", "status", check=True).stdout.decode()


# ------------------------------------------------------------------ pauses
@pytest.mark.parametrize(
    ("provider", "reply", "where", "kind", "hours"),
    [
        ("yandex", "yandex-spam", "data", "spam-block", 24),
        ("gmail", "gmail-daily-limit", "mail", "daily-quota", 24),
        ("outlook", "o365-quota", "data", "daily-quota", 24),
        ("ses", "ses-daily-quota", "mail", "daily-quota", 24),
        ("custom", "too-many-logins", "auth", "too-many-logins", 0.5),
    ],
)
def test_quota_or_block_reply_pauses_the_route_until_the_window_ends_and_keeps_the_message(
    tmp_path: Path, relay_factory, provider: str, reply: str, where: str, kind: str, hours: float
) -> None:
    relay = relay_factory("implicit")
    setattr(relay, f"{where}_reply", PROVIDER_REPLIES[reply])
    extra = 'region = "eu-west-1"\n' if provider == "ses" else ""
    e = make_env(tmp_path, preset_table(relay, password_file(tmp_path), provider, extra))
    qids = [submit(e, "someone@example.net", subject=f"m{n}") for n in range(3)]
    before = time.time()

    stderr = run_queue(e)

    assert "PAUSED until" in stderr and kind in stderr and "hint:" in stderr
    assert "status=bounced" not in stderr and failed_ids(e) == []
    assert sorted(x["queue_id"] for x in mailq(e)) == sorted(qids)
    state = routes_state(e)["default"]
    assert before + hours * 3600 - 5 <= float(state["paused_until"]) <= time.time() + hours * 3600 + 5  # type: ignore[arg-type]
    shown = status(e)
    assert "route default:" in shown and "PAUSED until" in shown and "hint:" in shown
    # Only the first message reached the relay: the others waited.
    tried = len(relay.mail_commands) if where != "auth" else relay.failed_logins
    assert tried == 1

    # A new run (a new process: the pause was kept in the spool) does not
    # knock on the relay inside the window, even though flush ignores backoff.
    run_queue(e)
    assert (len(relay.mail_commands) if where != "auth" else relay.failed_logins) == tried
    assert relay.messages == []


def test_status_golden_shows_the_paused_route_with_reason_hint_and_until(tmp_path: Path, relay_factory) -> None:
    relay = relay_factory("implicit")
    relay.data_reply = PROVIDER_REPLIES["yandex-spam"]
    e = make_env(tmp_path, preset_table(relay, password_file(tmp_path), "yandex", 'allowed_senders = ["example.org"]\n'))
    submit(e, "someone@example.net")
    run_queue(e)

    text = status(e)

    text = text.replace(str(tmp_path), "TMP").replace(str(relay.port), "PORT")
    text = re.sub(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", "DATE", text)
    text = re.sub(r"1712345678-\w+", "ID", text)
    golden = Path(__file__).parent.parent / "data" / "status-paused.txt"
    assert text == golden.read_text()


def test_sender_not_owned_holds_the_message_with_a_hint_instead_of_bouncing(tmp_path: Path, relay_factory) -> None:
    relay = relay_factory("implicit")
    relay.mail_reply = PROVIDER_REPLIES["not-owned"]
    e = make_env(tmp_path, relay_table(relay, password_file(tmp_path)))
    qid = submit(e, "someone@example.net")

    stderr = run_queue(e)

    assert "status=held" in stderr
    assert "from_policy" in stderr and "queue release" in stderr
    (entry,) = mailq(e)
    assert entry["queue_id"] == qid and entry["state"] == "held"
    assert failed_ids(e) == []


def test_app_password_required_holds_the_route_and_says_so(tmp_path: Path, relay_factory) -> None:
    relay = relay_factory("implicit")
    relay.auth_reply = PROVIDER_REPLIES["gmail-app-password"]
    e = make_env(tmp_path, preset_table(relay, password_file(tmp_path), "gmail"))
    submit(e, "someone@example.net")

    stderr = run_queue(e)

    assert "app password" in stderr and "AUTHENTICATION FAILED" in stderr
    (entry,) = mailq(e)
    assert entry["state"] == "deferred" and failed_ids(e) == []


def test_plain_5xx_from_a_provider_still_bounces(tmp_path: Path, relay_factory) -> None:
    relay = relay_factory("implicit")
    relay.rcpt_replies["nobody@example.net"] = "550 5.1.1 No such user"
    e = make_env(tmp_path, preset_table(relay, password_file(tmp_path), "yandex", 'allowed_senders = ["example.org"]\n'))
    submit(e, "nobody@example.net")

    stderr = run_queue(e)

    assert "status=bounced" in stderr and "PAUSED" not in stderr


# ------------------------------------------------------------------ sender alignment
def test_rewrite_policy_makes_sender_and_from_the_account_and_keeps_the_original_as_reply_to(
    tmp_path: Path, relay_factory
) -> None:
    relay = relay_factory("implicit")
    e = make_env(tmp_path, preset_table(relay, password_file(tmp_path), "yandex"))
    before = set(e.incoming())
    msg = b"From: Shop Robot <alice@example.org>\nSender: bob@example.org\nTo: someone@example.net\nSubject: x\n\nhi\n"
    assert e.sendmail("-i", "-f", "alice@example.org", "someone@example.net", input=msg).returncode == 0
    assert set(e.incoming()) != before

    stderr = run_queue(e)

    (got,) = relay.wait_for(1)
    assert got.mail_from == USER
    headers = parse(got.data)
    assert headers["From"] == f"Shop Robot <{USER}>"
    assert headers["Reply-To"] == "Shop Robot <alice@example.org>"
    assert headers["Sender"] == USER
    assert "rewrote sender <alice@example.org>" in stderr


def test_rewrite_policy_keeps_an_allowed_sender_and_an_existing_reply_to(tmp_path: Path, relay_factory) -> None:
    relay = relay_factory("implicit")
    e = make_env(tmp_path, preset_table(relay, password_file(tmp_path), "yandex",
                                        'allowed_senders = ["example.org"]\n'))
    msg = b"From: alice@example.org\nReply-To: desk@example.net\nTo: someone@example.net\nSubject: x\n\nhi\n"
    assert e.sendmail("-i", "-f", "alice@example.org", "someone@example.net", input=msg).returncode == 0

    run_queue(e)

    (got,) = relay.wait_for(1)
    assert got.mail_from == "alice@example.org"
    assert parse(got.data)["From"] == "alice@example.org"
    assert parse(got.data)["Reply-To"] == "desk@example.net"


def test_rewrite_keeps_reply_to_of_the_message_when_from_is_foreign(tmp_path: Path, relay_factory) -> None:
    relay = relay_factory("implicit")
    e = make_env(tmp_path, preset_table(relay, password_file(tmp_path), "gmail"))
    msg = b"From: x@other.example\nReply-To: desk@example.net\nTo: someone@example.net\nSubject: x\n\nhi\n"
    assert e.sendmail("-i", "someone@example.net", input=msg).returncode == 0

    run_queue(e)

    (got,) = relay.wait_for(1)
    assert parse(got.data)["From"] == USER and parse(got.data)["Reply-To"] == "desk@example.net"


def test_without_a_provider_mail_from_is_the_sender_given(tmp_path: Path, relay_factory) -> None:
    relay = relay_factory("implicit")
    e = make_env(tmp_path, relay_table(relay, password_file(tmp_path)))
    submit(e, "someone@example.net", sender="alice@example.org")

    run_queue(e)

    (got,) = relay.wait_for(1)
    assert got.mail_from == "alice@example.org" and parse(got.data)["From"] == "alice@example.org"


def test_rewrite_without_an_address_account_is_refused_naming_from_address(tmp_path: Path, relay_factory) -> None:
    relay = relay_factory("implicit")
    text = preset_table(relay, password_file(tmp_path), "sendgrid", 'from_policy = "rewrite"\n')
    e = make_env(tmp_path, text.replace(f'username = "{USER}"', 'username = "apikey"'))

    proc = e.run("pysendmail", "config", "check")

    assert proc.returncode == 78 and b"from_address" in proc.stderr


# ------------------------------------------------------------------ routes
def two_relays(tmp_path: Path, relay_factory, rules: str, second_extra: str = "") -> tuple[Env, Relay, Relay]:
    first, second = relay_factory("implicit"), relay_factory("implicit")
    pw = password_file(tmp_path)
    text = relay_table(first, pw) + relay_table(second, pw, extra=second_extra).replace("[relay]", "[relay.shop]")
    return make_env(tmp_path, text + rules), first, second


@pytest.mark.parametrize(
    ("rule", "sender", "from_header", "chosen"),
    [
        ('sender = "*@shop.example"', "orders@shop.example", None, "shop"),
        ('sender = "shop.example"', "orders@shop.example", None, "shop"),
        ('sender = "orders@shop.example"', "other@shop.example", None, "default"),
        ('sender = ["@shop.example", "x@y.example"]', "x@y.example", None, "shop"),
        ('from = "news.example.org"', "alice@example.org", "letters@news.example.org", "shop"),
        ('from = "news.example.org"', "alice@example.org", "alice@example.org", "default"),
        ('user = "root"', "alice@example.org", None, "shop"),
        ('user = ["0"]', "alice@example.org", None, "shop"),
        ('user = "www-data"', "alice@example.org", None, "default"),
    ],
)
def test_route_rules_choose_the_account_by_sender_from_or_submitting_user(
    tmp_path: Path, relay_factory, rule: str, sender: str, from_header: str | None, chosen: str
) -> None:
    if os.geteuid() != 0 and "user" in rule:
        pytest.skip("the user rules name root, the submitter here")
    e, default, shop = two_relays(tmp_path, relay_factory, f'[[route]]\n{rule}\nrelay = "shop"\n')
    msg = (f"From: {from_header}\n" if from_header else "").encode() + b"To: someone@example.net\nSubject: r\n\nhi\n"
    assert e.sendmail("-i", "-f", sender, "someone@example.net", input=msg).returncode == 0

    stderr = run_queue(e)

    target, other = (shop, default) if chosen == "shop" else (default, shop)
    assert len(target.wait_for(1)) == 1 and other.messages == []
    assert f"route={chosen}" in stderr


def test_a_rule_without_conditions_is_the_default_route(tmp_path: Path, relay_factory) -> None:
    e, default, shop = two_relays(tmp_path, relay_factory, '[[route]]\nrelay = "shop"\n')
    submit(e, "someone@example.net")

    run_queue(e)

    assert len(shop.wait_for(1)) == 1 and default.messages == []


def test_fallback_route_carries_the_mail_while_the_primary_is_down(tmp_path: Path, relay_factory) -> None:
    backup = relay_factory("implicit")
    pw = password_file(tmp_path)
    dead = relay_table(backup, pw, port=free_port(), extra='fallback = "backup"\n')
    e = make_env(tmp_path, dead + relay_table(backup, pw).replace("[relay]", "[relay.backup]"))
    submit(e, "someone@example.net", subject="one")
    submit(e, "someone@example.net", subject="two")

    stderr = run_queue(e)

    assert sorted(parse(m.data)["Subject"] for m in backup.wait_for(2)) == ["one", "two"]
    assert "trying fallback route backup" in stderr and mailq(e) == []


def test_fallback_is_not_used_for_a_reply_about_the_message(tmp_path: Path, relay_factory) -> None:
    e, default, shop = two_relays(tmp_path, relay_factory, '[[route]]\nrelay = "default"\nfallback = "shop"\n')
    default.rcpt_replies["nobody@example.net"] = "550 5.1.1 No such user"
    submit(e, "nobody@example.net")

    stderr = run_queue(e)

    assert "status=bounced" in stderr and shop.messages == [] and shop.mail_commands == []


def test_one_relay_two_accounts_each_route_logs_in_as_its_own(tmp_path: Path, relay_factory) -> None:
    relay = relay_factory("implicit")
    relay.users["shop@example.org"] = "shop-pass"
    pw, pw2 = password_file(tmp_path), tmp_path / "shop-pass"
    pw2.write_text("shop-pass\n")
    pw2.chmod(0o600)
    shop = relay_table(relay, pw2).replace("[relay]", "[relay.shop]").replace(USER, "shop@example.org")
    e = make_env(tmp_path, relay_table(relay, pw) + shop + '[[route]]\nsender = "shop.example"\nrelay = "shop"\n')
    submit(e, "someone@example.net", sender="orders@shop.example")
    submit(e, "someone@example.net", sender="alice@example.org")

    run_queue(e)

    got = {m.mail_from: m.account for m in relay.wait_for(2)}
    assert got == {"orders@shop.example": "shop@example.org", "alice@example.org": USER}


def test_route_naming_an_unknown_relay_is_a_config_error(tmp_path: Path, relay_factory) -> None:
    relay = relay_factory("implicit")
    e = make_env(tmp_path, relay_table(relay, password_file(tmp_path)))
    e.config.write_text(e.config.read_text() + '[[route]]\nsender = "x.example"\nrelay = "nope"\n')

    proc = e.run("pysendmail", "config", "check")

    assert proc.returncode == 78 and b"relay.nope" in proc.stderr


# ------------------------------------------------------------------ secrets
def inline_env(tmp_path: Path, relay: Relay) -> Env:
    """A config holding the password inline, 0600 from the start (loading fails otherwise)."""
    text = relay_table(relay, password_file(tmp_path)).replace(f'password_file = "{tmp_path}/relay-password"',
                                                               f'password = "{PASSWORD}"')
    e = write_config(tmp_path, text)
    e.config.chmod(0o600)
    e.run("pysendmail", "spool", "init", check=True)
    return e


def test_inline_password_in_a_config_others_can_read_is_refused_with_the_chmod(tmp_path: Path, relay_factory) -> None:
    e = inline_env(tmp_path, relay_factory("implicit"))
    e.config.chmod(0o644)

    proc = e.run("pysendmail", "config", "check")

    err = proc.stderr.decode()
    assert proc.returncode == 78 and f"chmod o-rwx {e.config}" in err and PASSWORD not in err


def test_inline_password_in_a_private_config_is_used(tmp_path: Path, relay_factory) -> None:
    relay = relay_factory("implicit")
    e = inline_env(tmp_path, relay)
    submit(e, "someone@example.net")

    stderr = run_queue(e)

    assert len(relay.wait_for(1)) == 1 and PASSWORD not in stderr


def test_group_readable_password_file_is_refused_naming_the_file_and_the_chmod(tmp_path: Path, relay_factory) -> None:
    relay = relay_factory("implicit")
    pw = password_file(tmp_path, mode=0o640)
    e = make_env(tmp_path, relay_table(relay, pw))
    submit(e, "someone@example.net")

    stderr = run_queue(e)

    assert f"chmod g-rwx {pw}" in stderr and relay.logins == 0 and PASSWORD not in stderr


def test_password_command_first_line_is_the_password(tmp_path: Path, relay_factory) -> None:
    relay = relay_factory("implicit")
    cmd = json.dumps(["/bin/sh", "-c", f"printf '%s\\nsecond line\\n' '{PASSWORD}'"])
    text = relay_table(relay, password_file(tmp_path)).replace(
        f'password_file = "{tmp_path}/relay-password"', f"password_command = {cmd}")
    e = make_env(tmp_path, text)
    submit(e, "someone@example.net")

    run_queue(e)

    assert len(relay.wait_for(1)) == 1 and relay.logins == 1


def test_systemd_credential_of_a_named_relay_is_found_in_credentials_directory(tmp_path: Path, relay_factory) -> None:
    relay = relay_factory("implicit")
    creds = tmp_path / "creds"
    creds.mkdir(mode=0o700)
    (creds / "relay-shop-password").write_text(PASSWORD + "\n")
    (creds / "relay-shop-password").chmod(0o400)
    text = relay_table(relay, password_file(tmp_path)).replace(f'password_file = "{tmp_path}/relay-password"\n', "")
    e = make_env(tmp_path, text.replace("[relay]", "[relay.shop]"))
    e.extra_env["CREDENTIALS_DIRECTORY"] = str(creds)
    submit(e, "someone@example.net")

    run_queue(e)

    assert len(relay.wait_for(1)) == 1


def test_daily_budget_holds_across_separate_queue_runs(tmp_path: Path, relay_factory) -> None:
    """Regression: each ``sendmail -q`` (cron's way, no daemon) started the
    provider's day with a full budget, so a small limit never held."""
    relay = relay_factory("implicit")
    e = make_env(tmp_path, relay_table(relay, password_file(tmp_path), extra="rate_per_day = 2"))
    qids = [submit(e, f"r{n}@example.net", subject=f"budget {n}") for n in range(3)]

    run_queue(e)
    run_queue(e)  # a second run, a new process: the day's two are spent

    assert len(relay.messages) == 2
    (waiting,) = mailq(e)
    assert waiting["queue_id"] in qids
    assert "sending budget" in str(waiting["reason"]) and "rate_per_day" in str(waiting["reason"])
    times = routes_state(e)["default"]["sent_times"]
    assert isinstance(times, dict) and len(times["day"]) == 2


@pytest.mark.parametrize("unit, delivered", [("messages", 2), ("recipients", 1)])
def test_daily_budget_counts_recipients_where_the_provider_does(tmp_path: Path, relay_factory, unit: str,
                                                                 delivered: int) -> None:
    relay = relay_factory("implicit")
    e = make_env(tmp_path, relay_table(relay, password_file(tmp_path),
                                       extra=f'rate_per_day = 3\nrate_unit = "{unit}"'))
    submit(e, "a1@example.net", "a2@example.net", subject="first")
    submit(e, "b1@example.net", "b2@example.net", subject="second")

    run_queue(e)

    assert len(relay.messages) == delivered
    if unit == "recipients":
        # Two of three spent: the second message's two recipients do not fit.
        (waiting,) = mailq(e)
        assert "sending budget" in str(waiting["reason"])

