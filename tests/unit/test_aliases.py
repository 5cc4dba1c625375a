"""Local aliases (pysendmail.core.aliases): aliases(5) parsing, expansion, loops.

pysendmail reads the host's /etc/aliases as Postfix's local(8) would, but
only relays: pipes, files and :include: are refused with the reason, and
the error names the file and line so that newaliases points at the fix.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pysendmail.core.aliases import MAX_DEPTH, AliasError, Aliases, LocalDomains, load, parse, parse_targets, toml_key_line


# ------------------------------------------------------------ parsing
def test_parse_reads_names_and_targets_when_the_file_has_comments_and_blank_lines() -> None:
    text = "# /etc/aliases\n\nmailer-daemon: postmaster\n   # an indented comment\npostmaster: root\nroot: admin@example.org\n"
    assert parse(text, "/etc/aliases") == {
        "mailer-daemon": ["postmaster"],
        "postmaster": ["root"],
        "root": ["admin@example.org"],
    }


def test_parse_joins_continuation_lines_when_indented_by_space_or_tab() -> None:
    text = "staff: a@example.org,\n  b@example.org,\n\tc@example.org\nother: d@example.org\n"
    assert parse(text, "f") == {"staff": ["a@example.org", "b@example.org", "c@example.org"], "other": ["d@example.org"]}


def test_parse_skips_a_comment_between_continuation_lines_when_present() -> None:
    text = "staff: a@example.org,\n# not part of it\n  b@example.org\n"
    assert parse(text, "f") == {"staff": ["a@example.org", "b@example.org"]}


def test_parse_lowercases_names_when_written_in_capitals() -> None:
    assert parse("WebMaster: w@example.org\n", "f") == {"webmaster": ["w@example.org"]}


def test_parse_reads_a_quoted_name_when_it_is_a_plain_word() -> None:
    assert parse('"root": admin@example.org\n', "f") == {"root": ["admin@example.org"]}


def test_parse_reads_a_quoted_name_when_it_holds_spaces_or_a_colon() -> None:
    # Postfix aliases(5): quote a name holding whitespace, '#', ':' or '@'.
    text = '"foo bar": fb@example.org\n"a:b" : ab@example.org\n'
    assert parse(text, "f") == {"foo bar": ["fb@example.org"], "a:b": ["ab@example.org"]}


def test_parse_keeps_a_quoted_target_whole_when_it_holds_a_comma() -> None:
    assert parse('x: "a,b"@example.org, c@example.org\n', "f") == {"x": ['"a,b"@example.org', "c@example.org"]}


def test_parse_accepts_display_names_and_comments_when_targets_use_them() -> None:
    assert parse("x: Admin <admin@example.org>, ops@example.org (night shift)\n", "f") == {
        "x": ["admin@example.org", "ops@example.org"]
    }


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("root: a@example.org\nroot: b@example.org\n", 2),
        ("root: a@example.org\n\n# c\nROOT: b@example.org\n", 4),
        ('root: a@example.org\n"root": b@example.org\n', 2),
    ],
)
def test_parse_raises_naming_file_and_line_when_a_name_is_defined_twice(text: str, line: int) -> None:
    with pytest.raises(AliasError, match=f"/etc/aliases:{line}: alias 'root' is defined twice"):
        parse(text, "/etc/aliases")


@pytest.mark.parametrize(
    ("target", "why"),
    [
        ("|/usr/bin/procmail", "is a pipe to a command"),
        ('"|/usr/bin/procmail -a x"', "is a pipe to a command"),
        ("/var/mail/archive", "is a file"),
        (":include:/etc/mail/staff", "is an :include: list"),
        (":INCLUDE:/etc/mail/staff", "is an :include: list"),
    ],
)
def test_parse_refuses_with_the_explanation_when_a_target_is_a_pipe_file_or_include(target: str, why: str) -> None:
    with pytest.raises(AliasError) as info:
        parse(f"ok: a@example.org\nbad: b@example.org, {target}\n", "/etc/aliases")
    text = str(info.value)
    assert text.startswith("/etc/aliases:2: ")
    assert why in text
    assert "pysendmail only relays mail, so aliases may only name addresses" in text


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("  indented: a@example.org\n", ":1: a continuation line with nothing to continue"),
        ("no colon here\n", ":1: expected 'name: address, ...'"),
        ("ok: a@example.org\ntwo words: a@example.org\n", ":2: expected 'name: address, ...'"),
        ("x@example.org: a@example.org\n", ":1: expected 'name: address, ...'"),
        (": a@example.org\n", ":1: expected 'name: address, ...'"),
        ('"unterminated: a@example.org\n', ":1: expected 'name: address, ...'"),
        ("empty:\n", ":1: the alias has no target address"),
        ("empty: , ,\n", ":1: the alias has no target address"),
        ("x: John Smith\n", ":1: 'John Smith' is not an address"),
        ("x: a..b@example.org\n", ":1: 'a..b@example.org' is not an address"),
    ],
)
def test_parse_raises_naming_file_and_line_when_a_line_is_malformed(text: str, fragment: str) -> None:
    with pytest.raises(AliasError, match="^/etc/aliases:") as info:
        parse(text, "/etc/aliases")
    assert fragment in str(info.value)


def test_parse_reports_the_first_line_of_an_entry_when_its_continuation_is_bad() -> None:
    with pytest.raises(AliasError, match="f:2: 'John Smith' is not an address"):
        parse("a: b@example.org\nstaff: x@example.org,\n  John Smith\n", "f")


def test_parse_targets_names_where_when_the_config_table_is_bad() -> None:
    with pytest.raises(AliasError, match=r"^cfg \[aliases\] x: '\|cmd' is a pipe"):
        parse_targets("|cmd", "cfg [aliases] x")


# ------------------------------------------------------------ load
def test_load_merges_file_and_config_when_both_define_names(tmp_path: Path) -> None:
    path = tmp_path / "aliases"
    path.write_text("root: file-admin@example.org\npostmaster: root\n")
    merged = load(str(path), {"Root": ["cfg-admin@example.org"], "ops": ["a@example.org", "b@example.org"]}, "cfg")
    assert merged == {
        "root": ["cfg-admin@example.org"],  # the config wins
        "postmaster": ["root"],
        "ops": ["a@example.org", "b@example.org"],
    }


def test_load_uses_the_config_alone_when_the_file_is_missing(tmp_path: Path) -> None:
    assert load(str(tmp_path / "absent"), {"root": ["a@example.org"]}, "cfg") == {"root": ["a@example.org"]}


def test_load_raises_naming_the_file_when_it_cannot_be_read(tmp_path: Path) -> None:
    with pytest.raises(AliasError, match=f"cannot read {tmp_path}"):
        load(str(tmp_path), {}, "cfg")  # a directory


def test_load_raises_naming_the_config_when_a_config_target_is_a_pipe(tmp_path: Path) -> None:
    with pytest.raises(AliasError, match=r"/etc/pysendmail.toml \[aliases\] root: '\|/bin/sh' is a pipe"):
        load(str(tmp_path / "absent"), {"root": ["|/bin/sh"]}, "/etc/pysendmail.toml")


# ------------------------------------------------------------ expansion
def table(**entries: list[str]) -> Aliases:
    return Aliases({k.replace("_", "-"): v for k, v in entries.items()}, "example.org", ("host.example.org",))


def test_expand_follows_chains_when_aliases_name_aliases() -> None:
    a = table(mailer_daemon=["postmaster"], postmaster=["root"], root=["admin@example.net"])
    assert a.expand("mailer-daemon") == ["admin@example.net"]


def test_expand_delivers_to_the_name_itself_when_an_alias_references_itself() -> None:
    # "root: root, admin@x": root keeps a copy (sendmail's rule), qualified.
    a = table(root=["root", "admin@example.net"])
    assert a.expand("root") == ["root@example.org", "admin@example.net"]


def test_expand_ends_and_delivers_to_the_looping_name_when_aliases_loop() -> None:
    a = table(a=["b"], b=["c"], c=["a"])
    assert a.expand("a") == ["a@example.org"]
    assert a.expand("b") == ["b@example.org"]


def test_expand_stops_at_max_depth_when_a_chain_is_very_long() -> None:
    n = MAX_DEPTH + 10
    a = Aliases({f"n{i}": [f"n{i + 1}"] for i in range(n)}, "example.org")
    assert a.expand("n0") == [f"n{MAX_DEPTH}@example.org"]


def test_expand_qualifies_with_the_default_domain_when_a_name_is_not_an_alias() -> None:
    assert table().expand("www-data") == ["www-data@example.org"]


def test_expand_qualifies_targets_when_they_are_bare_names() -> None:
    assert table(ops=["alice", "bob@example.net"]).expand("ops") == ["alice@example.org", "bob@example.net"]


@pytest.mark.parametrize("addr", ["root@localhost", "root@host.example.org", "ROOT@HOST.EXAMPLE.ORG", "Root"])
def test_expand_resolves_the_alias_when_the_domain_is_local_or_absent(addr: str) -> None:
    assert table(root=["admin@example.net"]).expand(addr) == ["admin@example.net"]


def test_expand_leaves_the_address_alone_when_the_domain_is_not_local() -> None:
    assert table(root=["admin@example.net"]).expand("root@elsewhere.test") == ["root@elsewhere.test"]


def test_expand_removes_duplicates_ignoring_case_when_chains_meet() -> None:
    a = table(all=["ops", "dev", "Boss@example.net"], ops=["boss@example.net", "carol"], dev=["carol", "dave"])
    assert a.expand("all") == ["boss@example.net", "carol@example.org", "dave@example.org"]


def test_expand_resolves_a_quoted_local_part_when_the_alias_name_has_a_space() -> None:
    a = Aliases(parse('"foo bar": fb@example.net\n', "f"), "example.org")
    assert a.expand('"foo bar"@localhost') == ["fb@example.net"]
    assert a.expand('"foo bar"') == ["fb@example.net"]
    assert a.expand('"foo bar"@elsewhere.test') == ['"foo bar"@elsewhere.test']


def test_expand_keeps_a_quoted_bare_name_when_it_is_not_an_alias() -> None:
    assert table().expand('"a b"') == ['"a b"@example.org']


# ------------------------------------------------------------ loops()
def test_loops_reports_each_cycle_once_when_aliases_loop() -> None:
    a = table(a=["b"], b=["a"], c=["d"], d=["e"], e=["c"], ok=["x@example.net"])
    assert sorted(sorted(set(cycle)) for cycle in a.loops()) == [["a", "b"], ["c", "d", "e"]]
    for cycle in a.loops():
        assert cycle[0] == cycle[-1]


def test_loops_reports_nothing_when_an_alias_only_references_itself() -> None:
    assert table(root=["root", "admin@example.net"], postmaster=["root"]).loops() == []


def test_loops_reports_nothing_when_chains_end() -> None:
    assert table(mailer_daemon=["postmaster"], postmaster=["root"], root=["a@example.net"]).loops() == []


def test_loops_follows_local_domains_when_targets_are_qualified() -> None:
    a = table(a=["b@localhost"], b=["a@host.example.org"])
    assert [sorted(set(c)) for c in a.loops()] == [["a", "b"]]


# ------------------------------------------------------------ local names (issue 11, part 2)
HOST = ("host.example.org", "vm")  # the FQDN and the short name, as Config.local_domains gives them


def relay_mode(table: dict[str, list[str]] | None = None, local: tuple[str, ...] = HOST,
               default: str = "host.example.org") -> Aliases:
    """The resolver as the daemon builds it with a relay: nothing is delivered on this host."""
    return Aliases(table or {}, default, local, local_delivery=False, where="/etc/pysendmail/pysendmail.toml")


@pytest.mark.parametrize(
    "domain",
    ["localhost", "LOCALHOST", "localhost.", "localhost.localdomain", "vm", "VM.", "host.example.org",
     "Host.Example.Org.", "foo.localhost", "[127.0.0.1]", "[127.0.0.53]", "[IPv6:::1]", "[ipv6:::ffff:127.0.0.1]"],
)
def test_local_domains_include_localhost_the_host_names_and_loopback_literals_when_written_any_way(domain: str) -> None:
    assert domain in LocalDomains(HOST)


@pytest.mark.parametrize(
    "domain",
    ["example.org", "vm.example.org", "localhost.example.org", "[10.0.0.1]", "[IPv6:2001:db8::1]", "[x]", "", "mv"],
)
def test_local_domains_exclude_other_hosts_when_they_only_look_alike(domain: str) -> None:
    assert domain not in LocalDomains(HOST)


def test_local_domains_match_u_label_and_a_label_when_one_is_configured_as_the_other() -> None:
    assert "xn--bcher-kva.example" in LocalDomains(["Bücher.example"])
    assert "BÜCHER.example." in LocalDomains(["xn--bcher-kva.example"])


@pytest.mark.parametrize("addr", ["root@localhost", "root@vm", "ROOT@VM.", "root@host.example.org", "root@[127.0.0.1]",
                                  "root@[IPv6:::1]", "root"])
def test_resolve_sends_root_to_its_alias_when_the_address_is_local(addr: str) -> None:
    assert relay_mode({"root": ["admin@example.net"]}).resolve(addr) == (["admin@example.net"], [])


@pytest.mark.parametrize("addr", ["www-data@localhost", "nobody@vm", "fail2ban@[127.0.0.1]", "www-data", '"a b"@localhost'])
def test_resolve_sends_an_unaliased_local_name_to_the_root_alias_when_root_has_one(addr: str) -> None:
    assert relay_mode({"root": ["admin@example.net"]}).resolve(addr) == (["admin@example.net"], [])


def test_resolve_follows_the_name_own_alias_before_the_catch_all_when_both_exist() -> None:
    a = relay_mode({"root": ["admin@example.net"], "www-data": ["web@example.net"]})
    assert a.resolve("www-data@localhost") == (["web@example.net"], [])


@pytest.mark.parametrize("addr", ["root@localhost", "root@vm", "root"])
def test_resolve_refuses_with_the_hint_when_root_has_no_alias_and_a_relay_is_configured(addr: str) -> None:
    found, refused = relay_mode().resolve(addr)
    assert found == []
    [(where, why)] = refused
    assert where == (addr if "@" in addr else "root@host.example.org")
    assert why.startswith("5.1.1 root has no alias")
    assert 'set [aliases] root = "you@example.org" in /etc/pysendmail/pysendmail.toml' in why


def test_resolve_refuses_naming_the_user_when_nothing_catches_an_unaliased_local_name() -> None:
    found, refused = relay_mode().resolve("nobody@localhost")
    assert found == []
    assert refused == [("nobody@localhost", "5.1.1 no such local user 'nobody' and no root alias: "
                                            'set [aliases] root = "you@example.org" in /etc/pysendmail/pysendmail.toml')]


def test_resolve_refuses_when_the_root_alias_leads_back_to_an_unaliased_local_name() -> None:
    found, refused = relay_mode({"root": ["ops@localhost"]}).resolve("root@localhost")
    assert found == []
    [(where, why)] = refused
    assert where == "ops@localhost" and "reached through the root alias" in why


def test_resolve_refuses_the_self_copy_but_keeps_the_rest_when_root_names_itself_with_a_relay() -> None:
    found, refused = relay_mode({"root": ["root", "admin@example.net"]}).resolve("root@vm")
    assert found == ["admin@example.net"]
    [(where, why)] = refused
    assert where == "root@host.example.org" and why.startswith("5.4.6 alias root names itself")


def test_resolve_refuses_the_loop_end_when_local_aliases_loop_with_a_relay() -> None:
    found, refused = relay_mode({"a": ["b@localhost"], "b": ["a@vm"]}).resolve("a")
    assert found == []
    [(where, why)] = refused
    assert where == "a@vm" and "alias loop (a -> b -> a)" in why


def test_resolve_delivers_locally_as_written_when_nothing_aliases_it_in_maildir_mode() -> None:
    a = Aliases({}, "host.example.org", HOST, local_delivery=True)
    assert a.resolve("root@localhost") == (["root@localhost"], [])
    assert a.resolve("nobody@vm") == (["nobody@vm"], [])
    assert a.resolve("root") == (["root@host.example.org"], [])


def test_resolve_uses_the_root_alias_as_catch_all_in_maildir_mode_too() -> None:
    a = Aliases({"root": ["admin@example.net"]}, "host.example.org", HOST, local_delivery=True)
    assert a.resolve("nobody@localhost") == (["admin@example.net"], [])


def test_resolve_relays_a_bare_name_at_a_default_domain_that_is_not_local() -> None:
    # host.default_domain = "example.org": www-data's mailbox is www-data@example.org, as before.
    a = relay_mode(default="example.org")
    assert a.resolve("www-data") == (["www-data@example.org"], [])
    assert a.resolve("alice@example.org") == (["alice@example.org"], [])


def test_resolve_treats_configured_local_domains_as_local_when_listed() -> None:
    a = relay_mode({"root": ["admin@example.net"], "ops": ["ops@example.net"]}, local=HOST + ("example.internal",))
    assert a.resolve("ops@EXAMPLE.INTERNAL.") == (["ops@example.net"], [])
    assert a.resolve("backup@example.internal") == (["admin@example.net"], [])
    assert a.resolve("ops@example.net") == (["ops@example.net"], [])


def test_resolve_resolves_alias_targets_that_are_local_addresses() -> None:
    a = relay_mode({"postmaster": ["root@localhost"], "root": ["admin@example.net"]})
    assert a.resolve("postmaster@vm") == (["admin@example.net"], [])


def test_resolve_never_returns_a_local_address_when_a_relay_is_configured() -> None:
    # Every shape of local address, every table: what resolve returns to
    # deliver is never local (it would reach the relay as it is).
    tables: list[dict[str, list[str]]] = [
        {}, {"root": ["admin@example.net"]}, {"root": ["root"]}, {"root": ["ops"]}, {"a": ["b"], "b": ["a"]},
        {"root": ["root@localhost", "x@vm"], "x": ["root"]},
    ]
    addrs = ["root", "root@localhost", "root@vm", "a", "b@vm", "x@[127.0.0.1]", "ops@host.example.org", "z@foo.localhost"]
    for table in tables:
        a = relay_mode(table)
        for addr in addrs:
            found, refused = a.resolve(addr)
            assert not [f for f in found if a.is_local(f)], (table, addr, found)
            assert found or refused, (table, addr)


@pytest.mark.parametrize(
    ("sender", "expected"),
    [
        ("root", "root@host.example.org"),
        ("root@vm", "root@host.example.org"),
        ("root@VM.", "root@host.example.org"),
        ("root@localhost", "root@host.example.org"),
        ("root@localhost.localdomain", "root@host.example.org"),
        ("root@[127.0.0.1]", "root@host.example.org"),
        ("root@host.example.org", "root@host.example.org"),
        ("alice@example.org", "alice@example.org"),
        ("bob@other", "bob@other"),
        ("", ""),
    ],
)
def test_qualify_sender_gives_the_default_domain_when_the_sender_is_bare_or_at_an_unqualified_host_name(
    sender: str, expected: str
) -> None:
    assert relay_mode().qualify_sender(sender) == expected


def test_qualify_sender_keeps_a_fully_qualified_local_domain_when_configured() -> None:
    a = relay_mode(local=HOST + ("example.internal",))
    assert a.qualify_sender("cron@example.internal") == "cron@example.internal"


# ------------------------------------------------------------ TOML positions (newaliases FILE:LINE)
@pytest.mark.parametrize(
    ("text", "line"),
    [
        ('[spool]\npath = "/x"\n\n[aliases]\nroot = "a@x"\nspam = "|cmd"\n', 6),
        ('[aliases]\n  "spam" = "|cmd"\n', 2),
        ("[aliases]\n'spam' = '|cmd'\n", 2),
        ('[ aliases ] # comment\nspam="|cmd"\n', 2),
        ('aliases.spam = "|cmd"\n', 1),
        ('[aliases.spam]\nx = 1\n', 1),
        ('[aliases]\nSpam = "|cmd"\n', 2),
        # Look-alikes inside values must not count: a multi-line string,
        # a multi-line array of another table, a key of another table.
        ('[relay]\nhelo = """\n[aliases]\nspam = "no"\n"""\n[aliases]\nspam = "|cmd"\n', 7),
        ("[relay]\nhelo = '''\n[aliases]\nspam = 1\n'''\n[aliases]\nspam = 2\n", 7),
        ('[relay]\npassword_command = [\n  "[aliases]",\n  "spam = 1",\n]\n[aliases]\nspam = "|x"\n', 7),
        ('[relay]\nspam = "x"\n[aliases]\nroot = "a@x"\nspam = ["a@x",\n  "|cmd"]\n', 5),
        ('[aliases]\nroot = "a # b" # spam = 1\nspam = "|cmd"\n', 3),
        ('[aliases]\n"sp\\u0061m" = "|cmd"\n', 2),
        ('[[route]]\nrelay = "x"\n[aliases]\nspam = "|cmd"\n', 4),
    ],
)
def test_toml_key_line_finds_the_key_of_the_table_when_written_any_toml_way(text: str, line: int) -> None:
    import tomllib

    tomllib.loads(text)  # each case is valid TOML
    assert toml_key_line(text, "aliases", "spam") == line


def test_toml_key_line_prefers_the_key_as_written_when_two_differ_only_in_case() -> None:
    text = '[aliases]\nroot = "a@x"\nRoot = "b@x"\n'
    assert toml_key_line(text, "aliases", "Root") == 3
    assert toml_key_line(text, "aliases", "root") == 2
    assert toml_key_line(text, "aliases", "ROOT") == 2


def test_toml_key_line_is_none_when_the_key_is_absent() -> None:
    assert toml_key_line('[relay]\nspam = "x"\n[aliases]\nroot = "a@x"\n', "aliases", "spam") is None


def test_load_names_toml_file_and_line_when_a_config_alias_is_a_pipe(tmp_path: Path) -> None:
    cfg = tmp_path / "pysendmail.toml"
    cfg.write_text('[spool]\npath = "/x"\n\n[aliases]\nroot = "a@example.org"\nspam = ["b@example.org", "|/bin/sh"]\n')
    with pytest.raises(AliasError) as info:
        load(str(tmp_path / "absent"), {"root": ["a@example.org"], "spam": ["b@example.org", "|/bin/sh"]}, str(cfg))
    assert str(info.value).startswith(f"{cfg}:6: [aliases] spam: '|/bin/sh' is a pipe to a command")


def test_load_refuses_naming_the_line_when_a_config_alias_is_an_empty_list(tmp_path: Path) -> None:
    cfg = tmp_path / "pysendmail.toml"
    cfg.write_text("[aliases]\n\nroot = []\n")
    with pytest.raises(AliasError, match=f"^{cfg}:3: \\[aliases\\] root: the alias has no target address"):
        load(str(tmp_path / "absent"), {"root": []}, str(cfg))


def test_qualify_sender_uses_host_default_domain_when_it_is_set() -> None:
    # host.default_domain = "example.org": root@vm leaves as root does, root@example.org.
    a = relay_mode(default="example.org")
    assert a.qualify_sender("root@vm") == "root@example.org"
    assert a.qualify_sender("root") == "root@example.org"
