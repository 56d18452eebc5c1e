"""The README teaches by example: its walkthrough (and docs/report.md's recipes) run as written,
and its links, and those of docs/, lead somewhere.

The README marks what this file checks with an HTML comment before a fenced block:
``<!-- readme-test: file PATH -->`` (the block is that file of the repository, as it is),
``<!-- readme-test: run -->`` (a ``sh`` or ``python`` block run from the repository root;
``run, exit N`` when it must exit N), ``<!-- readme-test: output -->`` (part of what the snippet
before it prints) and ``<!-- readme-test: job fragment -->`` (YAML sections that make the first
job a valid job). The snippets run in a copy of the repository in a
temporary folder, so they leave nothing behind; python blocks run as one session, each with the
ones before it, as a reader typing them in turn would.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import yaml

from batchrun.job.schema import load_job

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))

# Pages linked from here that another change of this release writes; remove a name once its
# page is in the repository (a link to it then has to resolve like any other).

_MARKED = re.compile(
    r"<!-- readme-test: (?P<what>[^>]*?) -->\n```(?P<lang>[\w-]*)\n(?P<body>.*?)^```",
    re.DOTALL | re.MULTILINE,
)
_FENCE = re.compile(r"^```.*?^```", re.DOTALL | re.MULTILINE)
_LINK = re.compile(r"\[[^\]\n]*\]\(([^)\s]+)\)")


@dataclass(frozen=True)
class Block:
    what: str
    lang: str
    body: str


def blocks(kind: str, page: Path = README) -> list[Block]:
    """The blocks of ``page`` whose mark starts with ``kind`` (a regex: ``file``, ``run``), in
    order."""
    found = [
        Block(m["what"].strip(), m["lang"], m["body"])
        for m in _MARKED.finditer(page.read_text(encoding="utf-8"))
    ]
    return [b for b in found if re.match(rf"(?:{kind})\b", b.what)]


def run_snippets(snippets: list[Block], cwd: Path, env: dict[str, str]) -> None:
    """Run ``snippets`` in order in ``cwd``: each must exit as its mark says (0 unless
    ``exit N``), and an ``output`` block must be part of what the snippet before it printed.
    python blocks are one session, each run with the ones before it."""
    session, printed = "", ""
    for number, block in enumerate(snippets, 1):
        if block.what == "output":
            assert block.body.strip() in printed, f"output {number} is not what it prints"
            continue
        expected = int(block.what.split("exit")[1]) if "exit" in block.what else 0
        if block.lang == "python":
            session += block.body + "\n"
            argv = [sys.executable, "-c", session]
        else:
            assert block.lang == "sh", f"snippet {number}: only sh and python blocks run"
            argv = ["bash", "-e", "-o", "pipefail", "-c", block.body]
        done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=180)
        printed = done.stdout + done.stderr
        assert done.returncode == expected, (
            f"snippet {number} exited {done.returncode}, not {expected}:\n{block.body}\n"
            f"--- stdout\n{done.stdout[-3000:]}\n--- stderr\n{done.stderr[-3000:]}"
        )


def _ignore(folder: str, names: list[str]) -> set[str]:
    skip = {".git", ".venv", "outputs", "test-artifacts", "__pycache__", ".hypothesis"}
    return {n for n in names if n in skip or n.endswith("_cache") or n.endswith(".egg-info")}


@pytest.fixture
def repo_copy(tmp_path: Path) -> Path:
    """The repository in a temporary folder, its .venv the running interpreter's."""
    copy = tmp_path / "repo"
    shutil.copytree(ROOT, copy, ignore=_ignore, symlinks=True)
    (copy / "outputs").mkdir()
    (copy / ".venv").symlink_to(Path(sys.prefix), target_is_directory=True)
    return copy


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "OTEL_"))}
    env.update(
        HOME=str(tmp_path / "home"),
        XDG_STATE_HOME=str(tmp_path / "state"),
        XDG_CACHE_HOME=str(tmp_path / "cache"),
        PATH=f"{Path(sys.prefix) / 'bin'}{os.pathsep}{env.get('PATH', '')}",
    )
    return env


# --- the walkthrough --------------------------------------------------------------------------


