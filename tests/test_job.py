"""The job file: schema defaults, validation messages with file:line:col, overrides, paths."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pydantic
import pytest

from batchrun.errors import JobError
from batchrun.job.schema import Job, load_job
from batchrun.job.sections import InputConfig
from batchrun.job.templates import parse_template
from tests.conftest import fixture_path

# The job file printed in CONTRACT.md, copied so that the tests stand alone.
CONTRACT = fixture_path("contract-job.md")

MINIMAL = """\
name: eval
input:
  path: data/eval.csv
  prompt: "{question}"
"""


def write(tmp_path: Path, text: str, name: str = "eval.yaml") -> Path:
    """Write a job file. A job must name its model: a text that names none gets
    ``model: claude-sonnet-5-5`` as its request section's first key, or a request section at
    the end, so that the lines above keep the numbers the test gives them."""
    if "model:" not in text and text.strip() and not text.lstrip().startswith(("-", "#")):
        model = "  model: claude-sonnet-5-5\n"
        if "request:\n" in text:
            text = text.replace("request:\n", "request:\n" + model, 1)
        elif text.endswith("\n") and ":" in text:
            text += "request:\n" + model
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def error_of(path: Path | str, overrides: tuple[str, ...] = ()) -> str:
    with pytest.raises(JobError) as info:
        load_job(path, overrides)
    return str(info.value)


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Work in tmp_path, so messages name the job file as `eval.yaml`."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


# --- defaults and the contract ------------------------------------------------------------


def test_defaults_equal_contract() -> None:
    """Every key of CONTRACT.md's job file exists with exactly the documented default (the
    second release's: request.model required, anthropic_version 2026-10-21, the new keys)."""
    job = Job.model_validate(
        {
            "name": "eval",
            "input": {"path": "x.csv", "prompt": "{q}"},
            "request": {"model": "claude-sonnet-5-5"},
        }
    )
    dumped = job.model_dump(mode="json")
    dumped.pop("sim")
    assert dumped.pop("prices")["claude-sonnet-5-5"] == {
        "input": 2.0,
        "output": 10.0,
        "cache_write_5m": 2.5,
        "cache_write_1h": 4.0,
        "cache_read": 0.2,
    }
    assert dumped == {
        "name": "eval",
        "input": {
            "path": "x.csv",
            "id_column": None,
            "prompt": "{q}",
            "system": None,
            "messages_column": None,
        },
        "request": {
            "api": "messages",
            "model": "claude-sonnet-5-5",
            "max_tokens": 256,
            "temperature": None,
            "top_p": None,
            "top_k": None,
            "stop_sequences": [],
            "samples": 1,
            "mode": "stream",
            "thinking": None,
            "effort": None,
            "output_format": None,
            "tools": [],
            "tool_choice": None,
            "prompt_cache": None,
            "metadata": None,
            "service_tier": None,
            "extra": {},
        },
        "endpoint": {
            "base_url": "sim",
            "api_key_env": "ANTHROPIC_API_KEY",
            "anthropic_version": "2026-10-21",
            "betas": [],
        },
        "limits": {
            "concurrency": 16,
            "requests_per_minute": None,
            "input_tokens_per_minute": None,
            "output_tokens_per_minute": None,
            "shared": True,
            "state_dir": None,
            "redis_url": None,
            "exact_input_tokens": False,
            "max_cost_usd": None,
        },
        "retry": {"max_attempts": 6, "initial_backoff_s": 1.0, "max_backoff_s": 60.0},
        "timeouts": {"connect_s": 10, "idle_s": 60, "total_s": 600},
        "output": {"dir": "outputs/{name}"},
        "telemetry": {"traces": "file", "capture_content": False},
        "cache": {"mode": "off", "dir": None},
        "scorers": [],
        "variants": [],
    }


def test_contract_example_is_a_valid_job(tmp_path: Path) -> None:
    """The job file printed in CONTRACT.md loads with the values it shows, once its model,
    retired since, is the one the second release's example names."""
    block = re.search(r"```yaml\n(.*?)```", CONTRACT.read_text(encoding="utf-8"), re.DOTALL)
    assert block is not None
    first_release = write(tmp_path, block.group(1))
    assert "claude-sonnet-4-5 was retired on 2026-11-30" in error_of(first_release)
    text = block.group(1).replace("model: claude-sonnet-4-5", "model: claude-sonnet-5-5")
    job = load_job(write(tmp_path, text))
    assert job.input.id_column == "id"
    assert job.input.system == "You answer briefly."
    assert job.endpoint.anthropic_version == "2023-06-01"
    assert job.request.stop_sequences == ()


