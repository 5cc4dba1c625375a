"""Local aliases (pysendmail.core.aliases): aliases(5) parsing, expansion, loops.

pysendmail reads the host's /etc/aliases as Postfix's local(8) would, but
only relays: pipes, files and :include: are refused with the reason, and
the error names the file and line so that newaliases points at the fix.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pysendmail.core.aliases import MAX_DEPTH, AliasError, Aliases, load, parse, parse_targets, toml_key_line


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