def test_the_readme_marks_its_walkthrough() -> None:
    """The first job's files and commands are marked, so the tests below see all of them."""
    assert [b.what for b in blocks("file")] == [
        "file examples/first-job/questions.csv",
        "file examples/first-job/job.yaml",
    ]
    langs = [b.lang for b in blocks("run")]
    assert langs.count("sh") >= 3
    assert langs.count("python") >= 2


@pytest.mark.parametrize("block", blocks("file"), ids=lambda b: b.what.split()[1])
def test_shown_files_are_the_files_in_the_repository(block: Block) -> None:
    """A file the README shows is that file, byte for byte: the walkthrough cannot drift."""
    path = ROOT / block.what.split(maxsplit=1)[1]
    assert path.read_text(encoding="utf-8") == block.body


def test_the_first_job_runs_as_written(repo_copy: Path, tmp_path: Path) -> None:
    """Every marked snippet of the first job, run in order from the repository root, succeeds
    (or exits with the code the README gives), and the run folder holds what the README says."""
    run_snippets(blocks("run|output"), repo_copy, _env(tmp_path))
    # The last run, on an overloaded simulator, needed second attempts, as the README says.
    results = pl.read_parquet(repo_copy / "outputs" / "first-job" / "results.parquet")
    assert results["status"].to_list() == ["ok"] * 6
    assert results["attempts"].max() == 2


def test_the_analysis_recipes_run_on_the_example_run(repo_copy: Path, tmp_path: Path) -> None:
    """The polars recipes of docs/report.md run on the folder `make run` writes (and on two
    copies of it, for the comparison of two runs)."""
    env = _env(tmp_path)
    done = subprocess.run(
        [str(repo_copy / ".venv" / "bin" / "batchrun"), "jobs/eval.yaml"],
        cwd=repo_copy,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for copy in ("eval-a", "eval-b"):
        shutil.copytree(repo_copy / "outputs" / "eval", repo_copy / "outputs" / copy)
    recipes = blocks("run", ROOT / "docs" / "report.md")
    assert len(recipes) >= 6
    run_snippets(recipes, repo_copy, env)


def test_the_real_api_fragment_makes_a_valid_job(tmp_path: Path) -> None:
    """The README's job sections for the real API, put into the first job, make a valid job."""
    (fragment,) = blocks("job fragment")
    job: dict[str, Any] = yaml.safe_load((ROOT / "examples/first-job/job.yaml").read_text())
    job.update(yaml.safe_load(fragment.body))
    shutil.copy(ROOT / "examples/first-job/questions.csv", tmp_path)
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job), encoding="utf-8")
    loaded = load_job(path)
    assert loaded.request.model == "claude-sonnet-5-5"
    assert loaded.endpoint.base_url == "https://api.anthropic.com"


# --- links ------------------------------------------------------------------------------------


def _slug(heading: str) -> str:
    """A heading's anchor as GitHub makes it: lower case, punctuation dropped, spaces to -."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = _FENCE.sub("", page.read_text(encoding="utf-8"))
    return {_slug(m[1]) for m in re.finditer(r"^#+ (.+)$", text, re.MULTILINE)}


def _links() -> list[tuple[Path, str]]:
    found = []
    for page in [README, *DOCS]:
        text = _FENCE.sub("", page.read_text(encoding="utf-8"))
        found += [(page, target) for target in _LINK.findall(text)]
    return found


@pytest.mark.parametrize(
    ("page", "target"),
    [(p, t) for p, t in _links() if not re.match(r"[a-z]+:", t)],
    ids=lambda x: x.name if isinstance(x, Path) else x,
)
def test_relative_links_lead_to_files_and_headings(page: Path, target: str) -> None:
    """Every relative link in the README and docs/ names a file that exists, and a heading of
    it when it names one."""
    file, _, anchor = target.partition("#")
    path = (page.parent / file).resolve() if file else page
    assert path.exists(), f"{page.relative_to(ROOT)}: {target}: no such file"
    if anchor and path.suffix == ".md":
        assert anchor in _anchors(path), f"{page.relative_to(ROOT)}: {target}: no such heading"


def test_every_docs_page_is_linked() -> None:
    """Every page in docs/ is linked from the README or another page: none is lost."""
    linked = {(p.parent / t.partition("#")[0]).resolve() for p, t in _links() if t[:1] != "#"}
    assert [d.name for d in DOCS if d.resolve() not in linked] == []