def test_minimal_job_has_absolute_path_and_base_dir(in_tmp: Path) -> None:
    """A loaded job knows its file (absolute) and its folder, though given a relative path."""
    write(in_tmp, MINIMAL)
    job = load_job("eval.yaml")
    assert job.path == in_tmp.resolve() / "eval.yaml"
    assert job.base_dir == in_tmp.resolve()
    assert job.path.is_absolute()


def test_path_is_not_settable_from_yaml(in_tmp: Path) -> None:
    """`path` and `base_dir` are not keys of the job file."""
    write(in_tmp, MINIMAL + "path: /etc\nbase_dir: /\n")
    message = error_of("eval.yaml")
    assert "eval.yaml:5:1: path: unknown key" in message
    assert "eval.yaml:6:1: base_dir: unknown key" in message


def test_job_is_frozen(tmp_path: Path) -> None:
    """A validated job cannot be changed in place."""
    job = load_job(write(tmp_path, MINIMAL))
    with pytest.raises(pydantic.ValidationError):
        job.limits.concurrency = 3


def test_null_section_means_defaults(tmp_path: Path) -> None:
    """A section whose keys are all commented out (null) takes every default."""
    job = load_job(write(tmp_path, MINIMAL + "limits:\n  # concurrency: 4\nretry:\n"))
    assert job.limits.concurrency == 16
    assert job.retry.max_attempts == 6


def test_unquoted_version_date_is_accepted(tmp_path: Path) -> None:
    """`anthropic_version: 2023-06-01` unquoted (a YAML date) means the string."""
    job = load_job(write(tmp_path, MINIMAL + "endpoint:\n  anthropic_version: 2023-06-01\n"))
    assert job.endpoint.anthropic_version == "2023-06-01"


# --- messages: file:line:col, dotted key, suggestion -------------------------------------


def test_unknown_key_names_line_column_and_suggests(in_tmp: Path) -> None:
    """An unknown key is reported at the key, with the nearest valid key of its section."""
    write(in_tmp, MINIMAL + "limits:\n  concurency: 3\n")
    assert error_of("eval.yaml") == (
        "eval.yaml:6:3: limits.concurency: unknown key; did you mean 'concurrency'?"
    )


def test_unknown_key_without_close_match_lists_valid_keys(in_tmp: Path) -> None:
    """With no near match, the message lists the section's keys."""
    write(in_tmp, MINIMAL + "retry:\n  zzz: 1\n")
    assert error_of("eval.yaml") == (
        "eval.yaml:6:3: retry.zzz: unknown key; valid keys here: "
        "max_attempts, initial_backoff_s, max_backoff_s"
    )


def test_unknown_top_level_section_suggests(in_tmp: Path) -> None:
    """A misspelt section name is suggested from the top-level keys."""
    write(in_tmp, MINIMAL + "limit:\n  concurrency: 3\n")
    assert error_of("eval.yaml") == "eval.yaml:5:1: limit: unknown key; did you mean 'limits'?"


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        # another way of writing a key of the section
        (
            "request:\n  maxTokens: 5\n",
            "request.maxTokens: unknown key; did you mean 'max_tokens'?",
        ),
        ("Limits:\n  concurrency: 3\n", "Limits: unknown key; did you mean 'limits'?"),
        # the names the legacy API and other clients use
        (
            "request:\n  max_tokens_to_sample: 5\n",
            "request.max_tokens_to_sample: unknown key; did you mean 'max_tokens'?",
        ),
        ("request:\n  stop: [x]\n", "request.stop: unknown key; did you mean 'stop_sequences'?"),
        ("request:\n  n: 3\n", "request.n: unknown key; did you mean 'samples'?"),
        ("limits:\n  rpm: 60\n", "limits.rpm: unknown key; did you mean 'requests_per_minute'?"),
        (
            "api_key: X\n",
            "api_key: unknown key; did you mean 'endpoint.api_key_env'?",
        ),
        # several keys meant: those of the key's own section named short and first
        (
            "request:\n  messages: []\n",
            "request.messages: unknown key; "
            "did you mean 'input.messages_column' or 'input.prompt'?",
        ),
        # a near spelling in its own section wins over the same key elsewhere
        (
            "sim:\n  requests_per_minut: 6\n",
            "sim.requests_per_minut: unknown key; did you mean 'requests_per_minute'?",
        ),
        # spelt right, in the wrong section; or misspelt, and only another section has it
        (
            "limits:\n  seed: 3\n",
            "limits.seed: unknown key here; it belongs in the sim section (sim.seed)",
        ),
        (
            "retry:\n  max_token: 3\n",
            "retry.max_token: unknown key; did you mean 'request.max_tokens'?",
        ),
        # inside a list and inside a mapping of the user's names
        ("sim:\n  faults:\n    - {kind: stall, rat: 0.1}\n", "did you mean 'rate'?"),
        (
            "prices:\n  m1: {input: 1, outptu: 2}\n",
            "prices.m1.outptu: unknown key; did you mean 'output'?",
        ),
    ],
)
def test_unknown_key_suggests_the_key_meant(in_tmp: Path, extra: str, expected: str) -> None:
    """A suggestion prefers the key's own section and the spellings people really use."""
    write(in_tmp, MINIMAL + extra)
    assert expected in error_of("eval.yaml")


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ("request:\n  container: c1\n", "container"),
        ("request:\n  mcp_servers: []\n", "mcp_servers"),
        ("request:\n  context_management: {}\n", "context_management"),
        ("inference_geo: us\n", "inference_geo"),
    ],
)
def test_an_api_field_batchrun_does_not_name_points_to_request_extra(
    in_tmp: Path, extra: str, field: str
) -> None:
    """A field of the Messages API request with no batchrun key says to use request.extra."""
    write(in_tmp, MINIMAL + extra)
    assert error_of("eval.yaml").endswith(
        f"unknown key; {field} is a field of the Messages API request that batchrun has no key "
        f"for: put it under request.extra, which is sent in the request body as it is "
        f"(extra: {{{field}: ...}})"
    )


