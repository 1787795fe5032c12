"""The documentation tells the truth about the product.

- the MkDocs site (``mkdocs.yml``, ``docs/``) builds with ``--strict``: a broken link or anchor, or a
  page missing from the navigation, fails;
- every fenced ``python`` block parses as Python;
- every ``model-garden ...`` command line in a fenced shell block of the README or a docs page names
  a real subcommand and real options: it is parsed by click's own parser (``Command.make_parser``)
  against ``mg_mlflow.cli.cli``. A context built by ``make_context(..., resilient_parsing=True)``
  would swallow the "no such option" error, so the parser runs on a plain context instead;
  backslash-continued lines are joined and ``<placeholders>`` stand for argument values only;
- the README stays a user's page: at most 350 lines;
- no line of the README or the docs reads like a development diary (issue numbers, commit hashes,
  work sessions, machine leases) or points at files outside the repository.

Each check is a small function run on the real files and, in a negative case, on a bad input it must
reject.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import click
import pytest

from mg_mlflow.cli import cli

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
README_MAX_LINES = 350

SHELL_LANGS = {"", "bash", "sh", "shell", "console", "zsh"}
FENCE = re.compile(r"^(?P<indent>[ ]*)```(?P<lang>[\w+-]*)[^\n]*\n(?P<body>.*?)^(?P=indent)```[ ]*$", re.M | re.S)
PLACEHOLDER = re.compile(r"<[^<>\n]+>")
SEPARATORS = {";", "&&", "||", "|", "&", "(", ")", "$(", "`"}
ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")

DIARY = {
    "an issue number": re.compile(r"\bissues? #?\d+", re.I),
    "a commit hash": re.compile(r"(?<![\w-])(?=[0-9a-f]*[a-f])(?=[0-9a-f]*[0-9])[0-9a-f]{7,40}(?![\w-])"),
    "a work session": re.compile(r"\bsessions?\b", re.I),
    "a machine lease": re.compile(r"\bleases?\b", re.I),
}
# The repository's top-level entries and the names of its markdown files: a path that climbs out of the
# checkout, or a page name that is none of its own, points at something a user does not have.
TOP_LEVEL = {p.name for p in ROOT.iterdir()}
MD_NAMES = {p.name for top in ("README.md", "docs", "bench", "serving", "projects", ".ci") for p in
            ([ROOT / top] if top.endswith(".md") else (ROOT / top).rglob("*.md"))}
PARENT_PATH = re.compile(r"(?<![\w.])((?:\.\./)+)([\w.-]+)")
MD_NAME = re.compile(r"(?<![\w.-])[\w./-]*?([\w-]+\.md)\b")


def outside_the_repository(line: str) -> bool:
    climbs = any(len(ups) > 3 or name not in TOP_LEVEL for ups, name in PARENT_PATH.findall(line))
    return climbs or any(name not in MD_NAMES for name in MD_NAME.findall(line))


def doc_files() -> list[Path]:
    return [README, *sorted(DOCS.rglob("*.md"))]


# --- commands -------------------------------------------------------------------------------------

def shell_blocks(markdown: str) -> list[str]:
    """The bodies of the fenced code blocks in shell languages (or none given)."""
    return [m["body"] for m in FENCE.finditer(markdown) if m["lang"].lower() in SHELL_LANGS]


def command_lines(block: str) -> list[list[str]]:
    """Every ``model-garden`` invocation in a shell block, as its argument list (after the program)."""
    found = []
    for line in re.sub(r"\\\n", " ", block).splitlines():
        line = PLACEHOLDER.sub("PLACEHOLDER", line)
        lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|()`")
        lexer.whitespace_split = True
        lexer.commenters = "#"
        segment: list[str] = []
        for token in [*lexer, ";"]:
            if token not in SEPARATORS:
                segment.append(token)
                continue
            while segment and ASSIGNMENT.match(segment[0]):
                segment.pop(0)
            if segment and Path(segment[0]).name == "model-garden":
                found.append(segment[1:])
            segment = []
    return found


def check_command(args: list[str]) -> None:
    """Raise click.UsageError unless ``model-garden ARGS`` names real subcommands and options."""
    command: click.Command = cli
    ctx = click.Context(cli, info_name="model-garden", **cli.context_settings)
    args = list(args)
    while True:
        _, rest, _ = command.make_parser(ctx).parse_args(list(args))
        if not isinstance(command, click.Group):
            if rest and not ctx.allow_extra_args:
                raise click.UsageError(f"unexpected extra argument(s) {rest} for {ctx.command_path}")
            return
        if not rest:
            return
        name, *args = rest
        sub = command.get_command(ctx, name)
        if sub is None:
            raise click.UsageError(f"no such command {name!r} under {ctx.command_path}")
        command = sub
        ctx = click.Context(sub, info_name=name, parent=ctx, **sub.context_settings)


def all_commands() -> list[tuple[str, list[str]]]:
    return [(f"{path.relative_to(ROOT)}: model-garden {shlex.join(args)}", args)
            for path in doc_files() for block in shell_blocks(path.read_text())
            for args in command_lines(block)]


def test_every_documented_command_is_real():
    commands = all_commands()
    assert len(commands) >= 60, f"only {len(commands)} model-garden commands found in the docs"
    bad = []
    for where, args in commands:
        try:
            check_command(args)
        except click.UsageError as err:
            bad.append(f"{where}\n    {err.format_message()}")
    assert not bad, "commands in the docs that the CLI rejects:\n" + "\n".join(bad)


def python_blocks(markdown: str) -> list[str]:
    """The bodies of the fenced ``python`` code blocks, dedented."""
    import textwrap

    return [textwrap.dedent(m["body"]) for m in FENCE.finditer(markdown) if m["lang"] == "python"]


def python_problems(path: str, markdown: str) -> list[str]:
    import ast

    bad = []
    for block in python_blocks(markdown):
        try:
            ast.parse(block)
        except SyntaxError as err:
            bad.append(f"{path}: python block line {err.lineno}: {err.msg}\n{block}")
    return bad


def test_every_python_example_parses():
    blocks = [b for path in doc_files() for b in python_blocks(path.read_text())]
    assert any("image_url" in b and "chat.completions.create" in b for b in blocks), "no OpenAI image example"
    bad = [p for path in doc_files() for p in python_problems(str(path.relative_to(ROOT)), path.read_text())]
    assert not bad, "python examples in the docs that do not parse:\n" + "\n".join(bad)
    assert python_problems("x.md", "```python\nclient.chat.completions.create(model='m'\n```\n")


def test_the_command_check_rejects_what_the_cli_rejects():
    block = ("model-garden dev tiny-model ./tiny   # a comment with model-garden --nope\n"
             "id=$(model-garden submit --base-model ./tiny --dataset d.jsonl | tail -1)\n"
             "model-garden runs show <run id> && model-garden deployments stop a b\n"
             "MG_DDP_CPU=1 model-garden train --base-model ./tiny \\\n    --no-such-option 3\n")
    found = command_lines(block)
    assert found == [["dev", "tiny-model", "./tiny"],
                     ["submit", "--base-model", "./tiny", "--dataset", "d.jsonl"],
                     ["runs", "show", "PLACEHOLDER"], ["deployments", "stop", "a", "b"],
                     ["train", "--base-model", "./tiny", "--no-such-option", "3"]]
    for args in found[:4]:
        check_command(args)
    with pytest.raises(click.NoSuchOption, match="no-such-option"):
        check_command(found[4])
    with pytest.raises(click.UsageError, match="no such command 'trian'"):
        check_command(["trian", "--base-model", "x"])
    with pytest.raises(click.UsageError, match="no such command 'restart'"):
        check_command(["deployments", "restart", "x"])
    with pytest.raises(click.UsageError, match="extra argument"):
        check_command(["runs", "show", "a", "b"])
    with pytest.raises(click.BadOptionUsage):
        check_command(["train", "--max-steps"])  # an option missing its value
    # a placeholder stands for a value, never for an option name
    with pytest.raises(click.NoSuchOption):
        check_command(command_lines("model-garden train --<option> 1")[0])
    # vLLM flags after the URIs are deploy's to pass through
    check_command(["deploy", "models:/a@prod", "--dry-run", "--max-num-seqs", "8"])
    # diagrams and outputs in ```text blocks are not commands
    assert shell_blocks("```text\nmodel-garden train --> MLflow\n```\n```bash\nls\n```\n") == ["ls\n"]


# --- README length and diary ----------------------------------------------------------------------

def readme_problems(text: str) -> list[str]:
    lines = text.count("\n") + (0 if text.endswith("\n") else 1)
    return [f"README.md has {lines} lines (at most {README_MAX_LINES})"] if lines > README_MAX_LINES else []


def diary_hits(path: str, text: str) -> list[str]:
    return [f"{path}:{number}: {what}: {line.strip()}"
            for number, line in enumerate(text.splitlines(), 1)
            for what, pattern in DIARY.items() if pattern.search(line)] + \
        [f"{path}:{number}: a file outside the repository: {line.strip()}"
         for number, line in enumerate(text.splitlines(), 1) if outside_the_repository(line)]


def test_readme_is_short():
    assert not readme_problems(README.read_text())
    assert readme_problems("line\n" * (README_MAX_LINES + 1))
    assert not readme_problems("line\n" * README_MAX_LINES)


def test_docs_read_as_product_text_not_a_diary():
    hits = [hit for path in doc_files() for hit in diary_hits(str(path.relative_to(ROOT)), path.read_text())]
    assert not hits, "diary lines in the docs:\n" + "\n".join(hits)


@pytest.mark.parametrize("line", [
    "the serving figures of issue 12", "fixed in Issues #14", "measured on commit bf7dc92",
    "code 47a7520b9c", "in the fourth session", "the H100 lease", "see ../notes/PLAN.md", "as NOTES.md says", "../../elsewhere/x.py"])
def test_diary_patterns_catch(line):
    assert diary_hits("x.md", line)


@pytest.mark.parametrize("line", [
    "models:/m-<id>", "2026-11-28, H100 80GB", "release 1.2.0", "bf16 and fp8", "loss 1e-4", "deadbeef",
    "python -m torch.distributed.run", "compare 3f2a9c 81be07", "sha256 digest", "1234567 tokens",
    "see [Training](training.md)", "[the README](../README.md)", "`bench/offline/README.md`"])
def test_diary_patterns_spare_product_text(line):
    assert not diary_hits("x.md", line)


# --- the site -------------------------------------------------------------------------------------

def mkdocs_build(project: Path, site: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(project / "mkdocs.yml"),
                           "-d", str(site)], capture_output=True, text=True, env=env, timeout=300)


def copy_site(dest: Path) -> Path:
    shutil.copy(ROOT / "mkdocs.yml", dest / "mkdocs.yml")
    shutil.copytree(DOCS, dest / "docs")
    return dest


def test_site_builds_strictly(tmp_path):
    result = mkdocs_build(ROOT, tmp_path / "site")
    assert result.returncode == 0, result.stdout + result.stderr
    pages = {p.parent.name for p in (tmp_path / "site").rglob("index.html")}
    for page in DOCS.glob("*.md"):
        assert page.stem == "index" or page.stem in pages, f"{page.name} was not built"


def broken_build_output(tmp_path: Path, name: str, breaks) -> str:
    """mkdocs' output for a copy of the site that ``breaks(docs_dir)`` has damaged; the build must fail."""
    (tmp_path / name).mkdir()
    site = copy_site(tmp_path / name)
    breaks(site / "docs")
    result = mkdocs_build(site, tmp_path / f"site-{name}")
    assert result.returncode != 0
    return result.stdout + result.stderr


def append(page: Path, text: str) -> None:
    page.write_text(page.read_text() + text)


def test_strict_build_fails_on_a_broken_link_or_a_page_out_of_nav(tmp_path):
    out = broken_build_output(tmp_path, "broken",
                              lambda docs: append(docs / "training.md", "\nSee [nowhere](no-such-page.md).\n"))
    assert "no-such-page.md" in out
    out = broken_build_output(tmp_path, "orphan",
                              lambda docs: (docs / "orphan.md").write_text("# Not in the navigation\n"))
    assert "orphan.md" in out
    out = broken_build_output(tmp_path, "anchor", lambda docs: append(
        docs / "index.md", "\nSee [a section](training.md#no-such-section).\n"))
    assert "no-such-section" in out
