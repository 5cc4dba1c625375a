"""The man pages are valid mdoc and say everything the code knows.

* ``mandoc -T lint`` reports nothing on sendmail(8), pysendmail(8) and
  pysendmail.toml(5), except "referenced manual not found" for a page this
  project itself ships (mandoc looks cross-references up in the system's
  manual database, where ours are not before the package is installed;
  tests/package checks that the .deb installs every one of them).
* Every key of config.SCHEMA, config.DKIM_SCHEMA and config.ROUTE_SCHEMA
  is documented in pysendmail.toml(5), under its own section's heading,
  and the named relays ([relay.NAME]) have a heading of their own.
* Every provider preset is an item of pysendmail.toml(5) PROVIDERS that
  names its host and port.
* Every subcommand of the ``pysendmail`` argparse parser, every choice of
  its positional action and every option is documented in pysendmail(8).
* Every sendmail flag of the flag table and every exit code sendmail uses
  is documented in sendmail(8).

Keys, commands and flags that other branches add fail these tests until
their pages say what they do: that is the point.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from pysendmail.admin import cli
from pysendmail.core import config, errors
from pysendmail.daemon import providers
from pysendmail.submit import flags

ROOT = Path(__file__).resolve().parents[2]
MAN = ROOT / "man"
PAGES = ["sendmail.8", "pysendmail.8", "pysendmail.toml.5"]
# Pages the package installs (pysendmail.links adds mailq and newaliases).
OURS = {"sendmail(8)", "mailq(8)", "newaliases(8)", "pysendmail(8)", "pysendmail.toml(5)"}


def mandoc() -> str:
    path = shutil.which("mandoc")
    if path is None:
        pytest.fail("mandoc is not installed: apt-get install mandoc (the README's test command does)")
    return path


@pytest.mark.parametrize("page", PAGES)
def test_man_page_is_lint_clean(page: str) -> None:
    proc = subprocess.run([mandoc(), "-T", "lint", str(MAN / page)], capture_output=True, text=True, timeout=60)
    problems = []
    for line in (proc.stdout + proc.stderr).splitlines():
        if "outdated mandoc.db" in line:
            continue  # the host's database, not our page
        found = re.search(r"referenced manual not found: Xr (\S+) (\d)", line)
        if found and f"{found.group(1)}({found.group(2)})" in OURS:
            continue
        problems.append(line)
    assert problems == [], "\n".join(problems)


def test_lint_filter_would_see_a_real_problem(tmp_path: Path) -> None:
    # The filter above must not hide real messages: a page with a bad
    # macro makes mandoc speak, and that line is not one we skip.
    bad = tmp_path / "bad.8"
    bad.write_text(".Dd December 1, 2026\n.Dt BAD 8\n.Os\n.Sh NAME\n.Nm bad\n.Nd x\n.Sh DESCRIPTION\n.Xx nonsense\n")
    proc = subprocess.run([mandoc(), "-T", "lint", str(bad)], capture_output=True, text=True, timeout=60)
    assert "Xx" in proc.stdout + proc.stderr


# ---------------------------------------------------------------- pysendmail.toml(5)
def subsections(page: str) -> dict[str, str]:
    """Text of each ``.Ss`` of the page, keyed by its first word ("[relay]", "[[dkim]]")."""
    out: dict[str, str] = {}
    name = None
    for line in (MAN / page).read_text().splitlines():
        if line.startswith((".Ss ", ".Sh ")):
            name = line.split()[1] if line.startswith(".Ss ") else None
            if name is not None:
                out[name] = ""
        elif name is not None:
            out[name] += line + "\n"
    return out


def documented_keys(text: str) -> set[str]:
    return {m.group(1) for m in re.finditer(r"^\.It Cm (\S+)", text, re.M)}


@pytest.mark.parametrize(
    "section,key",
    [(s, k) for s, keys in config.SCHEMA.items() for k in keys] + [("[dkim]", k) for k in config.DKIM_SCHEMA],
)
def test_every_config_key_is_in_pysendmail_toml_5(section: str, key: str) -> None:
    heading = "[[dkim]]" if section == "[dkim]" else f"[{section}]"
    subs = subsections("pysendmail.toml.5")
    assert heading in subs, f"pysendmail.toml(5) has no '.Ss {heading} ...' subsection"
    assert key in documented_keys(subs[heading]), f"pysendmail.toml(5) does not document {heading} {key}"


@pytest.mark.parametrize("key", list(config.ROUTE_SCHEMA))
def test_every_route_key_is_in_pysendmail_toml_5(key: str) -> None:
    subs = subsections("pysendmail.toml.5")
    assert "[[route]]" in subs, "pysendmail.toml(5) has no '.Ss [[route]] ...' subsection"
    assert key in documented_keys(subs["[[route]]"]), f"pysendmail.toml(5) does not document [[route]] {key}"


def test_every_config_section_is_in_pysendmail_toml_5() -> None:
    subs = subsections("pysendmail.toml.5")
    wanted = [f"[{s}]" for s in config.SCHEMA] + ["[relay.NAME]", "[[route]]", "[[dkim]]", "[aliases]"]
    assert [w for w in wanted if w not in subs] == [], sorted(subs)


def provider_items() -> dict[str, str]:
    """Text of each ``.It Cm NAME`` item of pysendmail.toml(5) PROVIDERS, keyed by NAME."""
    text = (MAN / "pysendmail.toml.5").read_text()
    section = text.split(".Sh PROVIDERS", 1)[1].split(".Sh ", 1)[0]
    items: dict[str, str] = {}
    name = None
    for line in section.splitlines():
        found = re.match(r"\.It Cm (\S+)$", line)
        if found:
            name = found.group(1)
            items[name] = ""
        elif line == ".El":
            name = None
        elif name is not None:
            items[name] += line + "\n"
    return items


@pytest.mark.parametrize("name", sorted(providers.PRESETS))
def test_every_provider_is_in_pysendmail_toml_5(name: str) -> None:
    preset = providers.PRESETS[name]
    items = provider_items()
    assert name in items, f"pysendmail.toml(5) PROVIDERS has no '.It Cm {name}' item"
    host = preset.host.split("{", 1)[0]  # ses: email-smtp.{region}.amazonaws.com
    assert host in items[name], f"pysendmail.toml(5) PROVIDERS {name} does not name its host {preset.host}"
    if preset.port:
        assert re.search(rf"\b{preset.port}\b", items[name]), f"pysendmail.toml(5) PROVIDERS {name} lacks port {preset.port}"
    if preset.spf_include:
        assert preset.spf_include in items[name], f"pysendmail.toml(5) PROVIDERS {name} lacks SPF {preset.spf_include}"


# ---------------------------------------------------------------- pysendmail(8)
def commands(parser: argparse.ArgumentParser) -> list[tuple[str, str | None, list[str]]]:
    """(subcommand, action choice or None, its option strings) for the whole parser."""
    out: list[tuple[str, str | None, list[str]]] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                options = [o for a in sub._actions for o in a.option_strings if o not in ("-h", "--help")]
                choices = [c for a in sub._actions if not a.option_strings and a.choices for c in a.choices]
                for choice in choices or [None]:
                    out.append((name, choice, options))
                for nested in sub._actions:
                    if isinstance(nested, argparse._SubParsersAction):
                        for inner, p in nested.choices.items():
                            opts = [o for a in p._actions for o in a.option_strings if o not in ("-h", "--help")]
                            out.append((name, inner, opts))
    return out


def item_lines(page: str) -> list[list[str]]:
    return [line.split() for line in (MAN / page).read_text().splitlines() if line.startswith(".It ")]


@pytest.mark.parametrize("name,choice,options", commands(cli.build_parser("pysendmail")))
def test_every_pysendmail_command_is_in_pysendmail_8(name: str, choice: str | None, options: list[str]) -> None:
    wanted = ["Cm", name] if choice is None else ["Cm", name, "Cm", choice]
    items = [words for words in item_lines("pysendmail.8") if words[1:1 + len(wanted)] == wanted]
    shown = f"{name} {choice or ''}".strip()
    assert items, f"pysendmail(8) has no '.It Cm {name}{' Cm ' + choice if choice else ''}' item for 'pysendmail {shown}'"
    text = (MAN / "pysendmail.8").read_text()
    for option in options:
        # "--json" is written "Fl -json" in mdoc.
        assert re.search(rf"\bFl {re.escape(option[1:])}\b", text), f"pysendmail(8) does not document {shown} {option}"


def test_command_walker_sees_subcommands_and_actions() -> None:
    seen = {(n, c) for n, c, _ in commands(cli.build_parser("pysendmail"))}
    assert ("daemon", None) in seen and ("queue", "show") in seen and ("spool", "init") in seen


# ---------------------------------------------------------------- sendmail(8)
@pytest.mark.parametrize("flag", [f for f, _, _ in flags.FLAGS])
def test_every_sendmail_flag_is_in_sendmail_8(flag: str) -> None:
    items = item_lines("sendmail.8")
    mdoc = "Fl " + flag[1:] if flag != "--" else "Fl -"
    # "-o" is documented as "Fl o Ns Ar x", "-q" also as "Fl q Ns Ar interval".
    found = any(" ".join(w).startswith(".It " + mdoc) or f" {mdoc} " in " ".join(w) + " " for w in items)
    assert found, f"sendmail(8) has no item for {flag}"


@pytest.mark.parametrize(
    "code", [0, errors.EX_USAGE, errors.EX_DATAERR, 73, 74, errors.EX_TEMPFAIL, 77, 78],
)
def test_every_sendmail_exit_code_is_in_sendmail_8(code: int) -> None:
    text = (MAN / "sendmail.8").read_text()
    exit_section = text.split(".Sh EXIT STATUS", 1)[1].split(".Sh ", 1)[0]
    assert f".It {code}\n" in exit_section, f"sendmail(8) EXIT STATUS does not list {code}"


@pytest.mark.parametrize("example", ["sendmail_path", "-bs", "cron", "git send-email", "sendemail.sendmailcmd"])
def test_sendmail_8_has_the_examples(example: str) -> None:
    text = (MAN / "sendmail.8").read_text()
    assert example in text.split(".Sh EXAMPLES", 1)[1]
