"""The bad-input corpus: each wrong job or input fails in the first second and costs nothing.

Every case runs ``batchrun JOB`` and ``batchrun validate JOB`` (which makes the run's pre-flight
checks too: the key, the run folder) in process against a simulator on loopback, and must: exit
2; print one paragraph on stderr that names the problem (file and line, row or key) and the fix,
without a traceback; send no request; and leave the job's folder and the shared state folder
exactly as they were.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
import pytest

from batchrun.cli import main
from batchrun.sim import SimServer
from batchrun.sim.config import SimConfig
from tests.conftest import JobWriter

KEY_ENV = "BATCHRUN_CORPUS_KEY"
SECRET = "sk-ant-api03-CORPUSSECRET"

BASE = """\
name: corpus
input:
  path: data.csv
  id_column: id
  prompt: "{question}"
request:
  api: messages
  max_tokens: 16
  model: claude-sonnet-5-5
endpoint:
  base_url: @URL@
  api_key_env: BATCHRUN_CORPUS_KEY
limits:
  concurrency: 2
  requests_per_minute: 6000
retry:
  max_attempts: 1
output:
  dir: out
telemetry:
  traces: none
"""
DATA = "id,question\nr1,What is 2+2?\nr2,Why is the sky blue?\nr3,Name a prime.\n"
MESSAGES = ('  prompt: "{question}"', "  messages_column: m")

FileMaker = Callable[[Path], None]


def parquet(df: pl.DataFrame, cut: bool = False) -> FileMaker:
    """Write ``df`` as Parquet, cut to half its bytes when ``cut``."""

    def make(path: Path) -> None:
        df.write_parquet(path)
        if cut:
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])

    return make


def conversations(*cells: str) -> str:
    """A CSV with an id and a JSON messages column ``m``, one row per cell."""
    rows = ['r{},"{}"'.format(i, cell.replace('"', '""')) for i, cell in enumerate(cells)]
    return "id,m\n" + "\n".join(rows) + "\n"


USER_HI = '{"role": "user", "content": "Hi"}'


@dataclass(frozen=True)
class Case:
    """One bad job: how it differs from BASE and what the message must say."""

    name: str
    expect: tuple[str, ...]
    edits: tuple[tuple[str, str], ...] = ()  # (old, new) replacements in BASE
    files: dict[str, str | bytes | FileMaker] = field(default_factory=dict)
    args: tuple[str, ...] = ()
    env: dict[str, str | None] = field(default_factory=dict)
    job_file: str | bytes | None = None  # the job file's text, instead of BASE
    absent: tuple[str, ...] = ()  # never in the message (secrets)


CASES = [
    # --- the job file: YAML -------------------------------------------------------------
    Case(
        "yaml-unclosed-bracket",
        ("job.yaml:4:14: YAML syntax error", "'[' opened at line 4, column 14 is never closed"),
        edits=(("  id_column: id", "  id_column: [id"),),
    ),
    Case(
        "yaml-unclosed-quote",
        ("job.yaml:5:11: YAML syntax error", "quote opened at line 5, column 11 is never closed"),
        edits=(('"{question}"', '"{question}'),),
    ),
    Case(
        "yaml-tab-indent",
        ("job.yaml:3:1: YAML syntax error", "spaces, never tabs"),
        edits=(("  path: data.csv", "\tpath: data.csv"),),
    ),
    Case(
        "yaml-colon-in-value",
        ("job.yaml:5:12: YAML syntax error", "must be in quotes", 'prompt: "Q: {question}"'),
        edits=(('"{question}"', "Q: {question}"),),
    ),
    Case(
        "yaml-unquoted-template",
        ("job.yaml:5:3: input.prompt: Input should be a valid string", "put the value in quotes"),
        edits=(('"{question}"', "{question}"),),
    ),
    Case("job-file-empty", ("job.yaml: the job file is empty",), job_file="# nothing yet\n"),
    Case("job-file-not-utf8", ("job.yaml: not UTF-8 text", "save it as UTF-8"), job_file=b"\xff"),
    Case(
        "job-file-duplicate-key",
        ("job.yaml:9:3: request.max_tokens: duplicate key (first on line 8); keep one",),
        edits=(("  max_tokens: 16", "  max_tokens: 16\n  max_tokens: 32"),),
    ),
    # --- the job file: keys and types ---------------------------------------------------
    Case(
        "missing-name",
        ("job.yaml:1:1: name: required key is missing", "e.g. name: eval"),
        edits=(("name: corpus\n", ""),),
    ),
    Case(
        "missing-input-path",
        ("job.yaml:2:1: input.path: required key is missing", "e.g. path: data/eval.csv"),
        edits=(("  path: data.csv\n", ""),),
    ),
    Case(
        "missing-prompt",
        ("job.yaml:2:1: input: give exactly one of prompt or messages_column (got neither)",),
        edits=(('  prompt: "{question}"\n', ""),),
    ),
    Case(
        "unknown-key-suggests",
        ("job.yaml:14:3: limits.concurency: unknown key; did you mean 'concurrency'?",),
        edits=(("concurrency:", "concurency:"),),
    ),
    Case(
        "api-field-points-to-extra",
        ("job.yaml:9:3: request.container: unknown key", "put it under request.extra"),
        edits=(("  max_tokens: 16", "  max_tokens: 16\n  container: c1"),),
    ),
    Case(
        "key-in-wrong-section",
        ("job.yaml:6:3: input.max_tokens: unknown key here", "request.max_tokens"),
        edits=(('  prompt: "{question}"', '  prompt: "{question}"\n  max_tokens: 8'),),
    ),
    Case(
        "quoted-number",
        (
            "job.yaml:8:15: request.max_tokens: Input should be a valid integer (got '16')",
            "write the value without quotes",
        ),
        edits=(("max_tokens: 16", "max_tokens: '16'"),),
    ),
    Case(
        "wrong-type-bool",
        ("job.yaml:22:20: telemetry.capture_content: Input should be a valid boolean",),
        edits=(("  traces: none", "  traces: none\n  capture_content: maybe"),),
    ),
    Case(
        "section-not-a-mapping",
        ("job.yaml:13:9: limits: must be a section, its keys indented on the lines below", "not 4"),
        edits=(("limits:\n  concurrency: 2\n  requests_per_minute: 6000", "limits: 4"),),
    ),
    Case(
        "unsupported-api",
        ("job.yaml:7:8: request.api: Input should be 'messages' or 'complete' (got 'chat')",),
        edits=(("api: messages", "api: chat"),),
    ),
    Case(
        "api-typo-suggests",
        ("request.api", "did you mean 'complete'?"),
        edits=(("api: messages", "api: completion"),),
    ),
    Case(
        "bad-template",
        ("job.yaml:5:11: input.prompt: invalid template", "literal brace"),
        edits=(('"{question}"', '"{question"'),),
    ),
    # --- out-of-range values ------------------------------------------------------------
    Case(
        "max-tokens-zero",
        ("job.yaml:8:15: request.max_tokens: Input should be greater than or equal to 1",),
        edits=(("max_tokens: 16", "max_tokens: 0"),),
    ),
    Case(
        "max-tokens-too-large",
        ("request.max_tokens: 500000 is over claude-sonnet-5-5's output limit of 128000",),
        edits=(("max_tokens: 16", "max_tokens: 500000"),),
    ),
    Case(
        "temperature-above-1",
        ("request.temperature: Input should be less than or equal to 1 (got 1.5)",),
        args=("--set", "request.temperature=1.5"),
    ),
    Case(
        "concurrency-zero",
        ("job.yaml:14:16: limits.concurrency: Input should be greater than or equal to 1",),
        edits=(("concurrency: 2", "concurrency: 0"),),
    ),
    Case(
        "rate-limit-negative",
        ("limits.requests_per_minute: Input should be greater than 0 (got -60)",),
        edits=(("requests_per_minute: 6000", "requests_per_minute: -60"),),
    ),
    Case(
        "backoff-out-of-order",
        ("job.yaml:16:1: retry: initial_backoff_s (90.0) is greater than max_backoff_s",),
        edits=(("max_attempts: 1", "max_attempts: 1\n  initial_backoff_s: 90"),),
    ),
    # --- the endpoint and the key -------------------------------------------------------
    Case(
        "base-url-without-scheme",
        ("endpoint.base_url: must be 'sim' or an http(s) URL such as http://127.0.0.1:8080",),
        args=("--set", "endpoint.base_url=localhost:8080"),
    ),
    Case(
        "base-url-bad-port",
        ("endpoint.base_url: the port is not a number in 0-65535",),
        args=("--set", "endpoint.base_url=http://127.0.0.1:99999"),
    ),
    Case(
        "base-url-with-credentials",
        ("endpoint.base_url: must not hold credentials", "api_key_env"),
        args=("--set", f"endpoint.base_url=http://user:{SECRET}@127.0.0.1:1/"),
        absent=(SECRET, "CORPUSSECRET"),
    ),
    Case(
        "key-value-in-set",
        ("--set endpoint.api_key_env=***", "looks like an API key", "environment variable"),
        args=("--set", f"endpoint.api_key_env={SECRET}"),
        absent=("CORPUSSECRET",),
    ),
    Case(
        "key-value-in-job-file",
        ("job.yaml:12:16: endpoint.api_key_env: this looks like an API key",),
        edits=(("api_key_env: BATCHRUN_CORPUS_KEY", f"api_key_env: {SECRET}"),),
        absent=("CORPUSSECRET",),
    ),
    Case(
        "key-env-unset",
        (f"endpoint.api_key_env: the environment variable {KEY_ENV} is not set", "export"),
        env={KEY_ENV: None},
    ),
    Case(
        "key-env-empty",
        (f"the environment variable {KEY_ENV} is empty",),
        env={KEY_ENV: "  "},
    ),
    # --- overrides ----------------------------------------------------------------------
    Case(
        "set-unknown-key",
        ("--set limits.concurency=4: unknown key 'limits.concurency'", "'limits.concurrency'"),
        args=("--set", "limits.concurency=4"),
    ),
    Case(
        "set-not-key-value",
        ("--set concurrency: expected KEY=VALUE, e.g. limits.concurrency=64",),
        args=("--set", "concurrency"),
    ),
    # --- the input files ----------------------------------------------------------------
    Case(
        "input-missing",
        ("input.path: no such file: nope.csv", "job file's folder", "fix input.path"),
        edits=(("path: data.csv", "path: nope.csv"),),
    ),
    Case(
        "input-is-a-folder",
        ("input.path: data is a folder", "data/*.csv"),
        edits=(("path: data.csv", "path: data"),),
        files={"data/keep.txt": "x"},
    ),
    Case(
        "input-glob-matches-nothing",
        ("input.path: no file matches 'parts/*.csv'",),
        edits=(("path: data.csv", "path: parts/*.csv"),),
    ),
    Case(
        "input-unsupported-type",
        ("data.xlsx: input.path names a .xlsx file; input files must be .csv or .parquet",),
        edits=(("path: data.csv", "path: data.xlsx"),),
        files={"data.xlsx": b"PK\x03\x04"},
    ),
    Case(
        "input-mixed-kinds",
        ("matches both .csv and .parquet files", "e.g. *.csv"),
        edits=(("path: data.csv", "path: data.*"),),
        files={"data.parquet": parquet(pl.DataFrame({"id": ["a"], "question": ["q"]}))},
    ),
    Case(
        "input-empty-file",
        ("data.csv: the file is empty; a CSV needs a header row and at least one data row",),
        files={"data.csv": ""},
    ),
    Case(
        "input-header-only",
        ("input.path 'data.csv': the input has a header but no data rows",),
        files={"data.csv": "id,question\n"},
    ),
    Case(
        "input-not-utf8",
        ("data.csv: line 3: not UTF-8 text (byte 0xe9 at offset 34)", "save it as UTF-8"),
        files={"data.csv": b"id,question\nr1,What is 2+2?\nr2,caf\xe9?\n"},
    ),
    Case(
        "input-utf16",
        ("data.csv: is UTF-16 text, not UTF-8",),
        files={"data.csv": DATA.encode("utf-16")},
    ),
    Case(
        "input-ragged-line",
        ("data.csv: line 3: 3 fields, but the header has 2", "double quotes"),
        files={"data.csv": "id,question\nr1,Hi\nr2,Hello, world\n"},
    ),
    Case(
        "input-truncated-parquet",
        ("data.parquet: not a readable Parquet file", "cut short", "write it again"),
        edits=(("path: data.csv", "path: data.parquet"),),
        files={
            "data.parquet": parquet(
                pl.DataFrame({"id": [f"r{i}" for i in range(500)], "question": ["q"] * 500}),
                cut=True,
            )
        },
    ),
    Case(
        "input-parquet-that-is-not",
        ("data.parquet: not a readable Parquet file",),
        edits=(("path: data.csv", "path: data.parquet"),),
        files={"data.parquet": DATA},
    ),
    Case(
        "template-column-missing",
        ("data.csv: input.prompt uses column 'questoin'", "did you mean 'question'?"),
        edits=(('"{question}"', '"{questoin}"'),),
    ),
    Case(
        "id-column-missing",
        ("data.csv: input.id_column uses column 'ID'", "did you mean 'id'?"),
        edits=(("id_column: id", "id_column: ID"),),
    ),
    Case(
        "duplicate-ids",
        ("input.id_column 'id' has duplicate ids: 'r1' (2 rows)", "ids must be unique"),
        files={"data.csv": "id,question\nr1,a\nr2,b\nr1,c\n"},
    ),
    Case(
        "null-id",
        ("data.csv: data row 2 (1-based): input.id_column 'id' is null or empty",),
        files={"data.csv": "id,question\nr1,a\n,b\n"},
    ),
    Case(
        "null-prompt-cell",
        ("data.csv: data row 2 (1-based), id 'r2': column 'question' is null",),
        files={"data.csv": "id,question\nr1,a\nr2,\n"},
    ),
    Case(
        "blank-prompt",
        ("data.csv: data row 1 (1-based), id 'r1': the rendered prompt is empty",),
        files={"data.csv": 'id,question\nr1,"   "\nr2,b\n'},
    ),
    # --- messages_column ----------------------------------------------------------------
    Case(
        "messages-bad-role",
        ("data row 1 (1-based), id 'r0': input.messages_column 'm': message 1", "role 'system'"),
        edits=(MESSAGES,),
        files={"data.csv": conversations('[{"role": "system", "content": "Be brief"}]')},
    ),
    Case(
        "messages-not-alternating",
        ("id 'r1'", "messages 1 and 2 are both user: roles must alternate", "merge"),
        edits=(MESSAGES,),
        files={"data.csv": conversations(f"[{USER_HI}]", f"[{USER_HI}, {USER_HI}]")},
    ),
    Case(
        "messages-start-with-assistant",
        ("must start with a user message",),
        edits=(MESSAGES,),
        files={"data.csv": conversations('[{"role": "assistant", "content": "Hi"}]')},
    ),
    Case(
        "messages-empty-content",
        ("message 1 has empty content",),
        edits=(MESSAGES,),
        files={"data.csv": conversations('[{"role": "user", "content": ""}]')},
    ),
    Case(
        "messages-prefill-trailing-space",
        ("message 2 (the assistant prefill) ends in whitespace",),
        edits=(MESSAGES,),
        files={
            "data.csv": conversations(f'[{USER_HI}, {{"role": "assistant", "content": "So "}}]')
        },
    ),
    Case(
        "messages-not-json",
        ("input.messages_column 'm': the cell is not valid JSON",),
        edits=(MESSAGES,),
        files={"data.csv": conversations("[{role: user}]")},
    ),
    Case(
        "messages-parquet-null",
        ("data.parquet: data row 1 (1-based), id 'a'", "messages_column 'm': the cell is null"),
        edits=(MESSAGES, ("path: data.csv", "path: data.parquet")),
        files={
            "data.parquet": parquet(
                pl.DataFrame({"id": ["a"], "m": [None]}, schema={"id": pl.String, "m": pl.String})
            )
        },
    ),
    # --- the run folder -----------------------------------------------------------------
    Case(
        "output-dir-under-a-file",
        ("output.dir", "data.csv/out"),
        edits=(("dir: out", "dir: data.csv/out"),),
    ),
    Case(
        "output-dir-is-a-file",
        ("output.dir", "data.csv"),
        edits=(("dir: out", "dir: data.csv"),),
    ),
]


@pytest.fixture(scope="module")
def sim() -> Iterator[SimServer]:
    """One simulator for the whole corpus: no case may send it anything."""
    with SimServer(SimConfig(ttft_s=0, token_interval_s=0)) as server:
        yield server


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def _write_case(case: Case, folder: Path, base_url: str) -> Path:
    text: str | bytes = BASE.replace("@URL@", base_url)
    for old, new in case.edits:
        assert isinstance(text, str)
        assert old in text, (case.name, old)
        text = text.replace(old, new, 1)
    if case.job_file is not None:
        text = case.job_file
    job = folder / "job.yaml"
    job.write_bytes(text.encode() if isinstance(text, str) else text)
    (folder / "data.csv").write_text(DATA, encoding="utf-8")
    for name, content in case.files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str):
            path.write_text(content, encoding="utf-8")
        elif isinstance(content, bytes):
            path.write_bytes(content)
        else:
            content(path)
    return job


def _assert_refused(code: int, out: str, err: str, case: Case) -> None:
    assert code == 2, err
    assert out == ""
    assert err.startswith("batchrun: error: "), err
    assert "Traceback" not in err
    assert "\n\n" not in err.strip(), err  # one paragraph
    for fragment in case.expect:
        assert fragment in err, f"{fragment!r} not in {err!r}"
    for secret in case.absent:
        assert secret not in err


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_job_exits_2_and_costs_nothing(
    case: Case,
    sim: SimServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Exit 2, one paragraph naming the problem and fix, no request sent, no file written."""
    state = tmp_path / "state"
    work = tmp_path / "job"
    work.mkdir()
    monkeypatch.setenv("XDG_STATE_HOME", str(state))
    monkeypatch.setenv(KEY_ENV, "sk-corpus-test-key")
    for name, value in case.env.items():
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    monkeypatch.chdir(work)
    _write_case(case, work, sim.base_url)
    before = _tree(work)
    for argv in (["job.yaml", *case.args], ["validate", "job.yaml", *case.args]):
        code = main(argv)
        out, err = capsys.readouterr()
        _assert_refused(code, out, err, case)
    assert sim.stats.total_requests == 0
    assert _tree(work) == before
    assert not state.exists()