def test_the_stream_flag_points_to_request_mode(in_tmp: Path) -> None:
    """`stream` is batchrun's to set: the message names request.mode instead."""
    write(in_tmp, MINIMAL + "request:\n  stream: false\n")
    assert error_of("eval.yaml") == (
        "eval.yaml:7:3: request.stream: unknown key; batchrun sets stream itself: request.mode "
        "chooses stream (one streamed request per row) or batch (the Message Batches API)"
    )


def test_a_section_inside_a_list_is_offered_its_own_keys() -> None:
    """Inside a list (variants[0].request), another tool's name gets that section's key."""
    from batchrun.job.suggest import suggest

    class Request(pydantic.BaseModel):
        max_tokens: int

    class Variant(pydantic.BaseModel):
        request: Request

    class Root(pydantic.BaseModel):
        request: Request
        variants: list[Variant]

    found = suggest(Root, ("variants", 0, "request"), "max_tokens_to_sample")
    assert found is not None
    assert found.keys == (("variants", 0, "request", "max_tokens"),)


def test_the_api_fields_for_request_extra_are_not_keys_of_batchrun() -> None:
    """A field listed for request.extra that batchrun has since named is a stale entry."""
    from batchrun.job.request import RequestConfig
    from batchrun.job.suggest import API_ONLY_FIELDS, OTHER_NAMES

    assert API_ONLY_FIELDS.isdisjoint(RequestConfig.model_fields)
    assert set(OTHER_NAMES).isdisjoint(RequestConfig.model_fields)


def test_bad_value_points_at_the_value(in_tmp: Path) -> None:
    """A value out of range is reported at the value's column, with the value given."""
    write(in_tmp, MINIMAL + "request:\n  max_tokens: 0\n")
    assert error_of("eval.yaml") == (
        "eval.yaml:7:15: request.max_tokens: Input should be greater than or equal to 1 (got 0)"
    )


def test_bad_literal_suggests_nearest_choice(in_tmp: Path) -> None:
    """A misspelt choice names the choices and the nearest one."""
    write(in_tmp, MINIMAL + "request:\n  api: mesages\n")
    assert error_of("eval.yaml") == (
        "eval.yaml:7:8: request.api: Input should be 'messages' or 'complete' "
        "(got 'mesages'; did you mean 'messages'?)"
    )


def test_several_problems_are_listed_one_per_line_in_file_order(in_tmp: Path) -> None:
    """Every problem is reported at once, one per line, in the order of the file."""
    write(
        in_tmp,
        MINIMAL + "request:\n  top_k: 0\n  temperature: 2\nlimits:\n  concurency: 3\n",
    )
    lines = error_of("eval.yaml").splitlines()
    assert lines == [
        "eval.yaml:7:10: request.top_k: Input should be greater than or equal to 1 (got 0)",
        "eval.yaml:8:16: request.temperature: Input should be less than or equal to 1 (got 2)",
        "eval.yaml:10:3: limits.concurency: unknown key; did you mean 'concurrency'?",
    ]


def test_missing_required_keys(in_tmp: Path) -> None:
    """A missing required key is named, at the section that lacks it."""
    write(in_tmp, "input:\n  prompt: '{q}'\n")
    assert error_of("eval.yaml").splitlines() == [
        "eval.yaml:1:1: name: required key is missing "
        "(the run's name, for its folder and traces, e.g. name: eval)",
        "eval.yaml:1:1: input.path: required key is missing (the .csv or .parquet file "
        "(or a glob), relative to the job file, e.g. path: data/eval.csv)",
    ]


