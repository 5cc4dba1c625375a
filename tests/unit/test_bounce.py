"""Where a bounce goes: the sender, its alias, or the postmaster (daemon/bounce.py)."""

from __future__ import annotations

import pwd

import pytest

from pysendmail.core.aliases import Aliases
from pysendmail.daemon.bounce import bounce_recipients
from pysendmail.daemon.cleanup import Context

NOBODY_HERE = "zz-no-such-account"


def ctx(table: dict[str, list[str]] | None = None) -> Context:
    return Context("host.example.org", Aliases(table or {}, "example.org", ("host.example.org",)))


def test_no_local_user_named_like_the_test_person() -> None:
    with pytest.raises(KeyError):
        pwd.getpwnam(NOBODY_HERE)


def test_bounce_for_local_account_follows_its_alias() -> None:
    c = ctx({"root": ["admin@example.net"]})
    assert bounce_recipients("root@host.example.org", c, "pm@example.net") == ["admin@example.net"]


def test_bounce_for_local_account_without_alias_goes_to_postmaster() -> None:
    assert bounce_recipients("root@example.org", ctx(), "pm@example.net") == ["pm@example.net"]


def test_bounce_for_person_at_default_domain_goes_to_that_person() -> None:
    sender = f"{NOBODY_HERE}@example.org"
    assert bounce_recipients(sender, ctx(), "pm@example.net") == [sender]


def test_bounce_for_local_account_without_alias_or_postmaster_goes_to_sender() -> None:
    assert bounce_recipients("root@localhost", ctx(), None) == ["root@localhost"]


def test_bounce_for_remote_sender_ignores_aliases() -> None:
    c = ctx({"root": ["admin@example.net"]})
    assert bounce_recipients("root@elsewhere.example", c, "pm@example.net") == ["root@elsewhere.example"]


def test_null_sender_gets_no_bounce() -> None:
    assert bounce_recipients("", ctx(), "pm@example.net") == []


# ------------------------------------------------------------ local senders with a relay (issue 11)
def relay_ctx(table: dict[str, list[str]] | None = None) -> Context:
    aliases = Aliases(table or {}, "host.example.org", ("host.example.org", "vm"), local_delivery=False)
    return Context("host.example.org", aliases)


def test_bounce_for_local_sender_goes_nowhere_when_nothing_aliases_it_and_a_relay_is_configured() -> None:
    # Never relayed as root@localhost: no bounce, the copy stays in failed/.
    for sender in ("root@localhost", "root@vm", "root@host.example.org", "www-data@host.example.org"):
        assert bounce_recipients(sender, relay_ctx(), None) == []


def test_bounce_for_unaliased_local_sender_goes_to_the_root_alias_when_no_postmaster_is_set() -> None:
    c = relay_ctx({"root": ["admin@example.net"]})
    assert bounce_recipients("www-data@vm", c, None) == ["admin@example.net"]


def test_bounce_for_unaliased_local_sender_goes_to_the_postmaster_first_when_set() -> None:
    c = relay_ctx({"root": ["admin@example.net"]})
    assert bounce_recipients("www-data@localhost", c, "pm@example.net") == ["pm@example.net"]


def test_bounce_to_a_local_postmaster_goes_where_its_alias_says() -> None:
    c = relay_ctx({"postmaster": ["root"], "root": ["admin@example.net"]})
    assert bounce_recipients("www-data@localhost", c, "postmaster") == ["admin@example.net"]