def test_the_corpus_covers_enough_cases() -> None:
    """The corpus keeps at least 30 distinct cases."""
    assert len({c.name for c in CASES}) == len(CASES) >= 30


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_a_read_only_output_folder_is_exit_2(
    write_job: JobWriter, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An output folder that cannot be created is exit 2 naming output.dir, before any send."""
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    code = main([str(write_job(extra={"output": {"dir": "locked/out"}}))])
    assert code == 2
    assert "output.dir" in capsys.readouterr().err
    assert not (locked / "out").exists()


# --- in a real process --------------------------------------------------------------------


def _batchrun(*args: str | Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "batchrun.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )


def test_in_a_real_process_the_message_is_one_paragraph_and_debug_adds_the_traceback(
    sim: SimServer, tmp_path: Path
) -> None:
    """A subprocess gets the same exit 2 and paragraph; --debug adds the traceback."""
    job = _write_case(CASES[0], tmp_path, sim.base_url)
    env = {k: v for k, v in os.environ.items() if k != KEY_ENV}
    done = _batchrun(job, env=env)
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.startswith("batchrun: error: ")
    assert "Traceback" not in done.stderr
    debug = _batchrun(job, "--debug", env=env)
    assert debug.returncode == 2
    assert "Traceback (most recent call last)" in debug.stderr
    assert sim.stats.total_requests == 0


def test_in_a_real_process_an_unset_key_is_named(sim: SimServer, tmp_path: Path) -> None:
    """The key variable unset, through the real command: exit 2 naming it, nothing sent."""
    job = _write_case(Case("key", ()), tmp_path, sim.base_url)
    env = {k: v for k, v in os.environ.items() if k != KEY_ENV}
    env["XDG_STATE_HOME"] = str(tmp_path / "state")
    done = _batchrun(job, env=env)
    assert done.returncode == 2, done.stderr
    assert f"the environment variable {KEY_ENV} is not set" in done.stderr
    assert not (tmp_path / "out").exists()
    assert sim.stats.total_requests == 0


# --- problems that only show when sent: data, not a stop ----------------------------------


def test_a_prompt_over_the_context_window_is_an_error_row_and_the_run_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """One prompt far over the context: that row is an error with the server's message; exit 1.
    The model is one with a 200K window (the current ones have 1M)."""
    huge = "word " * 200_000  # ~250k tokens by the simulator's count
    data = f"id,question\nr1,What is 2+2?\nr2,{huge}\nr3,Name a prime.\n"
    with SimServer(SimConfig(ttft_s=0, token_interval_s=0)) as server:
        case = Case("huge", (), files={"data.csv": data})
        job = _write_case(case, tmp_path, server.base_url)
        monkeypatch.setenv(KEY_ENV, "sk-corpus-test-key")
        monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
        code = main([str(job), "--set", "request.model=claude-haiku-4-5"])
        assert code == 1
        assert server.stats.total_requests == 3  # a 400 is not retried
    capsys.readouterr()
    results = pl.read_parquet(tmp_path / "out" / "results.parquet").sort("id")
    assert results["status"].to_list() == ["ok", "error", "ok"]
    bad = results.row(1, named=True)
    assert (bad["error_type"], bad["http_status"]) == ("invalid_request_error", 400)
    assert bad["error_message"].startswith("prompt is too long: ")


def test_a_wrong_key_aborts_with_exit_3_and_says_what_to_check(
    write_job: JobWriter,
    sim_server: Callable[..., SimServer],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A 401 on the first responses: exit 3 after at most `concurrency` requests, naming the key."""
    server = sim_server(api_key="the-right-key")
    monkeypatch.setenv(KEY_ENV, "a-wrong-key")
    job = write_job(
        rows=20,
        extra={
            "endpoint": {"base_url": server.base_url, "api_key_env": KEY_ENV},
            "limits": {"concurrency": 3},
        },
    )
    assert main([str(job)]) == 3
    assert server.stats.total_requests <= 3
    assert "API key" in capsys.readouterr().err