@pytest.mark.parametrize(
    ("extra", "where", "fragment"),
    [
        ("request:\n  temperature: 1.5\n", "7:16: request.temperature", "less than or equal to 1"),
        ("request:\n  top_p: -0.1\n", "7:10: request.top_p", "greater than or equal to 0"),
        ("request:\n  top_k: 0\n", "7:10: request.top_k", "greater than or equal to 1"),
        ("request:\n  samples: 0\n", "7:12: request.samples", "greater than or equal to 1"),
        ("request:\n  max_tokens: 128001\n", "7:15: request.max_tokens", "output limit of 128000"),
        ("request:\n  max_tokens: '256'\n", "7:15: request.max_tokens", "valid integer"),
        ("request:\n  model: ''\n", "6:10: request.model", "at least 1 character"),
        ("request:\n  stop_sequences: ['']\n", "7:19: request.stop_sequences", "empty"),
        ("limits:\n  concurrency: 0\n", "6:16: limits.concurrency", "greater than or equal"),
        ("limits:\n  concurrency: 10001\n", "6:16: limits.concurrency", "less than or equal"),
        ("limits:\n  requests_per_minute: 0\n", "6:24: limits.requests_per_minute", "than 0"),
        ("limits:\n  output_tokens_per_minute: -5\n", "6:29: limits", "greater than 0"),
        ("retry:\n  max_attempts: 0\n", "6:17: retry.max_attempts", "greater than or equal"),
        ("retry:\n  initial_backoff_s: 0\n", "6:22: retry.initial_backoff_s", "than 0"),
        ("retry:\n  initial_backoff_s: 90\n", "5:1: retry", "greater than max_backoff_s"),
        ("timeouts:\n  idle_s: 0\n", "6:11: timeouts.idle_s", "greater than 0"),
        ("telemetry:\n  traces: jaeger\n", "6:11: telemetry.traces", "'file', 'otlp'"),
        ("telemetry:\n  capture_content: 'yes'\n", "6:20: telemetry.capture", "valid boolean"),
        ("output:\n  dir: 'out/{user}'\n", "6:8: output.dir", "unknown placeholder {user}"),
        ("output:\n  dir: 'out/{name'\n", "6:8: output.dir", "invalid path"),
        ("endpoint:\n  base_url: ftp://h\n", "6:13: endpoint.base_url", "http(s) URL"),
        ("endpoint:\n  base_url: localhost:8080\n", "6:13: endpoint.base_url", "http(s) URL"),
        ("endpoint:\n  base_url: 'http://'\n", "6:13: endpoint.base_url", "http(s) URL"),
        ("endpoint:\n  base_url: http://h/?a=1\n", "6:13: endpoint.base_url", "query"),
        ("endpoint:\n  base_url: http://h:99999\n", "6:13: endpoint.base_url", "port"),
        ("endpoint:\n  api_key_env: 1KEY\n", "6:16: endpoint.api_key_env", "environment var"),
        ("endpoint:\n  anthropic_version: v1\n", "6:22: endpoint.anthropic_v", "match pattern"),
        ("sim:\n  faults:\n    - kind: boom\n", "7:13: sim.faults[0].kind", "'overloaded'"),
    ],
)
def test_constraints(in_tmp: Path, extra: str, where: str, fragment: str) -> None:
    """Each constraint is enforced, reported as file:line:col: dotted.key: message."""
    write(in_tmp, MINIMAL + extra)
    message = error_of("eval.yaml")
    assert message.startswith(f"eval.yaml:{where}"), message
    assert fragment in message
    assert "pydantic" not in message
    assert "\n" not in message


@pytest.mark.parametrize("name", ["my job", "../up", ".hidden", "a/b", "", "x" * 129])
def test_name_must_be_a_safe_slug(in_tmp: Path, name: str) -> None:
    """The name becomes a folder and a trace attribute: letters, digits, . _ - only."""
    write(in_tmp, MINIMAL.replace("name: eval", f"name: {json.dumps(name)}"))
    assert error_of("eval.yaml").startswith("eval.yaml:1:7: name: must be 1-128 letters")


def test_api_key_in_place_of_variable_name_is_refused_without_echo(in_tmp: Path) -> None:
    """A key pasted into api_key_env is refused, told to use a variable, and never repeated."""
    write(in_tmp, MINIMAL + "endpoint:\n  api_key_env: sk-ant-api03-SECRET\n")
    message = error_of("eval.yaml")
    assert message.startswith("eval.yaml:6:16: endpoint.api_key_env: this looks like an API key")
    assert "environment variable" in message
    assert "SECRET" not in message
    assert "SECRET" not in error_of("eval.yaml", ("endpoint.api_key_env=sk-ant-SECRET",))


