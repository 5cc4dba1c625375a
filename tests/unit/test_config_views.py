"""The typed, read-only views of the configuration's sections (core/config.py "typed views")."""

from __future__ import annotations

import pytest

from pysendmail.core import config


def built(extra: dict[str, object] | None = None) -> config.Config:
    data: dict[str, object] = {
        "spool": {"path": "/var/tmp/spool-view", "unready_lifetime": 120, "quarantine_max_entries": 5},
        "host": {"name": "mx.example.org", "local_domains": ["example.internal"]},
        "queue": {"retry_schedule": ["1m", "1h"], "postmaster": "pm@example.org"},
        "submit": {"smtp_timeout": 30},
        "dkim": [{"domain": "example.org", "selector": "s1", "key_file": "/k", "headers": ["From", "To"]}],
    }
    data.update(extra or {})
    return config.build(data, "/etc/test.toml", "test")


def test_views_hold_the_given_values_with_their_types_and_the_defaults_for_the_rest() -> None:
    cfg = built()
    assert cfg.spool.path == "/var/tmp/spool-view" and cfg.spool.unready_lifetime == 120
    assert cfg.spool.quarantine_max_entries == 5 and cfg.spool.quarantine_lifetime == 30 * 86400
    assert cfg.spool.user is None and cfg.spool.deliver_without_daemon is True
    assert cfg.host.name == "mx.example.org" and cfg.host.local_domains == ("example.internal",)
    assert cfg.host.aliases_file == "/etc/aliases" and cfg.host.default_domain is None
    assert cfg.queue.retry_schedule == ("1m", "1h") and cfg.queue.lifetime == 5 * 86400
    assert cfg.submit.smtp_timeout == 30 and cfg.submit.smtp_session_limit == 3600
    assert cfg.maildir.path == "/var/tmp/spool-view/maildir"
    (key,) = cfg.dkim_keys
    assert (key.domain, key.selector, key.key_file, key.algorithm, key.headers, key.subdomains) == (
        "example.org", "s1", "/k", "rsa-sha256", ("From", "To"), False)


def test_views_agree_with_the_raw_tables_they_are_built_from() -> None:
    cfg = built()
    for section, view in (("spool", cfg.spool), ("host", cfg.host), ("maildir", cfg.maildir),
                          ("submit", cfg.submit), ("queue", cfg.queue)):
        for name in view.__slots__:
            raw = cfg.get(section, name)
            value = getattr(view, name)
            assert value == (tuple(raw) if isinstance(raw, list) else raw) or (raw is None and value == ()), (
                section, name)


@pytest.mark.parametrize("view", ["spool", "host", "maildir", "submit", "queue"])
def test_view_refuses_assignment_and_deletion_when_built(view: str) -> None:
    section = getattr(built(), view)
    name = section.__slots__[0]
    with pytest.raises(AttributeError, match="read-only"):
        setattr(section, name, "changed")
    with pytest.raises(AttributeError, match="read-only"):
        delattr(section, name)


def test_dkim_view_takes_the_schema_defaults_when_built_from_a_partial_table() -> None:
    key = config.dkim_view({"domain": "example.net", "selector": "s", "key_file": "/k2"})
    assert (key.algorithm, key.headers, key.subdomains) == ("rsa-sha256", None, False)
    assert key == config.dkim_view({"domain": "example.net", "selector": "s", "key_file": "/k2"})
