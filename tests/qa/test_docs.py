"""The documents say what the code does.

* README.md's test command (the ``sh`` block under "## Run the tests") is,
  character for character, the TEST_COMMAND that .ci/run runs: CI runs
  what a reader is told to run.
* README.md has exactly two ``sh`` blocks, the two set-up commands (try
  it; run the tests), each one line that can be pasted as it is.
* ``sendmail --help``, from the installed program, lists every flag of the
  flag table (pysendmail.submit.flags.FLAGS).
* Nothing in README.md points outside the repository: every link target
  that is not a URL is a file or directory of this tree, no path climbs
  out of it with ``../`` (the README used to send readers to
  ``../shared/DESIGN.md``, which a clone does not have), and the repository
  paths it names in code spans exist.
"""

from __future__ import annotations

import re
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


# ---------------------------------------------------------------- README stays inside the repository
URL = re.compile(r"^[a-z][a-z0-9+.-]*:", re.I)  # https:, mailto:, man: ...


def link_targets(markdown: str) -> list[str]:
    """Targets of inline links and images ``[text](target "title")`` and of reference definitions."""
    inline = re.findall(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+[\"'(][^)]*)?\)", markdown)
    defined = re.findall(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", markdown, re.M)
    return inline + defined


def inside(target: str, base: Path = ROOT) -> Path | None:
    """The path ``target`` names under the repository (anchor and query dropped), or None if it leaves it."""
    path = target.split("#", 1)[0].split("?", 1)[0]
    if not path:
        return base  # "#section": this file
    if path.startswith("/"):
        return None  # the reader's file system, not the repository
    resolved = (base / path).resolve()
    return resolved if resolved == ROOT or ROOT in resolved.parents else None


def climbing_paths(markdown: str) -> list[str]:
    """Every ``../``-relative path anywhere in the text (links, code spans, prose)."""
    return re.findall(r"(?<![\w./])((?:\.\./)+[^\s`)\]\"'<>]*)", markdown)


def code_span_paths(markdown: str) -> list[str]:
    """Words in code spans that name a path under one of the repository's top-level directories."""
    tops = sorted({p.name for p in ROOT.iterdir() if p.is_dir() and not p.name.startswith(".git")}
                  | {".ci"})
    prose = re.sub(r"^ {0,3}(```|~~~).*?^ {0,3}\1[`~]*[ \t]*$", "", markdown, flags=re.M | re.S)
    out = []
    for span in re.findall(r"`([^`]+)`", prose):
        for word in span.split():
            word = word.rstrip(".,;:)").removeprefix("./")
            if word.split("/", 1)[0] in tops and "/" in word and not re.search(r"[<*>$]", word):
                out.append(word)
    return out


def test_readme_links_point_inside_the_repository() -> None:
    text = README.read_text()
    targets = link_targets(text)
    assert targets, "README.md links docs/architecture.md at least"
    for target in targets:
        if URL.match(target):
            continue
        path = inside(target)
        assert path is not None, f"README.md links {target!r}, which is outside the repository"
        assert path.exists(), f"README.md links {target!r}, which does not exist in the repository"


def test_readme_names_no_path_that_climbs_out_of_the_repository() -> None:
    for path in climbing_paths(README.read_text()):
        assert inside(path) is not None, f"README.md names {path!r}: a clone has nothing there"


def test_readme_code_spans_name_repository_paths_that_exist() -> None:
    for word in code_span_paths(README.read_text()):
        assert (ROOT / word).exists(), f"README.md names `{word}`, which is not in the repository"


def test_readme_architecture_document_exists_and_covers_the_contract() -> None:
    assert "docs/architecture.md" in link_targets(README.read_text())
    doc = (ROOT / "docs" / "architecture.md").read_text()
    for heading in ("## Data flow", "## Privilege model", "## The interface contract", "## Where things live",
                    "## Conventions"):
        assert heading in doc, f"docs/architecture.md lacks {heading!r}"
    assert "../shared" not in doc


@pytest.mark.parametrize(("markdown", "bad"), [
    ("see [the design](../shared/DESIGN.md)", "../shared/DESIGN.md"),
    ("see `../shared/DESIGN.md` for the contract", "../shared/DESIGN.md"),
    ("[d]: ../../elsewhere.md", "../../elsewhere.md"),
    ("![x](/etc/passwd)", "/etc/passwd"),
    ("see [docs](docs/missing.md)", "docs/missing.md"),
    ("the layout is in `docs/missing-too.md`.", "docs/missing-too.md"),
])
def test_readme_link_checks_catch_what_leaves_the_repository(markdown: str, bad: str) -> None:
    """The checks above fail for each way of pointing out (so their passing means something)."""
    caught = []
    for target in link_targets(markdown):
        path = inside(target)
        if not URL.match(target) and (path is None or not path.exists()):
            caught.append(target)
    caught += [p for p in climbing_paths(markdown) if inside(p) is None]
    caught += [w for w in code_span_paths(markdown) if not (ROOT / w).exists()]
    assert bad in caught, (markdown, caught)


def test_readme_link_checks_accept_what_stays_inside() -> None:
    markdown = "[a](docs/architecture.md) [b](man/) [c](https://example.org/x) [d](#using-it) `packaging/deb`"
    assert [t for t in link_targets(markdown) if not URL.match(t) and not (inside(t) or Path("/nonexistent")).exists()] == []
    assert climbing_paths(markdown) == []