def test_base_url_forms(tmp_path: Path) -> None:
    """base_url is 'sim' or an http(s) URL; a path prefix is kept, a trailing '/' dropped."""
    for given, kept in [
        ("sim", "sim"),
        ("http://127.0.0.1:8080/", "http://127.0.0.1:8080"),
        ("https://proxy.example.com/anthropic/", "https://proxy.example.com/anthropic"),
    ]:
        job = load_job(write(tmp_path, MINIMAL + f"endpoint:\n  base_url: {given}\n"))
        assert job.endpoint.base_url == kept


def test_base_url_with_credentials_is_refused_without_echo(in_tmp: Path) -> None:
    """Credentials in the URL are refused, and the URL is not repeated."""
    write(in_tmp, MINIMAL + "endpoint:\n  base_url: http://user:hunter2@h/\n")
    message = error_of("eval.yaml")
    assert "credentials" in message
    assert "hunter2" not in message


@pytest.mark.parametrize(
    ("input_", "fragment"),
    [
        ("  messages_column: m\n", "give exactly one of prompt or messages_column (got both)"),
        ("", ""),
    ],
)
def test_prompt_xor_messages_column(in_tmp: Path, input_: str, fragment: str) -> None:
    """input needs exactly one of prompt and messages_column."""
    write(in_tmp, MINIMAL + input_)
    if fragment:
        assert error_of("eval.yaml") == f"eval.yaml:2:1: input: {fragment}"
    else:
        assert load_job("eval.yaml").input.prompt == "{question}"
    write(in_tmp, "name: eval\ninput:\n  path: a.csv\n")
    assert error_of("eval.yaml") == (
        "eval.yaml:2:1: input: give exactly one of prompt or messages_column (got neither)"
    )


# --- templates ----------------------------------------------------------------------------


def test_template_columns_are_exposed_in_order() -> None:
    """Templates expose the columns they use, once each, prompt first; {{ is a brace."""
    cfg = InputConfig(path="x.csv", prompt="{b} {{not}} {a} {b}", system="{c} {a}")
    assert cfg.prompt_columns == ["b", "a"]
    assert cfg.system_columns == ["c", "a"]
    assert cfg.template_columns == ["b", "a", "c"]
    assert parse_template("{{x}} {é t}") == (("{x} ", "é t"),)


@pytest.mark.parametrize(
    ("template", "fragment"),
    [
        ("{q", "expected '}' before end of string"),
        ("q}", "Single '}' encountered"),
        ("{}", "empty field {}"),
        ("{q!r}", "format spec or conversion"),
        ("{q:>5}", "format spec or conversion"),
    ],
)
def test_template_syntax_is_checked_at_load(in_tmp: Path, template: str, fragment: str) -> None:
    """A malformed template is a load error at the template's line, naming the key."""
    write(in_tmp, MINIMAL.replace('"{question}"', json.dumps(template)))
    message = error_of("eval.yaml")
    assert message.startswith("eval.yaml:4:11: input.prompt: invalid template: ")
    assert fragment in message


def test_system_template_is_checked(in_tmp: Path) -> None:
    """The system template is validated like the prompt."""
    write(in_tmp, MINIMAL + '  system: "{tone"\n')
    assert error_of("eval.yaml").startswith("eval.yaml:5:11: input.system: invalid template")


# --- the file itself ----------------------------------------------------------------------


def test_yaml_syntax_error_has_line_and_column(in_tmp: Path) -> None:
    """A YAML syntax error names the file, line and column, with no traceback."""
    write(in_tmp, "name: eval\ninput: {path: a.csv\nrequest: 1\n")
    message = error_of("eval.yaml")
    assert re.fullmatch(r"eval\.yaml:\d+:\d+: YAML syntax error: .+", message), message


def test_tab_indentation_is_a_syntax_error(in_tmp: Path) -> None:
    """Tabs (not allowed for YAML indentation) give a located syntax error."""
    write(in_tmp, "name: eval\ninput:\n\tpath: a.csv\n")
    assert error_of("eval.yaml").startswith("eval.yaml:3:1: YAML syntax error:")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "eval.yaml: the job file is empty"),
        ("# only a comment\n", "eval.yaml: the job file is empty"),
        ("- a\n- b\n", "eval.yaml:1:1: the job file must be a mapping of keys (name, input, ...)"),
        ("just text\n", "eval.yaml:1:1: the job file must be a mapping of keys (name, input, ...)"),
    ],
)
def test_file_that_is_not_a_mapping(in_tmp: Path, text: str, expected: str) -> None:
    """An empty file, or one that is not a mapping, is named as such."""
    write(in_tmp, text)
    assert error_of("eval.yaml") == expected


def test_missing_file_and_folder(in_tmp: Path) -> None:
    """A missing job file, or a folder, is a JobError naming it."""
    assert error_of("nope.yaml") == "nope.yaml: no such job file"
    assert error_of(".") == ".: is a folder, not a job file"


