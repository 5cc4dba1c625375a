"""The documents say what the code does.

* README.md's test command (the ``sh`` block under "## Run the tests") is,
  character for character, the TEST_COMMAND that .ci/run runs: CI runs
  what a reader is told to run.
* README.md has exactly two ``sh`` blocks, the two set-up commands (try
  it; run the tests), each one line that can be pasted as it is.
* ``sendmail --help``, from the installed program, lists every flag of the
  flag table (pysendmail.submit.flags.FLAGS).
"""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import pytest

from pysendmail.submit import flags
from tests.conftest import program

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
CI_RUN = ROOT / ".ci" / "run"


def fenced_blocks(markdown: str) -> list[tuple[str, str, str]]:
    """(section heading, info string, body) of every fenced code block."""
    blocks: list[tuple[str, str, str]] = []
    section = ""
    fence: str | None = None
    info = ""
    body: list[str] = []
    for line in markdown.splitlines():
        if fence is None:
            if line.startswith("#"):
                section = line.strip()
            elif line.lstrip().startswith(("```", "~~~")):
                stripped = line.lstrip()
                fence = stripped[:3]
                info = stripped.lstrip(fence[0]).strip()
                body = []
        elif line.strip().startswith(fence) and line.strip().strip(fence[0]) == "":
            blocks.append((section, info, "\n".join(body)))
            fence = None
        else:
            body.append(line)
    assert fence is None, "README.md has an unclosed code fence"
    return blocks


def ci_test_command() -> str:
    lines = [line for line in CI_RUN.read_text().splitlines() if line.startswith("TEST_COMMAND=")]
    assert len(lines) == 1, f".ci/run must assign TEST_COMMAND exactly once, found {len(lines)}"
    words = shlex.split(lines[0].split("=", 1)[1])
    assert len(words) == 1, "TEST_COMMAND in .ci/run must be one quoted string"
    return words[0]


def sh_blocks() -> list[tuple[str, str, str]]:
    return [b for b in fenced_blocks(README.read_text()) if b[1] in ("sh", "shell", "bash", "console")]


def test_readme_test_command_is_what_ci_runs() -> None:
    under = [body for section, info, body in sh_blocks() if section.startswith("## Run the tests")]
    assert len(under) == 1, 'README.md needs exactly one sh block under "## Run the tests"'
    assert under[0].strip() == ci_test_command()


def test_ci_runs_its_test_command() -> None:
    text = CI_RUN.read_text()
    assert 'bash -c "$TEST_COMMAND"' in text, ".ci/run must run TEST_COMMAND itself"


def test_readme_has_exactly_two_one_line_setup_commands() -> None:
    blocks = sh_blocks()
    assert [info for _, info, _ in blocks] == ["sh", "sh"], [section for section, _, _ in blocks]
    for section, _, body in blocks:
        lines = [line for line in body.splitlines() if line.strip()]
        assert len(lines) == 1, f"the sh block under {section!r} must be one command line, has {len(lines)}"


def test_fence_parser_finds_sections_and_languages() -> None:
    md = "# t\n## A\n```sh\necho a\n```\ntext\n## B\n```\nplain\n```\n~~~sh\necho b\n~~~\n"
    assert fenced_blocks(md) == [("## A", "sh", "echo a"), ("## B", "", "plain"), ("## B", "sh", "echo b")]


@pytest.fixture(scope="module")
def help_text() -> str:
    proc = subprocess.run([program("sendmail"), "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.mark.parametrize("flag", [f for f, _, _ in flags.FLAGS])
def test_sendmail_help_lists_every_flag(help_text: str, flag: str) -> None:
    # A flag counts as listed when it opens an indented line of the help,
    # so "-o" is not found inside "-oi" nor "-q" inside "-q15m".
    listed = {line.split()[0] for line in help_text.splitlines() if line.startswith(" ") and line.strip()}
    assert flag in listed, f"sendmail --help does not list {flag}"