def test_non_utf8_job_file(in_tmp: Path) -> None:
    """A job file that is not UTF-8 is a JobError, not a UnicodeDecodeError."""
    (in_tmp / "eval.yaml").write_bytes(b"name: \xff\n")
    assert error_of("eval.yaml").startswith("eval.yaml: not UTF-8 text")


def test_duplicate_key_is_an_error(in_tmp: Path) -> None:
    """A key given twice in one mapping is reported where it repeats."""
    write(in_tmp, MINIMAL + "request:\n  samples: 2\n  samples: 3\n")
    assert error_of("eval.yaml") == (
        "eval.yaml:8:3: request.samples: duplicate key (first on line 7); keep one"
    )


# --- overrides ----------------------------------------------------------------------------


def test_overrides_parse_yaml_values(tmp_path: Path) -> None:
    """--set takes dotted keys and YAML values; a text key keeps the text as written."""
    path = write(tmp_path, MINIMAL + "request:\n  temperature: 0.5\n")
    job = load_job(
        path,
        [
            "limits.concurrency=64",
            "request.temperature=null",
            "request.stop_sequences=[a, b]",
            "endpoint.base_url=http://127.0.0.1:8080",
            "input.prompt={question}?",
            "input.system=Q: {tone}",
            "name=2024",
        ],
    )
    assert job.limits.concurrency == 64
    assert job.request.temperature is None
    assert job.request.stop_sequences == ("a", "b")
    assert job.endpoint.base_url == "http://127.0.0.1:8080"
    assert job.input.prompt == "{question}?"
    assert job.input.system == "Q: {tone}"
    assert job.name == "2024"


def test_later_override_wins(tmp_path: Path) -> None:
    """Overrides apply in order."""
    job = load_job(write(tmp_path, MINIMAL), ["request.samples=2", "request.samples=5"])
    assert job.request.samples == 5


def test_override_of_whole_section(tmp_path: Path) -> None:
    """A section can be set whole with a YAML flow mapping."""
    job = load_job(write(tmp_path, MINIMAL), ["sim={seed: 7, faults: [{kind: stall}]}"])
    assert job.sim.seed == 7
    assert job.sim.faults[0].kind == "stall"


@pytest.mark.parametrize(
    ("item", "expected"),
    [
        (
            "limits.concurency=3",
            "--set limits.concurency=3: unknown key 'limits.concurency'; "
            "did you mean 'limits.concurrency'?",
        ),
        ("limitz.concurrency=3", "--set limitz.concurrency=3: unknown key 'limitz'"),
        (
            "concurrency=3",
            "--set concurrency=3: unknown key 'concurrency'; did you mean 'limits.concurrency'?",
        ),
        (
            "request.stop=x",
            "--set request.stop=x: unknown key 'request.stop'; "
            "did you mean 'request.stop_sequences'?",
        ),
        (
            "request.container=c1",
            "--set request.container=c1: unknown key 'request.container'; container is a field "
            "of the Messages API request that batchrun has no key for: put it under "
            "request.extra, which is sent in the request body as it is "
            "(--set 'request.extra={container: ...}')",
        ),
        ("concurrency", "--set concurrency: expected KEY=VALUE, e.g. limits.concurrency=64"),
        ("=3", "--set =3: expected KEY=VALUE, e.g. limits.concurrency=64"),
        ("request.model.x=1", "--set request.model.x=1: request.model is a value, not a section"),
        ("request.samples=[1", "--set request.samples=[1: the value is not valid YAML"),
    ],
)
def test_bad_override(tmp_path: Path, item: str, expected: str) -> None:
    """A malformed or unknown override names itself and, where it can, the nearest key."""
    assert error_of(write(tmp_path, MINIMAL), (item,)).startswith(expected)


def test_override_value_errors_name_the_override(tmp_path: Path) -> None:
    """An override with a bad value is reported against the --set, not the file."""
    message = error_of(write(tmp_path, MINIMAL), ("limits.concurrency=0",))
    assert message == (
        "--set limits.concurrency=0: limits.concurrency: "
        "Input should be greater than or equal to 1 (got 0)"
    )


def test_override_errors_and_file_errors_together(in_tmp: Path) -> None:
    """Problems in overrides and in the file come in one message."""
    write(in_tmp, MINIMAL + "request:\n  top_k: 0\n")
    assert error_of("eval.yaml", ("limits.concurency=3",)).splitlines() == [
        "--set limits.concurency=3: unknown key 'limits.concurency'; "
        "did you mean 'limits.concurrency'?",
        "eval.yaml:7:10: request.top_k: Input should be greater than or equal to 1 (got 0)",
    ]


# --- paths --------------------------------------------------------------------------------


def test_run_dir_fills_name_and_utc_date(tmp_path: Path) -> None:
    """run_dir fills {name} and {date} (the UTC day) relative to the job file's folder."""
    job = load_job(write(tmp_path, MINIMAL + "output:\n  dir: runs/{date}/{name}\n"))
    late_evening = datetime(2025, 3, 1, 22, 30, tzinfo=timezone(timedelta(hours=-5)))
    assert job.run_dir(late_evening) == tmp_path.resolve() / "runs/2025-03-02/eval"
    default = load_job(write(tmp_path, MINIMAL))
    assert default.run_dir(datetime.now(UTC)) == tmp_path.resolve() / "outputs/eval"


def test_run_dir_refuses_naive_time(tmp_path: Path) -> None:
    """A naive datetime has no UTC day: refused."""
    job = load_job(write(tmp_path, MINIMAL))
    with pytest.raises(ValueError, match="aware"):
        job.run_dir(datetime(2025, 1, 1))  # noqa: DTZ001


def test_input_paths_resolve_relative_to_job_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """input.path is relative to the job file's folder, not the working directory."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "eval.csv").write_text("q\nx\n", encoding="utf-8")
    job = load_job(write(tmp_path, MINIMAL))
    monkeypatch.chdir(tmp_path / "data")
    assert job.input_paths() == [tmp_path.resolve() / "data" / "eval.csv"]


def test_input_paths_glob_is_sorted(tmp_path: Path) -> None:
    """A glob matches files only, sorted by path."""
    (tmp_path / "data" / "sub.csv").mkdir(parents=True)  # a folder named like a match
    for name in ["b.csv", "a.csv", "c.parquet"]:
        (tmp_path / "data" / name).write_text("q\n", encoding="utf-8")
    job = load_job(write(tmp_path, MINIMAL.replace("data/eval.csv", "data/*.csv")))
    assert job.input_paths() == [tmp_path.resolve() / "data" / n for n in ["a.csv", "b.csv"]]


def test_input_paths_missing(tmp_path: Path) -> None:
    """No file, or a glob without a match, is a JobError naming the pattern."""
    with pytest.raises(JobError, match=r"input\.path: no such file: data/eval\.csv"):
        load_job(write(tmp_path, MINIMAL)).input_paths()
    job = load_job(write(tmp_path, MINIMAL.replace("data/eval.csv", "data/*.csv")))
    with pytest.raises(JobError, match=r"input\.path: no file matches 'data/\*\.csv'"):
        job.input_paths()


def test_an_existing_file_named_like_a_glob_is_read_as_named(tmp_path: Path) -> None:
    """input.path `data[1].csv` names that file when it exists, though it reads as a glob."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "data[1].csv").write_text("q\nx\n", encoding="utf-8")
    (tmp_path / "data" / "data1.csv").write_text("q\ny\n", encoding="utf-8")  # the glob's match
    job = load_job(write(tmp_path, MINIMAL.replace("data/eval.csv", "'data/data[1].csv'")))
    assert job.input_paths() == [tmp_path.resolve() / "data" / "data[1].csv"]
    (tmp_path / "data" / "data[1].csv").unlink()
    assert job.input_paths() == [tmp_path.resolve() / "data" / "data1.csv"]


def test_resolved_is_json_and_holds_no_secrets(tmp_path: Path) -> None:
    """resolved() is JSON-ready, has every key with defaults filled, and hides sim.api_key."""
    job = load_job(write(tmp_path, MINIMAL + "sim:\n  api_key: sk-test-123\n"))
    resolved = job.resolved()
    text = json.dumps(resolved)
    assert "sk-test-123" not in text
    assert resolved["job_file"] == str(tmp_path.resolve() / "eval.yaml")
    assert resolved["limits"]["concurrency"] == 16
    assert resolved["endpoint"]["api_key_env"] == "ANTHROPIC_API_KEY"


def test_job_built_in_code_lives_in_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A Job built without a file resolves paths against the working directory."""
    monkeypatch.chdir(tmp_path)
    job = Job.model_validate(
        {"name": "x", "input": {"path": "a.csv", "prompt": "{q}"}, "request": {"model": "m"}}
    )
    assert job.path == Path.cwd() / "job.yaml"
    moved = job.with_path(tmp_path / "sub" / "j.yaml")
    assert moved.base_dir == tmp_path.resolve() / "sub"
    assert moved.model_dump() == job.model_dump()


# --- messages that say the fix --------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "where", "hint"),
    [
        ("name: eval\ninput: {path: a.csv\n", "2:8", "the '{' opened at line 2, column 8"),
        ('name: "eval\n', "1:7", "the quote opened at line 1, column 7 is never closed"),
        ("name: eval\ninput:\n\tpath: a.csv\n", "3:1", "spaces, never tabs"),
        ("name: a: b\n", "1:8", "a value containing ': ' must be in quotes"),
        ("name: *x\n", "1:7", "alias"),
        ("name: !!python/name:os.system x\n", "1:7", "tags (!!type, !name) are not allowed"),
        ("name: eval\n  input: x\n", "2:8", "check this line's indentation"),
        ("input:\n  path: a.csv\n prompt: x\n", "3:2", "check the indentation"),
    ],
)
def test_yaml_syntax_errors_say_the_likely_fix(
    in_tmp: Path, text: str, where: str, hint: str
) -> None:
    """Each kind of YAML syntax error is placed at its line and column, with the likely fix."""
    write(in_tmp, text)
    message = error_of("eval.yaml")
    assert message.startswith(f"eval.yaml:{where}: YAML syntax error: "), message
    assert hint in message


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (
            "request:\n  max_tokens: '64'\n",
            "eval.yaml:7:15: request.max_tokens: Input should be a valid integer (got '64'); "
            "write the value without quotes",
        ),
        (
            "telemetry:\n  capture_content: 'true'\n",
            "eval.yaml:6:20: telemetry.capture_content: Input should be a valid boolean "
            "(got 'true'); write the value without quotes",
        ),
        (
            "request:\n  model:\n",
            "eval.yaml:6:9: request.model: Input should be a valid string (got null); the key has "
            "no value: give one, or remove the key to use the default",
        ),
        (
            "limits: 8\n",
            "eval.yaml:5:9: limits: must be a section, its keys indented on the lines below it, "
            "not 8",
        ),
        (
            "request:\n  stop_sequences: '###'\n",
            "eval.yaml:7:19: request.stop_sequences: must be a list, e.g. [a, b] (got '###')",
        ),
        (
            "concurrency: 4\n",
            "eval.yaml:5:1: concurrency: unknown key here; it belongs in the limits section "
            "(limits.concurrency)",
        ),
    ],
)
def test_type_errors_say_the_fix(in_tmp: Path, extra: str, expected: str) -> None:
    """Quoted numbers, empty values, scalars for sections and misplaced keys say what to do."""
    write(in_tmp, MINIMAL + extra)
    assert error_of("eval.yaml") == expected


def test_an_unquoted_template_is_explained(in_tmp: Path) -> None:
    """`prompt: {question}` unquoted reads as a mapping: the message says to quote it."""
    write(in_tmp, MINIMAL.replace('"{question}"', "{question}"))
    assert error_of("eval.yaml") == (
        "eval.yaml:4:3: input.prompt: Input should be a valid string; YAML reads an unquoted "
        "value starting with '{' as a mapping: put the value in quotes, "
        'e.g. prompt: "{question}"'
    )


@pytest.mark.parametrize(
    "value",
    [
        "sk-ant-api03-abc",
        "SK-ANT-XYZ",
        "sk_live_123",
        "Zx8kQ2mP9vN4rT7wY1bC6dF3gH5jK0lMnOpQ",
    ],
)
def test_anything_like_a_key_is_refused_as_api_key_env_and_never_echoed(
    tmp_path: Path, value: str
) -> None:
    """Key-looking values are refused with a pointer to environment variables, not repeated."""
    message = error_of(write(tmp_path, MINIMAL), (f"endpoint.api_key_env={value}",))
    assert "looks like an API key" in message
    assert "environment variable" in message
    assert value not in message


@pytest.mark.parametrize("name", ["ANTHROPIC_API_KEY", "MY_TEAM_ANTHROPIC_KEY_PRODUCTION_2", "K"])
def test_ordinary_variable_names_are_accepted(tmp_path: Path, name: str) -> None:
    """Names of environment variables, even long ones, are not mistaken for keys."""
    job = load_job(write(tmp_path, MINIMAL), (f"endpoint.api_key_env={name}",))
    assert job.endpoint.api_key_env == name


def test_a_key_in_any_override_is_not_echoed(tmp_path: Path) -> None:
    """A key-like value given to another key is redacted from the --set it came in."""
    item = "endpoint.base_url=http://h:1/?key=sk-ant-api03-LEAK"
    message = error_of(write(tmp_path, MINIMAL), (item,))
    assert message.startswith("--set endpoint.base_url=***: endpoint.base_url: must not have")
    assert "LEAK" not in message


def test_input_path_naming_a_folder_suggests_a_glob(tmp_path: Path) -> None:
    """A folder as input.path is refused with a glob to use instead."""
    (tmp_path / "data" / "eval.csv").mkdir(parents=True)
    with pytest.raises(JobError, match=r"is a folder; .* or a glob such as data/eval\.csv/\*\.csv"):
        load_job(write(tmp_path, MINIMAL)).input_paths()
